"""The yardstick: on seeded episodes of every setting, no registered policy's mean return beats ``siftmoe``'s
(paired episodes, beyond the 95% CI of the differences), siftmoe is feasible and scores exactly 1, and a
policy built to break a budget is marked infeasible and ranked last."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import baselines
import siftmoe_gym  # noqa: F401
from agents.evaluation import BaselineCache, comparison_rows, evaluate, mean_ci95, ranked
from agents.report.tables import format_table
from baselines.fastfading import lagrangian_bound
from siftmoe_gym.evaluation import evaluate_policy

SETTINGS = {
    "siftmoe_gym/Decode-v0": ({"episode_tokens": 16}, 30),
    "siftmoe_gym/Prefill-v0": ({"prefill_tokens": 8}, 12),
    "siftmoe_gym/FastFading-v0": ({}, 40),  # the default episode (32 tokens)
}
EXTRA = {"siftmoe_gym/FastFading-v0": [("dpp", {"v": v}) for v in (0.1, 1, 10, 100, 1000)]}


def _returns(env, name, seeds, **kw):
    if name == "random-within-budget":
        kw.setdefault("seed", 0)
    summary, eps = evaluate_policy(env, baselines.get_policy(name, env, **kw), seeds)
    return summary, np.array([e.episode_return for e in eps])


@pytest.mark.slow
@pytest.mark.parametrize("env_id", list(SETTINGS))
def test_no_policy_beats_siftmoe(env_id):
    cfg, n = SETTINGS[env_id]
    env = gym.make(env_id, config=cfg, action_mode="slots")
    setting = env.unwrapped.setting
    seeds = list(range(2000, 2000 + n))
    ref_summary, ref = _returns(env, "siftmoe", seeds)
    others = [(p, {}) for p in baselines.available_policies(setting) if p != "siftmoe"] + EXTRA.get(env_id, [])
    for name, kw in others:
        _, ret = _returns(env, name, seeds, **kw)
        mean, half, _ = mean_ci95(ret - ref)
        assert mean - half <= 1e-9 * abs(ref.mean()), f"{name} {kw} beats siftmoe: {mean:.4g} ± {half:.2g}"
    if setting == "fastfading":
        # the optimum keeps the average budget in expectation, and no policy spends less than the clairvoyant bound
        means = np.array(ref_summary["layer_mean_error_ratio"])
        assert np.all(means - np.array(ref_summary["layer_mean_error_ratio_ci95"]) <= 1.0), means
        u = env.unwrapped
        for s in seeds[:8]:
            _, eps = evaluate_policy(env, baselines.get_policy("siftmoe", env), [s])
            insts = []
            env.reset(seed=s)
            done = False
            while not done:
                insts.append(u.instance)
                _, _, term, trunc, _ = env.step(u.encode_action(u.instance.topk))
                done = term or trunc
            bound = lagrangian_bound(insts, eps_max_factor=float(u.system.config.eps_max_factor))
            if bound.feasible:
                assert eps[0].norm_energy_sum / eps[0].steps >= bound.value - 1e-9


def _cache(env, seeds):
    return BaselineCache(env, seeds)


def test_score_and_feasibility_on_a_budget_breaking_policy():
    """A policy that skips every slot saves the most energy but breaks the error budget: infeasible, ranked after
    every feasible row, and its score is below siftmoe's exact 1."""
    env = gym.make("siftmoe_gym/Decode-v0", config={"episode_tokens": 4}, action_mode="slots")
    seeds = list(range(10))

    class SkipAll(baselines.Policy):
        name = "skip-all"

        def decide_instance(self, inst):
            return np.full(len(inst.topk), -1)

    agent = evaluate(env, SkipAll(env), seeds)
    cache = _cache(env, seeds)
    rows = comparison_rows("skip-all", agent, cache, ["siftmoe", "topk", "nearest-local"])
    by = {r["policy"]: r for r in rows}
    assert by["siftmoe"]["score"] == 1.0 and by["siftmoe"]["feasible"]
    assert by["siftmoe"]["score_ci95_low"] == 1.0 and by["siftmoe"]["score_ci95_high"] == 1.0
    assert by["skip-all"]["regret"] < 0 and not by["skip-all"]["feasible"]
    assert by["skip-all"]["score"] < 1.0
    assert by["nearest-local"]["feasible"] and 0 < by["nearest-local"]["score"] <= 1.0
    order = [r["policy"] for r in ranked(rows)]
    assert order[0] == "siftmoe" and order.index("skip-all") > order.index("nearest-local")
    assert not by["topk"]["feasible"]  # top-k overruns the latency budget on infeasible links
    text = format_table(rows)
    line = next(l for l in text.splitlines() if " skip-all " in l)
    assert "NO" in line and line.split()[0].endswith("*")
    assert "siftmoe: the certified optimum" in text


