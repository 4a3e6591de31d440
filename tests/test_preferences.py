"""Unit tests for phase 3 (preference pairs): hand-built rollouts, hand-checked pairs."""

from __future__ import annotations

import json

import pytest

from looper_math.config import Config, PrefsConfig
from looper_math.preferences import build_pairs, check_rows, run_prefs
from looper_math.runio import DataError, OutputExistsError


def traj(qid, idx, *, correct, reward, s_wm, arm="stepwise", finished=True, text=None, prompt=None):
    return {
        "question_id": qid, "sample_idx": idx, "arm": arm,
        "prompt": prompt if prompt is not None else f"[{arm}] Q{qid}",
        "eval_prompt": f"Question: Q{qid}\nAnswer:",
        "full_text": text if text is not None else f"q{qid} sample {idx}\n#### {idx}",
        "reasoning": "", "answer": str(idx), "gold": "0", "correct": correct,
        "num_tokens": 10, "finished": finished, "s_end": 0.5, "s_path": 0.5, "s_cf": 0.5,
        "s_wm": s_wm, "reward": reward, "seed": 1000 + idx, "model": "tiny", "adapter": "sft",
    }


def correctness_only(**kw) -> PrefsConfig:
    return PrefsConfig(pair_types=["correctness"], **kw)


def test_chosen_is_best_correct_and_rejected_incorrect():
    rows = [
        traj(1, 0, correct=True, reward=1.2, s_wm=0.4),
        traj(1, 1, correct=True, reward=1.4, s_wm=0.8),  # best correct
        traj(1, 2, correct=False, reward=0.1, s_wm=0.2),
    ]
    pairs, summary = build_pairs(rows, correctness_only())
    assert len(pairs) == 1
    p = pairs[0]
    assert p["chosen_sample_idx"] == 1 and p["rejected_sample_idx"] == 2
    assert p["chosen"] == rows[1]["full_text"] and p["rejected"] == rows[2]["full_text"]
    assert p["prompt"] == "Question: Q1\nAnswer:"  # eval prompt by default
    assert p["pair_type"] == "correctness"
    assert (p["chosen_reward"], p["rejected_reward"], p["chosen_s_wm"], p["rejected_s_wm"]) == (1.4, 0.1, 0.8, 0.2)
    assert summary["questions_with_mixed_correctness"] == 1
    assert summary["margins"]["correctness"]["reward_min"] == pytest.approx(1.3)


def test_hard_negatives_first_and_cap():
    rows = [traj(7, 0, correct=True, reward=1.5, s_wm=0.9)]
    # incorrect rewards: idx1 0.1, idx2 0.5, idx3 0.3 (s_wm 0.9), idx4 0.3 (s_wm 0.2)
    rows += [traj(7, 1, correct=False, reward=0.1, s_wm=0.1),
             traj(7, 2, correct=False, reward=0.5, s_wm=0.3),
             traj(7, 3, correct=False, reward=0.3, s_wm=0.9),
             traj(7, 4, correct=False, reward=0.3, s_wm=0.2)]
    pairs, _ = build_pairs(rows, correctness_only(max_correctness_pairs_per_question=3))
    assert [p["rejected_sample_idx"] for p in pairs] == [2, 3, 4]
    assert all(p["chosen_sample_idx"] == 0 for p in pairs)


def test_no_pairs_without_mixed_correctness():
    rows = [traj(1, i, correct=False, reward=0.1 * i, s_wm=0.1 * i) for i in range(4)]
    pairs, summary = build_pairs(rows, correctness_only())
    assert pairs == [] and summary["questions_with_mixed_correctness"] == 0


def test_unfinished_and_empty_dropped():
    rows = [
        traj(1, 0, correct=True, reward=2.0, s_wm=1.0, finished=False),  # would be best: dropped
        traj(1, 1, correct=True, reward=1.0, s_wm=0.5),
        traj(1, 2, correct=False, reward=0.9, s_wm=0.5, finished=False),
        traj(1, 3, correct=False, reward=0.2, s_wm=0.5, text="   "),
        traj(1, 4, correct=False, reward=0.1, s_wm=0.5),
    ]
    pairs, summary = build_pairs(rows, correctness_only())
    assert [(p["chosen_sample_idx"], p["rejected_sample_idx"]) for p in pairs] == [(1, 4)]
    assert summary["dropped_unfinished"] == 2 and summary["dropped_empty"] == 1


