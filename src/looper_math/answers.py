"""The one answer extractor used by rewards and by evaluation.

Conventions mirrored (EleutherAI lm-evaluation-harness gsm8k task; GSM8K-Platinum and Abel evaluators):

- **lm-evaluation-harness gsm8k** ``strict-match``: ``#### (\\-?[0-9\\.\\,]+)``, ignoring ``,``, ``$`` and a
  trailing ``.``. We keep its idea (the number on the ``####`` line) but are tolerant of ``$``,
  thousands commas, spaces, ``-$38,000``, decimals, markdown bold and text after the number
  (``#### 18 dollars``). Differences: lm-eval takes the *first* match; we take the *last* ``####``
  line that carries a number (they can differ only in spelling: see hedged answers below), and we only
  read a comma as a thousands separator (``1,000``), so ``8,000`` is 8000 and never ``000``.
- **lm-evaluation-harness gsm8k** ``flexible-extract``: ``(-?[$0-9.,]{2,})|(-?[0-9]+)``, last match.
  Our last-resort fallback takes the last number token too, with the same thousands-comma rule as
  above (lm-eval would read ``1,2,3`` as 123; we read 3) and a ``-`` only counts as a sign when it is
  not a binary minus (``10-4`` gives 4, not -4).
- **Abel's evaluator**: cuts the output at ``Question`` (the model runs on into a new question) and
  reads ``#### (.*)$``. We cut at a *new line* starting with ``Question:`` (``cut_at_new_question``), in
  both modes, so a question in the answer's own prose is not a cut point.
- **GSM8K-Platinum's evaluator**: asks for ``Answer: N``, falls back to ``\\boxed{}`` then the last
  line; strips ``*``, ``#``, ``,``; drops ``.0+$``; compares as floats. Our flexible mode tries
  ``The answer is N`` / ``Answer: N``, then ``\\boxed{N}``, then the last number; ``answers_equal``
  compares as floats with a tiny tolerance after normalizing (so ``5.0`` == ``5``).

Hedged answers (ours, no upstream evaluator does this): a completion's *stated* final answers
are the numbers of its ``#### N`` lines and of its ``\\boxed{N}`` contents (after the ``Question:`` cut).
When two of them differ (``answers_equal``), as in ``\\boxed{5}`` then ``#### 6``, or ``\\boxed{20}`` boys
and ``\\boxed{30}`` girls, or ``#### 5`` revised to ``#### 6``, the completion is ``hedged``: it has no
answer, in both modes (``extract_answer`` gives None), so it is wrong wherever it is graded (eval, the
rollouts' ``correct``, GRPO rewards, s_end's peer agreement): a grader that reads one marker must not
reward a completion that says something else with the other. Stated answers that agree
(``\\boxed{1,000}`` and ``#### 1000``) change nothing, nor does a box or ``####`` line with no number,
nor "The answer is N" (prose, not a final-answer marker). ``hedged(text)`` says whether this happened.

Normal form (``normalize_number``): a plain decimal string with no ``$``, commas, ``+``, exponent,
trailing zeros or trailing ``.``: ``"$1,234.50" -> "1234.5"``, ``"-$38,000" -> "-38000"``,
``".5" -> "0.5"``, ``"50%" -> "50"``, ``"3/4" -> "0.75"``. A fraction is kept only when its decimal
is exact (``1/3`` gives None: GSM8K gold answers are all integers, so nothing is lost).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation, localcontext
from fractions import Fraction
from typing import NamedTuple

__all__ = [
    "normalize_number",
    "extract_answer",
    "extract_answers",
    "Answers",
    "hedged",
    "cut_at_new_question",
    "answers_equal",
    "gold_answer",
]

# A number body: thousands-grouped ("1,234,567.89"), plain ("1234.5", "7"), or leading-dot (".5").
# The grouped form must not be followed by another digit ("1,0000" is not grouped).
_BODY = r"(?:\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
# A number token as it appears in text: optional sign, optional "$" (either side of the sign),
# body, optional "/denominator", optional "%".
_TOKEN = re.compile(
    r"(?P<sign>[-\u2212+]\s?)?"
    r"(?P<dollar>\$\s?)?"
    r"(?P<sign2>[-\u2212]\s?)?"
    rf"(?P<body>{_BODY})"
    r"(?P<den>\s?/\s?\d+(?:\.\d+)?)?"
    r"(?P<pct>\s?%)?"
)
# A whole string that is one number (used by normalize_number).
_WHOLE = re.compile(
    r"[-\u2212+]?\s*\$?\s*[-\u2212]?\s*"
    r"(?:\d[\d,]*(?:\.\d*)?|\.\d+)"
    r"(?:\s*/\s*(?:\d[\d,]*(?:\.\d*)?|\.\d+))?"
    r"\s*%?"
)
_STRIP_CHARS = " \t\r\n*_`\"'"
_TRAILING_PUNCT = ".,;:!?"

_NEW_QUESTION = re.compile(r"\n\s*Question\s*:")
_HASH_LINE = re.compile(r"####[ \t]*(?P<rest>[^\n]*)")
_ANSWER_IS = re.compile(
    r"(?:answer\s+is|answer\s*[:=]|answer\s+would\s+be|answer\s+will\s+be)[\s*_:=]*",
    re.IGNORECASE,
)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_LEADING_FILLER = re.compile(r"[\s*_:=]*")


def _canonical_decimal(d: Decimal) -> str:
    with localcontext() as ctx:
        ctx.prec = 200
        d = d.normalize()
    s = format(d, "f")
    if s in ("-0", "+0"):
        s = "0"
    return s


def normalize_number(s: str) -> str | None:
    """Canonical decimal string for one number written in ``s``, or None if ``s`` is not a number.

    Accepts surrounding whitespace/markdown (``*``, ``_``, backticks, quotes), a trailing ``.``/``,``
    etc., ``$`` before or after the sign, ``\\$`` (LaTeX), thousands commas, a leading ``+``, the
    unicode minus, a trailing ``%`` (dropped: ``50%`` -> ``50``) and a simple fraction ``a/b`` when its
    decimal is exact (``1/2`` -> ``0.5``; ``1/3`` -> None). Rejects words, units, exponents, lists.
    """
    if not isinstance(s, str):
        return None
    t = s.replace("\\$", "$").replace("{,}", ",").replace("\\!", "").replace("\\,", ",")
    t = t.strip(_STRIP_CHARS)
    while t and t[-1] in _TRAILING_PUNCT:
        t = t[:-1].rstrip(_STRIP_CHARS)
    if not t or len(t) > 400 or not _WHOLE.fullmatch(t):
        return None
    t = t.replace("\u2212", "-")
    neg = t.count("-")
    if neg > 1:
        return None
    t = t.replace("$", "").replace("-", "").replace("+", "").replace(" ", "").replace("\t", "")
    t = t.rstrip("%")
    num_s, _, den_s = t.partition("/")

    def parse(part: str) -> Decimal | None:
        if not part or not any(c.isdigit() for c in part):
            return None
        if "," in part:
            int_part, _, frac_part = part.partition(".")
            # commas only as thousands separators, and never in the fraction part
            if not re.fullmatch(r"\d{1,3}(?:,\d{3})+", int_part) or "," in frac_part:
                return None
            part = part.replace(",", "")
        if part.endswith("."):
            part = part[:-1]
        try:
            return Decimal(part)
        except InvalidOperation:
            return None

    num = parse(num_s)
    if num is None:
        return None
    if den_s:
        den = parse(den_s)
        if den is None or den == 0:
            return None
        frac = Fraction(num) / Fraction(den)
        d = frac.denominator
        for p in (2, 5):
            while d % p == 0:
                d //= p
        if d != 1:
            return None  # non-terminating decimal: not representable exactly
        with localcontext() as ctx:
            ctx.prec = 200
            num = Decimal(frac.numerator) / Decimal(frac.denominator)
    if neg:
        num = -num
    return _canonical_decimal(num)


def cut_at_new_question(text: str) -> str:
    """Cut ``text`` where the model starts a new question (a line beginning ``Question:``).

    Mirrors Abel's evaluator, which cuts completions at "Question"; we only cut at a new line so
    that prose such as "the question: how many..." is kept.
    """
    if not text:
        return ""
    m = _NEW_QUESTION.search(text)
    return text[: m.start()] if m else text


def _clean(text: str) -> str:
    # LaTeX spellings of "$" and thousands separators, unicode minus.
    return (
        text.replace("\\$", "$")
        .replace("{,}", ",")
        .replace("\\!", "")
        .replace("\u2212", "-")
    )


def _token_value(m: re.Match[str], text: str) -> str | None:
    sign = m.group("sign") or ""
    if sign and m.start() > 0:
        # "10-4", "x-4", "10 - 4": a binary minus, not a sign; "loss of -5": a sign.
        before = text[: m.start()]
        prev = before[-1]
        prev_nonspace = before.rstrip()[-1:]
        if prev.isalnum() or prev in ")]}" or (
            prev_nonspace and (prev_nonspace.isdigit() or prev_nonspace in ")]}")
        ):
            sign = ""
    tok = sign + (m.group("dollar") or "") + (m.group("sign2") or "") + m.group("body")
    if m.group("den"):
        tok += m.group("den")
    return normalize_number(tok)


def _first_number(s: str) -> str | None:
    """The number at the start of ``s`` (after filler such as ``**``, ``:``), or None."""
    f = _LEADING_FILLER.match(s)
    start = f.end() if f else 0
    m = _TOKEN.match(s, start)
    if not m:
        return None
    return _token_value(m, s)


def _hash_values(text: str) -> list[str]:
    """The numbers of the ``####`` lines that carry one, in order."""
    return [v for m in _HASH_LINE.finditer(text) if (v := _first_number(m.group("rest"))) is not None]


