"""Tests for looper_math.calculator: safe arithmetic (no eval) and GSM8K annotation checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from looper_math import calculator
from looper_math.calculator import (
    MAX_RESULT,
    CalculatorError,
    annotation_report,
    check_annotations,
    evaluate,
)

from conftest import gsm8k_dir


# --------------------------------------------------------------------------- arithmetic

ARITH = [
    ("1+1", 2),
    ("  2 * 3 ", 6),
    ("48/2", 24),
    ("7/2", 3.5),
    ("7//2", 3),
    ("560//10", 56),
    ("7 % 3", 1),
    ("7%3", 1),
    ("2**10", 1024),
    ("2^10", 1024),
    ("2**-2", 0.25),
    ("-3+5", 2),
    ("+3", 3),
    ("--3", 3),
    ("-(2+3)*4", -20),
    ("((1+2)*(3+4))", 21),
    ("100-50-30-15", 5),
    (".25*3", 0.75),
    ("1.50-.90", 0.6),
    ("1,000*3", 3000),
    ("12,345,678+1", 12345679),
    ("$5*3", 15),
    ("$1,234.50*2", 2469),
    ("2 x 3", 6),
    ("2x3", 6),
    ("(2)x(3)", 6),
    ("2 × 3", 6),
    ("10 ÷ 4", 2.5),
    ("5 \u2212 2", 3),
    ("50%", 0.5),
    ("20*50%", 10),
    ("200*12.5%", 25),
    ("1e3+1", 1001),
    ("10**15", 1e15),
    ("-10**15", -1e15),
    ("0.1+0.2", 0.30000000000000004),
    ("3/4", 0.75),
    ("(-8)**2", 64),
    ("(-2)**3", -8),
    ("4**0.5", 2),
]


@pytest.mark.parametrize("expr,expected", ARITH)
def test_arithmetic(expr, expected):
    v = evaluate(expr)
    assert isinstance(v, float)
    assert v == pytest.approx(expected, rel=1e-12, abs=1e-12)


REFUSED = [
    # escape attempts
    "__import__('os')",
    "__import__('os').system('echo pwned')",
    "().__class__",
    "().__class__.__bases__[0].__subclasses__()",
    "[c for c in ().__class__.__base__.__subclasses__()]",
    "(lambda: 1)()",
    "lambda x: x",
    "open('/etc/passwd').read()",
    "eval('1+1')",
    "exec('1')",
    "globals()",
    "x",
    "a.b",
    "a[0]",
    "'abc'",
    "b'abc'",
    "f'{1+1}'",
    "[1, 2]",
    "(1, 2)",
    "{1: 2}",
    "{1}",
    "1 if 1 else 2",
    "1 < 2",
    "1 and 2",
    "not 1",
    "~1",
    "1 << 2",
    "1 & 3",
    "1 | 2",
    "1 ^^ 2",
    "True + 1",
    "None",
    "1j",
    "2 + 3j",
    "x := 1",
    "...",
    "1;2",
    "1\n2",
    "import os",
    "\x00",
    # bounds
    "9**9**9",
    "10**16",
    "2**1000",
    "10**101",
    "1e999",
    "1e308*10",
    "10**15+1",
    "99999999999999999999999999999999",
    "1" * 201,
    "(" * 150 + "1" + ")" * 150,
    "-" * 199 + "1",
    "(-8)**(1/3)",
    "0**-1",
    # division by zero
    "1/0",
    "1//0",
    "1%0",
    "1/(2-2)",
    "0.0/0.0",
    # junk
    "",
    "   ",
    "1+",
    "*2",
    "1 2",
    "1,2",
    "1,00",
    "$",
    "%",
    "50% of 20",
    "3x",
]


@pytest.mark.parametrize("expr", REFUSED)
def test_refused(expr):
    with pytest.raises(CalculatorError):
        evaluate(expr)


def test_non_string_refused():
    for bad in (None, 5, b"1+1", ["1"]):
        with pytest.raises(CalculatorError):
            evaluate(bad)  # type: ignore[arg-type]


def test_calculator_error_is_value_error():
    assert issubclass(CalculatorError, ValueError)


def test_never_uses_eval_exec_compile():
    import ast

    tree = ast.parse(Path(calculator.__file__).read_text())
    banned = {"eval", "exec", "compile", "__import__", "getattr", "__builtins__", "literal_eval"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            assert node.id not in banned, node.id
        if isinstance(node, ast.Attribute) and node.attr in banned:
            # re.compile builds a regex, not code
            assert node.attr == "compile" and isinstance(node.value, ast.Name) and node.value.id == "re"


# --------------------------------------------------------------------------- fuzz


def _assert_contract(s: str) -> None:
    try:
        v = evaluate(s)
    except CalculatorError:
        return
    assert isinstance(v, float)
    assert math.isfinite(v)
    assert abs(v) <= MAX_RESULT


_ARITH_ALPHABET = "0123456789" * 3 + ".+-*/%()^ x,$eE_×÷\u2212"
_ARITH_TEXT = st.text(alphabet=_ARITH_ALPHABET, max_size=60)


@st.composite
def _expressions(draw, depth: int = 0):
    if depth > 4 or draw(st.booleans()):
        n = draw(
            st.one_of(
                st.integers(-(10**20), 10**20).map(str),
                st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
                st.sampled_from(["0", "1", "-1", ".5", "1,000", "$3", "50%", "9", "1e300"]),
            )
        )
        return n
    op = draw(st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "^", " x ", "÷"]))
    left = draw(_expressions(depth + 1))
    right = draw(_expressions(depth + 1))
    wrap = draw(st.booleans())
    e = f"{left}{op}{right}"
    return f"({e})" if wrap else e


_FUZZ = st.one_of(st.text(max_size=250), _ARITH_TEXT, _expressions())


@settings(max_examples=1_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_FUZZ)
def test_fuzz_only_calculator_error_escapes(s):
    _assert_contract(s)


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_FUZZ)
def test_fuzz_only_calculator_error_escapes_10k(s):
    _assert_contract(s)


# --------------------------------------------------------------------------- annotations


def test_check_annotations_basic():
    sol = (
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n"
        "Third is <<10/3=3.33>>3.33 and <<3/4=3/4>>3/4 and <<1,000*2=2,000>>.\n"
        "Wrong: <<2+2=5>>5. Bad: <<foo(1)=3>>3. Huge <<9**9**9=1>>. No eq <<7>>\n#### 72"
    )
    rows = check_annotations(sol)
    assert [r[0] for r in rows] == [
        "48/2", "12/60", "10/3", "3/4", "1,000*2", "2+2", "foo(1)", "9**9**9", "7",
    ]
    oks = [r[3] for r in rows]
    assert oks == [True, True, True, True, True, False, False, False, False]
    assert rows[0][1:] == (24.0, 24.0, True)
    assert rows[2][1] == pytest.approx(10 / 3) and rows[2][2] == 3.33  # rounded to 2 decimals
    assert rows[3][2] == 0.75
    assert rows[5][1:] == (4.0, 5.0, False)
    assert rows[6][1] is None
    assert rows[8][1] == 7.0 and math.isnan(rows[8][2])
    assert check_annotations("") == []


def test_annotation_report_on_small_file(tmp_path):
    p = tmp_path / "mini.jsonl"
    p.write_text(
        '{"question": "q", "answer": "<<1+1=2>> <<10/3=3>> <<2*3=7>> <<2*3=600>> <<a=1>>\\n#### 2"}\n'
    )
    rep = annotation_report([p])
    assert (rep.solutions, rep.annotations, rep.ok, rep.failed) == (1, 5, 1, 4)
    cats = dict(rep.by_category)
    assert sum(cats.values()) == 4
    assert any(k.startswith("rounding") for k in cats)
    assert any(k.startswith("unit/scale") for k in cats)
    assert any(k.startswith("data error") for k in cats)
    assert any(k.startswith("unsupported syntax") for k in cats)
    assert "mini.jsonl:1" in rep.format()


def test_all_gsm8k_annotations_recompute(capsys):
    d = gsm8k_dir()
    if d is None:
        pytest.skip("GSM8K data not found (set LOOPER_GSM8K_DIR)")
    rep = annotation_report([d / "train.jsonl", d / "test.jsonl"])
    with capsys.disabled():
        print("\n" + rep.format())
    assert rep.solutions == 7473 + 1319
    assert rep.annotations > 20_000
    assert rep.ok_fraction >= 0.99, rep.format()
