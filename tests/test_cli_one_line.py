"""The benchmark commands and ``python -m siftmoe_gym.hf.tiny_model`` answer bad input with one line
``<prog>: error: ...`` naming the option, exit status 2, before any slow work and before torch,
transformers or stable_baselines3 load (run in-process: each call is milliseconds)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from siftmoe_gym.hf import tiny_model

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "stable_baselines3", "agents.evaluation", "siftmoe_gym.envs.sb3_vec")
_LOADED: dict[str, object] = {}


def _bench(name: str):
    """``benchmarks/<name>.py`` as a module (benchmarks/ is no package); the environment variables and
    ``sys.path`` entries its import sets are undone."""
    if name not in _LOADED:
        env, path = dict(os.environ), list(sys.path)
        try:
            spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        finally:
            os.environ.clear()
            os.environ.update(env)
            sys.path[:] = path
        _LOADED[name] = mod
    return _LOADED[name]


def _slow(*args, **kwargs):
    pytest.fail("slow work started despite bad input")


CASES = [
    ("behaviour_snapshot", ["check", "{tmp}/missing"], "DIR"),
    ("behaviour_snapshot", ["check", "{tmp}"], "DIR"),
    ("behaviour_snapshot", ["record", "{tmp}/file"], "DIR"),
    ("behaviour_snapshot", ["verify", "{tmp}"], "action"),
    ("bench_baselines", ["--quick=1"], "--quick"),
    ("bench_baselines", ["--batch", "5"], "--batch"),
    ("bench_core", ["--batch", "0"], "--batch"),
    ("bench_core", ["--seconds", "0"], "--seconds"),
    ("bench_core", ["--seconds", "nan"], "--seconds"),
    ("bench_core", ["--preset", "nope"], "--preset"),
    ("bench_core", ["--seed", "-1"], "--seed"),
    ("bench_fastfading_dp", ["--episodes", "1"], "--episodes"),
    ("bench_fastfading_dp", ["--samples", "0", "64"], "--samples"),
    ("bench_fastfading_dp", ["--grids", "1"], "--grids"),
    ("bench_fastfading_dp", ["--fixed-grid", "1"], "--fixed-grid"),
    ("bench_reward_magnitudes", ["--episodes", "0"], "--episodes"),
    ("bench_reward_magnitudes", ["--episodes", "-2"], "--episodes"),
    ("bench_reward_magnitudes", ["--episodes", "x"], "--episodes"),
    ("bench_scale", ["--steps", "0"], "--steps"),
    ("bench_scale", ["--vec-envs", "1000000000"], "--vec-envs"),
    ("bench_scale", ["--vec-envs-large", "4096"], "--vec-envs-large"),
    ("bench_scale", ["--p1", "99999999999"], "--p1"),
    ("bench_scale", ["--p1-budget", "0"], "--p1-budget"),
    ("bench_scale", ["--p1-budget", "nan"], "--p1-budget"),
    ("bench_scale", ["--p1", "5", "--milp", "6"], "--milp"),
    ("bench_scale", ["--presets", "nope"], "--presets"),
    ("bench_training_throughput", ["--vec", "native", "fast"], "--vec"),
    ("bench_training_throughput", ["--copies", "0", "8"], "--copies"),
    ("bench_training_throughput", ["--threads", "0"], "--threads"),
    ("bench_training_throughput", ["--timesteps", "0"], "--timesteps"),
    ("bench_training_throughput", ["--rollout", "4", "--copies", "8"], "--rollout"),
    ("bench_training_throughput", ["--env", "siftmoe_gym/Nope-v0"], "--env"),
    ("bench_training_throughput", ["--start-method", "teleport"], "--start-method"),
    ("tiny_model", ["train", "--steps", "0"], "--steps"),
    ("tiny_model", ["train", "--lr", "nan"], "--lr"),
    ("tiny_model", ["train", "--seq-len", "1"], "--seq-len"),
    ("tiny_model", ["train", "--max-seconds", "0"], "--max-seconds"),
    ("tiny_model", ["train", "--threads", "0"], "--threads"),
    ("tiny_model", ["train", "--seq-len", "257"], "--seq-len"),
    ("tiny_model", ["train", "--out", "{tmp}/file/sub"], "--out"),
    ("tiny_model", ["eval", "--tokens", "1"], "--tokens"),
    ("tiny_model", ["eval", "--model", "{tmp}/missing"], "--model"),
    ("tiny_model", ["eval", "--threads", "0"], "--threads"),
]
PROGS = {"tiny_model": "python -m siftmoe_gym.hf.tiny_model"}


@pytest.mark.parametrize("name, argv, option", CASES, ids=[f"{c[0]}:{' '.join(c[1])}" for c in CASES])
def test_bad_input_is_one_line_status_2_before_any_work(name, argv, option, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if name == "tiny_model":
        mod = tiny_model
        monkeypatch.setattr(mod, "train", _slow)
        monkeypatch.setattr(mod, "heldout_accuracy", _slow)
    else:
        mod = _bench(name)
        for slow in ("run", "report", "record", "check", "measure", "bench_p1", "bench_p2"):
            if slow in vars(mod):
                monkeypatch.setattr(mod, slow, _slow)
    for heavy in HEAVY:  # an import of any of them now raises ImportError
        monkeypatch.setitem(sys.modules, heavy, None)
    capsys.readouterr()
    assert mod.main(argv) == 2
    out, err = capsys.readouterr()
    prog = PROGS.get(name, f"{name}.py")
    assert out == "" and err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"{prog}: error: ") and option in err and "Traceback" not in err, err


def test_valid_options_reach_the_work(capsys, monkeypatch):
    """The checks refuse only bad values: the defaults pass through to the benchmark's body unchanged."""
    seen = []
    for name in ("bench_core", "bench_fastfading_dp", "bench_reward_magnitudes", "bench_training_throughput",
                 "bench_baselines", "bench_scale"):
        mod = _bench(name)
        monkeypatch.setattr(mod, "report" if name == "bench_training_throughput" else "run",
                            lambda args, name=name: seen.append((name, args)) or 0)
        assert mod.main([]) == 0
    args = dict(seen)
    assert args["bench_core"].batch == 100_000 and args["bench_core"].seconds == 2.0
    assert args["bench_fastfading_dp"].samples == [32, 64, 128, 256, 512] and args["bench_fastfading_dp"].episodes == 40
    assert args["bench_training_throughput"].vec == ["native", "dummy", "subproc"]
    assert args["bench_training_throughput"].copies == [8, 64] and args["bench_reward_magnitudes"].episodes == 30
    assert args["bench_scale"].p1 == 300 and args["bench_scale"].vec_envs == 1024 and args["bench_scale"].p1_budget == 1.0
    seen.clear()
    assert _bench("bench_scale").main(["--quick", "--steps", "7"]) == 0  # --quick changes only the counts not given
    assert seen[0][1].steps == 7 and seen[0][1].p1 == 300 and seen[0][1].milp == 3 and seen[0][1].vec_steps == 512
    assert capsys.readouterr().err == ""