def test_identical_text_dropped_and_duplicates_deduped():
    rows = [
        traj(1, 0, correct=True, reward=1.0, s_wm=0.5, text="same"),
        traj(1, 1, correct=False, reward=0.5, s_wm=0.5, text="same"),   # chosen == rejected
        traj(1, 2, correct=False, reward=0.4, s_wm=0.5, text="wrong"),
        traj(1, 3, correct=False, reward=0.3, s_wm=0.5, text="wrong"),  # duplicate of the previous pair
        traj(1, 4, correct=False, reward=0.2, s_wm=0.5, text="other"),
    ]
    pairs, summary = build_pairs(rows, correctness_only(max_correctness_pairs_per_question=2))
    assert [p["rejected_sample_idx"] for p in pairs] == [2, 4]
    assert summary["dropped_identical_text"] == 1 and summary["dropped_duplicate"] == 1
    assert len({(p["prompt"], p["chosen"], p["rejected"]) for p in pairs}) == len(pairs)


def coherence_rows():
    # q1: correctness pair source + three correct ones with s_wm 0.9, 0.75, 0.6
    return [
        traj(1, 0, correct=True, reward=1.5, s_wm=0.9),
        traj(1, 1, correct=True, reward=1.4, s_wm=0.75),
        traj(1, 2, correct=True, reward=1.3, s_wm=0.6),
        traj(1, 3, correct=False, reward=0.2, s_wm=0.3),
        traj(2, 0, correct=True, reward=1.5, s_wm=0.8),
        traj(2, 1, correct=False, reward=0.2, s_wm=0.1),
        traj(2, 2, correct=False, reward=0.1, s_wm=0.1),
    ]


def test_coherence_margin_threshold_and_tags():
    cfg = PrefsConfig(coherence_margin=0.15, max_coherence_pairs_per_question=5, max_coherence_share=1.0)
    pairs, summary = build_pairs(coherence_rows(), cfg)
    coh = [p for p in pairs if p["pair_type"] == "coherence"]
    # margins: 0->2 0.3, 0->1 0.15 (exactly the threshold: kept), 1->2 0.15 (kept)
    assert [(p["chosen_sample_idx"], p["rejected_sample_idx"]) for p in coh] == [(0, 2), (0, 1), (1, 2)]
    assert all(p["chosen_s_wm"] > p["rejected_s_wm"] for p in coh)
    assert summary["pairs_by_type"] == {"correctness": 3, "coherence": 3}
    assert {p["pair_type"] for p in pairs} == {"correctness", "coherence"}

    pairs, _ = build_pairs(coherence_rows(), PrefsConfig(coherence_margin=0.2, max_coherence_share=1.0, max_coherence_pairs_per_question=5))
    assert [(p["chosen_sample_idx"], p["rejected_sample_idx"]) for p in pairs if p["pair_type"] == "coherence"] == [(0, 2)]


def test_coherence_per_question_cap_keeps_largest_margin():
    cfg = PrefsConfig(coherence_margin=0.15, max_coherence_pairs_per_question=1, max_coherence_share=1.0)
    pairs, _ = build_pairs(coherence_rows(), cfg)
    assert [(p["chosen_sample_idx"], p["rejected_sample_idx"]) for p in pairs if p["pair_type"] == "coherence"] == [(0, 2)]


def test_coherence_share_cap():
    # 3 correctness pairs; share 0.25 -> at most floor(0.25 * 3 / 0.75) = 1 coherence pair, the largest margin
    cfg = PrefsConfig(coherence_margin=0.15, max_coherence_pairs_per_question=5, max_coherence_share=0.25)
    pairs, summary = build_pairs(coherence_rows(), cfg)
    coh = [p for p in pairs if p["pair_type"] == "coherence"]
    assert [(p["chosen_sample_idx"], p["rejected_sample_idx"]) for p in coh] == [(0, 2)]
    assert summary["coherence_dropped_by_share_cap"] == 2
    assert len(coh) / len(pairs) <= 0.25
    # share 0: no coherence pairs at all
    pairs, _ = build_pairs(coherence_rows(), PrefsConfig(max_coherence_share=0.0))
    assert {p["pair_type"] for p in pairs} == {"correctness"}


def test_ablation_correctness_only():
    cfg = PrefsConfig(pair_types=["correctness"], max_coherence_share=1.0)
    pairs, summary = build_pairs(coherence_rows(), cfg)
    assert {p["pair_type"] for p in pairs} == {"correctness"}
    assert summary["pairs_by_type"]["coherence"] == 0


