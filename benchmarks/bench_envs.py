"""Step-rate benchmark: siftmoe_gym/Decode-v0 beside CartPole-v1, and the native vector env.

Run: ``python benchmarks/bench_envs.py [--steps 20000] [--vec-envs 1024] [--vec-steps 387] [--repeat 3]``.
Both single environments are made with ``gym.make`` (same default wrappers) and
stepped with random actions (``action_space.sample()``), resets included.  The
vector environment is stepped with random node sets, autoresets included
(387 steps = three 128-step episodes plus their autoreset steps), after one
untimed step and a reset (numba loads its compiled serving kernel on the
first step of a process, about 0.4 s).

Each figure is measured ``--repeat`` times and printed as a range; beside the
wall-clock rate the rate from the process's CPU time is shown, which a busy
shared machine disturbs less.
"""

from __future__ import annotations

import sys
import time

import gymnasium as gym
import numpy as np

import siftmoe_gym  # noqa: F401  (registers the environments)


def step_rate(env_id: str, steps: int, **kwargs) -> tuple[float, float]:
    """(wall-clock, CPU-time) steps per second of ``env.step`` with random actions, resets included."""
    env = gym.make(env_id, **kwargs)
    env.reset(seed=0)
    env.action_space.seed(0)
    sample = env.action_space.sample
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(sample())
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - t0), steps / max(time.process_time() - c0, 1e-9)


def vector_rate(env_id: str, num_envs: int, steps: int) -> tuple[float, float]:
    envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point")
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    space = envs.single_action_space
    n = space.n if hasattr(space, "n") and not hasattr(space, "nvec") else None
    shape = (num_envs,) + space.shape
    acts = [rng.integers(0, 2, size=shape) for _ in range(16)]
    envs.step(acts[0])  # untimed: numba's compilation or cache load (node-set serving kernel), once per process
    envs.reset(seed=0)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(steps):
        envs.step(acts[i % 16])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    envs.close()
    # CPU time counts every thread of the process: the reset's helper thread included
    return steps * num_envs / wall, steps * num_envs / max(cpu, 1e-9)


def _range(vals, fmt="{:,.0f}"):
    lo, hi = min(vals), max(vals)
    return fmt.format(lo) if len(vals) == 1 else f"{fmt.format(lo)}-{fmt.format(hi)}"


def main(argv=None) -> int:
    from siftmoe_gym.cli import OneLineParser, at_least, run_main

    def body() -> int:
        ap = OneLineParser(prog="bench_envs.py", description=__doc__.splitlines()[0])
        ap.add_argument("--steps", type=int, default=20000)
        ap.add_argument("--vec-envs", type=int, default=1024)
        ap.add_argument("--vec-steps", type=int, default=387)
        ap.add_argument("--repeat", type=int, default=3)
        args = ap.parse_args(argv)
        for name in ("steps", "vec_envs", "vec_steps", "repeat"):
            at_least("--" + name.replace("_", "-"), getattr(args, name), 1)
        run(args)
        return 0

    return run_main("bench_envs.py", body)


def run(args) -> None:
    carts, ours, ratios, ratios_cpu = [], [], [], []
    for _ in range(args.repeat):
        cart = step_rate("CartPole-v1", args.steps)
        our = step_rate("siftmoe_gym/Decode-v0", args.steps)
        carts.append(cart)
        ours.append(our)
        ratios.append(cart[0] / our[0])
        ratios_cpu.append(cart[1] / our[1])
    print(f"CartPole-v1            {_range([c[0] for c in carts]):>20} steps/s wall  {_range([c[1] for c in carts]):>20} cpu")
    print(f"siftmoe_gym/Decode-v0  {_range([o[0] for o in ours]):>20} steps/s wall  {_range([o[1] for o in ours]):>20} cpu")
    print(f"  step cost vs CartPole's (same run): {_range(ratios, '{:.2f}')}x wall, {_range(ratios_cpu, '{:.2f}')}x cpu (target <= 3x)")
    for env_id in ("siftmoe_gym/Decode-v0", "siftmoe_gym/FastFading-v0"):
        rates = [vector_rate(env_id, args.vec_envs, args.vec_steps) for _ in range(args.repeat)]
        print(f"native vector {env_id} x{args.vec_envs}: {_range([r[0] for r in rates])} env steps/s wall, "
              f"{_range([r[1] for r in rates])} per CPU-second (target >= 1,000,000)")


if __name__ == "__main__":
    sys.exit(main())
