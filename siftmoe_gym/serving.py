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
  server groups, the least error reachable with experts on ``U`` and node
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
from functools import lru_cache

import numpy as np

from .bounds import ABS_TOL, REL_TOL
from .bounds import within_budget as _within
from .instances import DecodeInstance
from .partition_search import serve_partition
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
@lru_cache(maxsize=16)
def _slot_subsets(k: int):
    """Subset/slot incidence (2^k, k) and its transpose, each subset's slots, each subset's complement,
    and the (mask, group) pairs sorted by mask, where the group is a subset of the mask containing its
    lowest slot (``pr`` = mask minus group)."""
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
    pm, pg = np.array(pm, dtype=np.int64), np.array(pg, dtype=np.int64)
    order = np.argsort(pm, kind="stable")
    pm, pg = pm[order], pg[order]
    slots = [np.flatnonzero(inc[m]) for m in range(size)]
    return inc, np.ascontiguousarray(inc.T), slots, np.arange(size)[::-1].copy(), pm, pg, pm ^ pg


_BIG = 1e30  # stands for "not useful" in the group costs (finite so that 0 * it stays 0)


def _slot_dp(gd: np.ndarray, gsig: np.ndarray, servers: np.ndarray, alpha: float = 0.0, beta: float = 0.0,
             cap: float = np.inf, floor: float = 0.0):
    """Least error for each number of server groups.

    ``gd`` (k, |A|): gate-weighted dissimilarity of each slot to each
    allowed server; ``gsig`` (k,): gate-weighted skip costs.  Returns
    ``(minerr, rebuild)``: ``minerr`` (list of ``k+1`` floats) holds the
    least error of an assignment whose non-skipped slots form exactly ``c``
    groups, each served by one server (``inf`` if none or not computed), and
    ``rebuild(c)`` gives that assignment.  Two groups may share a server, so
    the true number of distinct servers can be smaller; since fewer servers
    or fewer groups with no more error are never worse, ``min_c`` of the
    weighted objective over these levels is exact.

    Only pairs (slot, server) where the server beats skipping the slot
    (``gd[s, j] < gsig[s]``) are used: any assignment becomes one of those,
    with no more error and no more servers, by skipping the other slots.
    So a group's cost is its best server among those that beat skipping on
    all its slots, and groups with none never enter the recursion (only a
    handful of the ``2^k`` do).

    Levels are computed in order of ``c`` and the rest are left at ``inf``
    once no larger ``c`` can beat the best objective ``alpha c + beta err``
    found within ``cap`` (``floor`` is a lower bound on any error, so level
    ``c'`` costs at least ``alpha c' + beta floor``).  Ties are kept going
    (a larger ``c`` with equal objective may have lower error).
    """
    k = len(gsig)
    inc, inc_t, slots, comp_idx, pm, pg, pr = _slot_subsets(k)
    size = 1 << k
    skipc = inc @ gsig  # (2^k,)
    comp = skipc[comp_idx]  # skip cost of the slots outside each mask
    e0 = float(skipc[size - 1])
    minerr = [e0] + [np.inf] * k
    best_obj = beta * e0 if _within(e0, cap) else np.inf
    if not servers.size:
        return minerr, lambda c: np.full(k, -1, dtype=np.int64)
    better = gd < gsig[:, None]
    keep = better.any(axis=0)  # servers that beat skipping some slot (the others are in no useful group)
    if not keep.all():
        if not keep.any():
            return minerr, lambda c: np.full(k, -1, dtype=np.int64)
        gd, better, servers = gd[:, keep], better[:, keep], servers[keep]
    ws = np.where(better, gd, _BIG).T @ inc_t  # (|A|, 2^k): group costs per server
    w = ws.min(axis=0)
    useful = w < _BIG
    useful[0] = False
    idx = useful[pg].nonzero()[0]
    npairs = len(idx)
    if not npairs:
        return minerr, lambda c: np.full(k, -1, dtype=np.int64)
    kpm, kpg, kpr = pm[idx], pg[idx], pr[idx]
    wk = w[kpg]
    first = np.empty(npairs, dtype=bool)
    first[0] = True
    np.not_equal(kpm[1:], kpm[:-1], out=first[1:])
    seg_starts = first.nonzero()[0]
    seg_masks = kpm[seg_starts]
    # States are the masks that some kept pair covers (in seg order), then the empty mask, then a
    # sentinel (always inf) for the masks no kept pair covers.
    ns = len(seg_masks)
    pos = np.full(size, ns + 1)
    pos[seg_masks] = np.arange(ns)
    pos[0] = ns
    kpr_s = pos[kpr]
    comp_s = comp[seg_masks]
    levels = np.full((k + 1, ns + 2), np.inf)
    levels[0, ns] = 0.0
    vals = [None]
    tots = [None]  # per level, the least error of each state plus its skipped slots (argmin: the best state)
    prev = levels[0]
    thr = cap * (1.0 + REL_TOL) + ABS_TOL  # e <= thr: within_budget(e, cap)
    for c in range(1, k + 1):
        if alpha * c + beta * floor > best_obj + abs(best_obj) * REL_TOL + ABS_TOL:
            break
        v = prev.take(kpr_s)
        v += wk
        cur = levels[c]
        np.minimum.reduceat(v, seg_starts, out=cur[:ns])
        vals.append(v)
        prev = cur
        tot = cur[:ns] + comp_s
        e = float(tot.min())
        if e == np.inf:
            break
        tots.append(tot)
        minerr[c] = e
        if e <= thr:
            best_obj = min(best_obj, alpha * c + beta * e)

    def rebuild(c: int) -> np.ndarray:
        assign = np.full(k, -1, dtype=np.int64)
        i = int(tots[c].argmin()) if c else ns
        ends = seg_starts.tolist() + [npairs]
        while c > 0:
            lo = ends[i]
            seg = vals[c][lo : ends[i + 1]].tolist()
            p = lo + seg.index(min(seg))
            grp = int(kpg[p])
            assign[slots[grp]] = servers[int(ws[:, grp].argmin())]
            i = int(kpr_s[p])
            c -= 1
        return assign

    return minerr, rebuild


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
    if a == 0:  # every allowed node is free (or none is allowed): serve_free's choice, by the partition search
        assign = serve_partition(dk, g, inst.node_of, base_nodes, cap, inst.compute_cost, we, wr)
        return assign if assign is not None else serve_free(dk, g, inst.node_of, base_nodes, cap, inst.compute_cost,
                                                            we, wr, pernode[:, base_nodes])
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


