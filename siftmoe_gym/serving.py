"""Exact serving of one decode decision (problem P1 and its weighted variants).

Given a :class:`~siftmoe_gym.instances.DecodeInstance` and a set of *allowed*
nodes (node 0 always allowed), find the assignment of the top-k slots to
experts on allowed nodes (or skip) that minimizes

    energy_weight * energy + error_weight * err      subject to  err <= cap

where ``energy = sum of used-node costs + e_c * |distinct computed experts|``
(a substitute shared by several slots is computed once).  With
``allowed = node_feasible``, ``cap = budget`` and the default weights this
is the exact P1 optimum; with ``allowed`` an agent's node set it is how the
environments serve a node-set action; with ``error_weight = Q / eps`` and
``energy_weight = V / E_topk`` it is the drift-plus-penalty step of P3.
Ties go to the lower error.  When no assignment meets the cap, the result is
the least-error assignment over the allowed nodes (ties: cheaper) with
``within_budget = False``.

Two exact algorithms:

- *table* (small ``(N+1)^k``, e.g. the default N=8, k=2): every assignment is
  enumerated once per placement and scored in one vectorized pass; this is
  also the batched solver;
- *search* (large, e.g. N=64, k=8): branch and bound over subsets ``U`` of
  allowed edge nodes, ordered by a lower bound, and for each ``U`` a dynamic
  program over subsets of slots that yields, for every number ``c`` of
  distinct servers, the least error reachable with experts on ``U`` and node
  0; the objective for ``U`` is then ``min_c`` of the weighted sum.  Every
  assignment is covered by the ``U`` of the nodes it uses, so the minimum
  over ``U`` is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .instances import DecodeInstance

TABLE_LIMIT = 4096
"""Largest ``(N+1)^k`` for which the enumeration table is used."""
REL_TOL = 1e-12
ABS_TOL = 1e-15


@dataclass(frozen=True)
class DecodeSolution:
    assignment: np.ndarray  # (k,) int64, -1 = skip
    energy_j: float
    error_bound: float
    within_budget: bool
    nodes_used: np.ndarray  # (M+1,) bool


def _within(err, cap):
    return err <= cap * (1.0 + REL_TOL) + ABS_TOL


# ----------------------------------------------------------------- table method
@lru_cache(maxsize=16)
def _combos(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """All ``(n+1)^k`` assignments as server indices (skip = n) and their distinct counts."""
    grids = np.stack(np.meshgrid(*[np.arange(n + 1)] * k, indexing="ij"), axis=-1).reshape(-1, k)
    s = np.sort(np.where(grids == n, -1, grids), axis=1)
    count = (s >= 0).sum(axis=1) - np.sum((s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0), axis=1)
    return grids.astype(np.int64), count.astype(np.float64)


_NODE_TABLES: dict[tuple, np.ndarray] = {}


def _combo_nodes(node_of: np.ndarray, m1: int, k: int) -> np.ndarray:
    """(C, M+1) float 0/1: nodes each enumerated assignment uses (skip uses none)."""
    key = (node_of.tobytes(), m1, k)
    table = _NODE_TABLES.get(key)
    if table is None:
        n = len(node_of)
        grids, _ = _combos(n, k)
        onehot = np.zeros((n + 1, m1))
        onehot[np.arange(n), node_of] = 1.0
        table = np.minimum(onehot[grids].sum(axis=1), 1.0)
        if len(_NODE_TABLES) > 256:
            _NODE_TABLES.clear()
        _NODE_TABLES[key] = table
    return table


def _pick(obj, err, energy, valid, cap):
    """Row-wise choice: valid min objective (ties lower error), else min error (ties cheaper)."""
    big = np.inf
    o = np.where(valid, obj, big)
    best = o.min(axis=1, keepdims=True)
    tie = valid & (o <= best + np.abs(best) * REL_TOL + ABS_TOL)
    pick_ok = np.argmin(np.where(tie, err, big), axis=1)
    emin = err.min(axis=1, keepdims=True)
    tie2 = err <= emin * (1 + REL_TOL) + ABS_TOL
    pick_bad = np.argmin(np.where(tie2, energy, big), axis=1)
    ok = np.isfinite(best[:, 0])
    return np.where(ok, pick_ok, pick_bad), ok


def _table_solve(gates, topk, dext, node_of, node_cost, allowed, cap, compute_cost, we, wr):
    """Batched table solver for one placement (``node_of`` (N,), ``dext`` (N, N+1))."""
    n = len(node_of)
    k = topk.shape[1]
    m1 = node_cost.shape[1]
    grids, count = _combos(n, k)
    cn = _combo_nodes(node_of, m1, k)  # (C, M+1)
    err = np.zeros((len(topk), len(grids)))
    for s in range(k):
        err += gates[:, s : s + 1] * dext[topk[:, s][:, None], grids[:, s][None, :]]
    energy = node_cost @ cn.T + compute_cost * count[None, :]
    banned = (~allowed).astype(np.float64) @ cn.T > 0  # uses a disallowed node
    err_allowed = np.where(banned, np.inf, err)
    obj = we[:, None] * energy + wr[:, None] * err
    valid = ~banned & _within(err, cap[:, None])
    idx, ok = _pick(obj, err_allowed, np.where(banned, np.inf, energy), valid, cap)
    rows = np.arange(len(idx))
    assign = grids[idx]
    assign = np.where(assign == n, -1, assign)
    return assign, energy[rows, idx], err[rows, idx], ok


# ---------------------------------------------------------------- search method
@lru_cache(maxsize=16)
def _slot_subsets(k: int):
    """Subset/slot incidence (2^k, k) and (mask, group) pairs with group containing mask's lowest slot."""
    size = 1 << k
    inc = ((np.arange(size)[:, None] >> np.arange(k)[None, :]) & 1).astype(np.float64)
    pm, pg = [], []
    for mask in range(1, size):
        low = mask & -mask
        rest = mask ^ low
        sub = rest
        while True:
            pm.append(mask)
            pg.append(sub | low)
            if sub == 0:
                break
            sub = (sub - 1) & rest
    pm, pg = np.array(pm), np.array(pg)
    order = np.argsort(pm, kind="stable")
    pm, pg = pm[order], pg[order]
    starts = np.searchsorted(pm, np.arange(1, size))
    return inc, pm, pg, pm ^ pg, starts


