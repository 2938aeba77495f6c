"""Two ranks of the example script, data-parallel over gloo (as torchrun or SageMaker's
multi-instance jobs start them: RANK, WORLD_SIZE, MASTER_ADDR/PORT): killed at random moments
and resumed together, one rank's checkpoint torn, one rank told to stop."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
from pathlib import Path
from typing import List

from conftest import child_env, example_args, nth_line, python, read_lines_until, validate

WORLD = 2
KILLS = 8
SEED = int(os.environ.get("SPOTCHECK_KILL_SEED", "20261130"))
RUN_ARGS = ["--model", "convnet", "--epochs", "6", "--every-steps", "4", "--no-adaptive", "--keep", "2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ns(rank: int) -> str:
    return f"rank-{rank:05d}"


def start_job(tmp: Path, run: Path, *more: str, env_extra=None) -> List[subprocess.Popen]:
    """Both ranks of one attempt, on one shared checkpoint root (as one host running torchrun)."""
    port = str(free_port())
    procs = []
    for rank in range(WORLD):
        env = child_env(
            tmp,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(WORLD),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            **(env_extra or {}),
        )
        args = example_args(run / "ckpt", run / "model", *RUN_ARGS, "--final-state", str(run / "final"), *more)
        procs.append(
            subprocess.Popen(
                [python(), *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=open(tmp / f"stderr-{rank}.log", "ab"),
                text=True,
            )
        )
    return procs


def finish(procs: List[subprocess.Popen], tmp: Path) -> List[str]:
    outs = []
    for rank, p in enumerate(procs):
        outs.append(p.stdout.read())
        assert p.wait(timeout=600) == 0, (tmp / f"stderr-{rank}.log").read_text()[-3000:]
    return outs


def ready_step(line: str) -> int:
    return int(line.split()[1].split("=")[1])


def final_bytes(folder: Path) -> dict:
    return {n: (folder / n).read_bytes() for n in ("model.safetensors", "optimizer.safetensors", "optimizer.json")}


def commit_steps(root: Path) -> List[int]:
    return sorted(int(p.name[len("commit-"):-len(".json")]) for p in root.glob("commit-*.json"))


def test_two_ranks_killed_at_random_moments_resume_together_byte_identical(tmp_path):
    ref = tmp_path / "reference"
    outs = finish(start_job(tmp_path, ref), tmp_path)
    assert all("done step=" in o for o in outs)
    total = int(outs[0].strip().splitlines()[-1].split("=")[1])
    assert validate(ref / "ckpt")["job"]["latest_complete_step"] == total

    rng = random.Random(SEED)
    print(f"kill plan seed: {SEED} (SPOTCHECK_KILL_SEED replays it)")
    run = tmp_path / "killed"
    env = {"SPOTCHECK_FAULT_PERSIST_PAUSE_MS": "60"}
    resumed: List[int] = []
    expected = 0
    for kill in range(KILLS + 1):
        procs = start_job(tmp_path, run, env_extra=env)
        ready = [ready_step(read_lines_until(p, lambda l: l.startswith("ready "))) for p in procs]
        # Both ranks resume from exactly the newest complete step.
        assert ready == [expected, expected], f"resumed from {ready}, newest complete step {expected}"
        resumed.append(ready[0])
        if kill == KILLS:
            finish(procs, tmp_path)
            break
        victim = rng.randrange(WORLD)
        target = "saving " if rng.random() < 0.5 else "step "
        skip = rng.randint(0, 2 if target == "saving " else 30)
        line = read_lines_until(procs[victim], nth_line(target, skip))
        assert not line.startswith("done "), f"the run finished before kill {kill + 1}; lengthen it"
        # One host is reclaimed without warning; SageMaker then restarts every host of the job.
        procs[victim].kill()
        procs[1 - victim].kill()
        for p in procs:
            p.wait(timeout=60)
            p.stdout.close()
        report = validate(run / "ckpt")
        latest = (report.get("job") or {}).get("latest_complete_step") or 0
        print(f"kill {kill + 1}: rank {victim} after {skip + 1} '{target.strip()}' lines; newest complete step {latest}")
        assert latest >= expected, f"complete step {expected} was lost (now {latest})"
        expected = latest
    assert resumed[0] == 0 and len({s for s in resumed if s > 0}) >= 3, resumed
    assert final_bytes(run / "final") == final_bytes(ref / "final")
    assert json.loads((run / "final" / "optimizer.json").read_text())["step"] == total


def test_a_torn_checkpoint_on_one_rank_makes_its_step_incomplete_everywhere(tmp_path):
    run = tmp_path / "run"
    finish(start_job(tmp_path, run, "--max-steps", "20"), tmp_path)
    root = run / "ckpt"
    steps = commit_steps(root)
    assert steps[-1] == 20 and len(steps) >= 2, steps
    newest, previous = steps[-1], steps[-2]
    # Rank 1's newest checkpoint loses the end of its model file (a torn upload or disk).
    model = root / ns(1) / f"step-{newest:012d}" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-100])

    report = validate(root)
    assert report["job"]["latest_complete_step"] == previous
    assert report["latest_valid"] == f"commit-{previous:012d}.json"
    torn = next(s for s in report["job"]["steps"] if s["step"] == newest)
    assert torn["status"] == "incomplete" and len(torn["problems"]) == 1, torn
    assert f"rank 1 ({ns(1)})" in torn["problems"][0] and "model.safetensors" in torn["problems"][0], torn

    # Both ranks resume from the previous complete step, rank 0 too, though its own newest
    # checkpoint is intact, and write the newest step again, complete this time.
    procs = start_job(tmp_path, run, "--max-steps", "20")
    ready = [ready_step(read_lines_until(p, lambda l: l.startswith("ready "))) for p in procs]
    finish(procs, tmp_path)
    assert ready == [previous, previous]
    assert validate(root)["job"]["latest_complete_step"] == newest


def test_a_stop_on_one_rank_stops_both_at_the_same_step_with_a_commit(tmp_path):
    run = tmp_path / "run"
    procs = start_job(tmp_path, run, "--epochs", "100000")
    seen: List[str] = []
    read_lines_until(procs[1], lambda l: l.startswith("step 15"), seen)
    procs[1].send_signal(signal.SIGTERM)  # only this host was told (a spot notice, a SIGTERM)
    stops = []
    for rank, p in enumerate(procs):
        line = read_lines_until(p, lambda l: l.startswith("stopping at step "))
        stops.append(int(line.split()[3]))
        p.stdout.read()
        assert p.wait(timeout=120) == 143, (tmp_path / f"stderr-{rank}.log").read_text()[-3000:]
    assert stops[0] == stops[1], stops
    assert commit_steps(run / "ckpt")[-1] == stops[0]
    assert validate(run / "ckpt")["job"]["latest_complete_step"] == stops[0]
