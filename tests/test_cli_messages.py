"""Messages that must not mislead: the disk-full hint fits the command, missing and
corrupt files are named, ``--version`` exists, and the report's deltas carry their paired test."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from looper_math.cli import app


def _err(result) -> str:
    lines = [x for x in re.split(r"[\r\n]", result.stderr) if x.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    return lines[-1]


def test_version():
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and re.fullmatch(r"looper-math \d+\.\d+\.\d+\S*\n", r.stdout), r.stdout


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/data/rollouts.jsonl")


def test_disk_full_on_run_does_not_suggest_a_flag_run_lacks(monkeypatch):
    import looper_math.pipeline

    monkeypatch.setattr(looper_math.pipeline, "run_pipeline", _disk_full)
    r = CliRunner().invoke(app, ["run"])
    err = _err(r)
    assert r.exit_code == 2 and "/runs/x/data/rollouts.jsonl" in err
    assert "--resume" not in err and "rerun the same command" in err, err


def test_disk_full_on_a_resumable_phase_suggests_resume(monkeypatch):
    import looper_math.evaluate

    monkeypatch.setattr(looper_math.evaluate, "evaluate", _disk_full)
    r = CliRunner().invoke(app, ["eval", "--adapter", "none"])
    assert r.exit_code == 2 and "rerun with --resume" in _err(r)


def test_compare_missing_file_is_named_without_errno(tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps({"question_id": 1, "correct": True}) + "\n")
    r = CliRunner().invoke(app, ["compare", str(a), str(tmp_path / "missing.jsonl")])
    err = _err(r)
    assert r.exit_code == 2 and f"{tmp_path / 'missing.jsonl'}: file not found" in err and "Errno" not in err, err


def test_corrupt_summary_is_named(tmp_path):
    from test_compare_report import make_run_dir

    make_run_dir(tmp_path)
    bad = tmp_path / "outputs" / "abel_sft_platinum_eval.summary.json"
    bad.write_text('{"n": 100, "accuracy_str')
    r = CliRunner().invoke(app, ["report", str(tmp_path)])
    err = _err(r)
    assert r.exit_code == 2 and str(bad) in err and "invalid JSON" in err, err


def _eval_pair(root, sft: list[bool], dpo: list[bool]) -> str:
    from looper_math.report import build_report

    out = root / "outputs"
    out.mkdir(parents=True)
    ck = {name: root / "ck" / name for name in ("sft", "dpo")}
    ck["dpo"].mkdir(parents=True)  # the report compares a checkpoint with what its train summary says it came from
    (ck["dpo"] / "train_summary.json").write_text(json.dumps({"phase": "dpo", "init_adapter": str(ck["sft"])}))
    for name, correct in (("sft", sft), ("dpo", dpo)):
        (out / f"{name}_eval.jsonl").write_text("".join(
            json.dumps({"question_id": i, "correct": c, "checkpoint": str(ck[name])}) + "\n" for i, c in enumerate(correct)))
        acc = sum(correct) / len(correct)
        (out / f"{name}_eval.summary.json").write_text(json.dumps(
            {"accuracy_strict": acc, "accuracy_flexible": acc, "ci95_strict": [0.0, 1.0], "n": len(correct), "checkpoint": str(ck[name])}))
    return build_report(root).read_text()


def test_report_zero_delta_is_not_a_gain(tmp_path):
    sft = [True] * 5 + [False] * 5 + [True] * 40 + [False] * 50
    dpo = [False] * 5 + [True] * 5 + [True] * 40 + [False] * 50  # 5 flips each way: +0.0, p = 1
    page = _eval_pair(tmp_path, sft, dpo)
    span = re.search(r'<div class="(\w+)">([^<]*pts vs sft[^<]*)</div>', page)
    assert span and span.group(1) == "flat", span and span.group(0)
    assert "+0.0 pts vs sft (parent), McNemar p = 1 (not significant)" in span.group(2), span.group(2)


def test_report_small_gain_shows_p_and_not_significant(tmp_path):
    sft = [True] * 50 + [False] * 50
    dpo = [True] * 52 + [False] * 48  # 2 discordant pairs, both to dpo: p = 0.5
    page = _eval_pair(tmp_path, sft, dpo)
    span = re.search(r'<div class="(\w+)">([^<]*pts vs sft[^<]*)</div>', page)
    assert span and span.group(1) == "flat" and "+2.0 pts vs sft (parent), McNemar p = 0.5 (not significant)" in span.group(2), span.group(0)


def test_report_significant_gain_is_green(tmp_path):
    sft = [True] * 40 + [False] * 60
    dpo = [True] * 52 + [False] * 48  # 12 discordant, all to dpo: p = 2 / 2**12
    page = _eval_pair(tmp_path, sft, dpo)
    span = re.search(r'<div class="(\w+)">([^<]*pts vs sft[^<]*)</div>', page)
    assert span and span.group(1) == "up" and "McNemar p = 0.000488 (significant)" in span.group(2), span.group(0)


def test_report_pairs_evals_of_the_same_split_only(tmp_path):
    """A run with dev and test evaluations (bench/learning.sh) used to stop the report: the dev and test
    files share no question ids, and each card was paired with the card before it."""
    from looper_math.report import build_report

    out = tmp_path / "outputs"
    out.mkdir(parents=True)
    for name, split, ids, correct in (("base_dev", "dev", range(0, 100), 30), ("base_test", "test", range(100, 300), 50),
                                      ("sft_dev", "dev", range(0, 100), 40), ("sft_test", "test", range(100, 300), 80)):
        ckpt = "base:m" if name.startswith("base") else "/ck/sft"
        (out / f"{name}_eval.jsonl").write_text("".join(
            json.dumps({"question_id": i, "correct": j < correct, "checkpoint": ckpt}) + "\n" for j, i in enumerate(ids)))
        acc = correct / len(ids)
        (out / f"{name}_eval.summary.json").write_text(json.dumps(
            {"accuracy_strict": acc, "accuracy_flexible": acc, "ci95_strict": [0.0, 1.0], "n": len(ids), "checkpoint": ckpt,
             "split": split}))
    page = build_report(tmp_path).read_text()
    assert "+10.0 pts vs base, McNemar p = 0.00195" in page and "+15.0 pts vs base, McNemar p = " in page, page


def test_atomic_writes_respect_the_umask(tmp_path):
    import os
    import stat

    from looper_math.runio import atomic_write_text, replace_dir

    old = os.umask(0o022)
    try:
        f = atomic_write_text(tmp_path / "report.html", "x")
        d = tmp_path / "tmpdir"
        import tempfile

        d = Path(tempfile.mkdtemp(dir=tmp_path))
        replace_dir(d, tmp_path / "adapter")
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "adapter").stat().st_mode) == 0o755


# --------------------------------------------------------------------------- what a plain pytest and the CLI say


def _flat(text: str) -> str:
    """rich's help boxes as plain words (the box characters and line wraps removed)."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_convert_gguf_missing_file_is_one_line(tmp_path):
    r = CliRunner().invoke(app, ["convert-gguf", str(tmp_path), "model.gguf", str(tmp_path / "out")])
    assert r.exit_code == 2 and _err(r) == f"error: {tmp_path / 'model.gguf'}: GGUF file not found", r.stderr
    r = CliRunner().invoke(app, ["convert-gguf", str(tmp_path / "nope"), "model.gguf", str(tmp_path / "out")])
    assert r.exit_code == 2 and _err(r) == f"error: {tmp_path / 'nope'}: folder not found", r.stderr
    assert not (tmp_path / "out").exists()


