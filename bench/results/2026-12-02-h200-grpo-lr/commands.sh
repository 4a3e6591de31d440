# Issue 13, session 6 (2026-12-02), one NVIDIA H200, code at c157c78 (bench/learning.sh main with LRS="1e-4 2e-4").
# Before: `bash bench/ferry.sh .models/qwen05/model.gguf` (10 parts + SHA256); call 1 carried .whl, .gsm8k and
# .ferry/SHA256 (wheels into /tmp/site), calls 2-10 one part each (cp to /root/m); 140 s held in all.
# call 11 (543 s, with part_009): join + SHA256 + convert; seed 1 and seed 2 `sft` side by side (each: base rollouts
#   2,000 x 8 -> RFT SFT; 280 s for both); GRPO at lr 1e-4 and 2e-4 side by side from seed 1's SFT, cut at step ~10
export OUT PYTHONPATH=/tmp/site; timeout 590 bash bench/learning.sh main 565 2>&1 | tr '\r' '\n' | tee $OUT/log1.txt
# call 12 (543 s): both GRPO candidates resumed (checkpoint-10) to step ~66, cut by the deadline
export OUT PYTHONPATH=/tmp/site; timeout 590 bash bench/learning.sh main 565 2>&1 | tr '\r' '\n' | tee $OUT/log2.txt
# call 13 (147 s): 552 s of device time were left, too little for seed 2's GRPO, so stage seed1 alone: both
#   candidates to 70, dev evals (base, SFT, both), pick (outputs/lr_choice.txt: 1e-4), test evals base, SFT, GRPO 1e-4
export OUT PYTHONPATH=/tmp/site; timeout 400 bash bench/learning.sh seed1 360 2>&1 | tr '\r' '\n' | tee $OUT/log3.txt
# call 14 (35 s): seed 2's SFT on test and dev (logs/seed2_sft_evals.txt); its adapter and seed 1's SFT and GRPO
#   adapters came back in parts (not committed; SHA256 in RESULTS.md section 0) for the next session
L="python3 -m looper_math.cli"; C=configs/qwen05_gpu.yaml; S=runs/qwen05_seed2/checkpoints/sft_lora; R=runs/qwen05/outputs
$L eval -c $C --adapter $S --set eval.split=test --output $R/seed2_sft_test_eval.jsonl &
$L eval -c $C --adapter $S --set eval.split=dev --output $R/seed2_sft_dev_eval.jsonl & wait
# call 17 (177 s): GRPO step time at the config's layout (32 x 8) and with one sampling call per two steps
HF_HUB_OFFLINE=1 python3 bench/bench_grpo.py -c configs/qwen05_gpu.yaml --steps 12 --variants base,spg2 \
  --init-adapter runs/qwen05/checkpoints/sft_lora --deadline-s 100 --out $OUT      # -> grpo_step_bench.jsonl
# Paired tests recomputed here from outputs/*.jsonl.gz (the device's own printouts: outputs/compare_*.txt):
D=bench/results/2026-12-02-h200-grpo-lr/outputs; P=../../2026-12-02-h200-grpo-1x70/outputs
python bench/mcnemar_table.py $D base_test_eval:sft_test_eval sft_test_eval:grpo_test_eval base_test_eval:grpo_test_eval \
  base_test_eval:seed2_sft_test_eval sft_test_eval:seed2_sft_test_eval base_dev_eval:sft_dev_eval \
  sft_dev_eval:grpo_lr1e-4_dev_eval sft_dev_eval:grpo_lr2e-4_dev_eval grpo_lr2e-4_dev_eval:grpo_lr1e-4_dev_eval \
  base_dev_eval:grpo_lr1e-4_dev_eval base_dev_eval:seed2_sft_dev_eval $P/base_test_eval:base_test_eval \
  $P/grpo_test_eval:grpo_test_eval $P/seed2_grpo_test_eval:grpo_test_eval $P/grpo_dev_eval:grpo_lr1e-4_dev_eval \
  $P/seed2_grpo_dev_eval:grpo_lr1e-4_dev_eval > bench/results/2026-12-02-h200-grpo-lr/mcnemar.txt
