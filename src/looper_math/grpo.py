"""Phase 4, online — GRPO from an adapter (the online alternative to rollouts -> pairs -> DPO; ``policy: grpo`` makes it the phase
that each round of ``looper-math run`` trains).

Command: ``looper-math grpo [--resume]``. Writes the adapter to ``grpo.output_dir`` (layout in train_common);
evaluate it with ``looper-math eval --adapter grpo``.

- TRL ``GRPOTrainer`` on the adapter ``grpo.init_adapter`` (default: the SFT adapter), loaded trainable;
  ``grpo.num_generations`` completions per training question under the evaluation prompt, sampled by this
  project's engine on a merged copy of the current policy (``MergedRollouts``, TRL's ``rollout_func``), or by
  TRL's own ``model.generate`` with ``grpo.generation: trl``.
- ``grpo.reward``: ``correctness`` (default) is ``alpha_correct * correct``, graded in ``task.answer_mode``;
  ``regime_w`` is the rollouts' reward from the same code, ``alpha_correct * correct + beta_coherence * s_wm -
  length_penalty * num_tokens`` (``regime_w.reward.compute_reward``), ``s_wm`` from
  ``regime_w.scoring.score_group`` over the question's group of completions (the group GRPO normalizes over
  is the group Regime W scores; ``regime_w.cf_source: peers`` makes s_cf label-free). ``regime_w_gated``
  gives incorrect completions 0 and correct ones the Regime W reward: coherence and length rank only
  correct answers, as in the preference pairs. On the real 0.5B at 70 steps, lr 1e-4 (bench/RESULTS.md
  section 0) correctness gained 7.3 points over SFT on test; regime_w was gamed: completions shrank from
  ~290 tokens to one-line equations ("1 /1 = 1": unanimous, valid, grounded, s_wm 0.7, or 1.0 with the
  label-free s_cf), which outscore the SFT policy's mean reward, and test accuracy fell to 1-2 %.
- ``grpo.curriculum: mixed`` trains only on the questions the base model's rollouts (``sft.rft_rollouts``) answered
  both right and wrong: a group all right or all wrong has zero advantage, so about half of each step (the 0.5B's
  ``frac_reward_zero_std`` is ~0.45 on every question) teaches nothing.
- Mean completion length per step goes into the summary (``completion_lengths``); a run whose last logged
  mean length is under a quarter of its first prints a warning (the collapse above).
- ``grpo.beta`` 0 (TRL's default) trains without a reference model; > 0 adds the KL term.
- Resumable like SFT and DPO; a non-finite loss or gradient stops it before the optimizer step.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict

from pathlib import Path

from looper_math.config import Config
from looper_math.engine.api import GenRequest, encode_prompts, fast_options, generate
from looper_math.layout import check_intact
from looper_math.modeling import chat_end_token, load_model, load_model_with_adapter, load_tokenizer, resolve_device
from looper_math.regime_w.reward import compute_reward
from looper_math.regime_w.scoring import score_group
from looper_math.runio import DataError
from looper_math.schemas import RolloutRow, question_kinds, read_rows
from looper_math.seeds import stable_seed
from looper_math.task import GSM8K
from looper_math.train_common import TrainerRun, configure_cuda_training, is_main, launched_state, loss_line


def completion_text(completion) -> str:
    """A completion as TRL hands it to reward functions: a string, or a list of chat messages."""
    return completion if isinstance(completion, str) else "".join(m.get("content", "") for m in completion)


def grpo_reward(cfg: Config):
    """The reward function GRPOTrainer calls on a batch: one float per completion. ``grpo.reward``
    correctness: ``alpha_correct * correct``; regime_w: the rollouts' reward, Regime W scored per question group;
    regime_w_gated: that reward for correct completions, 0 for incorrect ones."""
    w = cfg.regime_w
    weights = (w.w_end, w.w_path, w.w_cf)
    task = GSM8K.from_config(cfg)
    gated = cfg.grpo.reward == "regime_w_gated"

    def reward(prompts, completions, completion_ids, question, answer, gold, question_id, **_):
        texts = [completion_text(c) for c in completions]
        answers = [task.extract(t) for t in texts]  # once per completion: grades `correct` and s_end
        correct = [task.is_correct(a, g) for a, g in zip(answers, gold)]
        if cfg.grpo.reward == "correctness":
            return [w.alpha_correct * float(c) for c in correct]
        groups: dict[str, list[int]] = defaultdict(list)
        for i, qid in enumerate(question_id):
            groups[qid].append(i)
        out = [0.0] * len(texts)
        for qid, idx in groups.items():
            reference = answer[idx[0]] if w.cf_source == "reference" else None
            scores = score_group(question[idx[0]], [texts[i] for i in idx], reference, weights, w.cf_perturbations,
                                 seed=stable_seed(cfg.grpo.seed, qid) % (2**32), answers=[answers[i] for i in idx])
            for i, s in zip(idx, scores):
                if gated and not correct[i]:
                    continue  # regime_w_gated: an incorrect completion gets 0, whatever its coherence and length
                out[i] = compute_reward(correct[i], s["s_wm"], len(completion_ids[i]), w.alpha_correct, w.beta_coherence,
                                        w.length_penalty)
        return out

    reward.__name__ = f"{cfg.grpo.reward}_reward"  # the name TRL logs the reward under
    return reward


class MergedRollouts:
    """GRPOTrainer's ``rollout_func`` for ``grpo.generation: looper``: completions from this project's
    ``engine.api.generate`` (``generation.engine``; the fast engine on CUDA) instead of TRL's ``model.generate``.

    Decoding base + unmerged LoRA is about 3x slower than the plain model (1.8x on the 0.5B eval, bench/RESULTS.md), and merging in place
    and back each step would drift the bf16 base weights. So the policy is copied once into a private
    plain model and, before every generation, each LoRA projection of that copy is set to
    ``base_weight + delta`` (PEFT's ``get_delta_weight``, dropout off) from the trainer's current adapter.
    The trainer's model is never changed; completions are the sampled token ids themselves. Sampling
    logprobs are not returned (None), as with TRL's own generate: the loss uses the trainer's forward.
    """

    def __init__(self, cfg: Config, tokenizer, device: str):
        self.cfg, self.tokenizer, self.device = cfg, tokenizer, device
        self.stop_strings = GSM8K.from_config(cfg).stop_strings
        self.copy = None
        self.calls = 0
        self.seconds = 0.0  # weight sync + sampling + prompt encoding, summed over calls (the summary's sampling share)
        self.first_seconds = None  # the first call's, which also loads the private copy
        self.step, self.in_step = -1, 0  # generations within one optimizer step (seeds survive a resume)

    def sync(self, policy) -> None:
        """Set the private copy's weights to the policy's merged weights (base + current LoRA delta)."""
        import torch
        from peft.tuners.lora import LoraLayer

        if self.copy is None:
            self.copy = load_model(self.cfg, self.device).eval().requires_grad_(False)
        with torch.no_grad():
            for name, module in policy.get_base_model().named_modules():
                if not isinstance(module, LoraLayer):
                    continue
                weight = module.get_base_layer().weight
                delta = sum(module.get_delta_weight(a) for a in module.active_adapters if a in module.lora_A)
                self.copy.get_submodule(name).weight.copy_(weight + delta)

    def __call__(self, prompts: list[str], trainer) -> dict:
        """``prompts``: the dataset's prompt texts (``build_dataset``: chat template already applied)."""
        t0 = time.perf_counter()
        g, step = self.cfg.grpo, trainer.state.global_step
        self.in_step = self.in_step + 1 if step == self.step else 0
        self.step = step
        self.sync(trainer.accelerator.unwrap_model(trainer.model))
        requests = [GenRequest(prompt=t, temperature=g.temperature, seed=stable_seed(g.seed, step, self.in_step, i) % (2**63))
                    for i, t in enumerate(prompts)]
        self.calls += 1
        results = generate(self.copy, self.tokenizer, requests, max_new_tokens=g.max_completion_length,
                           batch_size=len(requests), stop_strings=self.stop_strings,
                           engine=self.cfg.generation.engine, fast=fast_options(self.cfg.generation), progress=False)
        out = {"prompt_ids": encode_prompts(self.tokenizer, prompts), "completion_ids": [r.token_ids for r in results],
               "logprobs": None}
        dt = time.perf_counter() - t0  # generate returns host lists: the GPU work is finished
        self.seconds += dt
        if self.first_seconds is None:
            self.first_seconds = dt
        return out


def rollout_kinds(path: Path) -> dict[str, str]:
    """``schemas.question_kinds`` of a rollouts file, checked intact first."""
    if not path.exists():
        raise DataError(f"{path}: grpo.curriculum is mixed but the base rollouts file is missing (`looper-math grpo` and "
                        f"`looper-math run` write it first; or `looper-math rollouts --set rollouts.adapter=none "
                        f"--set rollouts.output=...`)")
    check_intact(path, "rows")
    return question_kinds(read_rows(path, RolloutRow, ("question_id", "correct")))


def curriculum(cfg: Config, problems: list) -> list:
    """``grpo.curriculum``: every training question (none), or only the mixed ones of the base rollouts (mixed)."""
    if cfg.grpo.curriculum == "none":
        return problems
    path = cfg.path(cfg.sft.rft_rollouts)
    kinds = rollout_kinds(path)
    count = {k: sum(kinds.get(p.question_id, "without rollouts") == k for p in problems)
             for k in ("mixed", "all_wrong", "all_right", "without rollouts")}
    kept = [p for p in problems if kinds.get(p.question_id) == "mixed"]
    print(f"grpo: curriculum mixed: {len(kept)} of {len(problems)} training questions kept (in {path}: "
          f"{count['all_wrong']} all wrong, {count['all_right']} all right; {count['without rollouts']} without rollouts)")
    if not kept:
        raise DataError(f"{path}: grpo.curriculum mixed: no training question has both correct and incorrect "
                        f"trajectories in it")
    return kept


def build_dataset(cfg: Config, tokenizer):
    import datasets

    task = GSM8K.from_config(cfg)
    problems = curriculum(cfg, task.load(cfg, "train", cfg.grpo.limit))
    # the evaluation prompt as text (chat template applied): what eval and rollouts give the model, task.protocol included
    rows = [{"prompt": task.prompt(tokenizer, p.question), "question": p.question, "answer": p.answer,
             "gold": p.gold, "question_id": p.question_id} for p in problems]
    if not rows:
        raise DataError("grpo: no training questions")
    return datasets.Dataset.from_list(rows)


LENGTH_KEY = "completions/mean_length"  # TRL's log of the mean completion length (tokens) per logged step


def collapse_warning(lengths: list[tuple[int, float]], ratio: float = 0.25) -> str | None:
    """A message when the last logged mean completion length is under ``ratio`` times the first: the policy
    may have found a short answer the reward overrates (regime_w on the 0.5B: ~290 -> 8 tokens)."""
    if len(lengths) < 2 or lengths[0][1] <= 0 or lengths[-1][1] >= ratio * lengths[0][1]:
        return None
    (s0, l0), (s1, l1) = lengths[0], lengths[-1]
    return (f"mean completion length fell from {l0:.0f} tokens (step {s0}) to {l1:.0f} (step {s1}): the reward may be "
            f"gamed by short answers; check the adapter's dev accuracy before using it")


def train_grpo(cfg: Config, *, resume: bool = False, overwrite: bool = False) -> dict:
    from trl import GRPOConfig, GRPOTrainer

    g = cfg.grpo
    run = TrainerRun(cfg, "grpo", resume=resume, overwrite=overwrite)
    if run.complete:
        return run.skipped()
    if (g.batch_size * g.grad_accum) % g.num_generations:
        raise DataError(f"grpo: batch_size x grad_accum ({g.batch_size} x {g.grad_accum}) must be a multiple of "
                        f"grpo.num_generations ({g.num_generations}): each step scores whole groups")
    if g.generation == "looper" and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        raise DataError("grpo.generation=looper copies the policy's weights into a private model each step, which "
                        "ZeRO-3's sharded weights do not allow: use --set grpo.generation=trl, or ZeRO-2 / DDP")
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
    run.prepare(dist, model, generates=True)  # grpo.generation trl samples with model.generate: keep its KV cache
    bf16 = device == "cuda" and str(next(model.parameters()).dtype) == "torch.bfloat16"
    args = GRPOConfig(
        output_dir=run.trainer_dir, learning_rate=g.learning_rate, lr_scheduler_type=g.lr_scheduler,
        warmup_steps=g.warmup_ratio, num_train_epochs=g.epochs, max_steps=g.max_steps,
        per_device_train_batch_size=g.batch_size, gradient_accumulation_steps=g.grad_accum,
        num_generations=g.num_generations, max_completion_length=g.max_completion_length, temperature=g.temperature,
        beta=g.beta, max_grad_norm=g.max_grad_norm, gradient_checkpointing=g.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False}, bf16=bf16, fp16=False,
        logging_steps=g.logging_steps, save_steps=g.save_steps, save_total_limit=g.save_total_limit, seed=g.seed, data_seed=g.seed,
        report_to=g.report_to, use_cpu=device == "cpu", logging_nan_inf_filter=False, ddp_find_unused_parameters=False,
        disable_dropout=True,  # the sampled policy (dropout off) is the one the loss scores
        **g.trainer_args,  # the rest of TRL's GRPOConfig, as the config gives it (keys checked at load)
    )
    rollout = None
    if g.generation == "looper":
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is marked experimental; we test it
        rollout = MergedRollouts(cfg, tokenizer, device)
    trainer = GRPOTrainer(model=model, reward_funcs=[grpo_reward(cfg)], args=args, train_dataset=train_ds,
                          processing_class=tokenizer, callbacks=run.callbacks,
                          rollout_func=rollout)
    run.train(trainer)
    hist = trainer.state.log_history
    rewards = [(h["step"], h["reward"]) for h in hist if "reward" in h]
    lengths = [(h["step"], h[LENGTH_KEY]) for h in hist if LENGTH_KEY in h]
    fields = {"init_adapter": str(init_dir), "questions": len(train_ds), "num_generations": g.num_generations,
              "generation": g.generation, "rewards": rewards, "completion_lengths": lengths}
    if rollout is not None:  # where a step's time goes: sampling (this process's engine) vs TRL's scoring and training
        fields["sampling_seconds"] = round(rollout.seconds, 2)
        fields["sampling_calls"] = rollout.calls
        fields["sampling_first_call_seconds"] = round(rollout.first_seconds or 0.0, 2)
        fields["sampling_share"] = round(rollout.seconds / run.seconds, 4) if run.seconds > 0 else None
    summary = run.save(trainer, tokenizer, fields)
    if is_main(dist):
        first, last = (rewards[0][1], rewards[-1][1]) if rewards else (None, None)
        print(f"grpo: {summary['steps']} steps on {len(train_ds)} questions x {g.num_generations}, {loss_line(hist)}, "
              f"mean reward {first} -> {last}, adapter -> {run.out_dir}")
        warning = collapse_warning(lengths)
        if warning:
            print(f"grpo: warning: {warning}")
    return summary
