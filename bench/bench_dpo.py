"""DPO (LoRA) on the Abel-7B-002 shape: pairs/s and peak memory.

    python bench/bench_dpo.py [--quick] [--out DIR]   # GPU; needs trl + datasets (carried wheels)
    python bench/bench_dpo.py --tiny                  # CPU smoke test

TRL ``DPOTrainer`` + LoRA r=16 on all linear layers (``peft_config`` on the base model: the reference
is the base with adapters disabled, one extra no-grad forward per batch), bf16, the project's loss
(``loss_type=["sigmoid", "sft"]``, weights [1, 1]: DPO + NLL on chosen, as Iterative RPO), pairs with
a 80-200 token prompt and 60-300 token answers. One JSON line per setup:
- ``plain``: DPOConfig defaults for memory/speed (gradient checkpointing on), 4 pairs per step -- baseline;
- ``no_gc``: gradient checkpointing off, 4 pairs; ``no_gc_batch8``: 8 pairs;
- ``precompute_ref`` (full mode only): reference log-probs computed once before training, so the
  steps run no reference forward (the one-off pass is not in pairs/s).
TRL 1.16's DPO ``padding_free`` is disabled upstream (it warns and pads), so it is not offered.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile

import numpy as np
import torch
from common import StepClock, Reporter, build_model, device_info, free_memory, parser, peak_gib, random_prompt, reset_peak, word_tokenizer


def dataset(n: int, vocab: int, tiny: bool, seed: int = 0):
    from datasets import Dataset

    rng = np.random.default_rng(seed)

    def length(lo, hi):
        return int(rng.integers(6, 20)) if tiny else int(rng.integers(lo, hi + 1))

    rows = [{"prompt": random_prompt(rng, length(80, 200), vocab),
             "chosen": " " + random_prompt(rng, length(60, 300), vocab),
             "rejected": " " + random_prompt(rng, length(60, 300), vocab)} for _ in range(n)]
    return Dataset.from_list(rows)


def run_setup(name: str, tiny: bool, steps: int, warmup: int, out_dir: str, **cfg) -> dict:
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    model = build_model(tiny, train=True)
    tok = word_tokenizer(model.config.vocab_size)
    batch = cfg.pop("batch", 4)
    args = DPOConfig(
        output_dir=out_dir, max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-5,
        max_length=1024, bf16=not tiny, beta=0.1, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0],
        logging_steps=10**6, save_strategy="no", report_to="none", dataloader_num_workers=0, seed=0,
        gradient_checkpointing_kwargs={"use_reentrant": False}, disable_tqdm=True, **cfg,
    )
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    data = dataset(batch * steps + 32, model.config.vocab_size, tiny)
    clock = StepClock(warmup)
    reset_peak()
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=lora,
                         callbacks=[clock.callback])
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout to the JSON lines
        trainer.train()
    pairs_s = batch * (clock.s1 - clock.s0) / (clock.t1 - clock.t0)
    row = dict(setup=name, batch=batch, pairs_per_s=round(pairs_s, 2), peak_gib=peak_gib(),
               timed_steps=clock.s1 - clock.s0, **{k: v for k, v in cfg.items()})
    del trainer, model
    free_memory()
    return row


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per setup (default 10; --quick 6)")
    args = p.parse_args()
    report = Reporter("dpo", args.out)
    steps = 4 if args.tiny else args.steps or (6 if args.quick else 10)
    warmup = 2
    report("setup", **device_info(), lora_r=16, steps=steps, warmup_steps=warmup)
    setups = {
        "plain": dict(gradient_checkpointing=True),
        "no_gc": dict(gradient_checkpointing=False),
        "no_gc_batch8": dict(gradient_checkpointing=False, batch=8),
    }
    if not args.quick:
        setups["precompute_ref"] = dict(gradient_checkpointing=False, batch=8, precompute_ref_log_probs=True)
    rows = {}
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        for name, cfg in setups.items():
            try:
                rows[name] = report("dpo", **run_setup(name, args.tiny, steps, warmup, tmp, **dict(cfg)))
            except torch.OutOfMemoryError as e:
                report("dpo", setup=name, error=f"OOM: {str(e)[:120]}")
                free_memory()
    ok = {k: v for k, v in rows.items() if "pairs_per_s" in v}
    best = max(ok, key=lambda k: ok[k]["pairs_per_s"])
    report("summary", baseline="plain", plain_pairs_per_s=ok["plain"]["pairs_per_s"], best=best,
           best_pairs_per_s=ok[best]["pairs_per_s"], x_plain=round(ok[best]["pairs_per_s"] / ok["plain"]["pairs_per_s"], 2),
           best_peak_gib=ok[best]["peak_gib"])


if __name__ == "__main__":
    main()
