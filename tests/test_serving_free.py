"""serve_nodes (siftmoe_gym/serving_free.py) against the exact slot dynamic program (serve_free) and solve_decode
on the zeroed instance, at N=256, k=8, M=16: continuous draws, grid-valued draws with many exact ties, duplicated
experts, caps on the boundary and zero compute energy."""

from __future__ import annotations

import numpy as np
import pytest

from baselines.common import random_decode_instance, with_changes
from siftmoe_gym import WideSystem
from siftmoe_gym.serving import serve_free, solve_decode
from siftmoe_gym.partition_search import serve_partition
from siftmoe_gym.serving_free import serve_nodes

N, K, M = 256, 8, 16


def _case(rng, kind):
    node_of = rng.integers(0, M + 1, size=N)
    if kind == "grid":  # values on a coarse grid and equal gates: many partitions tie exactly
        dk = rng.integers(0, 9, size=(K, N + 1)) / 8.0
        dk[:, :N] = np.where(rng.random((K, N)) < 0.06, dk[:, :N], 1.0)
        dk[:, N] = rng.integers(4, 9, size=K) / 8.0
        gates = np.full(K, 1.0 / K)
    else:
        sigma = rng.uniform(0.3, 1.0, size=K)
        dk = sigma[:, None] * rng.uniform(1.0, 3.0, size=(K, N + 1))  # most experts worse than skipping
        good = rng.random((K, N)) < 0.04  # a few good substitutes per slot, some shared by several slots
        good[:, rng.choice(N, size=4, replace=False)] |= rng.random((K, 4)) < 0.3
        dk[:, :N] = np.where(good, sigma[:, None] * rng.random((K, N)), dk[:, :N])
        dk[:, N] = sigma
        gates = rng.dirichlet(np.ones(K))
        if kind == "duplicates":  # experts on other nodes with the same rows: server ties
            src = rng.choice(N, size=40, replace=False)
            dst = rng.choice(N, size=40, replace=False)
            dk[:, dst] = dk[:, src]
    dk[np.arange(K), rng.choice(N, size=K, replace=False)] = 0.0  # each slot's own expert
    allowed = np.concatenate([[True], rng.random(M) < rng.uniform(0.05, 0.95)])
    return dk, gates, node_of, allowed


def _caps(rng, dk, gates, node_of, allowed, ec):
    """A spread of caps: around the skip-everything error, the least error, and exactly at served errors."""
    skip = float(gates @ dk[:, N])
    caps = [skip * q for q in (0.05, 0.2, 0.5, 1.0)] + [float(rng.uniform(0, skip))]
    a = serve_free(dk, gates, node_of, allowed, caps[1], ec)
    caps.append(float((gates * dk[np.arange(K), np.where(a < 0, N, a)]).sum()))  # exactly an achievable error
    return caps


@pytest.mark.parametrize("kind", ["continuous", "grid", "duplicates"])
def test_serve_nodes_equals_the_slot_dynamic_program(kind):
    rng = np.random.default_rng({"continuous": 0, "grid": 1, "duplicates": 2}[kind])
    fast = total = 0
    for q in range(150):
        dk, gates, node_of, allowed = _case(rng, kind)
        ec = 0.0 if q % 10 == 9 else float(rng.uniform(1e-4, 1e-2))
        for cap in _caps(rng, dk, gates, node_of, allowed, ec):
            ref = serve_free(dk, gates, node_of, allowed, cap, ec)
            got = serve_nodes(dk, gates, node_of, allowed, cap, ec)
            assert np.array_equal(got, ref), (kind, q, cap, got, ref)
            fast += serve_partition(dk, gates, node_of, allowed, cap, ec, 1.0, 0.0) is not None
            total += 1
    if kind != "grid":
        assert fast >= total // 3  # the shortcut itself is what was compared, not only its fallback


def test_weighted_objectives_are_served_by_the_dynamic_program():
    rng = np.random.default_rng(5)
    dk, gates, node_of, allowed = _case(rng, "continuous")
    assert serve_partition(dk, gates, node_of, allowed, 0.3, 1e-3, 2.0, 0.5) is None
    assert np.array_equal(serve_nodes(dk, gates, node_of, allowed, 0.3, 1e-3, 2.0, 0.5),
                          serve_free(dk, gates, node_of, allowed, 0.3, 1e-3, 2.0, 0.5))


BIG = {"num_experts": N, "top_k": K, "num_layers": 2, "num_nodes": M, "hidden_size": 1024, "local_capacity": 16,
       "renormalize_gates": True, "model": {"num_clusters": 32, "calibration_tokens": 64, "router_score": "sigmoid"}}


