"""Training callbacks: comparison against the optimum, best model, atomic checkpoints.

:class:`ComparisonEvalCallback` evaluates the agent at the first rollout
boundary after every ``eval_freq`` environment steps, and once more at the end of training
(after the last update), on fixed seeded episodes, next to ``siftmoe`` (the exact
optimum) and ``topk`` on the same episodes (baselines are evaluated once and
cached), and logs to TensorBoard under ``eval/``:

=================================  ==============================================
``eval/energy_per_token_mj``       agent energy per token (mJ, all layers)
``eval/siftmoe_energy_per_token_mj`` / ``eval/topk_energy_per_token_mj``  references
``eval/saving_vs_topk_pct``        ``100 (1 - E_agent / E_topk)``
``eval/regret``                    ``E_agent / E_siftmoe - 1``
``eval/score``                     ``mean return of siftmoe / mean return of the agent`` (1 = optimal)
``eval/feasible``                  1 when the agent keeps the budgets (:func:`agents.evaluation.feasibility`)
``eval/violation_rate``            share of steps whose error bound exceeds the budget
``eval/latency_violation_rate``    share of steps that overran the latency budget
``eval/any_violation_rate``        share of steps over either budget
``eval/excess_violation_rate``     ``any_violation_rate`` minus siftmoe's on the same episodes
``eval/mean_error_ratio``          mean error bound / budget
``eval/max_error_ratio``           max error bound / budget
``eval/mean_return``               mean undiscounted episode return
=================================  ==============================================

plus a TensorBoard "custom scalars" layout that draws agent, siftmoe and topk
energy in one chart.  The best model (lowest regret among evaluations with a
excess violation rate of at most ``max_violation_rate``, i.e. at most that
share of steps over a budget (error or latency) beyond what the optimum itself
cannot avoid on the same episodes; if none qualifies, the lowest excess) is saved as ``best_model.zip`` with its metrics in
``best_model.json``.

:class:`AtomicCheckpointCallback` saves ``checkpoints/ckpt_<steps>.zip`` (and
the replay buffer of off-policy algorithms, and ``ckpt_<steps>.json``, its
entry) at the first rollout boundary after every ``save_freq`` steps and at the
end of training: each file is written to a temporary name and moved into place
with ``os.replace``, and ``checkpoints/latest.json`` is replaced last, so an
interrupted save never leaves a truncated checkpoint behind the pointer; a
resume that finds the newest checkpoint damaged falls back to the one before
(:func:`agents.runio.intact_checkpoints`).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable

from stable_baselines3.common.callbacks import BaseCallback

from .evaluation import REFERENCE, TOPK, BaselineCache, evaluate, relative_metrics
from .policy import AgentPolicy
from .runio import atomic_save_model, atomic_save_replay_buffer, atomic_write_json

CUSTOM_SCALARS_LAYOUT = {
    "SiftMoE": {
        "energy per token (mJ): agent vs siftmoe vs topk": [
            "Multiline", ["eval/energy_per_token_mj", "eval/siftmoe_energy_per_token_mj", "eval/topk_energy_per_token_mj"]
        ],
        "regret vs siftmoe (E/E_opt - 1)": ["Multiline", ["eval/regret"]],
        "score (siftmoe return / agent return) and feasibility": ["Multiline", ["eval/score", "eval/feasible"]],
        "saving vs top-k (%)": ["Multiline", ["eval/saving_vs_topk_pct", "eval/siftmoe_saving_vs_topk_pct"]],
        "violation rates": ["Multiline", ["eval/violation_rate", "eval/latency_violation_rate",
                                          "eval/any_violation_rate", "eval/siftmoe_any_violation_rate"]],
        "error bound / budget": ["Multiline", ["eval/mean_error_ratio", "eval/max_error_ratio"]],
    }
}


def tensorboard_logger(folder: str | os.PathLike, verbose: int = 0, purge_step: int | None = None):
    """An SB3 ``Logger`` writing TensorBoard events to ``folder`` (and a table to stdout when ``verbose``).

    ``purge_step`` (a resumed run: its checkpoint's step + 1) starts the new event file with a restart marker
    (``SummaryWriter(purge_step=...)``): TensorBoard then drops the earlier files' points from that step on,
    the ones an abandoned stretch of training logged after the checkpoint, so every step is shown once."""
    import sys

    from stable_baselines3.common.logger import HumanOutputFormat, Logger, TensorBoardOutputFormat

    class _TensorBoard(TensorBoardOutputFormat):
        def __init__(self, log_dir: str, purge: int | None):  # SB3's, with the writer's purge_step
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=log_dir, purge_step=purge)
            self._is_closed = False

    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    formats = [_TensorBoard(folder, purge_step)] + ([HumanOutputFormat(sys.stdout)] if verbose else [])
    return Logger(folder=folder, output_formats=formats)


class RolloutBoundaryCallback(BaseCallback):
    """Calls :meth:`act` at the first rollout boundary after every ``every`` environment steps, and once
    more at the end of training unless the last call was at the final step.

    At the start of a rollout everything before it is complete: the previous rollout's transitions are
    stored and trained on (on-policy) or in the replay buffer with their gradient steps done (off-policy),
    so the model is exactly what a checkpoint or saved model taken at this step contains, and a resumed
    run repeats and loses nothing."""

    def __init__(self, every: int, verbose: int = 0):
        super().__init__(verbose)
        self.every = max(int(every), 1)
        self._next = 0

    def _schedule_next(self) -> None:
        self._next = (self.num_timesteps // self.every + 1) * self.every

    def _on_training_start(self) -> None:
        self._schedule_next()

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        if self.num_timesteps >= self._next:
            self.act()
            self._schedule_next()

    def _on_training_end(self) -> None:
        if self.last_step() != self.num_timesteps:
            self.act()

    def act(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def last_step(self) -> int | None:
        """The step of the last :meth:`act` (``None`` if never)."""
        raise NotImplementedError


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


class ProgressBarCallback(BaseCallback):
    """A tqdm bar over the step target the run really reaches (whole rollouts), updated at rollout ends; shown only
    when ``enabled`` and standard output is a terminal (a redirected run prints the evaluation lines alone)."""

    def __init__(self, target: int, enabled: bool = True):
        super().__init__(0)
        self.target = int(target)
        self.enabled = bool(enabled)
        self.bar = None

    def _on_training_start(self) -> None:
        import sys

        from tqdm import tqdm

        self.bar = tqdm(total=self.target, initial=int(self.num_timesteps), unit="step", unit_scale=True,
                        dynamic_ncols=True, disable=not (self.enabled and sys.stdout.isatty()))

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.bar.update(int(self.num_timesteps) - self.bar.n)

    def _on_training_end(self) -> None:
        self.bar.update(int(self.num_timesteps) - self.bar.n)
        self.bar.close()


def best_key(record: dict[str, Any], max_violation_rate: float) -> tuple:
    """Sort key of an evaluation for the best model: within ``max_violation_rate`` excess violations (and,
    where known, feasible) first, then the highest score (lowest regret where no score is known)."""
    v = record.get("excess_violation_rate", record["violation_rate"])
    s = record.get("score", math.nan)
    r = -s if isinstance(s, (int, float)) and math.isfinite(s) else (
        record["regret"] if math.isfinite(record["regret"]) else math.inf)
    ok = v <= max_violation_rate and record.get("feasible", True)
    return (0, 0.0, r) if ok else (1, v, r)


class ComparisonEvalCallback(RolloutBoundaryCallback):
    def __init__(
        self,
        eval_env,
        seeds: list[int],
        eval_freq: int,
        run_dir: str | os.PathLike,
        cache: BaselineCache,
        model_meta: dict[str, Any] | None = None,
        history: list[dict[str, Any]] | None = None,
        best: dict[str, Any] | None = None,
        wall_offset_s: float = 0.0,
        max_violation_rate: float = 0.01,
        deterministic: bool = True,
        on_eval: Callable[[dict[str, Any]], None] | None = None,
        verbose: int = 0,
    ):
        super().__init__(eval_freq, verbose)
        self.eval_env = eval_env
        self.seeds = [int(s) for s in seeds]
        self.eval_freq = self.every
        self.run_dir = Path(run_dir)
        self.cache = cache
        self.model_meta = dict(model_meta or {})
        self.history: list[dict[str, Any]] = list(history or [])
        self.best = best
        self.wall_offset_s = float(wall_offset_s)
        self.max_violation_rate = float(max_violation_rate)
        self.deterministic = deterministic
        self.on_eval = on_eval
        self._t0 = time.perf_counter()
        self._layout_written = False

    # ------------------------------------------------------------ helpers
    def wall_s(self) -> float:
        return self.wall_offset_s + (time.perf_counter() - self._t0)

    @property
    def last(self) -> dict[str, Any] | None:
        return self.history[-1] if self.history else None

    def _write_layout(self) -> None:
        if self._layout_written:
            return
        from stable_baselines3.common.logger import TensorBoardOutputFormat

        for fmt in getattr(self.logger, "output_formats", []):
            if isinstance(fmt, TensorBoardOutputFormat):
                try:
                    fmt.writer.add_custom_scalars(CUSTOM_SCALARS_LAYOUT)
                except Exception:  # pragma: no cover - layout is cosmetic
                    pass
        self._layout_written = True

    # ---------------------------------------------------------- callbacks
    def _on_training_start(self) -> None:
        self._t0 = time.perf_counter()
        super()._on_training_start()
        self._write_layout()

    def act(self) -> dict[str, Any]:
        return self.evaluate_now()

    def last_step(self) -> int | None:
        return None if self.last is None else self.last["timesteps"]

    # --------------------------------------------------------- evaluation
    def evaluate_now(self) -> dict[str, Any]:
        policy = AgentPolicy(self.model, self.eval_env, deterministic=self.deterministic)
        agent = evaluate(self.eval_env, policy, self.seeds)
        ref = self.cache.get(REFERENCE)
        top = self.cache.get(TOPK)
        rel = relative_metrics(agent, ref)
        rec: dict[str, Any] = {
            "timesteps": int(self.num_timesteps),
            "wall_s": self.wall_s(),
            **{k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v) for k, v in rel.items()},
            "siftmoe_energy_per_token_j": ref["energy_per_token_j"] if ref else math.nan,
            "siftmoe_saving_pct": ref["saving_pct"] if ref else math.nan,
            "siftmoe_violation_rate": ref["violation_rate"] if ref else math.nan,
            "siftmoe_any_violation_rate": ref.get("any_violation_rate", math.nan) if ref else math.nan,
            "topk_policy_energy_per_token_j": top["energy_per_token_j"] if top else math.nan,
        }
        rec["excess_violation_rate"] = rec["any_violation_rate"] - (
            rec["siftmoe_any_violation_rate"] if math.isfinite(rec["siftmoe_any_violation_rate"]) else 0.0)
        self.history.append(rec)
        self._log(rec)
        atomic_write_json(self.run_dir / "evaluations.json", {"seeds": self.seeds, "history": self.history})
        if self.best is None or best_key(rec, self.max_violation_rate) < best_key(self.best, self.max_violation_rate):
            self.best = rec
            atomic_save_model(self.model, self.run_dir / "best_model.zip")
            atomic_write_json(self.run_dir / "best_model.json",
                              {**self.model_meta, "metrics": rec, "eval_seeds": self.seeds})
        if self.verbose:
            print(f"[eval] steps={rec['timesteps']} regret={100 * rec['regret']:.2f}% "
                  f"violations={100 * rec['violation_rate']:.2f}% (any {100 * rec['any_violation_rate']:.2f}%, "
                  f"siftmoe {100 * rec['siftmoe_any_violation_rate']:.2f}%) saving={rec['saving_pct']:.2f}%")
        if self.on_eval is not None:
            self.on_eval(rec)
        return rec

    def _log(self, rec: dict[str, Any]) -> None:
        lg = self.logger
        lg.record("eval/energy_per_token_mj", 1e3 * rec["energy_per_token_j"])
        lg.record("eval/siftmoe_energy_per_token_mj", 1e3 * rec["siftmoe_energy_per_token_j"])
        lg.record("eval/topk_energy_per_token_mj", 1e3 * rec["topk_energy_per_token_j"])
        lg.record("eval/saving_vs_topk_pct", rec["saving_pct"])
        lg.record("eval/siftmoe_saving_vs_topk_pct", rec["siftmoe_saving_pct"])
        lg.record("eval/regret", rec["regret"])
        lg.record("eval/score", rec.get("score", math.nan))
        lg.record("eval/feasible", float(bool(rec.get("feasible", False))))
        lg.record("eval/violation_rate", rec["violation_rate"])
        lg.record("eval/latency_violation_rate", rec["latency_violation_rate"])
        lg.record("eval/any_violation_rate", rec["any_violation_rate"])
        lg.record("eval/siftmoe_any_violation_rate", rec["siftmoe_any_violation_rate"])
        lg.record("eval/excess_violation_rate", rec["excess_violation_rate"])
        lg.record("eval/mean_error_ratio", rec["mean_error_ratio"])
        lg.record("eval/max_error_ratio", rec["max_error_ratio"])
        lg.record("eval/mean_return", rec["mean_return"])
        lg.record("time/eval_seconds", rec["eval_seconds"])
        lg.record("time/wall_s", rec["wall_s"])
        lg.dump(rec["timesteps"])


class AtomicCheckpointCallback(RolloutBoundaryCallback):
    def __init__(self, save_freq: int, ckpt_dir: str | os.PathLike, keep: int = 2,
                 wall_clock: Callable[[], float] | None = None, extra: Callable[[], dict] | None = None,
                 verbose: int = 0):
        super().__init__(save_freq, verbose)
        self.save_freq = self.every
        self.ckpt_dir = Path(ckpt_dir)
        self.keep = max(int(keep), 1)
        self.wall_clock = wall_clock
        self.extra = extra
        self.last_saved_step = -1

    def act(self) -> dict[str, Any]:
        return self.save()

    def last_step(self) -> int | None:
        return self.last_saved_step

    def save(self) -> dict[str, Any]:
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        steps = int(self.num_timesteps)
        name = f"ckpt_{steps:010d}"
        atomic_save_model(self.model, self.ckpt_dir / f"{name}.zip")
        entry: dict[str, Any] = {"model": f"{name}.zip", "timesteps": steps}
        if getattr(self.model, "replay_buffer", None) is not None:
            atomic_save_replay_buffer(self.model, self.ckpt_dir / f"{name}_replay_buffer.pkl")
            entry["replay_buffer"] = f"{name}_replay_buffer.pkl"
        if self.wall_clock is not None:
            entry["wall_s"] = float(self.wall_clock())
        if self.extra is not None:
            entry.update(self.extra())
        atomic_write_json(self.ckpt_dir / f"{name}.json", entry)  # the entry beside it, for a fallback on resume
        atomic_write_json(self.ckpt_dir / "latest.json", entry)
        self.last_saved_step = steps
        self._prune(keep_name=name)
        if self.verbose:
            print(f"[checkpoint] {self.ckpt_dir / entry['model']}")
        return entry

    def _prune(self, keep_name: str) -> None:
        names = sorted({p.name.split(".")[0].replace("_replay_buffer", "") for p in self.ckpt_dir.glob("ckpt_*")
                        if not p.name.startswith(".")})
        old = [n for n in names if n != keep_name][: max(len(names) - self.keep, 0)]
        for n in old:
            for p in self.ckpt_dir.glob(f"{n}*"):
                try:
                    p.unlink()
                except OSError:
                    pass
