"""Decision instances: everything a policy needs to decide one token (P1) or a block (P2).

An *assignment* is an int array over the top-k slots: ``assignment[s]`` is
the expert that serves slot ``s`` (itself: keep; another: replace) or
``SKIP`` (-1).  The *computed set* is the set of experts evaluated; by
default it is the set of experts the assignment uses (an expert serving two
slots is computed once).  A computed set may hold extra experts (wasted
work, still paid for).

Energy of a decode decision: ``sum_{m in nodes(C), m != 0} c_m(1) + e_c |C|``;
latency violation: the largest overrun of a used infeasible link.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .bounds import SKIP, extended_delta, server_index, within_budget


@dataclass(frozen=True)
class DecisionResult:
    """Outcome of one decision (arrays for a prefill block, scalars for decode)."""

    energy_j: float
    error_bound: np.ndarray | float
    latency_violation_s: float
    within_budget: bool
    nodes_used: np.ndarray  # (M+1,) bool for decode; loads (M+1,) int for prefill
    assignment: np.ndarray
    computed: np.ndarray  # (N,) bool for decode; (T, N) bool for prefill


def _check_assignment(assign: np.ndarray, shape: tuple[int, ...], n: int) -> np.ndarray:
    a = np.asarray(assign)
    if a.shape != shape:
        raise ValueError(f"assignment must have shape {shape}, got {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"assignment must be integer (expert index or SKIP=-1), got dtype {a.dtype}")
    if a.size and (a.min() < SKIP or a.max() >= n):
        raise ValueError(f"assignment values must be in [-1, {n - 1}], got {a.min()}..{a.max()}")
    return a.astype(np.int64)


def _computed_mask(assign: np.ndarray, n: int, computed: np.ndarray | None) -> np.ndarray:
    """(…, N) bool mask of computed experts: those assigned, plus ``computed`` extras."""
    lead = assign.shape[:-1]
    mask = np.zeros(lead + (n + 1,), dtype=bool)
    np.put_along_axis(mask, server_index(assign, n), True, axis=-1)
    mask = mask[..., :n]
    if computed is not None:
        c = np.asarray(computed)
        if c.dtype == bool:
            if c.shape != lead + (n,):
                raise ValueError(f"computed mask must have shape {lead + (n,)}, got {c.shape}")
            extra = c
        else:
            extra = np.zeros(lead + (n,), dtype=bool)
            if c.size:
                if c.min() < 0 or c.max() >= n:
                    raise ValueError(f"computed experts must be in [0, {n - 1}]")
                if lead:
                    raise ValueError("for blocks pass `computed` as a (T, N) bool mask")
                extra[c] = True
        mask = mask | extra
    return mask


@dataclass
class DecodeInstance:
    """One token at one MoE layer (problem P1).

    ``node_cost`` (M+1,) is the energy of activating each node for this token
    (node 0: 0; an infeasible link: its ``P_max`` fallback energy),
    ``node_feasible`` (M+1,) whether it meets the latency budget, and
    ``node_violation_s`` (M+1,) the round-trip overrun when used anyway.
    """

    gates: np.ndarray  # (k,)
    topk: np.ndarray  # (k,) expert indices
    delta: np.ndarray  # (N, N)
    sigma: np.ndarray  # (N,)
    node_of: np.ndarray  # (N,) in 0..M
    node_cost: np.ndarray  # (M+1,) J
    node_feasible: np.ndarray  # (M+1,) bool
    compute_cost: float  # J per expert evaluation
    budget: float  # error budget epsilon
    node_violation_s: np.ndarray | None = None  # (M+1,) s
    layer: int = 0
    _dext: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.gates = np.asarray(self.gates, dtype=np.float64)
        self.topk = np.asarray(self.topk, dtype=np.int64)
        self.node_of = np.asarray(self.node_of, dtype=np.int64)
        self.node_cost = np.asarray(self.node_cost, dtype=np.float64)
        self.node_feasible = np.asarray(self.node_feasible, dtype=bool)
        if self.node_violation_s is None:
            self.node_violation_s = np.zeros_like(self.node_cost)
        k, n = len(self.topk), len(self.node_of)
        if self.gates.shape != (k,):
            raise ValueError(f"gates must have shape ({k},), got {self.gates.shape}")
        if np.shape(self.delta) != (n, n) or np.shape(self.sigma) != (n,):
            raise ValueError(f"delta must be ({n}, {n}) and sigma ({n},)")
        if self.node_cost.shape != self.node_feasible.shape or self.node_cost.ndim != 1:
            raise ValueError("node_cost and node_feasible must both have shape (M+1,)")

    @property
    def num_experts(self) -> int:
        return len(self.node_of)

    @property
    def num_nodes(self) -> int:
        """Number of edge nodes ``M`` (node 0 excluded)."""
        return len(self.node_cost) - 1

    @property
    def delta_ext(self) -> np.ndarray:
        if self._dext is None:
            self._dext = extended_delta(self.delta, self.sigma)
        return self._dext

    def topk_assignment(self) -> np.ndarray:
        return self.topk.copy()

    def evaluate(self, assignment: np.ndarray, computed: np.ndarray | None = None) -> DecisionResult:
        """Energy, error bound and latency violation of a decision."""
        n = self.num_experts
        a = _check_assignment(assignment, self.topk.shape, n)
        mask = _computed_mask(a, n, computed)
        used = np.zeros(self.num_nodes + 1, dtype=bool)
        used[self.node_of[mask]] = True
        energy = float(self.node_cost[used].sum() + self.compute_cost * mask.sum())
        err = float(np.dot(self.gates, self.delta_ext[self.topk, server_index(a, n)]))
        viol = float(self.node_violation_s[used].max(initial=0.0))
        ok = bool(within_budget(err, self.budget)) and bool(self.node_feasible[used].all())
        return DecisionResult(energy, err, viol, ok, used, a, mask)


def evaluate_decode_batch(
    gates: np.ndarray,
    topk: np.ndarray,
    assign: np.ndarray,
    delta_ext: np.ndarray,
    node_of: np.ndarray,
    node_cost: np.ndarray,
    compute_cost: float,
    node_violation: np.ndarray | None = None,
    computed: np.ndarray | None = None,
    layer: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorized decode evaluation of ``B`` decisions.

    ``gates``/``topk``/``assign``: (B, k).  ``delta_ext``: (N, N+1), or
    (L, N, N+1) with ``layer`` (B,).  ``node_of``: (N,), or (L, N) with
    ``layer``.  ``node_cost``/``node_violation``: (B, M+1) or (M+1,).
    ``computed``: optional (B, N) bool extras.  Returns
    ``(energy_j, error_bound, latency_violation_s)``, each (B,).

    The nodes a decision activates are gathered as bit masks (one bit per
    node), which is several times faster than one-hot matrices; systems with
    more than 62 nodes fall back to one-hot sums.
    """
    assign = np.asarray(assign)
    topk = np.asarray(topk)
    gates = np.asarray(gates, dtype=np.float64)
    node_of = np.asarray(node_of)
    n = delta_ext.shape[-2]
    srv = server_index(assign, n)
    if layer is not None:
        layer = np.asarray(layer)
    if layer is None:
        err = np.einsum("bk,bk->b", gates, delta_ext[topk, srv])
    else:
        err = np.einsum("bk,bk->b", gates, delta_ext[layer[:, None], topk, srv])
    b, k = assign.shape
    cost = np.asarray(node_cost, dtype=np.float64)
    m1 = cost.shape[-1]
    mask = None
    if computed is None:
        # distinct computed experts: the non-skip servers, each counted once
        distinct = np.count_nonzero(assign >= 0, axis=1)
        for s in range(1, k):
            dup = srv[:, s] == srv[:, 0]
            for r in range(1, s):
                dup |= srv[:, s] == srv[:, r]
            distinct -= dup & (assign[:, s] >= 0)
    else:
        mask = _computed_mask(assign, n, computed)  # (B, N) experts evaluated
        distinct = np.count_nonzero(mask, axis=1)
    if m1 <= 62:
        bits = np.left_shift(np.int64(1), node_of.astype(np.int64))
        if mask is None:  # nodes of the slots' servers; the skip column has no node
            bits = np.concatenate([bits, np.zeros(bits.shape[:-1] + (1,), np.int64)], axis=-1)
            slot_bits = bits[srv] if layer is None else bits[layer[:, None], srv]
            used_bits = np.bitwise_or.reduce(slot_bits, axis=1)
        else:
            expert_bits = bits if layer is None else bits[layer]
            used_bits = np.bitwise_or.reduce(np.where(mask, expert_bits, 0), axis=1)
        used = ((used_bits[:, None] >> np.arange(m1, dtype=np.int64)) & 1).astype(bool)
    else:
        if mask is None:
            mask = _computed_mask(assign, n, None)
        if layer is None:
            onehot = np.eye(m1, dtype=np.float64)[node_of]  # (N, M+1)
            used = (mask @ onehot) > 0
        else:
            onehot = np.eye(m1, dtype=np.float64)[node_of[layer]]  # (B, N, M+1)
            used = np.einsum("bn,bnm->bm", mask.astype(np.float64), onehot) > 0
    if cost.ndim == 1:
        energy = used @ cost
    else:
        energy = np.einsum("bm,bm->b", used, np.broadcast_to(cost, (b, m1)))
    energy = energy + compute_cost * distinct
    if node_violation is None:
        viol = np.zeros(b)
    else:
        v = np.broadcast_to(np.asarray(node_violation, dtype=np.float64), (b, m1))
        viol = np.max(np.where(used, v, 0.0), axis=1)
    return energy, err, viol


