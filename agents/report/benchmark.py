"""The benchmark report: every scenario of a YAML file, on identical seeded episodes, to CSV, markdown and PNG.

    python -m agents.compare --scenarios benchmarks/scenarios/default.yml --out DIR [--episodes N]
                             [--agent NAME=PATH ...] [--only NAME ...] [--ray] [--no-progress]

See :mod:`agents.report.scenarios` for the scenario file format.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..algos import AgentConfigError
from ..cliutil import OneLineParser, UsageError, at_least, check_writable, run_main
from ..models import load_saved_agent
from ..runio import atomic_write_json, atomic_write_text, write_csv
from .plots import plot_hf_accuracy, plot_scenario
from .records import (
    BENCH_RECORD_FIELDS, SCORE_FIELDS, SUMMARY_METRICS, return_dominance, siftmoe_dominance, summarize_records,
)
from .runners import RayPointRunner, finish_sweep_scenario, run_hf_accuracy_scenario, run_sweep_scenario
from .scenarios import load_scenario_file, prepare_sweep_scenario, sweep_units
from .tables import scenario_markdown

PROG = "python -m agents.compare"

def run_benchmark(scenarios: str | os.PathLike, out_dir: str | os.PathLike, episodes: int | None = None,
                  agents: dict[str, str] | None = None, progress: bool = True, only: list[str] | None = None,
                  ray: bool = False, ray_address: str | None = None, ray_num_cpus: int | None = None,
                  ray_chunk: int = 8, threads: int = 1) -> dict[str, Any]:
    """Run every scenario of ``scenarios`` (YAML) and write ``episodes.csv``, ``summary.csv``, ``report.md``,
    ``meta.json`` and one PNG per scenario to ``out_dir``.  Returns a dict with records, summary and paths.

    The whole input is checked first (the scenario file, ``only``, ``episodes``, the agents), before anything
    runs or ``out_dir`` is created: :class:`~agents.algos.AgentConfigError` names the problem.  Each scenario's
    results are written as soon as it finishes (its PNG; ``episodes.csv``, ``summary.csv``, ``report.md`` and
    ``meta.json`` rewritten atomically with every finished scenario), so an interrupted run keeps them.

    With ``ray`` (or ``ray_address``) the sweep scenarios run as Ray tasks (:class:`RayPointRunner`: one per
    scenario point and chunk of ``ray_chunk`` seeds; ``threads`` torch threads each) on a local Ray instance
    of ``ray_num_cpus`` CPUs or the cluster at ``ray_address``; real-model (``hf_accuracy``) scenarios run in
    this process meanwhile.  The outputs are the same as without Ray."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    spec = load_scenario_file(scenarios)
    names = [s["name"] for s in spec["scenarios"]]
    unknown = [n for n in (only or []) if n not in names]
    if unknown:
        raise AgentConfigError(f"--only: unknown scenario(s) {', '.join(map(repr, unknown))}; "
                               f"in {scenarios}: {', '.join(names)}")
    if episodes is not None and (isinstance(episodes, bool) or int(episodes) < 1):
        raise AgentConfigError(f"--episodes must be >= 1, got {episodes}")
    if int(ray_chunk) < 1:
        raise AgentConfigError(f"--ray-chunk must be >= 1, got {ray_chunk}")
    loaded = load_agents(agents)
    base_dir = Path(scenarios).resolve().parent
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scns = [s for s in spec["scenarios"] if not only or s["name"] in only]
    default_eps = int(episodes if episodes is not None else spec.get("episodes", 10))
    seed0 = int(spec.get("seed", 1000))

    def n_eps(s):
        if episodes is not None:
            return int(episodes)
        return int(s.get("episodes", default_eps))

    def units(s):
        if s.get("kind") == "hf_accuracy":
            return n_eps(s)
        return sweep_units(s, loaded)

    all_records: list[dict[str, Any]] = []
    all_summary: list[dict[str, Any]] = []
    md = ["# siftmoe-gym benchmark report", "",
          f"Scenarios `{scenarios}`; every policy and agent runs on the same seeded episodes "
          f"(common random numbers); figures show the mean and a 95% Student-t confidence interval over episodes.", ""]
    files: dict[str, Path] = {}
    paths = {"episodes_csv": out_dir / "episodes.csv", "summary_csv": out_dir / "summary.csv",
             "markdown": out_dir / "report.md", "meta": out_dir / "meta.json"}
    done: list[str] = []
    runner = None
    prepared: dict[str, tuple[dict | None, list[str]]] = {}
    ray_tasks = 0

    def write_outputs(final: bool) -> dict[str, Any]:
        """The report of the scenarios finished so far (every file replaced atomically)."""
        wall = time.perf_counter() - t0
        write_csv(paths["episodes_csv"], all_records, BENCH_RECORD_FIELDS)
        sum_fields = (["scenario", "env", "point", "x", "policy"] + SCORE_FIELDS
                      + [f"{m}{suf}" for m in SUMMARY_METRICS for suf in ("", "_ci95", "_n")])
        write_csv(paths["summary_csv"], all_summary, sum_fields)
        tail = ([f"Wall time {wall:.1f} s."] if final else
                [f"Partial report: {len(done)} of {len(scns)} scenarios finished ({', '.join(done) or 'none'}).", ""])
        atomic_write_text(paths["markdown"], "\n".join(md + tail) + "\n")
        n, fails = siftmoe_dominance(all_records)
        n_r, fails_r = return_dominance(all_records)
        meta = {"scenarios": str(scenarios), "episodes": episodes, "agents": agents or {}, "wall_seconds": wall,
                "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu_count": os.cpu_count(),
                "dominance_checks": n, "return_dominance_checks": n_r, "dominance_failures": fails + fails_r,
                "ray": bool(ray or ray_address), "ray_address": ray_address, "ray_tasks": ray_tasks,
                "complete": final, "finished_scenarios": list(done)}
        atomic_write_json(paths["meta"], meta)
        return {"wall": wall, "dominance": (n + n_r, fails + fails_r)}

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
        with tqdm(total=sum(units(s) for s in scns), desc="compare", unit="run",
                  disable=not progress or not sys.stderr.isatty()) as bar:  # a bar on a terminal only, as training
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
                n_r, fails_r = return_dominance(recs)
                if n_r:
                    notes.append(f"return check: no policy's mean return beat siftmoe's beyond the 95% CI of the paired "
                                 f"differences in {n_r - len(fails_r)} of {n_r} (policy, point) comparisons"
                                 + (f"; FAILURES: {fails_r[:3]}" if fails_r else ""))
                notes.append(f"{len(seeds)} episodes per point, seeds {seeds[0]}..{seeds[-1]}; "
                             f"{time.perf_counter() - ts:.1f} s")
                for n in notes:  # an agent left out of a scenario is said on the console too, not only in report.md
                    if n.startswith("agent "):
                        print(f"note: scenario {scn['name']}: {n}", file=sys.stderr)
                md.append(scenario_markdown(scn, rows, png, notes))
                all_records += recs
                all_summary += rows
                done.append(scn["name"])
                if len(done) < len(scns):
                    write_outputs(final=False)
    finally:
        if runner is not None:
            runner.close()
    res = write_outputs(final=True)
    paths.update({f"png:{k}": v for k, v in files.items()})
    return {"records": all_records, "summary": all_summary, "paths": paths, "wall_seconds": res["wall"],
            "dominance": res["dominance"]}


