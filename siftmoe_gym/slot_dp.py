"""The slot dynamic program of exact serving (:mod:`siftmoe_gym.serving`'s search method) and
:func:`serve_free`, node-set serving when every allowed node costs nothing.

For a set of allowed servers, :func:`_slot_dp` gives the least error for each
number of server groups (a dynamic program over subsets of the top-k slots;
only slot/server pairs better than skipping are used); :func:`serve_free` is
one run of it with the objective ``we * e_c * |C| + wr * err``, how the
environments serve a node-set action (its nodes are paid whatever serves).
The exact node-set search of :mod:`siftmoe_gym.partition_search` gives the
same choice faster where it can vouch for it
(:func:`siftmoe_gym.serving_free.serve_nodes`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .bounds import ABS_TOL, REL_TOL
from .bounds import within_budget as _within


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


def serve_free(dk: np.ndarray, gates: np.ndarray, node_of: np.ndarray, allowed: np.ndarray, cap: float,
               compute_cost: float, we: float = 1.0, wr: float = 0.0, pernode: np.ndarray | None = None) -> np.ndarray:
    """The assignment (k,) (-1 = skip) :func:`~siftmoe_gym.serving.solve_decode` returns when every allowed node costs nothing.

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
