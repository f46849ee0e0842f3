"""Reference solvers used to prove the fast solvers optimal (tests and benchmarks).

- :func:`brute_force_decode`: enumerates every assignment of the top-k slots
  to an expert or skip, ``(N+1)^k`` of them; extra computed experts beyond
  the assignment's servers only add cost, so this covers every decision.
- :func:`milp_decode`: P1 (and its weighted/capped variants) as an integer
  program solved by HiGHS through :func:`scipy.optimize.milp`.
- :func:`brute_force_prefill`: enumerates every block decision of a tiny P2
  instance (product over tokens of ``(N+1)^k`` assignments).
- :func:`milp_prefill_onehot`: P2 as an integer program whose node cost uses
  one binary per possible load (a one-hot choice of ``n_m``), so it does not
  rely on convexity; an independent formulation from the incremental one of
  :func:`baselines.prefill.solve_prefill_exact`.

All of them return the same :class:`~siftmoe_gym.serving.DecodeSolution` /
:class:`~baselines.prefill.PrefillSolution` shapes as the fast solvers and
follow the same rule when nothing meets the budget (least error, then least
energy, flagged ``within_budget=False``).
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from siftmoe_gym.bounds import ABS_TOL, REL_TOL, within_budget
from siftmoe_gym.instances import DecodeInstance, PrefillInstance, evaluate_decode_batch
from siftmoe_gym.serving import DecodeSolution
BRUTE_LIMIT = 300_000
MILP_OPTIONS = {"mip_rel_gap": 0.0, "presolve": True, "disp": False}


def within(err, cap):
    """The core's budget test: ``err <= cap`` up to 1e-12 relative (1e-15 absolute)."""
    return within_budget(np.asarray(err), np.asarray(cap))


def _allowed(inst_feasible: np.ndarray, allowed) -> np.ndarray:
    a = np.asarray(inst_feasible if allowed is None else allowed, dtype=bool).copy()
    a[0] = True
    return a


# ------------------------------------------------------------------------ P1
def all_assignments(num_experts: int, k: int) -> np.ndarray:
    """Every assignment of ``k`` slots to an expert or skip: ((N+1)^k, k), skip = -1."""
    if (num_experts + 1) ** k > BRUTE_LIMIT:
        raise ValueError(f"(N+1)^k = {(num_experts + 1) ** k} assignments exceed the brute-force limit {BRUTE_LIMIT}")
    vals = list(range(-1, num_experts))
    return np.array(list(itertools.product(vals, repeat=k)), dtype=np.int64).reshape(-1, k)


def _pick(obj, err, energy, valid, usable):
    """Index of the valid minimum objective (ties: lower error), else least error (ties: cheaper)."""
    if valid.any():
        o = np.where(valid, obj, np.inf)
        best = o.min()
        tie = valid & (o <= best + abs(best) * REL_TOL + ABS_TOL)
        return int(np.argmin(np.where(tie, err, np.inf))), True
    e = np.where(usable, err, np.inf)
    emin = e.min()
    tie = usable & (e <= emin * (1 + REL_TOL) + ABS_TOL)
    return int(np.argmin(np.where(tie, energy, np.inf))), False


def brute_force_decode(
    inst: DecodeInstance, allowed=None, *, cap: float | None = None, energy_weight: float = 1.0, error_weight: float = 0.0
) -> DecodeSolution:
    """Exhaustive P1 reference (same contract as :func:`siftmoe_gym.serving.solve_decode`)."""
    allowed = _allowed(inst.node_feasible, allowed)
    cap = float(inst.budget if cap is None else cap)
    n, k = inst.num_experts, len(inst.topk)
    cand = all_assignments(n, k)
    b = len(cand)
    energy, err, _ = evaluate_decode_batch(
        np.broadcast_to(inst.gates, (b, k)), np.broadcast_to(inst.topk, (b, k)), cand,
        inst.delta_ext, inst.node_of, inst.node_cost, inst.compute_cost,
    )
    nodes = np.where(cand >= 0, inst.node_of[np.maximum(cand, 0)], 0)
    usable = allowed[nodes].all(axis=1)
    obj = energy_weight * energy + error_weight * err
    i, ok = _pick(obj, err, energy, usable & within(err, cap), usable)
    res = inst.evaluate(cand[i])
    return DecodeSolution(cand[i].copy(), res.energy_j, float(res.error_bound), ok, res.nodes_used)


