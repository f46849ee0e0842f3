"""RLlib compatibility: register the siftmoe_gym environments with Ray and train RLlib PPO.

Needs the optional extra (``pip install -e ".[ray]"``); Ray is imported only inside the functions.

.. code-block:: python

    from agents.rllib import register_rllib_envs
    from ray.rllib.algorithms.ppo import PPOConfig

    register_rllib_envs()                      # every siftmoe_gym id, under the same name
    config = (PPOConfig()
              .environment("siftmoe_gym/Decode-v0", env_config={"episode_tokens": 16})
              .env_runners(num_env_runners=1)
              .training(gamma=0.0, train_batch_size_per_learner=512, minibatch_size=128))
    algo = config.build_algo()
    for _ in range(3):
        print(algo.train()["env_runners"]["episode_return_mean"])

or from the command line (local Ray, or ``--ray-address`` to join a cluster)::

    python -m agents.rllib --env siftmoe_gym/Decode-v0 --iterations 5

``env_config`` is passed to ``gym.make(env_id, **env_config)``: any keyword the
environments accept (``episode_tokens``, ``penalty``, ``config={...}``, ``action_mode``...).

**Action spaces.**  RLlib's default models have no ``MultiBinary`` action
distribution (``NotImplementedError: Unsupported action space: MultiBinary(4)``
in ray 2.60), so the registered creators present ``MultiBinary(M)`` actions
as the equivalent ``MultiDiscrete([2] * M)`` (:class:`MultiBinaryAsMultiDiscrete`;
same bits, same order, node ``m`` is entry ``m - 1``).  ``Discrete`` ids
(``*Discrete-v0``) are unchanged.  Pass ``multibinary_as_multidiscrete=False``
to register the raw environments (for custom RLModules).
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import gymnasium as gym
import numpy as np

from .ray_utils import init_ray, require_ray

DEFAULT_ENV = "siftmoe_gym/Decode-v0"


class MultiBinaryAsMultiDiscrete(gym.ActionWrapper):
    """Present a ``MultiBinary(M)`` action space as ``MultiDiscrete([2] * M)`` (same bits, same order)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.action_space
        if not isinstance(space, gym.spaces.MultiBinary) or len(space.shape) != 1:
            raise TypeError(f"expected a 1-D MultiBinary action space, got {space}")
        self.action_space = gym.spaces.MultiDiscrete(np.full(space.shape, 2, dtype=np.int64))

    def action(self, action):
        return np.asarray(action).reshape(self.env.action_space.shape).astype(self.env.action_space.dtype)


class RLlibEnvCreator:
    """Picklable env creator for ``register_env``: ``gym.make(env_id, **env_config)`` (+ the action adapter)."""

    def __init__(self, env_id: str, multibinary_as_multidiscrete: bool = True):
        self.env_id = env_id
        self.multibinary_as_multidiscrete = multibinary_as_multidiscrete

    def __call__(self, env_config: dict[str, Any] | None = None) -> gym.Env:
        import siftmoe_gym  # noqa: F401  (registers the ids in this worker process)

        env = gym.make(self.env_id, **dict(env_config or {}))  # EnvContext is a dict; its attributes are not kwargs
        if self.multibinary_as_multidiscrete and isinstance(env.action_space, gym.spaces.MultiBinary):
            env = MultiBinaryAsMultiDiscrete(env)
        return env


def register_rllib_envs(env_ids: Iterable[str] | None = None, multibinary_as_multidiscrete: bool = True) -> list[str]:
    """Register siftmoe_gym environments with ``ray.tune.registry.register_env`` under their Gymnasium ids.

    Every id of :data:`siftmoe_gym.envs.ENV_IDS` by default (``siftmoe_gym/Decode-v0``, ``Prefill-v0``,
    ``FastFading-v0`` and their ``*Discrete-v0`` variants).  The creator builds
    ``gym.make(env_id, **env_config)`` and, unless ``multibinary_as_multidiscrete=False``, presents
    ``MultiBinary`` actions as ``MultiDiscrete([2] * M)`` (RLlib has no MultiBinary distribution).
    Call it in the driver before building an algorithm (RLlib ships the registry to its workers).
    Idempotent; returns the registered ids.  Raises :class:`agents.ray_utils.RayUnavailable` without Ray.
    """
    require_ray()
    from ray.tune.registry import register_env

    from siftmoe_gym.envs import ENV_IDS

    ids = list(env_ids) if env_ids is not None else list(ENV_IDS)
    unknown = [i for i in ids if i not in ENV_IDS]
    if unknown:
        raise ValueError(f"unknown siftmoe_gym id(s) {unknown}; known: {list(ENV_IDS)}")
    for env_id in ids:
        register_env(env_id, RLlibEnvCreator(env_id, multibinary_as_multidiscrete))
    return ids