def serve_free(dk: np.ndarray, gates: np.ndarray, node_of: np.ndarray, allowed: np.ndarray, cap: float,
               compute_cost: float, we: float = 1.0, wr: float = 0.0, pernode: np.ndarray | None = None) -> np.ndarray:
    """The assignment (k,) (-1 = skip) :func:`solve_decode` returns when every allowed node costs nothing.

    ``dk`` (k, N+1): the top-k slots' rows of the extended dissimilarity (skip
    last), ``gates`` (k,), ``node_of`` (N,), ``allowed`` (M+1,) bool with node
    0 set, ``cap`` the error cap; the objective is ``we * e_c * |C| + wr * err``
    (node costs are all 0).  This is how the environments serve a node-set
    action (its nodes are paid whatever serves): one run of the slot dynamic
    program over the experts on the allowed nodes, the same computation as
    the node search on such an instance, without the search around it.
    ``pernode`` (k, allowed nodes): the slots' least dissimilarity per allowed
    node when the caller has it.  When no assignment meets ``cap``: the
    least-error one (ties within 1e-9 relative: fewer experts).
    """
    n = dk.shape[1] - 1
    servers = allowed[node_of].nonzero()[0]
    if pernode is None:
        best = np.minimum(dk[:, servers].min(axis=1, initial=np.inf), dk[:, n])
    else:
        best = np.minimum(pernode.min(axis=1), dk[:, n])
    errmin = float((best[None, :] @ gates)[0])
    if not _within(errmin, cap):  # least-violating: least error, ties cheaper
        cap = errmin * (1 + 1e-9)
        we, wr = 1.0, 0.0
    gdk = gates[:, None] * dk
    minerr, rebuild = _slot_dp(gdk[:, servers], gdk[:, n], servers, we * compute_cost, wr, cap, errmin)
    best_obj, best_err, best_c = np.inf, np.inf, 0
    for c, e in enumerate(minerr):
        if not _within(e, cap):
            continue
        o = 0.0 + we * compute_cost * c + wr * e
        tol = abs(best_obj) * REL_TOL + ABS_TOL
        if o < best_obj - tol or (o <= best_obj + tol and e < best_err):
            best_obj, best_err, best_c = o, e, c
    return rebuild(best_c)


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
