"""Episode records of the benchmark report and their statistics.

One record per (scenario, point, policy, seed): the episode's energy, error and
violation figures (:func:`episode_record`), then relative figures against top-k
and ``siftmoe`` on the same seed (:func:`fill_relative`).  :func:`summarize_records`
gives the mean, 95% CI and n per (scenario, point, policy); :func:`siftmoe_dominance`
checks, per episode, that the optimum spends no more energy than any policy
that met every step's constraints.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from ..evaluation import REFERENCE, TOPK, feasibility, mean_ci95, paired_score

BENCH_RECORD_FIELDS = [
    "scenario", "env", "param", "point", "x", "policy", "seed", "episodes_in_point", "steps", "tokens", "energy_j",
    "energy_per_token_j", "topk_energy_per_token_j", "saving_pct", "excess_vs_siftmoe_pct", "mean_error_ratio",
    "max_error_ratio", "violation_rate", "latency_violation_rate", "any_violation_rate", "over_budget_rate",
    "worst_layer_mean_ratio", "average_met", "within_constraints", "mean_norm_energy", "accuracy", "perplexity",
    "mean_return", "layer_mean_ratios",
]
SUMMARY_METRICS = [
    "energy_per_token_j", "saving_pct", "excess_vs_siftmoe_pct", "mean_error_ratio", "worst_layer_mean_ratio",
    "violation_rate", "latency_violation_rate", "any_violation_rate", "within_constraints", "average_met",
    "mean_norm_energy", "accuracy", "mean_return",
]
SCORE_FIELDS = ["score", "score_ci95_low", "score_ci95_high", "feasible", "excess_error_violation_rate",
                "excess_latency_violation_rate"]
BOUND_NAME = "lagrangian-bound"


def episode_record(stats, **extra) -> dict[str, Any]:
    """One episode's record (:class:`siftmoe_gym.evaluation.EpisodeStats`) with ``extra`` fields (scenario, point...)."""
    steps = max(stats.steps, 1)
    return {
        **extra, "seed": stats.seed, "steps": stats.steps, "tokens": stats.tokens, "energy_j": stats.energy_j,
        "energy_per_token_j": stats.energy_per_token_j, "topk_energy_per_token_j": stats.topk_energy_j / max(stats.tokens, 1e-12),
        "mean_error_ratio": stats.error_ratio_sum / steps, "max_error_ratio": stats.error_ratio_max,
        "violation_rate": stats.violations / steps, "latency_violation_rate": stats.latency_violations / steps,
        "any_violation_rate": stats.any_violations / steps, "over_budget_rate": stats.over_budget / steps,
        "worst_layer_mean_ratio": stats.worst_layer_mean_ratio, "average_met": bool(stats.average_met),
        "within_constraints": bool(stats.within_constraints), "mean_norm_energy": stats.norm_energy_sum / steps,
        "mean_return": stats.episode_return, "layer_mean_ratios": list(stats.layer_mean_ratios),
    }


def fill_relative(records: list[dict[str, Any]]) -> None:
    """Per seed: saving against top-k's own episode and energy above siftmoe's (common random numbers)."""
    by_seed: dict[int, dict[str, dict]] = {}
    for r in records:
        by_seed.setdefault(r["seed"], {})[r["policy"]] = r
    for rows in by_seed.values():
        topk = rows.get(TOPK)
        ref = rows.get(REFERENCE)
        for r in rows.values():
            if r["policy"] == BOUND_NAME:
                continue
            e = r.get("energy_j")
            if e is None:
                continue
            et = topk["energy_j"] if topk is not None else r["topk_energy_per_token_j"] * r["tokens"]
            r["saving_pct"] = 100.0 * (1.0 - e / et) if et > 0 else 0.0
            if ref is not None and ref.get("energy_j"):
                r["excess_vs_siftmoe_pct"] = 100.0 * (e / ref["energy_j"] - 1.0)


def bound_note(point_records: list[dict[str, Any]], label: str, notes: list[str]) -> None:
    """siftmoe against the Lagrangian bound on the same episodes (those with a finite bound)."""
    import numpy as np

    ok = {r["seed"] for r in point_records if r["policy"] == BOUND_NAME and math.isfinite(r.get("mean_norm_energy", math.nan))}
    if not ok:
        return
    b = np.mean([r["mean_norm_energy"] for r in point_records if r["policy"] == BOUND_NAME and r["seed"] in ok])
    sm = [r for r in point_records if r["policy"] == REFERENCE and r["seed"] in ok]
    if sm:
        notes.append(f"point {label}, on the {len(ok)} episodes with a finite bound: siftmoe energy "
                     f"{np.mean([r['mean_norm_energy'] for r in sm]):.4f} (top-k units) vs bound {b:.4f}; "
                     f"siftmoe mean error / budget {np.mean([r['mean_error_ratio'] for r in sm]):.3f}, average met on "
                     f"{100 * np.mean([bool(r['average_met']) for r in sm]):.0f}% of them")


