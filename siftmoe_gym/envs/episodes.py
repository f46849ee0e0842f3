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

Each copy draws its episode in three calls of its generator (uniforms,
normals, chi-square numbers: :func:`draw_raw`); the synthetic workload draws
hidden states in its routers' coordinates (:mod:`siftmoe_gym.synthetic`), so
an episode of the default system takes about 1,400 random numbers.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..synthetic import topk_gates
from ..workload import SyntheticWorkload, TokenBatch


def _fading_from_normals(system, z: np.ndarray, lead: tuple[int, ...]) -> np.ndarray:
    """``|h|^2`` of the fading process from its merged normals ``z`` (..., 2M): real parts then imaginary."""
    cfg = system.config
    m = cfg.num_nodes
    proc = system.fading_process(lead + (m,))
    if cfg.fading != "none":
        proc._w = (z[..., :m] + 1j * z[..., m:]) / np.sqrt(2.0)
    return proc.power


def tokens_from_draws(system, topic: np.ndarray, z: np.ndarray, gam: np.ndarray | None) -> TokenBatch:
    """The synthetic workload's tokens (B, T, L, ...) from every copy's raw draws (see :func:`draw_raw`)."""
    cfg = system.config
    probs, norms = system.workload.model.routing(topic, z, gam)  # row by row (SyntheticMoE.routing)
    topk, gates = _topk_gates(probs, cfg.top_k, cfg.renormalize_gates)
    return TokenBatch(probs, topk, gates, norms)


def sample_tokens_batch(system, rngs: Sequence[np.random.Generator], num_tokens: int) -> TokenBatch:
    """:meth:`WideSystem.sample_tokens` for every generator, stacked: arrays (B, T, L, ...)."""
    return draw_raw(system, rngs, num_tokens, 0)["tokens"]


def draw_raw(system, rngs: Sequence[np.random.Generator], num_tokens: int, n_fading: int,
             states: list | None = None) -> dict[str, Any]:
    """Every copy's random numbers for one episode, drawn from its own generator, and its tokens.

    Per generator, in order: one ``random`` call (the ``M`` distances unless
    ``distances_m`` is fixed, then the synthetic workload's ``T`` topic
    uniforms), one ``standard_normal`` call (``n_fading`` fading normals,
    then the workload's normals), one ``standard_gamma`` call (the
    workload's chi-square numbers, when it has any); a trace workload then
    samples its window.  ``rngs`` may repeat one generator (consecutive
    episodes); ``states`` receives each generator's state after its draws.
    Returns ``distances`` (B, M), ``fading_normals`` (B, n_fading) and
    ``tokens`` (a :class:`TokenBatch` of arrays (B, T, L, ...)).
    """
    cfg = system.config
    wl = system.workload
    b, m = len(rngs), cfg.num_nodes
    synthetic = isinstance(wl, SyntheticWorkload)
    fixed = cfg.distances_m is not None
    n_dist = 0 if fixed else m
    u, z, gam, toks = raw_numbers(system, rngs, num_tokens, n_fading, states)
    if fixed:
        distances = np.empty((b, m))
        distances[:] = np.asarray(cfg.distances_m, dtype=np.float64)
    else:
        lo, hi = cfg.distance_range_m
        distances = lo + (hi - lo) * u[:, :m]  # rng.uniform(lo, hi)'s formula
    if synthetic:
        topic = wl.model.topics_from_uniform(u[:, n_dist:])
        tokens = tokens_from_draws(system, topic, z[:, n_fading:], gam)
    else:
        tokens = TokenBatch(*(np.stack([getattr(t, f) for t in toks]) for f in ("probs", "topk", "gates", "norms")))
    return {"distances": distances, "fading_normals": z[:, :n_fading], "tokens": tokens}


def raw_numbers(system, rngs: Sequence[np.random.Generator], num_tokens: int, n_fading: int,
                states: list | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list]:
    """The per-copy loop of :func:`draw_raw`: ``(u, z, gam, windows)``, every copy's uniforms (B, M + T) (no
    distances when ``distances_m`` is fixed), normals (B, n_fading + the workload's), chi-square gamma
    variates (B, T*L) or None, and a trace workload's sampled windows (else empty), each copy drawn from its
    own generator in that order."""
    cfg = system.config
    wl = system.workload
    b = len(rngs)
    synthetic = isinstance(wl, SyntheticWorkload)
    n_dist = 0 if cfg.distances_m is not None else cfg.num_nodes
    nu, nz, ng = wl.model.routing_draw_sizes(num_tokens) if synthetic else (0, 0, 0)
    u = np.empty((b, n_dist + nu))
    z = np.empty((b, n_fading + nz))
    gam = np.empty((b, ng)) if ng else None
    shape = 0.5 * wl.model.chi2_df if synthetic else 0.0
    toks = []
    for i, rng in enumerate(rngs):
        if u.shape[1]:
            rng.random(out=u[i])
        if z.shape[1]:
            rng.standard_normal(out=z[i])
        if gam is not None:
            rng.standard_gamma(shape, out=gam[i])
        if not synthetic:
            toks.append(wl.sample(rng, num_tokens))
        if states is not None:
            states.append(rng.bit_generator.state)
    return u, z, gam, toks


def fading_normals(system, setting: str, num_tokens: int) -> int:
    """How many fading normals one episode of ``setting`` draws: ``2M`` once (decode, prefill) or per token
    (fastfading), none without fading."""
    if system.config.fading == "none":
        return 0
    return 2 * system.config.num_nodes * (num_tokens if setting == "fastfading" else 1)


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


def draw_decode_episodes(system, rngs: Sequence[np.random.Generator], num_tokens: int, states: list | None = None) -> dict[str, Any]:
    """Batched ``draw_decode_episode``: distances, slow fading (once), tokens (:func:`draw_raw`).

    ``rngs`` may repeat one generator (consecutive episodes of one
    environment); ``states``, when given, receives each generator's
    ``bit_generator.state`` right after that copy's draws.
    """
    raw = draw_raw(system, rngs, num_tokens, fading_normals(system, "decode", num_tokens), states)
    distances = raw["distances"]
    fad = _fading_from_normals(system, raw["fading_normals"], (len(rngs),))
    gains = system.gains(distances, fad)
    cost, feas, viol = system.node_costs(gains)
    return {"distances": distances, "gains": gains, "tokens": raw["tokens"], "cost": cost, "feas": feas, "viol": viol}


def draw_fastfading_episodes(system, rngs: Sequence[np.random.Generator], num_tokens: int, states: list | None = None) -> dict[str, Any]:
    """Batched ``draw_fastfading_episode``: distances, fading of every token (Gauss-Markov), tokens."""
    cfg = system.config
    b, m, t = len(rngs), cfg.num_nodes, num_tokens
    fading = cfg.fading != "none"
    raw = draw_raw(system, rngs, t, fading_normals(system, "fastfading", t), states)
    distances = raw["distances"]
    fad_z = raw["fading_normals"].reshape(b, t, 2 * m) if fading else None
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
    return {"distances": distances, "gains": gains, "tokens": raw["tokens"], "cost": cost, "feas": feas, "viol": viol}


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
