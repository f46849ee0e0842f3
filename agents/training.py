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
``train.log``              one line per evaluation (also printed), and the run's notes
=========================  ======================================================
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .algos import AgentConfigError, AlgoSpec, canonical_algo, check_compatible, get_algo
from .callbacks import AtomicCheckpointCallback, ComparisonEvalCallback, ProgressBarCallback
from .envs import ensure_registered, make_baseline_env, make_env, make_vec_env
from .evaluation import DEFAULT_EVAL_SEED_BASE, BaselineCache, comparison_rows, eval_seeds, evaluate
from .hyperparams import import_by_name, parse_overrides, resolve_hyperparams, split_hyperparams
from .models import load_agent  # noqa: F401  (part of this module's API: train, evaluate_saved, load_agent)
from .policy import AgentPolicy
from .report.tables import format_table, write_comparison
from .trainlog import TrainLog, eval_line
from .runio import (
    atomic_save_model, atomic_write_json, latest_run_dir, new_run_dir, read_latest_checkpoint, resolve_model_path, slug,
)

QUICK = {
    "env_id": "siftmoe_gym/Decode-v0",
    "algo": "ppo",
    "steps": 819_200,
    "n_envs": 32,
    "eval_episodes": 8,
    "eval_freq": 81_920,
}
"""Settings of ``train.py --quick``: PPO on the native vectorized Decode-v0 (32 copies), 200 rollouts of
32 x 128 steps, evaluated every 20 rollouts (ten evaluation lines); docs/training.md gives its measured time
and how far it gets from the optimum."""
DEFAULT_THREADS = 1
"""Torch threads of a run unless asked: small MLP policies train fastest on one thread, and a second one on
busy cores made the main job many times slower (docs/training.md)."""


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


@dataclass
class RunPlan:
    """Everything a run is resolved to before anything is built (see :func:`resolve_run`)."""

    env_id: str
    algo: str
    spec: AlgoSpec
    seed: int
    run_dir: Path
    hyperparams: dict[str, Any]  # the raw (YAML) hyperparameters, as saved in config.json
    algo_kwargs: dict[str, Any]  # the algorithm's constructor arguments
    env_kwargs: dict[str, Any]
    n_envs: int
    total: int
    vec: str
    wrapper: Any
    eval_seeds: list[int]
    eval_freq: int
    checkpoint_freq: int
    max_violation_rate: float
    checkpoint: dict[str, Any] | None = None  # latest checkpoint when resuming

    def config(self) -> dict[str, Any]:
        """``config.json`` of the run."""
        return {
            "env_id": self.env_id, "algo": self.algo, "algo_class": self.spec.class_name, "seed": int(self.seed),
            "n_envs": self.n_envs, "steps": self.total, "env_kwargs": self.env_kwargs, "hyperparams": self.hyperparams,
            "eval_seeds": self.eval_seeds, "eval_freq": self.eval_freq, "checkpoint_freq": self.checkpoint_freq,
            "vec": self.vec, "max_violation_rate": self.max_violation_rate, "run_dir": str(self.run_dir),
        }

    def meta(self) -> dict[str, Any]:
        """What is written beside every saved model (enough to load and re-evaluate it)."""
        cfg = self.config()
        return {k: cfg[k] for k in ("env_id", "algo", "algo_class", "seed", "env_kwargs", "hyperparams", "run_dir")}


def set_threads(n: int | None) -> None:
    """``torch.set_num_threads(n)``; ``None`` leaves torch's setting as it is."""
    if n is not None:
        if int(n) < 1:
            raise AgentConfigError(f"--threads must be >= 1, got {n}")
        import torch

        torch.set_num_threads(int(n))


def rollout_steps(model) -> int:
    """Environment steps an algorithm collects between two updates (a whole rollout: ``learn`` stops only at
    one's end)."""
    n_envs = int(getattr(model, "n_envs", 1) or 1)
    if hasattr(model, "n_steps"):  # on-policy: n_steps per copy
        return int(model.n_steps) * n_envs
    tf = getattr(model, "train_freq", None)  # off-policy: train_freq steps per copy (or an episode)
    if tf is not None and str(getattr(tf.unit, "value", tf.unit)) == "step":
        return int(tf.frequency) * n_envs
    return n_envs


