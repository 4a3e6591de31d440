"""One-page HTML report of a run directory, built from whatever the phases have written so far.

Command::

    looper-math report --config configs/abel7b.yaml [--set ...]   # the outputs that config names
    looper-math report RUN_DIR                                     # a run dir whose config is unknown

Reads the outputs the run's layout names (``layout.RunLayout``: from the config, so renamed outputs are
found; or, for a bare run directory, ``RunLayout.discover``: ``outputs/*eval*``, ``data/*rollouts*``,
``data/*preferences*``, ``checkpoints/*/``, shard files left out; never a recursive walk). Each part is
optional (a missing part gets a note on the page instead of a section):

- eval summaries (``accuracy_strict``, ``accuracy_flexible``, ``ci95_strict``, ``n``, ``checkpoint``) ->
  headline accuracies, accuracy-by-phase chart with 95 % CIs; each trained checkpoint's card gives its difference,
  with the exact McNemar p over the per-example files, to the checkpoint it was trained from (its
  ``train_summary.json``: SFT's is the base model, DPO's and GRPO's their ``init_adapter``) and to the base model;
- the rollouts JSONL (the newest) -> per-arm table and chart, score histograms for correct vs incorrect;
- the pairs JSONL -> pair counts by type and margins;
- each adapter's ``log_history.json`` (list of dicts with ``step``, ``loss``) -> loss curves;
- the config's ``smoke`` (a bare run dir: a resolved config of one of those outputs, or ``RUN_DIR/resolved_config.yaml``,
  with ``smoke: true``) -> a smoke-run banner.

The page is self-contained HTML; charts are PNGs next to it (relative links), drawn with matplotlib's
Agg backend so no display is needed. Malformed data (a row without a needed field) is an error, not a
silently skipped section. A finished output (its summary exists) must still be what its summary recorded
(``layout.check_intact``): a torn or corrupt line stops the report with the file, the line and how to
rebuild it; a rollouts file still being written (no summary yet) may have a torn last line, which is ignored.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402

from looper_math.compare import compare  # noqa: E402
from looper_math.layout import Output, RunLayout, check_intact  # noqa: E402
from looper_math.phases import EVALS  # noqa: E402
from looper_math.runio import DataError, atomic_write_text, read_json  # noqa: E402
from looper_math.schemas import PairRow, RolloutRow, read_rows  # noqa: E402

SCORES = ("s_end", "s_path", "s_cf", "s_wm")
EVAL_KEYS = ("accuracy_strict", "accuracy_flexible", "ci95_strict", "n", "checkpoint")  # of an eval summary
# the fields of schemas.RolloutRow / PairRow the report reads
ROLLOUT_KEYS = ("question_id", "arm", "correct", "finished", "reward", *SCORES)
PAIR_KEYS = ("question_id", "pair_type", "chosen_reward", "rejected_reward", "chosen_s_wm", "rejected_s_wm")
# The evaluations' labels in run order (base, sft, dpo, grpo), and "coherence", the DPO outputs' word in
# configs/abel7b.yaml (abel_coherence_lora), so a run dir found without its config ranks them with DPO's.
PHASE_ORDER = tuple(t for s in EVALS.values() for t in ((s.label, "coherence") if s.name == "eval_dpo" else (s.label,)))
CHARTS = ("accuracy_by_phase.png", "arms.png", "score_distributions.png", "loss_curves.png")

# One palette for every chart so a phase / outcome keeps its colour across the page.
BLUE, ORANGE, GREEN, RED, GREY = "#3b6ea5", "#e08a3c", "#4c9a6a", "#c8553d", "#8a8f98"


def _style() -> None:
    plt.rcParams.update({
        "figure.dpi": 110, "savefig.dpi": 110, "font.size": 10, "axes.titlesize": 11,
        "axes.titleweight": "bold", "axes.spines.top": False, "axes.spines.right": False,
        "axes.grid": True, "grid.alpha": 0.25, "axes.axisbelow": True, "legend.frameon": False,
    })


def _save(fig, out_dir: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out_dir / name)
    plt.close(fig)
    return name


def _esc(x: object) -> str:
    return html.escape(str(x))


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _img(name: str, alt: str) -> str:
    return f'<figure><img src="{_esc(name)}" alt="{_esc(alt)}"></figure>'


def _require(obj: dict, keys: tuple[str, ...], where: str) -> None:
    for k in keys:
        if k not in obj:
            raise DataError(f"{where}: missing field '{k}'")


def _first(outputs: list[Output]) -> tuple[Path | None, list[Path]]:
    """The first of the outputs that exists (the layout lists the newest first), and the other existing ones."""
    paths = [o.path for o in outputs if o.path.is_file()]
    return (paths[0], paths[1:]) if paths else (None, [])


# ---------------------------------------------------------------- sections


def _yerr(values: list[float], cis: list[list[float]]) -> list[list[float]]:
    """matplotlib's asymmetric yerr ([below], [above]) from values and [lo, hi] intervals."""
    return [[v - lo for v, (lo, _) in zip(values, cis)], [hi - v for v, (_, hi) in zip(values, cis)]]


