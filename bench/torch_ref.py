"""The PyTorch twin of spotcheck's trainer, for the throughput comparisons in bench/cpu.sh and
bench/gpu.sh.

Same architecture (3x3 same-padded conv + ReLU + 2x2 max-pool blocks, channels doubling, a
hidden dense layer, a linear head), same optimizer (AdamW), same synthetic data shape, and the
same input path: each batch is gathered on the host (and copied to the GPU), as our trainer does.
Prints one JSON line with images/s.
"""
import argparse
import json
import time

import torch
from torch import nn


def build(channels, size, depth, width, hidden, classes):
    layers = []
    c, s = channels, size
    for i in range(depth):
        out = width << i
        layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        c, s = out, max(s // 2, 1)
    layers.append(nn.Flatten())
    feat = c * s * s
    if hidden:
        layers += [nn.Linear(feat, hidden), nn.ReLU()]
        feat = hidden
    layers.append(nn.Linear(feat, classes))
    return nn.Sequential(*layers)


def main():
    p = argparse.ArgumentParser()
    for name, default in [("channels", 3), ("size", 64), ("depth", 3), ("width", 64), ("hidden", 512),
                          ("classes", 1000), ("batch", 256), ("samples", 16384), ("steps", 300), ("warmup", 20)]:
        p.add_argument("--" + name, type=int, default=default)
    p.add_argument("--device", default="cuda", help="cuda or cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = build(a.channels, a.size, a.depth, a.width, a.hidden, a.classes).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (a.samples, a.channels, a.size, a.size), dtype=torch.uint8, generator=g)
    labels = torch.arange(a.samples) % a.classes

    def step(i):
        idx = torch.randint(0, a.samples, (a.batch,), generator=g)
        x = (images[idx].float() / 255.0).to(dev, non_blocking=False)
        y = labels[idx].to(dev)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    for i in range(a.warmup):
        step(i)
    sync()
    t0 = time.perf_counter()
    for i in range(a.steps):
        loss = step(i)
    loss.item()
    sync()
    dt = time.perf_counter() - t0
    print(json.dumps({"framework": "pytorch " + torch.__version__, "images_per_second": a.steps * a.batch / dt,
                      "steps": a.steps, "seconds": dt, "threads": torch.get_num_threads(),
                      "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"}))


if __name__ == "__main__":
    main()
