#!/usr/bin/env bash
# The whole system on one machine: `spotcheck demo` trains the real Fashion-MNIST classifier as a
# managed-spot job on the local SageMaker-compatible service while a simulated spot market takes
# capacity away; the control plane (the Lambda's handler code) validates checkpoints and relaunches;
# the report compares the final weights with an uninterrupted run and prices the lineage.
#
#   scripts/demo.sh [demo flags, e.g. --seed 3 --interruptions-per-hour 3 --steps 900]
#
# Output: work/demo/report.{txt,json,html}. `spotcheck demo --help` lists every flag.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p spotcheck-trainer --bin train -p spotcheck-cli --bin spotcheck
exec target/release/spotcheck demo "$@"
