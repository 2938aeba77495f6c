"""Spot-safe checkpoints for PyTorch training scripts.

::

    from spotcheck.torch import Checkpointer

    ckpt = Checkpointer()                        # SageMaker's checkpoint folder, keep 3
    step = ckpt.restore(model=model, optimizer=opt, scheduler=sched, loader=loader) or 0
    for batch in loader:
        ...
        step += 1
        if ckpt.should_stop():                   # SIGTERM/SIGINT or a spot notice
            ckpt.save(step, model=model, optimizer=opt, scheduler=sched, loader=loader)
            ckpt.wait()
            sys.exit(143)
        if ckpt.due(step):                       # adaptive (Young/Daly) interval
            ckpt.save(step, model=model, optimizer=opt, scheduler=sched, loader=loader)
    ckpt.wait()

Keyword arguments are objects with ``state_dict()``/``load_state_dict()`` (modules,
optimizers, LR schedulers, ``torchdata``'s ``StatefulDataLoader``, …) or plain values (JSON,
tuples, tensors, NumPy arrays); restored plain values are in :attr:`Checkpointer.values`.
Python's, NumPy's and torch's CPU and CUDA random states are saved and restored as well.

:meth:`Checkpointer.save` blocks only while tensors are copied into reused host buffers
(pinned when they come from CUDA); a Rust thread, without the GIL, then writes, hashes
(SHA-256 and CRC-64/NVME), fsyncs and commits the checkpoint, manifest last, and applies
retention. One save is in flight at a time: ``save`` waits for the previous one first, and
:meth:`Checkpointer.due` says no while one is in flight, so periodic saves are skipped rather
than stall training.

The files are checkpoint format v1 (docs/checkpoint-format.md): ``<root>/<host>/step-N/`` with
one safetensors file per object (``model.safetensors`` holds exactly ``model.state_dict()``,
readable with ``safetensors.torch.load_file``), ``rng-states.safetensors``, ``state.json``
(everything that is not a tensor) and ``manifest.json``, written last. ``spotcheck validate``
and the control plane's S3 validation read them as they read the Rust trainer's.

In a multi-process job (``WORLD_SIZE`` > 1: ``torchrun``, SageMaker's multi-instance jobs) each
rank writes its own namespace (``rank-<RANK>``), and :meth:`~Checkpointer.restore`,
:meth:`~Checkpointer.due`, :meth:`~Checkpointer.should_stop`, :meth:`~Checkpointer.save` and
:meth:`~Checkpointer.wait` are collective: every rank calls them in the same order, after
``init_process_group``. The ranks save and stop at the same step, and once every rank's
checkpoint of a step is durable a job commit (``commit-<step>.json``, listing each rank's
manifest digest) makes the step complete; a restart resumes every rank from the newest complete
step, and retention never deletes it (docs/pytorch.md, "Multi-process jobs").
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from . import _group, _interval, _native, _paths, _tree
from ._native import CheckpointError
from ._stop import StopWatch

__all__ = ["Checkpointer", "CheckpointError", "EXIT_STOPPED"]

log = logging.getLogger("spotcheck")

#: The exit code after a stop with a durable checkpoint (128 + SIGTERM), as the trainer uses.
EXIT_STOPPED = 143

STATE_FILE = "state.json"
#: How often (seconds) :meth:`Checkpointer.due` looks at upload markers to pace the interval.
UPLOAD_CHECK_SECONDS = 0.2
RNG_FILE = "rng-states.safetensors"
STATE_FORMAT = "spotcheck.torch"
STATE_VERSION = 1

_DTYPES: Dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.complex64: "C64",
}
for _name, _st in [
    ("uint16", "U16"),
    ("uint32", "U32"),
    ("uint64", "U64"),
    ("float8_e4m3fn", "F8_E4M3"),
    ("float8_e5m2", "F8_E5M2"),
    ("float8_e4m3fnuz", "F8_E4M3FNUZ"),
    ("float8_e5m2fnuz", "F8_E5M2FNUZ"),
    ("float8_e8m0fnu", "F8_E8M0"),
]:
    if hasattr(torch, _name):
        _DTYPES[getattr(torch, _name)] = _st
_TORCH_DTYPES = {v: k for k, v in _DTYPES.items()}


def _upload_state(directory: str) -> str:
    """How far SageMaker's checkpoint sync is with the checkpoint in ``directory``."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return _interval.GONE
    if not any(n.endswith((".sagemaker-uploaded", ".sagemaker-uploading")) for n in names):
        return _interval.WAITING  # no marker: not uploaded, and no manifest to read
    if _native.fully_uploaded(directory):
        return _interval.UPLOADED
    return _interval.UPLOADING


