#!/usr/bin/env python
"""Convergence of the fast-fading dynamic program (``siftmoe`` in FastFading-v0) in grid size and sample count.

    python benchmarks/bench_fastfading_dp.py [--episodes 40] [--samples 32 64 128 256 512] [--grids 33 65 129 257 513]

For every (samples, grid) pair: the DP's own estimate of the optimal expected return (``sum_l V_0(0)``,
averaged over the episodes' distances), the mean return the policy it defines actually gets on the same
seeded default episodes (common random numbers, 95% CI), that return's paired difference to the finest
setting's (largest samples and grid; 95% CI of the per-episode differences), and the seconds one DP
takes.  Prints a markdown table (docs/model.md quotes it) and, for reference, the same episodes under
drift-plus-penalty.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

import baselines  # noqa: E402
import siftmoe_gym  # noqa: E402, F401
from siftmoe_gym.evaluation import run_episode  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    """The options, checked (:class:`~siftmoe_gym.cli.UsageError` naming the option)."""
    from siftmoe_gym.cli import OneLineParser, UsageError, at_least

    ap = OneLineParser(prog="bench_fastfading_dp.py", description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1_000_003, help="first episode seed (default: the evaluation seeds)")
    ap.add_argument("--samples", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    ap.add_argument("--grids", type=int, nargs="+", default=[33, 65, 129, 257, 513])
    ap.add_argument("--fixed-samples", type=int, default=256, help="samples while the grid varies")
    ap.add_argument("--fixed-grid", type=int, default=129, help="grid while the samples vary")
    args = ap.parse_args(argv)
    at_least("--episodes", args.episodes, 2)
    at_least("--seed", args.seed, 0)
    for name, values, low in (("--samples", args.samples, 1), ("--grids", args.grids, 2)):
        bad = [v for v in values if v < low]
        if bad:
            raise UsageError(f"{name} must all be >= {low}, got {bad}")
    at_least("--fixed-samples", args.fixed_samples, 1)
    at_least("--fixed-grid", args.fixed_grid, 2)
    return args


def main(argv=None) -> int:
    from siftmoe_gym.cli import run_main

    return run_main("bench_fastfading_dp.py", lambda: run(parse_args(argv)))


def run(args: argparse.Namespace) -> int:
    from agents.evaluation import mean_ci95  # loads torch: after the options are checked

    env = gym.make("siftmoe_gym/FastFading-v0", action_mode="slots")
    seeds = list(range(args.seed, args.seed + args.episodes))
    pairs = [(s, args.fixed_grid) for s in args.samples] + [(args.fixed_samples, g) for g in args.grids
                                                            if (args.fixed_samples, g) not in
                                                            [(s, args.fixed_grid) for s in args.samples]]
    finest = (max(args.samples + [args.fixed_samples]), max(args.grids + [args.fixed_grid]))
    if finest not in pairs:
        pairs.append(finest)
    results = {}
    for samples, grid in pairs:
        pol = baselines.get_policy("siftmoe", env, samples=samples, grid=grid)
        rets, ests, secs = [], [], []
        for s in seeds:
            t0 = time.perf_counter()
            env.reset(seed=s)
            dp = pol.dynamic_program()
            secs.append(time.perf_counter() - t0)
            ests.append(dp.expected_return)
            rets.append(run_episode(env, pol, s).episode_return)
        results[(samples, grid)] = (np.array(rets), float(np.mean(ests)), float(np.mean(secs)))
    ref = results[finest][0]
    print(f"FastFading-v0 defaults, {len(seeds)} episodes (seeds {seeds[0]}..{seeds[-1]}); difference: paired, "
          f"against samples={finest[0]}, grid={finest[1]}\n")
    print("| samples | grid | DP estimate of the optimal return | realized mean return (95% CI) "
          "| difference to the finest (95% CI) | seconds per DP |")
    print("|---|---|---|---|---|---|")
    for (samples, grid), (rets, est, sec) in results.items():
        m, h, _ = mean_ci95(rets)
        dm, dh, _ = mean_ci95(rets - ref)
        diff = "0 (reference)" if (samples, grid) == finest else f"{dm:+.2f} ± {dh:.2f}"
        print(f"| {samples} | {grid} | {est:.2f} | {m:.2f} ± {h:.2f} | {diff} | {sec:.3f} |")
    for v in (0.1, 1, 10, 100):
        pol = baselines.get_policy("dpp", env, v=v)
        m, h, _ = mean_ci95([run_episode(env, pol, s).episode_return for s in seeds])
        print(f"drift-plus-penalty V={v:g}: mean return {m:.2f} ± {h:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
