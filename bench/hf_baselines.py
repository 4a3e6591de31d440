"""transformers' own fastest decode paths, as a second baseline for bench_decode.py (``--hf``), and
the fast engine's decode-step profile (``--profile``).

- ``hf_static_compile``: ``model.generate(cache_implementation="static", compile_config=CompileConfig(
  fullgraph=True, mode="reduce-overhead", dynamic=False))`` -- the 5.x way: ``generate`` compiles the
  decode forward itself (``get_compiled_call``; prefill stays eager) when the cache is static and the
  device is CUDA (on CPU only with ``CompileConfig._compile_all_devices``). First call = compile +
  CUDA-graph recording (``first_call_s``), then the timed calls.
- ``hf_generate_batch``: ``model.generate_batch`` (continuous batching, paged attention, CUDA graphs,
  prefix block sharing), options given through ``ContinuousBatchingConfig`` where it exists (5.x),
  filtered to the fields this transformers version knows; the rest are recorded as ``dropped``.

Every function returns a dict of JSON fields; failures come back as ``{"error": ...}`` instead of raising.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import inspect
import time
import traceback
from contextlib import contextmanager

import torch
from common import Timer, free_memory, peak_gib, reset_peak, sync


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e)[:300]}"


@contextmanager
def full_attention_cache(model, max_context: int):
    """Mistral configs carry sliding_window=4096, which makes transformers build its static cache from
    ``StaticSlidingWindowLayer``s; those keep a Python int length, so a compiled decode step recompiles
    every token (FailOnRecompileLimitHit with fullgraph=True, in 5.17 and 5.24). With every context
    shorter than the window, attention is the same without it: switch it off for the HF baselines."""
    window = getattr(model.config, "sliding_window", None)
    off = window is not None and max_context <= window
    if off:
        model.config.sliding_window = None
    try:
        yield {"sliding_window_off": off, "sliding_window": window}
    finally:
        if off:
            model.config.sliding_window = window


def _drop_hf_state(model) -> None:
    """Static caches, compiled calls and CUDA-graph pools that generate() left on the model."""
    for name in ("_cache", "_compiled_call", "_last_compile_config"):
        if hasattr(model, name):
            try:
                delattr(model, name)
            except AttributeError:
                pass
    if hasattr(model, "destroy_cached_continuous_batching_manager"):
        try:
            model.destroy_cached_continuous_batching_manager()
        except Exception:  # noqa: BLE001 -- best effort cleanup
            pass
    try:
        torch._dynamo.reset()
    except Exception:  # noqa: BLE001
        pass
    gc.collect()
    free_memory()


# ---- a) static cache + torch.compile ------------------------------------------------------------------
def hf_static_compile(model, tok, cases: dict[str, list[str]], *, batch: int, new: int, compile_on_cpu: bool,
                      deadline=lambda: False) -> list[dict]:
    """Each case's prompts (one request each) in batches of ``batch`` (the remainder is dropped so every
    call has the compiled shape). Forced length (min_new_tokens = max_new_tokens), sampled at T=1. The
    first call (first case, first batch) compiles and records the CUDA graph (``first_call_s``,
    ``compile_s`` = that minus a warm batch); the cases then reuse the compiled call. One row per case."""
    from transformers import GenerationConfig

    try:
        from transformers import CompileConfig
    except ImportError:
        from transformers.generation.configuration_utils import CompileConfig
    cuda = model.device.type == "cuda"
    cc = CompileConfig(fullgraph=True, mode="reduce-overhead" if cuda else "default", dynamic=False)
    compiled = cuda or compile_on_cpu
    if compile_on_cpu and not cuda:
        cc._compile_all_devices = True
    gen = GenerationConfig(max_new_tokens=new, min_new_tokens=new, do_sample=True, temperature=1.0, top_p=1.0,
                           top_k=0, pad_token_id=0, cache_implementation="static",
                           compile_config=cc if compiled else None, disable_compile=not compiled)
    common = dict(batch=batch, compile_mode=cc.mode if compiled else "none (CPU; --tiny-compile compiles)",
                  fullgraph=True, dynamic=False)
    rows, first_s = [], None
    try:
        for case, prompts in cases.items():
            n = len(prompts) // batch * batch
            row = dict(common, case=case, requests=n)
            rows.append(row)
            if n == 0:
                row["error"] = f"fewer requests ({len(prompts)}) than batch {batch}"
                continue
            if deadline():
                row["error"] = "skipped: --deadline-s reached"
                continue
            batches = [tok(prompts[i : i + batch], return_tensors="pt").to(model.device) for i in range(0, n, batch)]
            try:
                reset_peak()
                with torch.no_grad():
                    if first_s is None:
                        with Timer() as first:  # compile + CUDA-graph recording at this shape
                            out = model.generate(**batches[0], generation_config=gen)
                        assert out.shape[1] - batches[0]["input_ids"].shape[1] == new, "forced length not respected"
                        first_s = first.seconds
                    with Timer() as warm:
                        for enc in batches:
                            out = model.generate(**enc, generation_config=gen)
                per_batch = warm.seconds / len(batches)
                if case == next(iter(cases)):
                    row.update(first_call_s=round(first_s, 2), compile_s=round(first_s - per_batch, 2))
                row.update(compiled_call=hasattr(model, "_compiled_call"), seconds=round(warm.seconds, 2),
                           tokens=n * new, tok_s=round(n * new / warm.seconds, 1), peak_gib=peak_gib())
            except Exception as e:  # noqa: BLE001 -- OOM, compile failure, API change: report, don't crash
                row["error"] = _err(e)
                row["trace"] = traceback.format_exc(limit=3)[-600:]
                break  # the other case at this batch would fail the same way
    finally:
        _drop_hf_state(model)
    return rows


# ---- b) generate_batch (continuous batching, paged attention) ---------------------------------------
CB_VARIANTS = ("cuda_graph", "auto")  # graphs forced on (both paths) / the library's own choice (off with SDPA)


def _cb_options(model, *, slots: int, variant: str) -> dict:
    cuda = model.device.type == "cuda"
    return dict(
        use_cuda_graph=cuda if variant == "cuda_graph" else None,  # None: transformers decides
        max_requests_per_batch=slots,  # the same concurrency as the fast engine
        allow_block_sharing=True,  # prefix caching: the k samples of a prompt share its blocks
        # num_blocks / max_batch_tokens: left to the library (sized from free GPU memory)
        max_memory_percent=0.8 if cuda else None,
        scheduler_type="fifo",
    )


def _resolved(model) -> dict:
    """What the persistent manager resolved (graphs, async, cache size), where this version exposes it."""
    m = getattr(model, "_cached_continuous_batching_manager", None)
    out = {}
    cfg = getattr(m, "continuous_batching_config", None)
    for k in ("use_cuda_graph", "use_async_batching", "max_requests_per_batch", "max_blocks_per_request",
              "q_padding_interval_size", "kv_padding_interval_size", "max_memory_percent"):
        if cfg is not None and hasattr(cfg, k):
            out[k] = getattr(cfg, k)
    cache = getattr(getattr(m, "batch_processor", None), "cache", None)
    for k in ("num_blocks", "max_batch_tokens", "block_size", "page_size", "num_pages"):
        if cache is not None and isinstance(getattr(cache, k, None), int):
            out[f"cache_{k}"] = getattr(cache, k)
    return out


def hf_generate_batch(model, tok, cases: dict[str, list[str]], *, new: int, slots: int, warmup_requests: int = 64,
                      variants=CB_VARIANTS, deadline=lambda: False) -> list[dict]:
    """Per variant, one manager (persistent) for all cases: a warm-up call on the first
    ``warmup_requests`` of the first case (manager, paged cache, CUDA-graph capture: ``warmup_call_s``),
    then one timed call per case. Returns one row per (variant, case)."""
    from transformers import GenerationConfig

    if not hasattr(model, "generate_batch"):
        return [{"case": c, "error": "unavailable: model.generate_batch missing in this transformers"} for c in cases]
    try:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
    except ImportError:
        ContinuousBatchingConfig = None
    sig = inspect.signature(model.generate_batch).parameters
    inputs = {c: [tok(p)["input_ids"] for p in ps] for c, ps in cases.items()}
    first_case = next(iter(inputs))
    rows = []
    for variant in variants:
        opts = _cb_options(model, slots=slots, variant=variant)
        # EOS disabled (-1): every request runs to max_new_tokens (CB drops the min_new_tokens processor)
        gen_kw = dict(max_new_tokens=new, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, eos_token_id=-1,
                      pad_token_id=0)
        call_kw, dropped = {}, []
        if ContinuousBatchingConfig is not None and dataclasses.is_dataclass(ContinuousBatchingConfig):
            known = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
            cb = ContinuousBatchingConfig(**{k: v for k, v in opts.items() if k in known and v is not None})
            dropped = [k for k in opts if k not in known]
            if "continuous_batching_config" in sig:
                call_kw["continuous_batching_config"] = cb
            else:
                gen_kw["continuous_batching_config"] = cb
        else:  # older API: the options were GenerationConfig attributes
            gen_kw.update({k: v for k, v in opts.items() if v is not None})
        gen = GenerationConfig(**gen_kw)
        for k, v in (("progress_bar", False), ("persistent_manager", True), ("warmup", True)):
            if k in sig:
                call_kw[k] = v
        common = dict(variant=variant, options={k: v for k, v in opts.items() if k not in dropped},
                      dropped_options=dropped, flash_attn_installed=importlib.util.find_spec("flash_attn") is not None,
                      attn_implementation=model.config._attn_implementation)

        def run(ids):
            with Timer() as t:
                out = model.generate_batch(inputs=ids, generation_config=gen, **call_kw)
            outs = list(out.values())
            tokens = sum(len(o.generated_tokens) for o in outs)
            failed = sum(1 for o in outs if getattr(o, "error", None))
            return t.seconds, tokens, len(outs), failed

        if deadline():
            rows += [dict(common, case=c, error="skipped: --deadline-s reached") for c in cases]
            continue
        try:
            reset_peak()
            # manager creation + warm-up (CUDA graphs pre-captured at the largest sizes) on a subset
            warm_s, _, _, _ = run(inputs[first_case][:warmup_requests])
            common.update(warmup_requests=min(warmup_requests, len(inputs[first_case])),
                          warmup_call_s=round(warm_s, 2), resolved=_resolved(model))
        except Exception as e:  # noqa: BLE001 -- API change, OOM: report, don't crash the run
            _drop_hf_state(model)
            rows += [dict(common, case=c, error=_err(e), trace=traceback.format_exc(limit=3)[-600:]) for c in cases]
            continue
        for case, ids in inputs.items():
            row = dict(common, case=case, requests=len(ids))
            if deadline():
                row["error"] = "skipped: --deadline-s reached"
            else:
                try:
                    seconds, tokens, got, failed = run(ids)
                    row.update(seconds=round(seconds, 2), tokens=tokens, expected_tokens=len(ids) * new, results=got,
                               failed=failed, tok_s=round(tokens / seconds, 1), peak_gib=peak_gib())
                except Exception as e:  # noqa: BLE001
                    row.update(error=_err(e), trace=traceback.format_exc(limit=3)[-600:])
            rows.append(row)
        _drop_hf_state(model)
    return rows


# ---- profile: the fast engine's decode step --------------------------------------------------------
def profile_fast(model, tok, prompts: list[str], *, slots: int, new: int, steps: int, top: int = 20,
                 attn: str | None = None, flex_block: int | None = None, fuse: bool = True) -> dict:
    """``slots`` requests (the given prompts) prefilled into a FastDecoder, then: decode steps as CUDA
    graph replays timed (ms/step), and ``steps`` eager steps under torch.profiler (the kernels the
    graph replays). Top ``top`` CUDA kernels by total time (CPU ops by self time without CUDA).
    ``attn`` / ``flex_block``: the decoder's attention core (FastOptions' defaults when None); with "flex"
    on CUDA the eager steps call the same compiled flex kernel the graph replays. ``fuse``: the fused decode
    layer (FastOptions.fuse) or the model's own modules."""
    from torch.profiler import ProfilerActivity, profile

    from looper_math.engine.decoder import FastDecoder
    from looper_math.engine.options import FastOptions, fast_cache_len
    from looper_math.engine.requests import GenRequest, encode_prompts, eos_ids, pad_id

    cuda = model.device.type == "cuda"
    reqs = [GenRequest(p, temperature=1.0, seed=i) for i, p in enumerate(prompts[:slots])]
    eos = eos_ids(model, tok)
    pad = pad_id(tok, eos)
    ids = encode_prompts(tok, [r.prompt for r in reqs])
    cache_len = fast_cache_len(max(len(x) for x in ids), new)
    steps = max(1, min(steps, (new - 4) // 3))
    attn = attn or FastOptions.attn
    flex_block = flex_block or FastOptions.flex_block
    row = dict(slots=len(reqs), cache_len=cache_len, steps=steps, attn=attn,
               compile=FastOptions.compile, fuse=fuse)
    if attn == "flex":
        row["flex_block"] = flex_block
    dec = None
    try:
        with torch.no_grad():
            dec = FastDecoder(model, slots=len(reqs), cache_len=cache_len, max_new_tokens=new, min_new_tokens=new,
                              eos=eos, pad=pad, sampled=True, truncate=False,  # top_p 1: as generate_fast builds it
                              attn=attn, flex_block=flex_block, fuse=fuse)
            row["fused"] = dec.fused is not None
            dec.capture()
            dec.prefill(list(range(len(reqs))), ids, reqs)
            sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                dec.step()  # graph replay on CUDA
            sync()
            row["graph_step_ms" if cuda else "step_ms"] = round((time.perf_counter() - t0) / steps * 1e3, 3)
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            with profile(activities=acts) as prof:
                for _ in range(steps):
                    dec._step()  # eager: one launch per kernel, so the profiler names them
                sync()
        if cuda:
            from torch.autograd import DeviceType

            agg: dict[str, list[float]] = {}
            for e in prof.events():
                if e.device_type == DeviceType.CUDA:
                    a = agg.setdefault(e.name, [0.0, 0])
                    a[0] += e.time_range.elapsed_us()
                    a[1] += 1
            total = sum(v[0] for v in agg.values())
            items = sorted(agg.items(), key=lambda kv: -kv[1][0])[:top]
            row["kernel_ms_per_step"] = round(total / steps / 1e3, 3)
            row["top_kernels"] = [
                dict(name=k[:160], ms_per_step=round(v[0] / steps / 1e3, 4), calls_per_step=round(v[1] / steps, 1),
                     share=round(v[0] / total, 4) if total else None)
                for k, v in items
            ]
            row["activity"] = "cuda"
        else:
            avgs = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
            total = sum(e.self_cpu_time_total for e in prof.key_averages())
            row["cpu_ms_per_step"] = round(total / steps / 1e3, 3)
            row["top_ops"] = [
                dict(name=e.key[:160], ms_per_step=round(e.self_cpu_time_total / steps / 1e3, 4),
                     calls_per_step=round(e.count / steps, 1), share=round(e.self_cpu_time_total / total, 4))
                for e in avgs
            ]
            row["activity"] = "cpu only (no CUDA)"
    except Exception as e:  # noqa: BLE001
        row["error"] = _err(e)
        row["trace"] = traceback.format_exc(limit=3)[-600:]
    finally:
        if dec is not None:
            dec.release()
        free_memory()
    return row
