#!/usr/bin/env python
"""Where a trained agent's return differs from the optimum's: the reward's terms, summed over the evaluation episodes.

Plays the saved agent and the setting's certified optimum (``siftmoe``) on the same seeded evaluation
episodes and prints, for each, the sums of the reward's energy, accuracy and latency terms
(``info["reward_energy"]``, ``["reward_accuracy"]``, ``["reward_latency"]``), the steps over the error
budget and over the latency budget, and the mean error bound over the budget on the steps over it (the
accuracy penalty grows with it, :mod:`siftmoe_gym.envs.rewards`).

    python benchmarks/reward_terms.py --model RUN/final_model.zip --episodes 8
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def terms(env, policy, seeds) -> dict:
    out = {"reward_energy": 0.0, "reward_accuracy": 0.0, "reward_latency": 0.0, "steps": 0, "over_budget": 0,
           "over_latency": 0, "mean_error_over_budget_when_over": 0.0}
    over_sum = 0.0
    for seed in seeds:
        obs, info = env.reset(seed=seed)
        if hasattr(policy, "reset"):
            policy.reset()
        done = False
        while not done:
            obs, _, term, trunc, info = env.step(policy.act(obs, info))
            done = term or trunc
            for key in ("reward_energy", "reward_accuracy", "reward_latency"):
                out[key] += float(info[key])
            out["steps"] += 1
            out["over_latency"] += bool(info["latency_violation"] > 0)
            if info["violation"]:
                out["over_budget"] += 1
                over_sum += float(info["error_bound"]) / float(info["budget"])
    out["mean_error_over_budget_when_over"] = over_sum / max(out["over_budget"], 1)
    return out


def _body(argv=None) -> int:
    from siftmoe_gym.cli import OneLineParser

    p = OneLineParser(prog="reward_terms.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="a saved agent (.zip with its .json beside it)")
    p.add_argument("--episodes", type=int, default=8, help="evaluation episodes (the training evaluation's seeds)")
    args = p.parse_args(argv)
    if args.episodes < 1:
        p.error(f"--episodes must be >= 1, got {args.episodes}")
    if not args.model.is_file():
        p.error(f"--model: {args.model} is not a file")
    import baselines
    from agents.algos import AgentConfigError
    from agents.evaluation import eval_seeds
    from agents.models import load_agent_and_env
    from agents.policy import AgentPolicy

    try:
        model, meta, env = load_agent_and_env(args.model)
    except AgentConfigError as exc:
        p.error(f"--model: {exc}")
    seeds = eval_seeds(args.episodes)
    result = {"env_id": meta["env_id"], "episodes": args.episodes,
              "agent": terms(env, AgentPolicy(model, env), seeds),
              "siftmoe": terms(env, baselines.get_policy("siftmoe", env), seeds)}
    print(json.dumps(result, indent=1))
    return 0


def main(argv=None) -> int:
    from siftmoe_gym.cli import run_main

    return run_main("reward_terms.py", lambda: _body(argv))


if __name__ == "__main__":
    sys.exit(main())
