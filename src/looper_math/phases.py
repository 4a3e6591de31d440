"""The phases of a run, each one declarative :class:`PhaseSpec`: the one home of a phase's identity.

What derives from :data:`PHASES` (so a phase is added or renamed here, once):

- ``config.phase_settings`` / ``fingerprint``: the settings that shape a phase's output (``settings``, and its
  ``inputs``' settings), less the output paths and the trainers' logging keys (``config.NOT_SETTINGS``);
- ``config.TRAINER_CONFIGS``: the TRL config class each trainer section's ``trainer_args`` pass through to;
- ``config.eval_phase`` and ``modeling.adapter_path``: the names ``--adapter``, ``rollouts.adapter`` and
  ``*.init_adapter`` accept (``sft``, ``dpo``, ``grpo``: the trained adapters; ``none``: the base model);
- ``layout.RunLayout``: each output's path (the config key ``output``), its row-count key, its label, and
  which outputs get the ``_r{r}`` suffix in round r > 1 (``per_round``);
- ``pipeline.phases``: the name ``looper-math run`` prints for each step;
- ``report.PHASE_ORDER``: the order of the evaluations on the page (the eval specs' labels, in run order).

Run order (``looper-math run``): [rollouts_base when sft.data uses rft] -> sft -> eval_base -> eval_sft -> then
per round rollouts -> prefs -> dpo -> eval_dpo (``policy: dpo``) or grpo -> eval_grpo (``policy: grpo``).
This module imports nothing of the package, so every module (config.py first) can read it; the code that
runs a phase stays in its own module (sft.py, dpo.py, ...), and no phase imports another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class PhaseSpec:
    """One phase of a run: what it is called, where its output goes, and what shapes that output."""

    name: str  # its key everywhere: fingerprints, the layout's Output.phase, the step `looper-math run` prints
    section: str  # the config section it reads its own settings from
    output: str  # the dotted config key of its output path (relative to run_dir)
    kind: Literal["rows", "adapter"]  # a JSONL file (summary beside it) or an adapter folder (train_summary.json inside)
    settings: tuple[str, ...]  # config sections or dotted keys that shape its output
    inputs: tuple[str, ...] = ()  # the phases whose outputs it reads: their settings count in its fingerprint too
    adapter: str | None = None  # the adapter it trains (kind adapter), or the one it evaluates ("none": the base model)
    count_key: str | None = None  # the summary field that counted a JSONL's rows before summaries had output_rows
    label: str = ""  # what the report calls its output (round r > 1 adds "_r{r}")
    per_round: bool = False  # `run --rounds`: round r > 1 writes its own output, the path suffixed "_r{r}"
    trl_config: str | None = None  # the TRL config class of its trainer (trainer_args pass through to it)

    def output_in(self, cfg) -> str:
        """The value of its output key in ``cfg`` (a path, relative to run_dir unless absolute)."""
        section, key = self.output.split(".")
        return getattr(getattr(cfg, section), key)

    def set_output(self, cfg, value: str) -> None:
        section, key = self.output.split(".")
        setattr(getattr(cfg, section), key, value)


# What rollouts read besides their sections: the grading and the engine they sample with.
_ROLLOUT_SETTINGS = ("model", "data", "regime_w", "rollouts", "task.answer_mode", "task.protocol", "generation.engine",
                     "generation.fast_attn", "generation.fast_fuse")
_EVAL_SETTINGS = ("model", "data", "eval", "generation", "task")

PHASES: dict[str, PhaseSpec] = {s.name: s for s in (
    # the base model's rollouts that rejection-sampling SFT (sft.data rft) learns from (rollouts.*, no adapter)
    PhaseSpec("rollouts_base", "rollouts", "sft.rft_rollouts", "rows", _ROLLOUT_SETTINGS, count_key="rows",
              label="rollouts_base"),
    PhaseSpec("sft", "sft", "sft.output_dir", "adapter", ("model", "data", "lora", "sft"), adapter="sft", label="sft",
              trl_config="SFTConfig"),
    # the base model, or an adapter given by path (not an output of the run: only the eval settings count)
    PhaseSpec("eval_base", "eval", "eval.base_output", "rows", _EVAL_SETTINGS, adapter="none", count_key="n", label="base"),
    PhaseSpec("eval_sft", "eval", "eval.sft_output", "rows", _EVAL_SETTINGS, ("sft",), adapter="sft", count_key="n",
              label="sft"),
    PhaseSpec("rollouts", "rollouts", "rollouts.output", "rows", _ROLLOUT_SETTINGS, ("sft",), count_key="rows",
              label="rollouts", per_round=True),
    PhaseSpec("prefs", "prefs", "prefs.output", "rows", ("prefs",), ("rollouts",), count_key="pairs", label="pairs",
              per_round=True),
    PhaseSpec("dpo", "dpo", "dpo.output_dir", "adapter", ("dpo",), ("prefs", "sft"), adapter="dpo", label="dpo",
              per_round=True, trl_config="DPOConfig"),
    PhaseSpec("eval_dpo", "eval", "eval.dpo_output", "rows", _EVAL_SETTINGS, ("dpo",), adapter="dpo", count_key="n",
              label="dpo", per_round=True),
    PhaseSpec("grpo", "grpo", "grpo.output_dir", "adapter", ("grpo", "regime_w", "task.answer_mode", "task.protocol",
              "generation.engine", "generation.fast_attn", "generation.fast_fuse"), ("sft",), adapter="grpo", label="grpo", per_round=True,
              trl_config="GRPOConfig"),
    PhaseSpec("eval_grpo", "eval", "eval.grpo_output", "rows", _EVAL_SETTINGS, ("grpo",), adapter="grpo", count_key="n",
              label="grpo", per_round=True),
)}

# the trained adapters by the name --adapter, rollouts.adapter and *.init_adapter give them
TRAINED: dict[str, PhaseSpec] = {s.adapter: s for s in PHASES.values() if s.kind == "adapter"}
# the evaluations by the adapter they evaluate ("none": the base model)
EVALS: dict[str, PhaseSpec] = {s.adapter: s for s in PHASES.values() if s.section == "eval"}
# a trainer's settings that say how often it logs and checkpoints and where its metrics go, not what it learns
TRAINER_LOGGING = ("logging_steps", "save_steps", "save_total_limit", "report_to")


def eval_spec(adapter: str | None) -> PhaseSpec:
    """The evaluation of ``adapter`` (sft | dpo | grpo | none | a path: an adapter outside the run, as the base's)."""
    return EVALS.get(str(adapter), EVALS["none"])
