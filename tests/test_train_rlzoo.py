"""The documented rl-zoo3 route with the project's hyperparameter file: ``rl_zoo3.train``, then ``rl_zoo3.enjoy``
and ``train.py evaluate`` on its model, and every package they import declared by the project's ``test`` extra
(skipped when rl_zoo3 is not installed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("rl_zoo3")
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ZOO = ["--algo", "ppo", "--env", "siftmoe_gym/Decode-v0", "--gym-packages", "siftmoe_gym"]


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory):
    """``python -m rl_zoo3.train`` as docs/training.md gives it, with a smaller rollout."""
    log = tmp_path_factory.mktemp("zoo")
    cmd = [sys.executable, "-m", "rl_zoo3.train", *ZOO, "--conf-file", str(ROOT / "agents" / "hyperparams" / "ppo.yml"),
           "-n", "2000", "--log-folder", str(log), "--eval-freq", "-1", "--seed", "0",
           "--hyperparams", "n_envs:2", "n_steps:64", "batch_size:64", "n_epochs:1", "policy:'MlpPolicy'",
           "policy_kwargs:dict(net_arch=[128, 128])"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    return log


def test_rl_zoo3_trains_ppo_with_project_yaml(zoo_run):
    models = list(zoo_run.glob("ppo/siftmoe_gym-Decode-v0_*/siftmoe_gym-Decode-v0.zip"))
    assert models, list(zoo_run.rglob("*"))
    from stable_baselines3 import PPO

    model = PPO.load(models[0], device="cpu")
    assert model.num_timesteps >= 2000
    assert model.gamma == 0.0  # the value of the project's YAML, not rl-zoo3's default


def test_rl_zoo3_enjoy_runs_the_trained_model(zoo_run):
    cmd = [sys.executable, "-m", "rl_zoo3.enjoy", *ZOO, "-f", str(zoo_run), "--exp-id", "1", "-n", "300",
           "--no-render", "--deterministic"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Episode Reward" in r.stdout and "Mean reward" in r.stdout, r.stdout[-2000:]


def test_train_py_evaluates_an_rl_zoo3_model(zoo_run, tmp_path):
    """docs/training.md: ``train.py evaluate --model`` on the zoo's zip with a JSON beside it."""
    from agents.training import evaluate_saved

    model = next(zoo_run.glob("ppo/siftmoe_gym-Decode-v0_*/siftmoe_gym-Decode-v0.zip"))
    model.with_suffix(".json").write_text(json.dumps({"env_id": "siftmoe_gym/Decode-v0", "algo": "ppo"}))
    rows, files = evaluate_saved(model, episodes=1, baselines=["siftmoe"], out_dir=tmp_path, print_table=False)
    assert rows[0]["policy"].startswith("ppo (") and rows[1]["policy"] == "siftmoe" and files["csv"].is_file()


def _declared(extras=("test",)) -> set[str]:
    """Distributions the project's dependencies and ``extras`` pull in (pyproject.toml, then installed metadata)."""
    tomllib = pytest.importorskip("tomllib")
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in proj["dependencies"] + [x for e in extras for x in proj["optional-dependencies"][e]]]
    seen: set[tuple[str, frozenset]] = set()
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            reqs = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue
        for r in map(Requirement, reqs):
            if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in (req.extras or {""})):
                todo.append(r)
    return {name for name, _ in seen} | {"siftmoe-gym"}


def test_rl_zoo3_imports_only_declared_packages():
    """With every installed package that ``pip install -e ".[test]"`` would not bring hidden, rl-zoo3's train and
    enjoy (and the project's own command lines) still import: nothing they need is left undeclared."""
    from importlib import metadata

    from packaging.utils import canonicalize_name

    names = _declared()
    hidden = sorted(m for m, dists in metadata.packages_distributions().items()
                    if m not in sys.stdlib_module_names and not {canonicalize_name(d) for d in dists} & names)
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        HIDDEN = set({hidden!r})
        class Undeclared(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in HIDDEN:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (installed, but not declared)", name=name)
        sys.meta_path.insert(0, Undeclared())
        import rl_zoo3.train, rl_zoo3.enjoy
        import agents.cli, agents.training, agents.report.benchmark
        """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
