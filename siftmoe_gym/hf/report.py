"""Report: energy and accuracy of top-k vs. optimal SiftMoE decoding inside a real (tiny) MoE.

    python -m siftmoe_gym.hf.report [--model DIR] [--eps 0.1 0.25 0.5]

Steps (all seeded):

1. load the model (default: the tiny trained model, trained first if missing);
2. extract a trace on ``--calibration-tokens`` held-out tokens (router scores,
   norms, ``Delta``/``sigma`` at quantile ``--quantile``);
3. build ``WideSystem({"eps_rel": eps}, trace=trace)`` per budget; draw
   each sequence's channel (distances and Rayleigh fading, slow fading: one
   draw per sequence, the same draws for every policy) and its node costs;
4. run the model over ``--eval-tokens`` further held-out tokens (disjoint
   from calibration) in sequences of ``--window`` tokens, once per policy,
   inside :func:`~siftmoe_gym.hf.decisions.follow_decisions`: top-k keeps
   every slot; ``siftmoe`` serves each token and layer by
   ``siftmoe_gym.serving.solve_decode`` on the DecodeInstance the system
   builds from that token's real routing (teacher forcing: the decisions of
   earlier layers and tokens shape later hidden states, as in real decoding);
5. print a markdown table: energy per token (all MoE layers), saving vs.
   top-k, mean error bound / budget, bound coverage (measured per-layer
   deviation ``||y_hat - y|| / ||x||`` within the bound), next-token accuracy,
   perplexity and argmax agreement with top-k;
6. per layer ``l`` and budget (``--per-layer``, the default): the bound's
   coverage at layer ``l`` in the run of step 4 (every layer deciding), and
   a run where only layer ``l`` follows ``siftmoe`` (every other layer keeps
   its top-k), giving that layer's decisions changed, its coverage and the
   next-token accuracy (points) and perplexity change against top-k.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def run_report(
    model,
    tokenizer,
    cal_ids: np.ndarray,
    eval_ids: np.ndarray,
    *,
    eps_list=(0.1, 0.25, 0.5),
    quantile: float = 0.99,
    window: int = 128,
    seed: int = 0,
    config: dict | None = None,
    link_hidden_size: int | None = None,
    progress: bool = True,
    per_layer: bool = True,
) -> dict:
    """Rows of the report (see module docstring); ``cal_ids``/``eval_ids`` are token ids.

    ``link_hidden_size`` (default: the model's own ``d``) sets the hidden size
    the radio links carry (``D = d * b`` bits per token), e.g. 4096 to price
    the tiny model's decisions as if its activations were a full-size model's.
    With ``per_layer`` the result also holds ``layer_rows`` (step 6 of the module docstring; one extra
    evaluation per layer and budget, each deciding at one layer only).
    """
    import dataclasses

    from ..serving import solve_decode
    from ..system import WideSystem
    from ..traces import extract_trace
    from ..workload import TokenBatch
    from .adapters import moe_layers
    from .evaluate import evaluate_policy, token_windows
    from .loading import ByteTokenizer

    layers = moe_layers(model)
    if isinstance(tokenizer, ByteTokenizer):
        cal_text = bytes(int(i) for i in cal_ids).decode("utf-8", errors="replace")
        # byte round trip can change length on invalid UTF-8; re-encode exactly
        cal_ids = np.frombuffer(cal_text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
    else:
        cal_text = tokenizer.decode(list(cal_ids))
    t0 = time.perf_counter()
    trace = extract_trace(model, tokenizer, cal_text, len(cal_ids) - 8, quantile=quantile,
                          calibration_tokens=len(cal_ids) - 8, window=window, progress=progress)
    t_trace = time.perf_counter() - t0
    base_cfg = dict(config or {})
    sys_trace = trace if link_hidden_size is None else dataclasses.replace(trace, hidden_size=int(link_hidden_size))
    systems = {eps: WideSystem({**base_cfg, "eps_rel": float(eps)}, trace=sys_trace) for eps in eps_list}
    ref_sys = next(iter(systems.values())) if systems else WideSystem(base_cfg, trace=sys_trace)
    n_seq = len(token_windows(eval_ids, window))
    rng = np.random.default_rng([seed, 0x5E9])
    costs = []
    for _ in range(n_seq):  # slow fading: one channel per sequence (request)
        dist = ref_sys.draw_distances(rng)
        fade = ref_sys.fading_process().reset(rng)
        costs.append(ref_sys.node_costs(ref_sys.gains(dist, fade)))
    L, k = trace.num_layers, trace.top_k

    def make_policy(system, optimal: bool, acc: dict, only_layer: int | None = None):
        def policy(r):
            if only_layer is not None and r.layer != only_layer:
                return None  # keep this layer's top-k
            t_n = r.num_tokens
            g = np.zeros((t_n, L, k))
            tk = np.zeros((t_n, L, k), dtype=np.int64)
            g[:, r.layer], tk[:, r.layer] = r.gates, r.topk
            tb = TokenBatch(np.zeros((t_n, L, trace.num_experts)), tk, g, np.zeros((t_n, L)))
            energy, feasible, violation = costs[r.sequence]
            out = r.topk.copy()
            for t in range(t_n):
                inst = system.decode_instance_from_costs(tb, t, r.layer, energy, feasible, violation)
                top = inst.evaluate(inst.topk_assignment())
                acc["e_topk"] += top.energy_j
                if optimal:
                    sol = solve_decode(inst)
                    out[t] = sol.assignment
                    res = inst.evaluate(sol.assignment)
                else:
                    res = top
                acc["energy"] += res.energy_j
                acc["err_rel"].append(res.error_bound / max(inst.budget, 1e-300))
                acc["over"] += int(not res.within_budget)
                acc["viol"] += int(res.latency_violation_s > 0)
                acc["n"] += 1
            return out

        return policy

    cur = {"seq": 0}

    def on_seq(i):
        cur["seq"] = i

    rows = []
    base = evaluate_policy(model, eval_ids, None, window=window)
    runs = [("top-k", None, False)] + [("siftmoe", eps, True) for eps in eps_list]
    e_topk_tok = None
    all_runs: dict = {}
    for name, eps, optimal in runs:
        system = systems[eps] if eps is not None else ref_sys
        acc = {"energy": 0.0, "e_topk": 0.0, "err_rel": [], "over": 0, "viol": 0, "n": 0}
        t1 = time.perf_counter()
        res = evaluate_policy(model, eval_ids, make_policy(system, optimal, acc), window=window,
                              delta=trace.delta, sigma=trace.sigma, layers=layers, on_sequence=on_seq,
                              reference=base["predictions"], progress=progress)
        all_runs[eps] = res
        dev, bnd = res["log"].bounds(trace.delta, trace.sigma)
        tol = res["log"].tolerances()
        changed = np.concatenate([np.any(r.assignment != r.topk, axis=1) for r in res["log"].records])
        n_tok = sum(len(w) for w in token_windows(eval_ids, window))
        e_tok = acc["energy"] / n_tok
        e_topk_tok = acc["e_topk"] / n_tok
        rows.append({
            "policy": name, "eps_rel": eps, "energy_per_token_j": e_tok,
            "saving_vs_topk": 1.0 - e_tok / e_topk_tok if e_topk_tok > 0 else 0.0,
            "mean_err_over_budget": float(np.mean(acc["err_rel"])) if eps is not None else 0.0,
            "share_over_budget": acc["over"] / max(acc["n"], 1) if eps is not None else 0.0,
            "latency_violation_share": acc["viol"] / max(acc["n"], 1),
            "changed_decisions": float(changed.mean()),
            "coverage": res["coverage"],
            "coverage_changed": float(np.mean(dev[changed] <= bnd[changed] + tol[changed] + 1e-12)) if changed.any() else float("nan"),
            "mean_deviation": float(dev.mean()), "max_dev_over_bound": float(np.max(dev[changed] / bnd[changed])) if changed.any() else 0.0,
            "accuracy": res["accuracy"], "perplexity": res["perplexity"], "agreement_with_topk": res["agreement"],
            "seconds": time.perf_counter() - t1,
        })
    layer_rows = []
    if per_layer:
        full = {eps: res_eps for eps, res_eps in all_runs.items() if eps is not None}
        top = rows[0]
        for layer in range(L):
            for eps in eps_list:
                acc = {"energy": 0.0, "e_topk": 0.0, "err_rel": [], "over": 0, "viol": 0, "n": 0}
                res = evaluate_policy(model, eval_ids, make_policy(systems[eps], True, acc, only_layer=layer),
                                      window=window, delta=trace.delta, sigma=trace.sigma, layers=layers,
                                      on_sequence=on_seq, reference=base["predictions"])
                mine = _layer_coverage(res["log"], trace, layer)
                layer_rows.append({
                    "layer": layer, "eps_rel": eps,
                    "coverage_changed_all_layers": _layer_coverage(full[eps]["log"], trace, layer)[1],
                    "changed_decisions": mine[0], "coverage_changed": mine[1],
                    "accuracy_change": res["accuracy"] - top["accuracy"],
                    "perplexity_change": res["perplexity"] - top["perplexity"],
                    "agreement_with_topk": res["agreement"],
                })
    return {
        "rows": rows, "layer_rows": layer_rows, "trace_seconds": t_trace, "calibration_tokens": int(trace.num_tokens),
        "eval_tokens": int(base["tokens"]), "window": window, "quantile": quantile, "seed": seed,
        "base_accuracy": base["accuracy"], "base_perplexity": base["perplexity"],
        "layers": L, "experts": trace.num_experts, "top_k": k, "hidden_size": trace.hidden_size,
        "link_hidden_size": ref_sys.config.hidden_size, "bits_per_token": ref_sys.config.bits_per_token,
        "feasible_link_share": float(np.mean([c[1][1:].mean() for c in costs])),
        "gate_mode": trace.extra.get("gate_mode"), "num_nodes": ref_sys.num_nodes,
        "node_of": ref_sys.node_of.tolist(), "topk_energy_per_token_j": e_topk_tok,
    }



def _layer_coverage(log, trace, layer: int) -> tuple[float, float]:
    """``(share of layer's decisions changed, share of the changed within the bound)`` of a DecisionLog (the
    coverage rule of :meth:`~siftmoe_gym.hf.decisions.DecisionLog.coverage`; NaN when nothing changed)."""
    from ..bounds import error_bound

    recs = [r for r in log.records if r.layer == layer]
    if not recs:
        return 0.0, float("nan")
    changed = np.concatenate([np.any(r.assignment != r.topk, axis=1) for r in recs])
    dev = np.concatenate([r.deviation for r in recs])
    tol = np.concatenate([np.zeros_like(r.deviation) if r.tolerance is None else r.tolerance for r in recs])
    bnd = np.concatenate([error_bound(r.gates, r.topk, r.assignment, trace.delta[layer], trace.sigma[layer])
                          for r in recs])
    if not changed.any():
        return 0.0, float("nan")
    ok = dev[changed] <= bnd[changed] * (1 + 1e-9) + tol[changed] + 1e-12
    return float(changed.mean()), float(ok.mean())


def markdown(report: dict) -> str:
    head = ("| policy | eps_rel | energy / token (µJ) | saving vs top-k | latency viol. | mean err / budget "
            "| over budget | decisions changed | bound coverage (changed) | next-token acc. | perplexity "
            "| agreement w/ top-k |")
    lines = [head, "|" + "---|" * 12]
    for r in report["rows"]:
        eps = "-" if r["eps_rel"] is None else f"{r['eps_rel']:g}"
        cov = "-" if r["changed_decisions"] == 0 else f"{100 * r['coverage_changed']:.1f}%"
        lines.append(
            f"| {r['policy']} | {eps} | {1e6 * r['energy_per_token_j']:.3f} | {100 * r['saving_vs_topk']:.1f}% "
            f"| {100 * r['latency_violation_share']:.1f}% | {r['mean_err_over_budget']:.3f} "
            f"| {100 * r['share_over_budget']:.1f}% | {100 * r['changed_decisions']:.1f}% | {cov} "
            f"| {100 * r['accuracy']:.2f}% | {r['perplexity']:.3f} | {100 * r['agreement_with_topk']:.2f}% |"
        )
    return "\n".join(lines)


def layer_markdown(report: dict) -> str:
    """The per-layer table (step 6 of the module docstring)."""
    head = ("| layer | eps_rel | bound coverage, all layers deciding | decisions changed, this layer alone "
            "| bound coverage, this layer alone | next-token acc. change (points) | perplexity change |")
    lines = [head, "|" + "---|" * 7]

    def pct(v):
        return "-" if v != v else f"{100 * v:.1f}%"

    for r in report.get("layer_rows", []):
        lines.append(f"| {r['layer']} | {r['eps_rel']:g} | {pct(r['coverage_changed_all_layers'])} "
                     f"| {pct(r['changed_decisions'])} | {pct(r['coverage_changed'])} "
                     f"| {100 * r['accuracy_change']:+.2f} | {r['perplexity_change']:+.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from ..cli import OneLineParser, UsageError, at_least, run_main

    prog = "python -m siftmoe_gym.hf.report"
    ap = OneLineParser(prog=prog, description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint folder (default: the tiny model, trained if missing)")
    ap.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    ap.add_argument("--calibration-tokens", type=int, default=4096)
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--quantile", type=float, default=0.99)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--link-hidden-size", type=int, default=None,
                    help="hidden size carried over the links (default: the model's own d)")
    ap.add_argument("--json", default=None, help="also write the full report as JSON here")
    ap.add_argument("--per-layer", action=argparse.BooleanOptionalAction, default=True,
                    help="per-layer coverage and accuracy / perplexity change (one extra run per layer and eps)")

    def body() -> int:
        args = ap.parse_args(argv)
        for name, low in (("--calibration-tokens", 16), ("--eval-tokens", 16), ("--window", 2), ("--threads", 1),
                          ("--link-hidden-size", 1)):
            at_least(name, getattr(args, name[2:].replace("-", "_")), low)
        if not (0.0 < args.quantile <= 1.0):
            raise UsageError(f"--quantile must be in (0, 1], got {args.quantile}")
        bad = [e for e in args.eps if not (e > 0 and e == e and e != float("inf"))]
        if bad:
            raise UsageError(f"--eps must be positive finite budgets (eps_rel), got {bad}")
        if args.model is not None and not (Path(args.model) / "config.json").is_file():
            raise UsageError(f"--model: no checkpoint folder with a config.json at {args.model}")
        if args.model is not None:
            from .families import UnsupportedModelError, check_config, read_config
            from .loading import TOKENIZER_FILES, has_tokenizer_files

            try:  # from config.json alone, before any weight loads
                check_config(read_config(args.model), f"--model {args.model}")
            except UnsupportedModelError as exc:
                raise UsageError(str(exc)) from None
            if not has_tokenizer_files(args.model):
                raise UsageError(f"--model: {args.model} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)})")
        if args.json is not None and Path(args.json).is_dir():
            raise UsageError(f"--json is a folder: {args.json}")
        return _report(args)

    return run_main(prog, body)


def _report(args) -> int:
    import torch

    from .tiny_model import default_dir, heldout_ids, load_or_train

    torch.set_num_threads(args.threads)
    path = Path(args.model) if args.model else default_dir()
    model, tok = load_or_train(path)
    ids = heldout_ids(args.calibration_tokens + 8 + args.eval_tokens)
    cal_ids, eval_ids = ids[: args.calibration_tokens + 8], ids[args.calibration_tokens + 8 :]
    rep = run_report(model, tok, cal_ids, eval_ids, eps_list=args.eps, quantile=args.quantile,
                     window=args.window, seed=args.seed, link_hidden_size=args.link_hidden_size,
                     per_layer=args.per_layer)
    print(f"model: {path}  (L={rep['layers']}, N={rep['experts']}, k={rep['top_k']}, d={rep['hidden_size']}, "
          f"gates {rep['gate_mode']})")
    print(f"calibration: {rep['calibration_tokens']} held-out tokens, q={rep['quantile']}; evaluation: "
          f"{rep['eval_tokens']} further held-out next-token predictions in sequences of {rep['window']}; "
          f"channel seed {rep['seed']}, one Rayleigh draw per sequence")
    print(f"links: D = {rep['bits_per_token']} bits per token and direction (d = {rep['link_hidden_size']}), "
          f"{rep['num_nodes']} edge nodes, {100 * rep['feasible_link_share']:.0f}% of links meet the latency budget\n")
    print(markdown(rep))
    if rep["layer_rows"]:
        print("\nper layer (coverage of the changed decisions; changes against top-k):\n")
        print(layer_markdown(rep))
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
