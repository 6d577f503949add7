#!/usr/bin/env bash
# The main job: load GLUE MRPC, tokenize every split with the shipped MiniLM through the cache,
# and print the dataset and length statistics.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ensure_toolchain
cd "$repo_root"
cargo build --release --quiet
./target/release/accel data show glue/mrpc
./target/release/accel data tokenize glue/mrpc --model all-MiniLM-L6-v2 "$@"
