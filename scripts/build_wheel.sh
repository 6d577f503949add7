#!/usr/bin/env bash
# A Python wheel that carries the `accel` binary, as ruff and uv ship theirs (maturin's `bin`
# bindings): `pip install accel-*.whl` puts `accel` on the venv's PATH. The wheel lands in
# target/wheels/ (never committed); its pyproject.toml is written to a temporary folder, so the
# repository keeps Cargo.toml as its only manifest.
#
# The wheel carries the binary only. It links Debian's OpenMPI (libmpi.so.40), which a wheel
# cannot carry (it belongs to the machine's mpirun and network stack): install `openmpi-bin`, as
# both README commands do. Without it `accel` does not start and the loader names libmpi.so.40.
# CUDA's libraries are not carried either: this wheel is the CPU build.
#
# With --check, the wheel is then installed into a fresh venv (outside the repository) and that
# venv's `accel test` runs: training, checkpoints, bf16, 2 ranks through the system's mpirun.
# ACCEL_MATURIN_VENV overrides where maturin is installed (default ~/.cache/accel/maturin-venv).
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
cat > "$work/pyproject.toml" <<EOF
[build-system]
requires = ["maturin>=1.5,<2"]
build-backend = "maturin"

[project]
name = "accel-train"
version = "$version"
description = "Fine-tune pretrained transformers on sentence(-pair) classification: one binary, CPU or many processes."
requires-python = ">=3.8"
license = { text = "Apache-2.0" }

[tool.maturin]
bindings = "bin"
manifest-path = "$repo_root/Cargo.toml"
EOF
out="$repo_root/target/wheels"
mkdir -p "$out"
rm -f "$out"/accel_train-*.whl
# linux: the platform tag of this machine's glibc build; no auditwheel repair, which would copy
# OpenMPI's libraries into the wheel.
(cd "$work" && "$venv/bin/maturin" build --release --strip --compatibility linux --auditwheel skip --out "$out" >&2)
wheel="$(ls "$out"/accel_train-*.whl)"
echo "wheel: $wheel ($(du -h "$wheel" | cut -f1))"

if [ -n "$check" ]; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install --quiet --disable-pip-version-check --no-index "$wheel"
  installed="$work/venv/bin/accel"
  [ -x "$installed" ] || { echo "the wheel installed no accel into the venv's bin" >&2; exit 1; }
  echo "installed: $installed ($("$installed" --version))"
  # The venv's accel, not one from the build tree or PATH.
  (cd "$work" && env PATH="$work/venv/bin:/usr/local/bin:/usr/bin:/bin" accel test)
fi
