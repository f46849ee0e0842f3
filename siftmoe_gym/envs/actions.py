"""Action modes of the siftmoe_gym environments: one codec per mode.

A codec owns its mode's Gymnasium ``space``, turns an action into what the
environment serves (``decode``: validation, then ``("nodes", bitmask)``,
``("experts", mask)`` or ``("slots", servers)``; ``decode_batch`` does the
same for the native vector environment's stacked actions) and an
assignment back into an action (``encode``).

| mode         | space                      | action                                             | decodes to |
|--------------|----------------------------|----------------------------------------------------|------------|
| ``nodes``    | ``MultiBinary(M)``         | ``a[m-1] = 1`` activates edge node ``m``           | ``("nodes", bitmask)``, bit ``m-1`` = node ``m`` |
| ``discrete`` | ``Discrete(2**M)``         | the same node set as an integer (``M <= 16``)      | ``("nodes", bitmask)`` |
| ``experts``  | ``MultiBinary(N)``         | the computed experts                               | ``("experts", bool (N,))`` |
| ``slots``    | ``MultiDiscrete([N+1]*k)`` | the serving expert of each top-k slot, ``N`` = skip | ``("slots", int64 (k,))`` |

Past :data:`DISCRETE_MAX_NODES` edge nodes a node set is a factored action:
``nodes`` (one bit per node) works up to the 62 nodes of an int64 bitmask,
``discrete`` (one of ``2**M`` indices) is refused with a ``ValueError``, and
the environments keep no per-node-set tables (:func:`node_sets` decodes a
bitmask when it is needed).

Malformed actions raise ``ValueError`` naming the mode and the expected space.
How a decoded action is served is the environment's business
(:meth:`siftmoe_gym.envs.base.SiftMoEEnv._serve`).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from gymnasium import spaces

ACTION_MODES = ("nodes", "experts", "slots", "discrete")

DISCRETE_MAX_NODES = 16
"""Largest ``M`` for the ``Discrete(2**M)`` mode and the environments' per-node-set tables (``2^M`` rows)."""

FAST_NODES_LIMIT = 12
"""Largest ``M`` for which the ``nodes`` codec keeps its int8 action -> bitmask lookup table (``2^M`` entries)."""

_INT8 = np.dtype(np.int8)

BadBatch = Callable[[Any, str], ValueError]
"""``bad(actions, why)``: the error ``decode_batch`` raises (the vector environment words it)."""


class ActionCodec:
    """Space, decoding and encoding of one action mode for a system of ``N`` experts, top-``k``, ``M`` edge nodes."""

    mode: str = ""

    def __init__(self, n_experts: int, top_k: int, n_nodes: int):
        self.n_experts, self.top_k, self.n_nodes = n_experts, top_k, n_nodes
        self.pow2 = (1 << np.arange(n_nodes)).astype(np.int64)  # bit m-1 of a node-set bitmask = node m
        self.space = self._make_space()

    def _make_space(self) -> spaces.Space:
        raise NotImplementedError

    def bad(self, action: Any, why: str) -> ValueError:
        return ValueError(f"invalid action {action!r} for action_mode={self.mode!r}: {why}; expected an element of {self.space}")

    def decode(self, action: Any) -> tuple[str, Any]:
        """Validate ``action`` and return what the environment serves (see the module table)."""
        raise NotImplementedError

    def decode_batch(self, actions: Any, n: int, bad: BadBatch) -> tuple[str, np.ndarray]:
        """:meth:`decode` for ``n`` stacked actions: ``("nodes", bitmasks (n,))``, ``("experts", (n, N))``
        or ``("slots", (n, k))``."""
        raise NotImplementedError

    def encode(self, assignment: Any, layer_nodes: Callable[[], np.ndarray]) -> Any:
        """The action that reproduces ``assignment`` (int (k,), -1 = skip; ``ValueError`` otherwise).

        ``layer_nodes()`` gives the node of each expert (N,) at the decision's
        layer; only the node-set modes call it, after validating ``assignment``.
        """
        raise NotImplementedError

    def _array(self, action: Any) -> np.ndarray:
        """``np.asarray(action)``, or this mode's ``ValueError`` when it is not array-like (ragged, ...)."""
        try:
            return np.asarray(action)
        except (ValueError, TypeError) as exc:
            raise self.bad(action, f"not an array ({exc})") from None

    def _assignment(self, assignment: Any) -> np.ndarray:
        a = np.asarray(assignment, dtype=np.int64).reshape(-1)
        if a.shape != (self.top_k,) or a.min() < -1 or a.max() >= self.n_experts:
            raise ValueError(f"assignment must be {self.top_k} ints in [-1, {self.n_experts - 1}], got {assignment!r}")
        return a

    def _used_edge_nodes(self, assignment: Any, layer_nodes: Callable[[], np.ndarray]) -> np.ndarray:
        """(M,) bool: the edge nodes the (validated) assignment uses."""
        a = self._assignment(assignment)
        used = np.zeros(self.n_nodes + 1, dtype=bool)
        used[layer_nodes()[a[a >= 0]]] = True
        return used[1:]

    def _binary(self, action: Any, width: int) -> np.ndarray:
        """The 0/1 vector of length ``width`` (bool) of a ``MultiBinary`` action."""
        arr = self._array(action)
        if arr.shape != (width,):
            raise self.bad(action, f"shape {arr.shape} != {(width,)}")
        kind = arr.dtype.kind
        if kind not in "biuf":
            raise self.bad(action, f"dtype {arr.dtype} is not numeric")
        if kind != "b":
            if not np.all((arr == 0) | (arr == 1)):
                raise self.bad(action, "values must be 0 or 1")
        return arr.astype(bool)

    @staticmethod
    def _binary_batch(actions: Any, n: int, width: int, bad: BadBatch) -> np.ndarray:
        arr = np.asarray(actions)
        if arr.shape != (n, width) or arr.dtype.kind not in "biuf":
            raise bad(actions, f"shape {arr.shape} dtype {arr.dtype}")
        if arr.dtype.kind != "b" and not np.all((arr == 0) | (arr == 1)):
            raise bad(actions, "values must be 0 or 1")
        return arr.astype(bool)


