"""Fashion-MNIST with PyTorch, protected by spotcheck: resumes exactly after any interruption.

Runs as a SageMaker training script (data from the ``train`` channel, checkpoints in the
checkpoint LocalPath, the model in ``SM_MODEL_DIR``) or locally::

    python examples/pytorch/train.py --data /usr/share/datasets/fashion-mnist \\
        --checkpoint-dir work/pytorch/checkpoints --model-dir work/pytorch/model

Press Ctrl-C (or send SIGTERM, or let a spot notice arrive) at any moment: it saves a
checkpoint and exits with code 143; run it again to resume from where it stopped, with the
same weights, optimizer state, learning-rate schedule, data order and random numbers as if it
had never stopped. Under ``spotcheck run -- python train.py`` the launcher passes spot
notices on; without it the package polls IMDS itself.

Under ``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``, as SageMaker's multi-instance jobs do) it trains data-parallel: gloo on the CPU,
each rank on its own shard of the data, gradients averaged by ``DistributedDataParallel``;
every rank checkpoints its own namespace and the ranks resume together from the newest step
they all completed.

Exit codes: 0 done, 143 stopped with a durable checkpoint, 1 error.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import struct
import sys
import time
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import nn
from torchdata.stateful_dataloader import StatefulDataLoader

from spotcheck.torch import EXIT_STOPPED, Checkpointer

log = logging.getLogger("train")

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def hyperparameters() -> dict:
    """SageMaker's hyperparameters.json (values arrive as strings), if present."""
    opt = Path(os.environ.get("SPOTCHECK_OPT_ML") or "/opt/ml")
    path = opt / "input/config/hyperparameters.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def parse_args(argv=None) -> argparse.Namespace:
    hp = hyperparameters()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    env = os.environ.get
    p.add_argument("--data", default=env("SM_CHANNEL_TRAIN") or hp.get("data") or FASHION_MNIST,
                   help="folder with train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]")
    p.add_argument("--synthetic", type=int, default=int(hp.get("synthetic", 0)),
                   help="train on N synthetic 28x28 images instead (tests)")
    p.add_argument("--limit", type=int, default=int(hp.get("limit", 0)),
                   help="use only the first N training images (0: all)")
    p.add_argument("--model", choices=["convnet", "tiny"], default=hp.get("model", "convnet"))
    p.add_argument("--epochs", type=int, default=int(hp.get("epochs", 1)))
    p.add_argument("--max-steps", type=int, default=int(hp.get("max_steps", 0)),
                   help="stop after this many steps in all (0: no limit)")
    p.add_argument("--batch-size", type=int, default=int(hp.get("batch_size", 64)))
    p.add_argument("--lr", type=float, default=float(hp.get("learning_rate", 1e-3)))
    p.add_argument("--seed", type=int, default=int(hp.get("seed", 0)))
    p.add_argument("--threads", type=int, default=int(hp.get("threads", 1)),
                   help="torch intra-op threads (0: torch's default). One by default: with more, resumed "
                        "CPU runs are not always bit-identical (docs/pytorch.md, \"Exact resume\")")
    p.add_argument("--workers", type=int, default=int(hp.get("workers", 0)), help="DataLoader workers")
    p.add_argument("--checkpoint-dir", default=None,
                   help="checkpoint root (default: SageMaker's checkpoint LocalPath or /opt/ml/checkpoints)")
    p.add_argument("--model-dir", default=env("SM_MODEL_DIR") or "/opt/ml/model")
    p.add_argument("--keep", type=int, default=int(hp.get("keep_checkpoints", 3)))
    p.add_argument("--every-steps", type=int, default=int(hp.get("checkpoint_every_steps", 0)) or None,
                   help="also checkpoint every N steps (default: adaptive interval only)")
    p.add_argument("--interruptions-per-hour", type=float,
                   default=float(hp.get("interruptions_per_hour", 0.5)))
    p.add_argument("--no-adaptive", action="store_true", help="fixed triggers only")
    p.add_argument("--final-state", default=None,
                   help="write the final model and optimizer state here (safetensors + JSON), for comparisons")
    p.add_argument("--print-steps", action="store_true", help="print a line per step (tests)")
    p.add_argument("--log-format", choices=["text", "json"], default=hp.get("log_format", "text"),
                   help="json: one JSON event per line on stdout, as the Rust trainer logs "
                        "(fresh_start, resumed, step, checkpoint_saved, stopped, completed)")
    p.add_argument("--log-every-steps", type=int, default=int(hp.get("log_every_steps", 10)),
                   help="a step event every N steps (json log format)")
    return p.parse_args(argv)


