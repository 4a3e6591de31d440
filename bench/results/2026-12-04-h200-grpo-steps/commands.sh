# Session 10 (2026-12-04), one lent NVIDIA H200; code at 6823f50 (bench/grpo_steps.py, configs/qwen05_gpu.yaml of then:
# model /root/m/qwen05, data .gsm8k/). GPU tests at 7b856c1 (the engine package split). Device time: 1,577 s of 1,800.
# Model transfer: `bash bench/ferry.sh .models/qwen05/model.gguf .ferry` (11 parts of 45 MiB; the GGUF from
# `looper-math prepare gguf`, sha256 1d961463...). The first machine went back idle after a failed call (pydantic is
# not installed there: carried as wheels in .whl2 since, see the device notes in bench/README.md); the parts were sent again.
# call 1 (carry .ferry/part_010 .ferry/SHA256 .whl .whl2 .gsm8k):
mkdir -p /root/m && cp .ferry/part_010 .ferry/SHA256 /root/m/ && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl .whl2/*.whl
# calls 2-10 (carry .ferry/part_00N): cp .ferry/part_00N /root/m/
# call 11 (carry .ferry/part_009; 600 s, cut by the call limit while GRPO was at step ~55, resumed below): join, SHA256, convert,
#   base rollouts 2,000 x 8 (85 s) -> RFT SFT (55 s) -> dev evals of base and SFT beside GRPO's start
cp .ferry/part_009 /root/m/ && export M=/root/m WHEELS=.whl && source bench/device_env.sh && set -o pipefail && \
  timeout 590 python3 bench/grpo_steps.py --out $OUT --deadline-s 530 --steps 70,105,140 --bench2 benchmarks/svamp/test.jsonl 2>&1 | tee $OUT/log1.txt
# call 12 (524 s): GRPO resumed from checkpoint-55 to 140 (377 s for 85 steps, 4.4 s/step), dev evals of checkpoints 70/105/140
#   as they were written, the choice (steps_choice.txt), test and SVAMP evals of base, SFT and the chosen checkpoint
export M=/root/m WHEELS=.whl && source bench/device_env.sh && set -o pipefail && \
  timeout 580 python3 bench/grpo_steps.py --out $OUT --deadline-s 570 --steps 70,105,140 --bench2 benchmarks/svamp/test.jsonl 2>&1 | tee $OUT/log2.txt
# call 13 (96 s, code 7b856c1): GPU tests of the engine package split (44 passed: gpu_tests.txt)
timeout 270 python3 -m pytest tests/test_gpu_engine.py tests/test_engine_internals.py -m "gpu or not gpu" -q -p no:cacheprovider -x
# Here: paired tests recomputed from the committed files, as stored and re-graded under the hedged-answer rule (mcnemar.txt)
D=bench/results/2026-12-04-h200-grpo-steps; PYTHONPATH=src python bench/mcnemar_table.py [--regrade] $D/outputs base_dev_eval:sft_dev_eval ...
