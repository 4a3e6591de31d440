"""Typed configuration: dataclasses with help text, loaded from YAML, overridden with ``--set key=value``.

Every phase writes the resolved config next to its outputs (``resolved_config.yaml``), so a result can
always be traced to the exact settings that produced it. Unknown keys and wrongly typed values are
errors that name the key (a typo must never be silently ignored).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the file or key."""


def _f(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class ModelConfig:
    name_or_path: str = _f("GAIR/Abel-7B-002", "Hub id or local folder of the base model; 'tiny' builds a tiny random Llama on the fly (smoke runs).")
    gguf_file: str | None = _f(None, "GGUF file name inside name_or_path (e.g. the Qwen 0.5B test model); needs the gguf package.")
    dtype: str = _f("auto", "auto (bf16 on GPU, fp32 on CPU) | bfloat16 | float16 | float32.")
    attn_implementation: str | None = _f(None, "sdpa | eager | flash_attention_2; None lets transformers choose.")
    prompt_format: str = _f("abel", "abel (Question:/Answer: prompt) | chat (tokenizer chat template) | plain.")
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
    dev_size: int = _f(0, "Questions held out of train as a dev split (deterministic, by seed). 0 = none.")
    builtin_train_size: int = _f(256, "Number of generated training problems when train == 'builtin'.")
    builtin_test_size: int = _f(64, "Number of generated test problems when test == 'builtin'.")
    seed: int = _f(1234, "Seed of the dev split and of the built-in problem generator.")


@dataclass
class LoraConfig:
    r: int = _f(16, "LoRA rank.")
    alpha: int = _f(32, "LoRA alpha (scale = alpha / r).")
    dropout: float = _f(0.05, "LoRA dropout.")
    target_modules: list[str] = _f(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], "Module names that get adapters ('all-linear' as a one-element list also works).")


@dataclass
class SFTConfig:
    output_dir: str = _f("checkpoints/abel_sft_lora", "Where the SFT adapter, tokenizer and resolved config go (relative to run_dir).")
    epochs: float = _f(1.0, "Training epochs.")
    max_steps: int = _f(-1, "Stop after this many optimizer steps (-1: use epochs).")
    learning_rate: float = _f(2e-4, "Peak learning rate.")
    lr_scheduler: str = _f("cosine", "transformers scheduler name.")
    warmup_ratio: float = _f(0.03, "Share of steps used for linear warm-up.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")
    batch_size: int = _f(8, "Per-device batch size.")
    grad_accum: int = _f(2, "Gradient accumulation steps.")
    max_length: int = _f(512, "Max tokens per example (prompt + completion); longer examples are truncated.")
    gradient_checkpointing: bool = _f(True, "Trade compute for memory.")
    padding_free: bool = _f(False, "Padding-free batching (needs flash attention).")
    use_liger_kernel: bool = _f(False, "Liger fused kernels (needs liger-kernel).")
    logging_steps: int = _f(10, "Log every N steps.")
    save_steps: int = _f(200, "Checkpoint every N steps (resumable).")
    save_total_limit: int = _f(2, "Keep at most N intermediate checkpoints.")
    seed: int = _f(42, "Training seed.")
    limit: int | None = _f(None, "Use only the first N training examples (after the dev split).")
    data: str = _f("gold", "Training targets: gold (GSM8K reference solutions) | rft (rejection sampling: the model's own correct, finished trajectories from sft.rft_rollouts) | gold+rft.")
    rft_rollouts: str = _f("data/rollouts_base.jsonl", "Rollouts file the rft data come from; `looper-math run` writes it first (base model, rollouts.* settings, no adapter).")
    rft_per_question: int = _f(4, "At most this many distinct correct trajectories per question (highest reward first, so Regime W coherence breaks ties).")


@dataclass
class RegimeWConfig:
    arms: list[dict] = _f([], "The eight arms: name, family (wolfram|maudlin), instruction, temperature, top_p. Empty = built-in defaults.")
    allocation: str = _f("ucb", "uniform | ucb | thompson.")
    exploration_floor: float = _f(0.05, "Minimum share of samples any arm gets under ucb/thompson.")
    ucb_c: float = _f(1.0, "UCB exploration constant.")
    w_end: float = _f(0.4, "Weight of s_end in s_wm.")
    w_path: float = _f(0.3, "Weight of s_path in s_wm.")
    w_cf: float = _f(0.3, "Weight of s_cf in s_wm.")
    alpha_correct: float = _f(1.0, "ALPHA_CORRECT: reward weight of correctness.")
    beta_coherence: float = _f(0.5, "BETA_COHERENCE: reward weight of s_wm.")
    length_penalty: float = _f(0.0005, "Reward penalty per generated token.")
    cf_perturbations: int = _f(3, "Counterfactual perturbations per question for s_cf.")
    cf_source: str = _f("reference", "What s_cf (and so s_wm and the reward) compares a perturbed trajectory with: reference (the GSM8K solution's program) | peers (the group's consensus program, label-free; ablation).")


