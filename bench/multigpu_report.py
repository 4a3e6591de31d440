"""Summarize bench/multigpu.sh: loss curves 1 vs 2 GPUs, training tokens/s, rollout key sets and times.

    python bench/multigpu_report.py RUN_ROOT STEPS_JSONL     # prints one JSON object
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def rows_by_key(path: Path) -> dict[tuple[str, int], dict]:
    with open(path) as f:
        return {(r["question_id"], r["sample_idx"]): r for r in map(json.loads, f)}


def sft_part(root: Path, walls: dict) -> dict:
    sft = {n: json.loads((root / n / "checkpoints/sft_lora/train_summary.json").read_text()) for n in ("gpu1", "gpu2")}
    c1, c2 = (dict((s, l) for s, l in sft[n]["losses"]) for n in ("gpu1", "gpu2"))
    common = sorted(set(c1) & set(c2))
    diffs = [c2[s] - c1[s] for s in common]
    per = lambda key: {n: sft[n].get(key) for n in sft}  # noqa: E731
    return {
        "steps": per("steps"), "processes": per("processes"),
        "loss_curve": [[s, round(c1[s], 4), round(c2[s], 4)] for s in common],
        "loss_diff_2gpu_minus_1gpu": {"mean": round(statistics.mean(diffs), 4), "mean_abs": round(statistics.mean(map(abs, diffs)), 4),
                                       "max_abs": round(max(map(abs, diffs)), 4)} if diffs else None,
        "train_loss": per("train_loss"),
        "train_tokens_per_s": per("train_tokens_per_s"),  # whole train() call, first steps included
        "steady_tokens_per_s": per("steady_tokens_per_s"),  # after the first 20 % of the steps
        "steady_seconds_per_step": per("steady_seconds_per_step"),
        "train_seconds": per("seconds"),
        "wall_s": {"gpu1": walls.get("sft_1gpu"), "gpu2": walls.get("sft_2gpu")},
    }


def rollouts_part(root: Path, walls: dict) -> dict:
    d = root / "gpu1" / "data"
    a, b = rows_by_key(d / "rollouts_1gpu.jsonl"), rows_by_key(d / "rollouts_2gpu.jsonl")
    k1, k2 = set(a), set(b)
    both = k1 & k2
    r1 = json.loads((d / "rollouts_1gpu.summary.json").read_text())
    r2 = json.loads((d / "rollouts_2gpu.summary.json").read_text())
    out = {
        "rows": {"gpu1": len(k1), "gpu2_merged": len(k2)},
        "same_keys": k1 == k2, "only_1gpu": len(k1 - k2), "only_2gpu": len(k2 - k1),
        # per-key seeds make the samples reproducible; batch composition still changes bf16 kernels
        "same_arm": sum(a[k]["arm"] == b[k]["arm"] for k in both),
        "identical_text": sum(a[k]["full_text"] == b[k]["full_text"] for k in both),
        "accuracy": {"gpu1": round(sum(r["correct"] for r in a.values()) / max(len(a), 1), 4),
                     "gpu2": round(sum(r["correct"] for r in b.values()) / max(len(b), 1), 4)},
        "this_run": {"gpu1": r1.get("this_run"), "gpu2": r2.get("this_run")},
        "wall_s": {"gpu1": walls.get("rollouts_1gpu"), "gpu2": walls.get("rollouts_2gpu"), "merge": walls.get("merge")},
    }
    g1, g2 = out["wall_s"]["gpu1"], out["wall_s"]["gpu2"]
    if g1 and g2:
        out["wall_ratio_2gpu_over_1gpu"] = round(g2 / g1, 3)
    return out


def main() -> None:
    root, steps_file = Path(sys.argv[1]), Path(sys.argv[2])
    walls = {r["step"]: r["wall_s"] for r in map(json.loads, steps_file.read_text().splitlines())}
    out = {"sft": sft_part(root, walls)}
    if (root / "gpu1" / "data" / "rollouts_2gpu.jsonl").exists():  # not with PARTS=sft
        out["rollouts"] = rollouts_part(root, walls)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
