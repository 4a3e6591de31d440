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

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria
from transformers import StoppingCriteriaList
from transformers.generation.stopping_criteria import StopStringCriteria

ENGINES = ("auto", "hf", "fast")


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
    truncate: bool = True,
) -> torch.Tensor:
    """Inverse-CDF sampling per row; returns token ids [B].

    scores [B, V] float32 (already processed, e.g. -inf on a blocked EOS); uniforms [B] in [0, 1);
    temperature / top_p [B]; greedy [B] bool (those rows take the argmax). Rows with top_p < 1 keep the
    smallest prefix of the sorted distribution whose mass reaches top_p (as transformers'
    TopPLogitsWarper) and invert the CDF in sorted order. Rows with top_p >= 1 invert the CDF in
    vocabulary order: the same distribution without sorting the vocabulary, which at a 152k vocabulary
    and thousands of rows costs more than the rest of a small model's decode step. Which path a row
    takes depends on its own top_p only, so its token never depends on the other rows of its batch.
    ``truncate=False`` (the caller knows no row has top_p < 1) skips the sorted path entirely."""
    t = torch.where(greedy, torch.ones_like(temperature), temperature)
    scaled = scores / t[:, None]
    u = uniforms[:, None]
    vocab = scores.shape[-1]
    cum = torch.softmax(scaled, dim=-1).cumsum(-1)
    plain = torch.searchsorted(cum, u * cum[:, -1:], right=True).clamp_(max=vocab - 1).squeeze(1)
    sampled = plain
    if truncate:
        sorted_logits, sorted_idx = torch.sort(scaled, dim=-1, descending=True, stable=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        cum = probs.cumsum(-1)
        probs = probs * ((cum - probs) < top_p[:, None])
        cum = probs.cumsum(-1)
        j = torch.searchsorted(cum, u * cum[:, -1:], right=True).clamp_(max=vocab - 1)
        sampled = torch.where(top_p < 1, sorted_idx.gather(1, j).squeeze(1), plain)
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
        self.truncate = bool((self.top_p < 1).any())

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_width
        tok = sample_rows(scores.float(), self.uniforms[:, step], self.temperature, self.top_p, self.greedy, self.truncate)
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
        out.append(GenResult(text=text, num_tokens=n, finished=fs >= 0 or cut, token_ids=row[:n]))
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


# ----------------------------------------------------------------------------------------------------
# Fast engine: slot-based continuous batching over a static KV cache, decode step in one CUDA graph

FAST_SUPPORTED = ("llama", "mistral", "qwen2")


@dataclass(frozen=True)
class FastOptions:
    """The fast engine's switches (``generate(..., engine="fast", fast=FastOptions(...))``); the defaults are
    the measured ones."""

    slots: int | None = None  # sequences decoded together; None: at least batch_size, more where memory allows
    # upper bound on slots on CUDA; the KV cache must also fit in half the free memory (fast_slots). 7B shape on
    # an H100: 128/256/384/512 slots gave 7.0k/9.5k/10.4k/11.0k tok/s (bench/bench_decode.py, bench/RESULTS.md),
    # and memory caps it near 512 there; a 0.5B model's step costs about the same at 2,048 slots as at 512, so
    # small models get the large batches.
    max_slots: int = 2048
    # decode attention core: "sdpa" (grouped query folded into q_len, boolean length mask over the whole static
    # cache), "bmm" (matmul + softmax, the same mask) or "flex" (FlexAttention with a BlockMask updated in place
    # each step: each slot reads only the KV blocks up to its own position; compiled on CUDA; see FlexDecodeMask)
    attn: str = "sdpa"
    flex_block: int = 64  # attn="flex": KV block of the BlockMask (a power of two >= 16); the cache is padded to it
    compile: bool = False  # torch.compile the decoder layer before graph capture (bench measures both; module path)
    # the fused decode layer (see _fused_layers) wherever the model allows it (fuse_blocker: plain nn.Linear
    # projections, i.e. base or merged weights, SiLU, the RMSNorm); False: the model's own modules every step.
    # H200, 7B shape, k = 8, flex: 1.33x / 1.26x / 1.20x at 160 / 256 / 512 slots; 0.5B rollouts 1.12x
    # (bench/RESULTS.md section 1, session 9); costs ~5 s of compile per process and 8.4 GiB of weight copies on a 7B
    fuse: bool = True
    check_every: int = 16  # decode steps between host syncs (finished rows, stop strings, refills)
    prefill_tokens: int = 16384  # padded prompt tokens per prefill forward

    def __post_init__(self):
        _check_attn(self.attn, self.flex_block)


ATTN_CORES = ("sdpa", "bmm", "flex")


def fast_options(eval_cfg) -> FastOptions:
    """The fast engine's switches a config's ``eval`` section sets (``fast_attn``, ``fast_fuse``)."""
    return FastOptions(attn=eval_cfg.fast_attn, fuse=eval_cfg.fast_fuse)


def _check_attn(attn: str, flex_block: int) -> None:
    if attn not in ATTN_CORES:
        raise ValueError(f"FastOptions.attn must be one of {ATTN_CORES}, got {attn!r}")
    if not (isinstance(flex_block, int) and flex_block >= 16 and flex_block & (flex_block - 1) == 0):
        raise ValueError(f"FastOptions.flex_block must be a power of two >= 16, got {flex_block!r}")


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def fast_cache_len(longest_prompt: int, max_new_tokens: int) -> int:
    """The fast engine's cache length for one call: the longest prompt plus the new tokens, rounded up to a
    multiple of 64 (one graph per call; aligned attention kernels). Bench's profile and roofline use it too."""
    return _round_up(longest_prompt + max_new_tokens, 64)


def _attend_sdpa(q, K, V, mask, scale):
    """q [B, Hkv, G, D] (the G query heads sharing a KV head folded into the query axis, so K/V are
    read once and never repeated); K/V [B, Hkv, L, D]; mask [B, 1, 1, L] bool."""
    return torch.nn.functional.scaled_dot_product_attention(q, K, V, attn_mask=mask, scale=scale)


def _attend_bmm(q, K, V, mask, scale):
    scores = torch.matmul(q, K.transpose(-1, -2)).float() * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1).to(V.dtype), V)


