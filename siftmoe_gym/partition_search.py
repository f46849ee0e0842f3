"""The exact partition search behind node-set serving above the enumeration table (:func:`serve_partition`).

:func:`siftmoe_gym.slot_dp.serve_free` serves the top-k slots over the experts
on node 0 and the activated nodes with the fewest computed experts whose error
bound meets the cap (ties: lower error), or the least error (ties: fewer
experts) when none does.  It runs the slot dynamic program over the ``2^k``
slot subsets, level by level: tens of numpy calls per step at ``k = 8``.

:func:`serve_partition` returns the same assignment from a smaller exact
computation, or None (``serve_free`` must decide) whenever it cannot vouch
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
sums here may differ from them by a few units in the last place.  So whenever two
compared numbers (two partitions of the served count, a count's least error
and the cap, two experts for a served group) lie within ``TIE`` times the
slots' total skip cost, it returns None and ``serve_free`` decides; so do
weighted objectives (``we != 1`` or ``wr != 0``) and compute energies so small
that counts tie within the tolerance.  Single-slot servers are chosen exactly
as ``serve_free`` does (the least ``g_i Delta``, first expert on ties).

The search is compiled with numba (:func:`siftmoe_gym.jit.compiled`, on first
use; numba caches the machine code on disk).  Every family with its single slots is a
partition of the ``k <= 8`` slots, so there are at most Bell(8) = 4,140
families and every step is enumerated (the Python version this replaced,
with the same sums in the same order, handed steps with more than 24
multi-slot groups to ``serve_free``).

It has no project imports but :mod:`siftmoe_gym.bounds` and :mod:`siftmoe_gym.jit`, so both
:mod:`siftmoe_gym.serving` (exact P1, its subsets without costly nodes) and
:mod:`siftmoe_gym.serving_free` (the environments) call it.
"""

from __future__ import annotations

import numpy as np

from .bounds import ABS_TOL, REL_TOL
from .jit import compiled

TIE = 1e-10
"""Relative gap (to the total skip cost) below which two compared errors count as tied: ``serve_free`` decides."""

_HIGH_BIT = np.array([0] + [q.bit_length() - 1 for q in range(1, 256)], dtype=np.int64)
"""The highest set bit of each 8-bit slot mask."""


def serve_partition(dk: np.ndarray, gates: np.ndarray, node_of: np.ndarray, allowed: np.ndarray, cap: float,
                    compute_cost: float, we: float = 1.0, wr: float = 0.0) -> np.ndarray | None:
    """The assignment (k,) int64 (-1 = skip) :func:`~siftmoe_gym.slot_dp.serve_free` returns for the same
    arguments, or None where ``serve_free`` must decide (see the module docstring)."""
    k = len(gates)
    if k > 8 or we != 1.0 or wr != 0.0 or not compute_cost > 2 * k * compute_cost * REL_TOL + 2 * ABS_TOL:
        return None
    assign = np.empty(k, dtype=np.int64)
    kernel = compiled(_partition_kernel, globals(), ("_grow", "_prefix"))
    ok = kernel(np.ascontiguousarray(dk, dtype=np.float64), np.ascontiguousarray(gates, dtype=np.float64),
                np.ascontiguousarray(node_of, dtype=np.int64), np.ascontiguousarray(allowed, dtype=np.bool_),
                float(cap), REL_TOL, ABS_TOL, assign)
    return assign if ok else None


def _grow(a, size):
    """``a`` copied into an array of twice ``size`` entries (at least ``len(a)``)."""
    out = np.empty(2 * size if 2 * size > len(a) else len(a), dtype=a.dtype)
    out[:len(a)] = a
    return out


