"""agents/: algorithm registry, hyperparameter files, action masks, policy adapter, atomic checkpoints."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

import siftmoe_gym  # noqa: F401  (registers the environments)
from agents import ALGOS, AgentConfigError, canonical_algo, check_compatible, make_agent
from agents.callbacks import AtomicCheckpointCallback, best_key
from agents.runio import atomic_save_model, read_latest_checkpoint
from agents.hyperparams import HYPERPARAMS_DIR, load_hyperparams, parse_overrides, resolve_hyperparams, split_hyperparams
from agents.masking import NodeActionMasker, mask_from_feasibility, node_action_mask
from agents.policy import AgentPolicy, to_env_action

torch.set_num_threads(1)

ENV_IDS = [
    "siftmoe_gym/Decode-v0", "siftmoe_gym/DecodeDiscrete-v0", "siftmoe_gym/Prefill-v0",
    "siftmoe_gym/PrefillDiscrete-v0", "siftmoe_gym/FastFading-v0", "siftmoe_gym/FastFadingDiscrete-v0",
]


# ------------------------------------------------------------------ registry
def test_algorithm_names_and_aliases():
    assert set(ALGOS) == {"ppo", "a2c", "dqn", "ppo_mask", "ppo_lstm", "ppo_lag"}
    assert canonical_algo("ppo_lagrangian") == "ppo_lag"
    assert canonical_algo("PPO") == "ppo"
    assert canonical_algo("maskable_ppo") == "ppo_mask"
    assert canonical_algo("recurrent_ppo") == "ppo_lstm"
    with pytest.raises(AgentConfigError, match="unknown algorithm 'sac'"):
        canonical_algo("sac")


def test_action_space_compatibility():
    check_compatible("dqn", spaces.Discrete(16))
    check_compatible("ppo", spaces.MultiBinary(4))
    with pytest.raises(AgentConfigError, match="DecodeDiscrete"):
        check_compatible("dqn", spaces.MultiBinary(4), "siftmoe_gym/Decode-v0")
    with pytest.raises(AgentConfigError):
        check_compatible("ppo", spaces.Box(0, 1, (3,)))


# ------------------------------------------------------------ hyperparameters
@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_yaml_covers_every_env_and_is_accepted(algo):
    assert (HYPERPARAMS_DIR / f"{algo}.yml").is_file()
    for env_id in ENV_IDS:
        space = gym.make(env_id).action_space
        if not isinstance(space, ALGOS[algo].action_spaces):
            continue
        raw = load_hyperparams(algo, env_id)
        assert {"n_envs", "n_timesteps", "policy"} <= set(raw)
        trainer, kwargs = split_hyperparams(algo, raw)  # raises on keys the constructor does not take
        assert trainer["n_envs"] >= 1 and trainer["n_timesteps"] > 0


def test_overrides_and_schedules():
    over = parse_overrides(["learning_rate=lin_1e-3", "n_steps=64", "policy_kwargs=dict(net_arch=[16])", "gamma=0.5"])
    assert over == {"learning_rate": "lin_1e-3", "n_steps": 64, "policy_kwargs": "dict(net_arch=[16])", "gamma": 0.5}
    raw = resolve_hyperparams("ppo", "siftmoe_gym/Decode-v0", over)
    _, kw = split_hyperparams("ppo", raw)
    assert kw["n_steps"] == 64 and kw["gamma"] == 0.5
    assert kw["policy_kwargs"] == {"net_arch": [16]}
    assert kw["learning_rate"](1.0) == pytest.approx(1e-3) and kw["learning_rate"](0.5) == pytest.approx(5e-4)
    with pytest.raises(AgentConfigError, match="key=value"):
        parse_overrides(["learning_rate"])
    with pytest.raises(AgentConfigError, match="not accepted by PPO"):
        split_hyperparams("ppo", {**raw, "buffer_size": 10})
    with pytest.raises(AgentConfigError, match="not support"):
        split_hyperparams("ppo", {**raw, "frame_stack": 2})


def test_unknown_env_id_falls_back_to_default():
    assert load_hyperparams("ppo", "siftmoe_gym/NoSuch-v0") == load_hyperparams("ppo", "default")


# ---------------------------------------------------------------------- masks
class _StandIn(gym.Env):
    """Tiny env exposing the contract the masks read: ``instance.node_feasible`` (M+1, node 0 first)."""

    def __init__(self, feasible, discrete=False):
        m = len(feasible) - 1
        self.instance = type("I", (), {"node_feasible": np.asarray(feasible, bool)})()
        self.action_space = spaces.Discrete(2 ** m) if discrete else spaces.MultiBinary(m)
        self.observation_space = spaces.Box(0, 1, (3,), np.float32)

    def reset(self, *, seed=None, options=None):
        return np.zeros(3, np.float32), {}

    def step(self, action):
        return np.zeros(3, np.float32), 0.0, True, False, {}


def test_multibinary_mask_never_masks_off():
    env = _StandIn([True, True, False, True, False])
    mask = node_action_mask(env)
    assert mask.shape == (8,)
    np.testing.assert_array_equal(mask.reshape(4, 2)[:, 0], True)  # "0" is always allowed
    np.testing.assert_array_equal(mask.reshape(4, 2)[:, 1], [True, False, True, False])


def test_discrete_mask_drops_subsets_with_infeasible_nodes():
    env = _StandIn([True, True, False, True], discrete=True)  # node 2 infeasible -> bit 1
    mask = node_action_mask(env)
    assert mask.shape == (8,) and mask[0]
    for a in range(8):
        assert mask[a] == (not (a >> 1) & 1)
    with pytest.raises(ValueError):
        mask_from_feasibility(spaces.Discrete(8), np.ones(2, bool))


@pytest.mark.parametrize("env_id", ["siftmoe_gym/Decode-v0", "siftmoe_gym/DecodeDiscrete-v0", "siftmoe_gym/FastFading-v0"])
def test_masks_follow_real_env_feasibility(env_id):
    env = NodeActionMasker(gym.make(env_id, episode_tokens=2))
    env.reset(seed=3)
    seen_infeasible = False
    for seed in range(12):
        env.reset(seed=seed)
        done = False
        while not done:
            feas = np.asarray(env.unwrapped.instance.node_feasible, bool)[1:]
            seen_infeasible |= not feas.all()
            mask = env.action_masks()
            space = env.action_space
            if isinstance(space, spaces.MultiBinary):
                np.testing.assert_array_equal(mask.reshape(-1, 2)[:, 1], feas)
                action = (mask.reshape(-1, 2)[:, 1]).astype(np.int8)
            else:
                allowed = np.flatnonzero(mask)
                action = int(allowed[-1])
                nodes = [(action >> j) & 1 for j in range(len(feas))]
                assert all(feas[j] or not nodes[j] for j in range(len(feas)))
            _, _, term, trunc, info = env.step(action)
            assert info["latency_violation"] == 0  # masked actions never use an infeasible link
            done = term or trunc
    assert seen_infeasible, "no infeasible node drawn: the test would not exercise masking"


# --------------------------------------------------------------------- policy
def test_agent_policy_actions_match_env_space():
    env = gym.make("siftmoe_gym/DecodeDiscrete-v0", episode_tokens=2)
    model = make_agent("ppo", env, seed=0, env_id="siftmoe_gym/DecodeDiscrete-v0",
                       hyperparams={"n_steps": 8, "batch_size": 8})
    pol = AgentPolicy(model, env)
    obs, info = env.reset(seed=0)
    a = pol.act(obs, info)
    assert isinstance(a, int) and env.action_space.contains(a)
    assert to_env_action(np.array([[1, 0, 1, 1]]), spaces.MultiBinary(4)).shape == (4,)


def test_make_agent_rejects_dqn_on_multibinary():
    env = gym.make("siftmoe_gym/Decode-v0")
    with pytest.raises(AgentConfigError, match="Discrete"):
        make_agent("dqn", env, env_id="siftmoe_gym/Decode-v0")


# --------------------------------------------------------------- checkpoints
def test_atomic_checkpoints_prune_and_point_to_latest(tmp_path):
    env = gym.make("siftmoe_gym/DecodeDiscrete-v0", episode_tokens=2)
    model = make_agent("dqn", env, seed=0, env_id="siftmoe_gym/DecodeDiscrete-v0",
                       hyperparams={"learning_starts": 10, "buffer_size": 500})
    cb = AtomicCheckpointCallback(save_freq=50, ckpt_dir=tmp_path / "ck", keep=2)
    model.learn(160, callback=cb)
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert not [f for f in files if f.startswith(".") or f.endswith(".tmp")], files
    latest = read_latest_checkpoint(tmp_path / "ck")
    assert latest["timesteps"] == 160 and Path(latest["model_path"]).is_file()
    assert Path(latest["replay_buffer_path"]).is_file()
    assert len([f for f in files if f.endswith(".zip")]) == 2  # pruned to keep=2
    atomic_save_model(model, tmp_path / "m.zip")
    assert (tmp_path / "m.zip").is_file() and len(list(tmp_path.glob(".m.zip*"))) == 0


def test_best_key_prefers_within_tolerance_then_regret():
    ok_hi = {"regret": 0.2, "violation_rate": 0.0, "excess_violation_rate": 0.0}
    ok_lo = {"regret": 0.05, "violation_rate": 0.0, "excess_violation_rate": 0.005}
    bad = {"regret": -0.5, "violation_rate": 0.3, "excess_violation_rate": 0.3}
    assert min([ok_hi, bad, ok_lo], key=lambda r: best_key(r, 0.01)) is ok_lo
