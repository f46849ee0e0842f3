"""Expert dissimilarity ``Delta`` and skip cost ``sigma`` from expert outputs.

``Delta[i, j] = q-quantile_x ||E_i(x) - E_j(x)|| / ||x||`` and
``sigma[i] = q-quantile_x ||E_i(x)|| / ||x||`` over calibration hidden states
``x`` that reach the layer (``docs/model.md`` section 3).  ``q = 1`` gives the
empirical maximum, so the error bound then holds on every calibration token.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .blocked_similarity import calibration_rows


def _quantile(ratios: np.ndarray, q: float, axis: int) -> np.ndarray:
    if q >= 1.0:
        return ratios.max(axis=axis)
    return np.quantile(ratios, q, axis=axis, method="higher")


def similarity_from_outputs(
    outputs: np.ndarray, inputs: np.ndarray, q: float = 0.99, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """``(Delta (N, N), sigma (N,))`` from expert outputs ``(N, T, d)`` on inputs ``(T, d)``.

    Batched over token chunks (memory stays ~128 MB whatever ``d``); pairwise
    distances are exact differences (not the Gram trick), so ``Delta`` is
    exactly symmetric with a zero diagonal and, at ``q = 1``, never below a
    calibration token's true ratio.
    """
    y, xnorm, _ = calibration_rows(outputs, inputs, q)
    n, t = y.shape[0], len(xnorm)
    sig = np.linalg.norm(y, axis=2) / xnorm  # (N, T)
    ratios = np.zeros((n, n, t))
    d = y.shape[2]
    step = max(1, min(chunk, (1 << 24) // max(1, n * d)))
    for start in range(0, t, step):
        sl = slice(start, start + step)
        block = y[:, sl]
        for i in range(n - 1):
            diff = np.linalg.norm(block[i + 1 :] - block[i], axis=-1) / xnorm[sl]
            ratios[i, i + 1 :, sl] = diff
            ratios[i + 1 :, i, sl] = diff
    delta = _quantile(ratios, q, axis=2)
    np.fill_diagonal(delta, 0.0)
    return delta, _quantile(sig, q, axis=1)


def similarity_from_experts(
    experts: Sequence[Callable[[np.ndarray], np.ndarray]], inputs: np.ndarray, q: float = 0.99
) -> tuple[np.ndarray, np.ndarray]:
    """Run each expert callable on ``inputs`` (T, d) and estimate ``(Delta, sigma)``."""
    outs = np.stack([np.asarray(f(inputs), dtype=np.float64) for f in experts])
    return similarity_from_outputs(outs, inputs, q=q)


def bound_coverage(measured: np.ndarray, bound: np.ndarray, rtol: float = 1e-9) -> float:
    """Share of tokens whose measured deviation is within the bound."""
    m = np.asarray(measured, dtype=np.float64)
    b = np.asarray(bound, dtype=np.float64)
    if m.size == 0:
        return float("nan")
    return float(np.mean(m <= b * (1.0 + rtol) + 1e-12))
