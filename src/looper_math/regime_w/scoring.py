"""Regime W scores of one question's trajectory group: s_end, s_path, s_cf and their blend s_wm.

Entry point: ``score_group(question, trajectories, reference=None, weights=(0.4, 0.3, 0.3),
cf_perturbations=3, seed=0, answer_mode="strict")`` returns one dict per trajectory with ``answer``
(``looper_math.answers.extract_answer`` in ``answer_mode``: strict ``#### N``, or flexible, the mode
the rollouts grade correctness with; normalized, or None), ``s_end``, ``s_path``, ``s_cf``,
``s_wm`` (each a float in [0, 1]), the label-free ``s_cf_free`` and the parts behind them (``n_steps``,
``n_unparsed``, ``path_validity``, ``path_grounding``, ``path_peers``, ``cf_source``). It never raises on
any text (trajectories, question or reference); what it cannot read scores low and is counted in
``n_unparsed``. Every score is a pure function of the arguments:
no global state, no wall clock, perturbations drawn from a generator seeded by a blake2b hash of
(seed, question).

Steps (``extract_steps``). A step is one written calculation ``expr = c``:
  * a GSM8K calculator annotation ``<<48/2=24>>`` (the format the SFT data teaches), or
  * plain text ``a op b [op ...] = c`` with op in ``+ - * / x × ÷ −``, numbers with ``$``, thousands
    commas or spaces (``1,234``, ``150 000``, ``1 234.5``), decimals, mixed numbers (``1 1/2``), ``%`` (a percentage: ``20%`` is 20/100; when the
    result is a percentage too, ``60% * 40% = 24%``, the left side is compared times 100) and
    parentheses; the result may be a fraction (``= 1/4``). Chains ``3 * 4 = 12 * 2 = 24`` give two
    steps; ``4080 + 4080/2 = 4000 + 2040`` (an expression on the right whose first number is not the
    value) is skipped. Text inside an annotation is not read twice.
A number is read whole or not at all: a run of digits, commas and dots that fits none of these forms
(``1.234,5``, ``1 234,5``, ``1,2345``) is skipped, never read as its pieces. ``n_unparsed`` counts the
written calculations not read as a step: a ``<<...>>`` that is not ``<<expr=number>>`` arithmetic, and
an ``=`` between numbers outside every step (``4080 + 4080/2 = 4000 + 2040``); the GSM8K form
``3*4=<<3*4=12>>12`` is one calculation.
Each step is checked with the one safe calculator (``looper_math.calculator.evaluate``): it is valid
when the computed value equals the stated one, allowing for the precision shown: an integral result
must be stated exactly; a fractional one may be rounded or truncated to the decimals written
(``10/3 = 3.33``, ``7/2 = 3``: word problems floor "whole bags"). Not read: "20% of 50", words-only
arithmetic, LaTeX.

Question numbers: digit numbers (``$1,200``, ``2.5``, ``20%``) and number words (``three``,
``twenty-five``; not ``half``/``twice``/``dozen``, which are unit constants), as the list of distinct
values in order of first appearance. Equal numbers are one input: a program cannot tell which
occurrence it used, so they are perturbed together.

Operand resolution (shared by s_path's grounding and s_cf's dataflow program), in this order:
  1. the result of an earlier step (the most recent one whose stated result equals the operand, or,
     for an operand written with decimals, whose computed value rounds to it) -> a node reference;
  2. a question number (or q/100 for a question percentage q) -> an input reference;
  (the same value twice in one step takes two different readings when two exist: "60 x 60/100" with
  60 students and a computed 60 % is input * node, not node * node);
  3. anything else -> a constant. It is *grounded* when it is one of ``SMALL_CONSTANTS`` (unit
     conversions and fractions: 1-10, 12, 24, 30, 52, 60, 100, 365, 1000, 0.5, 0.25, ...).

s_end -- final-answer agreement: the share of the *other* trajectories of the group whose answer
  ``answers_equal`` this one's. 0.0 without an answer; 0.0 in a group of one (no evidence).

s_path -- reasoning-path consistency: the mean of
  (a) validity: share of written calculations the calculator confirms (steps + ``n_unparsed``: an
      unread calculation is an unconfirmed one);
  (b) grounding: share of operands (over all steps) that are grounded as above;
  (c) peer agreement: share of this trajectory's intermediate results (stated step results other than
      its final answer) that also appear among the stated step results of at least one *other*
      trajectory with the same answer. Neutral 0.5 when there is no such peer (or no answer); 1.0
      when there are peers but no intermediate results.
  A trajectory with no steps at all scores s_path = 0.0: nothing it wrote can be checked.

s_cf -- counterfactual robustness ("right for the right reasons"). The steps become a dataflow
  program: node i = step i's expression with its operands replaced by references (resolution above);
  the output node is the last step whose stated result equals the trajectory's answer. The program
  must reproduce the answer on the original numbers (otherwise an inconsistent or missing derivation:
  s_cf = 0.0). The reference solution's ``<<expr=result>>`` annotations compile the same way into
  the reference program, with ``gold_answer(reference)`` as its answer. Then the question's numbers
  are perturbed ``cf_perturbations`` times (integers below 10 get +1..+5, larger integers and
  decimals are scaled by a factor in [1.1, 1.9], rounded to integers or cents; a perturbation on
  which the reference program fails, e.g. divides by zero, is redrawn, up to 10 tries each), both
  programs are re-executed with the calculator, and s_cf is the share of perturbations on which the
  trajectory's output equals the reference's (relative tolerance 1e-9: both programs compute exact
  values from the same inputs, so only float rounding may differ; a program that adds 1 to a 15,000
  output is wrong). A trajectory whose program
  computes the same function of the inputs as the reference scores 1.0; one that reaches the right
  number by a wrong program (``2 + 2`` where the reference has ``2 * 2``) fails on the perturbed
  inputs and scores low. Questions with no numbers get identity "perturbations" (s_cf is then 1.0
  when the program reproduces the reference's output).
  Without a reference (or when the reference has no annotation program producing its gold answer)
  the reference outputs come from the group's consensus program: among the trajectories whose answer
  is the group's majority answer (ties: the answer seen first) and that have a program, the most
  common vector of perturbed outputs (ties: seen first). So a lone trajectory with a program scores
  1.0 against itself, and ``cf_source`` says which reference was used (reference | peers | none).
  ``s_cf_free`` is always the peer-consensus score (what ``s_cf`` is with reference=None), so it uses
  no label; it still uses answer agreement, as s_end and s_path's peer term do. A reference without a
  ``#### N`` line gives no reference program.

s_wm = (w_end * s_end + w_path * s_path + w_cf * s_cf) / (w_end + w_path + w_cf), defaults
  0.4 / 0.3 / 0.3: answer agreement (self-consistency, Wang et al. 2023) carries the most weight, the
  two process scores split the rest.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from looper_math.answers import answers_equal, extract_answer, gold_answer
from looper_math.calculator import MAX_RESULT, CalculatorError, evaluate
from looper_math.seeds import stable_seed

__all__ = ["Step", "extract_steps", "read_steps", "question_numbers", "score_group", "SMALL_CONSTANTS"]

SMALL_CONSTANTS = frozenset(
    [0.1, 0.2, 0.25, 0.5, 0.75, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 24, 30, 52, 60, 100, 365, 1000]
)
CF_REL_TOL = 1e-9

_SP = "[ \u00a0\u202f]"  # a thousands space: plain, no-break or narrow no-break ("150 000")
# A number is read whole or not at all: "1,234" and "150 000" are thousands, "1.5" a decimal; a run
# that fits no form ("1.234,5", "1 234,5", "1,2,3") is skipped, never read as its pieces.
_NUM = (
    r"(?<![\d.,])(?:\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?"
    rf"|\d{{1,3}}(?:{_SP}\d{{3}})+(?!\d)(?:\.\d+)?"
    r"|\d+(?:\.\d+)?|\.\d+)"
    rf"(?![.,]?\d|{_SP}\d{{3}}(?!\d))"
)
_MIXED = r"\d+[ \t]\d+/\d+(?!\d)"  # "1 1/2": one number, 1.5
_MIXED_WHOLE = re.compile(r"(?P<whole>\d+)[ \t](?P<a>\d+)/(?P<b>\d+)")
# One optional space inside an operand ("$ 5", "20 %"), the rest only between tokens: every blank has
# exactly one place to go, so the pattern cannot backtrack exponentially on long sums.
_OPERAND = rf"\(*(?:\$[ \t]?)?(?:{_MIXED}|{_NUM})(?:[ \t]?%)?\)*"
_OP = r"(?:\*\*|[-+*/x×÷X\u2212\u2013])"
_PLAIN_STEP = re.compile(
    rf"(?<![A-Za-z_\d.])(?P<lhs>{_OPERAND}(?:[ \t]*{_OP}[ \t]*{_OPERAND})+)[ \t]*=[ \t]*"
    # the stated result: a number (mixed "1 1/2" or fraction "1/4" too), not the start of "5A"
    rf"(?=(?P<rhs>-?[ \t]*\$?[ \t]*(?:{_MIXED}|{_NUM}(?:/{_NUM})?))(?P<rpct>[ \t]?%)?(?!\.?[A-Za-z_\d(])"
    # "= 12 * 2 = 24" continues a chain: remember that the stated number is also an operand
    rf"(?P<more>[ \t]*{_OP}[ \t]*{_OPERAND})?)"
)
_ANNOTATION = re.compile(r"<<(?P<lhs>[^<>=]+)=(?P<rhs>[^<>=]+)>>")
_ANY_ANNOTATION = re.compile(r"<<[^<>]*>>")
_TOKEN = re.compile(rf"\$?[ \t]*(?:(?P<mixed>{_MIXED})|(?P<num>{_NUM}))(?P<pct>[ \t]*%)?")
_QUESTION_NUMBER = re.compile(rf"(?<![\d.])(?:(?P<mixed>{_MIXED})|(?P<num>{_NUM}))(?P<pct>[ \t]*(?:%|percent\b))?")


def _number(text: str) -> float:
    """Value of a ``_NUM`` or ``_MIXED`` match (thousands commas or spaces, mixed numbers ``1 1/2``);
    NaN for anything else, including values that are not finite."""
    t = text.replace("$", "").strip()
    try:
        m = _MIXED_WHOLE.fullmatch(t)
        if m:
            v = int(m["whole"]) + int(m["a"]) / int(m["b"]) if int(m["b"]) else math.nan
        else:
            v = float(re.sub(rf"(?<=\d)(?:,|{_SP})(?=\d{{3}})", "", t))
    except (ValueError, OverflowError):
        return math.nan
    return v if math.isfinite(v) else math.nan


_UNITS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_WORD_NUMBER = re.compile(
    rf"\b(?:(?P<tens>{'|'.join(_TENS)})(?:[- ](?P<unit>{'|'.join(_UNITS[1:10])}))?|(?P<small>{'|'.join(_UNITS)}))\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Step:
    """One written calculation ``expr = stated``.

    ``template`` is the expression with operand i replaced by ``{i}`` (percentages as ``({i}/100)``,
    ``x``/``×``/``÷`` as ``*``/``/``, ``$``, commas and spaces removed); ``operands`` their values
    as written; ``value`` what the calculator computes (None when it refuses); ``decimals`` the
    decimals written in ``stated``; ``span`` where the step is in the text.
    """

    template: str
    operands: tuple[float, ...]
    operand_decimals: tuple[int, ...]
    stated: float
    decimals: int
    value: float | None
    valid: bool
    span: tuple[int, int]

    @property
    def expr(self) -> str:
        return self.template.format(*(_fmt(v) for v in self.operands))


def _fmt(v: float) -> str:
    s = str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(float(v))
    return f"({s})" if v < 0 else s


def _decimals(num: str) -> int:
    return len(num.split(".", 1)[1]) if "." in num else 0


@lru_cache(maxsize=1 << 16)
def _calc(expr: str) -> float | None:
    try:
        return evaluate(expr)
    except CalculatorError:
        return None


def _shown_as(value: float, stated: float, decimals: int) -> bool:
    """``stated`` is ``value`` written with ``decimals`` decimals (rounded or truncated)."""
    if math.isclose(value, stated, rel_tol=1e-9, abs_tol=1e-9):
        return True
    if abs(value - round(value)) <= 1e-9 * max(1.0, abs(value)):
        return False  # an integral result must be written exactly
    return abs(value - stated) < 10.0**-decimals + 1e-9


def _parse_lhs(lhs: str, percent_result: bool) -> tuple[str, tuple[float, ...], tuple[int, ...]] | None:
    """Template and operands of an expression, or None when it is not plain arithmetic.

    ``percent_result``: the result is written as a percentage too ("60% * 40% = 24%"), so the
    expression (with every ``N%`` read as N/100) is multiplied by 100 to compare with it."""
    parts: list[str] = []
    operands: list[float] = []
    decimals: list[int] = []
    pos = 0
    for m in _TOKEN.finditer(lhs):
        parts.append(lhs[pos : m.start()])
        num = m.group("num") or m.group("mixed")
        i = len(operands)
        operands.append(_number(num))
        decimals.append(_decimals(num) if m.group("num") else 0)
        parts.append(f"({{{i}}}/100)" if m.group("pct") else f"{{{i}}}")
        pos = m.end()
    parts.append(lhs[pos:])
    t = "".join(parts)
    t = re.sub(r"\s+", "", t).replace("×", "*").replace("÷", "/").replace("x", "*").replace("X", "*")
    t = t.replace("\u2212", "-").replace("\u2013", "-")
    if not operands or re.search(r"[^-+*/(){}\d]", t):
        return None
    # trim parentheses that belong to the surrounding prose: "(12 * 2 = 24)"
    while t.count("(") > t.count(")") and t.startswith("("):
        t = t[1:]
    while t.count(")") > t.count("(") and t.endswith(")"):
        t = t[:-1]
    if t.count("(") != t.count(")"):
        return None
    if percent_result:
        t = f"({t})*100"
    return t, tuple(operands), tuple(decimals)


_RHS = re.compile(rf"(?P<neg>[-\u2212])?(?:(?P<mixed>{_MIXED})|(?P<num>{_NUM})(?:/(?P<den>{_NUM}))?)(?P<pct>%)?")


def _stated(rhs: str) -> tuple[float, int, bool] | None:
    """(value, decimals written, is a percentage) of a stated result, or None when it is not one number."""
    t = re.sub(r"[ \t]+", " ", rhs.strip().replace("$", "")).rstrip(".").strip()
    t = re.sub(r"^([-\u2212]) ", r"\1", t).replace(" %", "%")
    m = _RHS.fullmatch(t)
    if m is None:
        return None
    if m["mixed"]:
        value, decimals = _number(m["mixed"]), 6
    elif m["den"]:
        den = _number(m["den"])
        value, decimals = (_number(m["num"]) / den if den else math.nan), 6
    else:
        value, decimals = _number(m["num"]), _decimals(m["num"])
    if math.isnan(value):
        return None
    return (-value if m["neg"] else value), decimals, bool(m["pct"])


def _make_step(lhs: str, rhs: str, span: tuple[int, int]) -> Step | None:
    stated = _stated(rhs)
    if stated is None:
        return None
    value_stated, decimals, percent_result = stated
    parsed = _parse_lhs(lhs, percent_result)
    if parsed is None:
        return None
    template, operands, op_decimals = parsed
    if any(math.isnan(x) for x in operands):
        return None
    value = _calc(template.format(*(_fmt(v) for v in operands)))
    valid = value is not None and _shown_as(value, value_stated, decimals)
    return Step(template, operands, op_decimals, value_stated, decimals, value, valid, span)


# An "=" between a number and a number (or "(", "$", a sign) that is not the "3*4=<<3*4=12>>12" of
# GSM8K's calculator format: a written calculation, whether or not it reads as a step.
_EQUALS = re.compile(r"[\d%)][ \t]*(?P<eq>=)(?![ \t]*\$?[ \t]*<<)(?=[ \t]*[-\u2212]?[ \t]*\$?[ \t]*[\d.(])")


def read_steps(text: str) -> tuple[list[Step], int]:
    """The steps of ``text`` (see ``extract_steps``) and how many written calculations were not read
    as one: a ``<<...>>`` annotation that is not ``<<expr=number>>`` plain arithmetic, or a number
    ``=`` number outside every step ("4080 + 4080/2 = 4000 + 2040", "1.234,5 + 2 = 1236,5")."""
    found: list[Step] = []
    taken: list[tuple[int, int]] = []
    unparsed = 0
    for m in _ANY_ANNOTATION.finditer(text):
        taken.append(m.span())
        a = _ANNOTATION.fullmatch(m.group())
        step = _make_step(a["lhs"], a["rhs"], m.span()) if a else None
        if step is None:
            unparsed += 1
        else:
            found.append(step)
    for m in _PLAIN_STEP.finditer(text):
        s, e = m.start(), max(m.end("rhs"), m.end("rpct"))
        if any(s < te and ts < e for ts, te in taken):
            continue
        step = _make_step(m.group("lhs"), m.group("rhs") + (m.group("rpct") or ""), (s, e))
        if step is not None and m.group("more") and not step.valid:
            # "4080 + 4080/2 = 4000 + 2040": the right side is an expression, not a stated result
            continue
        if step is not None:
            found.append(step)
    found.sort(key=lambda st: st.span)
    spans = taken + [st.span for st in found]
    for m in _EQUALS.finditer(text):
        at = m.start("eq")
        unparsed += not any(s <= at < e for s, e in spans)
    return found, unparsed


def extract_steps(text: str) -> list[Step]:
    """The written calculations of ``text`` in order: ``<<expr=c>>`` annotations and ``a op b = c``."""
    return read_steps(text)[0]


def question_numbers(question: str) -> list[tuple[float, bool]]:
    """Distinct numbers of the question in order of first appearance, each with "is a percentage"."""
    hits: list[tuple[int, float, bool]] = []
    for m in _QUESTION_NUMBER.finditer(question):
        v = _number(m.group("mixed") or m.group("num"))
        if abs(v) <= MAX_RESULT:  # NaN and numbers past the calculator's range are no input
            hits.append((m.start(), v, bool(m.group("pct"))))
    for m in _WORD_NUMBER.finditer(question):
        if m.group("small"):
            v = _UNITS.index(m.group("small").lower())
        else:
            v = _TENS[m.group("tens").lower()] + (_UNITS.index(m.group("unit").lower()) if m.group("unit") else 0)
        hits.append((m.start(), float(v), False))
    hits.sort(key=lambda h: h[0])
    out: list[tuple[float, bool]] = []
    for _, v, pct in hits:
        for j, (w, wpct) in enumerate(out):
            if w == v:
                out[j] = (w, wpct or pct)
                break
        else:
            out.append((v, pct))
    return out


# --------------------------------------------------------------------------- dataflow programs

# A reference: ("node", j) | ("input", q) | ("input_pct", q) | ("const", value)
Ref = tuple[str, float]


def _candidates(x: float, decimals: int, earlier: list[Step], qnums: list[tuple[float, bool]]) -> list[tuple]:
    """Every reading of operand ``x``, best first: earlier results (most recent first), then inputs."""
    out: list[tuple] = []
    for j in range(len(earlier) - 1, -1, -1):
        st = earlier[j]
        if math.isclose(x, st.stated, rel_tol=1e-9, abs_tol=1e-12) or (
            decimals > 0 and st.value is not None and abs(st.value - x) <= 0.5 * 10.0**-decimals + 1e-12
        ):
            out.append(("node", j))
    for q, (v, pct) in enumerate(qnums):
        if math.isclose(x, v, rel_tol=1e-9, abs_tol=1e-12):
            out.append(("input", q))
    for q, (v, pct) in enumerate(qnums):
        if pct and math.isclose(x, v / 100, rel_tol=1e-9, abs_tol=1e-12):
            out.append(("input_pct", q))
    return out


def _refs(steps: list[Step], qnums: list[tuple[float, bool]]) -> list[list[tuple]]:
    """Operand references of every step. The same value twice in one step ("60 x 60/100" with 60
    students and a 60 % computed before) takes two different readings when two exist."""
    out = []
    for i, st in enumerate(steps):
        used: set[tuple] = set()
        row = []
        for x, d in zip(st.operands, st.operand_decimals):
            cands = _candidates(x, d, steps[:i], qnums)
            ref = next((c for c in cands if c not in used), cands[0] if cands else ("const", x))
            used.add(ref)
            row.append(ref)
        out.append(row)
    return out


@dataclass(frozen=True)
class _Program:
    templates: tuple[str, ...]
    refs: tuple[tuple[tuple, ...], ...]
    output: int

    def run(self, inputs: list[float]) -> float | None:
        values: dict[int, float | None] = {}

        def node(i: int) -> float | None:
            if i not in values:
                args = []
                for kind, a in self.refs[i]:
                    if kind == "node":
                        v = node(a)
                    elif kind == "input":
                        v = inputs[a]
                    elif kind == "input_pct":
                        v = inputs[a] / 100
                    else:
                        v = a
                    if v is None:
                        values[i] = None
                        return None
                    args.append(_fmt(v))
                values[i] = _calc(self.templates[i].format(*args))
            return values[i]

        return node(self.output)


def _compile(steps: list[Step], refs: list[list[tuple]], answer: str | None, qnums) -> _Program | None:
    """The program whose output node is the last step stating ``answer``; None when there is none
    or when it does not reproduce ``answer`` on the original numbers."""
    if answer is None:
        return None
    target = float(answer)
    out = None
    for i, st in enumerate(steps):
        if math.isclose(st.stated, target, rel_tol=1e-6, abs_tol=1e-9):
            out = i
    if out is None:
        return None
    prog = _Program(tuple(st.template for st in steps), tuple(tuple(r) for r in refs), out)
    got = prog.run([v for v, _ in qnums])
    if got is None or not _shown_as(got, target, _decimals(answer)):
        return None
    return prog


def _perturb(v: float, rng: np.random.Generator) -> float:
    if float(v).is_integer():
        if abs(v) < 10:
            return v + float(rng.integers(1, 6))
        return float(max(round(v * rng.uniform(1.1, 1.9)), v + 1))
    return round(v * rng.uniform(1.1, 1.9), 2) or v + 0.01


def _same(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=CF_REL_TOL, abs_tol=1e-9)


def _cf_scores(
    qnums: list[tuple[float, bool]],
    programs: list[_Program | None],
    answers: list[str | None],
    ref_prog: _Program | None,
    rng_seed: int,
    cf_perturbations: int,
) -> tuple[list[float], str]:
    """s_cf of every trajectory and its source (reference | peers | none); ``ref_prog`` None: peers."""
    n = len(programs)
    rng = np.random.default_rng(rng_seed)
    base = [v for v, _ in qnums]
    perturbed: list[list[float]] = []
    for _ in range(cf_perturbations):
        for _try in range(10):
            inputs = [_perturb(v, rng) for v in base]
            if ref_prog is None or ref_prog.run(inputs) is not None:
                perturbed.append(inputs)
                break
    if ref_prog is not None and not perturbed:
        ref_prog = None  # the reference fails on every perturbation: it cannot judge
        perturbed = [[_perturb(v, rng) for v in base] for _ in range(cf_perturbations)]
    outputs = [[p.run(x) for x in perturbed] if p is not None else None for p in programs]

    cf_source = "none"
    target: list[float | None] | None = None
    if ref_prog is not None:
        cf_source, target = "reference", [ref_prog.run(x) for x in perturbed]
    else:
        # consensus program of the majority answer (ties: answer seen first)
        clusters: list[list[int]] = []
        for i in range(n):
            if answers[i] is None:
                continue
            for c in clusters:
                if answers_equal(answers[i], answers[c[0]]):
                    c.append(i)
                    break
            else:
                clusters.append([i])
        if clusters:
            majority = max(clusters, key=len)  # max keeps the first of equal-sized clusters
            sigs = Counter()
            first: dict[tuple, int] = {}
            for i in majority:
                if outputs[i] is None:
                    continue
                sig = tuple(None if o is None else float(f"{o:.12g}") for o in outputs[i])
                sigs[sig] += 1
                first.setdefault(sig, i)
            if sigs:
                best = max(sigs, key=lambda s: (sigs[s], -first[s]))
                cf_source, target = "peers", outputs[first[best]]
    s_cf = []
    for i in range(n):
        if target is None or outputs[i] is None or not perturbed:
            s_cf.append(0.0)
        else:
            s_cf.append(sum(_same(o, t) for o, t in zip(outputs[i], target)) / len(perturbed))
    return s_cf, cf_source


# --------------------------------------------------------------------------- scores


def score_group(
    question: str,
    trajectories: list[str],
    reference: str | None = None,
    weights: tuple[float, float, float] = (0.4, 0.3, 0.3),
    cf_perturbations: int = 3,
    seed: int = 0,
    answer_mode: str = "strict",
    answers: list[str | None] | None = None,
) -> list[dict]:
    """Score one question's trajectories (see the module docstring for every definition).

    ``answers``: the trajectories' final answers when the caller has extracted them already (the task's
    extraction, so s_end agrees with what grades ``correct``); else extracted here in ``answer_mode``."""
    if len(weights) != 3 or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"score_group: weights must be three non-negative numbers with a positive sum, got {weights}")
    if cf_perturbations < 1:
        raise ValueError(f"score_group: cf_perturbations must be >= 1, got {cf_perturbations}")
    w_end, w_path, w_cf = (w / sum(weights) for w in weights)
    n = len(trajectories)
    qnums = question_numbers(question)
    if answers is None:
        answers = [extract_answer(t, mode=answer_mode) for t in trajectories]
    elif len(answers) != len(trajectories):
        raise ValueError(f"score_group: {len(answers)} answers for {len(trajectories)} trajectories")
    read = [read_steps(t) for t in trajectories]
    steps = [st for st, _ in read]
    unparsed = [u for _, u in read]
    refs = [_refs(s, qnums) for s in steps]
    programs = [_compile(s, r, a, qnums) for s, r, a in zip(steps, refs, answers)]

    # ---- s_end
    same = [[j for j in range(n) if j != i and answers_equal(answers[j], answers[i])] for i in range(n)]
    s_end = [len(same[i]) / (n - 1) if n > 1 and answers[i] is not None else 0.0 for i in range(n)]

    # ---- s_path
    s_path, parts = [], []
    for i in range(n):
        st = steps[i]
        if not st:
            s_path.append(0.0)
            parts.append((0.0, 0.0, 0.0))
            continue
        validity = sum(s.valid for s in st) / (len(st) + unparsed[i])  # unread calculations are unconfirmed
        flat = [r for rs in refs[i] for r in rs]
        grounding = sum(kind != "const" or a in SMALL_CONSTANTS for kind, a in flat) / len(flat)
        if not same[i]:
            peers = 0.5
        else:
            target = float(answers[i])
            inter = [s.stated for s in st if not math.isclose(s.stated, target, rel_tol=1e-6, abs_tol=1e-9)]
            pool = [s.stated for j in same[i] for s in steps[j]]
            peers = (
                sum(any(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9) for y in pool) for x in inter) / len(inter)
                if inter
                else 1.0
            )
        parts.append((validity, grounding, peers))
        s_path.append((validity + grounding + peers) / 3)

    # ---- s_cf: against the reference program, and label-free against the peers' consensus program
    ref_prog = None
    if reference is not None:
        try:
            gold = gold_answer(reference)
        except ValueError:  # no "#### N" line: no reference program, the peers judge
            gold = None
        ref_steps = extract_steps(reference)
        ref_prog = _compile(ref_steps, _refs(ref_steps, qnums), gold, qnums)
    cf_rng_seed = stable_seed(seed, "cf", question)
    s_cf, cf_source = _cf_scores(qnums, programs, answers, ref_prog, cf_rng_seed, cf_perturbations)
    s_cf_free = s_cf if ref_prog is None else _cf_scores(qnums, programs, answers, None, cf_rng_seed, cf_perturbations)[0]

    rows = []
    for i in range(n):
        wm = w_end * s_end[i] + w_path * s_path[i] + w_cf * s_cf[i]
        rows.append(
            {
                "answer": answers[i],
                "s_end": float(s_end[i]),
                "s_path": float(s_path[i]),
                "s_cf": float(s_cf[i]),
                "s_wm": float(min(max(wm, 0.0), 1.0)),
                "n_steps": len(steps[i]),
                "path_validity": float(parts[i][0]),
                "path_grounding": float(parts[i][1]),
                "path_peers": float(parts[i][2]),
                "cf_source": cf_source,
                "s_cf_free": float(s_cf_free[i]),
                "n_unparsed": unparsed[i],
            }
        )
    return rows
