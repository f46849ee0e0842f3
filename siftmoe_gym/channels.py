"""Wireless channels between node 0 and the edge nodes.

Channel power gain ``G_m = beta_m * |h_m|^2``: 3GPP-style path loss
``128.1 + 37.6 log10(r_km)`` dB times small-scale fading (Rayleigh, Rician
with factor K, or none).  Slow fading draws ``h`` once per request; fast
fading redraws it every token, i.i.d. or Gauss-Markov
``h(t+1) = rho h(t) + sqrt(1 - rho^2) w(t)`` on the scattered component.
All randomness comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import numpy as np

from .config import FADINGS, SystemConfig

MIN_DISTANCE_M = 1.0
"""Distances are clipped below at 1 m so that the path-loss formula stays finite."""


def path_loss_db(distance_m: np.ndarray | float) -> np.ndarray:
    """Path loss in dB: ``128.1 + 37.6 log10(r / 1000)`` with ``r`` in metres."""
    r = np.maximum(np.asarray(distance_m, dtype=np.float64), MIN_DISTANCE_M)
    return 128.1 + 37.6 * np.log10(r / 1000.0)


def path_gain(distance_m: np.ndarray | float) -> np.ndarray:
    """Large-scale power gain ``beta = 10^(-PL/10)`` (linear)."""
    return 10.0 ** (-path_loss_db(distance_m) / 10.0)


def draw_distances(rng: np.random.Generator, config: SystemConfig) -> np.ndarray:
    """Edge-node distances (M,): fixed ``distances_m`` or uniform in the range."""
    if config.distances_m is not None:
        return np.asarray(config.distances_m, dtype=np.float64)
    lo, hi = config.distance_range_m
    return rng.uniform(lo, hi, size=config.num_nodes)


def _scatter(rng: np.random.Generator, size: tuple[int, ...]) -> np.ndarray:
    """Unit-power circularly-symmetric complex Gaussian ``CN(0, 1)``."""
    return (rng.standard_normal(size) + 1j * rng.standard_normal(size)) / np.sqrt(2.0)


class FadingProcess:
    """Small-scale fading coefficients ``h`` for a batch of links.

    ``reset`` draws fresh coefficients; ``step`` advances one token with
    correlation ``rho`` (``rho = 0`` gives i.i.d. redraws).  ``power`` is
    ``|h|^2`` with mean 1 for every kind.
    """

    def __init__(self, kind: str, shape: tuple[int, ...], rician_k: float = 0.0, rho: float = 0.0):
        if kind not in FADINGS:
            raise ValueError(f"invalid fading kind {kind!r}: must be one of {FADINGS}")
        if not 0.0 <= rho < 1.0:
            raise ValueError(f"invalid rho={rho!r}: must be in [0, 1)")
        self.kind = kind
        self.shape = tuple(shape)
        self.rho = float(rho)
        k = float(rician_k) if kind == "rician" else 0.0
        self._los = np.sqrt(k / (k + 1.0))
        self._nlos = np.sqrt(1.0 / (k + 1.0))
        self._w = np.zeros(self.shape, dtype=np.complex128)

    def reset(self, rng: np.random.Generator) -> np.ndarray:
        if self.kind != "none":
            self._w = _scatter(rng, self.shape)
        return self.power

    def step(self, rng: np.random.Generator) -> np.ndarray:
        if self.kind != "none":
            w = _scatter(rng, self.shape)
            self._w = self.rho * self._w + np.sqrt(1.0 - self.rho**2) * w
        return self.power

    @property
    def power(self) -> np.ndarray:
        if self.kind == "none":
            return np.ones(self.shape)
        if self.kind == "rayleigh":
            return np.abs(self._w) ** 2
        return np.abs(self._los + self._nlos * self._w) ** 2


def draw_fading_power(
    rng: np.random.Generator, kind: str, size: int | tuple[int, ...], rician_k: float = 0.0
) -> np.ndarray:
    """One independent draw of ``|h|^2`` (mean 1) for ``size`` links."""
    shape = (size,) if isinstance(size, int) else tuple(size)
    proc = FadingProcess(kind, shape, rician_k=rician_k)
    return proc.reset(rng)
