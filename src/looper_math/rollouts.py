"""Phase 2 — Regime W rollouts: k trajectories per question from the bandit's arms, scored.

Command: ``looper-math rollouts [--limit N] [--shard i/n] [--resume]`` (alias:
``python -m src.rl_training.collect_rollouts_abel``). Writes ``rollouts.output`` (append-only JSONL,
one row per trajectory, keyed by (question_id, sample_idx)) and ``<stem>.summary.json``.

Per round of ``rollouts.questions_per_round`` questions: the bandit allocates k arms per question and
every missing (question_id, sample_idx) becomes one generation request (arm prompt, arm temperature
and top_p, seed derived from (rollouts.seed, question_id, sample_idx)). The rounds go to the engine
as one stream (``engine.api.generate_stream``): the plain engine generates a round at a time; the fast
engine asks for the next round whenever fewer requests wait than slots are free, so its slots stay full
from the first question to the last instead of idling in each round's tail. As soon as a question's
samples are all in, its group is scored (``regime_w.scoring.score_group``, in a process pool while the
engine decodes) and its rewards computed; rows are appended in fsynced writes of ``WRITE_EVERY``
questions, and the bandit learns from each write. A round is allocated with every row written by the
time the engine asks for it (with the plain engine: all earlier rounds).

Killing the process at any point loses at most the rows not yet written; a rerun with ``--resume`` drops a
torn last line, rebuilds the bandit statistics from the rows on disk and generates only missing keys.
A resume refuses a file written by a different model or adapter.

On-policy samples: ``rollouts.eval_prompt_share`` of each question's k samples (sample_idx 0..n-1) use
the plain evaluation prompt, arm ``eval_prompt``, at ``rollouts.temperature`` / ``rollouts.top_p``; the
bandit allocates the rest over the Regime W arms. Pairs are trained under the evaluation prompt, so
samples drawn under it are what DPO (and rejection-sampling SFT) should learn from; the 0.5B model's
accuracy halves under the arm instructions. Every sample of a group is scored together.

Speed: an adapter is merged into this process's copy of the base weights before decoding
(``generation.merge_adapter``); groups are scored in a process pool (``rollouts.score_workers``); the summary's
``this_run`` splits the wall time into generation, scoring (the main thread's share: submitting groups,
building and writing rows) and the rest, and, with the fast engine, gives its host time, refill (prefill)
time and slot occupancy.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict, deque
from concurrent.futures import ProcessPoolExecutor

from looper_math.config import Config, fingerprint, save_resolved
from looper_math.engine.api import GenRequest, fast_options, generate_stream, prompt_tokens
from looper_math.layout import resolved_of, summary_of, write_summary
from looper_math.modeling import load_model_with_adapter, load_tokenizer, prepare_for_generation
from looper_math.regime_w import Bandit, compute_reward, load_arms, score_group
from looper_math.runio import (DataError, JsonlAppender, check_output, read_jsonl, resolve_shard,
                               shard_path, take_shard)
from looper_math.schemas import ROLLOUT_KEY, RolloutRow, question_kinds
from looper_math.seeds import stable_seed
from looper_math.stats import auroc
from looper_math.task import GSM8K

KEY = ROLLOUT_KEY
EVAL_ARM = "eval_prompt"  # the arm name of samples drawn under the plain evaluation prompt
WRITE_EVERY = 32  # questions per fsynced write of rows (a kill loses at most these and the ones generating)


def eval_prompt_samples(k: int, share: float) -> int:
    """How many of a question's k samples use the evaluation prompt (the first ones, by sample_idx)."""
    return min(k, max(0, round(share * k)))


def make_bandit(cfg: Config) -> Bandit | None:
    """The bandit over the Regime W arms for the samples not drawn under the evaluation prompt (None if none are)."""
    r, w = cfg.rollouts, cfg.regime_w
    n_eval = eval_prompt_samples(r.k, r.eval_prompt_share)
    if n_eval == r.k:
        return None
    return Bandit(load_arms(w), w.allocation, r.k - n_eval, w.exploration_floor, w.ucb_c, seed=r.seed)


def update_bandit(bandit: Bandit | None, rows: list[dict]) -> None:
    """Feed the bandit the rows of its own arms (samples under the evaluation prompt are not its pulls)."""
    if bandit is not None:
        bandit.update([x for x in rows if x["arm"] != EVAL_ARM])