def _phase_rank(label: str) -> tuple[int, str]:
    low = label.lower()
    for i, tag in enumerate(PHASE_ORDER):
        if tag in low:
            return i, low
    return len(PHASE_ORDER), low


def _delta_html(ref: dict, e: dict, role: str = "") -> str:
    """The headline difference of ``e`` to ``ref`` with its exact McNemar p (paired over the questions both
    per-example files hold, as `looper-math compare --intersect`); green or red only when p < 0.05."""
    d = 100 * (e["headline"] - ref["headline"])
    vs = f'{d:+.1f} pts vs {_esc(ref["label"])}' + (f" ({role})" if role else "")
    files = [x["jsonl"] for x in (ref, e)]
    if not all(f.exists() for f in files):
        return f'<div class="flat">{vs}: no per-example file, no paired test</div>'
    p = compare(*files, intersect=True)["mcnemar_p"]
    cls = "flat" if p >= 0.05 or d == 0 else "up" if d > 0 else "down"
    verdict = "not significant" if p >= 0.05 else "significant"
    return f'<div class="{cls}">{vs}, McNemar p = {p:.3g} ({verdict})</div>'


def _trained_from(layout: RunLayout, checkpoint: str) -> str | None:
    """What an evaluated adapter was trained from: ``"base"`` for SFT, the ``init_adapter`` its train summary
    records for DPO and GRPO; None when no train summary of it is found (the folder is looked up where the
    evaluation says, else by name among the run's adapters: a run directory copied elsewhere keeps working)."""
    found = Path(checkpoint) / "train_summary.json"
    if not found.is_file():
        found = next((o.summary for o in layout.trainings() if o.path.name == Path(checkpoint).name and o.summary.is_file()), None)
        if found is None:
            return None
    s = read_json(found)
    if not isinstance(s, dict):
        raise DataError(f"{found}: expected a JSON object")
    if s.get("init_adapter"):
        return str(s["init_adapter"])
    return "base" if s.get("phase") == "sft" else None


def _find_eval(evals: list[dict], checkpoint: str) -> dict | None:
    """The evaluation of ``checkpoint`` (the same path, else the same folder name) among ``evals``."""
    exact = [x for x in evals if x["checkpoint"] == checkpoint]
    named = [x for x in evals if not x["checkpoint"].startswith("base:") and Path(x["checkpoint"]).name == Path(checkpoint).name]
    return (exact or named or [None])[0]


def _deltas_html(layout: RunLayout, evals: list[dict], e: dict) -> str:
    """A checkpoint's differences to its parent (what it was trained from, :func:`_trained_from`) and to the
    base model, each evaluated on the same split (dev and test figures are never paired); nothing for the
    base model itself. The card before it in phase order is no reference: GRPO trained from SFT would be
    compared with DPO."""
    if e["checkpoint"].startswith("base:"):
        return ""
    same = [x for x in evals if x is not e and x.get("split") == e.get("split")]
    base = next((x for x in same if x["checkpoint"].startswith("base:")), None)
    parent_ckpt = _trained_from(layout, e["checkpoint"])
    out = []
    if parent_ckpt is None:
        out.append('<div class="flat">trained from: unknown (no train_summary.json of it)</div>')
    elif parent_ckpt != "base":
        parent = _find_eval(same, parent_ckpt)
        if parent is None:
            out.append(f'<div class="flat">trained from {_esc(Path(parent_ckpt).name)}: not evaluated on this split</div>')
        else:
            out.append(_delta_html(parent, e, "parent"))
    if base is not None:
        out.append(_delta_html(base, e, "parent" if parent_ckpt == "base" else ""))
    return f'<div class="card-deltas">{"".join(out)}</div>'