def ppo_config(env_id: str = DEFAULT_ENV, env_config: dict[str, Any] | None = None, *, seed: int = 0,
               train_batch_size: int = 512, minibatch_size: int = 128, num_epochs: int = 4,
               num_env_runners: int = 0, lr: float = 3e-4, gamma: float | None = None,
               hidden: tuple[int, ...] = (64, 64), **training: Any):
    """An RLlib ``PPOConfig`` for a siftmoe_gym id, CPU only (registers the environments first).

    ``gamma`` defaults to the value of ``agents/hyperparams/ppo.yml`` for the id (0 for Decode: a
    contextual bandit, see docs/training.md).  ``num_env_runners=0`` samples in the driver process.
    """
    register_rllib_envs()
    from ray.rllib.algorithms.ppo import PPOConfig

    if gamma is None:
        from .hyperparams import resolve_hyperparams

        gamma = float(resolve_hyperparams("ppo", env_id).get("gamma", 0.99))
    return (
        PPOConfig()
        .environment(env_id, env_config=dict(env_config or {}))
        .framework("torch")
        .resources(num_gpus=0)
        .learners(num_learners=0, num_gpus_per_learner=0)
        .env_runners(num_env_runners=num_env_runners, num_envs_per_env_runner=1, num_cpus_per_env_runner=1)
        .training(gamma=gamma, lr=lr, train_batch_size_per_learner=train_batch_size, minibatch_size=minibatch_size,
                  num_epochs=num_epochs, **training)
        .rl_module(model_config={"fcnet_hiddens": list(hidden)})
        .debugging(seed=seed)
    )


class RLlibPolicy:
    """``act(obs, info)`` of an RLlib algorithm's (new API stack) RLModule: deterministic action for ``env``."""

    def __init__(self, algo, env: gym.Env):
        import torch

        self._torch = torch
        self.module = algo.get_module()
        self.dist_cls = self.module.get_inference_action_dist_cls()
        self.env = env

    def act(self, obs, info):
        torch = self._torch
        with torch.no_grad():
            out = self.module.forward_inference({"obs": torch.as_tensor(np.asarray(obs, dtype=np.float32)[None])})
            dist = self.dist_cls.from_logits(out["action_dist_inputs"]).to_deterministic()
            a = dist.sample()[0].cpu().numpy()
        space = self.env.action_space
        if isinstance(space, gym.spaces.Discrete):
            return int(np.asarray(a).reshape(-1)[0])
        return np.asarray(a).reshape(space.shape).astype(space.dtype)


def evaluate_rllib(algo, env_id: str = DEFAULT_ENV, env_config: dict[str, Any] | None = None,
                   seeds: Iterable[int] = range(1_000_003, 1_000_007)) -> dict[str, Any]:
    """The RLlib policy and ``siftmoe`` on the same seeded episodes (:mod:`siftmoe_gym.evaluation`):
    the agent's summary plus ``regret = E / E_siftmoe - 1`` and siftmoe's energy and violation rate."""
    import baselines
    import siftmoe_gym  # noqa: F401
    from siftmoe_gym.evaluation import evaluate_policy

    seeds = [int(s) for s in seeds]
    env = gym.make(env_id, **dict(env_config or {}))
    agent, _ = evaluate_policy(env, RLlibPolicy(algo, env), seeds)
    ref, _ = evaluate_policy(env, baselines.get_policy("siftmoe", env), seeds)
    env.close()
    e_ref = ref["energy_per_token_j"]
    return {**agent, "regret": agent["energy_per_token_j"] / e_ref - 1.0 if e_ref > 0 else float("nan"),
            "siftmoe_energy_per_token_j": e_ref, "siftmoe_any_violation_rate": ref["any_violation_rate"],
            "excess_violation_rate": agent["any_violation_rate"] - ref["any_violation_rate"], "eval_seeds": seeds}


