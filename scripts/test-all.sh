#!/usr/bin/env bash
# The whole test suite: formatting, lints, infra static checks, the AWS emulators, and every
# unit, integration and replay test. README.md and .ci/run both call this script, so they
# cannot drift apart. Installs what it needs (pinned Python tools, the emulators) on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> [%d s] %s\n' "$SECONDS" "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "infra static checks (cfn-lint, SAM transform, checkov, hadolint, shellcheck)"
bash scripts/static-checks.sh

step "headless Chromium (the HTML report's browser test)"
if ! command -v chromium >/dev/null; then
    apt=(env DEBIAN_FRONTEND=noninteractive apt-get)
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || { echo "chromium is missing: apt-get install -y chromium (as root)" >&2; exit 1; }
        apt=(sudo "${apt[@]}")
    fi
    "${apt[@]}" update -qq
    "${apt[@]}" install -y -qq chromium
fi
chromium --version

step "AWS emulators (LocalStack for S3/EventBridge/SQS/EC2, moto for SageMaker), cargo-lambda"
bash scripts/python-tools.sh deploy # cargo-lambda: the replay suite's Lambda runtime-API tests
bash scripts/emulators.sh start
trap 'bash scripts/emulators.sh stop' EXIT
eval "$(bash scripts/emulators.sh env)"
.venv-localstack/bin/python scripts/emulators-smoke.py

step "Python package: pinned PyTorch venv, the spotcheck wheel (the replay suite writes a checkpoint with it)"
bash scripts/python-tests.sh install

step "cargo test (unit, integration, replay)"
cargo test --workspace --locked

# The libtorch backend needs PyTorch 2.9.0 at build time, so it is its own step (the default
# build, the demo and every test above need no libtorch).
step "the trainer on libtorch (--features tch): lints, and the exact-resume tests on it"
bash scripts/trainer-tch.sh clippy
# The bit-exactness tests (the rest of resume.rs is backend-independent and ran above).
# A renamed test would silently drop out of the filter: the count is checked.
tch_tests=$(bash scripts/trainer-tch.sh test --test resume -- byte_identical uninterrupted_result sigterm compute 2>&1 | tee /dev/stderr)
grep -q "test result: ok. 5 passed" <<<"$tch_tests" || { echo "expected the 5 bit-exactness tests to run on libtorch" >&2; exit 1; }

step "Python package tests (pytest against real PyTorch)"
bash scripts/python-tests.sh test

# The README's first command exactly as a newcomer runs it: from the repository root, with
# its defaults (relative work directory, the default market with unwarned reclaims and a slow
# checkpoint uploader, default checkpoint settings) — only a shorter run. It exits non-zero
# unless the lineage completed with weights identical to the uninterrupted run's.
step "the README's first command: scripts/demo.sh (a shorter run)"
scripts/demo.sh --steps 240
