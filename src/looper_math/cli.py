"""The ``looper-math`` command line (typer).

``looper-math sft|rollouts|prefs|dpo|eval|merge|compare|report|run|config [--config FILE] [--set key=value ...]``.
Without ``--config`` every command uses the embedded default (``configs/demo.yaml``: tiny model,
built-in problems, CPU). The original project's ``python -m src....`` commands call :func:`alias`, which
defaults to ``configs/abel7b.yaml``. Errors the user can fix (``errors.LooperError``: bad input, config,
argument, model, an existing output) and a full disk or a missing permission print one line and exit with
status 2; anything else is a bug and keeps its traceback. ``looper-math --debug COMMAND`` (or
``LOOPER_DEBUG=1``) shows the traceback of a user error too. Ctrl-C prints one line saying what is kept and
how to continue (after the traceback with --debug), and exits with status 130 (128 + SIGINT, the shell's convention). ``compare``, ``merge`` and
``convert-gguf`` read only the files they are given: ``--config``/``--set`` there is an error, not ignored.
"""

from __future__ import annotations

import errno
import os
import sys
import warnings
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Optional

import typer

from looper_math.phases import TRAINED

app = typer.Typer(add_completion=False, no_args_is_help=False, pretty_exceptions_enable=False,
                  help="Looper-Math-Platinum: post-training for grade-school math. SFT (gold or rejection-sampled) -> DPO rounds (Regime W rollouts -> correctness-first pairs) or GRPO -> evaluation with per-example JSONL (GSM8K test, or GSM8K-Platinum).")

CONFIG_DIR = files("looper_math") / "configs"
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (default: the embedded demo config).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a config key, e.g. --set sft.learning_rate=1e-4 (repeatable).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an existing output (only missing rows / from the last checkpoint).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
# compare, merge and convert-gguf read only the files they are given; --config there says so instead of click's bare
# "No such option" (the README once said every command takes --config)
NoConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", hidden=True)]
NoSetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", hidden=True)]
ADAPTERS = " | ".join(TRAINED)  # the trained adapters' names (phases.PHASES): sft | dpo | grpo


def _no_config(command: str, config: Path | None, set: list[str] | None, reads: str) -> None:
    from looper_math.errors import UsageError

    if config is not None or set:
        raise UsageError(f"`looper-math {command}` takes no --config or --set: it reads only {reads}")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"looper-math {version('looper-math')}")
        raise typer.Exit()


def _env_debug() -> bool:
    return os.environ.get("LOOPER_DEBUG", "") not in ("", "0")


_DEBUG = {"on": _env_debug()}  # set by each invocation's --debug (or LOOPER_DEBUG)

# FutureWarnings a user can do nothing about, repeated by every trainer and model load. transformers 5.x renamed
# gradient checkpointing to activation checkpointing: the old TrainingArguments names still work (sft.py, dpo.py
# and grpo.py pass them; the new ones do not exist in every transformers >= 5.0 that pyproject.toml allows) and
# PEFT/TRL read the old `is_gradient_checkpointing` property. Only these messages are silenced; every other
# warning still shows.
KNOWN_NOISE = (
    r"`gradient_checkpointing(_kwargs)?` is deprecated and will be removed in v6",  # transformers/training_args.py
    r"`is_gradient_checkpointing` is deprecated and will be removed in v6",  # transformers/modeling_utils.py
)


def quiet_known_warnings() -> None:
    for message in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
         debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of an error instead of one line (also LOOPER_DEBUG=1).")] = False):
    """Looper-Math-Platinum: post-training for grade-school math. SFT (gold or rejection-sampled) -> DPO rounds (Regime W rollouts -> correctness-first pairs) or GRPO -> evaluation with per-example JSONL (GSM8K test, or GSM8K-Platinum)."""
    _DEBUG["on"] = debug or _env_debug()
    quiet_known_warnings()


def _load(config: Path | None, overrides: list[str] | None):
    from looper_math.config import load_config

    path = config if config is not None else Path(str(CONFIG_DIR / "demo.yaml"))
    cfg = load_config(path, overrides)
    if cfg.smoke:
        print("SMOKE RUN: tiny random model and built-in problems - this checks the plumbing, not the science.")
    return cfg


# OS errors a user fixes (free space, permissions), reported in one line like bad input
_ENV_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


RERUN = "rerun the same command once fixed"  # what commands without --resume say (`run` continues by itself)

# what Ctrl-C prints: what is kept and the exact way to continue
INTERRUPTED_RESUME = ("interrupted: the rows and checkpoints already written are kept; to continue, rerun the same "
                      "command with --resume")
