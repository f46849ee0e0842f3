"""Train, resume and evaluate SB3 agents on the siftmoe_gym environments.

A run lives in ``<logdir>/<run_name>/``:

=========================  ======================================================
``config.json``            env id, env kwargs, algorithm, hyperparameters, seeds
``tb/``                    TensorBoard event files (SB3 metrics + ``eval/*``)
``progress.csv``           SB3's tabular log
``evaluations.json``       every periodic evaluation (agent vs siftmoe/topk)
``baselines.json``         cached baseline results on the evaluation seeds
``checkpoints/``           ``ckpt_<steps>.zip`` (+ replay buffer), ``latest.json``
``best_model.zip/.json``   best evaluation so far and its metrics + config
``final_model.zip/.json``  model at the end of training and its config
``comparison.{csv,json,png}``, ``learning_curve.png``  final comparison table
=========================  ======================================================
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .algos import AgentConfigError, canonical_algo, check_compatible, get_algo
from .callbacks import (
    AtomicCheckpointCallback, ComparisonEvalCallback, atomic_save_model, read_latest_checkpoint,
)
from .compare import (
    BaselineCache, atomic_write_json, comparison_rows, eval_seeds, evaluate, format_table, write_comparison,
    DEFAULT_EVAL_SEED_BASE,
)
from .envs import ensure_registered, make_baseline_env, make_env, make_vec_env
from .hyperparams import import_by_name, parse_overrides, resolve_hyperparams, split_hyperparams
from .policy import AgentPolicy

QUICK = {
    "env_id": "siftmoe_gym/Decode-v0",
    "algo": "ppo",
    "steps": 800_000,
    "n_envs": 32,
    "eval_episodes": 8,
    "eval_freq": 100_000,
}
"""Settings of ``train.py --quick`` (about 1 minute on 2 CPU cores): PPO on the native vectorized
Decode-v0 (32 copies); see docs/training.md for how far it gets from the optimum."""

BASELINE_KWARGS = {"random-within-budget": {"seed": 0}}
"""Options making every baseline reproducible on the evaluation seeds."""


@dataclass
class TrainResult:
    run_dir: Path
    model_path: Path
    best_path: Path | None
    rows: list[dict[str, Any]]
    history: list[dict[str, Any]]
    files: dict[str, Path] = field(default_factory=dict)
    timesteps: int = 0
    wall_s: float = 0.0


def slug(env_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", env_id).strip("-")


def _new_run_dir(logdir: Path, base: str) -> Path:
    d = logdir / base
    if not d.exists():
        return d
    i = 2
    while (logdir / f"{base}_{i}").exists():
        i += 1
    return logdir / f"{base}_{i}"


def _latest_run_dir(logdir: Path, base: str) -> Path | None:
    cands = [p for p in logdir.glob(f"{base}*") if p.is_dir() and re.fullmatch(re.escape(base) + r"(_\d+)?", p.name)]
    if not cands:
        return None
    return max(cands, key=lambda p: int(p.name.rsplit("_", 1)[1]) if p.name != base else 1)


def load_algo_class(algo: str):
    return get_algo(algo).load_class()


def set_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(int(n))


def baseline_names(names: Iterable[str] | None) -> list[str]:
    if names is not None:
        return list(names)
    import baselines

    return list(baselines.available_policies())


class BaselineCacheWithKwargs(BaselineCache):
    def get(self, name: str, **policy_kwargs):
        return super().get(name, **{**BASELINE_KWARGS.get(name, {}), **policy_kwargs})


def train(
    env_id: str = "siftmoe_gym/Decode-v0",
    algo: str = "ppo",
    steps: int | None = None,
    seed: int = 0,
    n_envs: int | None = None,
    logdir: str | os.PathLike = "runs",
    hyperparams: Iterable[str] | dict[str, Any] | None = None,
    conf_file: str | os.PathLike | None = None,
    env_kwargs: dict[str, Any] | None = None,
    eval_freq: int | None = None,
    eval_episodes: int = 5,
    eval_seed_base: int = DEFAULT_EVAL_SEED_BASE,
    checkpoint_freq: int | None = None,
    keep_checkpoints: int = 2,
    resume: bool = False,
    run_name: str | None = None,
    vec: str | None = None,
    progress_bar: bool = True,
    baselines: Iterable[str] | None = None,
    max_violation_rate: float = 0.01,
    device: str = "cpu",
    threads: int | None = None,
    verbose: int = 0,
    print_table: bool = True,
) -> TrainResult:
    """Train ``algo`` on ``env_id``; see the module docstring for what is written."""
    set_threads(threads)
    algo = canonical_algo(algo)
    spec = get_algo(algo)
    ensure_registered(env_id)
    if vec not in (None, "native", "dummy", "subproc"):
        raise AgentConfigError(f"unknown --vec {vec!r}; use native, dummy or subproc")
    logdir = Path(logdir)
    base = run_name or f"{slug(env_id)}_{algo}_seed{seed}"

    # ------------------------------------------------------------ run folder
    ckpt = None
    if resume:
        run_dir = (logdir / run_name) if run_name else _latest_run_dir(logdir, base)
        if run_dir is None or not (run_dir / "config.json").is_file():
            raise AgentConfigError(f"--resume: no run {base!r} under {logdir}")
        ckpt = read_latest_checkpoint(run_dir / "checkpoints")
        if ckpt is None or not Path(ckpt["model_path"]).is_file():
            raise AgentConfigError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
        saved = json.loads((run_dir / "config.json").read_text())
        if saved["env_id"] != env_id or saved["algo"] != algo:
            raise AgentConfigError(
                f"--resume: run {run_dir} is {saved['algo']} on {saved['env_id']}, not {algo} on {env_id}")
        raw = saved["hyperparams"]
        if hyperparams:
            raw = {**raw, **(hyperparams if isinstance(hyperparams, dict) else parse_overrides(hyperparams))}
        env_kwargs = saved.get("env_kwargs") or {}
        eval_seed_list = saved["eval_seeds"]
        seed = saved["seed"]
    else:
        raw = resolve_hyperparams(algo, env_id, hyperparams, conf_file)
        run_dir = (logdir / run_name) if run_name else _new_run_dir(logdir, base)
        eval_seed_list = eval_seeds(eval_episodes, eval_seed_base)

    trainer_opts, algo_kwargs = split_hyperparams(algo, raw)
    env_kwargs = {**(trainer_opts.get("env_kwargs") or {}), **(env_kwargs or {})}
    n_envs = int(n_envs or trainer_opts.get("n_envs", 1))
    total = int(steps if steps is not None else trainer_opts.get("n_timesteps", 100_000))
    if total <= 0:
        raise AgentConfigError(f"--steps must be positive, got {total}")
    if resume:
        n_envs = int(saved["n_envs"])  # the checkpoint's rollout buffers are shaped for it
    wrapper = import_by_name(trainer_opts["env_wrapper"]) if trainer_opts.get("env_wrapper") else None
    if vec is None:
        from siftmoe_gym.envs.sb3_vec import has_native

        vec = "native" if (has_native(env_id) and wrapper is None and not spec.masked) else "dummy"

    eval_env = make_env(env_id, env_kwargs)
    check_compatible(algo, eval_env.action_space, env_id)
    eval_freq = int(eval_freq or max(total // 10, 1))
    checkpoint_freq = int(checkpoint_freq or eval_freq)

    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "env_id": env_id, "algo": algo, "algo_class": spec.class_name, "seed": int(seed), "n_envs": n_envs,
        "steps": total, "env_kwargs": env_kwargs, "hyperparams": raw, "eval_seeds": eval_seed_list,
        "eval_freq": eval_freq, "checkpoint_freq": checkpoint_freq, "vec": vec,
        "max_violation_rate": max_violation_rate, "run_dir": str(run_dir),
    }
    atomic_write_json(run_dir / "config.json", config)

    venv = make_vec_env(env_id, algo, n_envs, seed, env_kwargs, vec, wrapper)
    cls = spec.load_class()
    from stable_baselines3.common.logger import configure

    logger = configure(str(run_dir / "tb"), ["tensorboard"] + (["stdout"] if verbose else []))

    history: list[dict[str, Any]] = []
    best = None
    wall_offset = 0.0
    if ckpt is not None:
        model = cls.load(ckpt["model_path"], env=venv, device=device, **_load_overrides(algo_kwargs))
        if ckpt.get("replay_buffer_path") and hasattr(model, "load_replay_buffer"):
            model.load_replay_buffer(ckpt["replay_buffer_path"])
        wall_offset = float(ckpt.get("wall_s", 0.0))
        ev = run_dir / "evaluations.json"
        if ev.is_file():
            history = [h for h in json.loads(ev.read_text())["history"] if h["timesteps"] <= model.num_timesteps]
        bj = run_dir / "best_model.json"
        if bj.is_file():
            best = json.loads(bj.read_text()).get("metrics")
    else:
        model = cls(env=venv, seed=int(seed), device=device, verbose=verbose, **algo_kwargs)
    model.set_logger(logger)

    cache = BaselineCacheWithKwargs(make_baseline_env(env_id, env_kwargs), eval_seed_list, run_dir / "baselines.json",
                                    key=json.dumps({"env_id": env_id, "env_kwargs": env_kwargs, "baseline_mode": "slots"},
                                                   sort_keys=True))
    meta = {k: config[k] for k in ("env_id", "algo", "algo_class", "seed", "env_kwargs", "hyperparams", "run_dir")}
    eval_cb = ComparisonEvalCallback(eval_env, eval_seed_list, eval_freq, run_dir, cache, model_meta=meta,
                                     history=history, best=best, wall_offset_s=wall_offset,
                                     max_violation_rate=max_violation_rate, verbose=verbose)
    ckpt_cb = AtomicCheckpointCallback(checkpoint_freq, run_dir / "checkpoints", keep=keep_checkpoints,
                                       wall_clock=eval_cb.wall_s)
    remaining = total - int(model.num_timesteps)
    t0 = time.perf_counter()
    if remaining > 0:
        model.learn(total_timesteps=remaining, callback=[eval_cb, ckpt_cb], reset_num_timesteps=ckpt is None,
                    progress_bar=progress_bar)
    else:
        eval_cb.init_callback(model)
        if not eval_cb.history or eval_cb.history[-1]["timesteps"] != model.num_timesteps:
            eval_cb.evaluate_now()
    venv.close()

    final_path = atomic_save_model(model, run_dir / "final_model.zip")
    atomic_write_json(run_dir / "final_model.json",
                      {**meta, "timesteps": int(model.num_timesteps), "eval_seeds": eval_seed_list,
                       "metrics": eval_cb.last})

    names = baseline_names(baselines)
    rows = comparison_rows(f"{algo} (agent)", eval_cb.last, cache, names)
    title = f"{env_id}: {spec.class_name} after {model.num_timesteps} steps, {len(eval_seed_list)} eval episodes"
    table_meta = {**meta, "title": title, "timesteps": int(model.num_timesteps), "eval_seeds": eval_seed_list,
                  "baseline_errors": cache.errors, "train_wall_s": eval_cb.wall_s()}
    files = write_comparison(rows, run_dir, table_meta, history=eval_cb.history)
    if print_table:
        print(title)
        print(format_table(rows))
        print(f"files: {files['csv']}  {files['json']}  {files['png']}")
    best_path = run_dir / "best_model.zip"
    return TrainResult(run_dir, final_path, best_path if best_path.is_file() else None, rows, eval_cb.history,
                       files, int(model.num_timesteps), eval_cb.wall_s())


def _load_overrides(algo_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters that may change on resume (others come from the checkpoint)."""
    keep = ("learning_rate", "ent_coef", "clip_range", "n_epochs", "batch_size", "gamma", "exploration_final_eps")
    return {k: v for k, v in algo_kwargs.items() if k in keep}


