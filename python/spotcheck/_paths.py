"""Where checkpoints go on SageMaker and elsewhere: the training-container contract.

Pure functions of an environment mapping and a file reader, with the same rules as the Rust
trainer (trainer/src/sagemaker.rs): the checkpoint root is CheckpointConfig's LocalPath from
``/opt/ml/input/config/checkpointconfig.json`` (else ``/opt/ml/checkpoints``); the namespace is
``rank-<RANK>`` in a multi-process job (``WORLD_SIZE`` > 1), else ``SM_CURRENT_HOST``, else
``current_host`` of ``resourceconfig.json``, else ``algo-1``;
SageMaker uploads the root to S3 (and deletes there what is deleted here) when the config
names an ``S3Uri`` and the root is its LocalPath. ``SPOTCHECK_OPT_ML`` moves ``/opt/ml`` (for
tests and local runs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Mapping, Optional, Tuple

OPT_ML = "/opt/ml"
DEFAULT_NAMESPACE = "algo-1"

Reader = Callable[[Path], Optional[bytes]]


def read_file(path: Path) -> Optional[bytes]:
    """A small file's bytes, or None when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError:
        return None


def _opt_ml(env: Mapping[str, str]) -> Path:
    return Path(env.get("SPOTCHECK_OPT_ML") or OPT_ML)


def _json_field(raw: Optional[bytes], field: str) -> Optional[str]:
    if raw is None:
        return None
    try:
        value = json.loads(raw).get(field)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def checkpoint_root(env: Mapping[str, str] = os.environ, read: Reader = read_file) -> Path:
    """SageMaker's checkpoint LocalPath, else ``/opt/ml/checkpoints``."""
    opt = _opt_ml(env)
    local = _json_field(read(opt / "input/config/checkpointconfig.json"), "LocalPath")
    return Path(local) if local else opt / "checkpoints"


def checkpoint_synced(
    directory: Path, env: Mapping[str, str] = os.environ, read: Reader = read_file
) -> bool:
    """Whether SageMaker's checkpoint sync mirrors ``directory`` to S3."""
    opt = _opt_ml(env)
    raw = read(opt / "input/config/checkpointconfig.json")
    if _json_field(raw, "S3Uri") is None:
        return False
    local = _json_field(raw, "LocalPath")
    return Path(directory) == (Path(local) if local else opt / "checkpoints")


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(env.get(name, default))
    except ValueError:
        return default


def ranks(env: Mapping[str, str] = os.environ) -> Tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` as ``torchrun`` (or the job's launcher) sets them;
    ``(0, 1, 0)`` for a process that is not part of a process group."""
    world = max(_int(env, "WORLD_SIZE", 1), 1)
    rank = min(max(_int(env, "RANK", 0), 0), world - 1)
    return rank, world, max(_int(env, "LOCAL_RANK", 0), 0)


def rank_namespace(rank: int) -> str:
    """The namespace of one rank of a multi-process job: ranks, not hosts, own checkpoints
    (several may share a host, and a restarted job may place them on other hosts; every host
    sees every namespace, since SageMaker copies the whole prefix into each at start)."""
    return f"rank-{rank:05d}"


def namespace(env: Mapping[str, str] = os.environ, read: Reader = read_file) -> str:
    """This process's checkpoint namespace (all hosts of a job share one S3 prefix): its rank's
    in a multi-process job, else the host's."""
    rank, world, _ = ranks(env)
    if world > 1:
        return rank_namespace(rank)
    host = env.get("SM_CURRENT_HOST")
    if host:
        return host
    host = _json_field(read(_opt_ml(env) / "input/config/resourceconfig.json"), "current_host")
    return host or DEFAULT_NAMESPACE
