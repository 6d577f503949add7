#!/usr/bin/env bash
# The main job: fine-tune the shipped MiniLM on GLUE MRPC as 2 MPI ranks on the CPU
# (configs/mrpc-2ranks.toml: 3 epochs, 4 rows per rank = the course's batch of 8 per step, AdamW
# 5e-5, linear schedule), evaluating after each epoch and printing the final validation accuracy and
# F1. Extra arguments go to `accel train` (e.g. --set seed=7).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ensure_toolchain
cd "$repo_root"
cargo build --release --quiet
./target/release/accel launch train --config configs/mrpc-2ranks.toml "$@"
