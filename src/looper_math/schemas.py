"""Row formats: each JSONL row written or read by a phase is defined once here, with one reader.

- :class:`RolloutRow` — ``rollouts.output``, one line per trajectory, key ``(question_id, sample_idx)``;
- :class:`PairRow` — ``prefs.output``, TRL's preference format plus bookkeeping;
- :class:`EvalRow` — ``eval.*_output``, one line per question, key ``question_id``.

Writers build rows with these TypedDicts; readers call :func:`read_rows` with the fields they need (a file
written before a field existed still reads when that field is not needed), which checks each needed field
is present and of its declared type and fails with one line naming file, line and field. The README's
"JSONL schemas" section quotes these definitions (a test checks it names the same fields).
"""

import functools
import types  # no `from __future__ import annotations`: TypedDict reads NotRequired from real annotations
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import NotRequired, TypedDict

from looper_math.runio import DataError, read_jsonl

QuestionId = str | int  # built-in and hub ids are strings; hand-made files may use integers


class RolloutRow(TypedDict):
    question_id: QuestionId
    sample_idx: int
    arm: str  # a Regime W arm, or "eval_prompt" (samples under the evaluation prompt)
    arm_family: str  # wolfram | maudlin | eval
    prompt: str  # the prompt sent
    eval_prompt: str  # the plain evaluation prompt of the question
    full_text: str  # the completion
    reasoning: str  # the completion without its final '####' line
    answer: str | None  # extracted by the task (the extraction that grades `correct`)
    gold: str
    correct: bool
    num_tokens: int  # generated, EOS included
    finished: bool  # stopped by EOS or a stop string
    s_end: float
    s_path: float
    s_cf: float
    s_wm: float
    s_cf_free: NotRequired[float]  # rows written before it existed lack it
    n_unparsed: NotRequired[int]
    reward: float
    temperature: float
    top_p: float
    seed: int  # derived from (rollouts.seed, question_id, sample_idx)
    model: str
    adapter: str | None


ROLLOUT_KEY = ("question_id", "sample_idx")  # a rollouts row's key (append-only JSONL, exactly once)


class PairRow(TypedDict):
    prompt: str
    chosen: str
    rejected: str
    question_id: QuestionId
    pair_type: str  # correctness | coherence
    chosen_arm: str
    rejected_arm: str
    chosen_reward: float
    rejected_reward: float
    chosen_s_wm: float
    rejected_s_wm: float
    chosen_sample_idx: int
    rejected_sample_idx: int


class EvalRow(TypedDict):
    question_id: QuestionId
    question: str
    gold: str
    prediction: str
    extracted: str | None  # the extraction that decided `correct` (task.answer_mode's, or the platinum parser's)
    extracted_strict: str | None
    extracted_flexible: str | None
    correct: bool  # per task.protocol / task.answer_mode
    correct_strict: bool
    correct_flexible: bool
    hedged: NotRequired[bool]  # its #### N and \boxed{N} answers disagree (answers.hedged): graded wrong; rows written before lack it
    cleaning_status: str
    num_tokens: int
    finished: bool
    checkpoint: str


EVAL_KEY = ("question_id",)  # an eval row's key


def fields(schema: type) -> tuple[str, ...]:
    """Every field of a row format, in its order."""
    return tuple(schema.__annotations__)


def required(schema: type) -> tuple[str, ...]:
    return tuple(k for k in fields(schema) if k in schema.__required_keys__)


def _accepts(tp: object) -> tuple[type, ...]:
    """The Python types a JSON value of annotation ``tp`` may have."""
    origin = typing.get_origin(tp)
    if origin is NotRequired:
        return _accepts(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return tuple(t for a in typing.get_args(tp) for t in _accepts(a))
    if tp is type(None) or tp is None:
        return (type(None),)
    if tp is float:
        return (int, float)
    return (tp,)  # type: ignore[return-value]


@functools.cache
def _field_types(schema: type) -> dict[str, tuple[type, ...]]:
    """Per field of a row format, the Python types its JSON value may have (read once per format, not per row)."""
    return {name: _accepts(tp) for name, tp in typing.get_type_hints(schema, include_extras=True).items()}


_NAMES = {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def check_row(row: dict, schema: type, need: tuple[str, ...], where: str, *, nonempty: tuple[str, ...] = ()) -> None:
    """DataError naming ``where`` and the field when a needed field is missing or of the wrong type (a bool is
    never a number), or a ``nonempty`` string field is empty."""
    types_of = _field_types(schema)
    for name in need:
        if name not in row:
            raise DataError(f"{where}: missing field '{name}'")
        ok = types_of[name]
        v = row[name]
        if not isinstance(v, ok) or (isinstance(v, bool) and bool not in ok):
            want = " or ".join(dict.fromkeys(_NAMES.get(t, t.__name__) for t in ok if not (t is int and float in ok)))
            raise DataError(f"{where}: field '{name}' must be {want}, got {v!r}")
        if name in nonempty and not v:
            raise DataError(f"{where}: field '{name}' must be a non-empty string")


def read_rows(path: str | Path, schema: type, need: tuple[str, ...] | None = None, *, nonempty: tuple[str, ...] = (),
              allow_torn_tail: bool = False) -> Iterator[dict]:
    """The rows of a JSONL file of ``schema``, each checked for the fields in ``need`` (default: all required)."""
    need = required(schema) if need is None else need
    for i, row in enumerate(read_jsonl(path, allow_torn_tail=allow_torn_tail), 1):
        check_row(row, schema, need, f"{path}:{i}", nonempty=nonempty)
        yield row


def question_kinds(rows: typing.Iterable[dict]) -> dict[str, str]:
    """Each question of rollout rows by its trajectories' ``correct``: ``mixed`` (at least one correct and one
    incorrect: a GRPO group of it has a non-zero advantage), ``all_right`` or ``all_wrong``."""
    seen: dict[str, set[bool]] = {}
    for row in rows:
        seen.setdefault(row["question_id"], set()).add(bool(row["correct"]))
    return {q: "mixed" if len(v) == 2 else "all_right" if True in v else "all_wrong" for q, v in seen.items()}