def _answer_is(text: str) -> str | None:
    found = None
    for m in _ANSWER_IS.finditer(text):
        v = _first_number(text[m.end() : m.end() + 80])
        if v is not None:
            found = v
    return found


def _boxed_contents(text: str) -> list[str]:
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return []
    # one linear pass matching braces (a per-box scan is quadratic on "\\boxed{\\boxed{...")
    close: dict[int, int] = {}
    stack: list[int] = []
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i + 1)
        elif ch == "}" and stack:
            close[stack.pop()] = i
    return [text[s : close[s]] for s in starts if s in close]


def _boxed_values(text: str) -> list[str]:
    """The numbers of the ``\\boxed{}`` contents that carry one, in order."""
    found = []
    for content in _boxed_contents(text):
        c = re.sub(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"\1/\2", content)
        c = re.sub(r"\\text\{[^{}]*\}|\\(?:mathrm|textbf)\{([^{}]*)\}", r"\1", c)
        c = c.replace("{", "").replace("}", "")
        m = _TOKEN.search(c)
        v = _token_value(m, c) if m else None
        if v is not None:
            found.append(v)
    return found


def _last_number(text: str) -> str | None:
    last = None
    for last in _TOKEN.finditer(text):
        pass
    # the last token decides, even when it is not representable (e.g. "1/3"): an earlier number
    # is not the answer
    return _token_value(last, text) if last else None


