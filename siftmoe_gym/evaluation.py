"""Policy-agnostic evaluation on seeded episodes (common random numbers).

Any object with ``act(obs, info) -> action`` (and optionally ``reset()``)
is run on the same seeded episodes of an environment, and the metrics of
``docs/model.md`` section 7 are computed from each step's ``info``:

- ``energy_per_token_j``: total energy over the tokens served (all layers);
- ``saving_pct``: ``100 * (1 - E / E_topk)``, top-k's energy in the same states;
- ``mean_error_ratio`` / ``max_error_ratio``: error bound over its budget;
- ``violation_rate``: share of steps whose bound exceeds the hard per-step
  constraint: the budget ``eps_l`` (decode, prefill) or, for fast fading, the
  per-token cap ``eps_max`` (``info["cap_violation"]``); exceeding ``eps_l``
  on a single fast-fading token is allowed by the average constraint;
- ``over_budget_rate``: share of steps whose bound exceeds ``eps_l`` itself
  (equals ``violation_rate`` outside fast fading);
- ``worst_layer_mean_error_ratio``: per episode, the largest over layers of
  ``mean_t err_{t,l} / eps_l``, averaged over episodes; the fast-fading
  average constraint holds on an episode when this is ``<= 1``;
- ``average_met_rate``: share of episodes meeting every layer's average
  constraint (``mean_t err_{t,l} / eps_l <= 1`` for every ``l``);
- ``layer_mean_error_ratio`` / ``layer_mean_error_ratio_ci95`` (lists, one
  per layer): the mean over episodes of each layer's ``mean_t err_{t,l} / eps_l``
  and the half-width of its 95% Student-t interval (nan with one episode);
- ``mean_norm_energy``: mean over steps of ``E_t / E_topk,t`` (top-k units,
  the quantity drift-plus-penalty and the offline Lagrangian bound of
  ``baselines.fastfading`` are stated in);
- ``latency_violation_rate``: share of steps that overran the latency budget;
- ``any_violation_rate``: share of steps over either budget (error or latency);
- ``mean_return``: mean undiscounted episode return; ``episode_returns``
  the returns themselves and ``episode_energies_j`` each episode's energy (J),
  in seed order (for paired comparisons).

Because channels and tokens are drawn from the episode seed, every policy
sees identical episodes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Protocol

import numpy as np


class Policy(Protocol):
    def act(self, obs: Any, info: dict) -> Any: ...


class CallablePolicy:
    """Adapt a function ``f(obs, info) -> action`` to the policy protocol."""

    def __init__(self, fn: Callable[[Any, dict], Any]):
        self.fn = fn

    def act(self, obs, info):
        return self.fn(obs, info)


@dataclass
class EpisodeStats:
    seed: int
    steps: int
    tokens: float
    energy_j: float
    topk_energy_j: float
    error_ratio_sum: float
    error_ratio_max: float
    violations: int
    latency_violations: int
    episode_return: float
    any_violations: int = 0  # steps over the error budget or the latency budget (or both)
    over_budget: int = 0  # steps with err > eps_l (fast fading: allowed per token; the average is what counts)
    worst_layer_mean_ratio: float = 0.0  # max over layers of mean_t err_{t,l} / eps_l
    norm_energy_sum: float = 0.0  # sum over steps of E_t / max(E_topk,t, 1e-12)
    layer_mean_ratios: tuple = ()  # per layer: mean_t err_{t,l} / eps_l

    @property
    def average_met(self) -> bool:
        """Every layer's mean error ratio within 1 (the fast-fading average constraint)."""
        return self.worst_layer_mean_ratio <= 1.0 + 1e-9

    @property
    def within_constraints(self) -> bool:
        """No step over the hard error constraint or the latency budget (decode/prefill: every step feasible)."""
        return self.any_violations == 0

    @property
    def energy_per_token_j(self) -> float:
        return self.energy_j / max(self.tokens, 1e-12)


