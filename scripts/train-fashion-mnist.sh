#!/usr/bin/env bash
# The main job on one machine: train the classifier on real Fashion-MNIST with spotcheck's
# trainer, checkpointing as it goes. Interrupt it (Ctrl-C, or `kill` it) and run this again:
# it resumes from the newest valid checkpoint and ends with exactly the same model.
#
#   scripts/train-fashion-mnist.sh [extra trainer flags, e.g. --hp epochs=2]
#
# Output: work/fashion-mnist/{checkpoints,model}. Installs the Debian dataset package on first
# use when run as root (else prints the command to run).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=/usr/share/datasets/fashion-mnist
if [ ! -f "$DATA/train-images-idx3-ubyte.gz" ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
    else
        echo "Fashion-MNIST is missing: run  sudo apt-get install dataset-fashion-mnist" >&2
        exit 1
    fi
fi
OUT=${OUT:-work/fashion-mnist}
cargo build --release -p spotcheck-trainer --bin train
exec target/release/train --data "$DATA" --checkpoint-dir "$OUT/checkpoints" --model-dir "$OUT/model" \
    --hp epochs=1 --hp batch_size=64 --hp model_width=16 --hp model_hidden=128 \
    --hp learning_rate=0.002 --hp warmup_steps=50 --hp checkpoint_every_seconds=20 "$@"
