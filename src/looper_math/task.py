"""The task: GSM8K (and GSM8K-Platinum) as one object that loads, prompts, extracts and grades.

Rollouts, GRPO rewards and evaluation all grade through :class:`GSM8K`, so ``correct`` means the same
thing in a reward and in an accuracy. Two evaluation protocols (``task.protocol``):

- ``default`` (this project's): the prompt of ``model.prompt_format`` (``prompts.build_prompt``); ``correct``
  from ``task.answer_mode`` (``strict``: the ``#### N`` line; ``flexible``: then "The answer is", ``\\boxed{}``,
  the last number; see ``answers``). Both extractions are recorded. A hedged completion (its ``#### N`` and
  ``\\boxed{N}`` answers disagree, ``answers.hedged``) has no answer in either mode, so it is wrong in eval, in
  the rollouts' ``correct`` and in GRPO rewards alike: the rule lives in the extractor they all call.
- ``platinum``: the GSM8K-Platinum authors' harness (MadryLab/platinum-benchmarks,
  ``src/run_gsm8k_platinum.py`` with ``utils.get_parse_fn("math")``), to compare with their published
  numbers: the question inside :data:`PLATINUM_TEMPLATE` (the user turn for ``chat`` models, the raw prompt
  otherwise), parsed by :func:`platinum_parse` and compared as floats with the gold (:func:`platinum_correct`).
  The Regime W arm prompts (rollouts) keep their own instruction; only the evaluation prompt changes.
  ``correct`` here is the harness's verdict, hedged or not (its numbers are the published ones'); the row's
  ``hedged``, ``correct_strict`` and ``correct_flexible`` still follow ``answers``.

Each completion is extracted once per use: :meth:`GSM8K.grade` reads the ``####`` lines once for both
modes (``answers.extract_answers``); rollouts pass the group's answers to ``score_group``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from looper_math.answers import answers_equal, extract_answer, extract_answers
from looper_math.errors import ConfigError
from looper_math.prompts import STOP_STRINGS, build_prompt, check_format

PROTOCOLS = ("default", "platinum")

# the harness's template_gsm8k, verbatim
PLATINUM_TEMPLATE = ("Solve the following math word problem.\n\n{question}\n\nThink step-by-step. Then, provide the final "
                     "answer as a single integer in the format \"Answer: XXX\" with no extra formatting.")
_PLATINUM_BOX = re.compile(r"\\boxed\{(\\text\{)?([^\\{}]+)\}")
_PLATINUM_NUMBER = re.compile(r"-?[0-9.]*[0-9]")
_PLATINUM_TRAILING_ZEROS = re.compile(r"\.0+$")


def platinum_parse(output: str | None) -> str | None:
    """The harness's parser (``create_parse_fn(parse_fn_math)``); None where it raises ("parsing error").

    If the output says "answer:" (``*`` ignored), the text after the last "answer: " (lower-cased), with a
    ``\\boxed{..}`` there replaced by its content; else the first ``\\boxed{..}`` content; else the last line.
    Then ``*``, ``#`` and ``,`` are removed, the first match of ``-?[0-9.]*[0-9]`` is taken and a trailing
    ``.0+`` dropped. Quirks kept on purpose (they are the published numbers' parser): "Answer:42" (no
    space) reads the first number of the whole output; "1.2.3" is returned and later fails the float compare.
    """
    if not output:
        return None
    if "answer:" in output.lower().replace("*", ""):
        m = _PLATINUM_BOX.search(output.lower().split("answer: ")[-1])
        if m:
            output = "Answer: " + m.group(2)
    else:
        m = _PLATINUM_BOX.search(output)
        output = "Answer: " + (m.group(2) if m else output.strip("\n").split("\n")[-1].lower())
    text = output.replace("*", "").replace("#", "").lower().split("answer: ")[-1].replace(",", "")
    m = _PLATINUM_NUMBER.search(text)
    return _PLATINUM_TRAILING_ZEROS.sub("", m.group()) if m else None


def platinum_correct(prediction: str | None, gold: str) -> bool:
    """``float(target) == float(prediction)``; a parsing error or a non-number is wrong, as in the harness."""
    try:
        return float(gold) == float(prediction)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Grade:
    """One completion graded: the fields an eval row carries (``schemas.EvalRow``)."""

    extracted: str | None  # the extraction that decided `correct`
    extracted_strict: str | None
    extracted_flexible: str | None
    correct: bool
    correct_strict: bool
    correct_flexible: bool
    hedged: bool  # the stated answers (#### N, \boxed{N}) disagree: no extraction, wrong (``answers.hedged``)

    def fields(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class GSM8K:
    """GSM8K under one prompt format, answer mode and protocol (``GSM8K.from_config(cfg)``)."""

    prompt_format: str = "abel"
    answer_mode: str = "flexible"
    protocol: str = "default"

    def __post_init__(self):
        check_format(self.prompt_format)
        if self.answer_mode not in ("strict", "flexible"):
            raise ConfigError(f"task.answer_mode: expected 'strict' or 'flexible', got {self.answer_mode!r}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"task.protocol: expected one of {PROTOCOLS}, got {self.protocol!r}")

    @classmethod
    def from_config(cls, cfg) -> GSM8K:
        return cls(cfg.model.prompt_format, cfg.task.answer_mode, cfg.task.protocol)

    # ---- data
    @staticmethod
    def load(cfg, split: str, limit: int | None = None) -> list:
        """The problems of ``split`` (train | dev | test) from ``cfg.data``, the first ``limit`` if given."""
        from looper_math.data import load_split

        problems = load_split(cfg, split)
        return problems[:limit] if limit else problems

    # ---- prompts
    def prompt(self, tokenizer, question: str, instruction: str | None = None) -> str:
        """The exact text given to the model: the evaluation prompt, or an arm's prompt with ``instruction``."""
        if self.protocol == "platinum" and instruction is None:
            text = PLATINUM_TEMPLATE.format(question=question.strip())
            if self.prompt_format == "chat":
                check_format("chat", tokenizer)
                return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                     add_generation_prompt=True)
            return text + "\n"
        return build_prompt(tokenizer, self.prompt_format, question, instruction)

    @property
    def stop_strings(self) -> list[str]:
        return list(STOP_STRINGS[self.prompt_format])

    # ---- grading
    def extract(self, text: str) -> str | None:
        """The answer that decides ``correct`` (the protocol's parser, or ``task.answer_mode``'s extraction)."""
        if self.protocol == "platinum":
            return platinum_parse(text)
        return extract_answer(text, mode=self.answer_mode)

    def is_correct(self, answer: str | None, gold: str) -> bool:
        """Whether an extracted answer (from :meth:`extract`) equals the gold number."""
        if self.protocol == "platinum":
            return platinum_correct(answer, gold)
        return answers_equal(answer, gold)

    def grade(self, text: str, gold: str) -> Grade:
        strict, flexible, hedged = extract_answers(text)
        c_strict, c_flex = answers_equal(strict, gold), answers_equal(flexible, gold)
        if self.protocol == "platinum":
            extracted = platinum_parse(text)
            correct = platinum_correct(extracted, gold)
        else:
            extracted, correct = (strict, c_strict) if self.answer_mode == "strict" else (flexible, c_flex)
        return Grade(extracted, strict, flexible, correct, c_strict, c_flex, hedged)
