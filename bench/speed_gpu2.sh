#!/usr/bin/env bash
# The speed benchmarks on a 2-GPU machine, both cards busy at once (separate processes, separate cards,
# each ratio measured within its own process): GPU 0 runs the SFT benchmark (~5 min); GPU 1 the
# gpu-marked engine tests, then the full decode sweep (~5 min). On one GPU run the steps in sequence.
#
#   OUT=... WHEELS=.whl bash bench/speed_gpu2.sh
set -u
OUT="${OUT:?set OUT}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv
( export CUDA_VISIBLE_DEVICES=0
  timeout --kill-after=10 "${SFT_LIMIT:-520}" python3 bench/bench_sft.py --out "$OUT" 2> "$OUT/sft.err"
  echo "=== bench_sft rc=$?" ) &
( export CUDA_VISIBLE_DEVICES=1
  timeout --kill-after=10 150 python3 -m pytest tests/test_gpu_engine.py -m gpu -q -p no:cacheprovider 2>&1 | tail -15
  echo "=== gpu tests rc=${PIPESTATUS[0]}"
  timeout --kill-after=10 "${DECODE_LIMIT:-360}" python3 bench/bench_decode.py --out "$OUT" 2> "$OUT/decode.err"
  echo "=== bench_decode rc=$?" ) &
wait
grep -h '"figure": "summary"' "$OUT"/*.jsonl
