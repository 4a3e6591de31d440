"""The learning recipe's pieces and the generation speed paths they rely on:
sampling without a vocabulary sort, evaluation-prompt rollouts, rejection-sampling SFT data, merged adapters."""

from __future__ import annotations

import json
import math

import pytest
import torch

from looper_math.engine.sampling import sample_rows


def _rows(n: int, top_p: float, temperature: float = 1.0):
    return (torch.full((n,), temperature), torch.full((n,), top_p), torch.zeros(n, dtype=torch.bool))


def test_unsorted_sampling_draws_from_the_softmax():
    """top_p = 1 rows invert the CDF in vocabulary order: the same distribution as the sorted path."""
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 0.5, -1.0, 1.0, float("-inf"), 0.0]])
    n = 40000
    u = torch.rand(n)
    t, p, g = _rows(n, 1.0, temperature=0.7)
    tokens = sample_rows(logits.expand(n, -1), u, t, p, g, truncate=False)
    freq = torch.bincount(tokens, minlength=6).double() / n
    want = torch.softmax(logits[0] / 0.7, -1).double()
    assert freq[4] == 0, "a -inf token was drawn"
    assert torch.allclose(freq, want, atol=0.01), (freq, want)


def test_a_rows_token_does_not_depend_on_its_batch_neighbours():
    """A top_p = 1 row samples the same token whether or not another row of the batch needs the sort."""
    torch.manual_seed(1)
    logits = torch.randn(4, 50)
    u = torch.rand(4)
    temp = torch.tensor([0.8, 0.8, 1.0, 0.8])
    greedy = torch.zeros(4, dtype=torch.bool)
    all_one = sample_rows(logits, u, temp, torch.ones(4), greedy, truncate=False)
    mixed_p = torch.tensor([1.0, 0.9, 1.0, 0.5])
    mixed = sample_rows(logits, u, temp, mixed_p, greedy, truncate=True)
    for i in (0, 2):
        assert mixed[i] == all_one[i]
    alone = [sample_rows(logits[i:i + 1], u[i:i + 1], temp[i:i + 1], mixed_p[i:i + 1], greedy[i:i + 1]) for i in range(4)]
    assert [int(a) for a in alone] == mixed.tolist()


def test_top_p_still_truncates():
    logits = torch.tensor([[3.0, 2.9, -5.0, -5.0]]).expand(1000, -1)
    u = torch.linspace(0, 0.999, 1000)
    t, p, g = _rows(1000, 0.5)
    assert set(sample_rows(logits, u, t, p, g).tolist()) == {0}


# ------------------------------------------------------------------------------- rejection-sampling SFT


def _rollout(qid, idx, text, correct, finished=True, reward=1.0, gold="12"):
    return {"question_id": qid, "sample_idx": idx, "full_text": text, "correct": correct, "finished": finished,
            "reward": reward, "gold": gold}


def test_rft_targets_keep_distinct_correct_finished_best_first(tmp_path):
    from looper_math.sft import rft_targets

    rows = [
        _rollout("q1", 0, "3 * 4 = 12\n#### 12", True, reward=1.2),
        _rollout("q1", 1, "3 * 4 = 12\n#### 12", True, reward=1.2),  # duplicate text
        _rollout("q1", 2, "4 + 8 = 12. The answer is 12.", True, reward=1.4),  # best, no #### line
        _rollout("q1", 3, "3 + 4 = 7\n#### 7", False),
        _rollout("q1", 4, "3 * 4 = 12 and then", True, finished=False),  # cut by max tokens
        _rollout("q1", 5, "12", True, reward=0.9),
        _rollout("q2", 0, "wrong\n#### 5", False),
        _rollout("q3", 0, "ok\n#### 12", True),
    ]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = rft_targets(path, per_question=2, question_ids={"q1", "q2"})
    assert got == {"q1": ["4 + 8 = 12. The answer is 12.\n#### 12", "3 * 4 = 12\n#### 12"]}


def test_rft_targets_pool_several_rollouts_files(tmp_path):
    """sft.rft_extra: the correct rows of later rollouts (another adapter's) join the base model's."""
    from looper_math.sft import rft_targets

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps(_rollout("q1", 0, "x\n#### 12", True, reward=1.0)) + "\n")
    b.write_text("".join(json.dumps(r) + "\n" for r in [_rollout("q1", 0, "x\n#### 12", True, reward=1.0),  # same text
                                                           _rollout("q1", 1, "y\n#### 12", True, reward=1.3),
                                                           _rollout("q2", 0, "z\n#### 12", True)]))
    assert rft_targets([a, b], per_question=4) == {"q1": ["y\n#### 12", "x\n#### 12"], "q2": ["z\n#### 12"]}


