"""Hardening of the environments' entry points: the native vector env keeps its copies in step on a rejected
batch, honours ``max_episode_steps``, gives SyncVectorEnv's ``info`` and errors, pickles; episode metrics reach
SB3's ``Monitor`` whichever way an episode ends."""

from __future__ import annotations

import copy
import pickle

import gymnasium as gym
import numpy as np
import pytest

import siftmoe_gym  # noqa: F401  (registers the ids)
from siftmoe_gym.envs import ENV_IDS
from siftmoe_gym.envs.metrics import EPISODE_METRICS

SMALL = {"episode_tokens": 2, "num_layers": 2, "model": {"calibration_tokens": 32}}
SMALL_PREFILL = {"prefill_tokens": 2, "num_layers": 2, "model": {"calibration_tokens": 32}}
BIG_TABLE = {"num_experts": 16, "top_k": 3, "num_nodes": 3}  # (N+1)^k = 4913 > 4096: copies stepped in turn


def _cfg(env_id: str, **extra) -> dict:
    return {**(SMALL_PREFILL if "Prefill" in env_id else SMALL), **extra}


def _valid(space, n, rng):
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(0, space.n, size=n)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return rng.integers(0, space.nvec, size=(n,) + space.shape)
    return rng.integers(0, 2, size=(n,) + space.shape).astype(np.int8)


def _broken(actions, space):
    """``actions`` with the last row out of range."""
    bad = np.array(actions, copy=True)
    if isinstance(space, gym.spaces.Discrete):
        bad[-1] = space.n
    elif isinstance(space, gym.spaces.MultiDiscrete):
        bad[-1, 0] = space.nvec[0]
    else:
        bad[-1, 0] = 5
    return bad


def _assert_same(a, b, where=""):
    """Equal values, dtypes and keys (recursively through dicts), NaN-aware."""
    if isinstance(a, dict):
        assert isinstance(b, dict), where
        assert set(a) == set(b), f"{where}: keys {sorted(set(a) ^ set(b))} differ"
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
        return
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
        return
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, f"{where}: shape {a.shape} != {b.shape}"
    assert a.dtype == b.dtype, f"{where}: dtype {a.dtype} != {b.dtype}"
    if a.dtype == object:
        assert all(np.array_equal(x, y) for x, y in zip(a.ravel(), b.ravel())), where
    else:
        np.testing.assert_array_equal(a, b, err_msg=where)


def _assert_same_step(r1, r2, where=""):
    for i, name in enumerate(("obs", "reward", "terminated", "truncated", "info")):
        _assert_same(r1[i], r2[i], f"{where} {name}")


# ----------------------------------------------------------- rejected batch
@pytest.mark.parametrize("env_id, extra", [
    ("siftmoe_gym/Prefill-v0", {}),
    ("siftmoe_gym/PrefillDiscrete-v0", {}),
    ("siftmoe_gym/Decode-v0", BIG_TABLE),
    ("siftmoe_gym/FastFading-v0", BIG_TABLE),
    ("siftmoe_gym/Decode-v0", {}),  # batched (numpy) path
    ("siftmoe_gym/FastFadingDiscrete-v0", {}),
])
@pytest.mark.parametrize("action_mode", [None, "slots"])
def test_rejected_batch_leaves_every_copy_as_it_was(env_id, extra, action_mode):
    """The issue's example: copies 0 and 1 used to step before copy 2's bad action raised, and 8 valid steps later
    ``RuntimeError: call reset() before step()``.  Now the whole batch is checked first: after the rejected batch
    the next valid steps equal a fresh env's, stepped the same way."""
    if action_mode is not None and "Discrete" in env_id:
        pytest.skip("discrete ids have their own action mode")
    kw = {} if action_mode is None else {"action_mode": action_mode}
    cfg = _cfg(env_id, **extra)
    make = lambda: gym.make_vec(env_id, 3, vectorization_mode="vector_entry_point", config=cfg, **kw)  # noqa: E731
    env, fresh = make(), make()
    if "Prefill" not in env_id and not extra and action_mode is None:
        assert env.unwrapped._batched
    elif extra or "Prefill" in env_id:
        assert not env.unwrapped._batched
    _assert_same(env.reset(seed=5), fresh.reset(seed=5))
    rng = np.random.default_rng(0)
    space = env.single_action_space
    steps = 3 * (2 * 2 if "Prefill" in env_id else 2 * 2) + 2  # three episodes and their autoresets
    for t in range(steps):
        acts = _valid(space, 3, rng)
        if t in (1, 5):
            with pytest.raises(ValueError, match="invalid actions"):
                env.step(_broken(acts, space))
            with pytest.raises(ValueError, match="invalid actions"):
                env.step(acts[:2])  # wrong number of rows
        _assert_same_step(env.step(acts), fresh.step(acts), f"step {t}")
    env.close()
    fresh.close()


