"""Pipeline smoke: ``run_pipeline`` end to end on the tiny model (CPU), then every file checked against its
schema (the JSONL contracts between phases: README "JSONL schemas", schemas.py), a rerun that must touch
nothing, and the CLI entry points.

Why the training file is not the demo's: on built-in problems the tiny model is right about 1% of the
time, so a run can end with no question that has both a right and a wrong trajectory, hence no pairs,
and DPO stops with "no preference pairs (nothing to train on)". Here the training questions are built-in
problems whose final answers are rewritten to 12 or 30 (alternating). SFT on eight of them teaches the
tiny model that the answer is one of the two, not which one, so the sampled trajectories of most
questions come out partly right and partly wrong: correctness pairs exist on every run. (Measured: 4-7
of the 8 questions mixed, 14-28 pairs, over rollout seeds 0-3, SFT seeds 0-2 and uniform allocation;
identical files with 1 and 2 torch threads.)
The test questions carry GSM8K-Platinum style ``cleaning_status`` values so the per-status summary is
exercised.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import yaml

from conftest import REPO, smoke_overrides

from looper_math.config import load_config, to_dict

STATUSES = ("consensus", "revised", "verified")
PHASES = ["sft", "eval_base", "eval_sft", "rollouts", "prefs", "dpo", "eval_dpo"]
# rollouts rows: the original project's fields plus what this one adds (arm family, sampling settings, eval prompt)
ROLLOUT_DESIGN_FIELDS = {"question_id", "sample_idx", "arm", "prompt", "full_text", "reasoning", "answer", "gold",
                         "correct", "num_tokens", "finished", "s_end", "s_path", "s_cf", "s_wm", "reward", "seed",
                         "model", "adapter"}
ROLLOUT_FIELDS = ROLLOUT_DESIGN_FIELDS | {"arm_family", "eval_prompt", "temperature", "top_p", "s_cf_free", "n_unparsed"}
PAIR_FIELDS = {"prompt", "chosen", "rejected", "question_id", "pair_type", "chosen_arm", "rejected_arm",
               "chosen_reward", "rejected_reward", "chosen_s_wm", "rejected_s_wm", "chosen_sample_idx",
               "rejected_sample_idx"}
EVAL_SUMMARY_KEYS = {"n", "checkpoint", "model", "accuracy", "ci95", "accuracy_strict", "ci95_strict",
                     "accuracy_flexible", "ci95_flexible", "by_cleaning_status", "extraction_failures_strict",
                     "extraction_failures_flexible", "hedged", "unfinished", "mean_tokens", "total_tokens", "this_run",
                     "finish_reasons", "answer_mode", "split", "data"}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def file_state(root: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def write_inputs(d: Path) -> tuple[Path, Path]:
    from looper_math.data import builtin_problems

    d.mkdir(parents=True, exist_ok=True)
    train = []
    for i, p in enumerate(builtin_problems(16, seed=5, split="two_answers")):
        body = p.answer.rsplit("####", 1)[0].rstrip()
        train.append({"question": p.question, "answer": f"{body}\n#### {12 if i % 2 == 0 else 30}"})
    test = [{"question": p.question, "answer": p.answer, "cleaning_status": STATUSES[i % len(STATUSES)]}
            for i, p in enumerate(builtin_problems(8, seed=3, split="platinum"))]
    for name, rows in (("train.jsonl", train), ("test.jsonl", test)):
        (d / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "train.jsonl", d / "test.jsonl"


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir):
    from looper_math.pipeline import run_pipeline

    run_dir = tmp_path_factory.mktemp("pipeline")
    shutil.copytree(tiny_model_dir, run_dir / "tiny_model")
    train, test = write_inputs(run_dir / "inputs")
    cfg = load_config(REPO / "configs" / "demo.yaml", smoke_overrides(run_dir) + [
        f"data.train={train}", f"data.test={test}", "data.dev_size=0", "sft.limit=8", "sft.max_steps=24",
        "sft.save_steps=12", "sft.learning_rate=1.0e-2", "rollouts.limit=8", "rollouts.questions_per_round=4",
        "eval.limit=8"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = run_pipeline(cfg)
    print(out.getvalue())
    return cfg, {**result, "stdout": out.getvalue()}


# --------------------------------------------------------------------------------------------- schemas


def test_pipeline_runs_every_phase(run):
    cfg, result = run
    assert result["phases_run"] == PHASES
    for d in (cfg.sft.output_dir, cfg.dpo.output_dir):
        summary = json.loads((cfg.path(d) / "train_summary.json").read_text())
        assert all(math.isfinite(v) for _, v in summary["losses"]), summary["losses"]
        assert yaml.safe_load((cfg.path(d) / "resolved_config.yaml").read_text()) == to_dict(cfg)
        assert summary["processes"] == 1, summary
        assert len(summary["peak_memory"]["peak_rss_gib"]) == 1 and summary["peak_memory"]["peak_rss_gib"][0] > 0, summary
    # steady rate: the steps after the first 20 % (24 SFT steps -> 4 skipped; DPO's 2 steps are too few)
    sft_summary = json.loads((cfg.path(cfg.sft.output_dir) / "train_summary.json").read_text())
    assert sft_summary["steady_steps"] == 24 - 4 and sft_summary["steady_tokens_per_s"] > 0, sft_summary
    import torch
    from safetensors.torch import load_file

    sft = load_file(cfg.path(cfg.sft.output_dir) / "adapter_model.safetensors")
    dpo = load_file(cfg.path(cfg.dpo.output_dir) / "adapter_model.safetensors")
    assert all(t.abs().sum() > 0 for k, t in sft.items() if "lora_B" in k), "an SFT lora_B is still zero"
    assert set(dpo) == set(sft) and not [k for k in sft if torch.equal(dpo[k], sft[k])], "a DPO tensor did not move"
    assert result["compare"]["n"] == cfg.eval.limit  # SFT vs DPO, paired over the same questions
    report = Path(result["report"])
    assert report == Path(cfg.run_dir) / "report" / "report.html"
    html = report.read_text()
    assert html.startswith("<!doctype html>") and "SMOKE RUN" in html
    images = re.findall(r'<img src="([^"]+)"', html)
    assert images and all((report.parent / src).stat().st_size > 0 for src in images), images


@pytest.mark.parametrize("which", ["none", "sft", "dpo"])
def test_eval_rows_and_summary(run, which):
    from looper_math.answers import extract_answer, extract_answers
    from looper_math.data import load_split
    from looper_math.evaluate import EVAL_FIELDS, default_output, summary_path

    cfg, _ = run
    out = default_output(cfg, which)
    rows = read_jsonl(out)
    problems = load_split(cfg, "test")[: cfg.eval.limit]
    assert [r["question_id"] for r in rows] == [p.question_id for p in problems]
    checkpoint = "base:tiny" if which == "none" else str(cfg.path(cfg.sft.output_dir if which == "sft" else cfg.dpo.output_dir))
    for r, p in zip(rows, problems):
        assert set(r) == set(EVAL_FIELDS) and len(EVAL_FIELDS) == len(set(EVAL_FIELDS))
        for k in ("question_id", "question", "gold", "prediction", "cleaning_status", "checkpoint"):
            assert isinstance(r[k], str), (k, r[k])
        for k in ("extracted_strict", "extracted_flexible"):
            assert r[k] is None or isinstance(r[k], str), (k, r[k])
        for k in ("correct", "correct_strict", "correct_flexible", "finished"):
            assert isinstance(r[k], bool), (k, r[k])
        assert type(r["num_tokens"]) is int and 0 < r["num_tokens"] <= cfg.eval.max_new_tokens
        assert (r["question"], r["gold"], r["cleaning_status"]) == (p.question, p.gold, p.cleaning_status)
        assert r["checkpoint"] == checkpoint
        assert r["extracted_strict"] == extract_answer(r["prediction"], mode="strict")
        assert r["extracted_flexible"] == extract_answer(r["prediction"], mode="flexible")
        assert r["correct"] == r["correct_flexible"]  # task.answer_mode: flexible

    s = json.loads(summary_path(out).read_text())
    assert EVAL_SUMMARY_KEYS <= set(s), EVAL_SUMMARY_KEYS - set(s)
    n = len(rows)
    assert s["n"] == n == cfg.eval.limit and s["checkpoint"] == checkpoint
    for key, col in (("accuracy", "correct"), ("accuracy_strict", "correct_strict"), ("accuracy_flexible", "correct_flexible")):
        assert s[key] == pytest.approx(sum(r[col] for r in rows) / n)
        lo, hi = s[key.replace("accuracy", "ci95")]
        assert 0.0 <= lo <= s[key] <= hi <= 1.0
    by = s["by_cleaning_status"]
    assert set(by) == set(STATUSES)
    for status, st in by.items():
        mine = [r for r in rows if r["cleaning_status"] == status]
        assert (st["n"], st["correct"]) == (len(mine), sum(r["correct"] for r in mine))
        assert set(st) == {"correct", "n", "accuracy", "ci95"}
    assert s["extraction_failures_strict"] == sum(r["extracted_strict"] is None for r in rows)
    assert s["extraction_failures_flexible"] == sum(r["extracted_flexible"] is None for r in rows)
    assert s["hedged"] == sum(r["hedged"] for r in rows)
    assert all(r["hedged"] == extract_answers(r["prediction"]).hedged for r in rows)
    assert s["unfinished"] == sum(not r["finished"] for r in rows)
    assert sum(s["finish_reasons"].values()) == n
    assert s["total_tokens"] == sum(r["num_tokens"] for r in rows) == s["this_run"]["tokens"]
    assert s["this_run"]["seconds"] > 0 and s["this_run"]["tokens_per_s"] > 0
    assert (out.parent / f"{out.stem}.resolved_config.yaml").exists()


def test_rollouts_rows_and_summary(run):
    from looper_math.answers import answers_equal
    from looper_math.data import load_split
    from looper_math.modeling import load_tokenizer
    from looper_math.prompts import build_prompt
    from looper_math.regime_w.arms import default_arms, stable_seed
    from looper_math.regime_w.reward import compute_reward
    from looper_math.rollouts import reasoning_of

    cfg, _ = run
    r_cfg, w = cfg.rollouts, cfg.regime_w
    out = cfg.path(r_cfg.output)
    rows = read_jsonl(out)
    tok = load_tokenizer(cfg)
    arms = {a.name: a for a in default_arms()}
    problems = {p.question_id: p for p in load_split(cfg, "train")[: r_cfg.limit]}
    by_q: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        assert set(r) == ROLLOUT_FIELDS, set(r) ^ ROLLOUT_FIELDS
        by_q[r["question_id"]].append(r)
        for k in ("s_end", "s_path", "s_cf", "s_wm"):
            assert isinstance(r[k], float | int) and 0.0 <= r[k] <= 1.0, (k, r[k])
        for k in ("correct", "finished"):
            assert isinstance(r[k], bool)
        assert type(r["num_tokens"]) is int and 0 < r["num_tokens"] <= r_cfg.max_new_tokens
        p, arm = problems[r["question_id"]], arms[r["arm"]]
        assert r["gold"] == p.gold and r["model"] == "tiny" and r["adapter"] == str(cfg.path(cfg.sft.output_dir))
        assert (r["arm_family"], r["temperature"], r["top_p"]) == (arm.family, arm.temperature, arm.top_p)
        assert r["prompt"] == build_prompt(tok, "abel", p.question, arm.instruction)
        assert r["eval_prompt"] == build_prompt(tok, "abel", p.question)
        assert r["reasoning"] == reasoning_of(r["full_text"])
        assert r["correct"] == answers_equal(r["answer"], r["gold"])
        assert r["seed"] == stable_seed(r_cfg.seed, r["question_id"], r["sample_idx"]) % (2**63)
        assert r["reward"] == pytest.approx(compute_reward(r["correct"], r["s_wm"], r["num_tokens"], w.alpha_correct,
                                                           w.beta_coherence, w.length_penalty))
    assert set(by_q) == set(problems), "one group per rollout question"
    for qid, group in by_q.items():
        assert sorted(r["sample_idx"] for r in group) == list(range(r_cfg.k)), qid
    assert len({(r["question_id"], r["sample_idx"]) for r in rows}) == len(rows) == r_cfg.k * r_cfg.limit
    assert len({r["seed"] for r in rows}) == len(rows), "two samples share a seed"

    s = json.loads(out.with_name(out.stem + ".summary.json").read_text())
    assert (s["rows"], s["questions"]) == (len(rows), len(problems))
    assert s["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / len(rows))
    assert set(s["per_arm"]) == set(arms)
    for name, st in s["per_arm"].items():
        mine = [r for r in rows if r["arm"] == name]
        assert set(st) == {"pulls", "mean_reward", "accuracy", "mean_s_wm"}
        assert st["pulls"] == len(mine) > 0, name  # the exploration floor reaches every arm
        assert st["accuracy"] == pytest.approx(sum(r["correct"] for r in mine) / len(mine))
        assert st["mean_reward"] == pytest.approx(sum(r["reward"] for r in mine) / len(mine))
        assert st["mean_s_wm"] == pytest.approx(sum(r["s_wm"] for r in mine) / len(mine))
    assert 0.0 < s["share_questions_mixed"] <= 1.0
    assert s["this_run"]["tokens"] == sum(r["num_tokens"] for r in rows)


def test_pairs_rows_join_back_to_rollouts(run):
    cfg, _ = run
    rollouts = {(r["question_id"], r["sample_idx"]): r for r in read_jsonl(cfg.path(cfg.rollouts.output))}
    out = cfg.path(cfg.prefs.output)
    pairs = read_jsonl(out)
    assert pairs, "no preference pairs (see the module docstring for why there should be)"
    types = Counter(p["pair_type"] for p in pairs)
    assert set(types) <= {"correctness", "coherence"} and types["correctness"] > 0
    for p in pairs:
        assert set(p) == PAIR_FIELDS, set(p) ^ PAIR_FIELDS
        for k in ("prompt", "chosen", "rejected"):
            assert isinstance(p[k], str) and p[k].strip()
        assert p["chosen"] != p["rejected"]
        chosen, rejected = rollouts[(p["question_id"], p["chosen_sample_idx"])], rollouts[(p["question_id"], p["rejected_sample_idx"])]
        for side, r in (("chosen", chosen), ("rejected", rejected)):
            assert p[side] == r["full_text"] and p[f"{side}_arm"] == r["arm"]
            assert (p[f"{side}_reward"], p[f"{side}_s_wm"]) == (r["reward"], r["s_wm"])
            assert r["finished"], "an unfinished trajectory made it into a pair"
        assert p["prompt"] == chosen["eval_prompt"]  # prefs.prompt_mode: eval
        if p["pair_type"] == "correctness":
            assert chosen["correct"] and not rejected["correct"]
        else:
            assert chosen["correct"] and rejected["correct"]
            assert p["chosen_s_wm"] - p["rejected_s_wm"] >= cfg.prefs.coherence_margin - 1e-9
    assert len({(p["prompt"], p["chosen"], p["rejected"]) for p in pairs}) == len(pairs)
    per_q = Counter(p["question_id"] for p in pairs if p["pair_type"] == "correctness")
    assert max(per_q.values()) <= cfg.prefs.max_correctness_pairs_per_question

    s = json.loads(out.with_suffix(".summary.json").read_text())
    assert s["pairs"] == len(pairs) and s["pairs_by_type"] == {t: types[t] for t in ("correctness", "coherence")}
    dpo = json.loads((cfg.path(cfg.dpo.output_dir) / "train_summary.json").read_text())
    assert dpo["pairs"] + dpo["dropped_too_long"] == len(pairs) and dpo["steps"] == cfg.dpo.max_steps


def test_rerun_skips_every_phase_and_touches_nothing(run):
    from looper_math.pipeline import run_pipeline

    cfg, _ = run
    before = file_state(Path(cfg.run_dir))
    result = run_pipeline(cfg)
    assert result["phases_run"] == []
    after = file_state(Path(cfg.run_dir))
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a rerun changed {changed[:5]}"


# --------------------------------------------------------------------------------------------- stale outputs

SUMMARIES = {"sft": "checkpoints/sft_lora/train_summary.json", "dpo": "checkpoints/dpo_lora/train_summary.json",
             "eval_base": "outputs/base_eval.summary.json", "eval_sft": "outputs/sft_eval.summary.json",
             "eval_dpo": "outputs/dpo_eval.summary.json", "rollouts": "data/rollouts.summary.json",
             "prefs": "data/preferences.summary.json"}


def test_every_summary_records_its_settings_fingerprint(run):
    from looper_math.config import fingerprint

    cfg, _ = run
    for phase, rel in SUMMARIES.items():
        assert json.loads(cfg.path(rel).read_text())["settings_fingerprint"] == fingerprint(cfg, phase), phase


def test_changed_setting_stops_before_any_work_naming_the_keys(run):
    from looper_math.pipeline import run_pipeline
    from looper_math.runio import StaleOutputError

    cfg, _ = run
    before = file_state(Path(cfg.run_dir))
    c = copy.deepcopy(cfg)
    c.rollouts.k = 4
    with pytest.raises(StaleOutputError) as e:
        run_pipeline(c)
    msg = str(e.value)
    assert msg.startswith("rollouts: ") and "rollouts.k 8 -> 4" in msg and "--rerun-changed" in msg and "\n" not in msg, msg
    c.task.answer_mode = "strict"  # the first phase it changes is the base-model eval
    with pytest.raises(StaleOutputError, match=r"^eval_base: settings changed since it ran: task.answer_mode 'flexible' -> 'strict'"):
        run_pipeline(c)
    assert file_state(Path(cfg.run_dir)) == before


def _copy_run(cfg, dst: Path):
    shutil.copytree(cfg.run_dir, dst)
    c = copy.deepcopy(cfg)
    c.run_dir = str(dst)
    return c


def test_truncated_output_is_reported_not_skipped(run, tmp_path):
    from looper_math.pipeline import run_pipeline
    from looper_math.runio import StaleOutputError

    cfg, _ = run
    c = _copy_run(cfg, tmp_path / "run")
    rollouts = c.path(c.rollouts.output)
    lines = rollouts.read_text().splitlines(keepends=True)
    rollouts.write_text("".join(lines[:-1]))
    with pytest.raises(StaleOutputError, match=rf"^rollouts: {rollouts} holds {len(lines) - 1} rows but rollouts.summary.json counts {len(lines)}"):
        run_pipeline(c)


def test_damaged_finished_rollouts_stop_the_run_and_rerun_changed_rebuilds_them(run, tmp_path):
    """A torn last line (the line count still matches) once made `run` say "complete, skipped"; a corrupt
    middle line made every phase skip and the report fail, with nothing that rebuilt the file."""
    from looper_math.layout import integrity_problem
    from looper_math.pipeline import run_pipeline
    from looper_math.runio import StaleOutputError

    cfg, _ = run
    c = _copy_run(cfg, tmp_path / "run")
    rollouts = c.path(c.rollouts.output)
    good = rollouts.read_bytes()
    n = good.count(b"\n")
    rollouts.write_bytes(good[:-15])
    with pytest.raises(StaleOutputError, match=rf"^rollouts: {rollouts}:{n}: invalid JSON \(JSONDecodeError, no newline: "
                                               rf"a torn last line\); rollouts.summary.json counts {n} rows; pass --rerun-changed"):
        run_pipeline(c)
    lines = good.split(b"\n")
    lines[2] = b"\x00" * len(lines[2])
    rollouts.write_bytes(b"\n".join(lines))
    with pytest.raises(StaleOutputError, match=rf"^rollouts: {rollouts}:3: invalid JSON"):
        run_pipeline(c)
    result = run_pipeline(c, rerun_changed=True)
    assert result["phases_run"] == ["rollouts", "prefs", "dpo", "eval_dpo"]
    assert integrity_problem(rollouts, "rows") is None and rollouts.read_bytes().count(b"\n") == n
    assert run_pipeline(c)["phases_run"] == []  # intact again: every phase skipped
    dpo = c.path(c.dpo.output_dir)
    assert json.loads((dpo / "train_summary.json").read_text())["adapter_sha256"] == hashlib.sha256(
        (dpo / "adapter_model.safetensors").read_bytes()).hexdigest()  # the rebuilt adapter's weights, recorded


def test_rerun_changed_reruns_the_changed_phases_then_all_current(run, tmp_path):
    from looper_math.config import fingerprint
    from looper_math.pipeline import run_pipeline

    cfg, _ = run
    c = _copy_run(cfg, tmp_path / "run")
    c.eval.limit = 4
    result = run_pipeline(c, rerun_changed=True)
    assert result["phases_run"] == ["eval_base", "eval_sft", "eval_dpo"]
    for phase in ("eval_base", "eval_sft", "eval_dpo"):
        s = json.loads(c.path(SUMMARIES[phase]).read_text())
        assert s["n"] == 4 and s["settings_fingerprint"] == fingerprint(c, phase) != fingerprint(cfg, phase)
    assert result["compare"]["n"] == 4
    assert run_pipeline(c)["phases_run"] == []


def test_training_prints_the_last_logged_loss_and_names_the_mean(run):
    cfg, result = run
    for phase, d in (("sft", cfg.sft.output_dir), ("dpo", cfg.dpo.output_dir)):
        summary = json.loads((cfg.path(d) / "train_summary.json").read_text())
        step, last = summary["losses"][-1]
        line = next(x for x in result["stdout"].splitlines() if x.startswith(f"{phase}: "))
        assert f"last logged loss {last:.4f} (step {step})" in line and "mean of" in line, line
        assert "final" not in line, line


def test_outputs_are_readable_as_the_umask_allows(run):
    import stat

    cfg, _ = run
    mask = os.umask(0)
    os.umask(mask)
    hidden = [str(p) for p in Path(cfg.run_dir).rglob("*")
              if stat.S_IMODE(p.stat().st_mode) & 0o044 != 0o044 & ~mask]
    assert not hidden, hidden[:5]


# --------------------------------------------------------------------------------------------- CLI

ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}


@pytest.mark.parametrize("module, command", [
    ("src.baseline_sft.train_sft_abel", "sft"),
    ("src.rl_training.collect_rollouts_abel", "rollouts"),
    ("src.rl_training.build_preferences_abel", "prefs"),
    ("src.rl_training.train_dpo_coherence", "dpo"),
    ("src.eval.eval_abel_sft_platinum", "eval"),
    ("src.eval.eval_abel_coherence_platinum", "eval"),
])
def test_original_command_aliases(module, command):
    r = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "--config" in r.stdout
    assert f"Usage: looper-math {command} [OPTIONS]" in r.stdout, r.stdout[:300]


def test_console_script_lists_config_keys():
    from looper_math.config import help_table

    exe = Path(sys.executable).with_name("looper-math")
    cmd = [str(exe)] if exe.exists() else [shutil.which("looper-math") or "looper-math"]
    r = subprocess.run(cmd + ["config", "--keys"], env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    listed = {line.split()[0] for line in r.stdout.splitlines() if line.strip()}
    keys = {k for k, _, _ in help_table()}
    assert keys <= listed, sorted(keys - listed)[:5]
    assert {"sft.learning_rate", "dpo.nll_weight", "rollouts.k", "task.answer_mode"} <= keys


def test_merged_adapter_generates_what_the_unmerged_one_does(run):
    """Eval and rollouts decode from the adapter merged into a private copy of the base (1.8x faster): in
    fp32 the greedy outputs equal base + unmerged LoRA, and the adapter files are not touched."""
    from peft import PeftModel

    from looper_math.engine.api import GenRequest, generate
    from looper_math.modeling import load_model_with_adapter, load_tokenizer, prepare_for_generation
    from looper_math.prompts import build_prompt

    cfg, _ = run
    adapter = cfg.path(cfg.sft.output_dir) / "adapter_model.safetensors"
    before = adapter.read_bytes()
    tok = load_tokenizer(cfg)
    reqs = [GenRequest(build_prompt(tok, cfg.model.prompt_format, q)) for q in
            ("Tom has 3 apples and buys 4 more. How many?", "A box holds 6 eggs. How many eggs are in 5 boxes?")]
    outs = {}
    for merge in (False, True):
        model, _ = load_model_with_adapter(cfg, "sft", "cpu", merge=merge)
        assert isinstance(model, PeftModel) != merge
        prepare_for_generation(model, tok, cfg.model.prompt_format)
        outs[merge] = generate(model, tok, reqs, max_new_tokens=24, engine="hf", progress=False)
    assert outs[True] == outs[False] and outs[True][0].num_tokens > 0
    base, _ = load_model_with_adapter(cfg, "none", "cpu")
    prepare_for_generation(base, tok, cfg.model.prompt_format)
    assert generate(base, tok, reqs, max_new_tokens=24, engine="hf", progress=False) != outs[True]  # the adapter matters
    assert adapter.read_bytes() == before
