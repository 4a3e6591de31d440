"""Phase 1 — supervised fine-tuning with LoRA on GSM8K train.

Command: ``looper-math sft --config configs/abel7b.yaml`` (alias: ``python -m src.baseline_sft.train_sft_abel``).
Writes the adapter to ``sft.output_dir`` (see train_common for the folder layout).

Assumptions and choices:
- TRL ``SFTTrainer`` on prompt/completion data: loss on completion tokens only, EOS appended to each
  completion and learned (labels come from TRL's completion mask, not from pad ids, so pad == eos is safe).
  Chat models get conversational examples; ``eos_token`` is set to the template's end-of-turn token.
- Examples longer than ``sft.max_length`` are dropped (and counted), never truncated: truncation would
  cut the final ``#### N`` line and the EOS, teaching the model not to stop.
- The base stays in bf16 on GPU (fp32 on CPU); LoRA weights and their optimizer state stay fp32
  (PEFT keeps adapters fp32 by default), compute is autocast to bf16.
- A NaN/inf gradient or loss stops training before the optimizer step (NonFiniteGuard).
- Resumable: ``--resume`` continues from the newest complete checkpoint with optimizer, scheduler, RNG
  and data position restored.
"""

from __future__ import annotations

from pathlib import Path

from looper_math.config import Config, ConfigError
from looper_math.data import load_split
from looper_math.layout import check_intact, rft_rollouts_config
from looper_math.modeling import chat_end_token, load_model, load_tokenizer, resolve_device, resolve_dtype
from looper_math.prompts import sft_example
from looper_math.answers import extract_answer
from looper_math.runio import DataError
from looper_math.schemas import RolloutRow, read_rows
from looper_math.train_common import (TrainerRun, configure_cuda_training, drop_too_long, is_main, launched_state, loss_line, losses,
                                      peft_lora_config)


def rft_targets(paths: Path | list[Path], per_question: int, question_ids: set[str] | None = None) -> dict[str, list[str]]:
    """Rejection-sampling fine-tuning targets (RFT, Yuan et al. 2023; STaR, Zelikman et al. 2022) from a
    rollouts file (or several, pooled): per question, up to ``per_question`` distinct correct, finished trajectories, highest
    reward first (correct rows differ in reward by Regime W coherence and length only). Each target ends
    with the canonical ``#### N`` line (the gold answer appended when the model wrote the answer another
    way), so the trained model states its answer where both extractors find it."""
    by_q: dict[str, list[dict]] = {}
    for path in [paths] if isinstance(paths, Path) else paths:
        if not path.exists():
            raise DataError(f"{path}: sft.data uses rft but the rollouts file is missing (run `looper-math rollouts "
                            f"--set rollouts.adapter=none --set rollouts.output=...` first, or `looper-math run`)")
        check_intact(path, "rows")
        for row in read_rows(path, RolloutRow, ("question_id", "full_text", "correct", "finished", "reward", "gold")):
            if row["correct"] and row["finished"] and (question_ids is None or row["question_id"] in question_ids):
                by_q.setdefault(row["question_id"], []).append(row)
    out: dict[str, list[str]] = {}
    for qid, rows in by_q.items():
        seen: set[str] = set()
        for row in sorted(rows, key=lambda r: (-r["reward"], r.get("sample_idx", 0))):
            text = row["full_text"].strip()
            if not text or text in seen:
                continue
            seen.add(text)
            if extract_answer(text, mode="strict") is None:
                text = f"{text}\n#### {row['gold']}"
            out.setdefault(qid, []).append(text)
            if len(out[qid]) >= per_question:
                break
    return out