def _slot_dp(gd: np.ndarray, gsig: np.ndarray, servers: np.ndarray, alpha: float = 0.0, beta: float = 0.0,
             cap: float = np.inf, floor: float = 0.0):
    """Least error for each number of distinct servers.

    ``gd`` (k, |A|): gate-weighted dissimilarity of each slot to each
    allowed server; ``gsig`` (k,): gate-weighted skip costs.  Returns
    ``(minerr (k+1,), rebuild)`` where ``rebuild(c)`` gives the assignment.

    Levels are computed in order of ``c`` and the rest are left at ``inf``
    once no larger ``c`` can beat the best objective ``alpha c + beta err``
    found within ``cap`` (``floor`` is a lower bound on any error, so level
    ``c'`` costs at least ``alpha c' + beta floor``).  Ties are kept going
    (a larger ``c`` with equal objective may have lower error).
    """
    k = len(gsig)
    inc, pm, pg, pr, starts = _slot_subsets(k)
    size = 1 << k
    full = size - 1
    skipc = inc @ gsig  # (2^k,)
    if servers.size:
        ws = inc @ gd  # (2^k, |A|)
        wj = np.argmin(ws, axis=1)
        w = ws[np.arange(size), wj]
    else:
        w = np.full(size, np.inf)
        wj = np.zeros(size, dtype=np.int64)
    w[0] = 0.0
    # A group served by one server no better than skipping it is dominated (skip it: no more error,
    # one server fewer), so only useful groups enter the recursion.
    keep = w[pg] < skipc[pg]
    kpm, kpg, kpr = pm[keep], pg[keep], pr[keep]
    wk = w[kpg]
    seg_starts = np.flatnonzero(np.diff(kpm, prepend=-1))  # pairs are sorted by mask
    seg_masks = kpm[seg_starts]
    seg_ends = np.append(seg_starts[1:], len(kpm))
    levels = [np.full(size, np.inf)]
    levels[0][0] = 0.0
    minerr = np.full(k + 1, np.inf)
    best_mask = np.zeros(k + 1, dtype=np.int64)
    comp = skipc[full ^ np.arange(size)]
    tot = levels[0] + comp
    best_mask[0] = int(np.argmin(tot))
    minerr[0] = tot[best_mask[0]]
    best_obj = alpha * 0 + beta * minerr[0] if _within(minerr[0], cap) else np.inf
    for c in range(1, k + 1):
        if alpha * c + beta * floor > best_obj + abs(best_obj) * REL_TOL + ABS_TOL or not kpm.size:
            break
        prev = levels[-1]
        cur = prev.copy()
        cur[seg_masks] = np.minimum(prev[seg_masks], np.minimum.reduceat(wk + prev[kpr], seg_starts))
        levels.append(cur)
        tot = cur + comp
        best_mask[c] = int(np.argmin(tot))
        minerr[c] = tot[best_mask[c]]
        if _within(minerr[c], cap):
            best_obj = min(best_obj, alpha * c + beta * minerr[c])

    def rebuild(c: int) -> np.ndarray:
        assign = np.full(k, -1, dtype=np.int64)
        mask = int(best_mask[c])
        while mask and c > 0:
            cur, prev = levels[c], levels[c - 1]
            if prev[mask] <= cur[mask]:
                c -= 1
                continue
            seg = int(np.searchsorted(seg_masks, mask))
            cand = kpg[seg_starts[seg] : seg_ends[seg]]
            g = int(cand[np.argmin(w[cand] + prev[mask ^ cand])])
            slots = (g >> np.arange(k)) & 1 == 1
            assign[slots] = servers[wj[g]]
            mask ^= g
            c -= 1
        return assign

    return minerr, rebuild


