"""Security: no code from model repos, data or model output runs; only safetensors weights are written;
data cannot steer output paths out of the run directory.

The calculator (the one place model output is *computed*) is fuzzed in tests/test_calculator.py:
``test_fuzz_only_calculator_error_escapes`` (1,000 hypothesis strings, default run) and
``test_fuzz_only_calculator_error_escapes_10k`` (10,000, ``-m slow``), plus its whitelist refusals and an
AST check that calculator.py never calls eval/exec/compile. Here: that the 10k fuzz stays 10k, that
escape payloads have no side effect, and that worst-case inputs finish under a time cap.
"""

from __future__ import annotations

import ast
import re
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO

from looper_math.calculator import CalculatorError, evaluate
from looper_math.config import Config, load_config

SRC = REPO / "src" / "looper_math"


# --------------------------------------------------------------------------------------------- calculator


def test_calculator_fuzz_is_10k():
    import test_calculator

    fuzz = test_calculator.test_fuzz_only_calculator_error_escapes_10k
    assert fuzz._hypothesis_internal_use_settings.max_examples >= 10_000
    assert any(m.name == "slow" for m in fuzz.pytestmark)


ESCAPES = [
    "__import__('pathlib').Path('{s}').touch()",
    "open('{s}', 'w').write('x')",
    "().__class__.__base__.__subclasses__()",
    "[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'Popen'][0](['touch', '{s}'])",
    "(lambda: __import__('os').system('touch {s}'))()",
    "exec(\"open('{s}','w')\")",
    "1+1; open('{s}', 'w')",
    "f\"{{open('{s}','w')}}\"",
    "(x := open('{s}', 'w'))",
    "1 if open('{s}','w') else 2",
    "2**8 + len(open('{s}','w').name)",
]


@pytest.mark.parametrize("payload", ESCAPES)
def test_escape_payloads_have_no_side_effect(payload, tmp_path):
    sentinel = tmp_path / "pwned"
    with pytest.raises(CalculatorError):
        evaluate(payload.format(s=sentinel))
    assert not sentinel.exists()


WORST_CASES = ["9**9**9**9", "(" * 100 + "9**99" + ")" * 100, "1" * 100_000, "9" * 199, "((" * 5000 + "1",
               "-" * 199 + "1", "2**100*2**100*2**100*2**100", "1e308*1e308*1e308", "99**99**99", "1/3" * 66,
               "0" * 10**6 + "1", "(1+" * 5000 + "1" + ")" * 5000]


@pytest.mark.parametrize("expr", WORST_CASES, ids=range(len(WORST_CASES)))
def test_calculator_time_cap(expr):
    t0 = time.perf_counter()
    try:
        evaluate(expr)
    except CalculatorError:
        pass
    assert time.perf_counter() - t0 < 0.05


# --------------------------------------------------------------------------------------------- trust_remote_code


def test_trust_remote_code_off_in_defaults_and_shipped_configs():
    assert Config().model.trust_remote_code is False
    configs = sorted((REPO / "configs").glob("*.yaml")) + sorted((SRC / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        assert load_config(path).model.trust_remote_code is False, path


def test_no_hardcoded_trust_remote_code_true():
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"trust_remote_code\s*=\s*True", text), path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                # always forwarded from the config, never a literal
                assert not isinstance(node.value, ast.Constant), f"{path}:{node.lineno}"


@pytest.mark.parametrize("setting", [None, "false", "true"])
def test_loaders_pass_trust_remote_code_from_config(setting, smoke_cfg, monkeypatch):
    import transformers

    from looper_math import modeling

    seen = []

    class Stop(Exception):
        pass

    def capture(*args, **kwargs):
        seen.append(kwargs["trust_remote_code"])
        raise Stop

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", capture)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", capture)
    extra = [] if setting is None else [f"model.trust_remote_code={setting}"]
    cfg = smoke_cfg(*extra)
    for load in (modeling.load_tokenizer, modeling.load_model):
        with pytest.raises(Stop):
            load(cfg)
    assert seen == [setting == "true"] * 2


# --------------------------------------------------------------------------------------------- safetensors only

WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".safetensors")
TRAINER_STATE_FILES = {"optimizer.pt", "scheduler.pt", "rng_state.pth"}  # transformers' resume state


def test_training_writes_safetensors_only(smoke_cfg):
    """Every weight file of a trained run is safetensors; the final adapter folder holds no pickle at
    all; in Trainer checkpoints the only torch-format files are the optimizer/scheduler/RNG state, and
    they load with ``torch.load(weights_only=True)`` plus transformers' numpy allowlist, exactly as
    the Trainer reads them on resume (no code runs when they are read back)."""
    from looper_math.sft import train_sft

    cfg = smoke_cfg("sft.max_steps=2", "sft.save_steps=1")
    train_sft(cfg)
    out = cfg.path(cfg.sft.output_dir)
    files = [p for p in Path(cfg.run_dir).rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    pickled = [p for p in files if p.suffix != ".safetensors"]
    assert (out / "adapter_model.safetensors").exists()
    assert not [p for p in pickled if p.parent == out], "pickle in the final adapter folder"
    assert {p.name for p in pickled} <= TRAINER_STATE_FILES, sorted(p.name for p in pickled)
    assert all(p.parent.parent == out / "trainer" for p in pickled)
    from transformers.trainer_pt_utils import safe_globals  # the numpy allowlist transformers itself uses on resume

    with safe_globals():
        for p in pickled:
            torch.load(p, weights_only=True)
    ckpts = sorted((out / "trainer").glob("checkpoint-*"))
    assert ckpts and all((c / "adapter_model.safetensors").exists() for c in ckpts)
    assert not list(Path(cfg.run_dir).rglob("training_args.bin"))


def test_no_pickle_writers_in_source():
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        assert "torch.save(" not in text and "import pickle" not in text, path
        assert "safe_serialization=False" not in text, path


# --------------------------------------------------------------------------------------------- paths


def test_question_ids_from_data_never_reach_paths(tmp_path):
    """A data row's own 'question_id' is used only when it is a plain token (benchmarks/svamp's
    'svamp-chal-1'); a path-like one is refused with file:line. Rows without one get a hash id."""
    import json

    from looper_math.data import load_problems
    from looper_math.runio import DataError

    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps({"question": "1+1?", "answer": "#### 2", "question_id": "../../../etc/passwd"}) + "\n")
    with pytest.raises(DataError, match=r"t\.jsonl:1: field 'question_id' must be a string of letters"):
        load_problems(str(f), split="test")
    f.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    (p,) = load_problems(str(f), split="test")
    assert re.fullmatch(r"test-[0-9a-f]{12}", p.question_id)


@pytest.mark.parametrize("adapter", ["../../../../tmp/evil", "/abs/elsewhere/evil", "evil/..", "a/../../.."])
def test_eval_default_output_stays_in_run_dir(adapter, tmp_path):
    from looper_math.evaluate import default_output, summary_path

    cfg = Config(run_dir=str(tmp_path))
    out = default_output(cfg, adapter)
    for p in (out, summary_path(out)):
        assert p.resolve().is_relative_to(tmp_path.resolve()), p