_FLEX_COMPILED = None


def _flex_compiled():
    """``torch.compile(flex_attention)``, created once per process (the fused Triton kernel; without compile
    flex_attention materializes the full score matrix). ``dynamic=False``: the decode kernel (flex_decoding)
    needs static batch and head counts, and each decoder's shapes are fixed anyway."""
    global _FLEX_COMPILED
    if _FLEX_COMPILED is None:
        import torch._dynamo

        from torch.nn.attention.flex_attention import flex_attention

        # one compile per (slots, cache length): past dynamo's default limit of 8 it would fall back to eager
        # flex_attention, whose CPU-side tensors break CUDA-graph capture (seen in a bench sweeping 5 slot counts)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        _FLEX_COMPILED = torch.compile(flex_attention, dynamic=False)
    return _FLEX_COMPILED


def _attend_flex(q, K, V, block_mask, scale):
    """FlexAttention over the slot caches with a ``FlexDecodeMask.block_mask``; plain (uncompiled)
    flex_attention: the CPU path, and the one traced when the whole decoder layer is torch.compiled.
    q [B, Hkv, G, D] folded as for sdpa: flex then sees Hq == Hkv (no enable_gqa), so its decode kernel
    applies whatever G is (with enable_gqa it requires Hq / Hkv to be a power of two, e.g. not Qwen2's 7),
    and K/V are read once per KV head."""
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(q, K, V, block_mask=block_mask, scale=scale)


def _attend_flex_compiled(q, K, V, block_mask, scale):
    """``_attend_flex`` through the process-wide compiled flex_attention (CUDA, layer not compiled)."""
    return _flex_compiled()(q, K, V, block_mask=block_mask, scale=scale)


