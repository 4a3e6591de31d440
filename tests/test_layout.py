"""The run layout (layout.RunLayout) and the report bugs that came from rebuilding it in many places.

Each report test here failed on the code before layout.py: the report globbed the run directory
(recursively, for the smoke banner and for freshness), counted shard summaries as phases, and did not
know outputs renamed with --set.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from typer.testing import CliRunner

from looper_math.cli import app
from looper_math.config import load_config
from looper_math.report import build_report
from test_compare_report import make_run_dir

# layout.py is imported inside the tests, so the bare-run-dir parts run (and fail) on the code before it too

REPO = Path(__file__).resolve().parents[1]


def abel(run_dir: Path, *extra: str):
    return load_config(REPO / "configs" / "abel7b.yaml", [f"run_dir={run_dir}", *extra])


def test_names_of_every_output():
    from looper_math.layout import RunLayout, resolved_of, round_config, summary_of

    cfg = load_config(REPO / "configs" / "demo.yaml", ["run_dir=/r"])
    lay = RunLayout(cfg, rounds=2)
    assert lay.rollouts().summary == Path("/r/data/rollouts.summary.json")
    assert lay.rollouts().resolved == Path("/r/data/rollouts.resolved_config.yaml")
    assert lay.prefs(2).path == Path("/r/data/preferences_r2.jsonl")
    assert lay.dpo(2).summary == Path("/r/checkpoints/dpo_lora_r2/train_summary.json")
    assert lay.dpo(2).inputs == (lay.prefs(2).summary, lay.dpo(1).summary)  # round 2 starts from round 1's DPO
    assert lay.eval("dpo", 2).path == Path("/r/outputs/dpo_eval_r2.jsonl") and lay.eval("dpo", 2).phase == "eval_dpo"
    assert lay.eval("none").label == "base" and lay.eval("sft").inputs == (lay.sft().summary,)
    assert [o.label for o in lay.evals()][:4] == ["base", "sft", "dpo", "dpo_r2"]
    assert round_config(cfg, 2).rollouts.adapter == "/r/checkpoints/dpo_lora"
    assert summary_of(Path("x/a.jsonl")) == Path("x/a.summary.json") and resolved_of(Path("ck")) == Path("ck/resolved_config.yaml")
    assert lay.rollouts_base() is None
    rft = RunLayout(load_config(REPO / "configs" / "qwen05_gpu.yaml", ["run_dir=/q"]))
    assert rft.rollouts_base().path == Path("/q/data/rollouts_base.jsonl") and rft.sft().inputs == (rft.rollouts_base().summary,)


def test_report_of_a_real_run_is_not_stamped_smoke_by_the_demo_run_inside_it(tmp_path):
    """configs/abel7b.yaml has run_dir: . , so runs/demo (the smoke run) lies inside the real run's directory."""
    make_run_dir(tmp_path, smoke=False)
    demo = tmp_path / "runs" / "demo"
    (demo / "data").mkdir(parents=True)
    (demo / "data" / "rollouts.resolved_config.yaml").write_text("run_dir: runs/demo\nsmoke: true\n")
    (demo / "checkpoints" / "sft_lora").mkdir(parents=True)
    (demo / "checkpoints" / "sft_lora" / "resolved_config.yaml").write_text("smoke: true\n")
    assert "SMOKE RUN" not in build_report(tmp_path).read_text()  # a bare run dir
    from looper_math.layout import RunLayout

    assert "SMOKE RUN" not in build_report(RunLayout(abel(tmp_path))).read_text()  # with its config


def test_report_shows_no_shard_summary_as_a_phase(tmp_path):
    make_run_dir(tmp_path)
    out = tmp_path / "outputs"
    for i in range(2):  # the shards of the SFT evaluation, merged into abel_sft_platinum_eval already
        (out / f"abel_sft_platinum_eval.shard-{i}-of-2.summary.json").write_text(json.dumps(
            {"accuracy_strict": 0.1, "accuracy_flexible": 0.1, "ci95_strict": [0.0, 0.2], "n": 50, "checkpoint": "sft"}))
    page = build_report(tmp_path).read_text()
    assert "shard-" not in page and page.count('<div class="card">') == 3  # base, sft, dpo
    from looper_math.layout import RunLayout

    page = build_report(RunLayout(abel(tmp_path))).read_text()
    assert "shard-" not in page and page.count('<div class="card">') == 3


