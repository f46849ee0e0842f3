"""Evaluation on seeded episodes, shared by training, its callbacks and the benchmark report.

A policy (a baseline of :mod:`baselines`, or an SB3 agent through
:class:`agents.policy.AgentPolicy`) runs on the same seeded episodes as the
references (common random numbers, :mod:`siftmoe_gym.evaluation`); the
references are evaluated once per seed list and cached (:class:`BaselineCache`).

Relative metrics (``docs/model.md`` section 9), against ``siftmoe``, the certified optimum of the
setting (exact P1, the P2 integer program, the P3 dynamic program), on the same episodes:

- ``saving_pct``: ``100 * (1 - E / E_topk)``, against the ``topk`` policy's energy on the same episodes when the
  table has it (else the evaluator's own top-k reference);
- ``regret``: ``E / E_siftmoe - 1``, the energy above the optimum.  Negative only when a
  policy saves energy through more error than the optimum: on more steps over a budget
  (infeasible beyond :data:`FEASIBILITY_TOL` of them); in Decode and Prefill, with the same
  steps over budget (still ``feasible``), by exceeding it by more on steps where no decision
  keeps it (there the optimum takes the decision the reward prefers: in Decode the least error
  unless a cheaper decision saves more than its extra error costs, in Prefill the least excess
  error); in fast fading, by more error within the cap, over a layer's average budget
  (infeasible).  The reward's accuracy terms, and so
  ``score``, count that error: read regret next to ``feasible`` and ``score``;
- ``score``: ``mean return of siftmoe / mean return of the policy`` (every reward is
  negative, so the optimum scores 1 and worse policies fall towards 0), with a 95%
  paired-bootstrap interval ``score_ci95_low`` .. ``score_ci95_high``;
- ``feasible``: the policy keeps the budgets: its share of steps over the per-step
  error constraint (the budget, or in fast fading the cap) and over the latency
  budget each exceed siftmoe's by at most :data:`FEASIBILITY_TOL`; in fast fading
  also every layer's average error ratio (mean over episodes) is within 1 up to its
  95% confidence interval.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from siftmoe_gym.evaluation import evaluate_policy

from .runio import atomic_write_json

REFERENCE = "siftmoe"
TOPK = "topk"
DEFAULT_EVAL_SEED_BASE = 1_000_003  # far from training seeds (seed + i)

BASELINE_KWARGS = {"random-within-budget": {"seed": 0}}
"""Options making every baseline reproducible on the evaluation seeds."""

FEASIBILITY_TOL = 0.01
"""Share of steps a feasible policy may spend over a per-step budget beyond what the optimum cannot avoid."""
BOOTSTRAP_RESAMPLES = 2000
LEGEND = ("siftmoe: the certified optimum | regret: E / E_siftmoe - 1 (below 0 only with more error than siftmoe; "
          "read it with feasible and score) | score: siftmoe's mean return / this "
          "policy's (1 = optimal, 0 = worst; 95% CI) | feasible: at most "
          f"{100 * FEASIBILITY_TOL:g}% more steps over a per-step budget than siftmoe (fast fading: and every layer's "
          "average error within its budget) | * or no: infeasible, ranked last")
"""The one-line legend printed under every comparison table."""


def eval_seeds(n: int, base: int = DEFAULT_EVAL_SEED_BASE) -> list[int]:
    """The ``n`` evaluation seeds ``base, base + 1, ...``."""
    return [int(base) + i for i in range(int(n))]


def regret(energy: float, reference_energy: float) -> float:
    """``energy / reference_energy - 1`` (0 when both are 0, ``inf`` for positive energy against 0)."""
    if reference_energy <= 0:
        return 0.0 if energy <= 0 else math.inf
    return energy / reference_energy - 1.0


def evaluate(env, policy, seeds: Iterable[int]) -> dict[str, Any]:
    """Summary of ``policy`` on ``seeds`` (:func:`siftmoe_gym.evaluation.summarize`) plus ``eval_seconds``
    and ``setting`` (``"decode"``, ``"prefill"`` or ``"fastfading"``)."""
    t0 = time.perf_counter()
    summary, _ = evaluate_policy(env, policy, list(seeds))
    summary = dict(summary)
    summary["eval_seconds"] = time.perf_counter() - t0
    summary["setting"] = str(getattr(env.unwrapped, "setting", "decode"))
    return summary


def paired_ratio(num, den, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float, float]:
    """``(mean(num) / mean(den), low, high)`` over paired episodes and its 95% percentile-bootstrap interval
    (episodes resampled in pairs, fixed ``seed``; resamples whose denominator is 0 are dropped).  nan when the
    episodes do not pair up or ``mean(den)`` is 0; no interval from one episode."""
    a = np.asarray(num, dtype=float)
    b = np.asarray(den, dtype=float)
    if a.shape != b.shape or a.size == 0 or b.mean() == 0:
        return math.nan, math.nan, math.nan
    point = float(a.mean() / b.mean())
    if a.size == 1:
        return point, math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, a.size, size=(int(resamples), a.size))
    d = b[idx].mean(axis=1)
    ok = d != 0
    ratios = a[idx].mean(axis=1)[ok] / d[ok]
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return point, float(lo), float(hi)


def paired_score(returns, reference_returns, seed: int = 0,
                 resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float, float]:
    """``(score, low, high)``: ``mean(reference_returns) / mean(returns)`` over paired episodes with its 95%
    paired-bootstrap interval (:func:`paired_ratio`).  nan when a mean return is not negative."""
    r = np.asarray(returns, dtype=float)
    ref = np.asarray(reference_returns, dtype=float)
    if r.shape != ref.shape or r.size == 0 or not (r.mean() < 0 and ref.mean() < 0):
        return math.nan, math.nan, math.nan
    return paired_ratio(ref, r, seed, resamples)


def feasibility(summary: dict[str, Any], reference: dict[str, Any] | None) -> dict[str, Any]:
    """Whether ``summary``'s policy keeps the budgets (see the module docstring), with the excesses it is
    judged on: ``excess_error_violation_rate``, ``excess_latency_violation_rate`` and, in fast fading,
    ``average_within_budget``."""
    ref_err = reference["violation_rate"] if reference else 0.0
    ref_lat = reference["latency_violation_rate"] if reference else 0.0
    out = {"excess_error_violation_rate": summary["violation_rate"] - ref_err,
           "excess_latency_violation_rate": summary["latency_violation_rate"] - ref_lat}
    ok = (out["excess_error_violation_rate"] <= FEASIBILITY_TOL + 1e-12
          and out["excess_latency_violation_rate"] <= FEASIBILITY_TOL + 1e-12)
    if summary.get("setting") == "fastfading":
        means = np.asarray(summary.get("layer_mean_error_ratio", []), dtype=float)
        half = np.nan_to_num(np.asarray(summary.get("layer_mean_error_ratio_ci95", []), dtype=float), nan=0.0)
        within = bool(np.all(means - half <= 1.0 + 1e-9))
        out["average_within_budget"] = within
        ok = ok and within
    out["feasible"] = bool(ok)
    return out


class BaselineCache:
    """Baseline summaries on fixed seeds, computed once (optionally persisted as JSON).

    Each baseline is built with :data:`BASELINE_KWARGS` (so it is reproducible), overridden by the
    keyword arguments given to :meth:`get`.  A baseline that does not apply to the env is skipped with a
    warning (``errors`` says why)."""

    VERSION = 3
    """Cache files of another version (other summary keys, another optimum) are recomputed."""

    def __init__(self, env, seeds: Iterable[int], path: str | os.PathLike | None = None, key: str = ""):
        self.env = env
        self.seeds = [int(s) for s in seeds]
        self.path = Path(path) if path else None
        self.key = key
        self.results: dict[str, dict[str, float]] = {}
        self.errors: dict[str, str] = {}
        if self.path and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                if (data.get("seeds") == self.seeds and data.get("key") == key
                        and data.get("version") == self.VERSION):
                    self.results = data.get("results", {})
            except (OSError, ValueError):
                self.results = {}

    def get(self, name: str, **policy_kwargs) -> dict[str, float] | None:
        if name in self.results:
            return self.results[name]
        if name in self.errors:
            return None
        import baselines

        try:
            policy = baselines.get_policy(name, self.env, **{**BASELINE_KWARGS.get(name, {}), **policy_kwargs})
            self.results[name] = evaluate(self.env, policy, self.seeds)
        except Exception as exc:  # a baseline that does not apply to this env is skipped, not fatal
            self.errors[name] = f"{type(exc).__name__}: {exc}"
            print(f"warning: baseline {name!r} skipped: {self.errors[name]}", file=sys.stderr)
            return None
        self._save()
        return self.results[name]

    def _save(self) -> None:
        if self.path:
            atomic_write_json(self.path, {"version": self.VERSION, "key": self.key, "seeds": self.seeds,
                                          "results": self.results})


def relative_metrics(summary: dict[str, Any], reference: dict[str, Any] | None) -> dict[str, Any]:
    """``summary`` with ``regret``, ``score`` (and its CI) and ``feasible`` against ``reference`` (siftmoe's
    summary on the same episodes; regret and score nan without one)."""
    out = dict(summary)
    out["regret"] = regret(summary["energy_per_token_j"], reference["energy_per_token_j"]) if reference else math.nan
    nan3 = (math.nan, math.nan, math.nan)
    paired = reference is not None and summary.get("episode_returns") is not None
    sc = paired_score(summary["episode_returns"], reference["episode_returns"]) if paired else nan3
    out["score"], out["score_ci95_low"], out["score_ci95_high"] = sc
    en = (paired_ratio(summary["episode_energies_j"], reference["episode_energies_j"])
          if paired and summary.get("episode_energies_j") is not None and reference.get("episode_energies_j") is not None
          else nan3)
    out["regret_ci95_low"], out["regret_ci95_high"] = en[1] - 1.0, en[2] - 1.0
    out.update(feasibility(summary, reference))
    return out


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` as a leaderboard: feasible rows first, each group by score (highest first; at an equal score, to
    9 decimals, the reference ``siftmoe`` first, so no row is shown above the optimum it only ties; otherwise
    stable)."""
    def key(r):
        s = r.get("score", math.nan)
        finite = isinstance(s, (int, float)) and math.isfinite(s)
        return (not r.get("feasible", False), -round(s, 9) if finite else math.inf, r.get("policy") != "siftmoe")

    return sorted(rows, key=key)


