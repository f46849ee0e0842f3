"""Bad input is a clear error and nothing is lost (the agents side): run folders claimed atomically and never
reused, failed launches leave nothing behind, damaged checkpoints fall back, a resume shows each TensorBoard
step once, stale temporary files go, models are evaluated only on their own spaces, and every command line
answers bad input with one line and status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
import torch

import siftmoe_gym  # noqa: F401
from agents import AgentConfigError
from agents.hyperparams import parse_overrides, resolve_hyperparams, split_hyperparams
from agents.runio import claim_run_dir, intact_checkpoints, latest_run_dir
from agents.training import evaluate_saved, train

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
SHORT = {"episode_tokens": 4}
FAST = {"n_steps": 64, "batch_size": 64, "n_epochs": 1, "policy_kwargs": "dict(net_arch=[16])"}
BASE = "siftmoe_gym-Decode-v0_ppo_seed0"


def _train(tmp_path, steps=128, **kw):
    opts = dict(env_id="siftmoe_gym/Decode-v0", algo="ppo", steps=steps, seed=0, n_envs=2, logdir=tmp_path,
                env_kwargs=SHORT, hyperparams=dict(FAST), eval_freq=max((steps or 2) // 2, 1), eval_episodes=2,
                progress_bar=False, baselines=["siftmoe", "topk"], threads=1, print_table=False, log=False)
    opts.update(kw)
    return train(**opts)


def _one_line_error(capsys, rc, prog, needle):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith(f"{prog}: error:"), err
    assert needle in err[0], err
    return err[0]


# ------------------------------------------------------------------ hyperparameter overrides
def test_overrides_read_numbers_like_yaml_1_2():
    over = parse_overrides(["learning_rate=1e-3", "a=3E-4", "b=.5", "c=-2e1", "d=lin_1e-3", "e=auto", "f=[1e-3, 2]",
                            "g=1e3x"])
    assert over == {"learning_rate": 0.001, "a": 0.0003, "b": 0.5, "c": -20.0, "d": "lin_1e-3", "e": "auto",
                    "f": [0.001, 2], "g": "1e3x"}
    # the documented command line works: a constant learning rate
    _, kw = split_hyperparams("dqn", resolve_hyperparams("dqn", "siftmoe_gym/DecodeDiscrete-v0",
                                                         ["learning_rate=1e-3", "exploration_fraction=0.1"]))
    assert kw["learning_rate"] == 0.001


@pytest.mark.parametrize("items,option,needle", [
    (["n_steps"], "--hyperparams", "--hyperparams: 'n_steps' is not of the form key=value"),
    ([" =3"], "--hyperparams", "empty key"),
    (["n_steps=64", "n_steps=128"], "--hyperparams", "'n_steps' is given twice"),
    (["episode_tokens"], "--env-kwargs", "--env-kwargs: 'episode_tokens' is not of the form key=value"),
])
def test_overrides_refuse_malformed_items_naming_the_option(items, option, needle):
    with pytest.raises(AgentConfigError, match=needle):
        parse_overrides(items, option)


# ------------------------------------------------------------------ train.py: one line, status 2, no folder
@pytest.mark.parametrize("args,needle", [
    (["--env-kwargs", "episode_tokens"], "--env-kwargs: 'episode_tokens' is not of the form key=value"),
    (["--hyperparams", "=3"], "--hyperparams: '=3' has an empty key"),
    (["--baselines", "siftmoe", "nope"], "--baselines: unknown baseline(s) 'nope'"),
    (["--baselines", "dpp"], "'dpp' do(es) not apply to siftmoe_gym/Decode-v0 (decode)"),
    (["--eval-seed", "-1"], "--eval-seed must be >= 0"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--env-kwargs", "episode_tokens=0"], "refuses the env kwargs"),
    (["--hyperparams", "n_steps=1", "--n-envs", "1"], "cannot build PPO with these hyperparameters"),
], ids=["env-kwargs", "empty-key", "unknown-baseline", "baseline-setting", "eval-seed", "seed", "env-value",
        "constructor"])
def test_train_cli_refuses_bad_values_without_a_run_folder(tmp_path, capsys, args, needle):
    from agents.cli import main

    rc = main(["--steps", "64", "--n-envs", "2", "--eval-episodes", "1", "--no-progress", "--logdir", str(tmp_path),
               "--env-kwargs", "episode_tokens=2", "--hyperparams", "n_steps=32", "batch_size=64", "n_epochs=1",
               *args])
    _one_line_error(capsys, rc, "train.py", needle)
    assert list(tmp_path.iterdir()) == []


def test_logdir_must_be_a_folder(tmp_path, capsys):
    from agents.cli import main

    logdir = tmp_path / "runs"
    logdir.write_text("a file")
    _one_line_error(capsys, main(["--steps", "64", "--logdir", str(logdir)]), "train.py", "is not a folder")


def test_train_cli_process_prints_one_line(tmp_path):
    """The same through the real process: no traceback, nothing under --logdir."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--baselines", "dpp", "--steps", "64", "--logdir",
                        str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        next(l for l in r.stderr.splitlines() if l.startswith("train.py: error: --baselines: 'dpp'"))]
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ run folders
def test_claim_run_dir_is_atomic_across_processes(tmp_path):
    """Eight processes claiming the same base at once get eight different folders."""
    code = ("import sys; from pathlib import Path; from agents.runio import claim_run_dir; "
            "print(claim_run_dir(Path(sys.argv[1]), 'base'))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
             for _ in range(8)]
    got = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert len(set(got)) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["base"] + [f"base_{i}" for i in range(2, 9)])
    with pytest.raises(AgentConfigError, match="already exists"):
        claim_run_dir(tmp_path, "base", exact=True)


