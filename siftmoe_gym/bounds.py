"""Error bounds of expert-selection decisions and measured deviations.

A decision serves each top-k slot ``i`` by itself, by a substitute ``j``
(inheriting gate ``g_i``) or skips it (``SKIP = -1``).  Its error bound is
``err = sum_i g_i * Delta[i, a(i)]`` with ``Delta[i, i] = 0`` and
``Delta[i, SKIP] = sigma[i]`` (``docs/model.md`` section 3); the true relative
deviation ``||y_hat - y|| / ||x||`` never exceeds it when ``Delta``/``sigma``
are suprema over the tokens considered.
"""

from __future__ import annotations

import numpy as np

SKIP = -1
"""Assignment value meaning "skip this slot"."""
REL_TOL = 1e-12
ABS_TOL = 1e-15
"""Tolerances of every budget test (relative and absolute)."""


def within_budget(err, budget):
    """The one budget test of the project: ``err <= budget`` up to ``REL_TOL`` relative and
    ``ABS_TOL`` absolute (scalars or arrays)."""
    return err <= budget * (1.0 + REL_TOL) + ABS_TOL


def extended_delta(delta: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """``Delta`` with ``sigma`` appended as column ``N`` (the skip server): (..., N, N+1)."""
    delta = np.asarray(delta, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    return np.concatenate([delta, sigma[..., :, None]], axis=-1)


def server_index(assign: np.ndarray, num_experts: int) -> np.ndarray:
    """Map ``SKIP`` (-1) to column ``N`` of the extended matrix."""
    a = np.asarray(assign)
    return np.where(a < 0, num_experts, a)


def error_bound(
    gates: np.ndarray,
    topk: np.ndarray,
    assign: np.ndarray,
    delta: np.ndarray,
    sigma: np.ndarray,
    layer: np.ndarray | None = None,
) -> np.ndarray:
    """Error bound per decision, vectorized over leading axes.

    ``gates``, ``topk``, ``assign``: (..., k).  ``delta`` (N, N) and ``sigma``
    (N,), or per-layer (L, N, N) / (L, N) with ``layer`` (...) selecting one.
    """
    dext = extended_delta(delta, sigma)
    n = dext.shape[-2]
    topk = np.asarray(topk)
    srv = server_index(assign, n)
    if layer is None:
        if dext.ndim != 2:
            raise ValueError("per-layer delta needs a `layer` index array")
        vals = dext[topk, srv]
    else:
        lay = np.asarray(layer)[..., None]
        vals = dext[lay, topk, srv]
    return np.sum(np.asarray(gates, dtype=np.float64) * vals, axis=-1)


def served_output(
    expert_outputs: np.ndarray, gates: np.ndarray, topk: np.ndarray, assign: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact and served layer outputs for tokens.

    ``expert_outputs``: (N, T, d), every expert evaluated on every token;
    ``gates``, ``topk``, ``assign``: (T, k).  Returns ``(y, y_hat)``, each (T, d).
    """
    out = np.asarray(expert_outputs, dtype=np.float64)
    t_idx = np.arange(out.shape[1])[:, None]
    g = np.asarray(gates, dtype=np.float64)[..., None]
    y = np.sum(g * out[np.asarray(topk), t_idx], axis=1)
    a = np.asarray(assign)
    served = out[np.maximum(a, 0), t_idx] * (a >= 0)[..., None]
    y_hat = np.sum(g * served, axis=1)
    return y, y_hat


def measured_deviation(
    expert_outputs: np.ndarray,
    inputs: np.ndarray,
    gates: np.ndarray,
    topk: np.ndarray,
    assign: np.ndarray,
) -> np.ndarray:
    """True relative deviation ``||y_hat - y|| / ||x||`` per token (T,)."""
    y, y_hat = served_output(expert_outputs, gates, topk, assign)
    xnorm = np.linalg.norm(np.asarray(inputs, dtype=np.float64), axis=-1)
    return np.linalg.norm(y_hat - y, axis=-1) / np.maximum(xnorm, 1e-300)