def _eval_section(layout: RunLayout, out_dir: Path) -> tuple[str, str, list[str]]:
    """(headline html, section html, notes)."""
    outputs = [o for o in layout.evals() if o.summary.is_file()]
    if not outputs:
        return "", "", ["No evaluation summaries yet."]
    evals = []
    for o in outputs:
        f = o.summary
        s = read_json(f)
        _require(s, EVAL_KEYS, str(f))
        ckpt = str(s["checkpoint"])
        # Short labels keep the chart's ticks apart; the table keeps the summary file name.
        label = "base" if ckpt.startswith("base:") else Path(ckpt).name
        # the headline figure is the one `correct` used: the platinum harness's, or answer_mode's extraction
        mode = "platinum" if s.get("protocol") == "platinum" else s.get("answer_mode", "strict")
        evals.append({**s, "checkpoint": ckpt, "file": f.name, "jsonl": o.path, "label": label, "mode": mode,
                      "headline": s.get("accuracy", s["accuracy_strict"]), "headline_ci": s.get("ci95", s["ci95_strict"])})
    evals.sort(key=lambda e: _phase_rank(e["label"] + " " + e["file"]))

    cards = ""
    for e in evals:
        cards += (f'<div class="card"><div class="card-label">{_esc(e["label"])} · {_esc(e["mode"])}</div>'
                  f'<div class="card-value">{_pct(e["headline"])}</div>{_deltas_html(layout, evals, e)}'
                  f'<div class="card-sub">95% CI {_pct(e["headline_ci"][0])} – {_pct(e["headline_ci"][1])} · '
                  f'strict {_pct(e["accuracy_strict"])} · flexible {_pct(e["accuracy_flexible"])} · n={e["n"]}</div></div>')
    headline = f'<div class="cards">{cards}</div>'

    _style()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.7 * len(evals) + 2), 3.6))
    xs = range(len(evals))
    w = 0.38
    strict = [e["accuracy_strict"] for e in evals]
    b1 = ax.bar([x - w / 2 for x in xs], strict, w, yerr=_yerr(strict, [e["ci95_strict"] for e in evals]),
                capsize=4, color=BLUE, label="strict")
    flex = [e["accuracy_flexible"] for e in evals]
    flex_err = None
    if all("ci95_flexible" in e for e in evals):
        flex_err = _yerr(flex, [e["ci95_flexible"] for e in evals])
    b2 = ax.bar([x + w / 2 for x in xs], flex, w, yerr=flex_err, capsize=4, color=ORANGE, label="flexible")
    top = max([e["ci95_strict"][1] for e in evals] + flex + [0.0])
    strict_hi = [e["ci95_strict"][1] for e in evals]
    flex_hi = [e["ci95_flexible"][1] for e in evals] if flex_err else flex
    # Labels inside the bars (above them they would collide with the CI caps); a bar too short to hold
    # its label gets it above its CI instead.
    for bars, his in ((b1, strict_hi), (b2, flex_hi)):
        for bar, hi in zip(bars, his):
            v = bar.get_height()
            inside = v >= 0.12 * max(top, 0.05)
            ax.annotate(f"{100 * v:.1f}", (bar.get_x() + bar.get_width() / 2, v / 2 if inside else hi),
                        xytext=(0, 0 if inside else 3), textcoords="offset points", ha="center",
                        va="center" if inside else "bottom", fontsize=9, fontweight="bold",
                        color="white" if inside else "#1f2430")
    ax.set_xticks(list(xs), [e["label"] for e in evals])
    ax.set_ylim(0, min(1.0, top * 1.2 + 0.05))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy by phase (error bars: 95% Wilson CI)")
    ax.legend(loc="upper left")
    chart = _save(fig, out_dir, "accuracy_by_phase.png")

    rows = [[_esc(e["label"]), str(e["n"]), _pct(e["accuracy_strict"]),
             f'{_pct(e["ci95_strict"][0])} – {_pct(e["ci95_strict"][1])}', _pct(e["accuracy_flexible"]),
             f'<span class="muted">{_esc(e["file"])}</span>'] for e in evals]
    table = _table(["checkpoint", "n", "strict", "95% CI (strict)", "flexible", "summary file"], rows, "num")
    return headline, f"<section><h2>Evaluation</h2>{_img(chart, 'accuracy by phase')}{table}</section>", []


