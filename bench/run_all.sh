#!/usr/bin/env bash
# All GPU benchmarks in sequence (~11 minutes on one H100; bench/speed_gpu2.sh splits them over 2 GPUs), each under its own timeout; stdout and
# stderr of every step are teed to $OUT, the JSON lines also land in $OUT/<bench>.jsonl.
#
#   OUT=/tmp/bench_out bash bench/run_all.sh            # on the GPU machine, from the repo root
#   WHEELS=shared/device/wheels bash bench/run_all.sh   # installs trl/datasets wheels into /tmp/site first
#
# Correctness first: the gpu-marked test compares engine="fast" with the plain path on CUDA.
set -u
OUT="${OUT:?set OUT to the output directory}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site "$WHEELS"/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
QUICK="${QUICK:---quick}"   # QUICK= (empty) for the full sweeps
status=0
step() {  # name, timeout seconds, command...
  local name=$1 limit=$2; shift 2
  echo "=== $name (timeout ${limit}s): $*" | tee -a "$OUT/run_all.log"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > >(tee "$OUT/$name.out") 2> >(tee "$OUT/$name.err" >&2)
  local rc=$?
  echo "=== $name rc=$rc in $((SECONDS - t0))s" | tee -a "$OUT/run_all.log"
  [ $rc -eq 0 ] || status=1
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
step gpu_test 90  python -m pytest tests/test_gpu_engine.py -m gpu -q -p no:cacheprovider
step decode   240 python bench/bench_decode.py $QUICK --out "$OUT"
step eval     150 python bench/bench_eval.py $QUICK --out "$OUT"
step sft      420 python bench/bench_sft.py $QUICK --out "$OUT"
step dpo      100 python bench/bench_dpo.py $QUICK --out "$OUT"
grep -h '"figure": "summary"' "$OUT"/*.jsonl | tee "$OUT/summary.jsonl"
exit $status