# ----------------------------------------------------------- max_episode_steps
@pytest.mark.parametrize("env_id", ["siftmoe_gym/Decode-v0", "siftmoe_gym/Prefill-v0", "siftmoe_gym/FastFading-v0"])
@pytest.mark.parametrize("limit", [3, 4, 9])
def test_max_episode_steps_truncates_as_sync_time_limit(env_id, limit):
    """``gym.make_vec(..., max_episode_steps=k)`` used to raise TypeError; it now truncates exactly as a
    SyncVectorEnv over ``gym.make(id, max_episode_steps=k)`` (flags, autoreset, info), whether the limit falls
    before, on or after the episode's end (4 steps here)."""
    cfg = _cfg(env_id)
    n = 2
    native = gym.make_vec(env_id, n, vectorization_mode="vector_entry_point", config=cfg, max_episode_steps=limit)
    # Gymnasium's own TimeLimit (importing rl_zoo3 replaces gymnasium.wrappers.TimeLimit process-wide by a
    # subclass with gym 0.21's semantics, so the reference is built with the class itself)
    time_limit = gym.wrappers.TimeLimit
    while time_limit.__module__ != "gymnasium.wrappers.common":
        time_limit = time_limit.__bases__[0]
    sync = gym.vector.SyncVectorEnv([lambda: time_limit(gym.make(env_id, config=cfg), limit)] * n)
    _assert_same(native.reset(seed=3), sync.reset(seed=3), "reset")
    rng = np.random.default_rng(1)
    saw_trunc = False
    for t in range(14):
        acts = _valid(native.single_action_space, n, rng)
        r1, r2 = native.step(acts), sync.step(acts)
        _assert_same_step(r1, r2, f"step {t}")
        saw_trunc |= bool(r1[3].any())
    assert saw_trunc == (limit <= 4)
    with pytest.raises(ValueError, match="max_episode_steps"):
        gym.make_vec(env_id, n, vectorization_mode="vector_entry_point", config=cfg, max_episode_steps=0)


# ----------------------------------------------------------- info parity with SyncVectorEnv
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_native_info_equals_sync_info(env_id):
    """Reset info, every step's info (``computed``, the episode metrics flat and nested, every ``_key`` mask),
    the episode's end and the autoreset step: the same keys, values and dtypes as SyncVectorEnv's."""
    cfg = _cfg(env_id)
    n = 3
    native = gym.make_vec(env_id, n, vectorization_mode="vector_entry_point", config=cfg)
    sync = gym.vector.SyncVectorEnv([lambda: gym.make(env_id, config=cfg)] * n)
    o1, i1 = native.reset(seed=7)
    o2, i2 = sync.reset(seed=7)
    assert set(i1) == {"layer", "_layer", "token", "_token"}
    _assert_same((o1, i1), (o2, i2), "reset")
    rng = np.random.default_rng(2)
    ends = 0
    for t in range(11):  # two 4-step episodes, their autoreset steps, and more
        acts = _valid(native.single_action_space, n, rng)
        r1, r2 = native.step(acts), sync.step(acts)
        _assert_same_step(r1, r2, f"step {t}")
        info = r1[4]
        if "energy_j" not in info:  # the autoreset step: the reset's info
            assert set(info) == {"layer", "_layer", "token", "_token"} and not r1[1].any()
        else:
            assert "computed" in info and set(EPISODE_METRICS) <= set(info)
            assert set(info["episode_metrics"]) == set(EPISODE_METRICS) | {"_" + k for k in EPISODE_METRICS}
        ends += int(r1[2].all())
    assert ends == 2


