"""train.py / agents.training: smoke runs per algorithm, resume, regret consistency, evaluate, bad arguments."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
import torch

import siftmoe_gym  # noqa: F401
from agents.training import evaluate_saved, load_agent, train

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
SHORT = {"episode_tokens": 4}  # 16 steps per episode (4 layers)
FAST = {"n_steps": 64, "batch_size": 64, "n_epochs": 2}
CUSTOM = ["eval/regret", "eval/energy_per_token_mj", "eval/siftmoe_energy_per_token_mj", "eval/topk_energy_per_token_mj",
          "eval/saving_vs_topk_pct", "eval/violation_rate", "eval/mean_error_ratio", "eval/any_violation_rate"]


def scalars(run_dir: Path) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list] = {}
    for ev in sorted((run_dir / "tb").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(ev))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend(acc.Scalars(tag))
    return out


def _train(tmp_path, env_id, algo, steps, hyper=None, **kw):
    opts = dict(env_id=env_id, algo=algo, steps=steps, seed=0, n_envs=2, logdir=tmp_path, env_kwargs=SHORT,
                hyperparams=hyper, eval_freq=max(steps // 2, 1), eval_episodes=2, progress_bar=False,
                baselines=["siftmoe", "topk"], threads=1, print_table=False)
    opts.update(kw)
    return train(**opts)


SMOKE = [
    ("siftmoe_gym/Decode-v0", "ppo", FAST),
    ("siftmoe_gym/Decode-v0", "a2c", {"n_steps": 8}),
    ("siftmoe_gym/DecodeDiscrete-v0", "dqn", {"learning_starts": 100, "buffer_size": 5000, "target_update_interval": 100}),
    ("siftmoe_gym/Decode-v0", "ppo_mask", FAST),
    ("siftmoe_gym/DecodeDiscrete-v0", "ppo_mask", FAST),
    ("siftmoe_gym/FastFading-v0", "ppo_lstm", {**FAST, "policy_kwargs": "dict(net_arch=[32], lstm_hidden_size=16)"}),
]


@pytest.mark.parametrize("env_id,algo,hyper", SMOKE, ids=[f"{a}-{e.split('/')[1]}" for e, a, _ in SMOKE])
def test_smoke_per_algorithm(tmp_path, env_id, algo, hyper):
    res = _train(tmp_path, env_id, algo, 512, hyper)
    run = res.run_dir
    assert res.timesteps >= 512
    tags = scalars(run)
    for tag in CUSTOM:
        assert tag in tags, f"{tag} missing from TensorBoard ({sorted(tags)})"
    assert all(math.isfinite(e.value) for e in tags["eval/regret"])
    # a loadable model that acts in the environment
    model, meta = load_agent(run / "final_model.zip")
    assert meta["env_id"] == env_id and meta["algo"] == algo
    env = gym.make(env_id, **SHORT)
    obs, _ = env.reset(seed=0)
    from agents.policy import AgentPolicy

    assert env.action_space.contains(AgentPolicy(model, env).act(obs, {}))
    # comparison files
    for ext in ("csv", "json", "png"):
        assert (run / f"comparison.{ext}").stat().st_size > 0
    rows = json.loads((run / "comparison.json").read_text())["rows"]
    assert [r["policy"] for r in rows if "(best, " not in r["policy"]] == [f"{algo} (final)", "siftmoe", "topk"]
    assert next(r for r in rows if r["policy"] == "siftmoe")["regret"] == 0.0
    if algo == "ppo_mask":  # masked agents never pay a latency violation
        assert rows[0]["latency_violation_rate"] == 0.0


def test_full_table_has_every_baseline(tmp_path, capsys):
    import baselines

    res = _train(tmp_path, "siftmoe_gym/Decode-v0", "ppo", 256, FAST, baselines=None, print_table=True)
    names = [r["policy"] for r in res.rows]
    best = [n for n in names if n.startswith("ppo (best, ")]
    assert len(best) <= 1 and (not best or names[1] == best[0])
    names = [n for n in names if n not in best]
    assert names[0] == "ppo (final)" and names[1:3] == ["siftmoe", "topk"]
    assert set(names[1:]) == set(baselines.available_policies("decode"))
    with open(res.run_dir / "comparison.csv") as f:
        assert len(list(csv.DictReader(f))) == len(res.rows)
    out = capsys.readouterr().out
    assert "siftmoe" in out and "regret (%)" in out
    assert (res.run_dir / "learning_curve.png").is_file()


def test_resume_continues_step_count(tmp_path):
    first = _train(tmp_path, "siftmoe_gym/Decode-v0", "ppo", 256, FAST, checkpoint_freq=128)
    assert first.timesteps == 256
    second = _train(tmp_path, "siftmoe_gym/Decode-v0", "ppo", 512, FAST, resume=True)
    assert second.run_dir == first.run_dir
    assert second.timesteps == 512
    steps = [h["timesteps"] for h in second.history]
    assert steps == sorted(steps) and steps[0] <= 256 < steps[-1] == 512
    assert second.history[-1]["wall_s"] >= first.history[-1]["wall_s"]
    tb_steps = sorted({e.step for e in scalars(second.run_dir)["eval/regret"]})
    assert tb_steps[-1] == 512 and 256 in tb_steps
    model, _ = load_agent(second.run_dir / "final_model.zip")
    assert model.num_timesteps == 512
    # optimizer state came from the checkpoint (Adam step counters beyond a fresh optimizer's)
    state = model.policy.optimizer.state_dict()["state"]
    assert state and all(float(s["step"]) > 0 for s in state.values())


def test_resume_dqn_keeps_replay_buffer(tmp_path):
    hyper = {"learning_starts": 50, "buffer_size": 5000, "target_update_interval": 100}
    _train(tmp_path, "siftmoe_gym/DecodeDiscrete-v0", "dqn", 200, hyper, n_envs=1, checkpoint_freq=100)
    res = _train(tmp_path, "siftmoe_gym/DecodeDiscrete-v0", "dqn", 400, hyper, n_envs=1, resume=True)
    from agents.runio import read_latest_checkpoint
    from stable_baselines3.common.save_util import load_from_pkl

    latest = read_latest_checkpoint(res.run_dir / "checkpoints")
    assert latest["timesteps"] == 400
    buf = load_from_pkl(latest["replay_buffer_path"])
    assert buf.size() == 400  # 200 transitions from before the resume + 200 after


def test_callback_regret_equals_independent_evaluation(tmp_path):
    import baselines
    from agents.policy import AgentPolicy
    from siftmoe_gym.evaluation import evaluate_policy

    res = _train(tmp_path, "siftmoe_gym/Decode-v0", "ppo", 512, FAST, eval_freq=256, eval_episodes=3)
    best = json.loads((res.run_dir / "best_model.json").read_text())
    seeds, recorded = best["eval_seeds"], best["metrics"]
    model, _ = load_agent(res.run_dir / "best_model.zip")
    env = gym.make("siftmoe_gym/Decode-v0", **SHORT)
    agent, _ = evaluate_policy(env, AgentPolicy(model, env), seeds)
    opt, _ = evaluate_policy(env, baselines.get_policy("siftmoe", env), seeds)
    regret = agent["energy_per_token_j"] / opt["energy_per_token_j"] - 1
    assert regret == pytest.approx(recorded["regret"], rel=1e-12, abs=1e-15)
    assert agent["violation_rate"] == recorded["violation_rate"]
    logged = {e.step: e.value for e in scalars(res.run_dir)["eval/regret"]}
    assert logged[recorded["timesteps"]] == pytest.approx(regret, rel=1e-6, abs=1e-7)  # float32 in TensorBoard


def test_evaluate_saved_model(tmp_path, capsys):
    res = _train(tmp_path, "siftmoe_gym/Decode-v0", "ppo", 128, FAST)
    rows, files = evaluate_saved(res.model_path, episodes=2, baselines=["siftmoe", "topk"], out_dir=tmp_path / "ev",
                                 threads=1)
    assert rows[0]["policy"] == "ppo (final_model.zip)" and {r["policy"] for r in rows[1:]} == {"siftmoe", "topk"}
    assert all(Path(p).is_file() for p in files.values())
    # same seeds as training's final evaluation -> same numbers
    rows2, _ = evaluate_saved(res.model_path, baselines=["siftmoe"], out_dir=tmp_path / "ev2", threads=1)
    assert rows2[0]["energy_per_token_j"] == pytest.approx(res.history[-1]["energy_per_token_j"], rel=1e-12)


# ------------------------------------------------------------ command line
def run_cli(*args, timeout=120):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("args,needle", [
    (["--algo", "sac", "--steps", "10"], "unknown algorithm 'sac'"),
    (["--algo", "dqn", "--env", "siftmoe_gym/Decode-v0", "--steps", "10"], "needs a Discrete action space"),
    (["--env", "siftmoe_gym/Nope-v0", "--steps", "10"], "unknown environment id"),
    (["--hyperparams", "no_such_key=1", "--steps", "10"], "not accepted by PPO"),
    (["evaluate", "--model", "/nonexistent/model.zip"], "model file not found"),
    (["--steps", "ten"], "invalid int value"),
    (["--steps", "99999999999999"], "--steps must be <= 10,000,000,000"),
    (["--eval-episodes", "100000000"], "--eval-episodes must be <= 10,000"),
    (["--hyperparams", "n_envs=4", "--n-envs", "8"], "--hyperparams n_envs=4 and --n-envs 8 disagree"),
    (["--quick", "--hyperparams", "n_timesteps=8192", "--steps", "4096"], "n_timesteps=8192 and --steps 4096 disagree"),
    (["--hyperparams", "env_kwargs={episode_tokens: 4}", "--env-kwargs", "episode_tokens=8"], "disagree on episode_tokens"),
], ids=["algo", "incompatible", "env", "hyperparam", "model", "argparse", "steps-huge", "episodes-huge", "n-envs-twice",
        "steps-twice", "env-kwargs-twice"])
def test_bad_arguments_one_line_exit_2(tmp_path, args, needle):
    r = run_cli(*args, "--logdir", str(tmp_path)) if args[0] != "evaluate" else run_cli(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("train.py: error:") and needle in lines[0]
    assert "Traceback" not in r.stderr


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs a /proc, where no file can be created")
def test_unwritable_outputs_are_refused_before_any_work(tmp_path):
    """--logdir and evaluate's --out are tried with a temporary file first (a traceback after building the envs
    and the model, or after the whole evaluation, before)."""
    for args, needle in ((["--steps", "4096", "--logdir", "/proc/nope"], "--logdir: cannot write in /proc"),
                         (["evaluate", "--model", "/nonexistent/m.zip", "--out", "/proc/x"], "--out: cannot write in /proc")):
        r = run_cli(*args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and needle in r.stderr, r.stderr


def test_a_damaged_run_config_is_one_line(tmp_path):
    """--resume reads config.json through runio.read_run_config: not JSON, not a mapping or missing what a resume
    needs is an AgentConfigError naming the file (a JSONDecodeError or TypeError traceback before)."""
    from agents.algos import AgentConfigError
    from agents.runio import read_run_config

    path = tmp_path / "config.json"
    for text, needle in (("{x", "is not readable JSON"), ("[]", "missing env_id"), ('{"env_id": "e"}', "missing algo")):
        path.write_text(text)
        with pytest.raises(AgentConfigError, match=needle) as info:
            read_run_config(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)
    with pytest.raises(AgentConfigError, match="is not readable JSON"):
        read_run_config(tmp_path / "missing.json")


def test_cli_train_then_evaluate(tmp_path):
    r = run_cli("--env", "siftmoe_gym/DecodeDiscrete-v0", "--algo", "ppo", "--steps", "256", "--n-envs", "2",
                "--logdir", str(tmp_path), "--eval-episodes", "2", "--no-progress", "--threads", "1",
                "--env-kwargs", "episode_tokens=4", "--hyperparams", "n_steps=64", "batch_size=64", "n_epochs=1",
                "--baselines", "siftmoe", "topk", "--vec", "subproc")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "siftmoe" in r.stdout and "regret (%)" in r.stdout
    run = tmp_path / "siftmoe_gym-DecodeDiscrete-v0_ppo_seed0"
    assert (run / "final_model.zip").is_file() and (run / "final_model.json").is_file()
    r2 = run_cli("evaluate", "--model", str(run / "final_model.zip"), "--baselines", "siftmoe", "--threads", "1")
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert (run / "evaluate_final_model" / "comparison.csv").is_file()


def test_resume_config_types_and_hyperparameter_bounds(tmp_path):
    """read_run_config also refuses keys of the wrong type (a traceback after TensorBoard wrote into the run before),
    and n_timesteps from --hyperparams or a YAML obeys --steps' bound."""
    import json

    from agents.algos import AgentConfigError
    from agents.runio import read_run_config

    good = {"env_id": "e", "algo": "ppo", "hyperparams": {}, "eval_seeds": [1, 2], "seed": 0, "n_envs": 2, "steps": 256}
    path = tmp_path / "config.json"
    for change, needle in (({"eval_seeds": None}, "eval_seeds of the wrong type"), ({"hyperparams": [1]}, "hyperparams"),
                           ({"n_envs": True}, "n_envs"), ({"eval_seeds": [1.5]}, "eval_seeds"),
                           ({"env_kwargs": 3}, "env_kwargs")):
        path.write_text(json.dumps({**good, **change}))
        with pytest.raises(AgentConfigError, match=needle):
            read_run_config(path)
    path.write_text(json.dumps({k: v for k, v in good.items() if k != "n_envs"}))
    with pytest.raises(AgentConfigError, match="missing n_envs"):
        read_run_config(path)
    path.write_text(json.dumps(good))
    assert read_run_config(path) == good
    r = run_cli("--hyperparams", "n_timesteps=1e11", "--logdir", str(tmp_path))
    assert r.returncode == 2 and "n_timesteps=100000000000.0 must be an integer >= 1 and <= 10,000,000,000" in r.stderr
