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
  norms: ``x = sqrt(d) e^{0.25 z} v / ||v||`` with ``v = 1.5 t + n / sqrt(d)``
  for the token's topic direction ``t``, ``n ~ N(0, I_d)`` and ``z ~ N(0, 1)``
  (:meth:`SyntheticMoE.hidden_states`).

``Delta`` and ``sigma`` are never written by hand: they are measured from
these experts on calibration hidden states by :mod:`siftmoe_gym.similarity`.

The token stream of the environments (:meth:`SyntheticMoE.sample_routing`)
applies the routers to hidden states drawn from exactly that distribution,
but draws only what the routers and the norm see: the router of a layer
reads ``x`` through its ``N`` rows, so in an orthonormal frame made of a basis
``Q`` of the router's row space, the unit direction of the topic's part
outside it, and the rest, ``n`` splits into ``N + 1`` coordinates that move
the router (drawn), and ``d - N - 1`` coordinates that only enter ``||v||``
through their squared sum, a chi-square variable with ``d - N - 1`` degrees
of freedom (drawn as one number).  The router scores, top-k, gates and norms
then have exactly the distribution :meth:`hidden_states` followed by the
routers gives (when ``N + 1 >= d`` all ``d`` coordinates are drawn), with
``N + 3`` random numbers per token and layer instead of ``d + 1``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from . import cache
from .blocked_similarity import choose_method, similarity_blocks
from .config import SystemConfig


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


def build_bytes(config: SystemConfig) -> int:
    """Bytes of the largest arrays building ``config``'s synthetic model holds at once (float64): every layer's
    expert weights ``2 L N h d``, one layer's cluster centres ``2 c h d`` and draw temporary ``N h d``, one
    layer's calibration outputs ``N T d``, the calibration hidden states ``T L d``, ``Delta`` ``L N^2`` and the
    router scores ``T L N``."""
    m = config.model
    n, nl, d, h, t, c = (config.num_experts, config.num_layers, m.model_dim, m.expert_hidden, m.calibration_tokens,
                         m.num_clusters)
    return 8 * (2 * nl * n * h * d + 2 * c * h * d + n * h * d + n * t * d + t * nl * d + nl * n * n + t * nl * n)


