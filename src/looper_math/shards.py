"""Merge the shard files of a data-parallel rollouts / eval run into one output, exactly once.

Command: ``looper-math merge --kind rollouts|eval --shards N OUTPUT``. ``rollouts --shard i/n`` and
``eval --shard i/n`` (or RANK/WORLD_SIZE under ``accelerate launch`` / ``torchrun``) each write their own
append-only ``<stem>.shard-i-of-n.jsonl`` plus its summary and resolved config. The merge refuses, with
one line naming the file, unless:

- every shard file of the n exists and is finished: its summary exists and counts exactly the rows in
  the file (a killed shard is rerun with ``--resume`` first);
- all shards ran with the same resolved config (same model, adapter, limit, k, seeds, ...);
- every key ((question_id, sample_idx) for rollouts, question_id for eval) appears exactly once over all
  shards; rollouts also need every question's group complete (sample_idx 0..k-1) and one model/adapter,
  eval one checkpoint.

Only then is ``OUTPUT`` written (atomically; an existing one needs ``--overwrite``), in the unsharded
question order, followed by its summary recomputed from all merged rows (for rollouts the bandit
statistics are rebuilt from the rows) and the shards' resolved config. ``this_run`` of the merged summary
sums the shards' tokens over the slowest shard's seconds (they ran in parallel).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from looper_math.errors import UsageError
from looper_math.layout import resolved_of as _resolved_of
from looper_math.layout import integrity_problem, write_summary
from looper_math.layout import summary_of as _summary_of
from looper_math.runio import DataError, atomic_write_text, check_output, merge_shards, read_jsonl, shard_path
from looper_math.schemas import EVAL_KEY, ROLLOUT_KEY

def _check_shards(kind: Kind, output: Path, n: int) -> tuple[list[dict], str, list[dict]]:
    """All rows of all shards (validated), the shards' common resolved config text, their summaries."""
    rows: list[dict] = []
    resolved: str | None = None
    summaries: list[dict] = []
    for i in range(n):
        part = shard_path(output, (i, n))
        if not part.exists():
            raise DataError(f"{part}: shard file missing (shard {i}/{n} not run)")
        part_rows = list(read_jsonl(part))
        sp = _summary_of(part)
        if not sp.exists():
            raise DataError(f"{part}: shard {i}/{n} not finished (no {sp.name}); rerun it with --resume")
        try:
            summ = json.loads(sp.read_text())
        except ValueError:
            raise DataError(f"{sp}: not valid JSON; rerun shard {i}/{n} with --resume") from None
        counted = summ.get(kind.count_key)
        if counted != len(part_rows):
            raise DataError(f"{part}: {len(part_rows)} rows but its summary counts {counted} "
                            f"(shard {i}/{n} not finished); rerun it with --resume")
        problem = integrity_problem(part, kind.count_key)
        if problem is not None:
            raise DataError(f"{problem}; rerun shard {i}/{n} with --overwrite")
        rc = _resolved_of(part)
        if not rc.exists():
            raise DataError(f"{part}: no {rc.name} next to it")
        text = rc.read_text()
        if resolved is None:
            resolved = text
        elif text != resolved:
            raise DataError(f"{rc}: shard {i}/{n} ran with a different config than shard 0/{n}; rerun it with the same config")
        rows += part_rows
        summaries.append(summ)
    return rows, resolved or "", summaries


def _this_run(summaries: list[dict]) -> dict:
    tokens = sum(int((s.get("this_run") or {}).get("tokens") or 0) for s in summaries)
    seconds = max((float((s.get("this_run") or {}).get("seconds") or 0.0) for s in summaries), default=0.0)
    return {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
            "shards": len(summaries), "note": "tokens summed over shards, seconds of the slowest shard (last run of each)"}


def _check_rollouts(rows: list[dict], cfg, output: Path) -> None:
    k = cfg.rollouts.k
    groups: dict[str, set[int]] = {}
    for row in rows:
        groups.setdefault(row["question_id"], set()).add(row["sample_idx"])
    for qid, idxs in groups.items():
        if idxs != set(range(k)):
            missing = sorted(set(range(k)) - idxs)
            raise DataError(f"{output}: question {qid!r} has samples {sorted(idxs)[:10]}, expected 0..{k - 1}"
                            + (f" (missing {missing[:10]})" if missing else ""))
    made_by = {(r.get("model"), r.get("adapter")) for r in rows}
    if len(made_by) > 1:
        raise DataError(f"{output}: shards hold rollouts of several model/adapter pairs: {sorted(map(str, made_by))[:3]}")


