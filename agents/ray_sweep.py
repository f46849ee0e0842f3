"""Training sweeps (seeds x algorithms) and a Tune search over PPO hyperparameters, on Ray.

Two subcommands (``python -m agents.ray_sweep {train,tune} --help``):

``train``
    One :func:`agents.training.train` run per (algorithm, seed), each a Ray task with ``--ray`` (local
    Ray, or ``--ray-address`` to join a cluster), one after the other without it.  Every run writes its
    usual run folder (``<out>/runs/<env>_<algo>_seed<seed>/``: models, TensorBoard, comparison table and
    plots, identical for the same seeds with and without Ray), and the sweep writes ``sweep.csv`` (one row
    per run: the agent's comparison row, regret against siftmoe on the same evaluation seeds),
    ``sweep_summary.csv`` (per algorithm: mean and 95% t-interval over seeds), ``sweep.md`` and
    ``sweep.json``.

``tune``
    A Ray Tune search over PPO hyperparameters (default space: :data:`DEFAULT_SEARCH_SPACE`) on
    ``siftmoe_gym/Decode-v0``.  Each trial trains SB3 PPO in chunks and, after each chunk, evaluates the
    deterministic agent and ``baselines.get_policy("siftmoe", env)`` on the same seeded episodes
    (:mod:`siftmoe_gym.evaluation`) and reports ``regret = E_agent / E_siftmoe - 1`` (the metric, minimized)
    with the violation rates; ``--asha`` stops poor trials early.  Writes ``tune_results.csv`` and
    ``tune_best.json`` to ``--out`` (Tune's own trial folders under ``<out>/tune/``).

Regret alone rewards breaking budgets (an agent that skips experts uses less energy than the optimum
and has negative regret, see docs/training.md); ``--metric feasible_regret`` adds
``10 x max(0, excess violation rate - 1%)`` (the agent's share of steps over a budget beyond siftmoe's
own), which ranks such trials last.

Ray is imported only inside the functions that use it (optional extra: ``pip install -e ".[ray]"``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable


from .evaluation import mean_ci95

DEFAULT_ENV = "siftmoe_gym/Decode-v0"
SWEEP_FIELDS = [
    "env_id", "algo", "seed", "timesteps", "energy_per_token_j", "siftmoe_energy_per_token_j", "regret",
    "saving_pct", "violation_rate", "latency_violation_rate", "any_violation_rate", "siftmoe_any_violation_rate",
    "excess_violation_rate", "mean_error_ratio", "mean_return", "train_wall_s", "run_dir",
]
SUMMARY_METRICS = ["regret", "energy_per_token_j", "any_violation_rate", "excess_violation_rate", "train_wall_s"]
ARTIFACTS = ["config.json", "final_model.zip", "final_model.json", "best_model.zip", "best_model.json",
             "evaluations.json", "baselines.json", "comparison.csv", "comparison.json", "comparison.png",
             "learning_curve.png"]
FEASIBLE_TOL = 0.01
FEASIBLE_WEIGHT = 10.0


def feasible_regret(regret: float, excess_violation_rate: float) -> float:
    """``regret + 10 * max(0, excess - 1%)``: regret, with trials that break budgets beyond siftmoe's pushed back."""
    return float(regret) + FEASIBLE_WEIGHT * max(0.0, float(excess_violation_rate) - FEASIBLE_TOL)


# ============================================================================ training sweep (seeds x algos)
def train_unit(env_id: str, algo: str, seed: int, logdir: str, train_kwargs: dict[str, Any],
               return_artifacts: bool = False) -> dict[str, Any]:
    """One :func:`agents.training.train` run (the unit of a sweep, local or a Ray task).

    Returns the agent's comparison row (regret against siftmoe on the same evaluation seeds) with the run
    folder; with ``return_artifacts`` also the bytes of the run's small files (models, JSON, CSV, PNG), so a
    driver on another machine can write them."""
    from .runio import slug
    from .training import train

    run_name = f"{slug(env_id)}_{algo}_seed{seed}"
    kw = {"progress_bar": False, "print_table": False, "threads": 1, **train_kwargs}
    res = train(env_id=env_id, algo=algo, seed=int(seed), logdir=logdir, run_name=run_name, **kw)
    agent = dict(res.rows[0])
    row = {k: agent.get(k) for k in SWEEP_FIELDS if k in agent}
    row.update({"env_id": env_id, "algo": algo, "seed": int(seed), "timesteps": int(res.timesteps),
                "train_wall_s": float(res.wall_s), "run_dir": str(res.run_dir),
                "rows": res.rows, "host": os.uname().nodename})
    if return_artifacts:
        row["artifacts"] = {name: (res.run_dir / name).read_bytes() for name in ARTIFACTS
                            if (res.run_dir / name).is_file()}
    return row


