# The four device calls behind bench/RESULTS.md section 0 (one H200, 2026-12-01, commit d88f989, model parts
# already in /root/m and wheels installed in /tmp/site by the earlier transfer calls). log1..log4.txt are their output.
# bench/learning.sh now runs the same steps in three stages (with dpo.learning_rate 1.0e-5, the dev choice, as the default).

# call 1 (482 s): join + convert the GGUF, then the whole pipeline on the dev split (DPO at lr 5e-5, then the config's value)
OUT=$OUT bash bench/learning.sh 1 560 2>&1 | tee $OUT/log1.txt

# call 2 (289 s): DPO learning-rate choice on dev; base and SFT on the test split
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false; R=runs/qwen05; C=configs/qwen05_gpu.yaml; L="python3 -m looper_math.cli"
for lr in 1.0e-5 5.0e-6; do
  timeout 200 $L dpo -c $C --set dpo.learning_rate=$lr --set dpo.output_dir=checkpoints/dpo_lr$lr --resume
  $L eval -c $C --adapter $R/checkpoints/dpo_lr$lr --output $R/outputs/dpo_lr${lr}_dev_eval.jsonl --resume
done
$L eval -c $C --adapter none --set eval.split=test --output $R/outputs/base_test_eval.jsonl --resume
$L eval -c $C --adapter sft --set eval.split=test --output $R/outputs/sft_test_eval.jsonl --resume

# call 3 (268 s): the chosen DPO (lr 1e-5) on test; round 2 from it (same 2,000 train questions)
A=$R/checkpoints/dpo_lr1.0e-5
$L eval -c $C --adapter $A --set eval.split=test --output $R/outputs/dpo_lr1.0e-5_test_eval.jsonl --resume
timeout 150 $L rollouts -c $C --set rollouts.adapter=$A --set rollouts.output=data/rollouts_r2.jsonl --resume
$L prefs -c $C --set rollouts.output=data/rollouts_r2.jsonl --set prefs.output=data/preferences_r2.jsonl
timeout 150 $L dpo -c $C --set prefs.output=data/preferences_r2.jsonl --set dpo.init_adapter=$A --set dpo.learning_rate=1.0e-5 --set dpo.output_dir=checkpoints/dpo_r2 --resume
$L eval -c $C --adapter $R/checkpoints/dpo_r2 --output $R/outputs/dpo_r2_dev_eval.jsonl --resume
$L eval -c $C --adapter $R/checkpoints/dpo_r2 --set eval.split=test --output $R/outputs/dpo_r2_test_eval.jsonl --resume

# call 4 (260 s): merged vs unmerged adapter (dev); ablations (a) correctness-only pairs, (b) no NLL term, both lr 1e-5 from the same SFT adapter
timeout 60 $L eval -c $C --adapter sft --set eval.merge_adapter=false --output $R/outputs/sft_dev_eval_unmerged.jsonl --resume
$L prefs -c $C --set 'prefs.pair_types=[correctness]' --set prefs.output=data/preferences_corr.jsonl
timeout 120 $L dpo -c $C --set prefs.output=data/preferences_corr.jsonl --set dpo.learning_rate=1.0e-5 --set dpo.output_dir=checkpoints/dpo_corr --resume
$L eval -c $C --adapter $R/checkpoints/dpo_corr --set eval.split=test --output $R/outputs/dpo_corr_test_eval.jsonl --resume
timeout 120 $L dpo -c $C --set dpo.nll_weight=0 --set dpo.learning_rate=1.0e-5 --set dpo.output_dir=checkpoints/dpo_nonll --resume
$L eval -c $C --adapter $R/checkpoints/dpo_nonll --set eval.split=test --output $R/outputs/dpo_nonll_test_eval.jsonl --resume