def _rollouts_section(path: Path, out_dir: Path, others: list[Path]) -> str:
    rows = list(read_rows(path, RolloutRow, ROLLOUT_KEYS, allow_torn_tail=True))
    if not rows:
        return f'<section><h2>Rollouts</h2><p class="note">{_esc(path)} is empty.</p></section>'

    by_arm: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_arm[r["arm"]].append(r)
    arms = list(by_arm)  # first appearance = the config's arm order
    stats = []
    for arm in arms:
        rs = by_arm[arm]
        stats.append({
            "arm": arm, "pulls": len(rs), "share": len(rs) / len(rows),
            "accuracy": sum(r["correct"] for r in rs) / len(rs),
            "s_wm": _mean([r["s_wm"] for r in rs]), "reward": _mean([r["reward"] for r in rs]),
            "finished": sum(r["finished"] for r in rs) / len(rs),
        })
    table = _table(
        ["arm", "pulls", "share", "accuracy", "mean s_wm", "mean reward", "finished"],
        [[_esc(s["arm"]), str(s["pulls"]), _pct(s["share"]), _pct(s["accuracy"]), _num(s["s_wm"]),
          _num(s["reward"]), _pct(s["finished"])] for s in stats], "num arms")

    _style()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, max(3.0, 0.42 * len(arms) + 1.2)), sharey=True)
    ys = list(range(len(arms)))
    h = 0.38
    ax1.barh([y - h / 2 for y in ys], [s["accuracy"] for s in stats], h, color=GREEN, label="accuracy")
    ax1.barh([y + h / 2 for y in ys], [s["s_wm"] for s in stats], h, color=BLUE, label="mean s_wm")
    ax1.set_yticks(ys, arms)
    ax1.invert_yaxis()
    ax1.set_xlim(0, 1)
    ax1.set_title("Accuracy and coherence by arm")
    ax1.legend(loc="lower right", fontsize=8)
    ax2.barh(ys, [s["pulls"] for s in stats], 0.6, color=GREY)
    ax2.bar_label(ax2.containers[0], padding=3, fontsize=8)
    ax2.set_title("Pulls by arm")
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.set_xlim(0, max(s["pulls"] for s in stats) * 1.15)
    arm_chart = _save(fig, out_dir, "arms.png")

    fig, axes = plt.subplots(1, 4, figsize=(12, 2.9), sharey=False)
    bins = [i / 20 for i in range(21)]
    for ax, score in zip(axes, SCORES):
        ok = [r[score] for r in rows if r["correct"]]
        bad = [r[score] for r in rows if not r["correct"]]
        ax.hist(ok, bins=bins, color=GREEN, alpha=0.65, label=f"correct ({len(ok)})")
        ax.hist(bad, bins=bins, color=RED, alpha=0.55, label=f"incorrect ({len(bad)})")
        ax.set_title(score)
        ax.set_xlim(0, 1)
    axes[0].set_ylabel("trajectories")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=2, bbox_to_anchor=(0.5, 1.02))
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(out_dir / "score_distributions.png")
    plt.close(fig)

    n_q = len({r["question_id"] for r in rows})
    acc = sum(r["correct"] for r in rows) / len(rows)
    unfinished = sum(not r["finished"] for r in rows)
    facts = (f'<p class="facts"><b>{len(rows)}</b> trajectories over <b>{n_q}</b> questions · accuracy '
             f'<b>{_pct(acc)}</b> · mean s_wm <b>{_num(_mean([r["s_wm"] for r in rows]))}</b> · '
             f'unfinished (no EOS) <b>{unfinished}</b> · <span class="muted">{_esc(path.name)}</span></p>')
    more = "" if not others else (
        f'<p class="note">Also found (not shown): {_esc(", ".join(p.name for p in others))}.</p>')
    return (f"<section><h2>Rollouts (Regime W)</h2>{facts}{more}<h3>Per arm</h3>{table}"
            f"{_img(arm_chart, 'per-arm accuracy, coherence and pulls')}"
            f"<h3>Scores: correct vs incorrect</h3>{_img('score_distributions.png', 'score distributions')}</section>")


