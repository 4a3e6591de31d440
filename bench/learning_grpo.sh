#!/usr/bin/env bash
# Superseded by bench/learning.sh (one 70-step round, the learning rate chosen on dev); kept as the command of
# RESULTS.md section 0a. The online lever on one H200: `looper-math grpo` (TRL GRPOTrainer, completions from this
# project's engine on a merged copy of the policy) from the RFT SFT adapter of configs/qwen05_gpu.yaml,
# chosen on the dev split, the chosen checkpoints then evaluated on the full GSM8K test split.
#
#   OUT=... bash bench/learning_grpo.sh STAGE [DEADLINE_S]   (GPU machine, repo root, model parts in $M)
#
# Stages, each one call of under ten minutes; every step resumes, so a stage cut by its deadline is
# finished by the next one, which first reruns (finds complete) what came before it:
#   1  base rollouts -> RFT SFT (`looper-math sft`); dev evals of base and SFT; GRPO with the binary
#      correctness reward (regime_w.beta_coherence 0, length_penalty 0), grpo.* of the config; its dev eval
#   2  base, SFT, GRPO (binary) on the test split + paired tests; GRPO with the Regime W reward (the
#      config's alpha/beta/length penalty: the seed's coherence question, online) on dev
#   3  a second GRPO run continuing from the binary one (other seed, so other questions) on dev and test
# Ran at d891b40 (bench/results/2026-12-02-h200-grpo); kept runnable at later commits, where the binary
# reward is grpo.reward=correctness (the same reward as BIN below) and the Regime W one needs grpo.reward=regime_w.
# Env: CFG (configs/qwen05_gpu.yaml), M (/root/m: part_* + SHA256, or an existing qwen05/), WHEELS (.whl).
set -uo pipefail
STAGE="${1:?stage 1|2|3}"; DEADLINE="${2:-560}"
OUT="${OUT:?set OUT}"; M="${M:-/root/m}"; CFG="${CFG:-configs/qwen05_gpu.yaml}"; WHEELS="${WHEELS:-.whl}"
source "$(dirname "$0")/stage_lib.sh"
BIN=(--set regime_w.beta_coherence=0 --set regime_w.length_penalty=0)
grpo() {  # grpo NAME [--set ...]: GRPO into checkpoints/NAME, then its dev eval against SFT
  local name="$1"; shift
  step $L grpo -c "$CFG" --set grpo.output_dir="checkpoints/$name" "$@" --resume &&
    evaldev "$name" "$R/checkpoints/$name" && cmp sft_dev_eval "${name}_dev_eval"
}

step $L sft -c "$CFG" --resume
evaldev base none; evaldev sft sft; cmp base_dev_eval sft_dev_eval
grpo grpo_bin "${BIN[@]}"
case "$STAGE" in
  1) ;;
  2)
    evaltest base none; evaltest sft sft; evaltest grpo_bin "$R/checkpoints/grpo_bin"
    cmp base_test_eval sft_test_eval; cmp sft_test_eval grpo_bin_test_eval; cmp base_test_eval grpo_bin_test_eval
    grpo grpo_rw --set grpo.reward=regime_w && cmp grpo_bin_dev_eval grpo_rw_dev_eval  # (the default reward at d891b40)
    ;;
  3)
    grpo grpo_bin2 "${BIN[@]}" --set grpo.init_adapter="$R/checkpoints/grpo_bin" --set grpo.seed=43 &&
      cmp grpo_bin_dev_eval grpo_bin2_dev_eval &&
      evaltest grpo_bin2 "$R/checkpoints/grpo_bin2" && cmp grpo_bin_test_eval grpo_bin2_test_eval &&
      cmp base_test_eval grpo_bin2_test_eval
    ;;
esac
pack
