"""benchmarks/svamp: the committed file is what README.md and convert.py say, loads with SVAMP's ids,
and `looper-math eval` runs on it (tiny model, a few rows)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re

import pytest

from conftest import REPO
from looper_math.answers import gold_answer
from looper_math.data import load_problems
from looper_math.runio import DataError

SVAMP = REPO / "benchmarks" / "svamp"


def _convert_module():
    spec = importlib.util.spec_from_file_location("svamp_convert", SVAMP / "convert.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _readme_sha(name: str) -> str:
    """The sha256 README.md states for ``name`` (the first 64-hex value after its mention)."""
    text = (SVAMP / "README.md").read_text()
    m = re.search(rf"sha256 of `{re.escape(name)}`[^`]*`([0-9a-f]{{64}})`", text)
    assert m, f"README.md states no sha256 for {name}"
    return m.group(1)


def test_committed_file_matches_readme_and_convert():
    raw, out = (SVAMP / "SVAMP.json").read_bytes(), (SVAMP / "test.jsonl").read_bytes()
    conv = _convert_module()
    assert hashlib.sha256(raw).hexdigest() == conv.RAW_SHA256 == _readme_sha("SVAMP.json")
    assert hashlib.sha256(out).hexdigest() == conv.OUT_SHA256 == _readme_sha("test.jsonl")
    assert conv.convert(raw) == out  # convert.py rebuilds the committed file byte for byte
    assert conv.main(["--check"]) == 0


def test_rows_ids_and_answers():
    rows = [json.loads(line) for line in (SVAMP / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 1000
    assert [r["question_id"] for r in rows] == [f"svamp-chal-{i}" for i in range(1, 1001)]
    raw = json.loads((SVAMP / "SVAMP.json").read_text())
    for r, src in zip(rows, raw):
        assert re.fullmatch(r"#### -?\d+", r["answer"]), r
        assert float(gold_answer(r["answer"])) == src["Answer"]
        assert r["question"] == f"{src['Body'].strip()} {src['Question'].strip()}"
    # hand-checked rows: chal-1 (76 - 25) and chal-71 (1357 * 223 * 73)
    assert rows[0]["answer"] == "#### 51" and rows[70]["answer"] == "#### 22090603"


def test_loader_keeps_svamp_ids():
    probs = load_problems(str(SVAMP / "test.jsonl"), split="test")
    assert len(probs) == 1000 and len({p.question_id for p in probs}) == 1000
    assert (probs[0].question_id, probs[0].gold) == ("svamp-chal-1", "51")
    assert (probs[-1].question_id, probs[-1].gold) == ("svamp-chal-1000", "11")


def test_loader_question_id_rules(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text('{"question_id": "a", "question": "q1", "answer": "#### 1"}\n'
                 '{"question": "q2", "answer": "#### 2"}\n')
    ids = [p.question_id for p in load_problems(str(f), split="test")]
    assert ids[0] == "a" and ids[1].startswith("test-")  # without the field: the derived id, as before
    f.write_text('{"question_id": "a", "question": "q1", "answer": "#### 1"}\n'
                 '{"question_id": "a", "question": "q2", "answer": "#### 2"}\n')
    with pytest.raises(DataError, match=r"t\.jsonl:2: duplicate question_id 'a'"):
        load_problems(str(f), split="test")
    f.write_text('{"question_id": 7, "question": "q1", "answer": "#### 1"}\n')
    with pytest.raises(DataError, match=r"t\.jsonl:1: field 'question_id' must be a string of letters"):
        load_problems(str(f), split="test")
    f.write_text('{"question_id": "a/../b", "question": "q1", "answer": "#### 1"}\n')
    with pytest.raises(DataError, match=r"t\.jsonl:1: field 'question_id' must be a string of letters"):
        load_problems(str(f), split="test")


def test_eval_on_svamp_tiny_model(smoke_cfg, tmp_path):
    from looper_math.evaluate import evaluate
    from looper_math.runio import read_jsonl

    cfg = smoke_cfg(f"data.test={SVAMP / 'test.jsonl'}", "eval.limit=3", "eval.max_new_tokens=8")
    out = tmp_path / "outputs" / "svamp_base_eval.jsonl"
    summary = evaluate(cfg, "none", output=out)
    rows = list(read_jsonl(out))
    assert [r["question_id"] for r in rows] == ["svamp-chal-1", "svamp-chal-2", "svamp-chal-3"]
    assert [r["gold"] for r in rows] == ["51", "1", "17"]
    assert summary["n"] == 3 and summary["data"] == str(SVAMP / "test.jsonl")
