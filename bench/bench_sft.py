"""LoRA SFT on the Abel-7B-002 shape, sequence 512: tokens/s, peak memory, achieved TFLOP/s.

    python bench/bench_sft.py [--quick] [--out DIR]   # GPU; needs trl + datasets (carried wheels), ~6 min
    python bench/bench_sft.py --tiny                  # CPU smoke test

TRL ``SFTTrainer`` + LoRA r=16 on all linear layers, bf16, prompt/completion data whose lengths look
like GSM8K SFT examples (prompt 80-200 tokens, completion 60-300, capped at 512), completion-only
loss. One JSON line per setup:
- ``plain``: the README's measured setup (gradient checkpointing, batch 8, padded batches) -- baseline;
- ``no_gc``: gradient checkpointing off (LoRA on 7B leaves room for the activations);
- ``padding_free``: no padding (sequences concatenated, position_ids mark the boundaries;
  transformers 5 turns those into a block-diagonal mask for SDPA), gradient checkpointing off;
- ``packing_bfd``: best-fit-decreasing packing to 512 (padding-free), gradient checkpointing off;
- ``no_gc_batch16``: gradient checkpointing off, batch 16;
- ``liger``: the best of the above with ``use_liger_kernel`` -- reported as skipped when
  liger_kernel is not installed (it is pure Python + Triton: carry its wheel);
- ``*_1024``: sequence 1024 with long completions (300-800 tokens): plain vs no checkpointing at
  batch 8 and 16 -- the memory check (peak GiB, or the OOM);
- ``plain_repeat``: the baseline again, last (the first trainer of a process pays one-off costs).
Tokens are non-padding input tokens (``include_num_input_tokens_seen="non_padding"``), timed over the
steps after the warm-up ones. TFLOP/s = 6 x params x tokens/s (the usual dense count; a LoRA
backward skips the frozen weights' gradients, so the hardware does ~2/3 of that).
"""

from __future__ import annotations

import contextlib
import sys
import importlib.util
import tempfile

import numpy as np
import torch
from common import (
    H100_BF16_DENSE, Reporter, StepClock, build_model, device_info, free_memory, param_count, parser, peak_gib, random_prompt,
    reset_peak, word_tokenizer,
)


def dataset(n: int, vocab: int, tiny: bool, seed: int = 0, seq: int = 512):
    """GSM8K-like lengths for seq 512; for seq 1024 completions of 300-800 tokens (long traces)."""
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    lo, hi = (60, 301) if seq <= 512 else (300, 801)
    rows = []
    for _ in range(n):
        lp = int(rng.integers(6, 20)) if tiny else int(rng.integers(80, 201))
        lc = int(rng.integers(6, 30)) if tiny else int(rng.integers(lo, hi))
        rows.append({"prompt": random_prompt(rng, lp, vocab), "completion": " " + random_prompt(rng, lc, vocab)})
    return Dataset.from_list(rows)


