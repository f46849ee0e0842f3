"""Node-set serving above the enumeration table (:func:`serve_nodes`): the exact partition search of
:mod:`siftmoe_gym.partition_search`, and :func:`siftmoe_gym.slot_dp.serve_free` (the slot dynamic program)
where the search cannot vouch for its choice.  The environments and exact P1
(:func:`siftmoe_gym.serving.solve_decode`, node subsets without costly nodes) both serve through it."""

from __future__ import annotations

import numpy as np

from .partition_search import serve_partition
from .slot_dp import serve_free


def serve_nodes(dk: np.ndarray, gates: np.ndarray, node_of: np.ndarray, allowed: np.ndarray, cap: float,
                compute_cost: float, we: float = 1.0, wr: float = 0.0, pernode: np.ndarray | None = None) -> np.ndarray:
    """The assignment (k,) (-1 = skip) :func:`~siftmoe_gym.slot_dp.serve_free` returns (same arguments;
    ``pernode`` is only used when the slot dynamic program serves)."""
    out = serve_partition(dk, gates, node_of, allowed, cap, compute_cost, we, wr)
    if out is None:
        return serve_free(dk, gates, node_of, allowed, cap, compute_cost, we, wr, pernode)
    return out