def test_report_finds_outputs_renamed_with_set(tmp_path):
    make_run_dir(tmp_path)
    (tmp_path / "checkpoints" / "abel_coherence_lora").rename(tmp_path / "dpo_v2")
    (tmp_path / "results").mkdir()
    (tmp_path / "outputs" / "abel_coherence_platinum_eval.summary.json").rename(tmp_path / "results" / "dpo_v2.summary.json")
    r = CliRunner().invoke(app, ["report", "--config", str(REPO / "configs" / "abel7b.yaml"), "--set", f"run_dir={tmp_path}",
                                 "--set", "dpo.output_dir=dpo_v2", "--set", "eval.dpo_output=results/dpo_v2.jsonl"])
    assert r.exit_code == 0, r.output
    page = (tmp_path / "report" / "report.html").read_text()
    assert "<td>dpo_v2</td>" in page  # the renamed adapter's loss curve
    assert "dpo_v2.summary.json" in page and "61.0%" in page  # the renamed evaluation
    assert "SMOKE RUN" not in page  # abel7b is not a smoke config (make_run_dir's resolved_config.yaml is not its output)


def test_report_is_current_looks_only_at_the_files_the_report_reads(tmp_path):
    make_run_dir(tmp_path)
    cfg = abel(tmp_path)
    build_report(tmp_path)
    later = time.time() + 5
    for unrelated in (tmp_path / ".git" / "index", tmp_path / "runs" / "demo" / "data" / "rollouts.jsonl",
                      tmp_path / "checkpoints" / "abel_sft_lora" / "trainer" / "checkpoint-8" / "optimizer.pt"):
        unrelated.parent.mkdir(parents=True, exist_ok=True)
        unrelated.write_text("x")
        os.utime(unrelated, (later, later))
    from looper_math.layout import RunLayout

    assert RunLayout.discover(tmp_path).report_is_current()  # a run dir without its config
    assert RunLayout(cfg).report_is_current()
    read = tmp_path / "outputs" / "abel_sft_platinum_eval.summary.json"
    os.utime(read, (later, later))
    assert not RunLayout(cfg).report_is_current() and not RunLayout.discover(tmp_path).report_is_current()


def test_run_is_a_list_of_phases_over_the_layout(tmp_path):
    from looper_math.layout import RunLayout
    from looper_math.pipeline import phases

    cfg = load_config(REPO / "configs" / "qwen05_gpu.yaml", [f"run_dir={tmp_path}", "policy=dpo"])
    lay = RunLayout(cfg, rounds=2)
    ps = phases(cfg, lay, resume=True, overwrite=False)
    assert [p.name for p in ps] == [
        "rollouts_base", "sft", "eval_base", "eval_sft", "rollouts (round 1)", "prefs (round 1)", "dpo (round 1)",
        "eval_dpo (round 1)", "rollouts (round 2)", "prefs (round 2)", "dpo (round 2)", "eval_dpo (round 2)"]
    assert ps[-1].output.path == tmp_path / "outputs" / "dpo_dev_eval_r2.jsonl" and not any(p.is_complete for p in ps)
    ps[1].output.path.mkdir(parents=True)
    ps[1].output.summary.write_text('{"steps": 3}')
    assert ps[1].is_complete  # SFT: its train_summary.json exists
    assert not ps[0].is_complete  # base rollouts


def test_policy_grpo_rounds_are_grpo_phases_chained_through_the_layout(tmp_path):
    """`policy: grpo` (configs/qwen05_gpu.yaml, its one round made two): per round GRPO then its eval, round 2
    starting from round 1's adapter with the next seed; the layout's outputs (what the report reads) are the
    GRPO rounds', no pairs."""
    from looper_math.layout import RunLayout
    from looper_math.pipeline import phases

    assert load_config(REPO / "configs" / "qwen05_gpu.yaml").rounds == 1  # the measured recipe: one GRPO round
    cfg = load_config(REPO / "configs" / "qwen05_gpu.yaml", [f"run_dir={tmp_path}", "rounds=2"])
    assert cfg.policy == "grpo" and cfg.rounds == 2
    lay = RunLayout(cfg, rounds=cfg.rounds)
    ps = phases(cfg, lay, resume=True, overwrite=False)
    assert [p.name for p in ps][4:] == ["grpo (round 1)", "eval_grpo (round 1)", "grpo (round 2)",
                                        "eval_grpo (round 2)"]
    r1, r2 = lay.grpo(1), lay.grpo(2)
    assert r2.path == tmp_path / "checkpoints" / "grpo_lora_r2" and r2.inputs == (r1.summary,)
    assert r1.inputs == (lay.sft().summary,)
    assert r2.cfg.grpo.init_adapter == str(r1.path) and r2.cfg.grpo.seed == cfg.grpo.seed + 1
    assert ps[-1].output.path == tmp_path / "outputs" / "grpo_dev_eval_r2.jsonl" and ps[-1].output.inputs == (r2.summary,)
    # the other policy's first round stays in view (its standalone commands, e.g. the DPO ablation of bench/learning.sh)
    assert [o.label for o in lay.prefs_files()] == ["pairs"]
    assert [o.label for o in lay.trainings()] == ["sft", "dpo", "grpo", "grpo_r2"]