def test_rft_targets_name_a_missing_file(tmp_path):
    from looper_math.runio import DataError
    from looper_math.sft import rft_targets

    with pytest.raises(DataError, match="r.jsonl"):
        rft_targets(tmp_path / "r.jsonl", 2)


# ------------------------------------------------------------------ rollouts under the evaluation prompt


@pytest.fixture
def eval_prompt_rollouts(smoke_cfg):
    from looper_math.rollouts import collect_rollouts

    cfg = smoke_cfg("rollouts.k=4", "rollouts.limit=3", "rollouts.eval_prompt_share=0.5", "rollouts.temperature=0.9",
                    "rollouts.score_workers=2", "rollouts.adapter=none", "regime_w.allocation=ucb")
    summary = collect_rollouts(cfg)
    rows = [json.loads(x) for x in cfg.path(cfg.rollouts.output).read_text().splitlines()]
    return cfg, summary, rows


def test_eval_prompt_samples_are_on_policy(eval_prompt_rollouts):
    cfg, summary, rows = eval_prompt_rollouts
    assert len(rows) == 12 and summary["questions"] == 3
    for r in rows:
        if r["sample_idx"] < 2:
            assert r["arm"] == "eval_prompt" and r["prompt"] == r["eval_prompt"] and r["temperature"] == 0.9, r
        else:
            assert r["arm"] != "eval_prompt" and r["prompt"] != r["eval_prompt"], r
        for key in ("s_cf_free", "n_unparsed"):
            assert key in r
    assert summary["per_arm"]["eval_prompt"]["pulls"] == 6
    assert sum(st["pulls"] for st in summary["per_arm"].values()) == 12
    assert sum(summary["bandit_state"]["pulls"]) == 6  # the bandit counts its own arms' samples only
    timing = summary["this_run"]
    assert timing["generate_seconds"] > 0 and timing["score_seconds"] > 0 and "other_seconds" in timing


def test_rollouts_with_the_fast_engine_report_its_slot_occupancy_and_host_time(smoke_cfg):
    """What limits rollouts: with the fast engine the summary splits generation further."""
    from looper_math.rollouts import collect_rollouts

    cfg = smoke_cfg("rollouts.k=2", "rollouts.limit=3", "rollouts.adapter=none", "generation.engine=fast",
                    "rollouts.questions_per_round=2")
    timing = collect_rollouts(cfg)["this_run"]
    assert 0 < timing["slot_occupancy"] <= 1
    assert 0 <= timing["engine_host_seconds"] <= timing["generate_seconds"]
    assert 0 < timing["engine_refill_seconds"] <= timing["generate_seconds"]


def test_rollouts_streamed_by_the_fast_engine_equal_the_plain_engines_rows(smoke_cfg):
    """The fast engine takes all rounds as one stream (no tail per round) and rows are written as
    questions finish. In fp32 both engines give the same tokens, so without a bandit the rows are the same,
    scores and rewards included, whatever order they reach the file in."""
    from looper_math.rollouts import collect_rollouts

    rows = {}
    for engine in ("hf", "fast"):
        cfg = smoke_cfg("rollouts.k=3", "rollouts.limit=5", "rollouts.adapter=none", "rollouts.eval_prompt_share=1.0",
                        "rollouts.questions_per_round=2", "rollouts.batch_size=4", f"generation.engine={engine}",
                        f"rollouts.output=data/rollouts_{engine}.jsonl")
        summary = collect_rollouts(cfg)
        rows[engine] = sorted((json.loads(x) for x in cfg.path(cfg.rollouts.output).read_text().splitlines()),
                              key=lambda x: (x["question_id"], x["sample_idx"]))
        assert summary["rows"] == 15 and summary["this_run"]["tokens"] == sum(x["num_tokens"] for x in rows[engine])
    assert rows["fast"] == rows["hf"]
    assert len({x["full_text"] for x in rows["hf"]}) > 1


