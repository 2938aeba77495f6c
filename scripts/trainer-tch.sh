#!/usr/bin/env bash
# Cargo for the trainer with its libtorch backend (`--features tch`), against the PyTorch 2.9.0 in
# .venv-libtorch (installed from tests/python-requirements/libtorch.lock.txt on first use): burn
# 0.21's burn-tch pins tch 0.22, which binds libtorch 2.9.0 exactly. LIBTORCH_USE_PYTORCH keeps
# torch-sys from downloading a libtorch; the trainer's build script embeds the library directory
# as an rpath, so the binary runs without LD_LIBRARY_PATH while the venv stays where it is.
#
#   scripts/trainer-tch.sh build [--release] --bin train    target/{debug,release}/train on libtorch
#   scripts/trainer-tch.sh test --test resume             exact-resume tests on libtorch
#   scripts/trainer-tch.sh clippy                        lints of the tch-only code
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-build}
[[ $# -gt 0 ]] && shift
bash scripts/python-tools.sh libtorch
VENV=$PWD/.venv-libtorch
export VIRTUAL_ENV=$VENV PATH=$VENV/bin:$PATH LIBTORCH_USE_PYTORCH=1
# Workspace-wide, as the suite's own build: the same dependency features, so only burn, libtorch's
# bindings and the trainer build again (with `-p` the AWS SDK would too).
feature=(--workspace --locked --features spotcheck-trainer/tch)
case "$what" in
    build | test)
        exec cargo "$what" "${feature[@]}" "$@"
        ;;
    clippy)
        exec cargo clippy "${feature[@]}" --all-targets -- -D warnings
        ;;
    *)
        echo "usage: $0 [build|test|clippy] [cargo args...]" >&2
        exit 2
        ;;
esac
