"""The fast engine's switches (``FastOptions``), the model types it supports, and the cache sizes they imply."""

from __future__ import annotations

from dataclasses import dataclass


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


def fast_options(generation_cfg) -> FastOptions:
    """The fast engine's switches a config's ``generation`` section sets (``fast_attn``, ``fast_fuse``)."""
    return FastOptions(attn=generation_cfg.fast_attn, fuse=generation_cfg.fast_fuse)


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


def _alloc_len(cache_len: int, attn: str, flex_block: int) -> int:
    """Cache length a decoder allocates: ``cache_len``, or for attn="flex" padded to a multiple of the KV block
    so the BlockMask has whole blocks (the padding is never read: no slot's length reaches it)."""
    return _round_up(cache_len, flex_block) if attn == "flex" else cache_len
