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

:func:`load_scenario_file` checks the whole file before anything runs (:func:`check_scenarios`): unknown keys
are refused with the accepted ones (:data:`TOP_KEYS`, :data:`SWEEP_SCENARIO_KEYS`, :data:`HF_SCENARIO_KEYS`,
:data:`SWEEP_KEYS`), and so are unknown env ids, policies that are not registered or do not apply to the env's
setting, a sweep ``param`` that is not a config key of the env, values the env refuses, and counts below 1.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..algos import AgentConfigError
from ..envs import env_class, env_setting
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


TOP_KEYS = ("episodes", "seed", "scenarios")
"""Keys of a scenario file's top level."""
SWEEP_SCENARIO_KEYS = ("name", "title", "description", "kind", "env", "config", "sweep", "policies", "policy_kwargs",
                       "plots", "bar_plots", "plot_policies", "bound", "trace", "trace_tokens", "quantile",
                       "link_hidden_size", "agents", "episodes", "yscale")
"""Keys of a sweep scenario (``kind: sweep``, the default)."""
HF_SCENARIO_KEYS = ("name", "title", "description", "kind", "model", "config", "eps", "episodes", "calibration_tokens",
                    "eval_tokens", "window", "threads", "quantile", "link_hidden_size")
"""Keys of a real-model scenario (``kind: hf_accuracy``)."""
SWEEP_KEYS = ("param", "values", "label", "x", "xscale")
"""Keys of a scenario's ``sweep``."""
AXIS_SCALES = ("linear", "log", "symlog", "logit")


class ScenarioError(AgentConfigError):
    """A scenario file that cannot run as written (its message names the scenario and the key)."""


def load_scenario_file(path: str | os.PathLike, build_envs: bool = True) -> dict[str, Any]:
    """The scenario file at ``path``, checked as a whole before anything runs (:func:`check_scenarios`):
    :class:`ScenarioError` (a ``ValueError``) naming the scenario and the key of the first problem."""
    from siftmoe_gym import yamlio

    p = Path(path)
    if not p.is_file():
        raise ScenarioError(f"--scenarios: {'a folder, not a file' if p.is_dir() else 'no such file'}: {path}")
    try:
        data = yamlio.read(p, str(path))  # a key given twice is refused, 1e-3 is a number
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None
    if isinstance(data, list):
        data = {"scenarios": data}
    return check_scenarios(data if data is not None else {}, str(path), build_envs)


def _fail(where: str, msg: str):
    raise ScenarioError(f"{where}: {msg}")