def test_convert_gguf_checks_the_magic(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"PK\x03\x04 a zip, not a GGUF file")
    r = CliRunner().invoke(app, ["convert-gguf", str(tmp_path), "model.gguf", str(tmp_path / "out")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert _err(r) == f"error: {tmp_path / 'model.gguf'}: not a GGUF file (starts with b'PK\\x03\\x04', expected b'GGUF')", r.stderr


def test_convert_gguf_refuses_to_replace_an_output(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")  # the magic passes; DST is refused before loading
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text("{}")
    r = CliRunner().invoke(app, ["convert-gguf", str(tmp_path), "model.gguf", str(tmp_path / "out")])
    assert r.exit_code == 2 and _err(r) == f"error: {tmp_path / 'out'} already exists: pass --overwrite to replace it", r.stderr
    assert (tmp_path / "out" / "config.json").read_text() == "{}"


@pytest.mark.parametrize("argv", [["compare", "--config", "c.yaml", "a.jsonl", "b.jsonl"],
                                  ["compare", "a.jsonl", "b.jsonl", "--set", "eval.limit=3"],
                                  ["merge", "out.jsonl", "--kind", "eval", "--shards", "2", "-c", "c.yaml"],
                                  ["convert-gguf", "src", "m.gguf", "dst", "--config", "c.yaml"]])
def test_commands_without_a_config_say_so(argv):
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 2 and re.fullmatch(rf"error: `looper-math {argv[0]}` takes no --config or --set: it reads only .+", _err(r)), r.stderr


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("module, name, argv, how", [
    ("evaluate", "evaluate", ["eval", "--adapter", "none"], "to continue, rerun the same command with --resume"),
    ("rollouts", "collect_rollouts", ["rollouts"], "to continue, rerun the same command with --resume"),
    ("dpo", "train_dpo", ["dpo"], "to continue, rerun the same command with --resume"),
    ("grpo", "train_grpo", ["grpo"], "to continue, rerun the same command with --resume"),
    ("pipeline", "run_pipeline", ["run"], "to continue, rerun the same command (it skips finished phases and resumes the partial one)"),
    ("preferences", "run_prefs", ["prefs"], "rerun the same command"),
])
def test_ctrl_c_exits_130_saying_what_is_kept_and_how_to_continue(monkeypatch, module, name, argv, how):
    import importlib

    monkeypatch.setattr(importlib.import_module(f"looper_math.{module}"), name, _interrupt)
    r = CliRunner().invoke(app, argv)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.exit_code == 130 and "Traceback" not in r.output, (r.exit_code, r.output)
    assert lines[-1].startswith("interrupted") and lines[-1].endswith(how), lines
    if argv[0] != "prefs":
        assert "kept" in lines[-1]
    if argv[0] in ("run", "prefs"):
        assert "--resume" not in lines[-1]  # neither command has the flag


def test_ctrl_c_with_debug_keeps_the_traceback(monkeypatch):
    import looper_math.evaluate

    monkeypatch.setattr(looper_math.evaluate, "evaluate", _interrupt)
    r = CliRunner().invoke(app, ["--debug", "eval", "--adapter", "none"])
    assert r.exit_code == 130 and "Traceback" in r.stderr and "in _interrupt" in r.stderr, r.stderr
    assert [x for x in r.stderr.splitlines() if x.strip()][-1].startswith("interrupted: ")


@pytest.mark.parametrize("argv, says, not_says", [
    (["grpo", "--help"], "with the grpo.reward reward (default correctness; regime_w | regime_w_gated)", "with the Regime W reward"),
    (["eval", "--help"], "sft | dpo | grpo | none (base model) | path to an adapter folder", None),
    (["run", "--help"], "(policy: dpo) or GRPO -> eval (policy: grpo)", "five phases"),
])
def test_help_says_what_the_code_does(argv, says, not_says):
    r = CliRunner().invoke(app, argv, env={"COLUMNS": "200"})
    text = _flat(r.stdout)
    assert r.exit_code == 0 and says in text, text
    assert not_says is None or not_says not in text


def test_grpo_help_names_the_configs_default_reward():
    from looper_math.config import GRPOConfig

    r = CliRunner().invoke(app, ["grpo", "--help"], env={"COLUMNS": "200"})
    assert f"(default {GRPOConfig().reward};" in _flat(r.stdout)


def test_original_command_alias_help_names_abel7b():
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb", "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run([sys.executable, "-m", "src.eval.eval_abel_sft_platinum", "--help"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    text = _flat(r.stdout)
    assert r.returncode == 0 and "--config -c <path> YAML config (default for this original command: the embedded configs/abel7b.yaml)" in text, text
    assert "demo" not in text


def test_config_keys_shows_what_bare_commands_use():
    import yaml

    from looper_math.config import help_table

    r = CliRunner().invoke(app, ["config", "--keys"])
    lines = r.stdout.splitlines()
    assert r.exit_code == 0 and lines[0].startswith("# key, its value in the embedded demo config"), lines[0]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {k for k, _, _ in help_table()}
    assert rows["model.name_or_path"].split()[1] == "'tiny'" and rows["model.name_or_path"].endswith("[built-in: 'GAIR/Abel-7B-002']")
    assert rows["rollouts.k"].split()[1] == "8" and "[built-in" not in rows["rollouts.k"]  # demo.yaml sets the built-in value
    demo = yaml.safe_load(CliRunner().invoke(app, ["config"]).stdout)  # plain YAML, no SMOKE RUN banner in it
    assert demo["model"]["name_or_path"] == "tiny" and demo["run_dir"] == "runs/demo"


def test_config_keys_of_another_config():
    from conftest import REPO

    r = CliRunner().invoke(app, ["config", "--keys", "-c", str(REPO / "configs" / "abel7b.yaml")])
    lines = r.stdout.splitlines()
    assert r.exit_code == 0 and lines[0].startswith(f"# key, its value in {REPO / 'configs' / 'abel7b.yaml'}, help"), lines[0]
    row = next(x for x in lines if x.startswith("policy "))
    assert row.split()[1] == "'grpo'" and row.endswith("[built-in: 'dpo']"), row


def test_run_says_1_phase_not_1_phases(monkeypatch, tmp_path, capsys):
    from types import SimpleNamespace

    import looper_math.compare
    import looper_math.report
    from conftest import REPO
    from looper_math import pipeline
    from looper_math.config import load_config

    cfg = load_config(REPO / "configs" / "demo.yaml", [f"run_dir={tmp_path}"])
    monkeypatch.setattr(pipeline, "phases", lambda *a, **k: [pipeline.Phase("sft", SimpleNamespace(complete=False), lambda: None)])
    monkeypatch.setattr(looper_math.compare, "compare", lambda a, b: {})
    monkeypatch.setattr(looper_math.compare, "format_compare", lambda result: "compared")
    monkeypatch.setattr(looper_math.report, "build_report", lambda layout: tmp_path / "report" / "report.html")
    pipeline.run_pipeline(cfg)
    assert re.search(r"^run: 1 phase ran, \d+s$", capsys.readouterr().out, re.M)


def test_known_future_warnings_are_silenced_and_others_kept(tmp_path):
    import warnings

    from transformers import TrainingArguments

    def emitted() -> list[str]:
        with warnings.catch_warnings(record=True) as rec:
            TrainingArguments(output_dir=str(tmp_path), gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False},
                              use_cpu=True, report_to="none")
            warnings.warn("an unrelated FutureWarning", FutureWarning)
        return [str(w.message) for w in rec if w.category is FutureWarning]

    before = emitted()
    if not any("gradient_checkpointing" in m for m in before):
        pytest.skip("this transformers no longer warns about gradient_checkpointing")
    assert CliRunner().invoke(app, ["config", "--keys"]).exit_code == 0  # every command installs the filters at start
    after = emitted()
    assert after == ["an unrelated FutureWarning"], after


def test_pytest_says_why_tests_are_deselected_and_skipped(tmp_path):
    """A plain `pytest` deselects the slow and gpu tiers (pyproject.toml addopts) and skips the GSM8K checks
    without the data; the summary says how many, why, and how to run them."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "LOOPER_GSM8K_DIR": str(tmp_path), "PYTHONPATH": str(REPO / "src")}  # an empty dir: no GSM8K
    r = subprocess.run([sys.executable, "-m", "pytest", "tests/test_calculator.py", "-k", "10k or all_gsm8k", "-p", "no:cacheprovider"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]
    assert ("deselected: 1 slow (the default -m 'not gpu and not slow' of pyproject.toml's addopts leaves them out); "
            "run them with: pytest -m slow (long CPU sweeps)") in r.stdout, r.stdout[-3000:]
    assert re.search(r"SKIPPED \[1\] tests/test_calculator.py:\d+: GSM8K data not found \(set LOOPER_GSM8K_DIR\)", r.stdout), r.stdout[-3000:]
