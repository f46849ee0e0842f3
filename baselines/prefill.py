"""Problem P2 (prefilling, slow fading): exact integer program and a fast best-response policy.

A block of ``T`` tokens passes one layer together; node ``m`` carries the
``n_m`` tokens that use any of its experts in one transmission at cost
``c_m(n_m)`` (``PrefillInstance.cost_table``, convex and increasing), every
token keeps ``err_t <= eps``, and only feasible loads may be used
(``feasible_table``; the fallback energies of infeasible loads are never chosen
while a feasible block decision exists).

- :func:`solve_prefill_exact`: the optimum as an integer program solved by
  HiGHS (``scipy.optimize.milp``, zero MIP gap).  The convex node cost is
  exact with one binary ``w[m, r]`` per extra token ``r = 1..n_max`` whose
  cost is the marginal ``c_m(r) - c_m(r-1)``; marginal costs increase, so
  the cheapest ``w`` with ``sum_r w[m, r] = n_m`` fills ``r = 1..n_m`` and
  costs exactly ``c_m(n_m)``.
- :func:`solve_prefill_fast`: sequential marginal-cost greedy followed by
  best-response rounds (each token re-solves its exact P1 with the marginal
  costs given the other tokens' loads).  Total energy is an exact potential
  of these moves, so it never increases and the rounds stop at a local
  optimum.  It reports its gap to the proven lower bound
  :func:`prefill_lower_bound` (and to the exact optimum when asked).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from siftmoe_gym.bounds import extended_delta, within_budget
from siftmoe_gym.instances import DecodeInstance, PrefillInstance
from siftmoe_gym.serving import solve_decode

REL_TOL = 1e-12
ABS_TOL = 1e-15
MILP_OPTIONS = {"mip_rel_gap": 0.0, "presolve": True, "disp": False}


@dataclass
class PrefillSolution:
    """A block decision with its exact evaluation."""

    assignment: np.ndarray  # (T, k) int64, -1 = skip
    energy_j: float
    error_bound: np.ndarray  # (T,)
    within_budget: bool  # every token within budget and every load feasible
    loads: np.ndarray  # (M+1,)
    latency_violation_s: float
    method: str = ""
    lower_bound: float | None = None  # a proven lower bound on the optimum (when known)
    optimum: float | None = None  # the exact optimum (when known)
    rounds: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_assignment(cls, inst: PrefillInstance, assignment, within_budget=None, method: str = "", **kw) -> "PrefillSolution":
        res = inst.evaluate(np.asarray(assignment, dtype=np.int64))
        return cls(res.assignment, res.energy_j, np.asarray(res.error_bound), bool(res.within_budget), res.nodes_used,
                   res.latency_violation_s, method, **kw)

    @property
    def gap(self) -> float | None:
        """Relative gap to the exact optimum if known, else to the lower bound (None if neither)."""
        ref = self.optimum if self.optimum is not None else self.lower_bound
        if not self.within_budget or ref is None or not np.isfinite(ref):
            return None
        return (self.energy_j - ref) / max(ref, 1e-300)


def max_feasible_load(inst: PrefillInstance) -> np.ndarray:
    """Largest load ``n <= T`` such that loads ``1..n`` are all feasible, per node (M+1,)."""
    t = inst.num_tokens
    ft = inst.feasible_table[:, 1 : t + 1]
    bad = ~ft
    first_bad = np.where(bad.any(axis=1), np.argmax(bad, axis=1), t)
    out = first_bad.astype(np.int64)
    out[0] = t
    return out


def _objective_scale(c: np.ndarray) -> float:
    """Divide the objective by its smallest positive coefficient: every meaningful difference is then
    far above HiGHS's absolute tolerances (dividing by the largest would drown small costs when an
    unused link holds a huge fallback energy)."""
    pos = np.abs(c[c != 0])
    return float(pos.min()) if pos.size else 1.0


class _PrefillModel:
    """The P2 integer program for one block (incremental or one-hot load cost)."""

    def __init__(self, inst: PrefillInstance, onehot: bool = False):
        self.inst = inst
        t, k = inst.topk.shape
        n, m1 = inst.num_experts, inst.num_nodes + 1
        self.t, self.k, self.n, self.m1 = t, k, n, m1
        dext = extended_delta(inst.delta, inst.sigma)
        nmax = max_feasible_load(inst)
        self.nmax = nmax
        reach = nmax[inst.node_of] >= 1  # experts on nodes usable at all
        xs, errc = [], []  # (t, s, server) with server = n for skip
        for tt in range(t):
            for s in range(k):
                i = inst.topk[tt, s]
                g = inst.gates[tt, s]
                row = dext[i]
                keep = np.flatnonzero(reach & ((row[:n] < row[n]) | (np.arange(n) == i)))
                for j in keep:
                    xs.append((tt, s, int(j)))
                    errc.append(g * row[j])
                xs.append((tt, s, n))
                errc.append(g * row[n])
        self.xs = np.array(xs, dtype=np.int64)
        self.errc = np.array(errc)
        nx = len(xs)
        ypairs = sorted({(a, j) for a, _, j in xs if j < n})
        self.yidx = {p: nx + q for q, p in enumerate(ypairs)}
        ny = len(ypairs)
        upairs = sorted({(a, int(inst.node_of[j])) for a, j in ypairs if inst.node_of[j] > 0})
        self.uidx = {p: nx + ny + q for q, p in enumerate(upairs)}
        nu = len(upairs)
        base = nx + ny + nu
        nodes = sorted({m for _, m in upairs})
        self.widx = {}
        cost_w = []
        for m in nodes:
            rng = range(0, nmax[m] + 1) if onehot else range(1, nmax[m] + 1)
            for r in rng:
                self.widx[(m, r)] = base + len(cost_w)
                cost_w.append(inst.cost_table[m, r] if onehot else inst.cost_table[m, r] - inst.cost_table[m, r - 1])
        nw = len(cost_w)
        self.nslack = base + nw
        self.nv = base + nw + t  # slack per token (fixed at 0 unless soft)
        energy = np.zeros(self.nv)
        energy[nx : nx + ny] = inst.compute_cost
        energy[base : base + nw] = np.array(cost_w)
        self.scale = _objective_scale(energy)
        self.energy_cost = energy / self.scale
        integrality = np.ones(self.nv)
        integrality[nx : nx + ny] = 0  # y = max x is integral at the optimum
        integrality[self.nslack :] = 0
        self.integrality = integrality
        rows, cols, vals, lo, hi = [], [], [], [], []
        r = 0

        def add(cs, vs, lo_, hi_):
            nonlocal r
            rows.extend([r] * len(cs))
            cols.extend(cs)
            vals.extend(vs)
            lo.append(lo_)
            hi.append(hi_)
            r += 1

        for tt in range(t):  # one server per slot
            for s in range(k):
                idx = np.flatnonzero((self.xs[:, 0] == tt) & (self.xs[:, 1] == s))
                add(list(idx), [1.0] * len(idx), 1.0, 1.0)
        for q, (tt, s, j) in enumerate(self.xs):  # x <= y
            if j < n:
                add([q, self.yidx[(tt, j)]], [1.0, -1.0], -np.inf, 0.0)
        for (tt, j), yi in self.yidx.items():  # y <= u
            m = int(inst.node_of[j])
            if m > 0:
                add([yi, self.uidx[(tt, m)]], [1.0, -1.0], -np.inf, 0.0)
        for m in nodes:  # load link
            us = [ui for (tt, mm), ui in self.uidx.items() if mm == m]
            if onehot:
                ws = [self.widx[(m, rr)] for rr in range(0, nmax[m] + 1)]
                add(ws, [1.0] * len(ws), 1.0, 1.0)
                add(ws + us, [float(rr) for rr in range(0, nmax[m] + 1)] + [-1.0] * len(us), 0.0, 0.0)
            else:
                ws = [self.widx[(m, rr)] for rr in range(1, nmax[m] + 1)]
                add(ws + us, [1.0] * len(ws) + [-1.0] * len(us), 0.0, 0.0)
                for rr in range(1, nmax[m]):  # symmetry: fill r in order
                    add([self.widx[(m, rr)], self.widx[(m, rr + 1)]], [1.0, -1.0], 0.0, np.inf)
        self.budget_rows = []
        for tt in range(t):  # err_t - slack_t <= eps
            idx = list(np.flatnonzero(self.xs[:, 0] == tt))
            self.budget_rows.append(r)
            add(idx + [self.nslack + tt], list(self.errc[idx]) + [-1.0], -np.inf, inst.budget)
        self.a = coo_array((vals, (rows, cols)), shape=(r, self.nv)).tocsr()
        self.lo, self.hi = np.array(lo), np.array(hi)

    def _run(self, cost, caps, slack_ub, extra=None, time_limit=None):
        hi = self.hi.copy()
        hi[self.budget_rows] = caps
        cons = [LinearConstraint(self.a, self.lo, hi)]
        if extra is not None:
            cons.append(extra)
        ub = np.ones(self.nv)
        ub[self.nslack :] = slack_ub
        opts = dict(MILP_OPTIONS)
        if time_limit is not None:
            opts["time_limit"] = float(time_limit)
        res = milp(cost, constraints=cons, integrality=self.integrality, bounds=Bounds(np.zeros(self.nv), ub), options=opts)
        return res

    def _assignment(self, xvec) -> np.ndarray:
        assign = np.full((self.t, self.k), -1, dtype=np.int64)
        on = np.flatnonzero(xvec[: len(self.xs)] > 0.5)
        for q in on:
            tt, s, j = self.xs[q]
            assign[tt, s] = j if j < self.n else -1
        return assign

    def solve(self, time_limit=None, soft=False):
        """Hard budgets: the optimal assignment or None (infeasible).  ``soft``: least total excess, then cheapest."""
        caps = np.full(self.t, self.inst.budget)
        if not soft:
            for _ in range(5):
                res = self._run(self.energy_cost, caps, 0.0, time_limit=time_limit)
                if res.x is None:
                    return None
                assign = self._assignment(res.x)
                err = self.inst.evaluate(assign).error_bound
                over = ~within_budget(err, self.inst.budget)
                if not over.any():
                    return assign
                caps = np.where(over, caps - (err - self.inst.budget) - 1e-12 * max(self.inst.budget, 1.0), caps)
            return assign
        slack_cost = np.zeros(self.nv)
        slack_cost[self.nslack :] = 1.0
        res = self._run(slack_cost, caps, np.inf, time_limit=time_limit)
        if res.x is None:
            return None
        total = float(res.x[self.nslack :].sum())
        row = np.zeros(self.nv)
        row[self.nslack :] = 1.0
        extra = LinearConstraint(row[None, :], -np.inf, total * (1 + 1e-9) + 1e-12)
        res2 = self._run(self.energy_cost, caps, np.inf, extra=extra, time_limit=time_limit)
        return self._assignment((res2 if res2.x is not None else res).x)


def _prefill_model(inst: PrefillInstance, onehot: bool = False) -> _PrefillModel:
    return _PrefillModel(inst, onehot=onehot)


def solve_prefill_exact(inst: PrefillInstance, time_limit: float | None = None) -> PrefillSolution:
    """Exact P2 optimum (integer program, incremental convex cost; see module docstring).

    When no block decision meets every token's budget with feasible loads, it
    returns the decision with the least total excess error (then the least
    energy) over feasible loads, flagged ``within_budget=False``.
    """
    model = _PrefillModel(inst)
    assign = model.solve(time_limit=time_limit)
    if assign is None:
        assign = model.solve(time_limit=time_limit, soft=True)
        sol = PrefillSolution.from_assignment(inst, assign, method="milp-soft")
        sol.within_budget = False
        return sol
    sol = PrefillSolution.from_assignment(inst, assign, method="milp")
    sol.optimum = sol.energy_j
    sol.lower_bound = sol.energy_j
    return sol


def token_instance(inst: PrefillInstance, t: int, loads_other: np.ndarray) -> DecodeInstance:
    """Token ``t`` as a decode instance with marginal node costs given the other tokens' loads."""
    m = np.arange(inst.num_nodes + 1)
    nxt = np.minimum(loads_other + 1, inst.cost_table.shape[1] - 1)
    marg = inst.cost_table[m, nxt] - inst.cost_table[m, loads_other]
    marg[0] = 0.0
    feas = inst.feasible_table[m, nxt] & (loads_other + 1 < inst.cost_table.shape[1])
    feas[0] = True
    viol = inst.violation_table[m, nxt]
    return DecodeInstance(inst.gates[t], inst.topk[t], inst.delta, inst.sigma, inst.node_of, marg, feas,
                          inst.compute_cost, inst.budget, viol, inst.layer, _dext=_dext(inst))


