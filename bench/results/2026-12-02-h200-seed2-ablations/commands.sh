# Issue 13, session 7 (2026-12-02), one NVIDIA H200, code at ce8a2f9 (bench/learning.sh seed2, then ablations).
# Before: the model parts as in ../2026-12-02-h200-grpo-lr/commands.sh (bench/ferry.sh; 10 parts + SHA256), and
# seed 1's and seed 2's SFT adapters from that session as SHA256-checked tarballs (../2026-12-02-h200-grpo-lr/adapters.sha256).
# call 1 (carry .whl .gsm8k .ferry/SHA256 .carry/seed2_sft.tgz): wheels into /tmp/site, seed 2's SFT adapter and
#   its dev/test eval files unpacked
mkdir -p /root/m && cp .ferry/SHA256 /root/m/ && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
grep seed2_sft.tgz bench/results/2026-12-02-h200-grpo-lr/adapters.sha256 | (cd .carry && sha256sum -c -) && tar xzf .carry/seed2_sft.tgz
# call 2 (carry .carry/seed1_sft.tgz): seed 1's SFT adapter
grep seed1_sft.tgz bench/results/2026-12-02-h200-grpo-lr/adapters.sha256 | (cd .carry && sha256sum -c -) && tar xzf .carry/seed1_sft.tgz
# calls 3-11 (carry .ferry/part_00N): cp .ferry/part_00N /root/m/          (120 s held after call 11)
# call 12 (473 s, carry .ferry/part_009): join + SHA256 + convert (134 s); seed 2's GRPO at the config's 1e-4
#   (70 steps in 337 s, 4.75 s/step steady); its test and dev evals (its SFT's were unpacked, so skipped)
cp .ferry/part_009 /root/m/ && export OUT && timeout 590 bash bench/learning.sh seed2 565 2>&1 | tr '\r' '\n' | tee $OUT/log12.txt
# call 13 (541 s): from seed 1's SFT, GRPO with the Regime W reward, s_cf against the reference program (grpo_rw)
#   and label-free (grpo_rw_cf_free), side by side (6.1 / 6.5 s/step each); both evaluated on dev and test. The
#   last test eval had written all 1,319 rows and its summary when the deadline's timeout reached it (rc 124)
export OUT && timeout 590 bash bench/learning.sh ablations 565 2>&1 | tr '\r' '\n' | tee $OUT/log13.txt
# call 14: meant to finish that eval's bookkeeping; the machine had been released after 30 s idle (a fresh one:
#   "ablations start from seed 1's SFT adapter ... run main or seed1 first"), so nothing ran
# Paired tests recomputed here from outputs/*.jsonl.gz (the device's own printouts: outputs/compare_*.txt):
D=bench/results/2026-12-02-h200-seed2-ablations/outputs; P=../../2026-12-02-h200-grpo-lr/outputs; Q=../../2026-12-02-h200-grpo-1x70/outputs
python bench/mcnemar_table.py $D $P/base_test_eval:seed2_grpo_test_eval $P/seed2_sft_test_eval:seed2_grpo_test_eval \
  $P/grpo_test_eval:seed2_grpo_test_eval $Q/seed2_grpo_test_eval:seed2_grpo_test_eval $P/base_dev_eval:seed2_grpo_dev_eval \
  $P/seed2_sft_dev_eval:seed2_grpo_dev_eval $P/grpo_lr1e-4_dev_eval:seed2_grpo_dev_eval $P/sft_test_eval:grpo_rw_test_eval \
  $P/sft_test_eval:grpo_rw_cf_free_test_eval $P/grpo_test_eval:grpo_rw_test_eval $P/grpo_test_eval:grpo_rw_cf_free_test_eval \
  grpo_rw_test_eval:grpo_rw_cf_free_test_eval $P/sft_dev_eval:grpo_rw_dev_eval $P/sft_dev_eval:grpo_rw_cf_free_dev_eval \
  $P/grpo_lr1e-4_dev_eval:grpo_rw_dev_eval grpo_rw_dev_eval:grpo_rw_cf_free_dev_eval > bench/results/2026-12-02-h200-seed2-ablations/mcnemar.txt
