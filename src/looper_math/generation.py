"""Kept for backwards compatibility of ``from looper_math.generation import ...``: the engines moved to the
``looper_math.engine`` package (one module per concern); this module re-exports the public names it had, from their homes.

New code imports from ``looper_math.engine.api`` (or the engine module that defines a name). Patching a name
here (``monkeypatch.setattr``) changes nothing the engines call: patch it in the module that looks it up
(e.g. ``engine.scheduler.FastDecoder``, ``engine.decoder._attend_flex``).
"""

from looper_math.engine.api import ENGINES, generate, generate_stream, resolve_engine  # noqa: F401
from looper_math.engine.decoder import FastDecoder  # noqa: F401
from looper_math.engine.hf import PerRowSampler, StopRecorder, results_from_ids  # noqa: F401
from looper_math.engine.kernels import FlexDecodeMask, fuse_blocker, fused_copy_bytes  # noqa: F401
from looper_math.engine.options import (ATTN_CORES, FAST_SUPPORTED, FastOptions, fast_cache_len,  # noqa: F401
                                        fast_options)
from looper_math.engine.requests import (Feed, GenRequest, GenResult, OnResult, cut_at_stop, encode_prompts,  # noqa: F401
                                         eos_ids, left_pad, length_sorted_batches, pad_id, prompt_tokens,
                                         throughput_stats)
from looper_math.engine.sampling import draw_uniforms, sample_rows  # noqa: F401
from looper_math.engine.scheduler import fast_slots, generate_fast, stream_fast  # noqa: F401
