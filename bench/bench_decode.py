"""Rollout decode on the Abel-7B-002 architecture: engine='fast' vs plain ``model.generate`` and
vs transformers' own fastest paths.

    python bench/bench_decode.py [--quick] [--out DIR]      # GPU (H100/H200), random bf16 weights
    python bench/bench_decode.py --tiny [--hf --profile]    # CPU smoke test

The decode goal (k=8: >= 25x plain generate, >= 50 % of the decode roofline), one call on the H200 (~8 min; no
download, the 7B shape is built with random weights; order: plain, fast 512, fast k=8 + roofline, profile, hf_static_compile 64 then 512, a provisional summary,
hf_generate_batch, the final summary; --deadline-s skips the transformers figures not started by then;
every line is appended to $OUT/decode.jsonl as it comes, so a timeout keeps what was measured):

    HF_HUB_OFFLINE=1 PYTHONPATH=src timeout 580 python bench/bench_decode.py --slots 512 --no-variants \
        --hf --hf-batches 64,512 --profile --deadline-s 440 --out $OUT

(session 8, RESULTS.md: ``--slots 512 --attn sdpa,flex --no-variants --hf --hf-batches 64 --deadline-s 430``, 476 s;
session 9, the fused layer against the model's modules: ``--slots 160 --shared-slots 160,256,512 --attn flex,flex+unfused
--no-variants``, 155 s)

Every request has a 200-token prompt and is forced to generate exactly --new tokens
(min_new_tokens = max_new_tokens), sampled at temperature 1. Figures (one JSON line each):
- ``plain_generate``: ``model.generate(do_sample=True)``, batch 64 -- the baseline, measured here;
- ``fast``: ``generate(engine="fast")`` for each --slots value, second (warm) call; ``first_call_s``
  includes the CUDA-graph capture; ``prefill_s`` is a max_new_tokens=1 call on the same prompts (timed on its
  second call: the first compiles flex / compile for its own cache length; before 2026-12-02 it was not), so
  ``decode_tok_s`` isolates decode;
- ``fast_shared_prompt``: the same with k=8 samples per prompt (rollouts): one prefill per prompt, one line per
  ``--attn`` core (suffix ``+unfused``: the model's own modules instead of the fused layer; ``+compile``) and per
  ``--shared-slots`` count, each followed by its ``roofline`` line: decode-only tok/s against the bandwidth roofline at
  its batch, explicitly; the summary's figure is the fastest line meeting both decode-goal checks, else the fastest;
- ``fast_variant``: attention cores ``bmm`` and ``flex`` (FlexAttention, block-sparse over the padded cache,
  ``--flex-block``) and ``torch.compile`` of the decode step, at 256 slots;
- ``--profile``: ``profile``: the fast engine's decode step at the best slot count (k=8 requests):
  CUDA-graph ms/step and the top-20 CUDA kernels of eager steps (CPU ops without CUDA); ``--profile-attn``
  picks the attention core(s) profiled (comma list, e.g. ``sdpa,flex``: one line each);
- ``--hf``: ``hf_static_compile`` (static cache + ``CompileConfig(fullgraph=True, mode="reduce-overhead")``,
  each --hf-batches size, compile time apart) and ``hf_generate_batch`` (continuous batching, paged
  attention, max_requests_per_batch = the fast slot count; variants ``cuda_graph`` (forced on) and ``auto``
  (the library's choice: off with SDPA)), each on the same requests as
  ``fast_shared_prompt`` (case ``shared_k8``) and as ``fast`` at that slot count (case ``plain``);
  both with the config's sliding window (4096) switched off -- longer than any context here, and with it
  the static cache recompiles every step -- see bench/hf_baselines.py;
- ``summary``: the best fast line vs plain generate; the k=8 shared-prompt line vs hf_static_compile and
  hf_generate_batch on the same requests (their best on case ``shared_k8``); and the decode goal's checks
  (k=8: >= 25x plain generate, >= 50 % of the decode roofline).
Ratios are against ``plain_generate`` from the same run. Roofline: batch * bandwidth / (weight bytes
+ KV bytes read per step), with KV at the mean context (prompt + new/2); bandwidth 4.8e12 B/s on an
H200, 3.35e12 on an H100 (by device name); ``roofline_static`` uses the cache length the engine
actually reads with attn sdpa/bmm (they attend over the whole static cache each step; flex reads each slot's
blocks up to its own length only).
"""

from __future__ import annotations

import gc
import time

import numpy as np
import torch
from common import (
    Reporter, Timer, build_model, device_info, free_memory, hbm_bandwidth, kv_bytes_per_token, param_count, parser,
    peak_gib, random_prompt, reset_peak, word_tokenizer,
)

