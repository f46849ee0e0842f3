"""More than 16 edge nodes: node sets as a factored action (per-node bits), no 2^M tables, the vector env
bit for bit, Discrete(2**M) refused with the way out."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import siftmoe_gym  # noqa: F401
from siftmoe_gym.config import SystemConfig
from siftmoe_gym.envs.actions import DISCRETE_MAX_NODES, node_sets
from siftmoe_gym.serving import solve_decode

M = 20
CFG = {"num_nodes": M, "num_experts": 24, "top_k": 2, "num_layers": 2, "episode_tokens": 3,
       "distance_range_m": (30.0, 250.0), "model": {"calibration_tokens": 64}}


def _close(a, b):
    return abs(a - b) <= 1e-9 * max(abs(a), abs(b)) + 1e-20


def test_config_range_and_discrete_refusal():
    assert SystemConfig.from_dict({"num_nodes": 32, "num_experts": 64}).num_nodes == 32
    with pytest.raises(ValueError, match="num_nodes"):
        SystemConfig.from_dict({"num_nodes": 33, "num_experts": 64})
    with pytest.raises(ValueError, match="action_mode='nodes'"):
        gym.make("siftmoe_gym/Decode-v0", config=CFG, action_mode="discrete")
    env = gym.make("siftmoe_gym/Decode-v0", config=dict(CFG, num_nodes=DISCRETE_MAX_NODES), action_mode="discrete")
    assert env.action_space.n == 2 ** DISCRETE_MAX_NODES


def test_node_sets_decodes_bitmasks():
    masks = np.array([0, 1, 5, (1 << 19) | 2])
    sets = node_sets(masks, M)
    assert sets.shape == (4, M + 1) and sets[:, 0].all()
    assert np.flatnonzero(sets[2]).tolist() == [0, 1, 3]
    assert np.flatnonzero(sets[3]).tolist() == [0, 2, 20]
    with pytest.raises(ValueError, match="n_nodes"):
        node_sets(1, 63)


@pytest.mark.parametrize("env_id", ["siftmoe_gym/Decode-v0", "siftmoe_gym/Prefill-v0", "siftmoe_gym/FastFading-v0"])
def test_factored_node_actions_past_16_nodes(env_id):
    cfg = dict(CFG)
    if "Prefill" in env_id:
        cfg.pop("episode_tokens")
        cfg["prefill_tokens"] = 3
    env = gym.make(env_id, config=cfg)
    u = env.unwrapped
    assert env.action_space == gym.spaces.MultiBinary(M) and u._subset_nodes is None
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(10):
        a = env.action_space.sample()
        _, _, term, _, info = env.step(a)
        assert np.array_equal(info["activated_nodes"], np.concatenate([[True], a.astype(bool)]))
        if term:
            env.reset()
    if "Decode" in env_id:  # the optimum's node set reproduces its energy
        env.reset(seed=1)
        best = solve_decode(u.instance)
        _, _, _, _, info = env.step(u.encode_action(best.assignment))
        assert _close(info["energy_j"], best.energy_j)


@pytest.mark.parametrize("env_id", ["siftmoe_gym/Decode-v0", "siftmoe_gym/FastFading-v0"])
def test_native_vector_env_matches_sync_past_16_nodes(env_id):
    n = 3
    native = gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point", config=CFG)
    sync = gym.make_vec(env_id, num_envs=n, vectorization_mode="sync", config=CFG)
    o1, _ = native.reset(seed=5)
    o2, _ = sync.reset(seed=5)
    np.testing.assert_array_equal(o1, o2)
    rng = np.random.default_rng(0)
    for _ in range(2 * 3 * 2 + 2):
        a = rng.integers(0, 2, size=(n, M)).astype(np.int8)
        r1, r2 = native.step(a), sync.step(a)
        for x, y in zip(r1[:4], r2[:4]):
            np.testing.assert_array_equal(x, y)
        assert set(r1[4]) == set(r2[4])
        for key in ("energy_j", "error_bound", "assignment", "activated_nodes", "latency_violation", "cost"):
            if key in r2[4]:
                np.testing.assert_array_equal(r1[4][key], r2[4][key])
    native.close()
    sync.close()
