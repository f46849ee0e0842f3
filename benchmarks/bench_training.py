#!/usr/bin/env python
"""Learning-speed benchmark: steps and wall time until an agent reaches its final regret.

For every (environment, algorithm) pair, trains with the project's YAML
hyperparameters (``agents/hyperparams``) through :func:`agents.training.train`,
evaluating every ``--eval-freq`` steps against ``siftmoe`` (the optimum) and
``topk`` on fixed seeded episodes, and reports:

- the final regret ``E_agent / E_siftmoe - 1`` and violation rates;
- ``steps_to_final`` / ``wall_to_final_s``: the first evaluation from which
  the regret stays within ``--regret-tol`` (absolute, default 0.02 = 2 points)
  of the final regret and the either-budget violation rate stays within
  ``--viol-tol`` (default 0.005) of the final one;
- ``steps_to_target``: the first evaluation with regret <= 10% and at most 1%
  excess violations over siftmoe's on the same episodes (the issue's target),
  or null.

    python benchmarks/bench_training.py --steps 100000 --threads 1 \
        --envs siftmoe_gym/Decode-v0 siftmoe_gym/FastFading-v0 --algos ppo ppo_mask

Writes ``<out>.json`` and ``<out>.md`` (default ``benchmarks/results/bench_training``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def settle_point(history, regret_tol: float, viol_tol: float):
    """Index of the first evaluation after which regret and violations stay near their final values."""
    if not history:
        return None
    fr, fv = history[-1]["regret"], history[-1]["any_violation_rate"]
    idx = len(history) - 1
    for i in range(len(history) - 1, -1, -1):
        h = history[i]
        if abs(h["regret"] - fr) <= regret_tol and h["any_violation_rate"] <= fv + viol_tol:
            idx = i
        else:
            break
    return idx


def target_point(history, regret_max: float = 0.10, excess_max: float = 0.01):
    for i, h in enumerate(history):
        if h["regret"] <= regret_max and h["excess_violation_rate"] <= excess_max:
            return i
    return None


def run_one(env_id, algo, args):
    from agents.training import train

    t0 = time.perf_counter()
    res = train(
        env_id=env_id, algo=algo, steps=args.steps, seed=args.seed, n_envs=args.n_envs, logdir=args.logdir,
        run_name=f"bench_{env_id.split('/')[-1]}_{algo}_s{args.seed}_{int(time.time())}",
        eval_freq=args.eval_freq, eval_episodes=args.eval_episodes, progress_bar=False,
        baselines=["siftmoe", "topk"], threads=args.threads, print_table=False,
        hyperparams=args.hyperparams,
    )
    total_wall = time.perf_counter() - t0
    hist = res.history
    i = settle_point(hist, args.regret_tol, args.viol_tol)
    j = target_point(hist)
    final = hist[-1]
    curve = [{k: h[k] for k in ("timesteps", "wall_s", "regret", "violation_rate", "latency_violation_rate",
                                "any_violation_rate", "excess_violation_rate", "saving_pct", "mean_return")}
             for h in hist]
    return {
        "env_id": env_id, "algo": algo, "steps": res.timesteps, "total_wall_s": total_wall,
        "final_regret": final["regret"], "final_violation_rate": final["violation_rate"],
        "final_latency_violation_rate": final["latency_violation_rate"],
        "final_any_violation_rate": final["any_violation_rate"],
        "siftmoe_any_violation_rate": final["siftmoe_any_violation_rate"],
        "final_saving_pct": final["saving_pct"], "siftmoe_saving_pct": final["siftmoe_saving_pct"],
        "steps_to_final": hist[i]["timesteps"] if i is not None else None,
        "wall_to_final_s": hist[i]["wall_s"] if i is not None else None,
        "steps_to_target": hist[j]["timesteps"] if j is not None else None,
        "wall_to_target_s": hist[j]["wall_s"] if j is not None else None,
        "run_dir": str(res.run_dir), "curve": curve,
    }


def to_markdown(results, args) -> str:
    lines = [
        f"Command: `{' '.join(sys.argv)}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, torch threads "
        f"{args.threads}, n_envs {args.n_envs or 'from the YAML'}, eval every {args.eval_freq} steps on {args.eval_episodes} seeded episodes.",
        "",
        "| env | algo | steps | wall (s) | final regret | final err viol. | final any viol. (siftmoe) | steps to final | wall to final (s) | steps to target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['env_id']} | {r['algo']} | {r['steps']} | {r['total_wall_s']:.0f} | {100 * r['final_regret']:.2f}% "
            f"| {100 * r['final_violation_rate']:.2f}% | {100 * r['final_any_violation_rate']:.2f}% "
            f"({100 * r['siftmoe_any_violation_rate']:.2f}%) | {r['steps_to_final']} | "
            f"{r['wall_to_final_s']:.0f} | {r['steps_to_target'] if r['steps_to_target'] is not None else 'not reached'} |"
        )
    lines.append("")
    for r in results:
        lines.append(f"Learning curve {r['env_id']} / {r['algo']} (steps: regret %, any-violation %):  ")
        lines.append(", ".join(f"{c['timesteps']}: {100 * c['regret']:.1f}/{100 * c['any_violation_rate']:.1f}"
                               for c in r["curve"]))
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--envs", nargs="+", default=["siftmoe_gym/Decode-v0", "siftmoe_gym/FastFading-v0"])
    p.add_argument("--algos", nargs="+", default=["ppo", "ppo_mask"])
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--n-envs", type=int, default=None, help="default: the YAML's n_envs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-freq", type=int, default=5_000)
    p.add_argument("--eval-episodes", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--regret-tol", type=float, default=0.02)
    p.add_argument("--viol-tol", type=float, default=0.005)
    p.add_argument("--hyperparams", nargs="*", default=None)
    p.add_argument("--logdir", default="/tmp/siftmoe_bench_runs")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_training"))
    args = p.parse_args(argv)

    results = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for env_id in args.envs:
        for algo in args.algos:
            from agents.algos import AgentConfigError

            try:
                r = run_one(env_id, algo, args)
            except AgentConfigError as exc:
                print(f"skip {env_id} {algo}: {exc}", file=sys.stderr)
                continue
            results.append(r)
            print(f"{env_id} {algo}: {r['steps']} steps in {r['total_wall_s']:.0f}s, final regret "
                  f"{100 * r['final_regret']:.2f}%, err viol {100 * r['final_violation_rate']:.2f}%, any viol "
                  f"{100 * r['final_any_violation_rate']:.2f}% (siftmoe {100 * r['siftmoe_any_violation_rate']:.2f}%), "
                  f"settled at {r['steps_to_final']} steps / {r['wall_to_final_s']:.0f}s, target at {r['steps_to_target']}",
                  flush=True)
            # write as we go so a long run leaves partial results
            out.with_suffix(".json").write_text(json.dumps({"command": sys.argv, "results": results}, indent=2))
            out.with_suffix(".md").write_text(to_markdown(results, args) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
