# Sourced by the staged GPU scripts (learning.sh, learning_grpo.sh) after STAGE, DEADLINE, OUT, M, CFG and
# WHEELS are set: the device environment, the run dir R, and the deadline-bounded helpers.
#   step CMD...          run CMD with the time left minus a reserve for packing the results; never past it
#   finished OUTPUT      OUTPUT is complete (its summary exists: layout.summary_of), tested without starting Python
#                        (a finished step costs ~15 s of imports otherwise)
#   have OUTPUT          finished, and says so in the log: its step is skipped
#   evaldev NAME ADAPTER greedy eval on the dev split  -> $R/outputs/NAME_dev_eval.jsonl (skipped if complete, resumes)
#   evaltest NAME ADAPTER greedy eval on the test split -> $R/outputs/NAME_test_eval.jsonl (skipped if complete, resumes)
#   cmp A B              exact McNemar of two eval files in $R/outputs -> compare_A__B.txt
#   bg NAME CMD...       start CMD (a step, or a function such as evaldev) beside others on the same GPU, its
#                        output appended to $R/logs/NAME.log; `join` waits for them all and prints one line each
#                        (measured on the 0.5B, RESULTS.md section 0: two SFT steps 1.2x, two GRPO runs about 1x)
#   pack                 summaries, per-example eval rows, pair and train summaries of $R and of the run dirs in
#                        PACK_DIRS -> $OUT/stage$STAGE.tgz; says whether every step of the stage finished
START=$SECONDS; RESERVE=25
source "$(dirname "${BASH_SOURCE[0]}")/device_env.sh"
L="python3 -m looper_math.cli"
R=$(python3 -c "import yaml; print(yaml.safe_load(open('$CFG'))['run_dir'])")
left() { echo $((DEADLINE - (SECONDS - START) - RESERVE)); }
step() {
  local t; t=$(left)
  if [ "$t" -lt 20 ]; then echo "=== skipped (deadline): $*"; FAILED=1; return 124; fi
  echo "=== $* ($(date +%T), ${t}s left)"; local t0=$SECONDS
  timeout -s INT -k 15 "$t" "$@"; local rc=$?
  echo "=== rc=$rc in $((SECONDS - t0))s"; [ $rc -eq 0 ] || FAILED=1; return $rc
}
FAILED=0
finished() {  # finished OUTPUT: a JSONL's <stem>.summary.json or an adapter folder's train_summary.json exists
  case "$1" in *.jsonl) [ -f "${1%.jsonl}.summary.json" ] ;; *) [ -f "$1/train_summary.json" ] ;; esac
}
have() { finished "$1" && echo "=== complete, skipped: $1"; }   # the same, said in the log: its step is skipped
evaldev() { have "$R/outputs/$1_dev_eval.jsonl" || step $L eval -c "$CFG" --adapter "$2" --set eval.split=dev --output "$R/outputs/$1_dev_eval.jsonl" --resume; }
evaltest() { have "$R/outputs/$1_test_eval.jsonl" || step $L eval -c "$CFG" --adapter "$2" --set eval.split=test --output "$R/outputs/$1_test_eval.jsonl" --resume; }
cmp() { [ -f "$R/outputs/$1.jsonl" ] && [ -f "$R/outputs/$2.jsonl" ] && $L compare "$R/outputs/$1.jsonl" "$R/outputs/$2.jsonl" | tee "$R/outputs/compare_$1__$2.txt"; }
PIDS=(); NAMES=(); OFFS=()
bg() {
  local name="$1"; shift; mkdir -p "$R/logs"
  OFFS+=($(stat -c %s "$R/logs/$name.log" 2>/dev/null || echo 0))   # join reads this call's lines only
  echo "=== bg $name: $* ($(date +%T))"
  ( export OMP_NUM_THREADS=4; "$@" ) >> "$R/logs/$name.log" 2>&1 &
  PIDS+=($!); NAMES+=("$name")
}
join() {
  local i rc
  for i in "${!PIDS[@]}"; do
    wait "${PIDS[$i]}"; rc=$?; [ $rc -eq 0 ] || FAILED=1
    echo "=== ${NAMES[$i]}: rc=$rc | $(tail -c +$((OFFS[$i] + 1)) "$R/logs/${NAMES[$i]}.log" | tr '\r' '\n' | grep -E '^(===|grpo:|sft:|eval|rollouts)|accuracy|rror' | tail -n 4 | tr '\n' ' ')"
  done
  PIDS=(); NAMES=(); OFFS=()
}
pack() {  # at most 8 files come back: one archive; adapters and rollouts stay on the machine
  mkdir -p "$OUT"
  local d files=()
  for d in "$R" ${PACK_DIRS:-}; do
    [ -d "$d" ] || continue
    files+=($(ls -d "$d/outputs" "$d/logs" "$d/data" "$d"/checkpoints/*/train_summary.json "$d"/checkpoints/*/resolved_config.yaml 2>/dev/null))
  done
  tar czf "$OUT/stage$STAGE.tgz" --exclude='*.safetensors' --exclude='trainer' --exclude='rollouts_*.jsonl' "${files[@]}" 2>/dev/null
  ls -la "$OUT"
  if [ $FAILED -eq 0 ]; then echo "stage $STAGE complete in $((SECONDS - START))s"
  else echo "stage $STAGE cut or failed after $((SECONDS - START))s: call it again to resume"; fi
}