def test_native_info_equals_sync_info_other_modes():
    for mode in ("experts", "slots"):
        env_id = "siftmoe_gym/Decode-v0"
        native = gym.make_vec(env_id, 2, vectorization_mode="vector_entry_point", config=SMALL, action_mode=mode,
                              obs_mode="dict")
        sync = gym.vector.SyncVectorEnv([lambda: gym.make(env_id, config=SMALL, action_mode=mode, obs_mode="dict")] * 2)
        _assert_same(native.reset(seed=1), sync.reset(seed=1))
        rng = np.random.default_rng(3)
        for t in range(6):
            acts = _valid(native.single_action_space, 2, rng)
            _assert_same_step(native.step(acts), sync.step(acts), f"{mode} step {t}")


# ----------------------------------------------------------- step before reset
@pytest.mark.parametrize("env_id", ["siftmoe_gym/Decode-v0", "siftmoe_gym/Prefill-v0"])
def test_step_before_reset_raises_what_sync_raises(env_id):
    cfg = _cfg(env_id)
    native = gym.make_vec(env_id, 2, vectorization_mode="vector_entry_point", config=cfg)
    sync = gym.make_vec(env_id, 2, vectorization_mode="sync", config=cfg)
    acts = native.action_space.sample()
    with pytest.raises(gym.error.ResetNeeded) as want:
        sync.step(acts)
    with pytest.raises(gym.error.ResetNeeded) as got:
        native.step(acts)
    assert str(got.value) == str(want.value) == "Cannot call env.step() before calling env.reset()"


# ----------------------------------------------------------- pickling
def test_many_copies_pickle_and_deepcopy():
    """With more than 64 copies the reset builds chunks on a thread pool, which used to stay an attribute:
    deepcopy and pickle raised ``TypeError: cannot pickle '_queue.SimpleQueue'``."""
    env = gym.make_vec("siftmoe_gym/Decode-v0", 200, vectorization_mode="vector_entry_point", config=SMALL,
                       reset_threads=2)
    env.reset(seed=0)
    assert env.unwrapped._pool is not None
    twins = [copy.deepcopy(env), pickle.loads(pickle.dumps(env))]
    rng = np.random.default_rng(4)
    for t in range(10):  # includes an autoreset (the pool rebuilt lazily in the copies)
        acts = _valid(env.single_action_space, 200, rng)
        ref = env.step(acts)
        for twin in twins:
            _assert_same_step(twin.step(acts), ref, f"step {t}")
    for e in [env, *twins]:
        e.close()


# ----------------------------------------------------------- episode metrics and truncation
@pytest.mark.parametrize("env_id", ["siftmoe_gym/Decode-v0", "siftmoe_gym/Prefill-v0", "siftmoe_gym/FastFading-v0"])
def test_monitor_info_keywords_on_truncation(env_id):
    """``Monitor(gym.make(id, max_episode_steps=k), info_keywords=...)`` used to raise KeyError at truncation:
    every step now carries the episode's metrics so far."""
    from stable_baselines3.common.monitor import Monitor

    env = Monitor(gym.make(env_id, config=_cfg(env_id), max_episode_steps=3),
                  info_keywords=("saving_pct", "violation_rate", "episode_metrics"))
    env.reset(seed=0)
    env.action_space.seed(0)
    energy = topk = 0.0
    for t in range(3):
        _, _, term, trunc, info = env.step(env.action_space.sample())
        energy += info["energy_j"]
        topk += info["topk_energy_j"]
    assert trunc and not term
    ep = info["episode"]
    assert ep["l"] == 3 and ep["saving_pct"] == info["saving_pct"] == info["episode_metrics"]["saving_pct"]
    n_layers = env.unwrapped.n_layers
    assert info["energy_per_token_j"] == pytest.approx(energy / (3 / n_layers))
    if "Prefill" not in env_id:  # Prefill's reference is its reward scale, not the marginal top-k energy
        assert info["saving_pct"] == pytest.approx(100.0 * (1.0 - energy / topk))


