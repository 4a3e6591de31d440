"""``looper-math run``: the five phases from one config, like the original README's runbook.

[rollouts from the base model, when sft.data uses rft] -> SFT -> eval (base, SFT) -> [rollouts -> pairs -> DPO
-> eval] x rounds (``policy: dpo``) or [GRPO -> eval] x rounds (``policy: grpo``) -> compare SFT vs the last
round -> report.
Without ``--overwrite`` the run continues: complete phases are skipped (a training phase is complete
once its ``train_summary.json`` exists, an eval or rollouts phase once its summary exists, pairs once
the file exists) and partial ones resume. A complete phase is skipped only while it is current
(``Output.problem``): its settings (``config.PHASE_SETTINGS``, its inputs' included) equal those in the
resolved config written with it, its inputs are not newer than it, and its JSONL still holds the rows its
summary counts. Otherwise the run stops with one line naming the changed keys (or the file), before that
phase; ``--rerun-changed`` reruns such a phase from scratch instead (and so, through the same checks,
everything downstream of it). Round r > 1 samples from round r-1's DPO adapter and
continues DPO from it (reference = that adapter), Iterative-RPO style; with ``policy: grpo`` round r > 1
continues GRPO from round r-1's adapter with seed ``grpo.seed + r - 1``. Round files get a ``_r{r}`` suffix.
The report is rebuilt only when it is missing or older than some file of the run, so a rerun that finds
every phase complete writes nothing.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

from looper_math.config import Config, changed_settings
from looper_math.runio import StaleOutputError, clear_output, read_json


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
        c.grpo.output_dir = _suffixed(cfg.grpo.output_dir, r)
        c.eval.grpo_output = _suffixed(cfg.eval.grpo_output, r)
        c.grpo.init_adapter = str(cfg.path(_suffixed(cfg.grpo.output_dir, r - 1)))
        c.grpo.seed = cfg.grpo.seed + r - 1  # other questions in another order
    return c


@dataclass
class Output:
    """A phase's finished output as ``run`` checks it before skipping it."""

    cfg: Config
    phase: str  # its config.PHASE_SETTINGS key
    path: Path  # the JSONL file or the adapter folder
    summary: Path
    resolved: Path  # the resolved config written with it
    count_key: str | None = None  # the summary field that counts the JSONL's rows
    inputs: tuple[Path, ...] = ()  # summaries of the outputs it was built from

    def problem(self) -> str | None:
        """Why the output is not current (None when it is)."""
        for f in (self.summary, self.resolved):
            if not f.exists():
                return f"{f} is missing, so its settings are unknown"
        changed = changed_settings(self.cfg, self.phase, self.resolved)
        if changed:
            return "settings changed since it ran: " + ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in changed)
        t = self.summary.stat().st_mtime_ns
        newer = [f for f in self.inputs if f.exists() and f.stat().st_mtime_ns > t]
        if newer:
            return f"its input {newer[0]} is newer than it"
        if self.count_key is not None:
            want = read_json(self.summary)[self.count_key]
            with open(self.path, "rb") as f:
                have = sum(1 for line in f if line.strip())
            if have != want:
                return f"{self.path} holds {have} rows but {self.summary.name} counts {want}"
        return None

    def clear(self) -> None:
        for f in (self.path, self.summary, self.resolved):
            clear_output(f)


def _jsonl_output(cfg: Config, phase: str, path: Path, count_key: str, inputs: tuple[Path, ...] = ()) -> Output:
    """Rollouts and eval outputs: ``<stem>.summary.json`` and ``<stem>.resolved_config.yaml`` beside the JSONL."""
    return Output(cfg, phase, path, path.with_name(path.stem + ".summary.json"),
                  path.with_name(path.stem + ".resolved_config.yaml"), count_key, inputs)


def _train_output(cfg: Config, phase: str, out_dir: Path, inputs: tuple[Path, ...] = ()) -> Output:
    return Output(cfg, phase, out_dir, out_dir / "train_summary.json", out_dir / "resolved_config.yaml", None, inputs)


def report_is_current(run_dir: Path) -> bool:
    """``report/report.html`` exists and no file of the run outside ``report/`` is newer."""
    page = run_dir / "report" / "report.html"
    if not page.exists():
        return False
    t = page.stat().st_mtime_ns
    return not any(p.stat().st_mtime_ns > t for p in run_dir.rglob("*") if p.is_file() and page.parent not in p.parents)


