# Issue 12 goals 2 and 3, session 8 (2026-12-02), one NVIDIA H200, code at b5b812d (torch 2.11+cu130, transformers 5.17,
# peft 0.21, trl 1.16 from the carried wheels). Device time 1,673 s of 1,800 (calls 1-14 on one machine, 1,439 s held:
# transfer 135 s, ab 465 s, whole 253 s, decode 476 s, flex eval 67 s, start and gaps the rest; call 15 on a fresh one, 234 s).
# Call 1 carried .whl, .gsm8k, .ferry/SHA256, .carry/seed1_sft.tgz (seed 1's RFT SFT adapter, bench/results/2026-12-02-h200-grpo-lr)
# and .base (the code before streaming: git archive c6d0fd6 src | tar -x -C .base):
mkdir -p /root/m && cp .ferry/SHA256 /root/m/ && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
grep seed1_sft.tgz bench/results/2026-12-02-h200-grpo-lr/adapters.sha256 | (cd .carry && sha256sum -c -) && tar xzf .carry/seed1_sft.tgz
cp -r .base /root/base
# Calls 2-10: one model part each (cp .ferry/part_00N /root/m/). Call 11 (part_009; bench/device_env.sh joins, checks and converts):
cp .ferry/part_009 /root/m/ && export OUT BASE=/root/base/src && timeout 590 bash bench/rollouts_speed.sh ab 565 | tee $OUT/log_ab.txt
# Call 12: all of GSM8K train x 8 with the faster attention core of ab (flex)
timeout 590 bash bench/rollouts_speed.sh whole 565 | tee $OUT/log_whole.txt            # -> rollouts_whole.*
# Call 13: the 7B decode (random bf16 weights), k = 8 shared prompts at 512 slots with sdpa and flex, against plain generate,
# transformers' static cache + torch.compile (batch 64) and generate_batch (CUDA graphs, 512 requests per batch) -> decode/
export PYTHONPATH=/tmp/site:src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
timeout 570 python bench/bench_decode.py --slots 512 --attn sdpa,flex --no-variants --hf --hf-batches 64 --deadline-s 430 --out $OUT
# Call 14: the SFT adapter's greedy test eval (n = 1,319) with each attention core, paired -> eval_flex/
for a in sdpa flex; do python3 -m looper_math.cli eval -c configs/qwen05_gpu.yaml --adapter sft --set eval.split=test \
  --set eval.fast_attn=$a --output runs/qwen05/outputs/sft_test_eval_$a.jsonl --overwrite; done
python3 -m looper_math.cli compare runs/qwen05/outputs/sft_test_eval_sdpa.jsonl runs/qwen05/outputs/sft_test_eval_flex.jsonl
# Call 15, on a fresh machine (the session's last device time), code at dddc576 (bench_decode's +compile suffix):
# flex alone against flex with torch.compile of the decode layer -> decode_compile/
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
timeout 250 python bench/bench_decode.py --slots 512 --attn flex,flex+compile --no-variants --out $OUT
