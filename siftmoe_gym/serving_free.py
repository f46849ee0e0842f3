"""Fast exact serving of a node-set action above the enumeration table (:func:`serve_nodes`).

:func:`siftmoe_gym.serving.serve_free` serves the top-k slots over the experts
on node 0 and the activated nodes with the fewest computed experts whose error
bound meets the cap (ties: lower error), or the least error (ties: fewer
experts) when none does.  It runs the slot dynamic program over the ``2^k``
slot subsets, level by level: tens of numpy calls per step at ``k = 8``.

:func:`serve_nodes` returns the same assignment from a smaller exact
computation, and hands the step to ``serve_free`` whenever it cannot vouch
for that:

- a *group* is a set of slots served by one expert better than skipping each
  of them; a served assignment is a partition of some slots into groups (the
  rest skipped), its count the number of groups, its error
  ``sum(skip costs) - sum(savings)`` (a group's saving: its slots' skip costs
  minus its cost with its best allowed expert);
- groups of two or more slots are few (the experts better than skipping on
  two slots or more, and their subsets), so every family of disjoint such
  groups is enumerated, each completed by the single slots of largest saving
  (the best completion with ``t`` single slots takes the ``t`` largest);
- per count this gives the least error and the second least among other
  partitions; the served count is the first whose least error meets the cap
  (or, past the least error, ``serve_free``'s widened cap), and the served
  partition that count's least-error one.

``serve_free``'s choice depends on float sums taken in its own order; the
sums here differ from them by a few units in the last place.  So whenever two
compared numbers (two partitions of the served count, a count's least error
and the cap, two experts for a served group) lie within ``TIE`` times the
slots' total skip cost, the step is served by ``serve_free`` itself; so are
weighted objectives (``we != 1`` or ``wr != 0``), compute energies so small
that counts tie within the tolerance, and steps with many multi-slot groups
(``MAX_GROUPS``).  Single-slot servers are chosen exactly as ``serve_free``
does (the least ``g_i Delta``, first expert on ties).
"""

from __future__ import annotations

import numpy as np

from .bounds import ABS_TOL, REL_TOL
from .serving import serve_free

TIE = 1e-10
"""Relative gap (to the total skip cost) below which two compared errors count as tied: ``serve_free`` decides."""

MAX_GROUPS = 24
"""Most multi-slot groups enumerated; past it, ``serve_free`` serves the step."""

_INF = float("inf")


_SUBSETS = [[(q, tuple(s for s in range(8) if q >> s & 1)) for q in range(1, 256) if q & b == q and q & (q - 1)]
            for b in range(256)]
"""Per 8-bit slot mask, its submasks of two slots or more and their slots (k <= 8)."""


def serve_nodes(dk: np.ndarray, gates: np.ndarray, node_of: np.ndarray, allowed: np.ndarray, cap: float,
                compute_cost: float, we: float = 1.0, wr: float = 0.0) -> np.ndarray:
    """The assignment (k,) (-1 = skip) :func:`~siftmoe_gym.serving.serve_free` returns (same arguments)."""
    out = _serve_nodes(dk, gates, node_of, allowed, cap, compute_cost, we, wr)
    if out is None:
        return serve_free(dk, gates, node_of, allowed, cap, compute_cost, we, wr)
    return out


