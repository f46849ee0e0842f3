"""``siftmoe`` in Decode-v0 is certified step by step: its reward is the highest of every assignment of the
token's top-k slots, each evaluated by ``DecodeInstance.evaluate`` and scored with the reward formula of
docs/model.md section 8 written out here (an independent reference, not the environment's code)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import baselines
import siftmoe_gym  # noqa: F401
from siftmoe_gym.bounds import ABS_TOL, REL_TOL


def _reference_reward(inst, assign, floor, e_topk, penalty, penalty_latency, tau):
    r = inst.evaluate(assign)
    eps = max(float(inst.budget), 1e-12)
    over = lambda e: e > float(inst.budget) * (1 + REL_TOL) + ABS_TOL  # noqa: E731
    reward = -(r.energy_j + floor) / (e_topk + floor)
    if over(float(r.error_bound)):
        reward -= penalty * (1 + (float(r.error_bound) - float(inst.budget)) / eps)
    if r.latency_violation_s > 0:
        worst = float(np.sum(inst.gates * inst.delta_ext[inst.topk].max(axis=1)))
        worst_acc = penalty * (1 + (worst - float(inst.budget)) / eps) if over(worst) else 0.0
        reward -= penalty_latency * (1 + r.latency_violation_s / tau) + worst_acc
    return reward


@pytest.mark.parametrize("cfg", [{}, {"eps_rel": 0.02}, {"eps_rel": 0.1, "local_capacity": 4,
                                                           "placement": "popular_local"}])
def test_siftmoe_step_reward_is_the_best_of_every_assignment(cfg):
    env = gym.make("siftmoe_gym/Decode-v0", action_mode="slots", config={"episode_tokens": 8, **cfg})
    u = env.unwrapped
    pol = baselines.get_policy("siftmoe", env)
    n, k = u.n_experts, u.top_k
    grid = np.stack(np.meshgrid(*[np.arange(-1, n)] * k, indexing="ij"), axis=-1).reshape(-1, k)
    pen, pen_lat = float(u.env_config["penalty"]), float(u.env_config["penalty_latency"])
    tau = float(u.system.config.tau_s)
    steps = 0
    for seed in range(6):
        env.reset(seed=seed)
        done = False
        while not done:
            inst = u.instance
            e_topk = float(inst.evaluate(inst.topk).energy_j)
            best = max(_reference_reward(inst, a, u.floor, e_topk, pen, pen_lat, tau) for a in grid)
            _, r, term, trunc, info = env.step(pol.act(None, {}))
            assert r == pytest.approx(_reference_reward(inst, info["assignment"], u.floor, e_topk, pen, pen_lat, tau),
                                      rel=1e-12, abs=1e-12)
            assert r >= best - 1e-9 * max(1.0, abs(best)), (seed, steps, r, best)
            steps += 1
            done = term or trunc
    assert steps == 6 * 8 * u.n_layers


@pytest.mark.parametrize("cfg", [{}, {"eps_rel": 0.02}])
def test_environment_reward_is_the_reference_formula(cfg):
    """Random assignments (latency violations included): the environment's reward is the documented formula, in
    which a latency violation costs more than the worst accuracy penalty the token can reach."""
    env = gym.make("siftmoe_gym/Decode-v0", action_mode="slots", config={"episode_tokens": 8, **cfg})
    u = env.unwrapped
    rng = np.random.default_rng(0)
    pen, pen_lat = float(u.env_config["penalty"]), float(u.env_config["penalty_latency"])
    tau = float(u.system.config.tau_s)
    violated = 0
    for seed in range(4):
        env.reset(seed=seed)
        done = False
        while not done:
            inst = u.instance
            e_topk = float(inst.evaluate(inst.topk).energy_j)
            a = rng.integers(-1, u.n_experts, size=u.top_k)
            _, r, term, trunc, info = env.step(u.encode_action(a))
            assert r == pytest.approx(_reference_reward(inst, a, u.floor, e_topk, pen, pen_lat, tau), rel=1e-12, abs=1e-12)
            violated += info["latency_violation"] > 0
            done = term or trunc
    assert violated > 0
