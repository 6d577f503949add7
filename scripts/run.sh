#!/usr/bin/env bash
# The main job: fine-tune the shipped MiniLM on GLUE MRPC on the CPU (configs/mrpc.toml: 3 epochs,
# batch 8, AdamW 5e-5, linear schedule), evaluating after each epoch and printing the final
# validation accuracy and F1. Extra arguments go to `accel train` (e.g. --set seed=7).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ensure_toolchain
cd "$repo_root"
cargo build --release --quiet
./target/release/accel train --config configs/mrpc.toml "$@"