def test_two_launches_at_once_get_their_own_folders(tmp_path, monkeypatch):
    """A sweep over learning rates started at once: the second launch runs while the first builds its envs
    (before it has written anything); each run folder holds its own launch's config, models and tables."""
    import agents.training as training

    real_build_envs = training.build_envs
    inner: dict = {}

    def build_envs_with_a_rival(plan):
        if not inner:
            inner["res"] = None
            inner["res"] = _train(tmp_path, hyperparams={**FAST, "learning_rate": 1e-3})
        return real_build_envs(plan)

    monkeypatch.setattr(training, "build_envs", build_envs_with_a_rival)
    outer = _train(tmp_path, hyperparams={**FAST, "learning_rate": 5e-4})
    first = inner["res"]
    assert first.run_dir != outer.run_dir
    assert {first.run_dir.name, outer.run_dir.name} == {BASE, f"{BASE}_2"}
    for res, lr in ((first, 1e-3), (outer, 5e-4)):
        cfg = json.loads((res.run_dir / "config.json").read_text())
        assert cfg["hyperparams"]["learning_rate"] == lr and cfg["run_dir"] == str(res.run_dir)
        meta = json.loads((res.run_dir / "final_model.json").read_text())
        assert meta["hyperparams"]["learning_rate"] == lr


def test_named_run_is_never_reused_without_resume(tmp_path, capsys):
    first = _train(tmp_path, run_name="lr-sweep")
    before = (first.run_dir / "config.json").read_bytes()
    with pytest.raises(AgentConfigError, match="--run-name 'lr-sweep'.*already exists"):
        _train(tmp_path, run_name="lr-sweep", hyperparams={**FAST, "learning_rate": 1e-3})
    assert (first.run_dir / "config.json").read_bytes() == before
    from agents.cli import main

    rc = main(["--steps", "64", "--logdir", str(tmp_path), "--run-name", "lr-sweep", "--no-progress"])
    _one_line_error(capsys, rc, "train.py", "already exists")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr-sweep"]


