"""Phase 2 — Regime W rollouts: k trajectories per question from the bandit's arms, scored.

Command: ``looper-math rollouts [--limit N] [--shard i/n] [--resume]`` (alias:
``python -m src.rl_training.collect_rollouts_abel``). Writes ``rollouts.output`` (append-only JSONL,
one row per trajectory, keyed by (question_id, sample_idx)) and ``<stem>.summary.json``.

Per round of ``rollouts.questions_per_round`` questions: the bandit allocates k arms per question,
every missing (question_id, sample_idx) becomes one generation request (arm prompt, arm temperature
and top_p, seed derived from (rollouts.seed, question_id, sample_idx)), all requests of the round are
generated in large batches, each question's group is scored (``regime_w.scoring.score_group``), rewards
computed, the round's rows appended in one fsynced write, and the bandit updated.

Killing the process at any point loses at most the round in flight; a rerun with ``--resume`` drops a
torn last line, rebuilds the bandit statistics from the rows on disk and generates only missing keys.
A resume refuses a file written by a different model or adapter.
"""

from __future__ import annotations

import time
from collections import defaultdict

from looper_math.config import Config, fingerprint, save_resolved
from looper_math.data import load_split
from looper_math.evaluate import score_row
from looper_math.generation import GenRequest, generate
from looper_math.modeling import load_model_with_adapter, load_tokenizer, prepare_for_generation
from looper_math.prompts import STOP_STRINGS, build_prompt
from looper_math.regime_w.arms import Bandit, load_arms, stable_seed
from looper_math.regime_w.reward import compute_reward
from looper_math.regime_w.scoring import score_group
from looper_math.runio import (DataError, JsonlAppender, atomic_write_json, check_output, read_jsonl, resolve_shard,
                               shard_path, take_shard)

KEY = ("question_id", "sample_idx")


def reasoning_of(text: str) -> str:
    """The trajectory without its final '#### N' line."""
    head, sep, _ = text.rpartition("####")
    return head.rstrip() if sep else text


