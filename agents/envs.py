"""Environment construction for training and evaluation."""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym

from .algos import AgentConfigError, get_algo
from .masking import NodeActionMasker


def ensure_registered(env_id: str) -> None:
    """Import ``siftmoe_gym`` (which registers its ids) and check that ``env_id`` exists."""
    import siftmoe_gym  # noqa: F401  (registration side effect)

    try:
        gym.spec(env_id)
    except gym.error.Error:
        ids = sorted(k for k in gym.registry if k.startswith("siftmoe_gym/"))
        raise AgentConfigError(f"unknown environment id {env_id!r}; registered: {', '.join(ids) or 'none'}") from None


def env_setting(env_id: str) -> str:
    """The setting (``decode``, ``prefill``, ``fastfading``) of a registered env id, without building it."""
    return str(getattr(env_class(env_id), "setting", "decode"))


def env_class(env_id: str):
    """The environment class of a registered env id (its entry point), without building it."""
    ensure_registered(env_id)
    entry = gym.spec(env_id).entry_point
    if isinstance(entry, str):
        import importlib

        mod, _, name = entry.partition(":")
        entry = getattr(importlib.import_module(mod), name)
    return entry


def make_env(env_id: str, env_kwargs: dict[str, Any] | None = None) -> gym.Env:
    ensure_registered(env_id)
    return gym.make(env_id, **(env_kwargs or {}))


def make_baseline_env(env_id: str, env_kwargs: dict[str, Any] | None = None) -> gym.Env:
    """The environment baselines are evaluated on: ``env_id``'s setting in ``action_mode="slots"``.

    Slot assignments represent every decision exactly, so ``topk`` is plain top-k routing and every
    baseline acts as documented; in the node-set modes the environment would re-serve a policy's
    node set.  Episodes depend only on the seed, so an agent on ``env_id`` and the baselines here
    see identical episodes (common random numbers).
    """
    kwargs = {k: v for k, v in (env_kwargs or {}).items() if k != "action_mode"}
    return make_env(env_id.replace("Discrete-v", "-v"), {**kwargs, "action_mode": "slots"})


class _EnvFactory:
    """Picklable env constructor (works with subprocess start methods that pickle)."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any] | None, wrapper: Callable | None, masked: bool):
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs or {})
        self.wrapper = wrapper
        self.masked = masked

    def __call__(self) -> gym.Env:
        from stable_baselines3.common.monitor import Monitor

        env = make_env(self.env_id, self.env_kwargs)
        env = Monitor(env)
        if self.wrapper is not None:
            env = self.wrapper(env)
        if self.masked and not _has_masker(env):
            env = NodeActionMasker(env)
        return env


def _has_masker(env: gym.Env) -> bool:
    while isinstance(env, gym.Wrapper):
        if isinstance(env, NodeActionMasker) or hasattr(type(env), "action_masks"):
            return True
        env = env.env
    return hasattr(type(env), "action_masks")


def make_vec_env(
    env_id: str,
    algo: str,
    n_envs: int,
    seed: int,
    env_kwargs: dict[str, Any] | None = None,
    vec: str = "dummy",
    wrapper: Callable | None = None,
):
    """``n_envs`` copies of ``env_id``, seeded ``seed + i``: the native batched env behind SB3's
    VecEnv API (``vec="native"``), a DummyVecEnv or a SubprocVecEnv."""
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    if n_envs < 1:
        raise AgentConfigError(f"n_envs must be at least 1, got {n_envs}")
    if vec == "native":
        if wrapper is not None or get_algo(algo).masked:
            raise AgentConfigError("--vec native has no per-env wrappers or action masks; use --vec dummy or subproc")
        from siftmoe_gym.envs.sb3_vec import has_native, make_sb3_vec_env

        if not has_native(env_id):
            raise AgentConfigError(f"{env_id} has no native vector env; use --vec dummy or subproc")
        keys = ("cost",) if get_algo(algo).needs_cost else ()
        return make_sb3_vec_env(env_id, n_envs, seed=int(seed), vec="native", step_info_keys=keys, **(env_kwargs or {}))
    factory = _EnvFactory(env_id, env_kwargs, wrapper, get_algo(algo).masked)
    fns = [factory for _ in range(n_envs)]
    if vec == "dummy":
        venv = DummyVecEnv(fns)
    elif vec == "subproc":
        venv = SubprocVecEnv(fns)
    else:
        raise AgentConfigError(f"unknown --vec {vec!r}; use native, dummy or subproc")
    venv.seed(int(seed))
    return venv
