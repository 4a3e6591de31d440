"""Typed configuration: dataclasses with help text, loaded from YAML, overridden with ``--set key=value``.

Every phase writes the resolved config next to its outputs (``resolved_config.yaml``), so a result can
always be traced to the exact settings that produced it. Unknown keys, wrongly typed values, values
outside an enumeration (``Literal[...]``) and out-of-range numbers (``Annotated[..., Field(ge=...)]``) are
errors at load time, before any work, in one line naming the key, the value and what is allowed (a typo
must never be silently ignored, nor fail deep inside a phase). Each field is checked by pydantic's strict
``TypeAdapter`` against its annotation, so a new field only needs the right type.

YAML is read with the YAML 1.2 rule for floats: ``1e-4`` is a number (YAML 1.1, PyYAML's default, needs
``1.0e-4`` and reads ``1e-4`` as a string).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, TypeAdapter, ValidationError

from looper_math.errors import ConfigError  # re-exported (its home is errors.py)
from looper_math.phases import PHASES, TRAINED, TRAINER_LOGGING, eval_spec


def _f(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _report_to() -> Any:
    """``<section>.report_to`` of the trainer sections (sft, dpo, grpo)."""
    return _f("none", "Where the trainer logs its metrics (loss, learning rate, grad norm, rewards, ...) besides "
              "log_history.json: none | tensorboard (event files in <output_dir>/trainer/runs/; pip install tensorboard) | "
              "wandb | trackio (each needs its package and login; project/run names through their environment "
              "variables or trainer_args.run_name).")


def _trainer_args(trl_class: str, example: str) -> Any:
    """``<section>.trainer_args``: the pass-through to TRL's config class of the section."""
    return _f({}, f"More arguments of TRL's {trl_class}, passed through as given (e.g. {example}); checked against "
              f"{trl_class}'s fields when the config loads. Keys looper-math sets from the settings above are refused.")


# Ranges, checked at load time (pydantic reads the Field metadata).
Count = Annotated[int, Field(ge=1)]  # a positive count
NonNeg = Annotated[int, Field(ge=0)]
Share = Annotated[float, Field(ge=0.0, le=1.0)]  # a probability, share or ratio
Weight = Annotated[float, Field(ge=0.0)]
Rate = Annotated[float, Field(gt=0.0)]  # learning rates, epochs, beta
Warmup = Annotated[float, Field(ge=0.0, lt=1.0)]
MaxSteps = Annotated[int, Field(ge=-1)]  # -1: use epochs
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
# transformers' report_to integrations we document and test (tensorboard on CPU)
ReportTo = Literal["none", "tensorboard", "wandb", "trackio"]
# transformers' SchedulerType values that need no extra scheduler kwargs
Scheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"]


@dataclass
class ModelConfig:
    name_or_path: str = _f("GAIR/Abel-7B-002", "Hub id or local folder of the base model; 'tiny' builds a tiny random Llama on the fly (smoke runs).")
    gguf_file: str | None = _f(None, "GGUF file name inside name_or_path (e.g. the Qwen 0.5B test model); needs the gguf package.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = _f("auto", "auto (bf16 on GPU, fp32 on CPU) | bfloat16 | float16 | float32.")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"] | None = _f(None, "sdpa | eager | flash_attention_2; None lets transformers choose.")
    prompt_format: Literal["abel", "chat", "plain"] = _f("abel", "abel (Question:/Answer: prompt) | chat (tokenizer chat template) | plain.")
    trust_remote_code: bool = _f(False, "Run code shipped with the model repo. Off unless you trust it.")
    revision: str | None = _f(None, "Hub revision (commit, tag or branch) of the base model.")


@dataclass
class DataConfig:
    train: str = _f("openai/gsm8k", "Training questions: hub dataset id, local .jsonl/.parquet file, or 'builtin' (generated problems).")
    train_config: str | None = _f("main", "Hub dataset config name of the training set.")
    train_split: str = _f("train", "Split of the training set.")
    test: str = _f("madrylab/gsm8k-platinum", "Evaluation set: hub id, local .jsonl/.parquet, or 'builtin'.")
    test_config: str | None = _f("main", "Hub dataset config name of the evaluation set.")
    test_split: str = _f("test", "Split of the evaluation set.")
    dev_size: NonNeg = _f(0, "Questions held out of train as a dev split (deterministic, by seed). 0 = none.")
    builtin_train_size: Count = _f(256, "Number of generated training problems when train == 'builtin'.")
    builtin_test_size: Count = _f(64, "Number of generated test problems when test == 'builtin'.")
    seed: NonNeg = _f(1234, "Seed of the dev split and of the built-in problem generator.")


