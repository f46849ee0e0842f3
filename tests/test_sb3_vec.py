"""SB3 VecEnv adapter over the native batched environment: exact SB3 semantics, same rollouts as DummyVecEnv."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")

from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv, VecCheckNan, VecMonitor  # noqa: E402

import siftmoe_gym  # noqa: E402,F401
from siftmoe_gym.envs.sb3_vec import EPISODE_METRIC_KEYS, SiftMoESB3VecEnv, make_sb3_vec_env  # noqa: E402

CFG = {"episode_tokens": 2}  # 8 steps per episode: rollouts cross several episode ends


def _ppo_first_rollout(venv, seed=0, n_steps=20):
    torch.set_num_threads(1)
    model = PPO("MultiInputPolicy" if isinstance(venv.observation_space, gym.spaces.Dict) else "MlpPolicy", venv,
                n_steps=n_steps, batch_size=n_steps * venv.num_envs, n_epochs=1, seed=seed, device="cpu")
    model.learn(total_timesteps=n_steps * venv.num_envs)
    buf = model.rollout_buffer
    eps = [(e["r"], e["l"]) for e in model.ep_info_buffer]
    out = {"actions": buf.actions.copy(), "rewards": buf.rewards.copy(), "episode_starts": buf.episode_starts.copy(),
           "values": buf.values.copy(), "log_probs": buf.log_probs.copy(), "eps": eps}
    if isinstance(buf.observations, dict):
        out.update({f"obs_{k}": v.copy() for k, v in buf.observations.items()})
    else:
        out["obs"] = buf.observations.copy()
    venv.close()
    return out


@pytest.mark.parametrize("env_id, kw", [
    ("siftmoe_gym/Decode-v0", {}),
    ("siftmoe_gym/FastFadingDiscrete-v0", {}),
    ("siftmoe_gym/Decode-v0", {"obs_mode": "dict"}),
])
def test_ppo_first_rollout_native_equals_dummy(env_id, kw):
    native = _ppo_first_rollout(make_sb3_vec_env(env_id, 3, seed=7, vec="native", config=CFG, **kw))
    dummy = _ppo_first_rollout(make_sb3_vec_env(env_id, 3, seed=7, vec="dummy", config=CFG, **kw))
    assert native.keys() == dummy.keys()
    assert len(native["eps"]) >= 6  # episodes ended inside the rollout and were logged
    for key in native:
        np.testing.assert_array_equal(np.asarray(native[key]), np.asarray(dummy[key]), err_msg=key)


def test_step_semantics_match_dummy_vec_env():
    """Observations, float32 rewards, dones, terminal_observation and episode infos equal DummyVecEnv's."""
    n = 3
    native = make_sb3_vec_env("siftmoe_gym/FastFading-v0", n, seed=3, vec="native", config=CFG,
                              info_keywords=("saving_pct", "mean_error_ratio"))
    dummy = make_sb3_vec_env("siftmoe_gym/FastFading-v0", n, seed=3, vec="dummy", config=CFG,
                             info_keywords=("saving_pct", "mean_error_ratio"))
    np.testing.assert_array_equal(native.reset(), dummy.reset())
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(3 * 8 + 2):
        a = rng.integers(0, 2, size=(n, 4)).astype(np.float32)  # PPO hands MultiBinary actions as floats
        o1, r1, d1, i1 = native.step(a)
        o2, r2, d2, i2 = dummy.step(a)
        np.testing.assert_array_equal(o1, o2)
        assert r1.dtype == r2.dtype == np.float32
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(d1, d2)
        for a_, b_ in zip(i1, i2):
            assert a_["TimeLimit.truncated"] == b_["TimeLimit.truncated"]
            assert ("terminal_observation" in a_) == ("terminal_observation" in b_)
            if "terminal_observation" in b_:
                ends += 1
                np.testing.assert_array_equal(a_["terminal_observation"], b_["terminal_observation"])
                assert a_["episode"]["r"] == b_["episode"]["r"] and a_["episode"]["l"] == b_["episode"]["l"] == 8
                assert a_["episode"]["saving_pct"] == b_["episode"]["saving_pct"]
                np.testing.assert_array_equal(a_["episode"]["mean_error_ratio"], b_["episode"]["mean_error_ratio"])
                for key in EPISODE_METRIC_KEYS:
                    assert a_[key] == b_[key] == b_["episode_metrics"][key], key
    assert ends == 3 * n


