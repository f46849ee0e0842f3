"""Scale-out on Ray: compare --ray gives the single-machine numbers, training sweeps and the Tune
search run as Ray tasks/trials, RLlib PPO trains on Decode-v0.

Everything but the lazy-import test is skipped, with the reason printed (``-ra``), when the ``ray`` extra is
not installed.  One local Ray instance (2 CPUs, no dashboard) serves the whole module.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from agents.ray_utils import ray_missing_reason

ROOT = Path(__file__).resolve().parents[1]
RAY_MISSING = ray_missing_reason("ray.tune")
needs_ray = pytest.mark.skipif(RAY_MISSING is not None, reason=f"Ray tests need the ray extra (pip install -e \".[ray]\"): {RAY_MISSING}")
needs_rllib = pytest.mark.skipif(ray_missing_reason("ray.rllib") is not None,
                                 reason=f"RLlib test skipped: {ray_missing_reason('ray.rllib')}")

TWO_SCENARIOS = textwrap.dedent("""\
    episodes: 2
    seed: 700
    scenarios:
      - name: eps
        title: "Decode: energy against the error budget"
        env: siftmoe_gym/Decode-v0
        config: {episode_tokens: 5}
        sweep: {param: eps_rel, values: [0.1, 0.5], label: "eps_rel"}
        policies: [topk, siftmoe, nearest-local, random-within-budget]
        plots: [energy_per_token_mj, violation_pct]
      - name: ff
        title: "Fast fading: energy against V"
        env: siftmoe_gym/FastFading-v0
        config: {episode_tokens: 6}
        sweep: {param: drift_v, values: [1, 100], label: "V", xscale: log}
        policies: [topk, siftmoe]
        bound: lagrangian
        plots: [norm_energy, mean_error_ratio]
    """)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module (the code under test reuses it and leaves it running)."""
    if RAY_MISSING is not None:
        pytest.skip(RAY_MISSING)
    import ray

    from agents.ray_utils import init_ray

    started = init_ray(num_cpus=2)
    yield ray
    if started:
        ray.shutdown()


def test_modules_import_without_ray_and_say_how_to_install():
    """Ray is imported lazily: the modules import without it, and --ray fails with the install hint."""
    code = textwrap.dedent("""\
        import sys
        sys.modules["ray"] = None  # any "import ray" now raises ImportError
        import agents.compare, agents.ray_sweep, agents.rllib, agents.ray_utils, agents.training
        try:
            agents.rllib.register_rllib_envs()
        except agents.ray_utils.RayUnavailable as exc:
            print("RLLIB:", exc)
        sys.exit(agents.compare.main(["--scenarios", "x.yml", "--out", "y", "--ray"]))
        """)
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert 'pip install -e ".[ray]"' in p.stderr and "--ray" in p.stderr
    assert "RLLIB: ray is not installed" in p.stdout


def _save_tiny_agent(folder: Path) -> Path:
    from stable_baselines3 import PPO

    env = gym.make("siftmoe_gym/Decode-v0", config={"episode_tokens": 4})
    model = PPO("MlpPolicy", env, n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu",
                policy_kwargs={"net_arch": [8]})
    model.learn(16)
    path = folder / "tiny_ppo.zip"
    model.save(str(path))
    (folder / "tiny_ppo.json").write_text(json.dumps({"env_id": "siftmoe_gym/Decode-v0", "algo": "ppo", "env_kwargs": {}}))
    return path


def _report_body(path: Path) -> list[str]:
    # the report states wall times (per scenario and overall): everything else must match
    return [l for l in path.read_text().splitlines() if not l.startswith("Wall time") and not l.endswith(" s")]