def test_training_throughput_knows_the_vec_kinds_sb3_vec_builds():
    """bench_training_throughput keeps its own copy of the --vec names (sb3_vec loads torch): the same names."""
    from siftmoe_gym.envs.sb3_vec import VEC_KINDS

    assert tuple(_bench("bench_training_throughput").VECS) == tuple(VEC_KINDS)


def test_tiny_model_folder_ignores_the_cache_switch(monkeypatch, tmp_path):
    """SIFTMOE_CACHE switches the model cache on or off; it no longer moves the tiny model ("0" used to mean a
    folder named 0): a value that is no switch warns and is not used as a folder."""
    import warnings

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for switch in ("0", "off", "1", "yes"):
        monkeypatch.setenv("SIFTMOE_CACHE", switch)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert tiny_model.default_dir() == tmp_path / "siftmoe_gym" / "tiny-moe"
    monkeypatch.setenv("SIFTMOE_CACHE", "/somewhere/else")
    with pytest.warns(UserWarning, match="no longer moves the tiny model"):
        assert tiny_model.default_dir() == tmp_path / "siftmoe_gym" / "tiny-moe"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs a /proc, where no file can be created")
def test_outputs_that_cannot_be_written_are_refused_before_the_work(capsys, monkeypatch):
    """tiny_model train --out and traces extract --out are checked by creating a file there first (they used to
    train or run the model, then fail with a traceback)."""
    from siftmoe_gym import traces

    monkeypatch.setattr(tiny_model, "train", _slow)
    assert tiny_model.main(["train", "--out", "/proc/siftmoe-x"]) == 2
    assert capsys.readouterr().err.startswith("python -m siftmoe_gym.hf.tiny_model: error: --out: cannot write in /proc")
    text = Path(__file__)
    assert traces.main(["extract", "--model", "m", "--text", str(text), "--tokens", "4", "--out", "/proc/x.npz"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out: cannot write in /proc" in err
