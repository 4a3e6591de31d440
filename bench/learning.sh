#!/usr/bin/env bash
# The learning table on one H200 (does the recipe gain >= 10 points over base on test, p < 0.001?) -- the recipe
# of configs/qwen05_gpu.yaml (chosen on the dev split), then its checkpoints, a second seed and the ablations
# evaluated on the full GSM8K test split.
#
#   [OUT=DIR] bash bench/learning.sh main|seed1|seed2|ablations|gated|round2|dpo [DEADLINE_S]   (GPU machine, repo root)
#
# Needs the files of configs/qwen05_gpu.yaml: `looper-math prepare` (GSM8K in .gsm8k/, the model in .models/qwen05),
# or on a machine without network the carried .gsm8k/ and the model's parts + SHA256 in $M (bench/device/device_env.sh joins,
# checks and converts them, and links .models/qwen05 to $M/qwen05). A missing file or CUDA device stops it first.
# Each stage is an ordered list of resumable steps; DEADLINE_S (default 560) bounds one call (every command
# gets the time left minus a reserve for packing). Call a stage again until it prints "stage ... complete":
# finished steps are skipped without starting Python (their summary exists), a step cut by the deadline
# resumes from its last checkpoint. Exit status: 0 complete, 3 cut by the deadline (call it again), 1 a step
# failed (the last line names it and its first error line; the full output is in the log or $R/logs/), 2 a
# missing file or device. The results go to $OUT/stage<STAGE>.tgz (OUT default: runs/learning).
#   main       (three calls of < 10 min with the model conversion; jobs that need no result of each other share
#              the GPU side by side: `bg`/`join` in stage_lib.sh; that saves little, the GPU is busy either way)
#              seed 1 (runs/qwen05): base rollouts (eval prompt) -> RFT SFT; GRPO (one round of 70 steps, binary
#              correctness reward, fast-engine sampling) at each grpo.learning_rate in LRS, side by side; dev evals
#              of base, SFT and every candidate; the best on dev is chosen (outputs/lr_choice.txt) and only it is
#              evaluated on the test split, with base and SFT + paired tests.
#              seed 2 (run dir runs/qwen05_seed2; base-rollout, SFT and GRPO seeds changed; its SFT beside seed 1's):
#              GRPO at the chosen learning rate, its SFT and GRPO on the test split + paired tests (against the
#              same base eval), then on the dev split.
#   seed1, seed2  the two halves of main, for sessions that can hold only one seed's run (seed2 alone takes the
#              config's learning rate when seed 1 has not chosen one on this machine)
#   ablations  from seed 1's SFT adapter (unpacked or trained here), dev and test: GRPO with the Regime W reward
#              (correct + coherence - length) with s_cf against the reference program, and (c) the same with the
#              label-free s_cf (peers only); the two train side by side (two calls of < 10 min). Both were gamed
#              (RESULTS.md section 0d: one-line equations, 1-2 % on test).
#   gated      the same from seed 1's SFT with grpo.reward=regime_w_gated (coherence and length rank only correct
#              completions), dev and test (one call of < 10 min with the conversion).
#   round2     a second GRPO round of the recipe's length from seed 1's adapter (grpo.seed + 1, as `run --rounds 2`);
#              round 1 and 2 on dev in the same call; round 2 on test only if it gains on dev with p < 0.05
#              (outputs/round2_choice.txt). One call of < 10 min with the conversion.
#   dpo        the offline recipe from seed 1's SFT: rollouts -> correctness-first pairs -> DPO + NLL (policy: dpo).
# The figures of 2026-12-02 with two 40-step rounds (RESULTS.md section 0a) came from bench/learning_grpo.sh.
# Env: OUT (runs/learning), CFG (configs/qwen05_gpu.yaml), M (/root/m: part_* + SHA256, or an existing qwen05/), WHEELS (.whl).
set -uo pipefail
STAGE="${1:?stage main|seed1|seed2|ablations|gated|round2|dpo}"; DEADLINE="${2:-560}"
OUT="${OUT:-runs/learning}"; M="${M:-/root/m}"; CFG="${CFG:-configs/qwen05_gpu.yaml}"; WHEELS="${WHEELS:-.whl}"
S2="${S2:-runs/qwen05_seed2}"   # seed 2's run dir (PACK_DIRS: packed beside $R)
export PACK_DIRS="$S2"
source "$(dirname "$0")/stage_lib.sh"
SEED2=(--set run_dir="$S2" --set rollouts.seed=1 --set sft.seed=43 --set grpo.seed=142)
RW=(--set grpo.reward=regime_w)

