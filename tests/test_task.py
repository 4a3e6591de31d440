"""The task object (task.GSM8K): prompts and grading under both protocols; stats; the import rule."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from looper_math.answers import extract_answer
from looper_math.task import PLATINUM_TEMPLATE, GSM8K, platinum_correct, platinum_parse

SRC = Path(__file__).resolve().parents[1] / "src" / "looper_math"
PHASES = ("sft", "rollouts", "preferences", "dpo", "grpo", "evaluate")


@pytest.mark.parametrize("output, parsed", [
    # "Answer: N" as asked; the last "answer: " wins
    ("Step 1: 3 + 4 = 7.\nAnswer: 7", "7"),
    ("I first thought Answer: 5 but no.\nAnswer: 12", "12"),
    ("**Answer:** 1,234", "1234"),  # '*' ignored when looking for "answer:"; ',' stripped
    ("answer: $18.00", "18"),  # '$' skipped by the regex, trailing .00 dropped
    ("Answer: -3 apples", "-3"),
    ("Answer: 2.50", "2.50"),  # only a trailing .0+ is dropped
    ("Answer: \\boxed{42}", "42"),  # a box after "answer: " gives its content
    ("ANSWER: 9 (nine)", "9"),
    ("Answer:42", "42"),  # quirk kept: "answer:" without a space reads the first number of the whole text
    ("Total is 10.\nAnswer:42", "10"),
    # no "answer:": the first \boxed{...}
    ("so the total is \\boxed{15} dollars", "15"),
    ("\\boxed{\\text{30}} is it", "30"),
    # neither: the last line
    ("3 + 4 = 7\nThe total is 7 + 2 = 9", "7"),  # first number of the last line
    ("#### 1,000", "1000"),  # '#' and ',' stripped: GSM8K's own final line parses too
    ("The result is 5.0.\n", "5"),
    ("1.2.3", "1.2.3"),  # the regex takes it; the float compare fails later
    ("no number here", None),  # the harness's "parsing error"
    ("", None),
])
def test_platinum_parse_matches_the_harness(output, parsed):
    assert platinum_parse(output) == parsed


def test_platinum_correct_compares_floats():
    assert platinum_correct("18", "18") and platinum_correct("18.0", "18") and platinum_correct("-3", "-3")
    assert not platinum_correct("1.2.3", "1") and not platinum_correct(None, "1") and not platinum_correct("17", "18")


class _ChatTok:
    chat_template = "x"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return f"<user>{messages[0]['content']}</user><assistant>"


def test_platinum_prompt_is_the_harness_template():
    q = "Tom has 3 apples and buys 4. How many?"
    plain = GSM8K("plain", "flexible", "platinum").prompt(None, q)
    assert plain == PLATINUM_TEMPLATE.format(question=q) + "\n"
    assert plain.startswith("Solve the following math word problem.\n\n" + q + "\n\nThink step-by-step. Then, provide")
    assert plain.rstrip().endswith('in the format "Answer: XXX" with no extra formatting.')
    chat = GSM8K("chat", "flexible", "platinum").prompt(_ChatTok(), q)
    assert chat == f"<user>{PLATINUM_TEMPLATE.format(question=q)}</user><assistant>"
    # arm prompts keep their instruction under either protocol
    assert "Show every step" in GSM8K("abel", "flexible", "platinum").prompt(None, q, "Show every step. #### N")


def test_default_protocol_keeps_answer_mode_grading():
    text = "3 + 4 = 7\nThe answer is 7"
    g = GSM8K("abel", "strict", "default").grade(text, "7")
    assert (g.extracted, g.correct, g.correct_strict, g.correct_flexible) == (None, False, False, True)
    g = GSM8K("abel", "flexible", "default").grade(text, "7")
    assert (g.extracted, g.correct) == ("7", True)
    assert GSM8K("abel", "flexible").extract(text) == extract_answer(text, "flexible")


def test_platinum_protocol_grades_with_the_harness_parser():
    task = GSM8K("plain", "flexible", "platinum")
    g = task.grade("7 + 5 = 12\nAnswer: 12\n#### 13", "12")
    assert g.correct and g.extracted == "12" and g.extracted_strict == "13" and not g.correct_strict
    assert task.is_correct(task.extract("Answer: 5"), "5")


def test_unknown_protocol_is_refused():
    with pytest.raises(ValueError, match="task.protocol"):
        GSM8K("abel", "flexible", "lenient")


def test_eval_protocol_is_a_checked_config_key():
    from looper_math.config import ConfigError, load_config

    assert load_config(None).task.protocol == "default"
    assert load_config(None, ["task.protocol=platinum"]).task.protocol == "platinum"
    with pytest.raises(ConfigError, match="task.protocol"):
        load_config(None, ["task.protocol=harness"])


def test_stats_live_in_stats_and_compare_reexports_them():
    from looper_math import compare, stats

    assert compare.wilson_ci is stats.wilson_ci and compare.mcnemar_exact_p is stats.mcnemar_exact_p
    assert stats.auroc([0.1, 0.9], [False, True]) == 1.0 and stats.auroc([0.5], [True]) is None


def _imported_modules(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module)
            mods.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
    return mods


@pytest.mark.parametrize("phase", PHASES)
def test_no_phase_module_imports_another_phase_module(phase):
    """Phases share code through task, stats, schemas, layout, ... never through each other (any import,
    also one inside a function)."""
    mods = _imported_modules(SRC / f"{phase}.py")
    others = {f"looper_math.{p}" for p in PHASES if p != phase}
    assert not mods & others, f"{phase}.py imports {sorted(mods & others)}"


def test_regime_w_is_self_contained():
    """regime_w imports no config, phase or orchestration module (only leaf helpers)."""
    allowed = {"looper_math.answers", "looper_math.calculator", "looper_math.seeds"}
    for f in (SRC / "regime_w").glob("*.py"):
        ours = {m for m in _imported_modules(f) if m.startswith("looper_math.") and not m.startswith("looper_math.regime_w")}
        ours = {m for m in ours if not any(m == a or m.startswith(a + ".") for a in allowed)}
        assert not ours, f"{f.name} imports {sorted(ours)}"


def test_eval_under_the_platinum_protocol_grades_with_its_parser(smoke_cfg):
    from looper_math.evaluate import evaluate
    from looper_math.layout import RunLayout
    from looper_math.schemas import EvalRow, read_rows

    cfg = smoke_cfg("task.protocol=platinum", "eval.limit=4", "eval.max_new_tokens=24")
    summary = evaluate(cfg, "none")
    assert summary["protocol"] == "platinum" and summary["n"] == 4
    rows = list(read_rows(RunLayout(cfg).eval("none").path, EvalRow))
    for r in rows:
        assert r["extracted"] == platinum_parse(r["prediction"])
        assert r["correct"] == platinum_correct(r["extracted"], r["gold"])


HEDGED = "5 + 1 = 6, or maybe 5.\nSo \\boxed{5}.\n#### 6"


@pytest.mark.parametrize("mode", ["strict", "flexible"])
def test_a_hedged_completion_is_wrong_in_eval_whatever_the_gold(mode):
    task = GSM8K("abel", mode, "default")
    for gold in ("5", "6"):
        g = task.grade(HEDGED, gold)
        assert g.hedged and (g.extracted, g.extracted_strict, g.extracted_flexible) == (None, None, None)
        assert (g.correct, g.correct_strict, g.correct_flexible) == (False, False, False)
    g = task.grade("So \\boxed{5}.\n#### 5", "5")  # agreeing: right, as before
    assert not g.hedged and (g.extracted, g.correct, g.correct_strict, g.correct_flexible) == ("5", True, True, True)
    g = task.grade("\\boxed{1,000}\n#### 1000", "1000")
    assert not g.hedged and g.correct


def test_rewards_and_eval_give_a_hedged_completion_the_same_verdict():
    """The GRPO reward functions, the rollouts' `correct` (task.is_correct of score_group's answer) and eval's
    grade all call the one extractor: a hedged completion is wrong in each, an agreeing one right in each."""
    from looper_math.config import load_config
    from looper_math.grpo import grpo_reward
    from looper_math.regime_w.scoring import score_group

    q = "Tom has 5 apples and buys 1 more. How many apples does he have?"
    ref = "5+1=<<5+1=6>>6\n#### 6"
    agreeing = "5 + 1 = 6\nSo \\boxed{6}.\n#### 6"
    texts = [HEDGED, agreeing]
    batch = dict(prompts=[q] * 2, completions=texts, completion_ids=[[1] * 10] * 2, question=[q] * 2,
                 answer=[ref] * 2, gold=["6"] * 2, question_id=["q"] * 2)
    for mode in ("strict", "flexible"):
        cfg = load_config(None, [f"task.answer_mode={mode}", "regime_w.alpha_correct=1.0"])
        task = GSM8K.from_config(cfg)
        verdicts = [task.grade(t, "6").correct for t in texts]
        assert verdicts == [False, True]
        assert grpo_reward(cfg)(**batch) == [0.0, 1.0]  # correctness: alpha_correct * correct
        gated = grpo_reward(load_config(None, [f"task.answer_mode={mode}", "grpo.reward=regime_w_gated"]))(**batch)
        assert gated[0] == 0.0 and gated[1] > 0.0
        # rollouts: score_group gets the task's answers (or extracts in answer_mode itself); `correct` is is_correct
        for answers in ([task.extract(t) for t in texts], None):
            scored = score_group(q, texts, ref, answers=answers, answer_mode=mode)
            assert [task.is_correct(s["answer"], "6") for s in scored] == verdicts
            assert scored[0]["answer"] is None and scored[0]["s_end"] == 0.0  # no answer: agrees with no peer


def test_eval_summary_counts_hedged_rows():
    from looper_math.config import load_config
    from looper_math.evaluate import summarize

    task = GSM8K()
    rows = [dict(task.grade(t, "6").fields(), cleaning_status="n/a", num_tokens=5, finished=True)
            for t in (HEDGED, "#### 6", "\\boxed{6}\n#### 7")]
    legacy = {k: v for k, v in rows[1].items() if k != "hedged"}  # written before the field existed
    s = summarize(rows + [legacy], checkpoint="c", cfg=load_config(None), run_tokens=0, run_seconds=1.0)
    assert (s["hedged"], s["n"], s["accuracy"]) == (2, 4, 0.5)
    assert s["extraction_failures_strict"] == s["extraction_failures_flexible"] == 2
