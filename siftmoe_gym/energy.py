"""Energy and latency of activating edge nodes over their wireless links.

Sending ``n`` hidden states of ``D`` bits over link ``m`` within time ``t``
needs power ``P = (N0 B / G) * (2^(n D / (B t)) - 1)``.  The round trip of
a layer has budget ``tau`` (half each way), so activating node ``m`` for
``n`` tokens costs ``c_m(n) = tau * P_m(n, tau/2)`` joules.  When that power
exceeds ``P_max`` the node is infeasible; a policy that still uses it sends
at ``P_max`` for ``t' = n D / (B log2(1 + P_max G / (N0 B)))`` each way,
pays ``2 P_max t'`` and overruns the budget by ``2 t' - tau``.

Everything is vectorized over broadcastable arrays of gains and loads and is
overflow-safe: ``2^x - 1`` uses ``expm1``; an overflow means infeasible; no
NaN or inf is ever returned (values are capped at :data:`MAX_VALUE`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import SystemConfig

MAX_VALUE = 1e30
"""Cap on every returned energy (J), power (W) and time (s)."""
MIN_GAIN = 1e-30
"""Channel gains are floored here (a 300 dB loss) so that no cost is infinite."""
MIN_NOISE_W = 1e-300
"""Noise power ``N0 B`` is floored here so that an underflow to 0 cannot make a link look free."""
LN2 = float(np.log(2.0))
TOPK_FLOOR_J = 1e-12
"""Floor on top-k's energy where energies are measured in its units (P3's ``V E / E_topk`` stays finite)."""


def dbm_to_watt(dbm: float | np.ndarray) -> np.ndarray:
    return 10.0 ** ((np.asarray(dbm, dtype=np.float64) - 30.0) / 10.0)


@dataclass(frozen=True)
class LinkParams:
    """Radio constants shared by all links (``docs/model.md`` section 2)."""

    bandwidth_hz: float
    noise_w: float  # N0 * B, watts
    p_max_w: float
    bits_per_token: float  # D

    @classmethod
    def from_config(cls, config: SystemConfig) -> "LinkParams":
        noise = float(dbm_to_watt(config.noise_psd_dbm_hz)) * config.bandwidth_hz
        return cls(
            bandwidth_hz=float(config.bandwidth_hz),
            noise_w=noise,
            p_max_w=float(dbm_to_watt(config.p_max_dbm)),
            bits_per_token=float(config.bits_per_token),
        )


def required_power(gain, n_tokens, duration_s, link: LinkParams) -> np.ndarray:
    """Transmit power (W) to send ``n`` hidden states within ``duration_s``.

    ``inf`` is never returned: powers that overflow are capped at ``MAX_VALUE``
    (and are far above any ``P_max``).  ``n = 0`` needs no power.
    """
    g = np.maximum(np.asarray(gain, dtype=np.float64), MIN_GAIN)
    n = np.asarray(n_tokens, dtype=np.float64)
    t = np.asarray(duration_s, dtype=np.float64)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
        x = n * link.bits_per_token * LN2 / (link.bandwidth_hz * t)
        p = (max(link.noise_w, MIN_NOISE_W) / g) * np.expm1(x)
    p = np.where(np.isfinite(p), np.minimum(p, MAX_VALUE), MAX_VALUE)
    return np.where(n <= 0, 0.0, p)


@dataclass(frozen=True)
class NodeCosts:
    """Cost of activating each link for some load (arrays broadcast alike)."""

    energy_j: np.ndarray  # energy actually spent (fallback at P_max if infeasible)
    feasible: np.ndarray  # bool: meets the latency budget within P_max
    latency_violation_s: np.ndarray  # max(0, round-trip time - tau); 0 when feasible
    power_w: np.ndarray  # transmit power used (each way)


def link_costs(gain, n_tokens, tau_s: float, link: LinkParams) -> NodeCosts:
    """``c_m(n)`` with feasibility and the infeasible fallback, vectorized.

    ``gain`` and ``n_tokens`` broadcast; ``n = 0`` costs nothing and is feasible.
    """
    g = np.maximum(np.asarray(gain, dtype=np.float64), MIN_GAIN)
    n = np.asarray(n_tokens, dtype=np.float64)
    half = 0.5 * tau_s
    p_req = required_power(g, n, half, link)
    feasible = p_req <= link.p_max_w
    with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
        # log2(1 + SNR) in the log domain: exact for tiny SNR (log1p) and finite
        # for huge SNR (no overflow of P_max * G / (N0 B)).
        log_snr = np.log(link.p_max_w) - np.log(max(link.noise_w, MIN_NOISE_W)) + np.log(g)
        rate = link.bandwidth_hz * np.logaddexp(0.0, log_snr) / LN2
        t_one_way = np.where(n > 0, n * (link.bits_per_token / rate), 0.0)
    t_one_way = np.where(np.isfinite(t_one_way), np.minimum(t_one_way, MAX_VALUE), MAX_VALUE)
    energy_feasible = tau_s * p_req
    energy_fallback = np.minimum(2.0 * link.p_max_w * t_one_way, MAX_VALUE)
    energy = np.where(feasible, energy_feasible, energy_fallback)
    violation = np.where(feasible, 0.0, np.maximum(2.0 * t_one_way - tau_s, 0.0))
    power = np.where(feasible, p_req, link.p_max_w)
    zero = n <= 0
    return NodeCosts(
        energy_j=np.where(zero, 0.0, energy),
        feasible=feasible | zero,
        latency_violation_s=np.where(zero, 0.0, violation),
        power_w=np.where(zero, 0.0, power),
    )


def node_cost_vectors(gains, tau_s: float, link: LinkParams, n_tokens: int = 1):
    """Per-node (with node 0 first) energy, feasibility and violation for ``n`` tokens.

    ``gains`` has shape ``(..., M)``; outputs have shape ``(..., M + 1)`` with
    node 0 free and feasible.
    """
    c = link_costs(gains, n_tokens, tau_s, link)
    lead = np.asarray(gains).shape[:-1]
    z = np.zeros(lead + (1,))
    energy = np.concatenate([z, c.energy_j], axis=-1)
    feasible = np.concatenate([np.ones(lead + (1,), bool), c.feasible], axis=-1)
    violation = np.concatenate([z, c.latency_violation_s], axis=-1)
    return energy, feasible, violation


def load_cost_tables(gains, max_tokens: int, tau_s: float, link: LinkParams):
    """Tables ``(..., M + 1, max_tokens + 1)`` of ``c_m(n)`` for ``n = 0..max_tokens``.

    Returns (energy, feasible, violation); node 0 row is zero and feasible.
    """
    g = np.asarray(gains, dtype=np.float64)
    n = np.arange(max_tokens + 1, dtype=np.float64)
    c = link_costs(g[..., :, None], n, tau_s, link)
    lead = g.shape[:-1]
    z = np.zeros(lead + (1, max_tokens + 1))
    energy = np.concatenate([z, c.energy_j], axis=-2)
    feasible = np.concatenate([np.ones(lead + (1, max_tokens + 1), bool), c.feasible], axis=-2)
    violation = np.concatenate([z, c.latency_violation_s], axis=-2)
    return energy, feasible, violation
