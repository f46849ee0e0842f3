"""Train, resume and evaluate SB3 agents on the siftmoe_gym environments.

A run lives in ``<logdir>/<run_name>/``:

=========================  ======================================================
``config.json``            env id, env kwargs, algorithm, hyperparameters, seeds
``tb/``                    TensorBoard event files (SB3 metrics + ``eval/*``)
``progress.csv``           SB3's tabular log
``evaluations.json``       every periodic evaluation (agent vs siftmoe/topk)
``baselines.json``         cached baseline results on the evaluation seeds
``checkpoints/``           ``ckpt_<steps>.zip`` (+ replay buffer, + ``.json`` entry), ``latest.json``
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

import gymnasium as gym

from .algos import MAX_ENVS, AgentConfigError, AlgoSpec, canonical_algo, check_compatible, get_algo
from .callbacks import (
    AtomicCheckpointCallback, ComparisonEvalCallback, ProgressBarCallback, planned_evaluations, reached_steps,
    rollout_steps, tensorboard_logger,
)
from .envs import ensure_registered, env_setting, make_baseline_env, make_env, make_vec_env
from .evaluation import (DEFAULT_EVAL_SEED_BASE, BaselineCache, check_baselines, comparison_rows, eval_seeds, evaluate,
                         saving_vs_topk)
from .hyperparams import import_by_name, parse_overrides, resolve_hyperparams, split_hyperparams
from .models import check_spaces, load_agent  # noqa: F401  (part of this module's API: train, evaluate_saved, load_agent)
from .policy import AgentPolicy
from .set_policy import resolve_policy
from .report.tables import format_table, write_comparison
from .trainlog import TrainLog, eval_line
from .runio import (
    atomic_save_model, atomic_write_json, claim_run_dir, model_metadata, latest_run_dir, remove_stale_tmp, resolve_model_path, resumable,
    read_run_config, run_dirs, slug,
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
busy cores made training about twice as slow (docs/training.md)."""


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
    checkpoint: dict[str, Any] | None = None  # the checkpoint resumed from (set by build_agent)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)  # resume: intact checkpoints, newest first
    run_base: str = ""  # new run: the folder name to claim (base, base_2, ... unless named)
    named: bool = False  # new run: --run-name given (that folder exactly, never reused)
    notes: list[str] = field(default_factory=list)  # what the run should say on stderr and in train.log

    @property
    def resuming(self) -> bool:
        return bool(self.checkpoints)

    def note(self, text: str) -> None:
        """Say ``text`` on stderr now and in ``train.log`` once the run has its folder."""
        import sys

        self.notes.append(text)
        print(f"warning: {text}", file=sys.stderr)

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


def baseline_cache(env_id: str, env_kwargs: dict[str, Any], seeds: list[int], path: Path) -> BaselineCache:
    """The baselines on ``seeds`` in ``action_mode="slots"`` (their exact assignments), cached at ``path``."""
    key = json.dumps({"env_id": env_id, "env_kwargs": env_kwargs, "baseline_mode": "slots"}, sort_keys=True)
    return BaselineCache(make_baseline_env(env_id, env_kwargs), seeds, path, key=key)


