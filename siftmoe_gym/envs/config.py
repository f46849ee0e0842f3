"""The ``config`` argument of the siftmoe_gym environments (highway-env style).

An environment takes ``config`` as a preset name, a
:class:`~siftmoe_gym.config.SystemConfig`, or one dict mixing environment
keys (the class's ``default_config()``) with system keys
(:class:`~siftmoe_gym.config.SystemConfig` fields and ``preset``);
:func:`split_config` separates them.  (The system configuration itself is
:mod:`siftmoe_gym.config`.)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

from ..config import Range, SystemConfig

SYSTEM_KEYS = frozenset(f.name for f in dataclasses.fields(SystemConfig)) | {"preset"}
"""Keys of a config dict that go to the system configuration."""
SHAPE_KEYS = ("num_experts", "top_k", "num_layers", "num_nodes")
"""System keys that fix the observation and action spaces (``reset`` options cannot change them)."""


def split_config(spec: Any, env_defaults: Mapping[str, Any]) -> tuple[SystemConfig | None, dict[str, Any], dict[str, Any]]:
    """Split a ``config`` argument into (SystemConfig or None, system-key dict, env-key dict)."""
    if spec is None:
        return None, {}, {}
    if isinstance(spec, SystemConfig):
        return spec, {}, {}
    if isinstance(spec, str):
        return None, {"preset": spec}, {}
    if isinstance(spec, Mapping):
        env_part, sys_part, unknown = {}, {}, []
        for key, value in spec.items():
            if key in env_defaults:
                env_part[key] = value
            elif key in SYSTEM_KEYS:
                sys_part[key] = value
            else:
                unknown.append(key)
        if unknown:
            raise ValueError(
                f"unknown config key(s) {sorted(map(str, unknown))}; environment keys: {sorted(env_defaults)}; "
                f"system keys: {sorted(SYSTEM_KEYS)}"
            )
        return None, sys_part, env_part
    raise ValueError(f"config must be a preset name, a mapping or a SystemConfig, got {type(spec).__name__}")


ENV_RANGES: dict[str, Range] = {
    "penalty": Range("float", 0.0, 1e6),
    "penalty_latency": Range("float", 0.0, 1e6),
    "reward_floor_j": Range("float", 1e-12, 1e3, "J"),
    "episode_tokens": Range("int", 1, 100_000),
    "queue_clip": Range("float", 1e-6, 1e6),
}
"""Accepted values of the environments' numeric config keys (``reward_floor_j`` may also be None).

Inside these ranges (and :data:`siftmoe_gym.config.SYSTEM_RANGES`) every
reward and observation stays finite; the class docstrings and
``docs/envs.md`` list them."""


def check_number(name: str, value: Any, low: float = 0.0, high: float = math.inf) -> float:
    """``value`` as a float if it is a finite real number (not a bool) in ``[low, high]``; else ``ValueError``
    naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(value)) or not low <= value <= high:
        bound = f">= {low}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise ValueError(f"invalid {name}={value!r}: must be a finite number {bound}")
    return float(value)


def check_env_value(name: str, value: Any) -> float | int:
    """``value`` of the environment key ``name`` checked against its :data:`ENV_RANGES` row (numpy scalars
    accepted): an int for integer keys, a float otherwise; ``ValueError`` naming ``name``, the value and the
    range."""
    rng = ENV_RANGES[name]
    kinds = (int, np.integer) if rng.kind == "int" else (int, float, np.integer, np.floating)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, kinds) or not math.isfinite(float(value)):
        raise ValueError(f"invalid {name}={value!r}: must be {rng.describe()}")
    v = float(value)
    if (v <= rng.low if rng.low_open else v < rng.low) or (v >= rng.high if rng.high_open else v > rng.high):
        raise ValueError(f"invalid {name}={value!r}: must be {rng.describe()}")
    return int(value) if rng.kind == "int" else v


def reset_config(options: Any) -> Any:
    """The ``config`` of ``reset(options=...)`` (None when absent); ``ValueError`` for options that are not a dict
    or hold other keys.  Checked before a reset changes anything."""
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"reset options must be a dict, got {type(options).__name__}")
    if not options:
        return None
    unknown = sorted(map(str, set(options) - {"config"}))
    if unknown:
        raise ValueError(f"unknown reset option(s) {unknown}; allowed: ['config']")
    return options.get("config")


def check_count(name: str, value: Any, none_ok: bool = False) -> int | None:
    """``value`` as an int if it is an integer >= 1 (or None when ``none_ok``); else ``ValueError`` naming ``name``."""
    if value is None and none_ok:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"invalid {name}={value!r}: must be {'None or ' if none_ok else ''}an integer >= 1")
    return int(value)


def keep_shape(new: Any, old: Any) -> None:
    """``ValueError`` naming the space-fixing keys (:data:`SHAPE_KEYS`) whose values differ between the system
    configs ``new`` and ``old`` (``reset(options={"config": ...})`` may not change them)."""
    changed = [k for k in SHAPE_KEYS if getattr(new, k) != getattr(old, k)]
    if changed:
        raise ValueError(f"reset options cannot change {changed}: they fix the observation and action spaces; "
                         "make a new environment instead")
