"""Unit tests for `compare` (Wilson CI, exact McNemar, pairing) and the HTML report."""

from __future__ import annotations

import json
import random
import re

import pytest

from looper_math.compare import compare, format_compare, mcnemar_exact_p, wilson_ci
from looper_math.report import build_report
from looper_math.runio import DataError


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def eval_rows(correct: list[bool], checkpoint="ckpt", ids=None):
    ids = ids if ids is not None else range(len(correct))
    return [{"question_id": q, "correct": c, "prediction": "#### 1", "checkpoint": checkpoint} for q, c in zip(ids, correct)]


# ------------------------------------------------------------------ McNemar / Wilson


@pytest.mark.parametrize("b01,b10,p", [
    (0, 6, 0.03125),            # 2 * 1/2^6
    (6, 0, 0.03125),
    (1, 1, 1.0),                # 2 * (1+2)/4 = 1.5 -> capped at 1
    (0, 0, 1.0),                # no discordant pairs
    (2, 8, 0.109375),           # 2 * (1+10+45)/1024 = 112/1024
    (0, 1, 1.0),                # 2 * 1/2
    (3, 12, 0.03515625),        # 2 * (1+15+105+455)/32768 = 1152/32768
])
def test_mcnemar_exact_hand_computed(b01, b10, p):
    assert mcnemar_exact_p(b01, b10) == pytest.approx(p, abs=1e-12)


def test_mcnemar_large_counts_do_not_overflow():
    assert 0.0 < mcnemar_exact_p(480, 520) < 1.0
    assert mcnemar_exact_p(500, 500) == 1.0


