"""Ablation (c) of issue 13: the same rollouts with s_cf taken label-free.

Every rollout row stores ``s_cf`` (perturbed programs compared with the GSM8K reference program) and
``s_cf_free`` (compared with the group's peer-consensus program, no label). This writes a copy of a
rollouts file whose ``s_cf`` is ``s_cf_free``, with ``s_wm`` and ``reward`` recomputed by the same
formulas (``regime_w.scoring``: weighted mean; ``regime_w.reward.compute_reward``), so pairs built
from it differ from the default ones only through the counterfactual score.

    python bench/relabel_cf_free.py -c configs/qwen05_gpu.yaml IN.jsonl OUT.jsonl
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from looper_math.config import load_config
from looper_math.regime_w.reward import compute_reward
from looper_math.runio import atomic_write_text, read_jsonl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", required=True)
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    a = ap.parse_args()
    w = load_config(a.config).regime_w
    total = w.w_end + w.w_path + w.w_cf
    out, changed = [], 0
    for row in read_jsonl(a.src):
        s_cf = row["s_cf_free"]
        changed += s_cf != row["s_cf"]
        s_wm = min(max((w.w_end * row["s_end"] + w.w_path * row["s_path"] + w.w_cf * s_cf) / total, 0.0), 1.0)
        reward = compute_reward(row["correct"], s_wm, row["num_tokens"], w.alpha_correct, w.beta_coherence, w.length_penalty)
        out.append(json.dumps({**row, "s_cf": s_cf, "s_wm": s_wm, "reward": reward}) + "\n")
    atomic_write_text(a.dst, "".join(out))
    summary = a.src.with_name(a.src.stem + ".summary.json")
    if summary.exists():  # prefs reads nothing from it, but a rollouts file travels with its summary
        shutil.copyfile(summary, a.dst.with_name(a.dst.stem + ".summary.json"))
    print(f"relabel: {len(out)} rows, s_cf changed in {changed} -> {a.dst}")


if __name__ == "__main__":
    main()