def _search_solve(inst: DecodeInstance, allowed: np.ndarray, cap: float, we: float, wr: float) -> np.ndarray:
    """Branch and bound over allowed node subsets; falls back to least error (ties cheaper)."""
    k, n = len(inst.topk), inst.num_experts
    dk = inst.delta_ext[inst.topk]  # (k, N+1)
    g = inst.gates
    gsig = g * dk[:, n]
    edges = np.flatnonzero(allowed[1:]) + 1
    a = len(edges)
    # best (least) dissimilarity per slot on each node, then on each allowed subset
    m1 = len(allowed)
    order_e = np.argsort(inst.node_of, kind="stable")
    counts_n = np.bincount(inst.node_of, minlength=m1)
    bounds = np.concatenate([[0], np.cumsum(counts_n)[:-1]])
    has = counts_n > 0
    pernode = np.full((k, m1), np.inf)
    pernode[:, has] = np.minimum.reduceat(dk[:, order_e], bounds[has], axis=1)
    nsub = 1 << a
    best_per = np.empty((nsub, k))
    best_per[0] = np.minimum(pernode[:, 0], dk[:, n])
    cost_u = np.zeros(nsub)
    for b in range(a):
        lo, hi = 1 << b, 1 << (b + 1)
        best_per[lo:hi] = np.minimum(best_per[:lo], pernode[:, edges[b]])
        cost_u[lo:hi] = cost_u[:lo] + inst.node_cost[edges[b]]
    errmin = best_per @ g
    ec = inst.compute_cost
    feasible_u = _within(errmin, cap)
    if not feasible_u.any():  # least-violating: least error, ties cheaper
        cap = float(errmin.min()) * (1 + 1e-9)
        we, wr = 1.0, 0.0
        feasible_u = _within(errmin, cap)
    lb = we * cost_u + wr * errmin
    order = np.flatnonzero(feasible_u)[np.argsort(lb[feasible_u], kind="stable")]
    counts = np.arange(k + 1)
    best = (np.inf, np.inf, None)
    node_mask = np.zeros(m1, dtype=bool)
    for u in order:
        if lb[u] > best[0] + abs(best[0]) * REL_TOL + ABS_TOL:
            break
        node_mask[:] = False
        node_mask[0] = True
        node_mask[edges[((u >> np.arange(a)) & 1) == 1]] = True
        servers = np.flatnonzero(node_mask[inst.node_of])
        minerr, rebuild = _slot_dp(g[:, None] * dk[:, servers], gsig, servers, we * ec, wr, cap, errmin[u])
        ok = _within(minerr, cap)
        if not ok.any():
            continue
        obj = np.where(ok, we * (cost_u[u] + ec * counts) + wr * np.where(ok, minerr, 0.0), np.inf)
        low = obj.min()
        tie = obj <= low + abs(low) * REL_TOL + ABS_TOL
        c = int(np.argmin(np.where(tie, minerr, np.inf)))
        cand = (obj[c], minerr[c])
        tol = abs(best[0]) * REL_TOL + ABS_TOL
        if cand[0] < best[0] - tol or (cand[0] <= best[0] + tol and cand[1] < best[1]):
            best = (cand[0], cand[1], (rebuild, c))
    rebuild, c = best[2]
    return rebuild(c)


