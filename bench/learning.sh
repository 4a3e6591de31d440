#!/usr/bin/env bash
# Issue 13: the learning table on one H200 -- the recipe of configs/qwen05_gpu.yaml (chosen on the dev
# split), then its checkpoints, a second seed and the ablations evaluated on the full GSM8K test split.
#
#   OUT=... bash bench/learning.sh main|seed1|seed2|ablations [DEADLINE_S]   (GPU machine, repo root, model parts in $M)
#
# Each stage is an ordered list of resumable steps; DEADLINE_S (default 560) bounds one call (every command
# gets the time left minus a reserve for packing). Call a stage again until it prints "stage ... complete":
# finished steps are skipped without starting Python (their summary exists), a step cut by the deadline
# resumes from its last checkpoint.
#   main       (three calls of ~9.5 min; about 25 min with the model conversion)
#              seed 1: `looper-math run` on the dev split: base rollouts (eval prompt) -> RFT SFT -> GRPO
#              (one round of 70 steps, binary correctness reward, fast-engine sampling) -> dev evals; then
#              base, SFT and GRPO on the test split + paired tests.
#              seed 2 (run dir runs/qwen05_seed2; base-rollout, SFT and GRPO seeds changed): the same
#              training phases, its GRPO and SFT checkpoints on the test split + paired tests (against the
#              same base eval), then on the dev split.
#   seed1, seed2  the two halves of main, for sessions that can hold only one seed's run
#   ablations  from seed 1's SFT adapter, dev and test: (a) GRPO with the Regime W reward (correct +
#              coherence - length), (c) the same with the label-free s_cf (peers only, no reference program),
#              (b') the offline recipe: rollouts from SFT -> correctness-first pairs -> DPO + NLL (`policy: dpo`).
# The figures of 2026-12-02 (two 40-step rounds, RESULTS.md section 0) came from bench/learning_grpo.sh.
# Env: CFG (configs/qwen05_gpu.yaml), M (/root/m: part_* + SHA256, or an existing qwen05/), WHEELS (.whl).
set -uo pipefail
STAGE="${1:?stage main|seed1|seed2|ablations}"; DEADLINE="${2:-560}"
OUT="${OUT:?set OUT}"; M="${M:-/root/m}"; CFG="${CFG:-configs/qwen05_gpu.yaml}"; WHEELS="${WHEELS:-.whl}"
S2="${S2:-runs/qwen05_seed2}"   # seed 2's run dir (PACK_DIRS: packed beside $R)
export PACK_DIRS="$S2"
source "$(dirname "$0")/stage_lib.sh"
SEED2=(--set run_dir="$S2" --set rollouts.seed=1 --set sft.seed=43 --set grpo.seed=142)
RW=(--set grpo.reward=regime_w)

seed1() {
  have "$R/outputs/grpo_dev_eval.jsonl" || step $L run -c "$CFG" || true
  evaltest base none; evaltest sft sft; evaltest grpo "$R/checkpoints/grpo_lora"
  cmp base_test_eval sft_test_eval; cmp sft_test_eval grpo_test_eval; cmp base_test_eval grpo_test_eval
}
seed2() {  # the run's training phases (sft collects its base rollouts first); its evals land in $R/outputs
  have "$S2/checkpoints/sft_lora" || step $L sft -c "$CFG" "${SEED2[@]}" --resume || true
  have "$S2/checkpoints/grpo_lora" || step $L grpo -c "$CFG" "${SEED2[@]}" --resume || true
  evaltest base none; evaltest seed2_grpo "$S2/checkpoints/grpo_lora"
  cmp base_test_eval seed2_grpo_test_eval; cmp grpo_test_eval seed2_grpo_test_eval
  evaltest seed2_sft "$S2/checkpoints/sft_lora"; cmp seed2_sft_test_eval seed2_grpo_test_eval
  evaldev seed2_sft "$S2/checkpoints/sft_lora"; evaldev seed2_grpo "$S2/checkpoints/grpo_lora"
  cmp seed2_sft_dev_eval seed2_grpo_dev_eval
}
case "$STAGE" in
  main) seed1; seed2 ;;
  seed1) seed1 ;;   # main, one seed per device session (a longer recipe than two seeds fit in 30 minutes)
  seed2) seed2 ;;
  ablations)
    have "$R/checkpoints/sft_lora" || step $L run -c "$CFG" || true
    ablate() {  # ablate NAME [--set ...]: GRPO from SFT into checkpoints/NAME, dev and test evals, paired tests
      local name="$1"; shift
      have "$R/checkpoints/$name" ||
        step $L grpo -c "$CFG" --set grpo.output_dir="checkpoints/$name" "$@" --resume || return 0
      evaldev "$name" "$R/checkpoints/$name"; evaltest "$name" "$R/checkpoints/$name"
      cmp sft_test_eval "${name}_test_eval"; cmp grpo_test_eval "${name}_test_eval"
    }
    ablate grpo_rw "${RW[@]}"
    ablate grpo_rw_cf_free "${RW[@]}" --set regime_w.cf_source=peers
    have "$R/outputs/dpo_dev_eval.jsonl" || step $L run -c "$CFG" --set policy=dpo --rounds 1 || true
    evaltest dpo dpo; cmp sft_test_eval dpo_test_eval; cmp grpo_test_eval dpo_test_eval
    ;;
  *) echo "stage: main, seed1, seed2 or ablations"; exit 2 ;;
esac
pack
