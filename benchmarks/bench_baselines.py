"""Benchmark of the exact solvers (issue 3).

Prints, for the default system and for N=64, k=8, M=8:
- batched exact P1 decisions per second on one core (``solve_decode_batch``),
- the speed-up over the integer-program reference (``baselines.references.milp_decode``),
and the fast P2 policy's (best response) mean and worst gap to the exact P2 optimum.

    python benchmarks/bench_baselines.py [--quick]
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from baselines.common import random_decode_instance, random_gains  # noqa: E402
from baselines.prefill import solve_prefill_exact, solve_prefill_fast  # noqa: E402
from baselines.references import milp_decode  # noqa: E402
from siftmoe_gym import WideSystem  # noqa: E402
from siftmoe_gym.serving import solve_decode_batch  # noqa: E402


def bench_p1(system: WideSystem, batch: int, n_milp: int, rng, label: str) -> None:
    insts = [random_decode_instance(system, rng, budget_range=(1.0, 1.0)) for _ in range(batch)]
    args = (
        np.stack([i.gates for i in insts]), np.stack([i.topk for i in insts]), np.array([i.layer for i in insts]),
        system.delta_ext, system.node_of, np.stack([i.node_cost for i in insts]),
        np.stack([i.node_feasible for i in insts]), np.array([i.budget for i in insts]), system.config.compute_energy_j,
    )
    solve_decode_batch(*[a[:8] if isinstance(a, np.ndarray) and a.shape[:1] == (batch,) else a for a in args])
    t0 = time.perf_counter()
    _, energy, _, ok = solve_decode_batch(*args)
    t_batch = (time.perf_counter() - t0) / batch
    t0 = time.perf_counter()
    worst = 0.0
    for q in range(n_milp):
        ref = milp_decode(insts[q])
        if ref.within_budget:
            worst = max(worst, abs(ref.energy_j - energy[q]) / max(ref.energy_j, 1e-300))
    t_milp = (time.perf_counter() - t0) / n_milp
    print(f"[P1 {label}] batch={batch}: {1.0 / t_batch:,.0f} decisions/s ({t_batch * 1e6:.1f} us each, "
          f"{ok.mean():.1%} within budget); integer program: {t_milp * 1e3:.2f} ms each over {n_milp}; "
          f"speed-up {t_milp / t_batch:,.0f}x; max rel. difference to the program {worst:.1e}")


def bench_p2(system: WideSystem, blocks: int, tokens: int, rng) -> None:
    gaps, gaps_lb, t_ex, t_fast = [], [], 0.0, 0.0
    infeasible = 0
    for _ in range(blocks):
        tok = system.sample_tokens(rng, tokens)
        block = system.prefill_instance(tok, int(rng.integers(system.num_layers)), random_gains(system, rng, 0.0, 0.0))
        t0 = time.perf_counter()
        ex = solve_prefill_exact(block)
        t_ex += time.perf_counter() - t0
        t0 = time.perf_counter()
        fast = solve_prefill_fast(block, report_gap=False)
        t_fast += time.perf_counter() - t0
        if not (ex.within_budget and fast.within_budget):
            infeasible += 1
            continue
        gaps.append((fast.energy_j - ex.energy_j) / ex.energy_j)
        fast_lb = solve_prefill_fast(block)
        if fast_lb.gap is not None:
            gaps_lb.append(fast_lb.gap)
    g = np.array(gaps)
    print(f"[P2 T={tokens}] fast (best response) gap to the exact optimum over {len(g)} blocks: mean {g.mean():.3%}, "
          f"worst {g.max():.3%}, exact in {np.mean(g <= 1e-9):.0%}; ({infeasible} blocks skipped: infeasible); "
          f"gap to the proven lower bound: mean {np.mean(gaps_lb):.2%}, worst {np.max(gaps_lb):.2%}")
    print(f"[P2 T={tokens}] time per block: exact program {t_ex / blocks * 1e3:.1f} ms, fast {t_fast / blocks * 1e3:.1f} ms")


def parse_args(argv=None) -> argparse.Namespace:
    from siftmoe_gym.cli import OneLineParser

    p = OneLineParser(prog="bench_baselines.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller samples")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    rng = np.random.default_rng(0)
    q = args.quick
    default = WideSystem("mixtral-small")
    bench_p1(default, 5_000 if q else 50_000, 30 if q else 100, rng, "default N=8 k=2 M=4")
    big = WideSystem({"num_experts": 64, "top_k": 8, "num_nodes": 8, "num_layers": 2, "local_capacity": 4,
                      "model": {"num_clusters": 8, "calibration_tokens": 256}})
    bench_p1(big, 100 if q else 400, 10 if q else 30, rng, "N=64 k=8 M=8")
    bench_p2(default, 10 if q else 40, 16, rng)
    return 0


def main(argv=None) -> int:
    from siftmoe_gym.cli import run_main

    return run_main("bench_baselines.py", lambda: run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