def score_workers(setting: int) -> int:
    """Processes for Regime W scoring: the setting, or (0) one per spare core up to 8."""
    return setting if setting > 0 else max(1, min(8, (os.cpu_count() or 1) - 1))


def reasoning_of(text: str) -> str:
    """The trajectory without its final '#### N' line."""
    head, sep, _ = text.rpartition("####")
    return head.rstrip() if sep else text


def summarize(rows: list[dict], bandit: Bandit | None, run_tokens: int, run_seconds: float, cfg: Config,
              timing: dict | None = None) -> dict:
    kinds = list(question_kinds(rows).values())
    per_arm: dict[str, dict] = {}
    stats = bandit.stats() if bandit is not None else {}
    if any(r["arm"] == EVAL_ARM for r in rows):
        mine = [r for r in rows if r["arm"] == EVAL_ARM]
        stats = {EVAL_ARM: {"pulls": len(mine), "mean_reward": sum(r["reward"] for r in mine) / len(mine),
                            "accuracy": sum(bool(r["correct"]) for r in mine) / len(mine)}, **stats}
    for name, st in stats.items():
        mine = [r for r in rows if r["arm"] == name]
        per_arm[name] = {**st, "mean_s_wm": sum(r["s_wm"] for r in mine) / len(mine) if mine else None}
    n = len(rows)
    return {
        "smoke": cfg.smoke, "model": cfg.model.name_or_path, "adapter": cfg.rollouts.adapter, "protocol": cfg.task.protocol,
        "allocation": cfg.regime_w.allocation, "eval_prompt_share": cfg.rollouts.eval_prompt_share,
        "rows": n, "questions": len(kinds),
        "accuracy": sum(r["correct"] for r in rows) / n if n else 0.0,
        "share_questions_mixed": kinds.count("mixed") / len(kinds) if kinds else 0.0,
        "share_all_correct": kinds.count("all_right") / len(kinds) if kinds else 0.0,
        "finished_share": sum(r["finished"] for r in rows) / n if n else 0.0,
        "mean_tokens": sum(r["num_tokens"] for r in rows) / n if n else 0.0,
        "per_arm": per_arm,
        # s_cf (so s_wm) compares with the GSM8K reference program: those AUROCs use the label.
        # s_cf_free compares with the peers' consensus program instead; it and s_end use no label
        # (only answer agreement among the samples, as s_path's peer term does).
        "auroc_correct": {
            "s_wm": auroc([r["s_wm"] for r in rows], [r["correct"] for r in rows]),
            "s_path+s_cf": auroc([r["s_path"] + r["s_cf"] for r in rows], [r["correct"] for r in rows]),
            "s_end": auroc([r["s_end"] for r in rows], [r["correct"] for r in rows]),
            # None for rows written before s_cf_free existed
            "s_path+s_cf_free": auroc([r["s_path"] + r["s_cf_free"] for r in rows], [r["correct"] for r in rows])
            if all("s_cf_free" in r for r in rows) else None,
        },
        "auroc_uses_reference": {"s_wm": True, "s_path+s_cf": True, "s_end": False, "s_path+s_cf_free": False},
        # written calculations the scorer could not read (scored as unconfirmed); None for older rows
        "unparsed_steps": sum(r["n_unparsed"] for r in rows) if all("n_unparsed" in r for r in rows) else None,
        "rows_with_unparsed_steps": sum(r["n_unparsed"] > 0 for r in rows) if all("n_unparsed" in r for r in rows) else None,
        "this_run": {"tokens": run_tokens, "seconds": round(run_seconds, 2),
                     "tokens_per_s": round(run_tokens / run_seconds, 1) if run_seconds > 0 else None,
                     **({k: round(v, 2) for k, v in timing.items()} if timing else {})},
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


class RolloutRun:
    """One rollouts run's state while the engine generates, and the named steps that move it along:

    ``start`` (rows already on disk) -> ``feed`` (the engine asks for the next round's requests) -> ``on_result``
    (a finished request; a question whose samples are all in goes to scoring) -> ``collect`` (scored questions
    become rows, oldest first) -> ``write_rows`` (every ``WRITE_EVERY`` questions: fsynced, and the bandit learns).
    ``generate`` runs the engine's stream over ``feed`` and ``on_result`` and returns the timing split.
    """

    def __init__(self, cfg: Config, task: GSM8K, tokenizer, bandit: Bandit | None, sink: JsonlAppender, pool,
                 model_id: str, adapter_id: str | None):
        self.cfg, self.task, self.tokenizer, self.bandit, self.sink, self.pool = cfg, task, tokenizer, bandit, sink, pool
        self.model_id, self.adapter_id = model_id, adapter_id
        self.arms = {a.name: a for a in load_arms(cfg.regime_w)}
        self.n_eval = eval_prompt_samples(cfg.rollouts.k, cfg.rollouts.eval_prompt_share)
        self.texts_by_q: dict[str, dict[int, str]] = defaultdict(dict)  # question -> sample_idx -> text (written or scored)
        self.todo: list = []  # the questions short of k samples, in order
        self.eval_prompts: dict[str, str] = {}  # question -> its evaluation prompt
        self.round_size = max(cfg.rollouts.questions_per_round, 1)
        self.rounds = iter(())  # the start index in todo of each round not yet fed
        self.fed: list[tuple] = []  # per request, in the order fed: (problem, sample_idx, arm or None, seed, request)
        self.waiting: dict[str, int] = defaultdict(int)  # question -> its requests still generating
        self.new_by_q: dict[str, list[tuple]] = defaultdict(list)  # question -> its finished (idx, arm, seed, req, res)
        self.scoring: deque[tuple] = deque()  # (problem, group, order, future or scores), completed questions in order
        self.unwritten: list[dict] = []
        self.unwritten_questions = 0
        self.run_tokens = 0
        self.seconds = {"score": 0.0, "feed": 0.0}  # main-thread seconds in scoring and rows / in allocating rounds
        self.engine_stats: dict = {}  # the fast engine's counters (engine.scheduler.stream_fast)

    def start(self, problems: list, old: list[dict]) -> None:
        """Take in the rows already on disk: the bandit learns from them and only questions short of k remain."""
        update_bandit(self.bandit, old)
        for row in old:
            self.texts_by_q[row["question_id"]][row["sample_idx"]] = row["full_text"]
        k = self.cfg.rollouts.k
        self.todo = [p for p in problems if len(self.texts_by_q.get(p.question_id, {})) < k]
        self.rounds = iter(range(0, len(self.todo), self.round_size))
        self.eval_prompts = {p.question_id: self.task.prompt(self.tokenizer, p.question) for p in self.todo}

    def write_rows(self) -> None:
        self.unwritten_questions = 0
        self.unwritten.sort(key=lambda x: (x["question_id"], x["sample_idx"]))
        self.sink.write(self.unwritten)
        update_bandit(self.bandit, self.unwritten)
        self.unwritten.clear()

    def collect(self, block: bool) -> None:
        """Rows for the scored questions, oldest first; written every ``WRITE_EVERY`` questions (and
        whenever ``block``, which also waits for every question still scoring)."""
        r, w, pool = self.cfg.rollouts, self.cfg.regime_w, self.pool
        ts = time.time()
        while self.scoring and (block or pool is None or self.scoring[0][3].done()):
            p, group, order, scored = self.scoring.popleft()
            qid = p.question_id
            scores = dict(zip(order, scored.result() if pool is not None else scored))
            for idx, arm, seed, req, res in self.new_by_q.pop(qid):
                sco = scores[idx]
                correct = self.task.is_correct(sco["answer"], p.gold)
                temperature, top_p = (arm.temperature, arm.top_p) if arm is not None else (r.temperature, r.top_p)
                self.run_tokens += res.num_tokens
                self.unwritten.append(RolloutRow(
                    question_id=qid, sample_idx=idx, arm=arm.name if arm is not None else EVAL_ARM,
                    arm_family=arm.family if arm is not None else "eval",
                    prompt=req.prompt, eval_prompt=self.eval_prompts[qid], full_text=res.text,
                    reasoning=reasoning_of(res.text), answer=sco["answer"],
                    gold=p.gold, correct=correct, num_tokens=res.num_tokens, finished=res.finished,
                    s_end=sco["s_end"], s_path=sco["s_path"], s_cf=sco["s_cf"], s_wm=sco["s_wm"],
                    s_cf_free=sco["s_cf_free"], n_unparsed=sco["n_unparsed"],
                    reward=compute_reward(correct, sco["s_wm"], res.num_tokens, w.alpha_correct, w.beta_coherence, w.length_penalty),
                    temperature=temperature, top_p=top_p, seed=seed, model=self.model_id, adapter=self.adapter_id,
                ))
            self.texts_by_q[qid] = group
            self.unwritten_questions += 1
            if self.unwritten_questions >= WRITE_EVERY:
                self.write_rows()
        if block and self.unwritten:
            self.write_rows()
        self.seconds["score"] += time.time() - ts

    def feed(self) -> list[GenRequest]:
        """The next round's requests, allocated by the bandit with every row written so far."""
        r = self.cfg.rollouts
        self.collect(block=True)
        start = next(self.rounds, None)
        if start is None:
            return []
        tf = time.time()
        part = self.todo[start:start + self.round_size]
        reqs = []
        # the bandit allocates the whole round at once, so its exploration floor holds per round
        allocation = self.bandit.allocate_round([p.question_id for p in part]) if self.bandit is not None else {}
        for p in part:
            allocated = [EVAL_ARM] * self.n_eval + allocation.get(p.question_id, [])
            for idx in range(r.k):
                if (p.question_id, idx) in self.sink:
                    continue
                seed = stable_seed(r.seed, p.question_id, idx) % (2**63)
                if allocated[idx] == EVAL_ARM:
                    req, arm = GenRequest(self.eval_prompts[p.question_id], r.temperature, r.top_p, seed), None
                else:
                    arm = self.arms[allocated[idx]]
                    req = GenRequest(self.task.prompt(self.tokenizer, p.question, arm.instruction), arm.temperature, arm.top_p, seed)
                reqs.append(req)
                self.fed.append((p, idx, arm, seed, req))
                self.waiting[p.question_id] += 1
        self.seconds["feed"] += time.time() - tf
        return reqs

    def on_result(self, i: int, res) -> None:
        """A finished request; once its question's are all in, the group goes to scoring."""
        r, w, pool = self.cfg.rollouts, self.cfg.regime_w, self.pool
        p, idx, arm, seed, req = self.fed[i]
        qid = p.question_id
        self.new_by_q[qid].append((idx, arm, seed, req, res))
        self.waiting[qid] -= 1
        if self.waiting[qid]:
            return
        ts = time.time()
        group = dict(self.texts_by_q.get(qid, {}))
        group.update((item[0], item[4].text) for item in self.new_by_q[qid])
        order = sorted(group)
        texts = [group[j] for j in order]
        # each text's answer is extracted once, by the task, and grades `correct` and s_end alike
        args = (p.question, texts, p.answer if w.cf_source == "reference" else None, (w.w_end, w.w_path, w.w_cf),
                w.cf_perturbations)
        kw = {"seed": stable_seed(r.seed, qid) % (2**32), "answers": [self.task.extract(t) for t in texts]}
        scored = pool.submit(score_group, *args, **kw) if pool is not None else score_group(*args, **kw)
        self.scoring.append((p, group, order, scored))
        self.seconds["score"] += time.time() - ts
        self.collect(block=False)

    def generate(self, model) -> dict[str, float]:
        """Every missing sample, generated, scored and written; the wall time split into generation and scoring."""
        r, task, tokenizer = self.cfg.rollouts, self.task, self.tokenizer
        # the cache holds the longest prompt: the evaluation prompt's, plus the longest arm instruction
        longest = max(prompt_tokens(tokenizer, list(self.eval_prompts.values())), default=1)
        if self.bandit is not None:
            longest += max(prompt_tokens(tokenizer, [a.instruction for a in self.arms.values()])) + 8
        n_requests = sum(r.k - len(self.texts_by_q.get(p.question_id, {})) for p in self.todo)
        # the sampling path the requests need: (temperature, top_p) of the evaluation prompt's and the arms' samples
        drawn = ([(r.temperature, r.top_p)] if self.n_eval else []) + (
            [(a.temperature, a.top_p) for a in self.arms.values()] if self.bandit is not None else [])
        sampled, truncate = any(t > 0 for t, _ in drawn), any(t > 0 and tp < 1 for t, tp in drawn)
        g = self.cfg.generation
        tg = time.time()
        generate_stream(model, tokenizer, self.feed, self.on_result, total=n_requests, longest_prompt=longest,
                        max_new_tokens=r.max_new_tokens, batch_size=r.batch_size, stop_strings=task.stop_strings,
                        engine=g.engine, fast=fast_options(g), stats=self.engine_stats, sampled=sampled, truncate=truncate,
                        desc=f"rollouts {len(self.todo)} questions x {r.k}")
        timing = {"generate_seconds": time.time() - tg - self.seconds["score"] - self.seconds["feed"]}
        self.collect(block=True)
        timing["score_seconds"] = self.seconds["score"]
        return timing


def check_resumed_rows(out, old: list[dict], model_id: str, adapter_id: str | None) -> None:
    """A resume continues only a file of the same model and adapter."""
    for i, row in enumerate(old, 1):
        if (row.get("model"), row.get("adapter")) != (model_id, adapter_id):
            raise DataError(f"{out}:{i}: rollouts from model={row.get('model')!r} adapter={row.get('adapter')!r}, "
                            f"but this run uses model={model_id!r} adapter={adapter_id!r} (use --overwrite or another output)")


def collect_rollouts(cfg: Config, *, resume: bool = False, overwrite: bool = False, shard: str | None = None) -> dict:
    r = cfg.rollouts
    sh = resolve_shard(shard)
    out = shard_path(cfg.path(r.output), sh)
    mode = check_output(out, resume=resume, overwrite=overwrite)
    task = GSM8K.from_config(cfg)
    problems = take_shard(task.load(cfg, r.split, r.limit), sh)
    bandit = make_bandit(cfg)
    tokenizer = load_tokenizer(cfg)
    model, adapter_dir = load_model_with_adapter(cfg, r.adapter, merge=cfg.generation.merge_adapter)
    prepare_for_generation(model, tokenizer, cfg.model.prompt_format)
    model_id, adapter_id = cfg.model.name_or_path, str(adapter_dir) if adapter_dir else None
    t0 = time.time()
    workers = score_workers(r.score_workers)
    pool = None
    if workers > 1:
        import multiprocessing

        # spawn: a forked child would inherit the CUDA context; the workers only import the scorer
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        with JsonlAppender(out, KEY, mode) as sink:
            old = list(read_jsonl(out)) if mode == "resume" else []
            check_resumed_rows(out, old, model_id, adapter_id)
            save_resolved(cfg, out.parent, resolved_of(out).name)  # only once the old rows are known to fit
            summary_of(out).unlink(missing_ok=True)  # the file changes from here: complete again once its summary is rewritten
            run = RolloutRun(cfg, task, tokenizer, bandit, sink, pool, model_id, adapter_id)
            run.start(problems, old)
            if mode == "resume":
                print(f"rollouts: resuming {out}: {len(old)} rows on disk, {len(run.todo)} questions to go"
                      + (f" (dropped a torn last line of {sink.torn_bytes} bytes)" if sink.torn_bytes else ""))
            timing = run.generate(model)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    all_rows = list(read_jsonl(out))
    seconds = time.time() - t0
    timing["other_seconds"] = seconds - timing["generate_seconds"] - timing["score_seconds"]
    engine_stats = run.engine_stats
    if engine_stats.get("slot_steps"):  # inside generate_seconds: the engine's host work, and how full its slots ran
        timing["engine_host_seconds"] = engine_stats["host_seconds"]
        timing["engine_refill_seconds"] = engine_stats["refill_seconds"]
        timing["slot_occupancy"] = engine_stats["busy_slot_steps"] / engine_stats["slot_steps"]
    summary = summarize(all_rows, bandit, run.run_tokens, seconds, cfg, timing)
    summary["bandit_state"] = bandit.state_dict() if bandit is not None else None
    summary = write_summary(out, summary)
    print_arm_table(summary)
    print(f"rollouts: {summary['rows']} rows -> {out}; mixed-correctness questions {summary['share_questions_mixed']:.1%}; "
          f"{summary['this_run']['tokens_per_s']} tok/s")
    if sh is not None:
        print(f"rollouts: shard {sh[0]}/{sh[1]} done; once all are: looper-math merge --kind rollouts --shards {sh[1]} {cfg.path(r.output)}")
    return summary
