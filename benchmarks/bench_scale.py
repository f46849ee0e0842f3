"""Real model sizes (issue 18): build, step, vector and exact-P1 costs over the presets, in one run.

    python benchmarks/bench_scale.py [--presets deepseek-v3 ...] [--steps 2000] [--vec-envs 1024]
                                     [--vec-envs-large 64] [--p1 300] [--milp 10] [--quick]

Every figure is measured in this run, on one core (BLAS and OpenMP set to one
thread before numpy loads), and printed beside a reference measured in the
same run, so that a busy shared machine shifts both:

- **build cold / warm**: ``gym.make("siftmoe_gym/Decode-v0", config=preset)``
  with an empty temporary model cache, then again with the cache it left
  (``siftmoe_gym.cache``); wall seconds.
- **env.step** per action mode (``nodes``, ``discrete`` when ``M <= 16``,
  ``experts``, ``slots``): random actions from the seeded action space,
  resets included, in CPU microseconds per step, and as a multiple of
  CartPole-v1's ``env.step`` (``gym.make``, the same wrappers) measured here.
- **vector**: the native vector ``Decode-v0`` (``vectorization_mode="vector_entry_point"``,
  random node sets, autoresets included) in environment steps per CPU second;
  ``--vec-envs`` copies at the default size, ``--vec-envs-large`` copies and
  ``episode_tokens=2`` above it (at deepseek-v3's size one copy's episode
  tables take about 40 MB, 1,024 copies would not fit in memory).
- **P1**: exact P1 (``solve_decode_batch``) on ``--p1`` random instances
  (``baselines.common.random_decode_instance``, budget 1x), decisions per CPU
  second, and the mean time of the HiGHS integer program
  (``baselines.references.milp_decode``) on the first ``--milp`` of them as a
  ratio.
- **native vector envs at the default size**, every setting (Decode, Prefill,
  FastFading, nodes actions) at ``--vec-envs`` copies, as a share of
  CartPole-v1's native vector rate (``gym.make_vec("CartPole-v1", ...,
  vectorization_mode="vector_entry_point")``) measured here.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

import siftmoe_gym  # noqa: E402,F401  (registers the environments)
from baselines.common import random_decode_instance  # noqa: E402
from baselines.references import milp_decode  # noqa: E402
from siftmoe_gym.config import PRESETS  # noqa: E402
from siftmoe_gym.serving import solve_decode_batch  # noqa: E402

ORDER = ("mixtral-small", "olmoe", "qwen3-30b-a3b", "deepseek-v3", "qwen3-235b-a22b")


def step_cost(env, steps: int) -> float:
    """CPU seconds per ``env.step`` with random actions, resets included."""
    env.reset(seed=0)
    env.action_space.seed(0)
    sample = env.action_space.sample
    acts = [sample() for _ in range(steps)]
    c0 = time.process_time()
    for a in acts:
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            env.reset()
    return (time.process_time() - c0) / steps


def vector_rate(env_id: str, num_envs: int, steps: int, **kwargs) -> float:
    """Environment steps per CPU second of a native vector env, random actions, autoresets included."""
    envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
    envs.reset(seed=0)
    envs.action_space.seed(0)
    acts = [envs.action_space.sample() for _ in range(8)]
    c0 = time.process_time()
    for i in range(steps):
        envs.step(acts[i % 8])
    cpu = time.process_time() - c0
    envs.close()
    return steps * num_envs / max(cpu, 1e-9)


def p1_rates(system, count: int, n_milp: int) -> tuple[float, float, float]:
    """(decisions per CPU second, HiGHS seconds per decision, worst relative energy gap to HiGHS)."""
    rng = np.random.default_rng(0)
    insts = [random_decode_instance(system, rng, budget_range=(1.0, 1.0)) for _ in range(count)]
    args = (np.stack([i.gates for i in insts]), np.stack([i.topk for i in insts]), np.array([i.layer for i in insts]),
            system.delta_ext, system.node_of, np.stack([i.node_cost for i in insts]),
            np.stack([i.node_feasible for i in insts]), np.array([i.budget for i in insts]),
            system.config.compute_energy_j)
    c0 = time.process_time()
    _, energy, _, _ = solve_decode_batch(*args)
    t_p1 = (time.process_time() - c0) / count
    c0 = time.process_time()
    worst = 0.0
    for q in range(n_milp):
        ref = milp_decode(insts[q])
        if ref.within_budget:
            worst = max(worst, abs(ref.energy_j - energy[q]) / max(ref.energy_j, 1e-300))
    t_milp = (time.process_time() - c0) / max(n_milp, 1)
    return 1.0 / t_p1, t_milp, worst


def build_times(name: str) -> tuple[float, float, object]:
    with tempfile.TemporaryDirectory() as d:
        old = os.environ.get("SIFTMOE_CACHE_DIR")
        os.environ["SIFTMOE_CACHE_DIR"] = d
        try:
            t0 = time.perf_counter()
            gym.make("siftmoe_gym/Decode-v0", config=name)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            env = gym.make("siftmoe_gym/Decode-v0", config=name)
            warm = time.perf_counter() - t0
        finally:
            if old is None:
                os.environ.pop("SIFTMOE_CACHE_DIR", None)
            else:
                os.environ["SIFTMOE_CACHE_DIR"] = old
    return cold, warm, env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=list(ORDER), choices=sorted(PRESETS))
    ap.add_argument("--steps", type=int, default=2000, help="env.step calls per action mode")
    ap.add_argument("--vec-envs", type=int, default=1024)
    ap.add_argument("--vec-envs-large", type=int, default=64, help="copies of the vector env above the default size")
    ap.add_argument("--vec-steps", type=int, default=64)
    ap.add_argument("--p1", type=int, default=300, help="random P1 instances per preset")
    ap.add_argument("--milp", type=int, default=10, help="of which solved by the integer program")
    ap.add_argument("--quick", action="store_true", help="a tenth of the samples")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.vec_steps, args.p1, args.milp = 200, 8, 30, 3
    cart = step_cost(gym.make("CartPole-v1"), max(args.steps, 20000))
    print(f"CartPole-v1 env.step: {cart * 1e6:.1f} us (CPU); ratios below are step costs over this")
    print()
    print("| preset | N, k, L, M | build cold (s) | build warm (s) | env.step: nodes | discrete | experts | slots "
          "| native vector (env steps/s) | exact P1 (decisions/s) | vs HiGHS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in [p for p in ORDER if p in args.presets]:
        cold, warm, env = build_times(name)
        cfg = env.unwrapped.system.config
        cells = []
        for mode in ("nodes", "discrete", "experts", "slots"):
            if mode == "discrete" and cfg.num_nodes > 16:
                cells.append("n/a (M > 16)")
                continue
            e = gym.make("siftmoe_gym/Decode-v0", config=name, action_mode=mode)
            c = step_cost(e, args.steps)
            cells.append(f"{c * 1e6:,.0f} us ({c / cart:.1f}x)")
        default = name == "mixtral-small"
        copies = args.vec_envs if default else args.vec_envs_large
        vkw = {} if default else {"config": {"preset": name, "episode_tokens": 2}}
        vec = vector_rate("siftmoe_gym/Decode-v0", copies, args.vec_steps, **vkw)
        rate, t_milp, worst = p1_rates(env.unwrapped.system, args.p1, args.milp)
        print(f"| {name} | {cfg.num_experts}, {cfg.top_k}, {cfg.num_layers}, {cfg.num_nodes} | {cold:.2f} | {warm:.2f} | "
              + " | ".join(cells)
              + f" | {vec:,.0f} ({copies} copies) | {rate:,.0f} | {t_milp * rate:,.0f}x (max gap {worst:.0e}) |")
    print()
    cart_vec = vector_rate("CartPole-v1", args.vec_envs, args.vec_steps * 8)
    print(f"native vector envs at the default size, {args.vec_envs} copies (CartPole-v1: {cart_vec:,.0f} env steps/s):")
    for env_id in ("siftmoe_gym/Decode-v0", "siftmoe_gym/FastFading-v0", "siftmoe_gym/Prefill-v0"):
        r = vector_rate(env_id, args.vec_envs, args.vec_steps)
        print(f"  {env_id:28s} {r:>12,.0f} env steps/s  ({r / cart_vec:.2f} of CartPole-v1's; target >= 0.33)")


if __name__ == "__main__":
    main()
