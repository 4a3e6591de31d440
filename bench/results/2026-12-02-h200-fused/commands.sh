# Issue 12 goal 3, session 9 (2026-12-02): the fused decode layer. One NVIDIA H200 per call (torch 2.11+cu130,
# transformers 5.17, peft 0.21, trl 1.16 from the carried wheels). Device time 1,774 s of 1,800: the first machine
# (calls 1-5, ~870 s held) was released by the 30 s idle timer; the next was taken back mid-call (nothing ran); calls
# 6-18 ran on a third machine and call 19 on a fourth.
# Call 1 (code dd615d9: fused parts without emulate_precision_casts), carrying .whl, .ferry/SHA256, .carry/seed1_sft.tgz
# -> decode_first/ (random 7B shape: sdpa/flex x fused/unfused at 256 and 512 slots, profiles, transformers' paths):
mkdir -p /root/m && cp .ferry/SHA256 /root/m/ && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
grep seed1_sft.tgz bench/results/2026-12-02-h200-grpo-lr/adapters.sha256 | (cd .carry && sha256sum -c -) && tar xzf .carry/seed1_sft.tgz
export PYTHONPATH=/tmp/site:src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
timeout 540 python bench/bench_decode.py --slots 512 --shared-slots 256,512 --attn flex,flex+unfused,sdpa,sdpa+unfused \
  --no-variants --profile --profile-attn flex,flex+unfused --hf --hf-batches 64 --deadline-s 330 --out $OUT
# Call 2 (dd615d9, part_000 carried): the GPU tests -> gpu_tests_call2.txt (the fp32 cases passed; bf16 agreement failed: 0.719 vs 0.875)
timeout 280 python -m pytest tests/test_gpu_engine.py -m gpu -q -p no:warnings -x
# Calls 3-4 (part_001, part_002): the bf16 test again, then with emulate_precision_casts (working tree of 6f31e5b
# without its recompile-limit lines) and a fuse=True/False parameter: 0.812 / 0.812 against hf's own 0.875, passed
timeout 200 python -m pytest tests/test_gpu_engine.py -m gpu -q -p no:warnings -p no:logging -s -k bf16
# Call 5 (part_003); the machine was then lost. Call 6, fresh machine, the same code as call 4 -> decode_sweep/:
timeout 280 python bench/bench_decode.py --slots 256 --shared-slots 128,160,192,224,256 --attn flex --no-variants --out $OUT
# Calls 7-17: the ten model parts (cp .ferry/part_00N /root/m/) and .gsm8k (cp -r .gsm8k /root/gsm8k; the last part
# call copies it back). Call 18 (same code as call 4) -> fused_ab/: the real 0.5B, fused against unfused
cp .ferry/part_009 /root/m/ && rm -rf .gsm8k && cp -r /root/gsm8k .gsm8k && export OUT M=/root/m N=1000 && timeout 520 bash bench/fused_ab.sh 490
# Call 19, fresh machine, code 6f31e5b -> decode_final/:
timeout 250 python bench/bench_decode.py --slots 160 --shared-slots 160,256,512 --attn flex,flex+unfused --no-variants --out $OUT
