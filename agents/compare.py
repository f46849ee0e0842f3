"""Agent vs. baselines on the same seeded episodes: metrics, tables, files, plots.

All numbers come from :mod:`siftmoe_gym.evaluation` (common random numbers:
every policy sees the same episodes).  Relative metrics:

- ``saving_pct``: ``100 * (1 - E / E_topk)`` (from the evaluator);
- ``regret``: ``E / E_siftmoe - 1``, the energy above the SiftMoE optimum on the
  same episodes (negative when a policy saves more than the optimum by
  breaking the error budget; read it together with ``violation_rate``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

from siftmoe_gym.evaluation import evaluate_policy

REFERENCE = "siftmoe"
TOPK = "topk"
DEFAULT_EVAL_SEED_BASE = 1_000_003  # far from training seeds (seed + i)

COLUMNS = [
    "policy", "energy_per_token_j", "saving_pct", "regret", "mean_error_ratio", "max_error_ratio",
    "violation_rate", "latency_violation_rate", "any_violation_rate", "mean_return", "episodes", "eval_seconds",
]


def eval_seeds(n: int, base: int = DEFAULT_EVAL_SEED_BASE) -> list[int]:
    return [int(base) + i for i in range(int(n))]


def regret(energy: float, reference_energy: float) -> float:
    if reference_energy <= 0:
        return 0.0 if energy <= 0 else math.inf
    return energy / reference_energy - 1.0


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    return repr(o)


def evaluate(env, policy, seeds: Iterable[int]) -> dict[str, float]:
    """Summary of ``policy`` on ``seeds`` plus ``eval_seconds``."""
    t0 = time.perf_counter()
    summary, _ = evaluate_policy(env, policy, list(seeds))
    summary = dict(summary)
    summary["eval_seconds"] = time.perf_counter() - t0
    return summary


class BaselineCache:
    """Baseline summaries on fixed seeds, computed once (optionally persisted as JSON)."""

    def __init__(self, env, seeds: Iterable[int], path: str | os.PathLike | None = None, key: str = ""):
        self.env = env
        self.seeds = [int(s) for s in seeds]
        self.path = Path(path) if path else None
        self.key = key
        self.results: dict[str, dict[str, float]] = {}
        self.errors: dict[str, str] = {}
        if self.path and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                if data.get("seeds") == self.seeds and data.get("key") == key:
                    self.results = data.get("results", {})
            except (OSError, ValueError):
                self.results = {}

    def get(self, name: str, **policy_kwargs) -> dict[str, float] | None:
        if name in self.results:
            return self.results[name]
        if name in self.errors:
            return None
        import baselines

        try:
            policy = baselines.get_policy(name, self.env, **policy_kwargs)
            self.results[name] = evaluate(self.env, policy, self.seeds)
        except Exception as exc:  # a baseline that does not apply to this env is skipped, not fatal
            self.errors[name] = f"{type(exc).__name__}: {exc}"
            print(f"warning: baseline {name!r} skipped: {self.errors[name]}", file=sys.stderr)
            return None
        self._save()
        return self.results[name]

    def _save(self) -> None:
        if self.path:
            atomic_write_json(self.path, {"key": self.key, "seeds": self.seeds, "results": self.results})


def relative_metrics(summary: dict[str, float], reference: dict[str, float] | None) -> dict[str, float]:
    out = dict(summary)
    out["regret"] = regret(summary["energy_per_token_j"], reference["energy_per_token_j"]) if reference else math.nan
    return out


def available_baselines() -> list[str]:
    import baselines

    return list(baselines.available_policies())


def comparison_rows(
    agent_name: str | None,
    agent_summary: dict[str, float] | None,
    cache: BaselineCache,
    baseline_names: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """Rows (agent first, then siftmoe, topk, the rest) with regret against siftmoe."""
    names = list(baseline_names) if baseline_names is not None else available_baselines()
    ordered = [REFERENCE, TOPK] + [n for n in names if n not in (REFERENCE, TOPK)]
    reference = cache.get(REFERENCE)
    rows = []
    if agent_summary is not None:
        rows.append({"policy": agent_name, **relative_metrics(agent_summary, reference)})
    for name in ordered:
        summary = cache.get(name)
        if summary is not None:
            rows.append({"policy": name, **relative_metrics(summary, reference)})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ["policy", "energy/token (mJ)", "saving vs top-k (%)", "regret (%)", "mean err/budget",
            "err viol. (%)", "latency viol. (%)", "any viol. (%)", "return"]
    lines = []
    for r in rows:
        lines.append([
            str(r["policy"]),
            f"{1e3 * r['energy_per_token_j']:.4f}",
            f"{r['saving_pct']:.2f}",
            f"{100 * r['regret']:.2f}" if math.isfinite(r.get("regret", math.nan)) else "n/a",
            f"{r['mean_error_ratio']:.3f}",
            f"{100 * r['violation_rate']:.2f}",
            f"{100 * r['latency_violation_rate']:.2f}",
            f"{100 * r.get('any_violation_rate', math.nan):.2f}",
            f"{r['mean_return']:.3f}",
        ])
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    out = [fmt(head), "  ".join("-" * w for w in widths)]
    out += [fmt(l) for l in lines]
    return "\n".join(out)


def write_comparison(rows: list[dict[str, Any]], out_dir: str | os.PathLike, meta: dict[str, Any],
                     stem: str = "comparison", history: list[dict[str, Any]] | None = None) -> dict[str, Path]:
    """Write ``<stem>.csv``, ``<stem>.json`` and ``<stem>.png`` (and a learning curve if ``history``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / f"{stem}.csv", "json": out_dir / f"{stem}.json", "png": out_dir / f"{stem}.png"}
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k, "") for k in COLUMNS})
    atomic_write_text(paths["csv"], buf.getvalue())
    atomic_write_json(paths["json"], {"meta": meta, "rows": rows})
    plot_comparison(rows, paths["png"], title=meta.get("title", ""))
    if history:
        paths["curve"] = out_dir / "learning_curve.png"
        plot_learning_curve(history, paths["curve"], title=meta.get("title", ""))
    return paths


