"""Checkpoint cost of spotcheck's PyTorch package against PyTorch's own ways, one machine, one run.

    bash scripts/python-tests.sh install-release          # the wheel, optimised, into .venv-torch
    .venv-torch/bin/python bench/py_checkpoint.py DIR [--repeats 3] [--train-steps 40]

DIR is a folder on the disk to measure (it is emptied first). The state is a dense classifier
(64 -> 8192 -> 11000, 90.7 M parameters, the trainer benchmark's) with AdamW's two moments:
1.01 GiB of float32 tensors. Every row is the median of ``--repeats`` runs, measured in this
process, in this order, on the same disk:

- blocked: how long the training loop waits. ``clone()`` of every state tensor (the floor for
  any snapshot into fresh memory), ``Checkpointer.save`` (returns once tensors are copied into
  its reused host buffers), ``torch.save`` + fsync and ``torch.distributed.checkpoint.save``
  (synchronous: blocked until durable), ``torch.distributed.checkpoint.async_save`` (returns
  after its own staging copy).
- durable: from the call until the checkpoint is on disk (fsynced; for spotcheck the manifest
  too).
- restore: from nothing in memory (page cache dropped for the files with
  ``posix_fadvise(DONTNEED)``) to the state loaded into the model and optimizer:
  ``Checkpointer.restore`` (reads, checks CRC-64/NVME, loads), ``torch.load`` +
  ``load_state_dict``, and a plain sequential read of the same checkpoint's files into one
  reused 8 MiB buffer (the floor).
- training: steps/s of the same loop with no checkpoints and with ``Checkpointer.due()`` saves
  at the adaptive interval (``interruptions_per_hour=4``; the first step is always saved, to
  measure the cost).

Targets (from the issue): blocked <= 1.5x clone and < DCP async_save; durable >= 2x sooner than
torch.save + fsync; restore >= 0.8x a plain read's throughput; steps/s with saves within 2% of
none.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from spotcheck.torch import Checkpointer

READ_CHUNK = 8 << 20


def model_and_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 8192), torch.nn.ReLU(), torch.nn.Linear(8192, 11000))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return model, opt


def step(model, opt, x, y) -> None:
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def state_tensors(model, opt) -> List[torch.Tensor]:
    tensors = list(model.state_dict().values())
    for s in opt.state_dict()["state"].values():
        tensors.extend(v for v in s.values() if torch.is_tensor(v))
    return tensors


def drop_cache(paths: List[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def files_in(folder: Path) -> List[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def plain_read(paths: List[Path]) -> int:
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    total = 0
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while True:
                n = f.readinto(view)
                if not n:
                    break
                total += n
    return total


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def median(xs: List[float]) -> float:
    return statistics.median(xs)


def fmt(seconds: float) -> str:
    return f"{seconds:.3f} s"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root: Path = args.dir
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    model, opt = model_and_optimizer()
    x = torch.randn(args.batch, 64)
    y = torch.randint(0, 11000, (args.batch,))
    step(model, opt, x, y)  # AdamW's moments exist from here on
    tensors = state_tensors(model, opt)
    state_bytes = sum(t.numel() * t.element_size() for t in tensors)
    print(f"state: {len(tensors)} tensors, {state_bytes / 2**30:.2f} GiB; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; disk: {root}")

    results: Dict[str, List[float]] = {}

    def record(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)

    # --- blocked and durable ---------------------------------------------------------------
    ckpt = Checkpointer(root / "spotcheck", keep=1, adaptive=False, handle_signals=False)
    ckpt.save(1, model=model, optimizer=opt)  # warm-up: allocates the reused host buffers
    ckpt.wait()
    for r in range(args.repeats):
        t0 = time.perf_counter()
        clones = [t.clone() for t in tensors]
        record("clone", time.perf_counter() - t0)
        del clones

        t0 = time.perf_counter()
        ckpt.save(10 + r, model=model, optimizer=opt)
        t1 = time.perf_counter()
        ckpt.wait()
        t2 = time.perf_counter()
        record("spotcheck blocked", t1 - t0)
        record("spotcheck durable", t2 - t0)

        path = root / f"torch-save-{r}.pt"
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, f)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(root)
        record("torch.save+fsync", time.perf_counter() - t0)
        if r < args.repeats - 1:
            path.unlink()

        dcp_dir = root / f"dcp-{r}"
        t0 = time.perf_counter()
        dcp.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, checkpoint_id=str(dcp_dir))
        record("dcp.save", time.perf_counter() - t0)
        shutil.rmtree(dcp_dir)

        adcp_dir = root / f"dcp-async-{r}"
        t0 = time.perf_counter()
        future = dcp.async_save({"model": model.state_dict(), "optimizer": opt.state_dict()}, checkpoint_id=str(adcp_dir))
        t1 = time.perf_counter()
        future.result()
        t2 = time.perf_counter()
        record("dcp.async_save blocked", t1 - t0)
        record("dcp.async_save durable", t2 - t0)
        shutil.rmtree(adcp_dir)

    # --- restore ---------------------------------------------------------------------------
    ours = files_in(root / "spotcheck")
    torch_file = root / f"torch-save-{args.repeats - 1}.pt"
    for r in range(args.repeats):
        drop_cache(ours)
        t0 = time.perf_counter()
        n = plain_read(ours)
        record("plain read", time.perf_counter() - t0)

        m2, o2 = model_and_optimizer(1)
        drop_cache(ours)
        t0 = time.perf_counter()
        restorer = Checkpointer(root / "spotcheck", handle_signals=False)
        got = restorer.restore(model=m2, optimizer=o2)
        record("spotcheck restore", time.perf_counter() - t0)
        assert got is not None
        restorer.close()
        del m2, o2

        m3, o3 = model_and_optimizer(2)
        drop_cache([torch_file])
        t0 = time.perf_counter()
        loaded = torch.load(torch_file, weights_only=True)
        m3.load_state_dict(loaded["model"])
        o3.load_state_dict(loaded["optimizer"])
        record("torch.load+load_state_dict", time.perf_counter() - t0)
        del m3, o3, loaded
    restored_bytes = n
    ckpt.close()

    # --- training throughput ---------------------------------------------------------------
    def train(saving: bool) -> float:
        m, o = model_and_optimizer(3)
        c = Checkpointer(root / "train", keep=1, interruptions_per_hour=4.0, handle_signals=False) if saving else None
        step(m, o, x, y)
        t0 = time.perf_counter()
        for s in range(1, args.train_steps + 1):
            step(m, o, x, y)
            if c is not None and c.due(s):
                c.save(s, model=m, optimizer=o)
        seconds = time.perf_counter() - t0
        if c is not None:
            c.wait()
            record("saves during training", float(c.stats["saves"]))
            record("blocked during training", c.stats["blocked_seconds"])
            c.close()
            shutil.rmtree(root / "train")
        return args.train_steps / seconds

    record("steps/s without checkpoints", train(False))
    record("steps/s with adaptive checkpoints", train(True))
    dist.destroy_process_group()

    med = {k: median(v) for k, v in results.items()}
    print()
    print("| measure | spotcheck | baseline | ratio | target | met |")
    print("|---|---|---|---|---|---|")

    def row(measure, ours, base, ratio, target, met, fmt_=fmt):
        print(f"| {measure} | {fmt_(ours)} | {fmt_(base)} | {ratio:.2f} | {target} | {'-' if met is None else 'yes' if met else '**no**'} |")

    r1 = med["spotcheck blocked"] / med["clone"]
    row("training blocked per save vs clone()", med["spotcheck blocked"], med["clone"], r1, "<= 1.5x", r1 <= 1.5)
    r2 = med["spotcheck blocked"] / med["dcp.async_save blocked"]
    row("training blocked per save vs DCP async_save", med["spotcheck blocked"], med["dcp.async_save blocked"], r2, "< 1x", r2 < 1.0)
    r3 = med["spotcheck durable"] / med["torch.save+fsync"]
    row("time to durable vs torch.save + fsync", med["spotcheck durable"], med["torch.save+fsync"], r3, "<= 0.5x", r3 <= 0.5)
    row("time to durable vs DCP save (context)", med["spotcheck durable"], med["dcp.save"], med["spotcheck durable"] / med["dcp.save"], "-", None)
    row("time to durable vs DCP async_save (context)", med["spotcheck durable"], med["dcp.async_save durable"], med["spotcheck durable"] / med["dcp.async_save durable"], "-", None)
    gbps = lambda s: restored_bytes / s / 1e9  # noqa: E731
    r4 = gbps(med["spotcheck restore"]) / gbps(med["plain read"])
    row("restore throughput vs plain read (cold cache)", gbps(med["spotcheck restore"]), gbps(med["plain read"]), r4, ">= 0.8x", r4 >= 0.8,
        fmt_=lambda v: f"{v:.2f} GB/s")
    r5 = med["spotcheck restore"] / med["torch.load+load_state_dict"]
    row("restore time vs torch.load + load_state_dict (cold cache)", med["spotcheck restore"], med["torch.load+load_state_dict"], r5, "-", None)
    r6 = med["steps/s with adaptive checkpoints"] / med["steps/s without checkpoints"]
    row("training steps/s, adaptive checkpoints vs none", med["steps/s with adaptive checkpoints"], med["steps/s without checkpoints"], r6,
        ">= 0.98x", r6 >= 0.98, fmt_=lambda v: f"{v:.3f}")
    print()
    print("all medians:", {k: round(v, 4) for k, v in med.items()})
    print("all samples:", {k: [round(x, 4) for x in v] for k, v in results.items()})


if __name__ == "__main__":
    main()
