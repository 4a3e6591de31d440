"""Config loading: every enumerated value and range is checked at load time (one line naming key, value and
what is allowed), and scientific notation is a number on the command line and in files."""

from __future__ import annotations

import pytest

from conftest import REPO

from looper_math.config import ConfigError, load_config

DEMO = REPO / "configs" / "demo.yaml"


@pytest.mark.parametrize("override, allowed", [
    ("task.answer_mode=loose", "'strict' or 'flexible'"),
    ("generation.engine=vllm", "'auto', 'hf' or 'fast'"),
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
    cfg = load_config(DEMO, ["task.answer_mode=strict", "regime_w.allocation=thompson", "rollouts.limit=null",
                             "regime_w.exploration_floor=0", "sft.max_steps=-1", "dpo.nll_weight=0"])
    assert cfg.task.answer_mode == "strict" and cfg.rollouts.limit is None and cfg.regime_w.exploration_floor == 0.0


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


# --------------------------------------------------------------------------- YAML the user can fix


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


# --------------------------------------------------------------------------- generation / task: keys that moved out of eval

OLD_NAMES = [("eval.engine", "generation.engine", "fast"), ("eval.fast_attn", "generation.fast_attn", "flex"),
             ("eval.fast_fuse", "generation.fast_fuse", False), ("eval.merge_adapter", "generation.merge_adapter", False),
             ("eval.answer_mode", "task.answer_mode", "strict"), ("eval.protocol", "task.protocol", "platinum")]


def _get(cfg, dotted):
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


@pytest.mark.parametrize("old, new, value", OLD_NAMES)
def test_an_old_eval_key_loads_as_its_new_key_with_a_one_line_note(tmp_path, capsys, old, new, value):
    import yaml

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"eval": {old.split(".")[1]: value, "split": "dev"}}))
    cfg = load_config(p)
    assert _get(cfg, new) == value and cfg.eval.split == "dev"
    note = capsys.readouterr().err
    assert note.count("\n") == 1 and f"'{old}' is deprecated" in note and f"'{new}'" in note and str(p) in note, note
    cfg = load_config(DEMO, [f"{old}={str(value).lower()}"])  # on the command line too
    assert _get(cfg, new) == value
    note = capsys.readouterr().err
    assert note.count("\n") == 1 and f"'{old}'" in note and f"'{new}'" in note, note


def test_new_keys_load_without_a_note(capsys):
    cfg = load_config(DEMO, ["generation.engine=hf", "task.protocol=platinum"])
    assert (cfg.generation.engine, cfg.task.protocol) == ("hf", "platinum")
    assert capsys.readouterr().err == ""


def test_one_setting_under_both_names_with_two_values_is_an_error_naming_both(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("eval:\n  engine: fast\ngeneration:\n  engine: hf\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "\n" not in msg and "'eval.engine' ('fast')" in msg and "'generation.engine' ('hf')" in msg and str(p) in msg, msg
    with pytest.raises(ConfigError, match=r"'eval.answer_mode' \('strict'\) and 'task.answer_mode' \('flexible'\)"):
        load_config(DEMO, ["eval.answer_mode=strict", "task.answer_mode=flexible"])
    # the same value under both names is one setting said twice; a later --set overrides the file under either name
    p.write_text("eval:\n  engine: fast\ngeneration:\n  engine: fast\n")
    assert load_config(p).generation.engine == "fast"
    assert load_config(p, ["generation.engine=hf"]).generation.engine == "hf"


def test_resolved_config_uses_the_new_sections(tmp_path):
    from looper_math.config import save_resolved, yaml_load

    tree = yaml_load(save_resolved(load_config(DEMO, ["eval.engine=fast"]), tmp_path).read_text())
    assert tree["generation"]["engine"] == "fast" and tree["task"]["answer_mode"] == "flexible"
    assert not {"engine", "fast_attn", "fast_fuse", "merge_adapter", "answer_mode", "protocol"} & tree["eval"].keys()


def _old_style_resolved(cfg, path):
    """``cfg``'s resolved config as the code before the move wrote it: the six keys inside ``eval``."""
    import yaml

    from looper_math.config import to_dict

    tree = to_dict(cfg)
    for old, new, _ in OLD_NAMES:
        section, key = new.split(".")
        tree["eval"][old.split(".")[1]] = tree[section].pop(key)
    del tree["generation"], tree["task"]
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@pytest.mark.parametrize("overrides", [[], [f"{new}={str(v).lower()}" for _, new, v in OLD_NAMES]])
def test_an_output_written_before_the_move_is_still_current(tmp_path, overrides):
    from looper_math.config import changed_settings
    from looper_math.phases import PHASES

    cfg = load_config(DEMO, overrides)
    resolved = _old_style_resolved(cfg, tmp_path / "resolved_config.yaml")
    for phase in PHASES:
        assert changed_settings(cfg, phase, resolved) == [], phase
    # a real change is still found, under the new name
    now = load_config(DEMO, [*overrides, "task.answer_mode=strict" if not overrides else "task.answer_mode=flexible"])
    assert [k for k, _, _ in changed_settings(now, "rollouts", resolved)] == ["task.answer_mode"]


# settings_fingerprint of every phase, computed by the code before the six keys moved out of `eval` (bf45e6b):
# the defaults, and all six set away from their defaults
FINGERPRINTS_BEFORE_THE_MOVE = {
    (): {"sft": "30195c8c2c42f8c8", "eval_base": "9203cd5211a06fcf", "eval_sft": "44d07c1446bbff27", "eval_dpo": "05b894c801248a88",
         "rollouts": "c350cca9d3bcb923", "rollouts_base": "1d4ebb1c7a7321c7", "prefs": "e6b3d19751ba10a8",
         "dpo": "a7f4678a6194228d", "grpo": "c1ebd711a5903765", "eval_grpo": "fcdc1c32b0d37b5c"},
    ("generation.engine=fast", "task.answer_mode=strict", "generation.fast_fuse=false", "task.protocol=platinum",
     "generation.merge_adapter=false"):
        {"sft": "30195c8c2c42f8c8", "eval_base": "8130aecb91d84ccc", "eval_sft": "7f4309b63a904c25", "eval_dpo": "9b636a67dbe58c7f",
         "rollouts": "d38a96fcb3596960", "rollouts_base": "2a6b921a352e2243", "prefs": "3a9c2932379e0081",
         "dpo": "5b611297bf7dc99c", "grpo": "4236071b47186f72", "eval_grpo": "1a3865cdf9108c9c"},
}


@pytest.mark.parametrize("overrides", list(FINGERPRINTS_BEFORE_THE_MOVE))
def test_fingerprints_are_those_of_the_same_settings_before_the_move(overrides):
    from looper_math.config import fingerprint

    cfg = load_config(None, list(overrides))
    assert {p: fingerprint(cfg, p) for p in FINGERPRINTS_BEFORE_THE_MOVE[overrides]} == FINGERPRINTS_BEFORE_THE_MOVE[overrides]


@pytest.mark.parametrize("key, pointer", [("grpo.k", "grpo.num_generations"), ("rollouts.num_generations", "rollouts.k")])
def test_a_group_size_under_the_other_phases_name_points_to_its_own(key, pointer):
    with pytest.raises(ConfigError) as e:
        load_config(DEMO, [f"{key}=4"])
    msg = str(e.value)
    assert "\n" not in msg and f"unknown config key '{key}'" in msg and f"'{pointer}'" in msg, msg
