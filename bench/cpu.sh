#!/usr/bin/env bash
# CPU throughput of the trainer (both backends) against PyTorch on the same network, threads and
# machine, in one run (bench/cpu.py prints the table). Builds the two trainers first: the
# pure-Rust one, and the libtorch one against .venv-libtorch (scripts/trainer-tch.sh).
#
#   bash bench/cpu.sh [--rounds 5] [--threads 2] [--steps 300]
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
cargo build --workspace --locked --release --bin train
cp "$TARGET/release/train" "$OUT/train-flex"
bash scripts/trainer-tch.sh build --release --bin train
cp "$TARGET/release/train" "$OUT/train-tch"
.venv-libtorch/bin/python bench/cpu.py --flex "$OUT/train-flex" --tch "$OUT/train-tch" "$@"
