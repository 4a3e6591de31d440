"""Row formats (schemas.py): one definition each, one reader, quoted by the README, used by writers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from looper_math.runio import DataError
from looper_math.schemas import EvalRow, PairRow, RolloutRow, fields, read_rows, required

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_fields(title: str) -> set[str]:
    text = README.read_text()
    section = text[text.index("## JSONL schemas"):text.index("## Architecture")]
    para = section[section.index(f"**{title}**"):]
    para = para[:para.index("\n\n")] if "\n\n" in para else para
    para = para.split("Summary (")[0]  # the eval summary's keys are not row fields
    names = set()
    for code in re.findall(r"`([^`]*)`", para):
        names |= {t for t in re.split(r"[,\s()]+", code) if re.fullmatch(r"[a-z_]+", t)}
    return names


@pytest.mark.parametrize("title, schema", [("Rollouts", RolloutRow), ("Preferences", PairRow), ("Eval", EvalRow)])
def test_readme_quotes_each_row_format(title, schema):
    assert _readme_fields(title) == set(fields(schema))


def test_the_reader_names_file_line_and_field(tmp_path):
    p = tmp_path / "pairs.jsonl"
    p.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": ""}) + "\n")
    with pytest.raises(DataError, match=r"pairs.jsonl:1: field 'rejected' must be a non-empty string"):
        list(read_rows(p, PairRow, ("prompt", "chosen", "rejected"), nonempty=("chosen", "rejected")))
    p.write_text(json.dumps({"question_id": "q", "correct": 1}) + "\n")
    with pytest.raises(DataError, match=r"pairs.jsonl:1: field 'correct' must be true/false, got 1"):
        list(read_rows(p, EvalRow, ("question_id", "correct")))
    with pytest.raises(DataError, match=r"missing field 'question'"):
        list(read_rows(p, EvalRow))  # default: every required field


def test_fields_added_later_are_not_required():
    assert "s_cf_free" not in required(RolloutRow) and "n_unparsed" not in required(RolloutRow)
    assert set(required(EvalRow)) == set(fields(EvalRow)) - {"hedged"}  # committed evals predate `hedged`


def test_eval_rows_are_written_with_exactly_the_schema_fields():
    from looper_math.evaluate import EVAL_FIELDS
    from looper_math.task import GSM8K

    assert EVAL_FIELDS == fields(EvalRow)
    grade = GSM8K().grade("#### 4", "4").fields()
    assert set(grade) <= set(EVAL_FIELDS)
