"""Vectorization: gymnasium Sync/Async, SB3 DummyVecEnv/SubprocVecEnv, and the native vector env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import siftmoe_gym  # noqa: F401

CFG = {"episode_tokens": 3}


def _actions(space, n, rng):
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(0, space.n, size=n)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return rng.integers(0, space.nvec, size=(n,) + space.shape)
    return rng.integers(0, 2, size=(n,) + space.shape).astype(np.int8)


@pytest.mark.parametrize("env_id", ["siftmoe_gym/Decode-v0", "siftmoe_gym/FastFading-v0", "siftmoe_gym/Prefill-v0",
                                    "siftmoe_gym/FastFadingDiscrete-v0"])
@pytest.mark.parametrize("action_mode", [None, "experts", "slots"])
def test_native_matches_sync(env_id, action_mode):
    kw = {} if action_mode is None else {"action_mode": action_mode}
    if "Discrete" in env_id and action_mode is not None:
        pytest.skip("discrete ids have their own action mode")
    cfg = {"prefill_tokens": 4} if "Prefill" in env_id else CFG
    n = 3
    native = gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point", config=cfg, **kw)
    sync = gym.make_vec(env_id, num_envs=n, vectorization_mode="sync", config=cfg, **kw)
    o1, _ = native.reset(seed=11)
    o2, _ = sync.reset(seed=11)
    np.testing.assert_array_equal(o1, o2)
    rng = np.random.default_rng(0)
    steps = 2 * (3 * 4 if "Prefill" not in env_id else 4 * 4) + 3  # two episodes plus autoreset
    for _ in range(steps):
        a = _actions(native.single_action_space, n, rng)
        r1 = native.step(a)
        r2 = sync.step(a)
        np.testing.assert_array_equal(r1[0], r2[0])
        np.testing.assert_array_equal(r1[1], r2[1])
        np.testing.assert_array_equal(r1[2], r2[2])
        np.testing.assert_array_equal(r1[3], r2[3])
        for key in ("energy_j", "error_bound", "assignment", "nodes_used", "activated_nodes", "latency_violation",
                    "reward_latency"):
            if key in r2[4]:
                np.testing.assert_array_equal(r1[4][key], r2[4][key])
    native.close()
    sync.close()


def test_native_dict_obs_and_bad_actions():
    envs = gym.make_vec("siftmoe_gym/Decode-v0", num_envs=2, vectorization_mode="vector_entry_point",
                        config=CFG, obs_mode="dict")
    obs, _ = envs.reset(seed=0)
    assert envs.observation_space.contains(obs)
    with pytest.raises(ValueError, match="MultiBinary"):
        envs.step(np.zeros((3, 4), np.int8))
    envs.close()


def test_async_and_sb3_vec_envs():
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    envs = gym.make_vec("siftmoe_gym/FastFading-v0", num_envs=2, vectorization_mode="async", config=CFG)
    envs.reset(seed=0)
    for _ in range(15):
        envs.step(envs.action_space.sample())
    envs.close()
    fns = [lambda: gym.make("siftmoe_gym:siftmoe_gym/Decode-v0", config=CFG) for _ in range(2)]
    for cls in (DummyVecEnv, SubprocVecEnv):
        venv = cls(fns)
        venv.reset()
        for _ in range(14):
            venv.step(np.stack([venv.action_space.sample() for _ in range(2)]))
        venv.close()
