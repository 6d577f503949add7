#!/usr/bin/env bash
# The Python side: the wheel (scripts/build_wheel.sh; the one in target/wheels/ when it is there
# already) installed into a clean venv outside the repository, then tests/python/ run by pytest in
# it: accel.train on a short MRPC run, a 2-rank accel.launch, evaluate and predict, a bad config,
# a KeyboardInterrupt mid-run, a notebook executed by a Jupyter kernel (nbclient), the model card
# against huggingface_hub, and MLflow against a real tracking server (PyPI's mlflow, started on a
# loopback port by the tests). The test tools (pytest, mlflow, nbclient, ipykernel,
# huggingface_hub) live in a cached venv; the wheel goes into a fresh one made from it each time.
# Arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ensure_toolchain
wheel="$(ls "$repo_root"/target/wheels/accel_train-*.whl 2>/dev/null | head -1 || true)"
if [ -z "$wheel" ]; then
  bash "$repo_root/scripts/build_wheel.sh" >&2
  wheel="$(ls "$repo_root"/target/wheels/accel_train-*.whl)"
fi
tools="${ACCEL_PYTHON_TOOLS_VENV:-$HOME/.cache/accel/python-tools-venv}"
packages=(pytest "mlflow>=2.9" nbclient nbformat ipykernel huggingface_hub pyyaml)
if ! "$tools/bin/python" -c 'import pytest, mlflow, nbclient, nbformat, ipykernel, huggingface_hub, yaml' 2>/dev/null; then
  rm -rf "$tools"
  pip_venv "$tools" "${packages[@]}"
fi
# A fresh venv that sees the tools' packages, with the wheel installed into it alone.
venv="$(mktemp -d)/venv"
trap 'rm -rf "$(dirname "$venv")"' EXIT
"$tools/bin/python" -m venv "$venv" >&2
site="$("$tools/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$site" > "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/accel-test-tools.pth"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-index --no-deps "$wheel"
echo "python tests: $wheel in $venv" >&2
cd "$repo_root/tests/python"
PATH="$venv/bin:$PATH" "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
