"""Algorithm registry: names, SB3 classes, and which action spaces each accepts.

Canonical names follow rl-zoo3 where it has one (``ppo``, ``a2c``, ``dqn``,
``ppo_lstm`` for RecurrentPPO); MaskablePPO, which rl-zoo3 does not ship, is
``ppo_mask``.  Common spellings are accepted as aliases.
"""

from __future__ import annotations

from dataclasses import dataclass

from gymnasium import spaces


class AgentConfigError(ValueError):
    """A user-facing configuration error (unknown algorithm, bad hyperparameter, ...).

    The command line prints its message as one line and exits with status 2.
    """


@dataclass(frozen=True)
class AlgoSpec:
    name: str
    module: str
    class_name: str
    action_spaces: tuple[type[spaces.Space], ...]
    description: str
    masked: bool = False
    recurrent: bool = False
    off_policy: bool = False
    needs_cost: bool = False  # the learner reads info["cost"] (the native SB3 adapter must copy it)

    def load_class(self):
        import importlib

        return getattr(importlib.import_module(self.module), self.class_name)


ALGOS: dict[str, AlgoSpec] = {
    "ppo": AlgoSpec("ppo", "stable_baselines3", "PPO", (spaces.MultiBinary, spaces.Discrete),
                    "Proximal Policy Optimization (SB3)"),
    "ppo_lag": AlgoSpec("ppo_lag", "agents.lagrangian", "PPOLagrangian", (spaces.MultiBinary, spaces.Discrete),
                        "PPO-Lagrangian: PPO on r - lambda * cost, lambda by dual ascent on the excess cost rate",
                        needs_cost=True),
    "a2c": AlgoSpec("a2c", "stable_baselines3", "A2C", (spaces.MultiBinary, spaces.Discrete),
                    "Advantage Actor-Critic (SB3)"),
    "dqn": AlgoSpec("dqn", "stable_baselines3", "DQN", (spaces.Discrete,),
                    "Deep Q-Network (SB3); Discrete(2**M) variants only", off_policy=True),
    "ppo_mask": AlgoSpec("ppo_mask", "sb3_contrib", "MaskablePPO", (spaces.MultiBinary, spaces.Discrete),
                         "MaskablePPO (sb3-contrib): nodes that cannot meet the latency budget are masked",
                         masked=True),
    "ppo_lstm": AlgoSpec("ppo_lstm", "agents.sb3_compat", "RecurrentPPO", (spaces.MultiBinary, spaces.Discrete),
                         "RecurrentPPO (sb3-contrib, LSTM policy), meant for fast fading", recurrent=True),
}

MAX_ENVS = 4096
"""Most environment copies a run may ask for (the native vector env steps thousands; more only exhausts memory)."""

ALIASES = {
    "maskable_ppo": "ppo_mask", "maskableppo": "ppo_mask", "maskable-ppo": "ppo_mask", "mppo": "ppo_mask",
    "ppo_lagrangian": "ppo_lag", "ppo-lag": "ppo_lag", "ppolag": "ppo_lag",
    "recurrent_ppo": "ppo_lstm", "recurrentppo": "ppo_lstm", "recurrent-ppo": "ppo_lstm", "rppo": "ppo_lstm",
}


def canonical_algo(name: str) -> str:
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in ALGOS:
        known = ", ".join(sorted(ALGOS)) + " (aliases: " + ", ".join(sorted(ALIASES)) + ")"
        raise AgentConfigError(f"unknown algorithm {name!r}; known algorithms: {known}")
    return key


def get_algo(name: str) -> AlgoSpec:
    return ALGOS[canonical_algo(name)]


def check_compatible(algo: str, action_space: spaces.Space, env_id: str = "the environment") -> None:
    """Raise :class:`AgentConfigError` when ``algo`` cannot act in ``action_space``."""
    spec = get_algo(algo)
    if not isinstance(action_space, spec.action_spaces):
        wanted = " or ".join(s.__name__ for s in spec.action_spaces)
        hint = ""
        if isinstance(action_space, spaces.MultiBinary) and spaces.Discrete in spec.action_spaces:
            hint = " (use a Discrete variant such as siftmoe_gym/DecodeDiscrete-v0)"
        raise AgentConfigError(
            f"algorithm {spec.name!r} needs a {wanted} action space, but {env_id} has {action_space}{hint}"
        )