def _alloc_len(cache_len: int, attn: str, flex_block: int) -> int:
    """Cache length a decoder allocates: ``cache_len``, or for attn="flex" padded to a multiple of the KV block
    so the BlockMask has whole blocks (the padding is never read: no slot's length reaches it)."""
    return _round_up(cache_len, flex_block) if attn == "flex" else cache_len


class FlexDecodeMask:
    """The decode step's BlockMask for attn="flex": one query row per slot (q_len = the G folded query heads)
    against that slot's cache [0, kv_len), kv_len a multiple of ``block``.

    Valid positions of slot b are 0..pos[b] (pos[b]: where this step's token is written, so inclusive).
    Blocks wholly below pos[b] + 1 are "full" (no mask_mod applied), the block holding pos[b] (if it is not
    complete) is the one "partial" block, where ``mask_mod`` (kv_idx <= pos[b], reading the live ``pos``
    tensor) cuts the tail; blocks above are never read. All tensors have fixed shapes and addresses and
    ``update()`` rewrites them in place from ``pos`` with device ops only (no host sync), so the same
    BlockMask object serves every step of a captured CUDA graph.
    """

    def __init__(self, pos: torch.Tensor, q_len: int, kv_len: int, block: int):
        from torch.nn.attention.flex_attention import BlockMask

        if kv_len % block:
            raise ValueError(f"kv_len {kv_len} is not a multiple of the flex block {block}")
        B, dev = pos.shape[0], pos.device
        self.pos, self.block, self.kv_len, self.n_blocks = pos, block, kv_len, kv_len // block
        idx = torch.arange(self.n_blocks, dtype=torch.int32, device=dev).expand(B, 1, 1, self.n_blocks)
        self.full_num = torch.zeros(B, 1, 1, dtype=torch.int32, device=dev)
        self.full_idx = idx.contiguous()  # fixed: blocks 0..full_num-1
        self.partial_num = torch.zeros(B, 1, 1, dtype=torch.int32, device=dev)  # 0 or 1
        self.partial_idx = idx.contiguous()  # [..., 0] rewritten: the block holding pos

        def mask_mod(b, h, q_idx, kv_idx):
            return kv_idx <= pos[b]

        # q blocks are only for the backward pass (compute_q_blocks=False: nothing stale to keep in sync)
        self.block_mask = BlockMask.from_kv_blocks(
            self.partial_num, self.partial_idx, self.full_num, self.full_idx, BLOCK_SIZE=(128, block),
            mask_mod=mask_mod, seq_lengths=(q_len, kv_len), compute_q_blocks=False,
        )
        self.update()

    def update(self) -> None:
        B = self.pos.shape[0]
        n = (self.pos + 1).clamp(1, self.kv_len)  # valid positions per slot
        full = torch.div(n, self.block, rounding_mode="floor")
        self.full_num.copy_(full.view(B, 1, 1))
        self.partial_num.copy_((n % self.block != 0).view(B, 1, 1))
        self.partial_idx[:, 0, 0, 0].copy_(full.clamp(max=self.n_blocks - 1))


# ---- the fused decode layer (FastOptions.fuse) ----------------------------------------------------------
# The module path below costs ~38 kernels per layer per step: the models' RMSNorm (7 ops), rotary (rotate_half:
# slice, neg, cat, two muls, add, for q and k), three q/k/v and two gate/up GEMMs, SiLU, the mul and the
# residual adds. With plain nn.Linear projections (no LoRA left unmerged) the fused path runs the same math as
# ~11 kernels: q/k/v and gate/up each one GEMM over concatenated weights (a copy: the model is not touched),
# and the elementwise parts as three small functions that torch.compile fuses into one Triton kernel each on
# CUDA (residual add + RMSNorm; split + rotary; SiLU * up). On CPU they run eagerly (the tests compare them
# with the module path).


def _rms_norm(h, w, eps: float):
    """The models' RMSNorm (Llama / Mistral / Qwen2): in float32, then back to h's dtype, times the weight."""
    x = h.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return w * x.to(h.dtype)


