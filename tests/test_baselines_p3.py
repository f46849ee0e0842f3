"""P3 (fast fading): drift-plus-penalty meets the average budget, trades energy with V, and the offline
Lagrangian bound lies below every policy at the same average error."""

from __future__ import annotations

import numpy as np
import pytest

from baselines import heuristics as H
from baselines.common import topk_energy
from baselines.fastfading import lagrangian_bound, run_dpp
from siftmoe_gym import WideSystem
from siftmoe_gym.serving import solve_decode

T = 1200
CAPF = 6.0  # eps_max = 6 eps: every token of the trace can meet it (checked), so all decisions are in the bound's domain


def _trace(system, rng, t, layers=(0,)):
    """Instances of ``t`` tokens per layer with i.i.d. Rayleigh channels known in advance."""
    tok = system.sample_tokens(rng, t)
    dist = system.draw_distances(rng)
    fp = system.fading_process()
    fp.reset(rng)
    out = []
    for q in range(t):
        g = system.gains(dist, fp.step(rng))
        for layer in layers:
            out.append(system.decode_instance(tok, q, layer, g))
    return out


@pytest.fixture(scope="module")
def trace():
    system = WideSystem({"num_layers": 2, "distance_range_m": (50.0, 250.0), "model": {"calibration_tokens": 128}})
    return system, _trace(system, np.random.default_rng(8), T, layers=(0, 1))


@pytest.fixture(scope="module")
def runs(trace):
    _, insts = trace
    return {v: run_dpp(insts, v, eps_max_factor=CAPF) for v in (0.3, 3.0, 30.0)}


def _layer_means(insts, values):
    lay = np.array([i.layer for i in insts])
    return {l: float(np.mean(np.asarray(values)[lay == l])) for l in np.unique(lay)}


def test_average_error_within_budget_plus_vanishing_term(trace, runs):
    system, insts = trace
    for v, r in runs.items():
        assert r.within_cap.all()
        for l, mean_err in _layer_means(insts, r.error).items():
            eps = system.budgets[l]
            n_l = int(np.sum(r.layer == l))
            # exact from the queue recursion: mean err / eps <= 1 + Q(T) / T
            assert mean_err / eps <= 1.0 + r.queue[-1, l] / n_l + 1e-9
            # the queue stays bounded, so the excess vanishes like 1/T
            assert r.queue[:, l].max() <= 10.0 * max(v, 1.0)
            assert mean_err / eps <= 1.0 + r.queue[:, l].max() / n_l
        # prefix check: the excess over the budget shrinks with the horizon
        lay0 = r.layer == 0
        err0 = r.error[lay0] / system.budgets[0]
        ex = [max(np.mean(err0[:h]) - 1.0, 0.0) for h in (T // 8, T)]
        assert ex[1] <= ex[0] + 1e-9 or ex[1] <= 0.01


def test_energy_falls_as_v_grows(trace, runs):
    energies = [runs[v].energy_norm.mean() for v in sorted(runs)]
    assert all(b <= a * (1 + 1e-3) for a, b in zip(energies, energies[1:])), energies
    assert energies[-1] < energies[0] * 0.95


def test_lagrangian_bound_below_every_policy_at_same_average(trace, runs):
    system, insts = trace
    policies = {f"dpp-V{v}": (r.energy_norm, r.error) for v, r in runs.items()}
    et = np.array([topk_energy(i) for i in insts])
    caps = np.array([CAPF * i.budget for i in insts])
    sift = [solve_decode(i) for i in insts]  # per-token P1 meets the average trivially
    policies["siftmoe-p1"] = (np.array([s.energy_j for s in sift]) / et, np.array([s.error_bound for s in sift]))
    rng = np.random.default_rng(0)
    for name, fn in {"skip-infeasible": H.skip_infeasible_assignment, "nearest-local": H.nearest_local_assignment,
                     "random-within-budget": lambda i: H.random_within_budget_assignment(i, rng)}.items():
        res = [i.evaluate(fn(i)) for i in insts]
        if all(r.within_budget or (r.error_bound <= c and i.node_feasible[r.nodes_used].all())
               for r, c, i in zip(res, caps, insts)):
            policies[name] = (np.array([r.energy_j for r in res]) / et, np.array([r.error_bound for r in res]))
    assert len(policies) >= 4
    for name, (en, err) in policies.items():
        assert (err <= caps * (1 + 1e-12)).all()
        ebar = {l: max(m, 1e-12) for l, m in _layer_means(insts, err).items()}
        bound = lagrangian_bound(insts, eps_bar=ebar, eps_max_factor=CAPF, iters=25)
        assert bound.value <= en.mean() * (1 + 1e-9), (name, bound.value, en.mean())
    # at the nominal budgets the bound is close to what large-V drift-plus-penalty reaches
    nominal = lagrangian_bound(insts, eps_max_factor=CAPF, iters=30)
    assert nominal.feasible
    best = runs[30.0].energy_norm.mean()
    assert nominal.value <= policies["siftmoe-p1"][0].mean()
    assert best <= nominal.value * 1.1
