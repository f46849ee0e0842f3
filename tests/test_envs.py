"""Checker, determinism, reward and API tests of the siftmoe_gym environments."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env

import siftmoe_gym
from siftmoe_gym.envs import ENV_IDS
from siftmoe_gym.serving import solve_decode

SMALL = {"episode_tokens": 4}
BASE_IDS = ["siftmoe_gym/Decode-v0", "siftmoe_gym/Prefill-v0", "siftmoe_gym/FastFading-v0"]


def _make(env_id, **kw):
    cfg = {} if "Prefill" in env_id else dict(SMALL)
    cfg.update(kw.pop("config", {}))
    return gym.make(env_id, config=cfg, **kw)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_gymnasium_checker_every_id(env_id):
    env = _make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gym_check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("env_id", BASE_IDS)
@pytest.mark.parametrize("action_mode", ["nodes", "experts", "slots", "discrete"])
@pytest.mark.parametrize("obs_mode", ["flat", "dict"])
def test_checkers_every_mode(env_id, action_mode, obs_mode):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = _make(env_id, action_mode=action_mode, obs_mode=obs_mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gym_check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(_make(env_id, action_mode=action_mode, obs_mode=obs_mode).unwrapped, warn=False)


def _rollout(env, seed, steps=None):
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    out = [obs]
    done, n = False, 0
    while not done and (steps is None or n < steps):
        obs, r, te, tr, info = env.step(env.action_space.sample())
        out.append((obs, r, te, info))
        done, n = te or tr, n + 1
    return out


def _same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("env_id", BASE_IDS)
def test_determinism(env_id):
    a = _rollout(_make(env_id), 3)
    b = _rollout(_make(env_id), 3)
    c = _rollout(_make(env_id), 4)
    assert _same(a, b)
    assert not _same(a[0], c[0])


@pytest.mark.parametrize("env_id", BASE_IDS)
def test_observations_inside_bounds(env_id):
    env = _make(env_id, config={"distance_range_m": (20.0, 600.0)})
    for obs in _rollout(env, 0)[1:]:
        assert env.observation_space.contains(obs[0])
        assert np.isfinite(obs[1])


@pytest.mark.parametrize("env_id", ["siftmoe_gym/Decode-v0", "siftmoe_gym/FastFading-v0"])
@pytest.mark.parametrize("mode", ["slots", "experts", "nodes"])
def test_topk_scores_minus_one(env_id, mode):
    env = _make(env_id, action_mode=mode, config={"distances_m": (60.0, 80.0, 100.0, 120.0), "eps_abs": 1e-9})
    env.reset(seed=0)
    u = env.unwrapped
    done = False
    while not done:
        inst = u.instance
        assert inst.node_feasible.all()
        _, r, done, _, info = env.step(u.encode_action(inst.topk))
        assert r == -1.0 or (mode == "nodes" and "Fast" in env_id), (r, info)
        if mode != "nodes":
            assert info["energy_j"] == info["topk_energy_j"]


def test_prefill_topk_averages_minus_one():
    env = gym.make("siftmoe_gym/Prefill-v0", action_mode="slots", config={"distances_m": (60.0, 80.0, 100.0, 120.0)})
    env.reset(seed=0)
    u = env.unwrapped
    rewards, blocks = [], []
    done = False
    while not done:
        _, r, done, _, info = env.step(u.encode_action(u.instance.topk))
        rewards.append(r)
        if info["token"] == u.system.config.prefill_tokens - 1:
            blocks.append(info["block_energy_j"])
    t = u.system.config.prefill_tokens
    per_layer = np.array(rewards).reshape(-1, t).sum(axis=1)
    np.testing.assert_allclose(per_layer, -t, rtol=1e-9)


@pytest.mark.parametrize("env_id", BASE_IDS)
def test_solver_energy_through_env(env_id):
    for mode in ("nodes", "discrete", "experts", "slots"):
        env = _make(env_id, action_mode=mode)
        env.reset(seed=5)
        u = env.unwrapped
        done = False
        while not done:
            kw = {}
            if u.setting == "fastfading":
                kw = dict(cap=u.cap_budget, **u.serving_weights)
            sol = solve_decode(u.instance, **kw)
            _, _, done, _, info = env.step(u.encode_action(sol.assignment))
            assert info["energy_j"] == pytest.approx(sol.energy_j, rel=1e-12, abs=1e-18)
            if mode != "experts":
                assert info["error_bound"] == pytest.approx(sol.error_bound, rel=1e-12, abs=1e-15)


def test_unwrapped_attributes():
    env = gym.make("siftmoe_gym/Prefill-v0")
    env.reset(seed=0)
    u = env.unwrapped
    assert u.setting == "prefill" and u.token_in_block == 0 and u.layer == 0
    assert u.block_instance.num_tokens == u.system.config.prefill_tokens
    ff = gym.make("siftmoe_gym/FastFading-v0", config=SMALL).unwrapped
    ff.reset(seed=0)
    assert ff.queue.shape == (ff.system.num_layers,) and ff.cap_budget == pytest.approx(3.0 * ff.budgets[0])
    assert ff.block_instance is None and ff.topk_energy > 0
    d = gym.make("siftmoe_gym/Decode-v0").unwrapped
    d.reset(seed=0)
    assert d.instance.layer == 0 and d.topk_energy == pytest.approx(d.instance.evaluate(d.instance.topk).energy_j)


def test_bad_kwargs_and_actions():
    with pytest.raises(ValueError, match="action_mode"):
        gym.make("siftmoe_gym/Decode-v0", action_mode="bogus")
    with pytest.raises(ValueError, match="obs_mode"):
        gym.make("siftmoe_gym/Decode-v0", obs_mode="image")
    with pytest.raises(ValueError, match="unknown config key"):
        gym.make("siftmoe_gym/Decode-v0", config={"bogus": 1})
    with pytest.raises(ValueError, match="penalty"):
        gym.make("siftmoe_gym/Decode-v0", penalty=-1.0)
    with pytest.raises(ValueError, match="episode_tokens"):
        gym.make("siftmoe_gym/Prefill-v0", episode_tokens=3)
    with pytest.raises(ValueError):
        gym.make("siftmoe_gym/Decode-v0", config="no-such-preset")
    env = gym.make("siftmoe_gym/Decode-v0").unwrapped
    env.reset(seed=0)
    for bad in (np.array([1, 0, 1]), np.array([2, 0, 0, 0]), np.array(["a"] * 4), 3):
        with pytest.raises(ValueError, match="MultiBinary"):
            env.step(bad)
    d = gym.make("siftmoe_gym/DecodeDiscrete-v0").unwrapped
    d.reset(seed=0)
    for bad in (16, -1, 1.5, np.array([1, 2])):
        with pytest.raises(ValueError, match="Discrete"):
            d.step(bad)
    s = gym.make("siftmoe_gym/Decode-v0", action_mode="slots").unwrapped
    s.reset(seed=0)
    with pytest.raises(ValueError, match="MultiDiscrete"):
        s.step(np.array([9, 0]))
    with pytest.raises(ValueError, match="reset option"):
        s.reset(options={"bogus": 1})


def test_config_via_reset_options_and_kwargs():
    env = gym.make("siftmoe_gym/Decode-v0", config={"episode_tokens": 2, "penalty": 3.0, "num_nodes": 4})
    u = env.unwrapped
    assert u.env_config["penalty"] == 3.0
    env.reset(seed=0, options={"config": {"episode_tokens": 3, "distances_m": (100.0, 100.0, 100.0, 100.0)}})
    assert u.env_config["episode_tokens"] == 3 and u.system.config.distances_m == (100.0,) * 4
    n = sum(1 for _ in _rollout(env, 1)) - 1
    assert n == 3 * u.system.num_layers
    with pytest.raises(ValueError, match="cannot change"):
        env.reset(options={"config": {"num_experts": 10}})
    assert gym.make("siftmoe_gym/Decode-v0", episode_tokens=5).unwrapped.env_config["episode_tokens"] == 5
    assert gym.make("siftmoe_gym:siftmoe_gym/Decode-v0").unwrapped.setting == "decode"
    assert set(type(u).default_config()) >= {"episode_tokens", "penalty", "penalty_latency"}


@pytest.mark.parametrize("env_id", BASE_IDS)
def test_render_modes(env_id):
    for mode in ("ansi", "rgb_array"):
        env = _make(env_id, render_mode=mode)
        env.reset(seed=0)
        env.step(env.action_space.sample())
        out = env.render()
        if mode == "ansi":
            assert "error bound" in out and "node" in out
        else:
            from siftmoe_gym.envs.rendering import HEADER, KEY, SIZE

            assert out.shape == (HEADER + SIZE + KEY, SIZE, 3) and out.dtype == np.uint8
            # the status line and the colour key carry text and swatches (not the blank background)
            assert (out[:HEADER] < 200).any() and (out[HEADER + SIZE:] < 200).any()


def test_fastfading_queue_and_end_penalty():
    env = gym.make("siftmoe_gym/FastFading-v0", action_mode="slots", config={"episode_tokens": 3})
    env.reset(seed=0)
    u = env.unwrapped
    skip = np.full(u.top_k, u.n_experts)
    total_avg = 0.0
    done = False
    while not done:
        _, r, done, _, info = env.step(skip)
        total_avg += info["reward_average"]
    assert info["mean_error_ratio"].min() > 1.0 and total_avg < 0
    assert u.queue.max() > 0


# ----------------------------------------------------------------- paid activation and the latency term
def test_unused_activated_node_is_paid():
    """A node-set action pays every activated node, used by the served experts or not (docs/model.md section 8)."""
    env = gym.make("siftmoe_gym/Decode-v0", config={"episode_tokens": 4, "distances_m": (60.0, 80.0, 100.0, 120.0)})
    env.reset(seed=2)
    u = env.unwrapped
    ec = u.system.config.compute_energy_j
    unused_seen = False
    done = False
    while not done:
        inst = u.instance
        best = solve_decode(inst)
        _, _, done, _, info = env.step(np.ones(u.n_nodes, dtype=np.int8))
        np.testing.assert_array_equal(info["activated_nodes"], np.ones(u.n_nodes + 1, bool))
        assert info["energy_j"] == pytest.approx(inst.node_cost[1:].sum() + ec * info["computed"].sum(), rel=1e-12)
        assert info["energy_j"] >= best.energy_j * (1 - 1e-12)
        unused_seen |= not info["nodes_used"][1:].all()
    assert unused_seen  # some activated node went unused and was still paid


def test_node_sets_reach_exactly_the_p1_optimum():
    """min over node sets (within budget, no latency violation) of the energy is solve_decode's, every step."""
    a = 1 << 4
    venv = gym.make_vec("siftmoe_gym/DecodeDiscrete-v0", num_envs=a, vectorization_mode="vector_entry_point",
                        config={"episode_tokens": 3})
    venv.reset(seed=[7] * a)
    single = gym.make("siftmoe_gym/DecodeDiscrete-v0", config={"episode_tokens": 3}).unwrapped
    single.reset(seed=7)
    for _ in range(3 * single.system.num_layers):
        sol = solve_decode(single.instance)
        act = single.encode_action(sol.assignment)
        _, r1, _, _, info1 = single.step(act)
        _, r, _, _, info = venv.step(np.arange(a))
        ok = ~info["violation"] & (info["latency_violation"] == 0)
        if sol.within_budget:
            assert info["energy_j"][ok].min() == pytest.approx(sol.energy_j, rel=1e-12)
        assert info1["energy_j"] == pytest.approx(sol.energy_j, rel=1e-12, abs=1e-18)
        assert r1 == r[act] and info1["latency_violation"] == 0.0
    venv.close()


