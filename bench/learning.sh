#!/usr/bin/env bash
# Issue 13: the learning table on one H200 -- the recipe of configs/qwen05_gpu.yaml (chosen on the dev
# split), then its checkpoints and the ablations evaluated on the full GSM8K test split (1,319 questions).
#
#   OUT=... bash bench/learning.sh STAGE [DEADLINE_S]      (GPU machine, repo root, model parts in $M)
#
# Three stages, each one call of under ten minutes (DEADLINE_S, default 560, bounds the stage: every
# command gets the time left minus a reserve for packing the results). Every step resumes: a stage cut
# by its deadline is finished by the next one, which first reruns what came before it.
#   1  `looper-math run` on the dev split: base rollouts (eval prompt) -> RFT SFT -> GRPO round 1 ->
#      GRPO round 2 (binary correctness reward, fast-engine sampling) -> dev evals of each
#   2  base, SFT, GRPO rounds 1 and 2 on the test split + paired tests
#   3  ablations from the same SFT adapter, dev and test: (a) GRPO with the Regime W reward
#      (correct + coherence - length) instead of the binary one; (b) the offline recipe, one round of
#      rollouts from SFT -> correctness-first pairs -> DPO + NLL (`policy: dpo`), in similar GPU time
#   4  the main comparison with a second seed (base rollouts, SFT and GRPO seeds; its own run dir
#      runs/qwen05_seed2): the whole recipe, then its final checkpoint on the test split against the same
#      base eval (about 11 minutes: run it twice, the second call finishes what the first's deadline cut)
# The figures of bench/RESULTS.md section 0 came from bench/learning_grpo.sh (the same steps, staged
# differently; commands in bench/results/2026-12-02-h200-grpo/commands.sh). The DPO-recipe table of
# 2026-12-01 (coherence pairs, NLL, s_cf ablations) is reproduced by `git show d891b40:bench/learning.sh`.
# Env: CFG (configs/qwen05_gpu.yaml), M (/root/m: part_* + SHA256, or an existing qwen05/), WHEELS (.whl).
set -uo pipefail
STAGE="${1:?stage 1|2|3|4}"; DEADLINE="${2:-560}"
OUT="${OUT:?set OUT}"; M="${M:-/root/m}"; CFG="${CFG:-configs/qwen05_gpu.yaml}"; WHEELS="${WHEELS:-.whl}"
source "$(dirname "$0")/stage_lib.sh"

step $L run -c "$CFG"   # stage 1's pipeline; a later stage finds it complete (or finishes it)
case "$STAGE" in
  1) ;;
  2)
    evaltest base none; evaltest sft sft
    evaltest grpo_r1 "$R/checkpoints/grpo_lora"; evaltest grpo_r2 "$R/checkpoints/grpo_lora_r2"
    cmp base_test_eval sft_test_eval; cmp sft_test_eval grpo_r1_test_eval; cmp grpo_r1_test_eval grpo_r2_test_eval
    cmp base_test_eval grpo_r2_test_eval
    ;;
  3)
    step $L grpo -c "$CFG" --set grpo.reward=regime_w --set grpo.output_dir=checkpoints/grpo_rw --resume &&
      evaldev grpo_rw "$R/checkpoints/grpo_rw" && evaltest grpo_rw "$R/checkpoints/grpo_rw" &&
      cmp sft_test_eval grpo_rw_test_eval && cmp grpo_r1_test_eval grpo_rw_test_eval
    step $L run -c "$CFG" --set policy=dpo --rounds 1 &&
      evaltest dpo dpo && cmp sft_test_eval dpo_test_eval && cmp grpo_r1_test_eval dpo_test_eval
    ;;
  4)
    S2=runs/qwen05_seed2; SEED2=(--set run_dir=$S2 --set rollouts.seed=1 --set sft.seed=43 --set grpo.seed=142)
    step $L run -c "$CFG" "${SEED2[@]}" &&
      step $L eval -c "$CFG" "${SEED2[@]}" --adapter "$S2/checkpoints/grpo_lora_r2" --set eval.split=test \
        --output "$R/outputs/seed2_grpo_r2_test_eval.jsonl" --resume &&
      cmp base_test_eval seed2_grpo_r2_test_eval && cmp grpo_r2_test_eval seed2_grpo_r2_test_eval
    ;;
esac
pack
