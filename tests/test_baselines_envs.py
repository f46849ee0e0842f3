"""Every registered policy acts on every registered environment of its settings (and refuses the others);
siftmoe's decode action is the exact P1 optimum."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import baselines
import siftmoe_gym  # noqa: F401  (registers the environments)
from siftmoe_gym.serving import solve_decode

ENVS = ["Decode-v0", "Prefill-v0", "FastFading-v0", "DecodeDiscrete-v0", "PrefillDiscrete-v0", "FastFadingDiscrete-v0"]


@pytest.mark.parametrize("env_id", ENVS)
def test_policies_run_on_env(env_id):
    env = gym.make(f"siftmoe_gym/{env_id}")
    setting = env.unwrapped.setting
    for name in set(baselines.available_policies()) - set(baselines.available_policies(setting)):
        with pytest.raises(ValueError, match=setting):
            baselines.get_policy(name, env)
    for name in baselines.available_policies(setting):
        obs, info = env.reset(seed=1)
        pol = baselines.get_policy(name, env)
        pol.reset(seed=1)
        for _ in range(12):
            if name == "siftmoe" and env.unwrapped.setting == "decode":
                best = solve_decode(env.unwrapped.instance)
                if best.within_budget:  # else the reward's choice among over-budget decisions (test_certified)
                    np.testing.assert_array_equal(pol.decide(), best.assignment)
            action = pol.act(obs, info)
            assert env.action_space.contains(action), (name, action)
            obs, r, term, trunc, info = env.step(action)
            assert np.isfinite(r)
            if term or trunc:
                obs, info = env.reset()
    env.close()