@dataclass
class LoraConfig:
    r: Count = _f(16, "LoRA rank.")
    alpha: Count = _f(32, "LoRA alpha (scale = alpha / r).")
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = _f(0.05, "LoRA dropout.")
    target_modules: list[str] = _f(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], "Module names that get adapters ('all-linear' as a one-element list also works).")


@dataclass
class SFTConfig:
    output_dir: str = _f("checkpoints/abel_sft_lora", "Where the SFT adapter, tokenizer and resolved config go (relative to run_dir).")
    epochs: Rate = _f(1.0, "Training epochs.")
    max_steps: MaxSteps = _f(-1, "Stop after this many optimizer steps (-1: use epochs).")
    learning_rate: Rate = _f(2e-4, "Peak learning rate.")
    lr_scheduler: Scheduler = _f("cosine", "transformers scheduler name.")
    warmup_ratio: Warmup = _f(0.03, "Share of steps used for linear warm-up.")
    weight_decay: Weight = _f(0.0, "AdamW weight decay.")
    max_grad_norm: Weight = _f(1.0, "Gradient clipping norm.")
    batch_size: Count = _f(8, "Per-device batch size.")
    grad_accum: Count = _f(2, "Gradient accumulation steps.")
    max_length: Count = _f(512, "Max tokens per example (prompt + completion); longer examples are dropped and counted (dropped_too_long), not truncated.")
    gradient_checkpointing: bool = _f(True, "Trade compute for memory.")
    padding_free: bool = _f(False, "Padding-free batching (needs flash attention).")
    use_liger_kernel: bool = _f(False, "Liger fused kernels (needs liger-kernel).")
    logging_steps: Count = _f(10, "Log every N steps.")
    save_steps: Count = _f(200, "Checkpoint every N steps (resumable).")
    save_total_limit: Count = _f(2, "Keep at most N intermediate checkpoints.")
    seed: NonNeg = _f(42, "Training seed.")
    limit: Count | None = _f(None, "Use only the first N training examples (after the dev split).")
    data: Literal["gold", "rft", "gold+rft"] = _f("gold", "Training targets: gold (GSM8K reference solutions) | rft (rejection sampling: the model's own correct, finished trajectories from sft.rft_rollouts) | gold+rft.")
    rft_rollouts: str = _f("data/rollouts_base.jsonl", "Rollouts file the rft data come from; `looper-math run` writes it first (base model, rollouts.* settings, no adapter).")
    rft_extra: list[str] = _f([], "More rollouts files whose correct trajectories join the rft data (e.g. the rollouts of the SFT or DPO adapter of an earlier run, STaR-style); they must exist.")
    rft_per_question: Count = _f(4, "At most this many distinct correct trajectories per question (highest reward first, so Regime W coherence breaks ties).")
    report_to: ReportTo = _report_to()
    trainer_args: dict[str, Any] = _trainer_args("SFTConfig", "{optim: adamw_torch_fused, torch_compile: true}")


@dataclass
class RegimeWConfig:
    arms: list[dict] = _f([], "The eight arms: name, family (wolfram|maudlin), instruction, temperature, top_p. Empty = built-in defaults.")
    allocation: Literal["uniform", "ucb", "thompson"] = _f("ucb", "uniform | ucb | thompson.")
    exploration_floor: Share = _f(0.05, "Minimum share of samples any arm gets under ucb/thompson.")
    ucb_c: Weight = _f(1.0, "UCB exploration constant.")
    w_end: Weight = _f(0.4, "Weight of s_end in s_wm.")
    w_path: Weight = _f(0.3, "Weight of s_path in s_wm.")
    w_cf: Weight = _f(0.3, "Weight of s_cf in s_wm.")
    alpha_correct: Weight = _f(1.0, "ALPHA_CORRECT: reward weight of correctness.")
    beta_coherence: Weight = _f(0.5, "BETA_COHERENCE: reward weight of s_wm.")
    length_penalty: Weight = _f(0.0005, "Reward penalty per generated token.")
    cf_perturbations: NonNeg = _f(3, "Counterfactual perturbations per question for s_cf.")
    cf_source: Literal["reference", "peers"] = _f("reference", "What s_cf (and so s_wm and the reward) compares a perturbed trajectory with: reference (the GSM8K solution's program) | peers (the group's consensus program, label-free; ablation).")


