"""One generation interface for every phase: ``generate(model, tokenizer, requests, ...)``.

Engines behind it:
- ``engine="hf"``: plain batched ``model.generate`` (dynamic cache), the reference path.
- ``engine="fast"``: see ``_generate_fast`` (static KV cache + compiled/CUDA-graph decode step).

Guarantees, whatever the engine:
- results come back in input order; prompts are left padded, sorted by token length to cut padding;
- a prompt that already starts with the tokenizer's BOS string is tokenized without special tokens
  (no double BOS after a chat template); otherwise special tokens are added as the tokenizer defines;
- sampling is per request: each request's temperature / top_p / seed, and its draws do not depend on
  which other requests share its batch. Each row owns a ``torch.Generator`` seeded with the request
  seed that pre-draws one uniform per decode step; the token is chosen by inverse-CDF sampling of the
  row's temperature-scaled, top-p-truncated distribution with that uniform. The processor returns
  logits that are -inf everywhere but the chosen token, so ``model.generate`` runs with
  ``do_sample=False`` and greedy rows (temperature 0), sampled rows and different temperatures share
  a batch; greedy rows are left untouched, so greedy output equals plain greedy ``generate``;
- ``num_tokens`` counts generated tokens up to and including the token that finished the row (EOS or
  the last token of a stop string), never padding; ``finished`` says a stop happened within budget;
- ``text`` is the decoded completion (special tokens skipped) cut at the first stop string.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria
from transformers import StoppingCriteriaList
from transformers.generation.stopping_criteria import StopStringCriteria

ENGINES = ("hf", "fast")


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


# ----------------------------------------------------------------------------------------------------
# Tokenization and batching helpers shared by the engines


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids per prompt; no special tokens when the text already starts with the BOS string."""
    bos = tokenizer.bos_token
    out = []
    for p in prompts:
        add_special = not (bos and p.startswith(bos))
        out.append(tokenizer(p, add_special_tokens=add_special)["input_ids"])
    return out


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
# Per-row seeded sampling


def draw_uniforms(requests: list[GenRequest], steps: int) -> torch.Tensor:
    """[rows, steps] uniforms; row i comes from a torch.Generator seeded with requests[i].seed, so a
    request's draws are the same whatever batch it lands in."""
    rows = []
    for r in requests:
        g = torch.Generator().manual_seed(int(r.seed))
        rows.append(torch.rand(steps, generator=g, dtype=torch.float64))
    return torch.stack(rows).to(torch.float32)


