"""Exact P1 and node-set serving at real model sizes (N=256, k=8, M=16): certified against the HiGHS
integer program on randomized instances, ties included, and the zero-cost-node shortcut of the search
against the full node-subset enumeration."""

from __future__ import annotations

import numpy as np
import pytest

from baselines.common import random_decode_instance, with_changes
from baselines.references import milp_decode, within
from siftmoe_gym import WideSystem
from siftmoe_gym.serving import _search_solve, _solution, solve_decode

# deepseek-v3's shape on two layers; d = 1024 so that links are feasible and infeasible alike
BIG = {"num_experts": 256, "top_k": 8, "num_layers": 2, "num_nodes": 16, "hidden_size": 1024, "local_capacity": 16,
       "renormalize_gates": True, "model": {"num_clusters": 32, "calibration_tokens": 64, "router_score": "sigmoid"}}
MID = {"num_experts": 64, "top_k": 8, "num_layers": 2, "num_nodes": 8, "local_capacity": 4, "hidden_size": 2048,
       "model": {"num_clusters": 8, "calibration_tokens": 64}}


@pytest.fixture(scope="module")
def big():
    return WideSystem(BIG)


@pytest.fixture(scope="module")
def mid():
    return WideSystem(MID)


def _close(a, b, rel=1e-9):
    return abs(a - b) <= rel * max(abs(a), abs(b)) + 1e-20


def _variant(inst, rng, kind):
    """Tie-prone variants: no compute energy (every count ties), every link at one cost, or as drawn."""
    if kind == "no_compute":
        return with_changes(inst, compute_cost=0.0)
    if kind == "equal_costs":
        cost = inst.node_cost.copy()
        cost[1:] = float(np.median(cost[1:]))
        return with_changes(inst, node_cost=cost)
    return inst


@pytest.mark.parametrize("kind", ["drawn", "no_compute", "equal_costs"])
def test_p1_at_deepseek_size_equals_the_integer_program(big, kind):
    rng = np.random.default_rng({"drawn": 1, "no_compute": 2, "equal_costs": 3}[kind])
    feasible = infeasible = multi_node = 0
    for _ in range(8):
        inst = _variant(random_decode_instance(big, rng, infeasible_prob=0.2, budget_range=(0.3, 2.0)), rng, kind)
        sol = solve_decode(inst)
        ref = milp_decode(inst)
        res = inst.evaluate(sol.assignment)
        assert _close(res.energy_j, sol.energy_j) and _close(float(res.error_bound), sol.error_bound)
        assert not (res.nodes_used & ~inst.node_feasible).any()
        assert sol.within_budget == ref.within_budget
        if ref.within_budget:
            assert within(sol.error_bound, inst.budget)
            assert _close(sol.energy_j, ref.energy_j), (sol, ref)
            feasible += 1
        else:
            assert _close(sol.error_bound, ref.error_bound) and _close(sol.energy_j, ref.energy_j)
            infeasible += 1
        multi_node += int(sol.nodes_used[1:].sum() >= 2)
    assert feasible >= 4
    if kind == "drawn":
        assert multi_node >= 1  # decisions that combine edge nodes, not only node 0


def _zeroed(inst, allowed):
    """The instance a node-set action is served on: the activated nodes' costs set to 0."""
    return with_changes(inst, node_cost=np.where(allowed, 0.0, inst.node_cost))


@pytest.mark.parametrize("which", ["mid", "big"])
def test_zero_cost_nodes_shortcut_equals_the_full_enumeration(which, mid, big):
    system = {"mid": mid, "big": big}[which]
    rng = np.random.default_rng(7)
    m = system.num_nodes
    for q in range(30 if which == "mid" else 12):
        inst = random_decode_instance(system, rng, budget_range=(0.2, 2.5))
        allowed = np.zeros(m + 1, dtype=bool)
        allowed[0] = True
        on = rng.choice(np.arange(1, m + 1), size=int(rng.integers(0, min(m, 8) + 1)), replace=False)
        allowed[on] = True
        inst = _zeroed(inst, allowed)
        if q % 3 == 2 and on.size:  # mixed: one allowed node keeps a positive cost
            cost = inst.node_cost.copy()
            cost[on[0]] = 1e-4
            inst = with_changes(inst, node_cost=cost)
        if q % 5 == 4:
            inst = with_changes(inst, compute_cost=0.0)  # every count ties: the least error decides
        cap = float(inst.budget)
        fast = _search_solve(inst, allowed, cap, 1.0, 0.0)
        full = _search_solve(inst, allowed, cap, 1.0, 0.0, free_nodes=False)
        assert np.array_equal(fast, full), (q, fast, full)
        a, b = _solution(inst, fast, cap), solve_decode(inst, allowed)
        assert np.array_equal(a.assignment, b.assignment) and a.energy_j == b.energy_j


def test_weighted_serving_with_zero_cost_nodes_equals_the_full_enumeration(mid):
    """The drift-plus-penalty objective (energy and error weighted) takes the same shortcut."""
    rng = np.random.default_rng(11)
    for _ in range(20):
        inst = random_decode_instance(mid, rng)
        allowed = np.ones(mid.num_nodes + 1, dtype=bool)
        allowed[1:] = rng.random(mid.num_nodes) < 0.5
        inst = _zeroed(inst, allowed)
        we, wr = float(rng.uniform(0.1, 10.0)) / max(inst.compute_cost, 1e-9), float(rng.uniform(0.0, 5.0))
        cap = float(inst.budget) * 3.0
        fast = _search_solve(inst, allowed, cap, we, wr)
        full = _search_solve(inst, allowed, cap, we, wr, free_nodes=False)
        assert np.array_equal(fast, full)


@pytest.mark.parametrize("env_id", ["siftmoe_gym/Decode-v0", "siftmoe_gym/Prefill-v0"])
def test_env_node_set_serving_equals_solve_decode_on_the_zeroed_instance(env_id):
    """Above the enumeration table the environments serve a node set with serve_free: the decision
    solve_decode takes on the instance whose activated nodes cost nothing."""
    import gymnasium as gym

    import siftmoe_gym  # noqa: F401

    cfg = dict(MID, num_layers=2)
    cfg["episode_tokens" if "Decode" in env_id else "prefill_tokens"] = 6
    env = gym.make(env_id, config=cfg)
    env.reset(seed=3)
    env.action_space.seed(3)
    u = env.unwrapped
    assert not u.table.enabled
    for _ in range(12):
        action = env.action_space.sample()
        active = np.concatenate([[True], action.astype(bool)])
        inst = u.instance
        ref = solve_decode(with_changes(inst, node_cost=np.where(active, 0.0, inst.node_cost)), active)
        _, _, term, _, info = env.step(action)
        assert np.array_equal(info["assignment"], ref.assignment)
        assert np.array_equal(info["activated_nodes"], active)
        if term:
            env.reset()