# grpo.learning_rate candidates for seed 1, the best on dev is chosen (pick); default: the config's rate alone.
# RESULTS.md section 0 chose the config's 1e-4 with LRS="1e-4 2e-4" (two candidates side by side: ~770 s more)
choose() { python3 "$(dirname "$0")/choose.py" "$@"; }   # the decisions between steps: bench/choose.py
CFG_LR=$(choose cfg-lr "$CFG") || exit 2   # 1e-4 (as LRS names it: checkpoints/grpo_lr1e-4), 5e-5, 1.5e-4
LRS="${LRS:-$CFG_LR}"
sft1() { have "$R/checkpoints/sft_lora" || step $L sft -c "$CFG" --resume; }          # base rollouts -> RFT SFT
sft2() { have "$S2/checkpoints/sft_lora" || step $L sft -c "$CFG" "${SEED2[@]}" --resume; }
cand() { have "$R/checkpoints/grpo_lr$1" ||
  step $L grpo -c "$CFG" --set grpo.output_dir="checkpoints/grpo_lr$1" --set grpo.learning_rate="$1" --resume; }
pick() { choose lr "$R/outputs" $LRS; }   # the best on dev, the first of LRS on a tie -> $R/outputs/lr_choice.txt
chosen() { sed -n 's/^chosen //p' "$R/outputs/lr_choice.txt" 2>/dev/null; }
grpo2() { have "$S2/checkpoints/grpo_lora" ||
  step $L grpo -c "$CFG" "${SEED2[@]}" --set grpo.learning_rate="$1" --resume; }