class NodesCodec(ActionCodec):
    """``MultiBinary(M)``: ``action[m-1] = 1`` activates edge node ``m``.

    ``decode`` looks an int8 action of the right shape up in a table of every
    node set (one dict lookup, ``M <= FAST_NODES_LIMIT``; above it, one lookup
    per 8 nodes) before validating.
    """

    mode = "nodes"

    def __init__(self, n_experts: int, top_k: int, n_nodes: int):
        super().__init__(n_experts, top_k, n_nodes)
        self._shape = (n_nodes,)
        if n_nodes <= FAST_NODES_LIMIT:
            subsets = ((np.arange(1 << n_nodes)[:, None] >> np.arange(n_nodes)[None, :]) & 1).astype(np.int8)
            self._fast = {subsets[i].tobytes(): i for i in range(len(subsets))}
        else:  # 8 nodes at a time: every 0/1 pattern of 1 to 8 bytes
            self._fast = {}
            self._chunks = {bytes((i >> b) & 1 for b in range(w)): i for w in range(1, 9) for i in range(1 << w)}

    def _make_space(self):
        return spaces.MultiBinary(self.n_nodes)

    def decode(self, action):
        if type(action) is np.ndarray and action.dtype is _INT8:  # (any other dtype: the general path below)
            if action.shape == self._shape:
                if self._fast:
                    hit = self._fast.get(action.tobytes())
                    if hit is not None:
                        return "nodes", hit
                else:
                    raw, get, mask = action.tobytes(), self._chunks.get, 0
                    for i in range(0, len(raw), 8):
                        hit = get(raw[i : i + 8])
                        if hit is None:
                            break
                        mask |= hit << i
                    else:
                        return "nodes", mask
        return "nodes", int(self.pow2[self._binary(action, self.n_nodes)].sum())

    def decode_batch(self, actions, n, bad):
        return "nodes", self._binary_batch(actions, n, self.n_nodes, bad).astype(np.int64) @ self.pow2

    def encode(self, assignment, layer_nodes):
        return self._used_edge_nodes(assignment, layer_nodes).astype(np.int8)


class DiscreteCodec(ActionCodec):
    """``Discrete(2**M)``: the node sets of :class:`NodesCodec` as integers, bit ``m-1`` = node ``m``
    (``M <= DISCRETE_MAX_NODES``; ``ValueError`` beyond)."""

    mode = "discrete"

    def _make_space(self):
        if self.n_nodes > DISCRETE_MAX_NODES:
            raise ValueError(
                f"action_mode='discrete' needs num_nodes <= {DISCRETE_MAX_NODES} (Discrete(2**M) has one action per "
                f"node set; num_nodes={self.n_nodes} gives {2 ** self.n_nodes:,}): use action_mode='nodes', the "
                f"factored action MultiBinary({self.n_nodes}) with one bit per edge node")
        return spaces.Discrete(1 << self.n_nodes)

    def decode(self, action):
        if isinstance(action, (bool, np.bool_)):
            raise self.bad(action, "a bool is not a node-subset index")
        if isinstance(action, (int, np.integer)):
            a = int(action)
        else:
            arr = self._array(action)
            if arr.shape not in ((), (1,)) or arr.dtype.kind not in "iu":
                raise self.bad(action, "need an integer scalar")
            a = int(arr.reshape(-1)[0])
        if not 0 <= a < (1 << self.n_nodes):
            raise self.bad(action, f"out of range [0, {(1 << self.n_nodes) - 1}]")
        return "nodes", a

    def decode_batch(self, actions, n, bad):
        arr = np.asarray(actions)
        if arr.shape != (n,) or arr.dtype.kind not in "iu":
            raise bad(actions, f"need {n} integers, got shape {arr.shape} dtype {arr.dtype}")
        if arr.min() < 0 or arr.max() >= (1 << self.n_nodes):
            raise bad(actions, "node-subset index out of range")
        return "nodes", arr.astype(np.int64)

    def encode(self, assignment, layer_nodes):
        return int(self.pow2[self._used_edge_nodes(assignment, layer_nodes)].sum())