def _savefig(fig, path: Path, dpi: int = 110) -> None:
    """Write ``fig`` to ``path`` atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def plot_comparison(rows: list[dict[str, Any]], path: str | os.PathLike, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [str(r["policy"]) for r in rows]
    energy = [1e3 * r["energy_per_token_j"] for r in rows]
    viol = [100 * r["violation_rate"] for r in rows]
    lat = [100 * r["latency_violation_rate"] for r in rows]
    colors = ["tab:red" if i == 0 and n not in (REFERENCE, TOPK) else
              ("tab:green" if n == REFERENCE else ("tab:gray" if n == TOPK else "tab:blue"))
              for i, n in enumerate(names)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(rows) + 4), 4.2))
    ax1.bar(range(len(rows)), energy, color=colors)
    ax1.set_ylabel("energy per token (mJ)")
    ax1.set_xlabel("policy")
    ax1.set_title("Energy per token (lower is better)")
    import numpy as np

    x = np.arange(len(rows))
    ax2.bar(x - 0.2, viol, width=0.4, color="tab:orange", label="error budget")
    ax2.bar(x + 0.2, lat, width=0.4, color="tab:purple", label="latency budget")
    ax2.set_ylabel("steps over budget (%)")
    ax2.set_xlabel("policy")
    ax2.set_title("Budget violation rates")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(names, rotation=35, ha="right")
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _savefig(fig, Path(path))
    plt.close(fig)


def plot_learning_curve(history: list[dict[str, Any]], path: str | os.PathLike, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["timesteps"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(steps, [100 * h["regret"] for h in history], marker="o")
    ax1.axhline(0, color="tab:green", lw=1, ls="--", label="siftmoe (optimum)")
    ax1.set_xlabel("environment steps")
    ax1.set_ylabel("regret vs siftmoe (%)")
    ax1.legend()
    ax2.plot(steps, [100 * h["violation_rate"] for h in history], marker="o", color="tab:orange", label="error budget")
    ax2.plot(steps, [100 * h.get("any_violation_rate", math.nan) for h in history], marker="s", color="tab:red",
             label="either budget")
    ref = [100 * h.get("siftmoe_any_violation_rate", math.nan) for h in history]
    ax2.plot(steps, ref, ls="--", color="tab:green", label="siftmoe, either budget")
    ax2.set_xlabel("environment steps")
    ax2.set_ylabel("steps over budget (%)")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _savefig(fig, Path(path))
    plt.close(fig)


# =====================================================================================================
# Scenario benchmark (issue 7): policies and saved agents on identical seeded episodes, CSV/markdown/PNG
#
#     python -m agents.compare --scenarios benchmarks/scenarios/default.yml --out DIR [--episodes N]
#                              [--agent NAME=PATH ...] [--no-progress]
#
# A scenario file (YAML) holds defaults and a list of scenarios:
#
#     episodes: 20            # episodes (seeds) per point, --episodes overrides
#     seed: 1000              # seeds are seed, seed+1, ...; the same for every point and policy (CRN)
#     scenarios:
#       - name: eps_tradeoff
#         title: "Decode: energy against the error budget"
#         env: siftmoe_gym/Decode-v0
#         config: {episode_tokens: 32}          # SystemConfig keys and env keys
#         sweep: {param: eps_rel, values: [0.1, 0.25, 0.5], label: "error budget eps_rel"}
#         policies: [topk, siftmoe, nearest-local]   # default: every registered baseline
#         plots: [energy_per_token_mj, violation_pct]
#         plot_policies: {violation_pct: [siftmoe, topk]}   # optional: fewer lines in one panel
#         bound: lagrangian                     # fast fading: the offline Lagrangian bound per seed
#         trace: path/to/trace.safetensors      # run on a real trace (skipped with a note if missing)
#       - name: real_accuracy
#         kind: hf_accuracy                     # next-token accuracy vs energy inside a real model
#         model: tiny                           # siftmoe_gym.hf tiny model (cache) or a checkpoint folder
#         eps: [0.1, 0.25, 0.5]
#
# Sweep values may be numbers or lists (a distance window [lo, hi] is plotted at its mean); ``x``
# gives explicit plot positions.  Every figure shows the mean over episodes and a 95% confidence
# interval (Student t over the per-episode values).  Baselines act through ``action_mode="slots"``
# (their exact assignments); saved agents act in their own action/observation modes on the same
# episodes (same config and seeds); an agent whose spaces do not fit a point is skipped with a note.
# =====================================================================================================

BENCH_METRICS: dict[str, tuple[str, str, float]] = {
    # name: (record key, axis label with units, scale)
    "energy_per_token_mj": ("energy_per_token_j", "energy per token (mJ)", 1e3),
    "energy_per_token_uj": ("energy_per_token_j", "energy per token (µJ)", 1e6),
    "saving_pct": ("saving_pct", "saving vs top-k (%)", 1.0),
    "excess_vs_siftmoe_pct": ("excess_vs_siftmoe_pct", "energy above siftmoe (%)", 1.0),
    "mean_error_ratio": ("mean_error_ratio", "mean error bound / budget", 1.0),
    "worst_layer_mean_error_ratio": ("worst_layer_mean_ratio", "average error / budget, worst layer", 1.0),
    "violation_pct": ("violation_rate", "steps over the error constraint (%)", 100.0),
    "latency_violation_pct": ("latency_violation_rate", "steps over the latency budget (%)", 100.0),
    "any_violation_pct": ("any_violation_rate", "steps over a budget (%)", 100.0),
    "norm_energy": ("mean_norm_energy", "energy / top-k energy (per-step mean)", 1.0),
    "accuracy_pct": ("accuracy", "next-token accuracy (%)", 100.0),
}
BENCH_RECORD_FIELDS = [
    "scenario", "env", "param", "point", "x", "policy", "seed", "episodes_in_point", "steps", "tokens", "energy_j",
    "energy_per_token_j", "topk_energy_per_token_j", "saving_pct", "excess_vs_siftmoe_pct", "mean_error_ratio",
    "max_error_ratio", "violation_rate", "latency_violation_rate", "any_violation_rate", "over_budget_rate",
    "worst_layer_mean_ratio", "average_met", "within_constraints", "mean_norm_energy", "accuracy", "perplexity",
    "mean_return",
]
SUMMARY_METRICS = [
    "energy_per_token_j", "saving_pct", "excess_vs_siftmoe_pct", "mean_error_ratio", "worst_layer_mean_ratio",
    "violation_rate", "latency_violation_rate", "any_violation_rate", "within_constraints", "average_met",
    "mean_norm_energy", "accuracy",
]
BOUND_NAME = "lagrangian-bound"
ACTION_MODE_BASELINES = "slots"
_DEFAULT_PLOTS = ["energy_per_token_mj", "violation_pct"]
_POLICY_STYLE = {
    "siftmoe": ("tab:green", "o", "-"), "siftmoe-fast": ("tab:olive", "s", "--"), "topk": ("tab:gray", "x", "-"),
    "top1": ("tab:brown", "v", ":"), "skip-infeasible": ("tab:orange", "^", ":"),
    "nearest-local": ("tab:blue", "D", ":"), "channel-threshold": ("tab:purple", "<", ":"),
    "wdmoe-wlr": ("tab:pink", ">", ":"), "random-within-budget": ("tab:cyan", "*", ":"),
    BOUND_NAME: ("black", None, "--"),
}


def mean_ci95(values) -> tuple[float, float, int]:
    """``(mean, half-width of the 95% t-interval, n)`` of the finite values (half-width nan if n < 2)."""
    import numpy as np

    v = np.asarray([float(x) for x in values if x is not None and x == x and math.isfinite(float(x))], dtype=float)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(v[0]), math.nan, 1
    from scipy.stats import t as student_t

    half = float(student_t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return float(v.mean()), half, n


def load_scenario_file(path: str | os.PathLike) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if isinstance(data, list):
        data = {"scenarios": data}
    if not isinstance(data, dict) or not isinstance(data.get("scenarios"), list) or not data["scenarios"]:
        raise ValueError(f"{path}: expected a mapping with a non-empty 'scenarios' list")
    names = [s.get("name") for s in data["scenarios"]]
    if any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"{path}: every scenario needs a unique 'name' (got {names})")
    for s in data["scenarios"]:
        kind = s.get("kind", "sweep")
        if kind not in ("sweep", "hf_accuracy"):
            raise ValueError(f"scenario {s['name']!r}: unknown kind {kind!r} (sweep or hf_accuracy)")
        for p in s.get("plots", []):
            if p not in BENCH_METRICS:
                raise ValueError(f"scenario {s['name']!r}: unknown plot metric {p!r}; known: {sorted(BENCH_METRICS)}")
    return data


def _expand_path(p: str | None, base: Path) -> Path | None:
    if not p:
        return None
    q = Path(os.path.expandvars(os.path.expanduser(str(p))))
    return q if q.is_absolute() else (base / q)


def _set_param(cfg: dict, param: str, value) -> dict:
    cfg = json.loads(json.dumps(cfg))  # deep copy of plain data
    parts = param.split(".")
    d = cfg
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value
    return cfg


def _x_of(value, explicit=None) -> float:
    if explicit is not None:
        return float(explicit)
    if isinstance(value, (list, tuple)):
        return float(sum(value) / len(value))
    return float(value)


def _points(scn: dict) -> list[tuple[str, float, dict]]:
    """``[(label, x, config)]`` of a scenario's sweep (one point without a sweep)."""
    base = dict(scn.get("config") or {})
    sweep = scn.get("sweep")
    if not sweep:
        return [("default", math.nan, base)]
    values = list(sweep["values"])
    xs = sweep.get("x")
    if xs is not None and len(xs) != len(values):
        raise ValueError(f"scenario {scn['name']!r}: sweep.x must match sweep.values")
    out = []
    for i, v in enumerate(values):
        label = "-".join(f"{a:g}" for a in v) if isinstance(v, (list, tuple)) else f"{v:g}" if isinstance(v, (int, float)) else str(v)
        out.append((label, _x_of(v, xs[i] if xs is not None else None), _set_param(base, sweep["param"], v)))
    return out


