"""``looper-math run``: the five phases from one config, like the original README's runbook.

[rollouts from the base model, when sft.data uses rft] -> SFT -> eval (base, SFT) -> [rollouts -> pairs -> DPO
-> eval] x rounds (``policy: dpo``) or [GRPO -> eval] x rounds (``policy: grpo``) -> compare SFT vs the last
round -> report.
The run is a list of :class:`Phase` objects (name, output, is_complete, run) built from the run's layout
(``layout.RunLayout``), each named by its ``phases.PHASES`` spec in run order (``rollouts_base``, ``sft``,
``eval_base``, ``eval_sft``, then ``rollouts``, ``prefs``, ``dpo``, ``eval_dpo`` or ``grpo``, ``eval_grpo``, with
`` (round r)`` when there are several rounds). Without ``--overwrite`` the run continues: complete phases are
skipped (a phase is complete once the summary its output's layout names exists; every phase writes it last)
and partial ones resume. A complete phase is skipped only while it is current (``layout.Output.problem``): its
settings (its spec's and its inputs', ``config.phase_settings``) equal those in the resolved config written
with it, its inputs are not newer than it, and it is still what its summary recorded (rows and checksum,
``layout.integrity_problem``: a torn or corrupt line is caught). Otherwise the run stops with one line naming the changed keys (or the file), before that
phase; ``--rerun-changed`` reruns such a phase from scratch instead (and so, through the same checks,
everything downstream of it). Round r > 1 samples from round r-1's DPO adapter and
continues DPO from it (reference = that adapter), Iterative-RPO style; with ``policy: grpo`` round r > 1
continues GRPO from round r-1's adapter with seed ``grpo.seed + r - 1``. Round files get a ``_r{r}`` suffix.
The report is rebuilt only when it is missing or older than some file of the run, so a rerun that finds
every phase complete writes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from looper_math.config import Config
from looper_math.layout import Output, RunLayout, round_config
from looper_math.errors import StaleOutputError, UsageError


@dataclass
class Phase:
    """One step of ``looper-math run``: what it is called, the output it makes, and how to make it."""

    name: str
    output: Output
    run: Callable[[], object]

    @property
    def is_complete(self) -> bool:
        return self.output.complete


def phases(cfg: Config, layout: RunLayout, *, resume: bool, overwrite: bool) -> list[Phase]:
    """The phases of a run, in order: [base rollouts for rft SFT], SFT, eval base, eval SFT, then per round
    rollouts, pairs, DPO, eval DPO (``policy: dpo``) or GRPO, eval GRPO (``policy: grpo``)."""
    from looper_math.dpo import train_dpo
    from looper_math.evaluate import evaluate
    from looper_math.grpo import train_grpo
    from looper_math.preferences import run_prefs
    from looper_math.rollouts import collect_rollouts
    from looper_math.sft import train_sft

    def phase(output: Output, run: Callable[[], object], tag: str = "") -> Phase:
        return Phase(output.phase + tag, output, run)  # the output's phase is its phases.PHASES name

    out: list[Phase] = []
    base = layout.rollouts_base()
    if base is not None:
        out.append(phase(base, lambda: collect_rollouts(base.cfg, resume=resume, overwrite=overwrite)))
    out += [
        phase(layout.sft(), lambda: train_sft(cfg, resume=resume, overwrite=overwrite)),
        phase(layout.eval("none"), lambda: evaluate(cfg, "none", resume=resume, overwrite=overwrite)),
        phase(layout.eval("sft"), lambda: evaluate(cfg, "sft", resume=resume, overwrite=overwrite)),
    ]
    for r in range(1, layout.rounds + 1):
        c = round_config(cfg, r)
        tag = f" (round {r})" if layout.rounds > 1 else ""
        if cfg.policy == "grpo":
            out += [
                phase(layout.grpo(r), lambda c=c: train_grpo(c, resume=resume, overwrite=overwrite), tag),
                phase(layout.eval("grpo", r), lambda c=c: evaluate(c, "grpo", resume=resume, overwrite=overwrite), tag),
            ]
            continue
        rollouts, prefs = layout.rollouts(r), layout.prefs(r)
        out += [
            phase(rollouts, lambda c=c: collect_rollouts(c, resume=resume, overwrite=overwrite), tag),
            # pairs are rebuilt whole: an incomplete pairs file (no summary) is replaced
            phase(prefs, lambda c=c, i=rollouts.path, o=prefs.path: run_prefs(c, i, o, overwrite=True), tag),
            phase(layout.dpo(r), lambda c=c: train_dpo(c, resume=resume, overwrite=overwrite), tag),
            phase(layout.eval("dpo", r), lambda c=c: evaluate(c, "dpo", resume=resume, overwrite=overwrite), tag),
        ]
    return out


def run_pipeline(cfg: Config, *, rounds: int = 1, overwrite: bool = False, rerun_changed: bool = False) -> dict:
    from looper_math.compare import compare, format_compare
    from looper_math.report import build_report
    from looper_math.runio import launcher_rank

    if launcher_rank() is not None:  # each rank would write rollout/eval shards that prefs/compare never see
        raise UsageError("`looper-math run` is one process: under accelerate launch / torchrun run the phases as separate "
                         "commands (sft, dpo; rollouts/eval shards, then `looper-math merge`), see the README's Multi-GPU section")
    if rounds < 1:
        raise UsageError("--rounds must be >= 1")
    t0 = time.time()
    layout = RunLayout(cfg, rounds)
    done: list[str] = []
    for phase in phases(cfg, layout, resume=not overwrite, overwrite=overwrite):
        if phase.is_complete and not overwrite:
            problem = phase.output.problem()
            if problem is None:
                print(f"== {phase.name}: complete, skipped")
                continue
            if not rerun_changed:
                raise StaleOutputError(f"{phase.name}: {problem}; pass --rerun-changed to rerun it and what depends on it "
                                       f"(or --overwrite to rerun every phase)")
            print(f"== {phase.name}: {problem}; rerunning it")
            phase.output.clear()
        print(f"== {phase.name}")
        phase.run()
        done.append(phase.name)
    result = compare(layout.eval("sft").path, layout.eval(cfg.policy, rounds).path)
    print(format_compare(result))
    if layout.report_is_current():
        report = layout.report_dir / "report.html"
        print(f"report -> {report} (up to date)")
    else:
        report = build_report(layout)
        print(f"report -> {report}")
    if cfg.smoke:
        print("SMOKE RUN finished: every phase ran on a tiny random model; accuracies are meaningless by design.")
    print(f"run: {len(done)} {'phase' if len(done) == 1 else 'phases'} ran, {time.time() - t0:.0f}s")
    return {"phases_run": done, "compare": result, "report": str(report)}
