"""``looper-math run``: the five phases from one config, like the original README's runbook.

[rollouts from the base model, when sft.data uses rft] -> SFT -> eval (base, SFT) -> [rollouts -> pairs -> DPO
-> eval] x rounds -> compare SFT vs DPO -> report.
Without ``--overwrite`` the run continues: complete phases are skipped (a training phase is complete
once its ``train_summary.json`` exists, an eval or rollouts phase once its summary exists, pairs once
the file exists) and partial ones resume. Round r > 1 samples from round r-1's DPO adapter and
continues DPO from it (reference = that adapter), Iterative-RPO style; its files get a ``_r{r}`` suffix.
The report is rebuilt only when it is missing or older than some file of the run, so a rerun that finds
every phase complete writes nothing.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from looper_math.config import Config


def _suffixed(path: str, r: int) -> str:
    if r == 1:
        return path
    p = Path(path)
    return str(p.with_name(f"{p.stem}_r{r}{p.suffix}"))


def round_config(cfg: Config, r: int) -> Config:
    c = copy.deepcopy(cfg)
    if r > 1:
        c.rollouts.output = _suffixed(cfg.rollouts.output, r)
        c.prefs.output = _suffixed(cfg.prefs.output, r)
        c.dpo.output_dir = _suffixed(cfg.dpo.output_dir, r)
        c.eval.dpo_output = _suffixed(cfg.eval.dpo_output, r)
        prev = str(cfg.path(_suffixed(cfg.dpo.output_dir, r - 1)))
        c.rollouts.adapter = prev
        c.dpo.init_adapter = prev
    return c


def rft_rollouts_config(cfg: Config) -> Config:
    """The rollouts that feed rejection-sampling SFT (sft.data rft / gold+rft): the base model, no adapter."""
    c = copy.deepcopy(cfg)
    c.rollouts.adapter = "none"
    c.rollouts.output = cfg.sft.rft_rollouts
    return c


def report_is_current(run_dir: Path) -> bool:
    """``report/report.html`` exists and no file of the run outside ``report/`` is newer."""
    page = run_dir / "report" / "report.html"
    if not page.exists():
        return False
    t = page.stat().st_mtime_ns
    return not any(p.stat().st_mtime_ns > t for p in run_dir.rglob("*") if p.is_file() and page.parent not in p.parents)


def run_pipeline(cfg: Config, *, rounds: int = 1, overwrite: bool = False) -> dict:
    from looper_math.compare import compare, format_compare
    from looper_math.dpo import train_dpo
    from looper_math.evaluate import default_output, eval_complete, evaluate
    from looper_math.preferences import run_prefs
    from looper_math.report import build_report
    from looper_math.rollouts import collect_rollouts, rollouts_complete
    from looper_math.sft import sft_complete, train_sft
    from looper_math.train_common import is_complete

    from looper_math.runio import launcher_rank

    if launcher_rank() is not None:  # each rank would write rollout/eval shards that prefs/compare never see
        raise ValueError("`looper-math run` is one process: under accelerate launch / torchrun run the phases as separate "
                         "commands (sft, dpo; rollouts/eval shards, then `looper-math merge`), see the README's Multi-GPU section")
    if rounds < 1:
        raise ValueError("--rounds must be >= 1")
    t0 = time.time()
    resume = not overwrite
    done: list[str] = []

    def phase(name: str, complete: bool, fn) -> None:
        if complete and not overwrite:
            print(f"== {name}: complete, skipped")
            return
        print(f"== {name}")
        fn()
        done.append(name)

    if "rft" in cfg.sft.data.split("+"):
        c0 = rft_rollouts_config(cfg)
        phase("phase 2: rollouts from the base model (RFT data for SFT)", rollouts_complete(c0),
              lambda: collect_rollouts(c0, resume=resume, overwrite=overwrite))
    phase("phase 1: SFT", sft_complete(cfg), lambda: train_sft(cfg, resume=resume, overwrite=overwrite))
    phase("phase 5: eval base model", eval_complete(cfg, "none"), lambda: evaluate(cfg, "none", resume=resume, overwrite=overwrite))
    phase("phase 5: eval SFT", eval_complete(cfg, "sft"), lambda: evaluate(cfg, "sft", resume=resume, overwrite=overwrite))
    for r in range(1, rounds + 1):
        c = round_config(cfg, r)
        tag = f" (round {r})" if rounds > 1 else ""
        phase(f"phase 2: rollouts{tag}", rollouts_complete(c), lambda c=c: collect_rollouts(c, resume=resume, overwrite=overwrite))
        phase(f"phase 3: pairs{tag}", c.path(c.prefs.output).exists(),
              lambda c=c: run_prefs(c, c.path(c.rollouts.output), c.path(c.prefs.output), overwrite=overwrite))
        phase(f"phase 4: DPO{tag}", is_complete(c.path(c.dpo.output_dir)), lambda c=c: train_dpo(c, resume=resume, overwrite=overwrite))
        phase(f"phase 5: eval DPO{tag}", eval_complete(c, "dpo"), lambda c=c: evaluate(c, "dpo", resume=resume, overwrite=overwrite))
    last = round_config(cfg, rounds)
    result = compare(default_output(cfg, "sft"), default_output(last, "dpo"))
    print(format_compare(result))
    if report_is_current(Path(cfg.run_dir)):
        report = Path(cfg.run_dir) / "report" / "report.html"
        print(f"report -> {report} (up to date)")
    else:
        report = build_report(Path(cfg.run_dir))
        print(f"report -> {report}")
    if cfg.smoke:
        print("SMOKE RUN finished: every phase ran on a tiny random model; accuracies are meaningless by design.")
    print(f"run: {len(done)} phases ran, {time.time() - t0:.0f}s")
    return {"phases_run": done, "compare": result, "report": str(report)}
