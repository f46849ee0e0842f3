"""Figures: the training comparison and learning curve, and the benchmark report's scenario plots.

Every figure is written atomically (:func:`savefig`) with the Agg backend.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

from ..evaluation import REFERENCE, TOPK
from .records import BOUND_NAME
from .scenarios import BENCH_METRICS, DEFAULT_PLOTS

POLICY_STYLE = {
    "siftmoe": ("tab:green", "o", "-"), "siftmoe-fast": ("tab:olive", "s", "--"), "topk": ("tab:gray", "x", "-"),
    "top1": ("tab:brown", "v", ":"), "skip-infeasible": ("tab:orange", "^", ":"),
    "nearest-local": ("tab:blue", "D", ":"), "channel-threshold": ("tab:purple", "<", ":"),
    "wdmoe-wlr": ("tab:pink", ">", ":"), "random-within-budget": ("tab:cyan", "*", ":"), "dpp": ("tab:red", "P", "--"),
    BOUND_NAME: ("black", None, "--"),
}


def savefig(fig, path: Path, dpi: int = 110) -> None:
    """Write ``fig`` to ``path`` atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def plot_comparison(rows: list[dict[str, Any]], path: str | os.PathLike, title: str = "") -> None:
    """The leaderboard as bars: score with its 95% CI (infeasible policies hatched and labelled) and the shares of
    steps over each budget, policies in rank order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..evaluation import ranked

    rows = ranked(rows)
    names = [str(r["policy"]) + ("" if r.get("feasible", True) else "\n(infeasible)") for r in rows]
    score = np.array([float(r.get("score", math.nan)) for r in rows])
    lo = np.array([float(r.get("score_ci95_low", math.nan)) for r in rows])
    hi = np.array([float(r.get("score_ci95_high", math.nan)) for r in rows])
    err = np.vstack([np.nan_to_num(score - lo), np.nan_to_num(hi - score)])
    colors = [POLICY_STYLE.get(str(r["policy"]), ("tab:red", None, None))[0] for r in rows]
    x = np.arange(len(rows))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(9, 1.2 * len(rows) + 4), 4.4))
    bars = ax1.bar(x, np.nan_to_num(score), yerr=err, color=colors, capsize=3)
    for bar, r in zip(bars, rows):
        if not r.get("feasible", True):
            bar.set_hatch("//")
            bar.set_alpha(0.5)
    ax1.axhline(1.0, color="tab:green", lw=1, ls="--")
    ax1.set_ylabel("score: siftmoe's return / policy's (1 = optimal)")
    ax1.set_title("Score (higher is better; hatched = breaks a budget)", fontsize=10)
    ax2.bar(x - 0.2, [100 * r["violation_rate"] for r in rows], width=0.4, color="tab:orange", label="error budget")
    ax2.bar(x + 0.2, [100 * r["latency_violation_rate"] for r in rows], width=0.4, color="tab:purple",
            label="latency budget", hatch="..")
    ax2.set_ylabel("steps over budget (%)")
    ax2.set_title("Budget violations (siftmoe's are unavoidable)", fontsize=10)
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    savefig(fig, Path(path))
    plt.close(fig)


def steps_formatter():
    """Tick labels for environment steps: 0, 500, 20k, 1.5M (no run-together digits)."""
    from matplotlib.ticker import FuncFormatter

    def fmt(x, _pos):
        for div, suf in ((1e6, "M"), (1e3, "k")):
            if abs(x) >= div:
                return f"{x / div:.4g}{suf}"
        return f"{x:.4g}"

    return FuncFormatter(fmt)


def plot_learning_curve(history: list[dict[str, Any]], path: str | os.PathLike, title: str = "",
                        best: dict[str, Any] | None = None) -> None:
    """Score, regret and budget violations against environment steps, with 95% CI bands and the best model
    (``best``, the evaluation record saved as ``best_model.zip``) marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    h = sorted(history, key=lambda r: r["timesteps"])
    steps = np.array([r["timesteps"] for r in h], dtype=float)
    col = lambda key, scale=1.0: np.array([scale * float(r.get(key, math.nan)) for r in h], dtype=float)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    ax1, ax2, ax3 = axes
    score, lo, hi = col("score"), col("score_ci95_low"), col("score_ci95_high")
    ax1.plot(steps, score, marker="o", color="tab:blue", label="agent (95% CI band)")
    ax1.fill_between(steps, lo, hi, color="tab:blue", alpha=0.15, lw=0)
    ax1.axhline(1.0, color="tab:green", lw=1, ls="--", label="siftmoe (optimum) = 1")
    ax1.set_ylabel("score: siftmoe's return / agent's")
    finite = np.concatenate([lo[np.isfinite(lo)], score[np.isfinite(score)]])
    if finite.size:
        ax1.set_ylim(max(0.0, float(finite.min()) - 0.05), max(1.05, float(np.nanmax(hi)) + 0.02 if np.isfinite(hi).any() else 1.05))
    reg, rlo, rhi = col("regret", 100), col("regret_ci95_low", 100), col("regret_ci95_high", 100)
    ax2.plot(steps, reg, marker="o", color="tab:blue", label="agent (95% CI band)")
    ax2.fill_between(steps, rlo, rhi, color="tab:blue", alpha=0.15, lw=0)
    ax2.axhline(0, color="tab:green", lw=1, ls="--", label="siftmoe (optimum)")
    ax2.set_ylabel("regret: energy above siftmoe's (%)")
    ax3.plot(steps, col("violation_rate", 100), marker="o", ms=5, color="tab:orange", label="agent, error budget")
    ax3.plot(steps, col("latency_violation_rate", 100), marker="s", ms=4, ls="--", color="tab:purple",
             label="agent, latency budget")
    ax3.plot(steps, col("siftmoe_any_violation_rate", 100), ls=":", lw=2, color="tab:green",
             label="siftmoe, either budget (unavoidable)")
    top = np.nanmax(np.concatenate([col("violation_rate", 100), col("latency_violation_rate", 100),
                                    col("siftmoe_any_violation_rate", 100), [0.0]]))
    ax3.set_ylim(0, max(5.0, 1.15 * float(top)))
    ax3.set_ylabel("steps over a budget (%)")
    if best is not None and "timesteps" in best:
        bx = float(best["timesteps"])
        for ax in axes:
            ax.axvline(bx, color="black", lw=0.8, ls=":")
        ax1.plot([bx], [float(best.get("score", math.nan))], marker="*", ms=14, color="gold", mec="black",
                 ls="none", label=f"best model ({bx:,.0f} steps)")
        ax2.plot([bx], [100 * float(best.get("regret", math.nan))], marker="*", ms=14, color="gold", mec="black",
                 ls="none", label="best model")
    for ax in axes:
        ax.set_xlabel("environment steps")
        ax.xaxis.set_major_formatter(steps_formatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    savefig(fig, Path(path))
    plt.close(fig)


def plot_scenario(scn: dict, rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = scn.get("plots") or DEFAULT_PLOTS
    sweep = scn.get("sweep") or {}
    if not sweep:
        return plot_bars(scn, rows, path)
    x_label = sweep.get("label", sweep.get("param", ""))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.0 * len(metrics), 3.8), squeeze=False)
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    for ax, m in zip(axes[0], metrics):
        key, label, scale = BENCH_METRICS[m]
        only = (scn.get("plot_policies") or {}).get(m)
        for p in policies:
            if only is not None and p not in only:
                continue
            pr = [r for r in rows if r["policy"] == p and r.get(key) is not None and math.isfinite(r.get(key, math.nan))]
            if not pr:
                continue
            xs = np.array([r["x"] for r in pr], dtype=float)
            ys = np.array([scale * r[key] for r in pr])
            es = np.array([scale * r.get(f"{key}_ci95", math.nan) for r in pr])
            es = np.where(np.isfinite(es), es, 0.0)
            color, marker, ls = POLICY_STYLE.get(p, (None, "o", "-"))
            if p == BOUND_NAME:
                ax.errorbar(xs, ys, yerr=es, color=color, ls=ls, lw=1.5, capsize=3, label="offline Lagrangian bound")
            else:
                ax.errorbar(xs, ys, yerr=es, color=color, marker=marker, ls=ls, lw=1.4, ms=5, capsize=3, label=p)
        if m in ("mean_error_ratio", "worst_layer_mean_error_ratio"):
            ax.axhline(1.0, color="red", lw=0.8, ls=":", label="budget")
        ax.set_xlabel(x_label)
        ax.set_ylabel(label)
        if sweep.get("xscale"):
            ax.set_xscale(sweep["xscale"])
        if scn.get("yscale") and m.startswith("energy"):
            ax.set_yscale(scn["yscale"])
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in labels:
                handles.append(h)
                labels.append(l)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(scn.get("title", scn["name"]) + " (mean, 95% CI over episodes)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.045 * ((len(labels) - 1) // 5), 1, 1))
    _savefig_small(fig, path)
    plt.close(fig)


def plot_bars(scn: dict, rows: list[dict[str, Any]], path: Path) -> None:
    """A single-point scenario: one bar per policy and metric, with the 95% CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = scn.get("bar_plots") or ["energy_per_token_mj", "violation_pct", "latency_violation_pct"]
    rows = [r for r in rows if r["policy"] != BOUND_NAME]
    names = [r["policy"] for r in rows]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 4.0), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        key, label, scale = BENCH_METRICS[m]
        ys = np.array([scale * r.get(key, math.nan) for r in rows], dtype=float)
        es = np.array([scale * r.get(f"{key}_ci95", math.nan) for r in rows], dtype=float)
        colors = [POLICY_STYLE.get(n, ("tab:red", None, None))[0] for n in names]
        ax.bar(np.arange(len(rows)), ys, yerr=np.where(np.isfinite(es), es, 0.0), color=colors, capsize=3)
        ax.set_xticks(np.arange(len(rows)))
        ax.set_xticklabels(names, rotation=40, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.set_xlabel("policy")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(scn.get("title", scn["name"]) + " (mean, 95% CI over episodes)", fontsize=10)
    fig.tight_layout()
    _savefig_small(fig, path)
    plt.close(fig)


def plot_hf_accuracy(scn: dict, rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for r in rows:
        ex = 1e3 * r["energy_per_token_j"]
        exe = 1e3 * (r["energy_per_token_j_ci95"] if math.isfinite(r["energy_per_token_j_ci95"]) else 0.0)
        acc = 100 * r["accuracy"]
        ace = 100 * (r["accuracy_ci95"] if math.isfinite(r["accuracy_ci95"]) else 0.0)
        color, marker, _ = POLICY_STYLE.get(r["policy"], (None, "o", "-"))
        ax1.errorbar([ex], [acc], xerr=[exe], yerr=[ace], color=color, marker=marker, capsize=3, ls="none")
    for i, r in enumerate(rows):
        ex, acc = 1e3 * r["energy_per_token_j"], 100 * r["accuracy"]
        ax1.annotate("top-k" if r["policy"] == TOPK else f"ε={r['point']}", (ex, acc), textcoords="offset points",
                     xytext=(6, -12 if i % 2 else 5), fontsize=8)
    sm = [r for r in rows if r["policy"] == REFERENCE]
    ax1.plot([1e3 * r["energy_per_token_j"] for r in sm], [100 * r["accuracy"] for r in sm], color="tab:green", lw=1,
             label="siftmoe (eps_rel sweep)")
    ax1.plot([], [], color="tab:gray", marker="x", ls="none", label="top-k")
    ax1.set_xlabel("energy per token, all MoE layers (mJ)")
    ax1.set_ylabel("next-token accuracy (%)")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    xs = [r["x"] for r in sm]
    ax2.errorbar(xs, [1e3 * r["energy_per_token_j"] for r in sm],
                 yerr=[1e3 * (r["energy_per_token_j_ci95"] if math.isfinite(r["energy_per_token_j_ci95"]) else 0) for r in sm],
                 color="tab:green", marker="o", capsize=3, label="siftmoe")
    tk = [r for r in rows if r["policy"] == TOPK]
    if tk:
        ax2.axhline(1e3 * tk[0]["energy_per_token_j"], color="tab:gray", ls="--", label="top-k")
    ax2.set_xlabel("error budget eps_rel")
    ax2.set_ylabel("energy per token, all MoE layers (mJ)")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.suptitle(scn.get("title", scn["name"]) + " (mean, 95% CI over channel seeds)", fontsize=10)
    fig.tight_layout()
    _savefig_small(fig, path)
    plt.close(fig)


def _savefig_small(fig, path: Path) -> None:
    savefig(fig, path, dpi=90)
