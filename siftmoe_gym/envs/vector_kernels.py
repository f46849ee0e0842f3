"""Per-step kernels of the native vector environments (:mod:`siftmoe_gym.envs.vector`,
:mod:`siftmoe_gym.envs.prefill_vector`): the same numbers as the general code, with less work per step.

- :func:`serve_nodes_k2`: node-set serving for ``k = 2`` without enumerating the ``(N+1)^2`` assignments:
  the choice of :meth:`~siftmoe_gym.envs.vector.SiftMoEVectorEnv._serve_nodes` (first assignment in
  (count level, index) order whose error bound is within the key) from the slots' ``N+1`` terms;
  :func:`serve_least_error_k2` FastFading's least-error rule; :func:`serve_k2` either one with each copy's
  terms built inside the loop (what the environments call).  Compiled with numba on first use
  (:func:`siftmoe_gym.jit.compiled`), one copy at a time (:func:`_k2_choice`), the same sums and comparisons.
- :func:`decode_nodes_int8`: the ``nodes`` codec's batch decoding for int8 actions (what
  ``action_space.sample()`` gives) by bit packing, the same bitmasks and the same checks.
- :func:`serve_assignment_actions` / :func:`computed_and_used`: the ``experts`` and ``slots`` modes' serving
  over copies (shared by the Decode/FastFading and the Prefill vector envs).
"""

from __future__ import annotations

import numpy as np

from ..bounds import ABS_TOL, REL_TOL
from ..jit import compiled