def run_pipeline(cfg: Config, *, rounds: int = 1, overwrite: bool = False, rerun_changed: bool = False) -> dict:
    from looper_math.compare import compare, format_compare
    from looper_math.dpo import train_dpo
    from looper_math.evaluate import default_output, eval_complete, evaluate
    from looper_math.grpo import grpo_complete, train_grpo
    from looper_math.preferences import run_prefs
    from looper_math.report import build_report
    from looper_math.rollouts import collect_rollouts, rollouts_complete
    from looper_math.sft import rft_rollouts_config, sft_complete, train_sft
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

    def phase(name: str, complete: bool, fn, output: Output | None = None) -> None:
        if complete and not overwrite:
            problem = output.problem() if output is not None else None
            if problem is None:
                print(f"== {name}: complete, skipped")
                return
            if not rerun_changed:
                raise StaleOutputError(f"{name}: {problem}; pass --rerun-changed to rerun it and what depends on it "
                                       f"(or --overwrite to rerun every phase)")
            print(f"== {name}: {problem}; rerunning it")
            output.clear()
        print(f"== {name}")
        fn()
        done.append(name)

    sft_inputs: tuple[Path, ...] = ()
    c0 = rft_rollouts_config(cfg)
    if c0 is not None:
        base_out = _jsonl_output(c0, "rollouts_base", c0.path(c0.rollouts.output), "rows")
        phase("phase 2: rollouts from the base model (RFT data for SFT)", rollouts_complete(c0),
              lambda: collect_rollouts(c0, resume=resume, overwrite=overwrite), base_out)
        sft_inputs = (base_out.summary,)
    sft_out = _train_output(cfg, "sft", cfg.path(cfg.sft.output_dir), sft_inputs)
    phase("phase 1: SFT", sft_complete(cfg), lambda: train_sft(cfg, resume=resume, overwrite=overwrite), sft_out)
    phase("phase 5: eval base model", eval_complete(cfg, "none"), lambda: evaluate(cfg, "none", resume=resume, overwrite=overwrite),
          _jsonl_output(cfg, "eval", default_output(cfg, "none"), "n"))
    phase("phase 5: eval SFT", eval_complete(cfg, "sft"), lambda: evaluate(cfg, "sft", resume=resume, overwrite=overwrite),
          _jsonl_output(cfg, "eval_sft", default_output(cfg, "sft"), "n", (sft_out.summary,)))
    adapter_summary = sft_out.summary  # what round 1 samples from and starts DPO from
    for r in range(1, rounds + 1):
        c = round_config(cfg, r)
        tag = f" (round {r})" if rounds > 1 else ""
        if cfg.policy == "grpo":
            grpo_out = _train_output(c, "grpo", c.path(c.grpo.output_dir), (adapter_summary,))
            phase(f"phase 4: GRPO{tag}", grpo_complete(c), lambda c=c: train_grpo(c, resume=resume, overwrite=overwrite), grpo_out)
            phase(f"phase 5: eval GRPO{tag}", eval_complete(c, "grpo"), lambda c=c: evaluate(c, "grpo", resume=resume, overwrite=overwrite),
                  _jsonl_output(c, "eval_grpo", default_output(c, "grpo"), "n", (grpo_out.summary,)))
            adapter_summary = grpo_out.summary
            continue
        rollouts_out = _jsonl_output(c, "rollouts", c.path(c.rollouts.output), "rows", (adapter_summary,))
        prefs_path = c.path(c.prefs.output)
        prefs_out = Output(c, "prefs", prefs_path, prefs_path.with_suffix(".summary.json"),
                           prefs_path.with_suffix(".resolved_config.yaml"), "pairs", (rollouts_out.summary,))
        dpo_out = _train_output(c, "dpo", c.path(c.dpo.output_dir), (prefs_out.summary, adapter_summary))
        phase(f"phase 2: rollouts{tag}", rollouts_complete(c), lambda c=c: collect_rollouts(c, resume=resume, overwrite=overwrite), rollouts_out)
        phase(f"phase 3: pairs{tag}", c.path(c.prefs.output).exists(),
              lambda c=c: run_prefs(c, c.path(c.rollouts.output), c.path(c.prefs.output), overwrite=overwrite), prefs_out)
        phase(f"phase 4: DPO{tag}", is_complete(c.path(c.dpo.output_dir)), lambda c=c: train_dpo(c, resume=resume, overwrite=overwrite), dpo_out)
        phase(f"phase 5: eval DPO{tag}", eval_complete(c, "dpo"), lambda c=c: evaluate(c, "dpo", resume=resume, overwrite=overwrite),
              _jsonl_output(c, "eval_dpo", default_output(c, "dpo"), "n", (dpo_out.summary,)))
        adapter_summary = dpo_out.summary
    last = round_config(cfg, rounds)
    result = compare(default_output(cfg, "sft"), default_output(last, cfg.policy))
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