class ExpertsCodec(ActionCodec):
    """``MultiBinary(N)``: the computed set (each slot is served by its least-error computed expert or skipped)."""

    mode = "experts"

    def _make_space(self):
        return spaces.MultiBinary(self.n_experts)

    def decode(self, action):
        return "experts", self._binary(action, self.n_experts)

    def decode_batch(self, actions, n, bad):
        return "experts", self._binary_batch(actions, n, self.n_experts, bad)

    def encode(self, assignment, layer_nodes):
        a = self._assignment(assignment)
        out = np.zeros(self.n_experts, dtype=np.int8)
        out[a[a >= 0]] = 1
        return out


class SlotsCodec(ActionCodec):
    """``MultiDiscrete([N+1] * k)``: the serving expert of each top-k slot, ``N`` = skip."""

    mode = "slots"

    def _make_space(self):
        return spaces.MultiDiscrete(np.full(self.top_k, self.n_experts + 1, dtype=np.int64))

    def decode(self, action):
        arr = self._array(action)
        shape = (self.top_k,)
        if arr.shape != shape:
            raise self.bad(action, f"shape {arr.shape} != {shape}")
        kind = arr.dtype.kind
        if kind not in "biuf":
            raise self.bad(action, f"dtype {arr.dtype} is not numeric")
        if kind == "b":
            raise self.bad(action, "dtype bool")
        if kind == "f" and not np.all(np.floor(arr) == arr):
            raise self.bad(action, "values must be integers")
        if arr.min() < 0 or arr.max() > self.n_experts:  # checked before the cast (inf, huge values)
            raise self.bad(action, f"values must be in [0, {self.n_experts}] ({self.n_experts} = skip)")
        return "slots", arr.astype(np.int64)

    def decode_batch(self, actions, n, bad):
        arr = np.asarray(actions)
        if arr.shape != (n, self.top_k) or arr.dtype.kind not in "biuf":
            raise bad(actions, f"shape {arr.shape} dtype {arr.dtype}")
        if arr.dtype.kind == "b" or (arr.dtype.kind == "f" and not np.all(np.floor(arr) == arr)):
            raise bad(actions, "values must be integers")
        if arr.min() < 0 or arr.max() > self.n_experts:  # checked before the cast (inf, huge values)
            raise bad(actions, f"values must be in [0, {self.n_experts}]")
        return "slots", arr.astype(np.int64)

    def encode(self, assignment, layer_nodes):
        a = self._assignment(assignment)
        return np.where(a < 0, self.n_experts, a).astype(np.int64)


def node_sets(masks: Any, n_nodes: int) -> np.ndarray:
    """The node sets (..., M+1) bool of edge-node bitmasks (int, or int64 array (...)): node 0 always in,
    node ``m`` when bit ``m-1`` is set.  ``ValueError`` for ``n_nodes`` outside [1, 62] (an int64 bitmask)."""
    if not 1 <= n_nodes <= 62:
        raise ValueError(f"n_nodes={n_nodes!r} must be in [1, 62] (edge nodes of an int64 bitmask)")
    m = np.asarray(masks, dtype=np.int64)
    bits = ((m[..., None] >> np.arange(n_nodes, dtype=np.int64)) & 1).astype(bool)
    return np.concatenate([np.ones(m.shape + (1,), dtype=bool), bits], axis=-1)


CODECS: dict[str, type[ActionCodec]] = {
    "nodes": NodesCodec, "discrete": DiscreteCodec, "experts": ExpertsCodec, "slots": SlotsCodec,
}


def make_action_codec(mode: str, n_experts: int, top_k: int, n_nodes: int) -> ActionCodec:
    """The codec of action mode ``mode`` (one of :data:`ACTION_MODES`)."""
    if mode not in CODECS:
        raise ValueError(f"invalid action_mode={mode!r}: must be one of {ACTION_MODES}")
    return CODECS[mode](n_experts, top_k, n_nodes)