def _is_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


def _ndarray_to_tensor(array: Any) -> torch.Tensor:
    return torch.frombuffer(bytearray(array.tobytes()), dtype=torch.uint8)


def _tensor_to_ndarray(tensor: torch.Tensor, dtype: str, shape: List[int]) -> Any:
    import numpy as np

    return np.frombuffer(tensor.numpy().tobytes(), dtype=np.dtype(dtype)).reshape(shape).copy()


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:
        return None
    return numpy


def _rng_state() -> Dict[str, Any]:
    state: Dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    np = _numpy()
    if np is not None:
        state["numpy"] = np.random.get_state(legacy=False)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    if "python" in state:
        random.setstate(state["python"])
    if "torch" in state:
        torch.set_rng_state(state["torch"].clone())
    np = _numpy()
    if "numpy" in state and np is not None:
        np.random.set_state(state["numpy"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([t.clone() for t in cuda])
        else:
            log.warning(
                "checkpoint has CUDA random states for %d devices, this machine has %d: not restored",
                len(cuda),
                torch.cuda.device_count(),
            )


def _loader_generators(obj: Any) -> Dict[str, torch.Generator]:
    """The generators a stateful DataLoader draws from when it starts an iterator, by path.

    torchdata's ``StatefulDataLoader`` restores the position within an epoch, but not the
    shuffle generator's state after it: a resumed loader starts its next epoch one draw (the
    iterator's base seed) away from the uninterrupted run's order. The Checkpointer saves
    these generators' states as they are at save time and puts them back after the resumed
    iterator is built.
    """
    if not isinstance(obj, torch.utils.data.DataLoader) or not callable(getattr(obj, "load_state_dict", None)):
        return {}
    found: Dict[str, torch.Generator] = {}
    holders = [
        ("generator", obj),
        ("sampler.generator", getattr(obj, "sampler", None)),
        ("batch_sampler.sampler.generator", getattr(getattr(obj, "batch_sampler", None), "sampler", None)),
    ]
    for path, holder in holders:
        generator = getattr(holder, "generator", None)
        if isinstance(generator, torch.Generator) and all(g is not generator for g in found.values()):
            found[path] = generator
    return found


def _start_restored_iterator(loader: Any) -> None:
    """Builds a just-restored StatefulDataLoader's iterator now, so that the random draws of
    building it happen before the random states are restored (``state_dict()`` on a loader
    without an iterator builds one from the loaded state, which the next ``iter()`` returns)."""
    loader.state_dict()


class _Buffer:
    """One file's reused host buffer and the layout it was planned for."""

    def __init__(self, key: Tuple, layout: Any, pinned: bool) -> None:
        self.key = key
        self.layout = layout
        self.pinned = pinned
        self.data = torch.empty(layout.data_len, dtype=torch.uint8, pin_memory=pinned)


#: Tensors smaller than this are copied out of the file buffer on restore: some consumers
#: (torch's generator ``set_state``, which torchdata's loader state uses too) read from the
#: start of a tensor's storage and ignore its offset. Larger ones (weights, optimizer moments)
#: stay zero-copy views, which every tensor operation handles.
OWN_STORAGE_BELOW = 1 << 20


def _view(buffer: torch.Tensor, start: int, end: int, dtype: torch.dtype, shape: List[int]) -> torch.Tensor:
    """The bytes ``[start, end)`` of a uint8 buffer as a tensor of ``dtype`` and ``shape``."""
    raw = buffer[start:end]
    size = torch.empty((), dtype=dtype).element_size()
    if start % size or end - start < OWN_STORAGE_BELOW:
        raw = raw.clone()  # its own storage (and aligned, whoever laid the file out)
    return raw.view(dtype).view(shape)


class Checkpointer:
    """Saves and restores training state as spot-safe checkpoints.

    Args:
        directory: the checkpoint root; ``None`` means SageMaker's CheckpointConfig
            LocalPath, else ``/opt/ml/checkpoints``.
        keep: valid checkpoints of this host to keep (at least 1). The newest valid one is
            never deleted, and incomplete ones are deleted only once a newer one is valid.
            Where SageMaker's checkpoint sync mirrors the folder, only fully uploaded
            checkpoints count, and the newest uploaded one is never deleted.
        namespace: this process's folder; default ``rank-<RANK>`` in a multi-process job, else
            ``SM_CURRENT_HOST`` or ``algo-1``. Processes sharing a root must use different
            namespaces.
        interruptions_per_hour: expected interruption rate for :meth:`due`'s adaptive
            interval (observed restarts raise it).
        every_steps, every_seconds: fixed triggers for :meth:`due`, besides the adaptive one.
        adaptive: whether :meth:`due` uses the Young/Daly interval.
        verify: what restore checks of every byte it loads: ``"crc"`` (size and CRC-64/NVME,
            at memory speed) or ``"full"`` (also SHA-256).
        handle_signals: install SIGTERM/SIGINT (and, under ``spotcheck run``, SIGUSR1)
            handlers that make :meth:`should_stop` true; needs the main thread.
        synced: whether an uploader mirrors the folder to S3 and deletes there what retention
            deletes here; ``None``: SageMaker's checkpoint sync of its LocalPath is detected.
    """

    def __init__(
        self,
        directory: Union[str, Path, None] = None,
        keep: int = 3,
        *,
        namespace: Optional[str] = None,
        interruptions_per_hour: float = 0.5,
        every_steps: Optional[int] = None,
        every_seconds: Optional[float] = None,
        adaptive: bool = True,
        verify: str = "crc",
        handle_signals: bool = True,
        synced: Optional[bool] = None,
    ) -> None:
        if verify not in ("crc", "full"):
            raise ValueError(f'verify must be "crc" or "full", not {verify!r}')
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.directory = Path(directory) if directory is not None else _paths.checkpoint_root()
        self.namespace = namespace or _paths.namespace()
        self.rank, self.world_size, self._local_rank = _paths.ranks()
        self._group = _group.Group(self.rank, self.world_size) if self.world_size > 1 else None
        # The newest step with a job commit (multi-process jobs), and the last agreement:
        # (stop, due, busy) with which of should_stop()/due() have not read it yet.
        self._committed_step = -1
        self._agreed = (False, False, False)
        self._unread: set = set()
        # Pacing of the agreement: boundaries left to skip, its cost, the step time (EMAs).
        self._agree_skip = 0
        self._agree_cost = 0.0
        self._step_seconds = 0.0
        self._last_boundary: Optional[float] = None
        self.keep = keep
        self.verify = verify
        self.synced = _paths.checkpoint_synced(self.directory) if synced is None else synced
        #: Plain values restored by :meth:`restore`, by keyword.
        self.values: Dict[str, Any] = {}
        #: Checkpoints :meth:`restore` passed over, newest first: ``(name, reason)``.
        self.skipped: List[Tuple[str, str]] = []
        #: The outcome of the last finished save (a dict from the native persister).
        self.last_saved: Optional[Dict[str, Any]] = None
        #: Counters: saves, failures, seconds the loop was blocked, seconds to durable.
        self.stats: Dict[str, float] = {
            "saves": 0,
            "failures": 0,
            "blocked_seconds": 0.0,
            "max_blocked_seconds": 0.0,
            "durable_seconds": 0.0,
            "bytes": 0,
        }
        # Testing hooks (unset in production): pause, or wait for a file, before the manifest.
        pause = os.environ.get("SPOTCHECK_FAULT_PERSIST_PAUSE_MS")
        self._pause_ms = int(pause) if pause else None
        self._gate = os.environ.get("SPOTCHECK_FAULT_PERSIST_GATE") or None
        self._persister = _native.Persister()
        self._buffers: Dict[str, _Buffer] = {}
        self._stop = StopWatch(handle_signals=handle_signals)
        self._schedule = _interval.Schedule(interruptions_per_hour, every_steps, every_seconds, adaptive)
        self._uploads = _interval.UploadWatch()
        self._uploads_checked = 0.0
        self._warned_no_markers = False
        self._durable_step: Optional[int] = None
        self._in_flight_step: Optional[int] = None
        self._restarts = 0
        self._train_seconds_base = 0.0
        self._started = time.monotonic()

    # -- stop and schedule -------------------------------------------------------------------

    def should_stop(self) -> bool:
        """True after SIGTERM/SIGINT or a spot interruption notice: save, wait, exit 143.
        In a multi-process job, true on every rank once any rank has been told to stop."""
        if self._group is None:
            return self._stop.should_stop()
        if "stop" not in self._unread:
            self._agree()
        self._unread.discard("stop")
        return self._agreed[0]

    @property
    def stop_reason(self) -> Optional[str]:
        """``"signal"`` or ``"spot-notice"`` once a stop was requested; ``"another-rank"``
        where another rank of the job was told to stop."""
        return self._stop.reason or ("another-rank" if self._agreed[0] else None)

    def due(self, step: Optional[int] = None) -> bool:
        """Whether a periodic save is due after ``step``: the first call, the fixed triggers,
        the adaptive interval, or a rebalance recommendation; never while a save is in flight.
        Called once per step, it also times the steps (a save's cost includes how much slower
        they run while it is written)."""
        now = time.monotonic()
        self._schedule.tick(now, self._in_flight_step is not None)
        self._collect()
        if self._uploads.pending and now - self._uploads_checked >= UPLOAD_CHECK_SECONDS:
            self._uploads_checked = now
            pace = self._uploads.check(now, _upload_state)
            if pace is not None:
                self._schedule.upload_pace(pace)
            if not self._warned_no_markers and self._uploads.silent(now):
                self._warned_no_markers = True
                log.warning(
                    "no checkpoint has been seen fully uploaded (no .sagemaker-uploaded markers): "
                    "retention keeps every checkpoint until one is; check that the checkpoint sync runs"
                )
        if self._group is not None:
            if "due" not in self._unread:
                self._agree()
            self._unread.discard("due")
            _, due, busy_anywhere = self._agreed
            every = self._schedule.every_steps
            fixed = bool(every) and step is not None and step % every == 0
            return not busy_anywhere and (due or fixed)
        busy = self._persister.busy()
        if self._stop.rebalance_pending() and not busy:
            return True
        return self._schedule.due(now, step, busy)

    def _agree(self) -> None:
        """At a step boundary of a multi-process job, one small all-reduce: whether any rank
        must stop, whether any rank's schedule (time-based, or a rebalance) wants a save,
        whether any rank's save is still in flight, and how many boundaries to skip before
        the next agreement (at most 1% of training time, at least once a second:
        :func:`_interval.agreement_gap`); and, when every rank holds the same newest durable
        step, that step's job commit. Skipped boundaries keep the last answers, with no save."""
        assert self._group is not None
        now = time.monotonic()
        if self._last_boundary is not None:
            dt = now - self._last_boundary
            self._step_seconds = dt if not self._step_seconds else 0.9 * self._step_seconds + 0.1 * dt
        self._last_boundary = now
        self._unread = {"stop", "due"}
        if self._agree_skip > 0:
            self._agree_skip -= 1
            self._agreed = (self._agreed[0], False, self._agreed[2])
            return
        self._collect()
        busy = self._persister.busy()
        want = self._stop.rebalance_pending() or self._schedule.due(now, None, busy)
        durable = -1 if self._durable_step is None else self._durable_step
        gap = _interval.agreement_gap(self._agree_cost, self._step_seconds)
        t0 = time.monotonic()
        stop, want_any, busy_any, newest, neg_oldest, neg_gap = self._group.max(
            [int(self._stop.should_stop()), int(want), int(busy), durable, -durable, -gap]
        )
        took = time.monotonic() - t0
        self._agree_cost = took if not self._agree_cost else 0.9 * self._agree_cost + 0.1 * took
        self._agreed = (bool(stop), bool(want_any), bool(busy_any))
        self._agree_skip = -neg_gap
        self._maybe_commit(newest, -neg_oldest)

    def _maybe_commit(self, newest: int, oldest: int) -> None:
        """Writes the job commit of ``newest`` when every rank's newest durable step is it and
        it has none yet (collective: every rank sees the same figures and enters together)."""
        if newest != oldest or newest <= self._committed_step:
            return
        assert self._group is not None
        digest = _native.manifest_sha256(str(self.directory), self.namespace, newest)
        entries = self._group.gather((self.rank, self.namespace, digest, int(time.time() * 1000)))
        self._committed_step = newest
        missing = [rank for rank, _, d, _ in entries if d is None]
        if missing:
            log.error("step %d: no manifest on rank(s) %s; the step stays incomplete", newest, missing)
            return
        if self._local_rank != 0:
            return  # one writer per host (the ranks of a host share its checkpoint folder)
        try:
            _native.write_commit(
                str(self.directory),
                newest,
                self.world_size,
                entries[0][3],
                [(rank, ns, d) for rank, ns, d, _ in entries],
                json.dumps({"writer": "spotcheck.torch"}),
            )
            log.info("step %d complete on all %d ranks: job commit written", newest, self.world_size)
        except CheckpointError as e:
            log.error("job commit of step %d failed: %s; the previous complete step stands", newest, e)

    # -- saving ------------------------------------------------------------------------------

    def save(self, step: int, **state: Any) -> bool:
        """Checkpoints ``state`` as step ``step``; returns once tensors are copied to host memory.

        Waits first for a save still in flight. Returns False (and does nothing) when ``step``
        is already this process's newest durable checkpoint.
        """
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step must be a non-negative int, not {step!r}")
        if not state:
            raise ValueError("nothing to save: pass the state as keyword arguments")
        t0 = time.monotonic()
        self.wait()
        if step == self._durable_step:
            return False
        t1 = time.monotonic()
        files, document = self._snapshot(step, state)
        meta = {"framework": "pytorch", "writer": "spotcheck.torch"}
        files.append((STATE_FILE, json.dumps(document, allow_nan=False).encode()))
        submitted = self._persister.submit(
            str(self.directory),
            self.namespace,
            step,
            files,
            int(time.time() * 1000),
            json.dumps(meta),
            self.keep,
            self.synced,
            self._pause_ms,
            self._gate,
        )
        if not submitted:  # cannot happen after wait(); kept as a guard
            raise CheckpointError("a save is still in flight")
        t2 = time.monotonic()
        self._in_flight_step = step
        blocked = t2 - t1
        self.stats["blocked_seconds"] += t2 - t0
        self.stats["max_blocked_seconds"] = max(self.stats["max_blocked_seconds"], t2 - t0)
        self._schedule.saved(t2, blocked)
        self._stop.rebalance_done()
        return True

    def _snapshot(self, step: int, state: Dict[str, Any]) -> Tuple[List[Tuple[str, Any]], Dict[str, Any]]:
        objects: Dict[str, Any] = {}
        files: List[Tuple[str, Any]] = []
        cuda_devices = set()
        for name, obj in state.items():
            if name.startswith("_"):
                raise ValueError(f"{name}: names starting with '_' are reserved")
            stateful = callable(getattr(obj, "state_dict", None)) and callable(
                getattr(obj, "load_state_dict", None)
            )
            tree = obj.state_dict() if stateful else obj
            try:
                data, tensors = _tree.encode(tree, _is_tensor, _ndarray_to_tensor)
            except _tree.Unsupported as e:
                raise TypeError(f"cannot checkpoint {name}: {e}") from None
            entry: Dict[str, Any] = {"kind": "stateful" if stateful else "value", "state": data}
            if tensors:
                file = f"{name}.safetensors"
                entry["file"] = file
                files.append((file, self._copy(file, tensors, cuda_devices)))
            objects[name] = entry
        rng = _rng_state()
        loaders = {
            name: {path: g.get_state() for path, g in _loader_generators(obj).items()} for name, obj in state.items()
        }
        loaders = {name: states for name, states in loaders.items() if states}
        if loaders:
            rng["loaders"] = loaders
        rng_data, rng_tensors = _tree.encode(rng, _is_tensor, _ndarray_to_tensor)
        files.append((RNG_FILE, self._copy(RNG_FILE, rng_tensors, cuda_devices)))
        for device in cuda_devices:
            torch.cuda.synchronize(device)
        document = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "step": step,
            "objects": objects,
            "rng": {"file": RNG_FILE, "state": rng_data},
            "run": {"restarts": self._restarts, "train_seconds": self._train_seconds()},
        }
        return files, document

    def _copy(self, file: str, tensors: Dict[str, torch.Tensor], cuda_devices: set) -> Tuple[Any, int, Any]:
        """Copies ``tensors`` into ``file``'s reused host buffer; returns what the persister needs."""
        specs = []
        for name, t in tensors.items():
            if t.layout != torch.strided:
                raise TypeError(f"cannot checkpoint {file}:{name}: {t.layout} tensors are not supported")
            if t.dtype not in _DTYPES:
                raise TypeError(f"cannot checkpoint {file}:{name}: dtype {t.dtype} has no safetensors name")
            if t.device.type not in ("cpu", "cuda"):
                raise TypeError(f"cannot checkpoint {file}:{name}: tensors on {t.device} are not supported")
            specs.append((name, _DTYPES[t.dtype], list(t.shape)))
        pinned = torch.cuda.is_available() and any(t.is_cuda for t in tensors.values())
        key = (tuple((n, d, tuple(s)) for n, d, s in specs), pinned)
        buffer = self._buffers.get(file)
        if buffer is None or buffer.key != key:
            layout = _native.plan_tensor_file(specs, {"format": "pt"})
            buffer = _Buffer(key, layout, pinned)
            self._buffers[file] = buffer
        data = buffer.data
        for (name, t), (start, end) in zip(tensors.items(), buffer.layout.offsets):
            if end == start:
                continue
            dst = data[start:end].view(t.dtype).view(t.shape)
            if t.is_cuda:
                cuda_devices.add(t.device)
                dst.copy_(t.detach(), non_blocking=True)
            else:
                dst.copy_(t.detach())
        return (buffer.layout, data.data_ptr(), data)

    def _collect(self) -> Optional[Dict[str, Any]]:
        outcome = self._persister.poll()
        if outcome is not None:
            self._record(outcome)
        return outcome

    def _record(self, outcome: Dict[str, Any]) -> None:
        self.last_saved = outcome
        self._in_flight_step = None
        if outcome["ok"]:
            self.stats["saves"] += 1
            self.stats["durable_seconds"] += outcome["seconds"]
            self.stats["bytes"] += outcome["bytes"]
            self._durable_step = outcome["step"]
            self._schedule.persisted(outcome["seconds"], self._restarts, self._train_seconds())
            if self.synced:
                self._uploads.written(outcome["dir"], time.monotonic())
            if outcome.get("retention_error"):
                log.warning("retention after %s: %s", outcome["name"], outcome["retention_error"])
            log.info(
                "checkpoint %s durable in %.2f s (%d bytes)",
                outcome["name"],
                outcome["seconds"],
                outcome["bytes"],
            )
        else:
            self.stats["failures"] += 1
            log.error(
                "checkpoint of step %d failed: %s; the previous checkpoint stays the newest valid one",
                outcome["step"],
                outcome["error"],
            )

    def wait(self) -> Optional[Dict[str, Any]]:
        """Waits for the save in flight to be durable; returns its outcome (None if none).

        Raises :class:`CheckpointError` if that save failed.
        """
        outcome = self._persister.wait()
        if outcome is not None:
            self._record(outcome)
        if self._group is not None:
            durable = -1 if self._durable_step is None else self._durable_step
            newest, neg_oldest = self._group.max([durable, -durable])
            self._maybe_commit(newest, -neg_oldest)
        if outcome is None:
            return None
        if not outcome["ok"]:
            raise CheckpointError(f"checkpoint of step {outcome['step']} failed: {outcome['error']}")
        return outcome

    def _train_seconds(self) -> float:
        return self._train_seconds_base + (time.monotonic() - self._started)

    # -- restoring ---------------------------------------------------------------------------

    def restore(self, **state: Any) -> Optional[int]:
        """Loads the newest valid checkpoint into ``state``'s objects; returns its step.

        Falls back past torn and corrupt checkpoints (logging why, and listing them in
        :attr:`skipped`); returns None when there is none (a first start). Plain values come
        back in :attr:`values`; random states are restored too.
        """
        self.skipped = []
        if self._group is not None:
            return self._restore_agreed(state)
        for name, step, status, reason in _native.candidates(str(self.directory), self.namespace):
            if status != "valid":
                self._skip(name, f"{status}: {reason}")
                continue
            try:
                document, tensors = self._read(step)
            except CheckpointError as e:
                self._skip(name, str(e))
                continue
            self._resume_from(name, step, document, tensors, state)
            return step
        return None

    def _restore_agreed(self, state: Dict[str, Any]) -> Optional[int]:
        """Every rank resumes from the same step: the newest complete one (with a job commit
        and every rank's checkpoint present) that every rank can load; checkpoints without a
        commit do not count. None on every rank when there is no such step."""
        assert self._group is not None
        steps = _native.complete_steps(str(self.directory), self.namespace) or []
        bound: Optional[int] = None
        while True:
            mine = next((s for s in steps if bound is None or s < bound), -1)
            step = -self._group.max([-mine])[0]
            if step < 0:
                # Training starts over: a rank checkpoint no job commit covers (its attempt was
                # reclaimed before every rank saved that step) would refuse the same step's save.
                self._abandon_after(0)
                return None
            name = f"{self.namespace}/step-{step:012d}"
            loaded = None
            if step in steps:
                try:
                    loaded = self._read(step)
                except CheckpointError as e:
                    self._skip(name, str(e))
            else:
                self._skip(name, "not complete in this rank's checkpoint folder")
            failed = self._group.max([int(loaded is None)])[0]
            if loaded is not None and not failed:
                self._resume_from(name, step, *loaded, state)
                self._committed_step = step
                self._abandon_after(step)
                return step
            if loaded is not None:
                self._skip(name, "another rank could not load its part of this step")
            bound = step

    def _abandon_after(self, step: int) -> None:
        """Removes this rank's checkpoints (and the commits) of steps after the agreed one: no
        rank can resume from them, and the resumed run writes those steps again."""
        try:
            removed = _native.abandon_after(str(self.directory), self.namespace, step)
        except CheckpointError as e:
            log.warning("could not remove checkpoints after step %d: %s", step, e)
            return
        for name in removed:
            log.warning("removed %s: after step %d, which every rank resumed from", name, step)

    def _resume_from(
        self,
        name: str,
        step: int,
        document: Dict[str, Any],
        tensors: Dict[str, Dict[str, torch.Tensor]],
        state: Dict[str, Any],
    ) -> None:
        self._apply(name, document, tensors, state)
        self._durable_step = step
        run = document.get("run") or {}
        self._restarts = int(run.get("restarts", 0)) + 1
        self._train_seconds_base = float(run.get("train_seconds", 0.0))
        self._started = time.monotonic()
        log.info("restored %s", name)

    def _skip(self, name: str, reason: str) -> None:
        self.skipped.append((name, reason))
        log.warning("skipping checkpoint %s: %s", name, reason)

    def _read(self, step: int) -> Tuple[Dict[str, Any], Dict[str, Dict[str, torch.Tensor]]]:
        """Reads and checks every file of one checkpoint before anything is loaded."""
        ckpt = _native.Checkpoint.open(str(self.directory), self.namespace, step)
        listed = dict(ckpt.files)
        if STATE_FILE not in listed:
            raise CheckpointError(f"{ckpt.name}: no {STATE_FILE}: not written by spotcheck.torch")
        text = bytearray(listed[STATE_FILE])
        if text:
            view = torch.frombuffer(text, dtype=torch.uint8)
            ckpt.read_into(STATE_FILE, view.data_ptr(), len(text), self.verify)
        try:
            document = json.loads(bytes(text))
        except ValueError as e:
            raise CheckpointError(f"{ckpt.name}: {STATE_FILE} is not JSON: {e}") from None
        if not isinstance(document, dict) or document.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{ckpt.name}: {STATE_FILE} is not a spotcheck.torch state")
        if document.get("version") != STATE_VERSION:
            raise CheckpointError(f"{ckpt.name}: unsupported state version {document.get('version')!r}")
        tensors: Dict[str, Dict[str, torch.Tensor]] = {}
        wanted = [e["file"] for e in document.get("objects", {}).values() if e.get("file")]
        wanted.append(document.get("rng", {}).get("file") or RNG_FILE)
        for file in wanted:
            if file not in listed:
                raise CheckpointError(f"{ckpt.name}: {file} is not listed in its manifest")
            buffer = torch.empty(listed[file], dtype=torch.uint8)
            entries = ckpt.read_into(file, buffer.data_ptr(), buffer.numel(), self.verify, True)
            loaded = {}
            for tname, dtype, shape, start, end in entries:
                if dtype not in _TORCH_DTYPES:
                    raise CheckpointError(f"{ckpt.name}: {file}: dtype {dtype} is not supported by this torch")
                loaded[tname] = _view(buffer, start, end, _TORCH_DTYPES[dtype], shape)
            tensors[file] = loaded
        return document, tensors

    def _apply(
        self,
        name: str,
        document: Dict[str, Any],
        tensors: Dict[str, Dict[str, torch.Tensor]],
        state: Dict[str, Any],
    ) -> None:
        objects = document.get("objects", {})
        self.values = {}
        for key, obj in state.items():
            entry = objects.get(key)
            if entry is None:
                log.warning("%s holds no %r: left as it is", name, key)
                continue
            value = _tree.decode(entry["state"], tensors.get(entry.get("file"), {}), _tensor_to_ndarray)
            if entry["kind"] == "stateful":
                load = getattr(obj, "load_state_dict", None)
                if not callable(load):
                    raise TypeError(f"{key}: the checkpoint holds a state_dict, but {type(obj).__name__} has no load_state_dict")
                load(value)
                if _loader_generators(obj):
                    _start_restored_iterator(obj)
            else:
                self.values[key] = _detached(value)
        for key, entry in objects.items():
            if key not in state and entry["kind"] == "value":
                self.values[key] = _detached(
                    _tree.decode(entry["state"], tensors.get(entry.get("file"), {}), _tensor_to_ndarray)
                )
        rng = document.get("rng")
        if rng:
            rng_state = _tree.decode(rng["state"], tensors.get(rng.get("file"), {}), _tensor_to_ndarray)
            _set_rng_state(rng_state)
            for key, states in (rng_state.get("loaders") or {}).items():
                generators = _loader_generators(state.get(key))
                for path, saved in states.items():
                    if path in generators:
                        generators[path].set_state(saved.clone())

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Waits for the save in flight, stops notice polling, restores signal handlers."""
        try:
            self.wait()
        finally:
            self._stop.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _detached(value: Any) -> Any:
    """Plain values own their tensors (not views into a whole checkpoint file's buffer)."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_detached(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_detached(v) for v in value)
    return value
