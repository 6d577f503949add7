#!/usr/bin/env bash
# Runs the whole test suite in release mode (numeric code is far too slow in debug).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ensure_toolchain
cd "$repo_root"
cargo test --release --workspace "$@"