def _env(env_id: str, env_kwargs: dict[str, Any]):
    """``env_id`` built with ``env_kwargs`` (which the env checks), or AgentConfigError."""
    from .algos import AgentConfigError
    from .envs import make_env

    try:
        return make_env(env_id, env_kwargs)
    except AgentConfigError:
        raise
    except Exception as exc:
        raise AgentConfigError(f"--env-kwargs: {env_id} refuses them: {type(exc).__name__}: {exc}") from None


def check_train_sweep(algos: Iterable[str], seeds: Iterable[int], env_id: str, logdir: Path,
                      train_kwargs: dict[str, Any]) -> tuple[list[str], list[int]]:
    """Check a whole sweep before any run starts: ``(canonical algorithms, seeds)``, or
    :class:`~agents.algos.AgentConfigError` naming the problem (unknown env or algorithm, one that cannot act
    in the env, bad hyperparameters or baselines, a seed given twice or negative, a run folder of the sweep
    that already exists)."""
    from .algos import AgentConfigError, canonical_algo, check_compatible
    from .envs import env_setting
    from .evaluation import check_baselines
    from .runio import slug
    from . import check_builds

    algos = [canonical_algo(a) for a in algos]
    seeds = list(seeds)
    if not algos or not seeds:
        raise AgentConfigError("a sweep needs at least one algorithm and one seed")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad:
        raise AgentConfigError(f"--seeds must be integers >= 0, got {bad}")
    for name, values in (("--algos", algos), ("--seeds", seeds)):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise AgentConfigError(f"{name}: {', '.join(map(str, twice))} given twice (one run folder each)")
    env_kwargs = dict(train_kwargs.get("env_kwargs") or {})
    env = _env(env_id, env_kwargs)
    for a in algos:
        check_compatible(a, env.action_space, env_id)
        check_builds(a, env_id, train_kwargs.get("hyperparams"), env_kwargs)  # every run's model, before the first trains
    check_baselines(train_kwargs.get("baselines"), env_setting(env_id), env_id)
    for name in ("steps", "n_envs", "eval_episodes", "eval_freq", "checkpoint_freq"):
        v = train_kwargs.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise AgentConfigError(f"--{name.replace('_', '-')} must be an integer >= 1, got {v!r}")
    taken = [f"{slug(env_id)}_{a}_seed{s}" for a in algos for s in seeds
             if (Path(logdir) / f"{slug(env_id)}_{a}_seed{s}").exists()]
    if taken:
        raise AgentConfigError(f"--out: {logdir} already holds run(s) {', '.join(taken)} of this sweep; "
                               f"choose another --out")
    return algos, [int(s) for s in seeds]


def _write_artifacts(row: dict[str, Any]) -> None:
    arts = row.pop("artifacts", None)
    if not arts:
        return
    d = Path(row["run_dir"])
    if (d / "final_model.zip").is_file():  # same file system as the worker: already there
        return
    d.mkdir(parents=True, exist_ok=True)
    for name, data in arts.items():
        (d / name).write_bytes(data)


