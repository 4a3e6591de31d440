"""Phase 4 — DPO (+ NLL on chosen, Iterative RPO) from the SFT adapter on the preference pairs.

Command: ``looper-math dpo`` (alias: ``python -m src.rl_training.train_dpo_coherence``).
Writes the adapter to ``dpo.output_dir`` (layout in train_common).

- TRL ``DPOTrainer`` with the SFT adapter loaded trainable and no ``ref_model``: TRL copies the adapter
  into a frozen "ref" adapter, so the reference is the SFT policy (not the base model) and the first
  loss is ln 2 when the NLL weight is 0 (tested).
- ``loss_type=["sigmoid", "sft"]`` with ``loss_weights=[1, dpo.nll_weight]`` is DPO + NLL on the chosen
  answer (Pang et al. 2024, "Iterative Reasoning Preference Optimization"); nll_weight 0 = plain DPO.
- Pairs whose prompt + completion exceed ``dpo.max_length`` are dropped, not truncated (truncation
  would cut the final answer line that the preference is about).
- The pairs file is validated first: a missing field or chosen == rejected fails with file:line.
- ``dpo.init_adapter`` (default: the SFT adapter) lets iterative rounds continue from the newest adapter.
"""

from __future__ import annotations

from pathlib import Path

from looper_math.config import Config
from looper_math.layout import check_intact
from looper_math.modeling import chat_end_token, load_model_with_adapter, load_tokenizer, resolve_device
from looper_math.runio import DataError
from looper_math.schemas import PairRow, read_rows
from looper_math.train_common import (TrainerRun, configure_cuda_training, drop_too_long, is_main, launched_state, loss_line,
                                      losses)

PAIR_FIELDS = ("prompt", "chosen", "rejected")  # the fields of schemas.PairRow DPO trains on


def load_pairs(path: Path) -> list[dict]:
    if not path.exists():
        raise DataError(f"{path}: preference pairs not found (run `looper-math prefs` first)")
    check_intact(path, "pairs")
    pairs = []
    for i, row in enumerate(read_rows(path, PairRow, PAIR_FIELDS, nonempty=PAIR_FIELDS), 1):
        if row["chosen"] == row["rejected"]:
            raise DataError(f"{path}:{i}: chosen == rejected")
        pairs.append({f: row[f] for f in PAIR_FIELDS})
    if not pairs:
        raise DataError(f"{path}: no preference pairs (nothing to train on): collect more rollouts or loosen "
                        "prefs.*, then rebuild with `looper-math prefs --overwrite`")
    return pairs


def build_dataset(cfg: Config, tokenizer, pairs: list[dict]):
    import datasets

    def longest(p: dict) -> int:  # the longer of prompt+chosen and prompt+rejected, + 1 for the EOS
        return max(len(tokenizer(p["prompt"] + p[k]).input_ids) for k in ("chosen", "rejected")) + 1

    kept, dropped = drop_too_long(pairs, longest, cfg.dpo.max_length)
    if not kept:
        raise DataError(f"dpo: no pair fits dpo.max_length={cfg.dpo.max_length}")
    return datasets.Dataset.from_list(kept), dropped