def test_all_samples_under_the_eval_prompt_need_no_bandit(smoke_cfg):
    from looper_math.rollouts import collect_rollouts

    cfg = smoke_cfg("rollouts.k=2", "rollouts.limit=2", "rollouts.eval_prompt_share=1.0", "rollouts.adapter=none",
                    "rollouts.score_workers=1", "regime_w.cf_source=peers")
    summary = collect_rollouts(cfg)
    rows = [json.loads(x) for x in cfg.path(cfg.rollouts.output).read_text().splitlines()]
    assert summary["bandit_state"] is None and {r["arm"] for r in rows} == {"eval_prompt"}
    assert all(r["s_cf"] == r["s_cf_free"] for r in rows)  # peers: s_cf uses no reference program


def test_sft_on_rft_data_trains_on_the_models_own_text(eval_prompt_rollouts):
    """sft.data=rft reads the correct rows of a rollouts file; no correct row -> a one-line error."""
    from looper_math.layout import summary_of, write_summary
    from looper_math.modeling import load_tokenizer
    from looper_math.runio import DataError, read_json
    from looper_math.sft import build_dataset

    cfg, _, rows = eval_prompt_rollouts
    path = cfg.path(cfg.rollouts.output)
    # the tiny model is rarely right: mark two rows correct by hand, as grading would
    fixed = []
    for r in rows:
        r = dict(r, correct=r["sample_idx"] == 0 and r["question_id"] != rows[0]["question_id"], finished=True)
        fixed.append(r)
    path.write_text("".join(json.dumps(r) + "\n" for r in fixed))
    rewrite_summary = lambda: write_summary(path, read_json(summary_of(path)))  # noqa: E731 (the edit is deliberate)
    rewrite_summary()
    tok = load_tokenizer(cfg)
    cfg.sft.data, cfg.sft.rft_rollouts = "rft", str(path)
    cfg.data.dev_size = 0
    ds, _ = build_dataset(cfg, tok)
    wanted = {r["full_text"].strip() for r in fixed if r["correct"] and r["full_text"].strip()}
    completions = [ex["completion"] if isinstance(ex["completion"], str) else ex["completion"][0]["content"] for ex in ds]
    assert len(ds) == len(wanted) and all(any(c.startswith(w) for w in wanted) for c in completions)
    assert all("####" in c for c in completions)
    cfg.sft.data = "gold+rft"
    both, _ = build_dataset(cfg, tok)
    assert len(both) > len(ds)
    for r in fixed:
        r["correct"] = False
    path.write_text("".join(json.dumps(r) + "\n" for r in fixed))
    rewrite_summary()
    cfg.sft.data = "rft"
    with pytest.raises(DataError, match="no training examples"):
        build_dataset(cfg, tok)


