"""Make a model's MoE blocks follow per-token expert-selection decisions.

Inside ``with follow_decisions(model, policy_fn) as log:`` every MoE layer's
experts module calls ``policy_fn(routing)`` with a :class:`LayerRouting`
(router probabilities, the model's top-k and gates, hidden-state norms of
the tokens passing the layer) and serves the layer as the returned
assignment (T, k) says: ``a[t, s] == topk[t, s]`` keeps slot ``s``, another
expert ``j`` replaces it (``j`` inherits the slot's gate), ``SKIP = -1``
skips it.  ``policy_fn`` may return ``None`` (keep everything).

Exactness: when every slot of a call is kept, the experts module runs with
the model's own, untouched routing tensors, so outputs are bitwise those of
the unmodified model.  Otherwise it runs the model's own experts kernel with
the rewritten routing (a skipped slot keeps its expert index with weight 0,
which adds an exact zero), i.e. ``y_hat = sum_{a(i) != skip} g_i E_{a(i)}(x)``.
With ``measure=True`` the unmodified routed output ``y`` is computed as well
and the true deviation ``||y_hat - y|| / ||x||`` (float64) is logged per token.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from ..bounds import SKIP, error_bound
from ..similarity import bound_coverage
from .adapters import MoELayer, moe_layers, sort_slots


@dataclass
class LayerRouting:
    """What a scheduler knows about the tokens passing one MoE layer."""

    layer: int  # MoE layer index
    probs: np.ndarray  # (T, N) router scores in [0, 1] (softmax probabilities or sigmoid scores)
    topk: np.ndarray  # (T, k) model's top-k, slots by descending gate
    gates: np.ndarray  # (T, k) the gates the model applies (renormalization, bias correction, scaling included)
    norms: np.ndarray  # (T,) ||x||
    sequence: int = 0  # caller-set index of the current sequence (see DecisionLog.sequence)

    @property
    def num_tokens(self) -> int:
        return self.topk.shape[0]


@dataclass
class LayerRecord:
    layer: int
    sequence: int
    topk: np.ndarray
    gates: np.ndarray
    assignment: np.ndarray
    norms: np.ndarray
    deviation: np.ndarray  # (T,) ||y_hat - y|| / ||x|| (zeros where all kept)
    tolerance: np.ndarray | None = None  # (T,) float rounding allowance of the model's dtype


@dataclass
class DecisionLog:
    """Per-call records of a ``follow_decisions`` block."""

    records: list[LayerRecord] = field(default_factory=list)
    sequence: int = 0  # set by the caller; copied into each LayerRouting

    def arrays(self, layer: int) -> dict[str, np.ndarray]:
        rec = [r for r in self.records if r.layer == layer]
        if not rec:
            return {}
        return {name: np.concatenate([getattr(r, name) for r in rec]) for name in ("topk", "gates", "assignment", "norms", "deviation")}

    def bounds(self, delta: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(measured deviation, error bound)`` over all layers and tokens, each (R,)."""
        dev, bnd = [], []
        for r in self.records:
            dev.append(r.deviation)
            bnd.append(error_bound(r.gates, r.topk, r.assignment, delta[r.layer], sigma[r.layer]))
        if not dev:
            return np.zeros(0), np.zeros(0)
        return np.concatenate(dev), np.concatenate(bnd)

    def tolerances(self) -> np.ndarray:
        """Rounding allowance per (call, token), aligned with :meth:`bounds`."""
        if not self.records:
            return np.zeros(0)
        return np.concatenate([np.zeros_like(r.deviation) if r.tolerance is None else r.tolerance for r in self.records])

    def coverage(self, delta: np.ndarray, sigma: np.ndarray, rtol: float = 1e-9) -> float:
        """Share of (token, layer) decisions whose measured deviation is within the bound.

        A deviation counts as within when ``dev <= bound * (1 + rtol) + tol``,
        ``tol = 8 eps (||y|| + ||y_hat||) / ||x||`` with ``eps`` the machine
        epsilon of the model's dtype: the experts kernel groups tokens
        differently when routing changes, so even a kept token's output may
        move by a few ulps.
        """
        dev, bnd = self.bounds(delta, sigma)
        if dev.size == 0:
            return float("nan")
        return bound_coverage(np.maximum(dev - self.tolerances(), 0.0), bnd, rtol=rtol)