def _load_trained_adapter(model, ckpt: Path) -> None:
    """Copy the checkpoint's trained "default" adapter into the model, in place.

    A DPO checkpoint holds "default" at its root and the frozen "ref" copy in ``ref/``; transformers'
    resume (5.x ``Trainer._load_from_checkpoint``) then loads only the sub-folder adapters and leaves
    "default" at its initial (SFT) weights, so the resumed run would silently restart from SFT with the
    optimizer state of step N (found by tests/test_reliability.py: losses diverged after resume).
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(ckpt / "adapter_model.safetensors"), adapter_name="default")
    if result.unexpected_keys:
        raise DataError(f"{ckpt}: adapter does not fit the model ({result.unexpected_keys[:2]})")


def train_dpo(cfg: Config, *, resume: bool = False, overwrite: bool = False, pairs_path: Path | None = None,
              init_adapter: str | None = None) -> dict:
    from trl import DPOConfig, DPOTrainer

    pairs_path = pairs_path or cfg.path(cfg.prefs.output)
    init_adapter = init_adapter or cfg.dpo.init_adapter
    pairs = load_pairs(pairs_path)  # validate before touching the output
    run = TrainerRun(cfg, "dpo", resume=resume, overwrite=overwrite)
    if run.complete:
        return run.skipped()
    device = resolve_device(cfg)
    dist = launched_state(device)  # under accelerate launch: this rank's process group and GPU
    tokenizer = load_tokenizer(cfg)
    if cfg.model.prompt_format == "chat":
        # TRL appends tokenizer.eos_token to chosen/rejected; a chat model ends its turn with the
        # template's end-of-turn token (<|im_end|> for Qwen, whose eos_token is <|endoftext|>).
        tokenizer.eos_token = chat_end_token(tokenizer)
    train_ds, dropped = build_dataset(cfg, tokenizer, pairs)
    configure_cuda_training()
    model, init_dir = load_model_with_adapter(cfg, init_adapter, device, trainable=True)
    if init_dir is None:
        raise DataError(f"dpo.init_adapter={init_adapter!r}: DPO continues from an adapter (train SFT first)")
    run.prepare(dist, model)
    d = cfg.dpo
    bf16 = device == "cuda" and str(next(model.parameters()).dtype) == "torch.bfloat16"
    args = DPOConfig(
        output_dir=run.trainer_dir, beta=d.beta,
        loss_type=["sigmoid", "sft"] if d.nll_weight > 0 else ["sigmoid"],
        loss_weights=[1.0, d.nll_weight] if d.nll_weight > 0 else None,
        learning_rate=d.learning_rate, lr_scheduler_type=d.lr_scheduler, warmup_steps=d.warmup_ratio,
        num_train_epochs=d.epochs, max_steps=d.max_steps, per_device_train_batch_size=d.batch_size,
        gradient_accumulation_steps=d.grad_accum, max_length=d.max_length, max_grad_norm=d.max_grad_norm,
        gradient_checkpointing=d.gradient_checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=bf16, fp16=False, logging_steps=d.logging_steps, save_steps=d.save_steps, save_total_limit=d.save_total_limit,
        seed=d.seed, data_seed=d.seed, report_to=d.report_to, use_cpu=device == "cpu", logging_nan_inf_filter=False,
        ddp_find_unused_parameters=False,  # under accelerate launch (DDP): every trainable LoRA weight gets a gradient
        **d.trainer_args,  # the rest of TRL's DPOConfig, as the config gives it (keys checked at load)
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=train_ds, processing_class=tokenizer, callbacks=run.callbacks)
    run.train(trainer, on_resume=lambda c: _load_trained_adapter(trainer.model, Path(c)))
    # Save only the trained "default" adapter; the frozen "ref" copy is an implementation detail of TRL.
    if "ref" in trainer.model.peft_config:
        trainer.model.delete_adapter("ref")
    hist = trainer.state.log_history
    pairs_per_step = d.batch_size * d.grad_accum * trainer.args.world_size
    steady = run.meter.steady()
    summary = run.save(trainer, tokenizer, {
        "init_adapter": str(init_dir), "pairs": len(train_ds), "dropped_too_long": dropped, "losses": losses(hist),
        "pairs_per_s": round(len(train_ds) * max(d.epochs, 0) / run.seconds, 2) if d.max_steps < 0 else
        round(trainer.state.global_step * pairs_per_step / run.seconds, 2),
        **({"steady_pairs_per_s": round(pairs_per_step / steady["steady_seconds_per_step"], 2)}
           if "steady_seconds_per_step" in steady else {}),
        "first_logged": next((h for h in hist if "loss" in h), None),
    })
    if is_main(dist):
        print(f"dpo: {summary['steps']} steps on {len(train_ds)} pairs, {loss_line(hist)}, adapter -> {run.out_dir}")
    return summary
