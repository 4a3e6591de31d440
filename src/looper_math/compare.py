"""Paired comparison of two evaluation runs: both accuracies with Wilson CIs and an exact McNemar test.

Command::

    looper-math compare outputs/abel_sft_platinum_eval.jsonl outputs/abel_coherence_platinum_eval.jsonl [--intersect]

Input: two eval JSONL files (one row per question with at least ``question_id`` and ``correct``).
Questions are paired by ``question_id``; both files must hold the same ids (a run cut short by
``eval.limit`` or a crash would otherwise bias the comparison silently) unless ``intersect`` is asked
for, which compares the common ids and reports how many were dropped from each side.

Naming: ``b01`` = questions A got wrong and B right (0 -> 1), ``b10`` = A right and B wrong. The test
statistic is exact: under H0 the discordant pairs split Binomial(b01 + b10, 1/2), and the two-sided p is
``min(1, 2 * P(X <= min(b01, b10)))`` (McNemar 1947; the exact binomial form as in Fagerland, Lydersen
& Laake 2013, "The McNemar test for binary matched-pairs data", and statsmodels' ``mcnemar(exact=True)``).
"""

from __future__ import annotations

from pathlib import Path

from looper_math.runio import DataError
from looper_math.schemas import EvalRow, read_rows
from looper_math.stats import mcnemar_exact_p, wilson_ci

__all__ = ["compare", "format_compare", "mcnemar_exact_p", "wilson_ci"]  # the statistics live in stats.py


def _qid_key(qid: object) -> tuple:
    return (0, qid, "") if isinstance(qid, int) and not isinstance(qid, bool) else (1, 0, str(qid))


def _load(path: Path) -> tuple[dict, str]:
    """question_id -> correct, and a label (the rows' checkpoint field, else the file name)."""
    correct: dict = {}
    checkpoints = set()
    for i, row in enumerate(read_rows(path, EvalRow, ("question_id", "correct")), start=1):
        qid = row["question_id"]
        if qid in correct:
            raise DataError(f"{path}: row {i}: question_id {qid!r} appears twice")
        correct[qid] = row["correct"]
        if row.get("checkpoint") is not None:  # optional field: only used for the label
            checkpoints.add(str(row["checkpoint"]))
    if not correct:
        raise DataError(f"{path}: no rows")
    label = checkpoints.pop() if len(checkpoints) == 1 else path.name
    return correct, label


def _side(path: Path, label: str, k: int, n: int) -> dict:
    lo, hi = wilson_ci(k, n)
    return {"path": str(path), "label": label, "n_correct": k, "accuracy": k / n, "ci95": [lo, hi]}


def compare(a_path: str | Path, b_path: str | Path, intersect: bool = False) -> dict:
    """Paired comparison of eval files A and B (see module docstring for the fields)."""
    a_path, b_path = Path(a_path), Path(b_path)
    a, a_label = _load(a_path)
    b, b_label = _load(b_path)
    only_a, only_b = set(a) - set(b), set(b) - set(a)
    if (only_a or only_b) and not intersect:
        example = sorted(only_a or only_b, key=_qid_key)[0]
        raise DataError(
            f"{a_path} and {b_path} hold different question ids ({len(only_a)} only in A, {len(only_b)} only "
            f"in B, e.g. {example!r}); pass --intersect to compare the common ones")
    ids = sorted(set(a) & set(b), key=_qid_key)
    if not ids:
        raise DataError(f"{a_path} and {b_path} have no question ids in common")
    n = len(ids)
    a_only_correct = [q for q in ids if a[q] and not b[q]]
    b_only_correct = [q for q in ids if b[q] and not a[q]]
    b10, b01 = len(a_only_correct), len(b_only_correct)
    ka, kb = sum(a[q] for q in ids), sum(b[q] for q in ids)
    return {
        "a": _side(a_path, a_label, ka, n),
        "b": _side(b_path, b_label, kb, n),
        "n": n,
        "dropped_a": len(only_a),
        "dropped_b": len(only_b),
        "delta": (kb - ka) / n,
        "b01": b01,
        "b10": b10,
        "mcnemar_p": mcnemar_exact_p(b01, b10),
        "a_only_correct": a_only_correct,
        "b_only_correct": b_only_correct,
    }


def _ids(ids: list, limit: int = 30) -> str:
    shown = ", ".join(str(q) for q in ids[:limit])
    return shown + (f", ... (+{len(ids) - limit} more)" if len(ids) > limit else "") if ids else "-"


def format_compare(result: dict) -> str:
    """Human-readable text of a ``compare`` result."""
    lines = []
    for tag in ("a", "b"):
        s = result[tag]
        lo, hi = s["ci95"]
        lines.append(f"{tag.upper()}  {s['label']}  ({s['path']})")
        lines.append(f"   accuracy {s['accuracy']:.4f}  95% CI [{lo:.4f}, {hi:.4f}]  ({s['n_correct']}/{result['n']})")
    dropped = ""
    if result["dropped_a"] or result["dropped_b"]:
        dropped = f"  (intersect: dropped {result['dropped_a']} from A, {result['dropped_b']} from B)"
    lines.append(f"paired questions: {result['n']}{dropped}")
    lines.append(f"B - A: {result['delta'] * 100:+.2f} points")
    lines.append(f"discordant: A wrong -> B right {result['b01']} (b01), A right -> B wrong {result['b10']} (b10)")
    p = result["mcnemar_p"]
    verdict = "significant at 0.05" if p < 0.05 else "not significant at 0.05"
    lines.append(f"exact McNemar p = {p:.4g}  ({verdict})")
    lines.append(f"B only correct ({len(result['b_only_correct'])}): {_ids(result['b_only_correct'])}")
    lines.append(f"A only correct ({len(result['a_only_correct'])}): {_ids(result['a_only_correct'])}")
    return "\n".join(lines)