def physical_memory() -> int | None:
    """This machine's physical memory in bytes, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_build_memory(config: SystemConfig) -> None:
    """``ValueError`` naming the fields that size the synthetic model when building it would need more memory
    than the machine has (:func:`build_bytes` against :func:`physical_memory`), before anything is drawn."""
    need, have = build_bytes(config), physical_memory()
    if have is not None and need > have:
        m = config.model
        raise ValueError(
            f"building this synthetic model needs about {need / 2**30:,.0f} GiB, more than this machine's "
            f"{have / 2**30:,.0f} GiB (num_layers={config.num_layers}, num_experts={config.num_experts}, "
            f"model.model_dim={m.model_dim}, model.expert_hidden={m.expert_hidden}, "
            f"model.num_clusters={m.num_clusters}, model.calibration_tokens={m.calibration_tokens}); make some of "
            "them smaller")


class SyntheticMoE:
    """The synthetic model of a :class:`SystemConfig` (seeded by ``model_seed``).

    Systems whose calibration is large (``N (N-1)/2 * T * d * L`` at least
    :data:`CACHE_MIN_WORK`) keep their ``Delta``, ``sigma`` and routers in the
    on-disk cache of :mod:`siftmoe_gym.cache`: on a hit the experts' weights
    are not drawn until something asks for them (:attr:`layers`, replayed from
    the same seed, so every number is the same as without the cache).
    """

    def __init__(self, config: SystemConfig, use_cache: bool = True):
        self.config = config
        m = config.model
        rng = np.random.default_rng([config.model_seed, 0x5F7])
        dm = m.model_dim
        self.topics = rng.standard_normal((m.topic_count, dm))
        self.topics /= np.linalg.norm(self.topics, axis=1, keepdims=True)
        self._layers: list[SyntheticLayer] | None = None
        self._calibration: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # Delta, sigma, probs
        self._cache_key = None
        n, nl = config.num_experts, config.num_layers
        if use_cache and calibration_work(config) >= CACHE_MIN_WORK:
            self._cache_key = cache.model_key(config)
            t = m.calibration_tokens
            hit = cache.load(self._cache_key, {"delta": (nl, n, n), "sigma": (nl, n), "routers": (nl, n, dm),
                                               "biases": (nl, n), "probs": (t, nl, n)})
            if hit is not None:
                self._calibration = (hit["delta"], hit["sigma"], hit["probs"])
                self._routers, self._biases = hit["routers"], hit["biases"]
        if self._calibration is None:
            check_build_memory(config)
            self._draw_layers(rng)
        self._routing_frame()

    def _draw_layers(self, rng: np.random.Generator) -> None:
        """Draw every layer's experts, router and bias from ``rng`` (positioned after the topics)."""
        config, m = self.config, self.config.model
        n, dm, h, c = config.num_experts, m.model_dim, m.expert_hidden, m.num_clusters
        layers = []
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
            layers.append(SyntheticLayer(w1, w2, router, bias, cluster_of))
        self._layers = layers
        self._routers = np.stack([lay.router for lay in layers])  # (L, N, dm)
        self._biases = np.stack([lay.bias for lay in layers])  # (L, N)

    @property
    def layers(self) -> list[SyntheticLayer]:
        """Every layer's experts and router (drawn on first use after a cache hit, from the same seed)."""
        if self._layers is None:
            rng = np.random.default_rng([self.config.model_seed, 0x5F7])
            rng.standard_normal((self.config.model.topic_count, self.config.model.model_dim))  # the topics
            self._draw_layers(rng)
        return self._layers

    def _routing_frame(self) -> None:
        """Per layer, the router's coordinates of the hidden-state distribution (see the module docstring).

        ``noise_dims`` normals per token and layer (``r0 = min(N, d)`` router
        coordinates, plus the topic's out-of-router-space coordinate when
        ``r0 < d``), ``chi2_df`` degrees of freedom left for the rest;
        ``_tau[l, c]`` is topic ``c`` in layer ``l``'s coordinates times 1.5
        and ``_proj[l]`` (r0, N) maps router coordinates to logits (router
        temperature folded in).
        """
        cfg = self.config
        n, dm, nl = cfg.num_experts, cfg.model.model_dim, cfg.num_layers
        r0 = min(n, dm)
        extra = r0 < dm
        self.noise_dims = r0 + 1 if extra else dm
        self.chi2_df = dm - self.noise_dims
        self._r0 = r0
        temp = cfg.model.router_temperature
        self._tau = np.zeros((nl, len(self.topics), self.noise_dims))
        self._proj = np.empty((nl, r0, n))
        self._bias_t = np.empty((nl, n))
        for l in range(nl):
            router = self._routers[l]
            # rows of vt: an orthonormal basis of (a space holding) the router's row space
            q = np.linalg.svd(router, full_matrices=False)[2] if extra else np.eye(dm)
            c = self.topics @ q.T  # (topics, r0)
            self._tau[l, :, :r0] = 1.5 * c
            if extra:
                self._tau[l, :, r0] = 1.5 * np.linalg.norm(self.topics - c @ q, axis=1)
            self._proj[l] = (q @ router.T) / temp
            self._bias_t[l] = self._biases[l] / temp
        # |logit| <= (max row norm + |bias|) / temp: softmax needs no max subtraction when that is small
        bound = (np.linalg.norm(self._routers, axis=-1).max()
                 + np.abs(self._bias_t * temp).max()) / temp
        self._safe_exp = bool(bound < 300.0)

    # ------------------------------------------------------- routing stream
    def routing_draw_sizes(self, num_tokens: int) -> tuple[int, int, int]:
        """(uniforms, normals, chi-square numbers) :meth:`sample_routing` draws for ``num_tokens`` tokens."""
        tl = num_tokens * self.config.num_layers
        return num_tokens, tl * (self.noise_dims + 1), tl if self.chi2_df > 0 else 0

    def topics_from_uniform(self, u: np.ndarray) -> np.ndarray:
        """Topic indices from uniforms in [0, 1) (each topic with probability 1 / topic_count)."""
        c = len(self.topics)
        return np.minimum((u * c).astype(np.int64), c - 1)

    def draw_chi2(self, rng: np.random.Generator, size: int, out: np.ndarray | None = None) -> np.ndarray | None:
        """``size`` chi-square numbers with ``chi2_df`` degrees of freedom, as ``2 * Gamma(df / 2)``
        (``out`` receives the gamma variates; :meth:`routing` doubles them)."""
        if not size:
            return None
        return rng.standard_gamma(0.5 * self.chi2_df, size=None if out is not None else size, out=out)

    def sample_routing(self, rng: np.random.Generator, num_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """Router probabilities (T, L, N) and hidden-state norms (T, L) of ``num_tokens`` fresh tokens.

        Draws, in order: ``T`` uniforms (topics), the normals, the chi-square
        numbers (:meth:`routing_draw_sizes`); the same distribution as
        :meth:`hidden_states` followed by :meth:`all_router_probs`.
        """
        nu, nz, ng = self.routing_draw_sizes(num_tokens)
        topic = self.topics_from_uniform(rng.random(nu))
        z = rng.standard_normal(nz)
        g = self.draw_chi2(rng, ng)
        probs, norms = self.routing(topic[None], z[None], None if g is None else g[None])
        return probs[0], norms[0]

    def routing(self, topic: np.ndarray, z: np.ndarray, gam: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Router probabilities (B, T, L, N) and norms (B, T, L) from the raw draws of B token streams.

        ``topic`` (B, T) indices, ``z`` (B, T*L*(noise_dims+1)) normals (the
        router coordinates, then the log-norm normals), ``gam`` (B, T*L) the
        gamma variates of :meth:`draw_chi2` (None when ``chi2_df == 0``).
        Every row is computed on its own with the same operations whatever
        ``B`` is (the matrix products are one (T, r0) @ (r0, N) product per
        stream and layer), so a batch gives each stream its own numbers bit
        for bit.
        """
        cfg = self.config
        b, t = topic.shape
        nl, r, dm, r0 = cfg.num_layers, self.noise_dims, cfg.model.model_dim, self._r0
        n_a = t * nl * r
        y = np.multiply(z[:, :n_a], 1.0 / np.sqrt(dm)).reshape(b, t, nl, r)
        y += self._tau[np.arange(nl), topic[:, :, None]]  # (B, T, L, r): 1.5 t + n / sqrt(d), router frame
        sq = np.add.reduce(y * y, axis=-1)
        if gam is not None:
            sq += gam.reshape(b, t, nl) * (2.0 / dm)
        inv = 1.0 / np.sqrt(sq)  # 1 / ||v||
        logits = np.empty((b, t, nl, cfg.num_experts))
        for l in range(nl):
            logits[:, :, l] = np.matmul(y[:, :, l, :r0], self._proj[l])  # one (T, r0) @ (r0, N) per stream
        logits *= inv[..., None]
        logits += self._bias_t
        if cfg.model.router_score == "sigmoid":
            e = _sigmoid(logits)
        else:
            if not self._safe_exp:
                logits -= logits.max(axis=-1, keepdims=True)
            e = np.exp(logits)
            e /= e.sum(axis=-1, keepdims=True)
        norms = np.sqrt(dm) * np.exp(0.25 * z[:, n_a:].reshape(b, t, nl))
        return e, norms

    # ----------------------------------------------------------- token stream
    def hidden_states(self, rng: np.random.Generator, num_tokens: int) -> np.ndarray:
        """Hidden states (T, L, dm): a topic per token shared across layers (calibration, tests).

        The environments' token stream draws the routers' view of the same
        distribution directly (:meth:`sample_routing`).
        """
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
        """Router scores (T, N) for hidden states (T, dm) at ``layer``: softmax probabilities, or sigmoid
        scores with ``model.router_score = "sigmoid"``."""
        u = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-300)
        logits = (u @ self._routers[layer].T + self._biases[layer]) / self.config.model.router_temperature
        return _sigmoid(logits) if self.config.model.router_score == "sigmoid" else softmax(logits)

    def all_router_probs(self, x: np.ndarray) -> np.ndarray:
        """Router probabilities (T, L, N) for hidden states (T, L, dm)."""
        return np.stack([self.router_probs(x[:, l], l) for l in range(self.config.num_layers)], axis=1)

    # ------------------------------------------------------------- similarity
    def calibrate(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Measure ``(Delta (L,N,N), sigma (L,N), probs (T,L,N), x (T,L,dm))`` on calibration tokens.

        ``Delta`` / ``sigma`` by :func:`~siftmoe_gym.blocked_similarity.similarity_blocks` (bit for bit
        :func:`~siftmoe_gym.similarity.similarity_from_outputs` up to its exact-difference work limit),
        read from and written to the on-disk cache for large systems (see the class docstring).
        """
        cfg = self.config
        rng = np.random.default_rng([cfg.model_seed, 0xCA1])
        x = self.hidden_states(rng, cfg.model.calibration_tokens)
        if self._calibration is None:
            deltas, sigmas = [], []
            n, t, d = cfg.num_experts, cfg.model.calibration_tokens, cfg.model.model_dim
            exact = choose_method(n, t, d) == "exact"
            for l, lay in enumerate(self.layers):
                xl = x[:, l]
                # the exact path keeps the original einsum (its bits); the Gram path one BLAS product per expert
                out = lay.expert_outputs(xl) if exact else _expert_outputs_blas(lay, xl)
                dl, sl = similarity_blocks(out, xl, q=cfg.quantile, method="exact" if exact else "gram")
                deltas.append(dl)
                sigmas.append(sl)
            self._calibration = (np.stack(deltas), np.stack(sigmas), self.all_router_probs(x))
            if self._cache_key is not None:
                delta, sigma, probs = self._calibration
                cache.save(self._cache_key, {"delta": delta, "sigma": sigma, "probs": probs,
                                             "routers": self._routers, "biases": self._biases})
        delta, sigma, probs = self._calibration
        return delta.copy(), sigma.copy(), probs.copy(), x

CACHE_MIN_WORK = 1 << 26
"""Smallest calibration work ``N (N-1)/2 * T * d * L`` whose results go to the on-disk cache (the OLMoE
preset and larger; the default system, 1.8e6, is always computed)."""


def calibration_work(config: SystemConfig) -> int:
    """``N (N-1)/2 * T * d * L``: pairs x calibration tokens x model dimension x layers."""
    n, m = config.num_experts, config.model
    return n * (n - 1) // 2 * m.calibration_tokens * m.model_dim * config.num_layers


def _expert_outputs_blas(lay: SyntheticLayer, x: np.ndarray) -> np.ndarray:
    """:meth:`SyntheticLayer.expert_outputs` as one pair of matrix products per expert (N, T, dm)."""
    out = np.empty((lay.w1.shape[0], x.shape[0], lay.w2.shape[1]))
    for i in range(lay.w1.shape[0]):
        out[i] = np.maximum(x @ lay.w1[i].T, 0.0) @ lay.w2[i].T
    return out


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """``1 / (1 + e^-z)`` elementwise, without overflow warnings for large ``|z|``."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))