def serve_nodes_k2(g: np.ndarray, cap: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Node-set serving of every copy for top-2 routing, from ``g`` (N+1, 2, n): each server's
    gate-weighted error term per slot (``inf`` for servers off node 0 and the activated nodes; server
    ``N`` = skip).  Returns ``(combo index, error bound, server of slot 0, server of slot 1)`` (n,) each.

    Assignment ``(s0, s1)`` is combo ``s0 (N+1) + s1`` with error ``g[s0, 0] + g[s1, 1]`` (the sums of
    :func:`~siftmoe_gym.serving_table.err_table`).  Count levels: 0 = ``(N, N)``; 1 = ``(e, e)``,
    ``(e, N)``, ``(N, e)``; 2 = ``(e, e')`` with ``e != e'``.  The key is that of ``_serve_nodes`` (the
    lowest level's least error in budget, else the least error's tolerance); the choice is the first
    assignment in (level, index) order within the key.  Level 2 is never enumerated: a row ``e`` holds
    one within the key iff ``g[e, 0] + min_{e' != e} g[e', 1]`` is (rounding is monotone), and the
    row's first such column is then found on that row alone.  Compiled with numba (:func:`_k2_choice`).
    """
    return _choose_on_terms(g, cap, False)


def _choose_on_terms(g: np.ndarray, cap: float, least_error: bool):
    """``(combo index, error bound, s0, s1)`` (n,) each of :func:`_k2_choice` on the terms ``g`` (N+1, 2, n)."""
    n = g.shape[2]
    s0, s1 = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    gt = np.ascontiguousarray(np.asarray(g, dtype=np.float64).transpose(2, 1, 0))  # (n, 2, N+1)
    compiled(_k2_terms, globals(), ("_k2_choice",))(gt, float(cap), least_error, REL_TOL, ABS_TOL, s0, s1)
    ar = np.arange(n)
    return s0 * g.shape[0] + s1, g[s0, 0, ar] + g[s1, 1, ar], s0, s1


def serve_k2(static, layer, payload, topk, gates, cap, least_error: bool = False):
    """:func:`serve_nodes_k2` (or with ``least_error`` :func:`serve_least_error_k2`) of the terms
    :func:`node_terms` would build, built copy by copy inside the compiled loop (the same products and
    sums).  ``topk``, ``gates`` (2, n).  Returns ``(combo index, error bound)`` (n,) each."""
    off, d_t = static[3], static[4]
    n = len(payload)
    s0, s1, err = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64), np.empty(n)
    kernel = compiled(_k2_fused, globals(), ("_k2_choice",))
    kernel(d_t[layer], off[layer], topk, gates, payload, float(cap), least_error, REL_TOL, ABS_TOL, s0, s1, err)
    return s0 * d_t.shape[1] + s1, err


def _k2_choice(b, thr, least_error, rel, atol):  # noqa: C901 (one copy's choice, kept whole)
    """``(s0, s1)`` of one copy from its terms ``b`` (2, N+1) (``thr``: the cap with its tolerance; ``rel``,
    ``atol``: :func:`~siftmoe_gym.bounds.within_budget`'s, passed in so that numba's cache follows them): the rule
    of :func:`serve_nodes_k2`, or with ``least_error`` that of :func:`serve_least_error_k2`; the same sums
    and comparisons as those docstrings state, one copy at a time."""
    n1 = b.shape[1]
    nn = n1 - 1
    inf = np.inf
    if least_error:
        p1, m0 = inf, inf
        for r in range(n1):
            p1 = min(p1, b[1, r])
            m0 = min(m0, b[0, r])
        emin = m0 + p1
        if not emin > thr:
            s0 = 0
            for r in range(n1):
                if b[0, r] + p1 <= emin:
                    s0 = r
                    break
            for r in range(n1):
                if b[0, s0] + b[1, r] <= emin:
                    return s0, r
            return s0, 0
        thr = -inf  # over the cap: the least compute energy within the least error's tolerance
    k0, k1 = b[0, nn], b[1, nn]
    lev0 = k0 + k1
    m1 = inf  # level 1, in index order (e, e) at 2e, (e, N) at 2e + 1, (N, e) at 2N + e
    p0 = inf  # the least slot-1 term, how often it occurs, and the least term above it
    for e in range(nn):
        a0, a1 = b[0, e], b[1, e]
        m1 = min(m1, a0 + a1, a0 + k1, k0 + a1)
        p0 = min(p0, a1)
    cnt, q = 0, inf
    for e in range(nn):
        if b[1, e] == p0:
            cnt += 1
        elif b[1, e] < q:
            q = b[1, e]
    p1 = q if cnt == 1 else p0  # the least term once one minimal column is left out
    m2 = inf
    for e in range(nn):
        m2 = min(m2, b[0, e] + (p1 if b[1, e] == p0 else p0))
    best = min(min(lev0, m1), m2)
    key = m2 if m2 <= thr else best * (1.0 + rel) + atol
    if m1 <= thr:
        key = m1
    if lev0 <= thr:
        key = lev0
    if lev0 <= key:
        return nn, nn
    for j in range(3 * nn):  # level 1's first assignment within the key
        e, f = (j >> 1, nn if j & 1 else j >> 1) if j < 2 * nn else (nn, j - 2 * nn)
        if b[0, e] + (k1 if f == nn else b[1, f]) <= key:
            return e, f
    e2 = 0  # level 2's: the first row holding one, then its first other column
    for e in range(nn):
        if b[0, e] + (p1 if b[1, e] == p0 else p0) <= key:
            e2 = e
            break
    for f in range(nn):
        if f != e2 and b[0, e2] + b[1, f] <= key:
            return e2, f
    return e2, 0


def _k2_terms(gt, cap, least_error, rel, atol, out0, out1):
    """:func:`_k2_choice` of every copy of ``gt`` (n, 2, N+1)."""
    thr = cap * (1.0 + rel) + atol
    for c in range(gt.shape[0]):
        out0[c], out1[c] = _k2_choice(gt[c], thr, least_error, rel, atol)


def _k2_fused(d, off, topk, gates, payload, cap, least_error, rel, atol, out0, out1, err):
    """:func:`_k2_choice` of every copy, its terms ``d[e, topk[j]] * gates[j] + off[e, payload]`` built
    first (``d`` (N+1, N), ``off`` (N+1, 2^M): one layer's :func:`serving_static` arrays), and its error."""
    thr = cap * (1.0 + rel) + atol
    n1 = d.shape[0]
    b = np.empty((2, n1))
    for c in range(len(payload)):
        for j in range(2):
            t, gj, pc = topk[j, c], gates[j, c], payload[c]
            for e in range(n1):
                v = d[e, t] * gj
                b[j, e] = v + off[e, pc]
        s0, s1 = _k2_choice(b, thr, least_error, rel, atol)
        out0[c], out1[c] = s0, s1
        err[c] = b[0, s0] + b[1, s1]


def decode_nodes_int8(actions: np.ndarray, n: int, width: int, pow2: np.ndarray) -> np.ndarray | None:
    """Bitmasks (n,) int64 of stacked ``MultiBinary(width)`` int8 actions of shape (n, width) whose values
    are all 0 or 1 (bit ``m-1`` = node ``m``), or None when ``actions`` is not such an array (the general
    codec then decides, and raises on bad values)."""
    if type(actions) is not np.ndarray or actions.dtype != np.int8 or actions.shape != (n, width) or width > 62:
        return None
    if n and int(actions.view(np.uint8).max()) > 1:
        return None
    if width <= 8:
        return np.packbits(actions, axis=1, bitorder="little")[:, 0].astype(np.int64)
    return actions.astype(np.int64) @ pow2


def serving_static(env):
    """Per-system arrays of the batched node-set serving of ``env`` (a single environment whose table is
    enabled and whose count levels never tie), or None."""
    levels = env._count_levels
    if not (env.table.enabled and levels is not None and env._subset_nodes is not None):
        return None
    perm = np.concatenate(levels)  # combos by count level, ascending index within a level
    bounds = np.cumsum([0] + [len(c) for c in levels])
    node_ext = np.concatenate([env.system.node_of, np.zeros((env.n_layers, 1), np.int64)], axis=1)
    srv_ok = env._subset_nodes[:, node_ext].transpose(1, 2, 0)  # (L, N+1, 2^M)
    off = np.where(srv_ok, 0.0, np.inf)  # added to error terms: inf for servers a node set excludes
    srv_s = [np.ascontiguousarray(env.table.servers[perm, j]) for j in range(env.top_k)]
    d_t = np.ascontiguousarray(env.system.delta_ext.transpose(0, 2, 1))  # (L, N+1, N)
    c = len(perm)
    rank = (c - np.arange(c)).astype(np.uint8 if c < 256 else np.uint16 if c < 65536 else np.uint32)[:, None]
    return perm, list(zip(bounds[:-1].tolist(), bounds[1:].tolist())), env._ec_count[perm], off, d_t, rank, srv_s


def serve_nodes(static, layer, payload, topk, gates, cap, buf: dict):
    """Batched :func:`~siftmoe_gym.serving.pick_allowed_rows` for node-set actions in decode (objective
    ``e_c |C|``): the same choices.  ``topk``, ``gates`` (k, n) copy-minor; ``buf`` keeps scratch arrays.
    Returns ``(combo index, error bound)`` (n,) each (the error bound None for ``k > 2``).

    ``k = 2``: :func:`serve_k2`.  Otherwise copy-minor: ``err_s`` (C, n) holds every combo's error
    bound (the same sums as :func:`~siftmoe_gym.serving_table.err_table`), ``inf`` where a server sits
    off node 0 and the activated nodes, rows sorted by count level (ascending combo index within a
    level).  Adjacent distinct-count levels never tie, so the choice is lexicographic: the lowest level
    whose least error is in budget, its least-error combo (first index among exact ties).  Copies with
    nothing in budget take the least error, ties within tolerance broken by fewest computed experts,
    then first index: in the sorted order (compute energy nondecreasing) simply the first such combo.
    """
    perm, bounds, ec_s, off, d_t, rank, srv_s = static
    n = len(payload)
    if len(topk) == 2:
        return serve_k2(static, layer, payload, topk, gates, cap)
    g = node_terms(static, layer, payload, topk, gates)
    if buf.get("shape") != (len(perm), n):
        buf["shape"], buf["err"], buf["tmp"] = (len(perm), n), np.empty((len(perm), n)), np.empty((len(perm), n))
    err_s, tmp = buf["err"], buf["tmp"]
    np.take(g[:, 0], srv_s[0], axis=0, out=err_s)
    for j in range(1, g.shape[1]):  # slot by slot, as err_table adds them
        err_s += np.take(g[:, j], srv_s[j], axis=0, out=tmp)
    thr = cap * (1.0 + REL_TOL) + ABS_TOL
    mins = [err_s[a:b].min(axis=0) for a, b in bounds]
    best = np.minimum.reduce(mins)
    # the lowest level whose least error is in budget: the first combo reaching that least error
    # (no earlier level reaches it); none: the first combo within tolerance of the least error
    key = best * (1.0 + REL_TOL) + ABS_TOL
    for m in reversed(mins):
        key = np.where(m <= thr, m, key)
    cond = np.less_equal(err_s, key).view(np.uint8)
    # first True per column: the largest of (C - row) over the True rows
    pos = len(perm) - (cond * rank).max(axis=0).astype(np.int64)
    return perm[pos], (err_s[pos, np.arange(n)] if g.shape[1] <= 2 else None)


def slot_sum(rows: np.ndarray, topk_t: np.ndarray, gates_t: np.ndarray, gates: np.ndarray, topk: np.ndarray,
             base=0):
    """``(gates * rows[topk + base]).sum(axis=1)`` of every copy (``base`` (n,) or 0: offsets into the
    flat ``rows``), the same numbers: for ``k = 2`` from the copy-minor ``topk_t``, ``gates_t`` (k, n) as
    ``g_0 r_0 + g_1 r_1`` (the row sum of two terms), otherwise from the copy-major ``gates``, ``topk``
    (n, k) as written."""
    if len(topk_t) == 2:
        r = np.take(rows, topk_t + base)
        r *= gates_t
        return r[0] + r[1]
    return (gates * np.take(rows, topk + np.reshape(base, (-1, 1)))).sum(axis=1)


def node_terms(static, layer, payload, topk, gates) -> np.ndarray:
    """(N+1, k, n): each server's gate-weighted error term per slot (``Delta_ext[topk slot, server] * gate``,
    the factors of :func:`~siftmoe_gym.serving_table.err_table`), ``inf`` for servers off node 0 and the
    node set ``payload`` activates (``static``: :func:`serving_static`; ``topk``, ``gates`` (k, n))."""
    off, d_t = static[3], static[4]
    g = np.take(d_t[layer], topk, axis=1)
    g *= gates
    g += np.take(off[layer], payload, axis=1)[:, None, :]
    return g


def serve_least_error_k2(g: np.ndarray, cap: float) -> tuple[np.ndarray, np.ndarray]:
    """FastFading's ``serving_rule="least_error"`` for top-2 routing (:func:`~siftmoe_gym.serving.pick_allowed_rows`
    with the error as objective and ``e_c |C|`` as energy, count levels distinct): the same choices from
    ``g`` (:func:`node_terms`).  Returns ``(combo index, error bound)`` (n,) each.

    The least error is ``min g[:, 0] + min g[:, 1]`` (rounding is monotone).  Within the cap the choice is
    the first assignment (index order) reaching it: the first row ``s0`` whose ``g[s0, 0] + min g[:, 1]``
    does, then that row's first column.  Over the cap, the least compute energy among the assignments
    within the least error's tolerance, first index: :func:`serve_nodes_k2` with no level in budget.
    Compiled with numba (:func:`_k2_choice`).
    """
    return _choose_on_terms(g, cap, True)[:2]


def computed_and_used(servers: np.ndarray, nn: int, onehot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(computed (n, N) bool, used (n, M+1) bool)`` of slot assignments ``servers`` (n, k) (server ``N`` =
    skip): the experts computed and the nodes they sit on (``onehot`` (N, M+1), the layer's placement)."""
    computed = np.zeros((len(servers), nn + 1), dtype=bool)
    np.put_along_axis(computed, servers, True, axis=1)
    computed = computed[:, :nn]
    return computed, (computed.astype(np.float64) @ onehot) > 0


def serve_assignment_actions(kind: str, payload: np.ndarray, dk: np.ndarray, nn: int,
                             onehot: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(servers (n, k), computed (n, N), used (n, M+1))`` for ``"experts"`` actions (each slot served by its
    least-dissimilar computed expert or skip, from ``dk`` (n, k, N+1)) or ``"slots"`` actions (the
    servers themselves), as the single environment serves them."""
    if kind == "experts":
        usable = np.concatenate([payload, np.ones((len(payload), 1), bool)], axis=1)
        servers = np.argmin(np.where(usable[:, None, :], dk, np.inf), axis=2)
        return servers, payload, (payload.astype(np.float64) @ onehot) > 0
    computed, used = computed_and_used(payload, nn, onehot)
    return payload, computed, used
