#!/usr/bin/env python
"""How well a plain MLP can imitate the P1 optimum's node sets on Decode-v0, learning from labels.

Collects ``--samples`` steps of Decode-v0 episodes (seeds from 10,000) labelled with the node set of the
certified optimum (``solve_decode``), trains an MLP (``--hidden`` units, two tanh layers, the size of the
default PPO MLP) on the flat observation by binary cross-entropy on the ``M`` node bits (the factored
Bernoulli head an SB3 MultiBinary policy has), and every 4 epochs prints the share of exactly right node
sets on the first 20,000 training steps and, on the standard 8 evaluation episodes, the energy regret,
the score and the feasibility against the optimum.  Supervised labels are far more information than a
reward: what the MLP cannot reach here, PPO with the same network does not reach from rewards either
(docs/training.md, "The policy: NodeSetPolicy").  The share of exact sets is measured on the first
20,000 training steps (what the network fits), regret and score on the evaluation episodes.

    python benchmarks/imitation_ceiling.py --samples 100000 --epochs 20
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _body(argv=None) -> int:
    from siftmoe_gym.cli import OneLineParser

    ap = OneLineParser(prog="imitation_ceiling.py", description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=100_000, help="labelled steps (default 100,000)")
    ap.add_argument("--epochs", type=int, default=20, help="passes over the samples (default 20)")
    ap.add_argument("--hidden", type=int, default=128, help="units per hidden layer (default 128)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for name in ("samples", "epochs", "hidden"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.seed < 0:
        ap.error(f"--seed must be >= 0, got {args.seed}")

    import gymnasium as gym
    import numpy as np
    import torch

    import baselines
    import siftmoe_gym  # noqa: F401
    from agents.evaluation import eval_seeds, evaluate, relative_metrics
    from siftmoe_gym.evaluation import CallablePolicy
    from siftmoe_gym.serving import solve_decode

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    env = gym.make("siftmoe_gym/Decode-v0")
    u = env.unwrapped
    xs, ys = [], []
    t0, seed = time.perf_counter(), 10_000
    while len(xs) < args.samples:
        obs, _ = env.reset(seed=seed)
        seed += 1
        done = False
        while not done:
            best = np.asarray(u.encode_action(solve_decode(u.instance).assignment), np.float32)
            xs.append(obs.copy())
            ys.append(best)
            obs, _, term, trunc, _ = env.step(best.astype(np.int8))
            done = term or trunc
    x, y = torch.tensor(np.array(xs)), torch.tensor(np.array(ys))
    print(f"{len(x):,} labelled steps in {time.perf_counter() - t0:.0f} s", flush=True)
    h = args.hidden
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], h), torch.nn.Tanh(), torch.nn.Linear(h, h), torch.nn.Tanh(),
                              torch.nn.Linear(h, y.shape[1]))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    seeds = eval_seeds(8)
    ref = evaluate(env, baselines.get_policy("siftmoe", env), seeds)
    policy = CallablePolicy(lambda o, info: (net(torch.as_tensor(o)[None])[0] > 0).numpy().astype(np.int8))
    print("epoch  loss    exact sets (training steps)  regret   score  feasible")
    for epoch in range(1, args.epochs + 1):
        perm = torch.randperm(len(x))
        total = 0.0
        for i in range(0, len(x), 512):
            idx = perm[i:i + 512]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        if epoch % 4 == 0 or epoch == args.epochs:
            with torch.no_grad():
                exact = ((net(x[:20000]) > 0).float() == y[:20000]).all(1).float().mean().item()
                m = relative_metrics(evaluate(env, policy, seeds), ref)
            print(f"{epoch:5d}  {total / len(x):.4f}  {exact:27.3f}  {m['regret']:+7.2%}  {m['score']:.3f}  "
                  f"{'yes' if m['feasible'] else 'NO'}", flush=True)
    return 0


def main(argv=None) -> int:
    from siftmoe_gym.cli import run_main

    return run_main("imitation_ceiling.py", lambda: _body(argv))


if __name__ == "__main__":
    sys.exit(main())
