"""Adapter from a Stable-Baselines3 model to the evaluator's policy protocol.

``AgentPolicy(model, env).act(obs, info)`` returns the model's deterministic
action for the environment ``env`` that :func:`siftmoe_gym.evaluation.run_episode`
steps, so a trained agent is evaluated exactly like the baselines.  MaskablePPO
gets the node mask of ``env``'s next decision; RecurrentPPO keeps its LSTM
state through an episode (``reset()`` clears it).
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from .masking import node_action_mask


def _is_instance_of(model, module: str, name: str) -> bool:
    try:
        import importlib

        return isinstance(model, getattr(importlib.import_module(module), name))
    except (ImportError, AttributeError):  # pragma: no cover
        return False


def is_maskable(model) -> bool:
    return _is_instance_of(model, "sb3_contrib", "MaskablePPO")


def is_recurrent(model) -> bool:
    return _is_instance_of(model, "sb3_contrib", "RecurrentPPO")


def to_env_action(action, space: spaces.Space):
    """Strip the batch dimension / dtype quirks of ``model.predict``."""
    a = np.asarray(action)
    if isinstance(space, spaces.Discrete):
        return int(a.reshape(-1)[0])
    if isinstance(space, spaces.MultiBinary):
        return a.reshape(space.shape).astype(space.dtype)
    return a.reshape(space.shape) if space.shape else a


class AgentPolicy:
    """``act(obs, info)`` for an SB3 model acting in (unvectorized) ``env``."""

    def __init__(self, model, env, deterministic: bool = True):
        self.model = model
        self.env = env
        self.deterministic = deterministic
        self.masked = is_maskable(model)
        self.recurrent = is_recurrent(model)
        self.reset()

    def reset(self) -> None:
        self._state = None
        self._episode_start = np.ones((1,), dtype=bool)

    def act(self, obs, info):
        space = self.env.action_space
        if self.recurrent:
            action, self._state = self.model.predict(
                obs, state=self._state, episode_start=self._episode_start, deterministic=self.deterministic
            )
            self._episode_start = np.zeros((1,), dtype=bool)
        elif self.masked:
            action, _ = self.model.predict(obs, action_masks=node_action_mask(self.env), deterministic=self.deterministic)
        else:
            action, _ = self.model.predict(obs, deterministic=self.deterministic)
        return to_env_action(action, space)
