"""Expert placement: which node holds each expert of each layer.

Node 0 (the source device) holds at most ``local_capacity`` experts per
layer, every edge node at most ``edge_capacity``.  Generators:

- ``round_robin``: expert ``i`` goes to the next node (0, 1, ..., M, 0, ...)
  that still has room;
- ``contiguous``: node 0 takes the first ``local_capacity`` experts, then the
  rest is cut into M near-equal consecutive blocks;
- ``random``: a seeded random permutation, then ``contiguous``;
- ``popular_local``: per layer, the most popular experts (highest mean router
  probability) go to node 0, the rest round-robin over the edge nodes.
"""

from __future__ import annotations

import numpy as np

from .config import PLACEMENTS, SystemConfig


def _round_robin(order: np.ndarray, caps: np.ndarray) -> np.ndarray:
    nodes = len(caps)
    node_of = np.empty(len(order), dtype=np.int64)
    left = caps.copy()
    cursor = 0
    for expert in order:
        for _ in range(nodes):
            if left[cursor] > 0:
                break
            cursor = (cursor + 1) % nodes
        node_of[expert] = cursor
        left[cursor] -= 1
        cursor = (cursor + 1) % nodes
    return node_of


def _contiguous(order: np.ndarray, caps: np.ndarray) -> np.ndarray:
    n = len(order)
    node_of = np.empty(n, dtype=np.int64)
    local = min(int(caps[0]), n)
    node_of[order[:local]] = 0
    rest = order[local:]
    edges = len(caps) - 1
    sizes = np.full(edges, len(rest) // edges)
    sizes[: len(rest) % edges] += 1
    # respect capacities: move overflow to later nodes with room
    sizes = np.minimum(sizes, caps[1:])
    short = len(rest) - sizes.sum()
    for m in range(edges):
        add = min(short, caps[1 + m] - sizes[m])
        sizes[m] += add
        short -= add
    start = 0
    for m, size in enumerate(sizes):
        node_of[rest[start : start + size]] = m + 1
        start += size
    return node_of


def make_placement(
    config: SystemConfig,
    rng: np.random.Generator | None = None,
    popularity: np.ndarray | None = None,
) -> np.ndarray:
    """``node_of`` of shape (L, N) with values in ``0..M``.

    ``rng`` is needed for ``random``; ``popularity`` (L, N) for ``popular_local``.
    """
    kind = config.placement
    if kind not in PLACEMENTS:
        raise ValueError(f"invalid placement {kind!r}: must be one of {PLACEMENTS}")
    n, layers = config.num_experts, config.num_layers
    caps = np.array([config.local_capacity] + [config.edge_capacity] * config.num_nodes, dtype=np.int64)
    if caps.sum() < n:
        raise ValueError(f"capacities {caps.tolist()} cannot hold {n} experts")
    out = np.empty((layers, n), dtype=np.int64)
    for layer in range(layers):
        ident = np.arange(n)
        if kind == "round_robin":
            out[layer] = _round_robin(ident, caps)
        elif kind == "contiguous":
            out[layer] = _contiguous(ident, caps)
        elif kind == "random":
            if rng is None:
                raise ValueError("placement 'random' needs a numpy Generator")
            out[layer] = _contiguous(rng.permutation(n), caps)
        else:
            if popularity is None:
                raise ValueError("placement 'popular_local' needs per-layer expert popularity (L, N)")
            pop = np.asarray(popularity, dtype=np.float64)
            if pop.shape != (layers, n):
                raise ValueError(f"popularity must have shape {(layers, n)}, got {pop.shape}")
            order = np.argsort(-pop[layer], kind="stable")
            node_of = np.empty(n, dtype=np.int64)
            local = min(int(caps[0]), n)
            node_of[order[:local]] = 0
            edge_caps = caps[1:]
            node_of[order[local:]] = _round_robin(np.arange(n - local), np.concatenate([[0], edge_caps]))
            out[layer] = node_of
    return out
