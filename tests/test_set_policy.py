"""NodeSetPolicy (agents/set_policy.py): the candidate features against an independent computation from the
decision instance, the set distribution, PPO training, saving and loading, and the refusals."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th

import siftmoe_gym  # noqa: F401
from agents import AgentConfigError, make_agent
from agents.set_policy import NodeSetDistribution, NodeSetPolicy, SetFeatures, resolve_policy, set_policy_kwargs
from siftmoe_gym.envs.observations import SOLO_CLIP

ROOT = Path(__file__).resolve().parents[1]


def _least_error(ins, allowed: set[int]) -> float:
    """The least error bound over budget with the experts of ``allowed`` nodes (node 0 always), from the instance's
    own Δ and σ (model.md section 4: each slot its best server, or skipped)."""
    n = ins.num_experts
    total = 0.0
    for e, g in zip(ins.topk, ins.gates):
        best = ins.sigma[e]
        for j in range(n):
            if int(ins.node_of[j]) in allowed:
                best = min(best, ins.delta[e, j])
        total += g * best
    return total / ins.budget


@pytest.mark.parametrize("env_id", ["siftmoe_gym/Decode-v0", "siftmoe_gym/Prefill-v0", "siftmoe_gym/FastFading-v0"])
def test_candidate_error_is_the_least_error_of_each_feasible_node_set(env_id):
    env = gym.make(env_id)
    u = env.unwrapped
    kw = set_policy_kwargs(env, None)
    feats = SetFeatures(kw["obs_slices"], kw["top_k"], kw["n_nodes"])
    m = u.n_nodes
    checked = 0
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        for _ in range(12):
            ins = u.instance
            cand = feats(th.as_tensor(obs)[None])[0].numpy()  # (2**M, 6)
            for idx in range(2 ** m):
                members = {b + 1 for b in range(m) if idx >> b & 1}
                allowed = {0} | {x for x in members if ins.node_feasible[x]}
                ref = _least_error(ins, allowed)
                if ref < SOLO_CLIP / 2:  # clipped terms aside
                    assert cand[idx, 0] == pytest.approx(ref, rel=1e-4, abs=1e-5)
                    assert cand[idx, 1] == pytest.approx(max(ref - 1.0, 0.0), rel=1e-4, abs=1e-5)
                    if abs(ref - 1.0) > 1e-4:
                        assert cand[idx, 2] == float(ref <= 1.0)
                    checked += 1
                cost = sum(obs[u.obs_slices["node_cost"]][x - 1] for x in members)
                assert cand[idx, 3] == pytest.approx(cost, rel=1e-5, abs=1e-6)
                assert cand[idx, 4] == sum(not ins.node_feasible[x] for x in members)
                assert cand[idx, 5] == pytest.approx(len(members) / m)
            obs, *_ = env.step(env.action_space.sample())
    assert checked > 100


def test_the_optimums_node_set_is_the_cheapest_candidate_within_the_budget():
    """On Decode-v0 the features determine the P1 optimum's set: the cheapest feasible set with err <= 1."""
    from siftmoe_gym.serving import solve_decode

    env = gym.make("siftmoe_gym/Decode-v0")
    u = env.unwrapped
    kw = set_policy_kwargs(env, None)
    feats = SetFeatures(kw["obs_slices"], kw["top_k"], kw["n_nodes"])
    agree = total = 0
    for seed in range(4):
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            cand = feats(th.as_tensor(obs)[None])[0].numpy()
            ok = (cand[:, 2] == 1.0) & (cand[:, 4] == 0)
            best = u.encode_action(solve_decode(u.instance).assignment)
            idx = int(sum(int(b) << i for i, b in enumerate(best)))
            if ok.any():
                total += 1
                cheapest = cand[ok, 3].min()
                agree += bool(ok[idx]) and cand[idx, 3] <= cheapest + 1e-5
            obs, _, term, trunc, _ = env.step(best)
            done = term or trunc
    assert total > 200 and agree / total > 0.97, (agree, total)


def test_set_distribution_bits_and_indices_agree():
    th.manual_seed(0)
    logits = th.randn(5, 16)
    bits = NodeSetDistribution(4, True, None).proba_distribution(logits)
    ids = NodeSetDistribution(4, False, None).proba_distribution(logits)
    all_bits = th.tensor(list(itertools.product([0, 1], repeat=4)), dtype=th.float32).flip(1)  # row i = bits of i
    for i in range(16):
        a = all_bits[i].expand(5, 4)
        assert th.allclose(bits.log_prob(a), ids.log_prob(th.full((5,), i)))
    assert th.allclose(bits.log_prob(all_bits[None].expand(5, 16, 4).reshape(-1, 4).view(5, 16, 4)[:, 0]),
                       th.log_softmax(logits, 1)[:, 0])
    mode = bits.mode()
    assert th.equal((mode @ (2.0 ** th.arange(4))).long(), logits.argmax(1))
    s = bits.sample()
    assert s.shape == (5, 4) and set(s.unique().tolist()) <= {0.0, 1.0}
    assert th.allclose(th.exp(th.stack([bits.log_prob(all_bits[i].expand(5, 4)) for i in range(16)])).sum(0),
                       th.ones(5))


