"""Paired tests recomputed from committed per-example eval files (plain or gzip JSONL): one line per pair.

    python bench/mcnemar_table.py DIR A:B [A:B ...]     (A, B: eval names in DIR, without .jsonl[.gz]; a
                                                        relative path such as ../../other/outputs/NAME reaches
                                                        another run's committed files)

Each line: n, accuracy of A -> B, the delta in points, b01/b10 (questions only B / only A gets right) and
the exact McNemar p (looper_math.compare, the same code as `looper-math compare`).
``--regrade`` first grades every row's prediction again with the current code (``task.GSM8K.grade``, flexible
extraction as every committed eval), so files written before a grading change (the hedged-answer rule) are
compared under today's rule.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import tempfile
from pathlib import Path

from looper_math.compare import compare


def resolve(d: Path, name: str, tmp: Path, regrade: bool = False) -> Path:
    for p in (d / f"{name}.jsonl", d / f"{name}.jsonl.gz"):
        if p.exists():
            if p.suffix != ".gz" and not regrade:
                return p
            out = tmp / f"{name.replace('/', '_')}.jsonl"
            with (gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")) as src, open(out, "wb") as dst:
                if not regrade:
                    shutil.copyfileobj(src, dst)
                    return out
                from looper_math.task import GSM8K

                task = GSM8K(answer_mode="flexible")
                for line in src:
                    row = json.loads(line)
                    row["correct"] = task.grade(row["prediction"], row["gold"]).correct
                    dst.write((json.dumps(row) + "\n").encode())
            return out
    raise SystemExit(f"{d}: no {name}.jsonl or {name}.jsonl.gz")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("pairs", nargs="+", metavar="A:B")
    ap.add_argument("--regrade", action="store_true", help="grade every prediction again with the current code first")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        for pair in args.pairs:
            a, sep, b = pair.partition(":")
            if not sep:
                raise SystemExit(f"{pair}: expected A:B")
            r = compare(resolve(args.dir, a, Path(t), args.regrade), resolve(args.dir, b, Path(t), args.regrade))
            print(f"{a:<22} -> {b:<22} n={r['n']}  {100 * r['a']['accuracy']:.2f}% -> {100 * r['b']['accuracy']:.2f}%  "
                  f"{100 * r['delta']:+.2f} pts  b01/b10 {r['b01']}/{r['b10']}  exact McNemar p = {r['mcnemar_p']:.2g}")


if __name__ == "__main__":
    main()
