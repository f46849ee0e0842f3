"""Workloads: the model's similarity profile and the stream of tokens it routes.

A :class:`MoEProfile` holds what is fixed for an environment instance
(``Delta``, ``sigma``, per-layer error budgets, expert popularity); a
workload samples :class:`TokenBatch` es (router probabilities, top-k, gates
and hidden-state norms per token and layer) from an episode's generator.

- :class:`SyntheticWorkload`: the synthetic model's own routers applied to
  freshly drawn hidden states (drawn in the routers' coordinates, see
  :mod:`siftmoe_gym.synthetic`), so scores, norms and similarity agree;
- :class:`TraceWorkload`: windows of a recorded trace (see
  :mod:`siftmoe_gym.tracefile`), starting at a random offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import SystemConfig
from .synthetic import SyntheticMoE, topk_gates
from .tracefile import Trace


@dataclass
class TokenBatch:
    """Routing of ``T`` tokens through ``L`` layers."""

    probs: np.ndarray  # (T, L, N)
    topk: np.ndarray  # (T, L, k)
    gates: np.ndarray  # (T, L, k)
    norms: np.ndarray  # (T, L)

    @property
    def num_tokens(self) -> int:
        return self.probs.shape[0]


@dataclass
class MoEProfile:
    """Similarity structure of the model, fixed per environment instance."""

    delta: np.ndarray  # (L, N, N)
    sigma: np.ndarray  # (L, N)
    skip_bound: np.ndarray  # (L,) mean over calibration tokens of sum_{i in S} g_i sigma_i
    popularity: np.ndarray  # (L, N) mean router probability
    norm_scale: np.ndarray  # (L,) typical hidden-state norm (for observation scaling)
    source: str = "synthetic"

    def budgets(self, config: SystemConfig) -> np.ndarray:
        """Per-layer error budgets ``eps_l`` (absolute, or ``eps_rel * skip_bound``)."""
        if config.eps_abs is not None:
            return np.full(len(self.skip_bound), float(config.eps_abs))
        return config.eps_rel * self.skip_bound


def _skip_bound(probs: np.ndarray, sigma: np.ndarray, k: int, renormalize: bool) -> np.ndarray:
    topk, gates = topk_gates(probs, k, renormalize)  # (T, L, k)
    layers = np.arange(sigma.shape[0])[None, :, None]
    return np.mean(np.sum(gates * sigma[layers, topk], axis=-1), axis=0)


class SyntheticWorkload:
    """Tokens from the synthetic model of ``config``."""

    def __init__(self, config: SystemConfig):
        self.config = config
        self.model = SyntheticMoE(config)
        delta, sigma, probs, x = self.model.calibrate()
        norms = np.linalg.norm(x, axis=-1)
        self.profile = MoEProfile(
            delta=delta,
            sigma=sigma,
            skip_bound=_skip_bound(probs, sigma, config.top_k, config.renormalize_gates),
            popularity=probs.mean(axis=0),
            norm_scale=np.median(norms, axis=0),
            source="synthetic",
        )

    def sample(self, rng: np.random.Generator, num_tokens: int) -> TokenBatch:
        """The routing of ``num_tokens`` fresh tokens (:meth:`SyntheticMoE.sample_routing`: the routers on
        hidden states drawn as :meth:`SyntheticMoE.hidden_states` draws them, through their own view)."""
        probs, norms = self.model.sample_routing(rng, num_tokens)
        topk, gates = topk_gates(probs, self.config.top_k, self.config.renormalize_gates)
        return TokenBatch(probs, topk, gates, norms)


class TraceWorkload:
    """Tokens replayed from a trace: a window of consecutive tokens per sample."""

    def __init__(self, config: SystemConfig, trace: Trace):
        self.config = config
        self.trace = trace
        topk = trace.topk.astype(np.int64)
        gates = trace.applied_gates()  # the gates the model applied (tracefile: stored, or v1's rule)
        self._probs, self._topk, self._gates = trace.observed_scores(), topk, gates  # scores in [0, 1]
        self._norms = trace.hidden_norms.astype(np.float64)
        sigma = trace.sigma.astype(np.float64)
        layers = np.arange(trace.num_layers)[None, :, None]
        self.profile = MoEProfile(
            delta=trace.delta.astype(np.float64),
            sigma=sigma,
            skip_bound=np.mean(np.sum(gates * sigma[layers, topk], axis=-1), axis=0),
            popularity=trace.popularity(),  # share of selections (Trace.popularity)
            norm_scale=np.maximum(np.median(self._norms, axis=0), 1e-12),
            source=f"trace:{trace.model}",
        )

    def sample(self, rng: np.random.Generator, num_tokens: int) -> TokenBatch:
        total = self._probs.shape[0]
        start = int(rng.integers(0, total))
        idx = (start + np.arange(num_tokens)) % total
        return TokenBatch(self._probs[idx], self._topk[idx], self._gates[idx], self._norms[idx])