@pytest.mark.parametrize("env_id", BASE_IDS)
def test_infeasible_activated_node_violates_latency_even_unused(env_id):
    """Activating an infeasible node costs its fallback energy and a latency violation even if no expert there serves."""
    cfg = {"distances_m": (60.0, 80.0, 100.0, 3000.0), "eps_abs": 1e6}  # every slot may be skipped: nothing is used
    if "Prefill" not in env_id:
        cfg["episode_tokens"] = 2
    if "FastFading" in env_id:
        cfg["serving_rule"] = "energy"  # the cheapest serving skips everything (least_error would use node 4)
    env = gym.make(env_id, config=cfg)
    env.reset(seed=0)
    u = env.unwrapped
    inst = u.instance
    assert not inst.node_feasible[4] and inst.node_violation_s[4] > 0
    _, r, _, _, info = env.step(np.array([0, 0, 0, 1], dtype=np.int8))
    assert not info["nodes_used"].any() and info["activated_nodes"][4]
    assert info["latency_violation"] == pytest.approx(inst.node_violation_s[4], rel=1e-12)
    assert info["energy_j"] == pytest.approx(inst.node_cost[4], rel=1e-12)
    tau = u._tau
    # eps_abs = 1e6: no decision can break the budget, so no worst accuracy penalty is added
    assert info["reward_latency"] == pytest.approx(-50.0 * (1.0 + info["latency_violation"] / tau), rel=1e-12)
    if u.setting == "prefill":
        assert info["loads"][4] == 1  # the activated node received the token


