"""GRPO step time on the real model: where a step goes and which trainer layout is fastest.

    python bench/bench_grpo.py -c configs/qwen05_gpu.yaml [--steps 10] [--variants base,mb2,mb4,spg2] [--out DIR]
    python bench/bench_grpo.py -c SMOKE.yaml --steps 3 --set grpo.max_completion_length=16   # CPU smoke test

Each variant is one `looper-math grpo` process (its own memory, model load and compile) from the same
adapter, ``--steps`` optimizer steps of the config's recipe (32 questions x 8 completions per step on the
0.5B), nothing saved but the adapter; one JSON line each from its ``train_summary.json``:
- ``base``: the config as it is (0.5B: micro-batch 32 x grad_accum 8), the baseline of every ratio;
- ``mb2`` / ``mb4``: micro-batch x2 / x4, grad_accum /2 / /4 (the same 256 completions per step, fewer,
  larger forward/backward passes);
- ``spg2``: ``steps_per_generation`` = 2 x grad_accum: one sampling call of 512 completions serves two
  optimizer steps (the decode-step count is set by the longest completion, so the second half comes almost
  free; the second step's samples are one step off-policy and TRL adds a forward pass for the old
  log-probs, importance-weighted and clipped);
- ``trl``: TRL's own ``model.generate`` as the sampler (``grpo.generation: trl``), for scale.
Fields: steady seconds per step and its ratio to ``base``, sampling seconds per step (our sampler's share;
the first call, which loads the private copy, left out), peak GiB, the mean training reward.
The init adapter: ``--init-adapter``, else the config's SFT adapter if trained, else a 4-step SFT on the
gold solutions trained here first (any adapter times the same).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("base", "mb2", "mb4", "spg2", "trl")


def variant_sets(name: str, g) -> list[str]:
    """--set overrides of a variant, from the config's grpo section ``g``."""
    if name == "base":
        return []
    if name in ("mb2", "mb4"):
        f = int(name[2:])
        if g.grad_accum % f:
            raise SystemExit(f"{name}: grad_accum {g.grad_accum} is not divisible by {f}")
        return [f"grpo.batch_size={g.batch_size * f}", f"grpo.grad_accum={g.grad_accum // f}"]
    if name == "spg2":
        return [f"grpo.trainer_args={{steps_per_generation: {2 * g.grad_accum}}}"]
    if name == "trl":
        return ["grpo.generation=trl"]
    raise SystemExit(f"unknown variant {name!r} (choose from {', '.join(VARIANTS)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", required=True)
    ap.add_argument("--set", action="append", default=[], help="extra config override for every variant (repeatable)")
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per variant (steady rate after the first 20 %%)")
    ap.add_argument("--variants", default="base,mb2,mb4,spg2")
    ap.add_argument("--init-adapter", default=None)
    ap.add_argument("--deadline-s", type=float, default=None, help="start no variant after this many seconds")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args()

    from looper_math.config import load_config
    from looper_math.layout import summary_of

    cfg = load_config(args.config, args.set)
    names = args.variants.split(",")
    for n in names:
        variant_sets(n, cfg.grpo)  # fail before any work
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "looper_math.cli"]
    common = ["-c", args.config] + [x for s in args.set for x in ("--set", s)]
    t0 = time.perf_counter()

    def report(row: dict) -> None:
        line = json.dumps({"bench": "grpo", **row}, default=str)
        print(line, flush=True)
        if out:
            with open(out / "grpo.jsonl", "a") as f:
                f.write(line + "\n")

    init = args.init_adapter
    if init is None:
        sft_dir = cfg.path(cfg.sft.output_dir)
        if summary_of(sft_dir).exists():
            init = str(sft_dir)
        else:
            init = str(cfg.path("checkpoints/bench_grpo_sft"))
            if not summary_of(Path(init)).exists():
                subprocess.run(cli + ["sft"] + common + ["--set", "sft.data=gold", "--set", "sft.max_steps=4",
                               "--set", "sft.output_dir=checkpoints/bench_grpo_sft", "--overwrite"], check=True)

    base_sps = None
    for name in names:
        if args.deadline_s is not None and time.perf_counter() - t0 > args.deadline_s:
            report({"figure": name, "error": "skipped: --deadline-s reached"})
            continue
        odir, own = f"checkpoints/bench_grpo_{name}", variant_sets(name, cfg.grpo)
        sets = ["grpo.init_adapter=" + init, "grpo.output_dir=" + odir, f"grpo.max_steps={args.steps}",
                f"grpo.save_steps={args.steps * 100}", "grpo.logging_steps=1", "grpo.report_to=none"] + own
        t = time.perf_counter()
        proc = subprocess.run(cli + ["grpo"] + common + [x for s in sets for x in ("--set", s)] + ["--overwrite"],
                              capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode:
            report({"figure": name, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:], "wall_s": round(wall, 1)})
            continue
        s = json.loads(summary_of(cfg.path(odir)).read_text())
        sps = s.get("steady_seconds_per_step")
        if name == "base":
            base_sps = sps
        rewards = [r for _, r in s.get("rewards", [])]
        row = {"figure": name, "sets": own, "steps": s["steps"], "wall_s": round(wall, 1),
               "train_seconds": s["seconds"], "steady_seconds_per_step": sps,
               "x_base_speed": round(base_sps / sps, 3) if base_sps and sps else None,
               "steady_tokens_per_s": s.get("steady_tokens_per_s"), "peak_memory": s.get("peak_memory"),
               "mean_reward": round(sum(rewards) / len(rewards), 4) if rewards else None}
        if "sampling_seconds" in s:
            first, calls = s.get("sampling_first_call_seconds"), s.get("sampling_calls")
            row.update(sampling_seconds=s["sampling_seconds"], sampling_share=s["sampling_share"], sampling_calls=calls)
            if first is not None and calls and calls > 1 and s["steps"] > 1:
                row["sampling_seconds_per_step_after_first"] = round((s["sampling_seconds"] - first) / (s["steps"] - s["steps"] / calls), 3)
        report(row)


if __name__ == "__main__":
    main()