INTERRUPTED_RUN = ("interrupted: finished phases and the rows and checkpoints already written are kept; to continue, "
                   "rerun the same command (it skips finished phases and resumes the partial one)")
INTERRUPTED_RERUN = "interrupted before the output was written (it is written whole, at the end); rerun the same command"


def _guard(fn, *args, again: str = "rerun with --resume once fixed", interrupted: str = INTERRUPTED_RESUME, **kwargs):
    from looper_math.errors import LooperError

    try:
        return fn(*args, **kwargs)
    except KeyboardInterrupt:
        if _DEBUG["on"]:  # where it stopped (click would swallow a re-raised KeyboardInterrupt into "Aborted!")
            import traceback

            traceback.print_exc(file=sys.stderr)
        print(f"\n{interrupted}", file=sys.stderr)  # \n: the line ^C was typed on may hold a progress bar
        raise typer.Exit(130) from None
    except LooperError as e:
        if _DEBUG["on"]:
            raise
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    except OSError as e:
        if e.errno not in _ENV_ERRNOS or _DEBUG["on"]:
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: {e.strerror or e}{where}; finished files are kept, {again}", file=sys.stderr)
        raise typer.Exit(2) from None


@app.command()
def sft(config: ConfigOpt = None, set: SetOpt = None, resume: ResumeOpt = False, overwrite: OverwriteOpt = False):
    """Phase 1: LoRA SFT on the training split -> sft.output_dir (sft.data rft: rolls out the base model first)."""
    from looper_math.layout import rft_rollouts_config
    from looper_math.sft import train_sft

    def go():
        cfg = _load(config, set)
        if rft_rollouts_config(cfg) is not None:  # the original phase-1 command keeps working on its own
            _base_rollouts_first(cfg, f"sft: sft.data={cfg.sft.data}")
        return train_sft(cfg, resume=resume, overwrite=overwrite)

    _guard(go)


def _base_rollouts_first(cfg, who: str) -> None:
    """Collect the base model's rollouts (``sft.rft_rollouts``) when they are not written yet."""
    from looper_math.layout import RunLayout
    from looper_math.rollouts import collect_rollouts

    base = RunLayout(cfg).rollouts_base()
    if base is not None and not base.complete:
        print(f"{who} needs the base model's rollouts; collecting {base.path} first")
        collect_rollouts(base.cfg, resume=True)


@app.command()
def grpo(config: ConfigOpt = None, set: SetOpt = None, resume: ResumeOpt = False, overwrite: OverwriteOpt = False):
    """Online RL: TRL GRPO from grpo.init_adapter with the grpo.reward reward (default correctness; regime_w | regime_w_gated) -> grpo.output_dir."""
    from looper_math.grpo import train_grpo

    def go():
        cfg = _load(config, set)
        if cfg.grpo.curriculum == "mixed":
            _base_rollouts_first(cfg, "grpo: grpo.curriculum=mixed")
        return train_grpo(cfg, resume=resume, overwrite=overwrite)

    _guard(go)


@app.command()
def rollouts(config: ConfigOpt = None, set: SetOpt = None, resume: ResumeOpt = False, overwrite: OverwriteOpt = False,
             limit: Annotated[int | None, typer.Option(help="Only the first N questions.")] = None,
             shard: Annotated[str | None, typer.Option(help="i/n: this process takes shard i of n (0-based); output gets a .shard-i-of-n suffix.")] = None):
    """Phase 2: Regime W rollouts (k trajectories per question, scored) -> rollouts.output."""
    from looper_math.rollouts import collect_rollouts

    def go():
        cfg = _load(config, set)
        if limit is not None:
            cfg.rollouts.limit = limit
        return collect_rollouts(cfg, resume=resume, overwrite=overwrite, shard=shard)

    _guard(go)


@app.command()
def prefs(config: ConfigOpt = None, set: SetOpt = None, overwrite: OverwriteOpt = False):
    """Phase 3: correctness-first preference pairs -> prefs.output."""
    from looper_math.preferences import run_prefs

    def go():
        cfg = _load(config, set)
        return run_prefs(cfg, cfg.path(cfg.rollouts.output), cfg.path(cfg.prefs.output), overwrite=overwrite)

    _guard(go, again=RERUN, interrupted=INTERRUPTED_RERUN)


