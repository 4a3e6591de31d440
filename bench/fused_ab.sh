#!/usr/bin/env bash
# The fused decode layer (FastOptions.fuse, generation.fast_fuse) on the real 0.5B with the SFT adapter merged, on one
# H200, against the model's own modules (fast_fuse=false) in the same call:
#
#   OUT=... bash bench/fused_ab.sh [DEADLINE_S]     (GPU machine, repo root, model parts in $M,
#                                                     the SFT adapter in runs/qwen05/checkpoints/sft_lora)
#   1. greedy eval of the SFT adapter on the GSM8K test split (n = 1,319), unfused then fused, and the exact
#      McNemar of the two (accuracy must not move beyond noise: the fused path changes bf16 rounding only)
#      -> eval/sft_test_eval_{unfused,fused}.jsonl.gz, compare.txt
#   2. rollouts of the same N train questions x 8 (flex, as rollouts_speed.sh whole), unfused then fused
#      -> rollouts_fuse.txt (bench/rollouts_report.py: time split and tok/s against unfused) and both summaries
# Env: CFG (configs/qwen05_gpu.yaml), M (/root/m), WHEELS (.whl), N (2000; smaller for a CPU smoke test).
set -uo pipefail
STAGE=fuse; DEADLINE="${1:-560}"
OUT="${OUT:?set OUT}"; M="${M:-/root/m}"; CFG="${CFG:-configs/qwen05_gpu.yaml}"; WHEELS="${WHEELS:-.whl}"; N="${N:-2000}"
source "$(dirname "$0")/stage_lib.sh"
[ -f "$R/checkpoints/sft_lora/adapter_model.safetensors" ] || { echo "no SFT adapter in $R/checkpoints/sft_lora"; exit 1; }
mkdir -p "$OUT/eval"
for f in false true; do
  name=$([ $f = true ] && echo fused || echo unfused)
  have "$R/outputs/sft_test_eval_$name.jsonl" || step $L eval -c "$CFG" --adapter sft --set eval.split=test \
    --set generation.fast_fuse=$f --output "$R/outputs/sft_test_eval_$name.jsonl" --resume 2>&1 | tr '\r' '\n' | grep -vE '^\s*$|━' | tail -4
  gzip -c "$R/outputs/sft_test_eval_$name.jsonl" > "$OUT/eval/sft_test_eval_$name.jsonl.gz"
  cp "$R/outputs/sft_test_eval_$name.summary.json" "$OUT/eval/" 2>/dev/null
done
cmp sft_test_eval_unfused sft_test_eval_fused | tee "$OUT/eval/compare.txt"
for f in false true; do
  name=$([ $f = true ] && echo flexfused || echo flexunfused)
  have "$R/data/rollouts_$name.jsonl" || step $L rollouts -c "$CFG" --set rollouts.output="data/rollouts_$name.jsonl" \
    --overwrite --limit "$N" --set generation.fast_attn=flex --set generation.fast_fuse=$f 2>&1 | tr '\r' '\n' | grep -vE '^\s*$|━' | tail -8
  cp "$R/data/rollouts_$name.summary.json" "$OUT/" 2>/dev/null
done
python3 bench/rollouts_report.py "$R/data" flexunfused flexfused | tee "$OUT/rollouts_fuse.txt"
echo "=== fused_ab done in $((SECONDS - START)) s (failed steps: $FAILED)"