def _dext(inst: PrefillInstance) -> np.ndarray:
    d = getattr(inst, "_baselines_dext", None)
    if d is None:
        d = extended_delta(inst.delta, inst.sigma)
        try:
            object.__setattr__(inst, "_baselines_dext", d)
        except Exception:  # pragma: no cover
            pass
    return d


def prefill_lower_bound(inst: PrefillInstance) -> float:
    """Proven lower bound on the P2 optimum: the sum of the tokens' P1 optima at single-token costs.

    ``c_m`` is convex with ``c_m(0) = 0``, so ``c_m(n) >= n c_m(1)``: the
    block's node cost is at least the sum over tokens of the single-token
    costs of the nodes each uses, and every token's decision is feasible for
    its own P1 (a node feasible at load ``n >= 1`` is feasible at 1).
    Returns ``nan`` when some token has no feasible decision.
    """
    total = 0.0
    zero = np.zeros(inst.num_nodes + 1, dtype=np.int64)
    for t in range(inst.num_tokens):
        s = solve_decode(token_instance(inst, t, zero))
        if not s.within_budget:
            return float("nan")
        total += s.energy_j
    return total


def _token_nodes(inst: PrefillInstance, a: np.ndarray) -> np.ndarray:
    used = np.zeros(inst.num_nodes + 1, dtype=np.int64)
    used[inst.node_of[a[a >= 0]]] = 1
    return used