def test_latency_term_and_its_default():
    assert gym.make("siftmoe_gym/Decode-v0").unwrapped.env_config["penalty_latency"] == 50.0
    env = gym.make("siftmoe_gym/Decode-v0", action_mode="slots", penalty_latency=7.0,
                   config={"episode_tokens": 4, "distances_m": (60.0, 80.0, 100.0, 3000.0)})
    env.reset(seed=1)
    u = env.unwrapped
    seen = {True: False, False: False}
    done = False
    while not done:
        inst = u.instance
        _, r, done, _, info = env.step(u.encode_action(inst.topk))
        lat = info["latency_violation"]
        # plus the worst accuracy penalty the token can reach, so latency always ranks first
        worst = float((inst.gates * inst.delta_ext[inst.topk].max(axis=1)).sum())
        a_worst = 10.0 * (1.0 + (worst - inst.budget) / inst.budget) if worst > inst.budget else 0.0
        expect = -7.0 * (1.0 + lat / u._tau) - a_worst if lat > 0 else 0.0
        assert info["reward_latency"] == pytest.approx(expect, rel=1e-12)
        assert r == pytest.approx(info["reward_energy"] + info["reward_accuracy"] + info["reward_latency"], rel=1e-12)
        seen[lat > 0] = True
    assert seen[True] and seen[False]


