"""Issue 14, environment side: the safe-RL constraint costs in ``info`` and the observation blocks that carry
the optimal policies' state (FastFading's error spent, Prefill's remaining block demand)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import siftmoe_gym  # noqa: F401
from siftmoe_gym.envs.rewards import COST_KEYS

IDS = ["siftmoe_gym/Decode-v0", "siftmoe_gym/Prefill-v0", "siftmoe_gym/FastFading-v0"]


def _rollout(env_id, seed=3, steps=None, **kw):
    env = gym.make(env_id, **kw)
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    out = [(obs, None)]
    done, n = False, 0
    while not done and (steps is None or n < steps):
        obs, r, term, trunc, info = env.step(env.action_space.sample())
        out.append((obs, info))
        done, n = term or trunc, n + 1
    return env, out


@pytest.mark.parametrize("env_id", IDS)
def test_costs_match_the_violations(env_id):
    env, steps = _rollout(env_id)
    ff = "FastFading" in env_id
    seen_acc = seen_lat = 0
    for _, info in steps[1:]:
        for key in COST_KEYS:
            assert isinstance(info[key], float)
        acc = info["cap_violation"] if ff else info["violation"]
        assert info["cost_accuracy"] <= float(acc)  # unavoidable violations cost 0 (next tests)
        assert info["cost_latency"] == float(info["latency_violation"] > 0.0)
        total = info["cost_accuracy"] + info["cost_latency"] + (info["cost_average"] if ff else 0.0)
        assert info["cost"] == pytest.approx(total, abs=0.0)
        seen_acc += info["cost_accuracy"] > 0
        seen_lat += info["cost_latency"] > 0
    assert seen_acc + seen_lat > 0  # random actions break budgets: the test sees nonzero costs
    if ff:
        last = steps[-1][1]
        pen = env.unwrapped.env_config["penalty"]
        spread = sum(info["reward_average"] for _, info in steps[1:])  # the average term, charged step by step
        assert last["cost_average"] == pytest.approx(-spread / pen, rel=1e-9)
        assert any(info["reward_average"] != 0.0 for _, info in steps[1:-1])
        assert last["cost_average"] > 0.0
        assert all(info["cost_average"] == 0.0 for _, info in steps[1:-1])


def test_fastfading_budget_blocks_follow_the_error_spent():
    env = gym.make("siftmoe_gym/FastFading-v0")
    u = env.unwrapped
    obs, _ = env.reset(seed=5)
    env.action_space.seed(5)
    t_count, nl = u.env_config["episode_tokens"], u.n_layers
    cap = float(u.system.config.eps_max_factor)
    sl = u.obs_slices
    for s in range(t_count * nl):
        spent = u.error_spent
        left = t_count - spent
        np.testing.assert_allclose(obs[sl["budget_left"]], np.clip(left / t_count, -1, 1), rtol=1e-6, atol=1e-7)
        tok, lay = s // nl, s % nl
        want = np.clip(left[lay] / ((t_count - tok) * cap), -1, 1)
        assert obs[sl["layer_allowance"]][0] == pytest.approx(want, rel=1e-6, abs=1e-7)
        assert env.observation_space.contains(obs)
        obs, *_ = env.step(np.ones(u.n_nodes, dtype=np.int8) if s % 3 else env.action_space.sample())
    assert u.error_spent.max() > 0.0


def test_prefill_block_demand_is_the_rest_of_the_block():
    env = gym.make("siftmoe_gym/Prefill-v0")
    u = env.unwrapped
    obs, _ = env.reset(seed=2)
    env.action_space.seed(2)
    tokens = u._ep["tokens"]
    t_count, nl = tokens.topk.shape[0], u.n_layers
    for s in range(t_count * nl):
        lay, t = divmod(s, t_count)
        want = np.zeros(u.n_nodes)
        for t2 in range(t, t_count):  # brute force: nodes the top-k of each remaining token sits on
            for m in set(u.system.node_of[lay][tokens.topk[t2, lay]].tolist()) - {0}:
                want[m - 1] += 1
        np.testing.assert_array_equal(obs[u.obs_slices["block_demand"]], (want / t_count).astype(np.float32))
        obs, *_ = env.step(env.action_space.sample())


@pytest.mark.parametrize("env_id", ["siftmoe_gym/Decode-v0", "siftmoe_gym/FastFading-v0"])
def test_native_vector_costs_and_blocks_match_sync(env_id):
    n = 3
    nat = gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point")
    syn = gym.make_vec(env_id, num_envs=n, vectorization_mode="sync")
    o1, _ = nat.reset(seed=11)
    o2, _ = syn.reset(seed=11)
    rng = np.random.default_rng(0)
    steps = nat.unwrapped.env._n_steps if hasattr(nat.unwrapped.env, "_n_steps") else 64
    for _ in range(steps):
        np.testing.assert_array_equal(o1, o2)
        a = rng.integers(0, 2, size=nat.action_space.shape).astype(np.int8)
        o1, r1, *_, i1 = nat.step(a)
        o2, r2, *_, i2 = syn.step(a)
        np.testing.assert_array_equal(r1, r2)
        for key in ("cost", "cost_accuracy", "cost_latency") + (("cost_average",) if "Fast" in env_id else ()):
            np.testing.assert_array_equal(np.asarray(i1[key], dtype=float), np.asarray(i2[key], dtype=float))


def test_accuracy_cost_counts_only_avoidable_violations():
    """Brute force over every node set: a violation costs 1 exactly when some latency-feasible decision keeps
    the budget; the optimum (siftmoe) has cost 0 in Decode on every step."""
    from baselines import get_policy

    env = gym.make("siftmoe_gym/Decode-v0", config={"eps_rel": 0.05})
    u = env.unwrapped
    pol = get_policy("siftmoe", env)
    both = unavoidable = 0
    for seed in range(6):
        obs, _ = env.reset(seed=seed)
        pol.reset(seed)
        done = False
        rng = np.random.default_rng(seed)
        while not done:
            s, layer = u._s, u.layer
            feas = u._feas
            # brute force: the least error over every assignment of each slot to a feasible expert or skip
            ok = feas[np.append(u.system.node_of[layer], 0)]
            least = sum(g * min(u._dk[s][i, j] for j in range(u.n_experts + 1) if ok[j]) for i, g in enumerate(u._gates[s]))
            avoid = least <= u.budgets[layer] * (1 + 1e-9) + 1e-12
            if rng.random() < 0.5:
                a = pol.act(obs)
                obs, r, done, _, info = env.step(a)
                assert info["cost_accuracy"] == 0.0
            else:
                obs, r, done, _, info = env.step(env.action_space.sample())
            assert info["cost_accuracy"] == float(info["violation"] and avoid)
            both += info["violation"] and avoid
            unavoidable += info["violation"] and not avoid
    assert both > 0 and unavoidable > 0  # the test sees both kinds


def test_spread_average_term_sums_to_the_end_of_episode_charge():
    """Per layer the steps' average terms telescope to -penalty * T * max(0, mean err/eps_l - 1) (random node sets,
    several seeds, a tight budget so that layers overspend)."""
    from siftmoe_gym.envs.rewards import average_penalty

    env = gym.make("siftmoe_gym/FastFading-v0", config={"eps_rel": 0.05})
    u = env.unwrapped
    for seed in range(4):
        env.reset(seed=seed)
        env.action_space.seed(seed)
        total, done = 0.0, False
        while not done:
            _, _, done, _, info = env.step(env.action_space.sample())
            total += info["reward_average"]
        want = average_penalty(info["mean_error_ratio"], u.env_config["episode_tokens"], u.env_config["penalty"])
        assert want < 0.0
        assert total == pytest.approx(want, rel=1e-9)


def test_decode_least_feasible_terms_from_node_minima_equal_the_direct_minimum():
    """Decode's cost_accuracy test takes each expert's least term over the feasible servers from the per-node
    minima (FeatureTables.node_best) and skip: the very minimum over the servers themselves, node 0 (and so
    skip) feasible or not, empty nodes included."""
    env = gym.make("siftmoe_gym/Decode-v0", config={"num_experts": 64, "top_k": 8, "num_layers": 3, "num_nodes": 12})
    u = env.unwrapped
    env.reset(seed=0)
    rng = np.random.default_rng(3)
    for _ in range(100):
        layer = int(rng.integers(u.n_layers))
        feas = rng.random(u.n_nodes + 1) < rng.random()
        u._least_free = {}
        u._avoidable(0, layer, feas, 0.1)
        direct = np.where(feas[u._node_ext[layer]], u.system.delta_ext[layer], np.inf).min(axis=1)
        np.testing.assert_array_equal(u._least_free[layer], direct)
