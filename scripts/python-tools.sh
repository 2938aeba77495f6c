#!/usr/bin/env bash
# Installs the pinned Python tools the infra checks and the deploy need, each into its own venv
# under the repository root (all git-ignored as /.venv*), from the frozen, hash-pinned locks in
# tests/python-requirements/. Idempotent: `uv pip sync` leaves a venv that already matches its
# lock untouched (well under a second) and removes anything not in the lock.
#
#   scripts/python-tools.sh [check]   .venv-tools   cfn-lint, aws-sam-translator, aws-sam-cli,
#                                                   hadolint, shellcheck (tools.lock.txt)
#                                     .venv-checkov checkov (checkov.lock.txt; it pins boto3 1.35,
#                                                   aws-sam-cli pins 1.43, so they cannot share)
#   scripts/python-tools.sh deploy    .venv-deploy  cargo-lambda + zig, for `sam build`
#   scripts/python-tools.sh torch     .venv-torch   PyTorch (CPU use of PyPI's build), torchdata,
#                                                   safetensors, pytest, maturin: the Python
#                                                   package's tests and benchmark (torch.lock.txt)
#   scripts/python-tools.sh libtorch  .venv-libtorch PyTorch 2.9.0, the libtorch the trainer's `tch`
#                                                   feature builds against, and the CPU
#                                                   benchmark's PyTorch twin (libtorch.lock.txt)
#   scripts/python-tools.sh all       check and deploy
#   scripts/python-tools.sh uv        only bootstraps uv; prints its path
#
# Needs python3.11 (override with PYTHON=...) and PyPI. Regenerate a lock after editing its .in:
#   .venv-uv/bin/uv pip compile tests/python-requirements/X.in --python-version 3.11 \
#     --python-platform x86_64-unknown-linux-gnu --generate-hashes -o tests/python-requirements/X.lock.txt
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
UV_VERSION=0.13.9
REQ=tests/python-requirements

log() { printf '[python-tools] %s\n' "$*" >&2; }

# uv itself comes from PyPI into .venv-uv (no curl | sh installers: only registries are reachable).
ensure_uv() {
    if [[ -x .venv-uv/bin/uv ]] && [[ "$(.venv-uv/bin/uv --version 2>/dev/null)" == "uv ${UV_VERSION}"* ]]; then
        return
    fi
    command -v "$PYTHON" >/dev/null || { log "error: $PYTHON not found (set PYTHON=...)"; exit 1; }
    log "installing uv ${UV_VERSION} into .venv-uv"
    "$PYTHON" -m venv --clear .venv-uv
    .venv-uv/bin/python -m pip install --quiet --disable-pip-version-check "uv==${UV_VERSION}"
}

# ensure_venv DIR LOCK: create DIR with $PYTHON if needed, then make it match LOCK exactly.
ensure_venv() {
    local dir=$1 lock=$2 start=$SECONDS
    if [[ ! -x "$dir/bin/python" ]] || ! "$dir/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
        log "creating $dir"
        .venv-uv/bin/uv venv --quiet --clear --python "$PYTHON" "$dir"
    fi
    VIRTUAL_ENV="$PWD/$dir" .venv-uv/bin/uv pip sync --quiet --python "$dir/bin/python" "$lock"
    log "$dir matches $lock ($((SECONDS - start)) s)"
}

target=${1:-check}
ensure_uv
case "$target" in
    check)
        ensure_venv .venv-tools "$REQ/tools.lock.txt"
        ensure_venv .venv-checkov "$REQ/checkov.lock.txt"
        ;;
    deploy)
        ensure_venv .venv-deploy "$REQ/deploy.lock.txt"
        ;;
    torch)
        ensure_venv .venv-torch "$REQ/torch.lock.txt"
        ;;
    libtorch)
        ensure_venv .venv-libtorch "$REQ/libtorch.lock.txt"
        ;;
    all)
        ensure_venv .venv-tools "$REQ/tools.lock.txt"
        ensure_venv .venv-checkov "$REQ/checkov.lock.txt"
        ensure_venv .venv-deploy "$REQ/deploy.lock.txt"
        ;;
    uv)
        echo "$PWD/.venv-uv/bin/uv"
        ;;
    *)
        log "usage: $0 [check|deploy|torch|libtorch|all|uv]"
        exit 2
        ;;
esac
