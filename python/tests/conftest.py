"""Shared helpers for the package's tests: real PyTorch, the example script, the CLI binary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "pytorch" / "train.py"

#: Variables that would change where checkpoints go or whether IMDS is polled.
_SCRUB = [
    "SM_CURRENT_HOST",
    "SM_MODEL_DIR",
    "SM_CHANNEL_TRAIN",
    "SM_OUTPUT_FAILURE",
    "SPOTCHECK_NOTICE_FILE",
    "SPOTCHECK_FAULT_PERSIST_PAUSE_MS",
    "SPOTCHECK_FAULT_PERSIST_GATE",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "SPOTCHECK_IMDS_POLL_SECONDS",
]


def spotcheck_bin() -> Path:
    """The `spotcheck` CLI: SPOTCHECK_BIN, else the workspace's debug build."""
    named = os.environ.get("SPOTCHECK_BIN")
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    path = Path(named) if named else target / "debug" / "spotcheck"
    assert path.exists(), (
        f"{path} is missing: build it with `cargo build --workspace --locked` "
        "(scripts/python-tests.sh does) or set SPOTCHECK_BIN"
    )
    return path


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """An environment with no SageMaker or spotcheck variables, IMDS off, /opt/ml moved."""
    for name in _SCRUB:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPOTCHECK_IMDS", "off")
    monkeypatch.setenv("SPOTCHECK_OPT_ML", str(tmp_path / "opt-ml"))
    return monkeypatch


def child_env(tmp: Path, **extra: str) -> Dict[str, str]:
    """The environment for an example-script process."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env.update(
        SPOTCHECK_IMDS="off",
        SPOTCHECK_OPT_ML=str(tmp / "opt-ml"),
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
    )
    env.update(extra)
    return env


def example_args(ckpt: Path, model_dir: Path, *more: str) -> List[str]:
    """A small deterministic run of the example: tiny model, synthetic data, one thread."""
    return [
        str(EXAMPLE),
        "--synthetic", "600",
        "--model", "tiny",
        "--batch-size", "16",
        "--threads", "1",
        "--seed", "3",
        "--checkpoint-dir", str(ckpt),
        "--model-dir", str(model_dir),
        "--print-steps",
        *more,
    ]


def validate(root: Path) -> dict:
    """`spotcheck validate ROOT` as JSON (any exit code)."""
    out = subprocess.run(
        [str(spotcheck_bin()), "validate", str(root)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode in (0, 1), out.stderr
    return json.loads(out.stdout)


def python() -> str:
    return sys.executable


def read_lines_until(proc: subprocess.Popen, predicate, seen: Optional[List[str]] = None) -> str:
    """Reads the child's stdout line by line until ``predicate(line)``; fails at EOF."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if seen is not None:
            seen.append(line)
        if predicate(line):
            return line
    raise AssertionError(f"the process ended (code {proc.wait()}) before the expected line; saw {seen[-20:] if seen else '?'}")


def nth_line(prefix: str, skip: int):
    """A ``read_lines_until`` predicate: true at the ``skip + 1``-th line starting with
    ``prefix``, or at the run's ``done`` line (which the caller treats as too late)."""
    counted = [0]

    def wanted(line: str) -> bool:
        if line.startswith("done "):
            return True
        if line.startswith(prefix):
            counted[0] += 1
            return counted[0] > skip
        return False

    return wanted
