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
  program over subsets of slots (:mod:`siftmoe_gym.slot_dp`) that yields,
  for every number ``c`` of server groups, the least error reachable with experts on ``U`` and node
  0 (only slot/server pairs better than skipping are used, which prunes most
  groups); the objective for ``U`` is then ``min_c`` of the weighted sum.  Every
  assignment is covered by the ``U`` of the nodes it uses, so the minimum
  over ``U`` is exact.

The environments serve node-set actions by the same rule over a per-system
enumeration table (:class:`siftmoe_gym.serving_table.ServingTable`):
:func:`pick_row` (one decision) and :func:`pick_allowed_rows` (a batch,
through :func:`pick_rows`) pick the served assignment among those a node
set allows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bounds import ABS_TOL, REL_TOL
from .bounds import within_budget as _within
from .instances import DecodeInstance
from .serving_free import serve_nodes
from .slot_dp import _slot_dp, serve_free  # noqa: F401  (serve_free: re-exported)
from .serving_table import TABLE_LIMIT, ServingTable, combos, err_table  # noqa: F401  (ServingTable, err_table: re-exported)


@dataclass(frozen=True)
class DecodeSolution:
    assignment: np.ndarray  # (k,) int64, -1 = skip
    energy_j: float
    error_bound: float
    within_budget: bool
    nodes_used: np.ndarray  # (M+1,) bool


# ----------------------------------------------------------------- table method
_NODE_TABLES: dict[tuple, np.ndarray] = {}


def _combo_nodes(node_of: np.ndarray, m1: int, k: int) -> np.ndarray:
    """(C, M+1) float 0/1: nodes each enumerated assignment uses (skip uses none)."""
    key = (node_of.tobytes(), m1, k)
    table = _NODE_TABLES.get(key)
    if table is None:
        n = len(node_of)
        grids, _ = combos(n, k)
        onehot = np.zeros((n + 1, m1))
        onehot[np.arange(n), node_of] = 1.0
        table = np.minimum(onehot[grids].sum(axis=1), 1.0)
        if len(_NODE_TABLES) > 256:
            _NODE_TABLES.clear()
        _NODE_TABLES[key] = table
    return table


def pick_rows(obj, err, energy, valid):
    """Row-wise choice among candidate decisions (B, C): the valid one of least objective (ties: lower
    error); in rows with none valid, the least error (``err`` inf where not allowed; ties: cheaper).
    Returns ``(index (B,), any_valid (B,))``."""
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


def pick_row(allowed: np.ndarray, err: np.ndarray, energy: np.ndarray, obj: np.ndarray, cap: float) -> tuple[int, bool]:
    """Index of the served assignment among candidates (C,) and whether it meets ``cap``: the rule of
    :func:`pick_rows` (and :func:`solve_decode`) for one decision.

    Candidates are the ``allowed`` ones; among those within ``cap`` the least ``obj`` (ties within the
    tolerance: lower error, then first index), otherwise the least error (ties: lower ``energy``).  The
    same choice as ``pick_rows`` on one row with finite objectives, kept as its own function because
    it skips the branch it does not need (it is on the environments' per-step path).
    """
    ok = allowed & _within(err, cap)
    if ok.any():
        o = np.where(ok, obj, np.inf)
        best = o.min()
        tie = ok & (o <= best + abs(best) * REL_TOL + ABS_TOL)
        return int(np.argmin(np.where(tie, err, np.inf))), True
    ea = np.where(allowed, err, np.inf)
    tie = ea <= ea.min() * (1.0 + REL_TOL) + ABS_TOL
    return int(np.argmin(np.where(tie, energy, np.inf))), False