# ------------------------------------------------------------------------------------------- agents
class LoadedAgent:
    """A saved SB3 model plus what is known about the environment it was trained on."""

    def __init__(self, name: str, path: str, model, meta: dict[str, Any]):
        self.name, self.path, self.model, self.meta = name, path, model, meta

    @property
    def env_id(self) -> str | None:
        return self.meta.get("env_id")

    def env_kwargs(self) -> dict[str, Any]:
        kw = dict(self.meta.get("env_kwargs") or {})
        return {k: kw[k] for k in ("action_mode", "obs_mode") if k in kw}


def _base_env_id(env_id: str) -> str:
    return env_id.replace("Discrete-v", "-v")


def load_saved_agent(name: str, path: str) -> LoadedAgent:
    """Load with the agents package's ``load_agent`` (model + metadata); else try the SB3 classes in turn."""
    try:
        from .training import load_agent

        model, meta = load_agent(path)
        return LoadedAgent(name, path, model, dict(meta))
    except ImportError:  # pragma: no cover - agents.training unavailable
        pass
    except Exception as exc:  # no metadata beside the model: fall back to trying the classes
        first_error = exc
    else:  # pragma: no cover
        first_error = None
    import importlib

    p = Path(path)
    if not p.exists() and p.with_name(p.name + ".zip").exists():
        p = p.with_name(p.name + ".zip")
    for mod, cls in (("stable_baselines3", "PPO"), ("sb3_contrib", "MaskablePPO"), ("sb3_contrib", "RecurrentPPO"),
                     ("stable_baselines3", "A2C"), ("stable_baselines3", "DQN")):
        try:
            model = getattr(importlib.import_module(mod), cls).load(str(p), device="cpu")
            return LoadedAgent(name, str(p), model, {"algo": cls.lower()})
        except Exception:
            continue
    raise ValueError(f"cannot load agent {name!r} from {path}: {first_error}")


def _agent_env(agent: LoadedAgent, env_id: str, env_cfg: dict, trace):
    """The agent's env for a scenario point, or a reason string when it does not apply."""
    import gymnasium as gym

    if agent.env_id and _base_env_id(agent.env_id) != _base_env_id(env_id):
        return f"agent {agent.name} was trained on {agent.env_id}, scenario uses {env_id}"
    make_id = agent.env_id or env_id
    kw = agent.env_kwargs()
    if trace is not None:
        kw["trace"] = trace
    env = gym.make(make_id, config=env_cfg, **kw)
    if env.observation_space != agent.model.observation_space:
        return f"agent {agent.name}: observation space {agent.model.observation_space} does not fit {env.observation_space}"
    if env.action_space != agent.model.action_space:
        return f"agent {agent.name}: action space {agent.model.action_space} does not fit {env.action_space}"
    return env


# ------------------------------------------------------------------------------------------- running
def _episode_record(stats, **extra) -> dict[str, Any]:
    steps = max(stats.steps, 1)
    return {
        **extra, "seed": stats.seed, "steps": stats.steps, "tokens": stats.tokens, "energy_j": stats.energy_j,
        "energy_per_token_j": stats.energy_per_token_j, "topk_energy_per_token_j": stats.topk_energy_j / max(stats.tokens, 1e-12),
        "mean_error_ratio": stats.error_ratio_sum / steps, "max_error_ratio": stats.error_ratio_max,
        "violation_rate": stats.violations / steps, "latency_violation_rate": stats.latency_violations / steps,
        "any_violation_rate": stats.any_violations / steps, "over_budget_rate": stats.over_budget / steps,
        "worst_layer_mean_ratio": stats.worst_layer_mean_ratio, "average_met": bool(stats.average_met),
        "within_constraints": bool(stats.within_constraints), "mean_norm_energy": stats.norm_energy_sum / steps,
        "mean_return": stats.episode_return,
    }


def _episode_instances(env, seed: int) -> list:
    """The decision instances of a seeded episode (channels known in advance), stepping with top-k."""
    env.reset(seed=int(seed))
    u = env.unwrapped
    out = []
    while True:
        inst = u.instance
        out.append(inst)
        _, _, term, trunc, _ = env.step(u.encode_action(inst.topk))
        if term or trunc:
            return out


def _fill_relative(records: list[dict[str, Any]]) -> None:
    """Per seed: saving against top-k's own episode and energy above siftmoe's (common random numbers)."""
    by_seed: dict[int, dict[str, dict]] = {}
    for r in records:
        by_seed.setdefault(r["seed"], {})[r["policy"]] = r
    for rows in by_seed.values():
        topk = rows.get(TOPK)
        ref = rows.get(REFERENCE)
        for r in rows.values():
            if r["policy"] == BOUND_NAME:
                continue
            e = r.get("energy_j")
            if e is None:
                continue
            et = topk["energy_j"] if topk is not None else r["topk_energy_per_token_j"] * r["tokens"]
            r["saving_pct"] = 100.0 * (1.0 - e / et) if et > 0 else 0.0
            if ref is not None and ref.get("energy_j"):
                r["excess_vs_siftmoe_pct"] = 100.0 * (e / ref["energy_j"] - 1.0)


TINY_TRACE = "tiny-model"


def tiny_model_trace(out_dir: Path, tokens: int = 2048, quantile: float = 0.99, link_hidden_size: int | None = None) -> str:
    """Extract (once; cached in ``out_dir``) a trace of the tiny trained model on held-out text; returns its path.

    ``link_hidden_size`` replaces the trace's hidden size (what the radio links carry, ``D = d b``), pricing
    the tiny model's decisions as if its activations were a full-size model's (as ``siftmoe_gym.hf.report``)."""
    import dataclasses

    path = Path(out_dir) / f"trace_tiny_{tokens}_q{quantile:g}_d{link_hidden_size or 'model'}.npz"
    if path.is_file():
        return str(path)
    from siftmoe_gym.hf.loading import load_moe_model
    from siftmoe_gym.hf.tiny_model import default_dir, heldout_ids
    from siftmoe_gym.tracefile import save_trace
    from siftmoe_gym.traces import extract_trace

    mdir = default_dir()
    if not mdir.is_dir():
        raise FileNotFoundError(f"{mdir} (train it: python -m siftmoe_gym.hf.tiny_model train)")
    model, tok = load_moe_model(str(mdir))
    ids = heldout_ids(tokens + 8)
    text = bytes(int(i) for i in ids).decode("utf-8", errors="replace")
    trace = extract_trace(model, tok, text, tokens, quantile=quantile, calibration_tokens=tokens, window=128,
                          progress=False, model_name="tiny-moe")
    if link_hidden_size:
        trace = dataclasses.replace(trace, hidden_size=int(link_hidden_size))
    return str(save_trace(trace, path))


