"""The native vector envs' per-step kernels (siftmoe_gym.envs.vector_kernels) against the enumeration they
replace, on random terms with many exact ties and disallowed servers."""

from __future__ import annotations

import numpy as np
import pytest

from siftmoe_gym.bounds import ABS_TOL, REL_TOL
from siftmoe_gym.envs.actions import NodesCodec
from siftmoe_gym.envs.vector_kernels import decode_nodes_int8, serve_nodes_k2
from siftmoe_gym.serving_table import combos


def _enumerated(g, cap):
    """Every assignment scored, then the first in (count level, index) order within the key."""
    nn = g.shape[0] - 1
    grids, count = combos(nn, 2)
    err = g[grids[:, 0], 0] + g[grids[:, 1], 1]  # (C, n)
    levels = [np.flatnonzero(count == c) for c in np.unique(count)]
    perm = np.concatenate(levels)
    es = err[perm]
    cuts = np.cumsum([0] + [len(c) for c in levels])
    mins = [es[a:b].min(axis=0) for a, b in zip(cuts[:-1], cuts[1:])]
    thr = cap * (1.0 + REL_TOL) + ABS_TOL
    key = np.minimum.reduce(mins) * (1.0 + REL_TOL) + ABS_TOL
    for m in reversed(mins):
        key = np.where(m <= thr, m, key)
    pos = (es <= key).argmax(axis=0)
    return perm[pos], es[pos, np.arange(g.shape[2])]


@pytest.mark.parametrize("seed", range(4))
def test_serve_nodes_k2_matches_the_enumeration(seed):
    rng = np.random.default_rng(seed)
    for trial in range(300):
        nn = int(rng.integers(2, 10))
        shape = (nn + 1, 2, 32)
        g = rng.integers(0, 4, size=shape).astype(float) if trial % 2 else rng.random(shape)
        g[:nn][rng.random((nn, 2, 32)) < rng.random()] = np.inf  # servers off the activated nodes
        cap = float(rng.choice([0.0, 0.5, 1.0, 2.0, 3.0]))
        idx, err, s0, s1 = serve_nodes_k2(g, cap)
        ref_idx, ref_err = _enumerated(g, cap)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_array_equal(err, ref_err)
        np.testing.assert_array_equal(s0 * (nn + 1) + s1, idx)


def test_decode_nodes_int8_matches_the_codec_and_leaves_bad_batches_to_it():
    codec = NodesCodec(8, 2, 4)
    acts = np.random.default_rng(0).integers(0, 2, size=(50, 4)).astype(np.int8)
    fast = decode_nodes_int8(acts, 50, 4, codec.pow2)
    np.testing.assert_array_equal(fast, codec.decode_batch(acts, 50, lambda a, w: ValueError(w))[1])
    assert fast.dtype == np.int64
    bad = acts.copy()
    bad[3, 1] = -1
    assert decode_nodes_int8(bad, 50, 4, codec.pow2) is None
    assert decode_nodes_int8(acts[:, :3], 50, 4, codec.pow2) is None
    assert decode_nodes_int8(acts.astype(np.int64), 50, 4, codec.pow2) is None


@pytest.mark.parametrize("seed", range(3))
def test_serve_least_error_k2_matches_pick_allowed_rows(seed):
    from siftmoe_gym.envs.vector_kernels import serve_least_error_k2
    from siftmoe_gym.serving import pick_allowed_rows

    rng = np.random.default_rng(seed)
    for trial in range(300):
        nn, n = int(rng.integers(2, 10)), 32
        shape = (nn + 1, 2, n)
        g = rng.integers(0, 4, size=shape).astype(float) if trial % 2 else rng.random(shape)
        g[:nn][rng.random((nn, 2, n)) < rng.random()] = np.inf
        cap = float(rng.choice([0.0, 0.5, 1.0, 2.0, 3.0]))
        grids, count = combos(nn, 2)
        err = (g[grids[:, 0], 0] + g[grids[:, 1], 1]).T  # (n, C), inf where not allowed
        allow = np.isfinite(err)
        ec = np.broadcast_to(0.25 * count, err.shape)
        ref = pick_allowed_rows(allow, np.where(allow, err, 0.0), ec, np.where(allow, err, 0.0), np.full(n, cap))[0]
        idx, e = serve_least_error_k2(g, cap)
        np.testing.assert_array_equal(idx, ref)
        np.testing.assert_array_equal(e, err[np.arange(n), ref])


@pytest.mark.parametrize("env_id", ["siftmoe_gym/Decode-v0", "siftmoe_gym/FastFading-v0"])
def test_fused_k2_kernel_equals_the_kernels_on_node_terms(env_id):
    """serve_k2 builds each copy's terms inside the compiled loop: the same choices and error bounds, bit for
    bit, as serve_nodes_k2 / serve_least_error_k2 on node_terms' array (ties included: grid-valued gates)."""
    import gymnasium as gym

    from siftmoe_gym.envs.vector_kernels import node_terms, serve_k2, serve_least_error_k2, serving_static

    env = gym.make(env_id).unwrapped
    static = serving_static(env)
    rng = np.random.default_rng(7)
    n, nn, m = 64, env.n_experts, env.n_nodes
    for trial in range(60):
        layer = int(rng.integers(env.n_layers))
        payload = rng.integers(0, 1 << m, size=n)
        topk = np.ascontiguousarray(np.argsort(rng.random((n, nn)), axis=1)[:, :2].T)
        gates = rng.integers(1, 4, size=(2, n)) / 4.0 if trial % 2 else rng.random((2, n))
        cap = float(rng.choice([0.0, 0.05, 0.2, 1.0]))
        g = node_terms(static, layer, payload, topk, gates)
        for least_error in (False, True):
            idx, err = serve_k2(static, layer, payload, topk, gates, cap, least_error=least_error)
            ref = serve_least_error_k2(g, cap) if least_error else serve_nodes_k2(g, cap)[:2]
            np.testing.assert_array_equal(idx, ref[0])
            np.testing.assert_array_equal(err, ref[1])
