#!/usr/bin/env bash
# The whole system on one machine: `spotcheck demo` trains the real Fashion-MNIST classifier as a
# managed-spot job on the local SageMaker-compatible service while a simulated spot market takes
# capacity away; the control plane (the Lambda's handler code) validates checkpoints and relaunches;
# the report compares the final weights with an uninterrupted run and prices the lineage.
#
#   scripts/demo.sh [demo flags, e.g. --seed 3 --interruptions-per-hour 3 --steps 900]
#
# Output: work/demo/report.{txt,json,html}. `spotcheck demo --help` lists every flag.
#
# It builds the workspace's binaries with the dev profile (the trainer and every dependency are
# optimised there anyway): the same feature set as `cargo test --workspace`, so after the test
# suite nothing is rebuilt, and a per-package build would recompile the AWS SDK for its smaller
# feature set.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --workspace --bins
exec "${CARGO_TARGET_DIR:-target}/debug/spotcheck" demo "$@"
