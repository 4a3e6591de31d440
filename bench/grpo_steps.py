"""GRPO length on the dev split: one GRPO run of the recipe, its checkpoints evaluated on dev as a learning curve,
the best length chosen on dev, and only the chosen one evaluated on the test split (and on a second benchmark).

GPU machine, repo root, model converted (``source bench/device/device_env.sh`` does it from the carried parts)::

    python3 bench/grpo_steps.py --out $OUT --deadline-s 560 --steps 70,105,140 \
        --set model.name_or_path=/root/m/qwen05 [--bench2 benchmarks/svamp/test.jsonl]

Steps, in order; each is resumable and a finished one is skipped (its summary file exists), so a call cut by the
deadline is simply made again:
 1. SFT of ``--config`` (default configs/qwen05_gpu.yaml; base rollouts -> rejection-sampling SFT).
 2. One GRPO run to the largest of ``--steps`` from that SFT adapter, every checkpoint kept
    (``grpo.save_total_limit=null``); with a constant learning rate after warm-up, the checkpoint at step n is the
    n-step recipe. Its dev evals start beside the training as soon as each checkpoint of ``--steps`` is written.
 3. Dev evals of base and SFT; the paired test of each checkpoint against SFT and against the first of ``--steps``.
 4. The choice: best dev accuracy, fewest steps on a tie -> ``outputs/steps_choice.txt``.
 5. Test evals of base, SFT and the chosen checkpoint only, with paired tests; ``--bench2`` (a local JSONL of
    question/answer rows, never used for a choice) the same three.
 6. ``--sft-data gold`` (optional, last): a second SFT of the same config with ``sft.data`` set to that value, into
    ``checkpoints/sft_<value>``, evaluated on dev only and paired against the recipe's SFT -> ``sft_data_paired.txt``
    (the SFT data chosen on dev, not on test).
Everything lands in ``<run_dir>/outputs`` and ``<run_dir>/logs``; ``--out`` gets ``log.txt``-able printouts and one
``results.tgz`` (per-example outputs, summaries, the adapters' train summaries, logs).
Exit 0: all done; 3: cut by the deadline (call again); 1: a step failed (its first error line is printed).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from looper_math.config import load_config  # noqa: E402
from looper_math.compare import compare  # noqa: E402
from looper_math.errors import DataError  # noqa: E402

CLI = [sys.executable, "-m", "looper_math.cli"]


class Cut(Exception):
    """The deadline came before a step finished."""


class Failed(Exception):
    """A step failed; the message is its first error line."""


class Runner:
    def __init__(self, deadline_s: float, logs: Path):
        self.t_end = time.time() + deadline_s
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.t_end - time.time() - 25  # reserve: packing the results

    def popen(self, name: str, args: list[str]) -> subprocess.Popen:
        if self.left() < 20:
            raise Cut(name)
        log = open(self.logs / f"{name}.log", "a")
        print(f"-- {name}: {' '.join(args)}", flush=True)
        p = subprocess.Popen(["timeout", str(int(self.left())), *CLI, *args], stdout=log, stderr=subprocess.STDOUT)
        p.step_name = name  # type: ignore[attr-defined]
        p.t0 = time.time()  # type: ignore[attr-defined]
        return p

    def wait(self, p: subprocess.Popen) -> None:
        rc = p.wait()
        name = p.step_name  # type: ignore[attr-defined]
        took = time.time() - p.t0  # type: ignore[attr-defined]
        if rc in (124, 137):
            raise Cut(name)
        if rc != 0:
            lines = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()
            first = next((ln for ln in lines if "Error" in ln or ln.startswith("error")), lines[-1] if lines else "")
            raise Failed(f"{name} (rc {rc}): {first.strip()}  [log: {self.logs / (name + '.log')}]")
        print(f"-- {name}: done in {took:.0f} s", flush=True)

    def run(self, name: str, args: list[str]) -> None:
        self.wait(self.popen(name, args))


def paired(a: Path, b: Path) -> str:
    """One line: both accuracies, b - a, discordant counts and the exact McNemar p (``looper-math compare``'s own
    ``compare``, which also refuses files of different questions)."""
    try:
        r = compare(a, b)
    except DataError as e:
        raise Failed(str(e)) from None
    sig = "" if r["mcnemar_p"] < 0.05 else ", not significant"
    return (f"{a.stem} {r['a']['accuracy']:.2%} -> {b.stem} {r['b']['accuracy']:.2%}: {100 * r['delta']:+.2f} pts "
            f"({r['b01']}/{r['b10']}), exact McNemar p = {r['mcnemar_p']:.2g}{sig} (n = {r['n']})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/qwen05_gpu.yaml")
    ap.add_argument("--set", action="append", default=[], dest="sets", help="key=value for every command")
    ap.add_argument("--steps", default="70,105,140", help="GRPO lengths to evaluate on dev (one run to the largest)")
    ap.add_argument("--name", default="grpo_steps", help="the GRPO adapter's folder under checkpoints/")
    ap.add_argument("--bench2", default=None, help="a second benchmark (local JSONL), evaluated for the report only")
    ap.add_argument("--sft-data", default=None, help="a second SFT with this sft.data (e.g. gold), dev eval only, last")
    ap.add_argument("--deadline-s", type=float, default=560)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--parallel", type=int, default=3, help="evals side by side")
    a = ap.parse_args()

    steps = sorted({int(s) for s in a.steps.split(",")})
    cfg = load_config(Path(a.config), a.sets)
    run_dir = cfg.path(".")
    outs, logs = run_dir / "outputs", run_dir / "logs"
    outs.mkdir(parents=True, exist_ok=True)
    common = ["-c", a.config, *[x for s in a.sets for x in ("--set", s)]]
    R = Runner(a.deadline_s, logs)
    grpo_dir = run_dir / "checkpoints" / a.name
    ckpt = lambda n: grpo_dir / "trainer" / f"checkpoint-{n}"  # noqa: E731
    done = lambda stem: (outs / f"{stem}.summary.json").is_file()  # noqa: E731

    def eval_args(adapter: str, split: str, stem: str, test_file: str | None = None) -> list[str]:
        extra = ["--set", f"data.test={test_file}"] if test_file else []
        return ["eval", *common, "--adapter", adapter, "--set", f"eval.split={split}", *extra,
                "--output", str(outs / f"{stem}.jsonl"), "--resume"]

    status = 0
    try:
        if not (run_dir / cfg.sft.output_dir / "train_summary.json").is_file():
            R.run("sft", ["sft", *common, "--resume"])
        sft_dir = str(run_dir / cfg.sft.output_dir)
        jobs: list[subprocess.Popen] = []
        for stem, adapter in (("base_dev_eval", "none"), ("sft_dev_eval", sft_dir)):
            if not done(stem):
                jobs.append(R.popen(stem, eval_args(adapter, "dev", stem)))
        curve = {n: f"grpo_s{n}_dev_eval" for n in steps}
        started = {n for n in steps if done(curve[n])}
        if not (grpo_dir / "train_summary.json").is_file():
            g = R.popen("grpo", ["grpo", *common, "--set", f"grpo.output_dir={grpo_dir.relative_to(run_dir)}",
                                 "--set", f"grpo.max_steps={steps[-1]}", "--set", "grpo.save_total_limit=null",
                                 "--set", "grpo.init_adapter=sft", "--resume"])
            while g.poll() is None:  # each curve checkpoint is evaluated as soon as the trainer has written it
                for n in steps:
                    if n not in started and (ckpt(n) / "trainer_state.json").is_file():
                        time.sleep(2)  # trainer_state.json is the checkpoint's last write
                        jobs.append(R.popen(curve[n], eval_args(str(ckpt(n)), "dev", curve[n])))
                        started.add(n)
                time.sleep(5)
            R.wait(g)
        with ThreadPoolExecutor(a.parallel) as pool:
            list(pool.map(R.wait, jobs))
            rest = [(curve[n], str(ckpt(n))) for n in steps if not done(curve[n])]
            list(pool.map(lambda j: R.run(j[0], eval_args(j[1], "dev", j[0])), rest))

        lines = [paired(outs / "base_dev_eval.jsonl", outs / "sft_dev_eval.jsonl")]
        lines += [paired(outs / "sft_dev_eval.jsonl", outs / f"{curve[n]}.jsonl") for n in steps]
        lines += [paired(outs / f"{curve[steps[0]]}.jsonl", outs / f"{curve[n]}.jsonl") for n in steps[1:]]
        acc = {n: compare(outs / "sft_dev_eval.jsonl", outs / f"{curve[n]}.jsonl")["b"]["accuracy"] for n in steps}
        chosen = max(steps, key=lambda n: (acc[n], -n))
        choice = "".join(f"grpo steps {n}: dev accuracy {acc[n]:.4f}\n" for n in steps) + f"chosen {chosen}\n"
        (outs / "steps_choice.txt").write_text(choice)
        print(choice + "\n".join(lines), flush=True)
        (outs / "dev_paired.txt").write_text("\n".join(lines) + "\n")

        tests = [("base_test_eval", "none", None), ("sft_test_eval", sft_dir, None),
                 (f"grpo_s{chosen}_test_eval", str(ckpt(chosen)), None)]
        if a.bench2:
            b = Path(a.bench2).stem if Path(a.bench2).stem != "test" else Path(a.bench2).parent.name
            tests += [(f"base_{b}_eval", "none", a.bench2), (f"sft_{b}_eval", sft_dir, a.bench2),
                      (f"grpo_s{chosen}_{b}_eval", str(ckpt(chosen)), a.bench2)]
        with ThreadPoolExecutor(a.parallel) as pool:
            list(pool.map(lambda t: None if done(t[0]) else R.run(t[0], eval_args(t[1], "test", t[0], t[2])), tests))
        lines = []
        for i in range(0, len(tests), 3):
            base, sft, fin = (outs / f"{t[0]}.jsonl" for t in tests[i:i + 3])
            lines += [paired(base, sft), paired(sft, fin), paired(base, fin)]
        print("\n".join(lines), flush=True)
        (outs / "test_paired.txt").write_text("\n".join(lines) + "\n")
        if a.sft_data:
            alt, stem = f"checkpoints/sft_{a.sft_data.replace('+', '_')}", f"sft_{a.sft_data.replace('+', '_')}_dev_eval"
            alt_sets = ["--set", f"sft.data={a.sft_data}", "--set", f"sft.output_dir={alt}"]
            if not (run_dir / alt / "train_summary.json").is_file():
                R.run(f"sft_{a.sft_data}", ["sft", *common, *alt_sets, "--resume"])
            if not done(stem):
                R.run(stem, eval_args(str(run_dir / alt), "dev", stem))
            line = paired(outs / "sft_dev_eval.jsonl", outs / f"{stem}.jsonl")
            print(line, flush=True)
            (outs / "sft_data_paired.txt").write_text(line + "\n")
        print("=== grpo_steps: complete", flush=True)
    except Cut as e:
        print(f"=== grpo_steps: cut by the deadline during {e}; call again (finished steps are kept)", flush=True)
        status = 3
    except Failed as e:
        print(f"=== grpo_steps: FAILED: {e}", flush=True)
        status = 1
    pack(run_dir, a.out, cfg)
    return status


def pack(run_dir: Path, out: Path, cfg) -> None:
    """Everything the write-up needs in one archive ($OUT returns at most 8 files): per-example outputs (not the
    rollouts), summaries, the adapters' train summaries and resolved configs, logs."""
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "results.tgz", "w:gz") as tar:
        for p in sorted(run_dir.rglob("*")):
            rel = p.relative_to(run_dir)
            if not p.is_file() or "trainer" in rel.parts:
                continue
            keep = (rel.parts[0] in ("outputs", "logs") or p.name.endswith(".summary.json")
                    or p.name in ("train_summary.json", "log_history.json", "resolved_config.yaml"))
            if keep:
                tar.add(p, arcname=str(rel))
    print(f"packed -> {out / 'results.tgz'} ({(out / 'results.tgz').stat().st_size / 2**20:.1f} MiB)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