seed1() {  # SFT; GRPO at each LRS candidate side by side; dev evals; pick; base, SFT and the chosen GRPO on test
  [ -n "${1:-}" ] && bg sft2 sft2; bg sft1 sft1; join || return 1   # a failed or cut job: the next steps need it
  for lr in $LRS; do bg "grpo_lr$lr" cand "$lr"; done; join || return 1
  bg base_dev evaldev base none; bg sft_dev evaldev sft sft
  for lr in $LRS; do bg "grpo_lr${lr}_dev" evaldev "grpo_lr$lr" "$R/checkpoints/grpo_lr$lr"; done; join
  for lr in $LRS; do cmp sft_dev_eval "grpo_lr${lr}_dev_eval"; done
  local lr; lr=$(chosen); [ -n "$lr" ] || lr=$(pick) || {   # unfinished candidates: a cut or failure said so already
    [ -n "$FIRST" ] || { FAILED=1; FIRST=fail; FIRST_ERR="pick: no dev eval summary for every LRS candidate"; }
    echo "=== no pick: candidates unfinished"; return 1; }
  echo "=== chosen grpo.learning_rate $lr"; cat "$R/outputs/lr_choice.txt"
  [ -n "${1:-}" ] && bg seed2_grpo grpo2 "$lr"
  bg base_test evaltest base none; bg sft_test evaltest sft sft; bg grpo_test evaltest grpo "$R/checkpoints/grpo_lr$lr"; join
  cmp base_test_eval sft_test_eval; cmp sft_test_eval grpo_test_eval; cmp base_test_eval grpo_test_eval
  return 0
}
seed2() {  # seed 2 at seed 1's chosen learning rate (the config's when seed 1 has not chosen), its evals
  local lr; lr=$(chosen); [ -n "$lr" ] || lr=$CFG_LR
  bg sft2 sft2; join || return 1; bg seed2_grpo grpo2 "$lr"; join || return 1
  bg s2_gt evaltest seed2_grpo "$S2/checkpoints/grpo_lora"; bg s2_st evaltest seed2_sft "$S2/checkpoints/sft_lora"
  bg s2_sd evaldev seed2_sft "$S2/checkpoints/sft_lora"; bg s2_gd evaldev seed2_grpo "$S2/checkpoints/grpo_lora"; join
  cmp base_test_eval seed2_grpo_test_eval; cmp grpo_test_eval seed2_grpo_test_eval
  cmp seed2_sft_test_eval seed2_grpo_test_eval; cmp seed2_sft_dev_eval seed2_grpo_dev_eval
}
need() {  # need ADAPTER WHAT: the stage starts from ADAPTER (trained by main or seed1, or unpacked from .carry/)
  finished "$1" || { echo "=== $STAGE starts from $2 $1: run main or seed1 first"; exit 2; }
}
abl() {  # abl NAME [--set ...]: GRPO from seed 1's SFT into checkpoints/NAME, the recipe with those settings changed
  have "$R/checkpoints/$1" || step $L grpo -c "$CFG" --set grpo.output_dir="checkpoints/$1" "${@:2}" --resume
}
abl_evals() {  # abl_evals NAME...: dev and test evals of each finished one, side by side (a cut one resumes next call)
  local n
  for n in "$@"; do
    finished "$R/checkpoints/$n" || continue
    bg "${n}_dev" evaldev "$n" "$R/checkpoints/$n"; bg "${n}_test" evaltest "$n" "$R/checkpoints/$n"
  done; join
}
case "$STAGE" in
  main) seed1 with-seed2 && seed2 ;;   # seed 2's SFT beside seed 1's; its GRPO only once the learning rate is chosen
  seed1) seed1 ;;   # main, one seed per device session
  seed2) seed2 ;;
  ablations)   # (a') and (c): both Regime W rewards side by side from seed 1's SFT, then their evals
    need "$R/checkpoints/sft_lora" "seed 1's SFT adapter"
    bg grpo_rw abl grpo_rw "${RW[@]}"
    bg grpo_rw_cf_free abl grpo_rw_cf_free "${RW[@]}" --set regime_w.cf_source=peers; join
    abl_evals grpo_rw grpo_rw_cf_free
    cmp grpo_rw_dev_eval grpo_rw_cf_free_dev_eval; cmp grpo_rw_test_eval grpo_rw_cf_free_test_eval
    for n in grpo_rw grpo_rw_cf_free; do cmp sft_test_eval "${n}_test_eval"; cmp grpo_test_eval "${n}_test_eval"; done
    ;;
  gated)   # the Regime W reward for correct completions only (grpo.reward=regime_w_gated) from seed 1's SFT, its evals
    need "$R/checkpoints/sft_lora" "seed 1's SFT adapter"
    abl grpo_rw_gated --set grpo.reward=regime_w_gated
    abl_evals grpo_rw_gated
    cmp sft_test_eval grpo_rw_gated_test_eval; cmp grpo_test_eval grpo_rw_gated_test_eval
    cmp sft_dev_eval grpo_rw_gated_dev_eval; cmp grpo_lr1e-4_dev_eval grpo_rw_gated_dev_eval
    ;;
  round2)   # a second GRPO round from seed 1's adapter, as `run --rounds 2` trains it; test only if dev gains
    lr=$(chosen); [ -n "$lr" ] || lr=$CFG_LR; src="$R/checkpoints/grpo_lr$lr"
    need "$src" "seed 1's GRPO adapter"
    seed=$(python3 -c "from looper_math.config import load_config; print(load_config('$CFG').grpo.seed + 1)")
    have "$R/checkpoints/grpo_r2" || step $L grpo -c "$CFG" --set grpo.init_adapter="$src" \
      --set grpo.output_dir=checkpoints/grpo_r2 --set grpo.seed="$seed" --set grpo.learning_rate="$lr" --resume
    if finished "$R/checkpoints/grpo_r2"; then   # round 1 evaluated again beside it: one layout
      bg r1_dev evaldev "r1_lr$lr" "$src"; bg r2_dev evaldev grpo_r2 "$R/checkpoints/grpo_r2"; join
      cmp "r1_lr${lr}_dev_eval" grpo_r2_dev_eval
      gain=$(choose round2 "$R/outputs" "r1_lr$lr")   # yes: dev gain with p < 0.05 -> outputs/round2_choice.txt
      cat "$R/outputs/round2_choice.txt"
      [ "$gain" = yes ] && evaltest grpo_r2 "$R/checkpoints/grpo_r2"
    fi
    ;;
  dpo)   # (b') the offline recipe from seed 1's SFT: rollouts -> correctness-first pairs -> DPO + NLL (policy: dpo)
    have "$R/outputs/dpo_dev_eval.jsonl" || step $L run -c "$CFG" --set policy=dpo --rounds 1 || true
    evaltest dpo dpo; cmp sft_test_eval dpo_test_eval; cmp grpo_test_eval dpo_test_eval
    ;;
  *) echo "stage: main, seed1, seed2, ablations, gated, round2 or dpo"; exit 2 ;;
esac
pack