# ------------------------------------------------------------------ evaluate
def model_metadata(model_path: str | os.PathLike) -> dict[str, Any]:
    """The JSON written beside a model (``<stem>.json``), else the run's ``config.json``."""
    p = Path(model_path)
    for cand in (p.with_suffix(".json"), p.parent / "config.json", p.parent.parent / "config.json"):
        if cand.is_file():
            meta = json.loads(cand.read_text())
            if "env_id" in meta and "algo" in meta:
                return meta
    raise AgentConfigError(f"no metadata (.json with env_id and algo) beside {p}")


def resolve_model_path(model_path: str | os.PathLike) -> Path:
    p = Path(model_path)
    if p.is_file():
        return p
    if p.suffix != ".zip" and p.with_name(p.name + ".zip").is_file():
        return p.with_name(p.name + ".zip")
    if p.is_dir():
        for name in ("final_model.zip", "best_model.zip"):
            if (p / name).is_file():
                return p / name
    raise AgentConfigError(f"model file not found: {model_path}")


def load_agent(model_path: str | os.PathLike, device: str = "cpu"):
    """``(model, metadata)`` of a saved agent."""
    path = resolve_model_path(model_path)
    meta = model_metadata(path)
    cls = load_algo_class(meta["algo"])
    try:
        model = cls.load(str(path), device=device)
    except Exception as exc:
        raise AgentConfigError(f"cannot load {path} as {cls.__name__}: {exc}") from None
    return model, meta


