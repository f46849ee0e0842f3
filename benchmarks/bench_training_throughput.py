#!/usr/bin/env python
"""Training throughput: SB3 PPO frames per second through the native adapter, DummyVecEnv and SubprocVecEnv.

For each route (``native``: :class:`siftmoe_gym.envs.sb3_vec.SiftMoESB3VecEnv`
over the batched environment; ``dummy`` / ``subproc``: SB3's vector envs
over ``Monitor``-wrapped single environments) and each number of copies,
trains PPO (SB3 defaults: MLP 64x64, 10 epochs, minibatch 64; ``n_steps`` so
that one rollout holds ``--rollout`` frames) for ``--timesteps`` frames and
reports the frames per second of ``learn()`` and the share of its wall time
spent inside the environment (``reset``, ``step_async`` and ``step_wait`` of
the VecEnv, timed by a thin wrapper).

    python benchmarks/bench_training_throughput.py [--timesteps 16384] [--copies 8 64] [--threads 1] [--repeat 1]

The machine is assumed shared and small (2 cores): torch runs with
``--threads`` threads; SubprocVecEnv starts one process per copy.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

# torch and stable_baselines3 load (seconds) only after the options are checked
VECS = ("native", "dummy", "subproc")  # siftmoe_gym.envs.sb3_vec.VEC_KINDS (that module loads torch)


def timed_vec_env(venv):
    """``venv`` wrapped so that it accumulates the wall time spent in its reset / step_async / step_wait
    (``.env_time``)."""
    from stable_baselines3.common.vec_env import VecEnvWrapper

    class TimedVecEnv(VecEnvWrapper):
        def __init__(self, venv):
            super().__init__(venv)
            self.env_time = 0.0

        def reset(self):
            t = time.perf_counter()
            obs = self.venv.reset()
            self.env_time += time.perf_counter() - t
            return obs

        def step_async(self, actions):
            t = time.perf_counter()
            self.venv.step_async(actions)
            self.env_time += time.perf_counter() - t

        def step_wait(self):
            t = time.perf_counter()
            out = self.venv.step_wait()
            self.env_time += time.perf_counter() - t
            return out

    return TimedVecEnv(venv)


def run(env_id: str, vec: str, copies: int, timesteps: int, rollout: int, seed: int, start_method: str | None):
    from stable_baselines3 import PPO

    from siftmoe_gym.envs.sb3_vec import make_sb3_vec_env

    venv = timed_vec_env(make_sb3_vec_env(env_id, copies, seed=seed, vec=vec, start_method=start_method))
    n_steps = max(1, rollout // copies)
    model = PPO("MlpPolicy", venv, n_steps=n_steps, seed=seed, device="cpu", verbose=0)
    t = time.perf_counter()
    model.learn(total_timesteps=timesteps)
    wall = time.perf_counter() - t
    frames = model.num_timesteps
    venv.close()
    return frames / wall, venv.env_time / wall, frames, wall


def parse_args(argv=None) -> argparse.Namespace:
    """The options, checked (:class:`~siftmoe_gym.cli.UsageError` naming the option), before torch loads."""
    from siftmoe_gym.cli import OneLineParser, UsageError, at_least

    ap = OneLineParser(prog="bench_training_throughput.py", description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="siftmoe_gym/Decode-v0")
    ap.add_argument("--timesteps", type=int, default=16384)
    ap.add_argument("--rollout", type=int, default=2048, help="frames per PPO rollout (n_steps = rollout // copies)")
    ap.add_argument("--copies", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--vec", nargs="+", default=list(VECS), choices=VECS)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start-method", default=None, help="SubprocVecEnv start method (default: SB3's)")
    args = ap.parse_args(argv)
    for name, low in (("--timesteps", 1), ("--rollout", 2), ("--threads", 1), ("--repeat", 1), ("--seed", 0)):
        at_least(name, getattr(args, name[2:]), low)
    if min(args.copies) < 1:
        raise UsageError(f"--copies must all be >= 1, got {args.copies}")
    if args.rollout < max(args.copies):
        raise UsageError(f"--rollout ({args.rollout}) must be >= every --copies ({max(args.copies)}): "
                         "a rollout holds at least one step of each copy")
    methods = multiprocessing.get_all_start_methods()
    if args.start_method is not None and args.start_method not in methods:
        raise UsageError(f"--start-method must be one of {methods}, got {args.start_method!r}")
    import gymnasium as gym

    import siftmoe_gym  # noqa: F401  (registers the environments)

    try:
        gym.spec(args.env)
    except gym.error.Error as exc:
        raise UsageError(f"--env {args.env!r}: {exc}") from None
    return args


def main(argv=None) -> int:
    from siftmoe_gym.cli import run_main

    return run_main("bench_training_throughput.py", lambda: report(parse_args(argv)))


def report(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    print(f"{args.env}: PPO, {args.timesteps} frames, rollout {args.rollout} frames, torch threads {args.threads}")
    print(f"{'vec':<8} {'copies':>6} {'frames/s':>18} {'env share':>16} {'wall s':>8}")
    for copies in args.copies:
        for vec in args.vec:
            fps, share, walls = [], [], []
            for r in range(args.repeat):
                f, s, _, w = run(args.env, vec, copies, args.timesteps, args.rollout, args.seed + r, args.start_method)
                fps.append(f)
                share.append(s)
                walls.append(w)
            fr = f"{min(fps):,.0f}" if len(fps) == 1 else f"{min(fps):,.0f}-{max(fps):,.0f}"
            sh = f"{100 * min(share):.1f}%" if len(share) == 1 else f"{100 * min(share):.1f}-{100 * max(share):.1f}%"
            print(f"{vec:<8} {copies:>6} {fr:>18} {sh:>16} {np.mean(walls):>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
