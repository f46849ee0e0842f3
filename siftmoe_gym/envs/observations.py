"""Observations of the siftmoe_gym environments: the feature blocks, their layout and the static features.

The flat observation (``obs_mode="flat"``, a float32 ``Box``) is the
concatenation of these blocks, in this order; ``obs_mode="dict"`` gives
the same blocks as a ``Dict`` of ``Box`` es keyed by name
(``N`` experts, ``M`` edge nodes, ``L`` layers):

| Index (start, length) | Name          | Bounds             | Meaning |
|-----------------------|---------------|--------------------|---------|
| ``0``, N              | router_probs  | [0, 1]             | router scores of the token at this layer (softmax probabilities, or sigmoid scores for sigmoid routers) |
| ``N``, N              | topk_mask     | {0, 1}             | 1 for the top-k experts |
| ``2N``, M             | link_margin   | [-1, 1]            | ``10 log10(G_m / G_th) / MARGIN_SCALE_DB`` clipped (:func:`one_token_threshold_gain`) |
| ``2N+M``, M           | node_cost     | [0, COST_CLIP]     | node cost over the setting's reward scale, clipped |
| ``2N+2M``, M          | node_feasible | {0, 1}             | the link meets the latency budget |
| ``2N+3M``, L          | layer         | {0, 1}             | one-hot layer |
| ``2N+3M+L``, 1        | norm          | [0, NORM_CLIP]     | hidden-state norm over the layer's typical norm |
| ``2N+3M+L+1``, M+1    | solo_error    | [0, SOLO_CLIP]     | error bound (budget units) with node 0 alone, then node 0 plus node ``m`` alone (``solo_error_features``) |
| ``2N+4M+L+2``, 1      | progress      | [0, 1]             | share of the episode's steps already taken |
| ``2N+4M+L+3``, N      | gates         | [0, 1]             | the gates the model applies to its top-k experts (the error bound's weights), each over the token's gate sum, at the expert's index; 0 elsewhere |
| ``3N+4M+L+3``, k(M+2)  | slot_error    | [0, SOLO_CLIP]     | per top-k slot ``j`` (router order), ``M+2`` error terms in budget units: ``g_j min Δ_{i_j, e}`` over the experts ``e`` of node 0, ..., node ``M`` (SOLO_CLIP for a node without experts), then the skip term ``g_j σ_{i_j}`` (``solo_error_features``) |

followed by the setting's own blocks (``SiftMoEEnv._extra_segments``:
Prefill ``loads``, ``block_position`` and ``block_demand``, FastFading
``layer_queue``, ``queues``, ``layer_allowance`` and ``budget_left``; see their
class docstrings).  Without ``solo_error`` the later
blocks start ``M + 1`` earlier and ``slot_error`` is left out.  A node set ``U``'s
error bound is ``sum_j min(skip_j, node0_j, min_{m in U} node_m_j)`` of the ``slot_error``
terms (model.md section 4; clipped terms aside), so the block lets a policy
evaluate every node set's error bound without learning the model's ``Δ``.  :class:`ObservationLayout` turns the block
list into slices, bounds and the space; :func:`static_features` fills every
block known before the episode's steps are taken (the environments fill the
dynamic ones per step).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from gymnasium import spaces

from ..config import SystemConfig
from ..energy import LN2, dbm_to_watt

OBS_MODES = ("flat", "dict")

MARGIN_SCALE_DB = 30.0
"""Link margin (dB above the one-token feasibility threshold) is divided by this and clipped to [-1, 1]."""
COST_CLIP = 10.0
"""Per-node activation costs in top-k units are clipped to [0, COST_CLIP]."""
NORM_CLIP = 4.0
"""Hidden-state norm over the layer's typical norm, clipped to [0, NORM_CLIP]."""
SOLO_CLIP = 8.0
"""Solo error bounds in budget units, clipped to [0, SOLO_CLIP]."""

Segment = tuple[str, int, float, float]
"""A block: (name, size, low, high)."""


def segments(n_experts: int, n_nodes: int, n_layers: int, top_k: int, solo_error: bool,
             extra: Sequence[Segment] = ()) -> list[Segment]:
    """The blocks of the module table, in order, then ``extra`` (the setting's blocks)."""
    n, m, nl = n_experts, n_nodes, n_layers
    seg = [
        ("router_probs", n, 0.0, 1.0),
        ("topk_mask", n, 0.0, 1.0),
        ("link_margin", m, -1.0, 1.0),
        ("node_cost", m, 0.0, COST_CLIP),
        ("node_feasible", m, 0.0, 1.0),
        ("layer", nl, 0.0, 1.0),
        ("norm", 1, 0.0, NORM_CLIP),
    ]
    if solo_error:
        seg.append(("solo_error", m + 1, 0.0, SOLO_CLIP))
    seg.append(("progress", 1, 0.0, 1.0))
    seg.append(("gates", n, 0.0, 1.0))
    if solo_error:
        seg.append(("slot_error", top_k * (m + 2), 0.0, SOLO_CLIP))
    seg.extend(extra)
    return seg


