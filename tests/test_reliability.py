"""Kill it anywhere, lose nothing: SIGKILL each long phase in a subprocess, resume, compare.

What is proven here (tiny model, CPU, fp32):
- rollouts and eval: after ``kill -9`` and ``--resume`` every key is present exactly once, every line
  parses (a torn tail is cut), the rows already on disk are kept byte for byte (only missing rows are
  generated), and the finished file equals an uninterrupted run row for row;
- SFT and DPO: ``--resume`` continues from the newest complete checkpoint and the per-step losses of the
  killed+resumed run equal those of an uninterrupted run (tolerance 1e-5);
- atomic outputs: an OSError injected while a summary, a Trainer checkpoint or the final adapter is
  written leaves the previous file / checkpoint usable, and resume finishes the job;
- no silent overwrite: an existing output needs --resume or --overwrite (the message says which);
- NaN guard: a non-finite loss stops training with a one-line message and no adapter is saved.

The default run keeps one representative kill per phase; the random-point sweeps (several kills per
phase, some runs killed twice) are ``@pytest.mark.slow``.
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from conftest import REPO, smoke_overrides

from looper_math.config import Config, load_config, to_dict

LOSS_TOL = 1e-5
ROLLOUT_SET = ("rollouts.adapter=none", "rollouts.limit=8", "rollouts.questions_per_round=2", "rollouts.k=4",
               "rollouts.max_new_tokens=32")
EVAL_SET = ("eval.limit=12", "eval.batch_size=1", "eval.max_new_tokens=32")  # chunks of 4 questions per write
SFT_SET = ("sft.max_steps=4", "sft.save_steps=2", "sft.logging_steps=1")
DPO_SET = ("dpo.max_steps=4", "dpo.save_steps=2", "dpo.logging_steps=1", "dpo.batch_size=2")
ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


# --------------------------------------------------------------------------------------------- helpers


def write_config(cfg: Config, name: str = "cfg.yaml") -> Path:
    path = Path(cfg.run_dir) / name
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


def cli(command: str, cfg_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "looper_math.cli", command, "--config", str(cfg_path), *args]


def run_cli(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=REPO)
    assert r.returncode == 0, f"{' '.join(cmd[3:])} failed ({r.returncode}):\n{r.stderr[-3000:]}"
    return r


def kill_when(cmd: list[str], ready: Callable[[], bool], log: Path, timeout: float = 300) -> bool:
    """Start cmd; SIGKILL it as soon as ready() holds. True if it was killed, False if it ended first."""
    with open(log, "ab") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=ENV, cwd=REPO)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                if ready():
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    return True
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{cmd} did not reach its kill point in {timeout}s")
                time.sleep(0.01)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, f"{cmd} failed before its kill point, see {log}:\n{log.read_text()[-3000:]}"
    return False


def after(seconds: float) -> Callable[[], bool]:
    t0 = time.monotonic()
    return lambda: time.monotonic() - t0 >= seconds


def complete_lines(path: Path) -> bytes:
    """The complete lines of a file (what a resume must keep byte for byte)."""
    data = path.read_bytes() if path.exists() else b""
    return data[: data.rfind(b"\n") + 1]


def n_lines(path: Path) -> int:
    return complete_lines(path).count(b"\n")


def rows_by_key(path: Path, key: tuple[str, ...]) -> dict[tuple, dict]:
    data = path.read_bytes()
    assert data.endswith(b"\n"), f"{path}: torn last line"
    rows = [json.loads(line) for line in data.splitlines()]  # raises on any torn / corrupt line
    out = {tuple(r[k] for k in key): r for r in rows}
    assert len(out) == len(rows), f"{path}: duplicate keys"
    return out


def assert_exactly_once(path: Path, key: tuple[str, ...], kept: bytes, reference: dict[tuple, dict]) -> int:
    """Rows already on disk before the resume are a byte prefix; every key once; rows == reference.
    Returns the number of rows lost (always 0 when the assertions pass)."""
    assert path.read_bytes().startswith(kept), "resume rewrote rows that were already on disk"
    got = rows_by_key(path, key)
    lost = set(reference) - set(got)
    assert not lost, f"{len(lost)} rows lost: {sorted(lost)[:5]}"
    assert set(got) == set(reference), f"unexpected keys {sorted(set(got) - set(reference))[:5]}"
    for k, row in got.items():
        assert row == reference[k], f"row {k} differs from the uninterrupted run"
    return len(lost)


def step_losses(out_dir: Path) -> list[tuple[int, float]]:
    return [tuple(x) for x in json.loads((out_dir / "train_summary.json").read_text())["losses"]]


def assert_losses_match(got: list, ref: list) -> None:
    assert [s for s, _ in got] == [s for s, _ in ref], (got, ref)
    for (s, a), (_, b) in zip(got, ref):
        assert math.isfinite(a) and abs(a - b) <= LOSS_TOL, f"step {s}: loss {a} after resume vs {b} uninterrupted"


def checkpoint_ready(trainer_dir: Path, step: int) -> Callable[[], bool]:
    """True once checkpoint-<step> is complete (by the same rule resume uses)."""
    from looper_math.train_common import last_checkpoint

    return lambda: last_checkpoint(trainer_dir) == str(trainer_dir / f"checkpoint-{step}")


def make_cfg(run_dir: Path, tiny_model_dir: Path, *extra: str) -> Config:
    """Like the smoke_cfg fixture, for module-scoped fixtures (own run dir, tiny model copied in)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "tiny_model").exists():
        shutil.copytree(tiny_model_dir, run_dir / "tiny_model")
    return load_config(REPO / "configs" / "demo.yaml", smoke_overrides(run_dir) + list(extra))


