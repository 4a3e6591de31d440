"""Shared fixtures: one tiny model per test session, and configs pointing at a temp run dir."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# the tiers that pyproject.toml's addopts (-m 'not gpu and not slow') leaves out, and how to run each
OFF_BY_DEFAULT = {"slow": "pytest -m slow (long CPU sweeps)", "gpu": "pytest -m gpu (on a GPU machine)"}


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say how many tests the default marker expression deselected and how to run them (pytest only prints
    'N deselected'); skip reasons are listed by -rs in addopts."""
    by_mark: dict[str, int] = {}
    for item in terminalreporter.stats.get("deselected", []):
        for mark in OFF_BY_DEFAULT:
            if item.get_closest_marker(mark) is not None and f"not {mark}" in (config.option.markexpr or ""):
                by_mark[mark] = by_mark.get(mark, 0) + 1
                break
    if by_mark:
        counts = ", ".join(f"{n} {m}" for m, n in by_mark.items())
        how = "; ".join(OFF_BY_DEFAULT[m] for m in by_mark)
        terminalreporter.write_line(f"deselected: {counts} (the default -m '{config.option.markexpr}' of pyproject.toml's "
                                    f"addopts leaves them out); run them with: {how}")


def gsm8k_dir() -> Path | None:
    """The local GSM8K copy (env LOOPER_GSM8K_DIR, else ../shared/data/gsm8k), or None."""
    d = Path(os.environ.get("LOOPER_GSM8K_DIR", REPO.parent / "shared" / "data" / "gsm8k"))
    return d if (d / "train.jsonl").is_file() and (d / "test.jsonl").is_file() else None


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Build the tiny smoke model once per session (it is briefly pretrained, ~1 min on 2 cores)."""
    from looper_math.smoke import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny_model")


def smoke_overrides(run_dir: Path) -> list[str]:
    """Small settings so every phase runs in seconds on the tiny model."""
    return [
        f"run_dir={run_dir}", "sft.max_steps=8", "sft.save_steps=4", "sft.logging_steps=1",
        "rollouts.limit=12", "rollouts.questions_per_round=6", "rollouts.max_new_tokens=48",
        "eval.limit=8", "eval.max_new_tokens=48", "dpo.max_steps=2", "dpo.save_steps=1", "dpo.logging_steps=1",
    ]


@pytest.fixture
def smoke_cfg(tmp_path, tiny_model_dir):
    """Demo config in a fresh run dir with the session's tiny model copied in."""
    from looper_math.config import load_config

    shutil.copytree(tiny_model_dir, tmp_path / "tiny_model")

    def make(*extra: str):
        return load_config(REPO / "configs" / "demo.yaml", smoke_overrides(tmp_path) + list(extra))

    return make