# ------------------------------------------------------------------ the steps of a run
def resolve_run(env_id: str, algo: str, steps: int | None, seed: int, n_envs: int | None, logdir: Path,
                hyperparams, conf_file, env_kwargs: dict[str, Any] | None, eval_freq: int | None, eval_episodes: int,
                eval_seed_base: int, checkpoint_freq: int | None, resume: bool, run_name: str | None,
                vec: str | None, max_violation_rate: float) -> RunPlan:
    """Resolve the run's hyperparameters and settings (from the saved run when resuming) and check them, before
    anything is built or created.  A new run's folder is claimed later (:func:`claim_run_dir`, in
    :func:`train`); a resumed run's is the newest folder of this env/algo/seed (or ``run_name``) with a
    ``config.json`` and an intact checkpoint (``plan.checkpoints``, newest first)."""
    algo = canonical_algo(algo)
    spec = get_algo(algo)
    ensure_registered(env_id)
    if vec not in (None, "native", "dummy", "subproc"):
        raise AgentConfigError(f"unknown --vec {vec!r}; use native, dummy or subproc")
    for name, v in (("--seed", seed), ("--eval-seed", eval_seed_base)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise AgentConfigError(f"{name} must be an integer >= 0, got {v!r}")
    if logdir.exists() and not logdir.is_dir():
        raise AgentConfigError(f"--logdir {logdir} is not a folder")
    base = run_name or f"{slug(env_id)}_{algo}_seed{seed}"
    notes: list[str] = []
    checkpoints: list[dict[str, Any]] = []
    saved = None
    if resume:
        run_dir = (logdir / run_name) if run_name else latest_run_dir(logdir, base)
        if run_dir is None:  # no folder with a config and an intact checkpoint: say what the newest one lacks
            found = [p for _, p in run_dirs(logdir, base) if (p / "config.json").is_file()]
            run_dir = found[-1] if found else None
        if run_dir is None or not (run_dir / "config.json").is_file():
            raise AgentConfigError(f"--resume: no run {base!r} under {logdir}")
        checkpoints = resumable(run_dir, notes)
        if not checkpoints:
            why = "; ".join(notes) or "none was written"
            raise AgentConfigError(f"--resume: no intact checkpoint in {run_dir / 'checkpoints'} ({why})")
        saved = read_run_config(run_dir / "config.json")
        if saved["env_id"] != env_id or saved["algo"] != algo:
            raise AgentConfigError(
                f"--resume: run {run_dir} is {saved['algo']} on {saved['env_id']}, not {algo} on {env_id}")
        _same_as_saved(saved, n_envs, env_kwargs, conf_file)
        raw = saved["hyperparams"]
        if hyperparams:
            extra = hyperparams if isinstance(hyperparams, dict) else parse_overrides(hyperparams)
            fixed = sorted(k for k in extra if k not in RESUMABLE and extra[k] != raw.get(k))
            if fixed:
                raise AgentConfigError(f"--resume: --hyperparams {', '.join(fixed)} cannot change on resume (the "
                                       f"checkpoint fixes them); these can: {', '.join(RESUMABLE)}")
            raw = {**raw, **extra}
        env_kwargs = saved.get("env_kwargs") or {}
        eval_seed_list = saved["eval_seeds"]
        seed = saved["seed"]
    else:
        raw = resolve_hyperparams(algo, env_id, hyperparams, conf_file)
        run_dir = None
        if run_name and (logdir / run_name).exists():
            raise AgentConfigError(f"--run-name {run_name!r}: {logdir / run_name} already exists (continue it with "
                                   f"--resume, or choose another name)")
        eval_seed_list = eval_seeds(eval_episodes, eval_seed_base)

    trainer_opts, algo_kwargs = split_hyperparams(algo, raw)
    env_kwargs = {**(trainer_opts.get("env_kwargs") or {}), **(env_kwargs or {})}
    for key in ("n_envs", "n_timesteps"):  # YAML or --hyperparams values: whole numbers >= 1, or a one-line error
        val = trainer_opts.get(key)
        whole = isinstance(val, int) or (isinstance(val, float) and val.is_integer())  # rl-zoo3 files write !!float 1e6
        if val is not None and (isinstance(val, bool) or not whole or val < 1 or val > 10**10):
            raise AgentConfigError(f"hyperparameter {key}={val!r} must be an integer >= 1 and <= 10,000,000,000")
    if (trainer_opts.get("n_envs") or 1) > MAX_ENVS:
        raise AgentConfigError(f"hyperparameter n_envs={trainer_opts['n_envs']} must be at most {MAX_ENVS}")
    n_envs = int(n_envs or trainer_opts.get("n_envs", 1))
    if steps is None and saved is not None:  # a resume keeps the run's own target unless --steps gives another
        steps = int(saved["steps"])
    total = int(steps if steps is not None else trainer_opts.get("n_timesteps", 100_000))
    if total <= 0:
        raise AgentConfigError(f"--steps must be positive, got {total}")
    if saved is not None:
        n_envs = int(saved["n_envs"])  # the checkpoint's rollout buffers are shaped for it
        done = int(checkpoints[0]["timesteps"])
        if total <= done:  # refused before the run folder is touched (it used to be rewritten around the old model)
            raise AgentConfigError(f"--resume: --steps {total:,} is not above the checkpoint's {done:,} steps: nothing "
                                   f"to train (train.py evaluate --model {run_dir} evaluates it)")
    wrapper = import_by_name(trainer_opts["env_wrapper"]) if trainer_opts.get("env_wrapper") else None
    if vec is None:
        from siftmoe_gym.envs.sb3_vec import has_native

        vec = "native" if (has_native(env_id) and wrapper is None and not spec.masked) else "dummy"
    eval_freq = int(eval_freq or max(total // 10, 1))
    plan = RunPlan(env_id, algo, spec, int(seed), run_dir, raw, algo_kwargs, env_kwargs, n_envs, total, vec, wrapper,
                   eval_seed_list, eval_freq, int(checkpoint_freq or eval_freq), max_violation_rate,
                   checkpoints=checkpoints, run_base=base, named=bool(run_name))
    for n in notes:
        plan.note(n)
    return plan


def _same_as_saved(saved: dict[str, Any], n_envs: int | None, env_kwargs: dict[str, Any] | None, conf_file) -> None:
    """On resume, refuse options that would otherwise be replaced by the saved run's without a word."""
    if n_envs is not None and int(n_envs) != int(saved["n_envs"]):
        raise AgentConfigError(f"--resume: --n-envs {n_envs} differs from the run's {saved['n_envs']} (its checkpoint's "
                               f"buffers are shaped for it); leave --n-envs out")
    have = saved.get("env_kwargs") or {}
    diff = sorted(k for k, v in (env_kwargs or {}).items() if k not in have or have[k] != v)
    if diff:
        raise AgentConfigError(f"--resume: --env-kwargs {', '.join(diff)} differ from the run's env kwargs {have}; "
                               f"a resumed run keeps its environment")
    if conf_file is not None:
        raise AgentConfigError("--resume: --conf-file is not used (the run's hyperparameters are in its config.json; "
                               "override single values with --hyperparams)")


def build_envs(plan: RunPlan):
    """``(training VecEnv, evaluation env)``; refuses (:class:`AgentConfigError`) env kwargs the environment
    does not take and an algorithm that does not fit the action space."""
    try:
        eval_env = make_env(plan.env_id, plan.env_kwargs)
    except AgentConfigError:
        raise
    except (TypeError, ValueError, gym.error.Error) as exc:  # incl. DependencyNotInstalled (render_mode="human")
        raise AgentConfigError(f"{plan.env_id} refuses the env kwargs {plan.env_kwargs}: {type(exc).__name__}: "
                               f"{exc}") from None
    check_compatible(plan.algo, eval_env.action_space, plan.env_id)
    plan.algo_kwargs = resolve_policy(plan.algo, plan.algo_kwargs, eval_env, plan.wrapper)
    venv = make_vec_env(plan.env_id, plan.algo, plan.n_envs, plan.seed, plan.env_kwargs, plan.vec, plan.wrapper)
    return venv, eval_env


def build_agent(plan: RunPlan, venv, device: str, verbose: int):
    """``(model, history, best, wall_offset_s)``: a new model, or the newest checkpoint that loads (an older
    intact one when the newest fails, with a note) with its evaluation history.  Sets ``plan.checkpoint``."""
    cls = plan.spec.load_class()
    history: list[dict[str, Any]] = []
    best = None
    wall_offset = 0.0
    if not plan.resuming:
        try:
            model = cls(env=venv, seed=plan.seed, device=device, verbose=verbose, **plan.algo_kwargs)
        except (AssertionError, TypeError, ValueError) as exc:  # SB3's own checks of its arguments
            raise AgentConfigError(f"cannot build {plan.spec.class_name} with these hyperparameters: "
                                   f"{type(exc).__name__}: {exc}") from None
        return model, history, best, 0.0
    model = None
    for i, ckpt in enumerate(plan.checkpoints):
        try:
            model = cls.load(ckpt["model_path"], env=venv, device=device, **_load_overrides(plan.algo_kwargs))
            if ckpt.get("replay_buffer_path") and hasattr(model, "load_replay_buffer"):
                model.load_replay_buffer(ckpt["replay_buffer_path"])
        except Exception as exc:  # a damaged file that passed the zip check: try the one before
            model = None
            plan.note(f"checkpoint {ckpt['model_path']} cannot be loaded ({type(exc).__name__}: "
                      f"{' '.join(str(exc).split())[:200]})")
            continue
        plan.checkpoint = ckpt
        if i:
            plan.note(f"resuming from the older intact checkpoint {ckpt['model_path']} "
                      f"({int(model.num_timesteps):,} steps)")
        break
    if model is None:
        raise AgentConfigError(f"--resume: no checkpoint in {plan.run_dir / 'checkpoints'} can be loaded "
                               f"({'; '.join(plan.notes)})")
    wall_offset = float(plan.checkpoint.get("wall_s", 0.0))
    ev = plan.run_dir / "evaluations.json"
    try:
        history = [h for h in json.loads(ev.read_text())["history"] if h["timesteps"] <= model.num_timesteps]
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as exc:
        plan.note(f"{ev} is unreadable ({type(exc).__name__}); the evaluation history restarts at this resume")
    bj = plan.run_dir / "best_model.json"
    try:
        best = json.loads(bj.read_text()).get("metrics")
    except FileNotFoundError:
        pass
    except (OSError, ValueError, AttributeError) as exc:
        plan.note(f"{bj} is unreadable ({type(exc).__name__}); the best model is chosen anew")
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
        if log is not None:
            log.write(f"the run is already at {start:,} steps >= --steps {plan.total:,}: nothing to train, "
                      f"evaluating the model as it is")
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
                  f"on {len(plan.eval_seeds)} seeded episodes (at the first rollout end after every "
                  f"{plan.eval_freq:,} steps, rollouts of {chunk:,}, and at the end); "
                  f"{plan.n_envs} {plan.vec} env copies; run folder {plan.run_dir}; in the lines below, score and "
                  "regret are against siftmoe with 95% CIs, excess viol. the steps over a budget beyond siftmoe's")
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
    has_best = best is not None and eval_cb.last is not None and best["timesteps"] != eval_cb.last["timesteps"]
    if has_best:
        rows = saving_vs_topk(rows[:1] + [{"policy": f"{plan.algo} (best, {int(best['timesteps']):,} steps)", **best}] + rows[1:])
    which = ("(final): final_model.zip; (best): best_model.zip, the best evaluation so far" if has_best else
             "(final): final_model.zip, also the best evaluation (best_model.zip)")
    title = (f"{plan.env_id}: {plan.spec.class_name} after {model.num_timesteps:,} steps ({which}), "
             f"{len(plan.eval_seeds)} seeded evaluation episodes, mean over episodes")
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

    The steps of a run: :func:`resolve_run` (every cheap check), the baselines checked, :func:`build_envs`,
    :func:`build_agent`, then (a new run) the run folder claimed atomically (:func:`claim_run_dir`: two runs
    started at once get two folders) or (a resume) its stale temporary files removed, ``config.json``, the
    TensorBoard writer (a resume purges the steps after its checkpoint), :func:`make_callbacks`, :func:`learn`,
    :func:`final_comparison`.  A new run that stops before its first checkpoint removes its folder, so
    ``--resume`` never finds a run it cannot continue.  ``threads``: torch
    threads (default 1; ``None`` leaves torch's setting); ``log``: evaluation lines on the console and in
    ``train.log`` (the file is always written)."""
    set_threads(threads)
    plan = resolve_run(env_id, algo, steps, seed, n_envs, Path(logdir), hyperparams, conf_file, env_kwargs, eval_freq,
                       eval_episodes, eval_seed_base, checkpoint_freq, resume, run_name, vec, max_violation_rate)
    check_baselines(baselines, env_setting(plan.env_id), plan.env_id)
    venv, eval_env = build_envs(plan)
    claimed: Path | None = None
    try:
        model, history, best, wall_offset = build_agent(plan, venv, device, verbose)
        if plan.checkpoint is None:  # everything built: now take the run folder (atomically)
            plan.run_dir = claimed = claim_run_dir(Path(logdir), plan.run_base, exact=plan.named)
        else:
            for p in remove_stale_tmp(plan.run_dir):
                plan.note(f"removed {p}, left by an interrupted write")
        atomic_write_json(plan.run_dir / "config.json", plan.config())
        purge = None if plan.checkpoint is None else int(model.num_timesteps) + 1
        model.set_logger(tensorboard_logger(plan.run_dir / "tb", verbose, purge_step=purge))
        tlog = TrainLog(plan.run_dir / "train.log", echo=log)
        for n in plan.notes:
            tlog.write(f"note: {n}", echo=False)  # already said on stderr
        cache = baseline_cache(plan.env_id, plan.env_kwargs, plan.eval_seeds, plan.run_dir / "baselines.json")
        eval_cb, ckpt_cb = make_callbacks(plan, eval_env, cache, history, best, wall_offset, keep_checkpoints, verbose)
        learn(plan, model, eval_cb, ckpt_cb, progress_bar, tlog)
    except BaseException:
        if claimed is not None and not (claimed / "checkpoints" / "latest.json").is_file():
            import shutil
            import sys

            shutil.rmtree(claimed, ignore_errors=True)
            print(f"{claimed} removed: the run stopped before its first checkpoint", file=sys.stderr)
        raise
    finally:
        venv.close()
    final_path, rows, files = final_comparison(plan, model, eval_cb, cache, baselines, print_table)
    best_path = plan.run_dir / "best_model.zip"
    return TrainResult(plan.run_dir, final_path, best_path if best_path.is_file() else None, rows, eval_cb.history,
                       files, int(model.num_timesteps), eval_cb.wall_s())


RESUMABLE = ("learning_rate", "ent_coef", "clip_range", "n_epochs", "batch_size", "gamma", "exploration_final_eps",
             "cost_limit", "lagrangian_lr", "lagrangian_max")
"""Hyperparameters ``--resume --hyperparams`` may change (set on the loaded model); the checkpoint fixes the rest."""


def _load_overrides(algo_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters that may change on resume (others come from the checkpoint)."""
    return {k: v for k, v in algo_kwargs.items() if k in RESUMABLE}


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
    for name, v in (("--episodes", episodes), ("--eval-seed", eval_seed_base)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "--episodes" else 0)):
            raise AgentConfigError(f"{name} must be an integer >= {1 if name == '--episodes' else 0}, got {v!r}")
    path = resolve_model_path(model_path)
    env_id = model_metadata(path)["env_id"]
    check_baselines(baselines, env_setting(env_id), env_id)  # before loading anything
    model, meta = load_agent(path, device)
    env = make_env(env_id, meta.get("env_kwargs") or {})
    check_spaces(model, env, path, env_id)
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
