"""Running the benchmark report's scenarios: one scenario point, locally or as Ray tasks.

:func:`evaluate_point` is the unit of work: every policy, then the Lagrangian
bound, then every saved agent, on one scenario point's seeds.  The local
runner (:func:`run_sweep_scenario`) runs the points in order; :class:`RayPointRunner`
submits (point, chunk of seeds) tasks and puts the records back in the local
order, so both give the same records.  :func:`run_hf_accuracy_scenario` runs a
real model's next-token accuracy scenario in this process.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..evaluation import REFERENCE, TOPK
from ..models import LoadedAgent, base_env_id, load_saved_agent
from ..policy import AgentPolicy
from .records import BOUND_NAME, bound_note, episode_record, fill_relative
from .scenarios import expand_path, prepare_sweep_scenario, sweep_units

ACTION_MODE_BASELINES = "slots"


def agent_env(agent: LoadedAgent, env_id: str, env_cfg: dict, trace):
    """The agent's env for a scenario point, or a reason string when it does not apply."""
    import gymnasium as gym

    if agent.env_id and base_env_id(agent.env_id) != base_env_id(env_id):
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


def episode_instances(env, seed: int) -> list:
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
            point_records.append(episode_record(st, **common, policy=name))
        tick(f"{scn['name']} {label} {name}")
    if scn.get("bound") == "lagrangian":
        from baselines.fastfading import lagrangian_bound

        cfgd = env.unwrapped.system.config
        for s in seeds:
            b = lagrangian_bound(episode_instances(env, s), eps_max_factor=float(cfgd.eps_max_factor))
            # an episode whose average budget cannot be met even at least error has no finite bound:
            # leave it out of the bound's mean (and say how many were left out)
            point_records.append({**common, "policy": BOUND_NAME, "seed": int(s),
                                  "mean_norm_energy": b.value if b.feasible else math.nan,
                                  "within_constraints": b.feasible})
    env.close()
    for agent in (agents if plan["use_agents"] else []):
        try:
            aenv = agent_env(agent, env_id, cfg, trace)
        except Exception as exc:
            aenv = f"agent {agent.name}: cannot build its env: {type(exc).__name__}: {exc}"
        if isinstance(aenv, str):
            notes.append(aenv if "was trained on" in aenv else f"{aenv} (point {label})")
            tick(f"{scn['name']} {label} {agent.name}")
            continue
        policy = AgentPolicy(agent.model, aenv)
        for s in seeds:
            point_records.append(episode_record(run_episode(aenv, policy, s), **common, policy=agent.name))
        aenv.close()
        tick(f"{scn['name']} {label} {agent.name}")
    fill_relative(point_records)
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
        bound_note(point_records, label, notes)
        records += point_records
    if bound_out:
        notes.append("Lagrangian bound left out on episodes whose average budget is unattainable even at least "
                     "error (no finite bound): " + ", ".join(f"{k}: {v} of {len(seeds)}" for k, v in bound_out.items()))
    return records


def run_sweep_scenario(scn: dict, seeds: list[int], agents: list[LoadedAgent], bar, notes: list[str],
                       base_dir: Path, out_dir: Path | None = None) -> list[dict[str, Any]]:
    plan = prepare_sweep_scenario(scn, notes, base_dir, out_dir)
    if plan is None:
        bar.update(sweep_units(scn, agents))
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
        from ..ray_utils import init_ray, require_ray

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
    path = default_dir() if spec == "tiny" else expand_path(spec, base_dir)
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