def auroc(scores: list[float], labels: list[bool]) -> float | None:
    """Area under the ROC curve of `scores` for predicting `labels` (Mann-Whitney U; ties count 1/2)."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    ranked = sorted((s, i) for i, s in enumerate(scores))
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[ranked[k][1]] = (i + j) / 2 + 1
        i = j + 1
    rank_pos = sum(r for r, y in zip(ranks, labels) if y)
    return (rank_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def summarize(rows: list[dict], bandit: Bandit, run_tokens: int, run_seconds: float, cfg: Config) -> dict:
    by_q: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_q[r["question_id"]].append(r)
    mixed = sum(1 for g in by_q.values() if any(r["correct"] for r in g) and not all(r["correct"] for r in g))
    per_arm: dict[str, dict] = {}
    for name, st in bandit.stats().items():
        mine = [r for r in rows if r["arm"] == name]
        per_arm[name] = {**st, "mean_s_wm": sum(r["s_wm"] for r in mine) / len(mine) if mine else None}
    n = len(rows)
    return {
        "smoke": cfg.smoke, "model": cfg.model.name_or_path, "adapter": cfg.rollouts.adapter,
        "allocation": cfg.regime_w.allocation, "rows": n, "questions": len(by_q),
        "accuracy": sum(r["correct"] for r in rows) / n if n else 0.0,
        "share_questions_mixed": mixed / len(by_q) if by_q else 0.0,
        "share_all_correct": sum(all(r["correct"] for r in g) for g in by_q.values()) / len(by_q) if by_q else 0.0,
        "finished_share": sum(r["finished"] for r in rows) / n if n else 0.0,
        "mean_tokens": sum(r["num_tokens"] for r in rows) / n if n else 0.0,
        "per_arm": per_arm,
        "auroc_correct": {
            "s_wm": auroc([r["s_wm"] for r in rows], [r["correct"] for r in rows]),
            "s_path+s_cf": auroc([r["s_path"] + r["s_cf"] for r in rows], [r["correct"] for r in rows]),
            "s_end": auroc([r["s_end"] for r in rows], [r["correct"] for r in rows]),
        },
        "this_run": {"tokens": run_tokens, "seconds": round(run_seconds, 2),
                     "tokens_per_s": round(run_tokens / run_seconds, 1) if run_seconds > 0 else None},
        "settings_fingerprint": fingerprint(cfg, "rollouts"),
    }


def print_arm_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"Regime W arms ({summary['allocation']}): {summary['rows']} trajectories, "
                    f"{summary['questions']} questions, accuracy {summary['accuracy']:.1%}")
    for col in ("arm", "pulls", "accuracy", "mean reward", "mean s_wm"):
        t.add_column(col, justify="right" if col != "arm" else "left")
    for name, st in summary["per_arm"].items():
        t.add_row(name, str(st["pulls"]), f"{st['accuracy']:.1%}" if st["pulls"] else "-",
                  f"{st['mean_reward']:.3f}" if st["pulls"] else "-", f"{st['mean_s_wm']:.3f}" if st["mean_s_wm"] is not None else "-")
    Console().print(t)


def collect_rollouts(cfg: Config, *, resume: bool = False, overwrite: bool = False, shard: str | None = None) -> dict:
    r, w = cfg.rollouts, cfg.regime_w
    sh = resolve_shard(shard)
    out = shard_path(cfg.path(r.output), sh)
    mode = check_output(out, resume=resume, overwrite=overwrite)
    problems = load_split(cfg, r.split)
    if r.limit:
        problems = problems[: r.limit]
    problems = take_shard(problems, sh)
    arms = {a.name: a for a in load_arms(w)}
    bandit = Bandit(list(arms.values()), w.allocation, r.k, w.exploration_floor, w.ucb_c, seed=r.seed)
    tokenizer = load_tokenizer(cfg)
    model, adapter_dir = load_model_with_adapter(cfg, r.adapter)
    prepare_for_generation(model, tokenizer, cfg.model.prompt_format)
    model_id, adapter_id = cfg.model.name_or_path, str(adapter_dir) if adapter_dir else None
    fmt = cfg.model.prompt_format
    weights = (w.w_end, w.w_path, w.w_cf)
    run_tokens, t0 = 0, time.time()
    with JsonlAppender(out, KEY, mode) as sink:
        old = list(read_jsonl(out)) if mode == "resume" else []
        for i, row in enumerate(old, 1):
            if (row.get("model"), row.get("adapter")) != (model_id, adapter_id):
                raise DataError(f"{out}:{i}: rollouts from model={row.get('model')!r} adapter={row.get('adapter')!r}, "
                                f"but this run uses model={model_id!r} adapter={adapter_id!r} (use --overwrite or another output)")
        save_resolved(cfg, out.parent, out.stem + ".resolved_config.yaml")  # only once the old rows are known to fit
        bandit.update(old)
        texts_by_q: dict[str, dict[int, str]] = defaultdict(dict)
        for row in old:
            texts_by_q[row["question_id"]][row["sample_idx"]] = row["full_text"]
        todo = [p for p in problems if len(texts_by_q.get(p.question_id, {})) < r.k]
        if mode == "resume":
            print(f"rollouts: resuming {out}: {len(old)} rows on disk, {len(todo)} questions to go"
                  + (f" (dropped a torn last line of {sink.torn_bytes} bytes)" if sink.torn_bytes else ""))
        step = max(r.questions_per_round, 1)
        for start in range(0, len(todo), step):
            part = todo[start:start + step]
            reqs, meta = [], []
            for p in part:
                allocated = bandit.allocate(p.question_id)
                for idx in range(r.k):
                    if (p.question_id, idx) in sink:
                        continue
                    arm = arms[allocated[idx]]
                    seed = stable_seed(r.seed, p.question_id, idx) % (2**63)
                    reqs.append(GenRequest(build_prompt(tokenizer, fmt, p.question, arm.instruction), arm.temperature, arm.top_p, seed))
                    meta.append((p, idx, arm, seed))
            results = generate(model, tokenizer, reqs, max_new_tokens=r.max_new_tokens, batch_size=r.batch_size,
                               stop_strings=STOP_STRINGS[fmt], engine=cfg.eval.engine,
                               desc=f"rollouts {min(start + step, len(todo))}/{len(todo)} questions")
            new_by_q: dict[str, list[tuple]] = defaultdict(list)
            for (p, idx, arm, seed), req, res in zip(meta, reqs, results):
                new_by_q[p.question_id].append((p, idx, arm, seed, req, res))
                run_tokens += res.num_tokens
            rows = []
            for qid, items in new_by_q.items():
                p = items[0][0]
                group = dict(texts_by_q.get(qid, {}))
                for _, idx, _, _, _, res in items:
                    group[idx] = res.text
                order = sorted(group)
                scores = dict(zip(order, score_group(p.question, [group[i] for i in order], p.answer, weights,
                                                     w.cf_perturbations, seed=stable_seed(r.seed, qid) % (2**32),
                                                     answer_mode=cfg.eval.answer_mode)))
                eval_prompt = build_prompt(tokenizer, fmt, p.question)
                for _, idx, arm, seed, req, res in items:
                    sc = score_row(res.text, p.gold, cfg.eval.answer_mode)
                    s = scores[idx]
                    rows.append({
                        "question_id": qid, "sample_idx": idx, "arm": arm.name, "arm_family": arm.family,
                        "prompt": req.prompt, "eval_prompt": eval_prompt, "full_text": res.text,
                        "reasoning": reasoning_of(res.text), "answer": sc["extracted_strict"] if cfg.eval.answer_mode == "strict" else sc["extracted_flexible"],
                        "gold": p.gold, "correct": sc["correct"], "num_tokens": res.num_tokens, "finished": res.finished,
                        "s_end": s["s_end"], "s_path": s["s_path"], "s_cf": s["s_cf"], "s_wm": s["s_wm"],
                        "reward": compute_reward(sc["correct"], s["s_wm"], res.num_tokens, w.alpha_correct, w.beta_coherence, w.length_penalty),
                        "temperature": arm.temperature, "top_p": arm.top_p, "seed": seed, "model": model_id, "adapter": adapter_id,
                    })
                texts_by_q[qid] = group
            rows.sort(key=lambda x: (x["question_id"], x["sample_idx"]))
            sink.write(rows)
            bandit.update(rows)
    all_rows = list(read_jsonl(out))
    summary = summarize(all_rows, bandit, run_tokens, time.time() - t0, cfg)
    summary["bandit_state"] = bandit.state_dict()
    atomic_write_json(out.with_name(out.stem + ".summary.json"), summary)
    print_arm_table(summary)
    print(f"rollouts: {summary['rows']} rows -> {out}; mixed-correctness questions {summary['share_questions_mixed']:.1%}; "
          f"{summary['this_run']['tokens_per_s']} tok/s")
    if sh is not None:
        print(f"rollouts: shard {sh[0]}/{sh[1]} done; once all are: looper-math merge --kind rollouts --shards {sh[1]} {cfg.path(r.output)}")
    return summary


def rollouts_complete(cfg: Config) -> bool:
    out = cfg.path(cfg.rollouts.output)
    return out.with_name(out.stem + ".summary.json").exists()
