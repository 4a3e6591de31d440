"""bench/choose.py, the decisions of the staged GPU scripts, on hand-made summaries: the learning rate with the best
dev accuracy (the first listed on a tie) and the very lr_choice.txt that bench/learning.sh's inline Python wrote
before; round 2 on test only for a significant dev gain; the faster rollouts core; the config's rate as a name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

CHOOSE = REPO / "bench" / "choose.py"
sys.path.insert(0, str(REPO / "bench"))
import choose

# bench/learning.sh's pick() before the choice moved to bench/choose.py (commit 63aaad4), verbatim
OLD_PICK = '''import json, sys
out, lrs = sys.argv[1], sys.argv[2:]
acc = {lr: json.load(open(f"{out}/grpo_lr{lr}_dev_eval.summary.json"))["accuracy"] for lr in lrs}
best = max(lrs, key=lambda lr: (acc[lr], -lrs.index(lr)))
with open(f"{out}/lr_choice.txt", "w") as f:
    f.write("".join(f"grpo.learning_rate {lr}: dev accuracy {acc[lr]:.4f}\\n" for lr in lrs) + f"chosen {best}\\n")
print(best)
'''


def _summaries(d: Path, **acc: float) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for lr, a in acc.items():
        (d / f"grpo_lr{lr}_dev_eval.summary.json").write_text(json.dumps({"accuracy": a, "n": 500}))
    return d


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHOOSE), *args], check=False, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})


def test_lr_picks_the_best_dev_accuracy_and_writes_the_choice(tmp_path):
    d = _summaries(tmp_path, **{"1e-4": 0.39, "2e-4": 0.316})
    assert choose.choose_lr(d, ["1e-4", "2e-4"]) == "1e-4"
    assert (d / "lr_choice.txt").read_text() == ("grpo.learning_rate 1e-4: dev accuracy 0.3900\n"
                                                 "grpo.learning_rate 2e-4: dev accuracy 0.3160\nchosen 1e-4\n")
    d = _summaries(tmp_path / "b", **{"5e-5": 0.30, "1e-4": 0.31, "2e-4": 0.35})
    assert choose.choose_lr(d, ["5e-5", "1e-4", "2e-4"]) == "2e-4"


def test_lr_tie_goes_to_the_first_listed(tmp_path):
    d = _summaries(tmp_path, **{"1e-4": 0.35, "2e-4": 0.35})
    assert choose.choose_lr(d, ["1e-4", "2e-4"]) == "1e-4"
    assert choose.choose_lr(d, ["2e-4", "1e-4"]) == "2e-4"
    assert (d / "lr_choice.txt").read_text().endswith("chosen 2e-4\n")


@pytest.mark.parametrize("order", [["1e-4", "2e-4"], ["2e-4", "1e-4"], ["1e-4"]])
def test_lr_cli_writes_what_the_old_inline_pick_wrote(tmp_path, order):
    acc = {"1e-4": 0.39, "2e-4": 0.39}   # a tie: the rule is in the output too
    old = _summaries(tmp_path / "old", **acc)
    new = _summaries(tmp_path / "new", **acc)
    p_old = subprocess.run([sys.executable, "-", str(old), *order], check=False, input=OLD_PICK, capture_output=True,
                           text=True)
    p_new = _cli("lr", str(new), *order)
    assert p_old.returncode == 0 and p_new.returncode == 0, p_old.stderr + p_new.stderr
    assert p_new.stdout == p_old.stdout == f"{order[0]}\n"
    assert (new / "lr_choice.txt").read_bytes() == (old / "lr_choice.txt").read_bytes()


def test_lr_missing_summary_is_one_error_line_naming_it(tmp_path):
    d = _summaries(tmp_path, **{"1e-4": 0.39})
    p = _cli("lr", str(d), "1e-4", "2e-4")
    assert p.returncode == 1 and p.stdout == ""
    want = f"error: {d / 'grpo_lr2e-4_dev_eval.summary.json'}: cannot read: No such file or directory\n"
    assert p.stderr == want
    assert not (d / "lr_choice.txt").exists(), "a choice was written without every candidate"
    (d / "grpo_lr2e-4_dev_eval.summary.json").write_text('{"n": 500}')
    p = _cli("lr", str(d), "1e-4", "2e-4")
    assert p.returncode == 1 and p.stderr.strip().endswith("grpo_lr2e-4_dev_eval.summary.json: field accuracy missing")


def _evals(path: Path, correct: list[bool]) -> None:
    path.write_text("".join(json.dumps({"question_id": i, "correct": c}) + "\n" for i, c in enumerate(correct)))


def test_round2_goes_to_test_only_on_a_significant_dev_gain(tmp_path):
    # 20 questions round 1 got wrong and round 2 right, none the other way: exact McNemar p = 2 * 0.5**20
    _evals(tmp_path / "r1_lr1e-4_dev_eval.jsonl", [False] * 20 + [True] * 10)
    _evals(tmp_path / "grpo_r2_dev_eval.jsonl", [True] * 30)
    assert choose.choose_round2(tmp_path, "r1_lr1e-4") is True
    assert (tmp_path / "round2_choice.txt").read_text() == (
        "round 2 vs round 1 on dev: +66.67 pts, exact McNemar p = 1.91e-06: round 2 gains, evaluated on test\n")
    # 3 against 1: a gain, not significant
    _evals(tmp_path / "grpo_r2_dev_eval.jsonl", [True] * 3 + [False] * 17 + [False] + [True] * 9)
    p = _cli("round2", str(tmp_path), "r1_lr1e-4")
    assert p.returncode == 0 and p.stdout == "no\n", p.stderr
    assert (tmp_path / "round2_choice.txt").read_text().endswith("no significant gain, test not run\n")
    p = _cli("round2", str(tmp_path), "r1_lr2e-4")
    assert p.returncode == 1 and p.stderr == f"error: {tmp_path / 'r1_lr2e-4_dev_eval.jsonl'}: not found (the dev eval of that round)\n"


def _rollouts_summary(d: Path, name: str, tps: float | None) -> None:
    d.mkdir(parents=True, exist_ok=True)
    this_run = {} if tps is None else {"tokens_per_s": tps}
    (d / f"rollouts_{name}.summary.json").write_text(json.dumps({"this_run": this_run}))


def test_attn_takes_flex_only_when_it_was_faster(tmp_path):
    _rollouts_summary(tmp_path, "stream", 57554.0)
    _rollouts_summary(tmp_path, "flex", 59727.0)
    assert choose.choose_attn(tmp_path) == "flex"
    _rollouts_summary(tmp_path, "flex", 50000.0)
    assert choose.choose_attn(tmp_path) == "sdpa"
    _rollouts_summary(tmp_path, "flex", None)   # cut before its end: counts as 0
    assert choose.choose_attn(tmp_path) == "sdpa"
    assert choose.choose_attn(tmp_path / "none") == "sdpa"
    _rollouts_summary(tmp_path / "only_flex", "flex", 1.0)
    p = _cli("attn", str(tmp_path / "only_flex"))
    assert p.returncode == 0 and p.stdout == "flex\n", p.stderr


@pytest.mark.parametrize("rate,name", [("1.0e-4", "1e-4"), ("5.0e-5", "5e-5"), ("1.5e-4", "1.5e-4"), ("0.0002", "2e-4")])
def test_cfg_lr_names_the_rate_as_the_checkpoints_do(tmp_path, rate, name):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run_dir: runs/t\ngrpo:\n  learning_rate: {rate}\n")
    assert choose.lr_name(cfg) == name
    cfg.write_text("run_dir: runs/t\ngrpo:\n  seed: 1\n")
    p = _cli("cfg-lr", str(cfg))
    assert p.returncode == 1 and p.stderr == f"error: {cfg}: grpo.learning_rate: missing or not a number\n"


def test_cfg_lr_of_the_gpu_config_is_the_recipes_rate():
    """configs/qwen05_gpu.yaml's rate is the one RESULTS.md's current recipe chose on dev (checkpoints/grpo_lr1e-4)."""
    p = _cli("cfg-lr", str(REPO / "configs" / "qwen05_gpu.yaml"))
    assert p.returncode == 0 and p.stdout == "1e-4\n", p.stderr