def test_wilson_ci_hand_computed():
    # k=5, n=10, z=1.96: centre 0.5, half = 1.96/1.38416 * sqrt(0.025 + 0.009604) = 0.26335...
    lo, hi = wilson_ci(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_ci(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_ci(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)
    with pytest.raises(ValueError):
        wilson_ci(0, 0)


# ------------------------------------------------------------------ compare


def test_compare_paired_counts_and_flips(tmp_path):
    a = [True, True, False, False, True, False, True, True]
    b = [True, False, True, True, True, True, True, True]
    write_jsonl(tmp_path / "a.jsonl", eval_rows(a, "sft"))
    write_jsonl(tmp_path / "b.jsonl", list(reversed(eval_rows(b, "dpo"))))  # order must not matter
    r = compare(tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    assert r["n"] == 8
    assert r["a"]["accuracy"] == 5 / 8 and r["b"]["accuracy"] == 7 / 8
    assert r["a"]["label"] == "sft" and r["b"]["label"] == "dpo"
    assert r["b01"] == 3 and r["b10"] == 1
    assert r["b_only_correct"] == [2, 3, 5] and r["a_only_correct"] == [1]
    assert r["mcnemar_p"] == pytest.approx(0.625)  # 2 * (1+4)/16
    assert r["delta"] == pytest.approx(0.25)
    assert r["a"]["ci95"] == list(wilson_ci(5, 8))
    text = format_compare(r)
    assert "p = 0.625" in text and "62.50" not in text and "B only correct (3): 2, 3, 5" in text


def test_compare_all_six_flips_significant(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", eval_rows([False] * 6 + [True] * 4))
    write_jsonl(tmp_path / "b.jsonl", eval_rows([True] * 10))
    r = compare(tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    assert (r["b01"], r["b10"]) == (6, 0) and r["mcnemar_p"] == pytest.approx(0.03125)
    assert "significant at 0.05" in format_compare(r)


def test_compare_id_mismatch_names_both_files_unless_intersect(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", eval_rows([True, False, True], ids=["q1", "q2", "q3"]))
    write_jsonl(tmp_path / "b.jsonl", eval_rows([True, True], ids=["q1", "q2"]))
    with pytest.raises(DataError) as e:
        compare(tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    msg = str(e.value)
    assert "a.jsonl" in msg and "b.jsonl" in msg and "1 only in A" in msg and "\n" not in msg
    r = compare(tmp_path / "a.jsonl", tmp_path / "b.jsonl", intersect=True)
    assert r["n"] == 2 and r["dropped_a"] == 1 and r["dropped_b"] == 0
    assert r["b_only_correct"] == ["q2"]
    assert "dropped 1 from A" in format_compare(r)


def test_compare_bad_rows(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"question_id": 1}])
    write_jsonl(tmp_path / "b.jsonl", eval_rows([True]))
    with pytest.raises(DataError, match="'correct'"):
        compare(tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    write_jsonl(tmp_path / "a.jsonl", eval_rows([True, False], ids=[1, 1]))
    with pytest.raises(DataError, match="twice"):
        compare(tmp_path / "a.jsonl", tmp_path / "b.jsonl")


# ------------------------------------------------------------------ report

ARMS = ["stepwise", "equations_first", "multiway", "rewrite_formula",
        "causal_explain", "vary_input", "substitute_back", "decompose"]


def make_run_dir(root, smoke=True, n_questions=40):
    """A synthetic run dir: two eval summaries, rollouts, pairs, two trainer logs, a resolved config."""
    rng = random.Random(0)
    rows = []
    for q in range(n_questions):
        for i, arm in enumerate(ARMS):
            p = 0.3 + 0.05 * i
            correct = rng.random() < p
            s = {k: min(1.0, max(0.0, rng.gauss(0.7 if correct else 0.4, 0.15))) for k in ("s_end", "s_path", "s_cf")}
            s_wm = 0.4 * s["s_end"] + 0.3 * s["s_path"] + 0.3 * s["s_cf"]
            rows.append({"question_id": q, "sample_idx": i, "arm": arm, "prompt": f"[{arm}] Q{q}",
                         "eval_prompt": f"Question: Q{q}\nAnswer:", "full_text": f"text {q} {i}", "reasoning": "",
                         "answer": "1", "gold": "1", "correct": correct, "num_tokens": 50,
                         "finished": rng.random() > 0.05, **s, "s_wm": s_wm,
                         "reward": float(correct) + 0.5 * s_wm - 0.0005 * 50, "seed": q * 100 + i,
                         "model": "tiny", "adapter": "sft"})
    write_jsonl(root / "data" / "abel_regime_w_rollouts.jsonl", rows)
    pairs = ([{"question_id": q, "pair_type": "correctness", "chosen_reward": 1.3, "rejected_reward": 0.2,
               "chosen_s_wm": 0.7, "rejected_s_wm": 0.4, "prompt": "p", "chosen": "c", "rejected": "r"} for q in range(7)]
             + [{"question_id": q, "pair_type": "coherence", "chosen_reward": 1.4, "rejected_reward": 1.3,
                 "chosen_s_wm": 0.8, "rejected_s_wm": 0.6, "prompt": "p", "chosen": "c2", "rejected": "r2"} for q in range(3)])
    write_jsonl(root / "data" / "abel_coherence_preferences.jsonl", pairs)
    (root / "outputs").mkdir(parents=True, exist_ok=True)
    for name, ckpt, acc, k in [("abel_sft_platinum_eval", "sft", 0.55, 55), ("abel_coherence_platinum_eval", "dpo", 0.61, 61),
                               ("abel_base_platinum_eval", "base", 0.42, 42)]:
        lo, hi = wilson_ci(k, 100)
        (root / "outputs" / f"{name}.summary.json").write_text(json.dumps(
            {"accuracy_strict": acc, "accuracy_flexible": acc + 0.03, "ci95_strict": [lo, hi], "n": 100, "checkpoint": ckpt}))
    for name, start in [("abel_sft_lora", 2.1), ("abel_coherence_lora", 0.6931)]:
        d = root / "checkpoints" / name
        d.mkdir(parents=True, exist_ok=True)
        hist = [{"step": s, "loss": start * (0.97 ** s) + 0.02 * rng.random(), "learning_rate": 1e-4} for s in range(1, 41)]
        hist.append({"step": 40, "train_runtime": 12.0})  # final summary entry has no loss
        (d / "log_history.json").write_text(json.dumps(hist))
    (root / "resolved_config.yaml").write_text(f"run_dir: .\nsmoke: {'true' if smoke else 'false'}\n")
    return rows


def test_report_from_synthetic_run_dir(tmp_path):
    rows = make_run_dir(tmp_path)
    page = build_report(tmp_path)
    assert page == tmp_path / "report" / "report.html"
    text = page.read_text()
    for arm in ARMS:
        assert f"<td>{arm}</td>" in text
    # the numbers of one arm's row, computed here independently
    arm_rows = [r for r in rows if r["arm"] == "multiway"]
    acc = sum(r["correct"] for r in arm_rows) / len(arm_rows)
    s_wm = sum(r["s_wm"] for r in arm_rows) / len(arm_rows)
    reward = sum(r["reward"] for r in arm_rows) / len(arm_rows)
    row = re.search(r"<tr><td>multiway</td>(.*?)</tr>", text).group(1)
    cells = re.findall(r"<td>(.*?)</td>", row)
    assert cells[0] == str(len(arm_rows))
    assert cells[2] == f"{100 * acc:.1f}%" and cells[3] == f"{s_wm:.3f}" and cells[4] == f"{reward:.3f}"
    assert "SMOKE RUN" in text
    assert "61.0%" in text and "42.0%" in text  # headline accuracies
    assert text.index(">base<") < text.index(">sft<") < text.index(">dpo<")  # phases in pipeline order
    assert "<td>correctness</td><td>7</td>" in text and "<td>coherence</td><td>3</td>" in text
    for png in ("accuracy_by_phase.png", "arms.png", "score_distributions.png", "loss_curves.png"):
        assert (tmp_path / "report" / png).stat().st_size > 1000
        assert f'src="{png}"' in text
    assert "Not in this report" not in text


def test_report_skips_missing_parts_with_notes(tmp_path):
    make_run_dir(tmp_path, smoke=False)
    for f in (tmp_path / "outputs").glob("*"):
        f.unlink()
    (tmp_path / "data" / "abel_coherence_preferences.jsonl").unlink()
    page = build_report(tmp_path, out_dir=tmp_path / "r")
    text = page.read_text()
    assert "SMOKE RUN" not in text
    assert "No evaluation summaries" in text and "No preference pairs" in text
    assert not (tmp_path / "r" / "accuracy_by_phase.png").exists()
    assert (tmp_path / "r" / "arms.png").stat().st_size > 0


def test_report_on_empty_run_dir(tmp_path):
    text = build_report(tmp_path).read_text()
    assert "No rollouts" in text and "No trainer logs" in text


def test_report_rollouts_missing_field_is_data_error(tmp_path):
    write_jsonl(tmp_path / "data" / "x_rollouts.jsonl", [{"question_id": 1, "arm": "a"}])
    with pytest.raises(DataError, match="'correct'"):
        build_report(tmp_path)


def _eval_of(root, name, checkpoint, correct, split="test"):
    """An evaluation as evaluate writes it: per-example JSONL and a summary naming its checkpoint and split."""
    write_jsonl(root / "outputs" / f"{name}.jsonl", eval_rows(correct, checkpoint=checkpoint))
    k, n = sum(correct), len(correct)
    (root / "outputs" / f"{name}.summary.json").write_text(json.dumps(
        {"accuracy_strict": k / n, "accuracy_flexible": k / n, "ci95_strict": list(wilson_ci(k, n)), "n": n,
         "checkpoint": checkpoint, "split": split}))


def _adapter(root, name, **summary):
    d = root / "checkpoints" / name
    d.mkdir(parents=True)
    (d / "log_history.json").write_text(json.dumps([{"step": 1, "loss": 1.0}]))
    (d / "train_summary.json").write_text(json.dumps(summary))
    return d


def _cards(page: str, label: str) -> list[str]:
    """The headline cards of checkpoint ``label``, each up to the end of its last line."""
    segs = [s for s in page.split('<div class="card">')[1:] if s.startswith(f'<div class="card-label">{label} · ')]
    return [s[: s.index("</div></div>", s.index('class="card-sub"'))] for s in segs]


def _card(page: str, label: str) -> str:
    (card,) = _cards(page, label)
    return card


def test_cards_compare_each_checkpoint_with_its_parent_and_the_base(tmp_path):
    """GRPO trained from SFT once said '-3.1 pts vs dpo_lora_r2' (the card before it in phase order). Each card
    names its parent (SFT: the base; DPO, GRPO: the init_adapter of its train summary) and the base, with
    the exact McNemar p of each pair."""
    base, sft, dpo, grpo = ([True] * 10 + [False] * 30, [True] * 20 + [False] * 20,
                            [True] * 30 + [False] * 10, [True] * 19 + [False] * 21)
    sft_dir = _adapter(tmp_path, "sft_lora", phase="sft")
    dpo_dir = _adapter(tmp_path, "dpo_lora", phase="dpo", init_adapter=str(sft_dir))
    # trained on another machine: its init_adapter path is from there; the folder name finds the parent here
    grpo_dir = _adapter(tmp_path, "grpo_lora", phase="grpo", init_adapter="/gpu-box/run/checkpoints/sft_lora")
    _eval_of(tmp_path, "base_eval", "base:tiny", base)
    _eval_of(tmp_path, "sft_eval", str(sft_dir), sft)
    _eval_of(tmp_path, "dpo_eval", str(dpo_dir), dpo)
    _eval_of(tmp_path, "grpo_eval", str(grpo_dir), grpo)
    _eval_of(tmp_path, "grpo_dev_eval", str(grpo_dir), grpo[:20], split="dev")  # no dev eval of its parent or the base
    page = build_report(tmp_path).read_text()

    def p(a, b):
        return mcnemar_exact_p(sum(not x and y for x, y in zip(a, b)), sum(x and not y for x, y in zip(a, b)))

    grpo_cards = _cards(page, "grpo_lora")
    (test_card,) = [c for c in grpo_cards if c.endswith("n=40")]
    assert "dpo_lora" not in test_card
    assert f"-2.5 pts vs sft_lora (parent), McNemar p = {p(sft, grpo):.3g} (not significant)" in test_card
    assert f"+22.5 pts vs base, McNemar p = {p(base, grpo):.3g} (significant)" in test_card
    assert f"+25.0 pts vs sft_lora (parent), McNemar p = {p(sft, dpo):.3g}" in _card(page, "dpo_lora")
    assert "+25.0 pts vs base (parent)" in _card(page, "sft_lora") and "McNemar" in _card(page, "sft_lora")
    assert "pts vs" not in _card(page, "base")
    (dev_card,) = [c for c in grpo_cards if c.endswith("n=20")]
    assert "trained from sft_lora: not evaluated on this split" in dev_card and "pts vs" not in dev_card
