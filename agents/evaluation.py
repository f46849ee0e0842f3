"""Evaluation on seeded episodes, shared by training, its callbacks and the benchmark report.

A policy (a baseline of :mod:`baselines`, or an SB3 agent through
:class:`agents.policy.AgentPolicy`) runs on the same seeded episodes as the
references (common random numbers, :mod:`siftmoe_gym.evaluation`); the
references are evaluated once per seed list and cached (:class:`BaselineCache`).

Relative metrics:

- ``saving_pct``: ``100 * (1 - E / E_topk)`` (from the evaluator);
- ``regret``: ``E / E_siftmoe - 1``, the energy above the SiftMoE optimum on the
  same episodes (negative when a policy saves more than the optimum by
  breaking the error budget; read it together with ``violation_rate``).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from siftmoe_gym.evaluation import evaluate_policy

from .runio import atomic_write_json

REFERENCE = "siftmoe"
TOPK = "topk"
DEFAULT_EVAL_SEED_BASE = 1_000_003  # far from training seeds (seed + i)

BASELINE_KWARGS = {"random-within-budget": {"seed": 0}}
"""Options making every baseline reproducible on the evaluation seeds."""


def eval_seeds(n: int, base: int = DEFAULT_EVAL_SEED_BASE) -> list[int]:
    """The ``n`` evaluation seeds ``base, base + 1, ...``."""
    return [int(base) + i for i in range(int(n))]


def regret(energy: float, reference_energy: float) -> float:
    """``energy / reference_energy - 1`` (0 when both are 0, ``inf`` for positive energy against 0)."""
    if reference_energy <= 0:
        return 0.0 if energy <= 0 else math.inf
    return energy / reference_energy - 1.0


def evaluate(env, policy, seeds: Iterable[int]) -> dict[str, float]:
    """Summary of ``policy`` on ``seeds`` plus ``eval_seconds``."""
    t0 = time.perf_counter()
    summary, _ = evaluate_policy(env, policy, list(seeds))
    summary = dict(summary)
    summary["eval_seconds"] = time.perf_counter() - t0
    return summary


class BaselineCache:
    """Baseline summaries on fixed seeds, computed once (optionally persisted as JSON).

    Each baseline is built with :data:`BASELINE_KWARGS` (so it is reproducible), overridden by the
    keyword arguments given to :meth:`get`.  A baseline that does not apply to the env is skipped with a
    warning (``errors`` says why)."""

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
                if data.get("seeds") == self.seeds and data.get("key") == key:
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
            atomic_write_json(self.path, {"key": self.key, "seeds": self.seeds, "results": self.results})


def relative_metrics(summary: dict[str, float], reference: dict[str, float] | None) -> dict[str, float]:
    """``summary`` with ``regret`` against ``reference`` (nan without one)."""
    out = dict(summary)
    out["regret"] = regret(summary["energy_per_token_j"], reference["energy_per_token_j"]) if reference else math.nan
    return out


def baseline_names(names: Iterable[str] | None = None) -> list[str]:
    """``names`` as a list, or every registered baseline when ``None``."""
    if names is not None:
        return list(names)
    import baselines

    return list(baselines.available_policies())


def comparison_rows(
    agent_name: str | None,
    agent_summary: dict[str, float] | None,
    cache: BaselineCache,
    names: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """Rows (agent first, then siftmoe, topk, the rest) with regret against siftmoe."""
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