class ObservationLayout:
    """Where each block sits in the flat observation: ``segments``, ``slices`` (name -> slice), ``dim``,
    ``low``/``high`` (dim,) float32, and the observation ``space`` of ``obs_mode``."""

    def __init__(self, segs: Sequence[Segment], obs_mode: str):
        self.segments = list(segs)
        self.slices: dict[str, slice] = {}
        lows, highs, pos = [], [], 0
        for name, size, lo, hi in self.segments:
            self.slices[name] = slice(pos, pos + size)
            lows.append(np.full(size, lo, np.float32))
            highs.append(np.full(size, hi, np.float32))
            pos += size
        self.dim = pos
        self.low = np.concatenate(lows)
        self.high = np.concatenate(highs)
        if obs_mode == "flat":
            self.space = spaces.Box(self.low, self.high, dtype=np.float32)
        else:
            self.space = spaces.Dict(
                {name: spaces.Box(lo, hi, shape=(size,), dtype=np.float32) for name, size, lo, hi in self.segments}
            )


def as_dict(flat: np.ndarray, slices: dict[str, slice]) -> dict[str, np.ndarray]:
    """The ``obs_mode="dict"`` form of flat observations (..., dim): views into ``flat`` along its last axis, the
    keys in the ``Dict`` space's order (sorted: Gymnasium sorts a dict of spaces), which is also the order a
    ``SyncVectorEnv`` batches them in."""
    return {name: flat[..., slices[name]] for name in sorted(slices)}


def one_token_threshold_gain(config: SystemConfig, tau_s: float) -> float:
    """Channel gain at which sending one hidden state within ``tau/2`` needs exactly ``P_max``."""
    noise = float(dbm_to_watt(config.noise_psd_dbm_hz)) * config.bandwidth_hz
    x = config.bits_per_token * LN2 / (config.bandwidth_hz * 0.5 * tau_s)
    with np.errstate(over="ignore"):
        val = noise * math.expm1(min(x, 700.0)) / float(dbm_to_watt(config.p_max_dbm))
    return min(max(val, 1e-300), 1e300)  # finite whatever the radio constants (the margin is clipped anyway)


def link_margin_db(gains: np.ndarray, g_th: float) -> np.ndarray:
    """``10 log10(G_m / G_th)``: the links' margin (dB) over the threshold gain (the ``link_margin`` block, unscaled;
    the ratio is floored at 1e-300, -3000 dB, so that it stays finite)."""
    return 10.0 * np.log10(np.maximum(np.maximum(gains, 1e-300) / g_th, 1e-300))


class FeatureTables:
    """Per-system tables of the static features: the one-hot ``layer_eye``, the ``norm_scale`` per layer,
    the budgets as divisors ``eps_div`` and the ``solo_error`` tables.

    ``solo_best[l, m, i]`` (L, M+1, N): least dissimilarity (or skip cost) of
    expert ``i`` to an expert on node 0 or node ``m``; ``solo_best_rows``
    the same as rows (L*N, M+1); ``slot_best[l, i]`` (L, N, M+2): least
    dissimilarity of expert ``i`` to an expert of each node 0..M (1e30 on a
    node without experts), then its skip cost ``σ_i`` (the ``slot_error`` block); ``node_best`` (L, N, M+1)
    the same node minima with ``inf`` on a node without experts.
    """

    def __init__(self, system, eps_div: np.ndarray):
        cfg = system.config
        n, nl, m1 = cfg.num_experts, cfg.num_layers, cfg.num_nodes + 1
        self.n_experts, self.top_k = n, cfg.top_k
        self.eps_div = eps_div
        self.norm_scale = system.profile.norm_scale
        dext = system.delta_ext  # (L, N, N+1)
        # per layer, the least dissimilarity of each expert to the experts of each node (inf on an empty node),
        # then node 0 or node m, or skip: minima of the same numbers as masking column by column would take
        pernode = np.full((nl, n, m1), np.inf)
        for lay in range(nl):
            no = system.node_of[lay]
            order = np.argsort(no, kind="stable")
            counts = np.bincount(no, minlength=m1)
            has = counts > 0
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[has]
            pernode[lay][:, has] = np.minimum.reduceat(dext[lay][:, order], starts, axis=1)
        self.node_best = pernode  # (L, N, M+1), inf on an empty node
        self.slot_best = np.concatenate([np.minimum(pernode, 1e30), dext[:, :, n:]], axis=2)  # (L, N, M+2)
        base = np.minimum(pernode[:, :, 0], dext[:, :, n])  # node 0 or skip (L, N)
        self.solo_best = np.minimum(base[:, None, :], pernode.transpose(0, 2, 1))  # (L, M+1, N)
        self.solo_best_rows = np.ascontiguousarray(self.solo_best.transpose(0, 2, 1)).reshape(-1, m1)  # (L*N, M+1)
        self.layer_eye = np.eye(nl, dtype=np.float32)
        self.arange_m1 = np.arange(m1)


