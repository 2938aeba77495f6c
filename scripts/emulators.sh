#!/usr/bin/env bash
# AWS emulators for the event-replay tests, on loopback, without Docker:
#   LocalStack 4.3.0 (S3, EventBridge, SQS, EC2, STS, IAM, CloudFormation, Logs) on 127.0.0.1:4566
#   moto server 5.2.5 (SageMaker; LocalStack's free edition has none)  on 127.0.0.1:5000
#
#   scripts/emulators.sh install   create/update .venv-localstack and .venv-moto from the frozen
#                                  locks in tests/python-requirements/ (idempotent; start does it)
#   scripts/emulators.sh start     install, start both in the background, wait until healthy
#   scripts/emulators.sh status    say what runs; exit 0 only if both are healthy
#   scripts/emulators.sh env       print the exports that point the AWS SDKs at them:
#                                    eval "$(scripts/emulators.sh env)"
#   scripts/emulators.sh stop      stop both (by their pid files)
#
# Ports: SPOTCHECK_LOCALSTACK_PORT (4566), SPOTCHECK_MOTO_PORT (5000); LocalStack services:
# SPOTCHECK_LOCALSTACK_SERVICES (the list above). Start timeout per emulator:
# SPOTCHECK_EMULATOR_TIMEOUT seconds (120). Logs and pid files: target/emulators/.
# Needs python3.11 (PYTHON=...) and PyPI for the first install. LocalStack runs on the host
# (`python -m localstack.runtime.main`); its Lambda executor needs Docker, so Lambda invocation is
# not emulated, and neither is creating functions through CloudFormation (LocalStack then tries
# to pull the runtime image and the stack fails), so infra/template.yaml cannot be deployed into
# it; it is checked statically (scripts/static-checks.sh) and its event patterns here
# (scripts/emulators-smoke.py).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
HOST=127.0.0.1
LOCALSTACK_PORT=${SPOTCHECK_LOCALSTACK_PORT:-4566}
MOTO_PORT=${SPOTCHECK_MOTO_PORT:-5000}
TIMEOUT=${SPOTCHECK_EMULATOR_TIMEOUT:-120}
STATE=target/emulators
REQ=tests/python-requirements
LOCALSTACK_LOCK=$REQ/localstack-4.3.0-py311.lock.txt
MOTO_LOCK=$REQ/moto.lock.txt
LOCALSTACK_SERVICES=${SPOTCHECK_LOCALSTACK_SERVICES:-s3,events,sqs,ec2,sts,iam,cloudformation,logs}

# LocalStack 4.3.0's default (twisted) gateway ignores the host of GATEWAY_LISTEN for IPv4 and
# listens on 0.0.0.0 ("TODO: interface = host?" in localstack/runtime/server/twisted.py); its
# hypercorn gateway binds correctly but answers S3's `Expect: 100-continue` with a malformed
# response (botocore: BadStatusLine on PutObject). So: the twisted gateway, with its IPv4 endpoint
# pinned to the loopback address given as argv[1], then LocalStack's own main.
LOCALSTACK_MAIN='
import runpy, sys
from twisted.internet import endpoints
_tcp4, _host = endpoints.TCP4ServerEndpoint, sys.argv[1]
def _loopback_tcp4(reactor, port, backlog=50, interface=""):
    return _tcp4(reactor, port, backlog, interface or _host)
endpoints.TCP4ServerEndpoint = _loopback_tcp4
sys.argv = ["localstack"]
runpy.run_module("localstack.runtime.main", run_name="__main__")
'

