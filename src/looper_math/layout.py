"""The run's layout: every output path, its summary and resolved config, and whether it is complete.

One :class:`RunLayout` per config; phases, ``run``, ``merge`` and ``report`` ask it instead of building
file names themselves. Names (relative paths resolve against ``run_dir``)::

    <output>.jsonl                       rollouts, pairs, eval rows (rollouts.output, prefs.output, eval.*_output)
    <output stem>.summary.json           its summary (written last: "complete")
    <output stem>.resolved_config.yaml   the resolved config it ran with
    <output stem>.shard-i-of-n.jsonl     a data-parallel shard (+ its own summary and resolved config)
    <output_dir>/                        an adapter (sft.output_dir, dpo.output_dir, grpo.output_dir):
        train_summary.json               written last: "complete"
        resolved_config.yaml, log_history.json, trainer/checkpoint-N/
    report/report.html                   the report (+ PNGs)

Round r > 1 of ``looper-math run --rounds`` writes its rollouts, pairs, DPO adapter and DPO evaluation
(``policy: dpo``), or its GRPO adapter and evaluation (``policy: grpo``), with a ``_r{r}`` suffix
(:func:`round_config`). The base-model rollouts that rejection-sampling SFT learns
from (``sft.data: rft``, :func:`rft_rollouts_config`) and whose mixed questions GRPO trains on
(``grpo.curriculum: mixed``, :func:`curriculum_rollouts_config`) are ``sft.rft_rollouts``.

A run directory without a config (``looper-math report RUN_DIR``) is read through
:meth:`RunLayout.discover`: the conventional folders only (``outputs/``, ``data/``, ``checkpoints/*/``), never
a recursive walk and never a shard file.

Integrity: every summary is written by :func:`write_summary`, which records what the finished output was
(a JSONL's ``output_rows`` and ``output_sha256`` of its bytes; an adapter folder's ``adapter_sha256`` of
``adapter_model.safetensors``). A complete output is trusted (``run`` skips it, ``report``, ``prefs``, ``sft``
and ``dpo`` read it) only while :func:`integrity_problem` finds nothing: a torn or corrupt line, a row count
or checksum that differs, a missing weights file is named in one line with how to rebuild it. Summaries of
earlier versions have no checksum: their JSONL must still parse line by line and hold the rows they count.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from looper_math.config import Config, changed_settings
from looper_math.phases import EVALS, PHASES, eval_spec
from looper_math.runio import DataError, atomic_write_json, clear_output, read_json, sha256_file

SHARD_TAG = ".shard-"
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # the file of an adapter folder the summary's checksum covers
# what to do about a damaged finished output, for the commands that find one outside `run` (which names its own flag)
REBUILD = "rebuild it with `looper-math run --rerun-changed` (or rerun its phase with --overwrite)"


def summary_of(path: Path) -> Path:
    """The summary of an output: ``<stem>.summary.json`` beside a JSONL, ``train_summary.json`` in an adapter folder."""
    path = Path(path)
    return path / "train_summary.json" if path.suffix != ".jsonl" else path.with_name(path.stem + ".summary.json")


def resolved_of(path: Path) -> Path:
    """The resolved config written with an output (beside a JSONL, inside an adapter folder)."""
    path = Path(path)
    return path / "resolved_config.yaml" if path.suffix != ".jsonl" else path.with_name(path.stem + ".resolved_config.yaml")


def _scan(path: Path) -> tuple[int, str]:
    """(non-empty lines, sha256 of the bytes) of a JSONL, in one pass."""
    h, rows = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for raw in f:
            h.update(raw)
            rows += bool(raw.strip())
    return rows, h.hexdigest()


def _first_bad_line(path: Path) -> str | None:
    """``path:LINE: why`` for the first non-empty line that is not one JSON object (a torn or corrupt row), else None."""
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            torn = "" if raw.endswith(b"\n") else ", no newline: a torn last line"
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                return f"{path}:{i}: invalid JSON ({e.__class__.__name__}{torn})"
            if not isinstance(obj, dict):
                return f"{path}:{i}: expected a JSON object, got {type(obj).__name__}"
    return None


def output_record(path: Path) -> dict:
    """What a summary records of its finished output: a JSONL's row count and sha256, an adapter folder's
    weights sha256 (see :func:`integrity_problem`)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        rows, sha = _scan(path)
        return {"output_rows": rows, "output_sha256": sha}
    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise DataError(f"{weights}: missing after the final save, so the adapter cannot be marked complete")
    return {"adapter_sha256": sha256_file(weights)}


