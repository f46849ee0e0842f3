"""Stable-Baselines3 ``VecEnv`` over the native batched environment, and a factory for every route.

SB3 does not take a Gymnasium ``VectorEnv``: it wants its own ``VecEnv`` API
with *same-step* autoreset (the step that ends an episode already returns
the next episode's first observation and keeps the last one in
``info["terminal_observation"]``).  :class:`SiftMoESB3VecEnv` gives exactly
that over :class:`~siftmoe_gym.envs.vector.SiftMoEVectorEnv`, so all copies
are stepped at once in numpy instead of one by one in Python:

- copy ``i`` after ``seed(s)`` and ``reset()`` replays the single environment
  reset with seed ``s + i`` (what ``DummyVecEnv`` does with ``VecEnv.seed``);
  later episodes continue each copy's own generator, as a single environment
  reset without a seed does;
- rewards are float32, dones ``terminated or truncated``, and every info
  carries ``"TimeLimit.truncated"``;
- at an episode's end the info has ``"terminal_observation"``,
  ``"episode" = {"r", "l", "t"}`` exactly as ``stable_baselines3.common.monitor.Monitor``
  writes it (so ``ep_rew_mean`` / ``ep_len_mean`` reach the logger and
  TensorBoard without a ``VecMonitor``), the extra ``info_keywords`` copied
  into ``"episode"`` as ``Monitor(info_keywords=...)`` does, and the
  project's episode metrics, flat (``energy_per_token_j``,
  ``topk_energy_per_token_j``, ``saving_pct``, ``violation_rate``,
  ``latency_violation_rate``) and under ``"episode_metrics"``;
- per-step info keys of the environment (``energy_j``, ...) are copied into
  the per-copy dicts only when asked (``step_info_keys``): building 1,024
  dicts of 15 keys every step would cost more than the step.

:func:`make_sb3_vec_env` builds the native adapter, or ``DummyVecEnv`` /
``SubprocVecEnv`` over ``Monitor``-wrapped single environments, with the same
seeding, so the three routes give the same episodes.

``stable_baselines3`` is imported here only (lazily for users of the rest of
the package).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Iterable, Sequence

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices

from .base import SiftMoEEnv
from .vector import SiftMoEVectorEnv

VEC_KINDS = ("native", "dummy", "subproc")
EPISODE_METRIC_KEYS = SiftMoEEnv.EPISODE_METRICS


class SiftMoESB3VecEnv(VecEnv):
    """SB3 ``VecEnv`` over a native :class:`SiftMoEVectorEnv` (see the module docstring).

    ``SiftMoESB3VecEnv("siftmoe_gym/Decode-v0", num_envs=64, config={...})``
    or ``SiftMoESB3VecEnv(vector_env)``.
    """

    def __init__(
        self,
        env: str | SiftMoEVectorEnv,
        num_envs: int | None = None,
        *,
        info_keywords: Sequence[str] = (),
        step_info_keys: Sequence[str] | str = (),
        **env_kwargs: Any,
    ):
        if isinstance(env, str):
            import siftmoe_gym  # noqa: F401  (registers the ids)

            if num_envs is None:
                raise ValueError("num_envs is required when env is an environment id")
            venv = gym.make_vec(env, num_envs=num_envs, vectorization_mode="vector_entry_point", **env_kwargs).unwrapped
            self.env_id = env
        else:
            if env_kwargs:
                raise ValueError(f"environment keyword arguments {sorted(env_kwargs)} need an environment id, not an instance")
            venv = env.unwrapped
            self.env_id = getattr(getattr(venv, "spec", None), "id", None)
        if not isinstance(venv, SiftMoEVectorEnv):
            raise ValueError(f"need a siftmoe_gym native vector environment, got {type(venv).__name__}")
        if num_envs is not None and num_envs != venv.num_envs:
            raise ValueError(f"num_envs={num_envs} does not match the vector environment's {venv.num_envs} copies")
        self.venv = venv
        self.info_keywords = tuple(info_keywords)
        self.step_info_keys = step_info_keys if step_info_keys == "all" else tuple(step_info_keys)
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self.metadata = {"render_modes": [], "autoreset_mode": "same-step"}
        self._dict_obs = isinstance(self.observation_space, gym.spaces.Dict)
        self._actions = None
        self._returns = np.zeros(self.num_envs)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)
        self.t_start = time.time()
        self._started = False

    # ------------------------------------------------------------------ helpers
    @property
    def env(self) -> SiftMoEEnv:
        """The template single environment (configuration, spaces, system) all copies share."""
        return self.venv.env

    def _obs_row(self, obs, i: int):
        if self._dict_obs:
            return {key: val[i].copy() for key, val in obs.items()}
        return obs[i].copy()

    # ------------------------------------------------------------------ VecEnv API
    def reset(self):
        seeds = self._seeds
        if any(s is not None for s in seeds):
            if any(s is None for s in seeds):
                raise ValueError("the native adapter seeds all copies together; use seed(int)")
            seed = list(seeds)
        else:
            seed = None
        options = self._options
        opt = None
        if any(options):
            if any(o != options[0] for o in options):
                raise ValueError("the native adapter needs the same reset options for every copy")
            opt = options[0]
        obs, _ = self.venv.reset(seed=seed, options=opt)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        self._returns[:] = 0.0
        self._lengths[:] = 0
        self._started = True
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        if not self._started:
            raise RuntimeError("call reset() before step()")
        venv = self.venv
        obs, rew, term, trunc, info = venv.step(self._actions)
        self._actions = None
        dones = np.logical_or(term, trunc)
        n = self.num_envs
        rewards = rew.astype(np.float32)
        self._returns += rew
        self._lengths += 1
        keys = self.step_info_keys
        if keys == "all":
            keys = tuple(k for k in info if not k.startswith("_"))
        infos = [{"TimeLimit.truncated": False} for _ in range(n)]
        if keys:
            for key in keys:
                if key in info:
                    vals = info[key]
                    if isinstance(vals, dict):  # e.g. episode_metrics: a dict per copy (its masks left out)
                        for i in range(n):
                            infos[i][key] = {k: v[i] for k, v in vals.items() if not k.startswith("_")}
                        continue
                    for i in range(n):
                        infos[i][key] = vals[i]
        if dones.any():
            if not dones.all():  # fixed-length episodes keep every copy in step; guard the assumption
                raise RuntimeError("copies ended their episodes at different steps; the native adapter needs lockstep episodes")
            now = round(time.time() - self.t_start, 6)
            metrics = {key: info[key] for key in EPISODE_METRIC_KEYS if key in info}
            extra = {key: info[key] for key in self.info_keywords if key in info}
            for i in range(n):
                d = infos[i]
                d["TimeLimit.truncated"] = bool(trunc[i] and not term[i])
                d["terminal_observation"] = self._obs_row(obs, i)
                m = {key: float(val[i]) for key, val in metrics.items()}
                d.update(m)
                d["episode_metrics"] = m
                ep = {"r": round(float(self._returns[i]), 6), "l": int(self._lengths[i]), "t": now}
                for key, val in extra.items():
                    ep[key] = val[i]
                for key in self.info_keywords:
                    if key in m:
                        ep[key] = m[key]
                d["episode"] = ep
            # same-step autoreset: the copies' next episodes, from their own generators (no reseed)
            obs, _ = venv._reset_all()
            venv._autoreset = False
            self._returns[:] = 0.0
            self._lengths[:] = 0
        return obs, rewards, dones, infos

    def close(self) -> None:
        self.venv.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        """The native environment does not render (use ``vec="dummy"`` with ``render_mode`` for pictures)."""
        return [None for _ in range(self.num_envs)]

    # ------------------------------------------------------------- attributes
    def _indices(self, indices: VecEnvIndices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        if isinstance(indices, (int, np.integer)):
            return [int(indices)]
        return [int(i) for i in indices]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """Attributes of the template environment (shared by every copy: configuration, spaces, system...)."""
        value = getattr(self.env, attr_name)
        return [value for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute of the template environment; it is shared, so only all copies at once."""
        if sorted(self._indices(indices)) != list(range(self.num_envs)):
            raise ValueError("the native adapter's copies share one configuration: set_attr needs indices=None (all copies)")
        setattr(self.env, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        """Call a method of the template environment once per requested index (copies share it).

        Per-copy state (the current step, tokens, channels) lives in the batched
        arrays, not in the template; methods that read it (``instance``,
        ``render``) are not meaningful here: use ``vec="dummy"`` for those.
        """
        if method_name in ("render", "step", "reset", "close"):
            raise NotImplementedError(f"env_method({method_name!r}) is not available on the native adapter")
        method = getattr(self.env, method_name)
        return [method(*method_args, **method_kwargs) for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """True for SB3's ``Monitor``: the adapter writes Monitor's ``info["episode"]`` itself."""
        from stable_baselines3.common.monitor import Monitor

        answer = isinstance(wrapper_class, type) and issubclass(Monitor, wrapper_class)
        return [answer for _ in self._indices(indices)]


# ------------------------------------------------------------------- factory
def _make_single(env_id: str, env_kwargs: dict[str, Any]) -> gym.Env:
    import siftmoe_gym  # noqa: F401  (registers the ids in subprocesses too)

    return gym.make(env_id, **env_kwargs)


def has_native(env_id: str) -> bool:
    """Whether ``env_id`` has a siftmoe_gym native vector entry point."""
    import siftmoe_gym  # noqa: F401

    spec = gym.spec(env_id)
    entry = spec.vector_entry_point
    if isinstance(entry, str):
        if not entry.startswith("siftmoe_gym."):
            return False
        from gymnasium.envs.registration import load_env_creator

        entry = load_env_creator(entry)
    return isinstance(entry, type) and issubclass(entry, SiftMoEVectorEnv)


def make_sb3_vec_env(
    env_id: str,
    n_envs: int = 1,
    seed: int | None = None,
    vec: str = "native",
    *,
    info_keywords: Iterable[str] = (),
    step_info_keys: Iterable[str] | str = (),
    monitor_dir: str | None = None,
    start_method: str | None = None,
    **env_kwargs: Any,
) -> VecEnv:
    """An SB3 ``VecEnv`` of ``n_envs`` copies of ``env_id``.

    ``vec="native"``: :class:`SiftMoESB3VecEnv` (falls back to ``"dummy"``
    for ids without a native vector entry point); ``"dummy"`` /
    ``"subproc"``: ``DummyVecEnv`` / ``SubprocVecEnv`` over
    ``Monitor``-wrapped single environments (``stable_baselines3``'s
    ``make_vec_env``).  With ``seed``, copy ``i`` is reset with ``seed + i``
    at the first ``reset()`` in every route.  ``info_keywords`` go into
    ``info["episode"]`` (Monitor's ``info_keywords``); the episode metric
    keys are valid there.  ``step_info_keys`` (native route only; the others carry every key): the per-step
    keys copied into each copy's info, e.g. ``("cost",)``.  ``env_kwargs`` go to ``gym.make`` /
    ``gym.make_vec`` (``config``, ``action_mode``, ``obs_mode``, ...).
    """
    if vec not in VEC_KINDS:
        raise ValueError(f"invalid vec={vec!r}: must be one of {VEC_KINDS}")
    if isinstance(n_envs, bool) or not isinstance(n_envs, (int, np.integer)) or n_envs < 1:
        raise ValueError(f"invalid n_envs={n_envs!r}: must be an integer >= 1")
    info_keywords = tuple(info_keywords)
    if vec == "native" and has_native(env_id):
        if monitor_dir is not None:
            raise ValueError("monitor_dir needs vec='dummy' or 'subproc' (the native adapter logs through info['episode'])")
        venv: VecEnv = SiftMoESB3VecEnv(env_id, int(n_envs), info_keywords=info_keywords,
                                        step_info_keys=step_info_keys, **env_kwargs)
        if seed is not None:
            venv.seed(seed)
        return venv
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    cls = SubprocVecEnv if vec == "subproc" else DummyVecEnv
    vec_kwargs = {"start_method": start_method} if (vec == "subproc" and start_method) else None
    return make_vec_env(
        functools.partial(_make_single, env_id), n_envs=int(n_envs), seed=seed, vec_env_cls=cls,
        env_kwargs={"env_kwargs": dict(env_kwargs)}, monitor_dir=monitor_dir,
        monitor_kwargs={"info_keywords": info_keywords}, vec_env_kwargs=vec_kwargs,
    )
