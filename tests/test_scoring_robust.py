"""Regime W scoring never raises: real model output, arbitrary text and mutated GSM8K solutions.

Default tier: a few hundred hypothesis cases; ``-m slow``: 10k+ per property."""

from __future__ import annotations

import json
import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import gsm8k_dir
from looper_math.regime_w import scoring
from looper_math.regime_w.scoring import extract_steps, question_numbers, score_group

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# A real 0.5B model's solution to a GSM8K test question (money with a space as thousands separator):
# it raised ValueError in scoring._number and ended the whole rollouts run.
TAN_Q = (
    "Mr. Tan sold his house for $400 000. He paid $250 000 for it. How much profit did he make?"
)
TAN = "Mr. Tan's profit is $400 000 - $250 000 = $<<400-250=150 000>>150 000.\n#### 150000"
TAN_REF = "He made 400000-250000=<<400000-250000=150000>>150000 dollars.\n#### 150000"


def _check_rows(rows: list[dict], n: int) -> None:
    assert len(rows) == n
    for r in rows:
        for k in ("s_end", "s_path", "s_cf", "s_cf_free", "s_wm"):
            assert isinstance(r[k], float) and 0.0 <= r[k] <= 1.0, (k, r)
        assert isinstance(r["n_unparsed"], int) and r["n_unparsed"] >= 0


def test_space_thousands_from_a_real_model_does_not_crash():
    rows = score_group(TAN_Q, [TAN, TAN], reference=TAN_REF)
    _check_rows(rows, 2)
    # "150 000" is read as 150000, which the annotation's 400-250 does not compute
    (annotation,) = extract_steps(TAN)
    assert (annotation.operands, annotation.stated, annotation.valid) == ((400.0, 250.0), 150000.0, False)
    assert extract_steps("$400 000 - $250 000 = $150 000.")[0].operands == (400000.0, 250000.0)
    assert question_numbers(TAN_Q) == [(400000.0, False), (250000.0, False)]


@pytest.mark.parametrize(
    "written, value",
    [("150 000", 150000.0), ("1 234.5", 1234.5), ("1,234", 1234.0), ("1.234,5", None), ("1 234,5", None),
     ("1,2345", None), ("150\u00a0000", 150000.0), ("2.5", 2.5)],
)
def test_number_formats_are_read_whole_or_skipped(written, value):
    """Never read as its pieces (1.234 and 5, or 1 and 234): the right value, or no number at all."""
    steps = extract_steps(f"The cost is {written} + 10 = 99999 dollars.")
    got = question_numbers(f"A house costs ${written} today.")
    if value is None:
        assert steps == [] and got == []
    else:
        assert [s.operands for s in steps] == [(value, 10.0)]
        assert got == [(value, False)]


def test_unparsed_calculations_are_counted_and_lower_validity():
    text = "3 * 4 = 12\n12 - 2 = 10\n1.234,5 + 2 = 1236,5\nand <<2 apples=2>>\n#### 10"
    steps, unparsed = scoring.read_steps(text)
    assert len(steps) == 2 and unparsed == 2
    (row,) = score_group("Tom has 3 boxes of 4 pencils and gives away 2.", [text])
    assert row["n_unparsed"] == 2
    assert row["path_validity"] == pytest.approx(2 / 4)  # 2 confirmed of 2 steps + 2 unread calculations
    # the GSM8K calculator format "3*4=<<3*4=12>>12" is one calculation, not an unread "="
    assert scoring.read_steps("Tom has 3*4=<<3*4=12>>12 pencils, 12-2=$<<12-2=10>>10 left.")[1] == 0


# ----------------------------------------------------------------------------- property tests

_ALPHABET = list("0123456789") * 3 + list("+-*/x×÷−=$,.%() <>\n\t#€£abcdefghijklmnop") + ["<<", ">>", "####", "\u00a0"]
_TEXT = st.one_of(st.text(), st.lists(st.sampled_from(_ALPHABET), max_size=150).map("".join))


def _arbitrary(question: str, texts: list[str], reference: str | None) -> None:
    rows = score_group(question, texts, reference=reference)
    _check_rows(rows, len(texts))
    assert score_group(question, texts, reference=reference) == rows