def prepare_sweep_scenario(scn: dict, notes: list[str], base_dir: Path, out_dir: Path | None = None) -> dict | None:
    """What every point of a sweep scenario needs (env id, trace path, policies), or ``None`` when the scenario
    is skipped (a note says why).  Runs once per scenario, in the driver (it may extract the tiny-model trace)."""
    import baselines

    env_id = scn.get("env", "siftmoe_gym/Decode-v0")
    trace = None
    if scn.get("trace") == TINY_TRACE:
        try:
            lhs = scn.get("link_hidden_size")
            trace = tiny_model_trace(out_dir, int(scn.get("trace_tokens", 2048)), float(scn.get("quantile", 0.99)), lhs)
            notes.append(f"trace extracted from the tiny trained model (siftmoe_gym.hf.tiny_model) on "
                         f"{int(scn.get('trace_tokens', 2048))} held-out tokens: {Path(trace).name}"
                         + (f"; links carry d = {lhs} (D = {lhs} x 16 bits per token)" if lhs else ""))
        except Exception as exc:
            notes.append(f"skipped: no tiny-model trace ({type(exc).__name__}: {exc})")
            return None
    elif scn.get("trace"):
        trace_path = _expand_path(scn["trace"], base_dir)
        if trace_path is None or not trace_path.is_file():
            notes.append(f"skipped: trace file {scn['trace']} not found")
            return None
        trace = str(trace_path)
    return {"env_id": env_id, "trace": trace, "policies": list(scn.get("policies") or baselines.available_policies()),
            "policy_kwargs": scn.get("policy_kwargs") or {}, "use_agents": bool(scn.get("agents", True)),
            "points": _points(scn)}


def evaluate_point(scn: dict, plan: dict, label: str, x: float, cfg: dict, seeds: list[int],
                   agents: list[LoadedAgent], tick=None, episodes_in_point: int | None = None,
                   ) -> tuple[list[dict[str, Any]], list[str]]:
    """The unit of work of a sweep: every policy (then the bound, then every agent) of one scenario point on
    ``seeds``; returns ``(episode records, notes)``.  Each episode depends only on its seed, so running the
    seeds of a point in one call or split over several (``--ray``; then ``episodes_in_point`` is the point's
    total) gives the same records."""
    import gymnasium as gym

    import baselines
    import siftmoe_gym  # noqa: F401  (registers the environments)
    from siftmoe_gym.evaluation import run_episode

    env_id, trace = plan["env_id"], plan["trace"]
    tick = tick or (lambda _msg: None)
    notes: list[str] = []
    point_records: list[dict[str, Any]] = []
    common = {"scenario": scn["name"], "env": env_id, "param": (scn.get("sweep") or {}).get("param", ""),
              "point": label, "x": x, "episodes_in_point": int(episodes_in_point or len(seeds))}
    env_kw = {"trace": trace} if trace else {}
    env = gym.make(env_id, config=cfg, action_mode=ACTION_MODE_BASELINES, **env_kw)
    for name in plan["policies"]:
        kw = dict(plan["policy_kwargs"].get(name) or {})
        if name == "random-within-budget":
            kw.setdefault("seed", 0)
        policy = baselines.get_policy(name, env, **kw)
        for s in seeds:
            if name == "random-within-budget":
                policy.reset(seed=int(s))  # reproducible per episode, independent of episode order
            st = run_episode(env, policy, s)
            point_records.append(_episode_record(st, **common, policy=name))
        tick(f"{scn['name']} {label} {name}")
    if scn.get("bound") == "lagrangian":
        from baselines.fastfading import lagrangian_bound

        cfgd = env.unwrapped.system.config
        for s in seeds:
            b = lagrangian_bound(_episode_instances(env, s), eps_max_factor=float(cfgd.eps_max_factor))
            # an episode whose average budget cannot be met even at least error has no finite bound:
            # leave it out of the bound's mean (and say how many were left out)
            point_records.append({**common, "policy": BOUND_NAME, "seed": int(s),
                                  "mean_norm_energy": b.value if b.feasible else math.nan,
                                  "within_constraints": b.feasible})
    env.close()
    for agent in (agents if plan["use_agents"] else []):
        try:
            aenv = _agent_env(agent, env_id, cfg, trace)
        except Exception as exc:
            aenv = f"agent {agent.name}: cannot build its env: {type(exc).__name__}: {exc}"
        if isinstance(aenv, str):
            notes.append(aenv if "was trained on" in aenv else f"{aenv} (point {label})")
            tick(f"{scn['name']} {label} {agent.name}")
            continue
        policy = AgentPolicy_(agent.model, aenv)
        for s in seeds:
            point_records.append(_episode_record(run_episode(aenv, policy, s), **common, policy=agent.name))
        aenv.close()
        tick(f"{scn['name']} {label} {agent.name}")
    _fill_relative(point_records)
    return point_records, notes


def finish_sweep_scenario(point_results: list[tuple[str, list[dict[str, Any]], list[str]]], seeds: list[int],
                          notes: list[str]) -> list[dict[str, Any]]:
    """Records of a sweep scenario from ``[(label, records, notes)]`` per point (in point order); adds the notes."""
    records: list[dict[str, Any]] = []
    bound_out: dict[str, int] = {}
    for label, point_records, point_notes in point_results:
        for msg in point_notes:
            if msg not in notes:
                notes.append(msg)
        out = sum(1 for r in point_records if r["policy"] == BOUND_NAME and not r["within_constraints"])
        if out:
            bound_out[label] = out
        _bound_note(point_records, label, notes)
        records += point_records
    if bound_out:
        notes.append("Lagrangian bound left out on episodes whose average budget is unattainable even at least "
                     "error (no finite bound): " + ", ".join(f"{k}: {v} of {len(seeds)}" for k, v in bound_out.items()))
    return records


def _sweep_units(scn: dict, agents: list[LoadedAgent]) -> int:
    import baselines

    pol = scn.get("policies") or list(baselines.available_policies())
    return len(_points(scn)) * (len(pol) + (len(agents) if scn.get("agents", True) else 0))


def run_sweep_scenario(scn: dict, seeds: list[int], agents: list[LoadedAgent], bar, notes: list[str],
                       base_dir: Path, out_dir: Path | None = None) -> list[dict[str, Any]]:
    plan = prepare_sweep_scenario(scn, notes, base_dir, out_dir)
    if plan is None:
        bar.update(_sweep_units(scn, agents))
        return []

    def tick(msg):
        bar.set_postfix_str(msg)
        bar.update(1)

    results = []
    for label, x, cfg in plan["points"]:
        recs, pnotes = evaluate_point(scn, plan, label, x, cfg, seeds, agents, tick)
        results.append((label, recs, pnotes))
    return finish_sweep_scenario(results, seeds, notes)


# ------------------------------------------------------------------------------------------- Ray (--ray)
_AGENT_CACHE: dict[tuple, list[LoadedAgent]] = {}