def load_agents(agents: dict[str, str] | None) -> list:
    """The saved agents ``{name: path}``, loaded; :class:`AgentConfigError` naming a missing or unloadable one."""
    from ..runio import resolve_model_path

    loaded = []
    for name, path in (agents or {}).items():
        try:
            resolve_model_path(path)
            loaded.append(load_saved_agent(name, path))
        except (AgentConfigError, ValueError) as exc:
            raise AgentConfigError(f"--agent {name}={path}: {exc}") from None
    return loaded


def replot(scenarios: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Re-render the PNGs of ``out_dir`` from its ``summary.csv`` (no re-evaluation)."""
    spec = load_scenario_file(scenarios)
    with open(Path(out_dir) / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in list(r.items()):
            if k == "feasible":
                if v:
                    r[k] = v == "True"
                else:
                    del r[k]
            elif k not in ("scenario", "env", "point", "policy"):
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
    out: dict[str, str] = {}
    for it in items or []:
        name, sep, path = it.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UsageError(f"--agent expects NAME=PATH, got {it!r}")
        if name in out:
            raise UsageError(f"--agent: the name {name!r} is given twice")
        import baselines

        if name in baselines.available_policies() or name == "lagrangian-bound":
            raise UsageError(f"--agent: the name {name!r} is a policy's; name the agent otherwise (e.g. ppo-{name})")
        out[name] = path
    return out


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """``python -m agents.compare`` (or ``prog``, e.g. ``train.py compare``): bad input is one line
    ``<prog>: error: ...`` and exit status 2, before anything runs; 1 when a dominance check fails."""
    return run_main(prog, lambda: _main(argv, prog))


def _main(argv: list[str] | None, prog: str = PROG) -> int:
    ap = OneLineParser(prog=prog,
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
    if not args.out.strip() or (Path(args.out).exists() and not Path(args.out).is_dir()):
        raise UsageError(f"--out must name a folder, got {args.out!r}")
    check_writable("--out", args.out)  # before any scenario runs (the report is written as they finish)
    at_least("--episodes", args.episodes, 1)
    at_least("--threads", args.threads, 1)
    at_least("--num-cpus", args.num_cpus, 1)
    at_least("--ray-chunk", args.ray_chunk, 1)
    agents = _parse_agents(args.agent)
    if args.replot:
        if not (Path(args.out) / "summary.csv").is_file():
            raise UsageError(f"--replot: no {Path(args.out) / 'summary.csv'} to plot from")
        for p in replot(args.scenarios, args.out):
            print(p)
        return 0
    if args.ray or args.ray_address:
        from ..ray_utils import ray_missing_reason

        reason = ray_missing_reason()
        if reason:
            raise UsageError(f"--ray: {reason}")
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:  # pragma: no cover
        pass
    res = run_benchmark(args.scenarios, args.out, episodes=args.episodes, agents=agents,
                        progress=not args.no_progress, only=args.only, ray=args.ray, ray_address=args.ray_address,
                        ray_num_cpus=args.num_cpus, ray_chunk=args.ray_chunk, threads=args.threads)
    n, fails = res["dominance"]
    print(f"wrote {args.out}: {len(res['records'])} episode records, {len(res['summary'])} summary rows, "
          f"{sum(1 for k in res['paths'] if k.startswith('png:'))} plots in {res['wall_seconds']:.1f} s; "
          f"siftmoe dominance: {n} comparisons, {len(fails)} failures")
    return 1 if fails else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