def siftmoe_dominance(records: Iterable[dict[str, Any]], rtol: float = 1e-7, atol: float = 1e-15) -> tuple[int, list[str]]:
    """Per episode (decode and prefill scenarios): siftmoe's energy <= that of every other policy whose
    every step met the error budget without a latency violation.  Returns ``(comparisons, failures)``."""
    groups: dict[tuple, dict[str, dict]] = {}
    for r in records:
        env = str(r.get("env", ""))
        if "FastFading" in env or env.startswith("hf:") or r.get("energy_j") in (None, ""):
            continue
        groups.setdefault((r["scenario"], r["point"], int(r["seed"])), {})[r["policy"]] = r
    n, fails = 0, []
    for key, rows in groups.items():
        ref = rows.get(REFERENCE)
        if ref is None:
            continue
        for name, r in rows.items():
            if name == REFERENCE or not truthy(r.get("within_constraints")):
                continue
            n += 1
            e_ref, e = float(ref["energy_j"]), float(r["energy_j"])
            if e_ref > e * (1 + rtol) + atol:
                fails.append(f"{key}: siftmoe {e_ref:.6g} J > {name} {e:.6g} J")
    return n, fails


def return_dominance(records: Iterable[dict[str, Any]]) -> tuple[int, list[str]]:
    """Per (scenario, point): no policy's mean episode return beats ``siftmoe``'s beyond the 95% CI of the paired
    per-seed differences.  Returns ``(comparisons, failures)``; every setting (decode, prefill, fast fading)."""
    groups: dict[tuple, dict[str, dict[int, float]]] = {}
    for r in records:
        if r.get("policy") == BOUND_NAME or r.get("mean_return") in (None, "") or str(r.get("env", "")).startswith("hf:"):
            continue
        groups.setdefault((r["scenario"], r["point"]), {}).setdefault(r["policy"], {})[int(r["seed"])] = float(r["mean_return"])
    n, fails = 0, []
    for key, pol in groups.items():
        ref = pol.get(REFERENCE)
        if ref is None:
            continue
        for name, rets in pol.items():
            seeds = sorted(set(rets) & set(ref))
            if name == REFERENCE or len(seeds) < 2:
                continue
            n += 1
            mean, half, _ = mean_ci95([rets[s] - ref[s] for s in seeds])
            if mean - half > 1e-9 * max(1.0, abs(np.mean([ref[s] for s in seeds]))):
                fails.append(f"{key}: {name} mean return beats siftmoe by {mean:.4g} ± {half:.2g}")
    return n, fails


def truthy(v) -> bool:
    """A record's boolean, whether it is a bool, a number or the string CSV wrote."""
    return v is True or (isinstance(v, str) and v.lower() == "true") or (isinstance(v, (int, float)) and bool(v))


# ------------------------------------------------------------------------------------------- outputs
def summarize_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, 95% CI and n over seeds per (scenario, point, policy)."""
    groups: dict[tuple, list[dict]] = {}
    order = []
    for r in records:
        key = (r["scenario"], r["point"], r["policy"])
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(r)
    out = []
    for key in order:
        rows = groups[key]
        row = {"scenario": key[0], "point": key[1], "x": rows[0].get("x"), "policy": key[2], "env": rows[0].get("env")}
        for m in SUMMARY_METRICS:
            vals = [float(truthy(r.get(m))) if m in ("within_constraints", "average_met") and r.get(m) not in (None, "")
                    else r.get(m) for r in rows]
            vals = [v for v in vals if v not in (None, "")]
            mean, half, n = mean_ci95(vals)
            row[m], row[f"{m}_ci95"], row[f"{m}_n"] = mean, half, n
        out.append(row)
    _add_scores(out, groups)
    return out


def _group_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The fields :func:`agents.evaluation.feasibility` reads, from a group's episode records."""
    layers = np.array([r["layer_mean_ratios"] for r in rows if isinstance(r.get("layer_mean_ratios"), (list, tuple))])
    out = {"violation_rate": float(np.mean([float(r["violation_rate"]) for r in rows])),
           "latency_violation_rate": float(np.mean([float(r["latency_violation_rate"]) for r in rows])),
           "setting": "fastfading" if "FastFading" in str(rows[0].get("env", "")) else "decode"}
    if layers.ndim == 2 and len(layers):
        stats = [mean_ci95(layers[:, j]) for j in range(layers.shape[1])]
        out["layer_mean_error_ratio"] = [m for m, _, _ in stats]
        out["layer_mean_error_ratio_ci95"] = [h for _, h, _ in stats]
    return out


def _add_scores(summary: list[dict[str, Any]], groups: dict[tuple, list[dict]]) -> None:
    """``score`` (paired by seed, with its bootstrap CI) and ``feasible`` against siftmoe at the same point."""
    for row in summary:
        rows = groups[(row["scenario"], row["point"], row["policy"])]
        if row["policy"] == BOUND_NAME or any(r.get("violation_rate") in (None, "") for r in rows) \
                or str(row.get("env", "")).startswith("hf:"):
            continue
        ref_rows = groups.get((row["scenario"], row["point"], REFERENCE))
        ref = {int(r["seed"]): float(r["mean_return"]) for r in ref_rows} if ref_rows else {}
        mine = {int(r["seed"]): float(r["mean_return"]) for r in rows}
        seeds = sorted(set(ref) & set(mine))
        sc = paired_score([mine[s] for s in seeds], [ref[s] for s in seeds]) if seeds else (math.nan,) * 3
        row["score"], row["score_ci95_low"], row["score_ci95_high"] = sc
        row.update(feasibility(_group_summary(rows), _group_summary(ref_rows) if ref_rows else None))
