"""Saved agents: load an SB3 model with what is known about the environment it was trained on.

:func:`load_agent` reads a model written by :mod:`agents.training` (the algorithm
comes from the JSON beside it); :func:`load_saved_agent` also accepts a bare SB3
zip without metadata, trying the supported classes in turn.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from siftmoe_gym.cli import one_line

from .algos import AgentConfigError, get_algo
from .runio import model_metadata, resolve_model_path


def load_algo_class(algo: str):
    """The SB3 / sb3-contrib class of a registered algorithm name."""
    return get_algo(algo).load_class()


def load_agent(model_path: str | os.PathLike, device: str = "cpu"):
    """``(model, metadata)`` of a saved agent; :class:`AgentConfigError` if the file or its metadata is missing."""
    path = resolve_model_path(model_path)
    meta = model_metadata(path)
    cls = load_algo_class(meta["algo"])
    try:
        model = cls.load(str(path), device=device)
    except Exception as exc:
        raise AgentConfigError(f"cannot load {path} as {cls.__name__}: {one_line(exc)[:400]}") from None
    return model, meta


def load_agent_and_env(model_path: str | os.PathLike, device: str = "cpu"):
    """``(model, metadata, env)``: a saved agent and the environment its metadata names, built and checked to fit
    the model's spaces; :class:`AgentConfigError` (one line) for anything that does not load, build or fit."""
    import gymnasium as gym

    from .envs import make_env

    model, meta = load_agent(model_path, device)
    try:
        env = make_env(meta["env_id"], meta.get("env_kwargs") or {})
    except AgentConfigError:
        raise
    except (TypeError, ValueError, KeyError, gym.error.Error) as exc:
        raise AgentConfigError(f"{model_path}: its metadata's environment cannot be built: {type(exc).__name__}: "
                               f"{one_line(exc)}") from None
    check_spaces(model, env, model_path, meta["env_id"])
    return model, meta, env


def check_spaces(model, env, path, env_id: str) -> None:
    """:class:`AgentConfigError` unless ``model`` acts and observes in ``env``'s spaces (a model labelled with
    another environment in its metadata would otherwise be evaluated on a wrong env without a word)."""
    for what in ("action_space", "observation_space"):
        mine, theirs = getattr(model, what), getattr(env, what)
        if mine != theirs:
            raise AgentConfigError(f"{path} does not fit {env_id} as this version builds it: its {what.replace('_', ' ')} "
                                   f"is {mine}, the environment's {theirs} (another env, or an older observation)")


class LoadedAgent:
    """A saved SB3 model plus what is known about the environment it was trained on."""

    def __init__(self, name: str, path: str, model, meta: dict[str, Any]):
        self.name, self.path, self.model, self.meta = name, path, model, meta

    @property
    def env_id(self) -> str | None:
        return self.meta.get("env_id")

    def env_kwargs(self) -> dict[str, Any]:
        kw = dict(self.meta.get("env_kwargs") or {})
        return {k: kw[k] for k in ("action_mode", "obs_mode") if k in kw}


def base_env_id(env_id: str) -> str:
    """The env id without its ``Discrete`` variant (``DecodeDiscrete-v0`` -> ``Decode-v0``)."""
    return env_id.replace("Discrete-v", "-v")


def load_saved_agent(name: str, path: str) -> LoadedAgent:
    """Load with the agents package's ``load_agent`` (model + metadata); else try the SB3 classes in turn."""
    try:
        model, meta = load_agent(path)
        return LoadedAgent(name, path, model, dict(meta))
    except Exception as exc:  # no metadata beside the model: fall back to trying the classes
        first_error = exc
    p = Path(path)
    if not p.exists() and p.with_name(p.name + ".zip").exists():
        p = p.with_name(p.name + ".zip")
    for mod, cls in (("stable_baselines3", "PPO"), ("sb3_contrib", "MaskablePPO"), ("sb3_contrib", "RecurrentPPO"),
                     ("stable_baselines3", "A2C"), ("stable_baselines3", "DQN")):
        try:
            model = getattr(importlib.import_module(mod), cls).load(str(p), device="cpu")
            return LoadedAgent(name, str(p), model, {"algo": cls.lower()})
        except Exception:
            continue
    raise ValueError(f"cannot load agent {name!r} from {path}: {first_error}")
