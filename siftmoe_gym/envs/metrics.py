"""Episode metrics of the siftmoe_gym environments: the running metrics so far, on every step.

Every step's ``info`` carries, flat and together under
``info["episode_metrics"]``, the metrics of the episode so far (the steps
taken since the reset, this one included):

| key                        | value |
|----------------------------|-------|
| ``energy_per_token_j``     | the energy so far over the tokens so far (J) |
| ``topk_energy_per_token_j``| top-k's energy over the same steps, per token (J) |
| ``saving_pct``             | ``100 (1 - E / E_topk)`` (0 when ``E_topk = 0``) |
| ``violation_rate``         | share of the steps so far with ``err > eps_l`` |
| ``latency_violation_rate`` | share of the steps so far with a latency violation |

"Tokens so far" counts token-layers: ``steps / L`` (fractional within a
token), so on the episode's last step the metrics are the episode's (per
token of the episode) and on a step where a wrapper truncates the episode
(``gym.make(..., max_episode_steps=...)``, ``TimeLimit``) they are those of
the part played: ``Monitor(info_keywords=("saving_pct",))`` and rl-zoo3's
``monitor_kwargs`` find them whichever way the episode ends.  They are
computed from the episode's running sums ``(energy, top-k energy,
violations, latency violations)``.  Prefill's top-k reference is its reward
scale ``Ebar_l`` per step (top-k's block energy per token at the layer).
"""

from __future__ import annotations

from typing import Any

import numpy as np

EPISODE_METRICS = ("energy_per_token_j", "topk_energy_per_token_j", "saving_pct", "violation_rate",
                   "latency_violation_rate")
"""Keys every step's ``info`` carries (flat, and together under ``info["episode_metrics"]``)."""


def add_episode_metrics(info: dict[str, Any], energy: float, topk_energy: float, violations: int,
                        latency_violations: int, tokens: float, steps: int) -> None:
    """Add the metrics of ``steps`` steps (``tokens`` tokens) to ``info``, flat and under ``info["episode_metrics"]``."""
    e, et = energy, topk_energy
    m = {
        "energy_per_token_j": e / tokens,
        "topk_energy_per_token_j": et / tokens,
        "saving_pct": 100.0 * (1.0 - e / et) if et > 0 else 0.0,
        "violation_rate": violations / steps,
        "latency_violation_rate": latency_violations / steps,
    }
    info.update(m)
    info["episode_metrics"] = m


def add_episode_metrics_batch(info: dict[str, Any], energy: np.ndarray, topk_energy: np.ndarray,
                              violations: np.ndarray, latency_violations: np.ndarray, tokens: float, steps: int,
                              mask: np.ndarray) -> None:
    """:func:`add_episode_metrics` over copies (arrays (n,)), laid out as Gymnasium's vector environments lay out
    the single environments' infos: flat, and under ``info["episode_metrics"]`` with its ``"_key"`` masks
    (``mask``, read-only, all True); the caller adds the top-level masks."""
    e, et = energy, topk_energy
    pos = et > 0
    if pos.all():  # (the usual case, without the masking's cost: the same numbers)
        saving = 100.0 * (1.0 - e / et)
    else:
        saving = np.where(pos, 100.0 * (1.0 - e / np.where(pos, et, 1.0)), 0.0)
    m = {"energy_per_token_j": e / tokens, "topk_energy_per_token_j": et / tokens, "saving_pct": saving,
         "violation_rate": violations / steps, "latency_violation_rate": latency_violations / steps}
    info.update(m)
    nested = dict(m)
    for key in EPISODE_METRICS:
        nested["_" + key] = mask
    info["episode_metrics"] = nested