from looper_math.engine.api import GenRequest
from looper_math.engine.options import ATTN_CORES, FastOptions, fast_cache_len
from looper_math.engine.scheduler import generate_fast


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--prompt-len", type=int, default=200)
    p.add_argument("--new", type=int, default=None, help="forced new tokens (default 256; --quick 128)")
    p.add_argument("--baseline-batch", type=int, default=64)
    p.add_argument("--slots", default=None, help="comma list (default 128,256,384,512; --quick 256,512)")
    p.add_argument("--no-variants", action="store_true", help="skip the bmm / flex / compile variants")
    p.add_argument("--flex-block", type=int, default=FastOptions.flex_block,
                   help="attn=flex: the BlockMask's KV block (variants and profile)")
    p.add_argument("--attn", default=FastOptions.attn,
                   help="comma list: attention core(s) of the k-shared-prompt figure, one line each (e.g. sdpa,flex); "
                        "suffixes: +compile also compiles the decode layer (flex+compile, module path), +unfused "
                        "takes the model's own modules instead of the fused layer (FastOptions.fuse=False)")
    p.add_argument("--shared-slots", default=None,
                   help="comma list: slot counts of the k-shared-prompt figure (default: the fastest --slots)")
    p.add_argument("--k", type=int, default=8, help="samples per prompt in the shared-prompt case (default 8)")
    p.add_argument("--hf", action="store_true",
                   help="also transformers' fastest paths: hf_static_compile and hf_generate_batch (bench/hf_baselines.py)")
    p.add_argument("--hf-batches", default=None, help="hf_static_compile batch sizes (default 64,512; --tiny 4,8)")
    p.add_argument("--tiny-compile", action="store_true", help="--tiny: torch.compile hf_static_compile on CPU too (slow)")
    p.add_argument("--profile", action="store_true",
                   help="torch.profiler over a few fast decode steps at the best slot count: top-20 kernels")
    p.add_argument("--profile-steps", type=int, default=5)
    p.add_argument("--profile-attn", default=FastOptions.attn,
                   help=f"--profile: attention core(s) to profile, comma list of {ATTN_CORES}, each "
                        "optionally +unfused")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="skip the --hf figures not yet started after this many seconds (the summary still comes out)")
    args = p.parse_args()
    t_start = time.perf_counter()
    report = Reporter("decode", args.out)
    tiny = args.tiny
    new = args.new or (16 if tiny else 128 if args.quick else 256)
    prompt_len = 12 if tiny else args.prompt_len
    base_batch = 4 if tiny else args.baseline_batch
    slots_list = [int(s) for s in (args.slots or ("4,8" if tiny else "256,512" if args.quick else "128,256,384,512")).split(",")]

    model = build_model(tiny)
    tok = word_tokenizer(model.config.vocab_size)
    rng = np.random.default_rng(0)
    n_params = param_count(model)
    weight_bytes = n_params * model.dtype.itemsize
    kvpt = kv_bytes_per_token(model.config, model.dtype.itemsize)
    bw, bw_source = hbm_bandwidth()
    report("setup", **device_info(), params=n_params, prompt_tokens=prompt_len + 1, new_tokens=new, bandwidth=bw,
           bandwidth_source=bw_source, weight_bytes=weight_bytes, kv_bytes_per_token=kvpt)

    def roofline(batch: int, context: float) -> float:
        return batch * bw / (weight_bytes + batch * context * kvpt)

    mean_ctx = prompt_len + 1 + new / 2

    # ---- baseline: plain model.generate ------------------------------------------------------------
    prompts = [random_prompt(rng, prompt_len, model.config.vocab_size) for _ in range(max(slots_list) * 2)]
    enc = tok(prompts[:base_batch], return_tensors="pt").to(model.device)
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
              pad_token_id=0)
    with torch.no_grad():
        model.generate(**{k: v[:, :8] for k, v in enc.items()}, max_new_tokens=2, pad_token_id=0)  # warm-up
        reset_peak()
        with Timer() as t:
            out = model.generate(**enc, **kw)
    assert out.shape[1] - enc["input_ids"].shape[1] == new
    base_tps = base_batch * new / t.seconds
    report("plain_generate", batch=base_batch, seconds=round(t.seconds, 2), tok_s=round(base_tps, 1),
           share_of_roofline=round(base_tps / roofline(base_batch, mean_ctx), 4), peak_gib=peak_gib())
    del out
    gc.collect()

    def run_fast(reqs, label, **fast_kw):
        slots = fast_kw.pop("slots")
        extra = {"k": fast_kw.pop("k")} if "k" in fast_kw else {}
        call = dict(max_new_tokens=new, batch_size=slots, stop_strings=None, progress=False, min_new_tokens=new,
                    desc=label, options=FastOptions(slots=slots, **fast_kw))
        reset_peak()
        with Timer() as first:
            generate_fast(model, tok, reqs, **call)
        with Timer() as warm:
            res = generate_fast(model, tok, reqs, **call)
        assert all(r.num_tokens == new for r in res), "forced length not respected"
        pre = dict(call, max_new_tokens=1, min_new_tokens=1)
        generate_fast(model, tok, reqs, **pre)  # warm: a 1-token call has its own cache length, which
        with Timer() as prefill:                # recompiles flex / compile (2 s that read as prefill)
            generate_fast(model, tok, reqs, **pre)
        tokens = len(reqs) * new
        tps = tokens / warm.seconds
        decode_s = warm.seconds - prefill.seconds
        decode_tps = len(reqs) * (new - 1) / decode_s if decode_s > 0 else float("nan")
        cache_len = fast_cache_len(prompt_len + 1, new)
        row = dict(slots=slots, requests=len(reqs), first_call_s=round(first.seconds, 2),
                   seconds=round(warm.seconds, 2), prefill_s=round(prefill.seconds, 2), tok_s=round(tps, 1),
                   decode_tok_s=round(decode_tps, 1), x_plain_generate=round(tps / base_tps, 2),
                   share_of_roofline=round(tps / roofline(slots, mean_ctx), 4),
                   decode_share_of_roofline=round(decode_tps / roofline(slots, mean_ctx), 4),
                   decode_share_of_roofline_static=round(decode_tps / roofline(slots, cache_len), 4),
                   peak_gib=peak_gib(), **extra, **fast_kw)
        free_memory()
        return report(label, **row)

    best = None
    for slots in slots_list:
        reqs = [GenRequest(prompts[i], temperature=1.0, seed=i) for i in range(slots)]
        try:
            row = run_fast(reqs, "fast", slots=slots)
        except torch.OutOfMemoryError as e:
            report("fast", slots=slots, error=f"OOM: {str(e)[:120]}")
            continue
        if best is None or row["tok_s"] > best["tok_s"]:
            best = row
    # rollouts: k samples of each question share one prompt (one prefill per prompt)
    k = args.k
    shared_slots = [int(x) for x in args.shared_slots.split(",")] if args.shared_slots else \
        [best["slots"] if best else slots_list[0]]
    s = max(shared_slots)  # transformers' baselines and the profile run at the largest
    shared_prompts = [prompts[i // k] for i in range(s)]
    plain_prompts = prompts[:s]
    shared_rows = []
    for n_slots in shared_slots:
        reqs = [GenRequest(p, temperature=1.0, seed=i) for i, p in enumerate(shared_prompts[:n_slots])]
        for core in args.attn.split(","):  # one line per attention core and slot count
            attn, *extra = core.split("+")  # "flex+compile": torch.compile of the decode layer; "+unfused": modules
            opts = dict(attn=attn, flex_block=args.flex_block, compile="compile" in extra, fuse="unfused" not in extra)
            try:
                row = run_fast(reqs, "fast_shared_prompt", slots=n_slots, k=k, **opts)
            except Exception as e:  # noqa: BLE001  (e.g. the flex kernel's compile): the other cores still count
                report("fast_shared_prompt", slots=n_slots, k=k, **opts, error=f"{type(e).__name__}: {str(e)[:300]}")
                free_memory()
                continue
            shared_rows.append(row)
            rl = roofline(n_slots, mean_ctx)
            report("roofline", of="fast_shared_prompt", k=k, slots=n_slots, **opts, bandwidth=bw,
                   bandwidth_source=bw_source, weight_bytes=weight_bytes, kv_bytes_per_token=kvpt, mean_context=mean_ctx,
                   roofline_tok_s=round(rl, 1), decode_tok_s=row["decode_tok_s"],
                   decode_share_of_roofline=round(row["decode_tok_s"] / rl, 4), tok_s=row["tok_s"],
                   share_of_roofline=round(row["tok_s"] / rl, 4),
                   roofline_static_tok_s=round(roofline(n_slots, fast_cache_len(prompt_len + 1, new)), 1),
                   goal_share=0.5, meets_goal=row["decode_tok_s"] / rl >= 0.5)
    # the figure: a line meeting both decode-goal checks if one does (the fastest such), else the fastest line
    both = [r for r in shared_rows if r["x_plain_generate"] >= 25 and r["decode_share_of_roofline"] >= 0.5]
    shared = max(both or shared_rows, key=lambda r: r["tok_s"])
    if args.profile:
        from hf_baselines import profile_fast

        for core in args.profile_attn.split(","):
            attn, *extra = core.split("+")
            report("profile", **profile_fast(model, tok, shared_prompts, slots=s, new=new, steps=args.profile_steps,
                                             attn=attn, flex_block=args.flex_block, fuse="unfused" not in extra))
    if not args.no_variants:
        s_var = 8 if tiny else 256
        reqs = [GenRequest(prompts[i], temperature=1.0, seed=i) for i in range(s_var)]
        run_fast(reqs, "fast_variant", slots=s_var, attn="bmm")
        try:  # a failure here (e.g. the flex kernel's compile) must not cost the rest of the run
            run_fast(reqs, "fast_variant", slots=s_var, attn="flex", flex_block=args.flex_block)
        except Exception as e:  # noqa: BLE001
            report("fast_variant", slots=s_var, attn="flex", flex_block=args.flex_block, error=f"{type(e).__name__}: {str(e)[:300]}")
            free_memory()
        if not tiny:  # inductor on 2 CPU cores takes a minute; the GPU run covers it
            run_fast(reqs, "fast_variant", slots=s_var, compile=True)

    # ---- transformers' own fastest paths, on the same requests -----------------------------------------
    hf_static, hf_cb = [], []

    def late() -> bool:
        return args.deadline_s is not None and time.perf_counter() - t_start > args.deadline_s

    def hf_row(label, row, batch):
        if "tok_s" in row:
            fast_same = shared if row.get("case") == "shared_k8" else (best or shared)
            row.update(x_plain_generate=round(row["tok_s"] / base_tps, 2),
                       share_of_roofline=round(row["tok_s"] / roofline(batch, mean_ctx), 4),
                       x_by_fast_same_case=round(fast_same["tok_s"] / row["tok_s"], 2))
        return report(label, **row)

    def best_of(rows):
        ok = [r for r in rows if "tok_s" in r]
        return max(ok, key=lambda r: r["tok_s"]) if ok else None

    def summary(final: bool) -> None:
        top = max([r for r in (best, shared) if r], key=lambda r: r["tok_s"])
        # transformers' paths on the k=8 shared-prompt requests, against ours on the same ones (not across cases)
        hs, hc = (best_of([r for r in rows if r.get("case") == "shared_k8"]) for rows in (hf_static, hf_cb))
        report("summary", final=final,
               best_figure=top["figure"], best_slots=top["slots"], best_tok_s=top["tok_s"],
               plain_generate_tok_s=round(base_tps, 1), x_plain_generate=round(top["tok_s"] / base_tps, 2),
               hf_static_compile_tok_s=hs and hs["tok_s"], hf_static_compile_batch=hs and hs["batch"],
               x_hf_static_compile=hs and round(shared["tok_s"] / hs["tok_s"], 2),
               hf_generate_batch_tok_s=hc and hc["tok_s"],
               x_hf_generate_batch=hc and round(shared["tok_s"] / hc["tok_s"], 2),
               shared_k8_slots=shared["slots"], shared_k8_attn=shared["attn"], shared_k8_fuse=shared["fuse"],
               shared_k8_tok_s=shared["tok_s"], shared_k8_x_plain_generate=shared["x_plain_generate"],
               shared_k8_decode_share_of_roofline=shared["decode_share_of_roofline"],
               goal_x=25, goal_share=0.5, meets_goal_x=shared["x_plain_generate"] >= 25,
               meets_goal_share=shared["decode_share_of_roofline"] >= 0.5,
               wall_s=round(time.perf_counter() - t_start, 1))

    if args.hf:
        from hf_baselines import full_attention_cache, hf_generate_batch, hf_static_compile

        cases = {"shared_k8": shared_prompts, "plain": plain_prompts}
        hf_batches = [int(b) for b in (args.hf_batches or ("4,8" if tiny else "64,512")).split(",")]
        for b in hf_batches:
            with full_attention_cache(model, prompt_len + 1 + new) as window:
                rows = hf_static_compile(model, tok, cases, batch=b, new=new, compile_on_cpu=args.tiny_compile,
                                         deadline=late)
            for row in rows:
                hf_static.append(hf_row("hf_static_compile", dict(row, **window), b))
        # generate_batch last: without flash-attn its paged SDPA path has no time bound we can predict;
        # a provisional summary first, so a timeout there still leaves one
        summary(final=False)
        with full_attention_cache(model, prompt_len + 1 + new) as window:
            rows = hf_generate_batch(model, tok, cases, new=new, slots=s, deadline=late)
        for row in rows:
            hf_cb.append(hf_row("hf_generate_batch", dict(row, **window), s))
    summary(final=True)


if __name__ == "__main__":
    main()
