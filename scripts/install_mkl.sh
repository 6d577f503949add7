#!/usr/bin/env bash
# Installs oneMKL (pip's `mkl` package, about 1 GB) into a Python venv outside the repository, where
# accel looks for libmkl_rt at run time: ${XDG_CACHE_HOME:-~/.cache}/accel/mkl. bf16 mixed
# precision on CPUs with AMX prefers it; everything else runs without it. Idempotent; prints the
# library's path.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# ACCEL_MKL, when set, names the folder instead (accel reads the same variable).
pip_library "${ACCEL_MKL:-${XDG_CACHE_HOME:-$HOME/.cache}/accel/mkl}" libmkl_rt.so.3 "mkl==2026.*"
