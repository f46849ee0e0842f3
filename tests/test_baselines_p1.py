"""P1 (decode): the exact solver in siftmoe_gym.serving against brute force and an integer program."""

from __future__ import annotations

import numpy as np
import pytest

from baselines.common import make_test_systems, random_decode_instance, random_gains, with_changes
from baselines.references import brute_force_decode, milp_decode, within
from siftmoe_gym import WideSystem, serving
from siftmoe_gym.serving import solve_decode, solve_decode_batch

SYSTEMS = make_test_systems()


def _close(a: float, b: float, rel: float = 1e-9) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b)) + 1e-20


def _check_valid(inst, sol, allowed=None, cap=None):
    allowed = inst.node_feasible if allowed is None else allowed
    res = inst.evaluate(sol.assignment)
    assert _close(res.energy_j, sol.energy_j)
    assert _close(float(res.error_bound), sol.error_bound)
    used = res.nodes_used
    assert not (used[1:] & ~np.asarray(allowed)[1:]).any(), "uses a node outside the allowed set"
    if sol.within_budget:
        assert within(sol.error_bound, inst.budget if cap is None else cap)


def _compare(inst, sol, ref, stats):
    _check_valid(inst, sol)
    assert sol.within_budget == ref.within_budget, (inst, sol, ref)
    if ref.within_budget:
        assert _close(sol.energy_j, ref.energy_j), (sol, ref)
        stats["feasible"] += 1
    else:  # least-violating decision: least error over allowed nodes, then cheapest
        assert _close(sol.error_bound, ref.error_bound), (sol, ref)
        assert _close(sol.energy_j, ref.energy_j), (sol, ref)
        stats["infeasible"] += 1
    a = ref.assignment[ref.assignment >= 0]
    if len(np.unique(a)) < len(a):
        stats["shared"] += 1
    if ref.within_budget and any(a != inst.topk[ref.assignment >= 0]):
        stats["replaced"] += 1
    if inst.compute_cost > 0:
        stats["compute"] += 1
    if not inst.node_feasible.all():
        stats["infeasible_links"] += 1


@pytest.mark.parametrize("method", ["table", "search"])
def test_p1_equals_brute_force(method, monkeypatch):
    """>= 2,000 random instances per method over 8 systems (N 4..16, k 1..4, M 1..8)."""
    if method == "search":
        monkeypatch.setattr(serving, "TABLE_LIMIT", 0)  # force the node-subset branch and bound
    rng = np.random.default_rng(1234 if method == "table" else 4321)
    stats = dict(feasible=0, infeasible=0, shared=0, replaced=0, compute=0, infeasible_links=0)
    count = 0
    for _ in range(260):
        for system in SYSTEMS:
            inst = random_decode_instance(system, rng)
            _compare(inst, solve_decode(inst), brute_force_decode(inst), stats)
            count += 1
    assert count >= 2000
    # the randomized instances really cover the hard cases
    assert stats["infeasible"] >= 20 and stats["feasible"] >= 1200, stats
    assert stats["shared"] >= 50, stats
    assert stats["replaced"] >= 200 and stats["compute"] >= 1500 and stats["infeasible_links"] >= 1000, stats


@pytest.mark.parametrize("method", ["table", "search"])
def test_p1_weighted_and_capped_equals_brute_force(method, monkeypatch):
    """The drift-plus-penalty and node-set variants: random weights, caps and allowed node sets."""
    if method == "search":
        monkeypatch.setattr(serving, "TABLE_LIMIT", 0)
    rng = np.random.default_rng(99)
    for q in range(400):
        system = SYSTEMS[q % len(SYSTEMS)]
        inst = random_decode_instance(system, rng)
        allowed = rng.random(system.num_nodes + 1) < 0.6
        allowed[0] = True
        cap = float(system.budgets[inst.layer] * rng.uniform(0.0, 4.0))
        we = float(rng.uniform(0.0, 3.0) / max(inst.node_cost.max(), 1e-9))
        wr = float(rng.choice([0.0, rng.uniform(0.0, 5.0)]))
        sol = solve_decode(inst, allowed, cap=cap, energy_weight=we, error_weight=wr)
        ref = brute_force_decode(inst, allowed, cap=cap, energy_weight=we, error_weight=wr)
        _check_valid(inst, sol, allowed, cap)
        assert sol.within_budget == ref.within_budget
        if ref.within_budget:
            o_s = we * sol.energy_j + wr * sol.error_bound
            o_r = we * ref.energy_j + wr * ref.error_bound
            assert _close(o_s, o_r), (sol, ref)
        else:
            assert _close(sol.error_bound, ref.error_bound) and _close(sol.energy_j, ref.energy_j)