def _add_rms_norm(h, delta, w, eps: float):
    """The residual add and the next RMSNorm: (h + delta, norm(h + delta))."""
    h = h + delta
    return h, _rms_norm(h, w, eps)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _split_rope(qkv, cos, sin, Hkv: int, G: int, D: int):
    """[B, 1, (Hkv*G + 2*Hkv) * D] -> q [B, Hkv, G, D] (query heads folded per KV head, as the attention
    cores take them) and k, v [B, Hkv, 1, D], rotary applied to q and k as the models' apply_rotary_pos_emb."""
    B = qkv.shape[0]
    q, k, v = qkv.view(B, Hkv * G + 2 * Hkv, D).split([Hkv * G, Hkv, Hkv], dim=1)
    cos, sin = cos.view(B, 1, D), sin.view(B, 1, D)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    return q.view(B, Hkv, G, D), k.view(B, Hkv, 1, D), v.reshape(B, Hkv, 1, D)


def _silu_mul(gu, inter: int):
    g, u = gu.split(inter, dim=-1)
    return torch.nn.functional.silu(g) * u


_FUSED_PARTS = None


def _fused_parts(compiled: bool):
    """(add_rms_norm, rms_norm, split_rope, silu_mul): compiled once per process on CUDA, eager otherwise.
    Default (automatic) dynamic shapes: the first slot count gets a static kernel, a second one a kernel for any
    batch, so calls with varying slot counts (eval's chunks) stop recompiling after two."""
    global _FUSED_PARTS
    eager = (_add_rms_norm, _rms_norm, _split_rope, _silu_mul)
    if not compiled:
        return eager
    if _FUSED_PARTS is None:
        # emulate_precision_casts: round where eager rounds to bf16 (rotary's products, the norm's cast before
        # the weight). Without it the fused path agreed with hf's bf16 greedy output on 0.719 of the GPU test's
        # rows against the module path's 0.812; with it on 0.812 (bench/RESULTS.md section 1, session 9)
        _FUSED_PARTS = tuple(torch.compile(f, fullgraph=True, options={"emulate_precision_casts": True}) for f in eager)
    return _FUSED_PARTS


def fuse_blocker(causal, fuse: bool = True, compile: bool = False) -> str | None:
    """Why the fused decode layer will not stand in for this model's layers (None: it will): not asked for
    (``fuse``), ``compile`` (that compiles the module path's layer), or the model: it needs plain nn.Linear
    projections (a LoRA layer left unmerged, or a quantized one, keeps the module path), SiLU, and the RMSNorm
    the fused path re-implements."""
    if compile:
        return "compile=True"
    if not fuse:
        return "fuse=False"
    cfg = causal.config
    if getattr(cfg, "hidden_act", None) not in ("silu", "swish"):
        return f"hidden_act {getattr(cfg, 'hidden_act', None)!r} is not silu"
    for i, layer in enumerate(causal.model.layers):
        a, m = layer.self_attn, layer.mlp
        for name, mod in (("q_proj", a.q_proj), ("k_proj", a.k_proj), ("v_proj", a.v_proj), ("o_proj", a.o_proj),
                          ("gate_proj", m.gate_proj), ("up_proj", m.up_proj), ("down_proj", m.down_proj)):
            if type(mod) is not torch.nn.Linear:
                return f"layer {i} {name} is a {type(mod).__name__}, not a plain nn.Linear"
        for name, norm in (("input_layernorm", layer.input_layernorm),
                           ("post_attention_layernorm", layer.post_attention_layernorm)):
            if type(norm).__name__ not in _RMS_NORMS:
                return f"layer {i} {name} is a {type(norm).__name__}"
        if (a.q_proj.bias is None) != (a.k_proj.bias is None) or (a.q_proj.bias is None) != (a.v_proj.bias is None):
            return f"layer {i}: q/k/v projections differ in bias"
        if (m.gate_proj.bias is None) != (m.up_proj.bias is None):
            return f"layer {i}: gate/up projections differ in bias"
    if type(causal.model.norm).__name__ not in _RMS_NORMS:
        return f"the final norm is a {type(causal.model.norm).__name__}"
    return None


