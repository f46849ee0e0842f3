"""Real model sizes (issue 18): build, step, vector and exact-P1 costs over the presets, in one run.

    python benchmarks/bench_scale.py [--presets deepseek-v3 ...] [--steps 2000] [--vec-envs 1024]
                                     [--vec-envs-large 64] [--vec-episodes 2] [--vec-steps 4096]
                                     [--p1 300] [--p1-budget 1.0] [--milp 10] [--quick]

Every figure is measured in this run, on one core (BLAS and OpenMP set to one
thread before numpy loads), and printed beside a reference measured in the
same run, so that a busy shared machine shifts both:

- **build cold / warm**: ``gym.make("siftmoe_gym/Decode-v0", config=preset)``
  with an empty temporary model cache, then again with the cache it left
  (``siftmoe_gym.cache``); wall seconds.
- **env.step** per action mode (``nodes``, ``discrete`` when ``M <= 16``,
  ``experts``, ``slots``): random actions from the seeded action space, over
  whole episodes (at least ``--steps`` steps), each episode's reset included,
  after two untimed resets and 50 untimed steps (numba's cache load, the
  first, slower allocations of the episode tables; for presets above the enumeration
  table the first step of a fresh process is timed on its own below the
  table, with numba's cache and with an empty one), in CPU microseconds per
  step, and as a multiple of CartPole-v1's ``env.step`` (``gym.make``, the
  same wrappers) measured here.
- **vector**: the native vector ``Decode-v0`` (``vectorization_mode="vector_entry_point"``,
  random node sets) in environment steps (calls x copies) per CPU second,
  timed over ``--vec-episodes`` whole episodes, each episode's autoreset
  call (which builds every copy's next episode) included, after one
  untimed step (numba's compilation or cache load);
  ``--vec-envs`` copies at the default size, ``--vec-envs-large`` copies and
  ``episode_tokens=2`` above it (at deepseek-v3's size one copy's episode
  tables take about 40 MB, 1,024 copies would not fit in memory).
- **node-set search**: over ``--steps`` random ``nodes`` steps per preset
  above the enumeration table, the compiled partition search's
  (``siftmoe_gym.partition_search``) CPU time per decision, replayed on the
  recorded inputs without the Python call, and how many steps it handed to
  the slot dynamic program ``serve_free`` (near-ties, see that module).
- **token stream floor** (presets above the table, ``--vec-envs-large``
  copies of 2-token episodes): CPU microseconds per copy-step of every
  copy's raw numbers from its own generator and of the router's logit
  product batched over all copies at this core's BLAS rate, which no
  engine of this model avoids, beside the environments' own routing and
  top-k (``stream_floor``).
- **P1**: exact P1 (``solve_decode_batch``) on ``--p1`` random instances
  (``baselines.common.random_decode_instance``, budget ``--p1-budget``
  times the layer's, 1x by default), decisions per CPU second (the best of
  three batches) and the share of instances whose budget can be met (the
  others are served least-error, ties cheaper), and the mean time of the
  HiGHS integer program (``baselines.references.milp_decode``) on the first
  ``--milp`` of them as a ratio, with the worst energy gap between the two
  on those instances (within budget or not) and how many they disagree on.
- **random numbers alone**: the per-copy generator loop of a ``--vec-envs``
  Decode and FastFading reset (``siftmoe_gym.envs.episodes.raw_numbers``),
  per batched step once amortized over the episode, against CartPole-v1's
  whole batched step.
- **native vector envs at the default size**, every setting (Decode, Prefill,
  FastFading, nodes actions) at ``--vec-envs`` copies, as a share of
  CartPole-v1's native vector rate (``gym.make_vec("CartPole-v1", ...,
  vectorization_mode="vector_entry_point")``, ``--vec-steps`` calls, its
  copies resetting on their own) measured here, and the share of each
  env's time its autoreset calls (every copy's next episode) took.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

import siftmoe_gym  # noqa: E402,F401  (registers the environments)
from baselines.common import random_decode_instance  # noqa: E402
from baselines.references import milp_decode  # noqa: E402
from siftmoe_gym.cli import UsageError  # noqa: E402
from siftmoe_gym.config import PRESETS  # noqa: E402
from siftmoe_gym.serving import solve_decode_batch  # noqa: E402

ORDER = ("mixtral-small", "olmoe", "qwen3-30b-a3b", "deepseek-v3", "qwen3-235b-a22b")


def first_step_seconds(name: str, cold: bool = False) -> float:
    """Wall seconds of the first ``env.step`` (``nodes`` mode) of preset ``name`` in a fresh Python process:
    above the enumeration table, numba's import and cache load, or with ``cold`` (an empty
    ``NUMBA_CACHE_DIR``) its compilation."""
    code = ("import time, gymnasium as gym, siftmoe_gym\n"
            f"env = gym.make('siftmoe_gym/Decode-v0', config={name!r}); env.reset(seed=0)\n"
            "a = env.action_space.sample(); t0 = time.perf_counter(); env.step(a); print(time.perf_counter() - t0)\n")
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, NUMBA_CACHE_DIR=d) if cold else None
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.split()[-1])


def step_cost(env, steps: int, warmup: int = 50) -> float:
    """CPU seconds per ``env.step`` with random actions over whole episodes, each episode's reset included:
    from a fresh episode until at least ``steps`` steps have run and the episode in progress has ended and
    been reset. Before it, untimed: two resets and ``warmup`` steps (numba's compilation or cache load on
    the first node-set step above the enumeration table, the first (slower) allocations of the
    episode tables)."""
    env.reset(seed=1)
    env.reset(seed=0)
    env.action_space.seed(0)
    sample = env.action_space.sample
    for _ in range(warmup):
        _, _, term, trunc, _ = env.step(sample())
        if term or trunc:
            env.reset()
    acts = [sample() for _ in range(256)]
    env.reset(seed=2)
    done = 0
    c0 = time.process_time()
    while True:
        _, _, term, trunc, _ = env.step(acts[done % 256])
        done += 1
        if term or trunc:
            env.reset()
            if done >= steps:
                break
    return (time.process_time() - c0) / done


def node_search(name: str, steps: int) -> tuple[int, int, float]:
    """Over ``steps`` random ``nodes`` actions of preset ``name``: (steps that ``serving_free.serve_nodes``
    handed to ``serve_free``, node-set steps it served, CPU microseconds per decision of the compiled search
    alone, replayed on the recorded inputs); (0, 0, nan) where the enumeration table serves."""
    import siftmoe_gym.partition_search as ps
    import siftmoe_gym.serving_free as sf
    from siftmoe_gym.bounds import ABS_TOL, REL_TOL
    from siftmoe_gym.jit import compiled

    inner, count, inputs = sf.serve_partition, [0, 0], []

    def counting(dk, gates, node_of, allowed, cap, *rest):
        out = inner(dk, gates, node_of, allowed, cap, *rest)
        count[0] += out is None
        count[1] += 1
        inputs.append((np.ascontiguousarray(dk, dtype=np.float64), np.asarray(gates, dtype=np.float64),
                       np.asarray(node_of, dtype=np.int64), np.asarray(allowed, dtype=np.bool_), float(cap)))
        return out

    sf.serve_partition = counting
    try:
        step_cost(gym.make("siftmoe_gym/Decode-v0", config=name, action_mode="nodes"), steps, warmup=0)
    finally:
        sf.serve_partition = inner
    if not inputs:
        return 0, 0, float("nan")
    kernel = compiled(ps._partition_kernel, vars(ps), ("_grow", "_prefix"))
    out = np.empty(len(inputs[0][1]), dtype=np.int64)
    c0 = time.process_time()
    for dk, gates, node_of, allowed, cap in inputs:
        kernel(dk, gates, node_of, allowed, cap, REL_TOL, ABS_TOL, out)
    return count[0], count[1], (time.process_time() - c0) / len(inputs) * 1e6


def draw_floor(env_id: str, num_envs: int, repeat: int = 3) -> float:
    """CPU seconds per batched step (episode steps + its autoreset call) that drawing every copy's raw random
    numbers takes, and nothing else: the per-copy generator loop of the native vector env's reset
    (``episodes.raw_numbers``, ``num_envs`` generators seeded as ``reset(seed=0)`` seeds them)."""
    from gymnasium.utils import seeding

    from siftmoe_gym.envs.episodes import fading_normals, raw_numbers

    env = gym.make(env_id).unwrapped
    tokens = env.env_config["episode_tokens"]
    rngs = [seeding.np_random(i)[0] for i in range(num_envs)]
    n_fading = fading_normals(env.system, env.setting, tokens)
    c0 = time.process_time()
    for _ in range(repeat):
        raw_numbers(env.system, rngs, tokens, n_fading)
    return (time.process_time() - c0) / repeat / (tokens * env.n_layers + 1)


def vector_rate(env_id: str, num_envs: int, steps: int = 0, episodes: int = 0, **kwargs) -> tuple[float, float]:
    """Environment steps (calls x copies) per CPU second of a native vector env, random actions: ``steps``
    calls, or with ``episodes`` the calls through that many whole episodes (this project's copies all end
    together), each episode's autoreset call, which builds the next episode, included; and the share of
    the CPU time those autoreset calls took (0 with ``steps``)."""
    envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
    envs.reset(seed=0)
    envs.action_space.seed(0)
    acts = [envs.action_space.sample() for _ in range(8)]
    envs.step(acts[0])  # untimed: numba's compilation or cache load, once per process
    envs.reset(seed=0)
    calls = ended = 0
    in_resets = 0.0
    c0 = time.process_time()
    while calls < steps or ended < episodes:
        _, _, term, trunc, _ = envs.step(acts[calls % 8])
        calls += 1
        if episodes and (term.any() or trunc.any()):
            ended += 1
            r0 = time.process_time()
            envs.step(acts[calls % 8])  # the autoreset
            in_resets += time.process_time() - r0
            calls += 1
    cpu = max(time.process_time() - c0, 1e-9)
    envs.close()
    return calls * num_envs / cpu, in_resets / cpu


def stream_floor(name: str, copies: int, tokens: int = 2, repeat: int = 3) -> dict[str, float]:
    """CPU microseconds per copy-step (one token at one layer) of preset ``name``'s token stream, over
    ``copies`` copies of ``tokens``-token episodes (best of ``repeat``):

    - ``draws``: every copy's raw numbers from its own generator (``episodes.raw_numbers``, what makes copy
      ``i`` replay ``reset(seed=seed+i)``);
    - ``product``: the router's ``(rows, r0) @ (r0, N)`` logit product of every token and layer, as one
      product per layer over all copies and tokens, at this core's BLAS rate: a lower bound on any engine
      computing this model's router (the environments take one product per copy and layer, so that a copy's
      numbers do not depend on how many copies there are);
    - ``routing``, ``topk``: the environments' own routing (``SyntheticMoE.routing``: the products, score
      function and norms) and top-k (``episodes._topk_gates``).
    """
    from gymnasium.utils import seeding

    from siftmoe_gym.envs.episodes import _topk_gates, fading_normals, raw_numbers

    env = gym.make("siftmoe_gym/Decode-v0", config={"preset": name, "episode_tokens": tokens}).unwrapped
    system, model = env.system, env.system.workload.model
    rngs = [seeding.np_random(i)[0] for i in range(copies)]
    n_fading = fading_normals(system, "decode", tokens)
    n_dist = 0 if system.config.distances_m is not None else system.config.num_nodes
    rows = copies * tokens * env.n_layers
    best: dict[str, float] = {}

    def timed(key, func):
        c0 = time.process_time()
        out = func()
        best[key] = min(best.get(key, np.inf), (time.process_time() - c0) / rows * 1e6)
        return out

    for _ in range(repeat):
        u, z, gam, _ = timed("draws", lambda: raw_numbers(system, rngs, tokens, n_fading))
        topic = model.topics_from_uniform(u[:, n_dist:])
        probs, _ = timed("routing", lambda: model.routing(topic, z[:, n_fading:], gam))
        timed("topk", lambda: _topk_gates(probs, system.config.top_k, system.config.renormalize_gates))
        r, r0 = model.noise_dims, model._r0
        y = np.ascontiguousarray(z[:, n_fading:n_fading + rows // copies * r].reshape(copies, tokens, env.n_layers, r)
                                 [..., :r0].transpose(2, 0, 1, 3).reshape(env.n_layers, copies * tokens, r0))
        timed("product", lambda: [y[lay] @ model._proj[lay] for lay in range(env.n_layers)])
    return best


def p1_rates(system, count: int, n_milp: int, budget: float = 1.0) -> dict[str, float]:
    """Exact P1 on ``count`` random instances (``budget`` times the layer budget), solved in one batch (the best of
    three), against the HiGHS integer program on the first ``n_milp``: ``rate`` (decisions per CPU second), ``within`` (share of the instances with an
    assignment within budget; the others get the least-error one, ties cheaper, from both solvers), ``milp_s``
    (HiGHS CPU seconds per decision, nan without ``n_milp``), ``gap`` (worst relative energy gap over the compared
    instances, within budget or not; nan when none) and ``disagree`` (compared instances where the two differ on
    whether the budget can be met)."""
    rng = np.random.default_rng(0)
    insts = [random_decode_instance(system, rng, budget_range=(budget, budget)) for _ in range(count)]
    args = (np.stack([i.gates for i in insts]), np.stack([i.topk for i in insts]), np.array([i.layer for i in insts]),
            system.delta_ext, system.node_of, np.stack([i.node_cost for i in insts]),
            np.stack([i.node_feasible for i in insts]), np.array([i.budget for i in insts]),
            system.config.compute_energy_j)
    t_p1 = np.inf
    for _ in range(3):  # best of three: one batch takes about 50 ms at deepseek-v3, where one hiccup of a shared host can cost 40%
        c0 = time.process_time()
        _, energy, _, within = solve_decode_batch(*args)
        t_p1 = min(t_p1, (time.process_time() - c0) / count)
    c0 = time.process_time()
    refs = [milp_decode(insts[q]) for q in range(n_milp)]
    t_milp = (time.process_time() - c0) / n_milp if n_milp else float("nan")
    gaps = [abs(r.energy_j - energy[q]) / max(r.energy_j, 1e-300) for q, r in enumerate(refs)]
    return {"rate": 1.0 / t_p1, "within": float(np.mean(within)), "milp_s": t_milp, "gap": max(gaps, default=float("nan")),
            "disagree": sum(bool(r.within_budget) != bool(within[q]) for q, r in enumerate(refs))}


def build_times(name: str) -> tuple[float, float, object]:
    with tempfile.TemporaryDirectory() as d:
        old = os.environ.get("SIFTMOE_CACHE_DIR")
        os.environ["SIFTMOE_CACHE_DIR"] = d
        try:
            t0 = time.perf_counter()
            gym.make("siftmoe_gym/Decode-v0", config=name)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            env = gym.make("siftmoe_gym/Decode-v0", config=name)
            warm = time.perf_counter() - t0
        finally:
            if old is None:
                os.environ.pop("SIFTMOE_CACHE_DIR", None)
            else:
                os.environ["SIFTMOE_CACHE_DIR"] = old
    return cold, warm, env


COUNTS = {  # option: (default, --quick default, least value, largest value: the memory and time a run can take)
    "steps": (2000, 200, 1, 1_000_000), "vec_envs": (1024, 1024, 1, 16_384), "vec_envs_large": (64, 64, 1, 1024),
    "vec_episodes": (2, 1, 1, 100), "vec_steps": (4096, 512, 1, 1_000_000),
    # P1's rate includes one batch call's fixed cost: 30 mixtral-small instances read about 5x slower than 300, so --quick keeps 300
    "p1": (300, 300, 1, 20_000), "milp": (10, 3, 0, 1000),
}


def parse_args(argv=None) -> argparse.Namespace:
    """The options, every count checked (:class:`~siftmoe_gym.cli.UsageError`); ``--quick`` only changes the
    defaults of the counts not given."""
    from siftmoe_gym.cli import OneLineParser, at_least

    ap = OneLineParser(prog="bench_scale.py", description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=list(ORDER), choices=sorted(PRESETS), metavar="PRESET",
                    help=f"presets to measure (default: all, {', '.join(ORDER)})")
    ap.add_argument("--steps", type=int, help="least env.step calls per action mode, rounded up to whole episodes "
                    "(2000; --quick 200; at most 1,000,000)")
    ap.add_argument("--vec-envs", type=int, help="copies of the native vector envs at the default size (1024; at most 16,384)")
    ap.add_argument("--vec-envs-large", type=int, help="copies of the vector env above the default size, and of the token "
                    "stream floor (64; at most 1,024: about 5 MB a copy at deepseek-v3)")
    ap.add_argument("--vec-episodes", type=int, help="whole episodes per native vector env, autoresets included (2; --quick 1)")
    ap.add_argument("--vec-steps", type=int, help="CartPole-v1's native vector env calls (4096, about 0.3 s: a shorter window let one hiccup halve the reference; --quick 512)")
    ap.add_argument("--p1", type=int, help="random P1 instances per preset, solved in one batch (300, also with --quick: "
                    "fewer read slower, the batch call's fixed cost spread over fewer decisions)")
    ap.add_argument("--p1-budget", type=float, default=1.0, help="the P1 instances' budget, a multiple of the "
                    "layer's (1.0; at 1.0 most deepseek-v3 instances cannot be met, at 2.0 most can)")
    ap.add_argument("--milp", type=int, help="of which solved by the integer program (10; --quick 3)")
    ap.add_argument("--quick", action="store_true", help="about a tenth of the samples")
    args = ap.parse_args(argv)
    for name, (default, quick, low, high) in COUNTS.items():
        at_least("--" + name.replace("_", "-"), getattr(args, name), low, high)
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else default)
    if not (math.isfinite(args.p1_budget) and args.p1_budget > 0):
        raise UsageError(f"--p1-budget must be a positive number, got {args.p1_budget}")
    if args.milp > args.p1:
        raise UsageError(f"--milp ({args.milp}) must not exceed --p1 ({args.p1})")
    return args


def main(argv=None) -> int:
    from siftmoe_gym.cli import run_main

    return run_main("bench_scale.py", lambda: run(parse_args(argv)), errors=(MemoryError,))


def run(args: argparse.Namespace) -> int:
    cart = step_cost(gym.make("CartPole-v1"), max(args.steps, 20000))
    print(f"CartPole-v1 env.step: {cart * 1e6:.1f} us (CPU); ratios below are step costs over this")
    print()
    print("| preset | N, k, L, M | build cold (s) | build warm (s) | env.step: nodes | discrete | experts | slots "
          "| native vector (env steps per CPU s) | exact P1 (decisions per CPU s) | vs HiGHS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in [p for p in ORDER if p in args.presets]:
        cold, warm, env = build_times(name)
        cfg = env.unwrapped.system.config
        cells = []
        for mode in ("nodes", "discrete", "experts", "slots"):
            if mode == "discrete" and cfg.num_nodes > 16:
                cells.append("n/a (M > 16)")
                continue
            e = gym.make("siftmoe_gym/Decode-v0", config=name, action_mode=mode)
            c = step_cost(e, args.steps)
            cells.append(f"{c * 1e6:,.0f} us ({c / cart:.1f}x)")
        default = name == "mixtral-small"
        copies = args.vec_envs if default else args.vec_envs_large
        vkw = {} if default else {"config": {"preset": name, "episode_tokens": 2}}
        vec, _ = vector_rate("siftmoe_gym/Decode-v0", copies, episodes=args.vec_episodes, **vkw)
        p1 = p1_rates(env.unwrapped.system, args.p1, args.milp, args.p1_budget)
        rate = p1["rate"]
        vs = (f"{p1['milp_s'] * rate:,.0f}x (max gap {p1['gap']:.0e} over {args.milp}, "
              f"{p1['disagree']} disagreeing on the budget)" if args.milp else "n/a (--milp 0)")
        print(f"| {name} | {cfg.num_experts}, {cfg.top_k}, {cfg.num_layers}, {cfg.num_nodes} | {cold:.2f} | {warm:.2f} | "
              + " | ".join(cells)
              + f" | {vec:,.0f} ({copies} {'copy' if copies == 1 else 'copies'}) | {rate:,.0f} ({p1['within']:.0%} within budget) | {vs} |")
    print()
    found = [(name, *node_search(name, args.steps)) for name in [p for p in ORDER if p in args.presets]]
    above = [name for name, _, b, _ in found if b]  # the presets whose node-set steps the compiled search serves
    print("node-set steps above the enumeration table: the compiled search's CPU time per decision (replayed, "
          "no Python call), and the steps it handed to serve_free: "
          + ("; ".join(f"{name} {us:.1f} us, {a} of {b}" for name, a, b, us in found if b)
             or "no preset above the table measured"))
    if above:
        print("their first env.step (nodes) in a fresh process, wall seconds, with numba's cache / compiling "
              "(empty cache): " + "; ".join(f"{p} {first_step_seconds(p):.2f} / {first_step_seconds(p, cold=True):.2f}"
                                           for p in above))
        search = {name: us for name, _, _, us in found}
        print(f"token stream per copy-step (one token at one layer), CPU us, {args.vec_envs_large} copies of 2-token "
              "episodes: the copies' own draws + the router product at this core's BLAS rate (a floor for any "
              "engine of this model); the environments' routing and top-k:")
        for name in above:
            f = stream_floor(name, args.vec_envs_large)
            low = f["draws"] + f["product"]
            print(f"  {name:16s} draws {f['draws']:.2f} + product {f['product']:.2f} = {low:.2f} us floor; "
                  f"routing {f['routing']:.2f}, top-k {f['topk']:.2f}, compiled node-set search {search[name]:.2f}")
            if name == "deepseek-v3":
                known = f["topk"] + search[name]
                print(f"  deepseek-v3's vector target (>= 200,000 env steps/s) allows 5.00 us of one core per copy-step; "
                      f"the floor takes {low:.2f} of them, the environments' top-k and compiled search alone {known:.2f} "
                      f"({'over' if known > 5.0 else 'within'} the budget before the observation, reward and info)")
    print()
    cart_vec, _ = vector_rate("CartPole-v1", args.vec_envs, steps=args.vec_steps)
    print(f"native vector envs at the default size, {args.vec_envs} {'copy' if args.vec_envs == 1 else 'copies'}, "
          f"env steps per CPU second (CartPole-v1: {cart_vec:,.0f} over {args.vec_steps:,} call{'' if args.vec_steps == 1 else 's'}):")
    target = "target >= 0.33" if args.vec_envs == 1024 else "the target, >= 0.33, is set at 1,024 copies"
    for env_id in ("siftmoe_gym/Decode-v0", "siftmoe_gym/FastFading-v0", "siftmoe_gym/Prefill-v0"):
        r, share = vector_rate(env_id, args.vec_envs, episodes=args.vec_episodes)
        print(f"  {env_id:28s} {r:>12,.0f} env steps/s  ({r / cart_vec:.2f} of CartPole-v1's; {target}; "
              f"the autoreset calls building the next episodes: {share:.0%} of the time)")
    per_call = args.vec_envs / cart_vec
    print(f"the copies' random numbers alone (each copy's episode from its own generator, amortized), against "
          f"CartPole-v1's whole batched step ({per_call * 1e6:,.0f} us):")
    for env_id in ("siftmoe_gym/Decode-v0", "siftmoe_gym/FastFading-v0"):
        f = draw_floor(env_id, args.vec_envs)
        print(f"  {env_id:28s} {f * 1e6:>8,.1f} us per batched step ({f / per_call:.1f}x; the target leaves 3x for all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