def solve_prefill_fast(inst: PrefillInstance, max_rounds: int = 20, report_gap: bool = True,
                       exact_gap: bool = False) -> PrefillSolution:
    """Marginal-cost greedy plus best-response rounds (see module docstring).

    When the block it reaches is over a budget (a token over its error budget or an infeasible load), the
    exact program is solved and its block returned instead if it keeps every budget (``method`` then reads
    ``"best-response+exact"``): the fast policy never returns an over-budget block when a feasible one exists.

    ``report_gap``: also compute :func:`prefill_lower_bound`; ``exact_gap``:
    also solve the exact program so that ``gap`` is the gap to the optimum.
    """
    t = inst.num_tokens
    k = inst.topk.shape[1]
    assign = np.full((t, k), -1, dtype=np.int64)
    used = np.zeros((t, inst.num_nodes + 1), dtype=np.int64)
    ok = np.zeros(t, dtype=bool)
    loads = np.zeros(inst.num_nodes + 1, dtype=np.int64)
    for tt in range(t):  # sequential greedy
        s = solve_decode(token_instance(inst, tt, loads))
        assign[tt], ok[tt] = s.assignment, s.within_budget
        used[tt] = _token_nodes(inst, s.assignment)
        loads += used[tt]
    rounds = 0
    for rounds in range(1, max_rounds + 1):
        changed = False
        for tt in range(t):
            other = loads - used[tt]
            ti = token_instance(inst, tt, other)
            cur = ti.evaluate(assign[tt])
            cur_ok = cur.within_budget
            s = solve_decode(ti)
            tol = abs(cur.energy_j) * 1e-12 + 1e-18
            better = (s.within_budget and (not cur_ok or s.energy_j < cur.energy_j - tol)) or (
                not s.within_budget and not cur_ok and s.error_bound < float(cur.error_bound) * (1 - 1e-12))
            if better:
                assign[tt], ok[tt] = s.assignment, s.within_budget
                used[tt] = _token_nodes(inst, s.assignment)
                loads = other + used[tt]
                changed = True
        if not changed:
            break
    sol = PrefillSolution.from_assignment(inst, assign, method="best-response", rounds=rounds)
    ex = None
    if not sol.within_budget:
        ex = solve_prefill_exact(inst)
        if ex.within_budget:
            sol = PrefillSolution.from_assignment(inst, ex.assignment, method="best-response+exact", rounds=rounds)
            sol.optimum = ex.energy_j
    if report_gap:
        sol.lower_bound = prefill_lower_bound(inst)
    if exact_gap:
        ex = ex if ex is not None else solve_prefill_exact(inst)
        if ex.within_budget:
            sol.optimum = ex.energy_j
    return sol