def write_summary(path: Path, summary: dict) -> dict:
    """Write the summary of the finished output at ``path`` (every phase's last write: it marks the output
    complete), with :func:`output_record` of the output added; returns the summary as written."""
    summary = {**summary, **output_record(path)}
    atomic_write_json(summary_of(path), summary)
    return summary


def integrity_problem(path: Path, count_key: str | None = None) -> str | None:
    """Why the finished output at ``path`` no longer is what its summary recorded (None when it is, or when it
    has no summary: it is not finished). ``count_key``: the summary field that counts a JSONL's rows in
    summaries written before ``output_rows`` (rows, n, pairs)."""
    path = Path(path)
    summary_path = summary_of(path)
    if not summary_path.exists():
        return None
    try:
        summary = read_json(summary_path)
    except DataError as e:  # a damaged summary is a damaged output: rebuilt like one
        return str(e)
    if not isinstance(summary, dict):
        return f"{summary_path}: expected a JSON object, got {type(summary).__name__}"
    if path.suffix != ".jsonl":
        weights = path / ADAPTER_WEIGHTS
        if not weights.is_file():
            return f"{weights} is missing but {summary_path.name} says the adapter is complete"
        want = summary.get("adapter_sha256")
        if want is not None and sha256_file(weights) != want:
            return f"{weights} differs from the adapter {summary_path.name} recorded (sha256)"
        return None
    if not path.is_file():
        return f"{path} is missing but {summary_path.name} says it is complete"
    want_rows = summary.get("output_rows", summary.get(count_key) if count_key else None)
    want_sha = summary.get("output_sha256")
    rows, sha = _scan(path)
    if sha == want_sha:
        return None
    bad = _first_bad_line(path)  # only read line by line when the checksum does not vouch for the file
    if bad is not None:
        return f"{bad}; {summary_path.name} counts {want_rows} rows"
    if want_rows is not None and rows != want_rows:
        return f"{path} holds {rows} rows but {summary_path.name} counts {want_rows}"
    if want_sha is not None:
        return f"{path} changed after {summary_path.name} was written ({rows} rows as counted, but its sha256 differs)"
    return None


def check_intact(path: Path, count_key: str | None = None) -> None:
    """Raise DataError (the problem and how to rebuild the output) when a finished output is damaged; an
    output without a summary is left to its reader."""
    problem = integrity_problem(path, count_key)
    if problem is not None:
        raise DataError(f"{problem}; {REBUILD}")


def _suffixed(path: str, r: int) -> str:
    if r == 1:
        return path
    p = Path(path)
    return str(p.with_name(f"{p.stem}_r{r}{p.suffix}"))


def round_config(cfg: Config, r: int) -> Config:
    """The config of round r of ``run --rounds``: suffixed outputs, sampling from and starting at round r-1's adapter
    (DPO's, or GRPO's with the next seed)."""
    c = copy.deepcopy(cfg)
    if r > 1:
        for spec in PHASES.values():
            if spec.per_round:  # rollouts, pairs, dpo, grpo and their evaluations
                spec.set_output(c, _suffixed(spec.output_in(cfg), r))
        prev = str(cfg.path(_suffixed(cfg.dpo.output_dir, r - 1)))
        c.rollouts.adapter = prev
        c.dpo.init_adapter = prev
        c.grpo.init_adapter = str(cfg.path(_suffixed(cfg.grpo.output_dir, r - 1)))
        c.grpo.seed = cfg.grpo.seed + r - 1  # other questions in another order
    return c


def rft_rollouts_config(cfg: Config) -> Config | None:
    """The config of the rollouts that rejection-sampling SFT learns from (the base model, no adapter, written
    to ``sft.rft_rollouts``), or None when ``sft.data`` uses no rft data."""
    if "rft" not in cfg.sft.data.split("+"):
        return None
    return base_rollouts_config(cfg)


def curriculum_rollouts_config(cfg: Config) -> Config | None:
    """The config of the rollouts whose mixed questions GRPO trains on (``grpo.curriculum: mixed``: the same base
    rollouts, ``sft.rft_rollouts``), or None when GRPO trains on every question."""
    return base_rollouts_config(cfg) if cfg.grpo.curriculum == "mixed" else None


def base_rollouts_config(cfg: Config) -> Config:
    """The base model's rollouts (no adapter) written to ``sft.rft_rollouts``."""
    c = copy.deepcopy(cfg)
    c.rollouts.adapter = "none"
    c.rollouts.output = cfg.sft.rft_rollouts
    return c


