"""Policy registry, heuristics, and the dominance of siftmoe over every baseline that meets the constraint."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import baselines
from baselines.common import gains_from_costs, make_test_systems, random_decode_instance, random_gains
from baselines.prefill import solve_prefill_exact, solve_prefill_fast
from siftmoe_gym import WideSystem

SYSTEMS = make_test_systems()
OTHERS = [n for n in baselines.available_policies("decode") if not n.startswith("siftmoe")]


def test_registry():
    names = baselines.available_policies()
    for n in ["topk", "siftmoe", "top1", "skip-infeasible", "nearest-local", "channel-threshold", "wdmoe-wlr",
              "random-within-budget"]:
        assert n in names and isinstance(names[n], str) and names[n]
    with pytest.raises(ValueError, match="available"):
        baselines.get_policy("nope", None)
    with pytest.raises(TypeError):
        baselines.get_policy("topk", None, bogus=1)


def test_gains_recovered_from_costs():
    system = SYSTEMS[2]
    rng = np.random.default_rng(0)
    for _ in range(50):
        g = random_gains(system, rng, 0.5)
        cost, feas, _ = system.node_costs(g)
        rec = gains_from_costs(cost, feas, system.link, system.config.tau_s)
        np.testing.assert_allclose(rec[1:], g, rtol=1e-6)


def test_siftmoe_never_uses_more_energy_than_a_baseline_that_meets_the_constraint():
    rng = np.random.default_rng(31)
    beaten = {n: 0 for n in OTHERS}
    for q in range(800):
        system = SYSTEMS[q % len(SYSTEMS)]
        inst = random_decode_instance(system, rng)
        sift = baselines.get_policy("siftmoe", None, system=system).decide_instance(inst)
        rs = inst.evaluate(sift)
        for name in OTHERS:
            a = baselines.get_policy(name, None, system=system, **({"seed": q} if "random" in name else {}))
            rb = inst.evaluate(a.decide_instance(inst))
            if rb.within_budget:  # meets the accuracy budget on feasible links only
                assert rs.within_budget
                assert rs.energy_j <= rb.energy_j * (1 + 1e-9) + 1e-20, (name, rs, rb)
                beaten[name] += rs.energy_j < rb.energy_j * (1 - 1e-6)
    assert all(v > 0 for k, v in beaten.items() if k != "top1"), beaten


def test_prefill_exact_beats_token_by_token_baselines():
    system = WideSystem({"num_layers": 1, "model": {"calibration_tokens": 128}})
    rng = np.random.default_rng(4)
    for _ in range(6):
        tok = system.sample_tokens(rng, 12)
        block = system.prefill_instance(tok, 0, random_gains(system, rng, 0.25))
        ex = solve_prefill_exact(block)
        fast = solve_prefill_fast(block)
        if not ex.within_budget:
            continue
        assert fast.energy_j >= ex.energy_j * (1 - 1e-9)
        for name in OTHERS + ["siftmoe"]:
            pol = baselines.get_policy(name, None, system=system)
            assign = np.stack([pol.decide_instance(block.decode_view(t)) for t in range(block.num_tokens)])
            r = block.evaluate(assign)
            if r.within_budget:
                assert ex.energy_j <= r.energy_j * (1 + 1e-9), name


def _stub_env(system, setting, **state):
    u = SimpleNamespace(system=system, setting=setting, encode_action=lambda a: ("assign", np.asarray(a)), **state)
    return SimpleNamespace(unwrapped=u)


def test_policies_act_through_env_contract():
    """Plumbing with a stand-in for env.unwrapped (the agreed attributes): decode, prefill replay, fast fading."""
    system = WideSystem({"num_layers": 2, "model": {"calibration_tokens": 128}})
    rng = np.random.default_rng(9)
    tok = system.sample_tokens(rng, 8)
    g = random_gains(system, rng, 0.25)
    inst = system.decode_instance(tok, 0, 1, g)
    for name in baselines.available_policies("decode"):
        env = _stub_env(system, "decode", instance=inst, layer=1)
        kind, a = baselines.get_policy(name, env).act(None, {})
        assert kind == "assign" and a.shape == (system.top_k,)
    # prefill: the block is solved once and replayed token by token
    block = system.prefill_instance(tok, 1, g)
    env = _stub_env(system, "prefill", block_instance=block, token_in_block=0, layer=1, instance=block.decode_view(0))
    pol = baselines.get_policy("siftmoe", env)
    plan = solve_prefill_exact(block).assignment
    for t in range(block.num_tokens):
        env.unwrapped.token_in_block = t
        env.unwrapped.instance = block.decode_view(t)
        np.testing.assert_array_equal(pol.act(None, {})[1], plan[t])
    first = pol.last_solution
    env.unwrapped.token_in_block = 0
    pol.act(None, {})
    assert pol.last_solution is not first  # a new pass re-plans
    fast = baselines.get_policy("siftmoe-fast", env)
    fast.act(None, {})
    assert fast.last_solution.lower_bound is not None and fast.last_solution.method == "best-response"
    # fast fading, drift-plus-penalty: a large queue drives the decision to the least error under the cap
    eps = float(system.budgets[1])
    env = _stub_env(system, "fastfading", instance=inst, layer=1, queue=np.array([0.0, 1e9]), cap_budget=3 * eps,
                    topk_energy=float(inst.evaluate(inst.topk).energy_j))
    pol = baselines.get_policy("dpp", env, v=10.0)
    a = pol.act(None, {})[1]
    least = baselines.get_policy("nearest-local", None, system=system).decide_instance(inst)
    assert inst.evaluate(a).error_bound <= inst.evaluate(least).error_bound + 1e-12
    env.unwrapped.queue = np.zeros(2)
    a0 = pol.act(None, {})[1]
    assert inst.evaluate(a0).energy_j <= inst.evaluate(a).energy_j + 1e-15