class Answers(NamedTuple):
    """One completion read once: its strict and flexible extractions, and whether it is hedged."""

    strict: str | None
    flexible: str | None
    hedged: bool  # its stated answers (#### lines, \boxed{}) disagree; then strict and flexible are None


def extract_answers(text: str) -> Answers:
    """Both extractions of one completion, reading it once:
    ``extract_answers(t)[:2] == (extract_answer(t, "strict"), extract_answer(t, "flexible"))``."""
    if not text:
        return Answers(None, None, False)
    t = _clean(cut_at_new_question(text))
    hashes, boxes = _hash_values(t), _boxed_values(t)
    stated = hashes + boxes
    if any(not answers_equal(v, stated[-1]) for v in stated):
        return Answers(None, None, True)
    if hashes:
        return Answers(hashes[-1], hashes[-1], False)
    # flexible fallbacks after the #### line failed: "answer is", then \boxed{}, then the last number
    flexible = _answer_is(t)
    if flexible is None and boxes:
        flexible = boxes[-1]
    if flexible is None:
        flexible = _last_number(t)
    return Answers(None, flexible, False)


def extract_answer(text: str, mode: str = "strict") -> str | None:
    """Extract the final numeric answer of a completion, normalized, or None.

    ``strict``: the number on the last ``#### N`` line (lm-eval strict-match / Abel ``#### (.*)$``,
    tolerant of ``$``, commas, a trailing ``.``, spaces, negatives, decimals and trailing text).
    ``flexible``: strict, else the last "The answer is N" / "Answer: N" (GSM8K-Platinum), else the
    last ``\\boxed{N}``, else the last number in the text (lm-eval flexible-extract).
    Both modes first cut the text at a new ``Question:`` line (Abel), and give None for a hedged
    completion (its ``####`` and ``\\boxed{}`` numbers disagree; see the module docstring).
    """
    if mode not in ("strict", "flexible"):
        raise ValueError(f"mode must be 'strict' or 'flexible', not {mode!r}")
    strict, flexible, _ = extract_answers(text)
    return strict if mode == "strict" else flexible


def hedged(text: str) -> bool:
    """Whether a completion's stated answers (``#### N`` lines, ``\\boxed{N}``) disagree (it then has no answer)."""
    return extract_answers(text).hedged


def _to_float(s: str) -> float | None:
    n = normalize_number(s)
    if n is None:
        return None
    try:
        x = float(n)
    except (ValueError, OverflowError):
        return None
    return x if math.isfinite(x) else None


def answers_equal(a: str | None, b: str | None) -> bool:
    """Numeric equality of two answers after ``normalize_number``.

    ``b`` is the reference: equal when ``|a - b| <= 1e-6 * max(1, |b|)``. None (or anything that is
    not a number) never equals anything, not even None.
    """
    if a is None or b is None:
        return False
    na, nb = normalize_number(a), normalize_number(b)
    if na is None or nb is None:
        return False
    if na == nb:
        return True
    fa, fb = _to_float(na), _to_float(nb)
    if fa is None or fb is None:
        return False
    return abs(fa - fb) <= 1e-6 * max(1.0, abs(fb))


def gold_answer(answer_field: str) -> str:
    """The gold number of a GSM8K solution: its (last) ``#### N`` line, normalized.

    Raises ValueError("no '#### N' line") or ValueError("unparsable gold answer 'x'").
    """
    lines = re.findall(r"^[ \t]*####[ \t]*(.*?)[ \t]*$", answer_field or "", re.MULTILINE)
    if not lines:
        raise ValueError("no '#### N' line")
    raw = lines[-1]
    n = normalize_number(raw)
    if n is None:
        raise ValueError(f"unparsable gold answer {raw!r}")
    return n
