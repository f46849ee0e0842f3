"""Batched episode drawing shared by the single and the native vector environments.

Every copy keeps its own ``numpy.random.Generator`` and draws from it exactly
the numbers, in exactly the order, that the single environment draws (one
short Python loop over the copies, the raw draws only); everything computed
from those draws (hidden states, router probabilities, top-k, gates, channel
gains and link costs) is then done once for all copies with element-wise or
row-wise numpy operations whose per-row results do not depend on how many
rows there are.  The single environment calls the same functions with one
generator, so a copy seeded with ``seed + i`` replays the single environment
seeded with ``seed + i`` bit for bit.

Consecutive ``standard_normal`` calls of one generator return the same
numbers as one call of the summed size, which is what lets the per-copy
draws be merged into a few calls.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..synthetic import softmax, topk_gates
from ..workload import SyntheticWorkload, TokenBatch


def _fading_from_normals(system, z: np.ndarray, lead: tuple[int, ...]) -> np.ndarray:
    """``|h|^2`` of the fading process from its merged normals ``z`` (..., 2M): real parts then imaginary."""
    cfg = system.config
    m = cfg.num_nodes
    proc = system.fading_process(lead + (m,))
    if cfg.fading != "none":
        proc._w = (z[..., :m] + 1j * z[..., m:]) / np.sqrt(2.0)
    return proc.power


def sample_tokens_batch(system, rngs: Sequence[np.random.Generator], num_tokens: int, draws: list | None = None) -> TokenBatch:
    """:meth:`WideSystem.sample_tokens` for every generator, stacked: arrays (B, T, L, ...).

    For the synthetic workload the raw draws are taken per generator (or
    taken from ``draws``, a list of ``(topics, normals)`` already drawn) and
    the model is evaluated for all copies at once; trace workloads sample
    per copy.
    """
    wl = system.workload
    b = len(rngs)
    if not isinstance(wl, SyntheticWorkload):
        toks = [wl.sample(rng, num_tokens) for rng in rngs]
        return TokenBatch(*(np.stack([getattr(t, f) for t in toks]) for f in ("probs", "topk", "gates", "norms")))
    model = wl.model
    cfg = system.config
    nl, dm, t = cfg.num_layers, cfg.model.model_dim, num_tokens
    n_noise = t * nl * dm
    if draws is None:
        draws = _token_draws(system, rngs, t)
    if isinstance(draws, tuple):
        topic, z = draws  # (B, T), (B, T*L*(dm+1))
    else:
        topic = np.stack([d[0] for d in draws])
        z = np.stack([d[1] for d in draws])
    # SyntheticMoE.hidden_states, for all copies
    x = np.divide(z[:, :n_noise].reshape(b, t, nl, dm), np.sqrt(dm))  # noise
    np.add(1.5 * model.topics[topic][:, :, None, :], x, out=x)  # base + noise
    x /= _norm(x)[..., None]
    scale = np.sqrt(dm) * np.exp(0.25 * z[:, n_noise:].reshape(b, t, nl, 1))
    x *= scale
    norms = _norm(x)  # (B, T, L): also each layer's norm below (same rows, same sums)
    # SyntheticMoE.all_router_probs: one (T, dm) @ (dm, N) product per copy and layer, as the single env does
    logits = np.empty((b, t, nl, cfg.num_experts))
    temp = cfg.model.router_temperature
    for lay_i, lay in enumerate(model.layers):
        u = x[:, :, lay_i] / np.maximum(norms[:, :, lay_i, None], 1e-300)
        logits[:, :, lay_i] = (np.matmul(u, lay.router.T) + lay.bias) / temp
    probs = softmax(logits)  # row by row: the same numbers as one softmax per layer
    topk, gates = _topk_gates(probs, cfg.top_k, cfg.renormalize_gates)
    return TokenBatch(probs, topk, gates, norms)


def _topk_gates(probs: np.ndarray, k: int, renormalize: bool):
    """:func:`siftmoe_gym.synthetic.topk_gates`, faster for ``k <= 2``.

    The two largest probabilities by two ``argmax`` passes; a row where the
    second value occurs more than once (a tie, where the result depends on
    how ``argpartition`` breaks it) is redone by ``topk_gates`` itself, so
    every row is exactly what ``topk_gates`` returns.
    """
    if k > 2:
        return topk_gates(probs, k, renormalize)
    p = np.asarray(probs, dtype=np.float64)
    flat = p.reshape(-1, p.shape[-1])
    rows = np.arange(len(flat))
    i1 = flat.argmax(axis=1)
    v1 = flat[rows, i1]
    if k == 1:
        topk, gates = i1[:, None], v1[:, None]
        tied = np.count_nonzero(flat == v1[:, None], axis=1) > 1
    else:
        rest = flat.copy()
        rest[rows, i1] = -np.inf
        i2 = rest.argmax(axis=1)
        v2 = flat[rows, i2]
        topk, gates = np.stack([i1, i2], axis=1), np.stack([v1, v2], axis=1)
        tied = np.count_nonzero(flat == v2[:, None], axis=1) > 1
    if renormalize:
        gates = gates / np.maximum(gates.sum(axis=-1, keepdims=True), 1e-300)
    if tied.any():
        t_topk, t_gates = topk_gates(flat[tied], k, renormalize)
        topk[tied], gates[tied] = t_topk, t_gates
    lead = p.shape[:-1]
    return topk.astype(np.int64).reshape(lead + (k,)), gates.reshape(lead + (k,))


def _norm(x: np.ndarray) -> np.ndarray:
    """``np.linalg.norm(x, axis=-1)`` for real ``x``, without its extra copy (the same sums, bit for bit)."""
    return np.sqrt(np.add.reduce(x * x, axis=-1))


def _token_draws(system, rngs, t: int) -> list:
    wl = system.workload
    if not isinstance(wl, SyntheticWorkload):
        return []
    cfg = system.config
    n_topics = len(wl.model.topics)
    size = t * cfg.num_layers * (cfg.model.model_dim + 1)
    return [(rng.integers(0, n_topics, size=t), rng.standard_normal(size)) for rng in rngs]


def draw_decode_episodes(system, rngs: Sequence[np.random.Generator], num_tokens: int, states: list | None = None) -> dict[str, Any]:
    """Batched ``draw_decode_episode``: distances, slow fading, tokens per generator (that order).

    ``rngs`` may repeat one generator (consecutive episodes of one
    environment); ``states``, when given, receives each generator's
    ``bit_generator.state`` right after that copy's draws.
    """
    cfg = system.config
    b, m = len(rngs), cfg.num_nodes
    distances = np.empty((b, m))
    fad_z = np.empty((b, 2 * m))
    draws = []
    synthetic = isinstance(system.workload, SyntheticWorkload)
    fixed = cfg.distances_m is not None
    lo, hi = cfg.distance_range_m
    if fixed:
        distances[:] = np.asarray(cfg.distances_m, dtype=np.float64)
    if synthetic:
        n_topics = len(system.workload.model.topics)
        size = num_tokens * cfg.num_layers * (cfg.model.model_dim + 1)
        topic = np.empty((b, num_tokens), dtype=np.int64)
        z = np.empty((b, size))
        draws = (topic, z)
    fading = cfg.fading != "none"
    for i, rng in enumerate(rngs):
        if not fixed:
            distances[i] = rng.uniform(lo, hi, size=m)
        if fading:
            rng.standard_normal(out=fad_z[i])
        if synthetic:
            topic[i] = rng.integers(0, n_topics, size=num_tokens)
            rng.standard_normal(out=z[i])
        if states is not None:
            states.append(rng.bit_generator.state)
    tokens = sample_tokens_batch(system, rngs, num_tokens, draws if synthetic else None)
    fad = _fading_from_normals(system, fad_z, (b,))
    gains = system.gains(distances, fad)
    cost, feas, viol = system.node_costs(gains)
    return {"distances": distances, "gains": gains, "tokens": tokens, "cost": cost, "feas": feas, "viol": viol}


def draw_fastfading_episodes(system, rngs: Sequence[np.random.Generator], num_tokens: int, states: list | None = None) -> dict[str, Any]:
    """Batched ``draw_fastfading_episode``: distances, fading of every token (Gauss-Markov), tokens."""
    cfg = system.config
    b, m, t = len(rngs), cfg.num_nodes, num_tokens
    distances = np.empty((b, m))
    fad_z = np.empty((b, t, 2 * m))
    draws = []
    synthetic = isinstance(system.workload, SyntheticWorkload)
    fixed = cfg.distances_m is not None
    lo, hi = cfg.distance_range_m
    if fixed:
        distances[:] = np.asarray(cfg.distances_m, dtype=np.float64)
    if synthetic:
        n_topics = len(system.workload.model.topics)
        size = t * cfg.num_layers * (cfg.model.model_dim + 1)
        topic = np.empty((b, t), dtype=np.int64)
        z = np.empty((b, size))
        draws = (topic, z)
    fading = cfg.fading != "none"
    fz = fad_z.reshape(b, -1)
    for i, rng in enumerate(rngs):
        if not fixed:
            distances[i] = rng.uniform(lo, hi, size=m)
        if fading:
            rng.standard_normal(out=fz[i])
        if synthetic:
            topic[i] = rng.integers(0, n_topics, size=t)
            rng.standard_normal(out=z[i])
        if states is not None:
            states.append(rng.bit_generator.state)
    tokens = sample_tokens_batch(system, rngs, t, draws if synthetic else None)
    proc = system.fading_process((b, m))
    fading_p = np.empty((b, t, m))
    if fading:
        proc._w = (fad_z[:, 0, :m] + 1j * fad_z[:, 0, m:]) / np.sqrt(2.0)
    fading_p[:, 0] = proc.power
    for k in range(1, t):
        if fading:
            w = (fad_z[:, k, :m] + 1j * fad_z[:, k, m:]) / np.sqrt(2.0)
            proc._w = proc.rho * proc._w + np.sqrt(1.0 - proc.rho**2) * w
        fading_p[:, k] = proc.power
    gains = system.gains(distances[:, None, :], fading_p)
    cost, feas, viol = system.node_costs(gains)  # (B, T, M+1)
    return {"distances": distances, "gains": gains, "tokens": tokens, "cost": cost, "feas": feas, "viol": viol}


def episode_row(ep: dict[str, Any], i: int) -> dict[str, Any]:
    """Copy ``i`` of a batched episode dict, in the single environment's layout."""
    out = {key: val[i] for key, val in ep.items() if key != "tokens"}
    tk = ep["tokens"]
    out["tokens"] = TokenBatch(tk.probs[i], tk.topk[i], tk.gates[i], tk.norms[i])
    return out


