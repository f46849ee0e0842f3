#!/usr/bin/env python
"""Training benchmark: agents against the certified optimum in every setting, several seeds, learning curves.

For every (environment, algorithm, seed), trains through :func:`agents.training.train` with the project's YAML
hyperparameters (``agents/hyperparams/<algo>.yml``), evaluating every ``--eval-freq`` steps on the same
seeded episodes against ``siftmoe`` (the certified optimum of the setting) and ``topk``.  Per evaluation it
keeps the regret ``E / E_siftmoe - 1``, the excess violation rate (share of steps over a per-step budget
beyond siftmoe's on the same episodes), the score and feasibility.  Across seeds it reports the mean and a
95% t-interval at every evaluation point, and the final evaluation against the issue's targets (regret <= 1%
Decode, 5% Prefill, 10% FastFading, excess violations <= 1% of steps).

    python benchmarks/bench_training.py --envs siftmoe_gym/Decode-v0 siftmoe_gym/Prefill-v0 \\
        siftmoe_gym/FastFading-v0 --algos ppo ppo_lag --seeds 0 1 2 --steps 1000000 --threads 1

Writes ``<out>.json`` (every run, written as each finishes; runs already in it are skipped, so a stopped
benchmark resumes), ``<out>.md`` (the table) and ``<out>.png`` (regret and excess violations against
steps, mean and 95% band per algorithm, one column per setting).  ``--report-only`` rebuilds the table and
figure from the JSON file(s) given with ``--merge`` (runs of several processes).
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGETS = {"Decode": 0.01, "Prefill": 0.05, "FastFading": 0.10}
"""Regret targets of issue 14 per setting (the mean over seeds of the final evaluation)."""
EXCESS_MAX = 0.01
SEEDS_FOR_TARGET = 3
"""The targets are means over this many seeds; a row with fewer says so."""
CURVE_KEYS = ("timesteps", "wall_s", "regret", "excess_violation_rate", "score", "feasible", "any_violation_rate",
              "siftmoe_any_violation_rate", "mean_return")


def setting_of(env_id: str) -> str:
    name = env_id.split("/")[-1]
    for key in TARGETS:
        if name.startswith(key):
            return key
    raise ValueError(f"unknown setting of {env_id!r}")


def name_of(run: dict) -> str:
    """The row a run belongs to: its ``--label``, else ``<algo> (<policy>)`` (runs saved before the policy was
    recorded trained ``MlpPolicy``)."""
    return run.get("label") or f"{run['algo']} ({run.get('policy', 'MlpPolicy')})"


def policy_of(algo: str, env_id: str, overrides) -> str:
    """The ``policy`` a run of ``algo`` on ``env_id`` trains with: the YAML's, or ``--hyperparams``'s."""
    from agents.hyperparams import resolve_hyperparams, split_hyperparams

    _, kwargs = split_hyperparams(algo, resolve_hyperparams(algo, env_id, list(overrides)))
    return str(kwargs["policy"])


def row_name(algo: str, env_id: str, args) -> str:
    return args.label or f"{algo} ({policy_of(algo, env_id, args.hyperparams)})"


def run_one(env_id: str, algo: str, seed: int, args) -> dict:
    from agents.training import train

    t0 = time.perf_counter()
    res = train(
        env_id=env_id, algo=algo, steps=args.steps, seed=seed, logdir=args.logdir,
        run_name=f"bench_{env_id.split('/')[-1]}_{algo}_s{seed}_{int(time.time())}",
        eval_freq=args.eval_freq, eval_episodes=args.eval_episodes, progress_bar=False,
        baselines=["siftmoe", "topk"], threads=args.threads, print_table=False, hyperparams=list(args.hyperparams),
    )
    curve = [{k: h.get(k) for k in CURVE_KEYS} for h in res.history]
    return {"env_id": env_id, "algo": algo, "policy": policy_of(algo, env_id, args.hyperparams),
            "label": row_name(algo, env_id, args), "seed": seed, "steps": res.timesteps,
            "wall_s": time.perf_counter() - t0, "run_dir": str(res.run_dir), "curve": curve}


def mean_ci(values):
    """``(mean, low, high)``: the mean and its 95% t-interval (the interval is the mean alone for one value)."""
    from scipy import stats

    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return math.nan, math.nan, math.nan
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, m, m
    sd = (sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5
    half = stats.t.ppf(0.975, len(vals) - 1) * sd / len(vals) ** 0.5
    return m, m - half, m + half


def groups(runs):
    out: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        out.setdefault((r["env_id"], name_of(r)), []).append(r)
    return out


def aggregate(group: list[dict]) -> dict:
    """Per evaluation index (the schedule is the same for every seed), mean and 95% CI of regret and excess."""
    n = min(len(r["curve"]) for r in group)
    pts = []
    for i in range(n):
        rows = [r["curve"][i] for r in group]
        pts.append({"timesteps": rows[0]["timesteps"],
                    "regret": mean_ci([x["regret"] for x in rows]),
                    "excess": mean_ci([x["excess_violation_rate"] for x in rows])})
    finals = [r["curve"][-1] for r in group]
    return {"points": pts, "final_regret": mean_ci([f["regret"] for f in finals]),
            "final_excess": mean_ci([f["excess_violation_rate"] for f in finals]),
            "final_score": mean_ci([f["score"] for f in finals]),
            "feasible": sum(bool(f["feasible"]) for f in finals), "seeds": sorted(r["seed"] for r in group),
            "steps": max(r["steps"] for r in group), "wall_s": mean_ci([r["wall_s"] for r in group])[0]}


def pct(triple, digits=1, n=2) -> str:
    m, lo, hi = triple
    if not math.isfinite(m):
        return "n/a"
    if n < 2:
        return f"{100 * m:.{digits}f} (one seed: no CI)"
    return f"{100 * m:.{digits}f} [{100 * lo:.{digits}f}, {100 * hi:.{digits}f}]"


def _count(value) -> str:
    return f"{value:,}" if isinstance(value, int) else "(not recorded)"


def to_markdown(runs, meta) -> str:
    cmds = meta.get("commands") or [meta["command"]]
    lines = [
        "Commands (each wrote one result file; the last merged them into this table): " +
        "; ".join(f"`{c}`" for c in cmds) + "  ",
        f"Machine: {meta.get('machine', '(not recorded)')}; torch threads {meta.get('threads', '(not recorded)')}; "
        f"evaluation every {_count(meta.get('eval_freq'))} steps on {meta.get('eval_episodes', '(not recorded)')} "
        "seeded episodes (the same for every run).",
        "",
        "| setting | algorithm | seeds | steps | final regret % (95% CI) | excess viol. % (95% CI) | score | feasible runs | target (regret, excess <= 1%) | wall per run (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = list(TARGETS)
    for (env_id, algo), group in sorted(groups(runs).items(), key=lambda kv: (order.index(setting_of(kv[0][0])), kv[0])):
        a = aggregate(group)
        tgt = TARGETS[setting_of(env_id)]
        met = a["final_regret"][0] <= tgt and a["final_excess"][0] <= EXCESS_MAX and a["feasible"] == len(group)
        few = f"; {len(group)} of the target's {SEEDS_FOR_TARGET} seeds" if len(group) < SEEDS_FOR_TARGET else ""
        lines.append(
            f"| {env_id.split('/')[-1]} | {algo} | {len(group)} | {a['steps']:,} | {pct(a['final_regret'], n=len(group))} | "
            f"{pct(a['final_excess'], 2, n=len(group))} | {a['final_score'][0]:.3f} | {a['feasible']}/{len(group)} | "
            f"{'met' if met else 'not met'} (<= {100 * tgt:.0f}%){few} | {a['wall_s']:.0f} |")
    lines += ["", "regret: E / E_siftmoe - 1 on the evaluation episodes (siftmoe: the certified optimum of the "
              "setting); excess viol.: share of steps over a per-step budget (FastFading: the cap) beyond "
              "siftmoe's; score: siftmoe's mean return / the agent's; feasible: excess <= 1% (FastFading also "
              "every layer's average within budget); mean over seeds, 95% t-interval."]
    return "\n".join(lines)


def plot(runs, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    g = groups(runs)
    settings = [k for k in TARGETS if any(setting_of(e) == k for e, _ in g)]  # one column per setting
    lines = sorted(g, key=lambda ea: (ea[1], ea[0]))
    fig, axes = plt.subplots(2, len(settings), figsize=(4.6 * len(settings), 7.6), squeeze=False)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {algo: cycle[i % len(cycle)] for i, algo in enumerate(sorted({a for _, a in lines}))}  # one per algorithm
    steps_fmt = FuncFormatter(lambda x, _: f"{x / 1e6:.1f}M" if x >= 1e6 else f"{x / 1e3:.0f}k")
    for j, setting in enumerate(settings):
        for ea in lines:
            if setting_of(ea[0]) != setting:
                continue
            a = aggregate(g[ea])
            x = [p["timesteps"] for p in a["points"]]
            for row, key in ((0, "regret"), (1, "excess")):
                m = [100 * p[key][0] for p in a["points"]]
                lo = [100 * p[key][1] for p in a["points"]]
                hi = [100 * p[key][2] for p in a["points"]]
                ax = axes[row][j]
                ax.plot(x, m, color=colors[ea[1]], label=f"{ea[1]} ({len(g[ea])} seed{'s' if len(g[ea]) > 1 else ''})")
                ax.fill_between(x, lo, hi, color=colors[ea[1]], alpha=0.2)
        tgt = TARGETS[setting]
        limits = (axes[0][j].axhline(100 * tgt, color="k", ls="--", lw=1, label=f"target {100 * tgt:.0f}%"),
                  axes[1][j].axhline(100 * EXCESS_MAX, color="k", ls="--", lw=1, label="limit 1%"))
        axes[0][j].set_title(f"{setting}-v0")
        axes[0][j].set_ylabel("regret vs the optimum")
        axes[1][j].set_ylabel("excess violations (of steps)")
        axes[1][j].set_xlabel("environment steps")
        for row in (0, 1):
            axes[row][j].xaxis.set_major_formatter(steps_fmt)
            axes[row][j].grid(alpha=0.3)
            axes[row][j].legend(handles=[limits[row]], fontsize=7, loc="upper right")  # the lines: one legend below
        axes[0][j].yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}%"))
        axes[1][j].yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}%"))
    seen: dict[str, object] = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if not label.startswith("target"):
                seen.setdefault(label, handle)
    fig.legend(list(seen.values()), list(seen.keys()), loc="lower center", ncol=min(3, max(len(seen), 1)), fontsize=8,
               title="dqn acts on the Discrete(2**M) ids of each setting", title_fontsize=8)
    fig.suptitle("Learning curves: mean over seeds, 95% band (fixed seeded evaluation episodes)", fontsize=10)
    rows_of_legend = -(-len(seen) // 3)
    fig.tight_layout(rect=(0, 0.05 + 0.035 * rows_of_legend, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


RUN_KEYS = {"env_id": str, "algo": str, "seed": int, "steps": int, "wall_s": (int, float), "curve": list}


def load_results(path: Path) -> tuple[dict, list[dict]]:
    """``(meta, runs)`` of a result file; ``ValueError`` (one line) unless every run has the fields the report reads."""
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise ValueError("not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise ValueError("not a bench_training result file (no list of runs)")
    for i, r in enumerate(data["runs"]):
        if not isinstance(r, dict) or any(not isinstance(r.get(k), t) for k, t in RUN_KEYS.items()):
            raise ValueError(f"run {i} lacks one of {sorted(RUN_KEYS)} or has a wrong type")
        if not r["curve"] or any(not isinstance(c, dict) or any(k not in c for k in CURVE_KEYS) for c in r["curve"]):
            raise ValueError(f"run {i}'s curve is empty or lacks one of {list(CURVE_KEYS)}")
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    return meta, data["runs"]


def check_plan(p, args) -> None:
    """Every environment id, algorithm and seed checked before any training (one-line errors)."""
    import gymnasium as gym

    import siftmoe_gym  # noqa: F401  (registers the ids)
    from agents.algos import AgentConfigError, canonical_algo, check_compatible

    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds: {args.seeds} repeats a seed")
    if min(args.seeds) < 0:
        p.error(f"--seeds: seeds must be >= 0, got {min(args.seeds)}")
    try:
        args.algos = [canonical_algo(a) for a in args.algos]
    except AgentConfigError as exc:
        p.error(f"--algos: {exc}")
    if len(set(args.algos)) != len(args.algos):
        p.error(f"--algos: {args.algos} repeats an algorithm")
    if args.label is not None and (len(args.algos) != 1 or not args.label.strip()):
        p.error(f"--label: names the rows of one algorithm; give one --algos and a non-empty label, got "
                f"{args.label!r} for {args.algos}")
    from agents.hyperparams import parse_overrides

    try:
        parse_overrides(args.hyperparams)
    except (AgentConfigError, ValueError) as exc:
        p.error(str(exc) if str(exc).startswith("--hyperparams") else f"--hyperparams: {exc}")
    for env_id in args.envs:
        try:
            setting_of(env_id)
            space = gym.spec(env_id) and gym.make(env_id).action_space
        except (ValueError, gym.error.Error) as exc:
            p.error(f"--envs: {env_id}: {exc}")
        for algo in args.algos:
            try:
                check_compatible(algo, space, env_id)
            except AgentConfigError as exc:
                p.error(f"--algos: {exc}")
            if args.report_only:
                continue
            try:  # every run's model built once with its hyperparameters, the overrides included, before any training
                from agents import check_builds

                check_builds(algo, env_id, list(args.hyperparams))
            except AgentConfigError as exc:
                p.error(f"--hyperparams: {env_id} {algo}: {exc}")


MARK_BEGIN = "<!-- bench_training:begin -->"
MARK_END = "<!-- bench_training:end -->"


def check_doc(path: Path) -> str:
    """The Markdown file's text; ``ValueError`` unless it has the markers once each, in order."""
    text = path.read_text()
    if text.count(MARK_BEGIN) != 1 or text.count(MARK_END) != 1 or text.index(MARK_BEGIN) > text.index(MARK_END):
        raise ValueError(f"{path} needs the lines {MARK_BEGIN!r} and {MARK_END!r} once each, in this order")
    return text