@pytest.mark.parametrize("env_id", ["siftmoe_gym/Decode-v0", "siftmoe_gym/Prefill-v0"])
def test_accuracy_term_has_a_fixed_part(env_id):
    """Over the budget: -penalty * (1 + excess / eps); within it (tolerance included): 0."""
    config = {"prefill_tokens": 4} if "Prefill" in env_id else {"episode_tokens": 4}
    env = gym.make(env_id, action_mode="slots", penalty=3.0, config=config)
    env.reset(seed=2)
    u = env.unwrapped
    seen = {True: False, False: False}
    done = False
    while not done:
        inst = u.instance
        # skip the largest-gate slot, keep the rest: often over the budget, sometimes not
        assign = inst.topk.copy()
        assign[0] = -1
        _, r, done, _, info = env.step(u.encode_action(assign))
        err, eps = info["error_bound"], info["budget"]
        over = err > eps * (1 + 1e-12) + 1e-15
        expect = -3.0 * (1.0 + (err - eps) / eps) if over else 0.0
        assert info["reward_accuracy"] == pytest.approx(expect, rel=1e-12)
        assert bool(info["violation"]) == over
        seen[over] = True
    assert seen[True]


def test_human_render_mode_needs_the_render_extra(monkeypatch):
    """render_mode="human" draws the rgb frame in a pygame window after every reset and step; without pygame,
    gym.make says which extra to install (before anything is built)."""
    try:
        import pygame  # noqa: F401
    except ImportError:
        with pytest.raises(gym.error.DependencyNotInstalled, match=r"\.\[render\]"):
            gym.make("siftmoe_gym/Decode-v0", render_mode="human")
        return
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    env = gym.make("siftmoe_gym/Decode-v0", render_mode="human", config={"episode_tokens": 2})
    env.reset(seed=0)
    for _ in range(3):
        env.step(env.action_space.sample())
    assert env.render() is None and env.unwrapped._window.screen is not None
    env.close()
    assert env.unwrapped._window.screen is None