def baseline_names(names: Iterable[str] | None = None) -> list[str]:
    """``names`` as a list, or every registered baseline when ``None``."""
    if names is not None:
        return list(names)
    import baselines

    return list(baselines.available_policies())


def check_baselines(names: Iterable[str] | None, setting: str, env_id: str, option: str = "--baselines") -> None:
    """:class:`~agents.algos.AgentConfigError` naming every name of ``names`` that is not a registered
    baseline, or one that does not apply to ``setting`` (the setting of ``env_id``); ``None`` is every one."""
    if names is None:
        return
    import baselines

    from .algos import AgentConfigError

    names = list(names)
    known = baselines.available_policies()
    fits = baselines.available_policies(setting)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise AgentConfigError(f"{option}: unknown baseline(s) {', '.join(map(repr, unknown))}; "
                               f"for {env_id} ({setting}): {', '.join(fits)}")
    wrong = [n for n in names if n not in fits]
    if wrong:
        raise AgentConfigError(f"{option}: {', '.join(map(repr, wrong))} do(es) not apply to {env_id} ({setting}); "
                               f"available there: {', '.join(fits)}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise AgentConfigError(f"{option}: {', '.join(map(repr, twice))} given twice")


def comparison_rows(
    agent_name: str | None,
    agent_summary: dict[str, float] | None,
    cache: BaselineCache,
    names: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """Rows (agent first, then siftmoe, topk, the rest) with regret, score and feasibility against siftmoe.

    By default every registered baseline that applies to the cache's environment's setting."""
    if names is None:
        import baselines

        names = list(baselines.available_policies(getattr(cache.env.unwrapped, "setting", None)))
    names = baseline_names(names)
    ordered = [REFERENCE, TOPK] + [n for n in names if n not in (REFERENCE, TOPK)]
    reference = cache.get(REFERENCE)
    rows = []
    if agent_summary is not None:
        rows.append({"policy": agent_name, **relative_metrics(agent_summary, reference)})
    for name in ordered:
        summary = cache.get(name)
        if summary is not None:
            rows.append({"policy": name, **relative_metrics(summary, reference)})
    return saving_vs_topk(rows)


def saving_vs_topk(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with every ``saving_pct`` against the ``topk`` row's energy on the same episodes (in Prefill a
    step's own top-k reference depends on the loads the policy left, so the evaluator's per-policy saving
    would not compare); unchanged without a ``topk`` row of positive energy."""
    topk = next((r for r in rows if r.get("policy") == TOPK), None)
    if topk is not None and topk["energy_per_token_j"] > 0:
        for r in rows:
            r["saving_pct"] = 100.0 * (1.0 - r["energy_per_token_j"] / topk["energy_per_token_j"])
    return rows


def mean_ci95(values) -> tuple[float, float, int]:
    """``(mean, half-width of the 95% t-interval, n)`` of the finite values (half-width nan if n < 2)."""
    import numpy as np

    v = np.asarray([float(x) for x in values if x is not None and x == x and math.isfinite(float(x))], dtype=float)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(v[0]), math.nan, 1
    from scipy.stats import t as student_t

    half = float(student_t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return float(v.mean()), half, n
