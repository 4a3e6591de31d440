"""Rollout decode on the Abel-7B-002 architecture: engine='fast' vs plain ``model.generate``.

    python bench/bench_decode.py [--quick] [--out DIR]      # GPU (H100), random bf16 weights
    python bench/bench_decode.py --tiny                     # CPU smoke test

Every request has a 200-token prompt and is forced to generate exactly --new tokens
(min_new_tokens = max_new_tokens), sampled at temperature 1. Figures (one JSON line each):
- ``plain_generate``: ``model.generate(do_sample=True)``, batch 64 -- the baseline, measured here;
- ``fast``: ``generate(engine="fast")`` for each --slots value, second (warm) call; ``first_call_s``
  includes the CUDA-graph capture; ``prefill_s`` is a max_new_tokens=1 call on the same prompts, so
  ``decode_tok_s`` isolates decode;
- ``fast_shared_prompt``: the same with k=8 samples per prompt (rollouts): one prefill per prompt;
- ``fast_variant``: attention core ``bmm`` and ``torch.compile`` of the decode step, at 256 slots.
Ratios are against ``plain_generate`` from the same run. Roofline: batch * bandwidth / (weight bytes
+ KV bytes read per step), with KV at the mean context (prompt + new/2); ``roofline_static`` uses the
cache length the engine actually reads (it attends over its whole static cache each step).
"""

from __future__ import annotations

import gc

import numpy as np
import torch
from common import (
    H100_BW, Reporter, Timer, build_model, device_info, free_memory, kv_bytes_per_token, param_count, parser, peak_gib,
    random_prompt, reset_peak, word_tokenizer,
)

from looper_math import generation
from looper_math.generation import GenRequest


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--prompt-len", type=int, default=200)
    p.add_argument("--new", type=int, default=None, help="forced new tokens (default 256; --quick 128)")
    p.add_argument("--baseline-batch", type=int, default=64)
    p.add_argument("--slots", default=None, help="comma list (default 128,256,384,512; --quick 256,512)")
    p.add_argument("--no-variants", action="store_true", help="skip the bmm / compile variants")
    args = p.parse_args()
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
    bw = H100_BW
    report("setup", **device_info(), params=n_params, prompt_tokens=prompt_len + 1, new_tokens=new)

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
        call = dict(max_new_tokens=new, batch_size=slots, stop_strings=None, progress=False, min_new_tokens=new,
                    desc=label, slots=slots, **fast_kw)
        reset_peak()
        with Timer() as first:
            generation._generate_fast(model, tok, reqs, **call)
        with Timer() as warm:
            res = generation._generate_fast(model, tok, reqs, **call)
        assert all(r.num_tokens == new for r in res), "forced length not respected"
        pre = dict(call, max_new_tokens=1, min_new_tokens=1)
        with Timer() as prefill:
            generation._generate_fast(model, tok, reqs, **pre)
        tokens = len(reqs) * new
        tps = tokens / warm.seconds
        decode_s = warm.seconds - prefill.seconds
        decode_tps = len(reqs) * (new - 1) / decode_s if decode_s > 0 else float("nan")
        cache_len = generation._round_up(prompt_len + 1 + new, 64)
        row = dict(slots=slots, requests=len(reqs), first_call_s=round(first.seconds, 2),
                   seconds=round(warm.seconds, 2), prefill_s=round(prefill.seconds, 2), tok_s=round(tps, 1),
                   decode_tok_s=round(decode_tps, 1), x_plain_generate=round(tps / base_tps, 2),
                   share_of_roofline=round(tps / roofline(slots, mean_ctx), 4),
                   decode_share_of_roofline=round(decode_tps / roofline(slots, mean_ctx), 4),
                   decode_share_of_roofline_static=round(decode_tps / roofline(slots, cache_len), 4),
                   peak_gib=peak_gib(), **{k: v for k, v in fast_kw.items()})
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
    k = 8
    s = best["slots"] if best else slots_list[0]
    reqs = [GenRequest(prompts[i // k], temperature=1.0, seed=i) for i in range(s)]
    run_fast(reqs, "fast_shared_prompt", slots=s)
    if not args.no_variants:
        s = 8 if tiny else 256
        reqs = [GenRequest(prompts[i], temperature=1.0, seed=i) for i in range(s)]
        run_fast(reqs, "fast_variant", slots=s, attn="bmm")
        if not tiny:  # inductor on 2 CPU cores takes a minute; the GPU run covers it
            run_fast(reqs, "fast_variant", slots=s, compile=True)
    if best:
        report("summary", best_slots=best["slots"], best_tok_s=best["tok_s"], plain_generate_tok_s=round(base_tps, 1),
               x_plain_generate=best["x_plain_generate"], goal_x=10, meets_goal=best["x_plain_generate"] >= 10)


if __name__ == "__main__":
    main()
