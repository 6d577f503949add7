#!/usr/bin/env bash
# The README's set-up on a bare machine: a minimal Debian of this machine's release (debootstrap's
# minbase: no compiler, no pkg-config, no libclang, no OpenMPI, no Python), with this machine's
# Rust toolchain bound in read-only (rustup's servers cannot be reached) and cargo's registry
# cache beneath a writable overlay, a copy of the repository, and ../shared bound read-only. In it,
# as root in a chroot and from the README alone:
#   scripts/test.sh --test tokenize      everything the test command installs (apt, oneMKL, TensorBoard),
#                                        then one test binary of the suite
#   cargo build --release, accel env, accel test (one process, resume and 2 ranks must pass)
#   scripts/run.sh --max-steps 20        the main job's install steps, then 20 steps of it as 2 ranks
# Downloads are cached under ~/.cache/accel/fresh-machine (the minbase tarball, apt's and pip's
# downloads, the chroot's target folder), outside the repository; the crates that probe the system
# (mpi-sys and the other -sys crates) are rebuilt on every run, since that is where a missing
# package shows. Where debootstrap or a chroot cannot run here, it says why and exits 0.
# usage: scripts/fresh_machine_check.sh   (as root)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

skip() {
  echo "fresh-machine check skipped: $*"
  exit 0
}

cache="${XDG_CACHE_HOME:-$HOME/.cache}/accel/fresh-machine"
rustup_home="${RUSTUP_HOME:-$HOME/.rustup}"
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
# The crates whose build scripts look for system libraries and tools (bindgen's libclang, mpicc,
# pkg-config, a C compiler).
sys_crates=(clang-sys mpi-sys mpi libmimalloc-sys onig_sys)

if [ "${1:-}" = "--in-namespace" ]; then
  root="$2"
  repo="$root/work/accel"
  suite="$3"
