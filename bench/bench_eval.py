"""Evaluation of 1,209 questions (GSM8K-Platinum size) on the Abel-7B-002 shape: wall time.

    python bench/bench_eval.py [--quick] [--out DIR]    # GPU, random bf16 weights
    python bench/bench_eval.py --tiny                   # CPU smoke test

Greedy, prompts of 120-260 tokens (the Abel prompt around a GSM8K question), every answer forced to
300 tokens (min_new_tokens = max_new_tokens): the worst case of an evaluation run. Figures:
- ``fast``: ``generate(engine="fast")`` with its defaults (slots sized from free memory), wall time
  for all questions including prefill and CUDA-graph capture;
- ``hf_batch``: the plain batched path (``engine="hf"``, batch 64) on the first 64 questions,
  measured in the same run; ``hf_estimated_s`` scales it to all questions (batches x batch time),
  clearly an extrapolation -- a full plain run would take ~10 minutes.
- ``fast_merged_adapter`` (``--adapter``; the aim: under 60 s with an adapter): the same evaluation after a
  random LoRA (r 16, every linear layer, non-zero) is attached and merged into the weights the way eval does it
  (``load_model_with_adapter(merge=True)``: PEFT ``merge_and_unload``), against ``fast`` of the same run;
  the merge's own time is reported beside it.
"""

from __future__ import annotations

import math

import numpy as np
from common import Reporter, Timer, build_model, device_info, parser, peak_gib, random_prompt, reset_peak, word_tokenizer

from looper_math.engine.api import GenRequest, generate, throughput_stats


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--questions", type=int, default=1209)
    p.add_argument("--new", type=int, default=300)
    p.add_argument("--hf-batch", type=int, default=64)
    p.add_argument("--adapter", action="store_true", help="also time the eval with a merged LoRA adapter")
    p.add_argument("--skip-hf", action="store_true", help="skip the plain-generate baseline")
    args = p.parse_args()
    report = Reporter("eval", args.out)
    n_q = 24 if args.tiny else args.questions
    new = 16 if args.tiny else args.new
    hf_batch = 8 if args.tiny else args.hf_batch
    lo, hi = (8, 20) if args.tiny else (120, 260)

    model = build_model(args.tiny)
    tok = word_tokenizer(model.config.vocab_size)
    rng = np.random.default_rng(0)
    reqs = [GenRequest(random_prompt(rng, int(rng.integers(lo, hi + 1)), model.config.vocab_size)) for _ in range(n_q)]
    report("setup", **device_info(), questions=n_q, new_tokens=new, prompt_tokens=f"{lo}-{hi}")

    generate(model, tok, reqs[:4], max_new_tokens=4, engine="fast", progress=False)  # CUDA/cuBLAS init
    reset_peak()
    with Timer() as t:
        res = generate(model, tok, reqs, max_new_tokens=new, min_new_tokens=new, engine="fast", batch_size=64,
                       progress=not args.tiny, desc="eval fast")
    assert all(r.num_tokens == new for r in res)
    fast = report("fast", **throughput_stats(res, t.seconds), peak_gib=peak_gib())

    if args.adapter:
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        with Timer() as t:
            merged = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets, init_lora_weights=False))
            merged = merged.merge_and_unload().eval()
        merge_s = t.seconds
        reset_peak()
        with Timer() as t:
            res = generate(merged, tok, reqs, max_new_tokens=new, min_new_tokens=new, engine="fast", batch_size=64,
                           progress=not args.tiny, desc="eval fast, merged adapter")
        assert all(r.num_tokens == new for r in res)
        m = report("fast_merged_adapter", **throughput_stats(res, t.seconds), merge_seconds=round(merge_s, 2), peak_gib=peak_gib(),
                   x_fast_no_adapter=round(fast["seconds"] / t.seconds, 3))
        model = merged
        if args.skip_hf:
            report("summary", questions=n_q, fast_s=fast["seconds"], fast_merged_adapter_s=m["seconds"])
            return
    reset_peak()
    with Timer() as t:
        res = generate(model, tok, reqs[:hf_batch], max_new_tokens=new, min_new_tokens=new, engine="hf",
                       batch_size=hf_batch, progress=False)
    est = t.seconds * math.ceil(n_q / hf_batch)
    report("hf_batch", **throughput_stats(res, t.seconds), batch=hf_batch, peak_gib=peak_gib(),
           hf_estimated_s=round(est, 1))
    report("summary", questions=n_q, fast_s=fast["seconds"], hf_estimated_s=round(est, 1),
           x_hf=round(est / fast["seconds"], 2))


if __name__ == "__main__":
    main()
