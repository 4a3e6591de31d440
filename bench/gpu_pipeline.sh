#!/usr/bin/env bash
# The first learning check on the GPU machine (superseded by bench/learning.sh; RESULTS.md section 2):
# Qwen2.5-Coder-0.5B-Instruct, GSM8K train minus a 300-question dev split; SFT -> eval base/SFT on dev -> rollouts (200 dev questions for the Regime W
# analysis, 400 train questions for pairs) -> pairs -> DPO -> eval DPO -> compare -> report.
#
# On the GPU machine, from the repo root, with the model parts already in /root/m (see README):
#   OUT=... bash bench/gpu_pipeline.sh [--set key=value ...]      (extra overrides go to every phase)
# Every phase runs with --resume, so a rerun after a timeout continues where it stopped.
# Env: CFG (default configs/qwen05_gpu.yaml), M (model dir, default /root/m), WHEELS (default .whl).
set -uo pipefail
OUT="${OUT:?set OUT}"; M="${M:-/root/m}"; CFG="${CFG:-configs/qwen05_gpu.yaml}"; WHEELS="${WHEELS:-.whl}"
source "$(dirname "$0")/device/device_env.sh"
L="python3 -m looper_math.cli"
RUN=$(python3 -c "import yaml,sys; print(yaml.safe_load(open('$CFG'))['run_dir'])")
step() { echo "=== $* ($(date +%T))"; local t0=$SECONDS; "$@"; local rc=$?; echo "=== rc=$rc in $((SECONDS - t0))s"; return $rc; }
step $L sft -c "$CFG" --resume "$@" || exit 1
step $L eval -c "$CFG" --adapter none --resume "$@"
step $L eval -c "$CFG" --adapter sft --resume "$@"
step $L rollouts -c "$CFG" --set rollouts.split=dev --set rollouts.limit=200 --set rollouts.output=data/rollouts_dev.jsonl --resume "$@"
step $L rollouts -c "$CFG" --resume "$@" || exit 1
[ -f "$RUN/data/preferences.jsonl" ] || step $L prefs -c "$CFG" "$@" || exit 1
step $L dpo -c "$CFG" --resume "$@" || exit 1
step $L eval -c "$CFG" --adapter dpo --resume "$@"
step $L compare "$RUN/outputs/base_dev_eval.jsonl" "$RUN/outputs/sft_dev_eval.jsonl" | tee "$OUT/compare_base_sft.txt"
step $L compare "$RUN/outputs/sft_dev_eval.jsonl" "$RUN/outputs/dpo_dev_eval.jsonl" | tee "$OUT/compare_sft_dpo.txt"
step $L report "$RUN"
# What comes back (at most 8 files): summaries, the loss logs, and one archive of the per-example files.
mkdir -p "$OUT/r"
cp "$RUN"/outputs/*.summary.json "$RUN"/data/*.summary.json "$OUT/r/" 2>/dev/null
for p in sft dpo; do cp "$RUN/checkpoints/${p}_lora/train_summary.json" "$OUT/r/${p}_train_summary.json" 2>/dev/null; done
tar czf "$OUT/run.tgz" --exclude='*.safetensors' --exclude='trainer' --exclude='tiny_model' -C "$RUN" . 2>/dev/null
ls -la "$OUT" "$OUT/r"
