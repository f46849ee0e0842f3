"""Episode-end metrics of the siftmoe_gym environments.

On the last step of an episode ``info`` carries, flat and (single
environment) together under ``info["episode_metrics"]``:

| key                        | value |
|----------------------------|-------|
| ``energy_per_token_j``     | the episode's energy over its tokens (J) |
| ``topk_energy_per_token_j``| top-k's energy over the same episode, per token (J) |
| ``saving_pct``             | ``100 (1 - E / E_topk)`` (0 when ``E_topk = 0``) |
| ``violation_rate``         | share of steps with ``err > eps_l`` |
| ``latency_violation_rate`` | share of steps with a latency violation |

computed from the episode's running sums ``(energy, top-k energy,
violations, latency violations)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

EPISODE_METRICS = ("energy_per_token_j", "topk_energy_per_token_j", "saving_pct", "violation_rate",
                   "latency_violation_rate")
"""Keys added to the last step's ``info`` (flat, and together under ``info["episode_metrics"]``)."""


def add_episode_metrics(info: dict[str, Any], energy: float, topk_energy: float, violations: int,
                        latency_violations: int, tokens: int, steps: int) -> None:
    """Add the metrics of one episode to ``info``, flat and under ``info["episode_metrics"]``."""
    e, et = energy, topk_energy
    m = {
        "energy_per_token_j": e / tokens,
        "topk_energy_per_token_j": et / tokens,
        "saving_pct": 100.0 * (1.0 - e / et) if et > 0 else 0.0,
        "violation_rate": violations / steps,
        "latency_violation_rate": latency_violations / steps,
    }
    info.update(m)
    info["episode_metrics"] = dict(m)


def add_episode_metrics_batch(info: dict[str, Any], energy: np.ndarray, topk_energy: np.ndarray,
                              violations: np.ndarray, latency_violations: np.ndarray, tokens: int, steps: int) -> None:
    """:func:`add_episode_metrics` over copies (arrays (n,)), flat only (the vector environment's ``info``)."""
    e, et = energy, topk_energy
    with np.errstate(divide="ignore", invalid="ignore"):
        saving = np.where(et > 0, 100.0 * (1.0 - e / np.where(et > 0, et, 1.0)), 0.0)
    m = {"energy_per_token_j": e / tokens, "topk_energy_per_token_j": et / tokens, "saving_pct": saving,
         "violation_rate": violations / steps, "latency_violation_rate": latency_violations / steps}
    info.update(m)
