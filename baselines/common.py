"""Shared helpers: channel quantities recovered from node costs, top-k energy, random instances.

Policies see decision instances (node costs, feasibility), not raw channel
gains; the heuristics that threshold on a link's gain or latency recover them
exactly from the single-token node cost by inverting ``docs/model.md``
section 2 (feasible: ``c = tau * (N0 B / G) * (2^x - 1)``; infeasible:
``c = 2 P_max t'`` with ``t' = D / (B log2(1 + P_max G / (N0 B)))``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from siftmoe_gym.energy import LN2, TOPK_FLOOR_J, LinkParams
from siftmoe_gym.instances import DecodeInstance



def topk_energy(inst: DecodeInstance) -> float:
    """Energy of top-k routing on ``inst`` (every slot by itself), floored at :data:`TOPK_FLOOR_J`."""
    return max(float(inst.evaluate(inst.topk).energy_j), TOPK_FLOOR_J)


def gains_from_costs(node_cost: np.ndarray, node_feasible: np.ndarray, link: LinkParams, tau_s: float) -> np.ndarray:
    """Channel power gain (M+1,) of every node from its single-token cost (node 0: ``inf``)."""
    c = np.asarray(node_cost, dtype=np.float64)
    feas = np.asarray(node_feasible, dtype=bool)
    x = link.bits_per_token * LN2 / (link.bandwidth_hz * 0.5 * tau_s)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        g_feas = tau_s * link.noise_w * np.expm1(x) / c
        t_one = c / (2.0 * link.p_max_w)
        g_inf = link.noise_w * np.expm1(LN2 * link.bits_per_token / (link.bandwidth_hz * t_one)) / link.p_max_w
    g = np.where(feas, g_feas, g_inf)
    g = np.where(np.isfinite(g), g, 0.0)
    g[0] = np.inf
    return g


def latency_from_gains(gains: np.ndarray, link: LinkParams) -> np.ndarray:
    """Round-trip latency (s) of one token per node at ``P_max`` (node 0: 0)."""
    g = np.asarray(gains, dtype=np.float64)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        rate = link.bandwidth_hz * np.log2(1.0 + link.p_max_w * g / link.noise_w)
        lat = 2.0 * link.bits_per_token / rate
    lat = np.where(np.isfinite(lat), lat, 1e30)
    lat = np.where(np.isinf(g), 0.0, lat)
    return lat


def with_changes(inst: DecodeInstance, **changes) -> DecodeInstance:
    """A copy of ``inst`` with fields replaced (keeps the cached extended Delta)."""
    return dataclasses.replace(inst, **changes)


def random_gains(system, rng: np.random.Generator, infeasible_prob: float = 0.3, all_infeasible_prob: float = 0.0) -> np.ndarray:
    """Random channel gains (M,) for ``system``: drawn distances and fading, with some links forced infeasible.

    A forced link's gain is divided by 10^4..10^7, far below what the latency
    budget needs; with probability ``all_infeasible_prob`` every link is forced.
    """
    m = system.num_nodes
    fading = system.fading_process().reset(rng)
    g = system.gains(system.draw_distances(rng), fading)
    force = rng.random(m) < infeasible_prob
    if rng.random() < all_infeasible_prob:
        force[:] = True
    g = np.where(force, g / 10.0 ** rng.uniform(4, 7, size=m), g)
    return g


# Varied systems for randomized tests and benchmarks (similarity from the synthetic model, never hand-written).
TEST_CONFIGS: tuple[dict, ...] = (
    {"num_experts": 4, "top_k": 1, "num_nodes": 1, "compute_energy_j": 0.0},
    {"num_experts": 6, "top_k": 2, "num_nodes": 2, "compute_energy_j": 3e-5, "placement": "random"},
    {"num_experts": 8, "top_k": 2, "num_nodes": 4},
    {"num_experts": 8, "top_k": 3, "num_nodes": 3, "compute_energy_j": 1e-4, "local_capacity": 2},
    {"num_experts": 10, "top_k": 3, "num_nodes": 5, "compute_energy_j": 1e-5, "placement": "contiguous",
     "model": {"num_clusters": 2}},
    {"num_experts": 12, "top_k": 3, "num_nodes": 6, "compute_energy_j": 5e-5, "placement": "popular_local",
     "local_capacity": 3},
    {"num_experts": 6, "top_k": 4, "num_nodes": 3, "compute_energy_j": 2e-4, "local_capacity": 0,
     "model": {"num_clusters": 2, "cluster_spread": 0.1}},
    {"num_experts": 16, "top_k": 2, "num_nodes": 8, "compute_energy_j": 1e-6, "renormalize_gates": False},
)


def make_test_systems(configs=TEST_CONFIGS, num_layers: int = 2):
    from siftmoe_gym import WideSystem

    out = []
    for q, cfg in enumerate(configs):
        c = dict(cfg)
        c.setdefault("num_layers", num_layers)
        c.setdefault("model_seed", q)
        c.setdefault("model", {})
        c["model"] = {"calibration_tokens": 128, **c["model"]}
        out.append(WideSystem(c))
    return out


def random_decode_instance(system, rng: np.random.Generator, infeasible_prob: float = 0.3,
                           all_infeasible_prob: float = 0.05, budget_range=(0.1, 3.0)) -> DecodeInstance:
    """A random P1 instance of ``system``: a drawn token, layer and channel, some links forced infeasible,
    and the layer budget scaled by a random factor (0 included: only exact service is allowed)."""
    tok = system.sample_tokens(rng, 1)
    layer = int(rng.integers(system.num_layers))
    inst = system.decode_instance(tok, 0, layer, random_gains(system, rng, infeasible_prob, all_infeasible_prob))
    lo, hi = budget_range
    f = 0.0 if rng.random() < 0.03 else rng.uniform(lo, hi)
    return with_changes(inst, budget=float(inst.budget * f))