def ray_point_task(scn: dict, plan: dict, label: str, x: float, cfg: dict, seeds: list[int],
                   agent_specs: list[tuple[str, str]], episodes_in_point: int, threads: int = 1):
    """A Ray task: :func:`evaluate_point` on a chunk of a point's seeds (agents loaded once per worker)."""
    try:
        import torch

        torch.set_num_threads(max(1, int(threads)))
    except ImportError:  # pragma: no cover
        pass
    key = tuple(agent_specs)
    if key not in _AGENT_CACHE:
        _AGENT_CACHE[key] = [load_saved_agent(n, p) for n, p in agent_specs]
    return evaluate_point(scn, plan, label, x, cfg, seeds, _AGENT_CACHE[key], None, episodes_in_point)


class RayPointRunner:
    """``--ray``: every (scenario point, chunk of ``chunk`` seeds) of the sweep scenarios is a Ray task.

    All scenarios are submitted first (:meth:`submit`), then gathered in scenario order (:meth:`gather`);
    a point's records are put back in the single-machine order (policy, then seed), so the CSVs, tables
    and plots are the same as without Ray.  Local Ray (``num_cpus``) unless ``address`` joins a cluster;
    workers need the project installed and the agent/trace paths readable (a shared file system)."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None, chunk: int = 8, threads: int = 1,
                 agents: dict[str, str] | None = None):
        from .ray_utils import init_ray, require_ray

        self.ray = require_ray()
        self.started = init_ray(address, num_cpus)
        self.remote = self.ray.remote(num_cpus=1)(ray_point_task)
        self.chunk = max(1, int(chunk))
        self.threads = int(threads)
        self.agent_specs = [(n, str(Path(p).resolve()) if Path(p).exists() or Path(p + ".zip").exists() else p)
                            for n, p in (agents or {}).items()]
        self.pending: dict[str, tuple[dict, list]] = {}
        self.tasks = 0

    def submit(self, scn: dict, plan: dict, seeds: list[int]) -> None:
        plan = dict(plan)
        if plan.get("trace"):
            plan["trace"] = str(Path(plan["trace"]).resolve())
        points = []
        for label, x, cfg in plan["points"]:
            refs = [self.remote.remote(scn, plan, label, x, cfg, seeds[i:i + self.chunk], self.agent_specs,
                                       len(seeds), self.threads) for i in range(0, len(seeds), self.chunk)]
            self.tasks += len(refs)
            points.append((label, refs))
        self.pending[scn["name"]] = (plan, points)

    def gather(self, name: str, on_point=None) -> list[tuple[str, list[dict[str, Any]], list[str]]]:
        plan, points = self.pending.pop(name)
        order: dict[str, int] = {}
        for p in [*plan["policies"], BOUND_NAME, *(n for n, _ in self.agent_specs)]:
            order.setdefault(p, len(order))
        out = []
        for label, refs in points:
            parts = self.ray.get(refs)
            recs = [r for part_recs, _ in parts for r in part_recs]
            recs.sort(key=lambda r: order.get(r["policy"], len(order)))  # stable: seeds stay in order
            notes: list[str] = []
            for _, part_notes in parts:
                notes += [m for m in part_notes if m not in notes]
            out.append((label, recs, notes))
            if on_point is not None:
                on_point(label)
        return out

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False


def _bound_note(point_records: list[dict[str, Any]], label: str, notes: list[str]) -> None:
    """siftmoe against the Lagrangian bound on the same episodes (those with a finite bound)."""
    import numpy as np

    ok = {r["seed"] for r in point_records if r["policy"] == BOUND_NAME and math.isfinite(r.get("mean_norm_energy", math.nan))}
    if not ok:
        return
    b = np.mean([r["mean_norm_energy"] for r in point_records if r["policy"] == BOUND_NAME and r["seed"] in ok])
    sm = [r for r in point_records if r["policy"] == REFERENCE and r["seed"] in ok]
    if sm:
        notes.append(f"point {label}, on the {len(ok)} episodes with a finite bound: siftmoe energy "
                     f"{np.mean([r['mean_norm_energy'] for r in sm]):.4f} (top-k units) vs bound {b:.4f}; "
                     f"siftmoe mean error / budget {np.mean([r['mean_error_ratio'] for r in sm]):.3f}, average met on "
                     f"{100 * np.mean([bool(r['average_met']) for r in sm]):.0f}% of them")


def AgentPolicy_(model, env):
    from .policy import AgentPolicy

    return AgentPolicy(model, env)


def run_hf_accuracy_scenario(scn: dict, seeds: list[int], bar, notes: list[str], base_dir: Path) -> list[dict[str, Any]]:
    """Scenario 6 with a real model: next-token accuracy and energy per token, top-k and siftmoe per eps."""
    eps_list = [float(e) for e in scn.get("eps", [0.1, 0.25, 0.5, 1.0])]
    units = len(seeds)
    try:
        import torch

        from siftmoe_gym.hf.report import run_report
        from siftmoe_gym.hf.tiny_model import default_dir, heldout_ids
        from siftmoe_gym.hf.loading import load_moe_model
    except Exception as exc:
        notes.append(f"skipped: siftmoe_gym.hf unavailable ({type(exc).__name__}: {exc})")
        bar.update(units)
        return []
    spec = scn.get("model", "tiny")
    path = default_dir() if spec == "tiny" else _expand_path(spec, base_dir)
    if path is None or not Path(path).is_dir():
        notes.append(f"skipped: model folder {path} not found (train it: python -m siftmoe_gym.hf.tiny_model train)")
        bar.update(units)
        return []
    torch.set_num_threads(int(scn.get("threads", 1)))
    model, tok = load_moe_model(str(path))
    cal, ev = int(scn.get("calibration_tokens", 2048)), int(scn.get("eval_tokens", 2048))
    ids = heldout_ids(cal + 8 + ev)
    cfg = dict(scn.get("config") or {})
    records = []
    extra = {}
    if scn.get("link_hidden_size"):
        import inspect

        if "link_hidden_size" in inspect.signature(run_report).parameters:
            extra["link_hidden_size"] = int(scn["link_hidden_size"])
        else:
            notes.append("link_hidden_size ignored: this siftmoe_gym.hf.report.run_report does not take it")
    for s in seeds:
        bar.set_postfix_str(f"{scn['name']} seed {s}")
        rep = run_report(model, tok, ids[: cal + 8], ids[cal + 8:], eps_list=eps_list, quantile=float(scn.get("quantile", 0.99)),
                         window=int(scn.get("window", 128)), seed=int(s), config=cfg, progress=False, **extra)
        for r in rep["rows"]:
            name = TOPK if r["eps_rel"] is None else REFERENCE
            records.append({
                "scenario": scn["name"], "env": f"hf:{Path(path).name}", "param": "eps_rel",
                "point": "topk" if r["eps_rel"] is None else f"{r['eps_rel']:g}",
                "x": math.nan if r["eps_rel"] is None else float(r["eps_rel"]), "policy": name, "seed": int(s),
                "episodes_in_point": len(seeds), "tokens": rep["eval_tokens"],
                "energy_per_token_j": r["energy_per_token_j"], "saving_pct": 100.0 * r["saving_vs_topk"],
                "mean_error_ratio": r["mean_err_over_budget"], "violation_rate": r["share_over_budget"],
                "accuracy": r["accuracy"], "perplexity": r["perplexity"],
            })
        bar.update(1)
    if rep.get("link_hidden_size"):
        notes.append(f"links carry d = {rep['link_hidden_size']} ({rep.get('bits_per_token')} bits per token and direction)")
    notes.append(f"model {path} (L={rep['layers']}, N={rep['experts']}, k={rep['top_k']}, d={rep['hidden_size']}); "
                 f"{rep['calibration_tokens']} calibration tokens, {rep['eval_tokens']} held-out next-token predictions "
                 f"per seed; the seed draws each sequence's channel (slow fading); unmodified model accuracy "
                 f"{100 * rep['base_accuracy']:.2f}%")
    return records


# ------------------------------------------------------------------------------------------- checks
def siftmoe_dominance(records: Iterable[dict[str, Any]], rtol: float = 1e-7, atol: float = 1e-15) -> tuple[int, list[str]]:
    """Per episode (decode and prefill scenarios): siftmoe's energy <= that of every other policy whose
    every step met the error budget without a latency violation.  Returns ``(comparisons, failures)``."""
    groups: dict[tuple, dict[str, dict]] = {}
    for r in records:
        env = str(r.get("env", ""))
        if "FastFading" in env or env.startswith("hf:") or r.get("energy_j") in (None, ""):
            continue
        groups.setdefault((r["scenario"], r["point"], int(r["seed"])), {})[r["policy"]] = r
    n, fails = 0, []
    for key, rows in groups.items():
        ref = rows.get(REFERENCE)
        if ref is None:
            continue
        for name, r in rows.items():
            if name == REFERENCE or not _truthy(r.get("within_constraints")):
                continue
            n += 1
            e_ref, e = float(ref["energy_j"]), float(r["energy_j"])
            if e_ref > e * (1 + rtol) + atol:
                fails.append(f"{key}: siftmoe {e_ref:.6g} J > {name} {e:.6g} J")
    return n, fails


def _truthy(v) -> bool:
    return v is True or (isinstance(v, str) and v.lower() == "true") or (isinstance(v, (int, float)) and bool(v))


# ------------------------------------------------------------------------------------------- outputs
def summarize_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, 95% CI and n over seeds per (scenario, point, policy)."""
    groups: dict[tuple, list[dict]] = {}
    order = []
    for r in records:
        key = (r["scenario"], r["point"], r["policy"])
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(r)
    out = []
    for key in order:
        rows = groups[key]
        row = {"scenario": key[0], "point": key[1], "x": rows[0].get("x"), "policy": key[2], "env": rows[0].get("env")}
        for m in SUMMARY_METRICS:
            vals = [float(_truthy(r.get(m))) if m in ("within_constraints", "average_met") and r.get(m) not in (None, "")
                    else r.get(m) for r in rows]
            vals = [v for v in vals if v not in (None, "")]
            mean, half, n = mean_ci95(vals)
            row[m], row[f"{m}_ci95"], row[f"{m}_n"] = mean, half, n
        out.append(row)
    return out