@dataclass
class Output:
    """One output of a phase: where it is, its summary and resolved config, and how to tell it is current."""

    cfg: Config | None  # None for an output found by RunLayout.discover (no config known)
    phase: str  # its phases.PHASES name (a discovered output: its kind, eval | rollouts | prefs | train)
    path: Path  # the JSONL file or the adapter folder
    count_key: str | None = None  # the summary field that counts the JSONL's rows
    inputs: tuple[Path, ...] = ()  # summaries of the outputs it was built from
    label: str = ""  # what the report calls it (base, sft, dpo, dpo_r2, ...)

    @property
    def summary(self) -> Path:
        return summary_of(self.path)

    @property
    def resolved(self) -> Path:
        return resolved_of(self.path)

    @property
    def complete(self) -> bool:
        """Its summary exists (every phase writes it last)."""
        return self.summary.exists()

    def problem(self) -> str | None:
        """Why a complete output is not current (None when it is): settings changed, an input is newer, or it is
        not what its summary recorded (:func:`integrity_problem`)."""
        for f in (self.summary, self.resolved):
            if not f.exists():
                return f"{f} is missing, so its settings are unknown"
        if self.cfg is not None:
            changed = changed_settings(self.cfg, self.phase, self.resolved)
            if changed:
                return "settings changed since it ran: " + ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in changed)
        t = self.summary.stat().st_mtime_ns
        newer = [f for f in self.inputs if f.exists() and f.stat().st_mtime_ns > t]
        if newer:
            return f"its input {newer[0]} is newer than it"
        return integrity_problem(self.path, self.count_key)

    def clear(self) -> None:
        for f in (self.path, self.summary, self.resolved):
            clear_output(f)

    def files(self) -> list[Path]:
        """The files of it the report reads (for report freshness)."""
        if self.path.suffix == ".jsonl":
            return [self.path, self.summary, self.resolved]
        return [self.summary, self.resolved, self.path / "log_history.json"]


