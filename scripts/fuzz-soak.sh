#!/usr/bin/env bash
# The fuzz soak: every parser's property tests — events, DescribeTrainingJob, ledger records,
# price tables, manifests, continuation templates, safetensors headers — for
# SPOTCHECK_SOAK_CASES cases per parser (default 1,000,000), each parser within
# SPOTCHECK_SOAK_SECONDS (default 1800), one parser at a time, then a table: parser, cases,
# rejected inputs, seconds, failures, peak resident memory, status. The soaks are the
# `#[ignore]`d `soak_*` tests beside each parser's fuzz tests (crates/fuzz/src/soak.rs drives
# them); `cargo test` runs the same properties with the per-test case counts.
#
#   scripts/fuzz-soak.sh                               # the full soak
#   SPOTCHECK_SOAK_CASES=20000 scripts/fuzz-soak.sh    # a quick one
#   SPOTCHECK_SOAK_SEED=<64 hex digits> scripts/fuzz-soak.sh   # replay a run (seeds are printed)
#
# Exit status 0 only when every parser ran all its cases without a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

export SPOTCHECK_SOAK_CASES=${SPOTCHECK_SOAK_CASES:-1000000}
export SPOTCHECK_SOAK_SECONDS=${SPOTCHECK_SOAK_SECONDS:-1800}
# A failing case is caught and counted; a backtrace per failure would only cost time and memory.
export RUST_BACKTRACE=0
report=$(mktemp)
trap 'rm -f "$report"' EXIT
export SPOTCHECK_SOAK_REPORT=$report

expected=("events" "DescribeTrainingJob" "ledger records" "price tables" "manifests"
    "continuation templates" "safetensors headers")

# Build first, so the seconds below are the soak's own.
cargo test --workspace --locked --tests --no-run
start=$SECONDS
status=0
cargo test --workspace --locked --tests --no-fail-fast -- --ignored --test-threads=1 soak_ ||
    status=$?

printf '\n%s cases per parser, %s s budget per parser, %s s in all\n\n' \
    "$SPOTCHECK_SOAK_CASES" "$SPOTCHECK_SOAK_SECONDS" "$((SECONDS - start))"
printf '| parser | cases | rejected | seconds | failures | peak RSS (MiB) | status |\n'
printf '|---|---:|---:|---:|---:|---:|---|\n'
while IFS=$'\t' read -r parser cases rejected seconds failures rss state _seed; do
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' \
        "$parser" "$cases" "$rejected" "$seconds" "$failures" "$rss" "$state"
done <"$report"
printf '\nseeds (SPOTCHECK_SOAK_SEED replays one):\n'
cut -f1,8 "$report" | sed 's/^/  /'

for parser in "${expected[@]}"; do
    if ! cut -f1 "$report" | grep -qxF "$parser"; then
        echo "error: no soak result for $parser" >&2
        status=1
    fi
done
if cut -f7 "$report" | grep -qvxF ok; then
    status=1
fi
exit "$status"
