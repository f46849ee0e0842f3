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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [str(r["policy"]) for r in rows]
    energy = [1e3 * r["energy_per_token_j"] for r in rows]
    viol = [100 * r["violation_rate"] for r in rows]
    lat = [100 * r["latency_violation_rate"] for r in rows]
    colors = ["tab:red" if i == 0 and n not in (REFERENCE, TOPK) else
              ("tab:green" if n == REFERENCE else ("tab:gray" if n == TOPK else "tab:blue"))
              for i, n in enumerate(names)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(rows) + 4), 4.2))
    ax1.bar(range(len(rows)), energy, color=colors)
    ax1.set_ylabel("energy per token (mJ)")
    ax1.set_xlabel("policy")
    ax1.set_title("Energy per token (lower is better)")
    import numpy as np

    x = np.arange(len(rows))
    ax2.bar(x - 0.2, viol, width=0.4, color="tab:orange", label="error budget")
    ax2.bar(x + 0.2, lat, width=0.4, color="tab:purple", label="latency budget")
    ax2.set_ylabel("steps over budget (%)")
    ax2.set_xlabel("policy")
    ax2.set_title("Budget violation rates")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(names, rotation=35, ha="right")
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    savefig(fig, Path(path))
    plt.close(fig)


def plot_learning_curve(history: list[dict[str, Any]], path: str | os.PathLike, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["timesteps"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(steps, [100 * h["regret"] for h in history], marker="o")
    ax1.axhline(0, color="tab:green", lw=1, ls="--", label="siftmoe (optimum)")
    ax1.set_xlabel("environment steps")
    ax1.set_ylabel("regret vs siftmoe (%)")
    ax1.legend()
    ax2.plot(steps, [100 * h["violation_rate"] for h in history], marker="o", color="tab:orange", label="error budget")
    ax2.plot(steps, [100 * h.get("any_violation_rate", math.nan) for h in history], marker="s", color="tab:red",
             label="either budget")
    ref = [100 * h.get("siftmoe_any_violation_rate", math.nan) for h in history]
    ax2.plot(steps, ref, ls="--", color="tab:green", label="siftmoe, either budget")
    ax2.set_xlabel("environment steps")
    ax2.set_ylabel("steps over budget (%)")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
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
