"""A finished output is trusted only while it is what its summary recorded.

Every summary records its output's row count and sha256 (``layout.write_summary``); ``layout.integrity_problem``
finds a torn last line, a corrupt middle line, a lost row, an edited file or a missing adapter weights file
and names it with the line. Before this, the row count alone was checked: a torn last line still counts
as a line, so ``run`` said "complete, skipped" and the report showed one trajectory fewer; a corrupt middle
line made the report fail with nothing able to rebuild the file. The end-to-end case (``run`` stops,
``--rerun-changed`` rebuilds) is tests/test_pipeline_smoke.py::test_damaged_finished_rollouts_stop_the_run_and_rerun_changed_rebuilds_them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from looper_math.cli import app
from looper_math.layout import REBUILD, Output, check_intact, integrity_problem, summary_of, write_summary
from looper_math.runio import DataError, JsonlAppender

REPO = Path(__file__).resolve().parents[1]


def rows(n: int) -> list[dict]:
    return [{"question_id": f"q{i}", "sample_idx": 0, "text": f"answer {i}" * 3} for i in range(n)]


def finished(path: Path, n: int = 4, count_key: str = "rows") -> Path:
    """A finished JSONL output of n rows and its summary, written as the phases write them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows(n)))
    write_summary(path, {count_key: n})
    return path


def test_summary_records_row_count_and_sha256_of_the_output(tmp_path):
    out = finished(tmp_path / "data" / "rollouts.jsonl")
    s = json.loads(summary_of(out).read_text())
    assert s == {"rows": 4, "output_rows": 4, "output_sha256": hashlib.sha256(out.read_bytes()).hexdigest()}
    assert integrity_problem(out, "rows") is None
    check_intact(out, "rows")  # an intact file passes


def test_torn_last_line_is_found_although_the_line_count_matches(tmp_path):
    out = finished(tmp_path / "rollouts.jsonl")
    out.write_bytes(out.read_bytes()[:-12])  # the last row lost its end (and its newline): still 4 lines
    problem = integrity_problem(out, "rows")
    assert problem == (f"{out}:4: invalid JSON (JSONDecodeError, no newline: a torn last line); "
                       "rollouts.summary.json counts 4 rows")
    with pytest.raises(DataError) as e:
        check_intact(out, "rows")
    assert str(e.value) == f"{problem}; {REBUILD}" and "--rerun-changed" in str(e.value) and "\n" not in str(e.value)


def test_corrupt_middle_line_is_named(tmp_path):
    out = finished(tmp_path / "rollouts.jsonl")
    lines = out.read_bytes().split(b"\n")
    lines[1] = b"\x00" * len(lines[1])  # a block of zeros, as a lost disk write leaves: same size, same line count
    out.write_bytes(b"\n".join(lines))
    assert integrity_problem(out, "rows").startswith(f"{out}:2: invalid JSON (")


def test_lost_row_and_edited_row_are_found(tmp_path):
    out = finished(tmp_path / "rollouts.jsonl")
    good = out.read_text()
    out.write_text("".join(good.splitlines(keepends=True)[:-1]))
    assert integrity_problem(out, "rows") == f"{out} holds 3 rows but rollouts.summary.json counts 4"
    out.write_text(good.replace("answer 2", "answer 7"))  # every line parses, same count: only the checksum sees it
    assert integrity_problem(out, "rows") == (f"{out} changed after rollouts.summary.json was written "
                                              "(4 rows as counted, but its sha256 differs)")
    out.write_text(good)
    assert integrity_problem(out, "rows") is None


def test_summary_of_an_earlier_version_checks_rows_line_by_line(tmp_path):
    """No output_sha256 (a run made before it existed): still accepted when intact, a damaged line still caught."""
    out = tmp_path / "eval.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows(3)))
    summary_of(out).write_text(json.dumps({"n": 3}))
    assert integrity_problem(out, "n") is None
    out.write_text(out.read_text()[:-5])
    assert integrity_problem(out, "n").startswith(f"{out}:3: invalid JSON")
    out.write_text("".join(json.dumps(r) + "\n" for r in rows(2)))
    assert integrity_problem(out, "n") == f"{out} holds 2 rows but eval.summary.json counts 3"