@contextlib.contextmanager
def patch_experts(layers: list[MoELayer], handler: Callable) -> Iterator[None]:
    """Route every model call of each layer's experts through ``handler(layer, x, idx, w, orig)``.

    ``x`` is (T, d), ``idx``/``w`` (T, k) the routing the model computed, ``orig(x, idx, w)`` the model's own
    experts kernel; the handler returns the routed output (T, d).  Installed by each layer's adapter
    (:meth:`siftmoe_gym.hf.adapters.Adapter.install`) and removed on exit, errors included."""
    undo = []
    try:
        for lay in layers:
            undo.append(lay.adapter.install(lay, handler))
        yield
    finally:
        for fn in reversed(undo):
            fn()


def _routing(lay: MoELayer, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, seq: int):
    idx_s, w_s = sort_slots(idx, w)
    with torch.no_grad():
        probs = lay.scores(x)
        norms = torch.linalg.vector_norm(x.double(), dim=-1)
    r = LayerRouting(
        layer=lay.index,
        probs=probs.double().cpu().numpy(),
        topk=idx_s.cpu().numpy().astype(np.int64),
        gates=w_s.detach().double().cpu().numpy(),
        norms=norms.cpu().numpy(),
        sequence=seq,
    )
    return r, idx_s, w_s


def _check_assignment(a, shape: tuple[int, int], n: int) -> np.ndarray:
    arr = np.asarray(a)
    if arr.shape != shape or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"policy must return an integer assignment of shape {shape}, got {arr.dtype} {arr.shape}")
    if arr.size and (arr.min() < SKIP or arr.max() >= n):
        raise ValueError(f"assignment values must be in [-1, {n - 1}]")
    return arr.astype(np.int64)


def served_routing(idx_s: torch.Tensor, w_s: torch.Tensor, assign: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Routing tensors that make the experts module compute ``sum_{a(i) != skip} g_i E_{a(i)}(x)``."""
    a = torch.as_tensor(assign, dtype=torch.long, device=idx_s.device)
    new_idx = torch.where(a >= 0, a, idx_s)
    new_w = torch.where(a >= 0, w_s, torch.zeros_like(w_s))
    return new_idx, new_w


@contextlib.contextmanager
def follow_decisions(
    model: torch.nn.Module,
    policy_fn: Callable[[LayerRouting], np.ndarray | None],
    *,
    measure: bool = True,
    layers: list[MoELayer] | None = None,
) -> Iterator[DecisionLog]:
    """Context manager: the model's MoE layers follow ``policy_fn``'s decisions (module docstring)."""
    layers = moe_layers(model) if layers is None else layers
    log = DecisionLog()

    def handler(lay: MoELayer, x, idx, w, orig):
        routing, idx_s, w_s = _routing(lay, x, idx, w, log.sequence)
        shape = routing.topk.shape
        assign = policy_fn(routing)
        if assign is None:
            assign = routing.topk.copy()
        assign = _check_assignment(assign, shape, lay.num_experts)
        if np.array_equal(assign, routing.topk):
            out = orig(x, idx, w)  # the model's own path: bitwise identical
            dev = np.zeros(shape[0])
            tol = np.zeros(shape[0])
        else:
            new_idx, new_w = served_routing(idx_s, w_s, assign)
            out = orig(x, new_idx, new_w)
            if measure:
                with torch.no_grad():
                    y = orig(x, idx, w)
                    yh, y0 = out.detach().double(), y.double()
                    xn = torch.linalg.vector_norm(x.double(), dim=-1).clamp_min(1e-300)
                    dev = (torch.linalg.vector_norm(yh - y0, dim=-1) / xn).cpu().numpy()
                    eps = torch.finfo(out.dtype).eps
                    scale = torch.linalg.vector_norm(yh, dim=-1) + torch.linalg.vector_norm(y0, dim=-1)
                    tol = (8.0 * eps * scale / xn).cpu().numpy()
            else:
                dev = np.full(shape[0], np.nan)
                tol = np.zeros(shape[0])
        log.records.append(
            LayerRecord(lay.index, log.sequence, routing.topk, routing.gates, assign, routing.norms, dev, tol)
        )
        return out

    with patch_experts(layers, handler):
        yield log


# ------------------------------------------------------------------ policies
def keep_all(routing: LayerRouting) -> np.ndarray:
    return routing.topk.copy()


def skip_all(routing: LayerRouting) -> np.ndarray:
    return np.full_like(routing.topk, SKIP)
