#!/usr/bin/env bash
# Does training and sampling scale to a second GPU? On a 2-GPU machine (real model): SFT for a fixed number of steps on 1 GPU (batch 16) vs
# 2 GPUs under `accelerate launch` (batch 8 each: the same global batch of 16 and, through the
# distributed sampler, the same examples per step); then rollouts with the 1-GPU adapter in one
# process vs 2 processes (auto-sharded from RANK/WORLD_SIZE), merged, keys compared.
#
#   OUT=... bash bench/multigpu.sh [--set key=value ...]     # GPU machine, model at .models/qwen05 (looper-math prepare model, or ln -s /root/m/qwen05 .models/qwen05)
#   OUT=... CFG=... ACCEL="--multi_gpu --mixed_precision no" bash bench/multigpu.sh --set ...   # CPU smoke test
# Env: CFG (configs/qwen05_gpu.yaml), STEPS (60), LIMIT (160 questions x k), R (runs/multigpu), B1/B2 (per-GPU
# batch on 1 / 2 GPUs, 16/8),
# ACCEL (accelerate launch arguments, default the DDP config), PARTS (all | sft). Writes $OUT/multigpu.json (bench/multigpu_report.py).
set -uo pipefail
OUT="${OUT:?set OUT}"; CFG="${CFG:-configs/qwen05_gpu.yaml}"; STEPS="${STEPS:-60}"; LIMIT="${LIMIT:-160}"
R="${R:-runs/multigpu}"; ACCEL="${ACCEL:---config_file configs/accelerate/ddp.yaml}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"; rm -rf "$R"; : > "$OUT/multigpu_steps.jsonl"
L="python3 -m looper_math.cli"
LAUNCH="accelerate launch $ACCEL --num_processes 2 --num_machines 1 -m looper_math.cli"
step() {  # name, command... : wall seconds of each step go to multigpu_steps.jsonl
  local name=$1; shift
  echo "=== $name ($(date +%T)): $*"; local t0=$(date +%s.%N)
  "$@"; local rc=$?
  local s; s=$(python3 -c "print(round($(date +%s.%N) - $t0, 2))")
  echo "{\"step\": \"$name\", \"rc\": $rc, \"wall_s\": $s}" >> "$OUT/multigpu_steps.jsonl"
  echo "=== $name rc=$rc in ${s}s"; return $rc
}
SFT=(--set sft.max_steps="$STEPS" --set sft.logging_steps=5 --set sft.save_steps=100000)
step sft_1gpu env CUDA_VISIBLE_DEVICES=0 $L sft -c "$CFG" --set run_dir="$R/gpu1" --set sft.batch_size="${B1:-16}" --set sft.grad_accum=1 "${SFT[@]}" "$@" || exit 1
step sft_2gpu $LAUNCH sft -c "$CFG" --set run_dir="$R/gpu2" --set sft.batch_size="${B2:-8}" --set sft.grad_accum=1 "${SFT[@]}" "$@" || exit 1
if [ "${PARTS:-all}" != sft ]; then
RO=(--set run_dir="$R/gpu1" --set rollouts.limit="$LIMIT")
step rollouts_1gpu env CUDA_VISIBLE_DEVICES=0 $L rollouts -c "$CFG" "${RO[@]}" --set rollouts.output=data/rollouts_1gpu.jsonl "$@" || exit 1
step rollouts_2gpu $LAUNCH rollouts -c "$CFG" "${RO[@]}" --set rollouts.output=data/rollouts_2gpu.jsonl "$@" || exit 1
step merge $L merge --kind rollouts --shards 2 "$R/gpu1/data/rollouts_2gpu.jsonl" || exit 1
fi
python3 bench/multigpu_report.py "$R" "$OUT/multigpu_steps.jsonl" | tee "$OUT/multigpu.json"