@dataclass
class PrefillInstance:
    """A block of ``T`` tokens passing one MoE layer together (problem P2).

    Node ``m`` receives, in one transmission, the hidden states of the
    ``n_m`` tokens that use any of its experts and costs ``cost_table[m, n_m]``
    (convex, increasing in ``n_m``).  Every token keeps ``err_t <= budget``.
    """

    gates: np.ndarray  # (T, k)
    topk: np.ndarray  # (T, k)
    delta: np.ndarray  # (N, N)
    sigma: np.ndarray  # (N,)
    node_of: np.ndarray  # (N,)
    cost_table: np.ndarray  # (M+1, T+1) J for loads 0..T
    feasible_table: np.ndarray  # (M+1, T+1) bool
    compute_cost: float
    budget: float
    violation_table: np.ndarray | None = None  # (M+1, T+1) s
    layer: int = 0

    def __post_init__(self) -> None:
        self.gates = np.asarray(self.gates, dtype=np.float64)
        self.topk = np.asarray(self.topk, dtype=np.int64)
        self.node_of = np.asarray(self.node_of, dtype=np.int64)
        self.cost_table = np.asarray(self.cost_table, dtype=np.float64)
        self.feasible_table = np.asarray(self.feasible_table, dtype=bool)
        if self.violation_table is None:
            self.violation_table = np.zeros_like(self.cost_table)
        t = self.gates.shape[0]
        if self.gates.shape != self.topk.shape or self.gates.ndim != 2:
            raise ValueError(f"gates and topk must both be (T, k); got {self.gates.shape}, {self.topk.shape}")
        if self.cost_table.shape[1] < t + 1:
            raise ValueError(f"cost_table must cover loads 0..{t}, got {self.cost_table.shape}")

    @property
    def num_tokens(self) -> int:
        return self.gates.shape[0]

    @property
    def num_experts(self) -> int:
        return len(self.node_of)

    @property
    def num_nodes(self) -> int:
        return self.cost_table.shape[0] - 1

    def decode_view(self, t: int) -> DecodeInstance:
        """Token ``t`` as a standalone decode instance with single-token costs."""
        return DecodeInstance(
            self.gates[t], self.topk[t], self.delta, self.sigma, self.node_of,
            self.cost_table[:, 1], self.feasible_table[:, 1], self.compute_cost, self.budget,
            self.violation_table[:, 1], self.layer,
        )

    def loads(self, computed: np.ndarray) -> np.ndarray:
        """Tokens per node (M+1,) for a (T, N) computed mask."""
        onehot = np.zeros((self.num_experts, self.num_nodes + 1), dtype=bool)
        onehot[np.arange(self.num_experts), self.node_of] = True
        per_token = (computed.astype(np.int64) @ onehot.astype(np.int64)) > 0
        return per_token.sum(axis=0)

    def evaluate(self, assignment: np.ndarray, computed: np.ndarray | None = None) -> DecisionResult:
        """Block energy, per-token error bounds (T,) and latency violation."""
        n = self.num_experts
        a = _check_assignment(assignment, self.topk.shape, n)
        mask = _computed_mask(a, n, computed)
        loads = self.loads(mask)
        m = np.arange(self.num_nodes + 1)
        energy = float(self.cost_table[m, loads].sum() + self.compute_cost * mask.sum())
        dext = extended_delta(self.delta, self.sigma)
        err = np.sum(self.gates * dext[self.topk, server_index(a, n)], axis=1)
        viol = float(self.violation_table[m, loads].max(initial=0.0))
        ok = bool(np.all(within_budget(err, self.budget)) and self.feasible_table[m, loads].all())
        return DecisionResult(energy, err, viol, ok, loads, a, mask)
