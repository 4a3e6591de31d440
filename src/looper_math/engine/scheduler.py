"""The fast engine's scheduler: continuous batching of a stream of requests over one ``FastDecoder``
(``stream_fast``: refill free slots, check finished rows and stop strings every ``check_every`` steps, deliver
each result as it finishes), ``generate_fast`` over a fixed list, and ``fast_slots`` sizing the slots."""

from __future__ import annotations

import time

import torch

from looper_math.engine.decoder import FastDecoder, _causal_lm
from looper_math.engine.kernels import fuse_blocker, fused_copy_bytes
from looper_math.engine.options import FastOptions, _alloc_len, fast_cache_len
from looper_math.engine.requests import (Feed, GenRequest, GenResult, OnResult, _Progress, cut_at_stop, encode_prompts,
                                         eos_ids, pad_id)


def fast_slots(model, batch_size: int, cache_len: int, n_requests: int, max_slots: int = FastOptions.max_slots,
               reserve: int = 0) -> int:
    """Slots: at least batch_size; on CUDA up to ``max_slots`` if the KV cache fits in half the
    free memory less ``reserve`` bytes (the fused weight copies) (large batches are what make decode efficient)."""
    slots = batch_size
    if model.device.type == "cuda":
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        per_slot = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * cache_len * model.dtype.itemsize
        per_slot += 16 * cfg.vocab_size  # float logits + sort buffers
        free, _ = torch.cuda.mem_get_info(model.device)
        slots = max(slots, min(max_slots, int(0.5 * max(free - reserve, 0) // per_slot)))
    return max(1, min(slots, n_requests))


def generate_fast(model, tokenizer, requests: list[GenRequest], *, max_new_tokens: int, batch_size: int = 32,
                  stop_strings: list[str] | None = None, progress: bool = True, min_new_tokens: int = 0,
                  desc: str = "generate", options: FastOptions = FastOptions(), stats: dict | None = None) -> list[GenResult]:
    """The fast engine (``FastDecoder``): the same contract as ``generate`` (see ``engine.api``'s docstring), its
    switches in ``options``. ``generate(engine="fast")`` calls it; bench and tests may call it directly.
    ``stats``: see ``stream_fast``."""
    results: list[GenResult | None] = [None] * len(requests)
    pending = [list(requests)]

    def on_result(i: int, res: GenResult) -> None:
        results[i] = res

    stream_fast(model, tokenizer, lambda: pending.pop() if pending else [], on_result,
                longest_prompt=max(len(x) for x in encode_prompts(tokenizer, [r.prompt for r in requests])),
                total=len(requests), max_new_tokens=max_new_tokens, batch_size=batch_size, stop_strings=stop_strings,
                progress=progress, min_new_tokens=min_new_tokens, desc=desc, options=options, stats=stats,
                sampled=any(r.temperature > 0 for r in requests),
                truncate=any(r.temperature > 0 and r.top_p < 1 for r in requests))
    return results  # type: ignore[return-value]


@torch.no_grad()
def stream_fast(model, tokenizer, feed: Feed, on_result: OnResult, *, longest_prompt: int, total: int,
                max_new_tokens: int, batch_size: int = 32, stop_strings: list[str] | None = None, progress: bool = True,
                min_new_tokens: int = 0, desc: str = "generate", options: FastOptions = FastOptions(),
                stats: dict | None = None, sampled: bool = True, truncate: bool = True) -> None:
    """The fast engine over requests that arrive while it runs: ``feed()`` is called whenever fewer requests
    wait than slots are free, and each result goes to ``on_result`` as soon as its request finishes, so one
    call's slots stay full from the first request to the last (no tail per batch of requests).

    Fixed for the call: the cache holds ``longest_prompt`` prompt tokens (a longer prompt is a ValueError);
    ``total`` bounds the requests (slots and the progress bar); ``sampled`` / ``truncate`` build the sampling
    path (a fed request with temperature > 0, or top_p < 1, needs them True).

    ``stats``: where the time goes, added to the dict's existing values so one dict can sum several calls:
    ``calls``; ``slot_steps`` (decode steps x slots) and ``busy_slot_steps`` (of those, the ones whose slot held a
    request; a request counts until the check that finds it finished, at most ``check_every`` steps late), so
    ``busy_slot_steps / slot_steps`` is the slot occupancy (what a call's tail and too few requests cost);
    ``host_seconds``: the CPU work after each check's copy from the GPU (finished slots, stop strings, decoding
    texts), during which the GPU waits; ``refill_seconds``: putting new requests into free slots (prefill);
    ``callback_seconds``: time in ``feed`` and ``on_result`` (the caller's work; in neither of the two before)."""
    o = options
    eos = eos_ids(model, tokenizer)
    pad = pad_id(tokenizer, eos)
    cache_len = fast_cache_len(longest_prompt, max_new_tokens)
    causal = _causal_lm(model)
    reserve = fused_copy_bytes(causal) if fuse_blocker(causal, o.fuse, o.compile) is None else 0
    n_slots = o.slots or fast_slots(model, batch_size, _alloc_len(cache_len, o.attn, o.flex_block), max(total, 1),
                                    o.max_slots, reserve)
    dec = FastDecoder(model, slots=n_slots, cache_len=cache_len, max_new_tokens=max_new_tokens,
                      min_new_tokens=min_new_tokens, eos=eos, pad=pad, sampled=sampled, attn=o.attn, compile=o.compile,
                      truncate=truncate, prefill_tokens=o.prefill_tokens, flex_block=o.flex_block, fuse=o.fuse)
    dec.capture()
    requests: list[GenRequest] = []
    ids: list[list[int]] = []
    queue: list[int] = []  # request indices, the next one last
    owner: list[int | None] = [None] * n_slots  # request index per slot
    checked = [0] * n_slots  # tokens already scanned for stop strings
    bar = _Progress(progress, total, desc)
    # tokens re-decoded before the unchecked ones: covers a stop string straddling two checks
    # (byte-fallback tokenizers may spend up to 4 tokens on one character)
    margin = 4 * max((len(x) for x in stop_strings or []), default=0) + 4
    counters = {"calls": 1, "slot_steps": 0, "busy_slot_steps": 0, "host_seconds": 0.0, "refill_seconds": 0.0,
                "callback_seconds": 0.0}
    exhausted = False

    def has_stop(toks: list[int]) -> bool:
        return cut_at_stop(tokenizer.decode(toks, skip_special_tokens=True), stop_strings)[1]

    def pull(need: int) -> None:
        """Ask the feed until ``need`` requests wait or it has no more; each batch longest first, identical
        prompts adjacent so a refill prefills them once, behind the requests already waiting."""
        nonlocal exhausted
        while len(queue) < need and not exhausted:
            t0 = time.perf_counter()
            more = feed()
            counters["callback_seconds"] += time.perf_counter() - t0
            if not more:
                exhausted = True
                break
            new_ids = encode_prompts(tokenizer, [r.prompt for r in more])
            for r, x in zip(more, new_ids):
                if len(x) > longest_prompt:
                    raise ValueError(f"a fed prompt has {len(x)} tokens, more than the call's longest_prompt={longest_prompt}")
                if (r.temperature > 0 and not sampled) or (r.temperature > 0 and r.top_p < 1 and not truncate):
                    raise ValueError(f"a fed request samples (temperature={r.temperature}, top_p={r.top_p}) but the call "
                                     f"was built with sampled={sampled}, truncate={truncate}")
            base = len(requests)
            requests.extend(more)
            ids.extend(new_ids)
            queue[:0] = sorted(range(base, len(requests)), key=lambda i: (-len(ids[i]), ids[i]))[::-1]

    def refill() -> None:
        free = [s for s in range(n_slots) if owner[s] is None]
        pull(len(free))
        t1 = time.perf_counter()  # the feed's time is callback_seconds, not refill
        free = free[: len(queue)]
        if free:
            taken = [queue.pop() for _ in free]
            for s, i in zip(free, taken):
                owner[s], checked[s] = i, 0
            dec.prefill(free, [ids[i] for i in taken], [requests[i] for i in taken])
        counters["refill_seconds"] += time.perf_counter() - t1

    def finalize(s: int, toks: list[int], hit_eos: bool) -> None:
        n, stopped = len(toks), False
        if stop_strings and has_stop(toks):
            # the first token whose text completes a stop string, as StopStringCriteria stops there
            n = next(k for k in range(max(checked[s], 1), len(toks) + 1) if has_stop(toks[:k]))
            stopped = True
        text, _ = cut_at_stop(tokenizer.decode(toks[:n], skip_special_tokens=True), stop_strings)
        finished = stopped or (hit_eos and n == len(toks))
        i, owner[s] = owner[s], None
        bar.update(1, n)
        t0 = time.perf_counter()
        on_result(i, GenResult(text=text, num_tokens=n, finished=finished, token_ids=toks[:n]))
        counters["callback_seconds"] += time.perf_counter() - t0

    def process() -> bool:
        """Finalize finished slots (EOS, max tokens, stop string); True if any slot was freed."""
        active, count = dec.active.tolist(), dec.count.tolist()
        hit_eos, out = dec.hit_eos.tolist(), dec.out.cpu()
        t0 = time.perf_counter()  # the GPU has caught up (the copies above wait for it): host work from here
        callbacks0 = counters["callback_seconds"]
        freed, by_stop = False, []
        for s in range(n_slots):
            if owner[s] is None or (active[s] and not stop_strings):
                continue
            toks = out[s, : count[s]].tolist()
            if not active[s]:
                finalize(s, toks, hit_eos[s])
                freed = True
            else:
                if has_stop(toks[max(0, checked[s] - margin) :]):
                    finalize(s, toks, False)
                    by_stop.append(s)
                else:
                    checked[s] = len(toks)
        if by_stop:
            dec.active[torch.tensor(by_stop, device=dec.device)] = False
        counters["host_seconds"] += time.perf_counter() - t0 - (counters["callback_seconds"] - callbacks0)
        return freed or bool(by_stop)

    try:
        refill()
        while True:
            if process() and (queue or not exhausted):
                refill()
                continue
            busy = sum(x is not None for x in owner)
            if not busy:
                break
            for _ in range(o.check_every):
                dec.step()
            counters["slot_steps"] += o.check_every * n_slots
            counters["busy_slot_steps"] += o.check_every * busy
    finally:
        bar.close()
        dec.release()
        if stats is not None:
            for k, v in counters.items():
                stats[k] = stats.get(k, 0) + v
