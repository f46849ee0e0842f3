"""Decision instances: DecodeInstance / PrefillInstance evaluation and the vectorized batch evaluator."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siftmoe_gym import WideSystem
from siftmoe_gym.bounds import SKIP
from siftmoe_gym.instances import DecodeInstance, PrefillInstance, evaluate_decode_batch

# unit-test fixture (see test_bounds)
DELTA = np.array(
    [
        [0.0, 0.2, 0.5, 0.9],
        [0.2, 0.0, 0.4, 0.3],
        [0.5, 0.4, 0.0, 0.6],
        [0.9, 0.3, 0.6, 0.0],
    ]
)
SIGMA = np.array([1.0, 0.8, 1.2, 0.7])
NODE_OF = np.array([0, 1, 1, 2])  # expert 0 local, 1 and 2 on node 1, 3 on node 2
EC = 1e-6


def decode(budget=0.3):
    return DecodeInstance(
        gates=np.array([0.6, 0.4]),
        topk=np.array([1, 2]),
        delta=DELTA,
        sigma=SIGMA,
        node_of=NODE_OF,
        node_cost=np.array([0.0, 1e-4, 3e-4]),
        node_feasible=np.array([True, True, False]),
        compute_cost=EC,
        budget=budget,
        node_violation_s=np.array([0.0, 0.0, 5e-5]),
    )


def test_decode_topk():
    r = decode().evaluate(np.array([1, 2]))
    # both experts on node 1: one activation 1e-4 + two evaluations 2e-6 = 1.02e-4 J, error 0
    assert r.energy_j == pytest.approx(1.02e-4)
    assert r.error_bound == 0.0 and r.latency_violation_s == 0.0 and r.within_budget
    np.testing.assert_array_equal(r.nodes_used, [False, True, False])
    np.testing.assert_array_equal(r.computed, [False, True, True, False])


def test_decode_shared_substitute_is_computed_once():
    inst = decode()
    # both slots served by local expert 0: energy = e_c (once) = 1e-6; error = 0.6*0.2 + 0.4*0.5 = 0.32 > 0.3
    r = inst.evaluate(np.array([0, 0]))
    assert r.energy_j == pytest.approx(1e-6)
    assert r.error_bound == pytest.approx(0.32)
    assert not r.within_budget
    assert r.computed.sum() == 1
    # both by expert 3 on infeasible node 2: 3e-4 + 1e-6 (not 2e-6); error = 0.6*0.3 + 0.4*0.6 = 0.42
    r = inst.evaluate(np.array([3, 3]))
    assert r.energy_j == pytest.approx(3.01e-4)
    assert r.error_bound == pytest.approx(0.42)
    assert r.latency_violation_s == pytest.approx(5e-5)
    assert not r.within_budget  # infeasible node


def test_decode_keep_and_skip_and_extra_compute():
    inst = decode(budget=0.5)
    # keep 1 (node 1), skip 2: 1e-4 + 1e-6; error 0.4 * sigma[2] = 0.48 <= 0.5
    r = inst.evaluate(np.array([1, SKIP]))
    assert r.energy_j == pytest.approx(1.01e-4)
    assert r.error_bound == pytest.approx(0.48) and r.within_budget
    # an extra (wasted) computed expert 3 is paid for: + node 2 (3e-4) + e_c
    r2 = inst.evaluate(np.array([1, SKIP]), computed=np.array([3]))
    assert r2.energy_j == pytest.approx(1.01e-4 + 3e-4 + 1e-6)
    assert r2.error_bound == pytest.approx(0.48) and not r2.within_budget
    # skip all: nothing sent, nothing computed
    r3 = inst.evaluate(np.array([SKIP, SKIP]))
    assert r3.energy_j == 0.0 and r3.error_bound == pytest.approx(0.6 * 0.8 + 0.4 * 1.2)


def test_decode_rejects_bad_assignments():
    inst = decode()
    with pytest.raises(ValueError, match="shape"):
        inst.evaluate(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"\[-1, 3\]"):
        inst.evaluate(np.array([1, 4]))
    with pytest.raises(ValueError, match="integer"):
        inst.evaluate(np.array([1.0, 2.0]))


def prefill():
    # node 1 costs (0, 1, 3, 6)e-4 for 0..3 tokens, node 2 (0, 2, 5, 9)e-4 -- convex increasing
    return PrefillInstance(
        gates=np.array([[0.6, 0.4], [0.7, 0.3], [0.5, 0.5]]),
        topk=np.array([[1, 2], [1, 3], [2, 3]]),
        delta=DELTA,
        sigma=SIGMA,
        node_of=NODE_OF,
        cost_table=np.array([[0, 0, 0, 0], [0, 1e-4, 3e-4, 6e-4], [0, 2e-4, 5e-4, 9e-4]]),
        feasible_table=np.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]], dtype=bool),
        compute_cost=EC,
        budget=0.25,
        violation_table=np.array([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1e-3, 2e-3]]),
    )


def test_prefill_with_loads():
    inst = prefill()
    # t0 keeps 1, 2 (node 1); t1 keeps 1, skips 3 (node 1); t2 keeps 2 (node 1) and 3 (node 2)
    a = np.array([[1, 2], [1, SKIP], [2, 3]])
    r = inst.evaluate(a)
    np.testing.assert_array_equal(r.nodes_used, [0, 3, 1])  # loads
    # c_1(3) + c_2(1) + e_c * (2 + 1 + 2) = 6e-4 + 2e-4 + 5e-6
    assert r.energy_j == pytest.approx(8.05e-4)
    # per-token errors: 0, 0.3 * sigma[3] = 0.21, 0
    np.testing.assert_allclose(r.error_bound, [0.0, 0.21, 0.0])
    assert r.within_budget and r.latency_violation_s == 0.0


def test_prefill_moving_tokens_changes_loads():
    inst = prefill()
    # every token uses expert 3 (node 2): t0 replaces 2 by 3 -> node 2 load 3 (infeasible)
    a = np.array([[1, 3], [1, 3], [2, 3]])
    r = inst.evaluate(a)
    np.testing.assert_array_equal(r.nodes_used, [0, 3, 3])
    assert r.energy_j == pytest.approx(6e-4 + 9e-4 + 6e-6)
    # t0: 0.4 * Delta[2, 3] = 0.24
    np.testing.assert_allclose(r.error_bound, [0.24, 0.0, 0.0])
    assert r.latency_violation_s == pytest.approx(2e-3) and not r.within_budget


def test_prefill_decode_view():
    d = prefill().decode_view(1)
    np.testing.assert_array_equal(d.node_cost, [0, 1e-4, 2e-4])
    r = d.evaluate(np.array([1, 3]))
    assert r.energy_j == pytest.approx(3e-4 + 2e-6)


@st.composite
def batches(draw):
    n = draw(st.integers(2, 20))
    k = draw(st.integers(1, min(n, 8)))
    m = draw(st.sampled_from([1, 2, 4, 6, 16, 70]))  # 70 nodes: the one-hot fallback path
    b = draw(st.integers(1, 30))
    layers = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31))
    per_layer = draw(st.booleans())
    return n, k, m, b, layers, seed, per_layer


@settings(max_examples=80, deadline=None)
@given(spec=batches(), extras=st.booleans(), shared=st.booleans())
def test_batch_agrees_with_decode_instance(spec, extras, shared):
    n, k, m, b, layers, seed, per_layer = spec
    rng = np.random.default_rng(seed)
    raw = rng.random((layers, n, n))
    delta = raw + np.swapaxes(raw, 1, 2)
    for l in range(layers):
        np.fill_diagonal(delta[l], 0.0)
    sigma = rng.random((layers, n)) + 0.1
    node_of = rng.integers(0, m + 1, size=(layers, n))
    topk = np.stack([rng.permutation(n)[:k] for _ in range(b)])
    gates = rng.dirichlet(np.ones(k), size=b)
    # keep / replace (often by another top-k expert, so substitutes are shared) / skip
    assign = np.where(rng.random((b, k)) < 0.5, topk, topk[:, rng.integers(0, k, size=k)])
    assign = np.where(rng.random((b, k)) < 0.3, rng.integers(-1, n, size=(b, k)), assign)
    cost = rng.random((b, m + 1)) * 1e-4
    cost[:, 0] = 0.0
    viol = np.where(rng.random((b, m + 1)) < 0.3, rng.random((b, m + 1)), 0.0)
    viol[:, 0] = 0.0
    if shared:  # one (M+1,) cost vector for the whole batch
        cost[:] = cost[0]
        viol[:] = viol[0]
    computed = rng.random((b, n)) < 0.2 if extras else None
    layer = rng.integers(0, layers, size=b)
    dext = np.concatenate([delta, sigma[..., None]], axis=-1)
    cost_in, viol_in = (cost[0], viol[0]) if shared else (cost, viol)
    if per_layer:
        e, err, v = evaluate_decode_batch(gates, topk, assign, dext, node_of, cost_in, 1e-6, viol_in, computed, layer)
    else:
        layer[:] = 0
        e, err, v = evaluate_decode_batch(gates, topk, assign, dext[0], node_of[0], cost_in, 1e-6, viol_in, computed)
    for i in range(b):
        inst = DecodeInstance(gates[i], topk[i], delta[layer[i]], sigma[layer[i]], node_of[layer[i]], cost[i],
                              np.ones(m + 1, bool), 1e-6, 1.0, viol[i])
        r = inst.evaluate(assign[i], None if computed is None else computed[i])
        assert e[i] == pytest.approx(r.energy_j, rel=1e-12, abs=1e-18)
        assert err[i] == pytest.approx(r.error_bound, rel=1e-12, abs=1e-15)
        assert v[i] == pytest.approx(r.latency_violation_s, rel=1e-12, abs=1e-18)


def test_batch_shared_cost_vector_and_hand_values():
    # broadcast (M+1,) cost vector; same fixture as decode()
    dext = np.concatenate([DELTA, SIGMA[:, None]], axis=1)
    gates = np.array([[0.6, 0.4]] * 3)
    topk = np.array([[1, 2]] * 3)
    assign = np.array([[1, 2], [0, 0], [3, 3]])
    e, err, v = evaluate_decode_batch(gates, topk, assign, dext, NODE_OF, np.array([0.0, 1e-4, 3e-4]), EC,
                                      np.array([0.0, 0.0, 5e-5]))
    np.testing.assert_allclose(e, [1.02e-4, 1e-6, 3.01e-4])
    np.testing.assert_allclose(err, [0.0, 0.32, 0.42])
    np.testing.assert_allclose(v, [0.0, 0.0, 5e-5])


def test_system_builds_consistent_instances():
    s = WideSystem()
    rng = np.random.default_rng(0)
    tok = s.sample_tokens(rng, 4)
    gains = s.gains(s.draw_distances(rng), np.ones(s.num_nodes))
    inst = s.decode_instance(tok, 1, 2, gains)
    assert inst.budget == pytest.approx(s.budgets[2]) and inst.budget > 0
    r = inst.evaluate(inst.topk_assignment())
    # top-k energy: sum of activated edge nodes' c_m(1) plus k e_c
    used = np.unique(s.node_of[2][tok.topk[1, 2]])
    expect = inst.node_cost[used].sum() + s.top_k * s.config.compute_energy_j
    assert r.energy_j == pytest.approx(expect) and r.error_bound == 0.0
    pre = s.prefill_instance(tok, 0, gains)
    assert pre.cost_table.shape == (s.num_nodes + 1, 5)
    np.testing.assert_allclose(pre.cost_table[:, 1], s.load_tables(gains, 4)[0][:, 1])
    rp = pre.evaluate(pre.topk)
    np.testing.assert_array_equal(rp.error_bound, 0.0)
    # c_m is convex with c_m(0) = 0, hence superadditive: c_m(n) >= n c_m(1), so the block costs at
    # least as much as the same tokens decoded one by one
    singles = sum(pre.decode_view(t).evaluate(pre.topk[t]).energy_j for t in range(4))
    assert rp.energy_j >= singles - 1e-15
