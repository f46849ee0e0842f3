"""Step-rate benchmark: siftmoe_gym/Decode-v0 beside CartPole-v1, and the native vector env.

Run: ``python benchmarks/bench_envs.py [--steps 20000] [--vec-envs 1024] [--vec-steps 300]``.
Both single environments are made with ``gym.make`` (same default wrappers) and
stepped with random actions (``action_space.sample()``), resets included.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np

import siftmoe_gym  # noqa: F401  (registers the environments)


def step_rate(env_id: str, steps: int, **kwargs) -> float:
    env = gym.make(env_id, **kwargs)
    env.reset(seed=0)
    env.action_space.seed(0)
    sample = env.action_space.sample
    t0 = time.perf_counter()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(sample())
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - t0)


def vector_rate(env_id: str, num_envs: int, steps: int) -> float:
    envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point")
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    space = envs.single_action_space
    n = space.n if hasattr(space, "n") and not hasattr(space, "nvec") else None
    shape = (num_envs,) + space.shape
    acts = [rng.integers(0, 2, size=shape) for _ in range(16)]
    t0 = time.perf_counter()
    for i in range(steps):
        envs.step(acts[i % 16])
    return steps * num_envs / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--vec-envs", type=int, default=1024)
    ap.add_argument("--vec-steps", type=int, default=384)
    args = ap.parse_args()
    cart = step_rate("CartPole-v1", args.steps)
    ours = step_rate("siftmoe_gym/Decode-v0", args.steps)
    print(f"CartPole-v1            {cart:12,.0f} steps/s  ({1e6 / cart:6.1f} us/step)")
    print(f"siftmoe_gym/Decode-v0  {ours:12,.0f} steps/s  ({1e6 / ours:6.1f} us/step)  ratio {cart / ours:.2f}x CartPole's step cost (target <= 3x)")
    for env_id in ("siftmoe_gym/Decode-v0", "siftmoe_gym/FastFading-v0"):
        rate = vector_rate(env_id, args.vec_envs, args.vec_steps)
        print(f"native vector {env_id} x{args.vec_envs}: {rate:12,.0f} env steps/s (target >= 1,000,000)")


if __name__ == "__main__":
    main()
