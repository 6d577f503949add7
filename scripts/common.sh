# Shared by the scripts: default the data and model folders to ../shared when it exists, and make
# sure the toolchain is there. Sourced, not run.
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
shared="$(cd "$repo_root/.." && pwd)/shared"
if [ -d "$shared" ]; then
  export ACCEL_DATA_DIR="${ACCEL_DATA_DIR:-$shared/data}"
  export ACCEL_MODEL_DIR="${ACCEL_MODEL_DIR:-$shared/models}"
  export ACCEL_GOLDEN_DIR="${ACCEL_GOLDEN_DIR:-$shared/golden}"
fi
# Models and datasets come from local folders; no step of ours downloads at run time.
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"

# pip_venv DEST PACKAGE...: a Python venv at DEST (outside the repository) with PACKAGEs installed
# from PyPI; everything it prints goes to standard error.
pip_venv() {
  local dest="$1" python
  shift
  python="$(command -v python3 || true)"
  if [ -z "$python" ]; then
    echo "python3 not found: it is needed to install $* from PyPI" >&2
    return 1
  fi
  echo "installing $* from PyPI into $dest" >&2
  "$python" -m venv "$dest" >&2
  "$dest/bin/pip" install --quiet --disable-pip-version-check "$@" >&2
}

# Installs what a fresh Debian machine lacks: a C compiler for the -sys crates, OpenMPI (library,
# headers and mpirun) with libclang for the mpi crate's bindings, and checks for a Rust toolchain.
ensure_toolchain() {
  local missing=()
  command -v cc >/dev/null 2>&1 || missing+=(build-essential)
  command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
  { command -v mpirun >/dev/null 2>&1 && pkg-config --exists ompi 2>/dev/null; } || missing+=(libopenmpi-dev openmpi-bin)
  ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || missing+=(libclang-dev)
  if [ ${#missing[@]} -gt 0 ]; then
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing ${missing[*]}" >&2
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust (https://rustup.rs) and run this again" >&2
    exit 1
  fi
}