def test_run_rolls_out_from_the_base_model_before_rft_sft(smoke_cfg, monkeypatch):
    """`looper-math run` with sft.data=rft writes the base-model rollouts first, then SFT reads them."""
    from looper_math import pipeline

    calls = []
    cfg = smoke_cfg("sft.data=rft", "sft.rft_rollouts=data/base.jsonl")
    monkeypatch.setattr("looper_math.rollouts.collect_rollouts", lambda c, **kw: calls.append(("rollouts", c.rollouts.adapter, c.rollouts.output)) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        pipeline.run_pipeline(cfg)
    assert calls == [("rollouts", "none", "data/base.jsonl")]


def test_sft_command_collects_the_base_rollouts_it_needs(smoke_cfg, tmp_path):
    """`looper-math sft` (and so the original phase-1 alias) with sft.data using rft rolls out the base
    model first when its rollouts are missing, then trains on them."""
    from typer.testing import CliRunner

    from looper_math.cli import app

    cfg = smoke_cfg()
    overrides = ["sft.data=gold+rft", "sft.rft_rollouts=data/base.jsonl", "sft.max_steps=2", "sft.save_steps=2",
                 "rollouts.k=2", "rollouts.limit=2", "rollouts.eval_prompt_share=1.0", "rollouts.score_workers=1"]
    args = ["sft", "-c", str(tmp_path / "c.yaml")]
    import yaml

    from looper_math.config import to_dict
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    for o in overrides:
        args += ["--set", o]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in cfg.path("data/base.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {x["adapter"] for x in rows} == {None}
    summary = json.loads((cfg.path(cfg.sft.output_dir) / "train_summary.json").read_text())
    assert summary["data"] == "gold+rft" and summary["steps"] == 2


def test_regime_w_reward_scores_groups_like_rollouts():
    """The GRPO reward is the rollouts' reward: correct + coherence - length, per question group."""
    from looper_math.config import load_config
    from looper_math.grpo import grpo_reward

    q = "Tom has 3 apples and buys 4 more. How many apples does he have?"
    ref = "3+4=<<3+4=7>>7\n#### 7"
    batch = dict(prompts=[q] * 3, completions=[[{"role": "assistant", "content": "3 + 4 = 7\n#### 7"}], "#### 8", "#### 7"],
                 completion_ids=[[1] * 10, [1] * 5, [1] * 20], question=[q] * 3, answer=[ref] * 3, gold=["7"] * 3,
                 question_id=["q"] * 3)
    cfg = load_config(None, ["grpo.reward=regime_w", "regime_w.alpha_correct=1.0", "regime_w.beta_coherence=0.0",
                             "regime_w.length_penalty=0.01"])
    assert grpo_reward(cfg)(**batch) == pytest.approx([1.0 - 0.1, -0.05, 1.0 - 0.2])
    with_coherence = grpo_reward(load_config(None, ["grpo.reward=regime_w", "regime_w.length_penalty=0"]))(**batch)
    assert with_coherence != [1.0, 0.0, 1.0]  # s_wm enters
    # the default: the binary correctness reward, alpha_correct per correct answer, nothing else
    binary = grpo_reward(load_config(None, ["regime_w.alpha_correct=2.0"]))
    assert binary.__name__ == "correctness_reward" and binary(**batch) == [2.0, 0.0, 2.0]
    # regime_w_gated: the incorrect completion gets 0, the correct ones what regime_w gives them
    gated = grpo_reward(load_config(None, ["grpo.reward=regime_w_gated", "regime_w.alpha_correct=1.0",
                                           "regime_w.beta_coherence=0.0", "regime_w.length_penalty=0.01"]))
    assert gated.__name__ == "regime_w_gated_reward" and gated(**batch) == pytest.approx([1.0 - 0.1, 0.0, 1.0 - 0.2])


def test_regime_w_reward_overrates_a_unanimous_trivial_equation_and_the_gate_stops_it():
    """What the 0.5B learned under grpo.reward=regime_w (bench/RESULTS.md section 0): eight copies of a valid,
    grounded one-line equation with a wrong answer agree with each other, so s_wm is 0.7 (1.0 with the label-free
    s_cf) and the group outscores an honest wrong derivation; regime_w_gated gives both 0."""
    from looper_math.config import load_config
    from looper_math.grpo import grpo_reward

    q = "Tom has 3 apples and buys 4 more. How many apples does he have?"
    ref = "3+4=<<3+4=7>>7\n#### 7"
    trivial = "1 /1 = 1"
    honest = ["Tom has 3 apples. He buys 4 more, so 3 * 4 = 12.\n#### 12", "3 + 5 = 8\n#### 8"] * 4
    def batch(texts, qid, tokens):
        return dict(prompts=[q] * 8, completions=texts, completion_ids=[[1] * tokens] * 8, question=[q] * 8,
                    answer=[ref] * 8, gold=["7"] * 8, question_id=[qid] * 8)

    rw = grpo_reward(load_config(None, ["grpo.reward=regime_w"]))
    free = grpo_reward(load_config(None, ["grpo.reward=regime_w", "regime_w.cf_source=peers"]))
    gated = grpo_reward(load_config(None, ["grpo.reward=regime_w_gated"]))
    cfg = load_config(None)
    w = cfg.regime_w
    hack = rw(**batch([trivial] * 8, "a", 8))
    assert hack == pytest.approx([w.beta_coherence * 0.7 - w.length_penalty * 8] * 8)
    assert free(**batch([trivial] * 8, "a", 8)) == pytest.approx([w.beta_coherence * 1.0 - w.length_penalty * 8] * 8)
    assert min(hack) > max(rw(**batch(honest, "b", 40)))
    assert gated(**batch([trivial] * 8, "a", 8)) == [0.0] * 8 and gated(**batch(honest, "b", 40)) == [0.0] * 8


def test_collapse_warning_when_completions_shrink():
    from looper_math.grpo import collapse_warning

    assert collapse_warning([(1, 290.7), (70, 7.98)]).startswith("mean completion length fell from 291 tokens (step 1) to 8")
    assert collapse_warning([(1, 290.7), (70, 298.9)]) is None and collapse_warning([(1, 290.7)]) is None
    assert collapse_warning([]) is None and collapse_warning([(1, 0.0), (2, 0.0)]) is None


def test_merged_rollouts_copy_matches_the_policy_and_returns_sampled_ids(smoke_cfg):
    """grpo.generation=looper: the private copy computes what base + current LoRA computes (fp32), follows
    the adapter after it changes, never touches the policy, and hands TRL the ids it sampled."""
    from types import SimpleNamespace

    from looper_math.engine.api import encode_prompts
    from looper_math.grpo import MergedRollouts
    from looper_math.modeling import load_model_with_adapter, load_tokenizer
    from looper_math.sft import train_sft

    cfg = smoke_cfg("sft.max_steps=2", "sft.save_steps=2", "grpo.max_completion_length=10", "grpo.temperature=1.0")
    train_sft(cfg)
    policy, _ = load_model_with_adapter(cfg, "sft", "cpu", trainable=True)
    policy.eval()
    tok = load_tokenizer(cfg)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    rollout = MergedRollouts(cfg, tok, "cpu")
    trainer = SimpleNamespace(model=policy, state=SimpleNamespace(global_step=0),
                              accelerator=SimpleNamespace(unwrap_model=lambda m: m))
    ids = torch.tensor([tok("Question: Tom has 3 apples and buys 4 more.\nAnswer:")["input_ids"]])

    for round_ in range(2):
        if round_:  # the adapter moves (as after an optimizer step): the copy must follow
            with torch.no_grad():
                for name, p in policy.named_parameters():
                    if "lora_B" in name:
                        p.add_(0.05 * torch.randn_like(p))
            before = {k: v.clone() for k, v in policy.state_dict().items()}
        prompts = ["Question: What is 2 + 3?\nAnswer:"] * 2 + ["Question: Sam has 5 pens. How many pens?\nAnswer:"] * 2
        out = rollout(prompts, trainer)
        with torch.no_grad():
            want, got = policy(input_ids=ids).logits, rollout.copy(input_ids=ids).logits
        assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
        assert all(torch.equal(v, before[k]) for k, v in policy.state_dict().items()), "the policy was changed"
        assert out["logprobs"] is None and len(out["completion_ids"]) == len(prompts) == len(out["prompt_ids"])
        assert out["prompt_ids"] == encode_prompts(tok, prompts)  # the ids it sampled from, in order
        assert all(0 < len(c) <= 10 for c in out["completion_ids"])
    assert rollout.calls == 2
    # the k samples of one prompt are drawn with different seeds
    assert len({tuple(c) for c in out["completion_ids"][:2]}) + len({tuple(c) for c in out["completion_ids"][2:]}) >= 3


@pytest.mark.parametrize("generation", ["looper", "trl"])
def test_grpo_generation_paths_both_train(smoke_cfg, generation):
    """Both samplers feed GRPOTrainer with the Regime W reward: two steps each from an SFT adapter, the adapter
    moves (same tensors), a finite reward is logged per step, and the summary says who sampled."""
    from safetensors.torch import load_file

    from looper_math.grpo import train_grpo
    from looper_math.sft import train_sft

    cfg = smoke_cfg("sft.max_steps=2", "sft.save_steps=2", "grpo.max_steps=2", "grpo.num_generations=4", "grpo.batch_size=8",
                    "grpo.max_completion_length=24", "grpo.limit=8", "grpo.learning_rate=1.0e-2", "grpo.logging_steps=1",
                    "grpo.temperature=1.5", "regime_w.length_penalty=0.05", "grpo.warmup_ratio=0", "grpo.reward=regime_w",
                    f"grpo.generation={generation}", "grpo.report_to=tensorboard", "grpo.trainer_args={loss_type: dr_grpo}",
                    "grpo.save_steps=1", f"grpo.save_total_limit={'null' if generation == 'looper' else 1}")
    train_sft(cfg)
    summary = train_grpo(cfg)
    assert summary["steps"] == 2 and summary["generation"] == generation
    # grpo.save_total_limit reaches the Trainer: null keeps every checkpoint (a dev learning curve), 1 the last
    kept = sorted(p.name for p in (cfg.path(cfg.grpo.output_dir) / "trainer").glob("checkpoint-*"))
    assert kept == (["checkpoint-1", "checkpoint-2"] if generation == "looper" else ["checkpoint-2"])
    if generation == "looper":  # the sampler's share of the training time, for the speed work
        assert 0 < summary["sampling_seconds"] <= summary["seconds"] and 0 < summary["sampling_share"] <= 1
        assert summary["sampling_calls"] >= 2 and 0 < summary["sampling_first_call_seconds"] <= summary["sampling_seconds"]
    else:
        assert "sampling_seconds" not in summary
    assert len(summary["rewards"]) == 2 and all(math.isfinite(r) for _, r in summary["rewards"])
    assert [s for s, _ in summary["completion_lengths"]] == [1, 2] and all(0 < n <= 24 for _, n in summary["completion_lengths"])
    assert summary["peak_memory"]["peak_rss_gib"][0] > 0  # CPU: the process's peak resident set
    assert json.loads((cfg.path(cfg.grpo.output_dir) / "train_summary.json").read_text())["phase"] == "grpo"
    from looper_math.config import fingerprint

    # written by the scaffold SFT and DPO share (train_common.TrainerRun), so it carries the settings fingerprint too
    assert summary["settings_fingerprint"] == fingerprint(cfg, "grpo") and summary["resumed_from"] is None
    events = list((cfg.path(cfg.grpo.output_dir) / "trainer" / "runs").glob("*/events.out.tfevents.*"))
    assert events, "grpo.report_to=tensorboard wrote no event file"
    sft = load_file(cfg.path(cfg.sft.output_dir) / "adapter_model.safetensors")
    grpo = load_file(cfg.path(cfg.grpo.output_dir) / "adapter_model.safetensors")
    assert set(grpo) == set(sft) and any(not torch.equal(grpo[k], sft[k]) for k in sft), "GRPO did not move the adapter"


def test_run_with_policy_grpo_trains_rounds_of_grpo_and_skips_them_when_current(smoke_cfg, capsys):
    """`policy: grpo`: SFT -> [GRPO -> eval] x 2, round 2 continuing from round 1 with the next seed; no rollouts
    or pairs phases; a rerun finds every phase complete; the final compare is SFT vs the last GRPO round."""
    from safetensors.torch import load_file

    from looper_math.pipeline import run_pipeline

    cfg = smoke_cfg("policy=grpo", "sft.max_steps=2", "sft.save_steps=2", "grpo.max_steps=1", "grpo.num_generations=2",
                    "grpo.batch_size=4", "grpo.max_completion_length=12", "grpo.limit=8", "grpo.learning_rate=1.0e-2",
                    "grpo.warmup_ratio=0", "grpo.temperature=1.5", "grpo.reward=regime_w", "eval.limit=4",
                    "eval.max_new_tokens=8")
    result = run_pipeline(cfg, rounds=2)
    assert not any(p.startswith(("rollouts", "prefs", "dpo", "eval_dpo")) for p in result["phases_run"])
    assert [p for p in result["phases_run"] if "grpo" in p] == [
        "grpo (round 1)", "eval_grpo (round 1)", "grpo (round 2)", "eval_grpo (round 2)"]
    r1, r2 = cfg.path("checkpoints/grpo_lora"), cfg.path("checkpoints/grpo_lora_r2")
    s2 = json.loads((r2 / "train_summary.json").read_text())
    assert s2["init_adapter"] == str(r1)
    resolved = (r2 / "resolved_config.yaml").read_text()
    assert f"seed: {cfg.grpo.seed + 1}" in resolved
    w1, w2 = load_file(r1 / "adapter_model.safetensors"), load_file(r2 / "adapter_model.safetensors")
    assert any(not torch.equal(w1[k], w2[k]) for k in w1), "round 2 did not train"
    assert cfg.path("outputs/grpo_eval_r2.jsonl").exists() and "grpo_eval_r2.jsonl" in json.dumps(result["compare"]["b"])
    capsys.readouterr()
    again = run_pipeline(cfg, rounds=2)
    assert again["phases_run"] == []


def test_grpo_looper_sampling_refuses_zero3_with_a_way_out(smoke_cfg, monkeypatch):
    from looper_math.grpo import train_grpo
    from looper_math.runio import DataError

    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(DataError, match="grpo.generation=trl"):
        train_grpo(smoke_cfg())
