"""CPU training throughput: spotcheck's trainer (pure-Rust burn-flex backend, and the libtorch
backend) against its PyTorch twin (bench/torch_ref.py) on the same network, batch, optimizer and
thread count, interleaved in rounds so that the machine's drift hits every program alike.

    python bench/cpu.py --flex TRAIN --tch TRAIN [--rounds 5] [--threads 2] [--steps 300]

Prints one table: each program's median images/s over the rounds, and each round's ratio to the
PyTorch run of the same round. bench/cpu.sh builds both trainers and calls this.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
NET = dict(channels=1, size=28, depth=2, width=32, hidden=128, classes=10, batch=64, samples=8192)


def torch_ref(a, env):
    cmd = [sys.executable, str(HERE / "torch_ref.py"), "--device", "cpu", "--threads", str(a.threads),
           "--steps", str(a.steps)] + [f"--{k}={v}" for k, v in NET.items()]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["images_per_second"]


def ours(binary, a, env):
    with tempfile.TemporaryDirectory() as d:
        hp = dict(dataset="synthetic", num_classes=NET["classes"], image_size=NET["size"],
                  synthetic_channels=NET["channels"], model_depth=NET["depth"], model_width=NET["width"],
                  model_hidden=NET["hidden"], batch_size=NET["batch"], synthetic_samples=NET["samples"],
                  max_steps=a.steps, epochs=1000, lr_schedule="constant", log_every_steps=100,
                  checkpoint_adaptive="false")
        cmd = [binary, "--data", f"{d}/none", "--checkpoint-dir", f"{d}/ck", "--model-dir", f"{d}/model"]
        for k, v in hp.items():
            cmd += ["--hp", f"{k}={v}"]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"{binary} failed:\n{r.stderr[-2000:]}")
        m = json.loads(Path(d, "model", "metrics.json").read_text())
        return m["images_per_second_this_attempt"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--flex", required=True, help="train built without features")
    p.add_argument("--tch", required=True, help="train built with --features tch")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=300)
    a = p.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
               RAYON_NUM_THREADS=str(a.threads))
    import torch  # only for the version line

    # The trainer keeps freed buffers in the process (mallopt at start); the same glibc settings
    # given to PyTorch show how much of the difference that alone makes.
    tuned = dict(env, GLIBC_TUNABLES="glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=536870912")
    names = [f"PyTorch {torch.__version__} (bench/torch_ref.py)", "spotcheck train, backend=torch (libtorch)",
             "spotcheck train, backend=cpu (burn-flex)",
             f"PyTorch {torch.__version__}, with the trainer's malloc settings"]
    runs = {n: [] for n in names}
    for r in range(a.rounds):
        runs[names[0]].append(torch_ref(a, env))
        runs[names[1]].append(ours(a.tch, a, env))
        runs[names[2]].append(ours(a.flex, a, env))
        runs[names[3]].append(torch_ref(a, tuned))
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{v[-1]:.0f}" for v in runs.values()), file=sys.stderr)
    base = runs[names[0]]
    print(f"\nCPU, {a.threads} threads, {os.cpu_count()} CPUs visible; network {NET}, AdamW, "
          f"{a.steps} timed steps, {a.rounds} interleaved rounds\n")
    print("| program | images/s (median) | ratio to PyTorch (median) | each round's ratio |")
    print("|---|---|---|---|")
    for n, v in runs.items():
        ratios = [x / b for x, b in zip(v, base)]
        print(f"| {n} | {statistics.median(v):,.0f} | {statistics.median(ratios):.2f} | "
              + " ".join(f"{x:.2f}" for x in ratios) + " |")


if __name__ == "__main__":
    main()
