"""The engine's request and result types, and the tokenization, batching and progress helpers both engines share
(``hf`` and the fast engine's ``scheduler``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class GenRequest:
    prompt: str  # fully formatted prompt text (chat template already applied when used)
    temperature: float = 0.0  # 0 => greedy
    top_p: float = 1.0
    seed: int = 0  # per-request seed


@dataclass
class GenResult:
    text: str  # decoded completion only (skip_special_tokens), cut at the first stop string
    num_tokens: int  # tokens generated (including EOS when produced; excluding padding)
    finished: bool  # True if EOS or a stop string was produced before max_new_tokens
    token_ids: list[int] = field(default_factory=list)  # the num_tokens generated ids (what GRPO trains on)


# ----------------------------------------------------------------------------------------------------
# Tokenization and batching helpers shared by the engines


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids per prompt; no special tokens when the text already starts with the BOS string."""
    bos = tokenizer.bos_token
    unique = list(dict.fromkeys(prompts))  # rollouts and GRPO repeat each prompt k times: encode it once
    ids: dict[str, list[int]] = {}
    for add_special in (True, False):  # one batched call per kind (a fast tokenizer encodes a batch in parallel)
        which = [p for p in unique if (not (bos and p.startswith(bos))) == add_special]
        if which:
            ids.update(zip(which, tokenizer(which, add_special_tokens=add_special)["input_ids"]))
    return [list(ids[p]) for p in prompts]  # a list of its own per prompt, as before


def prompt_tokens(tokenizer, prompts: list[str]) -> list[int]:
    """Each prompt's token count as the engines tokenize it."""
    return [len(x) for x in encode_prompts(tokenizer, prompts)]


def eos_ids(model, tokenizer) -> list[int]:
    """EOS ids from the model's generation config (may be several), else the tokenizer's."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("neither the model's generation_config nor the tokenizer defines an eos token")
    return [eos] if isinstance(eos, int) else list(eos)


def pad_id(tokenizer, eos: list[int]) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]


def left_pad(ids: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded input_ids and attention_mask. Padding is done here rather than through
    ``tokenizer.pad`` so the shared tokenizer's padding_side / pad_token are never mutated."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, width - len(x) :] = torch.tensor(x, dtype=torch.long)
        mask[i, width - len(x) :] = 1
    return input_ids.to(device), mask.to(device)


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Index batches, longest prompts first (an out-of-memory shows up on the first batch)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def cut_at_stop(text: str, stop_strings: list[str] | None) -> tuple[str, bool]:
    """Text up to the earliest occurrence of any stop string, and whether one was found."""
    cut = len(text)
    for s in stop_strings or []:
        j = text.find(s)
        if j != -1:
            cut = min(cut, j)
    return text[:cut], cut < len(text)


# ----------------------------------------------------------------------------------------------------
# Progress


class _Progress:
    """rich progress bar over batches showing generated tokens/s; a no-op when disabled."""

    def __init__(self, enabled: bool, total_rows: int, desc: str):
        self.enabled = enabled
        self.tokens = 0
        self.t0 = time.perf_counter()
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[tps]}"),
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task(desc, total=total_rows, tps="")

    def update(self, rows: int, tokens: int) -> None:
        self.tokens += tokens
        if self.enabled:
            rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.update(self.task, advance=rows, tps=f"{rate:,.0f} tok/s")

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()


# ----------------------------------------------------------------------------------------------------
# Streams and throughput


Feed = Callable[[], list[GenRequest]]  # the next requests; an empty list when there are no more
OnResult = Callable[[int, GenResult], None]  # a request's index (the order fed) and its result


def throughput_stats(results: list[GenResult], seconds: float) -> dict:
    """Generated tokens, wall seconds and tokens/s for a finished ``generate`` call."""
    tokens = sum(r.num_tokens for r in results)
    return {
        "requests": len(results),
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else float("nan"),
        "finished_share": round(sum(r.finished for r in results) / len(results), 4) if results else 0.0,
    }
