"""Per-step kernels of the native vector environments (:mod:`siftmoe_gym.envs.vector`,
:mod:`siftmoe_gym.envs.prefill_vector`): the same numbers as the general code, with less work per step.

- :func:`serve_nodes_k2`: node-set serving for ``k = 2`` without enumerating the ``(N+1)^2`` assignments:
  the choice of :meth:`~siftmoe_gym.envs.vector.SiftMoEVectorEnv._serve_nodes` (first assignment in
  (count level, index) order whose error bound is within the key) from the slots' ``N+1`` terms.
- :func:`decode_nodes_int8`: the ``nodes`` codec's batch decoding for int8 actions (what
  ``action_space.sample()`` gives) by bit packing, the same bitmasks and the same checks.
- :func:`serve_assignment_actions` / :func:`computed_and_used`: the ``experts`` and ``slots`` modes' serving
  over copies (shared by the Decode/FastFading and the Prefill vector envs).
"""

from __future__ import annotations

import numpy as np

from ..bounds import ABS_TOL, REL_TOL


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
    row's first such column is then found on that row alone.
    """
    n1, _, n = g.shape
    nn = n1 - 1
    a0, a1 = g[:nn, 0], g[:nn, 1]
    k0, k1 = g[nn, 0], g[nn, 1]  # skip terms (always finite)
    lev0 = k0 + k1
    # level 1 in index order: (e, e) at e (N+2), (e, N) at e (N+1) + N, then (N, e) at N (N+1) + e
    w1 = np.empty((3 * nn, n))
    np.add(a0, a1, out=w1[0:2 * nn:2])
    np.add(a0, k1, out=w1[1:2 * nn:2])
    np.add(k0, a1, out=w1[2 * nn:])
    m1 = w1.min(axis=0)
    # level 2: the least slot-1 term off each row's own column
    p0 = a1.min(axis=0)
    eq = a1 == p0
    q = np.where(eq, np.inf, a1).min(axis=0)  # the least term above the minimum
    p1 = np.where(eq.sum(axis=0) == 1, q, p0)  # the least term once one minimal column is left out
    rowmin = a0 + np.where(eq, p1, p0)  # (N, n): each row's least level-2 error
    m2 = rowmin.min(axis=0)
    best = np.minimum(np.minimum(lev0, m1), m2)
    thr = cap * (1.0 + REL_TOL) + ABS_TOL
    key = np.where(m2 <= thr, m2, best * (1.0 + REL_TOL) + ABS_TOL)
    key = np.where(m1 <= thr, m1, key)
    key = np.where(lev0 <= thr, lev0, key)
    ar = np.arange(n)
    # level 2's first assignment within the key: its row, then the row's first other column
    e2 = (rowmin <= key).argmax(axis=0)
    row = a0[e2, ar] + a1
    row[e2, ar] = np.inf
    e2c = (row <= key).argmax(axis=0)
    ok1 = w1 <= key
    j1 = ok1.argmax(axis=0)
    in1 = ok1[j1, ar]
    # level 1's j1 -> (s0, s1)
    first = j1 < 2 * nn
    e1 = np.where(first, j1 >> 1, nn)
    f1 = np.where(first, np.where(j1 & 1, nn, j1 >> 1), j1 - 2 * nn)
    in0 = lev0 <= key
    s0 = np.where(in0, nn, np.where(in1, e1, e2))
    s1 = np.where(in0, nn, np.where(in1, f1, e2c))
    err = g[s0, 0, ar] + g[s1, 1, ar]
    return s0 * n1 + s1, err, s0, s1


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

    ``k = 2``: :func:`serve_nodes_k2`.  Otherwise copy-minor: ``err_s`` (C, n) holds every combo's error
    bound (the same sums as :func:`~siftmoe_gym.serving_table.err_table`), ``inf`` where a server sits
    off node 0 and the activated nodes, rows sorted by count level (ascending combo index within a
    level).  Adjacent distinct-count levels never tie, so the choice is lexicographic: the lowest level
    whose least error is in budget, its least-error combo (first index among exact ties).  Copies with
    nothing in budget take the least error, ties within tolerance broken by fewest computed experts,
    then first index: in the sorted order (compute energy nondecreasing) simply the first such combo.
    """
    perm, bounds, ec_s, off, d_t, rank, srv_s = static
    n = len(payload)
    g = node_terms(static, layer, payload, topk, gates)
    if g.shape[1] == 2:
        return serve_nodes_k2(g, cap)[:2]
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


def least_feasible_terms(delta_ext: np.ndarray, node_ext: np.ndarray, feas: np.ndarray) -> np.ndarray:
    """(n, L, N): each expert's least ``Delta_ext`` over the servers on latency-feasible nodes (skip
    included), per copy (``feas`` (n, M+1)): the per-slot minima of
    :func:`~siftmoe_gym.envs.rewards.avoidable_rows`, for a whole episode of fixed links."""
    allowed = feas[:, node_ext]  # (n, L, N+1)
    return np.where(allowed[:, :, None, :], delta_ext[None], np.inf).min(axis=3)


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
    """
    n1, _, n = g.shape
    a0, a1 = g[:, 0], g[:, 1]
    p1 = a1.min(axis=0)
    emin = a0.min(axis=0) + p1
    ar = np.arange(n)
    s0 = (a0 + p1 <= emin).argmax(axis=0)
    s1 = (a0[s0, ar] + a1 <= emin).argmax(axis=0)
    out = np.flatnonzero(emin > cap * (1.0 + REL_TOL) + ABS_TOL)
    if len(out):
        _, _, s0[out], s1[out] = serve_nodes_k2(np.ascontiguousarray(g[:, :, out]), -np.inf)
    return s0 * n1 + s1, g[s0, 0, ar] + g[s1, 1, ar]


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