@app.command()
def dpo(config: ConfigOpt = None, set: SetOpt = None, resume: ResumeOpt = False, overwrite: OverwriteOpt = False):
    """Phase 4: DPO (+NLL) from the SFT adapter on the pairs -> dpo.output_dir."""
    from looper_math.dpo import train_dpo

    _guard(lambda: train_dpo(_load(config, set), resume=resume, overwrite=overwrite))


@app.command("eval")
def eval_cmd(config: ConfigOpt = None, set: SetOpt = None, resume: ResumeOpt = False, overwrite: OverwriteOpt = False,
             adapter: Annotated[str, typer.Option(help=f"{ADAPTERS} | none (base model) | path to an adapter folder.")] = "sft",
             output: Annotated[Path | None, typer.Option(help="Per-example JSONL (default from eval.*_output).")] = None,
             limit: Annotated[int | None, typer.Option(help="Only the first N questions.")] = None,
             shard: Annotated[str | None, typer.Option(help="i/n: evaluate shard i of n (0-based).")] = None):
    """Phase 5: greedy evaluation, per-example JSONL + summary JSON."""
    from looper_math.evaluate import evaluate

    def go():
        cfg = _load(config, set)
        if limit is not None:
            cfg.eval.limit = limit
        return evaluate(cfg, adapter, output=output, resume=resume, overwrite=overwrite, shard=shard)

    _guard(go)


@app.command()
def merge(output: Annotated[Path, typer.Argument(help="The unsharded output, e.g. runs/x/data/rollouts.jsonl (shards are <stem>.shard-i-of-n.jsonl).")],
          kind: Annotated[str, typer.Option(help="rollouts | eval")] = ...,
          shards: Annotated[int, typer.Option(help="n: the number of shards the run was split into.")] = ...,
          overwrite: OverwriteOpt = False, config: NoConfigOpt = None, set: NoSetOpt = None):
    """Merge the shard files of `rollouts/eval --shard i/n` into OUTPUT (every key exactly once) + its summary."""
    from looper_math.shards import merge as do_merge

    def go():
        _no_config("merge", config, set, "the shard files of OUTPUT (their resolved config is checked against each other)")
        return do_merge(kind, output, shards, overwrite=overwrite)

    _guard(go, again=RERUN, interrupted=INTERRUPTED_RERUN)


@app.command()
def compare(a: Path, b: Path, intersect: Annotated[bool, typer.Option(help="Compare only question ids present in both.")] = False,
            config: NoConfigOpt = None, set: NoSetOpt = None):
    """Paired comparison of two eval JSONL files: accuracies, exact McNemar p-value, flipped ids (takes no --config)."""
    from looper_math.compare import compare as do_compare
    from looper_math.compare import format_compare

    def go():
        _no_config("compare", config, set, "the two eval JSONL files A and B (a config names them: eval.sft_output, eval.dpo_output, ...)")
        print(format_compare(do_compare(a, b, intersect=intersect)))

    _guard(go, again=RERUN, interrupted=INTERRUPTED_RERUN)


@app.command()
def report(run_dir: Annotated[Path | None, typer.Argument(help="Run directory (default: the config's run_dir; without --config, runs/demo).")] = None,
           config: Annotated[Path | None, typer.Option("--config", "-c", help="The run's config: the report reads the outputs it names (renamed ones too).")] = None,
           set: SetOpt = None,
           out: Annotated[Path | None, typer.Option(help="Output folder (default RUN_DIR/report).")] = None):
    """One HTML page (+PNGs) summarizing a run."""
    from looper_math.layout import RunLayout
    from looper_math.report import build_report

    def go():
        if config is None and not set:  # a bare run directory: its outputs found by the conventional names
            return build_report(run_dir or Path("runs/demo"), out)
        cfg = _load(config, set)
        if run_dir is not None:
            cfg.run_dir = str(run_dir)
        return build_report(RunLayout(cfg), out)

    _guard(lambda: print(f"report -> {go()}"), again=RERUN, interrupted=INTERRUPTED_RERUN)


@app.command()
def run(config: ConfigOpt = None, set: SetOpt = None, overwrite: OverwriteOpt = False,
        rounds: Annotated[Optional[int], typer.Option(help="Rounds after SFT, each from the newest adapter (policy dpo: rollouts -> pairs -> DPO; grpo: GRPO); default: the config's `rounds`.")] = None,
        rerun_changed: Annotated[bool, typer.Option("--rerun-changed", help="Rerun a finished phase whose settings or inputs changed since it ran, or whose output no longer matches its summary (a torn or edited file), and what depends on it, instead of stopping.")] = False):
    """Every phase of the config's recipe: SFT, eval of base and SFT, then per round rollouts -> pairs -> DPO -> eval (policy: dpo) or GRPO -> eval (policy: grpo); compare; report.

    SFT with sft.data rft first rolls out the base model. Complete and current phases are skipped, partial ones
    resumed, changed ones stop the run (see --rerun-changed)."""
    from looper_math.pipeline import run_pipeline

    def go():
        cfg = _load(config, set)
        return run_pipeline(cfg, rounds=cfg.rounds if rounds is None else rounds, overwrite=overwrite, rerun_changed=rerun_changed)

    _guard(go, again=RERUN, interrupted=INTERRUPTED_RUN)


