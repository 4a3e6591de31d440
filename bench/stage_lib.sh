# Sourced by the staged GPU scripts (learning.sh, learning_grpo.sh) after STAGE, DEADLINE, OUT, M, CFG and
# WHEELS are set: the device environment, the run dir R, and the deadline-bounded helpers.
#   step CMD...          run CMD with the time left minus a reserve for packing the results; never past it
#   evaldev NAME ADAPTER greedy eval on the dev split  -> $R/outputs/NAME_dev_eval.jsonl (resumes)
#   evaltest NAME ADAPTER greedy eval on the test split -> $R/outputs/NAME_test_eval.jsonl (resumes)
#   cmp A B              exact McNemar of two eval files in $R/outputs -> compare_A__B.txt
#   pack                 summaries, per-example eval rows, pair and train summaries -> $OUT/stage$STAGE.tgz
START=$SECONDS; RESERVE=25
source "$(dirname "${BASH_SOURCE[0]}")/device_env.sh"
L="python3 -m looper_math.cli"
R=$(python3 -c "import yaml; print(yaml.safe_load(open('$CFG'))['run_dir'])")
left() { echo $((DEADLINE - (SECONDS - START) - RESERVE)); }
step() {
  local t; t=$(left)
  if [ "$t" -lt 20 ]; then echo "=== skipped (deadline): $*"; return 124; fi
  echo "=== $* ($(date +%T), ${t}s left)"; local t0=$SECONDS
  timeout -s INT -k 15 "$t" "$@"; local rc=$?
  echo "=== rc=$rc in $((SECONDS - t0))s"; return $rc
}
evaldev() { step $L eval -c "$CFG" --adapter "$2" --set eval.split=dev --output "$R/outputs/$1_dev_eval.jsonl" --resume; }
evaltest() { step $L eval -c "$CFG" --adapter "$2" --set eval.split=test --output "$R/outputs/$1_test_eval.jsonl" --resume; }
cmp() { [ -f "$R/outputs/$1.jsonl" ] && [ -f "$R/outputs/$2.jsonl" ] && $L compare "$R/outputs/$1.jsonl" "$R/outputs/$2.jsonl" | tee "$R/outputs/compare_$1__$2.txt"; }
pack() {  # at most 8 files come back: one archive; adapters and rollouts stay on the machine
  mkdir -p "$OUT"
  tar czf "$OUT/stage$STAGE.tgz" -C "$R" --exclude='*.safetensors' --exclude='trainer' --exclude='rollouts_*.jsonl' \
    outputs data $(cd "$R" && ls -d checkpoints/*/train_summary.json checkpoints/*/resolved_config.yaml 2>/dev/null) 2>/dev/null
  ls -la "$OUT"
  echo "stage $STAGE done in $((SECONDS - START))s"
}