@FAST
@given(question=_TEXT, texts=st.lists(_TEXT, max_size=4), reference=st.none() | _TEXT)
def test_arbitrary_text_never_raises(question, texts, reference):
    _arbitrary(question, texts, reference)


@pytest.mark.slow
@SLOW
@given(question=_TEXT, texts=st.lists(_TEXT, max_size=4), reference=st.none() | _TEXT)
def test_arbitrary_text_never_raises_slow(question, texts, reference):
    _arbitrary(question, texts, reference)


def _gsm8k_rows() -> list[dict]:
    d = gsm8k_dir()
    if d is None:
        return []
    return [json.loads(line) for line in (d / "train.jsonl").read_text().splitlines()[:2000] if line.strip()]


_ROWS = _gsm8k_rows()
_NUMBER = re.compile(r"\d[\d,.]*")


def _reformat(m: re.Match, style: int, rnd: int) -> str:
    """One number of a solution rewritten the way models write numbers (or mangle them)."""
    s = m.group()
    digits = s.replace(",", "")
    try:
        v = float(digits)
    except ValueError:
        return s
    whole = f"{int(v):,}" if math.isfinite(v) and v < 1e18 else digits
    return [
        whole.replace(",", " "),  # 150 000
        whole.replace(",", "\u00a0"),  # no-break space
        whole.replace(",", ".") + ",5",  # 1.234,5
        whole.replace(",", " ") + ".5",  # 1 234.5
        digits + "0" * (rnd % 4),  # off by a power of ten
        str(int(digits.split(".")[0] or 0) + rnd % 3 - 1),  # off by one
        f"${s}",
        f"{s} dollars",
        f"{s}%",
        f"{s} 1/2",
        f"{s}/{rnd % 5}",  # also x/0
        "9" * (5 + rnd % 400),  # huge
        f"-{s}",
        f"({s}",
        f"<<{s}",
        f"{s}>>",
        f"{s} = {s}",
        "",
    ][style]


_MUTATIONS = [
    lambda t, r: t.replace(" ", "  "),
    lambda t, r: t.replace(" ", ""),
    lambda t, r: t.replace("=", " = "),
    lambda t, r: t.replace("<<", "<<(").replace(">>", ")>>"),
    lambda t, r: t.replace(">>", "", 1),
    lambda t, r: t.replace("<<", "<< <<", 1),
    lambda t, r: t.replace("*", " x ").replace("/", " ÷ ").replace("-", "−"),
    lambda t, r: t.replace("$", "€"),
    lambda t, r: t.replace("####", "The answer is"),
    lambda t, r: t[: r % (len(t) + 1)],  # truncated mid-solution
    lambda t, r: t + "\n#### " + str(r),
]


@st.composite
def _mutated_gsm8k(draw):
    row = draw(st.sampled_from(_ROWS))
    texts = []
    for _ in range(draw(st.integers(1, 4))):
        t = row["answer"]
        for kind, style, rnd in draw(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 17), st.integers(0, 10**6)), max_size=4)):
            if kind == 0:
                hit = [0]

                def sub(m, style=style, rnd=rnd):
                    hit[0] += 1
                    return _reformat(m, style, rnd) if (hit[0] + rnd) % 3 == 0 else m.group()

                t = _NUMBER.sub(sub, t)
            else:
                t = _MUTATIONS[style % len(_MUTATIONS)](t, rnd)
        texts.append(t)
    question = row["question"]
    if draw(st.booleans()):
        question = _NUMBER.sub(lambda m: _reformat(m, draw(st.integers(0, 3)), 0), question)
    return question, texts, draw(st.sampled_from([row["answer"], None, texts[0]]))


needs_gsm8k = pytest.mark.skipif(not _ROWS, reason="GSM8K train.jsonl not found (set LOOPER_GSM8K_DIR)")


@needs_gsm8k
@FAST
@given(case=_mutated_gsm8k() if _ROWS else st.nothing())
def test_mutated_gsm8k_solutions_never_raise(case):
    _arbitrary(*case)


@needs_gsm8k
@pytest.mark.slow
@SLOW
@given(case=_mutated_gsm8k() if _ROWS else st.nothing())
def test_mutated_gsm8k_solutions_never_raise_slow(case):
    _arbitrary(*case)
