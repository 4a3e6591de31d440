"""bench/learning.sh and bench/stage_lib.sh on CPU: a stage that fails exits non-zero with the step's first error line,
only a real deadline cut says "call it again", and what a clean clone lacks is named before any step."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and coreutils")


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "CFG", "M", "WHEELS")}
    env.update(PYTHONPATH=str(REPO / "src"), WHEELS="/nonexistent", M="/nonexistent", **extra)
    return env


def _config(tmp_path: Path, **data: str) -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("run_dir: runs/t\ndevice: cpu\nmodel:\n  name_or_path: tiny\ndata:\n"
                   + "".join(f"  {k}: {v}\n" for k, v in data.items())
                   + "sft:\n  data: rft\n  rft_rollouts: data/rollouts_base.jsonl\ngrpo:\n  learning_rate: 1.0e-4\n")
    return cfg


def test_learning_sh_names_missing_files_and_cuda_before_any_step(tmp_path):
    cfg = _config(tmp_path, train=".gsm8k/train.jsonl", test=".gsm8k/test.jsonl")
    cfg.write_text(cfg.read_text().replace("device: cpu", "device: cuda"))
    p = subprocess.run(["bash", str(REPO / "bench" / "learning.sh"), "seed1", "60"], cwd=tmp_path,
                       env=_env(CFG=str(cfg)), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    assert f"error: {cfg}: data.train: .gsm8k/train.jsonl: file not found (looper-math prepare gsm8k)" in p.stderr
    assert "=== " not in p.stdout, "a step started"
    import torch

    if not torch.cuda.is_available():
        assert "device: cuda, but torch" in p.stderr


def test_learning_sh_stage_that_fails_exits_1_with_the_real_error(tmp_path):
    """A broken data file: the SFT step fails; the stage says so with the step's `error:` line (OUT defaulted)."""
    (tmp_path / "bad.jsonl").write_text('{"question": "q"}\n')
    cfg = _config(tmp_path, train="bad.jsonl", test="bad.jsonl")
    p = subprocess.run(["bash", str(REPO / "bench" / "learning.sh"), "seed1", "200"], cwd=tmp_path,
                       env=_env(CFG=str(cfg)), capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stdout + p.stderr
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("stage seed1 failed after") and last.endswith("sft1 (rc=2): error: bad.jsonl:1: missing field 'answer'"), last
    assert "call it again" not in p.stdout
    assert "grpo_lr" not in p.stdout, "steps that need the failed SFT ran anyway"
    assert (tmp_path / "runs" / "learning" / "stageseed1.tgz").is_file()


def _stage(tmp_path: Path, body: str, deadline: int = 200) -> subprocess.CompletedProcess:
    """A stage script made of stage_lib's helpers: body runs between `source stage_lib.sh` and `pack`."""
    (tmp_path / "ok.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    cfg = _config(tmp_path, train="ok.jsonl", test="ok.jsonl")
    script = tmp_path / "stage.sh"
    script.write_text(f'set -uo pipefail\nSTAGE=t; DEADLINE={deadline}; OUT=out; CFG={cfg}; M=/nonexistent; WHEELS=/nonexistent\n'
                      f'source {REPO / "bench" / "stage_lib.sh"}\n{body}\npack\n')
    return subprocess.run(["bash", str(script)], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)


def test_stage_lib_reports_a_traceback_by_its_last_line(tmp_path):
    p = _stage(tmp_path, 'bg boom python3 -c "import sys; print(1); sys.stdout.flush(); raise RuntimeError(\'the real cause\')"\n'
                         'bg fine true; join\nstep python3 -c "raise SystemExit(\'error: later: not the first\')"')
    assert p.returncode == 1, p.stdout + p.stderr
    assert p.stdout.strip().splitlines()[-1].endswith("boom (rc=1): RuntimeError: the real cause"), p.stdout


def test_stage_lib_calls_only_a_timeout_a_cut(tmp_path):
    p = _stage(tmp_path, 'step bash -c "exit 124"\nstep false')   # timeout's status; a failure after a cut follows from it
    assert p.returncode == 3, p.stdout + p.stderr
    assert p.stdout.strip().splitlines()[-1].startswith("stage t cut by the time limit") and "call it again" in p.stdout
    p = _stage(tmp_path, "step true", deadline=30)   # no time left for a step: skipped, a cut too
    assert p.returncode == 3 and "skipped (deadline)" in p.stdout, p.stdout
    p = _stage(tmp_path, "step true; bg a true; join")
    assert p.returncode == 0 and p.stdout.strip().splitlines()[-1].startswith("stage t complete"), p.stdout + p.stderr
