"""Rollout runs side by side: where each one's time went, and how alike their outputs are.

    python bench/rollouts_report.py DIR NAME [NAME ...]    # DIR/rollouts_NAME.summary.json (+ .jsonl if there)

The first NAME is the baseline: ratios are against it. ``identical_texts`` is the share of (question, sample) keys
whose completion equals the baseline's (same seeds; bf16 kernels may still split a near-tie); it needs both JSONL
files. Prints a markdown table and one JSON line per run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FIELDS = ("seconds", "generate_seconds", "score_seconds", "other_seconds", "engine_host_seconds",
          "engine_refill_seconds", "slot_occupancy", "tokens", "tokens_per_s")


def texts(path: Path) -> dict[tuple, str] | None:
    if not path.is_file():
        return None
    with open(path) as f:
        return {(r["question_id"], r["sample_idx"]): r["full_text"] for r in map(json.loads, f)}


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit(__doc__)
    root, names = Path(argv[0]), argv[1:]
    runs = {}
    for n in names:
        s = json.loads((root / f"rollouts_{n}.summary.json").read_text())
        runs[n] = {"rows": s["rows"], "questions": s["questions"], "accuracy": round(s["accuracy"], 4),
                   "mean_tokens": round(s["mean_tokens"], 1), **{k: s["this_run"].get(k) for k in FIELDS}}
    base = names[0]
    ref = texts(root / f"rollouts_{base}.jsonl")
    for n, r in runs.items():
        r["x_tokens_per_s"] = round(r["tokens_per_s"] / runs[base]["tokens_per_s"], 3)
        other = texts(root / f"rollouts_{n}.jsonl") if n != base else None
        if ref is not None and other is not None:
            same = [k for k in ref if k in other]
            r["identical_texts"] = round(sum(ref[k] == other[k] for k in same) / len(same), 4) if same else None
    cols = ["run", "rows", "seconds", "generate_seconds", "score_seconds", "other_seconds", "engine_host_seconds",
            "engine_refill_seconds", "slot_occupancy", "tokens_per_s", "x_tokens_per_s", "accuracy", "mean_tokens",
            "identical_texts"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for n, r in runs.items():
        print("| " + " | ".join(str(n if c == "run" else r.get(c, "")) for c in cols) + " |")
    for n, r in runs.items():
        print(json.dumps({"run": n, **r}))


if __name__ == "__main__":
    main(sys.argv[1:])