def write_doc(path: Path, runs, meta) -> None:
    """Replace what sits between the markers of ``path`` by the table and the figure (``<stem>_curves.png``)."""
    text = check_doc(path)
    fig = path.with_name(path.stem + "_curves.png")
    plot(runs, fig)
    body = f"{to_markdown(runs, meta)}\n\n![learning curves]({fig.name})\n"
    head, rest = text.split(MARK_BEGIN)
    _, tail = rest.split(MARK_END)
    path.write_text(f"{head}{MARK_BEGIN}\n{body}{MARK_END}{tail}")


def main(argv=None) -> int:
    from siftmoe_gym.cli import OneLineParser, at_least, run_main

    def body():
        p = OneLineParser(prog="bench_training.py", description=__doc__.split("\n\n")[0])
        p.add_argument("--envs", nargs="+", default=["siftmoe_gym/Decode-v0", "siftmoe_gym/Prefill-v0",
                                                      "siftmoe_gym/FastFading-v0"])
        p.add_argument("--algos", nargs="+", default=["ppo", "ppo_lag"])
        p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
        p.add_argument("--steps", type=int, default=1_000_000)
        p.add_argument("--hyperparams", nargs="+", default=[], metavar="KEY=VALUE",
                       help="override the YAML hyperparameters of every run (as train.py --hyperparams)")
        p.add_argument("--label", default=None,
                       help="the runs' row name in the report (one --algos only), e.g. 'ppo (MlpPolicy)'")
        p.add_argument("--eval-freq", type=int, default=100_000)
        p.add_argument("--eval-episodes", type=int, default=8)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--logdir", default="/tmp/siftmoe_bench_runs")
        p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_training"))
        p.add_argument("--merge", nargs="*", default=[], help="more result JSON files to include in the report")
        p.add_argument("--report-only", action="store_true", help="rebuild <out>.md/.png from the JSON files")
        p.add_argument("--doc", default=None,
                       help="also write the table and figure into this Markdown file, between the lines "
                            f"{MARK_BEGIN!r} and {MARK_END!r} (the figure beside it as <name>_curves.png)")
        args = p.parse_args(argv)
        for name in ("steps", "eval_freq", "eval_episodes", "threads"):
            at_least("--" + name.replace("_", "-"), getattr(args, name), 1)
        check_plan(p, args)
        if args.doc:
            try:
                check_doc(Path(args.doc))
            except (OSError, ValueError) as exc:
                p.error(f"--doc: {exc}")
        merged = []
        for f in args.merge:
            try:
                merged.append(load_results(Path(f)))
            except (OSError, ValueError) as exc:
                p.error(f"--merge: {f}: {exc}")
        out = Path(args.out)
        jpath = out.with_suffix(".json")
        settings = {"steps": args.steps, "threads": args.threads, "eval_freq": args.eval_freq,
                    "eval_episodes": args.eval_episodes, "hyperparams": list(args.hyperparams)}
        meta = {"command": " ".join(["python", "benchmarks/bench_training.py"] + list(sys.argv[1:] if argv is None else argv)),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs visible", **settings}
        runs = []
        if jpath.exists():
            try:
                meta, runs = load_results(jpath)
            except (OSError, ValueError) as exc:
                p.error(f"--out: {jpath}: {exc}")
            differ = [k for k, v in settings.items() if meta.get(k, "(not recorded)") != v]
            if differ and not args.report_only:
                p.error(f"--out: {jpath} holds runs made with other settings ({', '.join(f'--{k.replace(chr(95), chr(45))} {meta.get(k, chr(63))}' for k in differ)}); "
                        f"use another --out or the same settings")
        out.parent.mkdir(parents=True, exist_ok=True)
        extra = [r for _, rs in merged for r in rs]
        if not args.report_only:
            done = {(r["env_id"], name_of(r), r["seed"]) for r in runs}
            # seed-major: a stopped benchmark has every (setting, algorithm) with fewer seeds, not some without any
            todo = [(e, a, s) for s in args.seeds for e in args.envs for a in args.algos
                    if (e, row_name(a, e, args), s) not in done]
            for env_id, algo, seed in todo:
                r = run_one(env_id, algo, seed, args)
                runs.append(r)
                f = r["curve"][-1]
                print(f"{env_id} {name_of(r)} seed {seed}: {r['steps']:,} steps in {r['wall_s']:.0f} s, regret "
                      f"{100 * f['regret']:.2f}%, excess viol. {100 * f['excess_violation_rate']:.2f}%, "
                      f"feasible {f['feasible']}", flush=True)
                jpath.write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
        allruns, seen = [], set()
        for r in runs + extra:  # a run counted once, however many files hold it
            key = (r["env_id"], name_of(r), r["seed"])
            if key in seen:
                print(f"bench_training.py: note: {key[0]} {key[1]} seed {key[2]} appears more than once; counted once",
                      file=sys.stderr)
                continue
            seen.add(key)
            allruns.append(r)
        if not allruns:
            p.error("no runs to report")
        if merged:  # the table quotes every command behind it, this one last
            this = " ".join(["python", "benchmarks/bench_training.py"] + list(sys.argv[1:] if argv is None else argv))
            meta = {**meta, "commands": [meta["command"]] + [m.get("command", "?") for m, _ in merged] + [this]}
        out.with_suffix(".md").write_text(to_markdown(allruns, meta) + "\n")
        plot(allruns, out.with_suffix(".png"))
        if args.doc:
            write_doc(Path(args.doc), allruns, meta)
        print(to_markdown(allruns, meta))
        return 0

    from agents.algos import AgentConfigError

    return run_main("bench_training.py", body, errors=(AgentConfigError,))


if __name__ == "__main__":
    sys.exit(main())