def train_sweep(algos: Iterable[str], seeds: Iterable[int], env_id: str = DEFAULT_ENV, out: str | os.PathLike = "runs/sweep",
                use_ray: bool = False, address: str | None = None, num_cpus: int | None = None,
                cpus_per_run: float = 1.0, progress: bool = True, **train_kwargs: Any) -> dict[str, Any]:
    """Train every (algorithm, seed) and tabulate regret against siftmoe; see the module docstring.

    ``train_kwargs`` go to :func:`agents.training.train` (``steps``, ``n_envs``, ``hyperparams``,
    ``env_kwargs``, ``eval_episodes``, ``eval_freq``, ``baselines``...).  With ``use_ray`` (or an
    ``address``) each run is a Ray task needing ``cpus_per_run`` CPUs."""
    use_ray = bool(use_ray or address)
    out = Path(out).resolve()
    logdir = out / "runs"
    algos, seeds = check_train_sweep(algos, seeds, env_id, logdir, train_kwargs)
    if use_ray:
        from .ray_utils import require_ray

        require_ray()
    logdir.mkdir(parents=True, exist_ok=True)
    units = [(a, s) for a in algos for s in seeds]
    t0 = time.perf_counter()

    def note(i, row):
        if progress:
            print(f"[{time.perf_counter() - t0:6.1f} s] {row['algo']} seed {row['seed']}: regret "
                  f"{100 * row['regret']:.2f}%, any violation {100 * row['any_violation_rate']:.2f}% "
                  f"({row['host']})", flush=True)

    if use_ray:
        from .ray_utils import init_ray, ray_get_in_order, require_ray

        ray = require_ray()
        started = init_ray(address, num_cpus)
        try:
            remote = ray.remote(num_cpus=cpus_per_run)(train_unit)
            refs = [remote.remote(env_id, a, s, str(logdir), train_kwargs, True) for a, s in units]
            rows = ray_get_in_order(refs, note)
        finally:
            if started:
                ray.shutdown()
        for r in rows:
            _write_artifacts(r)
    else:
        rows = []
        for a, s in units:
            rows.append(train_unit(env_id, a, s, str(logdir), train_kwargs))
            note(len(rows) - 1, rows[-1])
    wall = time.perf_counter() - t0
    for r in rows:
        r["feasible_regret"] = feasible_regret(r["regret"], r.get("excess_violation_rate", 0.0))
    summary = []
    for a in algos:
        rs = [r for r in rows if r["algo"] == a]
        s = {"algo": a, "seeds": len(rs)}
        for m in SUMMARY_METRICS:
            mean, half, _ = mean_ci95(r.get(m, math.nan) for r in rs)
            s[m], s[f"{m}_ci95"] = mean, half
        summary.append(s)
    paths = _write_sweep(out, env_id, rows, summary, wall, use_ray, address, train_kwargs)
    return {"rows": rows, "summary": summary, "wall_s": wall, "paths": paths}


