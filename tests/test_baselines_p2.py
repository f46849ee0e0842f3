"""P2 (prefill): the exact integer program against brute force and an independent formulation; the fast policy's gap."""

from __future__ import annotations

import numpy as np

from baselines.common import random_gains
from baselines.prefill import prefill_lower_bound, solve_prefill_exact, solve_prefill_fast
from baselines.references import brute_force_prefill, milp_prefill_onehot
from siftmoe_gym import WideSystem

TINY = [  # (config, T): block decisions enumerable; short prefill budgets so load caps bind
    ({"num_experts": 4, "top_k": 2, "num_nodes": 2, "tau_prefill_s": 4e-3, "compute_energy_j": 2e-5}, 3),
    ({"num_experts": 5, "top_k": 2, "num_nodes": 3, "tau_prefill_s": 6e-3, "placement": "random"}, 2),
    ({"num_experts": 6, "top_k": 1, "num_nodes": 3, "tau_prefill_s": 3e-3, "compute_energy_j": 1e-4,
      "local_capacity": 2}, 4),
    ({"num_experts": 4, "top_k": 1, "num_nodes": 2, "tau_prefill_s": 2e-3, "compute_energy_j": 0.0}, 5),
]


def _close(a, b, rel=1e-9):
    return abs(a - b) <= rel * max(abs(a), abs(b)) + 1e-20


def _systems(specs):
    out = []
    for q, (cfg, t) in enumerate(specs):
        c = {"num_layers": 2, "model_seed": 10 + q, "model": {"calibration_tokens": 128}, **cfg}
        out.append((WideSystem(c), t))
    return out


def _block(system, t, rng, scale=None):
    tok = system.sample_tokens(rng, t)
    layer = int(rng.integers(system.num_layers))
    inst = system.prefill_instance(tok, layer, random_gains(system, rng, 0.25, 0.0))
    inst.budget = float(inst.budget * (rng.uniform(0.2, 3.0) if scale is None else scale))
    return inst


def _excess(inst, sol):
    return float(np.maximum(sol.error_bound - inst.budget, 0.0).sum())


def test_exact_prefill_equals_brute_force():
    rng = np.random.default_rng(2024)
    feas = infeas = binding = 0
    for system, t in _systems(TINY):
        for _ in range(24):
            inst = _block(system, t, rng)
            ex, bf = solve_prefill_exact(inst), brute_force_prefill(inst)
            assert ex.within_budget == bf.within_budget, (ex, bf)
            if bf.within_budget:
                assert _close(ex.energy_j, bf.energy_j), (ex.energy_j, bf.energy_j)
                assert inst.evaluate(ex.assignment).within_budget
                feas += 1
                if (bf.loads >= 2).any():
                    binding += 1
            else:
                assert _close(_excess(inst, ex), _excess(inst, bf), 1e-7)
                assert _close(ex.energy_j, bf.energy_j, 1e-7)
                infeas += 1
    assert feas >= 30 and infeas >= 10 and binding >= 10, (feas, infeas, binding)


def test_exact_prefill_equals_onehot_program_and_bounds_hold():
    """Default and larger systems: incremental (convex) and one-hot (no convexity) programs agree;
    lower bound <= exact <= fast (best response) <= token-by-token replay of the greedy."""
    rng = np.random.default_rng(77)
    specs = [({}, 16), ({"num_experts": 16, "top_k": 4, "num_nodes": 6, "tau_prefill_s": 10e-3,
                         "compute_energy_j": 2e-5}, 8)]
    gaps = []
    for system, t in _systems(specs):
        for _ in range(8):  # 16 blocks: about half are feasible, whatever the token stream
            inst = _block(system, t, rng, scale=rng.uniform(0.5, 2.0))
            ex = solve_prefill_exact(inst)
            oh = milp_prefill_onehot(inst)
            if not ex.within_budget:
                assert oh is None
                continue
            assert _close(ex.energy_j, oh.energy_j, 1e-7)
            fast = solve_prefill_fast(inst, exact_gap=True)
            lb = prefill_lower_bound(inst)
            assert lb <= ex.energy_j * (1 + 1e-9)
            if fast.within_budget:
                assert fast.energy_j >= ex.energy_j * (1 - 1e-9)
                assert fast.gap is not None and fast.gap >= -1e-9
                gaps.append(fast.gap)
    assert len(gaps) >= 5
    assert np.mean(gaps) < 0.2


def test_fast_prefill_is_exact_on_tiny_blocks_often_and_never_below_optimum():
    rng = np.random.default_rng(5)
    exact_hits = total = 0
    for system, t in _systems(TINY):
        for _ in range(16):  # 64 blocks: about half are feasible, whatever the token stream
            inst = _block(system, t, rng)
            bf = brute_force_prefill(inst)
            fast = solve_prefill_fast(inst)
            if bf.within_budget and fast.within_budget:
                total += 1
                assert fast.energy_j >= bf.energy_j * (1 - 1e-9)
                exact_hits += _close(fast.energy_j, bf.energy_j)
                assert fast.lower_bound <= bf.energy_j * (1 + 1e-9)
    assert total >= 20 and exact_hits >= total // 2


def test_fast_prefill_never_over_budget_when_a_feasible_block_exists():
    """The fast policy falls back to the exact program when its own block breaks a budget (seeds 5 and 6 hold
    blocks where best response alone ends over budget although a feasible block exists)."""
    feasible = fell_back = 0
    for seed in (5, 6):
        rng = np.random.default_rng(seed)
        system, t = _systems(TINY[:1])[0]
        for _ in range(30):
            inst = _block(system, t, rng)
            bf = brute_force_prefill(inst)
            fast = solve_prefill_fast(inst)
            if bf.within_budget:
                feasible += 1
                assert fast.within_budget, (fast.method, fast.error_bound, inst.budget)
                assert inst.evaluate(fast.assignment).within_budget
                fell_back += fast.method == "best-response+exact"
            else:
                assert fast.method == "best-response"
    assert feasible >= 20 and fell_back >= 2
