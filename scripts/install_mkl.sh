#!/usr/bin/env bash
# Installs oneMKL (pip's `mkl` package, about 1 GB) into a Python venv outside the repository, where
# accel looks for libmkl_rt at run time: ${XDG_CACHE_HOME:-~/.cache}/accel/mkl. bf16 mixed
# precision needs it; everything else runs without it. Idempotent; prints the library's path.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# ACCEL_MKL, when set, names the folder instead (accel reads the same variable).
dest="${ACCEL_MKL:-${XDG_CACHE_HOME:-$HOME/.cache}/accel/mkl}"
lib="$dest/lib/libmkl_rt.so.3"
if [ ! -f "$lib" ]; then
  pip_venv "$dest" "mkl==2026.*"
fi
if [ ! -f "$lib" ]; then
  echo "pip's mkl package installed no $lib" >&2
  exit 1
fi
echo "$lib"
