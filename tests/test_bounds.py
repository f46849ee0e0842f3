"""Error bounds: worked examples, vectorization, and validity against measured deviations at q = 1."""

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siftmoe_gym.bounds import SKIP, error_bound, extended_delta, measured_deviation, served_output, server_index
from siftmoe_gym.config import SystemConfig
from siftmoe_gym.similarity import bound_coverage, similarity_from_outputs
from siftmoe_gym.synthetic import SyntheticMoE, topk_gates

# unit-test fixture (the simulator itself never hand-writes Delta)
DELTA = np.array(
    [
        [0.0, 0.2, 0.5, 0.9],
        [0.2, 0.0, 0.4, 0.3],
        [0.5, 0.4, 0.0, 0.6],
        [0.9, 0.3, 0.6, 0.0],
    ]
)
SIGMA = np.array([1.0, 0.8, 1.2, 0.7])


def test_error_bound_worked_example():
    gates = np.array([0.5, 0.3, 0.2])
    topk = np.array([0, 1, 2])
    # keep 0, replace 1 by 3, skip 2: 0.5*0 + 0.3*Delta[1,3] + 0.2*sigma[2] = 0 + 0.09 + 0.24 = 0.33
    assert error_bound(gates, topk, np.array([0, 3, SKIP]), DELTA, SIGMA) == pytest.approx(0.33)
    # all served by expert 1: 0.5*0.2 + 0.3*0 + 0.2*0.4 = 0.18
    assert error_bound(gates, topk, np.array([1, 1, 1]), DELTA, SIGMA) == pytest.approx(0.18)
    # top-k: 0;  skip all: 0.5*1 + 0.3*0.8 + 0.2*1.2 = 0.98
    assert error_bound(gates, topk, topk, DELTA, SIGMA) == 0.0
    assert error_bound(gates, topk, np.full(3, SKIP), DELTA, SIGMA) == pytest.approx(0.98)


def test_error_bound_vectorized_and_per_layer():
    gates = np.array([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]])
    topk = np.array([[0, 1, 2], [0, 1, 2]])
    assign = np.array([[0, 3, SKIP], [1, 1, 1]])
    np.testing.assert_allclose(error_bound(gates, topk, assign, DELTA, SIGMA), [0.33, 0.18])
    deltas = np.stack([DELTA, 2 * DELTA])
    sigmas = np.stack([SIGMA, 2 * SIGMA])
    # layer 1 doubles the first: 0.66; layer 0: 0.18
    np.testing.assert_allclose(error_bound(gates, topk, assign, deltas, sigmas, layer=np.array([1, 0])), [0.66, 0.18])
    with pytest.raises(ValueError, match="layer"):
        error_bound(gates, topk, assign, deltas, sigmas)


def test_extended_delta_and_server_index():
    ext = extended_delta(DELTA, SIGMA)
    assert ext.shape == (4, 5)
    np.testing.assert_array_equal(ext[:, 4], SIGMA)
    np.testing.assert_array_equal(server_index(np.array([2, SKIP, 0]), 4), [2, 4, 0])


def test_measured_deviation_worked_example():
    x = np.array([[3.0, 4.0]])  # ||x|| = 5
    outs = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # E0(x) = (1,0), E1(x) = (0,1)
    gates = np.array([[0.6, 0.4]])
    topk = np.array([[0, 1]])
    # y = (0.6, 0.4).  Skip slot 1: y_hat = (0.6, 0), ||y_hat - y|| / 5 = 0.4 / 5 = 0.08
    assert measured_deviation(outs, x, gates, topk, np.array([[0, SKIP]])) == pytest.approx([0.08])
    # both slots by E1: y_hat = (0, 1), diff (-0.6, 0.6): 0.6 sqrt(2) / 5 = 0.1697056
    assert measured_deviation(outs, x, gates, topk, np.array([[1, 1]])) == pytest.approx([0.1697056], rel=1e-6)
    y, y_hat = served_output(outs, gates, topk, np.array([[1, 0]]))
    np.testing.assert_allclose(y, [[0.6, 0.4]])
    np.testing.assert_allclose(y_hat, [[0.4, 0.6]])  # swapped: gate 0.6 on E1, 0.4 on E0


@functools.lru_cache(maxsize=None)
def _calibrated(seed, renormalize):
    cfg = SystemConfig.from_dict(
        {"model_seed": seed, "num_layers": 2, "num_experts": 8, "top_k": 3, "renormalize_gates": renormalize,
         "model": {"calibration_tokens": 96}}
    )
    model = SyntheticMoE(cfg)
    x = model.hidden_states(np.random.default_rng([seed, 99]), 96)
    per_layer = []
    for l, lay in enumerate(model.layers):
        outs = lay.expert_outputs(x[:, l])
        delta, sigma = similarity_from_outputs(outs, x[:, l], q=1.0)
        topk, gates = topk_gates(model.router_probs(x[:, l], l), cfg.top_k, renormalize)
        per_layer.append((outs, x[:, l], topk, gates, delta, sigma))
    return per_layer


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2),
    renormalize=st.booleans(),
    layer=st.integers(0, 1),
    draw_seed=st.integers(0, 2**31),
    p_skip=st.floats(0.0, 0.6),
)
def test_bound_never_below_measured_deviation_at_q1(seed, renormalize, layer, draw_seed, p_skip):
    outs, x, topk, gates, delta, sigma = _calibrated(seed, renormalize)[layer]
    rng = np.random.default_rng(draw_seed)
    t, k = topk.shape
    n = delta.shape[0]
    # random keep / replace (any expert, including another top-k one) / skip
    assign = np.where(rng.random((t, k)) < 0.5, topk, rng.integers(0, n, size=(t, k)))
    assign = np.where(rng.random((t, k)) < p_skip, SKIP, assign)
    bound = error_bound(gates, topk, assign, delta, sigma)
    dev = measured_deviation(outs, x, gates, topk, assign)
    assert np.all(dev <= bound * (1 + 1e-9) + 1e-12), np.max(dev - bound)
    assert bound_coverage(dev, bound) == 1.0
    # and it stays finite
    assert np.all(np.isfinite(bound))


def test_skip_everything_bound_equals_gate_weighted_sigma():
    outs, x, topk, gates, delta, sigma = _calibrated(0, True)[0]
    assign = np.full(topk.shape, SKIP)
    np.testing.assert_allclose(error_bound(gates, topk, assign, delta, sigma), np.sum(gates * sigma[topk], axis=1))
    np.testing.assert_array_equal(error_bound(gates, topk, topk, delta, sigma), 0.0)
    np.testing.assert_array_equal(measured_deviation(outs, x, gates, topk, topk), 0.0)
