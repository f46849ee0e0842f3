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

from ..runio import atomic_write_json, atomic_write_text
from .plots import plot_comparison, plot_learning_curve
from .records import BOUND_NAME
from .scenarios import BENCH_METRICS, DEFAULT_PLOTS

COLUMNS = [
    "policy", "energy_per_token_j", "saving_pct", "regret", "mean_error_ratio", "max_error_ratio",
    "violation_rate", "latency_violation_rate", "any_violation_rate", "mean_return", "episodes", "eval_seconds",
]


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ["policy", "energy/token (mJ)", "saving vs top-k (%)", "regret (%)", "mean err/budget",
            "err viol. (%)", "latency viol. (%)", "any viol. (%)", "return"]
    lines = []
    for r in rows:
        lines.append([
            str(r["policy"]),
            f"{1e3 * r['energy_per_token_j']:.4f}",
            f"{r['saving_pct']:.2f}",
            f"{100 * r['regret']:.2f}" if math.isfinite(r.get("regret", math.nan)) else "n/a",
            f"{r['mean_error_ratio']:.3f}",
            f"{100 * r['violation_rate']:.2f}",
            f"{100 * r['latency_violation_rate']:.2f}",
            f"{100 * r.get('any_violation_rate', math.nan):.2f}",
            f"{r['mean_return']:.3f}",
        ])
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    out = [fmt(head), "  ".join("-" * w for w in widths)]
    out += [fmt(l) for l in lines]
    return "\n".join(out)


def write_comparison(rows: list[dict[str, Any]], out_dir: str | os.PathLike, meta: dict[str, Any],
                     stem: str = "comparison", history: list[dict[str, Any]] | None = None) -> dict[str, Path]:
    """Write ``<stem>.csv``, ``<stem>.json`` and ``<stem>.png`` (and a learning curve if ``history``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / f"{stem}.csv", "json": out_dir / f"{stem}.json", "png": out_dir / f"{stem}.png"}
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k, "") for k in COLUMNS})
    atomic_write_text(paths["csv"], buf.getvalue())
    atomic_write_json(paths["json"], {"meta": meta, "rows": rows})
    plot_comparison(rows, paths["png"], title=meta.get("title", ""))
    if history:
        paths["curve"] = out_dir / "learning_curve.png"
        plot_learning_curve(history, paths["curve"], title=meta.get("title", ""))
    return paths


def fmt(mean: float, half: float, scale: float = 1.0, digits: int = 3) -> str:
    if mean is None or not math.isfinite(mean):
        return "–"
    if half is None or not math.isfinite(half):
        return f"{scale * mean:.{digits}g}"
    return f"{scale * mean:.{digits}g} ± {scale * half:.2g}"


def summary_table_md(rows: list[dict[str, Any]]) -> str:
    """One markdown row per policy (a single-point scenario): mean ± 95% CI over episodes."""
    head = ["policy", "energy / token (mJ)", "saving vs top-k (%)", "mean err / budget", "steps over err. constraint (%)",
            "steps over latency budget (%)", "episodes within all constraints (%)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["policy"] == BOUND_NAME:
            continue
        lines.append("| " + " | ".join([
            f"`{r['policy']}`", fmt(r["energy_per_token_j"], r["energy_per_token_j_ci95"], 1e3, 4),
            fmt(r["saving_pct"], r["saving_pct_ci95"], 1.0, 3),
            fmt(r["mean_error_ratio"], r["mean_error_ratio_ci95"]),
            fmt(r["violation_rate"], r["violation_rate_ci95"], 100.0),
            fmt(r["latency_violation_rate"], r["latency_violation_rate_ci95"], 100.0),
            fmt(r["within_constraints"], math.nan, 100.0),
        ]) + " |")
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
    return "\n".join(out)
