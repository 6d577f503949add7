#!/usr/bin/env bash
# Installs what `cargo build --features cuda,nccl` needs on a machine without a GPU or a system CUDA:
# the CUDA 13 compiler, runtime, cuBLAS, cuRAND and NCCL wheels from PyPI (about 1.4 GB) in a venv
# outside the repository, ${XDG_CACHE_HOME:-~/.cache}/accel/cuda13 (ACCEL_CUDA names another folder),
# with the unversioned .so links the linker looks for and a link-only stub of the driver library
# (libcuda.so, soname libcuda.so.1: the real one comes with the NVIDIA driver on a GPU host).
# Idempotent. Prints the environment to build with, as `export` lines:
#   eval "$(bash scripts/install_cuda.sh)" && cargo build --release --features cuda,nccl
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
dest="${ACCEL_CUDA:-${XDG_CACHE_HOME:-$HOME/.cache}/accel/cuda13}"
packages=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
  nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
  nvidia-nccl-cu13==2.30.7
)
stamp="$dest/.accel-packages"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${packages[*]}" ]; then
  pip_venv "$dest" "${packages[@]}"
  echo "${packages[*]}" >"$stamp"
fi
home="$(ls -d "$dest"/lib/python3*/site-packages/nvidia/cu13 2>/dev/null | head -n1)"
if [ -z "$home" ] || [ ! -x "$home/bin/nvcc" ]; then
  echo "the wheels in $dest installed no nvidia/cu13/bin/nvcc" >&2
  exit 1
fi
lib="$home/lib"
# NCCL's wheel has its own folder; the linker wants every library in one place, by its plain name.
for so in "$dest"/lib/python3*/site-packages/nvidia/nccl/lib/libnccl.so.*; do
  [ -e "$so" ] && ln -sf "$so" "$lib/$(basename "$so")"
done
for name in cudart cublas cublasLt curand nvrtc nccl; do
  versioned="$(ls "$lib"/lib$name.so.* 2>/dev/null | sort | head -n1)"
  if [ -z "$versioned" ]; then
    echo "lib$name.so.* is missing from $lib" >&2
    exit 1
  fi
  ln -sf "$(basename "$versioned")" "$lib/lib$name.so"
done
# The driver library is not on PyPI. Binaries link against this stub and load the driver's own
# libcuda.so.1 at run time. Every cu* function of cuda.h is there and returns 34,
# CUDA_ERROR_STUB_LIBRARY, as NVIDIA's own stubs do: a binary that finds the stub instead of a driver
# says so instead of crashing.
stub="$lib/stubs/libcuda.so"
if [ ! -f "$stub" ]; then
  mkdir -p "$lib/stubs"
  src="$(mktemp -d)"
  grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "$home/include/cuda.h" | sort -u |
    awk '{ print "int " $1 "(void) { return 34; }" }' >"$src/stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub" "$src/stub.c"
  rm -rf "$src"
fi
# Under its soname too, so that a binary can be started against the stub (as on a machine without a
# driver) by putting this folder on LD_LIBRARY_PATH; never put it there on a GPU host.
ln -sf libcuda.so "$lib/stubs/libcuda.so.1"
cat <<EOF
export CUDA_HOME="$home"
export CUDA_ROOT="$home"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}"
export PATH="$home/bin:\$PATH"
export LIBRARY_PATH="$lib:$lib/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export NCCL_ROOT="$home"
EOF
