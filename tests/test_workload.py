"""Workloads: the synthetic model and token stream, trace replay, profiles and budgets."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siftmoe_gym import WideSystem
from siftmoe_gym.config import SystemConfig
from siftmoe_gym.synthetic import SyntheticMoE, softmax, topk_gates
from siftmoe_gym.tracefile import Trace, save_trace
from siftmoe_gym.workload import MoEProfile, SyntheticWorkload, TraceWorkload, _skip_bound

CFG = SystemConfig.from_dict({"num_layers": 3, "model": {"calibration_tokens": 64}})
WL = SyntheticWorkload(CFG)
SEEDS = st.integers(0, 2**31)


def make_trace(tokens=50, seed=0, renormalize=True) -> Trace:
    tb = WL.sample(np.random.default_rng(seed), tokens)
    return Trace(tb.probs, tb.topk, tb.norms, WL.profile.delta, WL.profile.sigma,
                 CFG.num_experts, CFG.top_k, CFG.num_layers, CFG.hidden_size, renormalize, model="syn")


def test_topk_gates_worked_example():
    p = np.array([0.1, 0.4, 0.2, 0.3])
    topk, gates = topk_gates(p, 2, renormalize=True)
    np.testing.assert_array_equal(topk, [1, 3])
    np.testing.assert_allclose(gates, [0.4 / 0.7, 0.3 / 0.7])  # 0.571429, 0.428571
    _, raw = topk_gates(p, 2, renormalize=False)
    np.testing.assert_allclose(raw, [0.4, 0.3])
    np.testing.assert_allclose(softmax(np.log(np.array([1.0, 3.0]))), [0.25, 0.75])


def test_skip_bound_and_budgets_worked_example():
    sigma = np.array([[1.0, 2.0, 3.0]])
    probs = np.array([[[0.5, 0.3, 0.2]], [[0.1, 0.3, 0.6]]])  # (T=2, L=1, N=3)
    # t0: top {0, 1}, gates 0.625, 0.375 -> 0.625*1 + 0.375*2 = 1.375
    # t1: top {2, 1}, gates 2/3, 1/3   -> 2 + 2/3 = 2.666667;  mean 2.0208333
    assert _skip_bound(probs, sigma, 2, True) == pytest.approx([2.0208333])
    # without renormalization: t0 0.5 + 0.6 = 1.1, t1 1.8 + 0.6 = 2.4; mean 1.75
    assert _skip_bound(probs, sigma, 2, False) == pytest.approx([1.75])
    prof = MoEProfile(np.zeros((2, 3, 3)), np.ones((2, 3)), np.array([0.4, 0.8]), np.ones((2, 3)) / 3, np.ones(2))
    np.testing.assert_allclose(prof.budgets(SystemConfig(eps_rel=0.25)), [0.1, 0.2])
    np.testing.assert_allclose(prof.budgets(SystemConfig(eps_abs=0.05)), [0.05, 0.05])


def test_synthetic_profile_shapes_and_consistency():
    p = WL.profile
    n, l = CFG.num_experts, CFG.num_layers
    assert p.delta.shape == (l, n, n) and p.sigma.shape == (l, n)
    assert p.skip_bound.shape == (l,) and np.all(p.skip_bound > 0)
    np.testing.assert_allclose(p.popularity.sum(axis=1), 1.0)
    assert np.all(p.norm_scale > 0)
    # the skip bound is the mean gate-weighted sigma over the calibration tokens
    _, _, probs, _ = WL.model.calibrate()
    topk, gates = topk_gates(probs, CFG.top_k, CFG.renormalize_gates)
    expect = np.mean(np.sum(gates * p.sigma[np.arange(l)[None, :, None], topk], axis=-1), axis=0)
    np.testing.assert_allclose(p.skip_bound, expect)


def test_routing_is_skewed_and_consistent():
    tb = WL.sample(np.random.default_rng(1), 400)
    assert tb.probs.shape == (400, 3, 8) and tb.topk.shape == (400, 3, 2) and tb.norms.shape == (400, 3)
    np.testing.assert_allclose(tb.probs.sum(-1), 1.0)
    np.testing.assert_allclose(tb.gates.sum(-1), 1.0)  # renormalized
    # top-k really are the largest router probabilities, and gates are those probabilities renormalized
    top = np.argsort(-tb.probs, axis=-1)[..., :2]
    np.testing.assert_array_equal(np.sort(tb.topk, -1), np.sort(top, -1))
    g = np.take_along_axis(tb.probs, tb.topk, -1)
    np.testing.assert_allclose(tb.gates, g / g.sum(-1, keepdims=True))
    # skew: the most-used expert of a layer is chosen far more often than uniform (2/8 of tokens)
    counts = np.stack([np.bincount(tb.topk[:, l].ravel(), minlength=8) for l in range(3)])
    assert counts.max(axis=1).min() > 1.4 * 400 * 2 / 8
    # norms match the hidden states' scale: sqrt(d_model) with log-normal spread
    assert np.median(tb.norms) == pytest.approx(np.sqrt(CFG.model.model_dim), rel=0.2)


def test_unnormalized_gates():
    cfg = CFG.replace(renormalize_gates=False)
    tb = SyntheticWorkload(cfg).sample(np.random.default_rng(0), 10)
    np.testing.assert_allclose(tb.gates, np.take_along_axis(tb.probs, tb.topk, -1))
    assert np.all(tb.gates.sum(-1) < 1.0)


@settings(max_examples=50, deadline=None)
@given(seed=SEEDS)
def test_synthetic_sample_reproducible_and_seed_dependent(seed):
    a = WL.sample(np.random.default_rng(seed), 5)
    b = WL.sample(np.random.default_rng(seed), 5)
    c = WL.sample(np.random.default_rng(seed + 1), 5)
    for name in ("probs", "topk", "gates", "norms"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.probs, c.probs)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**20))
def test_synthetic_model_reproducible_and_seed_dependent(seed):
    cfg = CFG.replace(model_seed=seed, num_layers=1)
    a, b = SyntheticMoE(cfg), SyntheticMoE(cfg)
    c = SyntheticMoE(cfg.replace(model_seed=seed + 1))
    for name in ("w1", "w2", "router", "bias", "cluster_of"):
        np.testing.assert_array_equal(getattr(a.layers[0], name), getattr(b.layers[0], name))
    np.testing.assert_array_equal(a.topics, b.topics)
    assert not np.array_equal(a.layers[0].w1, c.layers[0].w1)


def test_synthetic_calibration_reproducible():
    d1, s1, _, _ = SyntheticMoE(CFG).calibrate()
    d2, s2, _, _ = SyntheticMoE(CFG).calibrate()
    np.testing.assert_array_equal(d1, d2)
    np.testing.assert_array_equal(s1, s2)
    d3, _, _, _ = SyntheticMoE(CFG.replace(model_seed=1)).calibrate()
    assert not np.array_equal(d1, d3)


def test_trace_workload_profile_and_gates():
    tr = make_trace(50)
    tw = TraceWorkload(CFG, tr)
    np.testing.assert_array_equal(tw.profile.delta, WL.profile.delta)
    assert tw.profile.source == "trace:syn"
    tb = tw.sample(np.random.default_rng(0), 7)
    g = np.take_along_axis(tb.probs, tb.topk, -1)
    np.testing.assert_allclose(tb.gates, g / g.sum(-1, keepdims=True))
    # the trace's skip bound is computed from its own tokens
    layers = np.arange(3)[None, :, None]
    gates = np.take_along_axis(tr.router_probs, tr.topk, -1)
    gates = gates / gates.sum(-1, keepdims=True)
    np.testing.assert_allclose(tw.profile.skip_bound, np.mean(np.sum(gates * tr.sigma[layers, tr.topk], -1), 0))


def test_trace_workload_window_is_consecutive_and_wraps():
    tr = make_trace(50)
    tw = TraceWorkload(CFG, tr)
    for seed in range(5):
        tb = tw.sample(np.random.default_rng(seed), 120)  # longer than the trace: wraps around
        start = int(np.flatnonzero(np.all(tr.router_probs == tb.probs[0], axis=(1, 2)))[0])
        idx = (start + np.arange(120)) % 50
        np.testing.assert_array_equal(tb.probs, tr.router_probs[idx])
        np.testing.assert_array_equal(tb.norms, tr.hidden_norms[idx])


@settings(max_examples=50, deadline=None)
@given(seed=SEEDS)
def test_trace_sample_reproducible_and_seed_dependent(seed):
    tw = _TW
    a = tw.sample(np.random.default_rng(seed), 4)
    b = tw.sample(np.random.default_rng(seed), 4)
    np.testing.assert_array_equal(a.probs, b.probs)
    others = [tw.sample(np.random.default_rng(seed + i), 4).probs for i in (1, 2, 3)]
    assert any(not np.array_equal(a.probs, o) for o in others)


_TW = TraceWorkload(CFG, make_trace(200))


def test_system_from_trace_file(tmp_path):
    path = save_trace(make_trace(30, renormalize=False), tmp_path / "t.safetensors")
    # the model's shape comes from the trace: a config key that contradicts it is an error naming both values
    with pytest.raises(ValueError, match=r"num_experts=4 \(trace: num_experts=8\)"):
        WideSystem({"num_experts": 4, "top_k": 3, "num_layers": 2}, trace=path)
    # node_capacity 1 holds 1 + 4 * 1 = 5 experts: enough for the config's 4, not for the trace's 8; unless it
    # was given explicitly (then an error), a capacity too small for the trace is reset
    cfg = SystemConfig.from_dict({"num_experts": 4, "top_k": 3, "num_layers": 2, "node_capacity": 1})
    with pytest.raises(ValueError, match="node_capacity=1 cannot hold the trace's num_experts=8"):
        WideSystem(cfg, trace=path, explicit={"node_capacity"})
    s = WideSystem(cfg, trace=path, explicit=())
    assert (s.num_experts, s.top_k, s.num_layers, s.config.renormalize_gates) == (8, 2, 3, False)
    assert s.node_of.shape == (3, 8) and s.config.node_capacity is None and s.config.edge_capacity == 2
    tok = s.sample_tokens(np.random.default_rng(0), 5)
    np.testing.assert_allclose(tok.gates, np.take_along_axis(tok.probs, tok.topk, -1))
    assert s.profile.source == "trace:syn"


@pytest.mark.parametrize("shape", [{}, {"num_experts": 40}, {"model": {"model_dim": 16}}])
def test_routing_frame_is_the_hidden_state_model(shape):
    """The token stream draws hidden states in the routers' coordinates: fed the coordinates of full
    hidden-state noise, it gives the routers' probabilities on those hidden states and their norms."""
    cfg = SystemConfig.from_dict({"num_layers": 2, "model": {"calibration_tokens": 16}, **shape})
    m = SyntheticMoE(cfg)
    dm, nl, r, r0 = cfg.model.model_dim, cfg.num_layers, m.noise_dims, min(cfg.num_experts, cfg.model.model_dim)
    assert m.chi2_df == dm - r and (r == min(cfg.num_experts + 1, dm))
    rng = np.random.default_rng(3)
    t = 50
    topic = rng.integers(0, len(m.topics), t)
    n = rng.standard_normal((t, nl, dm))
    z = rng.standard_normal((t, nl))
    x = 1.5 * m.topics[topic][:, None] + n / np.sqrt(dm)  # SyntheticMoE.hidden_states, by hand
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    x *= (np.sqrt(dm) * np.exp(0.25 * z))[..., None]
    a, rest = np.empty((t, nl, r)), np.empty((t, nl))
    for l, lay in enumerate(m.layers):  # n in layer l's frame: router row space, the topic's remainder, the rest
        q = np.linalg.svd(lay.router, full_matrices=False)[2] if r0 < dm else np.eye(dm)
        a[:, l, :r0] = n[:, l] @ q.T
        if r0 < dm:
            res = m.topics[topic] - (m.topics[topic] @ q.T) @ q
            a[:, l, r0] = np.sum(n[:, l] * res / np.linalg.norm(res, axis=1, keepdims=True), axis=1)
        rest[:, l] = np.sum(n[:, l] ** 2, axis=1) - np.sum(a[:, l] ** 2, axis=1)
    gam = (rest.reshape(1, -1) / 2.0) if m.chi2_df else None
    probs, norms = m.routing(topic[None], np.concatenate([a.ravel(), z.ravel()])[None], gam)
    np.testing.assert_allclose(probs[0], m.all_router_probs(x), rtol=0, atol=1e-12)
    np.testing.assert_allclose(norms[0], np.linalg.norm(x, axis=-1), rtol=1e-12)


def test_token_stream_matches_hidden_state_sampling_in_distribution():
    """Routing statistics of the stream and of full hidden states agree (1,500 tokens each)."""
    t = 1500
    tb = WL.sample(np.random.default_rng(11), t)
    x = WL.model.hidden_states(np.random.default_rng(12), t)
    probs = WL.model.all_router_probs(x)
    topk, _ = topk_gates(probs, CFG.top_k, CFG.renormalize_gates)
    np.testing.assert_allclose(tb.probs.mean(axis=0), probs.mean(axis=0), atol=0.02)
    freq = lambda tk: np.stack([np.bincount(tk[:, l].ravel(), minlength=8) for l in range(3)]) / (2 * t)  # noqa: E731
    np.testing.assert_allclose(freq(tb.topk), freq(topk), atol=0.03)
    np.testing.assert_allclose(np.quantile(tb.norms, [0.1, 0.5, 0.9]),
                               np.quantile(np.linalg.norm(x, axis=-1), [0.1, 0.5, 0.9]), rtol=0.05)