# ------------------------------------------------------------------------ API
def solve_decode(
    inst: DecodeInstance,
    allowed: np.ndarray | None = None,
    *,
    cap: float | None = None,
    energy_weight: float = 1.0,
    error_weight: float = 0.0,
) -> DecodeSolution:
    """Exact best assignment within ``allowed`` nodes (see module docstring)."""
    allowed = inst.node_feasible.copy() if allowed is None else np.asarray(allowed, dtype=bool).copy()
    if allowed.shape != inst.node_feasible.shape:
        raise ValueError(f"allowed must have shape {inst.node_feasible.shape}, got {allowed.shape}")
    allowed[0] = True
    cap = float(inst.budget if cap is None else cap)
    n, k = inst.num_experts, len(inst.topk)
    if (n + 1) ** k <= TABLE_LIMIT:
        assign, _, _, _ = _table_solve(
            inst.gates[None], inst.topk[None], inst.delta_ext, inst.node_of, inst.node_cost[None],
            allowed[None], np.array([cap]), inst.compute_cost, np.array([energy_weight], float),
            np.array([error_weight], float),
        )
        assign = assign[0]
    else:
        assign = _search_solve(inst, allowed, cap, energy_weight, error_weight)
    return _solution(inst, assign, cap)


def _solution(inst: DecodeInstance, assign: np.ndarray, cap: float) -> DecodeSolution:
    """Energy, error and nodes of a solver-made assignment (same formulas as ``DecodeInstance.evaluate``)."""
    n = inst.num_experts
    experts = np.unique(assign[assign >= 0])
    used = np.zeros(len(inst.node_cost), dtype=bool)
    used[inst.node_of[experts]] = True
    energy = float(inst.node_cost[used].sum() + inst.compute_cost * len(experts))
    err = float(np.dot(inst.gates, inst.delta_ext[inst.topk, np.where(assign < 0, n, assign)]))
    return DecodeSolution(assign, energy, err, bool(_within(err, cap)), used)


def solve_decode_batch(
    gates: np.ndarray,
    topk: np.ndarray,
    layer: np.ndarray,
    delta_ext: np.ndarray,
    node_of: np.ndarray,
    node_cost: np.ndarray,
    allowed: np.ndarray,
    cap: np.ndarray,
    compute_cost: float,
    energy_weight: float | np.ndarray = 1.0,
    error_weight: float | np.ndarray = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Batched :func:`solve_decode` over ``B`` decisions.

    ``gates``/``topk`` (B, k), ``layer`` (B,), ``delta_ext`` (L, N, N+1),
    ``node_of`` (L, N), ``node_cost``/``allowed`` (B, M+1), ``cap`` (B,).
    Returns ``(assignment (B, k), energy (B,), error (B,), within_budget (B,))``.
    """
    gates = np.asarray(gates, dtype=np.float64)
    topk = np.asarray(topk, dtype=np.int64)
    layer = np.asarray(layer, dtype=np.int64)
    b, k = topk.shape
    n = delta_ext.shape[-2]
    allowed = np.asarray(allowed, dtype=bool).copy()
    allowed[:, 0] = True
    node_cost = np.asarray(node_cost, dtype=np.float64)
    cap = np.broadcast_to(np.asarray(cap, dtype=np.float64), (b,))
    we = np.broadcast_to(np.asarray(energy_weight, dtype=np.float64), (b,))
    wr = np.broadcast_to(np.asarray(error_weight, dtype=np.float64), (b,))
    assign = np.empty((b, k), dtype=np.int64)
    energy, err, ok = np.empty(b), np.empty(b), np.empty(b, dtype=bool)
    if (n + 1) ** k <= TABLE_LIMIT:
        chunk = max(1, (1 << 22) // (n + 1) ** k)
        for lay in np.unique(layer):
            rows = np.flatnonzero(layer == lay)
            for s in range(0, len(rows), chunk):
                r = rows[s : s + chunk]
                a_, e_, r_, o_ = _table_solve(
                    gates[r], topk[r], delta_ext[lay], node_of[lay], node_cost[r], allowed[r], cap[r],
                    compute_cost, we[r], wr[r],
                )
                assign[r], energy[r], err[r], ok[r] = a_, e_, r_, o_
        return assign, energy, err, ok
    for i in range(b):
        lay = int(layer[i])
        inst = DecodeInstance(
            gates[i], topk[i], delta_ext[lay][:, :n], delta_ext[lay][:, n], node_of[lay], node_cost[i],
            allowed[i], compute_cost, float(cap[i]), layer=lay, _dext=delta_ext[lay],
        )
        sol = solve_decode(inst, allowed[i], cap=float(cap[i]), energy_weight=float(we[i]), error_weight=float(wr[i]))
        assign[i], energy[i], err[i], ok[i] = sol.assignment, sol.energy_j, sol.error_bound, sol.within_budget
    return assign, energy, err, ok
