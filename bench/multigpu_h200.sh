#!/usr/bin/env bash
# What ships for several GPUs (DDP, ZeRO-2/3 configs, sharded rollouts), run for real on the 0.5B model on
# 2 x H200 in one call (< 10 min).
#   1. SFT on GSM8K train (gold solutions), STEPS steps at the same global batch: 1 GPU (B1) vs DDP vs
#      DeepSpeed ZeRO-2 vs ZeRO-3 (B2 per GPU x 2; configs/accelerate/{ddp,zero2,zero3}.yaml). Per-step
#      losses, steady tokens/s and peak memory per process come from each run's train_summary.json.
#   2. Rollouts from the 1-GPU SFT adapter: one process vs two (`accelerate launch`, each rank its shard
#      from RANK/WORLD_SIZE) + `merge`; preference pairs (`prefs`) from the one-process rollouts.
#   3. DPO from the 1-GPU SFT adapter (TRL's frozen copy of it is the reference) on those pairs, for each
#      NLL weight in DPO_NLL: 1 GPU (DPO_B1 pairs) vs 2 GPUs DDP (DPO_B2 x 2), the same global batch;
#      SHA256 of the SFT adapter files before and after (the reference must not move); and DPO under
#      ZeRO-2 (DPO_ZERO) at the last NLL weight against the same 1-GPU run.
#   4. bench/multigpu_report.py -> $OUT/multigpu_h200.json: every comparison with pass/fail flags.
# Steps run in that order under one deadline (DEADLINE_S, default 570): a step that would start with
# under 20 s left is skipped and the report marks it not run.
#
#   OUT=$OUT WHEELS=.whl DS_WHEELS=.whl-ds bash bench/multigpu_h200.sh      # 2 x H200; model in $M/qwen05
#     (carry .whl, .whl-ds and .gsm8k; the model at /root/m/qwen05, or its parts + SHA256 in $M)
#   OUT=/tmp/o CFG=configs/demo.yaml ACCEL="--multi_gpu --mixed_precision no" ZERO_EXTRA="--mixed_precision no" \
#     PAIRS=synthetic STEPS=8 LIMIT=8 DPO_STEPS=3 WHEELS= DS_WHEELS= bash bench/multigpu_h200.sh \
#     --set rollouts.max_new_tokens=32                                # CPU smoke test (gloo; tiny model)
# The ZeRO legs need `import deepspeed` (DS_WHEELS installs the carried wheels into /tmp/site-ds); without
# it they are skipped with a message. DeepSpeed's CPU accelerator runs them on CPU too (over gloo; it
# JIT-builds its shared-memory comm op with the host compiler the first time, ~2 min).
# Env: CFG (configs/qwen05_gpu.yaml), STEPS (60), B1/B2 (16/8), SFT_LIMIT (STEPS*B1 training examples),
# LIMIT (160 questions x k for rollouts), DPO_STEPS (10), DPO_B1/DPO_B2 (16/8), DPO_NLL ("0 1"),
# ZERO ("2 3": SFT legs; "" skips), DPO_ZERO ("2": a 2-GPU DPO leg per stage at the last NLL weight),
# ACCEL (DDP launch arguments), ZERO_EXTRA (added to the ZeRO launches),
# PAIRS ("": built from the rollouts | synthetic | a JSONL file), R (runs/multigpu_h200), M (/root/m),
# WHEELS (.whl), DS_WHEELS (.whl-ds), DEADLINE_S (570), TOL (0.01). Extra arguments go to every command.
set -uo pipefail
OUT="${OUT:?set OUT}"; CFG="${CFG:-configs/qwen05_gpu.yaml}"; STEPS="${STEPS:-60}"; B1="${B1:-16}"; B2="${B2:-8}"
SFT_LIMIT="${SFT_LIMIT:-$((STEPS * B1))}"; LIMIT="${LIMIT:-160}"; DPO_STEPS="${DPO_STEPS:-10}"
DPO_B1="${DPO_B1:-16}"; DPO_B2="${DPO_B2:-8}"; DPO_NLL="${DPO_NLL:-0 1}"; ZERO="${ZERO-2 3}"; DPO_ZERO="${DPO_ZERO-2}"; PAIRS="${PAIRS:-}"
ACCEL="${ACCEL:---config_file configs/accelerate/ddp.yaml}"; ZERO_EXTRA="${ZERO_EXTRA:-}"
R="${R:-runs/multigpu_h200}"; M="${M:-/root/m}"; WHEELS="${WHEELS-.whl}"; DS_WHEELS="${DS_WHEELS-.whl-ds}"
DEADLINE="${DEADLINE_S:-570}"; TOL="${TOL:-0.01}"; START=$SECONDS
source "$(dirname "$0")/device/device_env.sh"
if [ -n "$DS_WHEELS" ] && ls "$DS_WHEELS"/*.whl >/dev/null 2>&1; then  # DeepSpeed + its pure-python deps, once
  [ -d /tmp/site-ds ] || { python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site-ds.part "$DS_WHEELS"/*.whl &&
                           mv /tmp/site-ds.part /tmp/site-ds; } || exit 1
  export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}/tmp/site-ds"   # after the project's wheels: only what they lack
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"; rm -rf "$R"; mkdir -p "$R"; : > "$OUT/multigpu_h200_steps.jsonl"
L="python3 -m looper_math.cli"; PORT=29600; ZERO_ASKED="$ZERO"; DPO_ZERO_ASKED="$DPO_ZERO"
launch() {  # launch ACCEL_ARGS...: LA = `accelerate launch` of the CLI on 2 processes, a fresh port each time
  PORT=$((PORT + 1)); LA=(accelerate launch "$@" --num_processes 2 --num_machines 1 --main_process_port "$PORT" -m looper_math.cli)
}
step() {  # step NAME CMD...: run with the time left to the deadline; wall seconds and rc to the steps file
  local name=$1; shift
  local left=$((DEADLINE - (SECONDS - START) - 15))
  if [ "$left" -lt 20 ]; then
    echo "=== $name skipped (deadline)"; echo "{\"step\": \"$name\", \"rc\": null, \"skipped\": \"deadline\"}" >> "$OUT/multigpu_h200_steps.jsonl"; return 124
  fi
  echo "=== $name ($(date +%T), ${left}s left): $*"; local t0; t0=$(date +%s.%N)
  timeout -s INT -k 15 "$left" "$@"; local rc=$?
  local s; s=$(python3 -c "print(round($(date +%s.%N) - $t0, 2))")
  echo "{\"step\": \"$name\", \"rc\": $rc, \"wall_s\": $s}" >> "$OUT/multigpu_h200_steps.jsonl"
  echo "=== $name rc=$rc in ${s}s"; return $rc
}
skip() { echo "=== $1 skipped: $2"; echo "{\"step\": \"$1\", \"rc\": null, \"skipped\": \"$2\"}" >> "$OUT/multigpu_h200_steps.jsonl"; }
{ echo "commit $(git rev-parse HEAD 2>/dev/null || echo "${COMMIT:-unknown}")"; nvidia-smi -L 2>/dev/null || echo "no nvidia-smi";
  python3 -c "import torch, transformers, trl, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)"
  python3 -c "import deepspeed; print('deepspeed', deepspeed.__version__)" 2>&1 | tail -1; } | tee "$OUT/multigpu_h200_env.txt"

# 1. SFT: same examples per step (the distributed sampler splits each global batch of B1 = 2 x B2)
SFT=(--set sft.data=gold --set sft.limit="$SFT_LIMIT" --set sft.max_steps="$STEPS" --set sft.logging_steps=1 --set sft.save_steps=100000 --set sft.grad_accum=1)
step sft_gpu1 env CUDA_VISIBLE_DEVICES=0 $L sft -c "$CFG" "$@" --set run_dir="$R/gpu1" --set sft.batch_size="$B1" "${SFT[@]}"; SFT1=$?
launch $ACCEL; step sft_ddp "${LA[@]}" sft -c "$CFG" "$@" --set run_dir="$R/ddp" --set sft.batch_size="$B2" "${SFT[@]}"
if [ -n "$ZERO$DPO_ZERO" ] && ! python3 -c "import deepspeed" >/dev/null 2>&1; then
  echo "=== ZeRO legs skipped: \`import deepspeed\` fails here (carry the DeepSpeed wheels: DS_WHEELS=.whl-ds)"
  for z in $ZERO; do skip "sft_zero$z" "deepspeed not importable"; done
  for z in $DPO_ZERO; do skip "dpo_nll${DPO_NLL##* }_zero$z" "deepspeed not importable"; done; ZERO=""; DPO_ZERO=""
fi
for z in $ZERO; do
  launch --config_file "configs/accelerate/zero$z.yaml" $ZERO_EXTRA
  step "sft_zero$z" "${LA[@]}" sft -c "$CFG" "$@" --set run_dir="$R/zero$z" \
    --set sft.batch_size="$B2" "${SFT[@]}"
done

from_sft1() {  # parts 2 and 3 start from the 1-GPU SFT adapter; "$@": the script's extra arguments
# 2. rollouts from the 1-GPU adapter, 1 process vs 2 shards + merge; pairs from the 1-process file
RO=(--set run_dir="$R/gpu1" --set rollouts.limit="$LIMIT")
step rollouts_1gpu env CUDA_VISIBLE_DEVICES=0 $L rollouts -c "$CFG" "$@" "${RO[@]}" --set rollouts.output=data/rollouts_1gpu.jsonl
launch $ACCEL; step rollouts_2gpu "${LA[@]}" rollouts -c "$CFG" "$@" "${RO[@]}" --set rollouts.output=data/rollouts_2gpu.jsonl &&
  step merge $L merge --kind rollouts --shards 2 "$R/gpu1/data/rollouts_2gpu.jsonl"
PAIRS_FILE="$R/gpu1/data/preferences.jsonl"
case "$PAIRS" in
  "") step prefs $L prefs -c "$CFG" "$@" "${RO[@]}" --set rollouts.output=data/rollouts_1gpu.jsonl --set prefs.output=data/preferences.jsonl ;;
  synthetic)  # the tiny model is right ~1 % of the time: its rollouts give no pairs; arithmetic pairs in the abel prompt
    python3 - "$PAIRS_FILE" <<'EOF'
import json, sys
from pathlib import Path
from looper_math.prompts import ABEL_TEMPLATE
q = "Tom has {a} apples and buys {b} more. How many apples does he have?"
rows = [{"prompt": ABEL_TEMPLATE.format(question=q.format(a=i + 2, b=i + 3)), "chosen": f"{i + 2} + {i + 3} = {2 * i + 5}\n#### {2 * i + 5}",
         "rejected": f"{i + 2} * {i + 3} = {(i + 2) * (i + 3)}\n#### {(i + 2) * (i + 3)}"} for i in range(32)]
Path(sys.argv[1]).parent.mkdir(parents=True, exist_ok=True)
Path(sys.argv[1]).write_text("".join(json.dumps(r) + "\n" for r in rows))
EOF
    ;;
  *) mkdir -p "$(dirname "$PAIRS_FILE")" && cp "$PAIRS" "$PAIRS_FILE" ;;
esac

# 3. DPO from the 1-GPU SFT adapter: 1 GPU vs 2 GPUs (DDP), same pairs and global batch
SFT_ADAPTER="$R/gpu1/checkpoints/sft_lora"
sha() { (cd "$SFT_ADAPTER" && sha256sum adapter_model.safetensors adapter_config.json) > "$1"; }
sha "$R/sft_adapter.before.sha256"
DPO=(--set run_dir="$R/gpu1" --set prefs.output=data/preferences.jsonl --set dpo.init_adapter=sft --set dpo.max_steps="$DPO_STEPS"
     --set dpo.logging_steps=1 --set dpo.save_steps=100000 --set dpo.grad_accum=1)
if [ -s "$PAIRS_FILE" ]; then
  for w in $DPO_NLL; do
    step "dpo_nll${w}_gpu1" env CUDA_VISIBLE_DEVICES=0 $L dpo -c "$CFG" "$@" "${DPO[@]}" --set dpo.nll_weight="$w" \
      --set dpo.batch_size="$DPO_B1" --set dpo.output_dir="checkpoints/dpo_nll${w}_gpu1"
    launch $ACCEL; step "dpo_nll${w}_gpu2" "${LA[@]}" dpo -c "$CFG" "$@" "${DPO[@]}" --set dpo.nll_weight="$w" \
      --set dpo.batch_size="$DPO_B2" --set dpo.output_dir="checkpoints/dpo_nll${w}_gpu2"
  done
  w="${DPO_NLL##* }"  # DPO under ZeRO too (2 GPUs, the last NLL weight): the configs' comments offer it
  for z in $DPO_ZERO; do
    launch --config_file "configs/accelerate/zero$z.yaml" $ZERO_EXTRA
    step "dpo_nll${w}_zero$z" "${LA[@]}" dpo -c "$CFG" "$@" "${DPO[@]}" --set dpo.nll_weight="$w" \
      --set dpo.batch_size="$DPO_B2" --set dpo.output_dir="checkpoints/dpo_nll${w}_zero$z"
  done
else
  for w in $DPO_NLL; do skip "dpo_nll${w}_gpu1" "no preference pairs"; skip "dpo_nll${w}_gpu2" "no preference pairs"; done
  for z in $DPO_ZERO; do skip "dpo_nll${DPO_NLL##* }_zero$z" "no preference pairs"; done
fi
sha "$R/sft_adapter.after.sha256"
}
if [ "$SFT1" -eq 0 ]; then from_sft1 "$@"; else
  for s in rollouts_1gpu rollouts_2gpu merge prefs $(for w in $DPO_NLL; do echo "dpo_nll${w}_gpu1 dpo_nll${w}_gpu2"; done) \
           $(for z in $DPO_ZERO; do echo "dpo_nll${DPO_NLL##* }_zero$z"; done); do
    skip "$s" "no 1-GPU SFT adapter"; done
fi

# 4. the report
python3 bench/multigpu_report.py --h200 "$R" "$OUT/multigpu_h200_steps.jsonl" --tol "$TOL" --dpo-nll "$DPO_NLL" \
  --zero "$ZERO_ASKED" --dpo-zero "$DPO_ZERO_ASKED" --env "$OUT/multigpu_h200_env.txt" | tee "$OUT/multigpu_h200.json"
# raw evidence beside the report: the train summaries (per-step losses, memory) and the pairs
for leg in gpu1 ddp zero2 zero3; do cp "$R/$leg/checkpoints/sft_lora/train_summary.json" "$OUT/sft_$leg.summary.json" 2>/dev/null; done
for f in "$R"/gpu1/checkpoints/dpo_*/train_summary.json; do [ -f "$f" ] && cp "$f" "$OUT/$(basename "$(dirname "$f")").summary.json"; done
cp "$PAIRS_FILE" "$OUT/" 2>/dev/null
exit 0