@dataclass
class RunLayout:
    """Every output of a run of ``cfg`` with ``rounds`` rounds of rollouts -> pairs -> DPO."""

    cfg: Config | None
    rounds: int = 1
    run_dir: Path = field(default=Path("."))
    _found: dict[str, list[Output]] | None = None  # RunLayout.discover only

    def __post_init__(self):
        if self.cfg is not None:
            self.run_dir = Path(self.cfg.run_dir)

    # ---- one output each: path, row-count key and label from its phases.PHASES spec; the inputs chain the rounds
    def _output(self, name: str, c: Config, inputs: tuple[Path, ...] = (), r: int = 1) -> Output:
        spec = PHASES[name]
        return Output(c, name, c.path(spec.output_in(c)), spec.count_key, inputs, spec.label + _tag(r))

    def rollouts_base(self) -> Output | None:
        """The base model's rollouts that rft SFT learns from and the GRPO curriculum filters by, or None when
        neither reads them (sft.data without rft, grpo.curriculum none)."""
        c0 = rft_rollouts_config(self.cfg) or curriculum_rollouts_config(self.cfg)
        return None if c0 is None else self._output("rollouts_base", c0)

    def sft(self) -> Output:
        rb = self.rollouts_base() if rft_rollouts_config(self.cfg) is not None else None
        return self._output("sft", self.cfg, (rb.summary,) if rb else ())

    def eval(self, adapter: str | None, r: int = 1) -> Output:
        """The evaluation of ``adapter`` (sft | dpo | grpo | none | a path); ``dpo`` / ``grpo`` of round ``r``."""
        spec = eval_spec(adapter)
        if adapter is not None and adapter not in EVALS:  # an adapter outside the run, evaluated like the base model
            return Output(self.cfg, spec.name, self.cfg.path(f"outputs/{Path(adapter).name}_eval.jsonl"), spec.count_key,
                          label=Path(adapter).name)
        r = r if spec.per_round else 1
        trained = {"sft": self.sft, "dpo": lambda: self.dpo(r), "grpo": lambda: self.grpo(r)}
        inputs = tuple(trained[i]().summary for i in spec.inputs)
        return self._output(spec.name, round_config(self.cfg, r) if spec.per_round else self.cfg, inputs, r)

    def rollouts(self, r: int = 1) -> Output:
        return self._output("rollouts", round_config(self.cfg, r), (self._adapter_summary(r),), r)

    def prefs(self, r: int = 1) -> Output:
        return self._output("prefs", round_config(self.cfg, r), (self.rollouts(r).summary,), r)

    def dpo(self, r: int = 1) -> Output:
        return self._output("dpo", round_config(self.cfg, r), (self.prefs(r).summary, self._adapter_summary(r)), r)

    def grpo(self, r: int = 1) -> Output:
        start = self.sft().summary if r == 1 else self.grpo(r - 1).summary
        base = self.rollouts_base() if curriculum_rollouts_config(self.cfg) is not None else None
        return self._output("grpo", round_config(self.cfg, r), (start, *([base.summary] if base else [])), r)

    def _adapter_summary(self, r: int) -> Path:
        """The adapter round r samples from and starts DPO from: SFT for round 1, round r-1's DPO after."""
        return self.sft().summary if r == 1 else self.dpo(r - 1).summary

    def policy_rounds(self, policy: str) -> range:
        """The rounds of ``policy`` this run makes: all of them for the config's policy, round 1 of the other
        (its standalone command, e.g. `looper-math grpo` beside DPO rounds)."""
        return range(1, (self.rounds if self.cfg.policy == policy else 1) + 1)

    # ---- groups the pipeline and the report iterate
    def evals(self) -> list[Output]:
        if self._found is not None:
            return self._found["eval"]
        return [self.eval("none"), self.eval("sft"), *(self.eval("dpo", r) for r in self.policy_rounds("dpo")),
                *(self.eval("grpo", r) for r in self.policy_rounds("grpo"))]

    def trainings(self) -> list[Output]:
        if self._found is not None:
            return self._found["train"]
        return [self.sft(), *(self.dpo(r) for r in self.policy_rounds("dpo")), *(self.grpo(r) for r in self.policy_rounds("grpo"))]

    def rollouts_files(self) -> list[Output]:
        if self._found is not None:
            return self._found["rollouts"]
        base = self.rollouts_base()
        return [*(self.rollouts(r) for r in reversed(self.policy_rounds("dpo"))), *([base] if base else [])]  # newest round first

    def prefs_files(self) -> list[Output]:
        if self._found is not None:
            return self._found["prefs"]
        return [self.prefs(r) for r in reversed(self.policy_rounds("dpo"))]

    def all_outputs(self) -> list[Output]:
        return [*self.trainings(), *self.evals(), *self.rollouts_files(), *self.prefs_files()]

    @property
    def smoke(self) -> bool:
        """A smoke run: the config says so, or (a discovered run dir) a resolved config of one of its outputs does."""
        if self.cfg is not None:
            return self.cfg.smoke
        from looper_math.config import yaml_load

        for f in [self.run_dir / "resolved_config.yaml", *(o.resolved for o in self.all_outputs())]:
            if f.is_file():
                tree = yaml_load(f.read_text())
                if isinstance(tree, dict) and tree.get("smoke") is True:
                    return True
        return False

    # ---- the report
    @property
    def report_dir(self) -> Path:
        return self.run_dir / "report"

    def report_is_current(self, out_dir: Path | None = None) -> bool:
        """The report page exists and none of the files it is built from is newer (only those: not the whole tree)."""
        page = Path(out_dir or self.report_dir) / "report.html"
        if not page.exists():
            return False
        t = page.stat().st_mtime_ns
        return not any(f.exists() and f.stat().st_mtime_ns > t for o in self.all_outputs() for f in o.files())

    @classmethod
    def discover(cls, run_dir: Path) -> RunLayout:
        """The outputs of a run directory whose config is unknown, found by the conventional names only:
        ``outputs/*eval*.jsonl|summary.json``, ``data/*rollouts*.jsonl``, ``data/*preferences*.jsonl``,
        ``checkpoints/*/`` with a ``log_history.json``; shard files are left out (``looper-math merge`` makes
        the one output they are part of)."""
        run_dir = Path(run_dir)

        def plain(paths) -> list[Path]:
            return sorted(p for p in paths if SHARD_TAG not in p.name)

        evals = {p.with_name(p.name[: -len(".summary.json")] + ".jsonl")
                 for p in plain((run_dir / "outputs").glob("*eval*.summary.json"))}
        found = {
            "eval": [Output(None, "eval", p, "n", label=p.stem) for p in sorted(evals)],
            "rollouts": [Output(None, "rollouts", p, "rows", label=p.stem)
                         for p in sorted(plain((run_dir / "data").glob("*rollouts*.jsonl")), key=_newest_first)],
            "prefs": [Output(None, "prefs", p, "pairs", label=p.stem)
                      for p in sorted(plain((run_dir / "data").glob("*preferences*.jsonl")), key=_newest_first)],
            "train": [Output(None, "train", f.parent, label=f.parent.name)
                      for f in sorted((run_dir / "checkpoints").glob("*/log_history.json"))],
        }
        return cls(None, run_dir=run_dir, _found=found)


def _newest_first(p: Path) -> tuple[float, str]:
    return (-p.stat().st_mtime, p.name)


def _tag(r: int) -> str:
    return "" if r == 1 else f"_r{r}"