def _decode_milp_once(inst, allowed, cap, we, wr, minimize_error=False):
    """One HiGHS solve; returns the assignment or None when infeasible."""
    n, k, m1 = inst.num_experts, len(inst.topk), inst.num_nodes + 1
    dk = inst.delta_ext[inst.topk]  # (k, N+1)
    g = inst.gates
    servers = [j for j in range(n) if allowed[inst.node_of[j]]] + [n]
    ns = len(servers)
    srv = np.array(servers)
    nx, ny, nz = k * ns, n, m1 - 1
    nv = nx + ny + nz
    xi = lambda s, c: s * ns + c  # noqa: E731
    yi = lambda j: nx + j  # noqa: E731
    zi = lambda m: nx + ny + m - 1  # noqa: E731
    errc = (g[:, None] * dk[:, srv]).ravel()  # coefficient of x in err
    cost = np.zeros(nv)
    if minimize_error:
        cost[:nx] = errc
    else:
        cost[nx : nx + ny] = we * inst.compute_cost * allowed[inst.node_of]
        cost[nx + ny :] = we * inst.node_cost[1:] * allowed[1:]
        cost[:nx] += wr * errc
        pos = np.abs(cost[cost != 0])  # smallest coefficient -> 1 (see baselines.prefill._objective_scale)
        cost = cost / (pos.min() if pos.size else 1.0)
    rows, cols, vals, lo, hi = [], [], [], [], []
    r = 0
    for s in range(k):  # each slot one server
        for c in range(ns):
            rows.append(r), cols.append(xi(s, c)), vals.append(1.0)
        lo.append(1.0), hi.append(1.0)
        r += 1
    for s in range(k):  # x <= y
        for c, j in enumerate(servers[:-1]):
            rows += [r, r]
            cols += [xi(s, c), yi(j)]
            vals += [1.0, -1.0]
            lo.append(-np.inf), hi.append(0.0)
            r += 1
    for j in range(n):  # y <= z
        if inst.node_of[j] > 0:
            rows += [r, r]
            cols += [yi(j), zi(inst.node_of[j])]
            vals += [1.0, -1.0]
            lo.append(-np.inf), hi.append(0.0)
            r += 1
    if not minimize_error:
        for idx in range(nx):
            rows.append(r), cols.append(idx), vals.append(errc[idx])
        lo.append(-np.inf), hi.append(cap)
        r += 1
    a = coo_array((vals, (rows, cols)), shape=(r, nv)).tocsr()
    ub = np.ones(nv)
    for m in range(1, m1):
        if not allowed[m]:
            ub[zi(m)] = 0.0
    for j in range(n):
        if not allowed[inst.node_of[j]]:
            ub[yi(j)] = 0.0
    res = milp(cost, constraints=LinearConstraint(a, lo, hi), integrality=np.ones(nv), bounds=Bounds(np.zeros(nv), ub),
               options=MILP_OPTIONS)
    if res.x is None:
        return None
    x = np.round(res.x[:nx]).reshape(k, ns)
    assign = srv[np.argmax(x, axis=1)]
    return np.where(assign == n, -1, assign).astype(np.int64)


def milp_decode(
    inst: DecodeInstance, allowed=None, *, cap: float | None = None, energy_weight: float = 1.0, error_weight: float = 0.0
) -> DecodeSolution:
    """P1 as an integer program (HiGHS, zero MIP gap).

    Binary ``x[s, j]`` (slot ``s`` served by ``j`` or skip), ``y[j]`` (expert
    computed), ``z[m]`` (node used); ``sum_j x[s, j] = 1``, ``x <= y``,
    ``y[j] <= z[node(j)]``, ``sum g_s Delta[s, j] x[s, j] <= cap``; minimize
    ``w_E (sum c_m z_m + e_c sum y) + w_err * err``.  The returned decision is
    re-evaluated exactly; if HiGHS's feasibility tolerance let it exceed the
    cap, the cap is tightened by the excess and the solve repeated.
    """
    allowed = _allowed(inst.node_feasible, allowed)
    cap = float(inst.budget if cap is None else cap)
    eff = cap
    for _ in range(5):
        assign = _decode_milp_once(inst, allowed, eff, energy_weight, error_weight)
        if assign is None:
            break
        res = inst.evaluate(assign)
        if within(res.error_bound, cap):
            return DecodeSolution(assign, res.energy_j, float(res.error_bound), True, res.nodes_used)
        eff = eff - (float(res.error_bound) - cap) - 1e-12 * max(cap, 1.0)
    # none meets the cap: least error over allowed nodes, then least energy at that error
    a0 = _decode_milp_once(inst, allowed, np.inf, 1.0, 0.0, minimize_error=True)
    least = float(inst.evaluate(a0).error_bound)
    a1 = _decode_milp_once(inst, allowed, least * (1 + 1e-9) + 1e-15, 1.0, 0.0)
    assign = a1 if a1 is not None else a0
    res = inst.evaluate(assign)
    return DecodeSolution(assign, res.energy_j, float(res.error_bound), bool(within(res.error_bound, cap)), res.nodes_used)


