"""``Delta`` and ``sigma`` of many experts at once, in vectorized blocks (fast calibration).

The same estimates as :func:`siftmoe_gym.similarity.similarity_from_outputs`
(``docs/model.md`` section 3): ``Delta[i, j] = q-quantile_x ||E_i(x) - E_j(x)|| / ||x||``
and ``sigma[i] = q-quantile_x ||E_i(x)|| / ||x||`` over the calibration hidden
states ``x``, computed by one of two methods:

- ``"exact"``: the pairwise differences ``E_j(x) - E_i(x)`` of every pair
  ``i < j``, formed in blocks of pairs instead of one expert at a time.  Every
  number is computed with the very operations of ``similarity_from_outputs``
  (the same difference, the same row-wise ``add.reduce`` over the output
  dimension, the same division and the same ``np.quantile(..., method="higher")``
  order statistic), so the result equals it bit for bit (checked in
  ``tests/test_scale_similarity.py``).
- ``"gram"``: per token, the squared distances from the Gram matrix of the
  expert outputs, ``||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b`` (one batched
  BLAS product per block of tokens), plus a bound on its rounding error,
  ``(2d + 8) u (||a||^2 + ||b||^2)`` with ``u = 2^-53`` (the dot-product bound
  ``gamma_d`` of Higham, *Accuracy and Stability of Numerical Algorithms*,
  2nd ed., section 3.1, applied to the three terms), so that no ratio falls
  below the exact difference's by more than the rounding of the final scaling
  and square root: ``Delta`` stays an upper estimate at ``q = 1``.  The
  order statistic is taken on the squared ratios (the square root is
  monotone) and the root of the result only.  It
  differs from ``"exact"`` by about ``1e-14`` relative (measured in the tests)
  and costs ``N^2 T d`` multiply-adds in BLAS instead of ``N^2 T d / 2``
  elementwise numpy operations: about 40x faster at ``N = 256``.

:func:`choose_method` picks ``"exact"`` while the pairwise work
``N (N - 1) / 2 * T * d`` is at most :data:`EXACT_WORK_LIMIT` (every system up
to ``N = 128`` with the default synthetic model, so the default system's
``Delta`` is unchanged) and ``"gram"`` above it.
"""

from __future__ import annotations

import numpy as np

EXACT_WORK_LIMIT = 1 << 26
"""Largest ``N (N - 1) / 2 * T * d`` (pairs x tokens x output dimension) computed by exact differences."""

_BLOCK_ELEMENTS = 1 << 22
"""Elements of one block of pair differences or Gram entries (32 MB of float64)."""

_U = 2.0**-53


def choose_method(n: int, t: int, d: int) -> str:
    """``"exact"`` when ``n (n - 1) / 2 * t * d <= EXACT_WORK_LIMIT``, else ``"gram"``."""
    return "exact" if n * (n - 1) // 2 * t * d <= EXACT_WORK_LIMIT else "gram"