def _check_keys(where: str, d: dict, accepted) -> None:
    unknown = [k for k in d if k not in accepted]
    if unknown:
        _fail(where, f"unknown key(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(accepted)}")


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_int(where: str, key: str, v, low: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        _fail(where, f"{key} must be an integer >= {low}, got {v!r}")


def _check_share(where: str, key: str, v) -> None:
    if not _is_num(v) or not 0 < v <= 1:
        _fail(where, f"{key} must be a number in (0, 1], got {v!r}")


def _check_names(where: str, key: str, v, known, what: str) -> list[str]:
    if not isinstance(v, list) or not v or not all(isinstance(n, str) for n in v):
        _fail(where, f"{key} must be a non-empty list of names, got {v!r}")
    bad = [n for n in v if n not in known]
    if bad:
        _fail(where, f"{key}: unknown {what} {', '.join(map(repr, bad))}; known: {', '.join(known)}")
    twice = sorted({n for n in v if v.count(n) > 1})
    if twice:
        _fail(where, f"{key}: {', '.join(map(repr, twice))} listed twice")
    return v


def check_scenarios(data: Any, source: str = "scenario file", build_envs: bool = True) -> dict[str, Any]:
    """Check a whole scenario file's content; returns it unchanged or raises :class:`ScenarioError`.

    Every key must be known (top level: :data:`TOP_KEYS`; per kind: :data:`SWEEP_SCENARIO_KEYS`,
    :data:`HF_SCENARIO_KEYS`; sweeps: :data:`SWEEP_KEYS`), names unique, env ids registered, policies registered
    and applicable to the env's setting, sweep parameters config keys of the env with usable values, counts
    positive.  With ``build_envs`` every point of a sweep scenario without a trace is built once (about 50 ms
    each), so a config value the environment refuses is reported here, not after earlier scenarios ran."""
    if not isinstance(data, dict):
        _fail(source, f"expected a mapping with a 'scenarios' list, got {type(data).__name__}")
    _check_keys(source, data, TOP_KEYS)
    if "episodes" in data:
        _check_int(source, "episodes", data["episodes"], 1)
    if "seed" in data:
        _check_int(source, "seed", data["seed"], 0)
    scns = data.get("scenarios")
    if not isinstance(scns, list) or not scns:
        _fail(source, "expected a non-empty 'scenarios' list")
    seen: set[str] = set()
    for i, scn in enumerate(scns):
        where = f"{source}: scenarios[{i}]"
        if not isinstance(scn, dict):
            _fail(where, f"expected a mapping, got {scn!r}")
        name = scn.get("name")
        if not isinstance(name, str) or not name.strip():
            _fail(where, f"every scenario needs a 'name' (a non-empty string), got {name!r}")
        if ("/" in name or "\\" in name or name.startswith(".") or name != name.strip() or not name.isprintable()
                or len(name.encode()) > 100):
            _fail(where, f"a scenario name names its files in --out: a plain name (no '/' or '\\', not starting with "
                         f"'.', no outer spaces or control characters, at most 100 bytes), got {name!r}")
        if name in seen:
            _fail(where, f"scenario name {name!r} is used twice")
        seen.add(name)
        where = f"{source}: scenario {name!r}"
        kind = scn.get("kind", "sweep")
        if kind == "hf_accuracy":
            _check_hf_scenario(where, scn)
        elif kind == "sweep":
            _check_sweep_scenario(where, scn, build_envs)
        else:
            _fail(where, f"unknown kind {kind!r} (sweep or hf_accuracy)")
    return data


def _check_common(where: str, scn: dict, accepted) -> None:
    _check_keys(where, scn, accepted)
    for key in ("title", "description", "model", "trace"):
        if key in scn and (not isinstance(scn[key], str) or not scn[key].strip()):
            _fail(where, f"{key} must be a non-empty string, got {scn[key]!r}")
    for key in ("episodes", "calibration_tokens", "eval_tokens", "window", "threads", "trace_tokens", "link_hidden_size"):
        if key in scn:
            _check_int(where, key, scn[key], 1)
    if "quantile" in scn:
        _check_share(where, "quantile", scn["quantile"])
    if scn.get("config") is not None and not isinstance(scn["config"], dict):
        _fail(where, f"config must be a mapping of config keys, got {scn['config']!r}")


def _check_hf_scenario(where: str, scn: dict) -> None:
    _check_common(where, scn, HF_SCENARIO_KEYS)
    eps = scn.get("eps", [0.1])
    if not isinstance(eps, list) or not eps or not all(_is_num(e) and e > 0 for e in eps):
        _fail(where, f"eps must be a non-empty list of positive numbers, got {eps!r}")


def config_keys(env_id: str) -> list[str]:
    """The keys a ``config`` mapping of ``env_id`` accepts: the environment's own and the system's."""
    from siftmoe_gym.envs.config import SYSTEM_KEYS

    cls = env_class(env_id)
    return sorted(set(cls.default_config()) | set(SYSTEM_KEYS))


def _check_sweep_scenario(where: str, scn: dict, build_envs: bool) -> None:
    import baselines

    _check_common(where, scn, SWEEP_SCENARIO_KEYS)
    env_id = scn.get("env", "siftmoe_gym/Decode-v0")
    if not isinstance(env_id, str):
        _fail(where, f"env must be an environment id, got {env_id!r}")
    try:
        setting = env_setting(env_id)
    except AgentConfigError as exc:
        _fail(where, f"env: {exc}")
    keys = config_keys(env_id)
    bad = [k for k in (scn.get("config") or {}) if k not in keys]
    if bad:
        _fail(where, f"config: unknown key(s) {', '.join(map(repr, bad))} for {env_id}; accepted: {', '.join(keys)}")
    sweep = scn.get("sweep")
    if sweep is not None:
        _check_sweep(where, sweep, keys, env_id)
        node = scn.get("config") or {}
        for p in sweep["param"].split("."):  # the swept key also fixed in config: one of the two would be lost
            node = node.get(p) if isinstance(node, dict) else None
        if node is not None:
            _fail(where, f"sweep.param {sweep['param']!r} is also set in config ({node!r}): the sweep would "
                         "override it; remove it from config")
    fits = list(baselines.available_policies(setting))
    policies = fits
    if "policies" in scn:
        policies = _check_names(where, "policies", scn["policies"], list(baselines.available_policies()), "policy")
        wrong = [p for p in policies if p not in fits]
        if wrong:
            _fail(where, f"policies: {', '.join(map(repr, wrong))} do(es) not apply to {env_id} ({setting}); "
                         f"available there: {', '.join(fits)}")
    for key in ("plots", "bar_plots"):
        if key in scn:
            _check_names(where, key, scn[key], list(BENCH_METRICS), "plot metric")
    pp = scn.get("plot_policies")
    if pp is not None:
        if not isinstance(pp, dict):
            _fail(where, f"plot_policies must map plot metrics to policy lists, got {pp!r}")
        _check_keys(f"{where}: plot_policies", pp, scn.get("plots") or DEFAULT_PLOTS)
        for m, names in pp.items():
            _check_names(where, f"plot_policies.{m}", names, policies, "policy of this scenario")
    kw = scn.get("policy_kwargs")
    if kw is not None:
        if not isinstance(kw, dict) or not all(isinstance(v, dict) for v in kw.values()):
            _fail(where, f"policy_kwargs must map policy names to keyword mappings, got {kw!r}")
        _check_keys(f"{where}: policy_kwargs", kw, policies)
    if "bound" in scn and (scn["bound"] != "lagrangian" or setting != "fastfading"):
        _fail(where, f"bound: only 'lagrangian', and only for fast-fading environments (got {scn['bound']!r} "
                     f"on {env_id})")
    if "agents" in scn and not isinstance(scn["agents"], bool):
        _fail(where, f"agents must be true or false, got {scn['agents']!r}")
    if "yscale" in scn and scn["yscale"] not in AXIS_SCALES:
        _fail(where, f"yscale must be one of {', '.join(AXIS_SCALES)}, got {scn['yscale']!r}")
    if build_envs and not scn.get("trace"):
        _build_points(where, scn, env_id, kw or {})


def _check_sweep(where: str, sweep, keys: list[str], env_id: str) -> None:
    if not isinstance(sweep, dict):
        _fail(where, f"sweep must be a mapping with param and values, got {sweep!r}")
    _check_keys(f"{where}: sweep", sweep, SWEEP_KEYS)
    param = sweep.get("param")
    if not isinstance(param, str) or param.split(".")[0] not in keys:
        _fail(where, f"sweep.param {param!r} is not a config key of {env_id}; accepted: {', '.join(keys)}")
    values = sweep.get("values")
    if not isinstance(values, list) or not values:
        _fail(where, f"sweep.values must be a non-empty list, got {values!r}")
    numeric = True
    for v in values:
        if isinstance(v, list):
            ok = bool(v) and all(_is_num(a) for a in v)
        elif isinstance(v, str):
            ok, numeric = bool(v.strip()), False
        else:
            ok = _is_num(v)
        if not ok:
            _fail(where, f"sweep.values: {v!r} is not a number, a list of numbers or a name")
    labels = [_label(v) for v in values]
    if len(set(labels)) != len(labels):
        _fail(where, f"sweep.values: a value is listed twice ({values!r})")
    xs = sweep.get("x")
    if xs is not None:
        if not isinstance(xs, list) or len(xs) != len(values) or not all(_is_num(x) for x in xs):
            _fail(where, f"sweep.x must be a list of {len(values)} numbers (one per value), got {xs!r}")
    elif not numeric:
        _fail(where, "sweep.x (plot positions) is needed when sweep.values are names")
    if "label" in sweep and not isinstance(sweep["label"], str):
        _fail(where, f"sweep.label must be a string, got {sweep['label']!r}")
    if "xscale" in sweep and sweep["xscale"] not in AXIS_SCALES:
        _fail(where, f"sweep.xscale must be one of {', '.join(AXIS_SCALES)}, got {sweep['xscale']!r}")


def _build_points(where: str, scn: dict, env_id: str, policy_kwargs: dict) -> None:
    """Build every point's environment (the env checks each config value) and the policies given options."""
    import gymnasium as gym

    import baselines

    for i, (label, _x, cfg) in enumerate(points(scn)):
        at = f"{where}: point {label}" if scn.get("sweep") else f"{where}: config"
        try:
            env = gym.make(env_id, config=cfg, action_mode="slots")
        except Exception as exc:  # the env's own message names the key and the accepted range
            _fail(at, f"{type(exc).__name__}: {exc}")
        try:
            for name, kw in (policy_kwargs.items() if i == 0 else ()):
                try:
                    baselines.get_policy(name, env, **kw)
                except Exception as exc:
                    _fail(where, f"policy_kwargs.{name}: {type(exc).__name__}: {exc}")
        finally:
            env.close()


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


def _label(v) -> str:
    """A sweep value as a point label (``0.25``, ``50-100``, a name as it is)."""
    return "-".join(f"{a:g}" for a in v) if isinstance(v, (list, tuple)) else f"{v:g}" if isinstance(v, (int, float)) else str(v)


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
        label = _label(v)
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


def scenario_policies(scn: dict) -> list[str]:
    """The scenario's ``policies``, or every registered baseline that applies to its environment's setting."""
    if scn.get("policies"):
        return list(scn["policies"])
    import baselines

    return list(baselines.available_policies(env_setting(scn.get("env", "siftmoe_gym/Decode-v0"))))