def test_output_order_deterministic():
    rows = coherence_rows()
    cfg = PrefsConfig(max_coherence_share=1.0)
    a, _ = build_pairs(rows, cfg)
    b, _ = build_pairs(list(reversed(rows)), cfg)
    assert a == b
    assert [p["question_id"] for p in a] == sorted(p["question_id"] for p in a)


def test_arm_prompt_mode_pairs_only_within_one_prompt():
    rows = [
        traj(1, 0, correct=True, reward=1.5, s_wm=0.9, arm="a"),
        traj(1, 1, correct=True, reward=1.2, s_wm=0.5, arm="b"),
        traj(1, 2, correct=False, reward=0.5, s_wm=0.3, arm="b"),
        traj(1, 3, correct=False, reward=0.4, s_wm=0.3, arm="c"),  # no correct trajectory with prompt c
    ]
    pairs, summary = build_pairs(rows, correctness_only(prompt_mode="arm"))
    assert [(p["chosen_sample_idx"], p["rejected_sample_idx"]) for p in pairs] == [(1, 2)]
    assert pairs[0]["prompt"] == "[b] Q1" and pairs[0]["chosen_arm"] == pairs[0]["rejected_arm"] == "b"
    assert summary["skipped_no_same_prompt"] == 1


def test_bad_config_rejected():
    with pytest.raises(ValueError, match="pair_types"):
        build_pairs([], PrefsConfig(pair_types=["nonsense"]))
    with pytest.raises(ValueError, match="prompt_mode"):
        build_pairs([], PrefsConfig(prompt_mode="chat"))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_run_prefs_writes_pairs_summary_and_refuses_overwrite(tmp_path, capsys):
    rollouts = tmp_path / "rollouts.jsonl"
    write_jsonl(rollouts, coherence_rows())
    out = tmp_path / "data" / "prefs.jsonl"
    cfg = Config(run_dir=str(tmp_path))
    summary = run_prefs(cfg, rollouts, out, overwrite=False)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(written) == summary["pairs"] > 0
    assert all(isinstance(p[k], str) for p in written for k in ("prompt", "chosen", "rejected"))
    on_disk = json.loads((tmp_path / "data" / "prefs.summary.json").read_text())
    assert on_disk["pairs_by_type"] == summary["pairs_by_type"]
    assert (tmp_path / "data" / "prefs.resolved_config.yaml").is_file()
    printed = capsys.readouterr().out.splitlines()  # one line of counts, not the summary's JSON (the counts a reader scans)
    n = summary["pairs_by_type"]
    assert printed == [f"prefs: {summary['pairs']} pairs ({n['correctness']} correctness, {n['coherence']} coherence) from "
                       f"{summary['questions_covered']} of {summary['questions']} questions "
                       f"({summary['questions_with_mixed_correctness']} with mixed correctness; {summary['rollouts']} rollouts, "
                       f"{summary['dropped_unfinished'] + summary['dropped_empty']} unfinished or empty dropped) -> {out}; "
                       f"details: {tmp_path / 'data' / 'prefs.summary.json'}"], printed

    out.write_text("keep me\n")
    with pytest.raises(OutputExistsError):
        run_prefs(cfg, rollouts, out, overwrite=False)
    assert out.read_text() == "keep me\n"
    run_prefs(cfg, rollouts, out, overwrite=True)
    assert len(out.read_text().splitlines()) == summary["pairs"]


def test_missing_field_is_one_line_data_error(tmp_path):
    rows = coherence_rows()
    del rows[2]["correct"]
    rollouts = tmp_path / "rollouts.jsonl"
    write_jsonl(rollouts, rows)
    with pytest.raises(DataError) as e:
        run_prefs(Config(run_dir=str(tmp_path)), rollouts, tmp_path / "prefs.jsonl", overwrite=False)
    msg = str(e.value)
    assert "\n" not in msg and "'correct'" in msg and "row 3" in msg and str(rollouts) in msg
    assert not (tmp_path / "prefs.jsonl").exists()


def test_mistyped_bool_is_data_error():
    rows = [traj(1, 0, correct="yes", reward=1.0, s_wm=0.5)]
    with pytest.raises(DataError, match="'correct'"):
        check_rows(rows, "x.jsonl")
