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

# cpu_has_bf16: whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX-BF16).
cpu_has_bf16() {
  grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | grep -qw -e avx512_bf16 -e amx_bf16
}

# install_bf16_libraries: the libraries accel chooses from for bf16 products (outside the
# repository): oneDNN, and oneMKL (about 1 GB) only on a CPU with AMX, the one CPU where accel
# prefers it. Says what it could not install; returns 1 then.
install_bf16_libraries() {
  local ok=0
  bash "$repo_root/scripts/install_onednn.sh" >/dev/null || { echo "oneDNN could not be installed" >&2; ok=1; }
  if grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | grep -qw amx_bf16; then
    bash "$repo_root/scripts/install_mkl.sh" >/dev/null || { echo "oneMKL could not be installed" >&2; ok=1; }
  fi
  return $ok
}

# pip_library DEST LIBFILE PACKAGE: PACKAGE from PyPI in a venv at DEST (outside the repository)
# unless DEST/lib/LIBFILE is there already; prints that file's path, or fails naming it.
pip_library() {
  local dest="$1" lib="$1/lib/$2" package="$3"
  [ -f "$lib" ] || pip_venv "$dest" "$package"
  if [ ! -f "$lib" ]; then
    echo "pip's $package installed no $lib" >&2
    return 1
  fi
  echo "$lib"
}

# Two "hosts" on this machine for the multi-host checks: network namespaces accel-h1 and accel-h2
# (198.18.7.11 and .12), joined by the bridge accel-br0 (198.18.7.1), in the benchmarking range
# 198.18.0.0/15 that exists on no real network. netns_hosts_up removes leftovers of an interrupted
# run, then makes them; where namespaces cannot be made it prints why and returns 1.
# netns_hosts_down removes them.
netns_h1=accel-h1; netns_h2=accel-h2; netns_bridge=accel-br0; netns_subnet=198.18.7.0/24
netns_hosts_down() {
  ip netns del "$netns_h1" 2>/dev/null || true
  ip netns del "$netns_h2" 2>/dev/null || true
  ip link del "$netns_bridge" 2>/dev/null || true
}
netns_hosts_up() {
  local why i ns
  netns_hosts_down
  command -v ip >/dev/null 2>&1 || { echo "no ip command"; return 1; }
  why="$(ip netns add "$netns_h1" 2>&1)" || { echo "${why:-ip netns add failed}"; return 1; }
  ip netns add "$netns_h2"
  ip link add "$netns_bridge" type bridge
  ip addr add 198.18.7.1/24 dev "$netns_bridge"
  ip link set "$netns_bridge" up
  for i in 1 2; do
    ns="accel-h$i"
    ip link add "accel-v$i" type veth peer name "accel-p$i"
    ip link set "accel-p$i" netns "$ns"
    ip link set "accel-v$i" master "$netns_bridge"
    ip link set "accel-v$i" up
    ip netns exec "$ns" ip addr add "198.18.7.1$i/24" dev "accel-p$i"
    ip netns exec "$ns" ip link set "accel-p$i" up
    ip netns exec "$ns" ip link set lo up
    [[ "$(ip netns exec "$ns" ip -o addr show "accel-p$i" 2>/dev/null)" == *"198.18.7.1$i/"* ]] \
      || { echo "the network of namespace $ns could not be set up"; return 1; }
  done
}