def reached_steps(start: int, total: int, chunk: int) -> int:
    """The step count a run from ``start`` towards ``total`` really ends at: whole chunks of ``chunk`` steps."""
    if total <= start:
        return start
    return start + -(-(total - start) // chunk) * chunk


def planned_evaluations(start: int, target: int, chunk: int, freq: int) -> int:
    """How many evaluations :class:`~agents.callbacks.ComparisonEvalCallback` makes from ``start`` to
    ``target``: at the first rollout boundary after every ``freq`` steps, and once at the end."""
    count, nxt, b, last = 0, (start // freq + 1) * freq, start, None
    while b + chunk < target:
        b += chunk
        if b >= nxt:
            count, last = count + 1, b
            nxt = (b // freq + 1) * freq
    return count + (last != target)


def baseline_cache(env_id: str, env_kwargs: dict[str, Any], seeds: list[int], path: Path) -> BaselineCache:
    """The baselines on ``seeds`` in ``action_mode="slots"`` (their exact assignments), cached at ``path``."""
    key = json.dumps({"env_id": env_id, "env_kwargs": env_kwargs, "baseline_mode": "slots"}, sort_keys=True)
    return BaselineCache(make_baseline_env(env_id, env_kwargs), seeds, path, key=key)


# ------------------------------------------------------------------ the steps of a run
def resolve_run(env_id: str, algo: str, steps: int | None, seed: int, n_envs: int | None, logdir: Path,
                hyperparams, conf_file, env_kwargs: dict[str, Any] | None, eval_freq: int | None, eval_episodes: int,
                eval_seed_base: int, checkpoint_freq: int | None, resume: bool, run_name: str | None,
                vec: str | None, max_violation_rate: float) -> RunPlan:
    """Resolve the run's folder, hyperparameters and settings (from the saved run when resuming)."""
    algo = canonical_algo(algo)
    spec = get_algo(algo)
    ensure_registered(env_id)
    if vec not in (None, "native", "dummy", "subproc"):
        raise AgentConfigError(f"unknown --vec {vec!r}; use native, dummy or subproc")
    base = run_name or f"{slug(env_id)}_{algo}_seed{seed}"
    ckpt = saved = None
    if resume:
        run_dir = (logdir / run_name) if run_name else latest_run_dir(logdir, base)
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
        run_dir = (logdir / run_name) if run_name else new_run_dir(logdir, base)
        eval_seed_list = eval_seeds(eval_episodes, eval_seed_base)

    trainer_opts, algo_kwargs = split_hyperparams(algo, raw)
    env_kwargs = {**(trainer_opts.get("env_kwargs") or {}), **(env_kwargs or {})}
    n_envs = int(n_envs or trainer_opts.get("n_envs", 1))
    total = int(steps if steps is not None else trainer_opts.get("n_timesteps", 100_000))
    if total <= 0:
        raise AgentConfigError(f"--steps must be positive, got {total}")
    if saved is not None:
        n_envs = int(saved["n_envs"])  # the checkpoint's rollout buffers are shaped for it
    wrapper = import_by_name(trainer_opts["env_wrapper"]) if trainer_opts.get("env_wrapper") else None
    if vec is None:
        from siftmoe_gym.envs.sb3_vec import has_native

        vec = "native" if (has_native(env_id) and wrapper is None and not spec.masked) else "dummy"
    eval_freq = int(eval_freq or max(total // 10, 1))
    return RunPlan(env_id, algo, spec, int(seed), run_dir, raw, algo_kwargs, env_kwargs, n_envs, total, vec, wrapper,
                   eval_seed_list, eval_freq, int(checkpoint_freq or eval_freq), max_violation_rate, ckpt)


def build_envs(plan: RunPlan):
    """``(training VecEnv, evaluation env)``; refuses an algorithm that does not fit the action space."""
    eval_env = make_env(plan.env_id, plan.env_kwargs)
    check_compatible(plan.algo, eval_env.action_space, plan.env_id)
    venv = make_vec_env(plan.env_id, plan.algo, plan.n_envs, plan.seed, plan.env_kwargs, plan.vec, plan.wrapper)
    return venv, eval_env


def build_agent(plan: RunPlan, venv, device: str, verbose: int):
    """``(model, history, best, wall_offset_s)``: a new model, or the checkpoint's with its evaluation history."""
    from stable_baselines3.common.logger import configure

    cls = plan.spec.load_class()
    logger = configure(str(plan.run_dir / "tb"), ["tensorboard"] + (["stdout"] if verbose else []))
    history: list[dict[str, Any]] = []
    best = None
    wall_offset = 0.0
    ckpt = plan.checkpoint
    if ckpt is not None:
        model = cls.load(ckpt["model_path"], env=venv, device=device, **_load_overrides(plan.algo_kwargs))
        if ckpt.get("replay_buffer_path") and hasattr(model, "load_replay_buffer"):
            model.load_replay_buffer(ckpt["replay_buffer_path"])
        wall_offset = float(ckpt.get("wall_s", 0.0))
        ev = plan.run_dir / "evaluations.json"
        if ev.is_file():
            history = [h for h in json.loads(ev.read_text())["history"] if h["timesteps"] <= model.num_timesteps]
        bj = plan.run_dir / "best_model.json"
        if bj.is_file():
            best = json.loads(bj.read_text()).get("metrics")
    else:
        model = cls(env=venv, seed=plan.seed, device=device, verbose=verbose, **plan.algo_kwargs)
    model.set_logger(logger)
    return model, history, best, wall_offset


def make_callbacks(plan: RunPlan, eval_env, cache: BaselineCache, history, best, wall_offset: float,
                   keep_checkpoints: int, verbose: int) -> tuple[ComparisonEvalCallback, AtomicCheckpointCallback]:
    """The periodic comparison against the baselines (best model) and the atomic checkpoints."""
    eval_cb = ComparisonEvalCallback(eval_env, plan.eval_seeds, plan.eval_freq, plan.run_dir, cache,
                                     model_meta=plan.meta(), history=history, best=best, wall_offset_s=wall_offset,
                                     max_violation_rate=plan.max_violation_rate, verbose=verbose)
    ckpt_cb = AtomicCheckpointCallback(plan.checkpoint_freq, plan.run_dir / "checkpoints", keep=keep_checkpoints,
                                       wall_clock=eval_cb.wall_s)
    return eval_cb, ckpt_cb


def learn(plan: RunPlan, model, eval_cb: ComparisonEvalCallback, ckpt_cb: AtomicCheckpointCallback,
          progress_bar: bool, log: TrainLog | None = None) -> None:
    """Train up to ``plan.total`` steps (whole rollouts; a finished resumed run is only evaluated), with one log
    line per evaluation and a progress bar towards the step count the run really reaches."""
    start = int(model.num_timesteps)
    remaining = plan.total - start
    if remaining <= 0:
        eval_cb.init_callback(model)
        if not eval_cb.history or eval_cb.history[-1]["timesteps"] != model.num_timesteps:
            eval_cb.evaluate_now()
        return
    chunk = rollout_steps(model)
    target = reached_steps(start, plan.total, chunk)
    planned = planned_evaluations(start, target, chunk, plan.eval_freq)
    if log is not None:
        note = (f"; --steps {plan.total:,} rounded up to whole rollouts of {chunk:,} steps" if target != plan.total else "")
        log.write(f"{plan.algo} on {plan.env_id}: {start:,} -> {target:,} steps{note}; {planned} evaluations "
                  f"on {len(plan.eval_seeds)} seeded episodes (every {plan.eval_freq:,} steps and at the end); "
                  f"{plan.n_envs} {plan.vec} env copies; run folder {plan.run_dir}")
        t0, count = time.perf_counter(), [0]

        def on_eval(rec: dict[str, Any]) -> None:
            count[0] += 1
            fps = (int(rec["timesteps"]) - start) / max(time.perf_counter() - t0, 1e-9)
            log.write(eval_line(rec, count[0], planned, target, fps, eval_cb.best))

        eval_cb.on_eval = on_eval
    bar = ProgressBarCallback(target, enabled=progress_bar)
    model.learn(total_timesteps=remaining, callback=[eval_cb, ckpt_cb, bar], reset_num_timesteps=plan.checkpoint is None,
                progress_bar=False)


def final_comparison(plan: RunPlan, model, eval_cb: ComparisonEvalCallback, cache: BaselineCache,
                     baselines: Iterable[str] | None, print_table: bool) -> tuple[Path, list[dict[str, Any]], dict[str, Path]]:
    """Save the final model, then write (and print) its comparison with the baselines on the evaluation seeds."""
    meta = plan.meta()
    final_path = atomic_save_model(model, plan.run_dir / "final_model.zip")
    atomic_write_json(plan.run_dir / "final_model.json",
                      {**meta, "timesteps": int(model.num_timesteps), "eval_seeds": plan.eval_seeds,
                       "metrics": eval_cb.last})
    rows = comparison_rows(f"{plan.algo} (final)", eval_cb.last, cache, baselines)
    best = eval_cb.best
    if best is not None and eval_cb.last is not None and best["timesteps"] != eval_cb.last["timesteps"]:
        rows.insert(1, {"policy": f"{plan.algo} (best, {int(best['timesteps']):,} steps)", **best})
    title = (f"{plan.env_id}: {plan.spec.class_name} after {model.num_timesteps:,} steps ((final): final_model.zip; "
             f"(best): best_model.zip, the best evaluation so far), {len(plan.eval_seeds)} seeded evaluation episodes, "
             f"mean over episodes")
    table_meta = {**meta, "title": title, "timesteps": int(model.num_timesteps), "eval_seeds": plan.eval_seeds,
                  "baseline_errors": cache.errors, "train_wall_s": eval_cb.wall_s()}
    files = write_comparison(rows, plan.run_dir, table_meta, history=eval_cb.history, best=eval_cb.best)
    if print_table:
        print(title)
        print(format_table(rows))
        print(f"files: {files['csv']}  {files['json']}  {files['png']}")
    return final_path, rows, files


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
    threads: int | None = DEFAULT_THREADS,
    verbose: int = 0,
    print_table: bool = True,
    log: bool = True,
) -> TrainResult:
    """Train ``algo`` on ``env_id``; see the module docstring for what is written.

    The steps of a run: :func:`resolve_run`, :func:`build_envs`, the run folder's ``config.json``,
    :func:`build_agent`, :func:`make_callbacks`, :func:`learn`, :func:`final_comparison`.  ``threads``: torch
    threads (default 1; ``None`` leaves torch's setting); ``log``: evaluation lines on the console and in
    ``train.log`` (the file is always written)."""
    set_threads(threads)
    plan = resolve_run(env_id, algo, steps, seed, n_envs, Path(logdir), hyperparams, conf_file, env_kwargs, eval_freq,
                       eval_episodes, eval_seed_base, checkpoint_freq, resume, run_name, vec, max_violation_rate)
    venv, eval_env = build_envs(plan)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan.run_dir / "config.json", plan.config())
    model, history, best, wall_offset = build_agent(plan, venv, device, verbose)
    cache = baseline_cache(plan.env_id, plan.env_kwargs, plan.eval_seeds, plan.run_dir / "baselines.json")
    eval_cb, ckpt_cb = make_callbacks(plan, eval_env, cache, history, best, wall_offset, keep_checkpoints, verbose)
    learn(plan, model, eval_cb, ckpt_cb, progress_bar, TrainLog(plan.run_dir / "train.log", echo=log))
    venv.close()
    final_path, rows, files = final_comparison(plan, model, eval_cb, cache, baselines, print_table)
    best_path = plan.run_dir / "best_model.zip"
    return TrainResult(plan.run_dir, final_path, best_path if best_path.is_file() else None, rows, eval_cb.history,
                       files, int(model.num_timesteps), eval_cb.wall_s())


def _load_overrides(algo_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters that may change on resume (others come from the checkpoint)."""
    keep = ("learning_rate", "ent_coef", "clip_range", "n_epochs", "batch_size", "gamma", "exploration_final_eps")
    return {k: v for k, v in algo_kwargs.items() if k in keep}


# ------------------------------------------------------------------ evaluate
def evaluate_saved(
    model_path: str | os.PathLike,
    episodes: int | None = None,
    eval_seed_base: int | None = None,
    baselines: Iterable[str] | None = None,
    out_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    threads: int | None = DEFAULT_THREADS,
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
    cache = baseline_cache(env_id, meta.get("env_kwargs") or {}, seeds, out_dir / "baselines.json")
    rows = comparison_rows(f"{meta['algo']} ({path.name})", agent, cache, baselines)
    title = f"{env_id}: {path.name} ({meta['algo']}), {len(seeds)} eval episodes"
    files = write_comparison(rows, out_dir, {**meta, "title": title, "model": str(path), "eval_seeds": seeds,
                                             "baseline_errors": cache.errors})
    if print_table:
        print(title)
        print(format_table(rows))
        print(f"files: {files['csv']}  {files['json']}  {files['png']}")
    return rows, files