@dataclass
class RolloutsConfig:
    output: str = _f("data/abel_regime_w_rollouts.jsonl", "Append-only rollouts JSONL (relative to run_dir).")
    adapter: str | None = _f("sft", "Adapter to sample from: 'sft', 'dpo', 'none' (base model) or a path.")
    split: Literal["train", "dev", "test"] = _f("train", "Questions to roll out: train | dev | test.")
    k: Count = _f(8, "Trajectories per question (the group Regime W scores together and the pairs are built from). The offline counterpart of grpo.num_generations, a separate setting: a run can roll out k for rejection-sampling SFT and train GRPO with another group size.")
    max_new_tokens: Count = _f(384, "Max generated tokens per trajectory.")
    batch_size: Count = _f(64, "Sequences per generation batch.")
    questions_per_round: Count = _f(32, "Questions per bandit allocation (a round); the fast engine streams rounds into one call, so it no longer sets how full the slots run.")
    limit: Count | None = _f(None, "Only the first N questions.")
    seed: NonNeg = _f(0, "Base seed; each sample's seed derives from (seed, question_id, sample_idx).")
    eval_prompt_share: Share = _f(0.0, "Share of each question's k samples drawn under the plain evaluation prompt (arm 'eval_prompt', on-policy for pairs and RFT); the bandit spreads the rest over the Regime W arms. 1.0 = all.")
    temperature: Weight = _f(0.8, "Sampling temperature of the evaluation-prompt samples (arms carry their own); 0 = greedy.")
    top_p: TopP = _f(1.0, "Top-p of the evaluation-prompt samples (1.0 samples the full distribution, the fastest path).")
    score_workers: NonNeg = _f(0, "Processes scoring a round's groups (Regime W); 0 = one per spare core, at most 8; 1 = in this process.")


@dataclass
class PrefsConfig:
    output: str = _f("data/abel_coherence_preferences.jsonl", "Preference pairs JSONL (relative to run_dir).")
    pair_types: list[Literal["correctness", "coherence"]] = _f(["correctness", "coherence"], "Which pair types to build (ablation: ['correctness']).")
    max_correctness_pairs_per_question: NonNeg = _f(4, "Cap of correct>incorrect pairs per question.")
    max_coherence_pairs_per_question: NonNeg = _f(2, "Cap of coherent>less-coherent pairs per question.")
    coherence_margin: Share = _f(0.15, "Minimum s_wm margin for a coherence pair.")
    max_coherence_share: Share = _f(0.3, "Coherence pairs at most this share of all pairs.")
    prompt_mode: Literal["eval", "arm"] = _f("eval", "eval (the plain evaluation prompt) | arm (the arm's own prompt).")


@dataclass
class DPOConfig:
    output_dir: str = _f("checkpoints/abel_coherence_lora", "Where the DPO adapter goes (relative to run_dir).")
    init_adapter: str = _f("sft", "Adapter DPO starts from and uses (frozen) as reference: sft | dpo | a path.")
    beta: Rate = _f(0.1, "DPO beta.")
    nll_weight: Weight = _f(1.0, "Weight of the NLL term on chosen (Iterative RPO); 0 = plain DPO.")
    learning_rate: Rate = _f(1e-5, "Learning rate.")
    lr_scheduler: Scheduler = _f("cosine", "transformers scheduler name.")
    warmup_ratio: Warmup = _f(0.05, "Share of steps for warm-up.")
    epochs: Rate = _f(1.0, "Epochs over the pairs.")
    max_steps: MaxSteps = _f(-1, "Stop after N steps (-1: epochs).")
    batch_size: Count = _f(4, "Per-device batch size (pairs).")
    grad_accum: Count = _f(4, "Gradient accumulation.")
    max_length: Count = _f(768, "Max prompt+completion tokens.")
    gradient_checkpointing: bool = _f(True, "Trade compute for memory.")
    max_grad_norm: Weight = _f(1.0, "Gradient clipping norm.")
    logging_steps: Count = _f(10, "Log every N steps.")
    save_steps: Count = _f(200, "Checkpoint every N steps.")
    save_total_limit: Count | None = _f(2, "Keep at most N intermediate checkpoints (null: keep all).")
    seed: NonNeg = _f(42, "Training seed.")
    report_to: ReportTo = _report_to()
    trainer_args: dict[str, Any] = _trainer_args("DPOConfig", "{optim: adamw_torch_fused, label_smoothing: 0.1}")


