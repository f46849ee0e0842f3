#!/usr/bin/env python
"""Training speed of PPO's policies: NodeSetPolicy against the plain MLP, measured in the same run.

Trains PPO with ``agents/hyperparams/ppo.yml``'s settings for ``--env`` (32 native copies, 128-step
rollouts, 10 epochs of 1,024-sample minibatches) once with ``policy=NodeSetPolicy`` (the file's) and once
with ``policy=MlpPolicy policy_kwargs="dict(net_arch=[128, 128])"``, ``--timesteps`` steps each after a
one-rollout warm-up, alternating for ``--repeat`` rounds, and prints each policy's environment steps per
second of ``learn()`` (median over rounds) and their ratio.  Torch runs on ``--threads`` threads.

    python benchmarks/bench_policy_speed.py --env siftmoe_gym/Decode-v0 --timesteps 40960 --repeat 3
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

POLICIES = {
    "NodeSetPolicy": {},
    "MlpPolicy": {"policy": "MlpPolicy", "policy_kwargs": "dict(net_arch=[128, 128])"},
}


def main(argv=None) -> int:
    from siftmoe_gym.cli import OneLineParser, at_least, run_main

    def body():
        p = OneLineParser(prog="bench_policy_speed.py", description=__doc__.split("\n\n")[0])
        p.add_argument("--env", default="siftmoe_gym/Decode-v0")
        p.add_argument("--timesteps", type=int, default=40_960)
        p.add_argument("--repeat", type=int, default=3)
        p.add_argument("--threads", type=int, default=1)
        args = p.parse_args(argv)
        for name in ("timesteps", "repeat", "threads"):
            at_least("--" + name, getattr(args, name), 1)
        import gymnasium as gym
        import torch

        import siftmoe_gym  # noqa: F401
        from agents import make_agent
        from siftmoe_gym.envs.sb3_vec import make_sb3_vec_env

        try:
            gym.spec(args.env)
        except gym.error.Error as exc:
            p.error(f"--env: {exc}")
        if not args.env.startswith("siftmoe_gym/"):
            p.error(f"--env: {args.env} is not a siftmoe_gym environment (NodeSetPolicy acts on node sets)")
        torch.set_num_threads(args.threads)
        models = {}
        for name, hp in POLICIES.items():
            venv = make_sb3_vec_env(args.env, 32, seed=0, vec="native")
            models[name] = make_agent("ppo", venv, seed=0, env_id=args.env, hyperparams=dict(hp))
            models[name].learn(4096)  # warm-up: one rollout and update
        rates: dict[str, list[float]] = {name: [] for name in POLICIES}
        for _ in range(args.repeat):
            for name, model in models.items():
                t0 = time.perf_counter()
                model.learn(args.timesteps, reset_num_timesteps=False)
                rates[name].append(args.timesteps / (time.perf_counter() - t0))
        med = {name: statistics.median(r) for name, r in rates.items()}
        print(f"{args.env}, PPO with ppo.yml's settings, {args.timesteps:,} steps x {args.repeat} rounds, "
              f"torch threads {args.threads}")
        for name in POLICIES:
            print(f"  {name:14s} {med[name]:8,.0f} steps/s (rounds: {', '.join(f'{r:,.0f}' for r in rates[name])})")
        print(f"  NodeSetPolicy / MlpPolicy: {med['NodeSetPolicy'] / med['MlpPolicy']:.2f}")
        return 0

    from agents.algos import AgentConfigError

    return run_main("bench_policy_speed.py", body, errors=(AgentConfigError,))


if __name__ == "__main__":
    sys.exit(main())
