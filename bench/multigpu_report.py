"""Summarize bench/multigpu.sh: loss curves 1 vs 2 GPUs, training tokens/s, rollout key sets and times;
and bench/multigpu_h200.sh (--h200): SFT 1 GPU vs DDP vs ZeRO-2 vs ZeRO-3, rollouts 1 vs 2 processes,
DPO 1 vs 2 GPUs and the reference adapter's hashes, each comparison with a pass flag.

    python bench/multigpu_report.py RUN_ROOT STEPS_JSONL     # multigpu.sh; prints one JSON object
    python bench/multigpu_report.py --h200 RUN_ROOT STEPS_JSONL [--tol 0.01] [--dpo-nll "0 1"] [--zero "2 3"] [--env FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
from pathlib import Path


def rows_by_key(path: Path) -> dict[tuple[str, int], dict]:
    with open(path) as f:
        return {(r["question_id"], r["sample_idx"]): r for r in map(json.loads, f)}


def sft_part(root: Path, walls: dict) -> dict:
    sft = {n: json.loads((root / n / "checkpoints/sft_lora/train_summary.json").read_text()) for n in ("gpu1", "gpu2")}
    c1, c2 = (dict((s, l) for s, l in sft[n]["losses"]) for n in ("gpu1", "gpu2"))
    common = sorted(set(c1) & set(c2))
    diffs = [c2[s] - c1[s] for s in common]
    per = lambda key: {n: sft[n].get(key) for n in sft}  # noqa: E731
    return {
        "steps": per("steps"), "processes": per("processes"),
        "loss_curve": [[s, round(c1[s], 4), round(c2[s], 4)] for s in common],
        "loss_diff_2gpu_minus_1gpu": {"mean": round(statistics.mean(diffs), 4), "mean_abs": round(statistics.mean(map(abs, diffs)), 4),
                                       "max_abs": round(max(map(abs, diffs)), 4)} if diffs else None,
        "train_loss": per("train_loss"),
        "train_tokens_per_s": per("train_tokens_per_s"),  # whole train() call, first steps included
        "steady_tokens_per_s": per("steady_tokens_per_s"),  # after the first 20 % of the steps
        "steady_seconds_per_step": per("steady_seconds_per_step"),
        "train_seconds": per("seconds"),
        "wall_s": {"gpu1": walls.get("sft_1gpu"), "gpu2": walls.get("sft_2gpu")},
    }


def rollouts_part(root: Path, walls: dict) -> dict:
    d = root / "gpu1" / "data"
    a, b = rows_by_key(d / "rollouts_1gpu.jsonl"), rows_by_key(d / "rollouts_2gpu.jsonl")
    k1, k2 = set(a), set(b)
    both = k1 & k2
    r1 = json.loads((d / "rollouts_1gpu.summary.json").read_text())
    r2 = json.loads((d / "rollouts_2gpu.summary.json").read_text())
    out = {
        "rows": {"gpu1": len(k1), "gpu2_merged": len(k2)},
        "same_keys": k1 == k2, "only_1gpu": len(k1 - k2), "only_2gpu": len(k2 - k1),
        # per-key seeds make the samples reproducible; batch composition still changes bf16 kernels
        "same_arm": sum(a[k]["arm"] == b[k]["arm"] for k in both),
        "identical_text": sum(a[k]["full_text"] == b[k]["full_text"] for k in both),
        "accuracy": {"gpu1": round(sum(r["correct"] for r in a.values()) / max(len(a), 1), 4),
                     "gpu2": round(sum(r["correct"] for r in b.values()) / max(len(b), 1), 4)},
        "this_run": {"gpu1": r1.get("this_run"), "gpu2": r2.get("this_run")},
        "wall_s": {"gpu1": walls.get("rollouts_1gpu"), "gpu2": walls.get("rollouts_2gpu"), "merge": walls.get("merge")},
    }
    g1, g2 = out["wall_s"]["gpu1"], out["wall_s"]["gpu2"]
    if g1 and g2:
        out["wall_ratio_2gpu_over_1gpu"] = round(g2 / g1, 3)
    return out


# --------------------------------------------------------------------------------------- multigpu_h200.sh

SFT_LEGS = ("gpu1", "ddp", "zero2", "zero3")  # gpu1 is the baseline the others are compared with


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def curve_diff(base: list, other: list, tol: float) -> dict:
    """Per-step comparison of two [[step, loss], ...] curves over their common steps."""
    a, b = dict(map(tuple, base)), dict(map(tuple, other))
    common = sorted(set(a) & set(b))
    if not common:
        return {"steps_compared": 0, "within_tol": False}
    d = [b[s] - a[s] for s in common]
    worst = max(range(len(d)), key=lambda i: abs(d[i]))
    return {"steps_compared": len(common), "mean": round(statistics.mean(d), 5), "mean_abs": round(statistics.mean(map(abs, d)), 5),
            "max_abs": round(abs(d[worst]), 5), "max_abs_at_step": common[worst], "within_tol": abs(d[worst]) <= tol,
            "same_steps": set(a) == set(b)}


def step_status(steps: dict, name: str) -> str:
    r = steps.get(name)
    if r is None:
        return "not run"
    if r.get("skipped"):
        return f"skipped: {r['skipped']}"
    return "ok" if r["rc"] == 0 else f"failed (rc {r['rc']})"


def leg_figures(summary: dict, wall: float | None) -> dict:
    keep = ("steps", "processes", "examples", "pairs", "train_loss", "first_logged", "train_tokens_per_s", "steady_tokens_per_s",
            "steady_seconds_per_step", "steady_pairs_per_s", "pairs_per_s", "seconds", "peak_memory")
    return {**{k: summary[k] for k in keep if k in summary}, "wall_s": wall}


def h200_sft(root: Path, steps: dict, tol: float, zero: list[str]) -> dict:
    legs = ["gpu1", "ddp", *[f"zero{z}" for z in zero]]
    summ = {n: read_json(root / n / "checkpoints/sft_lora/train_summary.json") for n in legs}
    walls = {n: (steps.get(f"sft_{n}") or {}).get("wall_s") for n in legs}
    out = {"status": {n: step_status(steps, f"sft_{n}") for n in legs},
           "legs": {n: leg_figures(s, walls[n]) for n, s in summ.items() if s}}
    base = summ["gpu1"]
    if base:
        curves = {n: dict(map(tuple, s["losses"])) for n, s in summ.items() if s}
        out["loss_curve"] = {"columns": ["step", *curves], "rows": [[st, *[round(c[st], 4) if st in c else None for c in curves.values()]]
                                                                   for st in sorted(curves["gpu1"])]}
        out["vs_gpu1"] = {n: curve_diff(base["losses"], s["losses"], tol) for n, s in summ.items() if s and n != "gpu1"}
    want = base["steps"] if base else None
    out["pass"] = {n: bool(summ[n] and summ[n]["steps"] == want and (n == "gpu1" or out.get("vs_gpu1", {}).get(n, {}).get("within_tol"))) for n in legs}
    return out


def h200_dpo(root: Path, steps: dict, tol: float, nll: list[str], dpo_zero: list[str]) -> dict:
    """Per NLL weight: 1 GPU vs 2 GPUs (DDP), and under ZeRO (2 GPUs) at the last weight; the SFT adapter's hashes."""
    d = root / "gpu1"
    out: dict = {}
    for w in nll:
        legs = {g: read_json(d / f"checkpoints/dpo_nll{w}_{g}" / "train_summary.json") for g in ("gpu1", "gpu2")}
        r: dict = {"status": {g: step_status(steps, f"dpo_nll{w}_{g}") for g in legs},
                   "legs": {g: leg_figures(s, (steps.get(f"dpo_nll{w}_{g}") or {}).get("wall_s")) for g, s in legs.items() if s}}
        firsts = {g: s["losses"][0] for g, s in legs.items() if s and s["losses"]}
        r["first_loss"] = firsts  # [step, loss] per leg
        ok = len(firsts) == 2
        if ok:
            r["first_loss_gpu2_minus_gpu1"] = round(firsts["gpu2"][1] - firsts["gpu1"][1], 5)
            ok = firsts["gpu1"][0] == firsts["gpu2"][0] == 1 and abs(r["first_loss_gpu2_minus_gpu1"]) <= tol
        if float(w) == 0:  # plain DPO from the reference itself: margin 0 at the first step, loss ln 2
            r["ln2"] = round(math.log(2), 5)
            r["first_loss_minus_ln2"] = {g: round(v[1] - math.log(2), 5) for g, v in firsts.items()}
            ok = ok and all(abs(x) <= 5e-3 for x in r["first_loss_minus_ln2"].values())
        if len(firsts) == 2:
            r["vs_gpu1"] = curve_diff(legs["gpu1"]["losses"], legs["gpu2"]["losses"], tol)
            ok = ok and r["vs_gpu1"]["within_tol"] and legs["gpu1"]["steps"] == legs["gpu2"]["steps"]
        r["pass"] = bool(ok)
        for z in dpo_zero if w == nll[-1] else []:
            zs, leg = read_json(d / f"checkpoints/dpo_nll{w}_zero{z}" / "train_summary.json"), f"zero{z}"
            r["status"][leg] = step_status(steps, f"dpo_nll{w}_zero{z}")
            if zs:
                r["legs"][leg] = leg_figures(zs, (steps.get(f"dpo_nll{w}_zero{z}") or {}).get("wall_s"))
            r[f"{leg}_vs_gpu1"] = curve_diff(legs["gpu1"]["losses"], zs["losses"], tol) if zs and legs["gpu1"] else None
            r[f"{leg}_pass"] = bool(r[f"{leg}_vs_gpu1"] and r[f"{leg}_vs_gpu1"]["within_tol"] and zs["steps"] == legs["gpu1"]["steps"])
        out[f"nll{w}"] = r
    before, after = (root / f"sft_adapter.{x}.sha256" for x in ("before", "after"))
    hashes = {x: dict(reversed(line.split()) for line in f.read_text().splitlines()) if f.exists() else None
              for x, f in (("before", before), ("after", after))}
    sft_sha = (hashes["before"] or {}).get("adapter_model.safetensors")
    moved = {}
    for p in sorted(d.glob("checkpoints/dpo_nll*/adapter_model.safetensors")):
        moved[p.parent.name] = hashlib.sha256(p.read_bytes()).hexdigest() != sft_sha
    out["reference_adapter"] = {"sha256_before": hashes["before"], "sha256_after": hashes["after"],
                                "unchanged": bool(hashes["before"] and hashes["before"] == hashes["after"]),
                                "dpo_adapter_differs_from_sft": moved}
    out["reference_adapter"]["pass"] = out["reference_adapter"]["unchanged"] and bool(moved) and all(moved.values())
    return out


