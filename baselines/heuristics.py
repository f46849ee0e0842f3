"""Heuristic decode decisions on a :class:`~siftmoe_gym.instances.DecodeInstance` (one token, one layer).

Each returns an assignment (k,) int64 (value = serving expert, ``-1`` = skip).
None of them looks at the energy objective; they are the comparison points
for the optimal policy and for learned agents.

- :func:`topk_assignment`: standard top-k routing (Shazeer et al. 2017;
  Mixtral): every slot served by itself, whatever the links (infeasible links
  cost their ``P_max`` fallback energy and show up as latency violations).
- :func:`top1_assignment`: top-1 routing in the style of the Switch
  Transformer (Fedus et al. 2022): keep only the slot with the largest gate.
- :func:`skip_infeasible_assignment`: top-k, skipping every expert on a link
  that cannot meet the latency budget (a latency-aware drop rule).
- :func:`nearest_local_assignment`: replace every expert on an unreachable
  (infeasible) link by its most similar expert on a reachable node (node 0 or
  a feasible link), by ``Delta`` alone and ignoring energy, or skip it when
  ``sigma`` is smaller (``local_only=True``: every expert off node 0 is
  replaced by its most similar node-0 expert).
- :func:`channel_threshold_assignment`: skip experts whose link's power gain
  is under a threshold (channel-gated selection as in channel-aware MoE
  gating work, e.g. Song et al. 2025).
- :func:`wdmoe_wlr_assignment`: WDMoE's weight-to-latency ratio (Xue et al.
  2024, arXiv 2411.06681): keep slot ``i`` when ``g_i / (latency_i / tau)``
  clears a threshold, latency being the round trip of one token at ``P_max``
  (node 0: zero latency, always kept); the slot with the best ratio is
  always kept.  This is our reading of the rule; WDMoE also allocates
  bandwidth, which this model does not.
- :func:`random_within_budget_assignment`: a random subset of reachable edge
  nodes (each with probability 1/2), each slot served by its most similar
  expert there (or skipped), redrawn until the error bound meets the budget
  (all reachable nodes as the last resort): random decisions that respect
  the constraint but not the energy.
"""

from __future__ import annotations

import numpy as np

from siftmoe_gym.instances import DecodeInstance


def topk_assignment(inst: DecodeInstance) -> np.ndarray:
    return inst.topk.astype(np.int64).copy()


def top1_assignment(inst: DecodeInstance) -> np.ndarray:
    a = np.full(len(inst.topk), -1, dtype=np.int64)
    s = int(np.argmax(inst.gates))
    a[s] = inst.topk[s]
    return a


def skip_infeasible_assignment(inst: DecodeInstance) -> np.ndarray:
    keep = inst.node_feasible[inst.node_of[inst.topk]]
    return np.where(keep, inst.topk, -1).astype(np.int64)


def best_servers(inst: DecodeInstance, allowed_nodes: np.ndarray) -> np.ndarray:
    """Per slot, the least-error server among experts on ``allowed_nodes`` or skip (k,)."""
    n = inst.num_experts
    dk = inst.delta_ext[inst.topk]  # (k, N+1)
    usable = np.append(np.asarray(allowed_nodes, bool)[inst.node_of], True)
    j = np.argmin(np.where(usable[None, :], dk, np.inf), axis=1)
    return np.where(j == n, -1, j).astype(np.int64)


def nearest_local_assignment(inst: DecodeInstance, local_only: bool = False) -> np.ndarray:
    reach = np.zeros_like(inst.node_feasible) if local_only else inst.node_feasible.copy()
    reach[0] = True
    a = inst.topk.astype(np.int64).copy()
    remote = ~reach[inst.node_of[inst.topk]]
    if remote.any():
        best = best_servers(inst, reach)
        a[remote] = best[remote]
    return a


def channel_threshold_assignment(inst: DecodeInstance, gains: np.ndarray, threshold: float) -> np.ndarray:
    """``gains`` (M+1,) with node 0 ``inf``; keep experts whose node's gain is at least ``threshold``."""
    keep = np.asarray(gains)[inst.node_of[inst.topk]] >= threshold
    return np.where(keep, inst.topk, -1).astype(np.int64)


def wdmoe_wlr_assignment(inst: DecodeInstance, latency_s: np.ndarray, tau_s: float, threshold: float = 1.0) -> np.ndarray:
    """``latency_s`` (M+1,) round-trip latency of one token per node (node 0: 0)."""
    lat = np.asarray(latency_s, dtype=np.float64)[inst.node_of[inst.topk]] / tau_s
    with np.errstate(divide="ignore"):
        wlr = np.where(lat > 0, inst.gates / np.maximum(lat, 1e-300), np.inf)
    keep = wlr >= threshold
    keep[int(np.argmax(wlr))] = True
    return np.where(keep, inst.topk, -1).astype(np.int64)


def random_within_budget_assignment(inst: DecodeInstance, rng: np.random.Generator, tries: int = 32) -> np.ndarray:
    reach = inst.node_feasible.copy()
    reach[0] = True
    for _ in range(tries):
        nodes = reach & (rng.random(len(reach)) < 0.5)
        nodes[0] = True
        a = best_servers(inst, nodes)
        if inst.evaluate(a).error_bound <= inst.budget:
            return a
    return best_servers(inst, reach)
