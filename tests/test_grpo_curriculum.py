"""grpo.curriculum: GRPO on the questions the base model's rollouts answered both right and wrong (a group all
right or all wrong has zero advantage), read from sft.rft_rollouts, wired into the layout and the fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from looper_math.config import fingerprint, load_config
from looper_math.layout import RunLayout, write_summary
from looper_math.runio import DataError

REPO = Path(__file__).resolve().parents[1]


def _write_rollouts(path: Path, outcomes: dict[str, list[bool]]) -> None:
    """A rollouts file (with its summary, as a finished phase writes it): per question, one row per outcome."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"question_id": q, "sample_idx": i, "full_text": "x\n#### 1", "correct": c, "finished": True, "reward": float(c),
             "gold": "1"} for q, cs in outcomes.items() for i, c in enumerate(cs)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_summary(path, {"rows": len(rows)})


def _problems(cfg):
    from looper_math.task import GSM8K

    return GSM8K.from_config(cfg).load(cfg, "train", cfg.grpo.limit)


def test_mixed_keeps_only_questions_answered_both_ways(smoke_cfg, capsys):
    from looper_math.grpo import curriculum

    cfg = smoke_cfg("grpo.curriculum=mixed")
    problems = _problems(cfg)
    q = [p.question_id for p in problems]
    _write_rollouts(cfg.path(cfg.sft.rft_rollouts), {q[0]: [True, False, False], q[1]: [False, False], q[2]: [True, True],
                                                     q[3]: [False, True], "not-a-training-question": [True, False]})
    kept = curriculum(cfg, problems)
    assert [p.question_id for p in kept] == [q[0], q[3]]
    out = capsys.readouterr().out
    assert f"2 of {len(problems)} training questions kept" in out
    assert f"1 all wrong, 1 all right; {len(problems) - 4} without rollouts" in out
    # the default trains on every question and reads no rollouts
    assert curriculum(smoke_cfg(), problems) == problems


def test_mixed_without_rollouts_or_without_a_mixed_question_is_a_one_line_error(smoke_cfg):
    from looper_math.grpo import curriculum

    cfg = smoke_cfg("grpo.curriculum=mixed")
    problems = _problems(cfg)
    path = cfg.path(cfg.sft.rft_rollouts)
    with pytest.raises(DataError, match=f"{path}: grpo.curriculum is mixed but the base rollouts file is missing"):
        curriculum(cfg, problems)
    _write_rollouts(path, {problems[0].question_id: [True, True], problems[1].question_id: [False]})
    with pytest.raises(DataError, match="no training question has both correct and incorrect"):
        curriculum(cfg, problems)


def test_a_changed_rollouts_file_is_not_trusted(smoke_cfg):
    from looper_math.grpo import curriculum

    cfg = smoke_cfg("grpo.curriculum=mixed")
    problems = _problems(cfg)
    path = cfg.path(cfg.sft.rft_rollouts)
    _write_rollouts(path, {problems[0].question_id: [True, False]})
    path.write_text(path.read_text().replace('"correct": false', '"correct": true'))  # edited after its summary
    with pytest.raises(DataError, match="sha256"):
        curriculum(cfg, problems)


def test_layout_writes_the_base_rollouts_for_the_curriculum_and_grpo_depends_on_them():
    gold = ["run_dir=/q", "sft.data=gold"]
    cfg = load_config(REPO / "configs" / "qwen05_gpu.yaml", [*gold, "grpo.curriculum=mixed"])
    lay = RunLayout(cfg)
    base = lay.rollouts_base()
    assert base is not None and base.path == Path("/q/data/rollouts_base.jsonl") and base.cfg.rollouts.adapter == "none"
    assert lay.sft().inputs == ()  # gold SFT does not read them
    assert lay.grpo().inputs == (lay.sft().summary, base.summary)
    plain = RunLayout(load_config(REPO / "configs" / "qwen05_gpu.yaml", [*gold, "grpo.curriculum=none"]))
    assert plain.rollouts_base() is None and plain.grpo().inputs == (plain.sft().summary,)


def test_fingerprint_counts_the_curriculum_only_when_it_is_on(smoke_cfg):
    off, on = smoke_cfg(), smoke_cfg("grpo.curriculum=mixed")
    assert fingerprint(off, "grpo") != fingerprint(on, "grpo")
    assert fingerprint(off, "sft") == fingerprint(on, "sft")  # SFT does not read it


def test_grpo_trains_on_the_mixed_questions_only(smoke_cfg):
    from looper_math.grpo import train_grpo
    from looper_math.sft import train_sft

    cfg = smoke_cfg("grpo.curriculum=mixed", "sft.max_steps=1", "sft.save_steps=1", "grpo.max_steps=1",
                    "grpo.num_generations=2", "grpo.batch_size=4", "grpo.max_completion_length=8", "grpo.warmup_ratio=0",
                    "grpo.logging_steps=1")
    train_sft(cfg)
    q = [p.question_id for p in _problems(cfg)]
    _write_rollouts(cfg.path(cfg.sft.rft_rollouts), {q[1]: [True, False], q[5]: [False, True], q[7]: [False, False]})
    summary = train_grpo(cfg)
    assert summary["questions"] == 2 and summary["steps"] == 1
