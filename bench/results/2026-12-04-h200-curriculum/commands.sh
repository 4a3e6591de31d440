# Session 11 (2026-12-04), one lent NVIDIA H200; code at 0763c86 (bench/grpo_steps.py with --sft-data, grpo.curriculum;
# configs/qwen05_gpu.yaml: model .models/qwen05 linked by bench/device/device_env.sh, data .gsm8k/). Device time: 1,620 s
# of 1,800. Plan and decision rules committed before the run: PLAN.md.
# Model transfer: `bash bench/device/ferry.sh .models/qwen05-gguf/model.gguf .ferry` (11 parts of 45 MiB; sha256 1d961463...).
# call 1 (carry .ferry/part_010 .ferry/SHA256 .whl .whl2 .gsm8k; 3.5 s):
mkdir -p /root/m && cp .ferry/part_010 .ferry/SHA256 /root/m/ && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl .whl2/*.whl
# calls 2-10 (carry .ferry/part_00N, under 1 s each): cp .ferry/part_00N /root/m/
# call 11 (carry .ferry/part_009; cut at the 600 s call limit, the script's deadline counted from after the conversion):
#   join, SHA256, convert; base rollouts 2,000 x 8 -> RFT SFT (166 s together); dev evals of base and SFT; GRPO to ~step 74
cp .ferry/part_009 /root/m/ && export M=/root/m WHEELS=.whl && source bench/device/device_env.sh && set -o pipefail && \
  timeout 590 python3 bench/grpo_steps.py --out $OUT --deadline-s 540 --steps 70,105,140 --set grpo.curriculum=mixed --sft-data gold --bench2 benchmarks/svamp/test.jsonl 2>&1 | tee $OUT/log1.txt
# call 12 (532 s): GRPO resumed from checkpoint-70 to 140 (306 s), dev evals of 70/105/140, the choice (steps_choice.txt),
#   test and SVAMP evals of base, SFT and the chosen checkpoint, the gold SFT (121 s); cut before its dev eval
export M=/root/m WHEELS=.whl && source bench/device/device_env.sh && set -o pipefail && \
  timeout 590 python3 bench/grpo_steps.py --out $OUT --deadline-s 560 --steps 70,105,140 --set grpo.curriculum=mixed --sft-data gold --bench2 benchmarks/svamp/test.jsonl 2>&1 | tee $OUT/log2.txt
# call 13 (25 s): the gold SFT's dev eval, sft_data_paired.txt
export M=/root/m WHEELS=.whl && source bench/device/device_env.sh && set -o pipefail && \
  timeout 300 python3 bench/grpo_steps.py --out $OUT --deadline-s 280 --steps 70,105,140 --set grpo.curriculum=mixed --sft-data gold --bench2 benchmarks/svamp/test.jsonl 2>&1 | tee $OUT/log3.txt
# call 14 (299 s; not in the plan, run with the device time left): GRPO 70 steps from the gold SFT (the default recipe
#   otherwise: no curriculum), dev eval of its checkpoint 70
export M=/root/m WHEELS=.whl && source bench/device/device_env.sh; S="--set sft.data=gold --set sft.output_dir=checkpoints/sft_gold --set grpo.output_dir=checkpoints/grpo_gold --set grpo.max_steps=70 --set grpo.save_total_limit=null"
timeout 385 python3 -m looper_math.cli grpo -c configs/qwen05_gpu.yaml $S --resume > $OUT/grpo_gold.log 2>&1
timeout 70 python3 -m looper_math.cli eval -c configs/qwen05_gpu.yaml $S --adapter runs/qwen05/checkpoints/grpo_gold/trainer/checkpoint-70 --set eval.split=dev --output runs/qwen05/outputs/grpo_gold_s70_dev_eval.jsonl
# Here: paired tests recomputed from the committed files (mcnemar.txt): within the run as stored; against session 10 with
# both sides re-graded under today's rule
D=bench/results/2026-12-04-h200-curriculum/outputs; PYTHONPATH=src python bench/mcnemar_table.py $D base_dev_eval:sft_dev_eval ...
PYTHONPATH=src python bench/mcnemar_table.py --regrade $D ../../2026-12-04-h200-grpo-steps/outputs/grpo_s140_dev_eval:grpo_s140_dev_eval ...
