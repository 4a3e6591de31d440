"""Feed it garbage: every bad input ends in one line ``error: ...`` naming the file/field, exit 2, and the
run directory byte for byte as it was (nothing written, nothing corrupted, no old output deleted).

Each case builds its garbage inside a fresh run dir (``smoke_cfg``), snapshots the whole run dir,
calls the real CLI in-process (typer's CliRunner, so the CLI's own error handling is what is tested),
and compares the snapshot afterwards.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from looper_math.cli import app
from looper_math.config import Config, to_dict


@dataclass
class Case:
    name: str
    setup: Callable[[Config, Path], list[str]]  # builds the garbage, returns the CLI argv
    expect: str  # must appear in the one-line error (names the file, line or field)


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def write_yaml(cfg: Config, tree: dict | None = None, name: str = "cfg.yaml") -> Path:
    path = Path(cfg.run_dir) / name
    path.write_text(yaml.safe_dump(tree if tree is not None else to_dict(cfg), sort_keys=False))
    return path


def edited(cfg: Config, **sections) -> dict:
    """The config as a dict with some section keys replaced: edited(cfg, data={"train": "x.jsonl"})."""
    tree = to_dict(cfg)
    for sec, vals in sections.items():
        if isinstance(vals, dict):
            tree[sec].update(vals)
        else:
            tree[sec] = vals
    return tree


GOOD = {"question": "Tom has 3 apples and buys 2 more. How many apples does he have?", "answer": "3+2=<<3+2=5>>5\n#### 5"}


def lines(path: Path, *rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------------------------- data files


def _train_file(*rows, name: str = "train.jsonl"):
    def setup(cfg: Config, d: Path) -> list[str]:
        f = lines(d / "data_in" / name, *rows)
        return ["sft", "--config", str(write_yaml(cfg, edited(cfg, data={"train": str(f)})))]
    return setup


def _test_file(*rows, name: str = "test.jsonl"):
    def setup(cfg: Config, d: Path) -> list[str]:
        f = lines(d / "data_in" / name, *rows)
        return ["eval", "--adapter", "none", "--config", str(write_yaml(cfg, edited(cfg, data={"test": str(f)})))]
    return setup


def _empty_train(cfg: Config, d: Path) -> list[str]:
    f = d / "data_in" / "train.jsonl"
    f.parent.mkdir(parents=True)
    f.write_text("")
    return ["sft", "--config", str(write_yaml(cfg, edited(cfg, data={"train": str(f)})))]


def _missing_train(cfg: Config, d: Path) -> list[str]:
    return ["sft", "--config", str(write_yaml(cfg, edited(cfg, data={"train": str(d / "nope" / "train.jsonl")})))]


# --------------------------------------------------------------------------------------------- config


def _yaml_text(text: str, cmd: str = "sft"):
    def setup(cfg: Config, d: Path) -> list[str]:
        p = d / "bad.yaml"
        p.write_text(text)
        return [cmd, "--config", str(p)]
    return setup


def _with_tree(cmd: list[str], **sections):
    def setup(cfg: Config, d: Path) -> list[str]:
        return [*cmd, "--config", str(write_yaml(cfg, edited(cfg, **sections)))]
    return setup


def _with_set(cmd: list[str], *sets: str):
    def setup(cfg: Config, d: Path) -> list[str]:
        return [*cmd, "--config", str(write_yaml(cfg)), *[a for s in sets for a in ("--set", s)]]
    return setup


def _missing_config(cfg: Config, d: Path) -> list[str]:
    return ["sft", "--config", str(d / "no_such.yaml")]


# --------------------------------------------------------------------------------------------- models / adapters


def _no_chat_template(cfg: Config, d: Path) -> list[str]:
    model = d / "model_no_template"
    shutil.copytree(d / "tiny_model", model)
    (model / "chat_template.jinja").unlink()
    tree = edited(cfg, model={"name_or_path": str(model), "prompt_format": "chat"})
    return ["eval", "--adapter", "none", "--config", str(write_yaml(cfg, tree))]


def _fake_adapter(d: Path, *, marker: str | None, weights: str = "adapter_model.safetensors") -> Path:
    a = d / "some_adapter"
    a.mkdir()
    (a / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "base_model_name_or_path": "x"}))
    (a / weights).write_bytes(b"\0" * 16)
    if marker is not None:
        (a / "looper_base_model.json").write_text(json.dumps({"base_model": marker}))
    return a


def _adapter_other_base(cfg: Config, d: Path) -> list[str]:
    a = _fake_adapter(d, marker="GAIR/Abel-7B-002")
    return ["eval", "--adapter", str(a), "--config", str(write_yaml(cfg))]


def _adapter_pickle_only(cfg: Config, d: Path) -> list[str]:
    a = _fake_adapter(d, marker=None, weights="adapter_model.bin")
    return ["eval", "--adapter", str(a), "--config", str(write_yaml(cfg))]


def _adapter_not_an_adapter(cfg: Config, d: Path) -> list[str]:
    (d / "empty_dir").mkdir()
    (d / "empty_dir" / "notes.txt").write_text("hello")
    return ["eval", "--adapter", str(d / "empty_dir"), "--config", str(write_yaml(cfg))]


def _adapter_wrong_shapes(cfg: Config, d: Path) -> list[str]:
    """A real LoRA adapter, made for a Llama of another width and carrying no base-model marker."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    other = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    peft = get_peft_model(other, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    peft.save_pretrained(d / "other_adapter", safe_serialization=True)
    return ["eval", "--adapter", str(d / "other_adapter"), "--config", str(write_yaml(cfg))]


