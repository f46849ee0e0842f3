"""The environments' parts agree with their twins: each action codec's single and batched decoding and
its encoding, pick_row and pick_allowed_rows, the scalar and batched reward terms and episode metrics."""

from __future__ import annotations

import numpy as np
import pytest

from siftmoe_gym.envs.actions import ACTION_MODES, make_action_codec
from siftmoe_gym.envs.metrics import EPISODE_METRICS, add_episode_metrics, add_episode_metrics_batch
from siftmoe_gym.envs.observations import ObservationLayout, as_dict, segments
from siftmoe_gym.envs.rewards import average_penalty, reward_terms, reward_terms_batch
from siftmoe_gym.serving import pick_allowed_rows, pick_row


def _bad(actions, why):
    return ValueError(why)


@pytest.mark.parametrize("mode", ACTION_MODES)
def test_codec_batch_matches_single_and_encode_round_trips(mode):
    n, k, m = 8, 2, 4
    codec = make_action_codec(mode, n, k, m)
    codec.space.seed(0)
    acts = [codec.space.sample() for _ in range(32)]
    kind, batch = codec.decode_batch(np.stack([np.asarray(a) for a in acts]), len(acts), _bad)
    for a, b in zip(acts, batch):
        kind1, payload = codec.decode(a)
        assert kind1 == kind
        np.testing.assert_array_equal(payload, b)
    rng = np.random.default_rng(1)
    node_of = rng.integers(0, m + 1, size=n)
    for _ in range(20):
        assign = rng.integers(-1, n, size=k)
        kind, payload = codec.decode(codec.encode(assign, lambda: node_of))
        if mode == "slots":
            np.testing.assert_array_equal(np.where(payload == n, -1, payload), assign)
        elif mode == "experts":
            np.testing.assert_array_equal(np.flatnonzero(payload), np.unique(assign[assign >= 0]))
        else:
            used = {int(node_of[e]) for e in assign if e >= 0} - {0}
            assert payload == sum(1 << (u - 1) for u in used)
    with pytest.raises(ValueError, match=f"action_mode='{mode}'"):
        codec.decode(np.full(3, 7))
    with pytest.raises(ValueError, match="assignment must be"):
        codec.encode([n, 0], lambda: node_of)


def test_pick_row_matches_pick_allowed_rows():
    rng = np.random.default_rng(2)
    b, c = 400, 81
    allowed = rng.random((b, c)) < 0.5
    allowed[:, 0] = True
    err = rng.choice([0.1, 0.2, 0.3, 0.5], size=(b, c)) * rng.choice([1.0, 1.0 + 1e-14], size=(b, c))
    energy = rng.choice([1.0, 2.0, 3.0], size=(b, c))
    obj = energy + rng.choice([0.0, 0.5], size=(b, 1)) * err
    cap = rng.uniform(0.05, 0.4, size=b)
    idx, ok = pick_allowed_rows(allowed, err, energy, obj, cap)
    for i in range(b):
        assert pick_row(allowed[i], err[i], energy[i], obj[i], float(cap[i])) == (int(idx[i]), bool(ok[i]))


def test_reward_terms_batch_matches_single():
    rng = np.random.default_rng(3)
    n = 200
    energy, ref = rng.uniform(0, 1e-4, n), rng.uniform(1e-6, 1e-4, n)
    err = rng.uniform(0, 0.4, n)
    lat = np.where(rng.random(n) < 0.3, rng.uniform(0, 1e-3, n), 0.0)
    thr, eps = 0.2, 0.15
    worst = err + rng.uniform(0, 0.4, n)
    batch = reward_terms_batch(energy, ref, err, thr, eps, lat, 2e-6, 10.0, 50.0, 2e-3, worst)
    for i in range(n):
        single = reward_terms(float(energy[i]), float(ref[i]), float(err[i]), thr, eps, float(lat[i]), 2e-6, 10.0, 50.0,
                              2e-3, float(worst[i]))
        assert single == tuple(x[i].item() for x in batch)
    ratios = rng.uniform(0.5, 1.5, (5, 4))
    np.testing.assert_array_equal(average_penalty(ratios, 32, 10.0),
                                  [average_penalty(r, 32, 10.0) for r in ratios])
    assert isinstance(average_penalty(ratios[0], 32, 10.0), float)


