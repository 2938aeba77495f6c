#!/usr/bin/env bash
# Static checks of the deployment files (infra/) and of the infra scripts. Installs its pinned
# tools first (scripts/python-tools.sh, idempotent), runs every check even after a failure, and
# exits non-zero if any failed. Offline apart from that install (PyPI).
#
#   1. cfn-lint on the SAM template as written
#   2. the SAM transform (aws-sam-translator, local CodeUri -> s3:// placeholder) to plain
#      CloudFormation in target/infra/, and cfn-lint on that (catches what only shows after the
#      transform, e.g. a bad Runtime on an AWS::Serverless::Function)
#   3. sam validate --lint
#   4. project checks (infra/tools/check_template.py): policy variable names match
#      crates/control/src/policy.rs, no wildcard IAM actions, functions are workspace crates,
#      every rule target has retries and a DLQ
#   5. checkov on the template, on the transformed output and on both Dockerfiles; deliberate
#      exceptions are inline skips with reasons (see .checkov.yaml)
#   6. hadolint on infra/Dockerfile and infra/Dockerfile.pytorch (the images cannot be built
#      here: no Docker engine)
#   7. shellcheck on the infra scripts, a syntax check of the infra Python
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/python-tools.sh check

OUT=target/infra
mkdir -p "$OUT"
TRANSFORMED=$OUT/template.transformed.json
rm -f "$TRANSFORMED"
export SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1}
TOOLS=.venv-tools/bin
CHECKOV=(.venv-checkov/bin/checkov --config-file .checkov.yaml)

failed=()
step() {
    local name=$1 start=$SECONDS
    shift
    printf '\n== %s\n' "$name"
    if "$@"; then
        printf -- '-- ok: %s (%d s)\n' "$name" "$((SECONDS - start))"
    else
        printf -- '-- FAILED: %s\n' "$name"
        failed+=("$name")
    fi
}

step "cfn-lint infra/template.yaml" "$TOOLS/cfn-lint" infra/template.yaml
step "SAM transform" "$TOOLS/python" infra/tools/sam_transform.py infra/template.yaml "$TRANSFORMED"
if [[ -s "$TRANSFORMED" ]]; then
    step "cfn-lint (transformed)" "$TOOLS/cfn-lint" "$TRANSFORMED"
    step "checkov (transformed)" "${CHECKOV[@]}" -f "$TRANSFORMED" --framework cloudformation
fi
step "sam validate --lint" "$TOOLS/sam" validate --lint -t infra/template.yaml
step "project checks" "$TOOLS/python" infra/tools/check_template.py infra/template.yaml
step "checkov infra/template.yaml" "${CHECKOV[@]}" -f infra/template.yaml --framework cloudformation
step "checkov infra/Dockerfile" "${CHECKOV[@]}" -f infra/Dockerfile --framework dockerfile
step "checkov infra/Dockerfile.pytorch" "${CHECKOV[@]}" -f infra/Dockerfile.pytorch --framework dockerfile
step "hadolint infra/Dockerfile" "$TOOLS/hadolint" infra/Dockerfile
step "hadolint infra/Dockerfile.pytorch" "$TOOLS/hadolint" infra/Dockerfile.pytorch
step "shellcheck" "$TOOLS/shellcheck" scripts/python-tools.sh scripts/static-checks.sh scripts/emulators.sh \
    scripts/fuzz-soak.sh scripts/python-tests.sh scripts/trainer-tch.sh bench/cpu.sh bench/gpu.sh
step "python syntax" "$TOOLS/python" -c 'import ast, sys; [ast.parse(open(p).read(), p) for p in sys.argv[1:]]' infra/tools/sam_transform.py \
    infra/tools/check_template.py scripts/emulators-smoke.py bench/cpu.py bench/torch_ref.py

echo
if ((${#failed[@]})); then
    printf 'static checks FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "static checks: all passed"