log() { printf '[emulators] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ensure_venv DIR LOCK: DIR matches LOCK exactly (uv pip sync: no resolution, extras removed).
ensure_venv() {
    local dir=$1 lock=$2 start=$SECONDS uv
    uv=$(bash scripts/python-tools.sh uv)
    if [[ ! -x "$dir/bin/python" ]] || ! "$dir/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
        log "creating $dir"
        "$uv" venv --quiet --clear --python "$PYTHON" "$dir"
    fi
    VIRTUAL_ENV="$PWD/$dir" "$uv" pip sync --quiet --python "$dir/bin/python" "$lock"
    log "$dir matches $lock ($((SECONDS - start)) s)"
}

install() {
    ensure_venv .venv-localstack "$LOCALSTACK_LOCK"
    ensure_venv .venv-moto "$MOTO_LOCK"
}

# pid_of NAME: the pid in NAME's pid file if that process is alive, else nothing.
pid_of() {
    local file=$STATE/$1.pid pid
    [[ -f "$file" ]] || return 0
    pid=$(<"$file")
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
        echo "$pid"
    fi
}

# http_ok URL: the URL answers 2xx within 3 s (Python from the moto venv: no curl needed).
http_ok() {
    .venv-moto/bin/python - "$1" <<'PY' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
    sys.exit(0 if 200 <= r.status < 300 else 1)
PY
}

# localstack_ok: health answers and every requested service is available or running.
localstack_ok() {
    .venv-moto/bin/python - "http://$HOST:$LOCALSTACK_PORT/_localstack/health" "$LOCALSTACK_SERVICES" <<'PY' 2>/dev/null
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
    services = json.load(r).get("services", {})
wanted = sys.argv[2].split(",")
sys.exit(0 if all(services.get(s) in ("available", "running") for s in wanted) else 1)
PY
}

moto_ok() { http_ok "http://$HOST:$MOTO_PORT/moto-api/data.json"; }

port_free() {
    .venv-moto/bin/python - "$HOST" "$1" <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no owner
try:
    s.bind((sys.argv[1], int(sys.argv[2])))
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
}

# launch NAME PORT CHECK COMMAND...: start COMMAND in its own session, wait for CHECK.
launch() {
    local name=$1 port=$2 check=$3 pid deadline
    shift 3
    if [[ -n "$(pid_of "$name")" ]] && "$check"; then
        log "$name already running (pid $(pid_of "$name")) on $HOST:$port"
        return
    fi
    stop_one "$name"
    port_free "$port" || die "$HOST:$port is taken by another process; set SPOTCHECK_${name^^}_PORT"
    : >"$STATE/$name.log"
    # setsid: the emulator leads its own process group, so stop can end it and its children.
    setsid "$@" >>"$STATE/$name.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$STATE/$name.pid"
    deadline=$((SECONDS + TIMEOUT))
    until "$check"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited during start-up; last lines of $STATE/$name.log:"
            tail -n 40 "$STATE/$name.log" >&2
            rm -f "$STATE/$name.pid"
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            log "$name not healthy after ${TIMEOUT} s; last lines of $STATE/$name.log:"
            tail -n 40 "$STATE/$name.log" >&2
            stop_one "$name"
            exit 1
        fi
        sleep 1
    done
    log "$name healthy on http://$HOST:$port (pid $pid, $((TIMEOUT - deadline + SECONDS)) s)"
}

stop_one() {
    local name=$1 pid i
    pid=$(pid_of "$name")
    if [[ -n "$pid" ]]; then
        # The pid leads its own process group (setsid): signal the group.
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 20; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
        log "$name stopped (pid $pid)"
    fi
    rm -f "$STATE/$name.pid"
}

start() {
    mkdir -p "$STATE"
    install
    local ls_dir="$PWD/$STATE/localstack-data"
    mkdir -p "$ls_dir"
    launch localstack "$LOCALSTACK_PORT" localstack_ok \
        env GATEWAY_LISTEN="$HOST:$LOCALSTACK_PORT" SERVICES="$LOCALSTACK_SERVICES" \
        LOCALSTACK_HOST="$HOST:$LOCALSTACK_PORT" \
        OVERRIDE_IN_DOCKER=0 DNS_ADDRESS=0 \
        PERSISTENCE=0 DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 \
        LOCALSTACK_VOLUME_DIR="$ls_dir" FILESYSTEM_ROOT="$ls_dir/fs" \
        .venv-localstack/bin/python -c "$LOCALSTACK_MAIN" "$HOST"
    launch moto "$MOTO_PORT" moto_ok \
        .venv-moto/bin/moto_server -H "$HOST" -p "$MOTO_PORT"
}

status() {
    local rc=0 name pid check
    for name in localstack moto; do
        check=${name}_ok
        pid=$(pid_of "$name")
        if [[ -n "$pid" ]] && [[ -x .venv-moto/bin/python ]] && "$check"; then
            echo "$name: running, healthy (pid $pid)"
        elif [[ -n "$pid" ]]; then
            echo "$name: running, NOT healthy (pid $pid; see $STATE/$name.log)"
            rc=3
        else
            echo "$name: stopped"
            rc=3
        fi
    done
    return "$rc"
}

env_exports() {
    local ls="http://$HOST:$LOCALSTACK_PORT" moto="http://$HOST:$MOTO_PORT"
    cat <<EOF
export AWS_ENDPOINT_URL=$ls
export AWS_ENDPOINT_URL_S3=$ls
export AWS_ENDPOINT_URL_EVENTBRIDGE=$ls
export AWS_ENDPOINT_URL_SQS=$ls
export AWS_ENDPOINT_URL_EC2=$ls
export AWS_ENDPOINT_URL_STS=$ls
export AWS_ENDPOINT_URL_IAM=$ls
export AWS_ENDPOINT_URL_CLOUDFORMATION=$ls
export AWS_ENDPOINT_URL_CLOUDWATCH_LOGS=$ls
export AWS_ENDPOINT_URL_SAGEMAKER=$moto
export AWS_ACCESS_KEY_ID=test
export AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE AWS_SESSION_TOKEN
EOF
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop)
        stop_one moto
        stop_one localstack
        ;;
    status) status ;;
    env) env_exports ;;
    *)
        log "usage: $0 install|start|stop|status|env"
        exit 2
        ;;
esac