def test_episode_metrics_batch_matches_single():
    e, et = np.array([1.0, 2.0, 0.0]), np.array([2.0, 0.0, 0.0])
    nv, nl = np.array([3, 0, 1]), np.array([0, 2, 0])
    batch: dict = {}
    add_episode_metrics_batch(batch, e, et, nv, nl, 4, 16, np.ones(3, bool))
    assert set(batch["episode_metrics"]) == set(EPISODE_METRICS) | {"_" + key for key in EPISODE_METRICS}
    for i in range(3):
        single: dict = {}
        add_episode_metrics(single, float(e[i]), float(et[i]), int(nv[i]), int(nl[i]), 4, 16)
        assert set(single) == set(EPISODE_METRICS) | {"episode_metrics"}
        assert {key: single[key] for key in EPISODE_METRICS} == {key: batch[key][i].item() for key in EPISODE_METRICS}


def test_observation_layout_slices_and_dict():
    segs = segments(8, 4, 3, 2, True, [("queues", 3, 0.0, 1.0)])
    layout = ObservationLayout(segs, "dict")
    assert [s[0] for s in segs][-5:] == ["solo_error", "progress", "gates", "slot_error", "queues"]
    assert layout.dim == 3 * 8 + 3 * 4 + 3 + 1 + 5 + 1 + 2 * 6 + 3
    n, m, nl, k = 8, 4, 3, 2  # the index table of siftmoe_gym/envs/observations.py
    assert layout.slices["slot_error"] == slice(3 * n + 4 * m + nl + 3, 3 * n + 4 * m + nl + 3 + k * (m + 2))
    assert [s[0] for s in segments(8, 4, 3, 2, False)][-2:] == ["progress", "gates"]
    assert layout.slices["solo_error"] == slice(2 * n + 3 * m + nl + 1, 2 * n + 4 * m + nl + 2)
    assert layout.slices["progress"] == slice(2 * n + 4 * m + nl + 2, 2 * n + 4 * m + nl + 3)
    assert layout.slices["gates"] == slice(2 * n + 4 * m + nl + 3, 3 * n + 4 * m + nl + 3)
    flat = np.arange(layout.dim, dtype=np.float32)
    d = as_dict(flat, layout.slices)
    assert layout.space.contains({k: np.clip(v, layout.space[k].low, layout.space[k].high) for k, v in d.items()})
    np.testing.assert_array_equal(np.concatenate([d[name] for name in layout.slices]), flat)
    assert list(d) == list(layout.space.spaces) == sorted(layout.slices)  # the Dict space's (sorted) order


def test_gates_block_holds_each_top_k_experts_share():
    """The gates block: applied gate over the token's gate sum at each top-k expert's index (a trace's scaled
    gates, e.g. DeepSeek-V2's x16, land in [0, 1]); a repeated expert gets the sum of its slots."""
    import gymnasium as gym

    env = gym.make("siftmoe_gym/Decode-v0")
    obs, _ = env.reset(seed=4)
    u = env.unwrapped
    g = obs[u.obs_slices["gates"]]
    want = np.zeros(u.n_experts)
    gates, topk = u._gates[0], u._topk[0]
    for j in range(len(topk)):
        want[topk[j]] += gates[j] / gates.sum()
    np.testing.assert_allclose(g, want, rtol=1e-6)
    assert g.sum() == pytest.approx(1.0, rel=1e-6) and np.count_nonzero(g) == len(set(topk.tolist()))
    from siftmoe_gym.envs.observations import static_features

    layout = u.obs_layout
    tab = u._features
    row = static_features(layout, tab, np.full((1, 8), 0.1), np.array([[3, 3]]), np.array([0]), np.array([1.0]),
                          np.array([[8.0, 8.0]]), np.zeros((1, 4)), None, None, np.array([1.0]), np.array([0.0]))
    assert row[0, layout.slices["gates"]][3] == pytest.approx(1.0) and row[0, layout.slices["gates"]].sum() == pytest.approx(1.0)