def test_fastfading_feasibility_uses_the_layer_averages():
    """In fast fading a per-token excess above eps is allowed; the layer average is what must hold."""
    env = gym.make("siftmoe_gym/FastFading-v0", config={"episode_tokens": 8}, action_mode="slots")
    seeds = list(range(6))
    cache = _cache(env, seeds)
    agent = evaluate(env, baselines.get_policy("dpp", env, v=1000.0), seeds)
    rows = {r["policy"]: r for r in comparison_rows("dpp-1000", agent, cache, ["siftmoe", "nearest-local"])}
    assert rows["siftmoe"]["feasible"] and rows["siftmoe"]["average_within_budget"]
    assert not rows["dpp-1000"]["average_within_budget"] and not rows["dpp-1000"]["feasible"]
    assert rows["dpp-1000"]["score"] < 1.0


def test_a_row_that_ties_the_optimum_is_not_ranked_above_it():
    rows = [{"policy": "ppo (best)", "score": 1.0, "feasible": True},
            {"policy": "siftmoe", "score": 1.0, "feasible": True},
            {"policy": "ppo (final)", "score": 0.99, "feasible": True},
            {"policy": "skip", "score": 1.2, "feasible": False}]
    assert [r["policy"] for r in ranked(rows)] == ["siftmoe", "ppo (best)", "ppo (final)", "skip"]


def test_every_row_saves_against_the_same_topk_energy():
    """The '(best)' row a training run adds comes from the evaluation history; its saving is recomputed against the
    top-k row's energy like every other row's (a per-policy top-k reference would not compare in Prefill)."""
    from agents.evaluation import saving_vs_topk

    rows = [{"policy": "ppo (final)", "energy_per_token_j": 0.5, "saving_pct": 71.0},
            {"policy": "ppo (best)", "energy_per_token_j": 0.5, "saving_pct": 52.0},
            {"policy": "topk", "energy_per_token_j": 2.0, "saving_pct": 0.0}]
    out = saving_vs_topk(rows)
    assert [r["saving_pct"] for r in out] == [75.0, 75.0, 0.0]
    assert saving_vs_topk([{"policy": "a", "energy_per_token_j": 1.0, "saving_pct": 3.0}])[0]["saving_pct"] == 3.0


def test_a_one_episode_table_says_why_it_has_no_ci():
    """With one evaluation episode the 95% CI column says none can be drawn (it was blank under a legend that
    promises a CI); with two or more and finite bounds it holds them."""
    import math

    from agents.report.tables import format_table

    row = dict(policy="siftmoe", feasible=True, score=1.0, score_ci95_low=math.nan, score_ci95_high=math.nan, regret=0.0,
               energy_per_token_j=1e-3, saving_pct=80.0, mean_error_ratio=0.8, violation_rate=0.2,
               latency_violation_rate=0.0, mean_return=-10.0, episodes=1.0)
    assert "none (1 episode)" in format_table([row], legend=False)
    two = {**row, "episodes": 2.0, "score_ci95_low": 0.99, "score_ci95_high": 1.0}
    table = format_table([two], legend=False)
    assert "[0.990, 1.000]" in table and "none (1 episode)" not in table