@dataclass
class GRPOConfig:
    output_dir: str = _f("checkpoints/grpo_lora", "Where the GRPO adapter goes (relative to run_dir).")
    init_adapter: str = _f("sft", "Adapter GRPO starts from: sft | dpo | a path.")
    limit: Count | None = _f(None, "Only the first N training questions (after the dev split).")
    curriculum: Literal["none", "mixed"] = _f("none", "Which training questions GRPO trains on: none (all of them) | mixed (only those the base model's rollouts, sft.rft_rollouts, answered right at least once and wrong at least once: a group all right or all wrong has zero advantage and teaches nothing; questions without rollouts are left out; `looper-math grpo` and `run` write those rollouts first when missing).")
    num_generations: Count = _f(8, "Completions per question (the group GRPO normalizes rewards over; TRL's GRPOConfig name). The online counterpart of rollouts.k, a separate setting: rollouts.k does not change it.")
    max_completion_length: Count = _f(400, "Max generated tokens per completion.")
    temperature: Weight = _f(0.8, "Sampling temperature of the completions.")
    reward: Literal["correctness", "regime_w", "regime_w_gated"] = _f("correctness", "correctness: regime_w.alpha_correct * correct (the binary reward of the published small-model runs; +7.3 pts over SFT in 70 steps on the 0.5B, bench/RESULTS.md) | regime_w: the rollouts' reward, alpha * correct + beta_coherence * s_wm - length_penalty * tokens (gamed on the 0.5B: one-line equations such as '1 /1 = 1' score s_wm 0.7-1.0, test accuracy fell to 1-2 %) | regime_w_gated: the same, but coherence and length count only for correct completions (incorrect ones get 0: the pairs' rule, correctness first; unmeasured on a GPU).")
    generation: Literal["looper", "trl"] = _f("looper", "Who samples the completions: looper (this project's engine, generation.engine, on a private copy of the base weights with the current LoRA merged in, refreshed every step; fast on CUDA) | trl (TRL's own model.generate on base + unmerged LoRA, the reference path).")
    beta: Weight = _f(0.0, "KL weight against the initial adapter; 0 = no reference model (TRL's default).")
    learning_rate: Rate = _f(1e-5, "Learning rate.")
    lr_scheduler: Scheduler = _f("cosine", "transformers scheduler name.")
    warmup_ratio: Warmup = _f(0.05, "Share of steps for warm-up.")
    epochs: Rate = _f(1.0, "Epochs over the questions.")
    max_steps: MaxSteps = _f(-1, "Stop after N steps (-1: epochs).")
    batch_size: Count = _f(16, "Per-device completions per step (a multiple of num_generations with grad_accum).")
    grad_accum: Count = _f(1, "Gradient accumulation.")
    gradient_checkpointing: bool = _f(False, "Trade compute for memory.")
    max_grad_norm: Weight = _f(1.0, "Gradient clipping norm.")
    logging_steps: Count = _f(5, "Log every N steps.")
    save_steps: Count = _f(100, "Checkpoint every N steps.")
    save_total_limit: Count | None = _f(2, "Keep at most N intermediate checkpoints (null: keep all, e.g. to evaluate a learning curve on dev).")
    seed: NonNeg = _f(42, "Training seed (and the seed of s_cf's perturbations).")
    report_to: ReportTo = _report_to()
    trainer_args: dict[str, Any] = _trainer_args("GRPOConfig", "{loss_type: dr_grpo, scale_rewards: batch, epsilon_high: 0.28}")


@dataclass
class EvalConfig:
    split: Literal["test", "dev"] = _f("test", "test | dev (dev split cut from train).")
    base_output: str = _f("outputs/abel_base_platinum_eval.jsonl", "Per-example JSONL for the base model.")
    sft_output: str = _f("outputs/abel_sft_platinum_eval.jsonl", "Per-example JSONL for the SFT adapter.")
    dpo_output: str = _f("outputs/abel_coherence_platinum_eval.jsonl", "Per-example JSONL for the DPO adapter.")
    grpo_output: str = _f("outputs/abel_grpo_platinum_eval.jsonl", "Per-example JSONL for the GRPO adapter.")
    max_new_tokens: Count = _f(512, "Max generated tokens per question.")
    batch_size: Count = _f(64, "Questions per generation batch.")
    limit: Count | None = _f(None, "Only the first N questions.")


