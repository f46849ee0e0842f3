"""PPO-Lagrangian (``--algo ppo_lag``): the shaped reward, the dual ascent on the measured cost rate, saving."""

from __future__ import annotations

import numpy as np
import pytest

from agents.lagrangian import CostPenaltyVecEnv, PPOLagrangian
from siftmoe_gym.envs.sb3_vec import make_sb3_vec_env


def _venv(n=4, **kw):
    return make_sb3_vec_env("siftmoe_gym/Decode-v0", n, seed=0, vec="native", step_info_keys=("cost",),
                            config={"episode_tokens": 4}, **kw)


def test_wrapper_shapes_the_reward_by_the_cost():
    raw, wrapped = _venv(), CostPenaltyVecEnv(_venv(), multiplier=3.0)
    raw.reset()
    wrapped.reset()
    rng = np.random.default_rng(0)
    seen = 0.0
    for _ in range(16):
        a = rng.integers(0, 2, size=(4, 4))
        _, r0, _, infos = raw.step(a)
        _, r1, _, _ = wrapped.step(a)
        cost = np.array([i["cost"] for i in infos])
        np.testing.assert_allclose(r1, (r0 - 3.0 * cost).astype(np.float32), rtol=1e-6)
        seen += cost.sum()
    assert seen > 0  # random node sets break budgets: the shaping was exercised
    assert wrapped.take_cost_rate() == pytest.approx(seen / 64)
    assert np.isnan(wrapped.take_cost_rate())  # the count starts afresh


def test_wrapper_refuses_an_env_without_costs():
    venv = CostPenaltyVecEnv(make_sb3_vec_env("siftmoe_gym/Decode-v0", 2, seed=0, vec="native",
                                              config={"episode_tokens": 2}))
    venv.reset()
    with pytest.raises(KeyError, match="info\\['cost'\\]"):
        venv.step(np.zeros((2, 4), dtype=np.int8))


def test_dual_ascent_follows_the_excess_and_is_saved(tmp_path):
    model = PPOLagrangian("MlpPolicy", _venv(), n_steps=16, batch_size=32, n_epochs=1, cost_limit=0.0,
                          lagrangian_lr=10.0, lagrangian_max=7.0, seed=0, device="cpu")
    model.learn(64)
    # random early policies break budgets: the multiplier rose by lr * rate per rollout, up to its bound
    assert 0.0 < model.lagrange_multiplier <= 7.0
    assert model.env.multiplier == model.lagrange_multiplier
    # a cost rate below the limit lowers it again (projected onto [0, max])
    env = model.env
    env.cost_sum, env.cost_steps = 0.0, 10
    model.cost_limit = 0.5
    before = model.lagrange_multiplier
    model.train()
    assert model.lagrange_multiplier == pytest.approx(max(before - 5.0, 0.0))
    model.lagrange_multiplier = 3.25  # a value the wrapper's default (lagrangian_init 0) would hide on load
    path = tmp_path / "m.zip"
    model.save(path)
    loaded = PPOLagrangian.load(path, env=_venv())
    assert loaded.lagrange_multiplier == 3.25 and loaded.cost_limit == 0.5
    assert isinstance(loaded.env, CostPenaltyVecEnv) and loaded.env.multiplier == 3.25  # the first rollout pays it


@pytest.mark.parametrize("kw", [{"cost_limit": -1.0}, {"lagrangian_lr": 0.0}, {"lagrangian_init": float("nan")},
                                {"lagrangian_init": 5.0, "lagrangian_max": 1.0}, {"lagrangian_max": 0.0}])
def test_bad_lagrangian_settings_are_refused(kw):
    with pytest.raises(ValueError):
        PPOLagrangian("MlpPolicy", _venv(), **kw)


def test_train_py_runs_ppo_lag(tmp_path):
    from agents.training import train

    res = train(env_id="siftmoe_gym/Decode-v0", algo="ppo_lag", steps=2048, seed=0, n_envs=8, logdir=tmp_path,
                eval_episodes=1, eval_freq=1024, progress_bar=False, print_table=False,
                env_kwargs={"config": {"episode_tokens": 4}}, hyperparams={"n_steps": 128, "batch_size": 256})
    assert res.history and (tmp_path / res.run_dir.name / "final_model.zip").exists()


def test_prefill_has_the_native_adapter():
    """Prefill's batched vector env (siftmoe_gym.envs.prefill_vector) is a native route like the others."""
    from siftmoe_gym.envs.sb3_vec import SiftMoESB3VecEnv, has_native

    assert all(has_native(f"siftmoe_gym/{s}-v0") for s in ("Decode", "Prefill", "FastFading", "PrefillDiscrete"))
    assert not has_native("CartPole-v1")
    assert isinstance(make_sb3_vec_env("siftmoe_gym/Prefill-v0", 2, seed=0, vec="native"), SiftMoESB3VecEnv)


def test_resume_refuses_hyperparameters_it_cannot_change_and_applies_the_others(tmp_path):
    from agents.algos import AgentConfigError
    from agents.training import train

    kw = dict(env_id="siftmoe_gym/Decode-v0", algo="ppo_lag", seed=0, n_envs=4, logdir=tmp_path, eval_episodes=1,
              progress_bar=False, print_table=False, env_kwargs={"config": {"episode_tokens": 2}})
    res = train(steps=512, hyperparams={"n_steps": 64, "batch_size": 128}, **kw)
    kw.pop("env_kwargs")
    with pytest.raises(AgentConfigError, match="gae_lambda cannot change on resume"):
        train(steps=1024, resume=True, hyperparams={"gae_lambda": 0.5}, **kw)
    res2 = train(steps=1024, resume=True, hyperparams={"cost_limit": 0.5}, **kw)
    assert res2.run_dir == res.run_dir
    assert PPOLagrangian.load(res2.model_path).cost_limit == 0.5


@pytest.mark.parametrize("hp, msg", [({"n_envs": "abc"}, "integer >= 1"), ({"n_envs": 1e9}, "at most 4096"),
                                     ({"n_timesteps": 2.5}, "integer >= 1"), ({"n_envs": True}, "integer >= 1")])
def test_trainer_counts_from_hyperparameters_are_checked(tmp_path, hp, msg):
    from agents.algos import AgentConfigError
    from agents.training import train

    with pytest.raises(AgentConfigError, match=msg):
        train(env_id="siftmoe_gym/Decode-v0", algo="ppo", steps=None if "n_timesteps" in hp else 64, logdir=tmp_path,
              hyperparams=hp, progress_bar=False, print_table=False)
    assert not any(tmp_path.iterdir())  # refused before any run folder
