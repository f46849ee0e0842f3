#!/usr/bin/env python
"""Where a trained agent's node sets differ from the per-token optimum, state by state.

On each step of the seeded evaluation episodes, the agent's node set (``"nodes"`` action mode) is compared
with the node set of the per-token optimum at the step's own costs: :func:`siftmoe_gym.serving.solve_decode`
on ``env.unwrapped.instance`` (Decode: the certified optimum of the step; Prefill: the optimum at the current
marginal costs and loads, which ignores the rest of the block; FastFading: the cheapest decision within the
layer budget, which ignores the average).  The episode follows the agent's actions.  Prints the shares of
steps where the agent's set is the same, a strict superset (nodes paid for and not needed), a strict
subset, or another set, and its violations where the per-token optimum keeps the budget.

    python benchmarks/diagnose_agent.py --model RUN/final_model.zip --episodes 8

``--per-token ENV_ID`` instead plays the per-token optimum itself on the evaluation episodes and prints its
energy regret and excess violations against the setting's certified optimum (``siftmoe``), paired by seed:
how much is lost by deciding token by token at the step's own costs.

    python benchmarks/diagnose_agent.py --per-token siftmoe_gym/Prefill-v0 --episodes 8
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def diagnose(model_path: Path, episodes: int) -> dict:
    import numpy as np

    from agents.algos import AgentConfigError
    from agents.evaluation import eval_seeds
    from agents.models import load_agent_and_env
    from siftmoe_gym.serving import solve_decode

    model, meta, env = load_agent_and_env(model_path)
    u = env.unwrapped
    if u.action_mode != "nodes":
        raise AgentConfigError(f"{meta['env_id']} acts in {u.action_mode!r}; this compares node sets")
    counts = dict(steps=0, same=0, superset=0, subset=0, other=0, agent_violation=0, avoidable_violation=0)
    for seed in eval_seeds(episodes):
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            sol = solve_decode(u.instance)
            best = np.asarray(u.encode_action(sol.assignment)).astype(bool)
            action, _ = model.predict(obs, deterministic=True)
            act = np.asarray(action).astype(bool)
            obs, _, term, trunc, info = env.step(act.astype(np.int8))
            done = term or trunc
            counts["steps"] += 1
            key = ("same" if (act == best).all() else "superset" if (act >= best).all() else
                   "subset" if (act <= best).all() else "other")
            counts[key] += 1
            counts["agent_violation"] += bool(info["violation"])
            counts["avoidable_violation"] += bool(info["violation"]) and bool(sol.within_budget)
    n = counts.pop("steps")
    return {"env_id": meta["env_id"], "steps": n, **{k: v / n for k, v in counts.items()}}


def per_token(env_id: str, episodes: int) -> dict:
    import baselines
    from agents.envs import make_env
    from agents.evaluation import eval_seeds
    from siftmoe_gym.evaluation import CallablePolicy, evaluate_policy
    from siftmoe_gym.serving import solve_decode

    from agents.algos import AgentConfigError
    from siftmoe_gym.cli import one_line

    try:
        env = make_env(env_id, {"action_mode": "slots"})
    except AgentConfigError:
        raise
    except Exception as exc:  # not a siftmoe_gym environment, or one that refuses the slots action mode
        raise AgentConfigError(f"--per-token: {env_id}: {type(exc).__name__}: {one_line(exc)}") from None
    u = env.unwrapped
    seeds = eval_seeds(episodes)
    mine, _ = evaluate_policy(env, CallablePolicy(lambda obs, info: u.encode_action(solve_decode(u.instance).assignment)),
                              seeds)
    opt, _ = evaluate_policy(env, baselines.get_policy("siftmoe", env), seeds)
    return {"env_id": env_id, "episodes": episodes,
            "regret": mine["energy_per_token_j"] / opt["energy_per_token_j"] - 1.0,
            "violation_rate": mine["any_violation_rate"], "optimum_violation_rate": opt["any_violation_rate"],
            "excess_violation_rate": mine["any_violation_rate"] - opt["any_violation_rate"]}


def _body(argv=None) -> int:
    from siftmoe_gym.cli import OneLineParser

    p = OneLineParser(prog="diagnose_agent.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="a saved agent (.zip with its .json beside it)")
    p.add_argument("--per-token", metavar="ENV_ID", help="play the per-token optimum instead of an agent")
    p.add_argument("--episodes", type=int, default=8, help="evaluation episodes (the training evaluation's seeds)")
    args = p.parse_args(argv)
    if args.episodes < 1:
        p.error(f"--episodes must be >= 1, got {args.episodes}")
    if (args.model is None) == (args.per_token is None):
        p.error("give exactly one of --model and --per-token")
    from agents.algos import AgentConfigError

    if args.per_token is not None:
        try:
            print(json.dumps(per_token(args.per_token, args.episodes), indent=1))
        except AgentConfigError as exc:
            p.error(str(exc))
        return 0
    if not args.model.is_file():
        p.error(f"--model: {args.model} is not a file")
    try:
        result = diagnose(args.model, args.episodes)
    except AgentConfigError as exc:  # e.g. a model saved by another version of the policy
        p.error(f"--model: {exc}")
    print(json.dumps(result, indent=1))
    return 0


def main(argv=None) -> int:
    from siftmoe_gym.cli import run_main

    return run_main("diagnose_agent.py", lambda: _body(argv))


if __name__ == "__main__":
    sys.exit(main())