def test_terminal_observation_is_last_observation_of_single_env():
    venv = SiftMoESB3VecEnv("siftmoe_gym/Decode-v0", 2, config=CFG)
    venv.seed(5)
    obs = venv.reset()
    singles = [gym.make("siftmoe_gym/Decode-v0", config=CFG) for _ in range(2)]
    for i, env in enumerate(singles):
        o, _ = env.reset(seed=5 + i)
        np.testing.assert_array_equal(obs[i], o)
    act = np.ones((2, 4), dtype=np.int8)
    for step in range(8):
        obs, rew, dones, infos = venv.step(act)
        for i, env in enumerate(singles):
            o, r, term, trunc, info = env.step(act[i])
            assert dones[i] == term
            np.testing.assert_array_equal(np.float32(r), rew[i])
            if term:
                np.testing.assert_array_equal(infos[i]["terminal_observation"], o)
                assert info["saving_pct"] == infos[i]["saving_pct"]
                o, _ = env.reset()  # next episode from the copy's own generator
            np.testing.assert_array_equal(obs[i], o)
    assert dones.all() and all("episode" in d for d in infos)


def test_sb3_checks_and_short_learn():
    venv = VecCheckNan(make_sb3_vec_env("siftmoe_gym/Decode-v0", 8, seed=0, config=CFG), raise_exception=True)
    model = PPO("MlpPolicy", venv, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=512)
    assert len(model.ep_info_buffer) > 0  # Monitor-style episode stats reached the logger
    assert {"r", "l", "t"} <= set(model.ep_info_buffer[-1])
    # wrapping a VecMonitor on top still works (it adds its own episode dict)
    with pytest.warns(UserWarning, match="Monitor"):  # SB3 notes that the adapter already writes Monitor's stats
        mon = VecMonitor(make_sb3_vec_env("siftmoe_gym/DecodeDiscrete-v0", 4, seed=0, config=CFG))
    mon.reset()
    for _ in range(8):
        _, _, dones, infos = mon.step(np.zeros(4, dtype=np.int64))
    assert dones.all() and "episode" in infos[0]
    mon.close()


def test_attributes_methods_and_seeding():
    venv = make_sb3_vec_env("siftmoe_gym/Decode-v0", 4, seed=1, config=CFG)
    assert venv.num_envs == 4
    assert venv.observation_space == gym.make("siftmoe_gym/Decode-v0", config=CFG).observation_space
    assert venv.get_attr("action_mode") == ["nodes"] * 4
    assert venv.get_attr("render_mode", indices=[0, 2]) == [None, None]
    assert venv.env_is_wrapped(__import__("stable_baselines3.common.monitor", fromlist=["Monitor"]).Monitor) == [True] * 4
    assert venv.env_method("default_config", indices=[0, 3]) == [gym.make("siftmoe_gym/Decode-v0").unwrapped.default_config()] * 2
    with pytest.raises(ValueError):
        venv.set_attr("action_mode", "nodes", indices=[1])
    assert venv.get_images() == [None] * 4
    a = venv.reset()
    venv.seed(1)
    b = venv.reset()
    np.testing.assert_array_equal(a, b)
    c = venv.reset()  # no seed: continues each copy's generator
    assert not np.array_equal(b, c)
    with pytest.raises(ValueError, match="vec"):
        make_sb3_vec_env("siftmoe_gym/Decode-v0", 2, vec="bogus")
    venv.close()


def test_subproc_route_matches_native():
    n = 2
    native = make_sb3_vec_env("siftmoe_gym/Decode-v0", n, seed=11, vec="native", config=CFG)
    sub = make_sb3_vec_env("siftmoe_gym/Decode-v0", n, seed=11, vec="subproc", config=CFG)
    try:
        np.testing.assert_array_equal(native.reset(), sub.reset())
        act = np.ones((n, 4), dtype=np.int8)
        for _ in range(9):
            o1, r1, d1, _ = native.step(act)
            o2, r2, d2, _ = sub.step(act)
            np.testing.assert_array_equal(o1, o2)
            np.testing.assert_array_equal(r1, np.asarray(r2).astype(np.float32))  # SubprocVecEnv returns float64
            np.testing.assert_array_equal(d1, d2)
    finally:
        sub.close()
        native.close()


def test_single_env_episode_metrics():
    env = gym.make("siftmoe_gym/Prefill-v0", config={"prefill_tokens": 2})
    env.reset(seed=0)
    done, info, total, steps = False, {}, 0.0, 0
    n_layers = env.unwrapped.n_layers
    while not done:
        _, _, term, trunc, info = env.step(env.action_space.sample())
        total += info["energy_j"]
        steps += 1
        done = term or trunc
        if not done:  # every step carries the metrics so far (steps / L tokens)
            assert info["episode_metrics"]["saving_pct"] == info["saving_pct"]
            assert np.isclose(info["energy_per_token_j"], total / (steps / n_layers))
    assert set(EPISODE_METRIC_KEYS) <= set(info) and info["episode_metrics"]["saving_pct"] == info["saving_pct"]
    assert np.isclose(info["energy_per_token_j"], total / 2)
    assert 0.0 <= info["violation_rate"] <= 1.0
