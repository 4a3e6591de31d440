"""One generation interface for every phase: ``generate(model, tokenizer, requests, ...)``.

Engines behind it:
- ``engine="hf"``: plain batched ``model.generate`` (dynamic cache), the reference path.
- ``engine="fast"``: ``generate_fast`` (static KV cache + CUDA-graph decode step), switches in ``FastOptions``.

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

from looper_math.engine.hf import _generate_hf
from looper_math.engine.options import FAST_SUPPORTED, ATTN_CORES, FastOptions, fast_cache_len, fast_options
from looper_math.engine.requests import (Feed, GenRequest, GenResult, OnResult, encode_prompts, prompt_tokens,
                                         throughput_stats)
from looper_math.engine.scheduler import generate_fast, stream_fast

# the names the phases, bench and tests import; each lives in the engine module that says where
__all__ = ["ATTN_CORES", "ENGINES", "FAST_SUPPORTED", "FastOptions", "GenRequest", "GenResult", "encode_prompts",
           "fast_cache_len", "fast_options", "generate", "generate_fast", "generate_stream", "prompt_tokens",
           "resolve_engine", "stream_fast", "throughput_stats"]


ENGINES = ("auto", "hf", "fast")


def resolve_engine(model, engine: str) -> str:
    """``engine`` checked; "auto" is the fast engine where it is supported and pays off (CUDA), else the plain path."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "auto":
        return "fast" if model.device.type == "cuda" and model.config.model_type in FAST_SUPPORTED else "hf"
    return engine


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
    fast: FastOptions | None = None,
    stats: dict | None = None,
) -> list[GenResult]:
    """Generate completions for ``requests``; results in input order. See the module docstring.
    ``fast``: the fast engine's switches (its defaults when None). ``stats``: a dict the fast engine adds its
    counters to (``generate_fast``); the plain engine leaves it as it is."""
    engine = resolve_engine(model, engine)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not requests:
        return []
    stop_strings = list(stop_strings) if stop_strings else None
    if engine == "fast":
        return generate_fast(
            model, tokenizer, requests, max_new_tokens=max_new_tokens, batch_size=batch_size,
            stop_strings=stop_strings, progress=progress, min_new_tokens=min_new_tokens, desc=desc,
            options=fast or FastOptions(), stats=stats,
        )
    return _generate_hf(
        model, tokenizer, requests, max_new_tokens=max_new_tokens, batch_size=batch_size,
        stop_strings=stop_strings, progress=progress, min_new_tokens=min_new_tokens, desc=desc,
    )


def generate_stream(model, tokenizer, feed: "Feed", on_result: "OnResult", *, total: int, longest_prompt: int,
                    max_new_tokens: int, batch_size: int = 32, stop_strings: list[str] | None = None, engine: str = "hf",
                    progress: bool = True, desc: str = "generate", fast: FastOptions | None = None,
                    stats: dict | None = None, sampled: bool = True, truncate: bool = True) -> None:
    """``generate`` over requests that arrive while it runs (rollouts: one round of questions per ``feed()``
    call). Each result goes to ``on_result(index, result)``, the index counting requests in the order fed.

    The plain engine generates each fed list as one ``generate`` call and delivers its results before it
    calls ``feed`` again. The fast engine (``stream_fast``) asks for more whenever fewer requests wait than
    slots are free and delivers each result when its request finishes, so its slots do not idle at the end
    of each fed list; ``feed`` may then run before the results of earlier lists are all in. ``total`` bounds
    the requests, ``longest_prompt`` their prompt tokens; ``sampled`` / ``truncate`` as in ``stream_fast``."""
    engine = resolve_engine(model, engine)
    if total < 1:  # nothing to generate (a resumed run that is complete): no decoder, no graph capture
        return
    stop_strings = list(stop_strings) if stop_strings else None
    if engine == "fast":
        stream_fast(model, tokenizer, feed, on_result, longest_prompt=longest_prompt, total=total,
                    max_new_tokens=max_new_tokens, batch_size=batch_size, stop_strings=stop_strings, progress=progress,
                    desc=desc, options=fast or FastOptions(), stats=stats, sampled=sampled, truncate=truncate)
        return
    base = 0
    while more := feed():
        results = generate(model, tokenizer, more, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           stop_strings=stop_strings, engine="hf", progress=progress, desc=desc)
        for i, res in enumerate(results):
            on_result(base + i, res)
        base += len(more)