@dataclass
class GenerationConfig:
    """The generation engine's settings, shared by every phase that generates: eval, rollouts and GRPO's sampling
    (``grpo.generation: looper``). Once ``eval.*`` keys: ``RENAMED`` maps the old names."""

    engine: Literal["auto", "hf", "fast"] = _f("auto", "Generation engine of eval, rollouts and GRPO sampling: auto (fast on CUDA for llama/mistral/qwen2, else hf) | hf (batched generate) | fast (continuous batching, static KV cache, CUDA graphs).")
    fast_attn: Literal["sdpa", "bmm", "flex"] = _f("sdpa", "The fast engine's decode attention (eval, rollouts, GRPO sampling): sdpa (the whole static cache under a length mask) | bmm | flex (FlexAttention: each sequence reads only its own KV blocks; compiled once per cache length). See bench/RESULTS.md.")
    fast_fuse: bool = _f(True, "The fast engine's fused decode layer (eval, rollouts, GRPO sampling): q/k/v and gate/up as one GEMM each, norm/rotary/SiLU as fused kernels (compiled on CUDA) wherever the weights are plain (base or merged LoRA); false: the model's own modules each step. See bench/RESULTS.md.")
    merge_adapter: bool = _f(True, "Generate (eval and rollouts) from the adapter merged into this process's copy of the base weights (PEFT merge_and_unload; about 3x faster); false = base + unmerged LoRA, the reference path. The adapter on disk is never changed. (GRPO sampling always merges: grpo.generation.)")


@dataclass
class TaskConfig:
    """How GSM8K is prompted and graded (``task.GSM8K.from_config``), alike in eval, rollout rewards and GRPO rewards.
    Once ``eval.*`` keys: ``RENAMED`` maps the old names."""

    answer_mode: Literal["strict", "flexible"] = _f("flexible", "Extraction that decides `correct` in eval, rollout rewards and GRPO rewards: strict (#### N) | flexible.")
    protocol: Literal["default", "platinum"] = _f("default", "Evaluation protocol (task.GSM8K): default (model.prompt_format's prompt, `correct` per answer_mode) | platinum (the GSM8K-Platinum authors' prompt template and answer parser, to compare with their published numbers). Rollouts' evaluation-prompt samples, GRPO's prompts and both phases' rewards follow it too.")


