"""Gymnasium environments of siftmoe_gym.

- :class:`DecodeEnv` (``siftmoe_gym/Decode-v0``): P1, decoding under slow fading;
- :class:`PrefillEnv` (``siftmoe_gym/Prefill-v0``): P2, a prefill block;
- :class:`FastFadingEnv` (``siftmoe_gym/FastFading-v0``): P3, fast fading with an
  average accuracy budget;
- ``*Discrete-v0`` variants with ``action_mode="discrete"``;
- :class:`SiftMoEVectorEnv`: native batched vector environment
  (``gym.make_vec(id, n, vectorization_mode="vector_entry_point")``).
"""

from .actions import ACTION_MODES
from .base import SiftMoEEnv
from .decode import DecodeEnv
from .fastfading import FastFadingEnv
from .observations import OBS_MODES
from .prefill import PrefillEnv
from .registration import ENV_IDS, register_envs
from .vector import SiftMoEVectorEnv

__all__ = [
    "ACTION_MODES", "ENV_IDS", "OBS_MODES", "DecodeEnv", "FastFadingEnv", "PrefillEnv", "SiftMoEEnv",
    "SiftMoEVectorEnv", "register_envs",
]