# --------------------------------------------------------------------------------------------- pairs / rollouts


def _pairs(*rows):
    def setup(cfg: Config, d: Path) -> list[str]:
        lines(cfg.path(cfg.prefs.output), *rows)
        return ["dpo", "--config", str(write_yaml(cfg))]
    return setup


PAIR = {"prompt": "Question:\n1+1?\nAnswer:\n", "chosen": "1+1=2\n#### 2", "rejected": "1+1=3\n#### 3"}
ROW = {"question_id": "q1", "sample_idx": 0, "arm": "stepwise", "prompt": "p", "eval_prompt": "p", "full_text": "#### 2",
       "correct": True, "finished": True, "s_wm": 0.5, "reward": 1.2, "model": "tiny", "adapter": None}


def _rollouts_for_prefs(*rows, set: tuple[str, ...] = ()):
    def setup(cfg: Config, d: Path) -> list[str]:
        lines(cfg.path(cfg.rollouts.output), *rows)
        return ["prefs", "--config", str(write_yaml(cfg)), *[a for s in set for a in ("--set", s)]]
    return setup


def _rollouts_other_model(cfg: Config, d: Path) -> list[str]:
    out = cfg.path(cfg.rollouts.output)
    lines(out, {**ROW, "model": "GAIR/Abel-7B-002", "adapter": "/elsewhere/sft"})
    # the resolved config written by the run that made this file must survive the refused resume
    (out.parent / f"{out.stem}.resolved_config.yaml").write_text("model: {name_or_path: GAIR/Abel-7B-002}\n")
    return ["rollouts", "--resume", "--config", str(write_yaml(cfg)), "--set", "rollouts.adapter=none"]


def _rollouts_duplicate_keys(cfg: Config, d: Path) -> list[str]:
    lines(cfg.path(cfg.rollouts.output), ROW, ROW)
    return ["rollouts", "--resume", "--config", str(write_yaml(cfg)), "--set", "rollouts.adapter=none"]


def _eval_other_checkpoint(cfg: Config, d: Path) -> list[str]:
    out = cfg.path(cfg.eval.base_output)
    lines(out, {"question_id": "test-0", "question": "q", "gold": "1", "prediction": "#### 1", "extracted_strict": "1",
                "extracted_flexible": "1", "correct": True, "correct_strict": True, "correct_flexible": True,
                "cleaning_status": "n/a", "num_tokens": 3, "finished": True, "checkpoint": "/elsewhere/dpo_lora"})
    return ["eval", "--adapter", "none", "--resume", "--config", str(write_yaml(cfg))]


# --------------------------------------------------------------------------------------------- --overwrite must not
# delete the old output when the new run is refused


def _overwrite_with_bad_train_data(cfg: Config, d: Path) -> list[str]:
    old = cfg.path(cfg.sft.output_dir)
    old.mkdir(parents=True)
    (old / "adapter_model.safetensors").write_bytes(b"old adapter")
    (old / "train_summary.json").write_text("{}")
    f = lines(d / "data_in" / "train.jsonl", GOOD, '{"question": "broken",')
    return ["sft", "--overwrite", "--config", str(write_yaml(cfg, edited(cfg, data={"train": str(f)})))]


def _overwrite_with_bad_rollouts(cfg: Config, d: Path) -> list[str]:
    lines(cfg.path(cfg.prefs.output), PAIR)
    lines(cfg.path(cfg.rollouts.output), {**ROW, "reward": "high"})
    return ["prefs", "--overwrite", "--config", str(write_yaml(cfg))]


def _overwrite_with_bad_pairs(cfg: Config, d: Path) -> list[str]:
    old = cfg.path(cfg.dpo.output_dir)
    old.mkdir(parents=True)
    (old / "adapter_model.safetensors").write_bytes(b"old adapter")
    lines(cfg.path(cfg.prefs.output), {**PAIR, "rejected": PAIR["chosen"]})
    return ["dpo", "--overwrite", "--config", str(write_yaml(cfg))]


