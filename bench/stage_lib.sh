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
#                        output appended to $R/logs/NAME.log; `join` waits for them all, prints one line each and
#                        returns 1 if one failed or was cut
#                        (measured on the 0.5B, RESULTS.md section 0: two SFT steps 1.2x, two GRPO runs about 1x)
#   pack                 summaries, per-example eval rows, pair and train summaries of $R and of the run dirs in
#                        PACK_DIRS -> $OUT/stage$STAGE.tgz (pack_results, bench/device/pack.sh); then says how the
#                        stage ended and exits with it:
#                        0 complete; 3 cut by the deadline (a step timed out, rc 124/137): call it again to resume;
#                        1 a step failed: its first error line (the `error: ...` line or a traceback's last line)
# Before any step: the config's data files, model folder and (device: cuda) a CUDA device must be there, else one
# `error:` line per missing thing and exit 2 (preflight).
START=$SECONDS; RESERVE=25
source "$(dirname "${BASH_SOURCE[0]}")/device/device_env.sh"
source "$(dirname "${BASH_SOURCE[0]}")/device/pack.sh"
L="python3 -m looper_math.cli"
R=$(python3 -c "import yaml; print(yaml.safe_load(open('$CFG'))['run_dir'])")
preflight() {  # what a clean clone or a CPU machine lacks, said before the first step instead of inside a log
  python3 - "$CFG" <<'PY'
import sys
from pathlib import Path
from looper_math.config import load_config
path = sys.argv[1]
cfg = load_config(path)
bad = [f"{path}: data.{k}: {v}: file not found (looper-math prepare gsm8k)" for k, v in
       (("train", cfg.data.train), ("test", cfg.data.test)) if v.endswith((".jsonl", ".json", ".parquet")) and not Path(v).is_file()]
m = cfg.model.name_or_path
if m.startswith((".", "/")) and not Path(m).exists():
    bad.append(f"{path}: model.name_or_path: {m}: not found (looper-math prepare model, or the parts + SHA256 in $M)")
if cfg.device == "cuda":
    import torch
    if not torch.cuda.is_available():
        bad.append(f"{path}: device: cuda, but torch {torch.__version__} sees no CUDA device (run this on a GPU machine)")
for b in bad:
    print(f"error: {b}", file=sys.stderr)
sys.exit(2 if bad else 0)
PY
}
preflight || exit 2
left() { echo $((DEADLINE - (SECONDS - START) - RESERVE)); }
first_error() {  # first_error LOG [BYTE_OFFSET]: the first `error: ...` line or traceback's last line in LOG
  tail -c +$(( ${2:-0} + 1 )) "$1" 2>/dev/null | tr '\r' '\n' |
    grep -m1 -E '^(error: |[A-Za-z_][A-Za-z0-9_.]*(Error|Exception|Interrupt)(: |$))'
}
failed() {  # failed NAME RC LOG [OFFSET]: a step ended with RC; 124/137 (timeout's) is a cut, anything else a failure.
  # The first of them decides how the stage ended: a step that fails after a cut usually lacks what the cut one made.
  local kind=fail; { [ "$2" -eq 124 ] || [ "$2" -eq 137 ]; } && kind=cut
  [ $kind = cut ] && CUT=1 || FAILED=1
  [ -n "$FIRST" ] && return
  FIRST=$kind
  [ $kind = fail ] && FIRST_ERR="$1 (rc=$2): $(first_error "$3" "${4:-0}" || echo "no error line in $3")"
  return 0
}
step() {
  local t; t=$(left)
  if [ "$t" -lt 20 ]; then echo "=== skipped (deadline): $*"; failed "$*" 124 /dev/null; return 124; fi
  echo "=== $* ($(date +%T), ${t}s left)"; local t0=$SECONDS log; log=$(mktemp)
  { timeout -s INT -k 15 "$t" "$@" 2>&1; echo $? > "$log.rc"; } | tee "$log"   # the output kept for first_error
  local rc; rc=$(cat "$log.rc")
  echo "=== rc=$rc in $((SECONDS - t0))s"; [ "$rc" -eq 0 ] || failed "$(echo "$*" | cut -c1-100)" "$rc" "$log"
  rm -f "$log" "$log.rc"; return "$rc"
}
FAILED=0; CUT=0; FIRST=""; FIRST_ERR=""
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
join() {  # returns 1 when a job failed or was cut: what comes next usually needs its output
  local i rc ok=0
  for i in "${!PIDS[@]}"; do
    wait "${PIDS[$i]}"; rc=$?; [ $rc -eq 0 ] || { ok=1; failed "${NAMES[$i]}" "$rc" "$R/logs/${NAMES[$i]}.log" "${OFFS[$i]}"; }
    echo "=== ${NAMES[$i]}: rc=$rc | $(tail -c +$((OFFS[$i] + 1)) "$R/logs/${NAMES[$i]}.log" | tr '\r' '\n' | grep -E '^(===|grpo:|sft:|eval|rollouts)|accuracy|rror' | tail -n 4 | tr '\n' ' ')"
  done
  PIDS=(); NAMES=(); OFFS=(); return $ok
}
pack() {  # the results of $R and PACK_DIRS -> one archive (bench/device/pack.sh), then how the stage ended
  pack_results "$OUT/stage$STAGE.tgz" "$R" ${PACK_DIRS:-}
  ls -la "$OUT"
  case "$FIRST" in
    fail) echo "stage $STAGE failed after $((SECONDS - START))s: $FIRST_ERR"; exit 1 ;;
    cut) echo "stage $STAGE cut by the time limit after $((SECONDS - START))s: call it again to resume"; exit 3 ;;
  esac
  echo "stage $STAGE complete in $((SECONDS - START))s"
}