def _serve_nodes(dk, gates, node_of, allowed, cap, compute_cost, we, wr):
    k = len(gates)
    if k > 8 or we != 1.0 or wr != 0.0 or not compute_cost > 2 * k * compute_cost * REL_TOL + 2 * ABS_TOL:
        return None
    n = dk.shape[1] - 1
    gd = gates[:, None] * dk  # the same products as serve_free
    gsig = gd[:, n]
    gde = gd[:, :n]
    ok = (gde < gsig[:, None]) & allowed[node_of]  # (k, N): allowed experts better than skipping the slot
    w = np.where(ok, gde, _INF)
    w1 = w.min(axis=1).tolist()
    gs = gsig.tolist()
    stot = sum(gs)
    tol = TIE * stot + 1e-300
    sav1 = [gs[s] - w1[s] for s in range(k)]  # -inf: no allowed expert beats skipping
    # multi-slot groups: subsets (2+ slots) of the slots an allowed expert beats skipping on
    multi = np.flatnonzero(np.count_nonzero(ok, axis=0) >= 2)
    best: dict[int, list] = {}  # mask -> [cost, expert, second cost, slots]
    if multi.size:
        bits = np.packbits(ok[:, multi], axis=0, bitorder="little")[0].tolist()
        vals_t = gde[:, multi].T.tolist()
        for j, b, vals in zip(multi.tolist(), bits, vals_t):
            for q, slots in _SUBSETS[b]:
                cost = 0.0
                for s in slots:
                    cost += vals[s]
                cur = best.get(q)
                if cur is None:
                    best[q] = [cost, j, _INF, slots]
                elif cost < cur[0]:
                    cur[2] = cur[0]
                    cur[0], cur[1] = cost, j
                elif cost < cur[2]:
                    cur[2] = cost
    groups = []  # (mask, saving, expert, singles' saving on the mask)
    for q, (cost, j, second, slots) in best.items():
        sv = -cost
        top1 = -_INF
        cov = 0.0
        for s in slots:
            sv += gs[s]
            cov += sav1[s]
            if sav1[s] > top1:
                top1 = sav1[s]
        if sv < top1 - tol:  # the best single slot of the group alone saves more, with one expert too
            continue
        if second - cost <= tol:
            return None  # two experts serve the group within the tolerance
        groups.append((q, sv, j, cov))
    if len(groups) > MAX_GROUPS:
        return None
    order = sorted((s for s in range(k) if sav1[s] > -_INF), key=sav1.__getitem__, reverse=True)
    sall = sum(sav1[s] for s in order)
    fams = [(0, 0, 0.0, 0.0, ())]  # cover, count, saving of the groups, singles' saving on the cover, groups
    for i, (q, sv, _, cov) in enumerate(groups):
        fams += [(r | q, f + 1, b + sv, cv + cov, idx + (i,)) for r, f, b, cv, idx in fams if not r & q]
    most = max(b + sall - cv for _, _, b, cv, _ in fams)
    least = stot - most
    thr = cap * (1.0 + REL_TOL) + ABS_TOL
    if abs(least - thr) <= tol:
        return None
    if least > thr:  # serve_free's least-violating cap: the least error, 1e-9 wider
        thr = (least * (1 + 1e-9)) * (1.0 + REL_TOL) + ABS_TOL
    need = stot - thr  # the saving a decision needs
    # per family, the fewest single slots that reach the need (the largest savings first)
    cstar = k + 1
    runs = []
    for r, f, b, cv, idx in fams:
        if b + sall - cv < need - 2 * tol:
            continue
        avail = [s for s in order if not r >> s & 1]
        pref = [b]
        for s in avail:
            pref.append(pref[-1] + sav1[s])
        t = 0
        while pref[t] < need - 2 * tol:
            t += 1
        if pref[t] <= need + 2 * tol:
            return None
        runs.append((f, pref, avail, idx))
        if f + t < cstar:
            cstar = f + t
    # the count cstar: its best partition, and no other within the tolerance (nor a lower count near the need)
    top, sec, arg = -_INF, -_INF, None
    for f, pref, avail, idx in runs:
        t = cstar - f
        if t < 0 or t >= len(pref):
            continue
        if t and pref[t - 1] >= need - 2 * tol:
            return None
        v = pref[t]
        alt = v - sav1[avail[t - 1]] + sav1[avail[t]] if 0 < t < len(avail) else -_INF
        if v > top:
            sec = max(top, alt)
            top, arg = v, (idx, avail[:t])
        else:
            sec = max(sec, v, alt)
    if top - sec <= tol:
        return None
    idx, chosen = arg
    assign = np.full(k, -1, dtype=np.int64)
    for i in idx:
        q, _, j, _ = groups[i]
        for s in best[q][3]:
            assign[s] = j
    if chosen:
        arg1 = w.argmin(axis=1)
        for s in chosen:
            assign[s] = arg1[s]
    return assign
