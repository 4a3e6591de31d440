"""Phase 3: build DPO preference pairs from Regime W rollouts, correctness first.

Command::

    looper-math prefs --config configs/abel7b.yaml [--set prefs.prompt_mode=arm] [--overwrite]
    # alias: python -m src.rl_training.build_preferences_abel

Input: the rollouts JSONL (one row per trajectory, see README). Output: a preference JSONL in TRL's
plain preference format (``prompt``, ``chosen``, ``rejected``: strings) plus bookkeeping fields, and
next to it ``<stem>.summary.json`` (its counts printed in one line) and ``<stem>.resolved_config.yaml``. The output is
rewritten whole (temp file + rename); an existing one is refused without ``--overwrite``.

Rules (correctness first):

- Trajectories that did not hit EOS (``finished == False``) and empty completions are dropped: DPO
  would otherwise learn to prefer truncated text.
- Correctness pairs, per question with both correct and incorrect trajectories: chosen = the best
  correct one by reward (ties: higher s_wm, then lower sample_idx); rejected = the incorrect ones, hard
  negatives first (highest reward, then highest s_wm), at most ``max_correctness_pairs_per_question``.
- Coherence pairs (only if "coherence" in ``pair_types``), among a question's correct trajectories:
  higher-s_wm over lower-s_wm when the margin is >= ``coherence_margin``; largest margins first, at most
  ``max_coherence_pairs_per_question``. Over the whole file coherence pairs are cut to at most
  ``max_coherence_share`` of all pairs, keeping the largest margins. Without correctness pairs there is
  therefore no room for coherence pairs: correctness is the signal, coherence the tie-breaker.
- Pairs with chosen text == rejected text and repeats of an identical (prompt, chosen, rejected) are
  dropped.

Prompt: ``prompt_mode: eval`` uses the row's ``eval_prompt`` (the plain evaluation prompt, so what DPO
teaches shows up at evaluation). ``prompt_mode: arm`` uses the arm prompt the text was sampled from; a
pair is then only formed between trajectories that share the same arm prompt (a completion is only a
sample of its own prompt), so the chosen side is the best correct trajectory *of the rejected one's
prompt*, and rejected trajectories whose prompt has no correct trajectory are skipped (counted in the
summary as ``skipped_no_same_prompt``). In eval mode every trajectory of a question shares one prompt,
so the same code reduces to the plain rule above.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from looper_math.config import Config, ConfigError, PrefsConfig, fingerprint, save_resolved
from looper_math.layout import check_intact, resolved_of, summary_of, write_summary
from looper_math.runio import DataError, atomic_write_text, check_output, read_jsonl
from looper_math.schemas import PairRow, RolloutRow, check_row

PAIR_TYPES = ("correctness", "coherence")
PROMPT_MODES = ("eval", "arm")

# The fields of a rollouts row (schemas.RolloutRow) build_pairs reads; a row without one of them is a DataError.
REQUIRED_FIELDS = ("question_id", "sample_idx", "arm", "prompt", "eval_prompt", "full_text", "correct",
                   "finished", "s_wm", "reward")

# Float slack for the margin threshold: 0.65 - 0.5 must count as a margin of 0.15.
_EPS = 1e-9


def check_rows(rows: list[dict], source: str) -> None:
    """Raise a one-line DataError naming source, row (1-based) and field for a missing or mistyped field."""
    for i, row in enumerate(rows, start=1):
        check_row(row, RolloutRow, REQUIRED_FIELDS, f"{source}: row {i}")


def _check_cfg(cfg: PrefsConfig) -> None:
    bad = [t for t in cfg.pair_types if t not in PAIR_TYPES]
    if bad or not cfg.pair_types:
        raise ConfigError(f"prefs.pair_types must be a non-empty subset of {list(PAIR_TYPES)}, got {cfg.pair_types}")
    if cfg.prompt_mode not in PROMPT_MODES:
        raise ConfigError(f"prefs.prompt_mode must be one of {list(PROMPT_MODES)}, got {cfg.prompt_mode!r}")
    if not 0.0 <= cfg.max_coherence_share <= 1.0:
        raise ConfigError(f"prefs.max_coherence_share must be in [0, 1], got {cfg.max_coherence_share}")


def _qid_key(qid: object) -> tuple:
    # Integer ids sort numerically, anything else as text; mixed files still sort deterministically.
    return (0, qid, "") if isinstance(qid, int) and not isinstance(qid, bool) else (1, 0, str(qid))


def _rank(row: dict) -> tuple:
    """Sort key: best first (highest reward, then highest s_wm, then lowest sample_idx)."""
    return (-row["reward"], -row["s_wm"], row["sample_idx"])


def _pair(prompt: str, chosen: dict, rejected: dict, pair_type: str) -> PairRow:
    return PairRow(
        prompt=prompt, chosen=chosen["full_text"], rejected=rejected["full_text"], question_id=chosen["question_id"],
        pair_type=pair_type, chosen_arm=chosen["arm"], rejected_arm=rejected["arm"], chosen_reward=chosen["reward"],
        rejected_reward=rejected["reward"], chosen_s_wm=chosen["s_wm"], rejected_s_wm=rejected["s_wm"],
        chosen_sample_idx=chosen["sample_idx"], rejected_sample_idx=rejected["sample_idx"],
    )


def _margin_stats(pairs: list[dict]) -> dict:
    if not pairs:
        return {"reward_mean": None, "reward_min": None, "s_wm_mean": None, "s_wm_min": None}
    dr = [p["chosen_reward"] - p["rejected_reward"] for p in pairs]
    ds = [p["chosen_s_wm"] - p["rejected_s_wm"] for p in pairs]
    return {"reward_mean": sum(dr) / len(dr), "reward_min": min(dr), "s_wm_mean": sum(ds) / len(ds), "s_wm_min": min(ds)}


def build_pairs(rows: list[dict], cfg: PrefsConfig) -> tuple[list[dict], dict]:
    """Preference pairs and a summary from rollout rows (already validated with ``check_rows``).

    Output order is deterministic: questions by id; within a question correctness pairs (hard negatives
    first), then coherence pairs (largest margin first).
    """
    _check_cfg(cfg)
    prompt_field = "eval_prompt" if cfg.prompt_mode == "eval" else "prompt"
    kept = [r for r in rows if r["finished"] and r["full_text"].strip()]
    dropped_unfinished = sum(1 for r in rows if not r["finished"])
    dropped_empty = sum(1 for r in rows if r["finished"] and not r["full_text"].strip())

    by_q: dict = defaultdict(list)
    for r in kept:
        by_q[r["question_id"]].append(r)

    seen: set[tuple[str, str, str]] = set()
    counts = {"dropped_identical_text": 0, "dropped_duplicate": 0, "skipped_no_same_prompt": 0}

    def admit(pair: dict) -> bool:
        if pair["chosen"] == pair["rejected"]:
            counts["dropped_identical_text"] += 1
            return False
        key = (pair["prompt"], pair["chosen"], pair["rejected"])
        if key in seen:
            counts["dropped_duplicate"] += 1
            return False
        seen.add(key)
        return True

    per_question: dict = {}  # qid -> (correctness pairs, coherence pairs)
    mixed = 0
    for qid in sorted(by_q, key=_qid_key):
        group = by_q[qid]
        correct = sorted((r for r in group if r["correct"]), key=_rank)
        incorrect = sorted((r for r in group if not r["correct"]), key=_rank)
        mixed += bool(correct and incorrect)

        corr_pairs: list[dict] = []
        if "correctness" in cfg.pair_types and correct and incorrect:
            best_by_prompt: dict[str, dict] = {}
            for r in correct:  # best first, so the first seen per prompt is the best
                best_by_prompt.setdefault(r[prompt_field], r)
            for rej in incorrect:  # hard negatives first
                if len(corr_pairs) >= cfg.max_correctness_pairs_per_question:
                    break
                chosen = best_by_prompt.get(rej[prompt_field])
                if chosen is None:
                    counts["skipped_no_same_prompt"] += 1
                    continue
                pair = _pair(rej[prompt_field], chosen, rej, "correctness")
                if admit(pair):
                    corr_pairs.append(pair)

        coh_pairs: list[dict] = []
        if "coherence" in cfg.pair_types and len(correct) > 1:
            candidates = []
            for i, hi in enumerate(correct):
                for lo in correct[i + 1:]:
                    if hi[prompt_field] != lo[prompt_field]:
                        continue
                    a, b = (hi, lo) if (hi["s_wm"], -hi["sample_idx"]) >= (lo["s_wm"], -lo["sample_idx"]) else (lo, hi)
                    margin = a["s_wm"] - b["s_wm"]
                    if margin + _EPS >= cfg.coherence_margin:
                        candidates.append((margin, a, b))
            candidates.sort(key=lambda c: (-c[0], c[1]["sample_idx"], c[2]["sample_idx"]))
            for _, a, b in candidates:
                if len(coh_pairs) >= cfg.max_coherence_pairs_per_question:
                    break
                pair = _pair(a[prompt_field], a, b, "coherence")
                if admit(pair):
                    coh_pairs.append(pair)
        per_question[qid] = (corr_pairs, coh_pairs)

    # Share cap: H / (C + H) <= share  <=>  H <= share * C / (1 - share); keep the largest margins.
    n_corr = sum(len(c) for c, _ in per_question.values())
    all_coh = [(qid, j, p) for qid, (_, coh) in per_question.items() for j, p in enumerate(coh)]
    share = cfg.max_coherence_share
    allowed = len(all_coh) if share >= 1.0 else int(share * n_corr / (1.0 - share) + _EPS)
    ranked = sorted(all_coh, key=lambda t: (-(t[2]["chosen_s_wm"] - t[2]["rejected_s_wm"]), _qid_key(t[0]), t[1]))
    keep = {(qid, j) for qid, j, _ in ranked[:allowed]}
    dropped_share = max(0, len(all_coh) - allowed)

    pairs: list[dict] = []
    for qid, (corr, coh) in per_question.items():
        pairs += corr
        pairs += [p for j, p in enumerate(coh) if (qid, j) in keep]

    by_type = {t: [p for p in pairs if p["pair_type"] == t] for t in PAIR_TYPES}
    summary = {
        "rollouts": len(rows),
        "dropped_unfinished": dropped_unfinished,
        "dropped_empty": dropped_empty,
        "questions": len(by_q),
        "questions_with_mixed_correctness": mixed,
        "questions_covered": len({p["question_id"] for p in pairs}),
        "pairs": len(pairs),
        "pairs_by_type": {t: len(v) for t, v in by_type.items()},
        "margins": {t: _margin_stats(v) for t, v in by_type.items()},
        "coherence_dropped_by_share_cap": dropped_share,
        **counts,
        "pair_types": list(cfg.pair_types),
        "prompt_mode": cfg.prompt_mode,
    }
    return pairs, summary


def run_prefs(cfg: Config, rollouts_path: Path, output_path: Path, overwrite: bool) -> dict:
    """Read rollouts, build pairs, write pairs JSONL + summary + resolved config. Returns the summary."""
    rollouts_path, output_path = Path(rollouts_path), Path(output_path)
    if not rollouts_path.is_file():
        raise DataError(f"{rollouts_path}: rollouts file not found")
    check_output(output_path, resume=False, overwrite=overwrite, resumable=False)  # replaced by an atomic rename below
    check_intact(rollouts_path, "rows")  # a finished rollouts file must still be what its summary recorded
    rows = list(read_jsonl(rollouts_path))
    check_rows(rows, str(rollouts_path))
    pairs, summary = build_pairs(rows, cfg.prefs)
    summary = {"smoke": cfg.smoke, "input": str(rollouts_path), "output": str(output_path), **summary,
               "settings_fingerprint": fingerprint(cfg, "prefs")}

    atomic_write_text(output_path, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    summary = write_summary(output_path, summary)
    save_resolved(cfg, output_path.parent, resolved_of(output_path).name)
    if cfg.smoke:
        print("SMOKE RUN (tiny model): these pairs say nothing about the real model.")
    print(summary_line(summary, summary_of(output_path)))
    return summary


def summary_line(summary: dict, summary_path: Path) -> str:
    """What ``prefs`` prints: the counts a reader checks at a glance; the full summary stays in its file."""
    by_type = ", ".join(f"{n} {t}" for t, n in summary["pairs_by_type"].items())
    dropped = summary["dropped_unfinished"] + summary["dropped_empty"]
    return (f"prefs: {summary['pairs']} pairs ({by_type}) from {summary['questions_covered']} of {summary['questions']} "
            f"questions ({summary['questions_with_mixed_correctness']} with mixed correctness; {summary['rollouts']} rollouts, "
            f"{dropped} unfinished or empty dropped) -> {summary['output']}; details: {summary_path}")
