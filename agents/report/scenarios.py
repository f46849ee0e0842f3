"""Scenario files of the benchmark report: parsing, sweep points, the traces a scenario needs.

    python -m agents.compare --scenarios benchmarks/scenarios/default.yml --out DIR [--episodes N]
                             [--agent NAME=PATH ...] [--no-progress]

A scenario file (YAML) holds defaults and a list of scenarios:

    episodes: 20            # episodes (seeds) per point, --episodes overrides
    seed: 1000              # seeds are seed, seed+1, ...; the same for every point and policy (CRN)
    scenarios:
      - name: eps_tradeoff
        title: "Decode: energy against the error budget"
        env: siftmoe_gym/Decode-v0
        config: {episode_tokens: 32}          # SystemConfig keys and env keys
        sweep: {param: eps_rel, values: [0.1, 0.25, 0.5], label: "error budget eps_rel"}
        policies: [topk, siftmoe, nearest-local]   # default: every registered baseline
        plots: [energy_per_token_mj, violation_pct]
        plot_policies: {violation_pct: [siftmoe, topk]}   # optional: fewer lines in one panel
        bound: lagrangian                     # fast fading: the offline Lagrangian bound per seed
        trace: path/to/trace.safetensors      # run on a real trace (skipped with a note if missing)
      - name: real_accuracy
        kind: hf_accuracy                     # next-token accuracy vs energy inside a real model
        model: tiny                           # siftmoe_gym.hf tiny model (cache) or a checkpoint folder
        eps: [0.1, 0.25, 0.5]

Sweep values may be numbers or lists (a distance window [lo, hi] is plotted at its mean); ``x``
gives explicit plot positions.  Every figure shows the mean over episodes and a 95% confidence
interval (Student t over the per-episode values).  Baselines act through ``action_mode="slots"``
(their exact assignments); saved agents act in their own action/observation modes on the same
episodes (same config and seeds); an agent whose spaces do not fit a point is skipped with a note.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..models import LoadedAgent

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
DEFAULT_PLOTS = ["energy_per_token_mj", "violation_pct"]


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


def expand_path(p: str | None, base: Path) -> Path | None:
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


def points(scn: dict) -> list[tuple[str, float, dict]]:
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
        trace_path = expand_path(scn["trace"], base_dir)
        if trace_path is None or not trace_path.is_file():
            notes.append(f"skipped: trace file {scn['trace']} not found")
            return None
        trace = str(trace_path)
    return {"env_id": env_id, "trace": trace, "policies": scenario_policies(scn),
            "policy_kwargs": scn.get("policy_kwargs") or {}, "use_agents": bool(scn.get("agents", True)),
            "points": points(scn)}


def sweep_units(scn: dict, agents: list[LoadedAgent]) -> int:
    """Progress units of a sweep scenario: one per (point, policy or agent)."""
    return len(points(scn)) * (len(scenario_policies(scn)) + (len(agents) if scn.get("agents", True) else 0))


def env_setting(env_id: str) -> str:
    """The setting (``decode``, ``prefill``, ``fastfading``) of a registered env id, without building it."""
    import gymnasium as gym

    import siftmoe_gym  # noqa: F401  (registers the environments)

    entry = gym.spec(env_id).entry_point
    if isinstance(entry, str):
        import importlib

        mod, _, name = entry.partition(":")
        entry = getattr(importlib.import_module(mod), name)
    return str(getattr(entry, "setting", "decode"))


def scenario_policies(scn: dict) -> list[str]:
    """The scenario's ``policies``, or every registered baseline that applies to its environment's setting."""
    if scn.get("policies"):
        return list(scn["policies"])
    import baselines

    return list(baselines.available_policies(env_setting(scn.get("env", "siftmoe_gym/Decode-v0"))))
