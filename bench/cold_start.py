#!/usr/bin/env python3
"""Cold start of a Lambda bootstrap, measured locally with no network.

Starts the binary with AWS_LAMBDA_RUNTIME_API pointed at a loopback listener and measures the
time from process start to its first runtime-API request (GET .../invocation/next): that is
when the function is ready for its first event (configuration read, SDK clients built, runtime
loop entered). Static credentials and a region are given so that nothing reaches for IMDS.

Usage: python3 bench/cold_start.py BINARY... [RUNS]   (RUNS defaults to 20)

e.g. python3 bench/cold_start.py target/release/sagemaker-events target/release/ec2-spot-events 20

Prints, per binary, its size and the median, p90 (nearest rank), min and max over RUNS starts,
after one unmeasured start that warms the page cache. docs/lambdas.md records the results.
"""
import os
import socket
import statistics
import subprocess
import sys
import time


def once(binary: str) -> float:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    env = {
        "PATH": os.environ.get("PATH", ""),
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{port}",
        "AWS_LAMBDA_FUNCTION_NAME": "cold-start",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_EC2_METADATA_DISABLED": "true",
        "SPOTCHECK_LEDGER_BUCKET": "ledger",
        "SPOTCHECK_LEDGER_PREFIX": "spotcheck/",
    }
    start = time.perf_counter()
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server.settimeout(10)
    try:
        conn, _ = server.accept()
        request = conn.recv(4096)
        ready = time.perf_counter()
        conn.close()
    finally:
        proc.kill()
        proc.wait()
        server.close()
    if b"/runtime/invocation/next" not in request:
        raise SystemExit(f"unexpected first request: {request[:200]!r}")
    return (ready - start) * 1000


def p90(samples: list) -> float:
    """Nearest-rank 90th percentile of sorted samples."""
    return samples[max(0, -(-len(samples) * 9 // 10) - 1)]


def main() -> None:
    args = sys.argv[1:]
    runs = 20
    if args and args[-1].isdigit():
        runs = int(args.pop())
    if not args or runs < 1:
        raise SystemExit(__doc__)
    for binary in args:
        once(binary)  # warm the page cache
        samples = sorted(once(binary) for _ in range(runs))
        print(
            f"{os.path.basename(binary)}: {os.path.getsize(binary)} bytes; process start -> first "
            f"/next request over {runs} runs: median {statistics.median(samples):.1f} ms, "
            f"p90 {p90(samples):.1f} ms, min {samples[0]:.1f} ms, max {samples[-1]:.1f} ms"
        )


if __name__ == "__main__":
    main()
