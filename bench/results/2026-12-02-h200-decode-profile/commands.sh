# Issue 12 goal 3, session 5 (2026-12-02), one NVIDIA H200, code at f2f900b's parent b760cf6; the last 179 s of
# the session's device time, so with a 150 s deadline instead of the bench/README's 440 s: plain generate,
# fast (512 slots) plain and k = 8, roofline, kernel profile, hf static cache + compile (batch 64, k = 8 case);
# the hf plain case and generate_batch were cut by the deadline.
HF_HUB_OFFLINE=1 PYTHONPATH=/tmp/site:$PWD/src timeout 200 python3 bench/bench_decode.py --slots 512 --no-variants \
  --hf --hf-batches 64 --profile --deadline-s 150 --out $OUT