def pick_allowed_rows(allowed: np.ndarray, err: np.ndarray, energy: np.ndarray, obj: np.ndarray,
                      cap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched :func:`pick_row` over rows (B, C) with caps (B,): :func:`pick_rows` on the allowed candidates."""
    return pick_rows(obj, np.where(allowed, err, np.inf), energy, allowed & _within(err, cap[:, None]))


def _table_solve(gates, topk, dext, node_of, node_cost, allowed, cap, compute_cost, we, wr):
    """Batched table solver for one placement (``node_of`` (N,), ``dext`` (N, N+1))."""
    n = len(node_of)
    k = topk.shape[1]
    m1 = node_cost.shape[1]
    grids, count = combos(n, k)
    cn = _combo_nodes(node_of, m1, k)  # (C, M+1)
    err = np.zeros((len(topk), len(grids)))
    for s in range(k):
        err += gates[:, s : s + 1] * dext[topk[:, s][:, None], grids[:, s][None, :]]
    energy = node_cost @ cn.T + compute_cost * count[None, :]
    banned = (~allowed).astype(np.float64) @ cn.T > 0  # uses a disallowed node
    err_allowed = np.where(banned, np.inf, err)
    obj = we[:, None] * energy + wr[:, None] * err
    valid = ~banned & _within(err, cap[:, None])
    idx, ok = pick_rows(obj, err_allowed, np.where(banned, np.inf, energy), valid)
    rows = np.arange(len(idx))
    assign = grids[idx]
    assign = np.where(assign == n, -1, assign)
    return assign, energy[rows, idx], err[rows, idx], ok


# ---------------------------------------------------------------- search method
MAX_SEARCH_NODES = 24
"""Most costly allowed nodes the node-subset search enumerates (``2^24`` subsets take gigabytes)."""


def _search_solve(inst: DecodeInstance, allowed: np.ndarray, cap: float, we: float, wr: float,
                  free_nodes: bool = True) -> np.ndarray:
    """Branch and bound over allowed node subsets; falls back to least error (ties cheaper).

    With ``free_nodes`` (the default) the allowed edge nodes that cost nothing (``node_cost == 0``, as the
    activated nodes of a node-set action) are in every subset: adding them changes no subset's cost and
    lowers no level's least error, so the optimum is among those subsets, and a node-set action is served by
    one dynamic program instead of ``2^|U|``; costly nodes without an expert that beats skipping a slot are in
    none.  ``free_nodes=False`` enumerates every allowed node (the reference the tests compare with).
    ``ValueError`` past :data:`MAX_SEARCH_NODES` nodes left to enumerate.
    """
    k, n = len(inst.topk), inst.num_experts
    dk = inst.delta_ext[inst.topk]  # (k, N+1)
    g = inst.gates
    gsig = g * dk[:, n]
    edges = allowed[1:].nonzero()[0] + 1
    # best (least) dissimilarity per slot on each node, then on each allowed subset
    m1 = len(allowed)
    order_e, bounds, has = _node_groups(inst.node_of, m1)
    pernode = np.full((k, m1), np.inf)
    pernode[:, has] = np.minimum.reduceat(dk[:, order_e], bounds, axis=1)
    base_nodes = np.zeros(m1, dtype=bool)
    base_nodes[0] = True
    if free_nodes:
        free = edges[inst.node_cost[edges] == 0.0]
        base_nodes[free] = True
        edges = edges[inst.node_cost[edges] != 0.0]
        # a costly node none of whose experts beats skipping a slot serves nothing the DP would use: no subset
        # with it is better than the same subset without it (exact; the DP compares g_s Delta with g_s sigma)
        useful = (g[:, None] * pernode[:, edges] < gsig[:, None]).any(axis=0)
        edges = edges[useful]
    a = len(edges)
    if a > MAX_SEARCH_NODES:
        raise ValueError(
            f"exact P1 searches subsets of the costly allowed nodes with a useful expert: {a} > "
            f"{MAX_SEARCH_NODES} of them (2^{a} subsets); allow fewer nodes")
    if a == 0:  # every allowed node is free (or none is allowed): serve_free's choice (the partition search)
        return serve_nodes(dk, g, inst.node_of, base_nodes, cap, inst.compute_cost, we, wr, pernode[:, base_nodes])
    nsub = 1 << a
    best_per = np.empty((nsub, k))
    best_per[0] = np.minimum(pernode[:, base_nodes].min(axis=1), dk[:, n])
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
    cand_u = feasible_u.nonzero()[0]
    order = cand_u[np.argsort(lb[cand_u], kind="stable")].tolist()
    lb = lb.tolist()
    best_obj, best_err, best_sol = np.inf, np.inf, None
    node_of = inst.node_of
    gdk = g[:, None] * dk
    for u in order:
        if lb[u] > best_obj + abs(best_obj) * REL_TOL + ABS_TOL:
            break
        node_mask = base_nodes.copy()
        node_mask[edges[[b for b in range(a) if u >> b & 1]]] = True
        servers = node_mask[node_of].nonzero()[0]
        minerr, rebuild = _slot_dp(gdk[:, servers], gsig, servers, we * ec, wr, cap, float(errmin[u]))
        base = we * float(cost_u[u])
        for c, e in enumerate(minerr):
            if not _within(e, cap):
                continue
            o = base + we * ec * c + wr * e
            tol = abs(best_obj) * REL_TOL + ABS_TOL
            if o < best_obj - tol or (o <= best_obj + tol and e < best_err):
                best_obj, best_err, best_sol = o, e, (rebuild, c)
    rebuild, c = best_sol
    return rebuild(c)


_NODE_GROUPS: dict[tuple, tuple] = {}


def _node_groups(node_of: np.ndarray, m1: int):
    """Experts sorted by node, start of each nonempty node's run, and which nodes hold experts."""
    key = (node_of.tobytes(), m1)
    hit = _NODE_GROUPS.get(key)
    if hit is None:
        order_e = np.argsort(node_of, kind="stable")
        counts_n = np.bincount(node_of, minlength=m1)
        bounds = np.concatenate([[0], np.cumsum(counts_n)[:-1]])
        has = counts_n > 0
        hit = (order_e, bounds[has], has)
        if len(_NODE_GROUPS) > 256:
            _NODE_GROUPS.clear()
        _NODE_GROUPS[key] = hit
    return hit


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
    distinct = {x for x in assign.tolist() if x >= 0}
    experts = np.fromiter(distinct, dtype=np.int64, count=len(distinct))
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
