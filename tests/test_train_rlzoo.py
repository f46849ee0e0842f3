"""Training through rl-zoo3 with the project's hyperparameter file (skipped when rl_zoo3 is not installed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rl_zoo3")
ROOT = Path(__file__).resolve().parents[1]


def test_rl_zoo3_trains_ppo_with_project_yaml(tmp_path):
    cmd = [sys.executable, "-m", "rl_zoo3.train", "--algo", "ppo", "--env", "siftmoe_gym/Decode-v0",
           "--gym-packages", "siftmoe_gym", "--conf-file", str(ROOT / "agents" / "hyperparams" / "ppo.yml"),
           "-n", "2000", "--log-folder", str(tmp_path), "--eval-freq", "-1", "--seed", "0",
           "--hyperparams", "n_envs:2", "n_steps:64", "batch_size:64", "n_epochs:1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    models = list(tmp_path.glob("ppo/siftmoe_gym-Decode-v0_*/siftmoe_gym-Decode-v0.zip"))
    assert models, list(tmp_path.rglob("*"))
    from stable_baselines3 import PPO

    model = PPO.load(models[0], device="cpu")
    assert model.num_timesteps >= 2000
    assert model.gamma == 0.0  # the value of the project's YAML, not rl-zoo3's default