def _write_sweep(out: Path, env_id: str, rows, summary, wall, use_ray, address, train_kwargs) -> dict[str, Path]:
    from .runio import atomic_write_json, atomic_write_text

    paths = {"csv": out / "sweep.csv", "summary_csv": out / "sweep_summary.csv", "md": out / "sweep.md",
             "json": out / "sweep.json"}
    fields = SWEEP_FIELDS + ["feasible_regret"]
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    sfields = ["algo", "seeds"] + [f"{m}{s}" for m in SUMMARY_METRICS for s in ("", "_ci95")]
    with open(paths["summary_csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=sfields, extrasaction="ignore")
        w.writeheader()
        w.writerows(summary)
    pct = lambda m, h: f"{100 * m:.2f}" + (f" ± {100 * h:.2f}" if math.isfinite(h) else "")
    md = [f"# Training sweep on {env_id}", "",
          f"{len(rows)} runs ({'Ray' + (f' at {address}' if address else ', local') if use_ray else 'one machine, sequential'}), "
          f"wall time {wall:.1f} s; train kwargs `{json.dumps(train_kwargs, default=str)}`.", "",
          "| algo | seeds | regret vs siftmoe (%) | any violation (%) | excess violation (%) | train wall (s) |",
          "|---|---|---|---|---|---|"]
    for s in summary:
        md.append(f"| {s['algo']} | {s['seeds']} | {pct(s['regret'], s['regret_ci95'])} | "
                  f"{pct(s['any_violation_rate'], s['any_violation_rate_ci95'])} | "
                  f"{pct(s['excess_violation_rate'], s['excess_violation_rate_ci95'])} | {s['train_wall_s']:.1f} |")
    md += ["", "| algo | seed | regret (%) | energy/token (mJ) | siftmoe (mJ) | any violation (%) | run |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['algo']} | {r['seed']} | {100 * r['regret']:.2f} | {1e3 * r['energy_per_token_j']:.4f} | "
                  f"{1e3 * r['siftmoe_energy_per_token_j']:.4f} | {100 * r['any_violation_rate']:.2f} | "
                  f"`{Path(r['run_dir']).name}` |")
    atomic_write_text(paths["md"], "\n".join(md) + "\n")
    atomic_write_json(paths["json"], {"env_id": env_id, "wall_s": wall, "ray": use_ray, "address": address,
                                      "train_kwargs": train_kwargs,
                                      "runs": [{k: v for k, v in r.items() if k != "rows"} for r in rows],
                                      "summary": summary})
    return paths


# ============================================================================ Tune: PPO hyperparameters
DEFAULT_SEARCH_SPACE: dict[str, tuple] = {
    "learning_rate": ("loguniform", 1e-4, 3e-3),
    "n_steps": ("choice", [32, 64, 128]),
    "batch_size": ("choice", [64, 128]),
    "n_epochs": ("choice", [4, 10]),
    "ent_coef": ("choice", [0.0, 0.01, 0.05]),
    "clip_range": ("choice", [0.1, 0.2, 0.3]),
}
"""PPO hyperparameters searched by default (as ``(kind, *args)``; built into ``ray.tune`` domains lazily)."""


def search_space(spec: dict[str, tuple] | None = None) -> dict[str, Any]:
    """``ray.tune`` domains from ``{name: ("loguniform", lo, hi) | ("uniform", lo, hi) | ("choice", [..]) |
    ("grid", [..])}`` (default :data:`DEFAULT_SEARCH_SPACE`); plain values are kept fixed."""
    from ray import tune

    out = {}
    for k, v in (spec or DEFAULT_SEARCH_SPACE).items():
        if isinstance(v, tuple) and v and isinstance(v[0], str):
            kind, *args = v
            out[k] = {"loguniform": tune.loguniform, "uniform": tune.uniform, "choice": tune.choice,
                      "grid": tune.grid_search}[kind](*args)
        else:
            out[k] = v
    return out


def ppo_trial(config: dict[str, Any], fixed: dict[str, Any]) -> None:
    """Tune function trainable: SB3 ``fixed["algo"]`` with ``config`` as hyperparameter overrides, trained in
    ``fixed["chunks"]`` chunks; after each, regret against siftmoe on the same seeded evaluation episodes."""
    import torch
    from ray import tune

    import baselines
    from siftmoe_gym.evaluation import evaluate_policy

    from . import make_agent
    from .algos import get_algo
    from .evaluation import eval_seeds
    from .envs import make_env, make_vec_env
    from .policy import AgentPolicy

    torch.set_num_threads(1)
    env_id, algo, seed = fixed["env_id"], fixed["algo"], int(fixed["seed"])
    env_kwargs = dict(fixed.get("env_kwargs") or {})
    n_envs = int(fixed["n_envs"])
    from siftmoe_gym.envs.sb3_vec import has_native

    vec = "native" if (has_native(env_id) and not get_algo(algo).masked) else "dummy"
    venv = make_vec_env(env_id, algo, n_envs, seed, env_kwargs, vec)
    hp = {**(fixed.get("hyperparams") or {}), **config}
    model = make_agent(algo, venv, seed=seed, hyperparams=hp, env_id=env_id)
    env = make_env(env_id, env_kwargs)
    seeds = eval_seeds(int(fixed["eval_episodes"]))
    ref, _ = evaluate_policy(env, baselines.get_policy("siftmoe", env), seeds)
    steps, chunks = int(fixed["steps"]), max(1, int(fixed["chunks"]))
    t0 = time.perf_counter()
    for i in range(chunks):
        target = steps * (i + 1) // chunks
        if target > model.num_timesteps:
            model.learn(total_timesteps=target - model.num_timesteps, reset_num_timesteps=(i == 0))
        summ, _ = evaluate_policy(env, AgentPolicy(model, env), seeds)
        regret = summ["energy_per_token_j"] / ref["energy_per_token_j"] - 1.0
        excess = summ["any_violation_rate"] - ref["any_violation_rate"]
        tune.report({
            "regret": regret, "feasible_regret": feasible_regret(regret, excess),
            "excess_violation_rate": excess, "any_violation_rate": summ["any_violation_rate"],
            "violation_rate": summ["violation_rate"], "latency_violation_rate": summ["latency_violation_rate"],
            "energy_per_token_j": summ["energy_per_token_j"], "siftmoe_energy_per_token_j": ref["energy_per_token_j"],
            "mean_return": summ["mean_return"], "timesteps": int(model.num_timesteps),
            "train_wall_s": time.perf_counter() - t0,
        })
    venv.close()
    env.close()


def tune_ppo(env_id: str = DEFAULT_ENV, algo: str = "ppo", num_samples: int = 8, steps: int = 20_000,
             chunks: int = 4, n_envs: int = 4, eval_episodes: int = 4, seed: int = 0, metric: str = "regret",
             space: dict[str, tuple] | None = None, hyperparams: dict[str, Any] | None = None,
             env_kwargs: dict[str, Any] | None = None, asha: bool = False, search_seed: int = 0,
             out: str | os.PathLike = "runs/tune", address: str | None = None, num_cpus: int | None = None,
             cpus_per_trial: float = 1.0, max_concurrent: int = 0, verbose: int = 1) -> dict[str, Any]:
    """Ray Tune search over PPO hyperparameters, minimizing ``metric`` (``regret`` or ``feasible_regret``).

    Random search (reproducible: ``search_seed``) over ``space`` (:data:`DEFAULT_SEARCH_SPACE`), each
    trial one :func:`ppo_trial` reporting after each of ``chunks`` training chunks; ``asha`` adds
    early stopping.  Returns ``{"best": {...}, "results": [...], "paths": {...}, "wall_s": ...}``."""
    if metric not in ("regret", "feasible_regret"):
        raise ValueError(f"metric must be regret or feasible_regret, got {metric!r}")
    from .algos import canonical_algo
    from .ray_utils import init_ray, require_ray

    check_tune(env_id, algo, dict(hyperparams or {}), dict(env_kwargs or {}))
    algo = canonical_algo(algo)
    ray = require_ray()
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    fixed = {"env_id": env_id, "algo": algo, "seed": seed, "n_envs": n_envs, "steps": steps, "chunks": chunks,
             "eval_episodes": eval_episodes, "hyperparams": dict(hyperparams or {}), "env_kwargs": dict(env_kwargs or {})}
    t0 = time.perf_counter()
    started = init_ray(address, num_cpus)
    try:
        trainable = tune.with_resources(tune.with_parameters(ppo_trial, fixed=fixed), {"cpu": cpus_per_trial})
        scheduler = None
        if asha:
            from ray.tune.schedulers import ASHAScheduler

            scheduler = ASHAScheduler(max_t=chunks, grace_period=1, reduction_factor=2, time_attr="training_iteration")
        tuner = tune.Tuner(
            trainable, param_space=search_space(space),
            tune_config=tune.TuneConfig(metric=metric, mode="min", num_samples=num_samples, scheduler=scheduler,
                                        search_alg=BasicVariantGenerator(random_state=search_seed,
                                                                         max_concurrent=max_concurrent)),
            run_config=tune.RunConfig(name="tune", storage_path=str(out), verbose=verbose),
        )
        grid = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    wall = time.perf_counter() - t0
    results = []
    for r in grid:
        if r.error:
            results.append({"config": r.config, "error": str(r.error)})
            continue
        results.append({"config": r.config, **{k: v for k, v in (r.metrics or {}).items()
                                               if isinstance(v, (int, float, str)) and not k.startswith("config/")}})
    ok = [r for r in results if "error" not in r and math.isfinite(r.get(metric, math.nan))]
    best = min(ok, key=lambda r: r[metric]) if ok else None
    paths = {"csv": out / "tune_results.csv", "best": out / "tune_best.json"}
    keys = sorted({k for r in results for k in r.get("config", {})})
    cols = ["trial", *[f"config/{k}" for k in keys], "regret", "feasible_regret", "excess_violation_rate",
            "any_violation_rate", "energy_per_token_j", "siftmoe_energy_per_token_j", "timesteps",
            "training_iteration", "train_wall_s", "error"]
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for i, r in enumerate(results):
            w.writerow({"trial": i, **{f"config/{k}": v for k, v in r.get("config", {}).items()}, **r})
    from .runio import atomic_write_json

    atomic_write_json(paths["best"], {"metric": metric, "mode": "min", "fixed": fixed, "best": best,
                                      "trials": len(results), "errors": len(results) - len(ok), "wall_s": wall})
    return {"best": best, "results": results, "paths": paths, "wall_s": wall}


# ============================================================================ command line
PROG = "python -m agents.ray_sweep"


def _kv(items, option: str):
    from .hyperparams import parse_overrides

    return parse_overrides(items, option)


def main(argv: list[str] | None = None) -> int:
    """``python -m agents.ray_sweep {train,tune}``: bad input is one line ``python -m agents.ray_sweep: error:
    ...`` and exit status 2, before Ray starts."""
    from .cliutil import run_main

    return run_main(PROG, lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    from .cliutil import OneLineParser, UsageError, at_least

    ap = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--env", default=DEFAULT_ENV, help=f"environment id (default {DEFAULT_ENV})")
        p.add_argument("--steps", type=int, default=20_000, help="environment steps per run / trial")
        p.add_argument("--n-envs", type=int, default=4)
        p.add_argument("--eval-episodes", type=int, default=4, help="seeded evaluation episodes (1000003, ...)")
        p.add_argument("--hyperparams", nargs="*", default=[], metavar="K=V", help="fixed hyperparameter overrides")
        p.add_argument("--env-kwargs", nargs="*", default=[], metavar="K=V", help="gym.make keyword arguments")
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--ray-address", default=None, help="join an existing Ray cluster (auto, or HOST:6379)")
        p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")

    t = sub.add_parser("train", help="seeds x algorithms sweep of train.py runs")
    common(t)
    t.add_argument("--algos", nargs="+", default=["ppo", "ppo_mask"])
    t.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    t.add_argument("--eval-freq", type=int, default=None)
    t.add_argument("--baselines", nargs="*", default=["siftmoe", "topk"], help="baselines in each run's table")
    t.add_argument("--ray", action="store_true", help="each (algorithm, seed) is a Ray task (local Ray unless --ray-address)")
    u = sub.add_parser("tune", help="Ray Tune search over PPO hyperparameters (metric: regret vs siftmoe)")
    common(u)
    u.add_argument("--algo", default="ppo", help="ppo (default) or ppo_mask")
    u.add_argument("--num-samples", type=int, default=8)
    u.add_argument("--chunks", type=int, default=4, help="evaluations (Tune reports) per trial")
    u.add_argument("--seed", type=int, default=0, help="training seed of every trial")
    u.add_argument("--search-seed", type=int, default=0)
    u.add_argument("--metric", choices=["regret", "feasible_regret"], default="regret")
    u.add_argument("--asha", action="store_true", help="ASHA early stopping")
    args = ap.parse_args(argv)
    if not args.out.strip():
        raise UsageError("--out must not be empty")
    for name in ("steps", "n_envs", "eval_episodes", "num_cpus", "eval_freq", "num_samples", "chunks"):
        at_least(f"--{name.replace('_', '-')}", getattr(args, name, None), 1)
    for name in ("seed", "search_seed"):
        at_least(f"--{name.replace('_', '-')}", getattr(args, name, None), 0)
    hyper, env_kwargs = _kv(args.hyperparams, "--hyperparams"), _kv(args.env_kwargs, "--env-kwargs")
    from .ray_utils import ray_missing_reason

    if args.cmd == "train":
        if args.ray or args.ray_address:
            reason = ray_missing_reason()
            if reason:
                raise UsageError(f"--ray: {reason}")
        res = train_sweep(args.algos, args.seeds, args.env, args.out, use_ray=args.ray, address=args.ray_address,
                          num_cpus=args.num_cpus, steps=args.steps, n_envs=args.n_envs, eval_episodes=args.eval_episodes,
                          eval_freq=args.eval_freq, hyperparams=hyper, env_kwargs=env_kwargs,
                          baselines=args.baselines)
        print(Path(res["paths"]["md"]).read_text())
        print(f"wrote {res['paths']['csv']}, {res['paths']['summary_csv']}, {res['paths']['md']} "
              f"in {res['wall_s']:.1f} s")
        return 0
    check_tune(args.env, args.algo, hyper, env_kwargs)
    reason = ray_missing_reason("ray.tune")
    if reason:
        raise UsageError(f"tune: {reason}")
    res = tune_ppo(args.env, args.algo, num_samples=args.num_samples, steps=args.steps, chunks=args.chunks,
                   n_envs=args.n_envs, eval_episodes=args.eval_episodes, seed=args.seed, metric=args.metric,
                   hyperparams=hyper, env_kwargs=env_kwargs, asha=args.asha,
                   search_seed=args.search_seed, out=args.out, address=args.ray_address, num_cpus=args.num_cpus)
    b = res["best"]
    if b:
        print(f"best of {len(res['results'])} trials by {args.metric}: {b[args.metric]:.4f} "
              f"(regret {100 * b['regret']:.2f}%, excess violation {100 * b['excess_violation_rate']:.2f}%) "
              f"with {json.dumps(b['config'])}")
    print(f"wrote {res['paths']['csv']}, {res['paths']['best']} in {res['wall_s']:.1f} s")
    return 0


def check_tune(env_id: str, algo: str, hyperparams: dict[str, Any], env_kwargs: dict[str, Any]) -> None:
    """Check a Tune search's fixed settings before Ray starts (env, algorithm, hyperparameters, env kwargs)."""
    from .algos import canonical_algo, check_compatible
    from . import check_builds

    algo = canonical_algo(algo)
    env = _env(env_id, env_kwargs)
    check_compatible(algo, env.action_space, env_id)
    check_builds(algo, env_id, hyperparams, env_kwargs)  # the model, with the fixed settings, before Ray starts


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