def run_episode(env, policy: Policy, seed: int) -> EpisodeStats:
    """One seeded episode of ``policy`` on ``env`` (a Gymnasium env, not vectorized)."""
    obs, info = env.reset(seed=int(seed))
    if hasattr(policy, "reset"):
        policy.reset()
    layers = env.unwrapped.system.num_layers
    steps = 0
    energy = topk = ratio_sum = ratio_max = ret = 0.0
    viol = lat = anyv = over = 0
    norm = 0.0
    layer_sum: dict[int, float] = {}
    layer_cnt: dict[int, int] = {}
    while True:
        action = policy.act(obs, info)
        obs, reward, terminated, truncated, info = env.step(action)
        steps += 1
        ret += float(reward)
        energy += float(info["energy_j"])
        topk += float(info["topk_energy_j"])
        ratio = float(info["error_bound"]) / max(float(info["budget"]), 1e-300)
        ratio_sum += ratio
        ratio_max = max(ratio_max, ratio)
        norm += float(info["energy_j"]) / max(float(info["topk_energy_j"]), 1e-12)
        layer = int(info.get("layer", 0))
        layer_sum[layer] = layer_sum.get(layer, 0.0) + ratio
        layer_cnt[layer] = layer_cnt.get(layer, 0) + 1
        over_eps = bool(info["violation"])
        over += over_eps
        # the hard per-step error constraint: the budget, or in fast fading the per-token cap
        v = bool(info["cap_violation"]) if "cap_violation" in info else over_eps
        lv = float(info["latency_violation"]) > 0
        viol += v
        lat += lv
        anyv += v or lv
        if terminated or truncated:
            break
    per_layer = tuple(layer_sum[l] / layer_cnt[l] if layer_cnt.get(l) else 0.0 for l in range(layers))
    worst = max((layer_sum[l] / layer_cnt[l] for l in layer_sum), default=0.0)
    return EpisodeStats(int(seed), steps, steps / layers, energy, topk, ratio_sum, ratio_max, viol, lat, ret, anyv,
                        over, worst, norm, per_layer)


def summarize(stats: Iterable[EpisodeStats]) -> dict[str, float]:
    """Aggregate metrics over episodes (energy ratios are ratios of sums)."""
    stats = list(stats)
    if not stats:
        raise ValueError("no episodes to summarize")
    steps = sum(s.steps for s in stats)
    tokens = sum(s.tokens for s in stats)
    energy = sum(s.energy_j for s in stats)
    topk = sum(s.topk_energy_j for s in stats)
    per_layer = np.array([s.layer_mean_ratios for s in stats], dtype=float)  # (episodes, L)
    layer_mean = per_layer.mean(axis=0)
    if len(stats) > 1:
        from scipy.stats import t as student_t

        layer_half = student_t.ppf(0.975, len(stats) - 1) * per_layer.std(axis=0, ddof=1) / np.sqrt(len(stats))
    else:
        layer_half = np.full(per_layer.shape[1], np.nan)
    return {
        "episodes": float(len(stats)),
        "energy_per_token_j": energy / tokens,
        "topk_energy_per_token_j": topk / tokens,
        "saving_pct": 100.0 * (1.0 - energy / topk) if topk > 0 else 0.0,
        "mean_error_ratio": sum(s.error_ratio_sum for s in stats) / steps,
        "max_error_ratio": max(s.error_ratio_max for s in stats),
        "violation_rate": sum(s.violations for s in stats) / steps,
        "latency_violation_rate": sum(s.latency_violations for s in stats) / steps,
        "any_violation_rate": sum(s.any_violations for s in stats) / steps,
        "over_budget_rate": sum(s.over_budget for s in stats) / steps,
        "worst_layer_mean_error_ratio": float(np.mean([s.worst_layer_mean_ratio for s in stats])),
        "average_met_rate": float(np.mean([s.average_met for s in stats])),
        "mean_norm_energy": sum(s.norm_energy_sum for s in stats) / steps,
        "mean_return": float(np.mean([s.episode_return for s in stats])),
        "episode_returns": [float(s.episode_return) for s in stats],
        "episode_energies_j": [float(s.energy_j) for s in stats],
        "layer_mean_error_ratio": layer_mean.tolist(),
        "layer_mean_error_ratio_ci95": layer_half.tolist(),
    }


def evaluate_policy(env, policy: Policy, seeds: Iterable[int]) -> tuple[dict[str, float], list[EpisodeStats]]:
    """Run ``policy`` on every seed and return ``(summary, per-episode stats)``."""
    episodes = [run_episode(env, policy, s) for s in seeds]
    return summarize(episodes), episodes


def episodes_as_dicts(episodes: Iterable[EpisodeStats]) -> list[dict[str, Any]]:
    return [dict(asdict(e), energy_per_token_j=e.energy_per_token_j, average_met=e.average_met,
                 within_constraints=e.within_constraints) for e in episodes]