def test_sb3_native_adapter_truncates():
    from siftmoe_gym.envs.sb3_vec import SiftMoESB3VecEnv

    venv = SiftMoESB3VecEnv("siftmoe_gym/Decode-v0", 2, config=SMALL, max_episode_steps=3, step_info_keys="all")
    venv.seed(0)
    venv.reset()
    for t in range(3):
        _, _, dones, infos = venv.step(np.ones((2, 4), np.int8))
    assert dones.all() and all(i["TimeLimit.truncated"] for i in infos)
    assert all(i["episode"]["l"] == 3 and "saving_pct" in i["episode_metrics"] for i in infos)
    venv.close()


# ----------------------------------------------------------- reset options
@pytest.mark.parametrize("env_id", ["siftmoe_gym/Decode-v0", "siftmoe_gym/Prefill-v0", "siftmoe_gym/FastFading-v0"])
def test_reset_options_config_is_not_lost(env_id):
    """``reset(options={"config": {"reward_floor_j": ...}})`` used to be ignored (the reward floor was only
    derived when the system changed): now the env steps as one made with that config, single and vector."""
    base, new = _cfg(env_id), {"reward_floor_j": 1e-3, "penalty": 3.0}
    for make in (lambda cfg: gym.make(env_id, config=cfg),
                 lambda cfg: gym.make_vec(env_id, 2, vectorization_mode="vector_entry_point", config=cfg)):
        env, ref = make(base), make({**base, **new})
        env.reset(seed=0)
        _assert_same(env.reset(seed=4, options={"config": new}), ref.reset(seed=4))
        rng = np.random.default_rng(5)
        vector = isinstance(env, gym.vector.VectorEnv)
        space = env.single_action_space if vector else env.action_space
        for t in range(4):
            acts = _valid(space, 2, rng) if vector else _valid(space, 1, rng)[0]
            _assert_same_step(env.step(acts), ref.step(acts), f"step {t}")
    with pytest.raises(ValueError, match="reset options must be a dict"):
        gym.make(env_id, config=base).reset(options=["config"])
    with pytest.raises(ValueError, match=r"unknown reset option\(s\) \['seed'\]"):
        gym.make_vec(env_id, 2, vectorization_mode="vector_entry_point", config=base).reset(options={"seed": 1})


@pytest.mark.parametrize("env_id", ["siftmoe_gym/Decode-v0", "siftmoe_gym/Prefill-v0"])
def test_vector_reset_mask_is_refused_by_name_and_changes_nothing(env_id):
    """Gymnasium's ``reset_mask`` (partial resets) is refused with a message naming it and the sync alternative;
    the copies keep their episodes (the next step equals that of an env never asked)."""
    envs, ref = (gym.make_vec(env_id, 3, vectorization_mode="vector_entry_point", config=_cfg(env_id)) for _ in range(2))
    envs.reset(seed=7)
    ref.reset(seed=7)
    import types

    for options in ({"reset_mask": np.array([True, False, False])},
                    types.MappingProxyType({"reset_mask": np.ones(3, dtype=bool)})):  # any Mapping, as reset_config takes
        with pytest.raises(ValueError, match=r"reset_mask is not supported.*vectorization_mode='sync'"):
            envs.reset(seed=1, options=options)
    acts = _valid(envs.single_action_space, 3, np.random.default_rng(0))
    _assert_same_step(envs.step(acts), ref.step(acts), "after the refused reset")