# ------------------------------------------------------------------------ P2
def brute_force_prefill(inst: PrefillInstance):
    """Exhaustive P2 reference over every block decision (tiny blocks only).

    Returns a :class:`~baselines.prefill.PrefillSolution`: the cheapest block
    decision with every token within budget and every node load feasible, or
    (when none exists) the one with the least total excess error over feasible
    loads, then the least energy.
    """
    from .prefill import PrefillSolution

    t, k = inst.topk.shape
    n, m1 = inst.num_experts, inst.num_nodes + 1
    cand = all_assignments(n, k)
    c = len(cand)
    if c**t > BRUTE_LIMIT * 4:
        raise ValueError(f"{c}^{t} block decisions exceed the brute-force limit")
    dext = inst.delta_ext if hasattr(inst, "delta_ext") else np.concatenate([inst.delta, inst.sigma[:, None]], axis=1)
    srv = np.where(cand < 0, n, cand)
    # per token and candidate: error, node use, distinct experts
    err = np.stack([(inst.gates[tt][None, :] * dext[inst.topk[tt][None, :], srv]).sum(axis=1) for tt in range(t)])  # (T, C)
    nodes = np.zeros((c, m1), dtype=np.int64)
    cnt = np.zeros(c)
    for i, a in enumerate(cand):
        used = np.unique(a[a >= 0])
        cnt[i] = len(used)
        nodes[i, inst.node_of[used]] = 1
    grid = np.stack(np.meshgrid(*[np.arange(c)] * t, indexing="ij"), axis=-1).reshape(-1, t)  # (C^T, T)
    loads = nodes[grid].sum(axis=1)  # (C^T, M+1)
    mm = np.arange(m1)
    energy = inst.cost_table[mm[None, :], loads].sum(axis=1) + inst.compute_cost * cnt[grid].sum(axis=1)
    feas_loads = inst.feasible_table[mm[None, :], loads].all(axis=1)
    errs = err[np.arange(t)[None, :], grid]  # (C^T, T)
    ok = within(errs, inst.budget).all(axis=1)
    valid = feas_loads & ok
    if valid.any():
        e = np.where(valid, energy, np.inf)
        i = int(np.argmin(e))
        good = True
    else:
        excess = np.maximum(errs - inst.budget, 0.0).sum(axis=1)
        x = np.where(feas_loads, excess, np.inf)
        xmin = x.min()
        tie = feas_loads & (x <= xmin * (1 + 1e-9) + 1e-15)
        i = int(np.argmin(np.where(tie, energy, np.inf)))
        good = False
    assign = cand[grid[i]]
    return PrefillSolution.from_assignment(inst, assign, within_budget=good, method="brute-force")


def milp_prefill_onehot(inst: PrefillInstance, time_limit: float | None = None):
    """P2 as an integer program with a one-hot load variable per node (no convexity used).

    Binary ``x[t, s, j]``, ``u[t, m]`` (token ``t`` uses node ``m``),
    ``v[m, n]`` (node ``m`` carries exactly ``n`` tokens, feasible ``n``
    only): ``sum_n v[m, n] = 1``, ``sum_n n v[m, n] = sum_t u[t, m]``; cost
    ``sum c_m(n) v[m, n] + e_c sum y``.  Only feasible instances (returns
    ``None`` when HiGHS proves infeasibility).
    """
    from .prefill import PrefillSolution, _prefill_model

    model = _prefill_model(inst, onehot=True)
    sol = model.solve(time_limit=time_limit)
    if sol is None:
        return None
    return PrefillSolution.from_assignment(inst, sol, within_budget=True, method="milp-onehot")
