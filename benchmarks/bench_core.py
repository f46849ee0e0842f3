"""Throughput of the vectorized core on one CPU core.

Prints decision evaluations per second of
:func:`siftmoe_gym.instances.evaluate_decode_batch` for the default system
(batches of random decisions over random layers, random channel gains), and
of :func:`siftmoe_gym.bounds.error_bound`.  Target (issue 2): at least
1,000,000 decision evaluations per second on one core.

    python benchmarks/bench_core.py [--batch 100000] [--seconds 2] [--preset mixtral-small]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one core; must be set before numpy is imported

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from siftmoe_gym import WideSystem  # noqa: E402
from siftmoe_gym.bounds import error_bound  # noqa: E402
from siftmoe_gym.config import PRESETS  # noqa: E402
from siftmoe_gym.instances import evaluate_decode_batch  # noqa: E402

TARGET = 1_000_000


def _rate(fn, batch: int, seconds: float) -> float:
    """Sustained decisions per second: all calls in ``seconds`` (after one warm-up call)."""
    fn()
    calls = 0
    start = time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * batch / elapsed


def parse_args(argv=None) -> argparse.Namespace:
    """The options, checked (:class:`~siftmoe_gym.cli.UsageError` naming the option)."""
    from siftmoe_gym.cli import OneLineParser, UsageError, at_least

    ap = OneLineParser(prog="bench_core.py", description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--preset", default="mixtral-small", choices=sorted(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    at_least("--batch", args.batch, 1)
    at_least("--seed", args.seed, 0)
    if not (0 < args.seconds < math.inf):
        raise UsageError(f"--seconds must be a positive finite number, got {args.seconds}")
    return args


def main(argv=None) -> int:
    from siftmoe_gym.cli import run_main

    return run_main("bench_core.py", lambda: run(parse_args(argv)))


def run(args: argparse.Namespace) -> int:
    system = WideSystem(args.preset)
    cfg = system.config
    rng = np.random.default_rng(args.seed)
    b = args.batch
    tokens = system.sample_tokens(rng, b)
    layer = rng.integers(0, cfg.num_layers, size=b)
    rows = np.arange(b)
    gates = tokens.gates[rows, layer]
    topk = tokens.topk[rows, layer]
    # random decisions: keep, replace by any expert, or skip
    assign = np.where(rng.random(topk.shape) < 0.4, topk, rng.integers(-1, cfg.num_experts, size=topk.shape))
    # random channels: a fresh distance and Rayleigh fading per decision
    dist = rng.uniform(*cfg.distance_range_m, size=(b, cfg.num_nodes))
    gains = system.gains(dist, rng.exponential(size=(b, cfg.num_nodes)))
    energy, feasible, violation = system.node_costs(gains)
    ec = cfg.compute_energy_j

    print(f"system: {args.preset} (N={cfg.num_experts}, k={cfg.top_k}, L={cfg.num_layers}, M={cfg.num_nodes}); "
          f"batch {b}; one thread; numpy {np.__version__}")

    per_layer = _rate(lambda: evaluate_decode_batch(
        gates, topk, assign, system.delta_ext, system.node_of, energy, ec, violation, layer=layer), b, args.seconds)
    one_layer = _rate(lambda: evaluate_decode_batch(
        gates, topk, assign, system.delta_ext[0], system.node_of[0], energy, ec, violation), b, args.seconds)
    shared = _rate(lambda: evaluate_decode_batch(
        gates, topk, assign, system.delta_ext, system.node_of, energy[0], ec, violation[0], layer=layer),
        b, args.seconds)
    bound = _rate(lambda: error_bound(gates, topk, assign, system.profile.delta, system.profile.sigma, layer=layer),
                  b, args.seconds)
    bound1 = _rate(lambda: error_bound(gates, topk, assign, system.profile.delta[0], system.profile.sigma[0]),
                   b, args.seconds)

    print(f"evaluate_decode_batch, random layers, per-decision costs : {per_layer:14,.0f} decisions/s")
    print(f"evaluate_decode_batch, one layer,     per-decision costs : {one_layer:14,.0f} decisions/s")
    print(f"evaluate_decode_batch, random layers, shared cost vector : {shared:14,.0f} decisions/s")
    print(f"error_bound,           random layers                     : {bound:14,.0f} decisions/s")
    print(f"error_bound,           one layer                         : {bound1:14,.0f} decisions/s")
    worst = min(per_layer, one_layer, shared)
    ok = worst >= TARGET
    print(f"target {TARGET:,} decision evaluations/s: {'PASS' if ok else 'FAIL'} (slowest case {worst:,.0f}/s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