def build_dataset(cfg: Config, tokenizer):
    import datasets

    problems = load_split(cfg, "train")
    if cfg.sft.limit:
        problems = problems[: cfg.sft.limit]
    fmt = cfg.model.prompt_format
    rows = []
    if "gold" in cfg.sft.data.split("+"):
        rows += [sft_example(tokenizer, fmt, p.question, p.answer) for p in problems]
    if rft_rollouts_config(cfg) is not None:
        sources = [cfg.path(x) for x in [cfg.sft.rft_rollouts, *cfg.sft.rft_extra]]
        targets = rft_targets(sources, cfg.sft.rft_per_question, {p.question_id for p in problems})
        rows += [sft_example(tokenizer, fmt, p.question, t, canonical=False) for p in problems for t in targets.get(p.question_id, [])]
        print(f"sft: {sum(map(len, targets.values()))} rft targets for {len(targets)}/{len(problems)} questions "
              f"from {', '.join(map(str, sources))}")
    if not rows:
        raise DataError(f"sft: no training examples (sft.data={cfg.sft.data})")

    def length(r: dict) -> int:  # tokens of the full example, + 1 for the EOS appended in training
        if fmt == "chat":
            text = tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=False)
        else:
            text = r["prompt"] + r["completion"]
        return len(tokenizer(text).input_ids) + 1

    kept, dropped = drop_too_long(rows, length, cfg.sft.max_length)
    if not kept:
        raise DataError(f"sft: no training example fits sft.max_length={cfg.sft.max_length}")
    return datasets.Dataset.from_list(kept), dropped


def train_sft(cfg: Config, *, resume: bool = False, overwrite: bool = False) -> dict:
    from trl import SFTConfig, SFTTrainer

    run = TrainerRun(cfg, "sft", resume=resume, overwrite=overwrite)
    if run.complete:
        return run.skipped()
    device = resolve_device(cfg)
    if cfg.sft.use_liger_kernel:
        import importlib.util

        if importlib.util.find_spec("liger_kernel") is None:
            raise ConfigError("sft.use_liger_kernel: liger-kernel is not installed (pip install -e \".[fast]\")")
        if device != "cuda":
            raise ConfigError(f"sft.use_liger_kernel: Liger kernels need a CUDA GPU, this run is on {device}")
    dist = launched_state(device)  # under accelerate launch: this rank's process group and GPU
    dtype = resolve_dtype(cfg, device)
    tokenizer = load_tokenizer(cfg)
    train_ds, dropped = build_dataset(cfg, tokenizer)
    configure_cuda_training()
    model = load_model(cfg, device, dtype)
    run.prepare(dist, model)
    s = cfg.sft
    bf16 = device == "cuda" and str(dtype) == "torch.bfloat16"
    args = SFTConfig(
        output_dir=run.trainer_dir,
        num_train_epochs=s.epochs, max_steps=s.max_steps,
        learning_rate=s.learning_rate, lr_scheduler_type=s.lr_scheduler, warmup_steps=s.warmup_ratio,
        weight_decay=s.weight_decay, max_grad_norm=s.max_grad_norm,
        per_device_train_batch_size=s.batch_size, gradient_accumulation_steps=s.grad_accum,
        max_length=s.max_length, padding_free=s.padding_free, use_liger_kernel=s.use_liger_kernel,
        gradient_checkpointing=s.gradient_checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=bf16, fp16=False, logging_steps=s.logging_steps, save_steps=s.save_steps,
        save_total_limit=s.save_total_limit, save_only_model=False, seed=s.seed, data_seed=s.seed,
        report_to=s.report_to, completion_only_loss=True, eos_token=chat_end_token(tokenizer) if cfg.model.prompt_format == "chat" else tokenizer.eos_token,
        dataset_num_proc=None, use_cpu=device == "cpu", logging_nan_inf_filter=False,
        include_num_input_tokens_seen="non_padding",
        ddp_find_unused_parameters=False,  # under accelerate launch (DDP): every LoRA weight gets a gradient
        **s.trainer_args,  # the rest of TRL's SFTConfig, as the config gives it (keys checked at load)
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, processing_class=tokenizer,
                         peft_config=peft_lora_config(cfg), callbacks=run.callbacks)
    run.train(trainer)
    hist, seen = trainer.state.log_history, trainer.state.num_input_tokens_seen
    summary = run.save(trainer, tokenizer, {
        "data": cfg.sft.data, "examples": len(train_ds), "dropped_too_long": dropped, "losses": losses(hist),
        "train_tokens_per_s": round(seen / run.seconds, 1) if seen else None,
    })
    if is_main(dist):
        print(f"sft: {summary['steps']} steps, {loss_line(hist)}, adapter -> {run.out_dir}")
    return summary