def _pairs_section(path: Path, others: list[Path]) -> str:
    pairs = list(read_rows(path, PairRow, PAIR_KEYS))
    types = sorted({p["pair_type"] for p in pairs}, key=lambda t: (t != "correctness", t))
    rows = []
    for t in types:
        ps = [p for p in pairs if p["pair_type"] == t]
        dr = [p["chosen_reward"] - p["rejected_reward"] for p in ps]
        ds = [p["chosen_s_wm"] - p["rejected_s_wm"] for p in ps]
        rows.append([_esc(t), str(len(ps)), _pct(len(ps) / len(pairs)), str(len({p["question_id"] for p in ps})),
                     _num(_mean(dr)), _num(min(dr)), _num(_mean(ds)), _num(min(ds))])
    body = (_table(["pair type", "pairs", "share", "questions", "mean Δreward", "min Δreward", "mean Δs_wm",
                    "min Δs_wm"], rows, "num") if pairs else '<p class="note">No pairs in the file.</p>')
    facts = (f'<p class="facts"><b>{len(pairs)}</b> pairs over <b>{len({p["question_id"] for p in pairs})}</b> '
             f'questions · <span class="muted">{_esc(path.name)}</span></p>')
    more = "" if not others else (
        f'<p class="note">Also found (not shown): {_esc(", ".join(p.name for p in others))}.</p>')
    return f"<section><h2>Preference pairs</h2>{facts}{more}{body}</section>"