_RMS_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm")  # weight * normed(x), as _rms_norm


def fused_copy_bytes(causal) -> int:
    """GPU memory the fused path's concatenated q/k/v and gate/up copies take (8.4 GiB on the 7B shape)."""
    n = 0
    for layer in causal.model.layers:
        a, m = layer.self_attn, layer.mlp
        for mod in (a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj):
            n += sum(t.numel() * t.element_size() for t in (mod.weight, mod.bias) if t is not None)
    return n


def _causal_lm(model):
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def _cat_or_none(tensors):
    return None if tensors[0] is None else torch.cat(tensors)


class _FusedLayer:
    """One decoder layer's weights for the fused path: q/k/v and gate/up concatenated (copies), the rest the
    model's own tensors."""

    def __init__(self, layer):
        a, m = layer.self_attn, layer.mlp
        with torch.no_grad():
            self.qkv_w = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
            self.qkv_b = _cat_or_none([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
            self.gu_w = torch.cat([m.gate_proj.weight, m.up_proj.weight])
            self.gu_b = _cat_or_none([m.gate_proj.bias, m.up_proj.bias])
        self.o_w, self.o_b = a.o_proj.weight, a.o_proj.bias
        self.down_w, self.down_b = m.down_proj.weight, m.down_proj.bias
        self.ln1, self.eps1 = layer.input_layernorm.weight, float(layer.input_layernorm.variance_epsilon)
        self.ln2, self.eps2 = layer.post_attention_layernorm.weight, float(layer.post_attention_layernorm.variance_epsilon)
        self.inter = m.gate_proj.weight.shape[0]
        self.scaling = a.scaling


def _fused_layers(fl: list, parts, h, cos, sin, Ks, Vs, write, mask, attend, final_w, final_eps: float,
                  Hkv: int, G: int, D: int):
    """All decoder layers and the final norm on the fused path; returns the normed last hidden state."""
    add_norm, norm, split_rope, silu_mul = parts
    F = torch.nn.functional
    B = h.shape[0]
    x = norm(h, fl[0].ln1, fl[0].eps1)
    for i, (w, K, V) in enumerate(zip(fl, Ks, Vs)):
        q, k, v = split_rope(F.linear(x, w.qkv_w, w.qkv_b), cos, sin, Hkv, G, D)
        K.scatter_(2, write, k)
        V.scatter_(2, write, v)
        o = attend(q, K, V, mask, w.scaling)
        h, x = add_norm(h, F.linear(o.reshape(B, 1, Hkv * G * D), w.o_w, w.o_b), w.ln2, w.eps2)
        d = F.linear(silu_mul(F.linear(x, w.gu_w, w.gu_b), w.inter), w.down_w, w.down_b)
        nxt = fl[i + 1] if i + 1 < len(fl) else None
        h, x = add_norm(h, d, nxt.ln1 if nxt else final_w, nxt.eps1 if nxt else final_eps)
    return x


def _decode_layer(layer, h, cos, sin, K, V, write, mask, rope, attend, Hkv: int, G: int, D: int):
    """One decoder layer for one new token per slot; writes its K/V into the slot caches K/V."""
    B = h.shape[0]
    a = layer.self_attn
    x = layer.input_layernorm(h)
    q = a.q_proj(x).view(B, 1, Hkv * G, D).transpose(1, 2)
    k = a.k_proj(x).view(B, 1, Hkv, D).transpose(1, 2)
    v = a.v_proj(x).view(B, 1, Hkv, D).transpose(1, 2)
    q, k = rope(q, k, cos, sin)
    K.scatter_(2, write, k)
    V.scatter_(2, write, v)
    o = attend(q.reshape(B, Hkv, G, D), K, V, mask, a.scaling)
    h = h + a.o_proj(o.reshape(B, 1, Hkv * G * D))
    return h + layer.mlp(layer.post_attention_layernorm(h))


class FastDecoder:
    """``slots`` sequences decoding together over a static per-slot KV cache.

    Unlike transformers' StaticCache, each slot has its own write position, so a finished slot is
    refilled with the next request while the others keep decoding (continuous batching), and the
    prompt sits at positions [0, n) of its slot with no padding inside the cache. Prefill is the
    model's own forward (right padded, so causal attention needs no mask; identical prompts are
    prefilled once and copied to every slot that asks for them, e.g. the k samples of a question);
    its K/V are copied into the slots. The decode step re-implements the Llama/Mistral/Qwen2 layer
    loop around the model's own modules (norms, projections, MLP, rotary; LoRA layers included),
    replacing only attention: one query token per slot against its cache with a per-slot length
    mask, grouped-query heads folded so K/V are read once. Sampling (the same ``sample_rows`` as the
    hf engine, with per-request seeded uniforms), EOS/min/max bookkeeping all run on device inside
    the step, so on CUDA the whole step is captured once as a CUDA graph and replayed.
    ``attn`` picks the attention core (``ATTN_CORES``, see ``FastOptions.attn``); with "flex" the cache is
    padded to a multiple of ``flex_block`` and ``FlexDecodeMask`` limits each slot's reads to its own length.
    ``fuse``: where the weights are plain (``fuse_blocker`` is None) the step runs ``_fused_layers`` instead of
    the modules; ``fuse_blocker`` holds the reason it does not (``fused`` is then None).
    """

    def __init__(self, model, *, slots: int, cache_len: int, max_new_tokens: int, min_new_tokens: int,
                 eos: list[int], pad: int, sampled: bool, attn: str = FastOptions.attn, compile: bool = FastOptions.compile,
                 truncate: bool = True, prefill_tokens: int = FastOptions.prefill_tokens,
                 flex_block: int = FastOptions.flex_block, fuse: bool = FastOptions.fuse):
        causal = _causal_lm(model)
        config = causal.config
        if config.model_type not in FAST_SUPPORTED:
            raise ValueError(f"engine='fast' supports {FAST_SUPPORTED}, not {config.model_type!r}; use engine='hf'")
        window = getattr(config, "sliding_window", None)  # absent on Llama configs
        if window is not None and getattr(config, "use_sliding_window", True) and cache_len > window:
            raise ValueError(f"cache length {cache_len} exceeds the sliding window {window}; use engine='hf'")
        _check_attn(attn, flex_block)
        import importlib

        self.rope = importlib.import_module(type(causal).__module__).apply_rotary_pos_emb
        self.decoder = causal.model
        self.lm_head = causal.get_output_embeddings()
        self.device = causal.device
        dtype = self.decoder.embed_tokens.weight.dtype
        first = self.decoder.layers[0].self_attn
        self.head_dim = first.head_dim
        self.kv_heads = config.num_key_value_heads
        self.groups = first.num_key_value_groups
        B, L, dev = slots, _alloc_len(cache_len, attn, flex_block), self.device
        self.slots, self.cache_len, self.attn = B, cache_len, attn
        if attn == "flex":  # the compiled kernel on CUDA (traced with the layer when that is compiled)
            self.attend = _attend_flex_compiled if dev.type == "cuda" and not compile else _attend_flex
        else:
            self.attend = {"sdpa": _attend_sdpa, "bmm": _attend_bmm}[attn]
        self.max_new, self.min_new, self.sampled, self.truncate = max_new_tokens, min_new_tokens, sampled, truncate
        self.prefill_tokens = prefill_tokens
        self.K = [torch.zeros(B, self.kv_heads, L, self.head_dim, dtype=dtype, device=dev) for _ in self.decoder.layers]
        self.V = [torch.zeros_like(k) for k in self.K]
        self.eos = torch.tensor(eos, device=dev)
        self.eos_cols = torch.zeros(self.lm_head.weight.shape[0], dtype=torch.bool, device=dev)
        self.eos_cols[self.eos] = True
        self.pad = pad
        self.cols = torch.arange(L, device=dev)
        # per-slot state, updated in place (fixed addresses for the CUDA graph)
        self.tokens = torch.full((B,), pad, dtype=torch.long, device=dev)  # last token, not yet in cache
        self.pos = torch.zeros(B, dtype=torch.long, device=dev)  # where that token's K/V go
        self.count = torch.zeros(B, dtype=torch.long, device=dev)  # tokens generated so far
        self.active = torch.zeros(B, dtype=torch.bool, device=dev)
        self.hit_eos = torch.zeros(B, dtype=torch.bool, device=dev)
        self.out = torch.full((B, max_new_tokens), pad, dtype=torch.long, device=dev)
        self.uniforms = torch.zeros(B, max_new_tokens, dtype=torch.float32, device=dev)
        self.temperature = torch.zeros(B, dtype=torch.float32, device=dev)
        self.top_p = torch.ones(B, dtype=torch.float32, device=dev)
        self.greedy = torch.ones(B, dtype=torch.bool, device=dev)
        self.flex = FlexDecodeMask(self.pos, self.groups, L, flex_block) if attn == "flex" else None
        # regional compilation: one compiled layer reused by all layers (fuses the norms, rotary and
        # residual adds that otherwise cost ~45 small kernels per layer per step)
        self._layer = torch.compile(_decode_layer, dynamic=False) if compile else _decode_layer
        self.fuse_blocker = fuse_blocker(causal, fuse, compile)
        if self.fuse_blocker is None and dev.type == "cuda":  # after the KV cache: the copies must fit beside it
            need, free = fused_copy_bytes(causal), torch.cuda.mem_get_info(dev)[0]
            if need * 1.05 + 2**28 > free:
                self.fuse_blocker = f"not enough free GPU memory for the fused weight copies ({need / 2**30:.1f} GiB)"
        self.fused = None if self.fuse_blocker else [_FusedLayer(layer) for layer in self.decoder.layers]
        self.parts = _fused_parts(compiled=dev.type == "cuda") if self.fused else None
        self.graph = None

    # -- decode -------------------------------------------------------------------------------------
    def _logits(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        B, Hkv, G, D = self.slots, self.kv_heads, self.groups, self.head_dim
        h = self.decoder.embed_tokens(tokens[:, None])
        cos, sin = self.decoder.rotary_emb(h, pos[:, None])
        if self.flex is not None:  # its mask_mod reads self.pos, the only pos this is called with
            self.flex.update()
            mask = self.flex.block_mask
        else:
            mask = (self.cols[None, :] <= pos[:, None])[:, None, None, :]
        write = pos.view(B, 1, 1, 1).expand(B, Hkv, 1, D)
        if self.fused is not None:
            norm = self.decoder.norm
            x = _fused_layers(self.fused, self.parts, h, cos, sin, self.K, self.V, write, mask, self.attend,
                              norm.weight, float(norm.variance_epsilon), Hkv, G, D)
            return self.lm_head(x[:, 0]).float()
        for layer, K, V in zip(self.decoder.layers, self.K, self.V):
            h = self._layer(layer, h, cos, sin, K, V, write, mask, self.rope, self.attend, Hkv, G, D)
        return self.lm_head(self.decoder.norm(h)[:, 0]).float()

    def _choose(self, logits: torch.Tensor, count: torch.Tensor, rows_greedy, rows_t, rows_p, rows_u):
        if self.min_new > 0:
            logits = logits.masked_fill((count < self.min_new)[:, None] & self.eos_cols[None, :], float("-inf"))
        u = rows_u.gather(1, count.clamp(max=self.max_new - 1)[:, None]).squeeze(1)
        if self.sampled:
            return sample_rows(logits, u, rows_t, rows_p, rows_greedy, self.truncate)
        return logits.argmax(-1)

    def _step(self) -> None:
        logits = self._logits(self.tokens, self.pos)
        nxt = self._choose(logits, self.count, self.greedy, self.temperature, self.top_p, self.uniforms)
        act = self.active
        col = self.count.clamp(max=self.max_new - 1)[:, None]
        self.out.scatter_(1, col, torch.where(act, nxt, self.out.gather(1, col)[:, 0])[:, None])
        eos_now = (nxt[:, None] == self.eos[None, :]).any(-1) & act
        self.hit_eos |= eos_now
        self.count += act
        self.pos += act
        self.active &= ~eos_now & (self.count < self.max_new)
        self.tokens.copy_(torch.where(act, nxt, self.tokens))

    def capture(self) -> None:
        """Warm up and capture one decode step as a CUDA graph. Call while every slot is inactive
        (warm-up steps only touch position 0 of free slots, which a prefill overwrites)."""
        if self.device.type != "cuda":
            return
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()

    def release(self) -> None:
        """Free the KV cache and the graph's memory pool now (not at the next garbage collection):
        a rollout round's decoder must be gone before the next round sizes and allocates its own."""
        self.graph = None
        self.K, self.V = [], []
        self.flex = None
        self.fused = None  # the concatenated weight copies
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def step(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self._step()

    # -- prefill ------------------------------------------------------------------------------------
    def prefill(self, slots: list[int], prompts: list[list[int]], reqs: list[GenRequest]) -> None:
        """Put requests into free slots: prompt K/V into the cache, first token sampled."""
        unique: dict[tuple[int, ...], int] = {}
        src = [unique.setdefault(tuple(p), len(unique)) for p in prompts]
        uniq = list(unique)
        dev = self.device
        slot_t = torch.tensor(slots, device=dev)
        src_t = torch.tensor(src, device=dev)
        logits_u = []
        width = max(len(p) for p in uniq)
        rows_per_chunk = max(1, self.prefill_tokens // width)
        for c0 in range(0, len(uniq), rows_per_chunk):
            chunk = uniq[c0 : c0 + rows_per_chunk]
            w = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), w), self.pad, dtype=torch.long)
            for i, p in enumerate(chunk):
                ids[i, : len(p)] = torch.tensor(p)
            # right padding: causal attention keeps real tokens from seeing the pads after them
            out = self.decoder(input_ids=ids.to(dev), use_cache=True)
            last = torch.tensor([len(p) - 1 for p in chunk], device=dev)
            hidden = out.last_hidden_state[torch.arange(len(chunk), device=dev), last]
            logits_u.append(self.lm_head(hidden).float())
            in_chunk = (src_t >= c0) & (src_t < c0 + len(chunk))
            dst, local = slot_t[in_chunk], src_t[in_chunk] - c0
            for layer_cache, K, V in zip(out.past_key_values.layers, self.K, self.V):
                K[dst, :, :w] = layer_cache.keys[local]
                V[dst, :, :w] = layer_cache.values[local]
            del out
        logits = torch.cat(logits_u)[src_t]
        n = len(slots)
        self.uniforms[slot_t] = draw_uniforms(reqs, self.max_new).to(dev)
        self.temperature[slot_t] = torch.tensor([float(r.temperature) for r in reqs], device=dev)
        self.top_p[slot_t] = torch.tensor([float(r.top_p) for r in reqs], device=dev)
        self.greedy[slot_t] = self.temperature[slot_t] <= 0
        zero = torch.zeros(n, dtype=torch.long, device=dev)
        tok0 = self._choose(logits, zero, self.greedy[slot_t], self.temperature[slot_t], self.top_p[slot_t],
                            self.uniforms[slot_t])
        eos0 = (tok0[:, None] == self.eos[None, :]).any(-1)
        self.tokens[slot_t] = tok0
        self.out[slot_t] = self.pad
        self.out[slot_t, 0] = tok0
        self.count[slot_t] = 1
        self.pos[slot_t] = torch.tensor([len(p) for p in prompts], device=dev)
        self.hit_eos[slot_t] = eos0
        self.active[slot_t] = ~eos0 & (self.max_new > 1)


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
    """The fast engine (``FastDecoder``): the same contract as ``generate`` (see the module docstring), its
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


Feed = Callable[[], list[GenRequest]]  # the next requests; an empty list when there are no more
OnResult = Callable[[int, GenResult], None]  # a request's index (the order fed) and its result


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