def test_failed_launch_leaves_no_folder_and_resume_skips_unfinished_ones(tmp_path, monkeypatch):
    import agents.training as training

    done = _train(tmp_path, checkpoint_freq=64)
    # construction fails (SB3 refuses the hyperparameters): no folder
    with pytest.raises(AgentConfigError, match="cannot build PPO"):
        _train(tmp_path, hyperparams={**FAST, "n_steps": 1}, n_envs=1)
    # training fails before the first checkpoint: the folder this launch created is removed
    monkeypatch.setattr(training, "learn", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        _train(tmp_path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [BASE]
    # a newer folder without a checkpoint (left by an older version) is not what --resume continues
    stale = tmp_path / f"{BASE}_2"
    stale.mkdir()
    (stale / "config.json").write_text((done.run_dir / "config.json").read_text())
    assert latest_run_dir(tmp_path, BASE) == done.run_dir
    res = _train(tmp_path, steps=256, resume=True)
    assert res.run_dir == done.run_dir and res.timesteps == 256


def test_resume_never_takes_another_seeds_run(tmp_path):
    """``..._seed10`` shares the prefix of ``..._seed1``: --resume of seed 1 must not continue it."""
    import zipfile

    other = tmp_path / "siftmoe_gym-Decode-v0_ppo_seed10"
    (other / "checkpoints").mkdir(parents=True)
    (other / "config.json").write_text(json.dumps({"env_id": "siftmoe_gym/Decode-v0", "algo": "ppo", "seed": 10}))
    with zipfile.ZipFile(other / "checkpoints" / "ckpt_0000000064.zip", "w") as z:
        z.writestr("data", "{}")
    assert latest_run_dir(tmp_path, "siftmoe_gym-Decode-v0_ppo_seed10") == other
    assert latest_run_dir(tmp_path, "siftmoe_gym-Decode-v0_ppo_seed1") is None
    with pytest.raises(AgentConfigError, match="--resume: no run 'siftmoe_gym-Decode-v0_ppo_seed1'"):
        _train(tmp_path, seed=1, resume=True)


def _ckpts(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("ckpt_*.zip"))


def test_resume_falls_back_from_a_damaged_checkpoint_and_removes_stale_tmp(tmp_path, capsys):
    first = _train(tmp_path, steps=256, eval_freq=128, checkpoint_freq=128)  # checkpoints at 128 and 256
    run = first.run_dir
    old, new = _ckpts(run)
    (run / "checkpoints" / "latest.json").write_text('{"model": "ckpt_00000')  # a write cut short
    new.write_bytes(new.read_bytes()[:100])  # and the newest zip damaged
    stale = [run / ".best_model.zip.k3j4.tmp", run / "checkpoints" / ".latest.json.x8y9.tmp"]
    for p in stale:
        p.write_text("partial")
    capsys.readouterr()
    res = _train(tmp_path, steps=384, resume=True, eval_freq=128)
    err = capsys.readouterr().err
    assert "latest.json is unreadable" in err and f"checkpoint {new} is missing or damaged" in err
    assert res.run_dir == run and res.timesteps == 384
    assert [h["timesteps"] for h in res.history] == [128, 256, 384]  # 256 evaluated again after the fallback
    assert not any(p.exists() for p in stale)
    log = (run / "train.log").read_text()
    assert "note: " in log and "is missing or damaged" in log and "interrupted write" in log
    # nothing intact left: one clear error
    for p in _ckpts(run):
        p.write_bytes(b"not a zip")
    with pytest.raises(AgentConfigError, match="--resume: no intact checkpoint in"):
        _train(tmp_path, steps=512, resume=True)
    assert intact_checkpoints(run / "checkpoints") == []


def test_resume_shows_each_tensorboard_step_once(tmp_path):
    """The first run reaches 512 and logs evaluations at 128..512; the resume continues from the checkpoint at
    384 (the newest is damaged): TensorBoard, reading the run's folder, shows every step of every tag once,
    the resumed run's value where both logged one."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = _train(tmp_path, steps=512, eval_freq=128, checkpoint_freq=128)
    run = first.run_dir
    _ckpts(run)[-1].write_bytes(b"damaged")
    res = _train(tmp_path, steps=512, resume=True, eval_freq=128)
    assert res.timesteps == 512
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 2
    for tag in acc.Tags()["scalars"]:
        steps = [e.step for e in acc.Scalars(tag)]
        assert len(steps) == len(set(steps)), (tag, steps)
    regret = {e.step: e.value for e in acc.Scalars("eval/regret")}
    assert sorted(regret) == [128, 256, 384, 512]
    assert regret[512] == pytest.approx(res.history[-1]["regret"], rel=1e-6, abs=1e-7)


# ------------------------------------------------------------------ evaluate
def _mislabelled_model(folder: Path) -> Path:
    """A MultiBinary PPO whose metadata says it was trained on DecodeDiscrete-v0."""
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", gym.make("siftmoe_gym/Decode-v0", **SHORT), n_steps=16, batch_size=16, device="cpu",
                policy_kwargs={"net_arch": [8]})
    path = folder / "model.zip"
    model.save(str(path))
    (folder / "model.json").write_text(json.dumps({"env_id": "siftmoe_gym/DecodeDiscrete-v0", "algo": "ppo",
                                                   "env_kwargs": SHORT}))
    return path


def test_evaluate_refuses_a_model_trained_for_other_spaces(tmp_path, capsys):
    path = _mislabelled_model(tmp_path)
    with pytest.raises(AgentConfigError, match="action space is MultiBinary"):
        evaluate_saved(path, episodes=1, baselines=["siftmoe"], out_dir=tmp_path / "ev", print_table=False)
    from agents.cli import main

    rc = main(["evaluate", "--model", str(path), "--episodes", "1"])
    _one_line_error(capsys, rc, "train.py", "does not fit siftmoe_gym/DecodeDiscrete-v0")
    assert not (tmp_path / "ev").exists() and not (tmp_path / "evaluate_model").exists()
    rc = main(["evaluate", "--model", str(path), "--eval-seed", "-3"])
    _one_line_error(capsys, rc, "train.py", "--eval-seed must be >= 0")
    rc = main(["evaluate", "--model", str(path), "--baselines", "siftmoe", "dpp"])
    _one_line_error(capsys, rc, "train.py", "'dpp' do(es) not apply to siftmoe_gym/DecodeDiscrete-v0")


# ------------------------------------------------------------------ ray_sweep and rllib command lines
@pytest.mark.parametrize("args,needle", [
    (["train", "--out", "{out}", "--seeds", "-1"], "--seeds must be integers >= 0"),
    (["train", "--out", "{out}", "--seeds", "0", "0"], "--seeds: 0 given twice"),
    (["train", "--out", "{out}", "--algos", "dqn"], "algorithm 'dqn' needs a Discrete action space"),
    (["train", "--out", "{out}", "--algos", "sac"], "unknown algorithm 'sac'"),
    (["train", "--out", "{out}", "--baselines", "dpp"], "'dpp' do(es) not apply"),
    (["train", "--out", "{out}", "--hyperparams", "nope=1"], "not accepted by PPO"),
    (["train", "--out", "{out}", "--env-kwargs", "x"], "--env-kwargs: 'x' is not of the form key=value"),
    (["train", "--out", "{out}", "--steps", "0"], "--steps must be >= 1"),
    (["tune", "--out", "{out}", "--num-samples", "0"], "--num-samples must be >= 1"),
    (["tune", "--out", "{out}", "--hyperparams", "learning_rate=1e-3", "batch_sise=64"], "not accepted by PPO"),
    (["tune", "--out", "{out}", "--env", "siftmoe_gym/Nope-v0"], "unknown environment id"),
    (["nope"], "invalid choice"),
], ids=["seed", "seed-twice", "dqn", "algo", "baseline", "hyper", "kv", "steps", "samples", "tune-hyper", "env", "cmd"])
def test_ray_sweep_cli_one_line(tmp_path, capsys, args, needle):
    from agents.ray_sweep import main

    rc = main([a.replace("{out}", str(tmp_path / "out")) for a in args])
    _one_line_error(capsys, rc, "python -m agents.ray_sweep", needle)
    assert not (tmp_path / "out").exists()


def test_ray_sweep_refuses_to_overwrite_its_runs(tmp_path):
    from agents.ray_sweep import check_train_sweep

    (tmp_path / "runs" / f"{BASE}").mkdir(parents=True)
    with pytest.raises(AgentConfigError, match="already holds run"):
        check_train_sweep(["ppo"], [0, 1], "siftmoe_gym/Decode-v0", tmp_path / "runs", {})


@pytest.mark.parametrize("args,needle", [
    (["--iterations", "0"], "--iterations must be >= 1"),
    (["--env-config", "{episode_tokens: 4}"], "--env-config is not JSON"),
    (["--env-config", "[1]"], "--env-config must be a JSON object"),
    (["--env-config", '{"episode_tokens": 0}'], "--env-config: siftmoe_gym/Decode-v0 refuses it"),
    (["--env", "CartPole-v1"], "--env: unknown siftmoe_gym id"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--minibatch-size", "1024"], "exceeds --train-batch-size"),
], ids=["iterations", "json", "object", "value", "env", "lr", "minibatch"])
def test_rllib_cli_one_line(capsys, args, needle):
    from agents.rllib import main

    _one_line_error(capsys, main(args), "python -m agents.rllib", needle)


def test_resume_with_no_steps_left_is_refused_and_leaves_the_run_as_it_was(tmp_path):
    """--resume --steps at or below the checkpoint used to evaluate the old model and rewrite config.json (a lower
    step target, other frequencies), final_model and the comparison: now refused before the folder is touched."""
    first = _train(tmp_path, steps=256, eval_freq=128, checkpoint_freq=128)
    run = first.run_dir
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    for steps in (256, 128, None):  # None: the run's own target (256), not the YAML's n_timesteps (review finding)
        with pytest.raises(AgentConfigError, match=f"--resume: --steps {steps or 256} is not above the checkpoint's 256"):
            _train(tmp_path, steps=steps, resume=True, eval_freq=128)
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before
