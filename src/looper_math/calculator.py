"""Safe arithmetic for calculator annotations and tool calls. Never eval/exec/compile.

``evaluate`` parses with ``ast.parse(expr, mode="eval")`` (the parser only builds a tree; nothing is
compiled or run) and walks a whitelist: int/float constants (not bool, complex or strings), unary
``+``/``-``, binary ``+ - * / // % **`` and parentheses. Everything else is refused with
``CalculatorError``, and every failure inside (SyntaxError, RecursionError, OverflowError,
MemoryError, ZeroDivisionError, ValueError, ...) is re-raised as ``CalculatorError``.

Before parsing, the text is normalized (``_preprocess``):

- surrounding whitespace is stripped; a ``$`` before a number is dropped (``$5*3``);
- thousands commas inside numbers are removed (``1,000`` -> ``1000``; only groups of three digits);
- ``x``/``X``/``×`` between numbers (or parentheses) -> ``*``; ``÷`` -> ``/``; ``^`` -> ``**``;
  unicode minus and en dash -> ``-``;
- a ``%`` written right after a number and *not* followed by an operand is a percentage:
  ``50%`` -> ``(50/100)``, so ``20*50%`` is 10; ``7 % 3`` and ``7%3`` stay modulo.

Caps (anything past them raises ``CalculatorError``): the expression is at most ``MAX_LEN`` (200)
characters, nesting at most ``MAX_DEPTH``; after preprocessing only the characters of plain arithmetic
may remain; ``**`` needs ``|exponent| <= 100`` and a result whose magnitude is estimated (from
``log10``) before computing it; every intermediate value must be finite with ``|v| <= 1e30`` and the
result ``|r| <= 1e15``.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CalculatorError",
    "evaluate",
    "check_annotations",
    "annotation_report",
    "AnnotationReport",
    "MAX_LEN",
    "MAX_RESULT",
]

MAX_LEN = 200
MAX_DEPTH = 40
MAX_EXPONENT = 100
MAX_INTERMEDIATE = 1e30
MAX_RESULT = 1e15


class CalculatorError(ValueError):
    """The expression is not plain bounded arithmetic, or it has no finite value."""


_ALLOWED_CHARS = re.compile(r"[0-9.+\-*/%() eE_]*")
_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


def _preprocess(expr: str) -> str:
    s = expr.strip()
    s = s.replace("\u2212", "-").replace("\u2013", "-").replace("\u00f7", "/").replace("^", "**")
    s = re.sub(r"\$\s*(?=[\d.])", "", s)
    # thousands commas: 1,000 / 12,345,678.5 (groups of exactly three digits)
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    # x / × between numbers (or parentheses) is multiplication
    s = re.sub(r"(?<=[\d.)])\s*[xX\u00d7]\s*(?=[\d.(])", "*", s)
    # a percentage: a number directly followed by % with no operand after it
    s = re.sub(r"(\d+(?:\.\d*)?|\.\d+)%(?!\s*[\d.(])", r"(\1/100)", s)
    return s


def _check(v: float | int, cap: float = MAX_INTERMEDIATE) -> float | int:
    # v is an int or a float: constants are checked to be one, and + - * / // % ** of them give one (a complex
    # number needs a negative base to a fractional power, which _pow refuses)
    if isinstance(v, float) and not math.isfinite(v):
        raise CalculatorError("non-finite value")
    if abs(v) > cap:
        raise CalculatorError(f"value out of range (|v| > {cap:g})")
    return v


def _pow(base: float | int, exp: float | int) -> float | int:
    if abs(exp) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {exp!r} out of range (|e| > {MAX_EXPONENT})")
    if base == 0 and exp < 0:
        raise CalculatorError("zero to a negative power")
    if base < 0 and not float(exp).is_integer():
        raise CalculatorError("negative base to a fractional power")
    if base not in (0, 1, -1):
        est = exp * math.log10(abs(base))
        if est > math.log10(MAX_INTERMEDIATE) + 1:
            raise CalculatorError("power out of range")
    return base**exp


def _walk(node: ast.AST, depth: int) -> float | int:
    if depth > MAX_DEPTH:
        raise CalculatorError("expression nested too deeply")
    if isinstance(node, ast.Expression):
        return _walk(node.body, depth + 1)
    if isinstance(node, ast.Constant):
        v = node.value
        if type(v) not in (int, float):
            raise CalculatorError(f"constant of type {type(v).__name__} not allowed")
        return _check(v)
    # other operators (not, ~, @, <<, |, &, comparisons) cannot get here past _ALLOWED_CHARS; were one to, it
    # would fall through to the refusal at the end like any other node
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return _check(-_walk(node.operand, depth + 1))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd):
        return _check(+_walk(node.operand, depth + 1))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        op = _BINOPS[type(node.op)]
        left = _walk(node.left, depth + 1)
        right = _walk(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            return _check(_pow(left, right))
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise CalculatorError("division by zero")
        return _check(op(left, right))
    raise CalculatorError(f"{type(node).__name__} not allowed")


def evaluate(expr: str) -> float:
    """Value of a plain arithmetic expression as a finite float; ``CalculatorError`` otherwise."""
    if not isinstance(expr, str):
        raise CalculatorError(f"expression must be a str, not {type(expr).__name__}")
    if len(expr) > MAX_LEN:
        raise CalculatorError(f"expression longer than {MAX_LEN} characters")
    try:
        s = _preprocess(expr)
        if not s:
            raise CalculatorError("empty expression")
        if len(s) > 2 * MAX_LEN or not _ALLOWED_CHARS.fullmatch(s):
            raise CalculatorError(f"characters outside plain arithmetic in {expr!r}")
        tree = ast.parse(s, mode="eval")
        # finite after _check, and |v| <= MAX_RESULT: float(v) is finite too
        return float(_check(_walk(tree, 0), MAX_RESULT))
    except CalculatorError:
        raise
    except (
        SyntaxError,
        ValueError,
        TypeError,
        ArithmeticError,  # ZeroDivisionError, OverflowError
        RecursionError,
        MemoryError,
    ) as e:
        raise CalculatorError(f"cannot evaluate {expr!r}: {type(e).__name__}: {e}") from None
    except Exception as e:  # noqa: BLE001 - the contract: only CalculatorError escapes
        raise CalculatorError(f"cannot evaluate {expr!r}: {type(e).__name__}") from None


# --------------------------------------------------------------------------- GSM8K annotations

_ANNOTATION = re.compile(r"<<([^<>]*?)>>")


def _parse_stated(s: str) -> float:
    t = s.strip().replace(",", "").lstrip("$").rstrip(".")
    try:
        v = float(t)
        if math.isfinite(v):
            return v
    except ValueError:
        pass
    try:
        return evaluate(s)  # e.g. "3/4"
    except CalculatorError:
        return math.nan


def _matches(computed: float, stated: float) -> bool:
    if abs(computed - stated) <= 1e-4 * max(1.0, abs(stated)):
        return True
    return round(computed, 2) == stated


def check_annotations(solution: str) -> list[tuple[str, float | None, float, bool]]:
    """Re-compute every ``<<expr=result>>`` annotation in a GSM8K solution.

    Returns ``(expr, computed, stated, ok)`` per annotation: ``computed`` is None when ``evaluate``
    refuses the expression; ``stated`` is NaN when the stated result is not a number (or there is no
    ``=``); ``ok`` when ``|computed - stated| <= 1e-4 * max(1, |stated|)`` or ``stated`` is
    ``computed`` rounded to 2 decimals.
    """
    out: list[tuple[str, float | None, float, bool]] = []
    for m in _ANNOTATION.finditer(solution or ""):
        body = m.group(1)
        expr, eq, stated_s = body.rpartition("=")
        if not eq:
            expr, stated_s = body, ""
        stated = _parse_stated(stated_s) if eq else math.nan
        try:
            computed: float | None = evaluate(expr)
        except CalculatorError:
            computed = None
        ok = computed is not None and not math.isnan(stated) and _matches(computed, stated)
        out.append((expr, computed, stated, ok))
    return out


def _classify(expr: str, computed: float | None, stated: float) -> str:
    if computed is None:
        return "unsupported syntax (calculator refused the expression)"
    if math.isnan(stated):
        return "stated result not a number"
    for nd in (0, 1):
        if round(computed, nd) == stated or math.floor(computed) == stated or math.ceil(computed) == stated:
            return "rounding (stated is the computed value rounded/truncated)"
    if abs(stated) > 0 and any(
        abs(computed - stated * k) <= 1e-6 * max(1.0, abs(computed)) for k in (100, 0.01, 1000, 0.001, 60, 1 / 60)
    ):
        return "unit/scale slip in the data (off by a factor 100/1000/60)"
    return "data error (typo or wrong arithmetic in the annotation)"


@dataclass
class AnnotationReport:
    files: list[str] = field(default_factory=list)
    solutions: int = 0
    annotations: int = 0
    ok: int = 0
    exact: int = 0  # computed == stated exactly (the rest of ``ok`` is within the tolerance)
    by_category: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return self.annotations - self.ok

    @property
    def ok_fraction(self) -> float:
        return self.ok / self.annotations if self.annotations else 1.0

    def format(self, max_examples: int = 5) -> str:
        lines = [
            f"GSM8K annotations: {self.annotations} in {self.solutions} solutions "
            f"({', '.join(self.files)})",
            f"  re-computed: {self.ok} ({100 * self.ok_fraction:.2f}%; {self.exact} exactly, "
            f"{self.ok - self.exact} within tolerance), not: {self.failed}",
        ]
        for cat, n in self.by_category.most_common():
            lines.append(f"  {n:5d}  {cat}")
            for ex in self.examples.get(cat, [])[:max_examples]:
                lines.append(f"         e.g. {ex}")
        return "\n".join(lines)


def default_gsm8k_dir() -> Path | None:
    """``$LOOPER_GSM8K_DIR`` (a folder with GSM8K's train.jsonl / test.jsonl), if it holds the files."""
    cands = []
    env = os.environ.get("LOOPER_GSM8K_DIR")
    if env:
        cands.append(Path(env))
    for c in cands:
        if (c / "train.jsonl").is_file() or (c / "test.jsonl").is_file():
            return c
    return None


def annotation_report(paths: Iterable[str | Path] | None = None, max_examples: int = 10) -> AnnotationReport:
    """Run ``check_annotations`` over GSM8K JSONL files (default: train+test of
    ``default_gsm8k_dir()``) and count the annotations that do not re-compute, by category."""
    if paths is None:
        d = default_gsm8k_dir()
        if d is None:
            raise FileNotFoundError("GSM8K data not found; set LOOPER_GSM8K_DIR")
        paths = [p for p in (d / "train.jsonl", d / "test.jsonl") if p.is_file()]
    rep = AnnotationReport()
    for p in paths:
        p = Path(p)
        rep.files.append(p.name)
        with open(p) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                rep.solutions += 1
                for expr, computed, stated, ok in check_annotations(json.loads(line)["answer"]):
                    rep.annotations += 1
                    if ok:
                        rep.ok += 1
                        rep.exact += computed == stated
                        continue
                    cat = _classify(expr, computed, stated)
                    rep.by_category[cat] += 1
                    exs = rep.examples.setdefault(cat, [])
                    if len(exs) < max_examples:
                        exs.append(f"{p.name}:{lineno} <<{expr}={stated:g}>> computed {computed!r}")
    return rep
