"""Multi-process runs: data-parallel rollouts/eval shards + `looper-math merge`, and SFT/DPO under
`accelerate launch` (DDP over gloo on CPU; marked slow).

- Two rollout shards run as two concurrent processes on the tiny model (one with ``--shard 0/2``, the
  other given only the RANK/WORLD_SIZE/LOCAL_RANK a launcher sets); the merged file holds exactly the
  rows of a one-process run (same seeds -> the same row for every (question_id, sample_idx)).
- ``merge`` refuses a missing shard, an unfinished shard, a key in two shards and an existing output,
  each with one error line and exit status 2, writing nothing.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from looper_math.cli import app
from looper_math.config import save_resolved
from looper_math.runio import merge_shards, read_jsonl, resolve_shard, shard_path

SHARD_SETTINGS = ["rollouts.adapter=none", "regime_w.allocation=uniform", "rollouts.limit=6", "rollouts.k=4", "rollouts.questions_per_round=3",
                  "rollouts.max_new_tokens=32", "eval.limit=6", "eval.max_new_tokens=32"]


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **extra)  # two processes on a small CPU box
    return env


def _keyed(path: Path, key=("question_id", "sample_idx")) -> dict[tuple, dict]:
    return {tuple(r[k] for k in key): r for r in read_jsonl(path)}


def _rounded(obj):
    """Floats to 9 digits (sums over rows in another order differ in the last bits)."""
    if isinstance(obj, float):
        return round(obj, 9)
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj


def _merge(*args: str):
    result = CliRunner().invoke(app, ["merge", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def _assert_refused(result, expect: str) -> None:
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.stdout[-800:]} {result.stderr[-800:]}"
    err = [x for x in re.split(r"[\r\n]", result.stderr) if x.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), result.stderr
    assert expect in err[0], err[0]
    assert "Traceback" not in result.stdout + result.stderr


# -- no model ----------------------------------------------------------------------------------

def test_resolve_shard_explicit_launcher_and_none(monkeypatch, capsys):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert resolve_shard(None) is None
    assert resolve_shard("1/3") == (1, 3)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert resolve_shard(None) is None  # one process under a launcher: everything
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_shard(None) == (3, 4)
    assert "shard 3/4" in capsys.readouterr().out
    assert resolve_shard("0/2") == (0, 2)  # an explicit --shard wins
    with pytest.raises(ValueError, match="--shard"):
        resolve_shard("2/2")


def test_merge_shards_restores_unsharded_order(tmp_path):
    out = tmp_path / "r.jsonl"
    rows = [{"question_id": f"q{j}", "sample_idx": s} for j in range(5) for s in range(2)]
    for i in range(2):
        mine = [r for r in rows if int(r["question_id"][1:]) % 2 == i]  # take_shard: question j -> shard j % n
        shard_path(out, (i, 2)).write_text("".join(json.dumps(r) + "\n" for r in mine))
    assert merge_shards(out, 2, ("question_id", "sample_idx")) == 10
    assert list(read_jsonl(out)) == rows


# -- tiny model --------------------------------------------------------------------------------

def test_sharded_rollouts_two_processes_merge_to_the_one_process_rows(smoke_cfg):
    from looper_math.rollouts import collect_rollouts

    cfg = smoke_cfg(*SHARD_SETTINGS)
    run_dir = Path(cfg.run_dir)
    config = save_resolved(cfg, run_dir, "run.yaml")
    base = [sys.executable, "-m", "looper_math.cli", "rollouts", "--config", str(config), "--set", "rollouts.output=data/sharded.jsonl"]
    procs = [subprocess.Popen(base + ["--shard", "0/2"], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
             # the second shard learns its place only from the launcher's environment
             subprocess.Popen(base, env=_env(WORLD_SIZE="2", RANK="1", LOCAL_RANK="1"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    try:
        collect_rollouts(cfg)  # the one-process reference, meanwhile
        logs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    assert "shard 1/2 (from the launcher's RANK/WORLD_SIZE" in logs[1]

    sharded = run_dir / "data" / "sharded.jsonl"
    parts = [_keyed(shard_path(sharded, (i, 2))) for i in range(2)]
    assert parts[0] and parts[1] and not parts[0].keys() & parts[1].keys()

    result = _merge(str(sharded), "--kind", "rollouts", "--shards", "2")
    assert result.exit_code == 0, result.stdout[-2000:] + result.stderr[-2000:]
    one, merged = _keyed(run_dir / "data" / "rollouts.jsonl"), _keyed(sharded)
    assert len(one) == 6 * 4 and merged.keys() == one.keys()
    assert all(merged[k]["full_text"] == one[k]["full_text"] for k in one)
    assert merged == one  # every field of every row, scores and rewards included
    s1 = json.loads((run_dir / "data" / "rollouts.summary.json").read_text())
    sm = json.loads(sharded.with_name("sharded.summary.json").read_text())
    for key in ("rows", "questions", "accuracy", "per_arm", "auroc_correct", "bandit_state"):
        assert _rounded(sm[key]) == _rounded(s1[key]), key
    assert sm["merged_from"] == ["sharded.shard-0-of-2.jsonl", "sharded.shard-1-of-2.jsonl"]
    assert sharded.with_name("sharded.resolved_config.yaml").exists()

    # refusals: one error line, exit 2, the merged output not written
    _assert_refused(_merge(str(sharded), "--kind", "rollouts", "--shards", "2"), "already exists")
    assert _merge(str(sharded), "--kind", "rollouts", "--shards", "2", "--overwrite").exit_code == 0

    def variant(name: str) -> Path:
        out = run_dir / "data" / f"{name}.jsonl"
        for src in run_dir.joinpath("data").glob("sharded.shard-*"):
            shutil.copy(src, src.with_name(src.name.replace("sharded", name)))
        return out

    missing = variant("missing")
    shard_path(missing, (1, 2)).unlink()
    _assert_refused(_merge(str(missing), "--kind", "rollouts", "--shards", "2"), "missing.shard-1-of-2.jsonl: shard file missing")
    _assert_refused(_merge(str(variant("three")), "--kind", "rollouts", "--shards", "3"), "three.shard-0-of-3.jsonl: shard file missing")

    unfinished = variant("unfinished")  # a shard killed mid-run: fewer rows than its summary counts
    p1 = shard_path(unfinished, (1, 2))
    p1.write_text("".join(p1.read_text().splitlines(keepends=True)[:-4]))
    _assert_refused(_merge(str(unfinished), "--kind", "rollouts", "--shards", "2"), "not finished")

    dup = variant("dup")  # a row of shard 0 also in shard 1 (summary made to agree, so only the key check can catch it)
    p0, p1 = shard_path(dup, (0, 2)), shard_path(dup, (1, 2))
    with open(p1, "a") as f:
        f.write(p0.read_text().splitlines(keepends=True)[0])
    s = p1.with_name(p1.stem + ".summary.json")
    from looper_math.layout import write_summary  # the row count and checksum agree with the edited shard

    write_summary(p1, {**json.loads(s.read_text()), "rows": len(p1.read_text().splitlines())})
    _assert_refused(_merge(str(dup), "--kind", "rollouts", "--shards", "2"), "also in dup.shard-0-of-2.jsonl")

    for name in ("missing", "three", "unfinished", "dup"):
        assert not (run_dir / "data" / f"{name}.jsonl").exists()
        assert not (run_dir / "data" / f"{name}.summary.json").exists()


def test_sharded_eval_merges_to_the_one_process_rows_and_summary(smoke_cfg):
    from looper_math.evaluate import evaluate

    cfg = smoke_cfg(*SHARD_SETTINGS)
    out = Path(cfg.run_dir) / "outputs" / "base_eval.jsonl"
    evaluate(cfg, "none")
    for i in range(2):
        evaluate(cfg, "none", output=Path(cfg.run_dir) / "outputs" / "sharded.jsonl", shard=f"{i}/2")
    sharded = out.with_name("sharded.jsonl")
    result = _merge(str(sharded), "--kind", "eval", "--shards", "2")
    assert result.exit_code == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert list(read_jsonl(sharded)) == list(read_jsonl(out))  # same rows in the same (question) order
    s1, sm = (json.loads(p.with_name(p.stem + ".summary.json").read_text()) for p in (out, sharded))
    drop = ("this_run", "merged_from")
    assert _rounded({k: v for k, v in sm.items() if k not in drop}) == _rounded({k: v for k, v in s1.items() if k not in drop})
    assert sm["n"] == 6


@pytest.mark.slow
def test_sft_and_dpo_under_accelerate_launch_two_processes(smoke_cfg):
    """`accelerate launch --multi_gpu --num_processes 2` on a CPU-only host runs torchrun + gloo DDP
    (`--cpu --num_processes 2` would need mpirun and silently runs ONE process)."""
    from looper_math.prompts import ABEL_TEMPLATE

    if shutil.which("accelerate") is None:
        pytest.skip("accelerate CLI not installed")
    cfg = smoke_cfg("sft.max_steps=4", "sft.save_steps=2", "dpo.max_steps=2", "dpo.save_steps=1")
    run_dir = Path(cfg.run_dir)
    config = save_resolved(cfg, run_dir, "run.yaml")
    pairs = run_dir / "data" / "preferences.jsonl"
    pairs.parent.mkdir(parents=True, exist_ok=True)
    pairs.write_text("".join(json.dumps({
        "prompt": ABEL_TEMPLATE.format(question=f"Tom has {i + 2} apples and buys {i + 3} more. How many apples does he have?"),
        "chosen": f"{i + 2} + {i + 3} = {2 * i + 5}\n#### {2 * i + 5}",
        "rejected": f"{i + 2} * {i + 3} = {(i + 2) * (i + 3)}\n#### {(i + 2) * (i + 3)}"}) + "\n" for i in range(16)))
    launch = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", "29517", "-m", "looper_math.cli"]
    for phase in ("sft", "dpo"):
        p = subprocess.run(launch + [phase, "--config", str(config)], env=_env(), capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
        assert "OutputExistsError" not in p.stderr and "already exists" not in p.stderr
        out = run_dir / "checkpoints" / f"{phase}_lora"
        assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()
        assert not (out / "training_args.bin").exists()
        summary = json.loads((out / "train_summary.json").read_text())
        assert summary["losses"] and all(math.isfinite(loss) for _, loss in summary["losses"])
        assert math.isfinite(summary["train_loss"]) and summary["processes"] == 2
        assert len(summary["peak_memory"]["peak_rss_gib"]) == 2 and min(summary["peak_memory"]["peak_rss_gib"]) > 0, summary  # gathered from both ranks
        # two ranks really trained: each wrote its own RNG state into the checkpoints
        ckpt = out / "trainer" / f"checkpoint-{summary['steps']}"
        assert (ckpt / "rng_state_0.pth").exists() and (ckpt / "rng_state_1.pth").exists(), sorted(os.listdir(ckpt))
        assert p.stdout.count(f"{phase}: ") == 1  # the final line is printed by the main process only


def test_every_rank_asking_for_the_tiny_model_at_once_gets_one_model(tmp_path, tiny_model_dir):
    """Under `accelerate launch` each rank loads the embedded default at the same time: one builds it
    (in a child process free of the launcher's environment), the others wait, nothing is left behind;
    and it is the same model a single process builds."""
    code = "import sys; from looper_math.smoke import ensure_tiny_model; ensure_tiny_model(sys.argv[1])"
    target = tmp_path / "run" / "tiny_model"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                                  MASTER_PORT="29512"))
             for r in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(p.name for p in target.parent.iterdir()) == [".tiny_model.lock", "tiny_model"]
    from safetensors.torch import load_file

    got, want = load_file(target / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert got.keys() == want.keys() and all(got[k].equal(want[k]) for k in want)


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["ddp", "zero2", "zero3"])
def test_accelerate_configs_load_and_need_no_compiled_deepspeed_op(name):
    """The shipped `accelerate launch` configs parse with accelerate's own loader; the DeepSpeed ones build
    a DeepSpeedPlugin (no deepspeed needed for that) whose config has no optimizer or scheduler (the
    Trainer's torch AdamW runs: no fused/CPU Adam op to compile) and no offload; ZeRO-3 gathers the
    16-bit weights on save (the adapter is written whole). They ran on CPU with DeepSpeed's CPU
    accelerator; on GPUs by bench/multigpu_h200.sh."""
    import dataclasses

    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    cfg = load_config_from_file(str(REPO_ROOT / "configs" / "accelerate" / f"{name}.yaml"))
    assert cfg.mixed_precision == "bf16" and cfg.num_machines == 1 and not cfg.use_cpu
    if name == "ddp":
        assert cfg.distributed_type == DistributedType.MULTI_GPU and not cfg.deepspeed_config
        return
    assert cfg.distributed_type == DistributedType.DEEPSPEED
    ds = dict(cfg.deepspeed_config)
    assert ds.pop("deepspeed_multinode_launcher") == "standard"  # a launcher setting, not the plugin's
    assert set(ds) <= {f.name for f in dataclasses.fields(DeepSpeedPlugin)}, ds
    assert ds["zero_stage"] == int(name[-1]) and ds["offload_optimizer_device"] == ds["offload_param_device"] == "none"
    built = DeepSpeedPlugin(**ds).deepspeed_config
    assert "optimizer" not in built and "scheduler" not in built, built
    assert built["zero_optimization"]["stage"] == int(name[-1])
    if name == "zero3":
        assert built["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def _write_summary(path: Path, losses: list, **extra) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "train_summary.json").write_text(json.dumps({"steps": len(losses), "processes": 1, "losses": losses, **extra}))


def test_multigpu_h200_report_flags(tmp_path):
    """bench/multigpu_report.py --h200 on a made-up run: a ZeRO leg off by more than the tolerance fails,
    a skipped leg fails, the DPO first loss is checked against ln 2, the reference adapter's hashes."""
    root, ln2 = tmp_path / "r", math.log(2)
    curve = [[s, 1.0 - 0.01 * s] for s in range(1, 7)]
    _write_summary(root / "gpu1/checkpoints/sft_lora", curve, peak_memory={"peak_allocated_gib": [3.0]})
    _write_summary(root / "ddp/checkpoints/sft_lora", [[s, v + 0.002] for s, v in curve])
    _write_summary(root / "zero2/checkpoints/sft_lora", [[s, v + (0.05 if s == 4 else 0)] for s, v in curve])
    for g, first in (("gpu1", ln2), ("gpu2", ln2 + 1e-4), ("zero2", ln2)):
        d = root / f"gpu1/checkpoints/dpo_nll0_{g}"
        _write_summary(d, [[1, first], [2, 0.68]])
        (d / "adapter_model.safetensors").write_bytes(b"dpo" + g.encode())
    for x in ("before", "after"):
        (root / f"sft_adapter.{x}.sha256").write_text("aa  adapter_model.safetensors\nbb  adapter_config.json\n")
    steps = tmp_path / "steps.jsonl"
    steps.write_text("".join(json.dumps(r) + "\n" for r in [
        {"step": "sft_gpu1", "rc": 0, "wall_s": 10}, {"step": "sft_ddp", "rc": 0, "wall_s": 12}, {"step": "sft_zero2", "rc": 0, "wall_s": 13},
        {"step": "sft_zero3", "rc": None, "skipped": "deepspeed not importable"},
        {"step": "dpo_nll0_gpu1", "rc": 0, "wall_s": 5}, {"step": "dpo_nll0_gpu2", "rc": 0, "wall_s": 6},
        {"step": "dpo_nll0_zero2", "rc": 0, "wall_s": 7}]))
    p = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "multigpu_report.py"), "--h200", str(root), str(steps),
                        "--dpo-nll", "0"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout)
    assert out["sft"]["vs_gpu1"]["ddp"]["within_tol"] and out["sft"]["vs_gpu1"]["ddp"]["max_abs"] == pytest.approx(0.002)
    assert not out["sft"]["vs_gpu1"]["zero2"]["within_tol"] and out["sft"]["vs_gpu1"]["zero2"]["max_abs_at_step"] == 4
    assert out["sft"]["status"]["zero3"] == "skipped: deepspeed not importable"
    assert out["sft"]["legs"]["gpu1"]["peak_memory"] == {"peak_allocated_gib": [3.0]}
    assert out["pass"]["sft_gpu1"] and out["pass"]["sft_ddp"] and not out["pass"]["sft_zero2"] and not out["pass"]["sft_zero3"]
    assert out["dpo"]["nll0"]["pass"] and out["dpo"]["nll0"]["first_loss_minus_ln2"]["gpu1"] == 0
    assert out["pass"]["dpo_nll0_zero2"] and out["dpo"]["nll0"]["zero2_vs_gpu1"]["max_abs"] == 0
    assert out["dpo"]["reference_adapter"]["pass"] and out["pass"]["dpo_reference_unchanged"]
    assert not out["pass"]["rollouts_same_keys"] and not out["pass"]["all"]
    assert out["not_run"] == ["sft_zero3"]
