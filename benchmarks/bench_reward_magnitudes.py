#!/usr/bin/env python
"""How large Decode-v0's rewards get, and when an infeasible link pays (the numbers in DecodeEnv's docstring).

    python benchmarks/bench_reward_magnitudes.py [--episodes 30]

Steps every node subset of DecodeDiscrete-v0 in a native vector env (each episode copied once per subset,
common random numbers) and prints, per configuration:

- the lowest reward of activating one edge node that the P1 optimum does not use (a wasted activation), on
  a feasible link and on an infeasible one;
- on how many steps the best-scoring node set activates an infeasible link (an infeasible link "pays").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

import siftmoe_gym  # noqa: E402, F401
from siftmoe_gym.serving import solve_decode  # noqa: E402

CONFIGS = {
    "defaults": {},
    "local_capacity=4, placement=popular_local": {"local_capacity": 4, "placement": "popular_local"},
    "eps_rel=0.1": {"eps_rel": 0.1},
}


def measure(cfg: dict, episodes: int, seed0: int = 1000) -> str:
    single = gym.make("siftmoe_gym/DecodeDiscrete-v0", config=cfg).unwrapped
    m = single.n_nodes
    a = 1 << m
    venv = gym.make_vec("siftmoe_gym/DecodeDiscrete-v0", num_envs=episodes * a, vectorization_mode="vector_entry_point",
                        config=cfg)
    seeds = [seed0 + e for e in range(episodes)]
    venv.reset(seed=[s for s in seeds for _ in range(a)])
    acts = np.tile(np.arange(a), episodes)
    steps = single.env_config["episode_tokens"] * single.n_layers
    rew = np.zeros((episodes, steps, a))
    for t in range(steps):
        _, r, _, _, _ = venv.step(acts)
        rew[:, t] = r.reshape(episodes, a)
    wasted_feas, wasted_infeas, pays = [], [], 0
    for e, s in enumerate(seeds):
        single.reset(seed=s)
        for t in range(steps):
            inst = single.instance
            used = np.asarray(single.encode_action(solve_decode(inst).assignment))
            used_bits = {b for b in range(m) if (int(used) >> b) & 1}
            best = int(np.argmax(rew[e, t]))
            if any((best >> b) & 1 and not inst.node_feasible[b + 1] for b in range(m)):
                pays += 1
            for b in range(m):
                if b in used_bits:
                    continue
                (wasted_feas if inst.node_feasible[b + 1] else wasted_infeas).append(rew[e, t, 1 << b])
            single.step(used)
    venv.close()
    lo = lambda v: f"{min(v):.1f}" if v else "n/a"
    return (f"{episodes} episodes, {episodes * steps} steps: lowest reward of a wasted activation: feasible link "
            f"{lo(wasted_feas)}, infeasible link {lo(wasted_infeas)}; best node set activates an infeasible link on "
            f"{pays} of {episodes * steps} steps")


def parse_args(argv=None) -> argparse.Namespace:
    from siftmoe_gym.cli import OneLineParser, at_least

    ap = OneLineParser(prog="bench_reward_magnitudes.py", description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=30)
    args = ap.parse_args(argv)
    at_least("--episodes", args.episodes, 1)
    return args


def main(argv=None) -> int:
    from siftmoe_gym.cli import run_main

    return run_main("bench_reward_magnitudes.py", lambda: run(parse_args(argv)))


def run(args: argparse.Namespace) -> int:
    for name, cfg in CONFIGS.items():
        print(f"{name}: {measure(cfg, args.episodes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
