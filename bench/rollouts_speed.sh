#!/usr/bin/env bash
# Rollouts speed (the goal: the whole GSM8K train set x 8 in <= 5 minutes, about 30k tok/s or more) on the real
# 0.5B from the SFT adapter, on one H200.
#
#   OUT=... bash bench/rollouts_speed.sh ab|whole [DEADLINE_S]    (GPU machine, repo root, model parts in $M,
#                                                                  the SFT adapter in runs/qwen05/checkpoints/sft_lora)
#   ab     the same 2,000 train questions x 8 (configs/qwen05_gpu.yaml: rounds of 500 questions), three ways:
#            old     the code before streaming ($BASE, `git archive c6d0fd6 src`): one generate call per round, so
#                    each round ends in a tail of idle slots, and its groups are scored while the GPU waits
#            stream  this code: every round fed into one fast-engine call as slots free up, rows written as
#                    questions finish, scoring in the process pool while the engine decodes
#            flex    stream with generation.fast_attn=flex (each sequence reads only its own KV blocks)
#          -> rollouts_ab.txt (bench/rollouts_report.py: time split, slot occupancy, tok/s ratios against old,
#             identical completions) and the three summaries. One call of < 10 min with the model conversion.
#   whole  all 7,473 GSM8K train questions x 8 (data.dev_size=0) with the faster of stream / flex in ab
#          -> rollouts_whole.txt and its summary (the goal: <= 5 minutes, scoring included).
# Env: CFG (configs/qwen05_gpu.yaml), M (/root/m), WHEELS (.whl), BASE (.base/src).
set -uo pipefail
STAGE="${1:?stage ab|whole}"; DEADLINE="${2:-560}"
OUT="${OUT:?set OUT}"; M="${M:-/root/m}"; CFG="${CFG:-configs/qwen05_gpu.yaml}"; WHEELS="${WHEELS:-.whl}"
BASE="${BASE:-.base/src}"; N="${N:-2000}"; WHOLE="${WHOLE:-7473}"   # N, WHOLE: questions (smaller for a CPU smoke test)
source "$(dirname "$0")/stage_lib.sh"
[ -f "$R/checkpoints/sft_lora/adapter_model.safetensors" ] || { echo "no SFT adapter in $R/checkpoints/sft_lora"; exit 1; }

ro() {  # ro NAME SRC ARGS...: rollouts with the code in SRC -> $R/data/rollouts_NAME.jsonl (from scratch)
  local name=$1 src=$2; shift 2
  have "$R/data/rollouts_$name.jsonl" && return 0
  PYTHONPATH="/tmp/site:$src" step $L rollouts -c "$CFG" --set rollouts.output="data/rollouts_$name.jsonl" \
    --overwrite "$@" 2>&1 | tr '\r' '\n' | grep -vE '^\s*$|━' | tail -30 | tee "$OUT/rollouts_$name.txt"
}
report() { PYTHONPATH="/tmp/site:src" python3 bench/rollouts_report.py "$R/data" "$@" | tee "$OUT/rollouts_$STAGE.txt"
  for n in "$@"; do cp "$R/data/rollouts_$n.summary.json" "$OUT/" 2>/dev/null; done; }

case "$STAGE" in
  ab)
    [ -d "$BASE/looper_math" ] || { echo "no baseline code in $BASE"; exit 1; }
    ro old "$BASE" --limit "$N"
    ro stream src --limit "$N"
    ro flex src --limit "$N" --set generation.fast_attn=flex
    report old stream flex ;;
  whole)
    attn=$(python3 "$(dirname "$0")/choose.py" attn "$R/data") || exit 1   # flex if it beat stream in ab
    echo "=== attention core from ab: $attn"
    ro whole src --set data.dev_size=0 --limit "$WHOLE" --set generation.fast_attn="$attn"
    report whole ;;
  *) echo "unknown stage $STAGE"; exit 2 ;;
esac
echo "=== stage $STAGE done in $((SECONDS - START)) s (failed steps: $FAILED)"
