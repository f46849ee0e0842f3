"""Problem P3 (fast fading): drift-plus-penalty online policy and the offline Lagrangian bound.

Each layer ``l`` keeps a virtual queue in units of its budget ``eps_l``:
``Q_l(t+1) = max(Q_l(t) + err_t / eps_l - 1, 0)``.  Per token the policy
takes the decision minimizing

    V * energy_t / E_topk,t + Q_l(t) * err_t / eps_l       subject to  err_t <= eps_max

over feasible nodes, solved exactly by :func:`siftmoe_gym.serving.solve_decode`
(``energy_weight = V / E_topk``, ``error_weight = Q_l / eps_l``).  Summing the
queue recursion gives ``mean_t err_t / eps_l <= 1 + Q_l(T) / T``; the queue
stays bounded, so the time-average error meets ``eps_l`` up to a term that
vanishes as ``1/T`` (and grows with ``V``), while the energy approaches the
optimum as ``V`` grows.

The offline benchmark is the Lagrangian (dual) bound on a trace whose
channels are known in advance: for every ``lambda >= 0``

    D(lambda) = mean_t min_{d: err_t <= eps_max} [ energy_t(d) / E_topk,t + lambda (err_t(d) - eps_bar) / eps_bar ]

is a lower bound on the least mean normalized energy of any decision sequence
with ``mean err <= eps_bar`` (weak duality); :func:`lagrangian_bound`
maximizes the concave ``D`` by bisection on its supergradient (the inner min
is one batched exact solve).  Separate layers have separate constraints, so
the bound is the token-weighted sum of the per-layer bounds.  When a token
cannot meet ``eps_max`` at all, its inner minimum is taken over its
least-error decisions (as the policy does), so compare only policies that
also take those there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from siftmoe_gym.instances import DecodeInstance
from siftmoe_gym.serving import DecodeSolution, solve_decode, solve_decode_batch

from .common import TOPK_FLOOR_J, topk_energy


def dpp_decision(inst: DecodeInstance, queue: float, eps: float, cap: float, v: float, e_topk: float | None = None) -> DecodeSolution:
    """One drift-plus-penalty step (exact): minimize ``V E/E_topk + Q err/eps`` s.t. ``err <= cap``."""
    e_topk = topk_energy(inst) if e_topk is None else max(float(e_topk), TOPK_FLOOR_J)
    return solve_decode(inst, cap=cap, energy_weight=v / e_topk, error_weight=max(float(queue), 0.0) / eps)


@dataclass
class DppRun:
    """Trajectory of the drift-plus-penalty policy over a sequence of instances."""

    energy_j: np.ndarray  # (T,)
    energy_norm: np.ndarray  # (T,) energy / E_topk
    error: np.ndarray  # (T,)
    within_cap: np.ndarray  # (T,) bool
    queue: np.ndarray  # (T+1, L) queue before each token and after the last
    layer: np.ndarray  # (T,)
    assignments: np.ndarray  # (T, k)


def run_dpp(instances: list[DecodeInstance], v: float, eps_max_factor: float = 3.0, num_layers: int | None = None) -> DppRun:
    """Run drift-plus-penalty over ``instances`` in order (each uses its own ``budget`` as ``eps_l``)."""
    lay = np.array([i.layer for i in instances], dtype=np.int64)
    nl = int(lay.max()) + 1 if num_layers is None else num_layers
    q = np.zeros(nl)
    qs = [q.copy()]
    e, en, er, wc, asg = [], [], [], [], []
    for inst in instances:
        et = topk_energy(inst)
        eps = float(inst.budget)
        s = dpp_decision(inst, q[inst.layer], eps, eps_max_factor * eps, v, et)
        e.append(s.energy_j)
        en.append(s.energy_j / et)
        er.append(s.error_bound)
        wc.append(s.within_budget)
        asg.append(s.assignment)
        q[inst.layer] = max(q[inst.layer] + s.error_bound / eps - 1.0, 0.0)
        qs.append(q.copy())
    return DppRun(np.array(e), np.array(en), np.array(er), np.array(wc), np.array(qs), lay, np.array(asg))


@dataclass
class LagrangianBound:
    value: float  # lower bound on the mean normalized energy (top-k units)
    lam: dict  # layer -> maximizing multiplier
    per_layer: dict  # layer -> (bound, token count)
    feasible: bool  # False when some layer cannot meet its average even at minimum error


class _Stack:
    """Instances stacked for :func:`solve_decode_batch` (one row per token)."""

    def __init__(self, instances: list[DecodeInstance]):
        layers = sorted({i.layer for i in instances})
        pos = {l: q for q, l in enumerate(layers)}
        first = {}
        for i in instances:
            first.setdefault(i.layer, i)
        self.delta_ext = np.stack([first[l].delta_ext for l in layers])
        self.node_of = np.stack([first[l].node_of for l in layers])
        self.gates = np.stack([i.gates for i in instances])
        self.topk = np.stack([i.topk for i in instances])
        self.layer_id = np.array([pos[i.layer] for i in instances])
        self.layer = np.array([i.layer for i in instances])
        self.cost = np.stack([i.node_cost for i in instances])
        self.allowed = np.stack([i.node_feasible for i in instances])
        self.compute = float(instances[0].compute_cost)
        self.etopk = np.array([topk_energy(i) for i in instances])
        self.eps = np.array([float(i.budget) for i in instances])

    def solve(self, rows, lam, cap):
        _, energy, err, _ = solve_decode_batch(
            self.gates[rows], self.topk[rows], self.layer_id[rows], self.delta_ext, self.node_of, self.cost[rows],
            self.allowed[rows], cap[rows], self.compute, 1.0 / self.etopk[rows], lam / self.eps[rows],
        )
        return energy / self.etopk[rows], err


def lagrangian_bound(
    instances: list[DecodeInstance],
    eps_bar: float | dict | None = None,
    eps_max_factor: float = 3.0,
    iters: int = 40,
    cap: float | dict | None = None,
) -> LagrangianBound:
    """Offline Lagrangian lower bound on the least mean normalized energy (module docstring).

    ``eps_bar``: the average budget per layer (default: each instance's
    ``budget``); a float applies to every layer, a dict maps layer -> value.
    The per-token cap is ``eps_max_factor * budget`` unless ``cap`` is given
    (float or dict by layer).  Any evaluated ``lambda`` gives a valid bound;
    the best one found is returned.
    """
    st = _Stack(instances)
    n = len(instances)

    def per_layer(val, default):
        if val is None:
            return default
        if isinstance(val, dict):
            return np.array([val[l] for l in st.layer], dtype=np.float64)
        return np.full(n, float(val))

    ebar = per_layer(eps_bar, st.eps)
    capv = per_layer(cap, eps_max_factor * st.eps)
    total, lams, parts, feasible = 0.0, {}, {}, True
    for l in sorted(set(st.layer.tolist())):
        rows = np.flatnonzero(st.layer == l)
        eb = float(ebar[rows[0]])
        # multiplier on (err - eps_bar)/eps_bar: weight lam/eps_bar on err
        scale = st.eps[rows] / eb  # solve() divides lam by eps_l; rescale to eps_bar

        def dual(lam):
            en, er = st.solve(rows, lam * scale, capv)
            return float(np.mean(en + lam * (er - eb) / eb)), float(np.mean(er) - eb)

        best_val, best_lam = dual(0.0)[0], 0.0
        val0, sub0 = dual(0.0)
        if sub0 > 0:
            lo, hi = 0.0, 1.0
            val, sub = dual(hi)
            grow = 0
            while sub > 0 and grow < 60:
                if val > best_val:
                    best_val, best_lam = val, hi
                lo, hi = hi, hi * 4.0
                val, sub = dual(hi)
                grow += 1
            if sub > 0:
                feasible = False
            if val > best_val:
                best_val, best_lam = val, hi
            for _ in range(iters):
                mid = 0.5 * (lo + hi)
                val, sub = dual(mid)
                if val > best_val:
                    best_val, best_lam = val, mid
                if sub > 0:
                    lo = mid
                else:
                    hi = mid
        lams[l] = best_lam
        parts[l] = (best_val, len(rows))
        total += best_val * len(rows) / n
    return LagrangianBound(total, lams, parts, feasible)
