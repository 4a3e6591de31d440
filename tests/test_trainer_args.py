"""Trainer settings: sft/dpo/grpo.trainer_args pass through to TRL's own config classes (checked at load), and
sft/dpo.report_to sends the metrics to TensorBoard (event files actually written, on CPU)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from looper_math.config import TRAINER_ARGS_OWNED, ConfigError, load_config, phase_settings

SRC = Path(__file__).resolve().parents[1] / "src" / "looper_math"


@pytest.mark.parametrize("section, module, cls", [("sft", "sft.py", "SFTConfig"), ("dpo", "dpo.py", "DPOConfig"),
                                                  ("grpo", "grpo.py", "GRPOConfig")])
def test_owned_keys_are_the_arguments_the_phase_sets(section, module, cls):
    calls = [n for n in ast.walk(ast.parse((SRC / module).read_text()))
             if isinstance(n, ast.Call) and getattr(n.func, "id", None) == cls]
    assert len(calls) == 1
    assert {k.arg for k in calls[0].keywords if k.arg} == TRAINER_ARGS_OWNED[section]
    assert any(k.arg is None for k in calls[0].keywords)  # the **trainer_args pass-through


def test_trainer_args_are_checked_against_trl_when_the_config_loads():
    cfg = load_config(None, ["sft.trainer_args={optim: adamw_torch, torch_empty_cache_steps: 10}", "dpo.trainer_args={label_smoothing: 0.1}"])
    assert cfg.sft.trainer_args == {"optim": "adamw_torch", "torch_empty_cache_steps": 10}
    with pytest.raises(ConfigError, match=r"'sft.trainer_args.optimizer': not an argument of TRL's SFTConfig"):
        load_config(None, ["sft.trainer_args={optimizer: adamw_torch}"])
    with pytest.raises(ConfigError, match=r"'dpo.trainer_args.beta': set by looper-math"):
        load_config(None, ["dpo.trainer_args={beta: 0.3}"])
    assert load_config(None, ["grpo.trainer_args={loss_type: dr_grpo}"]).grpo.trainer_args == {"loss_type": "dr_grpo"}
    with pytest.raises(ConfigError, match=r"'grpo.trainer_args.num_generations': set by looper-math"):
        load_config(None, ["grpo.trainer_args={num_generations: 4}"])
    with pytest.raises(ConfigError, match=r"sft.trainer_args"):
        load_config(None, ["sft.trainer_args=[optim]"])
    with pytest.raises(ConfigError, match=r"'sft.report_to': got 'tensorbored'"):
        load_config(None, ["sft.report_to=tensorbored"])


def test_trainer_args_are_settings_and_report_to_is_not():
    a, b = load_config(None), load_config(None, ["sft.trainer_args={optim: adamw_torch}", "sft.report_to=tensorboard"])
    diff = {k for k in phase_settings(a, "sft").keys() | phase_settings(b, "sft").keys()
            if phase_settings(a, "sft").get(k) != phase_settings(b, "sft").get(k)}
    assert diff == {"sft.trainer_args.optim"}


def test_sft_report_to_tensorboard_writes_event_files(smoke_cfg):
    pytest.importorskip("tensorboard", reason="tensorboard not installed (pip install -e '.[dev]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from looper_math.sft import train_sft

    cfg = smoke_cfg("sft.max_steps=3", "sft.logging_steps=1", "sft.report_to=tensorboard",
                    "sft.trainer_args={optim: adamw_torch, logging_first_step: true}")
    train_sft(cfg)
    events = list((Path(cfg.run_dir) / cfg.sft.output_dir / "trainer" / "runs").glob("*/events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    losses = acc.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2, 3] and all(e.value > 0 for e in losses)
