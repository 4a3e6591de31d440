"""Re-grade the committed per-example evals with the hedged-answer rule and count what changes.

A completion whose ``#### N`` and ``\\boxed{N}`` answers disagree (or several of either do) is now wrong
(``looper_math.answers``, module docstring). This reads every committed eval JSONL
(``bench/results/**/*eval*.jsonl.gz``; the files are not modified) and prints per file: rows, hedged rows,
rows whose ``correct`` flips (right -> wrong, wrong -> right) and the accuracy before (the stored
``correct``, graded by the commit that wrote the file) and after (``task.GSM8K(...).grade`` now).
``other`` counts rows whose verdict changed though they are not hedged: grading changes other than this
one, expected 0 (a non-zero count would also reveal a wrong ``--answer-mode``). Hedged rows are split by
kind: boxes disagreeing among themselves, ``####`` lines among themselves, or only a box against a
``####`` line (the rule compares the last box with the last ``####`` line only, so the first two are 0;
they were not under the first version of the rule, which also hedged several disagreeing boxes or lines).

    PYTHONPATH=src python bench/regrade_hedged.py > bench/results/hedged_regrade.txt

Every committed eval summary says ``answer_mode: flexible`` and protocol ``default`` (or predates
``task.protocol``), hence the default of ``--answer-mode``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
from pathlib import Path

from looper_math.answers import hedged
from looper_math.task import GSM8K

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def kind(text: str) -> str:
    """Which stated answers disagree: among the boxes, among the #### lines, or only a box against ####.
    Each test hides the other marker (a #### line removed; ``\\boxed{5}`` made a plain ``{5}``)."""
    among_boxes = hedged(re.sub(r"####[^\n]*", "", text))
    among_hashes = hedged(re.sub(r"\\(?:boxed|fbox)", "", text))
    return "boxes" if among_boxes else "hashes" if among_hashes else "box_vs_hash"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--answer-mode", choices=("strict", "flexible"), default="flexible",
                    help="task.answer_mode (formerly eval.answer_mode) the files were graded in (all committed ones: flexible)")
    a = ap.parse_args()
    task = GSM8K(answer_mode=a.answer_mode)  # the prompt format plays no part in grading
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    print(f"# hedged-answer re-grade (issue 24); answers.py at commit {commit}; answer_mode={a.answer_mode}, protocol=default")
    print("# command: PYTHONPATH=src python bench/regrade_hedged.py")
    print("# before: the stored `correct`; after: task.GSM8K.grade now; flips right->wrong / wrong->right; "
          "other: flips of rows that are not hedged (expected 0)")
    head = f"{'file':<74} {'rows':>5} {'hedged':>6} {'r->w':>5} {'w->r':>5} {'other':>5} {'acc before':>10} {'acc after':>9} {'delta':>7}"
    print(head)
    tot = dict(rows=0, hedged=0, rw=0, wr=0, other=0)
    kinds = {"box_vs_hash": 0, "boxes": 0, "hashes": 0}
    flips_by_kind = dict.fromkeys(kinds, 0)
    for path in sorted(RESULTS.glob("**/*eval*.jsonl.gz")):
        rows = hed = rw = wr = other = before = after = 0
        with gzip.open(path, "rt") as f:
            for line in f:
                r = json.loads(line)
                new = task.grade(r["prediction"], r["gold"])
                old = r["correct"]
                rows += 1
                before += old
                after += new.correct
                hed += new.hedged
                if new.hedged:
                    k = kind(r["prediction"])
                    kinds[k] += 1
                    flips_by_kind[k] += old
                if old != new.correct:
                    rw += old
                    wr += not old
                    other += not new.hedged
        name = str(path.relative_to(RESULTS))
        print(f"{name:<74} {rows:>5} {hed:>6} {rw:>5} {wr:>5} {other:>5} {before / rows:>10.2%} {after / rows:>9.2%} "
              f"{(after - before) / rows * 100:>+6.2f}p")
        for k, v in dict(rows=rows, hedged=hed, rw=rw, wr=wr, other=other).items():
            tot[k] += v
    print(f"{'all files':<74} {tot['rows']:>5} {tot['hedged']:>6} {tot['rw']:>5} {tot['wr']:>5} {tot['other']:>5}")
    print("# hedged rows by kind (of which right -> wrong): " + ", ".join(f"{k} {v} ({flips_by_kind[k]})" for k, v in kinds.items())
          + " (box_vs_hash: only a \\boxed{} against a #### line; boxes / hashes: several of one marker disagree)")


if __name__ == "__main__":
    main()
