"""Problems: GSM8K / GSM8K-Platinum from the hub or local files, and built-in generated problems.

A source is one of
- ``builtin``: grade-school word problems generated here (deterministic by seed) whose reference
  solutions use the GSM8K format (steps with ``<<expr=result>>`` and a final ``#### N``), so the
  embedded default and the tests need no network;
- a local ``.jsonl`` / ``.json`` / ``.parquet`` file with ``question`` and ``answer`` columns
  (GSM8K-Platinum files keep ``cleaning_status``; a ``question_id`` column, as in
  ``benchmarks/svamp/test.jsonl``, is used as the id as given);
- a hub dataset id (``openai/gsm8k``, ``madrylab/gsm8k-platinum``) loaded through ``datasets``.

Every problem gets a stable ``question_id``: the file's own ``question_id`` where it has one (unique,
checked), else one derived from its split name and question text, so ids do not change when a file is
reordered or subset. Bad data fails with a one-line error naming file and line.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from looper_math.answers import gold_answer
from looper_math.runio import DataError


@dataclass(frozen=True)
class Problem:
    question_id: str
    question: str
    answer: str  # full reference solution (GSM8K format)
    gold: str  # normalized final number
    cleaning_status: str = "n/a"


_GIVEN_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")


def make_question_id(split: str, question: str) -> str:
    return f"{split}-{hashlib.sha1(question.strip().encode()).hexdigest()[:12]}"


def _rows_from_file(path: Path) -> list[tuple[str, dict]]:
    """(location, row) pairs; location is 'file:line' for error messages."""
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    suffix = path.suffix.lower()
    rows: list[tuple[str, dict]] = []
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{i}: invalid JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}:{i}: expected a JSON object")
                rows.append((f"{path}:{i}", obj))
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects")
        rows = [(f"{path}[{i}]", r) for i, r in enumerate(data)]
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        rows = [(f"{path} row {i + 1}", r) for i, r in enumerate(table.to_pylist())]
    else:
        raise DataError(f"{path}: unsupported data file type '{suffix}' (use .jsonl, .json or .parquet)")
    if not rows:
        raise DataError(f"{path}: empty data file")
    return rows


def _rows_from_hub(name: str, config: str | None, split: str) -> list[tuple[str, dict]]:
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # noqa: BLE001 - datasets raises many types; we re-raise one line
        raise DataError(f"{name} ({config}/{split}): cannot load from the hub: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    return [(f"{name}:{split} row {i + 1}", r) for i, r in enumerate(ds)]


def _to_problems(rows: list[tuple[str, dict]], split: str) -> list[Problem]:
    out: list[Problem] = []
    seen: dict[str, int] = {}
    for loc, r in rows:
        for fld in ("question", "answer"):
            if fld not in r:
                raise DataError(f"{loc}: missing field '{fld}'")
            if not isinstance(r[fld], str) or not r[fld].strip():
                raise DataError(f"{loc}: field '{fld}' must be a non-empty string")
        try:
            gold = gold_answer(r["answer"])
        except ValueError as e:
            raise DataError(f"{loc}: field 'answer': {e}") from None
        status = r.get("cleaning_status")
        if status is not None and not isinstance(status, str):
            raise DataError(f"{loc}: field 'cleaning_status' must be a string")
        given = r.get("question_id")
        if given is not None:  # a benchmark's own id (benchmarks/svamp: SVAMP's ID), kept as given
            # a plain token, so an id taken from data can never carry a path or markup into an output
            if not isinstance(given, str) or not _GIVEN_ID.fullmatch(given):
                raise DataError(f"{loc}: field 'question_id' must be a string of letters, digits, '.', '_' "
                                f"or '-' (at most 64, not starting with '.'), got {given!r}")
            if given in seen:
                raise DataError(f"{loc}: duplicate question_id {given!r}")
            qid = given
            seen[qid] = 1
        else:
            qid = make_question_id(split, r["question"])
            if qid in seen:  # exact duplicate questions exist in GSM8K train; keep both, distinct ids
                seen[qid] += 1
                qid = f"{qid}-{seen[qid]}"
            else:
                seen[qid] = 1
        out.append(Problem(qid, r["question"], r["answer"], gold, status or "n/a"))
    return out


def load_problems(source: str, *, split: str, config: str | None = None, builtin_size: int = 64, seed: int = 0) -> list[Problem]:
    """Load problems from 'builtin', a local file, or the hub (see module docstring)."""
    if source == "builtin":
        return builtin_problems(builtin_size, seed=seed, split=split)
    p = Path(source)
    if p.suffix.lower() in (".jsonl", ".json", ".parquet") or p.exists():
        return _to_problems(_rows_from_file(p), split)
    return _to_problems(_rows_from_hub(source, config, split), split)


def split_dev(problems: list[Problem], dev_size: int, seed: int) -> tuple[list[Problem], list[Problem]]:
    """Deterministic (train, dev) split; dev_size questions are held out of training."""
    if dev_size <= 0:
        return problems, []
    if dev_size >= len(problems):
        raise DataError(f"data.dev_size={dev_size} leaves no training questions (only {len(problems)})")
    idx = list(range(len(problems)))
    random.Random(seed).shuffle(idx)
    dev_idx = set(idx[:dev_size])
    train = [p for i, p in enumerate(problems) if i not in dev_idx]
    dev = [p for i, p in enumerate(problems) if i in dev_idx]
    return train, dev


def load_split(cfg, which: str) -> list[Problem]:
    """Problems for 'train' (minus dev), 'dev' (held out of train) or 'test' according to cfg.data."""
    d = cfg.data
    if which in ("train", "dev"):
        probs = load_problems(d.train, split=d.train_split, config=d.train_config,
                              builtin_size=d.builtin_train_size, seed=d.seed)
        train, dev = split_dev(probs, d.dev_size, d.seed)
        if which == "dev" and not dev:
            raise DataError("split 'dev' requested but data.dev_size is 0")
        return train if which == "train" else dev
    if which == "test":
        return load_problems(d.test, split=d.test_split, config=d.test_config,
                             builtin_size=d.builtin_test_size, seed=d.seed + 1)
    raise DataError(f"unknown split '{which}' (train | dev | test)")


# ---------------------------------------------------------------------------------------------
# Built-in problems. Each template returns (question, solution) with GSM8K-style annotations.


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _t_sold(r: random.Random) -> tuple[str, str]:
    name = r.choice(["Natalia", "Omar", "Priya", "Lena", "Kofi", "Mateo"])
    a = r.randrange(2, 40) * 2
    b = a // 2
    return (f"{name} sold {a} cookies on Monday and half as many on Tuesday. How many cookies did {name} sell in total?",
            f"On Tuesday {name} sold {a}/2 = <<{a}/2={b}>>{b} cookies.\nIn total {name} sold {a}+{b} = <<{a}+{b}={a + b}>>{a + b} cookies.\n#### {a + b}")


def _t_wage(r: random.Random) -> tuple[str, str]:
    name = r.choice(["Weng", "Aisha", "Tom", "Yuki", "Sara"])
    w, h = r.randrange(8, 30), r.randrange(2, 12)
    return (f"{name} earns ${w} an hour. {name} worked {h} hours this week. How much did {name} earn?",
            f"{name} earned {w}*{h} = $<<{w}*{h}={w * h}>>{w * h}.\n#### {w * h}")


def _t_boxes(r: random.Random) -> tuple[str, str]:
    n, per, eaten = r.randrange(3, 12), r.randrange(4, 15), r.randrange(1, 10)
    tot = n * per
    return (f"There are {n} boxes with {per} apples in each box. {eaten} apples are eaten. How many apples are left?",
            f"There are {n}*{per} = <<{n}*{per}={tot}>>{tot} apples.\nAfter eating, {tot}-{eaten} = <<{tot}-{eaten}={tot - eaten}>>{tot - eaten} apples are left.\n#### {tot - eaten}")


def _t_share(r: random.Random) -> tuple[str, str]:
    k, each = r.randrange(2, 9), r.randrange(3, 20)
    tot, extra = k * each, r.randrange(1, 20)
    return (f"A teacher has {tot + extra} pencils. She keeps {extra} and shares the rest equally among {k} students. How many pencils does each student get?",
            f"She shares {tot + extra}-{extra} = <<{tot + extra}-{extra}={tot}>>{tot} pencils.\nEach student gets {tot}/{k} = <<{tot}/{k}={each}>>{each} pencils.\n#### {each}")


def _t_speed(r: random.Random) -> tuple[str, str]:
    s, t1, t2 = r.randrange(20, 70), r.randrange(1, 5), r.randrange(1, 5)
    d1, d2 = s * t1, s * t2
    return (f"A car drives at {s} miles per hour for {t1} hours, stops, then drives {t2} more hours at the same speed. How many miles does it drive?",
            f"First it drives {s}*{t1} = <<{s}*{t1}={d1}>>{d1} miles.\nThen it drives {s}*{t2} = <<{s}*{t2}={d2}>>{d2} miles.\nIn total {d1}+{d2} = <<{d1}+{d2}={d1 + d2}>>{d1 + d2} miles.\n#### {d1 + d2}")


def _t_discount(r: random.Random) -> tuple[str, str]:
    p, pct = r.randrange(2, 20) * 10, r.choice([10, 20, 25, 50])
    off = p * pct // 100
    return (f"A jacket costs ${p}. It is on sale for {pct}% off. What is the sale price in dollars?",
            f"The discount is {p}*{pct}/100 = $<<{p}*{pct}/100={off}>>{off}.\nThe sale price is {p}-{off} = $<<{p}-{off}={p - off}>>{p - off}.\n#### {p - off}")


def _t_age(r: random.Random) -> tuple[str, str]:
    a, d, y = r.randrange(5, 15), r.randrange(2, 30), r.randrange(2, 10)
    b = a + d
    return (f"Mia is {a} years old. Her aunt is {d} years older than Mia. How old will her aunt be in {y} years?",
            f"Her aunt is {a}+{d} = <<{a}+{d}={b}>>{b} years old.\nIn {y} years she will be {b}+{y} = <<{b}+{y}={b + y}>>{b + y}.\n#### {b + y}")


def _t_legs(r: random.Random) -> tuple[str, str]:
    c, d = r.randrange(2, 20), r.randrange(2, 20)
    return (f"A farm has {c} chickens and {d} dogs. How many legs do the animals have in total?",
            f"The chickens have {c}*2 = <<{c}*2={2 * c}>>{2 * c} legs.\nThe dogs have {d}*4 = <<{d}*4={4 * d}>>{4 * d} legs.\nTogether {2 * c}+{4 * d} = <<{2 * c}+{4 * d}={2 * c + 4 * d}>>{2 * c + 4 * d} legs.\n#### {2 * c + 4 * d}")


TEMPLATES = [_t_sold, _t_wage, _t_boxes, _t_share, _t_speed, _t_discount, _t_age, _t_legs]


def builtin_problems(n: int, *, seed: int = 0, split: str = "builtin") -> list[Problem]:
    """n generated problems (deterministic given seed); same Problem type as GSM8K rows."""
    r = random.Random(seed)
    rows = []
    for i in range(n):
        q, a = TEMPLATES[i % len(TEMPLATES)](r)
        rows.append((f"builtin:{split}[{i}]", {"question": q, "answer": a}))
    return _to_problems(rows, f"builtin-{split}")


def builtin_corpus_text(n: int = 2000, seed: int = 0) -> list[str]:
    """Text used to train the tiny model's tokenizer."""
    return [p.question + "\n" + p.answer for p in builtin_problems(n, seed=seed)]
