"""Phase 5 — evaluation on GSM8K-Platinum (or a dev split), base model or with an adapter.

Command: ``looper-math eval --adapter sft|dpo|none|PATH`` (aliases: ``python -m
src.eval.eval_abel_sft_platinum`` and ``src.eval.eval_abel_coherence_platinum``).

Greedy decoding by ``generation.engine``: hf batches with left padding, fast decodes in slots refilled as
sequences finish (continuous batching); either gives the outputs of one question at a time (tested). Prompts and grading
come from the task (``task.GSM8K``, ``task.protocol``): both extraction pipelines are reported under their
own names, lm-evaluation-harness style (``strict`` reads the ``#### N`` line, ``flexible`` falls back to
"The answer is", ``\\boxed{}`` and the last number; a hedged completion, whose ``#### N`` and ``\\boxed{N}``
disagree, has neither and is wrong: ``answers.hedged``, the row's ``hedged``); the headline ``correct`` (and ``extracted``) uses
``task.answer_mode``, or the GSM8K-Platinum harness's parser under ``task.protocol: platinum`` (the same
grading rollouts use for rewards).

Writes one JSONL row per question (append-only, keyed by question_id, resumable) and a summary JSON
next to it (``<output stem>.summary.json``) recomputed from every row in the file.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path

from looper_math.config import Config, eval_phase, fingerprint, save_resolved
from looper_math.engine.api import GenRequest, fast_options, generate
from looper_math.layout import RunLayout, resolved_of, summary_of, write_summary
from looper_math.modeling import load_model_with_adapter, load_tokenizer, prepare_for_generation
from looper_math.runio import DataError, JsonlAppender, check_output, read_jsonl, resolve_shard, shard_path, take_shard
from looper_math.schemas import EVAL_KEY, EvalRow, fields
from looper_math.stats import wilson_ci
from looper_math.task import GSM8K

EVAL_FIELDS = fields(EvalRow)  # the row format (schemas.EvalRow)


def default_output(cfg: Config, adapter: str | None) -> Path:
    """Where the evaluation of ``adapter`` goes (the run layout's name for it)."""
    return RunLayout(cfg).eval(adapter).path


summary_path = summary_of  # the summary next to an eval JSONL (layout.summary_of)


def summarize(rows: list[dict], *, checkpoint: str | None, cfg: Config, run_tokens: int, run_seconds: float) -> dict:
    n = len(rows)

    def acc(key: str, subset: list[dict]) -> dict:
        k = sum(bool(r[key]) for r in subset)
        lo, hi = wilson_ci(k, len(subset)) if subset else (0.0, 0.0)
        return {"correct": k, "n": len(subset), "accuracy": k / len(subset) if subset else 0.0, "ci95": [lo, hi]}

    by_status: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_status[r["cleaning_status"]].append(r)
    headline, strict, flexible = acc("correct", rows), acc("correct_strict", rows), acc("correct_flexible", rows)
    return {
        "n": n, "checkpoint": checkpoint, "model": cfg.model.name_or_path, "smoke": cfg.smoke,
        "answer_mode": cfg.task.answer_mode, "protocol": cfg.task.protocol, "split": cfg.eval.split,
        "data": cfg.data.test if cfg.eval.split == "test" else cfg.data.train,
        "accuracy": headline["accuracy"], "ci95": headline["ci95"],
        "accuracy_strict": strict["accuracy"], "ci95_strict": strict["ci95"],
        "accuracy_flexible": flexible["accuracy"], "ci95_flexible": flexible["ci95"],
        "by_cleaning_status": {s: acc("correct", rs) for s, rs in sorted(by_status.items())},
        "extraction_failures_strict": sum(r["extracted_strict"] is None for r in rows),
        "extraction_failures_flexible": sum(r["extracted_flexible"] is None for r in rows),
        # hedged rows (answers.hedged) are wrong and among the extraction failures; rows written before the
        # field existed (schemas.EvalRow: NotRequired) count as not hedged
        "hedged": sum(r.get("hedged", False) for r in rows),
        "unfinished": sum(not r["finished"] for r in rows),
        "mean_tokens": sum(r["num_tokens"] for r in rows) / n if n else 0.0,
        "total_tokens": sum(r["num_tokens"] for r in rows),
        "this_run": {"tokens": run_tokens, "seconds": round(run_seconds, 2),
                     "tokens_per_s": round(run_tokens / run_seconds, 1) if run_seconds > 0 else None},
        "finish_reasons": dict(Counter("eos" if r["finished"] else "length" for r in rows)),
    }


def evaluate(cfg: Config, adapter: str | None = "sft", *, output: str | Path | None = None,
             resume: bool = False, overwrite: bool = False, shard: str | None = None) -> dict:
    sh = resolve_shard(shard)
    out = shard_path(Path(output) if output else default_output(cfg, adapter), sh)
    mode = check_output(out, resume=resume, overwrite=overwrite)
    task = GSM8K.from_config(cfg)
    problems = take_shard(task.load(cfg, cfg.eval.split, cfg.eval.limit), sh)
    tokenizer = load_tokenizer(cfg)
    model, adapter_dir = load_model_with_adapter(cfg, adapter, merge=cfg.generation.merge_adapter)
    prepare_for_generation(model, tokenizer, cfg.model.prompt_format)
    checkpoint = str(adapter_dir) if adapter_dir else f"base:{cfg.model.name_or_path}"
    run_tokens, t0 = 0, time.time()
    with JsonlAppender(out, EVAL_KEY, mode) as sink:
        if mode == "resume":  # rows of another checkpoint must not be mixed into this file
            for i, row in enumerate(read_jsonl(out), 1):
                if row.get("checkpoint") != checkpoint:
                    raise DataError(f"{out}:{i}: row of checkpoint={row.get('checkpoint')!r}, but this run evaluates "
                                    f"{checkpoint!r} (use --overwrite or another --output)")
        save_resolved(cfg, out.parent, resolved_of(out).name)
        summary_of(out).unlink(missing_ok=True)  # the file changes from here: complete again once its summary is rewritten
        todo = [p for p in problems if (p.question_id,) not in sink]
        if mode == "resume":
            print(f"eval: resuming {out}: {len(problems) - len(todo)} done, {len(todo)} to go"
                  + (f" (dropped a torn last line of {sink.torn_bytes} bytes)" if sink.torn_bytes else ""))
        chunk = max(cfg.eval.batch_size * 4, 1)
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            reqs = [GenRequest(prompt=task.prompt(tokenizer, p.question)) for p in part]
            results = generate(model, tokenizer, reqs, max_new_tokens=cfg.eval.max_new_tokens,
                               batch_size=cfg.eval.batch_size, stop_strings=task.stop_strings,
                               engine=cfg.generation.engine, fast=fast_options(cfg.generation), desc=f"eval {start + len(part)}/{len(todo)}")
            rows = []
            for p, r in zip(part, results):
                rows.append(EvalRow(question_id=p.question_id, question=p.question, gold=p.gold, prediction=r.text,
                                    **task.grade(r.text, p.gold).fields(), cleaning_status=p.cleaning_status,
                                    num_tokens=r.num_tokens, finished=r.finished, checkpoint=checkpoint))
                run_tokens += r.num_tokens
            sink.write(rows)
    rows = list(read_jsonl(out))
    summary = summarize(rows, checkpoint=checkpoint, cfg=cfg, run_tokens=run_tokens, run_seconds=time.time() - t0)
    summary["settings_fingerprint"] = fingerprint(cfg, eval_phase(adapter))
    summary = write_summary(out, summary)
    lo, hi = summary["ci95"]
    print(f"eval [{checkpoint}] n={summary['n']}: accuracy {summary['accuracy']:.2%} (95% CI {lo:.2%}-{hi:.2%}), "
          f"strict {summary['accuracy_strict']:.2%}, flexible {summary['accuracy_flexible']:.2%}, "
          f"{summary['this_run']['tokens_per_s']} tok/s -> {out}")
    if sh is not None:
        print(f"eval: shard {sh[0]}/{sh[1]} done; once all are: looper-math merge --kind eval --shards {sh[1]} "
              f"{Path(output) if output else default_output(cfg, adapter)}")
    return summary