def _write_csv(path: Path, rows: list[dict[str, Any]], fields: list[str]) -> None:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    atomic_write_text(path, buf.getvalue())


def _fmt(mean: float, half: float, scale: float = 1.0, digits: int = 3) -> str:
    if mean is None or not math.isfinite(mean):
        return "–"
    if half is None or not math.isfinite(half):
        return f"{scale * mean:.{digits}g}"
    return f"{scale * mean:.{digits}g} ± {scale * half:.2g}"


def summary_table_md(rows: list[dict[str, Any]]) -> str:
    """One markdown row per policy (a single-point scenario): mean ± 95% CI over episodes."""
    head = ["policy", "energy / token (mJ)", "saving vs top-k (%)", "mean err / budget", "steps over err. constraint (%)",
            "steps over latency budget (%)", "episodes within all constraints (%)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["policy"] == BOUND_NAME:
            continue
        lines.append("| " + " | ".join([
            f"`{r['policy']}`", _fmt(r["energy_per_token_j"], r["energy_per_token_j_ci95"], 1e3, 4),
            _fmt(r["saving_pct"], r["saving_pct_ci95"], 1.0, 3),
            _fmt(r["mean_error_ratio"], r["mean_error_ratio_ci95"]),
            _fmt(r["violation_rate"], r["violation_rate_ci95"], 100.0),
            _fmt(r["latency_violation_rate"], r["latency_violation_rate_ci95"], 100.0),
            _fmt(r["within_constraints"], math.nan, 100.0),
        ]) + " |")
    return "\n".join(lines)


def sweep_table_md(rows: list[dict[str, Any]], metric: str, x_label: str) -> str:
    key, label, scale = BENCH_METRICS[metric]
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    points = list(dict.fromkeys(r["point"] for r in rows))
    cell = {(r["point"], r["policy"]): r for r in rows}
    lines = [f"{label}, mean ± 95% CI:", "", "| " + x_label + " | " + " | ".join(f"`{p}`" for p in policies) + " |",
             "|" + "---|" * (len(policies) + 1)]
    for pt in points:
        cells = []
        for p in policies:
            r = cell.get((pt, p))
            cells.append(_fmt(r.get(key), r.get(f"{key}_ci95"), scale) if r else "")
        lines.append(f"| {pt} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_scenario(scn: dict, rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = scn.get("plots") or _DEFAULT_PLOTS
    sweep = scn.get("sweep") or {}
    if not sweep:
        return plot_bars(scn, rows, path)
    x_label = sweep.get("label", sweep.get("param", ""))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.0 * len(metrics), 3.8), squeeze=False)
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    for ax, m in zip(axes[0], metrics):
        key, label, scale = BENCH_METRICS[m]
        only = (scn.get("plot_policies") or {}).get(m)
        for p in policies:
            if only is not None and p not in only:
                continue
            pr = [r for r in rows if r["policy"] == p and r.get(key) is not None and math.isfinite(r.get(key, math.nan))]
            if not pr:
                continue
            xs = np.array([r["x"] for r in pr], dtype=float)
            ys = np.array([scale * r[key] for r in pr])
            es = np.array([scale * r.get(f"{key}_ci95", math.nan) for r in pr])
            es = np.where(np.isfinite(es), es, 0.0)
            color, marker, ls = _POLICY_STYLE.get(p, (None, "o", "-"))
            if p == BOUND_NAME:
                ax.errorbar(xs, ys, yerr=es, color=color, ls=ls, lw=1.5, capsize=3, label="offline Lagrangian bound")
            else:
                ax.errorbar(xs, ys, yerr=es, color=color, marker=marker, ls=ls, lw=1.4, ms=5, capsize=3, label=p)
        if m in ("mean_error_ratio", "worst_layer_mean_error_ratio"):
            ax.axhline(1.0, color="red", lw=0.8, ls=":", label="budget")
        ax.set_xlabel(x_label)
        ax.set_ylabel(label)
        if sweep.get("xscale"):
            ax.set_xscale(sweep["xscale"])
        if scn.get("yscale") and m.startswith("energy"):
            ax.set_yscale(scn["yscale"])
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in labels:
                handles.append(h)
                labels.append(l)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(scn.get("title", scn["name"]) + " (mean, 95% CI over episodes)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.045 * ((len(labels) - 1) // 5), 1, 1))
    _savefig_small(fig, path)
    plt.close(fig)


def plot_bars(scn: dict, rows: list[dict[str, Any]], path: Path) -> None:
    """A single-point scenario: one bar per policy and metric, with the 95% CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = scn.get("bar_plots") or ["energy_per_token_mj", "violation_pct", "latency_violation_pct"]
    rows = [r for r in rows if r["policy"] != BOUND_NAME]
    names = [r["policy"] for r in rows]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 4.0), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        key, label, scale = BENCH_METRICS[m]
        ys = np.array([scale * r.get(key, math.nan) for r in rows], dtype=float)
        es = np.array([scale * r.get(f"{key}_ci95", math.nan) for r in rows], dtype=float)
        colors = [_POLICY_STYLE.get(n, ("tab:red", None, None))[0] for n in names]
        ax.bar(np.arange(len(rows)), ys, yerr=np.where(np.isfinite(es), es, 0.0), color=colors, capsize=3)
        ax.set_xticks(np.arange(len(rows)))
        ax.set_xticklabels(names, rotation=40, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.set_xlabel("policy")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(scn.get("title", scn["name"]) + " (mean, 95% CI over episodes)", fontsize=10)
    fig.tight_layout()
    _savefig_small(fig, path)
    plt.close(fig)


def plot_hf_accuracy(scn: dict, rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for r in rows:
        ex = 1e3 * r["energy_per_token_j"]
        exe = 1e3 * (r["energy_per_token_j_ci95"] if math.isfinite(r["energy_per_token_j_ci95"]) else 0.0)
        acc = 100 * r["accuracy"]
        ace = 100 * (r["accuracy_ci95"] if math.isfinite(r["accuracy_ci95"]) else 0.0)
        color, marker, _ = _POLICY_STYLE.get(r["policy"], (None, "o", "-"))
        ax1.errorbar([ex], [acc], xerr=[exe], yerr=[ace], color=color, marker=marker, capsize=3, ls="none")
    for i, r in enumerate(rows):
        ex, acc = 1e3 * r["energy_per_token_j"], 100 * r["accuracy"]
        ax1.annotate("top-k" if r["policy"] == TOPK else f"ε={r['point']}", (ex, acc), textcoords="offset points",
                     xytext=(6, -12 if i % 2 else 5), fontsize=8)
    sm = [r for r in rows if r["policy"] == REFERENCE]
    ax1.plot([1e3 * r["energy_per_token_j"] for r in sm], [100 * r["accuracy"] for r in sm], color="tab:green", lw=1,
             label="siftmoe (eps_rel sweep)")
    ax1.plot([], [], color="tab:gray", marker="x", ls="none", label="top-k")
    ax1.set_xlabel("energy per token, all MoE layers (mJ)")
    ax1.set_ylabel("next-token accuracy (%)")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    xs = [r["x"] for r in sm]
    ax2.errorbar(xs, [1e3 * r["energy_per_token_j"] for r in sm],
                 yerr=[1e3 * (r["energy_per_token_j_ci95"] if math.isfinite(r["energy_per_token_j_ci95"]) else 0) for r in sm],
                 color="tab:green", marker="o", capsize=3, label="siftmoe")
    tk = [r for r in rows if r["policy"] == TOPK]
    if tk:
        ax2.axhline(1e3 * tk[0]["energy_per_token_j"], color="tab:gray", ls="--", label="top-k")
    ax2.set_xlabel("error budget eps_rel")
    ax2.set_ylabel("energy per token, all MoE layers (mJ)")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.suptitle(scn.get("title", scn["name"]) + " (mean, 95% CI over channel seeds)", fontsize=10)
    fig.tight_layout()
    _savefig_small(fig, path)
    plt.close(fig)


def _savefig_small(fig, path: Path) -> None:
    _savefig(fig, path, dpi=90)


def _scenario_markdown(scn: dict, rows: list[dict[str, Any]], png: str | None, notes: list[str]) -> str:
    out = [f"## {scn.get('title', scn['name'])}", ""]
    if scn.get("description"):
        out += [str(scn["description"]).strip(), ""]
    cfg = scn.get("config") or {}
    env = scn.get("env", "hf model" if scn.get("kind") == "hf_accuracy" else "siftmoe_gym/Decode-v0")
    sweep = scn.get("sweep")
    out.append(f"`{env}`, config `{json.dumps(cfg)}`" + (f", sweep `{sweep['param']}` over {sweep['values']}" if sweep else "")
               + (f", trace `{scn['trace']}`" if scn.get("trace") else ""))
    out.append("")
    for n in notes:
        out.append(f"- note: {n}")
    if notes:
        out.append("")
    if png:
        out += [f"![{scn['name']}]({png})", ""]
    if not rows:
        return "\n".join(out)
    if scn.get("kind") == "hf_accuracy":
        lines = ["| policy | eps_rel | energy / token (mJ) | saving vs top-k (%) | next-token accuracy (%) |", "|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| `{r['policy']}` | {r['point']} | {_fmt(r['energy_per_token_j'], r['energy_per_token_j_ci95'], 1e3)} "
                         f"| {_fmt(r['saving_pct'], r['saving_pct_ci95'])} | {_fmt(r['accuracy'], r['accuracy_ci95'], 100.0)} |")
        out += lines + [""]
    elif not sweep:
        out += [summary_table_md(rows), ""]
    else:
        x_label = sweep.get("label", sweep["param"])
        for m in scn.get("plots") or _DEFAULT_PLOTS:
            out += [sweep_table_md(rows, m, x_label), ""]
    return "\n".join(out)


def run_benchmark(scenarios: str | os.PathLike, out_dir: str | os.PathLike, episodes: int | None = None,
                  agents: dict[str, str] | None = None, progress: bool = True, only: list[str] | None = None,
                  ray: bool = False, ray_address: str | None = None, ray_num_cpus: int | None = None,
                  ray_chunk: int = 8, threads: int = 1) -> dict[str, Any]:
    """Run every scenario of ``scenarios`` (YAML) and write ``episodes.csv``, ``summary.csv``, ``report.md``,
    ``meta.json`` and one PNG per scenario to ``out_dir``.  Returns a dict with records, summary and paths.

    With ``ray`` (or ``ray_address``) the sweep scenarios run as Ray tasks (:class:`RayPointRunner`: one per
    scenario point and chunk of ``ray_chunk`` seeds; ``threads`` torch threads each) on a local Ray instance
    of ``ray_num_cpus`` CPUs or the cluster at ``ray_address``; real-model (``hf_accuracy``) scenarios run in
    this process meanwhile.  The outputs are the same as without Ray."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    spec = load_scenario_file(scenarios)
    base_dir = Path(scenarios).resolve().parent
    repo_dir = Path.cwd()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = [load_saved_agent(n, p) for n, p in (agents or {}).items()]
    scns = [s for s in spec["scenarios"] if not only or s["name"] in only]
    default_eps = int(episodes if episodes is not None else spec.get("episodes", 10))
    seed0 = int(spec.get("seed", 1000))

    def n_eps(s):
        if episodes is not None:
            return int(episodes)
        return int(s.get("episodes", default_eps))

    import baselines

    def units(s):
        if s.get("kind") == "hf_accuracy":
            return n_eps(s)
        pol = s.get("policies") or list(baselines.available_policies())
        ag = len(loaded) if s.get("agents", True) else 0
        return len(_points(s)) * (len(pol) + ag)

    all_records: list[dict[str, Any]] = []
    all_summary: list[dict[str, Any]] = []
    md = [f"# siftmoe-gym benchmark report", "",
          f"Scenarios `{scenarios}`; every policy and agent runs on the same seeded episodes "
          f"(common random numbers); figures show the mean and a 95% Student-t confidence interval over episodes.", ""]
    files = {}
    runner = None
    prepared: dict[str, tuple[dict | None, list[str]]] = {}
    ray_tasks = 0
    try:
        if ray or ray_address:  # submit every sweep scenario first, so Ray is busy while we gather in order
            runner = RayPointRunner(ray_address, ray_num_cpus, ray_chunk, threads, agents)
            for scn in scns:
                if scn.get("kind") != "hf_accuracy":
                    pnotes: list[str] = []
                    plan = prepare_sweep_scenario(scn, pnotes, base_dir, out_dir)
                    prepared[scn["name"]] = (plan, pnotes)
                    if plan is not None:
                        runner.submit(scn, plan, [seed0 + i for i in range(n_eps(scn))])
            ray_tasks = runner.tasks
        with tqdm(total=sum(units(s) for s in scns), desc="compare", unit="run", disable=not progress) as bar:
            for scn in scns:
                ts = time.perf_counter()
                seeds = [seed0 + i for i in range(n_eps(scn))]
                notes: list[str] = []
                if scn.get("kind") == "hf_accuracy":
                    recs = run_hf_accuracy_scenario(scn, seeds, bar, notes, base_dir)
                elif runner is not None:
                    plan, notes = prepared[scn["name"]]
                    if plan is None:
                        bar.update(units(scn))
                        recs = []
                    else:
                        per_point = units(scn) // max(len(plan["points"]), 1)
                        recs = finish_sweep_scenario(runner.gather(scn["name"], lambda _l: bar.update(per_point)),
                                                     seeds, notes)
                else:
                    recs = run_sweep_scenario(scn, seeds, loaded, bar, notes, base_dir, out_dir)
                rows = summarize_records(recs)
                png = None
                if rows:
                    png_path = out_dir / f"{scn['name']}.png"
                    (plot_hf_accuracy if scn.get("kind") == "hf_accuracy" else plot_scenario)(scn, rows, png_path)
                    files[scn["name"]] = png_path
                    png = png_path.name
                n, fails = siftmoe_dominance(recs)
                if n:
                    notes.append(f"per-episode check: siftmoe used no more energy than {n - len(fails)} of {n} "
                                 f"(policy, episode) pairs that met every step's constraints"
                                 + (f"; FAILURES: {fails[:3]}" if fails else ""))
                notes.append(f"{len(seeds)} episodes per point, seeds {seeds[0]}..{seeds[-1]}; "
                             f"{time.perf_counter() - ts:.1f} s")
                md.append(_scenario_markdown(scn, rows, png, notes))
                all_records += recs
                all_summary += rows
    finally:
        if runner is not None:
            runner.close()
    wall = time.perf_counter() - t0
    paths = {"episodes_csv": out_dir / "episodes.csv", "summary_csv": out_dir / "summary.csv",
             "markdown": out_dir / "report.md", "meta": out_dir / "meta.json", **{f"png:{k}": v for k, v in files.items()}}
    _write_csv(paths["episodes_csv"], all_records, BENCH_RECORD_FIELDS)
    sum_fields = ["scenario", "env", "point", "x", "policy"] + [f"{m}{suf}" for m in SUMMARY_METRICS for suf in ("", "_ci95", "_n")]
    _write_csv(paths["summary_csv"], all_summary, sum_fields)
    md.append(f"Wall time {wall:.1f} s.")
    atomic_write_text(paths["markdown"], "\n".join(md) + "\n")
    n, fails = siftmoe_dominance(all_records)
    meta = {"scenarios": str(scenarios), "episodes": episodes, "agents": agents or {}, "wall_seconds": wall,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu_count": os.cpu_count(),
            "dominance_checks": n, "dominance_failures": fails,
            "ray": bool(ray or ray_address), "ray_address": ray_address, "ray_tasks": ray_tasks}
    atomic_write_json(paths["meta"], meta)
    return {"records": all_records, "summary": all_summary, "paths": paths, "wall_seconds": wall,
            "dominance": (n, fails)}


def replot(scenarios: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Re-render the PNGs of ``out_dir`` from its ``summary.csv`` (no re-evaluation)."""
    spec = load_scenario_file(scenarios)
    with open(Path(out_dir) / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in list(r.items()):
            if k not in ("scenario", "env", "point", "policy"):
                r[k] = float(v) if v not in ("", None) else math.nan
    written = []
    for scn in spec["scenarios"]:
        srows = [r for r in rows if r["scenario"] == scn["name"]]
        if srows:
            path = Path(out_dir) / f"{scn['name']}.png"
            (plot_hf_accuracy if scn.get("kind") == "hf_accuracy" else plot_scenario)(scn, srows, path)
            written.append(path)
    return written


def _parse_agents(items: list[str] | None) -> dict[str, str]:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise SystemExit(f"--agent expects NAME=PATH, got {it!r}")
        name, path = it.split("=", 1)
        if not name or not path:
            raise SystemExit(f"--agent expects NAME=PATH, got {it!r}")
        out[name] = path
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m agents.compare",
                                 description="Compare policies and saved agents on identical seeded episodes over the "
                                             "scenarios of a YAML file; write CSV, markdown and PNG plots.")
    ap.add_argument("--scenarios", required=True, help="scenario YAML (e.g. benchmarks/scenarios/default.yml)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--episodes", type=int, default=None, help="episodes (seeds) per point, overriding the file")
    ap.add_argument("--agent", action="append", default=[], metavar="NAME=PATH",
                    help="a saved SB3 agent (zip, or a run folder) to include; repeatable")
    ap.add_argument("--only", nargs="+", default=None, help="run only these scenarios (by name)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (agents, real model)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--replot", action="store_true", help="only re-render the PNGs of --out from its summary.csv")
    ap.add_argument("--ray", action="store_true",
                    help="run every (scenario point, chunk of seeds) as a Ray task on a local Ray instance "
                         "(needs the ray extra: pip install -e \".[ray]\"); same outputs as without --ray")
    ap.add_argument("--ray-address", default=None, metavar="ADDR",
                    help="join an existing Ray cluster (auto, or HOST:6379 from `ray start --head`); implies --ray")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    ap.add_argument("--ray-chunk", type=int, default=8, help="seeds per Ray task (default 8)")
    args = ap.parse_args(argv)
    if args.replot:
        for p in replot(args.scenarios, args.out):
            print(p)
        return 0
    if args.episodes is not None and args.episodes < 1:
        ap.error("--episodes must be >= 1")
    try:
        import torch

        torch.set_num_threads(max(1, args.threads))
    except ImportError:  # pragma: no cover
        pass
    if args.ray_chunk < 1:
        ap.error("--ray-chunk must be >= 1")
    if args.ray or args.ray_address:
        from .ray_utils import ray_missing_reason

        reason = ray_missing_reason()
        if reason:
            ap.error(f"--ray: {reason}")
    res = run_benchmark(args.scenarios, args.out, episodes=args.episodes, agents=_parse_agents(args.agent),
                        progress=not args.no_progress, only=args.only, ray=args.ray, ray_address=args.ray_address,
                        ray_num_cpus=args.num_cpus, ray_chunk=args.ray_chunk, threads=max(1, args.threads))
    n, fails = res["dominance"]
    print(f"wrote {args.out}: {len(res['records'])} episode records, {len(res['summary'])} summary rows, "
          f"{sum(1 for k in res['paths'] if k.startswith('png:'))} plots in {res['wall_seconds']:.1f} s; "
          f"siftmoe dominance: {n} comparisons, {len(fails)} failures")
    return 1 if fails else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
