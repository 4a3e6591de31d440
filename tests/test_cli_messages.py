"""Messages that must not mislead (issue 11, item 5): the disk-full hint fits the command, missing and
corrupt files are named, ``--version`` exists, and the report's deltas carry their paired test."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

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
    for name, correct in (("sft", sft), ("dpo", dpo)):
        (out / f"{name}_eval.jsonl").write_text("".join(
            json.dumps({"question_id": i, "correct": c, "checkpoint": f"/ck/{name}"}) + "\n" for i, c in enumerate(correct)))
        acc = sum(correct) / len(correct)
        (out / f"{name}_eval.summary.json").write_text(json.dumps(
            {"accuracy_strict": acc, "accuracy_flexible": acc, "ci95_strict": [0.0, 1.0], "n": len(correct), "checkpoint": f"/ck/{name}"}))
    return build_report(root).read_text()


def test_report_zero_delta_is_not_a_gain(tmp_path):
    sft = [True] * 5 + [False] * 5 + [True] * 40 + [False] * 50
    dpo = [False] * 5 + [True] * 5 + [True] * 40 + [False] * 50  # 5 flips each way: +0.0, p = 1
    page = _eval_pair(tmp_path, sft, dpo)
    span = re.search(r'<span class="(\w+)">([^<]*pts vs sft[^<]*)</span>', page)
    assert span and span.group(1) == "flat", span and span.group(0)
    assert "+0.0 pts vs sft, McNemar p = 1 (not significant)" in span.group(2), span.group(2)


def test_report_small_gain_shows_p_and_not_significant(tmp_path):
    sft = [True] * 50 + [False] * 50
    dpo = [True] * 52 + [False] * 48  # 2 discordant pairs, both to dpo: p = 0.5
    page = _eval_pair(tmp_path, sft, dpo)
    span = re.search(r'<span class="(\w+)">([^<]*pts vs sft[^<]*)</span>', page)
    assert span and span.group(1) == "flat" and "+2.0 pts vs sft, McNemar p = 0.5 (not significant)" in span.group(2), span.group(0)


def test_report_significant_gain_is_green(tmp_path):
    sft = [True] * 40 + [False] * 60
    dpo = [True] * 52 + [False] * 48  # 12 discordant, all to dpo: p = 2 / 2**12
    page = _eval_pair(tmp_path, sft, dpo)
    span = re.search(r'<span class="(\w+)">([^<]*pts vs sft[^<]*)</span>', page)
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
