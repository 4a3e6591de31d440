"""Config loading: every enumerated value and range is checked at load time (one line naming key, value and
what is allowed), and scientific notation is a number on the command line and in files (issue 11, items 2-3)."""

from __future__ import annotations

import pytest

from conftest import REPO

from looper_math.config import ConfigError, load_config

DEMO = REPO / "configs" / "demo.yaml"


@pytest.mark.parametrize("override, allowed", [
    ("eval.answer_mode=loose", "'strict' or 'flexible'"),
    ("eval.engine=vllm", "'auto', 'hf' or 'fast'"),
    ("eval.split=validation", "'test' or 'dev'"),
    ("regime_w.allocation=bandit", "'uniform', 'ucb' or 'thompson'"),
    ("model.prompt_format=chatml", "'abel', 'chat' or 'plain'"),
    ("model.dtype=fp8", "'auto', 'bfloat16', 'float16' or 'float32'"),
    ("rollouts.split=validation", "'train', 'dev' or 'test'"),
    ("device=gpu", "'auto', 'cpu' or 'cuda'"),
    ("prefs.prompt_mode=chat", "'eval' or 'arm'"),
    ("sft.lr_scheduler=cosine_annealing", "'cosine'"),
    ("lora.r=-3", "greater than or equal to 1"),
    ("lora.dropout=1.0", "less than 1"),
    ("rollouts.k=0", "greater than or equal to 1"),
    ("rollouts.limit=0", "greater than or equal to 1"),
    ("eval.max_new_tokens=0", "greater than or equal to 1"),
    ("regime_w.exploration_floor=1.5", "less than or equal to 1"),
    ("regime_w.w_path=-0.1", "greater than or equal to 0"),
    ("prefs.max_coherence_share=2", "less than or equal to 1"),
    ("prefs.coherence_margin=-0.5", "greater than or equal to 0"),
    ("sft.learning_rate=0", "greater than 0"),
    ("dpo.beta=-0.1", "greater than 0"),
    ("dpo.warmup_ratio=1.5", "less than 1"),
    ("sft.max_steps=-2", "greater than or equal to -1"),
])
def test_out_of_set_or_range_fails_at_load_naming_key_value_and_allowed(override, allowed):
    key, value = override.split("=")
    with pytest.raises(ConfigError) as e:
        load_config(DEMO, [override])
    msg = str(e.value)
    assert "\n" not in msg and f"'{key}'" in msg and value in msg and allowed in msg, msg


def test_list_entries_are_checked():
    with pytest.raises(ConfigError, match=r"'prefs.pair_types\[1\]': got 'style'"):
        load_config(DEMO, ["prefs.pair_types=[correctness, style]"])


@pytest.mark.parametrize("field, value, expect", [
    ("family", "bayes", "regime_w.arms[0].family"),
    ("temperature", -0.5, "regime_w.arms[0].temperature"),
    ("top_p", 0, "regime_w.arms[0].top_p"),
    ("top_p", 1.5, "regime_w.arms[0].top_p"),
])
def test_arms_are_checked_at_load(tmp_path, field, value, expect):
    arm = {"name": "a", "family": "wolfram", "instruction": "End with '#### <number>'.", "temperature": 0.7, "top_p": 0.95}
    p = tmp_path / "c.yaml"
    import yaml

    p.write_text(yaml.safe_dump({"regime_w": {"arms": [{**arm, field: value}]}}))
    with pytest.raises(ConfigError, match=expect.replace("[", r"\[").replace("]", r"\]")):
        load_config(p)
    assert load_config(p, [f"regime_w.arms=[{{name: a, family: maudlin, instruction: '#### n', temperature: 0.5, top_p: 1}}]"])


def test_valid_values_load():
    cfg = load_config(DEMO, ["eval.answer_mode=strict", "regime_w.allocation=thompson", "rollouts.limit=null",
                             "regime_w.exploration_floor=0", "sft.max_steps=-1", "dpo.nll_weight=0"])
    assert cfg.eval.answer_mode == "strict" and cfg.rollouts.limit is None and cfg.regime_w.exploration_floor == 0.0