@dataclass
class Config:
    run_dir: str = _f(".", "Root that every relative output path is resolved against.")
    device: Literal["auto", "cpu", "cuda"] = _f("auto", "auto | cpu | cuda.")
    smoke: bool = _f(False, "Marks a smoke run (tiny model); printed loudly in outputs.")
    policy: Literal["dpo", "grpo"] = _f("dpo", "What each round of `looper-math run` trains after SFT: dpo (Regime W rollouts -> pairs -> DPO, offline) | grpo (GRPO online, grpo.*; no rollouts or pairs phases). grpo is the measured recipe on the GPU (bench/RESULTS.md).")
    rounds: Count = _f(1, "Rounds of the policy phase in `looper-math run` (--rounds overrides), each from the newest adapter.")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    regime_w: RegimeWConfig = field(default_factory=RegimeWConfig)
    rollouts: RolloutsConfig = field(default_factory=RolloutsConfig)
    prefs: PrefsConfig = field(default_factory=PrefsConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    task: TaskConfig = field(default_factory=TaskConfig)

    def path(self, rel: str) -> Path:
        """Resolve an output path against run_dir."""
        p = Path(rel)
        return p if p.is_absolute() else Path(self.run_dir) / p


def _allowed(err: dict) -> str:
    """pydantic's message for one error, as 'what is allowed' ("Input should be 'a' or 'b'" -> "expected 'a' or 'b'")."""
    return re.sub(r"^Input should (be )?", "expected ", err["msg"])


def _check_value(value: Any, tp: Any, key: str) -> Any:
    """``value`` validated against the annotation ``tp`` (type, Literal, Annotated range) by pydantic, strictly
    (no "3" -> 3 coercion; an int is accepted for a float); ConfigError naming the key, value and what is allowed."""
    try:
        return TypeAdapter(tp).validate_python(value, strict=True)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        where = key + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"] if p not in ("int", "float", "str", "bool"))
        raise ConfigError(f"config key '{where}': got {err['input']!r}, {_allowed(err)}") from None


# Keys that moved out of `eval` because rollouts and GRPO read them too: old name -> new name. The old names still
# load (a one-line note on stderr); an old and a new name with different values in one file is an error.
RENAMED = {
    "eval.engine": "generation.engine",
    "eval.fast_attn": "generation.fast_attn",
    "eval.fast_fuse": "generation.fast_fuse",
    "eval.merge_adapter": "generation.merge_adapter",
    "eval.answer_mode": "task.answer_mode",
    "eval.protocol": "task.protocol",
}

# rollouts.k and grpo.num_generations are both a question's group size, in two phases that a run may use side by
# side with different values (rejection-sampling rollouts, then GRPO): separate settings, and the one written
# under the other's name is pointed to its own
OTHER_GROUP_SIZE = {
    "grpo.k": "GRPO's completions per question are 'grpo.num_generations'; 'rollouts.k' is the rollouts' own",
    "rollouts.num_generations": "the rollouts' trajectories per question are 'rollouts.k'; 'grpo.num_generations' is GRPO's own",
}


def _note_renamed(old: str, new: str, source: str) -> None:
    print(f"{source}: config key '{old}' is deprecated, read as '{new}' (write '{new}')", file=sys.stderr)


def _move_renamed(tree: dict, source: str, *, note: bool = True) -> None:
    """Move the keys of ``tree`` written under their old names (``RENAMED``) to their new ones, in place; a note per
    key when ``note``. Both names with different values: ConfigError naming both."""
    for old, new in RENAMED.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        section = tree.get(old_section)
        if not isinstance(section, dict) or old_key not in section:
            continue
        value = section.pop(old_key)
        target = tree.setdefault(new_section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{source}: config key '{new_section}' must be a mapping")
        if new_key in target and target[new_key] != value:
            raise ConfigError(f"{source}: config keys '{old}' ({value!r}) and '{new}' ({target[new_key]!r}) are one "
                              f"setting ('{old}' is its old name) with two values: keep only '{new}'")
        target[new_key] = value
        if note:
            _note_renamed(old, new, source)


def _build(cls: type, data: dict, prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in names:
            hint = f" ({OTHER_GROUP_SIZE[key]})" if key in OTHER_GROUP_SIZE else ""
            raise ConfigError(f"{source}: unknown config key '{key}'{hint}")
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            if not isinstance(v, dict):
                raise ConfigError(f"{source}: config key '{key}' must be a mapping")
            kwargs[k] = _build(tp, v, f"{key}.", source)
        else:
            try:
                kwargs[k] = _check_value(v, tp, key)
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None
    return cls(**kwargs)


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping repeats a key (PyYAML keeps the last value silently; YAML 1.2 says keys are unique)."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's float rule, so ``1e-4`` and ``5E3`` are numbers (the resolver
    below is the one PyYAML's issue #173 and ruamel.yaml use: a mantissa with or without a dot), and with
    unique keys (YAML 1.2, section 3.2.1.1): a repeated key is an error, not a silent override of the first."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<' merges are overridden by explicit keys by design; complex keys are not config keys
            key = self.construct_object(key_node)
            if key in seen:
                raise DuplicateKeyError(None, None, f"duplicate key '{key}' (first on line {seen[key].line + 1})",
                                        key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def yaml_load(text: str) -> Any:
    """YAML as configs are read (``1e-4`` is a float, a repeated key is an error)."""
    return yaml.load(text, Loader=_Loader)


def _yaml_error(path: Path, e: yaml.YAMLError) -> ConfigError:
    """One line ``FILE:LINE:COLUMN: invalid YAML: <problem> (<context> at line L, column C)`` (1-based, as
    editors count) from PyYAML's marked error; PyYAML's own text spreads over several lines."""
    if not isinstance(e, yaml.MarkedYAMLError):
        return ConfigError(f"{path}: invalid YAML: {str(e).splitlines()[0]}")
    mark = e.problem_mark or e.context_mark
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    context = ""
    if e.context and e.context_mark is not None and e.problem_mark is not None:
        context = f" ({e.context} at line {e.context_mark.line + 1}, column {e.context_mark.column + 1})"
    return ConfigError(f"{where}: invalid YAML: {e.problem or e.context}{context}")


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: '{p}' is not a section")
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load YAML (or defaults when path is None) and apply ``key=value`` overrides (values parsed as YAML)."""
    tree: dict = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            loaded = yaml_load(p.read_text())
        except yaml.YAMLError as e:
            raise _yaml_error(p, e) from None
        if loaded is None:  # an empty file would otherwise run the built-in (7B, hub) defaults unasked
            raise ConfigError(f"{p}: config file is empty (or only comments): give at least one key, or leave out "
                              f"--config for the demo config")
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping (key: value lines), got a {type(loaded).__name__}")
        tree = loaded
        _move_renamed(tree, source)
    given: dict[str, tuple[str, Any]] = {}  # key -> (the name a --set gave it under, value)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        name = key = key.strip()
        try:
            value = yaml_load(raw) if raw != "" else ""
        except DuplicateKeyError as e:
            raise ConfigError(f"--set {item}: {e.problem}") from None
        except yaml.YAMLError:
            value = raw
        if name in RENAMED:
            key = RENAMED[name]
            _note_renamed(name, key, "--set")
        if key in given and given[key][0] != name and given[key][1] != value:
            raise ConfigError(f"--set: config keys '{given[key][0]}' ({given[key][1]!r}) and '{name}' ({value!r}) are one "
                              f"setting with two values: keep only '{key}'")
        given[key] = (name, value)
        _set_dotted(tree, key, value)
        source = f"{source} + --set"
    _move_renamed(tree, source)  # old names inside a section given whole (--set eval={engine: fast})
    cfg = _build(Config, tree, "", source)
    _check_arms(cfg, source)
    _check_trainer_args(cfg, source)
    return cfg


# The TRL config class of each section with `trainer_args` (phases.PHASES), and the arguments the phase sets itself
# from its own settings (tests/test_trainer_args.py checks these lists against the calls in sft.py, dpo.py and grpo.py).
TRAINER_CONFIGS = {s.section: s.trl_config for s in TRAINED.values()}
TRAINER_ARGS_OWNED = {
    "sft": frozenset({
        "output_dir", "num_train_epochs", "max_steps", "learning_rate", "lr_scheduler_type", "warmup_steps",
        "weight_decay", "max_grad_norm", "per_device_train_batch_size", "gradient_accumulation_steps", "max_length",
        "padding_free", "use_liger_kernel", "gradient_checkpointing", "gradient_checkpointing_kwargs", "bf16", "fp16",
        "logging_steps", "save_steps", "save_total_limit", "save_only_model", "seed", "data_seed", "report_to",
        "completion_only_loss", "eos_token", "dataset_num_proc", "use_cpu", "logging_nan_inf_filter",
        "include_num_input_tokens_seen", "ddp_find_unused_parameters"}),
    "dpo": frozenset({
        "output_dir", "beta", "loss_type", "loss_weights", "learning_rate", "lr_scheduler_type", "warmup_steps",
        "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "max_length",
        "max_grad_norm", "gradient_checkpointing", "gradient_checkpointing_kwargs", "bf16", "fp16", "logging_steps",
        "save_steps", "save_total_limit", "seed", "data_seed", "report_to", "use_cpu", "logging_nan_inf_filter",
        "ddp_find_unused_parameters"}),
    "grpo": frozenset({
        "output_dir", "learning_rate", "lr_scheduler_type", "warmup_steps", "num_train_epochs", "max_steps",
        "per_device_train_batch_size", "gradient_accumulation_steps", "num_generations", "max_completion_length",
        "temperature", "beta", "max_grad_norm", "gradient_checkpointing", "gradient_checkpointing_kwargs", "bf16", "fp16",
        "logging_steps", "save_steps", "save_total_limit", "seed", "data_seed", "report_to", "use_cpu",
        "logging_nan_inf_filter", "ddp_find_unused_parameters", "disable_dropout"}),
}


def trl_config_fields(section: str) -> frozenset[str]:
    """The argument names of TRL's config class for ``section`` (imports trl: only when trainer_args are given)."""
    import trl

    return frozenset(f.name for f in dataclasses.fields(getattr(trl, TRAINER_CONFIGS[section])) if f.init)


def _check_trainer_args(cfg: Config, source: str) -> None:
    """``<section>.trainer_args`` keys are arguments of TRL's config class that looper-math does not set itself."""
    for section, cls in TRAINER_CONFIGS.items():
        extra = getattr(cfg, section).trainer_args
        if not extra:
            continue
        known = trl_config_fields(section)
        for key in extra:
            where = f"{source}: config key '{section}.trainer_args.{key}'"
            if key in TRAINER_ARGS_OWNED[section]:
                raise ConfigError(f"{where}: set by looper-math from the {section} settings (see `looper-math config --keys`)")
            if key not in known:
                raise ConfigError(f"{where}: not an argument of TRL's {cls}")


def _check_arms(cfg: Config, source: str) -> None:
    """regime_w.arms entries are checked by the one function that reads them (names, family
    wolfram|maudlin, 0 < temperature <= 2, 0 < top_p <= 1, the '####' instruction), at load time."""
    from looper_math.regime_w.arms import load_arms

    try:
        load_arms(cfg.regime_w)
    except ValueError as e:
        raise ConfigError(f"{source}: config key {e}") from None


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_resolved(cfg: Config, directory: str | Path, name: str = "resolved_config.yaml") -> Path:
    """Write the resolved config next to an output (atomically)."""
    from looper_math.runio import atomic_write_text

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(d / name, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def help_table(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) rows for every config field; used by `looper-math config`."""
    rows = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            rows += help_table(tp, f"{prefix}{f.name}.")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((f"{prefix}{f.name}", repr(default), f.metadata.get("help", "")))
    return rows


# Left out of every phase's settings: where outputs go, and how often a trainer logs or checkpoints and where its
# metrics go (not what an output holds). The phases themselves (settings, inputs, output keys) are phases.PHASES.
NOT_SETTINGS = frozenset({s.output for s in PHASES.values()}  # sft.rft_rollouts among them; sft.rft_extra stays a setting: it changes the data
                         | {f"{s.section}.{k}" for s in TRAINED.values() for k in TRAINER_LOGGING}
                         | {"rollouts.score_workers"})


def eval_phase(adapter: str | None) -> str:
    """The phase name of an evaluation of ``adapter`` (sft | dpo | grpo | none | a path)."""
    return eval_spec(adapter).name


def _phase_keys(phase: str) -> list[str]:
    spec = PHASES[phase]
    keys = list(spec.settings)
    for up in spec.inputs:
        keys += [k for k in _phase_keys(up) if k not in keys]
    return keys


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def phase_settings(cfg: Config | dict, phase: str) -> dict[str, Any]:
    """The resolved settings (dotted key -> value) that shape ``phase``'s output, its inputs' included."""
    keys = _phase_keys(phase)
    flat = _flat(cfg if isinstance(cfg, dict) else to_dict(cfg))
    return {k: v for k, v in flat.items()
            if k not in NOT_SETTINGS and any(k == s or k.startswith(s + ".") for s in keys)}


# Keys added to a phase's settings after outputs were fingerprinted, with the value that is the behaviour from before
# them: hashed only when set to something else, so outputs written before a key existed keep their fingerprint.
ADDED_SETTINGS = {"grpo.curriculum": "none"}


def fingerprint(cfg: Config, phase: str) -> str:
    """Short hash of ``phase_settings``; every phase writes it into its summary as ``settings_fingerprint``. Renamed
    keys are hashed under their old names (``RENAMED``), so a fingerprint stays the one of the same settings
    before the rename: summaries written before and after it compare equal. So do keys added since at their
    old behaviour (``ADDED_SETTINGS``)."""
    old_name = {new: old for old, new in RENAMED.items()}
    settings = {old_name.get(k, k): v for k, v in phase_settings(cfg, phase).items()
                if k not in ADDED_SETTINGS or v != ADDED_SETTINGS[k]}
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def changed_settings(cfg: Config, phase: str, resolved: str | Path) -> list[tuple[str, Any, Any]]:
    """(key, value then, value now) for every setting of ``phase`` that differs from the resolved config
    written with its output."""
    p = Path(resolved)
    try:
        old_tree = yaml_load(p.read_text())
    except yaml.YAMLError as e:
        raise _yaml_error(p, e) from None
    if not isinstance(old_tree, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    # a resolved config written before a rename holds the old names (no note: the code wrote it, not the user)
    _move_renamed(old_tree, str(p), note=False)
    old, new = phase_settings(old_tree, phase), phase_settings(cfg, phase)
    # a key the old config does not have (added to the code since) had its default then
    default = phase_settings(Config(), phase)
    old = {**{k: v for k, v in default.items() if k not in old}, **old}
    return [(k, old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
