"""Tables: the training comparison (console, CSV, JSON) and the benchmark report's markdown.

:func:`format_table` is the table ``train.py`` prints; :func:`write_comparison`
writes it as ``comparison.{csv,json,png}``; the markdown tables show mean ± 95%
CI over episodes.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from ..evaluation import LEGEND, ranked
from ..runio import atomic_write_json, atomic_write_text
from .plots import plot_comparison, plot_learning_curve
from .records import BOUND_NAME
from .scenarios import BENCH_METRICS, DEFAULT_PLOTS

COLUMNS = [
    "rank", "policy", "feasible", "score", "score_ci95_low", "score_ci95_high", "regret", "energy_per_token_j",
    "saving_pct", "mean_error_ratio", "max_error_ratio", "violation_rate", "excess_error_violation_rate",
    "latency_violation_rate", "excess_latency_violation_rate", "any_violation_rate", "worst_layer_mean_error_ratio",
    "mean_return", "episodes", "eval_seconds",
]


def _ci(lo: float, hi: float) -> str:
    return f"[{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) and math.isfinite(hi) else ""


def format_table(rows: list[dict[str, Any]], legend: bool = True) -> str:
    """The comparison as a fixed-width leaderboard: feasible rows first, each group by score; infeasible rows
    marked ``*``; a legend under it (``legend=False``: none)."""
    head = ["", "policy", "feasible", "score", "95% CI", "regret (%)", "energy/token (mJ)", "saving vs top-k (%)",
            "mean err/budget", "err viol. (%)", "latency viol. (%)", "return"]
    lines = []
    for i, r in enumerate(ranked(rows), 1):
        feas = r.get("feasible")
        sc = r.get("score", math.nan)
        lines.append([
            f"{i}" + ("" if feas else "*"),
            str(r["policy"]),
            "yes" if feas else "NO",
            f"{sc:.3f}" if math.isfinite(sc) else "n/a",
            _ci(r.get("score_ci95_low", math.nan), r.get("score_ci95_high", math.nan))
            if r.get("episodes", 2) >= 2 else "none (1 episode)",
            f"{100 * r['regret']:.2f}" if math.isfinite(r.get("regret", math.nan)) else "n/a",
            f"{1e3 * r['energy_per_token_j']:.4f}",
            f"{r['saving_pct']:.2f}",
            f"{r['mean_error_ratio']:.3f}",
            f"{100 * r['violation_rate']:.2f}",
            f"{100 * r['latency_violation_rate']:.2f}",
            f"{r['mean_return']:.3f}",
        ])
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i in (0, 1) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    out = [fmt(head), "  ".join("-" * w for w in widths)]
    out += [fmt(l) for l in lines]
    if legend:
        out += ["", LEGEND, "err viol.: steps over the per-step error constraint (fast fading: the cap; in Decode and "
                "Prefill siftmoe's are the steps no decision keeps within budget); mean err/budget: the error bound "
                "over its budget, mean over steps; return: mean episode return; energy per token over all MoE layers."]
    return "\n".join(out)


def write_comparison(rows: list[dict[str, Any]], out_dir: str | os.PathLike, meta: dict[str, Any],
                     stem: str = "comparison", history: list[dict[str, Any]] | None = None,
                     best: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``<stem>.csv``, ``<stem>.json`` and ``<stem>.png`` (and a learning curve if ``history``, with the
    ``best`` evaluation marked)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / f"{stem}.csv", "json": out_dir / f"{stem}.json", "png": out_dir / f"{stem}.png"}
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for i, r in enumerate(ranked(rows), 1):
        writer.writerow({**{k: r.get(k, "") for k in COLUMNS}, "rank": i})
    atomic_write_text(paths["csv"], buf.getvalue())
    atomic_write_json(paths["json"], {"meta": {**meta, "legend": LEGEND}, "rows": rows})
    plot_comparison(rows, paths["png"], title=meta.get("title", ""))
    if history:
        paths["curve"] = out_dir / "learning_curve.png"
        plot_learning_curve(history, paths["curve"], title=meta.get("title", ""), best=best)
    return paths


ZERO = 1e-9
"""Magnitudes below this print as 0 (rounding noise of a difference that is zero, e.g. -7e-15 ± 3e-14)."""


def fmt(mean: float, half: float, scale: float = 1.0, digits: int = 3) -> str:
    """``mean ± half`` (times ``scale``) to ``digits`` significant digits; "–" when there is no mean."""
    if mean is None or not math.isfinite(mean):
        return "–"
    m = scale * mean if abs(scale * mean) >= ZERO else 0.0
    if half is None or not math.isfinite(half):
        return f"{m:.{digits}g}"
    h = scale * half if abs(scale * half) >= ZERO else 0.0
    return f"{m:.{digits}g} ± {h:.2g}"


def _score_cell(r: dict[str, Any]) -> str:
    sc = r.get("score", math.nan)
    if not isinstance(sc, (int, float)) or not math.isfinite(sc):
        return "–"
    return f"{sc:.3f} {_ci(r.get('score_ci95_low', math.nan), r.get('score_ci95_high', math.nan))}".strip()


def _feasible_cell(r: dict[str, Any]) -> str:
    return "–" if "feasible" not in r else ("yes" if r["feasible"] else "**no**")


def summary_table_md(rows: list[dict[str, Any]]) -> str:
    """One markdown row per policy (a single-point scenario), as a leaderboard (feasible first, by score):
    mean ± 95% CI over episodes."""
    head = ["policy", "feasible", "score [95% CI]", "energy / token (mJ)", "saving vs top-k (%)", "mean err / budget",
            "steps over err. constraint (%)", "steps over latency budget (%)", "episodes within all constraints (%)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in ranked([r for r in rows if r["policy"] != BOUND_NAME]):
        lines.append("| " + " | ".join([
            f"`{r['policy']}`", _feasible_cell(r), _score_cell(r),
            fmt(r["energy_per_token_j"], r["energy_per_token_j_ci95"], 1e3, 4),
            fmt(r["saving_pct"], r["saving_pct_ci95"], 1.0, 3),
            fmt(r["mean_error_ratio"], r["mean_error_ratio_ci95"]),
            fmt(r["violation_rate"], r["violation_rate_ci95"], 100.0),
            fmt(r["latency_violation_rate"], r["latency_violation_rate_ci95"], 100.0),
            fmt(r["within_constraints"], math.nan, 100.0),
        ]) + " |")
    return "\n".join(lines + ["", LEGEND])


def score_table_md(rows: list[dict[str, Any]], x_label: str) -> str:
    """Score and feasibility of every policy at every point of a sweep."""
    rows = [r for r in rows if r["policy"] != BOUND_NAME and "score" in r]
    if not rows:
        return ""
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    points = list(dict.fromkeys(r["point"] for r in rows))
    cell = {(r["point"], r["policy"]): r for r in rows}
    lines = ["score (siftmoe's mean return / the policy's; **no** = infeasible: breaks a budget), "
             "with its 95% paired-bootstrap CI:", "",
             "| " + x_label + " | " + " | ".join(f"`{p}`" for p in policies) + " |", "|" + "---|" * (len(policies) + 1)]
    for pt in points:
        cells = []
        for p in policies:
            r = cell.get((pt, p))
            cells.append("" if r is None else _score_cell(r) + ("" if r.get("feasible") else " **no**"))
        lines.append(f"| {pt} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_table_md(rows: list[dict[str, Any]], metric: str, x_label: str) -> str:
    key, label, scale = BENCH_METRICS[metric]
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    points = list(dict.fromkeys(r["point"] for r in rows))
    cell = {(r["point"], r["policy"]): r for r in rows}
    lines = [f"{label}, mean ± 95% CI:", "", "| " + x_label + " | " + " | ".join(f"`{p}`" for p in policies) + " |",
             "|" + "---|" * (len(policies) + 1)]
    for pt in points:
        cells = []
        for p in policies:
            r = cell.get((pt, p))
            cells.append(fmt(r.get(key), r.get(f"{key}_ci95"), scale) if r else "")
        lines.append(f"| {pt} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scenario_markdown(scn: dict, rows: list[dict[str, Any]], png: str | None, notes: list[str]) -> str:
    out = [f"## {scn.get('title', scn['name'])}", ""]
    if scn.get("description"):
        out += [str(scn["description"]).strip(), ""]
    cfg = scn.get("config") or {}
    env = scn.get("env", "hf model" if scn.get("kind") == "hf_accuracy" else "siftmoe_gym/Decode-v0")
    sweep = scn.get("sweep")
    out.append(f"`{env}`, config `{json.dumps(cfg)}`" + (f", sweep `{sweep['param']}` over {sweep['values']}" if sweep else "")
               + (f", trace `{scn['trace']}`" if scn.get("trace") else ""))
    out.append("")
    for n in notes:
        out.append(f"- note: {n}")
    if notes:
        out.append("")
    if png:
        out += [f"![{scn['name']}]({png})", ""]
    if not rows:
        return "\n".join(out)
    if scn.get("kind") == "hf_accuracy":
        lines = ["| policy | eps_rel | energy / token (mJ) | saving vs top-k (%) | next-token accuracy (%) |", "|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| `{r['policy']}` | {r['point']} | {fmt(r['energy_per_token_j'], r['energy_per_token_j_ci95'], 1e3)} "
                         f"| {fmt(r['saving_pct'], r['saving_pct_ci95'])} | {fmt(r['accuracy'], r['accuracy_ci95'], 100.0)} |")
        out += lines + [""]
    elif not sweep:
        out += [summary_table_md(rows), ""]
    else:
        x_label = sweep.get("label", sweep["param"])
        for m in scn.get("plots") or DEFAULT_PLOTS:
            out += [sweep_table_md(rows, m, x_label), ""]
        scores = score_table_md(rows, x_label)
        if scores:
            out += [scores, "", LEGEND, ""]
    return "\n".join(out)
