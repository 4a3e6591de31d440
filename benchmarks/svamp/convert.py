"""Rebuild ``test.jsonl`` from the raw ``SVAMP.json`` beside it, checking both sha256s.

SVAMP (Patel, Bhattamishra and Goyal, NAACL 2021; MIT licence): 1,000 one-unknown arithmetic word
problems, each ``{"ID", "Body", "Question", "Equation", "Answer", "Type"}``. Source and how the raw
file was obtained: README.md beside this file.

Conversion (one row per problem, in file order, the project's GSM8K-style local-file format that
``looper_math.data`` reads):

    {"question_id": "svamp-" + ID, "question": Body.strip() + " " + Question.strip(), "answer": "#### N"}

N is ``Answer`` written as an integer when it is whole (all 1,000 are: ``51.0`` -> ``51``), else as
Python's ``repr`` of the float. JSON lines are written with ``ensure_ascii=False`` and ``\\n`` endings.

Usage: ``python benchmarks/svamp/convert.py`` (writes test.jsonl; fails if a sha256 differs from the
ones below) or ``python benchmarks/svamp/convert.py --check`` (writes nothing, exit 1 on a mismatch).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RAW = HERE / "SVAMP.json"
OUT = HERE / "test.jsonl"
RAW_SHA256 = "1d87d5abb295d5f27bc59321f3ad27f4990af8c7f57040cda43735b649e1fdd6"
OUT_SHA256 = "02531d1c88d71700598bd4df30ed51c18284ad5d0e60115156574341480c1831"
N_PROBLEMS = 1000


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def answer_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def convert(raw: bytes) -> bytes:
    """The test.jsonl bytes for the raw SVAMP.json bytes (fails loudly on an unexpected row)."""
    rows = json.loads(raw.decode("utf-8"))
    if not isinstance(rows, list) or len(rows) != N_PROBLEMS:
        raise SystemExit(f"{RAW}: expected a JSON list of {N_PROBLEMS} problems")
    lines = []
    for i, r in enumerate(rows):
        for key, tp in (("ID", str), ("Body", str), ("Question", str), ("Answer", (int, float))):
            if not isinstance(r.get(key), tp):
                raise SystemExit(f"{RAW}[{i}]: field '{key}' missing or of the wrong type")
        lines.append(json.dumps({"question_id": f"svamp-{r['ID']}",
                                 "question": f"{r['Body'].strip()} {r['Question'].strip()}",
                                 "answer": f"#### {answer_text(r['Answer'])}"}, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode("utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="verify both sha256s and write nothing")
    args = ap.parse_args(argv)
    raw = RAW.read_bytes()
    if sha256(raw) != RAW_SHA256:
        print(f"{RAW}: sha256 {sha256(raw)} != expected {RAW_SHA256}", file=sys.stderr)
        return 1
    out = convert(raw)
    if sha256(out) != OUT_SHA256:
        print(f"{OUT}: converted sha256 {sha256(out)} != expected {OUT_SHA256}", file=sys.stderr)
        return 1
    if args.check:
        if not OUT.is_file() or OUT.read_bytes() != out:
            print(f"{OUT}: missing or differs from the conversion of {RAW.name}", file=sys.stderr)
            return 1
        print(f"{OUT.name}: {N_PROBLEMS} rows, sha256 {OUT_SHA256} (matches {RAW.name})")
        return 0
    OUT.write_bytes(out)
    print(f"wrote {OUT} ({N_PROBLEMS} rows, sha256 {OUT_SHA256})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
