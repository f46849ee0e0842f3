"""The native Prefill-v0 vector env (siftmoe_gym.envs.prefill_vector) against SyncVectorEnv over the single
environment: observations, rewards, flags and every info key, bit for bit."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import siftmoe_gym  # noqa: F401
from siftmoe_gym.envs.prefill_vector import PrefillVectorEnv


def _actions(space, n, rng):
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(0, space.n, size=n)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return rng.integers(0, space.nvec, size=(n,) + space.shape)
    return rng.integers(0, 2, size=(n,) + space.shape).astype(np.int8)


def _same(a, b, where):
    if isinstance(b, tuple):
        assert isinstance(a, tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
        return
    if isinstance(b, dict):
        # rl_zoo3, once imported (other test modules do), patches TimeLimit to add "TimeLimit.truncated" to the
        # single envs' infos: a third-party key the SyncVectorEnv route then carries and the native env has not
        b = {key: v for key, v in b.items() if "TimeLimit." not in key}
        assert set(a) == set(b), (where, sorted(set(a) ^ set(b)))
        for key in b:
            _same(a[key], b[key], f"{where}.{key}")
        return
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (where, a.dtype, b.dtype, a.shape, b.shape)
    assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), where


def _compare(kw, steps, seed=11, n=3, max_episode_steps=None):
    extra = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    native = gym.make_vec("siftmoe_gym/Prefill-v0", num_envs=n, vectorization_mode="vector_entry_point", **kw, **extra)
    sync = gym.make_vec("siftmoe_gym/Prefill-v0", num_envs=n, vectorization_mode="sync", **kw, **extra)
    assert isinstance(native.unwrapped, PrefillVectorEnv)
    r1, r2 = native.reset(seed=seed), sync.reset(seed=seed)
    _same(r1, r2, "reset")
    rng = np.random.default_rng(seed)
    for step in range(steps):
        a = _actions(native.single_action_space, n, rng)
        _same(native.step(a), sync.step(a), f"step {step}")
    native.close()
    sync.close()


@pytest.mark.parametrize("mode", ["nodes", "discrete", "experts", "slots"])
def test_prefill_vector_matches_sync_in_every_action_mode(mode):
    # two blocks of T=4 tokens x L=4 layers and the autoreset step between them, and a third
    _compare({"config": {"prefill_tokens": 4}, "action_mode": mode}, 2 * 16 + 5)


def test_prefill_vector_matches_sync_variants():
    # dict observations, tight budgets (accuracy costs), compute energy 0, links that break the budget
    _compare({"config": {"prefill_tokens": 3, "eps_rel": 0.05, "compute_energy_j": 0.0,
                         "distance_range_m": (150.0, 600.0)}, "obs_mode": "dict"}, 2 * 12 + 3, seed=4)
    # a system with k = 3 and local experts, truncated by max_episode_steps
    _compare({"config": {"prefill_tokens": 5, "num_experts": 10, "top_k": 3, "num_nodes": 5, "local_capacity": 2}},
             25, seed=2, max_episode_steps=7)


def test_prefill_vector_above_the_table_matches_sync():
    cfg = {"prefill_tokens": 3, "num_experts": 64, "top_k": 8, "num_layers": 2, "num_nodes": 8, "local_capacity": 4,
           "hidden_size": 2048, "model": {"num_clusters": 8, "calibration_tokens": 64}}
    _compare({"config": cfg}, 2 * 6 + 2, n=2)
    _compare({"config": cfg, "action_mode": "slots"}, 7, n=2)


def test_prefill_vector_rejects_a_bad_batch_before_moving():
    envs = gym.make_vec("siftmoe_gym/Prefill-v0", num_envs=2, vectorization_mode="vector_entry_point",
                        config={"prefill_tokens": 3})
    with pytest.raises(gym.error.ResetNeeded):
        envs.step(np.zeros((2, 4), np.int8))
    envs.reset(seed=0)
    before = envs.unwrapped._loads.copy()
    with pytest.raises(ValueError, match="MultiBinary"):
        envs.step(np.full((2, 4), 2, np.int8))
    assert np.array_equal(envs.unwrapped._loads, before) and envs.unwrapped._s == 0
    envs.close()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_prefill_vector_matches_sync_over_seeds(seed):
    _compare({"config": {"prefill_tokens": 2}}, 2 * 8 + 2, seed=seed, n=8)
