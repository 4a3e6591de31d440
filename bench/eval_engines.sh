#!/usr/bin/env bash
# Does engine="fast" change evaluation accuracy on a real model? The same greedy eval
# (real 0.5B model, no adapter, the 300-question dev split) with engine=hf and engine=fast, then
# `looper-math compare` (exact McNemar) and the share of identical completions.
#
#   OUT=... bash bench/eval_engines.sh [--set key=value ...]     # GPU machine, model at .models/qwen05 (looper-math prepare model, or ln -s /root/m/qwen05 .models/qwen05)
# Env: CFG (configs/qwen05_gpu.yaml), R (runs/evalcmp), ADAPTER (none). Writes $OUT/eval_engines.json.
set -uo pipefail
OUT="${OUT:?set OUT}"; CFG="${CFG:-configs/qwen05_gpu.yaml}"; R="${R:-runs/evalcmp}"; ADAPTER="${ADAPTER:-none}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
L="python3 -m looper_math.cli"
for e in hf fast; do
  echo "=== eval engine=$e ($(date +%T))"
  $L eval -c "$CFG" --adapter "$ADAPTER" --set run_dir="$R" --set generation.engine=$e \
    --set eval.base_output=outputs/base_dev_$e.jsonl --overwrite "$@" || exit 1
done
$L compare "$R/outputs/base_dev_hf.jsonl" "$R/outputs/base_dev_fast.jsonl" | tee "$OUT/eval_engines_compare.txt"
python3 - "$R/outputs" <<'PY' | tee "$OUT/eval_engines.json"
import json, sys
from pathlib import Path
d = Path(sys.argv[1])
rows = {e: {r["question_id"]: r for r in map(json.loads, open(d / f"base_dev_{e}.jsonl"))} for e in ("hf", "fast")}
summ = {e: json.loads((d / f"base_dev_{e}.summary.json").read_text()) for e in ("hf", "fast")}
ids = sorted(rows["hf"])
same = sum(rows["hf"][q]["prediction"] == rows["fast"][q]["prediction"] for q in ids)
agree = sum(rows["hf"][q]["correct"] == rows["fast"][q]["correct"] for q in ids)
print(json.dumps({"n": len(ids), "identical_completions": same, "same_correctness": agree,
                  "accuracy": {e: summ[e].get("accuracy") for e in summ},
                  "this_run": {e: summ[e].get("this_run") for e in summ}}, indent=1))
PY