def test_no_feasible_decision_is_flagged_and_least_violating():
    """Every link infeasible and a budget below what node 0 plus skipping can reach."""
    system = SYSTEMS[2]
    rng = np.random.default_rng(5)
    seen = 0
    for _ in range(50):
        tok = system.sample_tokens(rng, 1)
        g = random_gains(system, rng, infeasible_prob=1.0)
        inst = system.decode_instance(tok, 0, 0, g)
        assert not inst.node_feasible[1:].any()
        inst = with_changes(inst, budget=0.0)
        if inst.node_of[inst.topk].min() == 0 and (inst.node_of[inst.topk] == 0).all():
            continue
        sol = solve_decode(inst)
        ref = brute_force_decode(inst)
        assert not sol.within_budget and not ref.within_budget
        assert _close(sol.error_bound, ref.error_bound) and _close(sol.energy_j, ref.energy_j)
        assert not sol.nodes_used[1:].any()  # never uses an infeasible link
        # least violating: each slot by its least-error server on node 0 or skip
        dk = inst.delta_ext[inst.topk]
        usable = np.append(inst.node_of == 0, True)
        least = float(inst.gates @ np.where(usable, dk, np.inf).min(axis=1))
        assert _close(sol.error_bound, least)
        seen += 1
    assert seen >= 30


def test_p1_equals_milp_on_large_systems():
    """N=64, k=8, M=8 (branch-and-bound path; brute force impossible) against the integer program."""
    rng = np.random.default_rng(7)
    system = WideSystem({"num_experts": 64, "top_k": 8, "num_nodes": 8, "num_layers": 1, "local_capacity": 4,
                         "compute_energy_j": 1e-5, "model": {"num_clusters": 8, "calibration_tokens": 128}})
    n_feas = 0
    for _ in range(12):
        inst = random_decode_instance(system, rng, budget_range=(0.05, 1.2))
        sol = solve_decode(inst)
        ref = milp_decode(inst)
        _check_valid(inst, sol)
        assert sol.within_budget == ref.within_budget
        if ref.within_budget:
            assert _close(sol.energy_j, ref.energy_j), (sol, ref)
            n_feas += 1
        else:
            assert _close(sol.error_bound, ref.error_bound, 1e-7)
    assert n_feas >= 6


def test_milp_reference_equals_brute_force():
    rng = np.random.default_rng(11)
    for q in range(60):
        inst = random_decode_instance(SYSTEMS[q % len(SYSTEMS)], rng)
        ref, mip = brute_force_decode(inst), milp_decode(inst)
        assert ref.within_budget == mip.within_budget
        if ref.within_budget:
            assert _close(ref.energy_j, mip.energy_j)
        else:
            assert _close(ref.error_bound, mip.error_bound, 1e-7)


def test_batch_equals_single():
    system = SYSTEMS[2]
    rng = np.random.default_rng(3)
    insts = [random_decode_instance(system, rng) for _ in range(300)]
    b = len(insts)
    assign, energy, err, ok = solve_decode_batch(
        np.stack([i.gates for i in insts]), np.stack([i.topk for i in insts]), np.array([i.layer for i in insts]),
        system.delta_ext, system.node_of, np.stack([i.node_cost for i in insts]),
        np.stack([i.node_feasible for i in insts]), np.array([i.budget for i in insts]), system.config.compute_energy_j,
    )
    assert assign.shape == (b, system.top_k)
    for q, inst in enumerate(insts):
        ref = brute_force_decode(inst)
        assert ok[q] == ref.within_budget
        assert _close(energy[q], ref.energy_j) if ref.within_budget else _close(err[q], ref.error_bound)
