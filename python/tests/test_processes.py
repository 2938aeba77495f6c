"""The example training script as separate processes: killed with SIGKILL at random moments
and resumed, stopped by SIGTERM through `spotcheck run`, stopped by spot notices from a fake
IMDS with and without the launcher."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import List, Optional

import pytest

from conftest import child_env, example_args, nth_line, python, read_lines_until, spotcheck_bin, validate

NS = "algo-1"
KILLS = 20
#: Seeded, printed, overridable: a failure can be replayed with the same kill plan.
SEED = int(os.environ.get("SPOTCHECK_KILL_SEED", "20261129"))
#: Long enough that a kill aimed at a save lands between the data files and the manifest.
PERSIST_PAUSE_MS = 250


def final_state_bytes(folder: Path) -> dict:
    return {name: (folder / name).read_bytes() for name in ("model.safetensors", "optimizer.safetensors", "optimizer.json")}


def start(args: List[str], env: dict, stderr_path: Path, launcher: Optional[List[str]] = None) -> subprocess.Popen:
    cmd = [*(launcher or []), python(), *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=open(stderr_path, "ab"), text=True)


def test_sigkill_at_random_moments_then_resume_ends_byte_identical(tmp_path):
    """20 SIGKILLs, about half aimed at saves in flight; model and optimizer state at the end
    equal an uninterrupted run's byte for byte (deterministic algorithms on CPU, one thread),
    through a StatefulDataLoader resumed mid-epoch."""
    run_args = ["--model", "convnet", "--epochs", "40", "--every-steps", "4", "--no-adaptive", "--keep", "2"]
    ref = tmp_path / "reference"
    done = subprocess.run(
        [python(), *example_args(ref / "ckpt", ref / "model", *run_args, "--final-state", str(ref / "final"))],
        env=child_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    total = int(done.stdout.strip().splitlines()[-1].split("=")[1])

    rng = random.Random(SEED)
    print(f"kill plan seed: {SEED} (SPOTCHECK_KILL_SEED replays it)")
    run = tmp_path / "killed"
    args = example_args(run / "ckpt", run / "model", *run_args, "--final-state", str(run / "final"))
    env = child_env(tmp_path, SPOTCHECK_FAULT_PERSIST_PAUSE_MS=str(PERSIST_PAUSE_MS))
    kills, resumed_from = 0, []
    torn_names: set = set()
    while True:
        proc = start(args, env, tmp_path / "stderr.log")
        seen: List[str] = []
        ready = read_lines_until(proc, lambda line: line.startswith("ready "), seen)
        resumed_from.append(int(ready.split()[1].split("=")[1]))
        if kills == KILLS:
            rest = proc.stdout.read()
            assert proc.wait(timeout=900) == 0, (tmp_path / "stderr.log").read_text()[-3000:]
            assert "done step=" in rest
            break
        if rng.random() < 0.5:
            target, what, skip = "saving ", "a save in flight", rng.randint(0, 3)
            delay = rng.uniform(0.0, PERSIST_PAUSE_MS / 1000 * 0.6)
        else:
            target, what, skip = "step ", "a training step", rng.randint(0, 40)
            delay = rng.uniform(0.0, 0.02)
        line = read_lines_until(proc, nth_line(target, skip), seen)
        assert not line.startswith("done "), f"the run finished before kill {kills + 1}; lengthen it"
        time.sleep(delay)  # the random moment, after the aimed-at event
        proc.kill()
        proc.wait(timeout=60)
        proc.stdout.close()
        kills += 1
        report = validate(run / "ckpt")
        torn = {c["name"] for c in report["checkpoints"] if c["status"] != "valid"}
        print(
            f"kill {kills}: {what}, {skip} events + {delay * 1000:.0f} ms after resuming at step "
            f"{resumed_from[-1]}; not valid now: {sorted(torn)}"
        )
        torn_names |= torn
    assert kills == KILLS
    assert len(torn_names) >= 3, f"kills landed in saves (leaving torn checkpoints) only {len(torn_names)} times"
    assert resumed_from[0] == 0 and len({s for s in resumed_from if s > 0}) >= 3, resumed_from
    assert final_state_bytes(run / "final") == final_state_bytes(ref / "final")
    assert json.loads((run / "final" / "optimizer.json").read_text())["step"] == total


def run_until_line(proc: subprocess.Popen, prefix: str, seen: List[str]) -> str:
    return read_lines_until(proc, lambda line: line.startswith(prefix), seen)


def stopped_step(lines: List[str], reason: str) -> int:
    for line in lines:
        if line.startswith("stopping at step "):
            assert f"({reason})" in line, line
            return int(line.split()[3])
    raise AssertionError(f"no 'stopping at step' line in {lines[-10:]}")


def test_sigterm_through_spotcheck_run_ends_in_a_final_checkpoint_and_143(tmp_path):
    ckpt = tmp_path / "ckpt"
    args = example_args(ckpt, tmp_path / "model", "--epochs", "100000")
    proc = start(args, child_env(tmp_path), tmp_path / "stderr.log", [str(spotcheck_bin()), "run", "--"])
    seen: List[str] = []
    run_until_line(proc, "step 30", seen)
    proc.send_signal(signal.SIGTERM)
    seen.extend(proc.stdout.read().splitlines())
    assert proc.wait(timeout=120) == 143, (tmp_path / "stderr.log").read_text()[-3000:]
    step = stopped_step(seen, "signal")
    assert validate(ckpt)["latest_valid"] == f"{NS}/step-{step:012d}"
    # Resuming starts exactly there.
    again = start(args + ["--max-steps", str(step + 3)], child_env(tmp_path), tmp_path / "stderr.log")
    out = again.stdout.read()
    assert again.wait(timeout=300) == 0
    assert out.startswith(f"ready step={step} ")


class FakeImds:
    """IMDSv2 on loopback: the token, and the two spot endpoints answering 404 until set."""

    def __init__(self) -> None:
        self.spot: Optional[str] = None
        self.rebalance: Optional[str] = None
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: Optional[str]) -> None:
                data = (body or "").encode()
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                self._answer("token" if self.path == "/latest/api/token" else None)

            def do_GET(self) -> None:
                if self.path == "/latest/meta-data/spot/instance-action":
                    self._answer(imds.spot)
                elif self.path == "/latest/meta-data/events/recommendations/rebalance":
                    self._answer(imds.rebalance)
                else:
                    self._answer(None)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def imds():
    fake = FakeImds()
    yield fake
    fake.close()


@pytest.mark.parametrize("launcher", [False, True], ids=["package-polls", "spotcheck-run-polls"])
def test_a_spot_notice_ends_in_a_final_checkpoint_and_143(tmp_path, imds, launcher):
    ckpt = tmp_path / "ckpt"
    args = example_args(ckpt, tmp_path / "model", "--epochs", "100000")
    env = child_env(
        tmp_path,
        SPOTCHECK_IMDS="on",
        AWS_EC2_METADATA_SERVICE_ENDPOINT=imds.url,
        SPOTCHECK_IMDS_POLL_SECONDS="0.05",
    )
    prefix = [str(spotcheck_bin()), "run", "--imds-poll-seconds", "0.05", "--"] if launcher else None
    proc = start(args, env, tmp_path / "stderr.log", prefix)
    seen: List[str] = []
    run_until_line(proc, "step 20", seen)
    imds.spot = json.dumps({"action": "terminate", "time": "2026-11-29T12:02:00Z"})
    seen.extend(proc.stdout.read().splitlines())
    assert proc.wait(timeout=120) == 143, (tmp_path / "stderr.log").read_text()[-3000:]
    step = stopped_step(seen, "spot-notice")
    assert validate(ckpt)["latest_valid"] == f"{NS}/step-{step:012d}"


def test_a_rebalance_through_spotcheck_run_asks_for_one_extra_checkpoint(tmp_path, imds):
    ckpt = tmp_path / "ckpt"
    # No periodic saves after the first: any later save is the rebalance's.
    args = example_args(ckpt, tmp_path / "model", "--epochs", "100000", "--every-steps", "100000", "--no-adaptive")
    env = child_env(tmp_path, SPOTCHECK_IMDS="on", AWS_EC2_METADATA_SERVICE_ENDPOINT=imds.url)
    launcher = [str(spotcheck_bin()), "run", "--imds-poll-seconds", "0.05", "--"]
    proc = start(args, env, tmp_path / "stderr.log", launcher)
    seen: List[str] = []
    run_until_line(proc, "saving 1", seen)
    run_until_line(proc, "step 20", seen)
    imds.rebalance = json.dumps({"noticeTime": "2026-11-29T12:00:00Z"})
    line = run_until_line(proc, "saving ", seen)
    extra = int(line.split()[1])
    assert extra > 20
    run_until_line(proc, f"step {extra + 40}", seen)
    assert not [l for l in seen if l.startswith("saving ") and int(l.split()[1]) > extra], "only one extra save"
    proc.send_signal(signal.SIGTERM)
    seen.extend(proc.stdout.read().splitlines())
    assert proc.wait(timeout=120) == 143
    names = [c["name"] for c in validate(ckpt)["checkpoints"] if c["status"] == "valid"]
    assert f"{NS}/step-{extra:012d}" in names
