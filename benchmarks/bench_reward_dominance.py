"""Reward dominance: how often the exact P1 decision scores at least as well as every node-set action.

Runs default DecodeDiscrete-v0 episodes (seeds 1000..), steps every node subset in a native vector
env, and compares each step's best reward with the reward of solve_decode's decision.

    python benchmarks/bench_reward_dominance.py [episodes=200] [penalty_latency] [penalty]
"""
import sys
import numpy as np, gymnasium as gym
import siftmoe_gym  # noqa
from siftmoe_gym.serving import solve_decode

E = int(sys.argv[1]) if len(sys.argv) > 1 else 200
pl = float(sys.argv[2]) if len(sys.argv) > 2 else None
kw = {} if pl is None else {"penalty_latency": pl}
if len(sys.argv) > 3: kw["penalty"] = float(sys.argv[3])
M = 4
A = 1 << M
seeds = [1000 + e for e in range(E)]
venv = gym.make_vec("siftmoe_gym/DecodeDiscrete-v0", num_envs=E * A, vectorization_mode="vector_entry_point", **kw)
venv.reset(seed=[s for s in seeds for _ in range(A)])
acts = np.tile(np.arange(A), E)
single = gym.make("siftmoe_gym/DecodeDiscrete-v0", **kw).unwrapped
steps = single.default_config()["episode_tokens"] * single.system.num_layers
tab = np.zeros((E, steps, A)); lat = np.zeros((E, steps, A)); viol = np.zeros((E, steps, A), bool)
for t in range(steps):
    _, r, _, _, info = venv.step(acts)
    tab[:, t] = r.reshape(E, A); lat[:, t] = info["latency_violation"].reshape(E, A); viol[:, t] = info["violation"].reshape(E, A)
opt = np.zeros((E, steps)); optidx = np.zeros((E, steps), int); mism = 0
for e, s in enumerate(seeds):
    single.reset(seed=s)
    for t in range(steps):
        sol = solve_decode(single.instance)
        a = single.encode_action(sol.assignment)
        _, r, _, _, info = single.step(a)
        if not np.isclose(info["energy_j"], sol.energy_j, rtol=1e-12, atol=1e-18): mism += 1
        opt[e, t] = r; optidx[e, t] = a
        assert r == tab[e, t, a]
best = tab.max(axis=2)
ok = opt >= best - 1e-9 * np.abs(best) - 1e-12
n = ok.size
print(f"episodes {E}, steps {n}, penalty_latency {single.env_config['penalty_latency']} penalty {single.env_config['penalty']}")
print(f"share of steps where solve_decode's reward >= every node-set action's: {ok.mean():.5f} ({(~ok).sum()} failures); energy mismatches {mism}")
bi = tab.argmax(axis=2)
fl = ~ok
if fl.any():
    bl = np.take_along_axis(lat, bi[..., None], 2)[..., 0][fl]; bv = np.take_along_axis(viol, bi[..., None], 2)[..., 0][fl]
    print(f"  failures: winner has latency violation {np.mean(bl > 0):.3f}, winner has accuracy violation {np.mean(bv):.3f}")
    gap = (best - opt)[fl]
    print(f"  reward gap: median {np.median(gap):.3f} max {gap.max():.3f}")
ov = np.take_along_axis(viol, optidx[..., None], 2)[..., 0]
# how often P1 optimum itself is over budget (no feasible decision meets eps)
ov = np.take_along_axis(viol, optidx[..., None], 2)[..., 0]
print(f"  failures where the P1 optimum itself misses the budget: {ov[fl].mean() if fl.any() else 0:.3f}")
print(f"steps where the P1 optimum misses the budget: {ov.mean():.4f}; any node-set action with latency violation: {(lat>0).any(axis=2).mean():.4f}")
