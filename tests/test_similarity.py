"""Delta / sigma estimation from expert outputs (hand-made outputs and the synthetic model)."""

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siftmoe_gym.config import SystemConfig
from siftmoe_gym.similarity import bound_coverage, similarity_from_experts, similarity_from_outputs
from siftmoe_gym.synthetic import SyntheticMoE

# 4 tokens in R^2; the last has norm 0 and must be ignored.  Norms: 1, 2, 5.
X = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [0.0, 0.0]])
Y = np.array(
    [
        [[1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [0.0, 0.0]],  # E0 = identity: ratios 1, 1, 1
        [[0.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]],  # E1: ratios 0, 0.5, 0
        [[2.0, 0.0], [0.0, 0.0], [6.0, 8.0], [5.0, 5.0]],  # E2: ratios 2, 0, 2
    ]
)


def test_similarity_worked_example_max():
    delta, sigma = similarity_from_outputs(Y, X, q=1.0)
    # sigma_i = max_x ||E_i(x)|| / ||x||
    np.testing.assert_allclose(sigma, [1.0, 0.5, 2.0])
    # Delta_01: ||(1,0)||/1 = 1, ||(0,1)||/2 = 0.5, ||(3,4)||/5 = 1        -> 1
    # Delta_02: ||(-1,0)||/1 = 1, ||(0,2)||/2 = 1, ||(-3,-4)||/5 = 1      -> 1
    # Delta_12: ||(-2,0)||/1 = 2, ||(0,1)||/2 = 0.5, ||(-6,-8)||/5 = 2    -> 2
    np.testing.assert_allclose(delta, [[0, 1, 1], [1, 0, 2], [1, 2, 0]])


def test_similarity_worked_example_quantile():
    # q = 0.5 over 3 ratios with method "higher": the middle of the sorted ratios
    delta, sigma = similarity_from_outputs(Y, X, q=0.5)
    np.testing.assert_allclose(sigma, [1.0, 0.0, 2.0])  # E1: sorted (0, 0, 0.5) -> 0
    np.testing.assert_allclose(delta, [[0, 1, 1], [1, 0, 2], [1, 2, 0]])  # (0.5,1,1) (1,1,1) (0.5,2,2)


def test_similarity_from_expert_callables():
    mats = [np.eye(2), np.array([[0.0, 0.0], [0.0, 0.5]]), np.array([[2.0, 0.0], [0.0, 0.0]])]
    experts = [lambda x, m=m: x @ m.T for m in mats]
    # E1(x) = (0, 0.5 x2): ratios 0, 0.5, 0.4;  E2(x) = (2 x1, 0): ratios 2, 0, 1.2
    delta, sigma = similarity_from_experts(experts, X[:3], q=1.0)
    np.testing.assert_allclose(sigma, [1.0, 0.5, 2.0])
    # Delta_12: ||(-2, 0)||/1 = 2; ||(0, 1)||/2 = 0.5; ||(-6, 2)||/5 = sqrt(40)/5 = 1.264911
    assert delta[1, 2] == pytest.approx(2.0)
    # Delta_01 on token 3: ||(3, 2)||/5 = sqrt(13)/5 = 0.721110; max with 1 and 0.5 -> 1
    assert delta[0, 1] == pytest.approx(1.0)


def test_similarity_input_errors():
    with pytest.raises(ValueError, match="shape|must be"):
        similarity_from_outputs(Y[:, :2], X, q=1.0)
    with pytest.raises(ValueError, match="q"):
        similarity_from_outputs(Y, X, q=1.5)
    with pytest.raises(ValueError, match="non-zero norm"):
        similarity_from_outputs(np.zeros((2, 3, 2)), np.zeros((3, 2)))


def test_bound_coverage():
    assert bound_coverage(np.array([0.1, 0.5, 0.2]), np.array([0.1, 0.4, 0.3])) == pytest.approx(2 / 3)
    assert np.isnan(bound_coverage(np.array([]), np.array([])))


@functools.lru_cache(maxsize=None)
def _model(seed):
    cfg = SystemConfig.from_dict({"model_seed": seed, "num_layers": 2, "model": {"calibration_tokens": 64}})
    return SyntheticMoE(cfg)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 3))
def test_synthetic_delta_is_a_metric_like_matrix(seed):
    m = _model(seed)
    x = m.hidden_states(np.random.default_rng(seed), 64)[:, 0]
    delta, sigma = similarity_from_outputs(m.layers[0].expert_outputs(x), x, q=1.0)
    n = m.config.num_experts
    assert delta.shape == (n, n) and sigma.shape == (n,)
    np.testing.assert_array_equal(delta, delta.T)
    np.testing.assert_array_equal(np.diag(delta), 0.0)
    assert np.all(delta[~np.eye(n, dtype=bool)] > 0) and np.all(sigma > 0)
    # |sigma_i - sigma_j| <= Delta_ij (reverse triangle inequality, per token, so also for maxima)
    assert np.all(np.abs(sigma[:, None] - sigma[None, :]) <= delta + 1e-12)


def test_synthetic_model_has_similar_experts():
    # clustered experts: the closest other expert is much closer than the typical one
    m = _model(0)
    x = m.hidden_states(np.random.default_rng(0), 64)[:, 0]
    delta, sigma = similarity_from_outputs(m.layers[0].expert_outputs(x), x, q=1.0)
    off = delta + np.diag(np.full(len(delta), np.inf))
    assert np.median(off.min(axis=1)) < 0.6 * np.median(delta[np.triu_indices(len(delta), 1)])


def test_expert_callable_matches_batched_outputs():
    m = _model(1)
    x = m.hidden_states(np.random.default_rng(5), 10)[:, 1]
    out = m.layers[1].expert_outputs(x)
    for i in range(m.config.num_experts):
        np.testing.assert_allclose(m.layers[1].expert(i)(x), out[i], rtol=1e-10, atol=1e-12)
