#!/usr/bin/env bash
# GPU check: our trainer (burn, CUDA backend) vs the same network in PyTorch, on synthetic data,
# plus our checkpoint stall on the GPU. Runs on an NVIDIA machine with PyTorch installed and no
# network, in well under ten minutes. The trainer binary is built elsewhere with
#   cargo build --release -p spotcheck-trainer --features cuda
# and passed as $TRAIN (default: target/release/train). The libtorch trainer, built here with
#   bash scripts/trainer-tch.sh build --release --bin train
# is passed as $TRAIN_TCH (optional); it runs on this machine's own PyTorch, which must be 2.9.0
# (the libtorch tch 0.22 binds), with its CUDA libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
TRAIN=${TRAIN:-target/release/train}
OUT=${OUT:-$(mktemp -d)}
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
STEPS=${STEPS:-300}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

echo "== PyTorch"
python3 bench/torch_ref.py --channels 3 --size 64 --depth 3 --width 64 --hidden 512 --classes 1000 \
  --batch 256 --samples 16384 --steps "$STEPS" | tee "$OUT/torch.json"

run_ours() { # $1 = label, $2 = binary, $3 = backend, rest = extra hyperparameters
  local label=$1 bin=$2 backend=$3; shift 3
  rm -rf "$OUT/ck-$label" "$OUT/model-$label"
  "$bin" --data "$OUT/none" --checkpoint-dir "$OUT/ck-$label" --model-dir "$OUT/model-$label" \
    --hp dataset=synthetic --hp backend="$backend" --hp synthetic_channels=3 --hp image_size=64 \
    --hp model_depth=3 --hp model_width=64 --hp model_hidden=512 --hp num_classes=1000 \
    --hp batch_size=256 --hp synthetic_samples=16384 --hp max_steps="$STEPS" --hp epochs=1000 \
    --hp log_every_steps=100 --hp lr_schedule=constant "$@" > "$OUT/train-$label.log" 2>&1 || {
      tail -20 "$OUT/train-$label.log"; return 1; }
  python3 - "$OUT/model-$label/metrics.json" "$label" "$backend" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
c = m["checkpoints_this_attempt"]
print(json.dumps({"framework": "spotcheck/" + sys.argv[3], "run": sys.argv[2],
                  "images_per_second": m["images_per_second_this_attempt"],
                  "checkpoints": c["count"], "mean_stall_ms": 1000 * c["stall_seconds"] / max(c["count"], 1),
                  "max_stall_ms": 1000 * c["max_stall_seconds"], "state_bytes": c["bytes"] / max(c["count"], 1)}))
PY
}

echo "== spotcheck trainer, no periodic checkpoints"
run_ours nockpt "$TRAIN" cuda --hp checkpoint_adaptive=false | tee "$OUT/ours.json"
echo "== spotcheck trainer, checkpoint every 50 steps"
run_ours ckpt "$TRAIN" cuda --hp checkpoint_adaptive=false --hp checkpoint_every_steps=50 | tee "$OUT/ours-ckpt.json"
if [[ -n ${TRAIN_TCH:-} ]]; then
  TORCH_LIB=$(python3 -c 'import os, torch; assert torch.__version__.startswith("2.9.0"), torch.__version__; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  export LD_LIBRARY_PATH=$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  echo "== spotcheck trainer on libtorch (CUDA), no periodic checkpoints"
  run_ours tch-nockpt "$TRAIN_TCH" torch --hp checkpoint_adaptive=false | tee -a "$OUT/ours.json"
  echo "== spotcheck trainer on libtorch (CUDA), checkpoint every 50 steps"
  run_ours tch-ckpt "$TRAIN_TCH" torch --hp checkpoint_adaptive=false --hp checkpoint_every_steps=50
fi

python3 - "$OUT/torch.json" "$OUT/ours.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))
print("| framework | images/s | ratio to PyTorch |\n|---|---|---|")
print(f"| {t['framework']} | {t['images_per_second']:.0f} | 1 |")
for line in open(sys.argv[2]):
    o = json.loads(line)
    print(f"| {o['framework']} | {o['images_per_second']:.0f} | {o['images_per_second'] / t['images_per_second']:.3f} |")
PY