def run_setup(name: str, tiny: bool, steps: int, warmup: int, out_dir: str, **cfg) -> dict:
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    model = build_model(tiny, train=True)
    tok = word_tokenizer(model.config.vocab_size)
    n_params = param_count(model)
    batch = cfg.pop("batch", 8)
    seq = cfg.pop("seq", 512)
    # padding-free without packing does not truncate; the data is generated under seq tokens
    max_length = None if cfg.get("padding_free") and not cfg.get("packing") else seq
    args = SFTConfig(
        output_dir=out_dir, max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-4,
        max_length=max_length, bf16=not tiny, logging_steps=10**6, save_strategy="no", report_to="none",
        include_num_input_tokens_seen="non_padding", dataloader_num_workers=0, seed=0,
        gradient_checkpointing_kwargs={"use_reentrant": False}, disable_tqdm=True, **cfg,
    )
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    data = dataset(batch * steps * 2 + 64, model.config.vocab_size, tiny, seq=seq)
    clock = StepClock(warmup)
    reset_peak()
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=lora,
                         callbacks=[clock.callback])
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout to the JSON lines
        trainer.train()
    tps = clock.tokens_per_s()
    tflops = 6 * n_params * tps / 1e12
    row = dict(setup=name, seq=seq, batch=batch, tokens_per_s=round(tps, 1), peak_gib=peak_gib(),
               tflop_s=round(tflops, 1), mfu=round(tflops * 1e12 / H100_BF16_DENSE, 3),
               timed_steps=steps - warmup, **{k: v for k, v in cfg.items()})
    del trainer, model
    free_memory()
    return row


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per setup (default 24; --quick 10)")
    p.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 4; --quick 3)")
    p.add_argument("--setups", default=None, help="comma list of setups to run (default all; plain and "
                   "plain_repeat always run, first and last)")
    args = p.parse_args()
    report = Reporter("sft", args.out)
    steps = 4 if args.tiny else args.steps or (10 if args.quick else 24)
    warmup = 2 if args.tiny else args.warmup or (3 if args.quick else 4)
    report("setup", **device_info(), lora_r=16, steps=steps, warmup_steps=warmup)
    # plain runs first and again last: the first trainer in a process pays one-off costs (allocator
    # growth, kernel selection); the baseline is the faster of the two, which favours the baseline
    setups = {
        "plain": dict(gradient_checkpointing=True),
        "no_gc": dict(gradient_checkpointing=False),
        "padding_free": dict(gradient_checkpointing=False, padding_free=True),
        "packing_bfd": dict(gradient_checkpointing=False, packing=True, packing_strategy="bfd"),
    }
    if not args.quick:
        setups["no_gc_batch16"] = dict(gradient_checkpointing=False, batch=16)
    long_setups = {  # sequence 1024: does the fast setup fit 80 GB with a useful batch?
        "plain_1024": dict(gradient_checkpointing=True, seq=1024),
        "no_gc_1024": dict(gradient_checkpointing=False, seq=1024),
        "no_gc_1024_batch16": dict(gradient_checkpointing=False, seq=1024, batch=16),
    }
    liger = dict(gradient_checkpointing=False, use_liger_kernel=True)
    extra = {  # liger combinations, run only when named in --setups
        "liger_batch16": dict(liger, batch=16),
        "liger_1024": dict(liger, seq=1024),
        "liger_1024_batch16": dict(liger, seq=1024, batch=16),
    }
    if args.tiny:
        long_setups = {k: dict(v, seq=64) for k, v in list(long_setups.items())[:2]}
    if args.setups:
        wanted = set(args.setups.split(",")) | {"plain"}
        known = set(setups) | set(long_setups) | set(extra) | {"liger", "plain_repeat"}
        if wanted - known:
            p.error(f"unknown setups {sorted(wanted - known)}; known: {sorted(known)}")
        setups = {k: v for k, v in setups.items() if k in wanted}
        long_setups = {k: v for k, v in {**long_setups, **extra}.items() if k in wanted}
    run_liger = not args.setups or "liger" in args.setups.split(",")
    rows = {}

    def attempt(name, cfg, tmp):
        try:
            rows[name] = report("sft", **run_setup(name, args.tiny, steps, warmup, tmp, **dict(cfg)))
        except Exception as e:  # an OOM (the memory check) or a setup this stack cannot run: report, go on
            kind = "OOM" if isinstance(e, torch.OutOfMemoryError) else type(e).__name__
            rows[name] = report("sft", setup=name, seq=cfg.get("seq", 512), error=f"{kind}: {str(e)[:160]}")
            free_memory()

    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        for name, cfg in setups.items():
            attempt(name, cfg, tmp)
        ok = {k: v for k, v in rows.items() if "tokens_per_s" in v}
        best = max(ok, key=lambda k: ok[k]["tokens_per_s"])
        has_liger = importlib.util.find_spec("liger_kernel") is not None
        if not has_liger:
            report("sft", setup="liger", skipped="liger_kernel not installed")
            long_setups = {k: v for k, v in long_setups.items() if not v.get("use_liger_kernel")}
        elif run_liger:  # on the fastest setup so far (not on the checkpointed baseline)
            fast = max((k for k in ok if k != "plain"), key=lambda k: ok[k]["tokens_per_s"], default="no_gc")
            attempt("liger", dict(setups.get(fast, dict(gradient_checkpointing=False)), use_liger_kernel=True), tmp)
        for name, cfg in long_setups.items():
            attempt(name, cfg, tmp)
        attempt("plain_repeat", setups["plain"], tmp)
    ok = {k: v for k, v in rows.items() if "tokens_per_s" in v}
    short = {k: v for k, v in ok.items() if v["seq"] <= 512 and not k.startswith("plain")}
    base = max((ok[k] for k in ("plain", "plain_repeat") if k in ok), key=lambda r: r["tokens_per_s"])
    best = max(short, key=lambda k: short[k]["tokens_per_s"]) if short else "plain"
    base_1024 = ok.get("plain_1024")
    long_names = [k for k, v in rows.items() if (v.get("seq") or 512) > 512]
    report("summary", baseline="max(plain, plain_repeat)", plain_tokens_per_s=base["tokens_per_s"], best=best,
           best_tokens_per_s=ok[best]["tokens_per_s"], x_plain=round(ok[best]["tokens_per_s"] / base["tokens_per_s"], 2),
           best_peak_gib=ok[best]["peak_gib"], best_tflop_s=ok[best]["tflop_s"], goal_x=1.5,
           seq1024={k: {**{f: rows[k].get(f) for f in ("batch", "tokens_per_s", "peak_gib", "error")},
                        **({"x_plain_1024": round(rows[k]["tokens_per_s"] / base_1024["tokens_per_s"], 2)}
                           if base_1024 and "tokens_per_s" in rows[k] else {})}
                    for k in long_names})


if __name__ == "__main__":
    main()
