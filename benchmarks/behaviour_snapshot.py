#!/usr/bin/env python
"""Record, or check, a snapshot of the project's observable behaviour.

Used to show that a refactoring changes no behaviour: record a snapshot on the
commit before it, then check the commit after against it.

    python benchmarks/behaviour_snapshot.py record DIR [--skip-quick]
    python benchmarks/behaviour_snapshot.py check DIR [--skip-quick | --rollouts-only]

What is recorded (each part byte for byte):

- ``rollouts.json``: a seeded 12-step rollout (random actions from a seeded
  action space; auto-reset at episode end) of every registered env id in every
  action mode and both observation modes: SHA-256 of every observation,
  reward, termination flag and ``info`` (numbers written with ``repr``).
- ``compare/``: ``python -m agents.compare`` on ``benchmarks/scenarios/smoke.yml``
  (``episodes.csv``, ``summary.csv``, ``report.md`` with its timing lines
  removed).
- ``quick.txt``: the comparison table ``python train.py --quick --threads 1``
  prints (the run folder line removed), unless ``--skip-quick``.

``check`` records into a temporary folder and prints each part as ``same`` or
``DIFFERENT`` (with the first differing line); exit status 1 if any differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12


def _digest(x, h) -> None:
    import numpy as np

    if isinstance(x, dict):
        for k in sorted(x, key=str):
            h.update(repr(k).encode())
            _digest(x[k], h)
    elif isinstance(x, (list, tuple)):
        h.update(b"[")
        for v in x:
            _digest(v, h)
        h.update(b"]")
    elif isinstance(x, np.ndarray):
        h.update(str(x.dtype).encode() + repr(x.shape).encode())
        h.update(np.ascontiguousarray(x).tobytes())
    elif isinstance(x, (np.generic, float, int, bool, str)) or x is None:
        h.update(repr(x.item() if isinstance(x, np.generic) else x).encode())
    else:
        h.update(repr(x).encode())


def rollouts() -> dict[str, str]:
    import gymnasium as gym

    import siftmoe_gym  # noqa: F401
    from siftmoe_gym.envs import ACTION_MODES, ENV_IDS, OBS_MODES

    out = {}
    for env_id in ENV_IDS:
        modes = ["discrete"] if "Discrete" in env_id else [m for m in ACTION_MODES if m != "discrete"] + ["discrete"]
        for mode in modes:
            for obs_mode in OBS_MODES:
                kw = {} if "Discrete" in env_id else {"action_mode": mode}
                cfg = {"prefill_tokens": 3} if "Prefill" in env_id else {"episode_tokens": 2}
                env = gym.make(env_id, config=cfg, obs_mode=obs_mode, **kw)
                env.action_space.seed(7)
                h = hashlib.sha256()
                obs, info = env.reset(seed=11)
                _digest((obs, info), h)
                for _ in range(STEPS):
                    obs, r, term, trunc, info = env.step(env.action_space.sample())
                    _digest((obs, r, term, trunc, info), h)
                    if term or trunc:
                        obs, info = env.reset()
                        _digest((obs, info), h)
                env.close()
                out[f"{env_id} {mode} {obs_mode}"] = h.hexdigest()
    return out


def compare_outputs(out: Path) -> None:
    from agents import compare as _  # noqa: F401  (fail early if missing)

    run = out / "compare_run"
    subprocess.run([sys.executable, "-m", "agents.compare", "--scenarios", str(ROOT / "benchmarks/scenarios/smoke.yml"),
                    "--out", str(run), "--no-progress"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    dst = out / "compare"
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("episodes.csv", "summary.csv", "report.md"):
        text = (run / name).read_text()
        if name == "report.md":  # timings and the checkout's path vary run to run
            text = text.replace(str(ROOT), "<root>")
            text = re.sub(r"; [0-9.]+ s$", "; <time>", text, flags=re.M)
            text = re.sub(r"^Wall time [0-9.]+ s\.$", "Wall time <time>.", text, flags=re.M)
        (dst / name).write_text(text)


def quick_table(out: Path) -> None:
    with tempfile.TemporaryDirectory() as logdir:
        res = subprocess.run([sys.executable, "train.py", "--quick", "--threads", "1", "--no-progress", "--logdir", logdir],
                             check=True, cwd=ROOT, capture_output=True, text=True)
    lines = [ln for ln in res.stdout.splitlines() if not ln.startswith(("run folder:", "files:"))]
    (out / "quick.txt").write_text("\n".join(lines) + "\n")


def record(out: Path, skip_quick: bool, rollouts_only: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "rollouts.json").write_text(json.dumps(rollouts(), indent=1, sort_keys=True) + "\n")
    if rollouts_only:
        return
    compare_outputs(out)
    if not skip_quick:
        quick_table(out)


def parts(skip_quick: bool, rollouts_only: bool = False) -> list[str]:
    """The files a snapshot recorded with these options holds (and ``check`` compares)."""
    out = ["rollouts.json"]
    if not rollouts_only:
        out += ["compare/episodes.csv", "compare/summary.csv", "compare/report.md"]
    if not (skip_quick or rollouts_only):
        out.append("quick.txt")
    return out


def check(ref: Path, skip_quick: bool, rollouts_only: bool = False) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        new = Path(tmp)
        record(new, skip_quick, rollouts_only)
        bad = 0
        for p in parts(skip_quick, rollouts_only):
            a, b = (ref / p).read_text().splitlines(), (new / p).read_text().splitlines()
            if a == b:
                print(f"same       {p}")
                continue
            bad += 1
            i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            print(f"DIFFERENT  {p} (line {i + 1}):\n  before: {a[i] if i < len(a) else '<end>'}\n"
                  f"  after:  {b[i] if i < len(b) else '<end>'}")
    return 1 if bad else 0


def parse_args(argv=None) -> argparse.Namespace:
    """The options, DIR checked before anything is recorded (:class:`~siftmoe_gym.cli.UsageError`)."""
    from siftmoe_gym.cli import OneLineParser, UsageError

    ap = OneLineParser(prog="behaviour_snapshot.py", description=__doc__.split("\n")[0])
    ap.add_argument("action", choices=("record", "check"))
    ap.add_argument("dir", type=Path)
    ap.add_argument("--skip-quick", action="store_true", help="leave out the train.py --quick table (about a minute)")
    ap.add_argument("--rollouts-only", action="store_true", help="only the environment rollouts (seconds)")
    args = ap.parse_args(argv)
    if args.action == "record":
        if args.dir.exists() and not args.dir.is_dir():
            raise UsageError(f"DIR is not a folder: {args.dir}")
    else:
        if not args.dir.is_dir():
            raise UsageError(f"DIR: no recorded snapshot folder at {args.dir} (record one first)")
        missing = [p for p in parts(args.skip_quick, args.rollouts_only) if not (args.dir / p).is_file()]
        if missing:
            raise UsageError(f"DIR {args.dir} has no {', '.join(missing)} (recorded with --skip-quick or "
                             "--rollouts-only? check with the same)")
    return args


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("PYTHONHASHSEED", "0")
    if args.action == "record":
        record(args.dir, args.skip_quick, args.rollouts_only)
        print(f"recorded {args.dir}")
        return 0
    return check(args.dir, args.skip_quick, args.rollouts_only)


def main(argv=None) -> int:
    from siftmoe_gym.cli import run_main

    return run_main("behaviour_snapshot.py", lambda: run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
