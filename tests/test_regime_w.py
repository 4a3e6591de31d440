"""Regime W: arms, bandit, scores and reward (CPU, hand-computed expectations)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from looper_math.config import RegimeWConfig
from looper_math.regime_w.arms import Bandit, default_arms, load_arms
from looper_math.regime_w.reward import compute_reward
from looper_math.regime_w.scoring import extract_steps, question_numbers, score_group

REPO_ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- a hand-built group
Q = "Tom has 3 boxes with 4 pencils each. He gives away 2 pencils. How many pencils does he have left?"
REF = "Tom has 3*4=<<3*4=12>>12 pencils.\nHe has 12-2=<<12-2=10>>10 left.\n#### 10"
RIGHT = "3 * 4 = 12\n12 - 2 = 10\n#### 10"
RIGHT_COMMUTED = "He has 4 x 3 = 12 pencils, then 12 - 2 = 10.\n#### 10"
LUCKY = "3 + 4 + 2 = 9\n9 + 1 = 10\n#### 10"  # wrong program, right number
BAD_ARITH = "3 * 4 = 13\n13 - 2 = 11\n#### 11"
NO_STEPS = "The answer is ten.\n#### 10"
GROUP = [RIGHT, RIGHT_COMMUTED, LUCKY, BAD_ARITH, NO_STEPS]


def test_score_group_hand_computed():
    rows = score_group(Q, GROUP, reference=REF)
    assert [r["answer"] for r in rows] == ["10", "10", "10", "11", "10"]
    # s_end: four others each; 10 is shared by three of them, 11 by none
    assert [r["s_end"] for r in rows] == [0.75, 0.75, 0.75, 0.0, 0.75]
    # RIGHT: 2/2 valid, 4/4 operands grounded (3, 4, 2 inputs; 12 a node), its 12 is in RIGHT_COMMUTED
    assert rows[0]["s_path"] == pytest.approx(1.0)
    # LUCKY: valid, grounded (1 is a small constant), but its 9 appears in no same-answer peer
    assert (rows[2]["path_validity"], rows[2]["path_grounding"], rows[2]["path_peers"]) == (1.0, 1.0, 0.0)
    assert rows[2]["s_path"] == pytest.approx(2 / 3)
    # BAD_ARITH: 1/2 valid, grounded, no peer with 11 -> neutral 0.5
    assert (rows[3]["path_validity"], rows[3]["path_grounding"], rows[3]["path_peers"]) == (0.5, 1.0, 0.5)
    assert rows[3]["s_path"] == pytest.approx(2 / 3)
    assert rows[3]["s_path"] < rows[0]["s_path"]
    # no steps: nothing to check
    assert rows[4]["s_path"] == 0.0 and rows[4]["s_cf"] == 0.0 and rows[4]["n_steps"] == 0
    # s_cf: same function as the reference (3*4-2, also 4*3-2) -> 1; the lucky 3+4+2+1 fails on
    # perturbed inputs; BAD_ARITH's program re-executes to 10, not its 11 -> 0
    assert [r["s_cf"] for r in rows[:2]] == [1.0, 1.0]
    assert rows[2]["s_cf"] < rows[0]["s_cf"]
    assert rows[2]["s_cf"] == 0.0  # 4a+b+ab-2c style coincidences do not happen for seed 0
    assert rows[3]["s_cf"] == 0.0
    assert all(r["cf_source"] == "reference" for r in rows)
    # s_wm = 0.4*0.75 + 0.3*1 + 0.3*1
    assert rows[0]["s_wm"] == pytest.approx(0.9)
    assert rows[2]["s_wm"] == pytest.approx(0.4 * 0.75 + 0.3 * 2 / 3)
    for r in rows:
        for k in ("s_end", "s_path", "s_cf", "s_wm"):
            assert isinstance(r[k], float) and 0.0 <= r[k] <= 1.0


def test_lucky_scores_low_for_every_seed():
    for seed in range(5):
        rows = score_group(Q, [RIGHT, LUCKY], reference=REF, seed=seed, cf_perturbations=5)
        assert rows[0]["s_cf"] == 1.0
        assert rows[1]["s_cf"] <= 0.2


def test_no_reference_falls_back_to_peer_consensus():
    rows = score_group(Q, GROUP, reference=None)
    assert all(r["cf_source"] == "peers" for r in rows)
    # RIGHT and RIGHT_COMMUTED share the most common program of the majority answer 10
    assert [r["s_cf"] for r in rows] == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_groups_of_one_and_edge_cases():
    (row,) = score_group(Q, [RIGHT], reference=REF)
    assert row["s_end"] == 0.0  # no other trajectory: no evidence
    assert row["path_peers"] == 0.5  # no same-answer peer: neutral
    assert row["s_path"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert row["s_cf"] == 1.0
    (row,) = score_group(Q, [RIGHT], reference=None)
    assert row["s_cf"] == 1.0 and row["cf_source"] == "peers"  # agrees with itself
    (row,) = score_group(Q, ["no answer here"], reference=REF)
    assert row["answer"] is None and row["s_end"] == row["s_path"] == row["s_cf"] == row["s_wm"] == 0.0
    assert score_group(Q, [], reference=REF) == []
    with pytest.raises(ValueError):
        score_group(Q, [RIGHT], weights=(0.0, 0.0, 0.0))


def test_weights_are_normalized():
    a = score_group(Q, GROUP, reference=REF, weights=(4, 3, 3))
    b = score_group(Q, GROUP, reference=REF)
    assert [r["s_wm"] for r in a] == pytest.approx([r["s_wm"] for r in b])
    (row,) = score_group(Q, [RIGHT], reference=REF, weights=(0, 0, 1))
    assert row["s_wm"] == row["s_cf"]


def test_score_group_is_deterministic():
    a = score_group(Q, GROUP, reference=REF, seed=7)
    b = score_group(Q, GROUP, reference=REF, seed=7)
    assert a == b


def test_extract_steps_formats():
    def parsed(text):
        return [(s.template, s.operands, s.stated, s.valid) for s in extract_steps(text)]

    assert parsed("Natalia sold 48/2 = <<48/2=24>>24 clips") == [("{0}/{1}", (48.0, 2.0), 24.0, True)]
    assert parsed("It costs $1,200 x 3 = $3,600.") == [("{0}*{1}", (1200.0, 3.0), 3600.0, True)]
    assert parsed("3 * 4 = 12 * 2 = 24") == [("{0}*{1}", (3.0, 4.0), 12.0, True), ("{0}*{1}", (12.0, 2.0), 24.0, True)]
    assert parsed("20% * 50 = 10") == [("({0}/100)*{1}", (20.0, 50.0), 10.0, True)]
    assert parsed("60% * 40% = 24%") == [("(({0}/100)*({1}/100))*100", (60.0, 40.0), 24.0, True)]
    assert parsed("8 x 1 1/2 = 12 rolls") == [("{0}*{1}", (8.0, 1.5), 12.0, True)]
    assert parsed("1/2 * 1/2 = 1/4") == [("{0}/{1}*{2}/{3}", (1.0, 2.0, 1.0, 2.0), 0.25, True)]
    assert parsed("7 * 8 = 57") == [("{0}*{1}", (7.0, 8.0), 57.0, False)]
    assert parsed("10 / 3 = 3.33 each") == [("{0}/{1}", (10.0, 3.0), 3.33, True)]  # rounded as written
    assert parsed("so 100/5 = 5A/5") == []  # algebra, not a stated result
    assert parsed("4080 + 4080 / 2 = 4000 + 2040") == []  # expression = expression
    assert parsed("no arithmetic, just 5 apples") == []


def test_question_numbers():
    q = "She buys 3 apples at $1,200, twenty-five pears, 20% off, and 3 more apples over 1 1/2 days."
    assert question_numbers(q) == [(3.0, False), (1200.0, False), (25.0, False), (20.0, True), (1.5, False)]


def test_wrong_arithmetic_lowers_s_path():
    good = "3 * 4 = 12\n12 - 2 = 10\n#### 10"
    bad = "3 * 4 = 14\n14 - 2 = 12\n#### 12"
    (g,) = score_group(Q, [good], reference=REF)
    (b,) = score_group(Q, [bad], reference=REF)
    assert g["path_validity"] == 1.0 and b["path_validity"] == 0.5
    assert b["s_path"] < g["s_path"]


def test_ungrounded_operand_lowers_grounding():
    (row,) = score_group(Q, ["3 * 4 = 12\n12 - 37 = -25\n#### -25"], reference=REF)
    assert row["path_grounding"] == pytest.approx(3 / 4)  # 37 is neither given, derived nor small


def test_reference_percent_program():
    q = "A shirt costs $40. It is 25% off. What is the sale price?"
    ref = "The discount is 40*25/100=$<<40*25/100=10>>10.\nThe price is 40-10=$<<40-10=30>>30.\n#### 30"
    right = "The discount is 25% * 40 = 10 dollars.\n40 - 10 = 30\n#### 30"
    lucky = "40 - 10 = 30\n#### 30"  # 10 is a constant: it does not move when the price or rate moves
    rows = score_group(q, [right, lucky], reference=ref)
    assert rows[0]["s_cf"] == 1.0
    assert rows[1]["s_cf"] == 0.0


# ----------------------------------------------------------------------------- all GSM8K references


def _gsm8k_dir() -> Path | None:
    env = os.environ.get("LOOPER_GSM8K_DIR")
    d = Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "gsm8k"
    return d if (d / "train.jsonl").is_file() else None


@pytest.mark.skipif(_gsm8k_dir() is None, reason="GSM8K train.jsonl not found (set LOOPER_GSM8K_DIR)")
def test_all_gsm8k_train_references_score_against_themselves():
    rows = [json.loads(line) for line in (_gsm8k_dir() / "train.jsonl").read_text().splitlines() if line.strip()]
    self_cf_one = 0
    for d in rows:
        ones = score_group(d["question"], [d["answer"]], reference=d["answer"])
        twos = score_group(d["question"], [d["answer"]] * 2, reference=d["answer"])
        for r in ones + twos:
            for k in ("s_end", "s_path", "s_cf", "s_wm"):
                assert 0.0 <= r[k] <= 1.0, (d["question"], r)
        assert twos[0] == twos[1]
        assert twos[0]["s_end"] == 1.0
        assert twos[0]["s_cf"] == ones[0]["s_cf"]
        self_cf_one += ones[0]["s_cf"] == 1.0
    # measured 96.4 %: the rest write steps without annotations ("So this movie is 192 minutes"),
    # use algebra, or have typos in the data; a reference always agrees with itself when it compiles
    assert self_cf_one / len(rows) > 0.9


# ----------------------------------------------------------------------------- arms


def test_default_arms():
    arms = default_arms()
    assert len(arms) == 8 and len({a.name for a in arms}) == 8
    assert [a.family for a in arms].count("wolfram") == 4 and [a.family for a in arms].count("maudlin") == 4
    for a in arms:
        assert "#### <number>" in a.instruction and a.instruction.rstrip().endswith("no words.")
        assert 0.6 <= a.temperature <= 1.0 and 0.9 <= a.top_p <= 1.0
    assert len({(a.temperature, a.top_p) for a in arms}) > 1


def test_load_arms():
    assert load_arms(RegimeWConfig()) == default_arms()
    good = {"name": "a", "family": "wolfram", "instruction": "Compute. End with '#### <number>'.", "temperature": 0.7, "top_p": 1}
    (arm,) = load_arms(RegimeWConfig(arms=[good]))
    assert arm.name == "a" and arm.top_p == 1.0
    missing = {k: v for k, v in good.items() if k != "temperature"}
    with pytest.raises(ValueError, match=r"regime_w\.arms\[1\]\.temperature: missing"):
        load_arms(RegimeWConfig(arms=[good, missing]))
    with pytest.raises(ValueError, match=r"regime_w\.arms\[0\]\.colour: unknown"):
        load_arms(RegimeWConfig(arms=[{**good, "colour": "red"}]))
    with pytest.raises(ValueError, match=r"regime_w\.arms\[0\]\.family"):
        load_arms(RegimeWConfig(arms=[{**good, "family": "other"}]))
    with pytest.raises(ValueError, match=r"regime_w\.arms\[0\]\.instruction"):
        load_arms(RegimeWConfig(arms=[{**good, "instruction": "no final line"}]))
    with pytest.raises(ValueError, match=r"regime_w\.arms\[1\]\.name: duplicate"):
        load_arms(RegimeWConfig(arms=[good, good]))


# ----------------------------------------------------------------------------- bandit


def test_uniform_allocation():
    arms = default_arms()
    names = [a.name for a in arms]
    b = Bandit(arms, "uniform", k=8, exploration_floor=0.05, ucb_c=1.0, seed=0)
    assert b.allocate_round(["q1"])["q1"] == names
    b4 = Bandit(arms, "uniform", k=4, exploration_floor=0.05, ucb_c=1.0, seed=0)
    picks = b4.allocate_round(["q1"])["q1"]
    assert len(set(picks)) == 4 and picks == b4.allocate_round(["q1"])["q1"]
    # per question (k consecutive arms from a question-dependent offset), so shards of a run allocate as
    # one process does: a question's arms do not depend on the other questions of its round
    qs = [f"q{q}" for q in range(400)]
    rnd = b4.allocate_round(qs)
    assert all(rnd[q] == b4.allocate_round([q, "other"])[q] for q in qs[:20])
    pulls = [name for picks in rnd.values() for name in picks]
    assert all(len(p) == 4 for p in rnd.values())
    assert all(abs(pulls.count(n) / len(pulls) - 1 / 8) < 0.03 for n in names)  # even in expectation


def _simulate(allocation: str, rounds: int = 6, per_round: int = 100, seed: int = 0):
    """Rounds of realistic size (100 questions x k = 8), as collect_rollouts allocates them."""
    arms = default_arms()
    best = arms[3].name
    b = Bandit(arms, allocation, k=8, exploration_floor=0.05, ucb_c=1.0, seed=seed)
    rng = np.random.default_rng(123)
    history = []
    for r in range(rounds):
        rows = []
        alloc = b.allocate_round([f"r{r}q{q}" for q in range(per_round)])
        assert list(alloc) == [f"r{r}q{q}" for q in range(per_round)]
        history.append(alloc)
        for picks in alloc.values():
            assert len(picks) == 8
            for name in picks:
                correct = bool(rng.random() < (0.9 if name == best else 0.3))
                rows.append({"arm": name, "reward": float(correct) + 0.1 * rng.random(), "correct": correct})
        b.update(rows)
    return b, best, history


@pytest.mark.parametrize("allocation", ["ucb", "thompson"])
def test_adaptive_allocation_shifts_to_the_better_arm_and_keeps_the_floor_every_round(allocation):
    b, best, history = _simulate(allocation)
    names = [a.name for a in default_arms()]
    # one question on its own: every arm once (the floor, ceil(0.05 * 8) = 1 each)
    assert sorted(Bandit(default_arms(), allocation, k=8, exploration_floor=0.05).allocate_round(["q"])["q"]) == sorted(names)
    for alloc in history:
        pulls = [name for picks in alloc.values() for name in picks]
        for name in names:
            assert pulls.count(name) >= 0.05 * len(pulls), name  # the floor holds within every round
            # an arm's pulls are spread over as many questions as they can be
            on = sum(name in picks for picks in alloc.values())
            assert on == min(pulls.count(name), len(alloc)), name
    late = [name for picks in history[-1].values() for name in picks]
    assert late.count(best) / len(late) > 0.4  # from 1/8 at the start
    stats = b.stats()
    assert sum(s["pulls"] for s in stats.values()) == 6 * 100 * 8
    assert stats[best]["accuracy"] > 0.7


def test_floor_holds_per_round_for_a_bandit_sure_of_its_best_arm():
    """Stats that make UCB and Thompson put every free pull on one arm: the others still get 5 %."""
    arms = default_arms()
    for allocation in ("ucb", "thompson"):
        b = Bandit(arms, allocation, k=8, exploration_floor=0.05, ucb_c=1.0, seed=0)
        b.update([{"arm": arms[0].name, "reward": 1.0, "correct": True}] * 5000
                 + [{"arm": a.name, "reward": 0.0, "correct": False} for a in arms[1:] for _ in range(300)])
        alloc = b.allocate_round([f"q{q}" for q in range(100)])
        pulls = [name for picks in alloc.values() for name in picks]
        assert len(pulls) == 800
        for a in arms[1:]:
            assert pulls.count(a.name) == 40, (allocation, a.name)  # ceil(0.05 * 800)
        assert pulls.count(arms[0].name) == 800 - 7 * 40


@pytest.mark.parametrize("allocation", ["uniform", "ucb", "thompson"])
def test_bandit_is_deterministic(allocation):
    a, _, ha = _simulate(allocation, rounds=3)
    b, _, hb = _simulate(allocation, rounds=3)
    assert ha == hb and a.stats() == b.stats()


def test_resume_by_replaying_rows_rebuilds_the_state():
    arms = default_arms()
    live = Bandit(arms, "thompson", k=8, exploration_floor=0.05, ucb_c=1.0, seed=3)
    on_disk = []
    rng = np.random.default_rng(0)
    for r in range(6):
        alloc = live.allocate_round([f"{r}-{q}" for q in range(30)])
        rows = [
            {"arm": name, "reward": float(rng.random()), "correct": bool(rng.random() < 0.5)}
            for picks in alloc.values()
            for name in picks
        ]
        live.update(rows)
        on_disk += rows
    nxt = [f"next-{q}" for q in range(30)]
    resumed = Bandit(arms, "thompson", k=8, exploration_floor=0.05, ucb_c=1.0, seed=3)
    resumed.update(on_disk)
    assert resumed.state_dict() == live.state_dict()
    assert resumed.allocate_round(nxt) == live.allocate_round(nxt)
    restored = Bandit(arms, "thompson", k=8, exploration_floor=0.05, ucb_c=1.0, seed=3)
    restored.load_state_dict(json.loads(json.dumps(live.state_dict())))
    assert restored.stats() == live.stats() and restored.allocate_round(nxt) == live.allocate_round(nxt)


def test_bandit_rejects_bad_input():
    arms = default_arms()
    with pytest.raises(ValueError, match="allocation"):
        Bandit(arms, "greedy", k=8, exploration_floor=0.05, ucb_c=1.0, seed=0)
    with pytest.raises(ValueError, match="exploration_floor"):
        Bandit(arms, "ucb", k=8, exploration_floor=0.5, ucb_c=1.0, seed=0)
    b = Bandit(arms, "ucb", k=8, exploration_floor=0.05, ucb_c=1.0, seed=0)
    with pytest.raises(ValueError, match="unknown arm"):
        b.update([{"arm": "nope", "reward": 1.0, "correct": True}])
    assert b.stats()[arms[0].name] == {"pulls": 0, "mean_reward": 0.0, "accuracy": 0.0}


# ----------------------------------------------------------------------------- reward


def test_compute_reward():
    assert compute_reward(True, 0.8, 100, 1.0, 0.5, 0.0005) == pytest.approx(1.0 + 0.4 - 0.05)
    assert compute_reward(False, 0.0, 0, 1.0, 0.5, 0.0005) == 0.0
    # correctness first: the worst correct beats the best incorrect at equal length
    assert compute_reward(True, 0.0, 200, 1.0, 0.5, 0.0005) > compute_reward(False, 1.0, 200, 1.0, 0.5, 0.0005)
    with pytest.raises(ValueError):
        compute_reward(True, 1.5, 10, 1.0, 0.5, 0.0005)


def test_answer_mode_flexible_scores_chat_style_answers_like_the_rollouts_grade_them():
    """A chat model that ends with "The answer is 10." instead of "#### 10": with the rollouts'
    flexible answer mode, s_end sees the agreement that strict extraction misses."""
    chat = [t.replace("#### ", "The answer is ") + "." for t in (RIGHT, RIGHT_COMMUTED, BAD_ARITH)]
    strict = score_group(Q, chat, reference=REF)
    flexible = score_group(Q, chat, reference=REF, answer_mode="flexible")
    assert [r["answer"] for r in strict] == [None, None, None]
    assert [r["s_end"] for r in strict] == [0.0, 0.0, 0.0]
    assert [r["answer"] for r in flexible] == ["10", "10", "11"]
    assert [r["s_end"] for r in flexible] == [0.5, 0.5, 0.0]
    # the same group written with "####" scores identically in either mode
    assert score_group(Q, GROUP, reference=REF, answer_mode="flexible") == score_group(Q, GROUP, reference=REF)


def test_s_cf_rejects_an_off_by_one_program_on_large_outputs():
    """Outputs around 30,000 on the perturbed inputs: "+ 1" at the end was within the old relative
    tolerance 1e-4, so a wrong program scored s_cf = 1.0."""
    q = "A warehouse has 120 boxes with 125 cans in each box. How many cans are there?"
    ref = "There are 120*125=<<120*125=15000>>15000 cans.\n#### 15000"
    right = "120 * 125 = 15000\n#### 15000"
    plus_one = "120 * 125 = 15000\n15000 + 1 = 15001\n#### 15001"
    rows = score_group(q, [right, plus_one], reference=ref)
    assert rows[0]["s_cf"] == 1.0
    assert rows[1]["s_cf"] == 0.0


def test_s_cf_free_is_the_label_free_peer_score():
    with_ref = score_group(Q, GROUP, reference=REF)
    without = score_group(Q, GROUP, reference=None)
    assert [r["s_cf_free"] for r in with_ref] == [r["s_cf"] for r in without] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert [r["s_cf_free"] for r in without] == [r["s_cf"] for r in without]
    # the peers' majority program is the lucky one: s_cf_free follows the peers, s_cf the reference
    lucky_majority = [LUCKY, LUCKY, RIGHT]
    rows = score_group(Q, lucky_majority, reference=REF)
    assert [r["s_cf"] for r in rows] == [0.0, 0.0, 1.0]
    assert [r["s_cf_free"] for r in rows] == [1.0, 1.0, 0.0]
    assert all(r["cf_source"] == "reference" for r in rows)


def test_rollouts_summary_reports_label_free_auroc_and_unparsed_steps():
    from looper_math.config import load_config
    from looper_math.rollouts import summarize

    cfg = load_config(REPO_ROOT / "configs" / "demo.yaml", [])
    arms = default_arms()
    bandit = Bandit(arms, "ucb", k=2, exploration_floor=0.05, ucb_c=1.0, seed=0)
    base = {"arm": arms[0].name, "finished": True, "num_tokens": 10, "s_end": 0.5, "s_wm": 0.5}
    rows = [
        {**base, "question_id": "a", "correct": True, "s_path": 0.5, "s_cf": 1.0, "s_cf_free": 1.0, "n_unparsed": 0},
        {**base, "question_id": "a", "correct": False, "s_path": 0.5, "s_cf": 0.0, "s_cf_free": 1.0, "n_unparsed": 2},
        {**base, "question_id": "b", "correct": True, "s_path": 0.5, "s_cf": 1.0, "s_cf_free": 0.0, "n_unparsed": 1},
    ]
    out = summarize(rows, bandit, 0, 1.0, cfg)
    assert out["auroc_correct"]["s_path+s_cf"] == 1.0  # the reference-based score
    assert out["auroc_correct"]["s_path+s_cf_free"] == 0.25  # the label-free one: (0.5 + 0) / 2
    assert out["auroc_uses_reference"]["s_path+s_cf_free"] is False
    assert (out["unparsed_steps"], out["rows_with_unparsed_steps"]) == (3, 2)
    old = [{k: v for k, v in r.items() if k not in ("s_cf_free", "n_unparsed")} for r in rows]
    out = summarize(old, bandit, 0, 1.0, cfg)  # rows written before the keys existed
    assert out["auroc_correct"]["s_path+s_cf_free"] is None and out["unparsed_steps"] is None
