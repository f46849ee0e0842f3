"""Action masks for MaskablePPO: never choose a node that cannot meet the latency budget.

The mask is read from ``env.unwrapped.instance.node_feasible`` ((M+1,) bool,
node 0 first) of the decision about to be taken.

- ``MultiBinary(M)`` (action bit ``m-1`` activates edge node ``m``): sb3-contrib
  treats each bit as a two-way choice, so the mask has ``2*M`` entries laid out
  ``[node1: off, node1: on, node2: off, ...]``.  "off" is never masked.
- ``Discrete(2**M)`` (action ``a`` activates edge node ``m`` when bit ``m-1`` of
  ``a`` is set): every subset containing an infeasible node is masked; the
  empty subset (node 0 only) is always allowed.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces
from sb3_contrib.common.wrappers import ActionMasker


def edge_feasibility(env) -> np.ndarray:
    """(M,) bool: which edge nodes 1..M can meet the latency budget for the next decision."""
    inst = env.unwrapped.instance
    feas = getattr(inst, "node_feasible", None)
    if feas is None:  # prefill-style instance: feasible for at least one token
        table = getattr(inst, "feasible_table", None)
        if table is None:
            raise AttributeError("environment instance exposes neither node_feasible nor feasible_table")
        feas = np.asarray(table)[:, 1]
    feas = np.asarray(feas, dtype=bool).reshape(-1)
    return feas[1:]


def mask_from_feasibility(action_space: spaces.Space, edge_feasible: np.ndarray) -> np.ndarray:
    edge_feasible = np.asarray(edge_feasible, dtype=bool)
    m = edge_feasible.size
    if isinstance(action_space, spaces.MultiBinary):
        if int(np.prod(action_space.shape)) != m:
            raise ValueError(f"MultiBinary{action_space.shape} does not match {m} edge nodes")
        mask = np.ones((m, 2), dtype=bool)
        mask[:, 1] = edge_feasible
        return mask.reshape(-1)
    if isinstance(action_space, spaces.Discrete):
        n = int(action_space.n)
        if n != 2 ** m:
            raise ValueError(f"Discrete({n}) does not match 2**{m} node subsets")
        infeasible_bits = int(sum(1 << j for j in range(m) if not edge_feasible[j]))
        return (np.arange(n) & infeasible_bits) == 0
    raise TypeError(f"no node mask for action space {action_space}")


def node_action_mask(env) -> np.ndarray:
    """The MaskablePPO mask for ``env``'s next decision."""
    return mask_from_feasibility(env.unwrapped.action_space, edge_feasibility(env))


class NodeActionMasker(ActionMasker):
    """``ActionMasker`` with :func:`node_action_mask`; usable as rl-zoo3 ``env_wrapper``."""

    def __init__(self, env):
        super().__init__(env, node_action_mask)