def static_features(layout: ObservationLayout, tables: FeatureTables, probs, topk, layers, norms, gates,
                    gain_db_margin, node_cost, node_feas, e_ref, progress) -> np.ndarray:
    """Static observation rows (..., dim) float32 over any leading shape; dynamic blocks are left 0.

    ``probs`` (..., N), ``topk``/``gates`` (..., k), ``layers`` and ``norms``
    (...), ``gain_db_margin`` (..., M) dB over the threshold gain,
    ``node_cost``/``node_feas`` (..., M+1) or None (left for the step to
    fill), ``e_ref`` (...) the cost scale, ``progress`` (...).  Every row is
    computed on its own (the native vector environment calls this with
    leading shape (copies, steps) and gets the single environment's rows bit
    for bit).
    """
    sl = layout.slices
    lead = probs.shape[:-1]
    obs = np.zeros(lead + (layout.dim,), dtype=np.float32)
    obs[..., sl["router_probs"]] = probs
    mask = np.zeros(lead + (tables.n_experts,), dtype=np.float32)
    np.put_along_axis(mask, topk, 1.0, axis=-1)
    obs[..., sl["topk_mask"]] = mask
    obs[..., sl["link_margin"]] = np.clip(gain_db_margin / MARGIN_SCALE_DB, -1.0, 1.0)
    if node_cost is not None:
        obs[..., sl["node_cost"]] = np.clip(node_cost[..., 1:] / e_ref[..., None], 0.0, COST_CLIP)
        obs[..., sl["node_feasible"]] = node_feas[..., 1:]
    obs[..., sl["layer"]] = tables.layer_eye[layers]
    obs[..., sl["norm"]] = np.clip(norms / tables.norm_scale[layers], 0.0, NORM_CLIP)[..., None]
    if "solo_error" in sl:
        lay = np.broadcast_to(layers, lead)
        if tables.top_k <= 2:  # the same sum, slot by slot (one addition: no rounding-order question)
            flat = tables.solo_best_rows  # (L*N, M+1)
            rows = lay * tables.n_experts
            solo = gates[..., 0, None] * flat[rows + topk[..., 0]]
            if tables.top_k == 2:
                solo = solo + gates[..., 1, None] * flat[rows + topk[..., 1]]
        else:
            best = tables.solo_best[lay[..., None, None], tables.arange_m1[:, None], topk[..., None, :]]  # (..., M+1, k)
            solo = np.sum(gates[..., None, :] * best, axis=-1)
        obs[..., sl["solo_error"]] = np.clip(solo / tables.eps_div[layers][..., None], 0.0, SOLO_CLIP)
    obs[..., sl["progress"]] = progress[..., None]
    # applied gates over their sum (traces scale them, e.g. DeepSeek's routed_scaling_factor), at each expert's index
    share = gates / np.maximum(gates.sum(axis=-1, keepdims=True), 1e-30)
    gb = np.zeros(lead + (tables.n_experts,), dtype=np.float64)
    for j in range(topk.shape[-1]):  # slot by slot: a repeated expert gets the sum of its slots' shares
        col = topk[..., j : j + 1]
        np.put_along_axis(gb, col, np.take_along_axis(gb, col, axis=-1) + share[..., j : j + 1], axis=-1)
    obs[..., sl["gates"]] = np.clip(gb, 0.0, 1.0)
    if "slot_error" in sl:
        lay = np.broadcast_to(layers, lead)[..., None]
        terms = gates[..., None] * tables.slot_best[lay, topk]  # (..., k, M+2)
        terms = terms / tables.eps_div[layers][..., None, None]
        obs[..., sl["slot_error"]] = np.clip(terms, 0.0, SOLO_CLIP).reshape(lead + (-1,))
    return obs


def budget_features(obs: np.ndarray, slices: dict[str, slice], queue: np.ndarray, spent: np.ndarray, layer: int,
                    token: int, tokens: int, queue_clip: float, cap_factor: float) -> None:
    """Fill FastFading's dynamic blocks in place: ``layer_queue``, ``queues``, ``layer_allowance``, ``budget_left``
    (the FastFading-v0 docstring's table) over any leading shape.

    ``obs`` (..., dim) float32; ``queue`` and ``spent`` (..., L): the virtual queues ``Q_l`` and the error
    spent ``R_l = sum err / eps_l``, both in layer-budget units; ``layer`` and ``token`` (0-based) of the
    step the observation is for, ``tokens`` the episode's ``T``.  The single and the native vector
    environments both call this, so their rows agree bit for bit.
    """
    q = np.minimum(queue / queue_clip, 1.0)
    obs[..., slices["layer_queue"]] = q[..., layer, None]
    obs[..., slices["queues"]] = q
    left = tokens - spent  # (..., L): budget left, in token-budget units
    obs[..., slices["layer_allowance"]] = np.clip(left[..., layer, None] / ((tokens - token) * cap_factor), -1.0, 1.0)
    obs[..., slices["budget_left"]] = np.clip(left / tokens, -1.0, 1.0)