def calibration_rows(outputs: np.ndarray, inputs: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(outputs (N, T', d), input norms (T',), kept (T,) bool)`` over the calibration tokens with a non-zero
    input norm, float64; ``ValueError`` for wrong shapes, ``q`` outside (0, 1] or no usable token."""
    y = np.asarray(outputs, dtype=np.float64)
    x = np.asarray(inputs, dtype=np.float64)
    if y.ndim != 3 or x.ndim != 2 or y.shape[1:] != x.shape:
        raise ValueError(f"outputs must be (N, T, d) and inputs (T, d); got {y.shape} and {x.shape}")
    if not 0.0 < q <= 1.0:
        raise ValueError(f"quantile q={q!r} must be in (0, 1]")
    xnorm = np.linalg.norm(x, axis=1)
    keep = xnorm > 0
    if not keep.any():
        raise ValueError("no calibration hidden state with a non-zero norm")
    return y[:, keep], xnorm[keep], keep


def _kth_index(t: int, q: float) -> int:
    """Index (ascending) of numpy's ``"higher"`` ``q``-quantile among ``t`` values (``t - 1`` at ``q = 1``)."""
    if q >= 1.0:
        return t - 1
    return int(np.ceil((t - 1) * np.float64(q)))  # numpy's "higher" virtual index, the same rounding


def _quantile_rows(r: np.ndarray, q: float) -> np.ndarray:
    """The ``q``-quantile of each row (the rule of :mod:`siftmoe_gym.similarity`: max at ``q = 1``, else
    numpy's ``"higher"`` order statistic)."""
    if q >= 1.0:
        return r.max(axis=1)
    return np.quantile(r, q, axis=1, method="higher")


def similarity_blocks(outputs: np.ndarray, inputs: np.ndarray, q: float = 0.99,
                      method: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(Delta (N, N), sigma (N,))`` from expert outputs ``(N, T, d)`` on inputs ``(T, d)``.

    ``method``: ``"exact"``, ``"gram"`` or None (:func:`choose_method`); see the
    module docstring.  ``Delta`` is exactly symmetric with a zero diagonal.
    Raises ``ValueError`` on mismatched shapes, ``q`` outside (0, 1], an
    unknown method, or inputs that are all zero.  Memory: blocks of about
    :data:`_BLOCK_ELEMENTS` float64 (32 MB) plus ``N^2`` results.
    """
    y, xnorm, _ = calibration_rows(outputs, inputs, q)
    n, t, d = y.shape
    method = choose_method(n, t, d) if method is None else method
    if method not in ("exact", "gram"):
        raise ValueError(f"method={method!r} must be 'exact', 'gram' or None")
    sigma = _quantile_rows(np.linalg.norm(y, axis=2) / xnorm, q)
    if method == "exact":
        delta = np.zeros((n, n))
        for i in range(n - 1):  # the pairs (i, j > i): E_j - E_i, as similarity_from_outputs forms them
            rows = np.empty((n - i - 1, t))
            step = max(1, _BLOCK_ELEMENTS // max(1, (n - i - 1) * d))
            for a in range(0, t, step):
                sl = slice(a, a + step)
                diff = y[i + 1 :, sl] - y[i, sl]
                diff *= diff
                rows[:, sl] = np.sqrt(np.add.reduce(diff, axis=-1)) / xnorm[sl]
            delta[i, i + 1 :] = _quantile_rows(rows, q)
        ii, jj = np.triu_indices(n, 1)
        delta[jj, ii] = delta[ii, jj]
        return delta, sigma
    return _gram_delta(y, xnorm, q), sigma


_ROW_BLOCK = 32
"""Experts per Gram block: (32 x d) @ (d x N) products stay below OpenBLAS's threading threshold, which on
busy cores was up to 20x slower than one thread (measured)."""


def _gram_delta(y: np.ndarray, xnorm: np.ndarray, q: float) -> np.ndarray:
    """``Delta`` from per-token Gram blocks; the order statistic over tokens by a running top-``m`` when
    ``m`` (values above the quantile, plus one) is at most 8, else by ``np.partition``."""
    n, t, d = y.shape
    yt = np.ascontiguousarray(y.transpose(1, 0, 2))  # (T, N, d)
    ytt = np.ascontiguousarray(yt.transpose(0, 2, 1))  # (T, d, N)
    sq = np.einsum("tnd,tnd->tn", yt, yt)  # (T, N) squared norms
    kth = _kth_index(t, q)
    m = t - kth  # the answer is the m-th largest
    grow = 1.0 + (2 * d + 8) * _U  # (||a||^2 + ||b||^2) times 1 + the rounding bound
    inv2 = (1.0 / (xnorm * xnorm))[:, None, None]
    delta = np.empty((n, n))
    for r in range(0, n, _ROW_BLOCK):
        rb = slice(r, r + _ROW_BLOCK)
        g = np.matmul(yt[:, rb], ytt)  # (T, b, N)
        g *= -2.0
        g += (sq[:, rb, None] + sq[:, None, :]) * grow
        g *= inv2  # squared ratios (T, b, N); the square root (monotone) after the order statistic
        if m <= 8:
            top = np.full((m,) + g.shape[1:], -np.inf)
            for k in range(t):
                cur = g[k]
                for j in range(m):  # insert the token's ratios into the descending top-m
                    smaller = np.minimum(top[j], cur)
                    np.maximum(top[j], cur, out=top[j])
                    cur = smaller
            delta[rb] = top[m - 1]
        else:
            delta[rb] = np.partition(g, kth, axis=0)[kth]
    np.sqrt(np.maximum(delta, 0.0), out=delta)
    delta = np.minimum(delta, delta.T)  # exactly symmetric (both orders are upper estimates)
    np.fill_diagonal(delta, 0.0)
    return delta