def write_pairs(path: Path, n: int = 8) -> Path:
    """Plain-format preference pairs built from built-in problems (right answer vs wrong answer)."""
    from looper_math.data import builtin_problems
    from looper_math.prompts import ABEL_TEMPLATE, sft_target

    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for p in builtin_problems(n, seed=7, split="pairs"):
        good = sft_target(p.answer)
        bad = good.rsplit("#### ", 1)[0] + f"#### {int(float(p.gold)) + 3}"
        rows.append({"prompt": ABEL_TEMPLATE.format(question=p.question), "chosen": good, "rejected": bad,
                     "question_id": p.question_id, "pair_type": "correctness"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------------------------- references


@pytest.fixture(scope="module")
def sft_reference(tmp_path_factory, tiny_model_dir):
    """Losses of an uninterrupted SFT run (subprocess, same config as the killed runs)."""
    cfg = make_cfg(tmp_path_factory.mktemp("sft_ref"), tiny_model_dir, *SFT_SET)
    run_cli(cli("sft", write_config(cfg)))
    return step_losses(cfg.path(cfg.sft.output_dir))


@pytest.fixture(scope="module")
def dpo_setup(tmp_path_factory, tiny_model_dir):
    """An SFT adapter, a pairs file and the losses of an uninterrupted DPO run from them."""
    from looper_math.sft import train_sft

    run_dir = tmp_path_factory.mktemp("dpo_ref")
    cfg = make_cfg(run_dir, tiny_model_dir, "sft.max_steps=2", "sft.save_steps=100", *DPO_SET)
    train_sft(cfg)
    write_pairs(cfg.path(cfg.prefs.output))
    run_cli(cli("dpo", write_config(cfg)))
    return run_dir, step_losses(cfg.path(cfg.dpo.output_dir))


def dpo_cfg(dpo_setup, tmp_path: Path, tiny_model_dir: Path, *extra: str) -> Config:
    """A fresh run dir holding a copy of the reference SFT adapter and pairs."""
    src_dir, _ = dpo_setup
    cfg = make_cfg(tmp_path / "run", tiny_model_dir, "sft.max_steps=2", "sft.save_steps=100", *DPO_SET, *extra)
    for rel in (cfg.sft.output_dir, cfg.prefs.output):
        src, dst = Path(src_dir) / rel, cfg.path(rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return cfg


@pytest.fixture(scope="module")
def rollouts_reference(tmp_path_factory, tiny_model_dir):
    from looper_math.rollouts import KEY

    cfg = make_cfg(tmp_path_factory.mktemp("ro_ref"), tiny_model_dir, *ROLLOUT_SET)
    run_cli(cli("rollouts", write_config(cfg)))
    return rows_by_key(cfg.path(cfg.rollouts.output), KEY)


@pytest.fixture(scope="module")
def eval_reference(tmp_path_factory, tiny_model_dir):
    cfg = make_cfg(tmp_path_factory.mktemp("ev_ref"), tiny_model_dir, *EVAL_SET)
    out = Path(cfg.run_dir) / "ref_eval.jsonl"
    run_cli(cli("eval", write_config(cfg), "--adapter", "none", "--output", str(out)))
    return rows_by_key(out, ("question_id",))


# --------------------------------------------------------------------------------------------- rollouts / eval


def test_rollouts_kill_resume_exactly_once(smoke_cfg, rollouts_reference):
    from looper_math.rollouts import KEY

    cfg = smoke_cfg(*ROLLOUT_SET)
    cfg_path, out = write_config(cfg), cfg.path(cfg.rollouts.output)
    total = len(rollouts_reference)
    # kill once the first rounds are on disk but before the last one
    killed = kill_when(cli("rollouts", cfg_path), lambda: n_lines(out) >= total // 4, Path(cfg.run_dir) / "kill.log")
    assert killed
    kept = complete_lines(out)
    assert 0 < kept.count(b"\n") < total
    # simulate a writer killed in the middle of a line (power loss / full disk): resume must cut it off
    with open(out, "ab") as f:
        f.write(b'{"question_id": "torn", "sample_idx": 0, "full_te')
    r = run_cli(cli("rollouts", cfg_path, "--resume"))
    assert "dropped a torn last line" in r.stdout
    assert_exactly_once(out, KEY, kept, rollouts_reference)
    # a second resume of a complete file generates nothing and changes nothing
    before = out.read_bytes()
    r = run_cli(cli("rollouts", cfg_path, "--resume"))
    assert "0 questions to go" in r.stdout and out.read_bytes() == before


def test_rollouts_streamed_by_the_fast_engine_kill_resume_exactly_once(tmp_path, tiny_model_dir):
    """The fast engine takes every round in one stream and writes rows as questions finish: a kill still loses
    only unwritten rows, and the resume's rows equal an uninterrupted run's (no bandit: every sample under the
    evaluation prompt, so no allocation depends on when a round was asked for)."""
    from looper_math.rollouts import KEY

    settings = (*ROLLOUT_SET, "generation.engine=fast", "rollouts.eval_prompt_share=1.0", "rollouts.batch_size=3")
    ref = make_cfg(tmp_path / "ref", tiny_model_dir, *settings)
    run_cli(cli("rollouts", write_config(ref)))
    reference = rows_by_key(ref.path(ref.rollouts.output), KEY)
    cfg = make_cfg(tmp_path / "killed", tiny_model_dir, *settings)
    cfg_path, out = write_config(cfg), cfg.path(cfg.rollouts.output)
    assert kill_when(cli("rollouts", cfg_path), lambda: n_lines(out) >= 4, Path(cfg.run_dir) / "kill.log")
    kept = complete_lines(out)
    assert 0 < kept.count(b"\n") < len(reference)
    run_cli(cli("rollouts", cfg_path, "--resume"))
    assert_exactly_once(out, KEY, kept, reference)


def test_eval_kill_resume_exactly_once(smoke_cfg, eval_reference):
    cfg = smoke_cfg(*EVAL_SET)
    cfg_path, out = write_config(cfg), Path(cfg.run_dir) / "outputs" / "killed_eval.jsonl"
    cmd = cli("eval", cfg_path, "--adapter", "none", "--output", str(out))
    assert kill_when(cmd, lambda: n_lines(out) >= 4, Path(cfg.run_dir) / "kill.log")
    kept = complete_lines(out)
    assert 0 < kept.count(b"\n") < len(eval_reference)
    with open(out, "ab") as f:
        f.write(b'{"question_id": "test-')
    r = run_cli(cmd + ["--resume"])
    assert "dropped a torn last line" in r.stdout
    assert_exactly_once(out, ("question_id",), kept, eval_reference)
    summary = json.loads(out.with_name(out.stem + ".summary.json").read_text())
    assert summary["n"] == len(eval_reference)


# --------------------------------------------------------------------------------------------- SFT / DPO


def test_sft_kill_resume_same_losses(smoke_cfg, sft_reference):
    cfg = smoke_cfg(*SFT_SET)
    cfg_path, out_dir = write_config(cfg), cfg.path(cfg.sft.output_dir)
    assert kill_when(cli("sft", cfg_path), checkpoint_ready(out_dir / "trainer", 2), Path(cfg.run_dir) / "kill.log")
    assert not (out_dir / "train_summary.json").exists()
    r = run_cli(cli("sft", cfg_path, "--resume"))
    assert "resuming from" in r.stdout and "checkpoint-2" in r.stdout
    assert_losses_match(step_losses(out_dir), sft_reference)
    assert len(sft_reference) == 4


@pytest.mark.parametrize("step", [2, 4], ids=["mid-run", "after-last-checkpoint"])
def test_dpo_kill_resume_same_losses(step, dpo_setup, tmp_path, tiny_model_dir):
    """Killed after checkpoint-2 (mid-run) or after checkpoint-4 (the last step, before the final save)."""
    cfg = dpo_cfg(dpo_setup, tmp_path, tiny_model_dir)
    cfg_path, out_dir = write_config(cfg), cfg.path(cfg.dpo.output_dir)
    assert kill_when(cli("dpo", cfg_path), checkpoint_ready(out_dir / "trainer", step), tmp_path / "kill.log")
    assert not (out_dir / "train_summary.json").exists()
    r = run_cli(cli("dpo", cfg_path, "--resume"))
    assert "resuming from" in r.stdout and f"checkpoint-{step}" in r.stdout
    ref = dpo_setup[1]
    assert len(ref) == 4
    assert_losses_match(step_losses(out_dir), ref)


# --------------------------------------------------------------------------------------------- random sweeps (slow)

SWEEP_SEED = 20240611
TRIALS_PER_PHASE = 6


def _timed(cmd: list[str]) -> float:
    t0 = time.monotonic()
    run_cli(cmd)
    return time.monotonic() - t0


def _state(out: Path) -> str:
    """What a kill left behind: rows on disk, or the newest complete checkpoint (+ whether final)."""
    from looper_math.train_common import is_complete, last_checkpoint

    if not out.exists():
        return "nothing"
    if out.is_file():
        return f"{n_lines(out)} rows"
    ckpt = last_checkpoint(out / "trainer")
    return (Path(ckpt).name if ckpt else "no checkpoint") + (" +final" if is_complete(out) else "")


def _kill_point(rng: random.Random, span: float, progress: Callable[[], int], marks: list[int]):
    """A seeded random kill point: a quarter at a random time of the whole run (start-up included), the
    rest a random delay after the run reaches a random progress mark (rows on disk, or logged steps),
    so kills land around writes, checkpoint saves and the final save."""
    if rng.random() < 0.25:
        t = rng.uniform(0.02, 1.0) * span
        return after(t), f"t={t:.2f}s"
    k, extra = rng.choice(marks), rng.uniform(0.0, 0.3)
    reached: list[float] = []

    def ready() -> bool:
        if not reached:
            if progress() >= k:
                reached.append(time.monotonic())
            return False
        return time.monotonic() - reached[0] >= extra

    return ready, f"{k}+{extra:.2f}s"


def _sweep(phase: str, tmp_path: Path, make: Callable[[Path], Config], cmd_of: Callable[[Config, Path], list[str]],
           out_of: Callable[[Config], Path], progress_of: Callable[[Path, Path], int], marks: list[int],
           check: Callable[[Config, Path, bytes], None]) -> None:
    """Kill `phase` at seeded random points (odd trials kill the resume too), then resume and check."""
    rng = random.Random(f"{SWEEP_SEED}-{phase}")
    timing = make(tmp_path / "timing")  # a full uninterrupted run sets the time scale
    span = _timed(cmd_of(timing, write_config(timing)))
    tried, landed, points = 0, 0, []
    for trial in range(TRIALS_PER_PHASE):
        cfg = make(tmp_path / f"t{trial}")
        cfg_path, out, kept = write_config(cfg), out_of(cfg), b""
        for j in range(1 + trial % 2):
            log = tmp_path / f"t{trial}-{j}.log"
            ready, where = _kill_point(rng, span, lambda: progress_of(out, log), marks)
            tried += 1
            killed = kill_when(cmd_of(cfg, cfg_path), ready, log)
            landed += killed
            points.append(f"{where} -> {_state(out) if killed else 'finished'}")
            if out.is_file():  # rows on disk are never rewritten, even across several kills
                assert out.read_bytes().startswith(kept)
                kept = complete_lines(out)
        run_cli(cmd_of(cfg, cfg_path))
        check(cfg, out, kept)
    print(f"\n{phase}: {tried} kill points tried, {landed} landed (full run {span:.1f}s): {points}")
    assert landed >= tried // 2


def _rows(out: Path, log: Path) -> int:
    return n_lines(out)


def _logged_steps(out: Path, log: Path) -> int:
    return log.read_text(errors="replace").count("'loss':") if log.exists() else 0


@pytest.mark.slow
def test_sweep_rollouts_random_kills(tmp_path, tiny_model_dir, rollouts_reference):
    from looper_math.rollouts import KEY

    _sweep("rollouts", tmp_path, lambda d: make_cfg(d, tiny_model_dir, *ROLLOUT_SET),
           lambda cfg, p: cli("rollouts", p, "--resume"), lambda cfg: cfg.path(cfg.rollouts.output),
           _rows, [0, 8, 16, 24, 32], lambda cfg, out, kept: assert_exactly_once(out, KEY, kept, rollouts_reference))


@pytest.mark.slow
def test_sweep_eval_random_kills(tmp_path, tiny_model_dir, eval_reference):
    _sweep("eval", tmp_path, lambda d: make_cfg(d, tiny_model_dir, *EVAL_SET),
           lambda cfg, p: cli("eval", p, "--adapter", "none", "--resume"), lambda cfg: cfg.path(cfg.eval.base_output),
           _rows, [0, 4, 8, 12], lambda cfg, out, kept: assert_exactly_once(out, ("question_id",), kept, eval_reference))


@pytest.mark.slow
def test_sweep_sft_random_kills(tmp_path, tiny_model_dir, sft_reference):
    def check(cfg, out, kept):
        assert_losses_match(step_losses(cfg.path(cfg.sft.output_dir)), sft_reference)
        _assert_adapter_loads(cfg, "sft")

    _sweep("sft", tmp_path, lambda d: make_cfg(d, tiny_model_dir, *SFT_SET), lambda cfg, p: cli("sft", p, "--resume"),
           lambda cfg: cfg.path(cfg.sft.output_dir), _logged_steps, [0, 1, 2, 3, 4], check)


@pytest.mark.slow
def test_sweep_dpo_random_kills(tmp_path, tiny_model_dir, dpo_setup):
    def check(cfg, out, kept):
        assert_losses_match(step_losses(cfg.path(cfg.dpo.output_dir)), dpo_setup[1])
        _assert_adapter_loads(cfg, "dpo")

    _sweep("dpo", tmp_path, lambda d: dpo_cfg(dpo_setup, d, tiny_model_dir), lambda cfg, p: cli("dpo", p, "--resume"),
           lambda cfg: cfg.path(cfg.dpo.output_dir), _logged_steps, [0, 1, 2, 3, 4], check)


def _assert_adapter_loads(cfg: Config, which: str) -> None:
    from looper_math.modeling import load_model_with_adapter

    model, path = load_model_with_adapter(cfg, which, "cpu")
    assert path is not None
    for name, p in model.named_parameters():
        assert bool(p.isfinite().all()), name


# --------------------------------------------------------------------------------------------- atomic outputs


class _HalfThenDiskFull:
    """Stands in for the file object of a write that hits a full disk halfway through."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, text):
        self.f.write(text[: len(text) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_atomic_write_failure_keeps_previous_file(tmp_path, monkeypatch, where):
    from looper_math.runio import atomic_write_json

    target = tmp_path / "summary.json"
    atomic_write_json(target, {"version": 1})
    before = target.read_bytes()
    if where == "write":
        real_fdopen = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _HalfThenDiskFull(real_fdopen(fd, *a, **k)))
    else:
        def no_space(fd):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        atomic_write_json(target, {"version": 2, "pad": "x" * 10_000})
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"], "temp file left behind"


def test_torn_or_missing_trainer_state_is_not_a_checkpoint(tmp_path):
    from looper_math.train_common import last_checkpoint

    trainer = tmp_path / "trainer"
    for step, state in [(2, '{"global_step": 2}'), (4, '{"global_step": 4, "log_hist'), (6, None), (8, '{"global_step": 6}')]:
        d = trainer / f"checkpoint-{step}"
        d.mkdir(parents=True)
        (d / "adapter_model.safetensors").write_bytes(b"x")
        if state is not None:
            (d / "trainer_state.json").write_text(state)
    (trainer / "checkpoint-x").mkdir()
    assert last_checkpoint(trainer) == str(trainer / "checkpoint-2")
    assert last_checkpoint(tmp_path / "nothing") is None


def test_checkpoint_save_failure_keeps_previous_checkpoint(smoke_cfg, monkeypatch, sft_reference):
    """A full disk while the Trainer writes checkpoint-4 leaves checkpoint-2 as the resume point."""
    import torch

    from looper_math.sft import train_sft
    from looper_math.train_common import is_complete, last_checkpoint

    cfg = smoke_cfg(*SFT_SET)
    out = cfg.path(cfg.sft.output_dir)
    real_save = torch.save

    def save(obj, f, *a, **k):
        if str(f).endswith(os.path.join("checkpoint-4", "optimizer.pt")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError, match="No space left"):
        train_sft(cfg)
    monkeypatch.undo()
    assert (out / "trainer" / "checkpoint-4").is_dir()  # the partial checkpoint is there ...
    assert last_checkpoint(out / "trainer") == str(out / "trainer" / "checkpoint-2")  # ... and ignored
    assert not is_complete(out)
    summary = train_sft(cfg, resume=True)
    assert summary["resumed_from"].endswith("checkpoint-2")
    assert_losses_match(step_losses(out), sft_reference)
    _assert_adapter_loads(cfg, "sft")


def test_final_save_failure_keeps_last_checkpoint(smoke_cfg, monkeypatch, sft_reference):
    """A failure while the final adapter is written: no train_summary.json (so not 'complete'), the last
    checkpoint is intact, and --resume finishes the job with the same losses."""
    from looper_math import modeling
    from looper_math.sft import train_sft
    from looper_math.train_common import is_complete, last_checkpoint

    cfg = smoke_cfg(*SFT_SET)
    out = cfg.path(cfg.sft.output_dir)

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(modeling, "write_base_marker", no_space)
    with pytest.raises(OSError, match="No space left"):
        train_sft(cfg)
    monkeypatch.undo()
    assert not is_complete(out)
    ckpt = last_checkpoint(out / "trainer")
    assert ckpt == str(out / "trainer" / "checkpoint-4")
    _assert_adapter_loads(cfg, ckpt)
    summary = train_sft(cfg, resume=True)
    assert is_complete(out) and summary["resumed_from"] == ckpt
    assert not (out / ".final.tmp").exists()
    assert_losses_match(step_losses(out), sft_reference)
    _assert_adapter_loads(cfg, "sft")


# --------------------------------------------------------------------------------------------- no silent overwrite


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _existing_output(phase: str, cfg: Config) -> list[str]:
    """Put a non-empty output of `phase` in place (plus valid inputs); return the CLI argv."""
    row = {"question_id": "q1", "sample_idx": 0, "arm": "a", "prompt": "p", "eval_prompt": "p", "full_text": "#### 2",
           "correct": True, "finished": True, "s_wm": 0.5, "reward": 1.0}
    if phase in ("sft", "dpo"):
        d = cfg.path(cfg.sft.output_dir if phase == "sft" else cfg.dpo.output_dir)
        d.mkdir(parents=True)
        (d / "adapter_model.safetensors").write_bytes(b"previous adapter")
        if phase == "dpo":
            write_pairs(cfg.path(cfg.prefs.output), n=2)
    elif phase == "rollouts":
        cfg.path(cfg.rollouts.output).parent.mkdir(parents=True)
        cfg.path(cfg.rollouts.output).write_text(json.dumps(row) + "\n")
    elif phase == "eval":
        cfg.path(cfg.eval.sft_output).parent.mkdir(parents=True)
        cfg.path(cfg.eval.sft_output).write_text('{"question_id": "q1"}\n')
    elif phase == "prefs":
        cfg.path(cfg.rollouts.output).parent.mkdir(parents=True)
        cfg.path(cfg.rollouts.output).write_text(json.dumps(row) + "\n")
        cfg.path(cfg.prefs.output).write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    return [phase, "--config", str(write_config(cfg))]


@pytest.mark.parametrize("phase", ["sft", "rollouts", "prefs", "dpo", "eval"])
def test_existing_output_needs_resume_or_overwrite(phase, smoke_cfg):
    import re

    from typer.testing import CliRunner

    from looper_math.cli import app

    cfg = smoke_cfg()
    argv = _existing_output(phase, cfg)
    before = _snapshot(Path(cfg.run_dir))
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.stdout + result.stderr
    err = [x for x in re.split(r"[\r\n]", result.stderr) if x.strip()][-1]
    assert err.startswith("error: ") and "already exists" in err and "--overwrite" in err, err
    assert ("--resume" in err) == (phase != "prefs"), err  # prefs is rebuilt whole, it has no --resume
    assert _snapshot(Path(cfg.run_dir)) == before


def test_overwrite_replaces_old_rows(smoke_cfg):
    from looper_math.evaluate import evaluate

    cfg = smoke_cfg("eval.limit=2", "eval.max_new_tokens=8")
    out = Path(cfg.run_dir) / "outputs" / "x_eval.jsonl"
    out.parent.mkdir(parents=True)
    out.write_text('{"question_id": "stale", "checkpoint": "elsewhere"}\n')
    evaluate(cfg, "none", output=out, overwrite=True)
    ids = [json.loads(x)["question_id"] for x in out.read_text().splitlines()]
    assert len(ids) == 2 and "stale" not in ids


# --------------------------------------------------------------------------------------------- NaN guard


def _error_line(stderr: str) -> str:
    """The CLI's one-line error: the last line of stderr, from 'error: ' on (a progress bar that was
    in flight when training stopped may precede it on the same line)."""
    import re

    last = [x for x in re.split(r"[\r\n]", stderr) if x.strip()][-1]
    assert "error: " in last, stderr
    return last[last.index("error: "):]


def test_nan_loss_stops_sft_without_saving_adapter(smoke_cfg, monkeypatch):
    """NaN hidden states from step 3 on (a forward hook on the final norm; TRL computes the loss from
    lm_head.weight directly, so a hook on lm_head would never fire): the run stops before that optimizer
    step with a one-line error, no final adapter is written, and the step-2 checkpoint stays finite."""
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    import looper_math.sft as sft_mod
    from looper_math.cli import app

    real_load_model = sft_mod.load_model
    calls = {"train_forwards": 0}

    def poisoned_load_model(*a, **k):
        model = real_load_model(*a, **k)

        def hook(module, inputs, output):
            if module.training:
                calls["train_forwards"] += 1
                if calls["train_forwards"] >= 3:
                    return output * float("nan")
            return output

        model.model.norm.register_forward_hook(hook)
        return model

    monkeypatch.setattr(sft_mod, "load_model", poisoned_load_model)
    cfg = smoke_cfg(*SFT_SET)
    out = cfg.path(cfg.sft.output_dir)
    result = CliRunner().invoke(app, ["sft", "--config", str(write_config(cfg))])
    assert result.exit_code == 2, result.stdout + result.stderr
    err = _error_line(result.stderr)
    assert err.startswith("error: non-finite") and "step 3" in err and "no adapter saved" in err, err
    assert not (out / "train_summary.json").exists()
    assert not (out / "adapter_model.safetensors").exists()
    assert sorted(p.name for p in (out / "trainer").glob("checkpoint-*")) == ["checkpoint-2"]
    for name, t in load_file(out / "trainer" / "checkpoint-2" / "adapter_model.safetensors").items():
        assert bool(t.isfinite().all()), name


def test_nonfinite_config_stops_dpo_without_saving_adapter(dpo_setup, tmp_path, tiny_model_dir):
    """dpo.beta=inf makes the very first DPO loss NaN (inf * a zero margin): stop, nothing saved."""
    from typer.testing import CliRunner

    from looper_math.cli import app

    cfg = dpo_cfg(dpo_setup, tmp_path, tiny_model_dir, "dpo.beta=.inf")
    out = cfg.path(cfg.dpo.output_dir)
    result = CliRunner().invoke(app, ["dpo", "--config", str(write_config(cfg))])
    assert result.exit_code == 2, result.stdout + result.stderr
    err = _error_line(result.stderr)
    assert err.startswith("error: non-finite") and "no adapter saved" in err, err
    assert not (out / "train_summary.json").exists()
    assert not list(out.rglob("adapter_model.safetensors"))


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EACCES])
def test_full_disk_or_no_permission_is_one_line_exit_2(tmp_path, monkeypatch, err):
    """What the user must fix outside the tool (space, permissions) is reported like bad input: one
    line naming the file, exit 2, no traceback; other OS errors still raise."""
    from typer.testing import CliRunner

    import looper_math.compare as compare_mod
    from looper_math.cli import app

    def boom(*a, **k):
        raise OSError(err, os.strerror(err), str(tmp_path / "outputs" / "x.jsonl"))

    monkeypatch.setattr(compare_mod, "compare", boom)
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "x.jsonl" in lines[0], lines
    assert os.strerror(err) in lines[0] and "Traceback" not in result.output


def test_other_os_errors_are_not_disguised(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import looper_math.compare as compare_mod
    from looper_math.cli import app

    def boom(*a, **k):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(compare_mod, "compare", boom)
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")])
    assert isinstance(result.exception, OSError) and result.exception.errno == errno.EIO
