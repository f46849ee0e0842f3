"""PPO-Lagrangian: PPO whose reward pays a learned multiplier times the environment's constraint cost.

The siftmoe_gym environments report their constraint costs in ``info["cost"]``
(Safety-Gymnasium's convention, :func:`siftmoe_gym.envs.rewards.constraint_costs`).
PPO-Lagrangian solves the constrained problem

    max_pi  E[sum_t r_t]   subject to   E[c_t] <= d        (d = ``cost_limit``, per step)

through its Lagrangian ``E[sum_t (r_t - lambda c_t)]``: the policy is trained
by PPO on the shaped reward ``r_t - lambda c_t`` and the multiplier by
projected dual ascent on the measured excess, once per rollout,

    lambda <- clip(lambda + lagrangian_lr * (c_bar - d), 0, lagrangian_max)

where ``c_bar`` is the mean cost per step over the rollout just collected
(Ray, Achiam and Amodei, "Benchmarking Safe Exploration in Deep Reinforcement
Learning", 2019, section 4.2; the reward-shaping form of OmniSafe's ``PPOLag``).
No library offers this for Stable-Baselines3 on Gymnasium 1.x (OmniSafe and
FSRL bring their own trainers and environment APIs), so it is this small
subclass.

Only the learner sees the shaped reward: ``ep_rew_mean``, the evaluations and
the comparison tables use the environment's own return.  The multiplier is a
model attribute (saved and restored with the model) and is logged as
``lagrangian/multiplier`` next to ``lagrangian/cost_rate``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper


class CostPenaltyVecEnv(VecEnvWrapper):
    """Reward ``r - multiplier * info["cost"]`` per copy; accumulates the costs for the dual update.

    Raises ``KeyError`` on a step whose ``info`` has no ``"cost"`` (an environment without constraint costs,
    or the native SB3 adapter built without ``step_info_keys=("cost",)``).
    """

    def __init__(self, venv: VecEnv, multiplier: float = 0.0):
        super().__init__(venv)
        self.multiplier = float(multiplier)
        self.cost_sum = 0.0
        self.cost_steps = 0

    def reset(self):
        return self.venv.reset()

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        try:
            cost = np.fromiter((info["cost"] for info in infos), dtype=np.float64, count=len(infos))
        except KeyError:
            raise KeyError("PPO-Lagrangian needs info['cost'] on every step (siftmoe_gym environments report it; "
                           "the native SB3 adapter needs step_info_keys=('cost',))") from None
        self.cost_sum += float(cost.sum())
        self.cost_steps += len(cost)
        shaped = (rewards - self.multiplier * cost).astype(rewards.dtype)
        return obs, shaped, dones, infos

    def take_cost_rate(self) -> float:
        """The mean cost per step since the last call (nan when no step was taken), and a fresh count."""
        rate = self.cost_sum / self.cost_steps if self.cost_steps else math.nan
        self.cost_sum, self.cost_steps = 0.0, 0
        return rate


class PPOLagrangian(PPO):
    """PPO with a Lagrange multiplier on the per-step constraint cost (module docstring).

    :param cost_limit: ``d``, the allowed mean cost per step (>= 0).  For the per-step budgets of Decode and
        Prefill a cost is one violating step, so ``d`` is the share of steps allowed over a budget.
    :param lagrangian_lr: dual ascent step size (reward units per unit of excess cost rate, > 0).
    :param lagrangian_init: the multiplier's initial value (>= 0).
    :param lagrangian_max: the multiplier's upper bound (>= lagrangian_init); keeps the shaped reward bounded
        when the limit is below what any policy can reach.
    Every other argument is PPO's.
    """

    def __init__(self, policy: Any, env: Any, cost_limit: float = 0.005, lagrangian_lr: float = 20.0,
                 lagrangian_init: float = 0.0, lagrangian_max: float = 100.0, **kwargs: Any):
        for name, val, lo in (("cost_limit", cost_limit, 0.0), ("lagrangian_lr", lagrangian_lr, 0.0),
                              ("lagrangian_init", lagrangian_init, 0.0), ("lagrangian_max", lagrangian_max, 0.0)):
            if not isinstance(val, (int, float)) or isinstance(val, bool) or not math.isfinite(val) or val < lo:
                raise ValueError(f"{name} must be a finite number >= {lo}, got {val!r}")
        if lagrangian_lr == 0.0:
            raise ValueError("lagrangian_lr must be > 0 (0 would be plain PPO with a fixed penalty)")
        if lagrangian_max == 0.0:
            raise ValueError("lagrangian_max must be > 0 (0 pins the multiplier at 0: plain PPO)")
        if lagrangian_max < lagrangian_init:
            raise ValueError(f"lagrangian_max ({lagrangian_max}) must be >= lagrangian_init ({lagrangian_init})")
        self.cost_limit = float(cost_limit)
        self.lagrangian_lr = float(lagrangian_lr)
        self.lagrangian_max = float(lagrangian_max)
        self.lagrange_multiplier = float(lagrangian_init)
        super().__init__(policy, self._cost_wrap(env), **kwargs)

    def _cost_wrap(self, env):
        if env is None or isinstance(env, CostPenaltyVecEnv):
            return env
        if not isinstance(env, VecEnv):
            raise TypeError("PPOLagrangian needs a VecEnv (train.py builds one)")
        return CostPenaltyVecEnv(env, self.lagrange_multiplier)

    def set_env(self, env, force_reset: bool = True) -> None:
        super().set_env(self._cost_wrap(env), force_reset=force_reset)
        self._sync_multiplier()

    def _setup_model(self) -> None:
        super()._setup_model()
        self._sync_multiplier()  # load() restores lagrange_multiplier after wrapping the env with the initial one

    def _sync_multiplier(self) -> None:
        if isinstance(self.env, CostPenaltyVecEnv):
            self.env.multiplier = self.lagrange_multiplier

    def train(self) -> None:
        """One dual ascent step on the rollout just collected, then PPO's update."""
        env = self.env
        if isinstance(env, CostPenaltyVecEnv):
            rate = env.take_cost_rate()
            if math.isfinite(rate):
                lam = self.lagrange_multiplier + self.lagrangian_lr * (rate - self.cost_limit)
                self.lagrange_multiplier = float(min(max(lam, 0.0), self.lagrangian_max))
                env.multiplier = self.lagrange_multiplier
                self.logger.record("lagrangian/cost_rate", rate)
            self.logger.record("lagrangian/multiplier", self.lagrange_multiplier)
        super().train()