def test_serve_nodes_equals_solve_decode_on_the_zeroed_instance():
    """The rule a node-set action is served by: solve_decode with the activated nodes' costs set to 0."""
    system = WideSystem(BIG)
    rng = np.random.default_rng(9)
    for _ in range(60):
        inst = random_decode_instance(system, rng, budget_range=(0.2, 2.5))
        allowed = np.concatenate([[True], rng.random(M) < 0.5])
        zeroed = with_changes(inst, node_cost=np.where(allowed, 0.0, inst.node_cost))
        ref = solve_decode(zeroed, allowed)
        got = serve_nodes(inst.delta_ext[inst.topk], inst.gates, inst.node_of, allowed, float(inst.budget),
                          inst.compute_cost)
        assert np.array_equal(got, ref.assignment)


def test_numba_is_loaded_only_by_the_systems_that_need_it():
    """siftmoe_gym.jit compiles on first use: importing the package and stepping the default system (served
    by the enumeration table) leave numba unloaded; a node-set step above the table loads it."""
    import subprocess
    import sys

    code = ("import sys, gymnasium as gym, siftmoe_gym\n"
            "env = gym.make('siftmoe_gym/Decode-v0'); env.reset(seed=0); env.step(env.action_space.sample())\n"
            "print('numba' in sys.modules)\n"
            "env = gym.make('siftmoe_gym/Decode-v0', config=dict(num_experts=64, top_k=8, num_layers=1, num_nodes=4))\n"
            "env.reset(seed=0); env.step(env.action_space.sample()); print('numba' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]


def _twice(x):
    return 2.0 * _plus_one(x) - 2.0


def _plus_one(x):
    return x + 1.0


def test_compiled_without_a_writable_cache_warns_and_compiles_for_the_process(monkeypatch):
    """numba refuses cache=True where no cache folder is writable (RuntimeError when the dispatcher is made):
    siftmoe_gym.jit.compiled then compiles without a cache, callees included, and says so once."""
    import numba

    from siftmoe_gym import jit

    real = numba.njit

    def refusing(*args, **kwargs):
        if kwargs.get("cache"):
            def deco(f):
                raise RuntimeError(f"cannot cache function {f.__name__!r}: no locator available")
            return deco
        return real(*args, **kwargs)

    monkeypatch.setattr(numba, "njit", refusing)
    monkeypatch.setattr(jit, "_COMPILED", {})
    ns = globals()  # numba resolves the kernel's callees in its module's globals
    monkeypatch.setitem(ns, "_plus_one", _plus_one)  # restored after the test
    with pytest.warns(RuntimeWarning, match="compiling it for this process only"):
        kernel = jit.compiled(_twice, ns, ("_plus_one",))
    assert kernel(3.0) == 6.0 and hasattr(kernel, "py_func") and hasattr(ns["_plus_one"], "py_func")
    assert jit.compiled(_twice, ns, ("_plus_one",)) is kernel  # once per process


def test_exact_p1_takes_the_partition_search_only_where_it_equals_the_dynamic_program(monkeypatch):
    """solve_decode serves subsets without costly nodes by serve_partition: the same assignments, energies and
    errors as with the slot dynamic program alone (serve_partition forced to decline)."""
    from siftmoe_gym import serving, serving_free

    system = WideSystem(BIG)
    rng = np.random.default_rng(11)
    insts = [random_decode_instance(system, rng, budget_range=(0.2, 2.5)) for _ in range(120)]
    # every other instance with its feasible edge nodes free: the search then has no costly node to branch on
    insts = [with_changes(i, node_cost=np.where(i.node_feasible, 0.0, i.node_cost)) if q % 2 else i
             for q, i in enumerate(insts)]
    args = (np.stack([i.gates for i in insts]), np.stack([i.topk for i in insts]), np.array([i.layer for i in insts]),
            system.delta_ext, system.node_of, np.stack([i.node_cost for i in insts]),
            np.stack([i.node_feasible for i in insts]), np.array([i.budget for i in insts]),
            system.config.compute_energy_j)
    calls = []
    real = serving_free.serve_partition
    monkeypatch.setattr(serving_free, "serve_partition", lambda *a: calls.append(1) or real(*a))
    fast = serving.solve_decode_batch(*args)
    monkeypatch.setattr(serving_free, "serve_partition", lambda *a: None)
    slow = serving.solve_decode_batch(*args)
    assert len(calls) >= 60  # the branch was taken
    for x, y in zip(fast, slow):
        np.testing.assert_array_equal(x, y)
