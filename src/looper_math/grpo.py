"""Phase 4, online — GRPO from an adapter with the Regime W reward (issue 13's "online" lever).

Command: ``looper-math grpo [--resume]``. Writes the adapter to ``grpo.output_dir`` (layout in train_common);
evaluate it with ``looper-math eval --adapter <run_dir>/<grpo.output_dir>``.

- TRL ``GRPOTrainer`` on the adapter ``grpo.init_adapter`` (default: the SFT adapter), loaded trainable; its
  generation is TRL's own (``model.generate``), ``grpo.num_generations`` completions per training question
  under the evaluation prompt.
- The reward is the rollouts' reward, from the same code: ``alpha_correct * correct + beta_coherence * s_wm -
  length_penalty * num_tokens`` (``regime_w.reward.compute_reward``), with ``correct`` graded in
  ``eval.answer_mode`` and ``s_wm`` from ``regime_w.scoring.score_group`` over the question's group of
  completions (the group GRPO normalizes over is the group Regime W scores). ``regime_w.cf_source: peers``
  makes s_cf label-free, as in rollouts. Set ``regime_w.beta_coherence=0`` and ``length_penalty=0`` for the
  binary correctness reward the published small-model GRPO runs used.
- ``grpo.beta`` 0 (TRL's default) trains without a reference model; > 0 adds the KL term.
- Resumable like SFT and DPO; a non-finite loss or gradient stops it before the optimizer step.
Not yet measured on a GPU: whether it beats iterated DPO on dev within the same GPU time is the open
question that decides whether `looper-math run` should use it.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from looper_math.config import Config
from looper_math.data import load_split
from looper_math.modeling import chat_end_token, load_model_with_adapter, load_tokenizer, resolve_device
from looper_math.prompts import trl_prompt
from looper_math.regime_w.reward import compute_reward
from looper_math.regime_w.scoring import score_group
from looper_math.runio import DataError, check_output
from looper_math.seeds import stable_seed
from looper_math.task import GSM8K
from looper_math.train_common import (DropPickledArgs, NonFiniteGuard, Throughput, configure_cuda_training, is_complete, is_main,
                                       launched_state, loss_line, prepare_output, save_final, resume_and_train)


def completion_text(completion) -> str:
    """A completion as TRL hands it to reward functions: a string, or a list of chat messages."""
    return completion if isinstance(completion, str) else "".join(m.get("content", "") for m in completion)


def regime_w_reward(cfg: Config):
    """The reward function GRPOTrainer calls on a batch: one float per completion, Regime W scored per group."""
    w = cfg.regime_w
    weights = (w.w_end, w.w_path, w.w_cf)
    task = GSM8K.from_config(cfg)

    def reward(prompts, completions, completion_ids, question, answer, gold, question_id, **_):
        texts = [completion_text(c) for c in completions]
        groups: dict[str, list[int]] = defaultdict(list)
        for i, qid in enumerate(question_id):
            groups[qid].append(i)
        out = [0.0] * len(texts)
        for qid, idx in groups.items():
            answers = [task.extract(texts[i]) for i in idx]  # once per completion: grades `correct` and s_end
            reference = answer[idx[0]] if w.cf_source == "reference" else None
            scores = score_group(question[idx[0]], [texts[i] for i in idx], reference, weights, w.cf_perturbations,
                                 seed=stable_seed(cfg.grpo.seed, qid) % (2**32), answers=answers)
            for i, a, s in zip(idx, answers, scores):
                correct = task.is_correct(a, gold[i])
                out[i] = compute_reward(correct, s["s_wm"], len(completion_ids[i]), w.alpha_correct, w.beta_coherence,
                                        w.length_penalty)
        return out

    reward.__name__ = "regime_w_reward"  # the name TRL logs the reward under
    return reward


def build_dataset(cfg: Config, tokenizer):
    import datasets

    problems = load_split(cfg, "train")
    if cfg.grpo.limit:
        problems = problems[: cfg.grpo.limit]
    rows = [{"prompt": trl_prompt(tokenizer, cfg.model.prompt_format, p.question), "question": p.question, "answer": p.answer,
             "gold": p.gold, "question_id": p.question_id} for p in problems]
    if not rows:
        raise DataError("grpo: no training questions")
    return datasets.Dataset.from_list(rows)


def train_grpo(cfg: Config, *, resume: bool = False, overwrite: bool = False) -> dict:
    from trl import GRPOConfig, GRPOTrainer

    g = cfg.grpo
    out_dir = cfg.path(g.output_dir)
    mode = check_output(out_dir, resume=resume, overwrite=overwrite)
    if mode == "resume" and is_complete(out_dir):
        print(f"grpo: {out_dir} is complete; nothing to do")
        return {"skipped": True, "output_dir": str(out_dir)}
    if (g.batch_size * g.grad_accum) % g.num_generations:
        raise DataError(f"grpo: batch_size x grad_accum ({g.batch_size} x {g.grad_accum}) must be a multiple of "
                        f"grpo.num_generations ({g.num_generations}): each step scores whole groups")
    device = resolve_device(cfg)
    dist = launched_state(device)
    tokenizer = load_tokenizer(cfg)
    if cfg.model.prompt_format == "chat":
        tokenizer.eos_token = chat_end_token(tokenizer)  # generation ends the assistant turn
    train_ds = build_dataset(cfg, tokenizer)
    configure_cuda_training()
    model, init_dir = load_model_with_adapter(cfg, g.init_adapter, device, trainable=True)
    if init_dir is None:
        raise DataError(f"grpo.init_adapter={g.init_adapter!r}: GRPO continues from an adapter (train SFT first)")
    prepare_output(dist, mode, out_dir, cfg)
    bf16 = device == "cuda" and str(next(model.parameters()).dtype) == "torch.bfloat16"
    args = GRPOConfig(
        output_dir=str(out_dir / "trainer"), learning_rate=g.learning_rate, lr_scheduler_type=g.lr_scheduler,
        warmup_steps=g.warmup_ratio, num_train_epochs=g.epochs, max_steps=g.max_steps,
        per_device_train_batch_size=g.batch_size, gradient_accumulation_steps=g.grad_accum,
        num_generations=g.num_generations, max_completion_length=g.max_completion_length, temperature=g.temperature,
        beta=g.beta, max_grad_norm=g.max_grad_norm, gradient_checkpointing=g.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False}, bf16=bf16, fp16=False,
        logging_steps=g.logging_steps, save_steps=g.save_steps, save_total_limit=2, seed=g.seed, data_seed=g.seed,
        report_to="none", use_cpu=device == "cpu", logging_nan_inf_filter=False, ddp_find_unused_parameters=False,
    )
    meter = Throughput()
    trainer = GRPOTrainer(model=model, reward_funcs=[regime_w_reward(cfg)], args=args, train_dataset=train_ds,
                          processing_class=tokenizer, callbacks=[NonFiniteGuard(), DropPickledArgs(), meter])
    train_loss, seconds, ckpt = resume_and_train(trainer, out_dir, mode, "grpo")
    hist = trainer.state.log_history
    rewards = [(h["step"], h["reward"]) for h in hist if "reward" in h]
    summary = {
        "phase": "grpo", "smoke": cfg.smoke, "base_model": cfg.model.name_or_path, "init_adapter": str(init_dir),
        "questions": len(train_ds), "num_generations": g.num_generations, "steps": trainer.state.global_step,
        "train_loss": train_loss, "rewards": rewards, "seconds": round(seconds, 2), "resumed_from": ckpt,
        "processes": trainer.args.world_size, **meter.steady(),
    }
    save_final(trainer, tokenizer, out_dir, cfg, summary)
    if is_main(dist):
        first, last = (rewards[0][1], rewards[-1][1]) if rewards else (None, None)
        print(f"grpo: {summary['steps']} steps on {len(train_ds)} questions x {g.num_generations}, {loss_line(hist)}, "
              f"mean reward {first} -> {last}, adapter -> {out_dir}")
    return summary


def grpo_complete(cfg: Config) -> bool:
    return is_complete(Path(cfg.path(cfg.grpo.output_dir)))
