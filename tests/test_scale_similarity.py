"""Blocked Delta / sigma (siftmoe_gym.blocked_similarity) against the reference estimator, and the
sigmoid router of the large presets."""

from __future__ import annotations

import numpy as np
import pytest

from siftmoe_gym.blocked_similarity import EXACT_WORK_LIMIT, _kth_index, choose_method, similarity_blocks
from siftmoe_gym.config import SystemConfig
from siftmoe_gym.similarity import similarity_from_outputs
from siftmoe_gym.synthetic import SyntheticMoE

SHAPES = [(8, 512, 32, 0.99), (16, 100, 7, 1.0), (30, 64, 5, 0.5), (3, 9, 2, 0.9), (40, 50, 3, 0.97)]


@pytest.mark.parametrize("n,t,d,q", SHAPES)
def test_exact_blocks_equal_the_reference_bit_for_bit(n, t, d, q):
    rng = np.random.default_rng(n * 1000 + t)
    y = rng.standard_normal((n, t, d)) * rng.uniform(0.1, 3.0, size=(n, 1, 1))
    x = rng.standard_normal((t, d))
    x[1] = 0.0  # a zero-norm input is left out by both
    d_ref, s_ref = similarity_from_outputs(y, x, q=q)
    d_new, s_new = similarity_blocks(y, x, q=q, method="exact")
    assert np.array_equal(d_ref, d_new) and np.array_equal(s_ref, s_new)


@pytest.mark.parametrize("n,t,d,q", SHAPES)
def test_gram_blocks_are_close_upper_estimates(n, t, d, q):
    rng = np.random.default_rng(n + t)
    y = rng.standard_normal((n, t, d))
    y[1] = y[0] + 1e-6 * rng.standard_normal((t, d))  # a near-duplicate expert: the worst case for the Gram form
    x = rng.standard_normal((t, d))
    d_ref, s_ref = similarity_from_outputs(y, x, q=q)
    d_g, s_g = similarity_blocks(y, x, q=q, method="gram")
    assert np.array_equal(s_ref, s_g)
    assert np.array_equal(d_g, d_g.T) and not np.diag(d_g).any()
    off = ~np.eye(n, dtype=bool)
    rel = np.abs(d_g - d_ref)[off] / np.maximum(d_ref[off], 1e-300)
    far = d_ref[off] > 1e-3
    assert rel[far].max() < 1e-12
    assert np.abs(d_g - d_ref).max() < 1e-7 * d_ref.max()  # near-duplicates: absolute error of a sqrt of rounding
    assert np.all(d_g >= d_ref * (1.0 - 4e-16))  # never below the exact differences beyond the last rounding


def test_kth_index_is_numpys_higher_quantile():
    rng = np.random.default_rng(0)
    for t in range(1, 400):
        r = rng.standard_normal((1, t))
        for q in (0.1, 0.5, 0.7, 0.9, 0.95, 0.97, 0.99, 0.999, 1.0):
            assert np.sort(r, axis=1)[0, _kth_index(t, q)] == np.quantile(r, q, axis=1, method="higher")[0], (t, q)


def test_bad_inputs_are_named():
    y, x = np.zeros((3, 4, 2)), np.ones((4, 2))
    with pytest.raises(ValueError, match="outputs must be"):
        similarity_blocks(y, x[:3])
    with pytest.raises(ValueError, match="quantile"):
        similarity_blocks(y, x, q=0.0)
    with pytest.raises(ValueError, match="method"):
        similarity_blocks(y, x, method="fast")
    with pytest.raises(ValueError, match="non-zero norm"):
        similarity_blocks(y, np.zeros((4, 2)))


def test_method_choice_keeps_existing_systems_exact():
    cfg = SystemConfig()
    m = cfg.model
    assert choose_method(cfg.num_experts, m.calibration_tokens, m.model_dim) == "exact"
    assert choose_method(128, 256, 32) == "exact"  # the qwen3-30b-a3b preset: unchanged numbers
    assert choose_method(256, 128, 32) == "gram"  # deepseek-v3
    assert 128 * 127 // 2 * 256 * 32 <= EXACT_WORK_LIMIT < 256 * 255 // 2 * 128 * 32


def test_calibration_of_small_systems_matches_the_reference_estimator():
    cfg = SystemConfig.from_dict({"num_experts": 12, "num_layers": 2, "model": {"calibration_tokens": 64}})
    model = SyntheticMoE(cfg, use_cache=False)
    delta, sigma, _, x = model.calibrate()
    for l, lay in enumerate(model.layers):
        d_ref, s_ref = similarity_from_outputs(lay.expert_outputs(x[:, l]), x[:, l], q=cfg.quantile)
        assert np.array_equal(delta[l], d_ref) and np.array_equal(sigma[l], s_ref)


def test_sigmoid_router_scores():
    base = {"num_experts": 16, "top_k": 4, "num_layers": 2, "model": {"calibration_tokens": 32}}
    sig = SyntheticMoE(SystemConfig.from_dict({**base, "model": {**base["model"], "router_score": "sigmoid"}}),
                       use_cache=False)
    soft = SyntheticMoE(SystemConfig.from_dict(base), use_cache=False)
    rng = np.random.default_rng(3)
    p_sig, _ = sig.sample_routing(rng, 50)
    p_soft, _ = soft.sample_routing(np.random.default_rng(3), 50)
    assert np.all((p_sig > 0) & (p_sig < 1))
    assert np.abs(p_sig.sum(axis=-1) - 1.0).min() > 1e-3  # not a distribution over the experts
    np.testing.assert_allclose(p_soft.sum(axis=-1), 1.0, rtol=1e-12)
    # the same logits: the sigmoid scores rank the experts as the softmax does
    assert np.array_equal(np.argsort(-p_sig, axis=-1, kind="stable")[..., :4],
                          np.argsort(-p_soft, axis=-1, kind="stable")[..., :4])
    x = sig.hidden_states(np.random.default_rng(1), 20)
    direct = sig.router_probs(x[:, 0], 0)
    assert np.all((direct > 0) & (direct < 1))
    with pytest.raises(ValueError, match="model.router_score"):
        SystemConfig.from_dict({"model": {"router_score": "relu"}})
