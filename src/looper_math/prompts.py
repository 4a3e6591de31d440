"""Prompt formats and SFT targets.

- ``abel``: Abel's own format, ``Question:\\n{q}\\nAnswer:\\nLet's think step by step.\\n`` (GAIR-NLP/abel
  README). Abel models may run on into a new "Question:"; generation stops there and the answer
  extractor cuts the text at it, as Abel's evaluator does.
- ``chat``: the tokenizer's chat template with the question as the user turn.
- ``plain``: ``Question: {q}\\nAnswer:`` for base models without either convention.

An arm instruction (Regime W) is inserted between the question and the answer cue. Targets end with
the one canonical final line ``#### N``; GSM8K calculator annotations ``<<...>>`` are stripped.
"""

from __future__ import annotations

import re

from looper_math.errors import ConfigError

FORMATS = ("abel", "chat", "plain")
ABEL_TEMPLATE = "Question:\n{question}\nAnswer:\nLet's think step by step.\n"
PLAIN_TEMPLATE = "Question: {question}\nAnswer:"
STOP_STRINGS = {"abel": ["\nQuestion:"], "plain": ["\nQuestion:"], "chat": []}
_ANNOTATION = re.compile(r"<<[^<>]*>>")


def check_format(fmt: str, tokenizer=None) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"model.prompt_format: unknown format '{fmt}' (abel | chat | plain)")
    if fmt == "chat" and tokenizer is not None and not getattr(tokenizer, "chat_template", None):
        raise ConfigError("model.prompt_format is 'chat' but the tokenizer has no chat template (use abel or plain)")


def user_text(question: str, instruction: str | None = None) -> str:
    return question.strip() if not instruction else f"{question.strip()}\n{instruction.strip()}"


def build_prompt(tokenizer, fmt: str, question: str, instruction: str | None = None) -> str:
    """The exact text given to the model (chat template applied when fmt == 'chat')."""
    check_format(fmt, tokenizer)
    q = user_text(question, instruction)
    if fmt == "abel":
        return ABEL_TEMPLATE.format(question=q)
    if fmt == "plain":
        return PLAIN_TEMPLATE.format(question=q)
    return tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)


def sft_target(solution: str) -> str:
    """GSM8K solution -> training target: annotations stripped, one canonical final line '#### N'."""
    text = _ANNOTATION.sub("", solution).strip()
    body, sep, final = text.rpartition("####")
    if not sep:
        raise ValueError("solution has no '#### N' line")
    return f"{body.rstrip()}\n#### {final.strip()}"


def trl_prompt(tokenizer, fmt: str, question: str) -> list[dict] | str:
    """The evaluation prompt as TRL trainers take it: the user turn for chat models (TRL applies the
    template), the exact prompt text otherwise."""
    if fmt == "chat":
        check_format(fmt, tokenizer)
        return [{"role": "user", "content": user_text(question)}]
    return build_prompt(tokenizer, fmt, question)


def sft_example(tokenizer, fmt: str, question: str, solution: str, canonical: bool = True) -> dict:
    """One TRL prompt/completion example (conversational for chat models, plain strings otherwise).
    ``canonical=False`` takes ``solution`` as the target verbatim (a model's own text, see sft.rft_targets)."""
    target = sft_target(solution) if canonical else solution.strip()
    prompt = trl_prompt(tokenizer, fmt, question)
    if fmt == "chat":
        return {"prompt": prompt, "completion": [{"role": "assistant", "content": target}]}
    return {"prompt": prompt, "completion": " " + target if fmt == "plain" else target}
