"""A synthetic MoE model in numpy: clustered experts, routers and hidden states.

Used when no real model trace is at hand.  Per layer:

- ``num_clusters`` cluster centres, each a two-layer ReLU MLP without
  biases ``E(x) = W2 relu(W1 x)``; expert ``i`` is its cluster's centre plus a
  relative perturbation of size ``cluster_spread`` and a random output gain,
  so similar experts exist and ``sigma`` varies from expert to expert;
- a router whose rows point towards the expert's cluster direction plus noise,
  with a per-expert popularity bias, so routing is skewed and similar
  experts tend to be co-selected;
- hidden states drawn around ``topic_count`` topic directions shared by all
  layers of a token (so routing correlates across layers), with log-normal
  norms.

``Delta`` and ``sigma`` are never written by hand: they are measured from
these experts on calibration hidden states by :mod:`siftmoe_gym.similarity`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import SystemConfig
from .similarity import similarity_from_outputs


def topk_gates(probs: np.ndarray, k: int, renormalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Top-k indices (descending probability) and gates of router probabilities (..., N)."""
    p = np.asarray(probs, dtype=np.float64)
    part = np.argpartition(-p, k - 1, axis=-1)[..., :k]
    vals = np.take_along_axis(p, part, axis=-1)
    order = np.argsort(-vals, axis=-1, kind="stable")
    topk = np.take_along_axis(part, order, axis=-1)
    gates = np.take_along_axis(vals, order, axis=-1)
    if renormalize:
        gates = gates / np.maximum(gates.sum(axis=-1, keepdims=True), 1e-300)
    return topk.astype(np.int64), gates


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class SyntheticLayer:
    w1: np.ndarray  # (N, h, dm)
    w2: np.ndarray  # (N, dm, h)
    router: np.ndarray  # (N, dm)
    bias: np.ndarray  # (N,)
    cluster_of: np.ndarray  # (N,)

    def expert_outputs(self, x: np.ndarray) -> np.ndarray:
        """Every expert on every token: (N, T, dm) for ``x`` (T, dm)."""
        hid = np.maximum(np.einsum("nhd,td->nth", self.w1, x), 0.0)
        return np.einsum("ndh,nth->ntd", self.w2, hid)

    def expert(self, i: int):
        """Expert ``i`` as a callable on (T, dm) arrays."""
        return lambda x: (np.maximum(x @ self.w1[i].T, 0.0)) @ self.w2[i].T


class SyntheticMoE:
    """The synthetic model of a :class:`SystemConfig` (seeded by ``model_seed``)."""

    def __init__(self, config: SystemConfig):
        self.config = config
        m = config.model
        rng = np.random.default_rng([config.model_seed, 0x5F7])
        n, dm, h, c = config.num_experts, m.model_dim, m.expert_hidden, m.num_clusters
        self.topics = rng.standard_normal((m.topic_count, dm))
        self.topics /= np.linalg.norm(self.topics, axis=1, keepdims=True)
        self.layers: list[SyntheticLayer] = []
        for _ in range(config.num_layers):
            cw1 = rng.standard_normal((c, h, dm)) / np.sqrt(dm)
            cw2 = rng.standard_normal((c, dm, h)) / np.sqrt(h)
            cdir = rng.standard_normal((c, dm))
            cdir /= np.linalg.norm(cdir, axis=1, keepdims=True)
            cluster_of = rng.integers(0, c, size=n)
            s = m.cluster_spread
            w1 = cw1[cluster_of] + s * rng.standard_normal((n, h, dm)) / np.sqrt(dm)
            gain = np.exp(0.2 * rng.standard_normal(n))[:, None, None]
            w2 = gain * (cw2[cluster_of] + s * rng.standard_normal((n, dm, h)) / np.sqrt(h))
            rdir = cdir[cluster_of] + 0.6 * rng.standard_normal((n, dm)) / np.sqrt(dm)
            rdir /= np.linalg.norm(rdir, axis=1, keepdims=True)
            router = 3.0 * rdir
            bias = m.popularity_skew * rng.standard_normal(n)
            self.layers.append(SyntheticLayer(w1, w2, router, bias, cluster_of))

    # ----------------------------------------------------------- token stream
    def hidden_states(self, rng: np.random.Generator, num_tokens: int) -> np.ndarray:
        """Hidden states (T, L, dm): a topic per token shared across layers."""
        cfg = self.config
        dm = cfg.model.model_dim
        topic = rng.integers(0, len(self.topics), size=num_tokens)
        base = 1.5 * self.topics[topic][:, None, :]
        noise = rng.standard_normal((num_tokens, cfg.num_layers, dm)) / np.sqrt(dm)
        x = base + noise
        x /= np.linalg.norm(x, axis=-1, keepdims=True)
        scale = np.sqrt(dm) * np.exp(0.25 * rng.standard_normal((num_tokens, cfg.num_layers, 1)))
        return x * scale

    def router_probs(self, x: np.ndarray, layer: int) -> np.ndarray:
        """Router probabilities (T, N) for hidden states (T, dm) at ``layer``."""
        lay = self.layers[layer]
        u = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-300)
        logits = (u @ lay.router.T + lay.bias) / self.config.model.router_temperature
        return softmax(logits)

    def all_router_probs(self, x: np.ndarray) -> np.ndarray:
        """Router probabilities (T, L, N) for hidden states (T, L, dm)."""
        return np.stack([self.router_probs(x[:, l], l) for l in range(self.config.num_layers)], axis=1)

    # ------------------------------------------------------------- similarity
    def calibrate(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Measure ``(Delta (L,N,N), sigma (L,N), probs (T,L,N), x (T,L,dm))`` on calibration tokens."""
        cfg = self.config
        rng = np.random.default_rng([cfg.model_seed, 0xCA1])
        x = self.hidden_states(rng, cfg.model.calibration_tokens)
        deltas, sigmas = [], []
        for l, lay in enumerate(self.layers):
            d, s = similarity_from_outputs(lay.expert_outputs(x[:, l]), x[:, l], q=cfg.quantile)
            deltas.append(d)
            sigmas.append(s)
        return np.stack(deltas), np.stack(sigmas), self.all_router_probs(x), x