def test_missing_or_damaged_summary_and_unfinished_output(tmp_path):
    out = tmp_path / "rollouts.jsonl"
    out.write_text('{"question_id": "q0"}\n{"question_id": "q1", "te')  # being written: no summary yet
    assert integrity_problem(out, "rows") is None  # not finished: its reader decides (resume cuts the torn tail)
    summary_of(out).write_text('{"rows": 2')
    assert integrity_problem(out, "rows").startswith(f"{summary_of(out)}: invalid JSON")
    done = finished(tmp_path / "other.jsonl")
    done.unlink()
    assert integrity_problem(done, "rows") == f"{done} is missing but other.summary.json says it is complete"


def test_adapter_weights_missing_or_changed(tmp_path):
    ad = tmp_path / "checkpoints" / "sft_lora"
    ad.mkdir(parents=True)
    with pytest.raises(DataError, match="adapter_model.safetensors: missing after the final save"):
        write_summary(ad, {"phase": "sft"})
    (ad / "adapter_model.safetensors").write_bytes(b"weights" * 100)
    s = write_summary(ad, {"phase": "sft"})
    assert s["adapter_sha256"] == hashlib.sha256(b"weights" * 100).hexdigest()
    assert json.loads((ad / "train_summary.json").read_text()) == s
    assert Output(None, "sft", ad).complete and integrity_problem(ad) is None
    (ad / "adapter_model.safetensors").write_bytes(b"weightz" * 100)
    assert integrity_problem(ad) == f"{ad / 'adapter_model.safetensors'} differs from the adapter train_summary.json recorded (sha256)"
    (ad / "adapter_model.safetensors").unlink()
    assert integrity_problem(ad) == f"{ad / 'adapter_model.safetensors'} is missing but train_summary.json says the adapter is complete"
    (ad / "train_summary.json").write_text('{"phase": "sft"}')  # an earlier version's summary: no checksum
    (ad / "adapter_model.safetensors").write_bytes(b"x")
    assert integrity_problem(ad) is None


def test_resume_refuses_a_corrupt_middle_line_with_the_way_out(tmp_path):
    out = finished(tmp_path / "rollouts.jsonl")
    lines = out.read_text().splitlines(keepends=True)
    lines[1] = "garbage\n"
    out.write_text("".join(lines))
    with pytest.raises(DataError, match=rf"^{out}:2: invalid JSON .*; only a torn last line is repaired on resume: "
                                        r"rebuild the file with --overwrite$"):
        JsonlAppender(out, ("question_id", "sample_idx"), "resume")
    assert out.read_text() == "".join(lines)  # refused: nothing dropped


def test_prefs_refuse_damaged_finished_rollouts(tmp_path):
    from looper_math.config import load_config
    from looper_math.preferences import run_prefs

    cfg = load_config(REPO / "configs" / "demo.yaml", [f"run_dir={tmp_path}"])
    out = finished(tmp_path / "data" / "rollouts.jsonl")
    out.write_bytes(out.read_bytes()[:-3])
    with pytest.raises(DataError, match=rf"^{out}:4: invalid JSON .*torn last line.*; rebuild it with `looper-math run --rerun-changed`"):
        run_prefs(cfg, out, tmp_path / "data" / "preferences.jsonl", overwrite=False)
    assert not (tmp_path / "data" / "preferences.jsonl").exists()


def test_report_refuses_damaged_finished_rollouts_rc_2(tmp_path):
    """The issue's case: the report showed 383 trajectories of a 384-row file whose last line was torn."""
    from test_compare_report import make_run_dir

    make_run_dir(tmp_path)
    out = tmp_path / "data" / "abel_regime_w_rollouts.jsonl"
    n = len(out.read_text().splitlines())
    write_summary(out, {"rows": n})
    r = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 0, r.output  # intact
    assert f"<b>{n}</b> trajectories" in (tmp_path / "report" / "report.html").read_text()
    out.write_bytes(out.read_bytes()[:-20])
    r = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 2
    assert f"error: {out}:{n}: invalid JSON" in r.output and "torn last line" in r.output and "--rerun-changed" in r.output