@pytest.mark.parametrize("env_id", ["siftmoe_gym/Decode-v0", "siftmoe_gym/Prefill-v0", "siftmoe_gym/FastFading-v0"])
def test_dict_observations_keep_the_spaces_key_order(env_id):
    """obs_mode="dict": the single env's observation and the native vector env's batch list their keys in the
    Dict space's order, as a SyncVectorEnv does (they used to follow the layout's order)."""
    cfg = _cfg(env_id)
    single = gym.make(env_id, config=cfg, obs_mode="dict")
    obs, _ = single.reset(seed=0)
    assert list(obs) == list(single.observation_space.spaces)
    native = gym.make_vec(env_id, 2, vectorization_mode="vector_entry_point", config=cfg, obs_mode="dict")
    sync = gym.make_vec(env_id, 2, vectorization_mode="sync", config=cfg, obs_mode="dict")
    for (o1, _), (o2, _) in [(native.reset(seed=1), sync.reset(seed=1))]:
        assert list(o1) == list(o2) == list(native.single_observation_space.spaces)
    acts = _valid(native.single_action_space, 2, np.random.default_rng(0))
    o1, o2 = native.step(acts)[0], sync.step(acts)[0]
    assert list(o1) == list(o2)
    for key in o1:
        np.testing.assert_array_equal(o1[key], o2[key])


def test_reset_refuses_a_space_change_before_building_the_new_system(monkeypatch):
    """A reset config that changes num_experts/top_k/num_layers/num_nodes is refused from the config alone, before
    the new system (for a preset, seconds of calibration) is built; the env steps on as before."""
    import siftmoe_gym.envs.base as base

    env, ref = (gym.make("siftmoe_gym/Decode-v0") for _ in range(2))
    env.reset(seed=2)
    ref.reset(seed=2)
    built = []
    monkeypatch.setattr(base, "WideSystem", lambda *a, **k: built.append(1) or pytest.fail("system built"))
    for spec in ("qwen3-235b-a22b", {"num_experts": 16}, {"preset": "olmoe"}, {"top_k": 1}):
        with pytest.raises(ValueError, match="reset options cannot change"):
            env.reset(seed=3, options={"config": spec})
    assert not built
    monkeypatch.undo()
    acts = env.action_space.sample()
    _assert_same_step(env.step(acts), ref.step(acts), "after the refused resets")


def test_an_env_key_given_twice_with_two_values_is_refused():
    """episode_tokens / penalty as keyword and in config: equal values are accepted, different ones refused (one
    of them used to win silently), single and native vector env."""
    assert gym.make("siftmoe_gym/Decode-v0", config={"episode_tokens": 8}, episode_tokens=8).unwrapped.env_config[
        "episode_tokens"] == 8
    for make in (lambda **kw: gym.make("siftmoe_gym/Decode-v0", **kw),
                 lambda **kw: gym.make_vec("siftmoe_gym/Decode-v0", 2, vectorization_mode="vector_entry_point", **kw)):
        with pytest.raises(ValueError, match=r"episode_tokens given twice: episode_tokens=8 and config\['episode_tokens'\]=4"):
            make(config={"episode_tokens": 4}, episode_tokens=8)
        with pytest.raises(ValueError, match="penalty given twice"):
            make(config={"penalty": 2.0}, penalty=3.0)


def test_a_reset_refused_for_its_seed_does_not_apply_its_config():
    """reset(seed=-1, options={"config": ...}) is refused for the seed before the config is applied (the new config
    used to stay in force)."""
    env = gym.make("siftmoe_gym/Decode-v0")
    env.reset(seed=0)
    with pytest.raises(Exception, match="Seed must be greater or equal to zero"):
        env.reset(seed=-1, options={"config": {"eps_rel": 0.5}})
    assert env.unwrapped.system.config.eps_rel == 0.25