def _check_eval(rows: list[dict], cfg, output: Path) -> None:
    checkpoints = {r.get("checkpoint") for r in rows}
    if len(checkpoints) > 1:
        raise DataError(f"{output}: shards hold rows of several checkpoints: {sorted(map(str, checkpoints))[:3]}")


def _summarize_rollouts(merged: list[dict], cfg, run: dict, summaries: list[dict]) -> dict:
    from looper_math.rollouts import make_bandit, summarize, update_bandit

    bandit = make_bandit(cfg)
    update_bandit(bandit, merged)  # the bandit statistics rebuilt from all rows
    summary = summarize(merged, bandit, run["tokens"], run["seconds"], cfg)
    summary["bandit_state"] = bandit.state_dict() if bandit is not None else None
    return summary


def _summarize_eval(merged: list[dict], cfg, run: dict, summaries: list[dict]) -> dict:
    from looper_math.evaluate import summarize

    checkpoint = merged[0]["checkpoint"] if merged else None
    summary = summarize(merged, checkpoint=checkpoint, cfg=cfg, run_tokens=run["tokens"], run_seconds=run["seconds"])
    summary["settings_fingerprint"] = summaries[0].get("settings_fingerprint")  # the shards share one config (checked)
    return summary


def _say_rollouts(summary: dict, count: int, n: int, output: Path) -> None:
    from looper_math.rollouts import print_arm_table

    print_arm_table(summary)
    print(f"merge: {count} rollouts of {summary['questions']} questions from {n} shards -> {output}")


def _say_eval(summary: dict, count: int, n: int, output: Path) -> None:
    lo, hi = summary["ci95"]
    print(f"merge: eval [{summary['checkpoint']}] n={summary['n']} from {n} shards: accuracy {summary['accuracy']:.2%} "
          f"(95% CI {lo:.2%}-{hi:.2%}) -> {output}")


@dataclass(frozen=True)
class Kind:
    """What merging one kind of sharded output needs: its row key, the summary field that counts rows, the
    checks over all rows, the summary of the merged rows and the line that reports it."""

    key: tuple[str, ...]
    count_key: str
    check: Callable[[list[dict], object, Path], None]
    summarize: Callable[[list[dict], object, dict, list[dict]], dict]
    say: Callable[[dict, int, int, Path], None]


KIND = {
    "rollouts": Kind(ROLLOUT_KEY, "rows", _check_rollouts, _summarize_rollouts, _say_rollouts),
    "eval": Kind(EVAL_KEY, "n", _check_eval, _summarize_eval, _say_eval),
}
KINDS = tuple(KIND)


def merge(kind: str, output: str | Path, n: int, *, overwrite: bool = False) -> dict:
    """Validate the n shard files of OUTPUT, merge them into OUTPUT and write its summary; returns it."""
    from looper_math.config import ConfigError, load_config

    if kind not in KIND:
        raise UsageError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    if n < 1:
        raise UsageError(f"--shards {n}: need at least 1 shard")
    spec = KIND[kind]
    output = Path(output)
    check_output(output, resume=False, overwrite=overwrite, resumable=False)  # refuse before reading anything
    rows, resolved, summaries = _check_shards(spec, output, n)
    first = _resolved_of(shard_path(output, (0, n)))
    try:
        cfg = load_config(first)
    except ConfigError as e:
        raise DataError(f"{first}: cannot read it back: {e}") from None
    spec.check(rows, cfg, output)
    count = merge_shards(output, n, spec.key, overwrite=overwrite)  # re-checks every key appears exactly once
    merged = list(read_jsonl(output))
    run = _this_run(summaries)
    summary = spec.summarize(merged, cfg, run, summaries)
    summary["this_run"] = run
    summary["merged_from"] = [shard_path(output, (i, n)).name for i in range(n)]
    atomic_write_text(_resolved_of(output), resolved)
    summary = write_summary(output, summary)
    spec.say(summary, count, n, output)
    return summary