@pytest.mark.parametrize("text, expect", [("1e-4", 1e-4), ("5E-5", 5e-5), ("2e3", 2000.0), ("1.0e-4", 1e-4), ("-3e-2", None)])
def test_scientific_notation_on_the_command_line(text, expect):
    if expect is None:  # a number, so the range check (not the type check) answers
        with pytest.raises(ConfigError, match="greater than 0"):
            load_config(DEMO, [f"sft.learning_rate={text}"])
        return
    cfg = load_config(DEMO, [f"sft.learning_rate={text}"])
    assert cfg.sft.learning_rate == expect and isinstance(cfg.sft.learning_rate, float)


def test_scientific_notation_in_a_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("sft:\n  learning_rate: 1e-4\ndpo:\n  learning_rate: 5e-7\nregime_w:\n  length_penalty: 5e-4\n")
    cfg = load_config(p)
    assert (cfg.sft.learning_rate, cfg.dpo.learning_rate, cfg.regime_w.length_penalty) == (1e-4, 5e-7, 5e-4)


def test_strings_that_only_look_numeric_stay_strings_where_a_string_is_expected():
    cfg = load_config(DEMO, ["data.train=train_1e4.jsonl", "model.revision=main"])
    assert cfg.data.train == "train_1e4.jsonl"


# --------------------------------------------------------------------------- issue 25, item 5: YAML the user can fix


@pytest.mark.parametrize("text, where, problem", [
    ("sft:\n  max_steps: 4\n  limit: [1\n", ":4:1: invalid YAML: expected ',' or ']'", "while parsing a flow sequence at line 3, column 10"),
    ("sft:\n  max_steps: 4\n\tlimit: 2\n", ":3:1: invalid YAML: found character '\\t' that cannot start any token", ""),
    ("dpo:\n  beta: 0.1\n   nll_weight: 1\n", ":3:14: invalid YAML: mapping values are not allowed here", ""),
])
def test_yaml_syntax_error_names_file_line_and_column(tmp_path, text, where, problem):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{p}{where}") and problem in msg, msg


@pytest.mark.parametrize("text, expect", [
    ("sft:\n  max_steps: 4\n  learning_rate: 1e-4\n  max_steps: 8\n", ":4:3: invalid YAML: duplicate key 'max_steps' (first on line 2)"),
    ("sft: {max_steps: 4}\ndpo: {beta: 0.2}\nsft: {limit: 2}\n", ":3:1: invalid YAML: duplicate key 'sft' (first on line 1)"),
    ("regime_w:\n  arms:\n    - {name: a, family: wolfram, name: b}\n", ":3:34: invalid YAML: duplicate key 'name' (first on line 3)"),
])
def test_duplicate_keys_are_an_error_naming_key_file_and_line(tmp_path, text, expect):
    """PyYAML keeps the last value of a repeated key silently; the first one was what the user saw."""
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value) == f"{p}{expect}"


def test_duplicate_keys_in_a_set_value():
    with pytest.raises(ConfigError, match=r"^--set sft=\{max_steps: 1, max_steps: 2\}: duplicate key 'max_steps'"):
        load_config(DEMO, ["sft={max_steps: 1, max_steps: 2}"])


def test_merge_keys_are_not_duplicates():
    from looper_math.config import yaml_load

    assert yaml_load("a: &x {k: 1, j: 3}\nb:\n  <<: *x\n  k: 2\n") == {"a": {"k": 1, "j": 3}, "b": {"k": 2, "j": 3}}


@pytest.mark.parametrize("text", ["", "\n\n", "# sft:\n#   max_steps: 4\n", "---\n", "~\n"])
def test_empty_config_file_is_an_error_not_the_7b_defaults(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}: config file is empty (or only comments)") and "\n" not in str(e.value)


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("just words\n", "str"), ("3\n", "int")])
def test_config_that_is_not_a_mapping(tmp_path, text, kind):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=f"top level must be a mapping \\(key: value lines\\), got a {kind}$"):
        load_config(p)
