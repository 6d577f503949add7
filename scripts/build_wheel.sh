#!/usr/bin/env bash
# The Python wheel accel-train: the `accel` binary (installed on the venv's PATH, as ruff and uv
# ship theirs) and the `accel` Python module beside it (python/: a pyo3 extension, accel._native,
# and the Python calls accel.train, launch, evaluate and predict that run the binary's jobs). One
# abi3 wheel serves CPython 3.8 and later. The wheel lands in target/wheels/ (never committed); its
# pyproject.toml is written to a temporary folder with the binary, so the repository keeps the
# Cargo manifests as its only ones.
#
# The wheel carries the binary only. It links Debian's OpenMPI (libmpi.so.40), which a wheel
# cannot carry (it belongs to the machine's mpirun and network stack): install `openmpi-bin`, as
# both README commands do. Without it `accel` does not start and the loader names libmpi.so.40.
# CUDA's libraries are not carried either: this wheel is the CPU build.
#
# With --check, the wheel is then installed into a fresh venv (outside the repository): the
# module imports and finds the wheel's accel, and that venv's `accel test` runs: training,
# checkpoints, bf16, 2 ranks through the system's mpirun. ACCEL_MATURIN_VENV overrides where
# maturin is installed (default ~/.cache/accel/maturin-venv).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ensure_toolchain
check=""
[ "${1:-}" = "--check" ] && check=1

venv="${ACCEL_MATURIN_VENV:-$HOME/.cache/accel/maturin-venv}"
"$venv/bin/maturin" --version >/dev/null 2>&1 || pip_venv "$venv" "maturin>=1.5,<2"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
version="$(grep -m1 '^version' "$repo_root/Cargo.toml" | cut -d'"' -f2)"
# The binary goes into the wheel's data scripts: pip installs it into the venv's bin.
(cd "$repo_root" && cargo build --release --locked --bin accel >&2)
mkdir -p "$work/accel_train.data/scripts"
cp "$repo_root/target/release/accel" "$work/accel_train.data/scripts/accel"
strip "$work/accel_train.data/scripts/accel" 2>/dev/null || true
# The module's Python files beside the manifest maturin reads (it packs python-source from the
# project folder).
mkdir -p "$work/python"
cp -r "$repo_root/python/accel" "$work/python/accel"
cat > "$work/pyproject.toml" <<EOF
[build-system]
requires = ["maturin>=1.5,<2"]
build-backend = "maturin"

[project]
name = "accel-train"
version = "$version"
description = "Fine-tune pretrained transformers (classification, token classification, question answering): one binary and its Python module, CPU or many processes."
requires-python = ">=3.8"
license = { text = "Apache-2.0" }

[tool.maturin]
bindings = "pyo3"
manifest-path = "$repo_root/python/Cargo.toml"
module-name = "accel._native"
python-source = "python"
data = "$work/accel_train.data"
features = ["extension-module"]
EOF
out="$repo_root/target/wheels"
mkdir -p "$out"
rm -f "$out"/accel_train-*.whl
# linux: the platform tag of this machine's glibc build; no auditwheel repair, which would copy
# OpenMPI's libraries into the wheel.
(cd "$work" && "$venv/bin/maturin" build --release --strip --locked --compatibility linux --auditwheel skip \
  --target-dir "$repo_root/target/python" --out "$out" >&2)
wheel="$(ls "$out"/accel_train-*.whl)"
echo "wheel: $wheel ($(du -h "$wheel" | cut -f1))"

if [ -n "$check" ]; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install --quiet --disable-pip-version-check --no-index "$wheel"
  installed="$work/venv/bin/accel"
  [ -x "$installed" ] || { echo "the wheel installed no accel into the venv's bin" >&2; exit 1; }
  echo "installed: $installed ($("$installed" --version))"
  INSTALLED="$installed" "$work/venv/bin/python" -c \
    'import accel, os; assert os.path.samefile(accel.binary(), os.environ["INSTALLED"]); print("module:", accel.__file__)' \
    || { echo "the wheel's Python module does not import or does not find its accel" >&2; exit 1; }
  # The venv's accel, not one from the build tree or PATH.
  (cd "$work" && env PATH="$work/venv/bin:/usr/local/bin:/usr/bin:/bin" accel test)
fi