def train_rllib_ppo(env_id: str = DEFAULT_ENV, iterations: int = 3, env_config: dict[str, Any] | None = None, *,
                    address: str | None = None, num_cpus: int | None = 2, eval_episodes: int = 4,
                    verbose: bool = True, **config_kwargs: Any) -> dict[str, Any]:
    """Train RLlib PPO on ``env_id`` for ``iterations`` ``algo.train()`` calls and evaluate it against siftmoe.

    Starts a local Ray instance (``num_cpus``) unless Ray is already up, or joins ``address``; shuts down
    what it started.  Returns ``{"history": [per-iteration metrics], "eval": evaluate_rllib(...), "wall_s"}``.
    ``config_kwargs`` go to :func:`ppo_config` (``train_batch_size``, ``num_env_runners``, ``seed``, ...).
    """
    ray = require_ray()
    t0 = time.perf_counter()
    started = init_ray(address, num_cpus)
    algo = None
    try:
        algo = ppo_config(env_id, env_config, **config_kwargs).build_algo()
        history = []
        for i in range(int(iterations)):
            r = algo.train()
            runners = r.get("env_runners", {})
            row = {
                "iteration": i + 1,
                "env_steps": int(r.get("num_env_steps_sampled_lifetime", runners.get("num_env_steps_sampled_lifetime", 0))),
                "episode_return_mean": float(runners.get("episode_return_mean", float("nan"))),
                "episodes": int(runners.get("num_episodes_lifetime", 0)),
                "wall_s": time.perf_counter() - t0,
            }
            history.append(row)
            if verbose:
                print(f"iter {row['iteration']}: {row['env_steps']} env steps, episode return "
                      f"{row['episode_return_mean']:.1f}, {row['wall_s']:.1f} s", flush=True)
        ev = None
        if eval_episodes:
            seeds = range(1_000_003, 1_000_003 + int(eval_episodes))
            ev = evaluate_rllib(algo, env_id, env_config, seeds)
            if verbose:
                print(f"eval on {eval_episodes} seeded episodes: energy/token {1e3 * ev['energy_per_token_j']:.4f} mJ "
                      f"(siftmoe {1e3 * ev['siftmoe_energy_per_token_j']:.4f}), regret {100 * ev['regret']:.1f}%, "
                      f"any violation {100 * ev['any_violation_rate']:.1f}% "
                      f"(siftmoe {100 * ev['siftmoe_any_violation_rate']:.1f}%)", flush=True)
        return {"history": history, "eval": ev, "wall_s": time.perf_counter() - t0}
    finally:
        if algo is not None:
            algo.stop()
        if started:
            ray.shutdown()


PROG = "python -m agents.rllib"


def main(argv: list[str] | None = None) -> int:
    """``python -m agents.rllib``: bad input is one line ``python -m agents.rllib: error: ...`` and exit status 2,
    before Ray starts."""
    from .cliutil import run_main

    return run_main(PROG, lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    import json
    import math

    from .cliutil import OneLineParser, UsageError, at_least

    ap = OneLineParser(prog=PROG, description="RLlib PPO on a siftmoe_gym environment.")
    ap.add_argument("--env", default=DEFAULT_ENV)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--train-batch-size", type=int, default=512)
    ap.add_argument("--minibatch-size", type=int, default=128)
    ap.add_argument("--num-epochs", type=int, default=4)
    ap.add_argument("--num-env-runners", type=int, default=0, help="0: sample in the driver process")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-episodes", type=int, default=4)
    ap.add_argument("--env-config", default="{}", help='JSON for gym.make kwargs, e.g. \'{"episode_tokens": 16}\'')
    ap.add_argument("--ray-address", default=None, help="join this Ray cluster (e.g. auto or HOST:6379)")
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray instance")
    args = ap.parse_args(argv)
    for name in ("iterations", "train_batch_size", "minibatch_size", "num_epochs", "num_cpus"):
        at_least(f"--{name.replace('_', '-')}", getattr(args, name), 1)
    for name in ("num_env_runners", "seed", "eval_episodes"):
        at_least(f"--{name.replace('_', '-')}", getattr(args, name), 0)
    if args.minibatch_size > args.train_batch_size:
        raise UsageError(f"--minibatch-size {args.minibatch_size} exceeds --train-batch-size {args.train_batch_size}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr must be a positive number, got {args.lr}")
    try:
        env_config = json.loads(args.env_config)
    except ValueError as exc:
        raise UsageError(f"--env-config is not JSON: {exc}") from None
    if not isinstance(env_config, dict):
        raise UsageError(f"--env-config must be a JSON object of gym.make keyword arguments, got {args.env_config}")
    check_env(args.env, env_config)
    from .ray_utils import ray_missing_reason

    reason = ray_missing_reason("ray.rllib")
    if reason:
        raise UsageError(reason)
    res = train_rllib_ppo(args.env, args.iterations, env_config, address=args.ray_address,
                          num_cpus=args.num_cpus, eval_episodes=args.eval_episodes, seed=args.seed,
                          train_batch_size=args.train_batch_size, minibatch_size=args.minibatch_size,
                          num_epochs=args.num_epochs, num_env_runners=args.num_env_runners, lr=args.lr)
    print(f"done in {res['wall_s']:.1f} s")
    return 0


def check_env(env_id: str, env_config: dict[str, Any]) -> None:
    """:class:`~agents.algos.AgentConfigError` unless ``env_id`` is a siftmoe_gym id that builds with
    ``env_config`` (the environment checks every key and value)."""
    from siftmoe_gym.envs import ENV_IDS

    from .algos import AgentConfigError

    if env_id not in ENV_IDS:
        raise AgentConfigError(f"--env: unknown siftmoe_gym id {env_id!r}; known: {', '.join(ENV_IDS)}")
    try:
        gym.make(env_id, **env_config).close()
    except Exception as exc:
        raise AgentConfigError(f"--env-config: {env_id} refuses it: {type(exc).__name__}: {exc}") from None


if __name__ == "__main__":
    raise SystemExit(main())
