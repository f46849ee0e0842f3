"""Every assignment of the top-k slots, enumerated (small ``(N+1)^k``).

:func:`combos` lists the assignments once per ``(N, k)``; the exact table
solver (:mod:`siftmoe_gym.serving`) scores them in one vectorized pass, and
the environments keep a per-system :class:`ServingTable` of them to serve
node-set actions by the rule of :func:`siftmoe_gym.serving.pick_row` /
:func:`~siftmoe_gym.serving.pick_allowed_rows`, with every assignment's
error bound from :func:`err_table` (or :meth:`ServingTable.err_rows`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .system import WideSystem

TABLE_LIMIT = 4096
"""Largest ``(N+1)^k`` for which the enumeration table is used."""
ALLOW_TABLE_LIMIT = 1 << 21
"""Largest ``L * 2^M * (N+1)^k`` for which :class:`ServingTable` precomputes the node-subset -> allowed-assignment table."""


@lru_cache(maxsize=16)
def combos(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """All ``(n+1)^k`` assignments as server indices (skip = n) and their distinct counts.

    Row order: slot 0 most significant (``itertools.product`` order).  The
    arrays are cached and shared: do not write into them.
    """
    grids = np.stack(np.meshgrid(*[np.arange(n + 1)] * k, indexing="ij"), axis=-1).reshape(-1, k)
    s = np.sort(np.where(grids == n, -1, grids), axis=1)
    count = (s >= 0).sum(axis=1) - np.sum((s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0), axis=1)
    return grids.astype(np.int64), count.astype(np.float64)


class ServingTable:
    """Every assignment of the top-k slots enumerated once per system (the environments' serving table).

    ``enabled`` is False when ``(N+1)^k > TABLE_LIMIT`` (then nothing else is
    built).  Otherwise, over the ``C = (N+1)^k`` assignments in
    :func:`combos` order: ``assign`` (C, k) int (-1 = skip), ``servers``
    (C, k) server columns (skip = N), ``count`` (C,) distinct computed
    experts (float), ``computed`` (C, N) bool, ``nodes`` (L, C, M+1) bool
    nodes each assignment uses at each layer (``nodes_f`` as float), and
    (when ``M <= 16`` and ``L * 2^M * C <= ALLOW_TABLE_LIMIT``) ``allow`` (L, 2^M, C):
    whether the assignment only uses node 0 and the nodes of an edge-node
    bitmask (bit ``m-1`` = node ``m``).
    """

    def __init__(self, system: WideSystem):
        cfg = system.config
        n, k, nl, m1 = cfg.num_experts, cfg.top_k, cfg.num_layers, cfg.num_nodes + 1
        self.enabled = (n + 1) ** k <= TABLE_LIMIT
        if not self.enabled:
            return
        grids, count = combos(n, k)
        self.servers = grids.copy()
        self.assign = np.where(grids == n, -1, grids).astype(np.int64)
        self.count = count.copy()
        onehot = np.zeros((nl, n + 1, m1), dtype=bool)
        for lay in range(nl):
            onehot[lay, np.arange(n), system.node_of[lay]] = True
        self.nodes = onehot[:, grids].any(axis=2)  # (L, C, M+1)
        self.nodes_f = self.nodes.astype(np.float64)
        comp = np.zeros((len(grids), n + 1), dtype=bool)
        np.put_along_axis(comp, grids, True, axis=1)
        self.computed = comp[:, :n]
        c = len(grids)
        nsub = 1 << min(cfg.num_nodes, 16)
        self.allow = None
        if cfg.num_nodes <= 16 and nl * nsub * c <= ALLOW_TABLE_LIMIT:
            bits = ((np.arange(nsub)[:, None] >> np.arange(cfg.num_nodes)[None, :]) & 1).astype(bool)
            disallowed = np.concatenate([np.zeros((nsub, 1), bool), ~bits], axis=1).astype(np.float64)
            self.allow = np.einsum("lcm,am->lac", self.nodes_f, disallowed) == 0  # (L, 2^M, C)

    def allowed_row(self, layer: int, mask: int, allowed_nodes: np.ndarray) -> np.ndarray:
        """(C,) whether each assignment only uses the ``allowed_nodes`` (M+1,) (edge-node bitmask ``mask``)."""
        if self.allow is not None:
            return self.allow[layer, mask]
        return self.nodes_f[layer] @ (~allowed_nodes).astype(np.float64) == 0

    def err_rows(self, dk: np.ndarray, gates: np.ndarray) -> np.ndarray:
        """Error bound of every assignment (S, C) from slot rows ``dk`` (S, k, N+1) and gates (S, k)."""
        err = np.zeros((dk.shape[0], len(self.servers)))
        for s in range(dk.shape[1]):
            err += gates[:, s : s + 1] * dk[:, s][:, self.servers[:, s]]
        return err


def err_table(gdk: np.ndarray) -> np.ndarray:
    """Error bound of every enumerated assignment, (..., (N+1)^k), from gate-weighted slot rows ``gdk`` (..., k, N+1).

    The same numbers as :meth:`ServingTable.err_rows` (the slots' terms are
    added in slot order), by broadcasting instead of gathering.
    """
    k, n1 = gdk.shape[-2], gdk.shape[-1]
    lead = gdk.shape[:-2]
    err = gdk[..., 0, :]
    for s in range(1, k):
        err = err[..., None] + gdk[..., s, :].reshape(lead + (1,) * s + (n1,))
    return err.reshape(lead + (n1**k,))
