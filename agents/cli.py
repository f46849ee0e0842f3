"""Command line of ``train.py``.

    python train.py --env siftmoe_gym/Decode-v0 --algo ppo --steps 200000 --seed 0 --n-envs 8 --logdir runs/
    python train.py --quick
    python train.py evaluate --model runs/<run>/final_model.zip

Bad arguments (unknown algorithm or environment, algorithm incompatible with
the action space, missing model file, malformed hyperparameter override, a
baseline that does not apply to the environment, a ``--run-name`` that already
exists without ``--resume``, a model whose spaces do not fit its environment)
print one line ``train.py: error: ...`` on stderr and exit with status 2, before
any slow work.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .algos import ALGOS, ALIASES, MAX_ENVS
from .cliutil import OneLineParser as _Parser
from .cliutil import UsageError as _UsageExit
from .cliutil import at_least, check_writable, run_main

MOST = {"steps": 10**10, "eval_freq": 10**10, "checkpoint_freq": 10**10, "eval_episodes": 10_000, "episodes": 10_000}
"""Largest counts accepted (10^10 steps is weeks of training here; 10,000 evaluation episodes hours)."""

PROG = "train.py"


def _key_values(items: Sequence[str] | None, option: str) -> dict:
    from .hyperparams import parse_overrides

    return parse_overrides(items, option)


def train_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Train a Stable-Baselines3 agent on a siftmoe_gym environment and compare it "
                "with the SiftMoE optimum, top-k and the other baselines on the same seeded episodes. "
                "Subcommands: 'train.py evaluate --model PATH' re-evaluates a saved agent; "
                "'train.py compare --scenarios FILE --out DIR' runs the benchmark report (python -m agents.compare).")
    p.add_argument("--env", default=None, help="environment id (default siftmoe_gym/Decode-v0)")
    p.add_argument("--algo", default=None,
                   help=f"algorithm: {', '.join(ALGOS)} (aliases: {', '.join(ALIASES)}); default ppo")
    p.add_argument("--steps", type=int, default=None, help="total environment steps (default: n_timesteps of the YAML)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-envs", type=int, default=None, help="parallel environments (default: n_envs of the YAML)")
    p.add_argument("--vec", choices=("native", "dummy", "subproc"), default=None,
                   help="VecEnv type (default: native where the env has a native vector entry point and the "
                        "algorithm needs no action masks, else dummy)")
    p.add_argument("--logdir", default="runs", help="folder of runs (default runs/)")
    p.add_argument("--run-name", default=None, help="run folder name (default <env>_<algo>_seed<seed>[_i])")
    p.add_argument("--hyperparams", nargs="*", default=None, metavar="KEY=VALUE",
                   help="override hyperparameters, values parsed as YAML, e.g. learning_rate=1e-3 n_steps=64")
    p.add_argument("--conf-file", default=None, help="hyperparameter YAML (default agents/hyperparams/<algo>.yml)")
    p.add_argument("--env-kwargs", nargs="*", default=None, metavar="KEY=VALUE",
                   help="keyword arguments of gym.make, values parsed as YAML")
    p.add_argument("--eval-freq", type=int, default=None, help="evaluate every this many steps (default steps/10)")
    p.add_argument("--eval-episodes", type=int, default=None,
                   help="seeded evaluation episodes (default 5; 8 with --quick)")
    p.add_argument("--eval-seed", type=int, default=None, help="first evaluation seed (default 1000003)")
    p.add_argument("--checkpoint-freq", type=int, default=None, help="checkpoint every this many steps (default eval-freq)")
    p.add_argument("--resume", action="store_true", help="continue the latest run of this env/algo/seed from its last checkpoint")
    p.add_argument("--baselines", nargs="*", default=None, help="baselines in the final table (default: all)")
    p.add_argument("--max-violation-rate", type=float, default=0.01,
                   help="best model: the highest score among feasible evaluations whose share of steps over a budget "
                        "exceeds the optimum's on the same episodes by at most this (default 0.01)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: small MLP policies train fastest on one thread, and a second thread "
                        "on two busy cores made training about twice as slow)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quick", action="store_true",
                   help="the main job: PPO on Decode-v0 for 819,200 steps (ten evaluation lines), then the comparison "
                        "table (docs/training.md gives the measured time)")
    p.add_argument("-v", "--verbose", type=int, default=0, choices=(0, 1, 2), help="SB3 verbosity (0, 1 or 2)")
    return p


def evaluate_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=f"{PROG} evaluate", description="Re-evaluate a saved agent against the baselines on seeded episodes.")
    p.add_argument("--model", required=True, help="saved model (.zip), or a run folder")
    p.add_argument("--episodes", type=int, default=None, help="episodes (default: the run's evaluation seeds)")
    p.add_argument("--eval-seed", type=int, default=None, help="first evaluation seed")
    p.add_argument("--baselines", nargs="*", default=None, help="baselines (default: all)")
    p.add_argument("--out", default=None, help="output folder (default: evaluate_<model> beside the model)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    return p


def _check_args(args: argparse.Namespace) -> None:
    """Refuse, by name, every value that would otherwise be replaced or break later (before any slow work)."""
    import math
    import os

    for name in ("env", "algo", "logdir", "run_name", "conf_file", "model", "out"):
        v = getattr(args, name, None)
        if v is not None and not str(v).strip():
            raise _UsageExit(f"--{name.replace('_', '-')} must not be empty")
    rn = getattr(args, "run_name", None)
    if rn is not None and (os.sep in rn or "/" in rn or rn in (".", "..") or rn.startswith(".")):
        raise _UsageExit(f"--run-name must be a plain folder name (no '/', not starting with '.'), got {rn!r}")
    env = getattr(args, "env", None)
    if env is not None and not env.startswith("siftmoe_gym/"):
        raise _UsageExit(f"--env must be a siftmoe_gym environment id (siftmoe_gym/Decode-v0, ...), got {env!r}")
    cores = os.cpu_count() or 1
    threads = getattr(args, "threads", None)
    if threads is not None and threads > cores:
        raise _UsageExit(f"--threads {threads} is more than this machine's {cores} cores")
    n_envs = getattr(args, "n_envs", None)
    if n_envs is not None and n_envs > MAX_ENVS:
        raise _UsageExit(f"--n-envs must be at most {MAX_ENVS}, got {n_envs}")
    out = getattr(args, "out", None)
    if out is not None and os.path.exists(out) and not os.path.isdir(out):
        raise _UsageExit(f"--out is a file, not a folder: {out}")
    for names, low in ((("steps", "n_envs", "eval_freq", "eval_episodes", "checkpoint_freq", "threads", "episodes"), 1),
                       (("seed", "eval_seed"), 0)):
        for name in names:
            at_least(f"--{name.replace('_', '-')}", getattr(args, name, None), low, MOST.get(name))
    if getattr(args, "logdir", None) is not None:  # (train's option; evaluate has none)
        check_writable("--logdir", args.logdir)  # before the environments and the model are built
    if out is not None:
        check_writable("--out", out)
    if getattr(args, "resume", False) and (args.eval_episodes is not None or args.eval_seed is not None):
        raise _UsageExit("--resume evaluates on the run's saved seeds: --eval-episodes and --eval-seed cannot change")
    mvr = getattr(args, "max_violation_rate", None)
    if mvr is not None and not (math.isfinite(mvr) and 0.0 <= mvr <= 1.0):
        raise _UsageExit(f"--max-violation-rate must be a share of steps in [0, 1], got {mvr}")


def _run_train(args: argparse.Namespace) -> int:
    from .training import QUICK, train

    _check_args(args)
    env_id = args.env if args.env is not None else "siftmoe_gym/Decode-v0"
    algo = args.algo if args.algo is not None else "ppo"
    steps, n_envs, eval_freq, eval_episodes = args.steps, args.n_envs, args.eval_freq, args.eval_episodes
    hp, ek = _key_values(args.hyperparams, "--hyperparams"), _key_values(args.env_kwargs, "--env-kwargs")
    for key, option, value in (("n_envs", "--n-envs", n_envs), ("n_timesteps", "--steps", steps)):
        if key in hp and value is not None and hp[key] != value:  # both given: refused, not one picked
            raise _UsageExit(f"--hyperparams {key}={hp[key]!r} and {option} {value} disagree; give one")
    hp_ek = hp.get("env_kwargs") if isinstance(hp.get("env_kwargs"), dict) else {}
    clash = sorted(str(k) for k in hp_ek if k in ek and hp_ek[k] != ek[k])
    if clash:
        raise _UsageExit(f"--hyperparams env_kwargs and --env-kwargs disagree on {', '.join(clash)}; give one")
    if args.quick:  # the quick settings fill in only what was not given (as an option or a hyperparameter)
        env_id = args.env if args.env is not None else QUICK["env_id"]
        algo = args.algo if args.algo is not None else QUICK["algo"]
        steps = QUICK["steps"] if steps is None and "n_timesteps" not in hp else steps
        n_envs = QUICK["n_envs"] if n_envs is None and "n_envs" not in hp else n_envs
        eval_freq = QUICK["eval_freq"] if eval_freq is None else eval_freq
        eval_episodes = QUICK["eval_episodes"] if eval_episodes is None else eval_episodes
    eval_episodes = 5 if eval_episodes is None else eval_episodes
    # validate cheap things before building environments
    from .algos import canonical_algo

    canonical_algo(algo)
    kwargs = dict(
        env_id=env_id, algo=algo, steps=steps, seed=args.seed, n_envs=n_envs, logdir=args.logdir,
        hyperparams=hp, conf_file=args.conf_file, env_kwargs=ek,
        eval_freq=eval_freq, eval_episodes=eval_episodes, checkpoint_freq=args.checkpoint_freq, resume=args.resume,
        run_name=args.run_name, vec=args.vec, progress_bar=not args.no_progress, baselines=args.baselines,
        max_violation_rate=args.max_violation_rate, threads=args.threads, verbose=args.verbose,
    )
    if args.eval_seed is not None:
        kwargs["eval_seed_base"] = args.eval_seed
    result = train(**kwargs)
    print(f"run folder: {result.run_dir}  (tensorboard --logdir {result.run_dir / 'tb'})")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from .training import evaluate_saved

    _check_args(args)
    evaluate_saved(args.model, episodes=args.episodes, eval_seed_base=args.eval_seed, baselines=args.baselines,
                   out_dir=args.out, threads=args.threads)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        if argv and argv[0] == "evaluate":
            return _run_evaluate(evaluate_parser().parse_args(argv[1:]))
        if argv and argv[0] == "compare":  # the benchmark report: same as python -m agents.compare
            from .report.benchmark import main as compare_main

            return compare_main(argv[1:], prog="train.py compare")
        return _run_train(train_parser().parse_args(argv[1:] if argv and argv[0] == "train" else argv))

    return run_main(PROG, body, interrupted="interrupted (a run that wrote a checkpoint continues with --resume)")
