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

# apt_install PACKAGE...: installs those of the Debian packages that are not installed (tested by
# their install status, not by a file that looks like theirs), and checks that they then are.
missing_packages() {
  local pkg
  for pkg in "$@"; do
    [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" = "install ok installed" ] || echo "$pkg"
  done
}
apt_install() {
  local missing=() sudo=""
  if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "not a Debian system: make sure these (Debian's names) are installed: $*" >&2
    return 0
  fi
  mapfile -t missing < <(missing_packages "$@")
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing ${missing[*]}" >&2
  $sudo apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  mapfile -t missing < <(missing_packages "${missing[@]}")
  if [ ${#missing[@]} -gt 0 ]; then
    echo "apt-get did not install ${missing[*]}" >&2
    return 1
  fi
}

# pip_venv DEST PACKAGE...: a Python venv at DEST (outside the repository) with PACKAGEs installed
# from PyPI; everything it prints goes to standard error. A machine whose python3 cannot make a
# venv (or that has none) gets Debian's python3-venv first.
pip_venv() {
  local dest="$1" python
  shift
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    apt_install python3 python3-venv || return 1
  fi
  python="$(command -v python3 || true)"
  if [ -z "$python" ]; then
    echo "python3 not found: it is needed to install $* from PyPI" >&2
    return 1
  fi
  echo "installing $* from PyPI into $dest" >&2
  "$python" -m venv "$dest" >&2
  "$dest/bin/pip" install --quiet --disable-pip-version-check "$@" >&2
}

# Installs what a fresh Debian machine lacks for the build: a C compiler for the -sys crates,
# pkg-config, OpenMPI (library, headers and mpirun) and libclang for the mpi crate's bindings (the
# image CI uses ships libclang-cpp, the C++ interface, without libclang itself); then checks for a
# Rust toolchain.
ACCEL_APT_PACKAGES=(build-essential pkg-config libopenmpi-dev openmpi-bin libclang-dev)
ensure_toolchain() {
  apt_install "${ACCEL_APT_PACKAGES[@]}" || exit 1
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust (https://rustup.rs) and run this again" >&2
    exit 1
  fi
}