@dataclass
class RolloutsConfig:
    output: str = _f("data/abel_regime_w_rollouts.jsonl", "Append-only rollouts JSONL (relative to run_dir).")
    adapter: str | None = _f("sft", "Adapter to sample from: 'sft', 'dpo', 'none' (base model) or a path.")
    split: str = _f("train", "Questions to roll out: train | dev | test.")
    k: int = _f(8, "Trajectories per question.")
    max_new_tokens: int = _f(384, "Max generated tokens per trajectory.")
    batch_size: int = _f(64, "Sequences per generation batch.")
    questions_per_round: int = _f(32, "Questions per bandit update.")
    limit: int | None = _f(None, "Only the first N questions.")
    seed: int = _f(0, "Base seed; each sample's seed derives from (seed, question_id, sample_idx).")
    eval_prompt_share: float = _f(0.0, "Share of each question's k samples drawn under the plain evaluation prompt (arm 'eval_prompt', on-policy for pairs and RFT); the bandit spreads the rest over the Regime W arms. 1.0 = all.")
    temperature: float = _f(0.8, "Sampling temperature of the evaluation-prompt samples (arms carry their own).")
    top_p: float = _f(1.0, "Top-p of the evaluation-prompt samples (1.0 samples the full distribution, the fastest path).")
    score_workers: int = _f(0, "Processes scoring a round's groups (Regime W); 0 = one per spare core, at most 8; 1 = in this process.")


@dataclass
class PrefsConfig:
    output: str = _f("data/abel_coherence_preferences.jsonl", "Preference pairs JSONL (relative to run_dir).")
    pair_types: list[str] = _f(["correctness", "coherence"], "Which pair types to build (ablation: ['correctness']).")
    max_correctness_pairs_per_question: int = _f(4, "Cap of correct>incorrect pairs per question.")
    max_coherence_pairs_per_question: int = _f(2, "Cap of coherent>less-coherent pairs per question.")
    coherence_margin: float = _f(0.15, "Minimum s_wm margin for a coherence pair.")
    max_coherence_share: float = _f(0.3, "Coherence pairs at most this share of all pairs.")
    prompt_mode: str = _f("eval", "eval (the plain evaluation prompt) | arm (the arm's own prompt).")


@dataclass
class DPOConfig:
    output_dir: str = _f("checkpoints/abel_coherence_lora", "Where the DPO adapter goes (relative to run_dir).")
    init_adapter: str = _f("sft", "Adapter DPO starts from and uses (frozen) as reference: sft | dpo | a path.")
    beta: float = _f(0.1, "DPO beta.")
    nll_weight: float = _f(1.0, "Weight of the NLL term on chosen (Iterative RPO); 0 = plain DPO.")
    learning_rate: float = _f(1e-5, "Learning rate.")
    lr_scheduler: str = _f("cosine", "transformers scheduler name.")
    warmup_ratio: float = _f(0.05, "Share of steps for warm-up.")
    epochs: float = _f(1.0, "Epochs over the pairs.")
    max_steps: int = _f(-1, "Stop after N steps (-1: epochs).")
    batch_size: int = _f(4, "Per-device batch size (pairs).")
    grad_accum: int = _f(4, "Gradient accumulation.")
    max_length: int = _f(768, "Max prompt+completion tokens.")
    gradient_checkpointing: bool = _f(True, "Trade compute for memory.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")
    logging_steps: int = _f(10, "Log every N steps.")
    save_steps: int = _f(200, "Checkpoint every N steps.")
    seed: int = _f(42, "Training seed.")


@dataclass
class EvalConfig:
    split: str = _f("test", "test | dev (dev split cut from train).")
    base_output: str = _f("outputs/abel_base_platinum_eval.jsonl", "Per-example JSONL for the base model.")
    sft_output: str = _f("outputs/abel_sft_platinum_eval.jsonl", "Per-example JSONL for the SFT adapter.")
    dpo_output: str = _f("outputs/abel_coherence_platinum_eval.jsonl", "Per-example JSONL for the DPO adapter.")
    max_new_tokens: int = _f(512, "Max generated tokens per question.")
    batch_size: int = _f(64, "Questions per generation batch.")
    limit: int | None = _f(None, "Only the first N questions.")
    engine: str = _f("auto", "Generation engine for eval AND rollouts: auto (fast on CUDA for llama/mistral/qwen2, else hf) | hf (batched generate) | fast (continuous batching, static KV cache, CUDA graphs).")
    merge_adapter: bool = _f(True, "Generate (eval AND rollouts) from the adapter merged into this process's copy of the base weights (PEFT merge_and_unload; about 3x faster); false = base + unmerged LoRA, the reference path. The adapter on disk is never changed.")
    answer_mode: str = _f("flexible", "Extraction that decides `correct` in eval AND in rollout rewards: strict (#### N) | flexible.")


@dataclass
class Config:
    run_dir: str = _f(".", "Root that every relative output path is resolved against.")
    device: str = _f("auto", "auto | cpu | cuda.")
    smoke: bool = _f(False, "Marks a smoke run (tiny model); printed loudly in outputs.")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    regime_w: RegimeWConfig = field(default_factory=RegimeWConfig)
    rollouts: RolloutsConfig = field(default_factory=RolloutsConfig)
    prefs: PrefsConfig = field(default_factory=PrefsConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def path(self, rel: str) -> Path:
        """Resolve an output path against run_dir."""
        p = Path(rel)
        return p if p.is_absolute() else Path(self.run_dir) / p


def _check_type(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"config key '{key}': bad value {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        (inner,) = typing.get_args(tp) or (Any,)
        return [_check_type(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Any or origin is dict or tp is dict:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    raise ConfigError(f"config key '{key}': unsupported type {tp}")


def _build(cls: type, data: dict, prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in names:
            raise ConfigError(f"{source}: unknown config key '{key}'")
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            if not isinstance(v, dict):
                raise ConfigError(f"{source}: config key '{key}' must be a mapping")
            kwargs[k] = _build(tp, v, f"{key}.", source)
        else:
            try:
                kwargs[k] = _check_type(v, tp, key)
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None
    return cls(**kwargs)


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
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: invalid YAML: {str(e).splitlines()[0]}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
        tree = loaded or {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key.strip(), value)
        source = f"{source} + --set"
    return _build(Config, tree, "", source)


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