@needs_ray
def test_compare_ray_matches_single_machine(local_ray, tmp_path):
    from agents import compare

    scen = tmp_path / "two.yml"
    scen.write_text(TWO_SCENARIOS)
    agent = _save_tiny_agent(tmp_path)
    common = ["--scenarios", str(scen), "--agent", f"ppo-tiny={agent}", "--no-progress"]
    assert compare.main(common + ["--out", str(tmp_path / "single")]) == 0
    # every (scenario point, seed) its own Ray task
    assert compare.main(common + ["--out", str(tmp_path / "ray"), "--ray", "--ray-chunk", "1"]) == 0
    single, rayd = tmp_path / "single", tmp_path / "ray"
    for name in ("episodes.csv", "summary.csv"):
        assert (single / name).read_bytes() == (rayd / name).read_bytes(), name
    assert _report_body(single / "report.md") == _report_body(rayd / "report.md")
    assert sorted(p.name for p in single.glob("*.png")) == sorted(p.name for p in rayd.glob("*.png")) == ["eps.png", "ff.png"]
    meta = json.loads((rayd / "meta.json").read_text())
    assert meta["ray"] is True and meta["ray_tasks"] == 8  # 2 scenarios x 2 points x 2 seeds
    with open(rayd / "episodes.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["scenario"] for r in rows} == {"eps", "ff"} and {r["seed"] for r in rows} == {"700", "701"}
    assert {"ppo-tiny", "siftmoe", "lagrangian-bound"} <= {r["policy"] for r in rows}


@needs_ray
def test_train_sweep_ray_matches_sequential(local_ray, tmp_path):
    from agents.ray_sweep import train_sweep

    kw = dict(steps=256, n_envs=2, eval_episodes=2, hyperparams={"n_steps": 64, "batch_size": 64, "n_epochs": 1,
                                                                 "policy_kwargs": "dict(net_arch=[16])"},
              env_kwargs={"episode_tokens": 4}, baselines=["siftmoe", "topk"], progress=False)
    seq = train_sweep(["ppo"], [0, 1], out=tmp_path / "seq", **kw)
    par = train_sweep(["ppo"], [0, 1], out=tmp_path / "ray", use_ray=True, **kw)
    keys = ["algo", "seed", "timesteps", "energy_per_token_j", "siftmoe_energy_per_token_j", "regret",
            "any_violation_rate", "excess_violation_rate"]
    assert [{k: r[k] for k in keys} for r in seq["rows"]] == [{k: r[k] for k in keys} for r in par["rows"]]
    for r in par["rows"]:
        assert math.isfinite(r["regret"]) and (Path(r["run_dir"]) / "final_model.zip").is_file()
        assert (Path(r["run_dir"]) / "comparison.csv").is_file()
    for name in ("sweep.csv", "sweep_summary.csv", "sweep.md", "sweep.json"):
        assert (tmp_path / "ray" / name).is_file()


@needs_ray
def test_tune_ppo_reports_regret_against_siftmoe(local_ray, tmp_path):
    from agents.ray_sweep import tune_ppo

    space = {"learning_rate": ("loguniform", 1e-4, 1e-3), "n_steps": ("choice", [32, 64]), "batch_size": 32,
             "n_epochs": 1, "policy_kwargs": "dict(net_arch=[16])"}
    res = tune_ppo(num_samples=2, steps=256, chunks=2, n_envs=2, eval_episodes=2, space=space,
                   env_kwargs={"episode_tokens": 4}, out=tmp_path, verbose=0)
    assert len(res["results"]) == 2 and all("error" not in r for r in res["results"])
    for r in res["results"]:
        assert math.isfinite(r["regret"]) and r["training_iteration"] == 2 and r["timesteps"] >= 256
        assert r["siftmoe_energy_per_token_j"] > 0
        assert r["regret"] == pytest.approx(r["energy_per_token_j"] / r["siftmoe_energy_per_token_j"] - 1)
    assert res["best"]["regret"] == min(r["regret"] for r in res["results"])
    assert res["paths"]["csv"].is_file() and json.loads(res["paths"]["best"].read_text())["metric"] == "regret"


@needs_rllib
def test_register_rllib_envs_builds_every_id(local_ray):
    from ray.tune.registry import ENV_CREATOR, _global_registry

    from agents.rllib import register_rllib_envs
    from siftmoe_gym.envs import ENV_IDS

    ids = register_rllib_envs()
    assert ids == list(ENV_IDS)
    for env_id in ids:
        env = _global_registry.get(ENV_CREATOR, env_id)({} if "Prefill" in env_id else {"episode_tokens": 2})
        obs, _ = env.reset(seed=1)
        assert env.observation_space.contains(obs)
        if env_id.endswith("Discrete-v0"):
            assert isinstance(env.action_space, gym.spaces.Discrete)
        else:  # MultiBinary(M) shown to RLlib as MultiDiscrete([2] * M)
            assert isinstance(env.action_space, gym.spaces.MultiDiscrete) and set(env.action_space.nvec) == {2}
            assert isinstance(env.unwrapped.action_space, gym.spaces.MultiBinary)
        env.step(env.action_space.sample())
        env.close()


@needs_rllib
def test_rllib_ppo_trains_on_decode(local_ray):
    from agents.rllib import train_rllib_ppo

    res = train_rllib_ppo("siftmoe_gym/Decode-v0", iterations=3, env_config={"episode_tokens": 8},
                          train_batch_size=128, minibatch_size=64, num_epochs=1, num_env_runners=0,
                          eval_episodes=2, verbose=False)
    hist = res["history"]
    assert [h["iteration"] for h in hist] == [1, 2, 3]
    steps = [h["env_steps"] for h in hist]
    assert steps[0] >= 128 and steps == sorted(steps) and steps[-1] > steps[0]
    assert all(np.isfinite(h["episode_return_mean"]) for h in hist[1:])
    ev = res["eval"]
    assert math.isfinite(ev["regret"]) and ev["siftmoe_energy_per_token_j"] > 0
