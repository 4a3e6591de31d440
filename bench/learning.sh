#!/usr/bin/env bash
# Issue 13: the learning table on one H200 -- the recipe of configs/qwen05_gpu.yaml chosen on the dev
# split, then every checkpoint and ablation evaluated on the full GSM8K test split (1,319 questions).
#
#   OUT=... bash bench/learning.sh STAGE [DEADLINE_S]      (GPU machine, repo root, model parts in $M)
#
# Three stages, each one call of under ten minutes (DEADLINE_S, default 560, bounds the stage: every
# command gets the time left minus a reserve for packing the results). Every step resumes: a stage cut
# by its deadline is finished by the next one, which first reruns what came before it.
#   1  `looper-math run` on the dev split: base rollouts (eval prompt) -> RFT SFT -> on-policy rollouts
#      from SFT -> correctness-first pairs -> DPO + NLL -> dev evals of base, SFT, DPO
#   2  the DPO learning rate on dev (5e-5 and 5e-6 beside the default 1e-5); base, SFT, DPO on the test
#      split + paired tests; merged vs unmerged adapter (dev split, issue 12)
#   3  round 2 (`run --rounds 2`: rollouts from the round-1 DPO adapter, pairs, DPO from it) on dev and
#      test; ablations from the same SFT adapter: (a) correctness-only pairs, (b) no NLL term,
#      (c) s_cf label-free (peer consensus, no reference program)
# The figures of bench/RESULTS.md section 0 came from the same steps run as the commands in
# bench/results/2026-12-01-h200-learning/commands.sh (where the first DPO was lr 5e-5).
# Env: CFG (configs/qwen05_gpu.yaml), M (/root/m: part_* + SHA256, or an existing qwen05/), WHEELS (.whl).
set -uo pipefail
STAGE="${1:?stage 1|2|3}"; DEADLINE="${2:-560}"
OUT="${OUT:?set OUT}"; M="${M:-/root/m}"; CFG="${CFG:-configs/qwen05_gpu.yaml}"; WHEELS="${WHEELS:-.whl}"
source "$(dirname "$0")/stage_lib.sh"
ablation() {  # ablation NAME PAIRS_FILE [--set ...]: DPO from the same SFT adapter on other pairs, then the test eval
  local name="$1" pairs="$2"; shift 2
  step $L dpo -c "$CFG" --set prefs.output="$pairs" --set dpo.output_dir="checkpoints/dpo_$name" "$@" --resume &&
    evaltest "dpo_$name" "$R/checkpoints/dpo_$name" && cmp sft_test_eval "dpo_${name}_test_eval" && cmp dpo_test_eval "dpo_${name}_test_eval"
}

step $L run -c "$CFG"   # stage 1's pipeline; a later stage finds it complete (or finishes it)
case "$STAGE" in
  1) ;;
  2)
    for lr in 5.0e-5 5.0e-6; do
      step $L dpo -c "$CFG" --set dpo.learning_rate=$lr --set dpo.output_dir="checkpoints/dpo_lr$lr" --resume &&
        step $L eval -c "$CFG" --adapter "$R/checkpoints/dpo_lr$lr" --output "$R/outputs/dpo_lr${lr}_dev_eval.jsonl" --resume &&
        cmp dpo_dev_eval "dpo_lr${lr}_dev_eval"
    done
    evaltest base none; evaltest sft sft; evaltest dpo dpo
    cmp base_test_eval sft_test_eval; cmp sft_test_eval dpo_test_eval; cmp base_test_eval dpo_test_eval
    # issue 12: the merged adapter (default) against the unmerged reference path, same dev questions
    step $L eval -c "$CFG" --adapter sft --set eval.merge_adapter=false --output "$R/outputs/sft_dev_eval_unmerged.jsonl" --resume &&
      cmp sft_dev_eval sft_dev_eval_unmerged
    ;;
  3)
    step $L run -c "$CFG" --rounds 2 &&
      evaltest dpo_r2 "$R/checkpoints/dpo_lora_r2" && cmp dpo_test_eval dpo_r2_test_eval && cmp base_test_eval dpo_r2_test_eval
    [ -f "$R/data/preferences_corr.jsonl" ] || step $L prefs -c "$CFG" --set 'prefs.pair_types=[correctness]' --set prefs.output=data/preferences_corr.jsonl
    ablation corr data/preferences_corr.jsonl
    ablation nonll data/preferences.jsonl --set dpo.nll_weight=0
    # (c): the rollouts re-scored without regenerating them (every row stores s_cf_free), then pairs and DPO
    if [ ! -f "$R/data/preferences_cffree.jsonl" ]; then
      python3 bench/relabel_cf_free.py -c "$CFG" "$R/data/rollouts_train.jsonl" "$R/data/rollouts_train_cffree.jsonl" &&
        step $L prefs -c "$CFG" --set prefs.output=data/preferences_cffree.jsonl --set rollouts.output=data/rollouts_train_cffree.jsonl
    fi
    ablation cffree data/preferences_cffree.jsonl
    ;;
esac

pack
