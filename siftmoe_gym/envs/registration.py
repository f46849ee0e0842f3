"""Registration of the siftmoe_gym environments with Gymnasium (done on ``import siftmoe_gym``)."""

from __future__ import annotations

import gymnasium as gym

_SPECS = {
    "siftmoe_gym/Decode-v0": ("siftmoe_gym.envs.decode:DecodeEnv", "siftmoe_gym.envs.vector:DecodeVectorEnv", {}),
    "siftmoe_gym/Prefill-v0": ("siftmoe_gym.envs.prefill:PrefillEnv", "siftmoe_gym.envs.prefill_vector:PrefillVectorEnv", {}),
    "siftmoe_gym/FastFading-v0": ("siftmoe_gym.envs.fastfading:FastFadingEnv", "siftmoe_gym.envs.vector:FastFadingVectorEnv", {}),
    "siftmoe_gym/DecodeDiscrete-v0": ("siftmoe_gym.envs.decode:DecodeEnv", "siftmoe_gym.envs.vector:DecodeVectorEnv", {"action_mode": "discrete"}),
    "siftmoe_gym/PrefillDiscrete-v0": ("siftmoe_gym.envs.prefill:PrefillEnv", "siftmoe_gym.envs.prefill_vector:PrefillVectorEnv", {"action_mode": "discrete"}),
    "siftmoe_gym/FastFadingDiscrete-v0": ("siftmoe_gym.envs.fastfading:FastFadingEnv", "siftmoe_gym.envs.vector:FastFadingVectorEnv", {"action_mode": "discrete"}),
}

ENV_IDS = tuple(_SPECS)
"""Every registered environment id."""


def register_envs() -> None:
    """Register every id in :data:`ENV_IDS` (idempotent)."""
    for env_id, (entry, vec_entry, kwargs) in _SPECS.items():
        if env_id in gym.registry:
            continue
        gym.register(id=env_id, entry_point=entry, vector_entry_point=vec_entry, kwargs=dict(kwargs))