@pytest.mark.parametrize("env_id", ["siftmoe_gym/Decode-v0", "siftmoe_gym/DecodeDiscrete-v0"])
def test_ppo_learns_saves_and_loads_with_the_node_set_policy(tmp_path, env_id):
    from stable_baselines3 import PPO

    from siftmoe_gym.envs.sb3_vec import make_sb3_vec_env

    venv = make_sb3_vec_env(env_id, 4, seed=0, vec="native", config={"episode_tokens": 4})
    model = make_agent("ppo", venv, seed=0, env_id=env_id,
                       hyperparams={"policy": "NodeSetPolicy", "n_steps": 64, "batch_size": 128, "n_epochs": 2})
    assert isinstance(model.policy, NodeSetPolicy)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(512)
    assert any(not th.equal(a, b) for a, b in zip(before, model.policy.parameters()))
    obs = venv.reset()
    act, _ = model.predict(obs, deterministic=True)
    assert venv.action_space.contains(act[0] if act.ndim > 1 else int(act[0]))
    model.save(tmp_path / "m.zip")
    again = PPO.load(tmp_path / "m.zip")
    assert np.array_equal(again.predict(obs, deterministic=True)[0], act)


@pytest.mark.parametrize("algo, kwargs, msg", [
    ("dqn", {}, "works with"),
    ("ppo", {"action_mode": "experts"}, "action_mode"),
    ("ppo", {"obs_mode": "dict"}, "obs_mode"),
    ("ppo", {"solo_error_features": False}, "solo_error_features"),
    ("ppo", {"num_nodes": 12}, "edge nodes"),
])
def test_refusals_name_the_reason(algo, kwargs, msg):
    env_kw = {k: v for k, v in kwargs.items() if k in ("action_mode", "obs_mode")}
    config = {k: v for k, v in kwargs.items() if k not in env_kw}
    env = gym.make("siftmoe_gym/Decode-v0", config=config, **env_kw)
    with pytest.raises(AgentConfigError, match=msg):
        resolve_policy(algo, {"policy": "NodeSetPolicy"}, env)


def test_a_conflicting_policy_kwarg_is_refused():
    env = gym.make("siftmoe_gym/Decode-v0")
    with pytest.raises(AgentConfigError, match="top_k"):
        resolve_policy("ppo", {"policy": "NodeSetPolicy", "policy_kwargs": {"top_k": 3}}, env)
    assert resolve_policy("ppo", {"policy": "MlpPolicy"}, env) == {"policy": "MlpPolicy"}


def test_train_py_refuses_the_policy_for_maskable_ppo_in_one_line():
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--env", "siftmoe_gym/Decode-v0", "--algo",
                           "ppo_mask", "--steps", "1000", "--hyperparams", "policy=NodeSetPolicy"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if "Warning" not in ln and ln.strip()]
    assert lines[-1].startswith("train.py: error:") and "NodeSetPolicy" in lines[-1] and "Traceback" not in proc.stderr


@pytest.mark.parametrize("pk, msg", [
    (5, "must be a dict"),
    ({"score_arch": [-3]}, "score_arch must be a list of positive"),
    ({"score_arch": []}, "at least one"),
    ({"context_arch": [0]}, "context_arch"),
    ({"score_activation_fn": "relu"}, "score_activation_fn"),
    ({"net_arch": {"pi": [7]}}, "value network only"),
    ({"net_arch": [-1]}, "net_arch"),
    ({"bogus": 1}, "bogus"),
])
def test_bad_policy_kwargs_are_refused_before_training(pk, msg):
    env = gym.make("siftmoe_gym/Decode-v0")
    with pytest.raises(AgentConfigError, match=msg):
        resolve_policy("ppo", {"policy": "NodeSetPolicy", "policy_kwargs": pk}, env)


def test_a_model_saved_with_other_candidate_features_is_refused(tmp_path):
    from agents.set_policy import FEATURES_VERSION

    env = gym.make("siftmoe_gym/Decode-v0")
    kw = set_policy_kwargs(env, None)
    with pytest.raises(ValueError, match="retrain"):
        NodeSetPolicy(env.observation_space, env.action_space, lambda _: 1e-4, features_version=FEATURES_VERSION - 1,
                      **kw)


def test_an_observation_wrapper_is_refused_with_the_node_set_policy(tmp_path):
    from agents.training import train

    with pytest.raises(AgentConfigError, match="env_wrapper=NormalizeObservation"):
        train(env_id="siftmoe_gym/Decode-v0", algo="ppo", steps=1000, logdir=tmp_path, progress_bar=False,
              print_table=False, hyperparams={"env_wrapper": "gymnasium.wrappers.NormalizeObservation"})


def test_a_sweeps_upfront_check_refuses_the_observation_wrapper_too():
    from agents import check_builds

    with pytest.raises(AgentConfigError, match="env_wrapper=NormalizeObservation"):
        check_builds("ppo", "siftmoe_gym/Decode-v0", {"env_wrapper": "gymnasium.wrappers.NormalizeObservation"})
    check_builds("ppo", "siftmoe_gym/Decode-v0", {"env_wrapper": "gymnasium.wrappers.NormalizeObservation",
                                                  "policy": "MlpPolicy"})
