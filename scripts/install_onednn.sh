#!/usr/bin/env bash
# Installs oneDNN (PyPI's `onednn-cpu-gomp`: one 39 MB wheel whose only library is libdnnl.so.3,
# needing only libgomp) into a Python venv outside the repository, where accel looks for it at run
# time: ${XDG_CACHE_HOME:-~/.cache}/accel/onednn. bf16 mixed precision on CPUs with AVX512-BF16 or
# AMX uses it; everything else runs without it. Idempotent; prints the library's path.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# ACCEL_ONEDNN, when set, names the folder instead (accel reads the same variable).
pip_library "${ACCEL_ONEDNN:-${XDG_CACHE_HOME:-$HOME/.cache}/accel/onednn}" libdnnl.so.3 "onednn-cpu-gomp==2023.2.0"