class EpisodeCache:
    """Episodes of one single environment drawn several at a time, invisibly.

    ``next(rng, draw)`` returns ``(batch, j)``: episode ``j`` of a batch drawn
    by ``draw(rngs, states)`` with ``rngs = [rng] * K``, i.e. the episodes the
    environment would draw at its next ``K`` resets, in order.  Each time an
    episode is handed out the generator is put in the state it would have had
    after drawing that episode alone, so ``np_random`` looks exactly as if
    every reset drew its own episode.  The cache is dropped when the
    generator is replaced (``reset(seed=...)``), used in between (its state
    is not the one left behind), or the configuration changes (``clear``);
    ``K`` starts at 1 after such a drop and doubles, up to ``max_batch``,
    each time a batch is used up, so environments reseeded at every reset
    never draw ahead.
    """

    def __init__(self, max_batch: int = 16):
        self.max_batch = max_batch
        self.clear()

    def clear(self) -> None:
        self.rng = None
        self.batch = None
        self.states: list = []
        self.pos = 0
        self.size = 1

    def next(self, rng: np.random.Generator, draw):
        if self.batch is not None and rng is self.rng and self.pos < len(self.states):
            if rng.bit_generator.state == self.states[self.pos - 1]:
                rng.bit_generator.state = self.states[self.pos]
                self.pos += 1
                return self.batch, self.pos - 1
        if self.batch is not None and rng is self.rng and self.pos == len(self.states):
            self.size = min(2 * self.size, self.max_batch)
        else:
            self.size = 1
        states: list = []
        self.batch = draw([rng] * self.size, states)
        self.rng, self.states, self.pos = rng, states, 1
        if self.size > 1:
            rng.bit_generator.state = states[0]
        return self.batch, 0