def evaluate_saved(
    model_path: str | os.PathLike,
    episodes: int | None = None,
    eval_seed_base: int | None = None,
    baselines: Iterable[str] | None = None,
    out_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    threads: int | None = None,
    print_table: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Re-evaluate a saved agent against the baselines on seeded episodes."""
    set_threads(threads)
    path = resolve_model_path(model_path)
    model, meta = load_agent(path, device)
    env_id = meta["env_id"]
    ensure_registered(env_id)
    env = make_env(env_id, meta.get("env_kwargs") or {})
    if episodes is None and eval_seed_base is None and meta.get("eval_seeds"):
        seeds = list(meta["eval_seeds"])
    else:
        seeds = eval_seeds(episodes or 5, DEFAULT_EVAL_SEED_BASE if eval_seed_base is None else eval_seed_base)
    agent = evaluate(env, AgentPolicy(model, env), seeds)
    out_dir = Path(out_dir) if out_dir else path.parent / f"evaluate_{path.stem}"
    cache = BaselineCacheWithKwargs(make_baseline_env(env_id, meta.get("env_kwargs") or {}), seeds,
                                    out_dir / "baselines.json",
                                    key=json.dumps({"env_id": env_id, "env_kwargs": meta.get("env_kwargs") or {},
                                                    "baseline_mode": "slots"}, sort_keys=True))
    rows = comparison_rows(f"{meta['algo']} (agent)", agent, cache, baseline_names(baselines))
    title = f"{env_id}: {path.name} ({meta['algo']}), {len(seeds)} eval episodes"
    files = write_comparison(rows, out_dir, {**meta, "title": title, "model": str(path), "eval_seeds": seeds,
                                             "baseline_errors": cache.errors})
    if print_table:
        print(title)
        print(format_table(rows))
        print(f"files: {files['csv']}  {files['json']}  {files['png']}")
    return rows, files
