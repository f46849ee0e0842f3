"""benchmarks/bench_training.py: refusals before any training (one line, status 2) and the rows' names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_training.py"


def _run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("args, msg", [
    (["--algos", "ppo", "ppo_lag", "--label", "x"], "--label"),
    (["--algos", "ppo", "--hyperparams", "garbage"], "key=value"),
    (["--algos", "ppo_mask", "--hyperparams", "policy=NodeSetPolicy"], "NodeSetPolicy works with"),
    (["--algos", "ppo", "--hyperparams", "policy_kwargs=5"], "policy_kwargs must be a dict"),
    (["--algos", "a2c", "--hyperparams", "policy_kwargs=dict(context_arch=[32])"], "context_arch"),
])
def test_bad_plans_are_refused_in_one_line_before_training(tmp_path, args, msg):
    r = _run("--envs", "siftmoe_gym/Decode-v0", "--seeds", "0", "--out", str(tmp_path / "b"), *args)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("bench_training.py: error:") and msg in last and "Traceback" not in r.stderr
    assert not (tmp_path / "b.json").exists()


def _result(algo, seed, regret, **extra):
    point = {"timesteps": 100, "wall_s": 1.0, "regret": regret, "excess_violation_rate": 0.0, "score": 0.99,
             "feasible": True, "any_violation_rate": 0.0, "siftmoe_any_violation_rate": 0.0, "mean_return": -1.0}
    return {"env_id": "siftmoe_gym/Decode-v0", "algo": algo, "seed": seed, "steps": 100, "wall_s": 1.0,
            "curve": [point], **extra}


def test_rows_are_named_by_algorithm_and_policy(tmp_path):
    """Runs saved before the policy was recorded are MlpPolicy rows; a NodeSetPolicy run is its own row."""
    old = {"meta": {"command": "old"}, "runs": [_result("ppo", 0, 0.08)]}
    new = {"meta": {"command": "new"}, "runs": [_result("ppo", 0, 0.001, policy="NodeSetPolicy",
                                                        label="ppo (NodeSetPolicy)")]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    r = _run("--report-only", "--out", str(tmp_path / "new"), "--merge", str(tmp_path / "old.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    table = (tmp_path / "new.md").read_text()
    assert "| Decode-v0 | ppo (MlpPolicy) | 1 |" in table and "| Decode-v0 | ppo (NodeSetPolicy) | 1 |" in table
    assert (tmp_path / "new.png").is_file()


@pytest.mark.parametrize("script, args, msg", [
    ("reward_terms.py", ["--model", "/nonexistent.zip"], "--model"),
    ("reward_terms.py", ["--model", __file__, "--episodes", "0"], "--episodes"),
    ("diagnose_agent.py", ["--episodes", "0"], "--episodes"),
    ("imitation_ceiling.py", ["--samples", "0"], "--samples"),
    ("imitation_ceiling.py", ["--seed", "-1"], "--seed"),
    ("bench_policy_speed.py", ["--repeat", "0"], "--repeat"),
])
def test_diagnostic_scripts_refuse_bad_input_in_one_line(script, args, msg):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr
    assert r.stderr.startswith(f"{script}: error:") and msg in r.stderr
