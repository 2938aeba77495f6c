#!/usr/bin/env bash
# The Python package (python/) against real PyTorch: builds its wheel with maturin, installs it
# into .venv-torch (pinned torch, torchdata, safetensors, pytest, maturin from
# tests/python-requirements/torch.lock.txt; created on first use), and runs its tests.
#
#   scripts/python-tests.sh [test] [PYTEST ARGS...]   install, build the CLI, run python/tests
#   scripts/python-tests.sh install                   only the venv and the freshly built wheel
#                                                     (the Rust replay suite's PyTorch test
#                                                     writes its checkpoint with it)
#   scripts/python-tests.sh install-release           the same with an optimised build (for
#                                                     bench/py_checkpoint.py)
#
# Exits non-zero when a test fails. CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-test}
[[ $# -gt 0 ]] && shift
case "$what" in
    install | install-release | test) ;;
    *)
        echo "usage: $0 [install|install-release|test] [pytest args...]" >&2
        exit 2
        ;;
esac

bash scripts/python-tools.sh torch
VENV=$PWD/.venv-torch
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
WHEELS=$TARGET/wheels/spotcheck
rm -rf "$WHEELS"
profile=()
[[ $what == install-release ]] && profile=(--release)
start=$SECONDS
"$VENV/bin/maturin" build --locked "${profile[@]}" --manifest-path python/Cargo.toml \
    --interpreter "$VENV/bin/python" --out "$WHEELS"
.venv-uv/bin/uv pip install --quiet --python "$VENV/bin/python" --reinstall --no-deps "$WHEELS"/spotcheck-*.whl
echo "[python-tests] spotcheck wheel built and installed into .venv-torch ($((SECONDS - start)) s)" >&2
[[ $what != test ]] && exit 0

cargo build --workspace --locked
SPOTCHECK_BIN=$TARGET/debug/spotcheck "$VENV/bin/python" -m pytest python/tests -ra "$@"
