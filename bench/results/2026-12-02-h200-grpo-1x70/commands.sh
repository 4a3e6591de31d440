# Issue 13, session 5 (2026-12-02), one NVIDIA H200, code at b760cf6 (bench/learning.sh main).
# Before: `bash bench/ferry.sh .models/qwen05/model.gguf` (10 parts of 47 MiB + SHA256); call 1 carried .whl,
# .gsm8k and .ferry/SHA256 (wheels into /tmp/site), calls 2-10 one part each (cp to /root/m); 86 s held in all.
# call 11 (541 s, with part_009): join + SHA256 + convert (134 s); seed 1 `looper-math run`: base rollouts
#   2,000 x 8 -> RFT SFT -> dev evals base, SFT -> GRPO cut by the deadline at step ~40 (checkpoint-40 kept)
export OUT; timeout 590 bash bench/learning.sh main 565 2>&1 | tr '\r' '\n' | tee $OUT/log1.txt
# call 12 (542 s): GRPO resumed from checkpoint-40 to 70, dev eval; test evals base, SFT, GRPO + paired tests;
#   seed 2 SFT (its own base rollouts first, 170 s); seed 2 GRPO cut at step ~20
export OUT; timeout 590 bash bench/learning.sh main 565 2>&1 | tr '\r' '\n' | tee $OUT/log2.txt
# call 13 (372 s): seed 2 GRPO resumed from checkpoint-20 to 70; test evals seed 2 GRPO, SFT; dev evals; "stage main complete"
export OUT; timeout 590 bash bench/learning.sh main 565 2>&1 | tr '\r' '\n' | tee $OUT/log3.txt
# Paired tests recomputed here from outputs/*.jsonl.gz (the device's own printouts: outputs/compare_*.txt):
python bench/mcnemar_table.py bench/results/2026-12-02-h200-grpo-1x70/outputs base_test_eval:sft_test_eval \
  sft_test_eval:grpo_test_eval base_test_eval:grpo_test_eval base_test_eval:seed2_sft_test_eval \
  seed2_sft_test_eval:seed2_grpo_test_eval base_test_eval:seed2_grpo_test_eval grpo_test_eval:seed2_grpo_test_eval \
  sft_test_eval:seed2_sft_test_eval base_dev_eval:sft_dev_eval sft_dev_eval:grpo_dev_eval base_dev_eval:grpo_dev_eval \
  base_dev_eval:seed2_sft_dev_eval seed2_sft_dev_eval:seed2_grpo_dev_eval base_dev_eval:seed2_grpo_dev_eval > mcnemar.txt