def _training_section(layout: RunLayout, out_dir: Path) -> tuple[str, list[str]]:
    logs = [o.path / "log_history.json" for o in layout.trainings()]
    logs = sorted((f for f in logs if f.is_file()), key=lambda f: _phase_rank(f.parent.name))
    if not logs:
        return "", ["No trainer logs (log_history.json of an adapter) yet."]
    curves = []
    for f in logs:
        hist = read_json(f)
        if not isinstance(hist, list):
            raise DataError(f"{f}: expected a list of log entries")
        pts = [(e["step"], e["loss"]) for e in hist if "loss" in e and "step" in e]
        if pts:
            curves.append((f.parent.name, pts))
    if not curves:
        return "", [f"Trainer logs found ({', '.join(f.parent.name for f in logs)}) but none has a loss entry yet."]
    _style()
    fig, axes = plt.subplots(1, len(curves), figsize=(min(12, 5.2 * len(curves)), 3.3), squeeze=False)
    colours = [BLUE, ORANGE, GREEN, RED, GREY]
    for k, (ax, (name, pts)) in enumerate(zip(axes[0], curves)):
        ax.plot([s for s, _ in pts], [v for _, v in pts], color=colours[k % len(colours)], lw=1.8,
                marker="o" if len(pts) < 30 else None, ms=3)
        ax.set_title(name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
    chart = _save(fig, out_dir, "loss_curves.png")
    rows = [[_esc(name), str(len(pts)), _num(pts[0][1], 4), _num(pts[-1][1], 4), str(pts[-1][0])]
            for name, pts in curves]
    table = _table(["checkpoint", "logged steps", "first loss", "last loss", "last step"], rows, "num")
    return f"<section><h2>Training</h2>{_img(chart, 'loss curves')}{table}</section>", []


CSS = """
:root { --fg:#1f2430; --muted:#6b7280; --line:#e5e7eb; --bg:#f7f8fa; --accent:#3b6ea5; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
       font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 32px 56px; }
header h1 { margin: 0 0 2px; font-size: 26px; letter-spacing: -0.01em; }
header .sub { color: var(--muted); font-size: 13px; }
.banner { margin: 18px 0 0; padding: 12px 16px; border-radius: 8px; background: #fff4e5;
          border: 1px solid #f5c27a; color: #7a4b00; font-weight: 600; }
.cards { display: flex; flex-wrap: wrap; gap: 14px; margin: 20px 0 4px; }
.card { flex: 1 1 180px; background: #fff; border: 1px solid var(--line); border-radius: 10px;
        padding: 14px 18px; box-shadow: 0 1px 2px rgba(0,0,0,.04); }
.card-label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .06em; }
.card-value { font-size: 30px; font-weight: 700; color: var(--accent); line-height: 1.2; }
.card-sub { color: var(--muted); font-size: 12px; }
.card-deltas div { font-size: 13px; font-weight: 600; margin: 2px 0; }
.up { color: #2f7d4f; } .down { color: #b2412c; } .flat { color: #6b7280; }
section { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 18px 22px;
          margin-top: 22px; box-shadow: 0 1px 2px rgba(0,0,0,.04); }
h2 { margin: 0 0 10px; font-size: 19px; }
h3 { margin: 18px 0 8px; font-size: 15px; color: #374151; }
figure { margin: 10px 0; }
figure img { max-width: 100%; height: auto; display: block; }
table { border-collapse: collapse; width: 100%; font-size: 14px; margin: 8px 0; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: left; }
th { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); font-weight: 600; }
table.num td:not(:first-child), table.num th:not(:first-child) { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:hover { background: #fafbfc; }
.facts { margin: 4px 0 8px; }
.muted { color: var(--muted); }
.note { color: var(--muted); font-style: italic; margin: 4px 0; }
.notes { margin-top: 22px; }
"""


def build_report(run: Path | RunLayout, out_dir: Path | None = None, rollouts_path: Path | None = None,
                 pairs_path: Path | None = None) -> Path:
    """Write ``report.html`` (+ PNG charts) for a run into out_dir (default ``<run_dir>/report``). ``run``: the
    run's layout (``RunLayout(cfg)``), or a run directory read through ``RunLayout.discover``."""
    layout = run if isinstance(run, RunLayout) else RunLayout.discover(Path(run))
    run_dir = layout.run_dir
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: run directory not found")
    out_dir = Path(out_dir) if out_dir is not None else layout.report_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in CHARTS:  # a chart whose data is gone must not linger next to the new page
        (out_dir / name).unlink(missing_ok=True)

    for o in [*layout.evals(), *layout.rollouts_files(), *layout.prefs_files()]:
        if o.path.is_file():  # an evaluation without its per-example file is shown without a paired test
            check_intact(o.path, o.count_key)

    notes: list[str] = []
    headline, eval_html, n = _eval_section(layout, out_dir)
    notes += n

    other_rollouts: list[Path] = []
    if rollouts_path is None:
        rollouts_path, other_rollouts = _first(layout.rollouts_files())
    if rollouts_path is not None:
        rollouts_html = _rollouts_section(Path(rollouts_path), out_dir, other_rollouts)
    else:
        rollouts_html = ""
        notes.append("No rollouts yet.")

    other_pairs: list[Path] = []
    if pairs_path is None:
        pairs_path, other_pairs = _first(layout.prefs_files())
    if pairs_path is not None:
        pairs_html = _pairs_section(Path(pairs_path), other_pairs)
    else:
        pairs_html = ""
        notes.append("No preference pairs yet.")

    train_html, n = _training_section(layout, out_dir)
    notes += n

    banner = ('<div class="banner">SMOKE RUN — tiny model on built-in problems. These numbers test the '
              'pipeline, not the method.</div>') if layout.smoke else ""
    if not headline:
        headline = '<p class="note">No evaluation yet: accuracies appear here once a phase is evaluated.</p>'
    notes_html = "" if not notes else (
        '<section class="notes"><h2>Not in this report</h2><ul>'
        + "".join(f'<li class="note">{_esc(n)}</li>' for n in notes) + "</ul></section>")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Looper-Math report · {_esc(run_dir.resolve().name)}</title><style>{CSS}</style></head>
<body><main>
<header><h1>Looper-Math run report</h1>
<div class="sub">{_esc(run_dir.resolve())} · generated {stamp}</div></header>
{banner}{headline}{eval_html}{train_html}{rollouts_html}{pairs_html}{notes_html}
</main></body></html>
"""
    return atomic_write_text(out_dir / "report.html", page)
