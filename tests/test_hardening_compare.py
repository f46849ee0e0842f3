"""``python -m agents.compare``: the whole scenario file and command line are checked before anything runs
(one line ``python -m agents.compare: error: ...``, status 2, nothing written), and each scenario's results are
written as soon as it finishes, so an interrupted run keeps them."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import siftmoe_gym  # noqa: F401
from agents.report import scenarios as report_scenarios

ROOT = Path(__file__).resolve().parents[1]
PROG = "python -m agents.compare"

GOOD = """\
  - name: first
    env: siftmoe_gym/Decode-v0
    config: {episode_tokens: 2}
    policies: [topk, siftmoe]
"""


def _write(tmp_path: Path, second: str, top: str = "episodes: 2\nseed: 10\n") -> Path:
    p = tmp_path / "scn.yml"
    p.write_text(top + "scenarios:\n" + GOOD + textwrap.indent(textwrap.dedent(second), "  "))
    return p


BAD_SECOND = {
    "unknown-policy": ("- name: second\n  env: siftmoe_gym/Decode-v0\n  policies: [topk, nope]\n",
                       "scenario 'second': policies: unknown policy 'nope'"),
    "policy-setting": ("- name: second\n  env: siftmoe_gym/Decode-v0\n  policies: [topk, dpp]\n",
                       "policies: 'dpp' do(es) not apply to siftmoe_gym/Decode-v0 (decode)"),
    "misspelt-key": ("- name: second\n  env: siftmoe_gym/Decode-v0\n  polices: [topk]\n",
                     "scenario 'second': unknown key(s) 'polices'; accepted: name, title"),
    "unknown-env": ("- name: second\n  env: siftmoe_gym/Nope-v0\n", "env: unknown environment id 'siftmoe_gym/Nope-v0'"),
    "sweep-param": ("- name: second\n  sweep: {param: eps_rell, values: [0.1]}\n",
                    "sweep.param 'eps_rell' is not a config key of siftmoe_gym/Decode-v0"),
    "sweep-values": ("- name: second\n  sweep: {param: eps_rel, values: []}\n", "sweep.values must be a non-empty list"),
    "sweep-value": ("- name: second\n  sweep: {param: eps_rel, values: [0.1, null]}\n",
                    "sweep.values: None is not a number"),
    "sweep-range": ("- name: second\n  sweep: {param: eps_rel, values: [0.1, -1]}\n", "point -1: ValueError"),
    "sweep-key": ("- name: second\n  sweep: {param: eps_rel, values: [0.1], lable: x}\n",
                  "sweep: unknown key(s) 'lable'"),
    "sweep-x": ("- name: second\n  sweep: {param: eps_rel, values: [0.1, 0.2], x: [1]}\n",
                "sweep.x must be a list of 2 numbers"),
    "config-key": ("- name: second\n  config: {episode_tokenz: 3}\n", "config: unknown key(s) 'episode_tokenz'"),
    "episodes-zero": ("- name: second\n  episodes: 0\n", "episodes must be an integer >= 1, got 0"),
    "episodes-negative": ("- name: second\n  episodes: -3\n", "episodes must be an integer >= 1, got -3"),
    "bound-decode": ("- name: second\n  bound: lagrangian\n", "bound: only 'lagrangian', and only for fast-fading"),
    "plot": ("- name: second\n  plots: [energy]\n", "plots: unknown plot metric 'energy'"),
    "plot-policies": ("- name: second\n  policies: [topk]\n  plot_policies: {violation_pct: [siftmoe]}\n",
                      "plot_policies.violation_pct: unknown policy of this scenario 'siftmoe'"),
    "policy-kwargs": ("- name: second\n  policies: [topk]\n  policy_kwargs: {siftmoe: {}}\n",
                      "policy_kwargs: unknown key(s) 'siftmoe'"),
    "duplicate-name": ("- name: first\n", "scenario name 'first' is used twice"),
    "name-escapes-out": ("- name: ../../evil\n", "a scenario name names its files in --out: a plain name"),
    "name-subfolder": ("- name: a/b\n", "a plain name (no '/'"),
    "name-hidden": ("- name: .hidden\n", "not starting with '.'"),
    "name-nul": ('- name: "a\\0b"\n', "no outer spaces or control characters"),
    "name-long": ("- name: " + "x" * 101 + "\n", "at most 100 bytes"),
    "sweep-and-config": ("- name: second\n  config: {episode_tokens: 2}\n  sweep: {param: episode_tokens, values: [2, 3]}\n",
                         "sweep.param 'episode_tokens' is also set in config (2): the sweep would override it"),
    "duplicate-key": ("- name: second\n  episodes: 2\n  episodes: 3\n", "found the key 'episodes' twice"),
    "kind": ("- name: second\n  kind: sweeep\n", "unknown kind 'sweeep'"),
    "hf-key": ("- name: second\n  kind: hf_accuracy\n  env: siftmoe_gym/Decode-v0\n", "unknown key(s) 'env'"),
}


@pytest.mark.parametrize("case", sorted(BAD_SECOND))
def test_scenario_file_checked_as_a_whole(tmp_path, case):
    second, needle = BAD_SECOND[case]
    with pytest.raises(ValueError) as exc:
        report_scenarios.load_scenario_file(_write(tmp_path, second))
    assert needle in str(exc.value)


@pytest.mark.parametrize("top,needle", [
    ("episodes: 0\n", "episodes must be an integer >= 1"),
    ("seed: -1\n", "seed must be an integer >= 0"),
    ("episode: 3\n", "unknown key(s) 'episode'; accepted: episodes, seed, scenarios"),
])
def test_scenario_file_top_level(tmp_path, top, needle):
    with pytest.raises(ValueError) as exc:
        report_scenarios.load_scenario_file(_write(tmp_path, "", top))
    assert needle in str(exc.value)


def test_shipped_scenario_files_pass():
    for name in ("default.yml", "smoke.yml"):
        assert report_scenarios.load_scenario_file(ROOT / "benchmarks" / "scenarios" / name)["scenarios"]


def _one_line(capsys, rc, needle):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith(f"{PROG}: error:") and needle in err[0], err


def test_bad_second_scenario_runs_nothing(tmp_path, capsys):
    from agents import compare

    out = tmp_path / "out"
    rc = compare.main(["--scenarios", str(_write(tmp_path, BAD_SECOND["unknown-policy"][0])), "--out", str(out),
                       "--no-progress"])
    _one_line(capsys, rc, "unknown policy 'nope'")
    assert not out.exists()


@pytest.mark.parametrize("extra,needle", [
    (["--episodes", "0"], "--episodes must be >= 1, got 0"),
    (["--ray-chunk", "0"], "--ray-chunk must be >= 1, got 0"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--agent", "ppo=/does/not/exist.zip"], "--agent ppo=/does/not/exist.zip: model file not found"),
    (["--agent", "ppo"], "--agent expects NAME=PATH"),
    (["--only", "first", "nope"], "--only: unknown scenario(s) 'nope'"),
    (["--episodes", "x"], "invalid int value"),
], ids=["episodes", "ray-chunk", "threads", "agent-missing", "agent-form", "only", "argparse"])
def test_compare_cli_one_line(tmp_path, capsys, extra, needle):
    from agents import compare

    out = tmp_path / "out"
    rc = compare.main(["--scenarios", str(_write(tmp_path, "")), "--out", str(out), "--no-progress", *extra])
    _one_line(capsys, rc, needle)
    assert not out.exists()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs a /proc, where no file can be created")
def test_compare_out_that_cannot_be_written_is_refused_first(tmp_path, capsys, monkeypatch):
    from agents import compare
    from agents.report import benchmark

    monkeypatch.setattr(benchmark, "run_benchmark", lambda *a, **k: pytest.fail("scenarios ran"))
    rc = compare.main(["--scenarios", str(_write(tmp_path, "")), "--out", "/proc/siftmoe-x", "--no-progress"])
    _one_line(capsys, rc, "--out: cannot write in /proc")


def test_compare_process_one_line_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "agents.compare", "--scenarios", str(tmp_path / "missing.yml"),
                        "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"{PROG}: error: --scenarios: no such file: {tmp_path / 'missing.yml'}"]


def test_interrupted_run_keeps_finished_scenarios(tmp_path, monkeypatch):
    """The second scenario is interrupted: the first's CSV rows, markdown section and plot are on disk."""
    from agents.report import benchmark

    scn = _write(tmp_path, "- name: second\n  env: siftmoe_gym/Decode-v0\n  config: {episode_tokens: 2}\n"
                           "  policies: [topk]\n")
    real = benchmark.run_sweep_scenario

    def run(scn, *a, **k):
        if scn["name"] == "second":
            raise KeyboardInterrupt
        return real(scn, *a, **k)

    monkeypatch.setattr(benchmark, "run_sweep_scenario", run)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        benchmark.run_benchmark(scn, out, progress=False)
    with open(out / "episodes.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["scenario"] for r in rows} == {"first"} and len(rows) == 4  # 2 policies x 2 episodes
    with open(out / "summary.csv") as f:
        assert {r["policy"] for r in csv.DictReader(f)} == {"topk", "siftmoe"}
    md = (out / "report.md").read_text()
    assert "](first.png)" in md and "Partial report: 1 of 2 scenarios finished (first)" in md
    assert (out / "first.png").read_bytes()[:4] == b"\x89PNG"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["complete"] is False and meta["finished_scenarios"] == ["first"]
    assert not list(out.glob(".*.tmp"))
    # the same run uninterrupted: complete, and the first scenario's rows are the same
    monkeypatch.undo()
    res = benchmark.run_benchmark(scn, tmp_path / "full", progress=False)
    assert json.loads((tmp_path / "full" / "meta.json").read_text())["complete"] is True
    assert [r for r in res["records"] if r["scenario"] == "first"][0]["energy_j"] == pytest.approx(float(rows[0]["energy_j"]))


def test_out_must_be_a_folder(tmp_path, capsys):
    from agents import compare

    out = tmp_path / "out"
    out.write_text("a file")
    rc = compare.main(["--scenarios", str(_write(tmp_path, "")), "--out", str(out), "--no-progress"])
    _one_line(capsys, rc, "--out must name a folder")
    assert out.read_text() == "a file"


def test_train_py_compare_names_itself_and_a_folder_is_not_a_file(tmp_path, capsys):
    """`train.py compare` errors start with `train.py compare: error:` (they named python -m agents.compare), and a
    folder given as --scenarios is called a folder (it was 'no such file')."""
    from agents.cli import main

    rc = main(["compare", "--scenarios", str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"train.py compare: error: --scenarios: a folder, not a file: {tmp_path}\n", err
    rc = main(["compare", "--scenarios", str(tmp_path / "missing.yml"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("train.py compare: error: --scenarios: no such file"), err