def env_card(path: Path | None) -> dict:
    import torch

    card = {"cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else [],
            "torch": torch.__version__}
    if path and path.exists():
        card["env"] = path.read_text().splitlines()
    return card


def h200_main(args) -> None:
    root = Path(args.root)
    steps = {r["step"]: r for r in map(json.loads, Path(args.steps).read_text().splitlines())}
    zero, nll = args.zero.split(), args.dpo_nll.split()
    out = {"card": env_card(Path(args.env) if args.env else None), "tol": args.tol,
           "sft": h200_sft(root, steps, args.tol, zero)}
    if (root / "gpu1" / "data" / "rollouts_2gpu.jsonl").exists() and (root / "gpu1" / "data" / "rollouts_1gpu.jsonl").exists():
        walls = {k: v.get("wall_s") for k, v in steps.items()}
        out["rollouts"] = rollouts_part(root, walls)
        out["rollouts"]["pass"] = out["rollouts"]["same_keys"] and out["rollouts"]["rows"]["gpu1"] > 0
    else:
        out["rollouts"] = {"status": {s: step_status(steps, s) for s in ("rollouts_1gpu", "rollouts_2gpu", "merge")}, "pass": False}
    out["prefs"] = {"status": step_status(steps, "prefs"), "pairs": sum(1 for _ in open(root / "gpu1/data/preferences.jsonl"))
                    if (root / "gpu1/data/preferences.jsonl").exists() else 0}
    out["dpo"] = h200_dpo(root, steps, args.tol, nll, args.dpo_zero.split())
    flags = {**{f"sft_{n}": v for n, v in out["sft"]["pass"].items()}, "rollouts_same_keys": out["rollouts"]["pass"],
             **{f"dpo_{k}": v["pass"] for k, v in out["dpo"].items() if k.startswith("nll")},
             **{f"dpo_{k}_{z}": v[f"{z}_pass"] for k, v in out["dpo"].items() if k.startswith("nll")
                for z in (f"zero{s}" for s in args.dpo_zero.split()) if f"{z}_pass" in v},
             "dpo_reference_unchanged": out["dpo"]["reference_adapter"]["pass"]}
    out["pass"] = {**flags, "all": all(flags.values())}
    out["not_run"] = sorted(k for k, r in steps.items() if r.get("skipped") or r.get("rc") not in (0, None))
    print(json.dumps(out, indent=1))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--h200":
        ap = argparse.ArgumentParser(description=__doc__)
        ap.add_argument("--h200", action="store_true")
        ap.add_argument("root")
        ap.add_argument("steps")
        ap.add_argument("--tol", type=float, default=0.01, help="largest per-step loss difference that passes")
        ap.add_argument("--dpo-nll", default="0 1", help="the NLL weights the DPO legs ran with")
        ap.add_argument("--zero", default="2 3", help="the ZeRO stages asked for (SFT)")
        ap.add_argument("--dpo-zero", default="2", help="the ZeRO stages asked for (DPO, at the last NLL weight)")
        ap.add_argument("--env", default=None, help="the script's environment lines (commit, cards, versions)")
        return h200_main(ap.parse_args())
    root, steps_file = Path(sys.argv[1]), Path(sys.argv[2])
    walls = {r["step"]: r["wall_s"] for r in map(json.loads, steps_file.read_text().splitlines())}
    out = {"sft": sft_part(root, walls)}
    if (root / "gpu1" / "data" / "rollouts_2gpu.jsonl").exists():  # not with PARTS=sft
        out["rollouts"] = rollouts_part(root, walls)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