def _overwrite_eval_with_bad_test_data(cfg: Config, d: Path) -> list[str]:
    lines(cfg.path(cfg.eval.base_output), {"question_id": "old"})
    f = lines(d / "data_in" / "test.jsonl", {"question": "q", "answer": "#### seven"})
    return ["eval", "--adapter", "none", "--overwrite", "--config", str(write_yaml(cfg, edited(cfg, data={"test": str(f)})))]


CASES = [
    # data files
    Case("malformed_jsonl_line", _train_file(GOOD, '{"question": "x", "answer": '), "train.jsonl:2"),
    Case("json_line_not_object", _train_file(GOOD, "[1, 2, 3]"), "train.jsonl:2"),
    Case("missing_field", _train_file(GOOD, {"question": "How many?"}), "'answer'"),
    Case("mistyped_field", _train_file({"question": "How many?", "answer": 42}), "'answer'"),
    Case("empty_question", _train_file({"question": "  ", "answer": "#### 1"}), "'question'"),
    Case("non_numeric_gold", _train_file({"question": "How many?", "answer": "Lots.\n#### many"}), "'answer'"),
    Case("no_final_answer_line", _train_file({"question": "How many?", "answer": "It is five."}), "'answer'"),
    Case("mistyped_cleaning_status", _test_file({**GOOD, "cleaning_status": 3}), "'cleaning_status'"),
    Case("malformed_test_file", _test_file(GOOD, GOOD, "{oops"), "test.jsonl:3"),
    Case("empty_dataset", _empty_train, "empty data file"),
    Case("data_file_not_found", _missing_train, "data file not found"),
    Case("unsupported_data_type", _train_file(GOOD, name="train.csv"), "unsupported data file type"),
    # config
    Case("unknown_config_key_yaml", _with_tree(["sft"], sft={"lerning_rate": 1e-4}), "sft.lerning_rate"),
    Case("unknown_config_key_set", _with_set(["sft"], "sft.lerning_rate=1e-4"), "sft.lerning_rate"),
    Case("unknown_section_set", _with_set(["eval"], "evaluation.limit=3"), "evaluation"),
    Case("wrong_type_set", _with_set(["sft"], "sft.max_steps=abc"), "sft.max_steps"),
    Case("wrong_type_set_bool", _with_set(["sft"], "model.trust_remote_code=maybe"), "model.trust_remote_code"),
    Case("liger_without_gpu_or_package", _with_set(["sft"], "sft.use_liger_kernel=true"), "sft.use_liger_kernel"),
    Case("wrong_type_yaml", _with_tree(["sft"], lora={"r": "eight"}), "lora.r"),
    Case("section_not_mapping", _with_tree(["sft"], sft=3), "'sft'"),
    Case("set_not_key_value", _with_set(["sft"], "sft.max_steps"), "expected key=value"),
    Case("invalid_yaml", _yaml_text("sft: [unclosed\n"), "invalid YAML"),
    Case("invalid_yaml_line_column", _yaml_text("sft:\n  max_steps: 4\n\tlimit: 2\n"), "bad.yaml:3:1: invalid YAML"),
    Case("duplicate_key_yaml", _yaml_text("sft:\n  max_steps: 4\n  max_steps: 8\n"), "bad.yaml:3:3: invalid YAML: duplicate key 'max_steps' (first on line 2)"),
    Case("duplicate_section_yaml", _yaml_text("sft: {max_steps: 4}\ndpo: {beta: 0.1}\nsft: {limit: 2}\n"), "bad.yaml:3:1: invalid YAML: duplicate key 'sft' (first on line 1)"),
    Case("empty_config", _yaml_text(""), "bad.yaml: config file is empty"),
    Case("comments_only_config", _yaml_text("# sft:\n#   max_steps: 4\n"), "bad.yaml: config file is empty"),
    Case("yaml_top_level_list", _yaml_text("- a\n- b\n"), "top level must be a mapping"),
    Case("config_file_not_found", _missing_config, "config file not found"),
    Case("unknown_prompt_format", _with_set(["eval", "--adapter", "none"], "model.prompt_format=chatml"), "model.prompt_format"),
    Case("unknown_dtype", _with_set(["eval", "--adapter", "none"], "model.dtype=fp8"), "model.dtype"),
    Case("unknown_allocation", _with_set(["rollouts"], "regime_w.allocation=greedy"), "regime_w.allocation"),
    # checked at load time: no model is loaded, no phase starts (a typo must not cost a model load)
    Case("answer_mode_out_of_set_eval", _with_set(["eval", "--adapter", "none"], "task.answer_mode=loose"), "task.answer_mode': got 'loose'"),
    Case("answer_mode_out_of_set_run", _with_set(["run"], "task.answer_mode=loose"), "task.answer_mode': got 'loose'"),
    Case("engine_out_of_set", _with_set(["eval", "--adapter", "none"], "generation.engine=vllm"), "generation.engine': got 'vllm'"),
    Case("lora_rank_negative", _with_set(["sft"], "lora.r=-3"), "lora.r': got -3"),
    Case("device_out_of_set", _with_set(["eval", "--adapter", "none"], "device=gpu"), "device': got 'gpu'"),
    Case("unknown_pair_type", _rollouts_for_prefs(ROW, set=["prefs.pair_types=[style]"]), "prefs.pair_types"),
    Case("dev_split_without_dev", _with_set(["eval", "--adapter", "none"], "eval.split=dev", "data.dev_size=0"), "dev"),
    Case("bad_shard", _with_set(["eval", "--adapter", "none", "--shard", "2/2"]), "--shard"),
    Case("resume_and_overwrite", _with_set(["eval", "--adapter", "none", "--resume", "--overwrite"]), "--overwrite"),
    # models and adapters
    Case("model_path_missing", _with_set(["eval", "--adapter", "none"], "model.name_or_path=./no/such/model"), "model.name_or_path"),
    Case("no_chat_template", _no_chat_template, "chat template"),
    Case("adapter_other_base_model", _adapter_other_base, "trained on base model"),
    Case("adapter_wrong_shapes", _adapter_wrong_shapes, "does not fit base model 'tiny': size mismatch"),
    Case("adapter_pickle_only", _adapter_pickle_only, "only safetensors"),
    Case("adapter_folder_not_adapter", _adapter_not_an_adapter, "adapter_config.json"),
    # preference pairs
    Case("pairs_chosen_equals_rejected", _pairs(PAIR, {**PAIR, "rejected": PAIR["chosen"]}), "preferences.jsonl:2"),
    Case("pairs_missing_field", _pairs({k: v for k, v in PAIR.items() if k != "rejected"}), "'rejected'"),
    Case("pairs_mistyped_field", _pairs({**PAIR, "chosen": ["a"]}), "'chosen'"),
    Case("pairs_empty", _pairs(), "no preference pairs"),
    Case("pairs_missing_file", lambda cfg, d: ["dpo", "--config", str(write_yaml(cfg))], "preference pairs not found"),
    # rollouts
    Case("rollouts_mistyped_field", _rollouts_for_prefs(ROW, {**ROW, "sample_idx": 1, "correct": "yes"}), "'correct'"),
    Case("rollouts_missing_field", _rollouts_for_prefs({k: v for k, v in ROW.items() if k != "reward"}), "'reward'"),
    Case("rollouts_malformed_line", _rollouts_for_prefs(ROW, "not json"), "rollouts.jsonl:2"),
    Case("rollouts_missing_file", lambda cfg, d: ["prefs", "--config", str(write_yaml(cfg))], "rollouts file not found"),
    Case("rollouts_from_other_model", _rollouts_other_model, "GAIR/Abel-7B-002"),
    Case("rollouts_duplicate_keys", _rollouts_duplicate_keys, "duplicate key"),
    Case("eval_resume_other_checkpoint", _eval_other_checkpoint, "/elsewhere/dpo_lora"),
    # --overwrite with garbage keeps the old output
    Case("overwrite_sft_bad_data", _overwrite_with_bad_train_data, "train.jsonl:2"),
    Case("overwrite_prefs_bad_rollouts", _overwrite_with_bad_rollouts, "'reward'"),
    Case("overwrite_dpo_bad_pairs", _overwrite_with_bad_pairs, "chosen == rejected"),
    Case("overwrite_eval_bad_gold", _overwrite_eval_with_bad_test_data, "'answer'"),
]


def test_enough_distinct_cases():
    assert len({c.name for c in CASES}) == len(CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_one_line_error_nothing_written(case: Case, smoke_cfg):
    cfg = smoke_cfg()
    run_dir = Path(cfg.run_dir)
    argv = case.setup(cfg, run_dir)
    before = snapshot(run_dir)
    result = CliRunner().invoke(app, argv)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{case.name}: {type(result.exception).__name__} escaped: {result.exception}")
    assert result.exit_code == 2, f"{case.name}: exit {result.exit_code}\nstdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}"
    # stderr may also hold progress bars (transformers' "Loading weights"); the error is one line, the last
    err = [x for x in re.split(r"[\r\n]", result.stderr) if x.strip()]
    assert err and err[-1].startswith("error: "), f"{case.name}: no final error line: {result.stderr!r}"
    assert sum(x.startswith("error") for x in err) == 1, f"{case.name}: several error lines: {result.stderr!r}"
    assert case.expect in err[-1], f"{case.name}: {err[-1]!r} does not name {case.expect!r}"
    assert "Traceback" not in result.stdout + result.stderr
    assert snapshot(run_dir) == before, f"{case.name}: files were written, changed or deleted"
