"""The decisions the staged GPU scripts make between their steps, out of bash: each reads the files earlier steps
wrote, writes what it chose beside them (one line per candidate, then the verdict) and prints the choice alone on
stdout for the calling script.

    python bench/choose.py lr OUTDIR LR...        the GRPO learning rate with the best dev accuracy, the first listed
                                                  on a tie (reads OUTDIR/grpo_lr<LR>_dev_eval.summary.json,
                                                  writes OUTDIR/lr_choice.txt; bench/learning.sh seed1)
    python bench/choose.py round2 OUTDIR R1NAME   whether GRPO round 2 gains on dev over round 1 with exact McNemar
                                                  p < 0.05 (reads OUTDIR/{R1NAME,grpo_r2}_dev_eval.jsonl, writes
                                                  OUTDIR/round2_choice.txt, prints yes|no; bench/learning.sh round2)
    python bench/choose.py attn DATADIR           the faster rollouts attention core of rollouts_speed.sh ab:
                                                  flex if its tokens/s beat stream's, else sdpa (prints it;
                                                  a missing summary counts as 0 tokens/s)
    python bench/choose.py cfg-lr CONFIG          the config's grpo.learning_rate as the candidates are named
                                                  (1e-4, 5e-5, 1.5e-4: checkpoints/grpo_lr1e-4)

A missing or unreadable input is one ``error:`` line naming the file and exit 1; the calling script treats any
non-zero exit as "no choice yet".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class ChoiceError(Exception):
    """An input of a choice is missing or malformed; the message names the file (and field)."""


def _summary_field(path: Path, *keys: str) -> float:
    try:
        value = json.loads(path.read_text())
    except OSError as e:
        raise ChoiceError(f"{path}: cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ChoiceError(f"{path}:{e.lineno}: not JSON: {e.msg}") from None
    for i, k in enumerate(keys):
        if not isinstance(value, dict) or k not in value:
            raise ChoiceError(f"{path}: field {'.'.join(keys[: i + 1])} missing")
        value = value[k]
    return value


def choose_lr(outdir: str | Path, lrs: list[str]) -> str:
    """The learning rate of ``lrs`` whose GRPO adapter has the best dev accuracy; on a tie the first listed.
    Writes ``outdir/lr_choice.txt``: one ``grpo.learning_rate LR: dev accuracy A`` line per candidate, then
    ``chosen LR``."""
    if not lrs:
        raise ChoiceError("lr: no candidate learning rates given")
    out = Path(outdir)
    acc = {lr: _summary_field(out / f"grpo_lr{lr}_dev_eval.summary.json", "accuracy") for lr in lrs}
    best = max(lrs, key=lambda lr: (acc[lr], -lrs.index(lr)))
    (out / "lr_choice.txt").write_text(
        "".join(f"grpo.learning_rate {lr}: dev accuracy {acc[lr]:.4f}\n" for lr in lrs) + f"chosen {best}\n")
    return best


def choose_round2(outdir: str | Path, r1_name: str) -> bool:
    """Round 2 goes to the test split only if it beats round 1 on dev with exact McNemar p < 0.05. Writes
    ``outdir/round2_choice.txt`` (one line: the dev delta, p and the verdict)."""
    # compare's own errors (different question ids, a malformed row) name the file
    from looper_math.compare import compare

    out = Path(outdir)
    a, b = out / f"{r1_name}_dev_eval.jsonl", out / "grpo_r2_dev_eval.jsonl"
    for p in (a, b):
        if not p.is_file():
            raise ChoiceError(f"{p}: not found (the dev eval of that round)")
    r = compare(a, b)
    ok = r["delta"] > 0 and r["mcnemar_p"] < 0.05
    (out / "round2_choice.txt").write_text(
        f"round 2 vs round 1 on dev: {100 * r['delta']:+.2f} pts, exact McNemar p = {r['mcnemar_p']:.3g}: "
        + ("round 2 gains, evaluated on test\n" if ok else "no significant gain, test not run\n"))
    return ok


def choose_attn(datadir: str | Path) -> str:
    """``flex`` if the ``flex`` rollouts of ``ab`` ran at more tokens/s than ``stream``'s, else ``sdpa`` (the
    default core). A run whose summary is missing, or has no ``this_run.tokens_per_s`` (cut before its end),
    counts as 0 tokens/s: ``whole`` still runs, on the default core unless flex is known to be faster."""
    tps = {}
    for name in ("stream", "flex"):
        try:
            tps[name] = _summary_field(Path(datadir) / f"rollouts_{name}.summary.json", "this_run", "tokens_per_s")
        except ChoiceError:
            tps[name] = 0
    return "flex" if tps["flex"] > tps["stream"] else "sdpa"


def lr_name(config: str | Path) -> str:
    """The config's ``grpo.learning_rate`` written as the candidates are named: the shortest mantissa and an
    unpadded exponent (1e-4, 5e-5, 1.5e-4), so that ``checkpoints/grpo_lr<LR>`` is the same folder either way."""
    import yaml

    try:
        cfg = yaml.safe_load(Path(config).read_text())
    except OSError as e:
        raise ChoiceError(f"{config}: cannot read: {e.strerror}") from None
    try:
        rate = float(cfg["grpo"]["learning_rate"])
    except (TypeError, KeyError, ValueError):
        raise ChoiceError(f"{config}: grpo.learning_rate: missing or not a number") from None
    mantissa, exponent = f"{rate:e}".split("e")
    return mantissa.rstrip("0").rstrip(".") + "e" + str(int(exponent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/choose.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("lr", help="the GRPO learning rate with the best dev accuracy")
    p.add_argument("outdir")
    p.add_argument("lrs", nargs="+")
    p = sub.add_parser("round2", help="whether round 2 gains on dev (yes|no)")
    p.add_argument("outdir")
    p.add_argument("r1_name")
    p = sub.add_parser("attn", help="the faster attention core of rollouts_speed.sh ab")
    p.add_argument("datadir")
    p = sub.add_parser("cfg-lr", help="the config's grpo.learning_rate as a candidate name")
    p.add_argument("config")
    args = ap.parse_args(argv)
    try:
        if args.what == "lr":
            print(choose_lr(args.outdir, args.lrs))
        elif args.what == "round2":
            print("yes" if choose_round2(args.outdir, args.r1_name) else "no")
        elif args.what == "attn":
            print(choose_attn(args.datadir))
        else:
            print(lr_name(args.config))
    except ChoiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
