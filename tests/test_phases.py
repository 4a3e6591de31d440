"""phases.PHASES is the one home of a phase's identity: the settings, the layout's paths, the adapter names, the
pipeline's step names and the report's order all come from it (each assertion here would catch a second table
drifting from it), and every trainer phase runs through the one scaffold, train_common.TrainerRun."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from looper_math.config import NOT_SETTINGS, TRAINER_CONFIGS, Config, eval_phase, load_config, phase_settings
from looper_math.phases import EVALS, PHASES, TRAINED

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "looper_math"


def test_every_spec_names_a_config_key_and_has_settings():
    cfg = Config()
    for spec in PHASES.values():
        assert isinstance(spec.output_in(cfg), str) and spec.output_in(cfg), spec.name
        assert isinstance(getattr(cfg, spec.section), object)
        assert all(i in PHASES for i in spec.inputs), spec.name
        assert phase_settings(cfg, spec.name), spec.name  # every phase has settings to fingerprint
        assert (spec.kind == "rows") == (spec.count_key is not None), spec.name
    with pytest.raises(KeyError):
        phase_settings(cfg, "eval")  # the old name of eval_base: no second table accepts it


def test_settings_leave_out_every_output_path_and_the_trainers_logging():
    """The derived NOT_SETTINGS is the hand-written set it replaced, plus dpo.save_total_limit (new key)."""
    assert NOT_SETTINGS == {
        "sft.output_dir", "sft.logging_steps", "sft.save_steps", "sft.save_total_limit", "rollouts.output", "prefs.output",
        "dpo.output_dir", "dpo.logging_steps", "dpo.save_steps", "dpo.save_total_limit", "eval.base_output",
        "eval.sft_output", "eval.dpo_output", "sft.rft_rollouts", "grpo.output_dir", "grpo.logging_steps",
        "grpo.save_steps", "grpo.save_total_limit", "eval.grpo_output", "rollouts.score_workers", "sft.report_to",
        "dpo.report_to", "grpo.report_to"}
    assert TRAINER_CONFIGS == {"sft": "SFTConfig", "dpo": "DPOConfig", "grpo": "GRPOConfig"}


def test_adapter_names_resolve_through_the_specs(tmp_path):
    from looper_math.modeling import adapter_path

    cfg = load_config(REPO / "configs" / "demo.yaml", [f"run_dir={tmp_path}"])
    assert set(TRAINED) == {"sft", "dpo", "grpo"} and set(EVALS) == {"none", "sft", "dpo", "grpo"}
    for name, spec in TRAINED.items():
        assert adapter_path(cfg, name) == tmp_path / spec.output_in(cfg)
        assert eval_phase(name) == EVALS[name].name == f"eval_{name}"
        assert EVALS[name].inputs == (spec.name,)  # an evaluation's input is the adapter it evaluates
    assert adapter_path(cfg, "none") is None and eval_phase("none") == eval_phase(None) == "eval_base"
    assert adapter_path(cfg, "some/dir") == Path("some/dir") and eval_phase("some/dir") == "eval_base"


def test_layout_paths_and_round_suffixes_come_from_the_specs(tmp_path):
    from looper_math.layout import RunLayout

    cfg = load_config(REPO / "configs" / "qwen05_gpu.yaml", [f"run_dir={tmp_path}", "policy=dpo"])  # sft.data uses rft
    lay = RunLayout(cfg, rounds=2)
    outputs = {1: [lay.rollouts_base(), lay.sft(), lay.eval("none"), lay.eval("sft"), lay.rollouts(1), lay.prefs(1),
                   lay.dpo(1), lay.eval("dpo", 1), lay.grpo(1), lay.eval("grpo", 1)],
               2: [lay.rollouts(2), lay.prefs(2), lay.dpo(2), lay.eval("dpo", 2), lay.grpo(2), lay.eval("grpo", 2)]}
    assert [o.phase for o in outputs[1]] == list(PHASES)  # one output per spec, in the table's (run) order
    for o in outputs[1]:
        spec = PHASES[o.phase]
        assert o.path == tmp_path / spec.output_in(cfg) and o.count_key == spec.count_key and o.label == spec.label
    assert [o.phase for o in outputs[2]] == [s.name for s in PHASES.values() if s.per_round]
    for o in outputs[2]:
        p = Path(PHASES[o.phase].output_in(cfg))
        assert o.path == tmp_path / p.with_name(f"{p.stem}_r2{p.suffix}") and o.label == PHASES[o.phase].label + "_r2"


def test_pipeline_steps_are_named_by_their_specs_in_run_order(tmp_path):
    from looper_math.layout import RunLayout
    from looper_math.pipeline import phases

    cfg = load_config(REPO / "configs" / "demo.yaml", [f"run_dir={tmp_path}"])
    ps = phases(cfg, RunLayout(cfg), resume=True, overwrite=False)
    assert [p.name for p in ps] == ["sft", "eval_base", "eval_sft", "rollouts", "prefs", "dpo", "eval_dpo"]
    assert all(p.output.phase == p.name for p in ps)


def test_report_orders_every_evaluation_grpo_included():
    from looper_math.report import PHASE_ORDER, _phase_rank

    labels = [s.label for s in EVALS.values()]
    assert labels == ["base", "sft", "dpo", "grpo"] and [t for t in PHASE_ORDER if t in labels] == labels
    assert sorted(["grpo", "dpo_r2", "sft", "base", "dpo"], key=_phase_rank) == ["base", "sft", "dpo", "dpo_r2", "grpo"]
    # a run dir found without its config: abel7b.yaml's DPO outputs say "coherence", ranked with DPO, before GRPO
    assert _phase_rank("abel_coherence_lora") < _phase_rank("abel_grpo_lora") < _phase_rank("some_other_adapter")


@pytest.mark.parametrize("module", ["sft.py", "dpo.py", "grpo.py"])
def test_every_trainer_runs_through_the_shared_scaffold(module):
    """One TrainerRun per trainer, and none of the steps it owns done by hand (where the drift came from)."""
    tree = ast.parse((SRC / module).read_text())
    called = [n.func.id if isinstance(n.func, ast.Name) else n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert called.count("TrainerRun") == 1
    assert {"prepare", "train", "save"} <= set(called)
    assert not {"check_output", "save_final", "fingerprint", "peak_memory", "last_checkpoint"} & set(called)