class Events:
    """The run's milestones as JSON lines (the names and fields the Rust trainer logs, which
    the local service's demo report reads), or nothing in the text log format."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.saves = 0

    def emit(self, event: str, **fields) -> None:
        if self.enabled:
            # One write per line: print() writes the text and its newline separately, and the
            # log lines on stderr (the same file in a container's log) can land in between.
            sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
            sys.stdout.flush()

    def durable(self, ckpt: Checkpointer, blocked: float) -> None:
        """A checkpoint_saved event for each save that became durable since the last call."""
        saves = int(ckpt.stats["saves"])
        if saves > self.saves and ckpt.last_saved is not None:
            self.saves = saves
            self.emit("checkpoint_saved", step=ckpt.last_saved["step"], stall_seconds=blocked,
                      seconds=ckpt.last_saved["seconds"])


def read_idx(folder: Path, stem: str) -> bytes:
    for name in (stem, stem + ".gz"):
        path = folder / name
        if path.exists():
            data = path.read_bytes()
            return gzip.decompress(data) if name.endswith(".gz") else data
    raise FileNotFoundError(f"{folder}/{stem}[.gz] not found")


def load_fashion_mnist(folder: Path, limit: int) -> Tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(folder, "train-images-idx3-ubyte")
    labels = read_idx(folder, "train-labels-idx1-ubyte")
    magic, n, rows, cols = struct.unpack(">IIII", images[:16])
    if magic != 2051 or struct.unpack(">II", labels[:8]) != (2049, n):
        raise ValueError(f"{folder}: not an IDX image/label pair")
    x = torch.frombuffer(bytearray(images[16:]), dtype=torch.uint8).view(n, 1, rows, cols)
    y = torch.frombuffer(bytearray(labels[8:]), dtype=torch.uint8).long()
    if limit:
        x, y = x[:limit], y[:limit]
    return x, y


def synthetic(n: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    y = torch.randint(0, 10, (n,), generator=g)
    x = (torch.rand(n, 1, 28, 28, generator=g) * 64 + y.view(-1, 1, 1, 1) * 16).to(torch.uint8)
    return x, y


class Images(torch.utils.data.Dataset):
    """uint8 images scaled to [0, 1] floats on access."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i].float().div_(255.0), self.y[i]


def build_model(kind: str) -> nn.Module:
    if kind == "tiny":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 10))
    # The Rust trainer's default network: two 3x3 conv blocks (32, 64), a 128-wide hidden layer.
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 10),
    )


def write_final_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    """The model's and the optimizer's tensors as written by safetensors itself, plus the
    optimizer's hyperparameters: what two runs must agree on byte for byte."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
    opt = optimizer.state_dict()
    tensors = {f"{pid}.{k}": v for pid, s in opt["state"].items() for k, v in s.items() if torch.is_tensor(v)}
    save_file(tensors, str(path / "optimizer.safetensors"))
    (path / "optimizer.json").write_text(json.dumps({"step": step, "param_groups": opt["param_groups"]}, sort_keys=True))


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0")) if world > 1 else 0
    if world > 1:
        torch.distributed.init_process_group("gloo")

    x, y = synthetic(args.synthetic, args.seed) if args.synthetic else load_fashion_mnist(Path(args.data), args.limit)
    if world > 1:
        # Equal shards, so that every rank runs the same number of steps in lockstep.
        n = len(y) // world * world
        x, y = x[rank:n:world], y[rank:n:world]
    loader = StatefulDataLoader(
        Images(x, y),
        batch_size=args.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
        num_workers=args.workers,
    )
    model = build_model(args.model)
    forward = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    steps_per_epoch = len(loader)
    total = args.epochs * steps_per_epoch
    if args.max_steps:
        total = min(total, args.max_steps)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=max(total, 1))

    ckpt = Checkpointer(
        args.checkpoint_dir,
        keep=args.keep,
        every_steps=args.every_steps,
        interruptions_per_hour=args.interruptions_per_hour,
        adaptive=not args.no_adaptive,
    )
    state = dict(model=model, optimizer=optimizer, scheduler=scheduler, loader=loader)
    step = ckpt.restore(**state) or 0
    epoch = ckpt.values.get("epoch", 0)
    events = Events(args.log_format == "json")
    if step:
        events.emit("resumed", step=step, epoch=epoch)
    else:
        events.emit("fresh_start", step=0)
    if not events.enabled:
        print(f"ready step={step} epoch={epoch} total={total}", flush=True)
    blocked = 0.0
    loss_fn = nn.CrossEntropyLoss()
    started = time.monotonic()
    stopped = False

    model.train()
    last_loss = float("nan")
    while step < total and not stopped:
        for images, labels in loader:
            loss = loss_fn(forward(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            last_loss = loss.item()
            if args.print_steps:
                print(f"step {step}", flush=True)
            if step % max(args.log_every_steps, 1) == 0:
                events.emit("step", step=step, loss=last_loss)
            if ckpt.should_stop():
                if not events.enabled:
                    print(f"stopping at step {step} ({ckpt.stop_reason})", flush=True)
                t = time.monotonic()
                ckpt.save(step, **state, epoch=epoch)
                ckpt.wait()
                events.durable(ckpt, time.monotonic() - t)
                events.emit("stopped", step=step, reason=ckpt.stop_reason)
                stopped = True
                break
            if step >= total:
                break  # --max-steps ended it mid-epoch: the loader's position is saved below
            due = ckpt.due(step)
            events.durable(ckpt, blocked)
            if due:
                if args.print_steps:
                    print(f"saving {step}", flush=True)
                t = time.monotonic()
                ckpt.save(step, **state, epoch=epoch)
                blocked = time.monotonic() - t
        else:
            epoch += 1
    if stopped:
        ckpt.close()
        return EXIT_STOPPED

    t = time.monotonic()
    ckpt.save(step, **state, epoch=epoch)
    ckpt.close()
    events.durable(ckpt, time.monotonic() - t)
    seconds = time.monotonic() - started
    log.info("done: %d steps, last loss %.4f, %.1f s, checkpoints %s", step, last_loss, seconds,
             json.dumps(ckpt.stats))
    # The model directory (SageMaker's model.tar.gz) holds the final optimizer state too, so
    # that training can be continued, and two runs compared, byte for byte.
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # one model per host (SageMaker uploads algo-1's)
        write_final_state(Path(args.model_dir), model, optimizer, step)
    if args.final_state and rank == 0:
        write_final_state(Path(args.final_state), model, optimizer, step)
    events.emit("completed", steps=step, loss=last_loss, seconds=seconds)
    if not events.enabled:
        print(f"done step={step}", flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.exit(code)