@app.command("config")
def config_cmd(config: ConfigOpt = None, set: SetOpt = None,
               keys: Annotated[bool, typer.Option("--keys", help="List every key with its value in the config shown (without --config: the demo config, "
                                                  "what commands use without --config), the built-in default where that differs, and its help.")] = False):
    """Print the resolved config (or, with --keys, every key with its value, built-in default and help)."""
    import yaml

    from looper_math.config import help_table, load_config, to_dict

    def go():
        # load_config, not _load: the output is YAML (`config > my.yaml`), so no SMOKE RUN banner in it
        cfg = load_config(config if config is not None else Path(str(CONFIG_DIR / "demo.yaml")), set)
        if not keys:
            print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
            return
        shown = "the embedded demo config (configs/demo.yaml: what commands use without --config)" if config is None else str(config)
        print(f"# key, its value in {shown}, help; [built-in: X] where a key left out of a config file gets another value. "
              f"Another config: looper-math config --keys -c FILE")
        for k, d, h in help_table():
            value = cfg
            for part in k.split("."):
                value = getattr(value, part)
            builtin = "" if repr(value) == d else f" [built-in: {d}]"
            print(f"{k:45s} {repr(value):25s} {h}{builtin}")

    _guard(go, again=RERUN, interrupted=INTERRUPTED_RERUN)


@app.command("convert-gguf")
def convert_gguf_cmd(src: Annotated[Path, typer.Argument(help="Folder holding the GGUF file.")],
                     gguf_file: Annotated[str, typer.Argument(help="GGUF file name inside SRC.")],
                     dst: Annotated[Path, typer.Argument(help="Output folder (plain safetensors model + tokenizer).")],
                     overwrite: OverwriteOpt = False, config: NoConfigOpt = None, set: NoSetOpt = None):
    """Dequantize a GGUF model once into a plain folder that every phase can load and train."""
    from looper_math.modeling import convert_gguf

    def go():
        _no_config("convert-gguf", config, set, "SRC/GGUF_FILE")
        print(f"converted -> {convert_gguf(str(src), gguf_file, dst, overwrite=overwrite)}")

    _guard(go, again=RERUN, interrupted=INTERRUPTED_RERUN)


ALIAS_CONFIG_HELP = "YAML config (default for this original command: the embedded configs/abel7b.yaml)."


@app.command()
def prepare(what: Annotated[str, typer.Argument(help="gsm8k | gguf (the checked GGUF only) | model | all.")] = "all",
            src: Annotated[Path | None, typer.Option("--from", help="Local folder: train.jsonl + test.jsonl (gsm8k) or model.gguf (gguf, model) instead of the network.")] = None,
            overwrite: OverwriteOpt = False):
    """Fetch, verify (sha256) and place GSM8K (.gsm8k/) and the 0.5B model (.models/qwen05) that configs/qwen05_gpu.yaml reads."""
    from looper_math.prepare import prepare as do_prepare

    _guard(lambda: print("\n".join(do_prepare(what, src, overwrite=overwrite))), again=RERUN)


def alias(command: str, *fixed: str) -> None:
    """Entry of the original ``python -m src....`` commands: ``looper-math COMMAND`` with abel7b.yaml by default."""
    argv = list(sys.argv[1:])
    if not any(a in ("--config", "-c") or a.startswith("--config=") for a in argv):
        argv = ["--config", str(CONFIG_DIR / "abel7b.yaml"), *argv]
    debug = ["--debug"] if "--debug" in argv else []  # an option of the app, given before the command
    cli = typer.main.get_command(app)
    for param in cli.commands[command].params:  # --help must name the default this entry gives, not the demo's
        if param.name == "config":
            param.help = ALIAS_CONFIG_HELP
    cli([*debug, command, *fixed, *(a for a in argv if a != "--debug")], prog_name="looper-math")  # typer adds the command name to the usage line


if __name__ == "__main__":
    app()