def _partition_kernel(dk, gates, node_of, allowed, cap, rel, atol, assign):  # noqa: C901 (one exact search, kept whole)
    """The partition search of the module docstring (compiled by numba; plain Python without it).

    ``dk`` (k, N+1), ``gates`` (k,), ``node_of`` (N,), ``allowed`` (M+1,) bool, ``rel`` / ``atol`` the
    tolerances of :func:`~siftmoe_gym.bounds.within_budget` (arguments, so that numba's cache follows
    them); writes ``assign`` (k,) (-1 = skip) and returns True, or returns False where ``serve_free``
    must decide.  For finite inputs (NaN compares differently here).  Every float is
    summed in the order the docstring's rule states (the same order as the Python it replaced)."""
    k, n1 = dk.shape
    n = n1 - 1
    inf = np.inf
    gs = np.empty(k)
    w1 = np.full(k, inf)
    arg1 = np.full(k, -1, dtype=np.int64)
    stot = 0.0
    for s in range(k):
        gs[s] = gates[s] * dk[s, n]
        stot += gs[s]
    tol = TIE * stot + 1e-300
    # per expert: the slots it serves better than skipping (bit s), its cost on them; single-slot bests
    bits = np.zeros(n, dtype=np.int64)
    for j in range(n):
        if not allowed[node_of[j]]:
            continue
        b = 0
        for s in range(k):
            v = gates[s] * dk[s, j]
            if v < gs[s]:
                b |= 1 << s
                if v < w1[s]:
                    w1[s] = v
                    arg1[s] = j
        bits[j] = b
    sav1 = np.empty(k)
    for s in range(k):
        sav1[s] = gs[s] - w1[s]  # -inf: no allowed expert beats skipping
    # multi-slot groups: every submask (2+ slots) of an expert's slots; per mask the least cost, its
    # expert (the first of least cost) and the second least cost
    present = np.zeros(256, dtype=np.bool_)
    bcost = np.empty(256)
    bsec = np.empty(256)
    bexp = np.empty(256, dtype=np.int64)
    qorder = np.empty(256, dtype=np.int64)  # masks in order of first appearance
    nq = 0
    sub = np.empty(256)  # the expert's cost on each submask: the left sum over its slots in ascending order
    for j in range(n):
        b = bits[j]
        if b & (b - 1) == 0:
            continue
        q = (0 - b) & b  # submasks of b in ascending order: a submask's lower part comes before it
        while q != 0:
            h = _HIGH_BIT[q]
            rest = q ^ (1 << h)
            cost = (sub[rest] if rest else 0.0) + gates[h] * dk[h, j]
            sub[q] = cost
            if rest:
                if not present[q]:
                    present[q] = True
                    bcost[q], bexp[q], bsec[q] = cost, j, inf
                    qorder[nq] = q
                    nq += 1
                elif cost < bcost[q]:
                    bsec[q] = bcost[q]
                    bcost[q], bexp[q] = cost, j
                elif cost < bsec[q]:
                    bsec[q] = cost
            q = (q - b) & b
    # groups worth keeping: saving at least the best single slot's, served by one clear expert
    gq = np.empty(nq, dtype=np.int64)
    gsv = np.empty(nq)
    gcov = np.empty(nq)
    ng = 0
    for i in range(nq):
        q = qorder[i]
        sv = -bcost[q]
        top1 = -inf
        cov = 0.0
        for s in range(k):
            if q >> s & 1:
                sv += gs[s]
                cov += sav1[s]
                if sav1[s] > top1:
                    top1 = sav1[s]
        if sv < top1 - tol:
            continue
        if bsec[q] - bcost[q] <= tol:
            return False  # two experts serve the group within the tolerance
        gq[ng], gsv[ng], gcov[ng] = q, sv, cov
        ng += 1
    # slots with an allowed expert better than skipping, by saving (largest first, stable)
    order = np.empty(k, dtype=np.int64)
    no = 0
    for s in range(k):
        if sav1[s] > -inf:
            p = no
            while p > 0 and sav1[order[p - 1]] < sav1[s]:
                order[p] = order[p - 1]
                p -= 1
            order[p] = s
            no += 1
    sall = 0.0
    for p in range(no):
        sall += sav1[order[p]]
    # families of disjoint groups: cover, count, groups' saving, singles' saving on the cover, parent, group
    cap_f = 64
    fr = np.zeros(cap_f, dtype=np.int64)
    fc = np.zeros(cap_f, dtype=np.int64)
    fb = np.zeros(cap_f)
    fcv = np.zeros(cap_f)
    fpar = np.full(cap_f, -1, dtype=np.int64)
    fgrp = np.full(cap_f, -1, dtype=np.int64)
    nf = 1
    for i in range(ng):
        q = gq[i]
        end = nf
        for f in range(end):
            if fr[f] & q:
                continue
            if nf == len(fr):
                fr, fc, fb, fcv = _grow(fr, nf), _grow(fc, nf), _grow(fb, nf), _grow(fcv, nf)
                fpar, fgrp = _grow(fpar, nf), _grow(fgrp, nf)
            fr[nf], fc[nf], fb[nf], fcv[nf] = fr[f] | q, fc[f] + 1, fb[f] + gsv[i], fcv[f] + gcov[i]
            fpar[nf], fgrp[nf] = f, i
            nf += 1
    most = -inf
    for f in range(nf):
        v = fb[f] + sall - fcv[f]
        if v > most:
            most = v
    least = stot - most
    thr = cap * (1.0 + rel) + atol
    if abs(least - thr) <= tol:
        return False
    if least > thr:  # serve_free's least-violating cap: the least error, 1e-9 wider
        thr = (least * (1 + 1e-9)) * (1.0 + rel) + atol
    need = stot - thr  # the saving a decision needs
    lo, hi = need - 2 * tol, need + 2 * tol
    # per family, the fewest single slots that reach the need (the largest savings first): the count cstar
    pref = np.empty(k + 1)
    avail = np.empty(k, dtype=np.int64)
    cstar = k + 1
    for f in range(nf):
        if fb[f] + sall - fcv[f] < lo:
            continue
        na = _prefix(fr[f], fb[f], order, no, sav1, pref, avail)
        t = 0
        while t <= na and pref[t] < lo:
            t += 1
        if t > na or pref[t] <= hi:
            return False
        if fc[f] + t < cstar:
            cstar = fc[f] + t
    # the count cstar: its best partition, and no other within the tolerance (nor a lower count near the need)
    top, sec, arg, arg_t = -inf, -inf, -1, 0
    for f in range(nf):
        if fb[f] + sall - fcv[f] < lo:
            continue
        na = _prefix(fr[f], fb[f], order, no, sav1, pref, avail)
        t = cstar - fc[f]
        if t < 0 or t > na:
            continue
        if t and pref[t - 1] >= lo:
            return False
        v = pref[t]
        alt = v - sav1[avail[t - 1]] + sav1[avail[t]] if 0 < t < na else -inf
        if v > top:
            sec = max(top, alt)
            top, arg, arg_t = v, f, t
        else:
            sec = max(sec, max(v, alt))
    if arg < 0 or top - sec <= tol:
        return False
    for s in range(k):
        assign[s] = -1
    f = arg
    while fgrp[f] >= 0:
        q = gq[fgrp[f]]
        for s in range(k):
            if q >> s & 1:
                assign[s] = bexp[q]
        f = fpar[f]
    na = _prefix(fr[arg], fb[arg], order, no, sav1, pref, avail)
    for p in range(arg_t):
        assign[avail[p]] = arg1[avail[p]]
    return True


def _prefix(cover, b, order, no, sav1, pref, avail):
    """Writes the slots outside ``cover`` by saving (``avail``) and the running savings from ``b``
    (``pref``); returns how many slots."""
    na = 0
    pref[0] = b
    for p in range(no):
        s = order[p]
        if not cover >> s & 1:
            avail[na] = s
            pref[na + 1] = pref[na] + sav1[s]
            na += 1
    return na
