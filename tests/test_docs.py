"""Numbers and defaults the docs quote are the code's: the train.py options table of docs/training.md is read
against the parser, the --quick settings against agents.training.QUICK, and the README's commands exist."""

from __future__ import annotations

import re
from pathlib import Path

from agents.cli import evaluate_parser, train_parser
from agents.evaluation import DEFAULT_EVAL_SEED_BASE, FEASIBILITY_TOL
from agents.training import DEFAULT_THREADS, QUICK

ROOT = Path(__file__).resolve().parents[1]
TRAINING = (ROOT / "docs" / "training.md").read_text()
README = (ROOT / "README.md").read_text()


def _defaults(parser) -> dict:
    return {a.dest: a.default for a in parser._actions}


def _row(option: str) -> str:
    rows = [line for line in TRAINING.splitlines() if line.startswith(f"| `{option}")]
    assert len(rows) == 1, f"docs/training.md has {len(rows)} option rows for {option}"
    return rows[0]


def test_options_table_quotes_the_parser_defaults():
    d = _defaults(train_parser())
    assert d["threads"] == DEFAULT_THREADS == 1
    assert f"default {d['threads']}" in _row("--threads")
    assert f"default {d['max_violation_rate']:g}" in _row("--max-violation-rate")
    assert d["max_violation_rate"] == FEASIBILITY_TOL
    assert f"default {DEFAULT_EVAL_SEED_BASE}" in _row("--eval-freq")
    assert d["eval_episodes"] is None and "default 5; 8 with `--quick`" in _row("--eval-freq")
    assert QUICK["eval_episodes"] == 8
    assert "default `native`" in _row("--n-envs")
    assert d["vec"] is None  # native where possible, decided by agents.training.resolve_run
    assert _defaults(evaluate_parser())["threads"] == DEFAULT_THREADS


def test_quick_settings_are_the_documented_ones():
    row = _row("--quick")
    assert f"{QUICK['steps']:,} steps" in row
    rollout = QUICK["n_envs"] * 128  # the YAML's n_steps for Decode-v0
    assert QUICK["steps"] % rollout == 0 and f"{QUICK['steps'] // rollout} rollouts" in row
    assert QUICK["steps"] // QUICK["eval_freq"] == 10 and "10 evaluations" in row
    assert f"{QUICK['eval_episodes']} episodes" in row


def test_readme_commands_use_real_options():
    """Every ``--option`` the README passes to train.py exists in its parser."""
    known = {opt for a in train_parser()._actions for opt in a.option_strings}
    for line in README.splitlines():
        if "python train.py" in line and " evaluate" not in line and " compare" not in line:
            for opt in re.findall(r"(?<=\s)(--[a-z-]+)", line.split("python train.py", 1)[1].split("#")[0]):
                assert opt in known, (opt, line)
