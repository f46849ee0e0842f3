"""What a new user's trial found (each failed before its fix): an agent named like a policy took its row,
Prefill's saving disagreed with the energy column, a rejected reset lost the episode, and several bad
train.py values ended in tracebacks or were accepted."""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np
import pytest

import baselines
import siftmoe_gym  # noqa: F401
from agents import cli, compare
from agents.evaluation import BaselineCache, comparison_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _one_line(capsys, prog="train.py"):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{prog}: error:"), err
    return err[0]


def test_agent_named_like_a_policy_is_refused(tmp_path, capsys):
    model = tmp_path / "m.zip"
    model.write_bytes(b"not read")
    rc = compare.main(["--scenarios", os.path.join(ROOT, "benchmarks/scenarios/smoke.yml"), "--out", str(tmp_path / "o"),
                       "--agent", f"siftmoe={model}", "--no-progress"])
    assert rc == 2 and "siftmoe" in _one_line(capsys, "python -m agents.compare")
    assert not (tmp_path / "o" / "report.md").exists()


def test_prefill_saving_agrees_with_the_energy_column():
    env = gym.make("siftmoe_gym/Prefill-v0", config={"prefill_tokens": 4}, action_mode="slots")
    rows = comparison_rows(None, None, BaselineCache(env, [0, 1, 2]), ["siftmoe", "topk", "nearest-local"])
    by = {r["policy"]: r for r in rows}
    for r in rows:
        expect = 100 * (1 - r["energy_per_token_j"] / by["topk"]["energy_per_token_j"])
        assert r["saving_pct"] == pytest.approx(expect, rel=1e-12, abs=1e-12)
    assert by["siftmoe"]["saving_pct"] >= by["nearest-local"]["saving_pct"] - 1e-9


def test_rejected_reset_keeps_the_episode():
    env = gym.make("siftmoe_gym/Decode-v0", config={"episode_tokens": 2})
    env.reset(seed=0)
    env.step(env.action_space.sample())
    with pytest.raises(ValueError, match="penalty"):
        env.reset(options={"config": {"penalty": -1}})
    ref = gym.make("siftmoe_gym/Decode-v0", config={"episode_tokens": 2})
    ref.reset(seed=0)
    ref.step(env.action_space.sample())
    a = np.array([1, 0, 1, 0], dtype=np.int8)
    out, want = env.step(a), ref.step(a)
    np.testing.assert_array_equal(out[0], want[0])
    assert out[1] == want[1]


@pytest.mark.parametrize("argv, needle", [
    (["--env", "CartPole-v1"], "--env"),
    (["--run-name", "../escape"], "--run-name"),
    (["--run-name", "a/b"], "--run-name"),
    (["--threads", str((os.cpu_count() or 1) + 1)], "--threads"),
    (["--n-envs", "100000"], "--n-envs"),
    (["-v", "7"], "verbose"),
    (["--hyperparams", "gamma=2"], "gamma"),
    (["--hyperparams", "learning_rate=.inf"], "learning_rate"),
    (["--hyperparams", "gamma=nan"], "gamma"),
    (["--hyperparams", "n_epochs=0"], "n_epochs"),
    (["--hyperparams", "n_steps=1.5"], "n_steps"),
    (["--hyperparams", "clip_range=-0.2"], "clip_range"),
    (["--resume", "--eval-episodes", "3"], "--eval-episodes"),
])
def test_bad_train_values_are_one_line_errors(tmp_path, capsys, argv, needle):
    assert cli.main(argv + ["--steps", "256", "--logdir", str(tmp_path)]) == 2
    assert needle in _one_line(capsys)
    assert not any(tmp_path.iterdir())


def test_malformed_conf_file_and_bad_evaluate_out(tmp_path, capsys):
    bad = tmp_path / "bad.yml"
    bad.write_text("a: [\n")
    assert cli.main(["--conf-file", str(bad), "--logdir", str(tmp_path / "runs")]) == 2
    assert "bad.yml" in _one_line(capsys)
    assert cli.main(["evaluate", "--model", str(tmp_path), "--out", str(bad)]) == 2
    assert "--out" in _one_line(capsys)


def test_available_policies_refuses_an_unknown_setting():
    with pytest.raises(ValueError, match="bogus"):
        baselines.available_policies("bogus")


def test_report_prints_rounding_noise_as_zero():
    from agents.report.tables import fmt

    assert fmt(-7.4e-15, 3.2e-14) == "0 ± 0"
    assert fmt(0.25, 0.01, 100.0) == "25 ± 1"
    assert fmt(3.1e-4, 2e-5, 1e3, 4) == "0.31 ± 0.02"
