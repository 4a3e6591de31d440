"""The README's commands against the configs they name: every file a `looper-math compare` line reads is written by a
command of the same code block (``run`` writes the eval outputs of the base model, SFT and the config's policy; ``eval``
its ``--output`` or the adapter's configured output; the original ``python -m src.eval...`` aliases their abel7b
outputs), and every path the alias block prints is an output of configs/abel7b.yaml."""

from __future__ import annotations

import re
import shlex

from conftest import REPO
from looper_math.config import load_config

README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
ALIAS_EVAL = {"src.eval.eval_abel_sft_platinum": "sft", "src.eval.eval_abel_coherence_platinum": "dpo"}  # cli.alias
ABEL = "configs/abel7b.yaml"


def _commands(block: str) -> list[list[str]]:
    return [t for t in (shlex.split(line, comments=True) for line in block.splitlines()) if t]


def _opt(tokens: list[str], *names: str) -> str | None:
    for i, t in enumerate(tokens[:-1]):
        if t in names:
            return tokens[i + 1]
    return None


def _eval_output(config: str, adapter: str) -> str:
    cfg = load_config(REPO / config)
    name = {"none": cfg.eval.base_output, "sft": cfg.eval.sft_output, "dpo": cfg.eval.dpo_output,
            "grpo": cfg.eval.grpo_output}[adapter]
    return str(cfg.path(name))


def _written(block: str) -> set[str]:
    """The eval files the commands of one block write."""
    out = set()
    for t in _commands(block):
        if t[:2] == ["looper-math", "run"]:
            config = _opt(t, "--config", "-c")
            policy = load_config(REPO / config).policy
            out |= {_eval_output(config, a) for a in ("none", "sft", policy)}
        elif t[:2] == ["looper-math", "eval"]:
            out.add(_opt(t, "--output") or _eval_output(_opt(t, "--config", "-c"), _opt(t, "--adapter") or "sft"))
        elif t[:2] == ["python", "-m"] and t[2] in ALIAS_EVAL:
            out.add(_eval_output(ABEL, ALIAS_EVAL[t[2]]))
    return out


def test_every_compared_file_is_written_by_its_block():
    compares = 0
    for block in BLOCKS:
        written = _written(block)
        for t in _commands(block):
            if t[:2] == ["looper-math", "compare"]:
                compares += 1
                for path in t[2:4]:
                    assert path in written, f"README compares {path}, which no command of its block writes ({sorted(written)})"
    assert compares >= 4, "the README's compare lines were not found"


def test_the_alias_block_prints_abel7b_output_paths():
    cfg = load_config(REPO / ABEL)
    outputs = {cfg.sft.output_dir, cfg.sft.rft_rollouts, cfg.rollouts.output, cfg.prefs.output, cfg.dpo.output_dir,
               cfg.eval.sft_output, cfg.eval.dpo_output}
    block = next(b for b in BLOCKS if "python -m src.baseline_sft.train_sft_abel" in b)
    printed = re.findall(r"(?:data|outputs|checkpoints)/[\w./]+", block)
    assert len(printed) >= 7
    for p in printed:
        assert p.rstrip("/") in outputs, f"README alias block prints {p}, not an output of {ABEL}"


def test_the_0p5b_recipe_block_prepares_what_its_config_reads():
    block = next(b for b in BLOCKS if "looper-math run --config configs/qwen05_gpu.yaml" in b)
    assert "looper-math prepare" in block