else
  [ "$(id -u)" -eq 0 ] || skip "it must run as root (debootstrap, mounts and chroot)"
  [ -d "$shared" ] || skip "no shared folder beside the repository ($shared)"
  [ -d "$rustup_home/toolchains" ] && [ -x "$cargo_home/bin/cargo" ] \
    || skip "no rustup toolchain under $rustup_home and $cargo_home to bind into the chroot"
  command -v unshare >/dev/null 2>&1 || skip "no unshare command (util-linux) for private namespaces"
  unshare --mount --pid --fork true 2>/dev/null || skip "cannot make private mount and process namespaces here"

  started=$SECONDS
  mkdir -p "$cache"
  suite="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
  [ -n "$suite" ] || skip "/etc/os-release names no Debian release (VERSION_CODENAME)"
  tarball="$cache/$suite-minbase.tar.gz"
  if [ ! -f "$tarball" ]; then
    if ! command -v debootstrap >/dev/null 2>&1; then
      echo "installing debootstrap" >&2
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; } \
        || skip "debootstrap is not installed and apt-get could not install it"
    fi
    mirror="$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)"
    mirror="${mirror:-http://deb.debian.org/debian}"
    build="$(mktemp -d /var/tmp/accel-minbase.XXXXXX)"
    echo "debootstrap --variant=minbase $suite from $mirror (cached as $tarball)"
    if ! debootstrap --variant=minbase "$suite" "$build" "$mirror" > "$cache/debootstrap.log" 2>&1; then
      tail -n 20 "$cache/debootstrap.log"
      rm -rf "$build"
      skip "debootstrap failed (its log: $cache/debootstrap.log)"
    fi
    tar -C "$build" -czf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$build"
  fi

  root="$(mktemp -d /var/tmp/accel-fresh.XXXXXX)"
  # The chroot's mounts exist only in the namespace below, so this removal never reaches them.
  trap 'rm -rf "$root"' EXIT
  tar -C "$root" -xzf "$tarball"
  echo "bare $suite root filesystem at $root ($((SECONDS - started)) s)"

  # The host's package sources, so the chroot installs what a fresh machine of this image would.
  if ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1; then
    rm -f "$root/etc/apt/sources.list"
    cp /etc/apt/sources.list.d/*.sources "$root/etc/apt/sources.list.d/"
  fi
  # And its network settings: the name server, and the certificate authorities and pip settings
  # through which this machine reaches the package registries.
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$root/etc/ssl/certs" "$root/usr/local/share/ca-certificates"
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
    cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
  fi
  [ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"

  # The repository as a clone has it (tracked files and untracked ones git does not ignore).
  repo="$root/work/accel"
  mkdir -p "$repo" "$root/work/shared"
  git -C "$repo_root" ls-files -z --cached --others --exclude-standard \
    | (cd "$repo_root" && tar --null --no-recursion -T - -cf -) | tar -C "$repo" -xf -

  # Mounts and every process of the check live in namespaces of their own: when the check ends,
  # however it ends, its mounts and leftover processes (mpirun's daemons) go with them.
  status=0
  unshare --mount --pid --fork bash "${BASH_SOURCE[0]}" --in-namespace "$root" "$suite" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "fresh-machine check FAILED after $((SECONDS - started)) s"
    exit "$status"
  fi
  echo "fresh-machine check passed in $((SECONDS - started)) s"
  exit 0
fi

bind_ro() { mkdir -p "$2" && mount --bind "$1" "$2" && mount -o remount,bind,ro "$2"; }
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
bind_ro "$shared" "$root/work/shared"
bind_ro "$rustup_home" "$root/root/.rustup"
bind_ro "$cargo_home/bin" "$root/root/.cargo/bin"
# cargo writes beside its registry (the index cache, unpacked sources): an overlay keeps the
# host's copy untouched.
overlay="$root/var/tmp/cargo-registry"
mkdir -p "$overlay/upper" "$overlay/work" "$root/root/.cargo/registry"
if [ -d "$cargo_home/registry" ]; then
  mount -t overlay overlay \
    -o "lowerdir=$cargo_home/registry,upperdir=$overlay/upper,workdir=$overlay/work" "$root/root/.cargo/registry"
fi
# Download caches and the target folder, kept between runs.
for d in apt pip target; do mkdir -p "$cache/$d"; done
mkdir -p "$root/root/.cache/pip" "$repo/target"
mount --bind "$cache/apt" "$root/var/cache/apt/archives"
mount --bind "$cache/pip" "$root/root/.cache/pip"
mount --bind "$cache/target" "$repo/target"

cat > "$root/root/fresh-steps.sh" <<STEPS
set -euo pipefail
cd /work/accel
step() { echo; echo "== \$* (at \$((SECONDS)) s)"; }
step "what a bare $suite has"
for tool in cc pkg-config mpirun python3; do
  command -v "\$tool" >/dev/null 2>&1 && echo "  \$tool: present" || echo "  \$tool: absent"
done
# A cached target folder must not hide a missing system package.
cargo clean --release --quiet $(printf -- '-p %s ' "${sys_crates[@]}") 2>/dev/null || true
step "scripts/test.sh --test tokenize (the test command's install steps and one test binary)"
bash scripts/test.sh --test tokenize
step "what the test command installed from PyPI"
bash scripts/install_onednn.sh
bash scripts/install_tensorboard.sh
step "cargo build --release"
cargo build --release
step "accel env"
./target/release/accel env
step "accel test"
./target/release/accel test | tee /tmp/accel-test.log
for check in "one process" "resume" "2 ranks"; do
  grep -q "^  ok    \$check:" /tmp/accel-test.log || { echo "accel test: the \$check check did not pass"; exit 1; }
done
step "scripts/run.sh --max-steps 20 (the main job's install steps, then 20 steps as 2 ranks)"
bash scripts/run.sh --max-steps 20 --output-dir /tmp/mrpc-20
test -f /tmp/mrpc-20/model.safetensors || { echo "the main job wrote no model"; exit 1; }
STEPS

echo "running the README's set-up in the chroot"
network_env=()
for var in SSL_CERT_FILE SSL_CERT_DIR PIP_CERT REQUESTS_CA_BUNDLE CURL_CA_BUNDLE PIP_INDEX_URL PIP_EXTRA_INDEX_URL \
    HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
  [ -n "${!var:-}" ] && network_env+=("$var=${!var}")
done
exec chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb CI="${CI:-}" "${network_env[@]}" \
  PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  bash /root/fresh-steps.sh