def sample_rows(
    scores: torch.Tensor,
    uniforms: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    greedy: torch.Tensor,
) -> torch.Tensor:
    """Inverse-CDF sampling per row; returns token ids [B].

    scores [B, V] float32 (already processed, e.g. -inf on a blocked EOS); uniforms [B] in [0, 1);
    temperature / top_p [B]; greedy [B] bool (those rows take the argmax). Top-p keeps the smallest
    prefix of the sorted distribution whose mass reaches top_p (as transformers' TopPLogitsWarper)."""
    t = torch.where(greedy, torch.ones_like(temperature), temperature)
    sorted_logits, sorted_idx = torch.sort(scores / t[:, None], dim=-1, descending=True, stable=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    cum = probs.cumsum(-1)
    probs = probs * ((cum - probs) < top_p[:, None])
    cum = probs.cumsum(-1)
    target = (uniforms * cum[:, -1])[:, None]
    j = torch.searchsorted(cum, target, right=True).clamp_(max=scores.shape[-1] - 1)
    sampled = sorted_idx.gather(1, j).squeeze(1)
    return torch.where(greedy, scores.argmax(-1), sampled)


class PerRowSampler(LogitsProcessor):
    """Samples each row with its own temperature / top_p / seeded uniforms, and hands generate()
    logits that are -inf except at the chosen token (generate runs with do_sample=False)."""

    def __init__(self, requests: list[GenRequest], prompt_width: int, steps: int, device):
        self.prompt_width = prompt_width
        self.uniforms = draw_uniforms(requests, steps).to(device)
        self.temperature = torch.tensor([float(r.temperature) for r in requests], device=device)
        self.top_p = torch.tensor([float(r.top_p) for r in requests], device=device)
        self.greedy = self.temperature <= 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_width
        tok = sample_rows(scores.float(), self.uniforms[:, step], self.temperature, self.top_p, self.greedy)
        forced = torch.full_like(scores, float("-inf"))
        forced.scatter_(1, tok[:, None], 0.0)
        # greedy rows keep their exact logits so they match plain greedy generate bit for bit
        return torch.where(self.greedy[:, None], scores, forced)


class StopRecorder(StoppingCriteria):
    """EOS or stop-string stop, recording per row the first decode step at which it happened
    (on device, no host sync), so num_tokens is exact even when pad == eos."""

    def __init__(self, eos: list[int], stop_strings: list[str] | None, tokenizer, prompt_width: int, rows: int, device):
        self.eos = torch.tensor(eos, device=device)
        self.stop = StopStringCriteria(tokenizer=tokenizer, stop_strings=stop_strings) if stop_strings else None
        self.prompt_width = prompt_width
        self.first_stop = torch.full((rows,), -1, dtype=torch.long, device=device)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = torch.isin(input_ids[:, -1], self.eos)
        if self.stop is not None:
            done = done | self.stop(input_ids, scores)
        step = input_ids.shape[1] - self.prompt_width - 1
        self.first_stop = torch.where((self.first_stop < 0) & done, step, self.first_stop)
        return done


def results_from_ids(
    tokenizer, gen_ids: torch.Tensor, first_stop: list[int], stop_strings: list[str] | None
) -> list[GenResult]:
    """gen_ids [B, T] generated ids (prompt removed); first_stop per row (-1: never stopped)."""
    out = []
    for row, fs in zip(gen_ids.tolist(), first_stop):
        n = fs + 1 if fs >= 0 else len(row)
        text, cut = cut_at_stop(tokenizer.decode(row[:n], skip_special_tokens=True), stop_strings)
        out.append(GenResult(text=text, num_tokens=n, finished=fs >= 0 or cut))
    return out


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
# Public interface


def generate(
    model,
    tokenizer,
    requests: list[GenRequest],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    stop_strings: list[str] | None = None,
    engine: str = "hf",
    progress: bool = True,
    min_new_tokens: int = 0,
    desc: str = "generate",
) -> list[GenResult]:
    """Generate completions for ``requests``; results in input order. See the module docstring."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not requests:
        return []
    stop_strings = list(stop_strings) if stop_strings else None
    if engine == "fast":
        return _generate_fast(
            model, tokenizer, requests, max_new_tokens=max_new_tokens, batch_size=batch_size,
            stop_strings=stop_strings, progress=progress, min_new_tokens=min_new_tokens, desc=desc,
        )
    return _generate_hf(
        model, tokenizer, requests, max_new_tokens=max_new_tokens, batch_size=batch_size,
        stop_strings=stop_strings, progress=progress, min_new_tokens=min_new_tokens, desc=desc,
    )


@torch.inference_mode()
def _generate_hf(model, tokenizer, requests, *, max_new_tokens, batch_size, stop_strings, progress,
                 min_new_tokens, desc) -> list[GenResult]:
    device = model.device
    eos = eos_ids(model, tokenizer)
    pad = pad_id(tokenizer, eos)
    ids = encode_prompts(tokenizer, [r.prompt for r in requests])
    results: list[GenResult | None] = [None] * len(requests)
    bar = _Progress(progress, len(requests), desc)
    try:
        for batch in length_sorted_batches([len(x) for x in ids], batch_size):
            input_ids, mask = left_pad([ids[i] for i in batch], pad, device)
            width = input_ids.shape[1]
            reqs = [requests[i] for i in batch]
            processors = LogitsProcessorList()
            if any(r.temperature > 0 for r in reqs):
                processors.append(PerRowSampler(reqs, width, max_new_tokens, device))
            recorder = StopRecorder(eos, stop_strings, tokenizer, width, len(batch), device)
            config = GenerationConfig(
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens or None,
                do_sample=False,
                # only what the request says shapes the distribution, never a hub generation_config
                repetition_penalty=1.0,
                no_repeat_ngram_size=0,
                eos_token_id=eos,
                pad_token_id=pad,
                bos_token_id=tokenizer.bos_token_id,
            )
            out = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([recorder]),
            )
            batch_results = results_from_ids(tokenizer, out[:, width:], recorder.first_stop.tolist(), stop_strings)
            for i, res in zip(batch, batch_results):
                results[i] = res
            bar.update(len(batch), sum(r.num_tokens for r in batch_results))
    finally:
        bar.close()
    return results  # type: ignore[return-value]


def _generate_fast(model, tokenizer, requests, **kwargs) -> list[GenResult]:
    raise NotImplementedError("engine='fast' is being built; use engine='hf'")


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
