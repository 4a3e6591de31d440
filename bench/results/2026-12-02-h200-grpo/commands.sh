# Issue 13, session 4 (2026-12-02), one NVIDIA H200, code at d891b40 (bench/learning_grpo.sh).
# Before call 1: the model parts (.ferry, split at 44 MiB so one part + the repo fits a call) copied to
# /root/m in 11 calls of < 2 s; wheels (.whl) and GSM8K (.gsm8k) carried in the first.
# call 1 (542 s): join + SHA256 + convert; base rollouts (2,000 x 8) -> RFT SFT; dev evals base, SFT;
#                 GRPO (binary reward) started and cut by the stage deadline after 195 s (checkpoint kept)
OUT=$OUT timeout 590 bash bench/learning_grpo.sh 1 565
# call 2 (489 s): GRPO (binary) resumed to 40 steps, dev eval; test evals base, SFT, GRPO; GRPO with the
#                 Regime W reward (40 steps, from SFT), dev eval
OUT=$OUT timeout 590 bash bench/learning_grpo.sh 2 565
# call 3 (354 s): GRPO round 2 (binary, 40 steps, seed 43) from round 1's adapter; dev and test evals
OUT=$OUT timeout 500 bash bench/learning_grpo.sh 3 480
# call 4 (26 s): the Regime W reward GRPO adapter on the test split
source bench/stage_lib.sh; evaltest grpo_rw "$R/checkpoints/grpo_rw"   # with STAGE=4 DEADLINE=150, CFG, M, WHEELS set
# Paired tests recomputed here from outputs/*.jsonl.gz: mcnemar.txt (the device's own printouts: mcnemar_device.txt)
