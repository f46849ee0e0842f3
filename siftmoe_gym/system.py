"""The WIDE system: model profile, placement, links, and decision instances.

:class:`WideSystem` assembles everything fixed for an environment instance
from a :class:`~siftmoe_gym.config.SystemConfig` (and optionally a trace):
the workload and its similarity profile, per-layer budgets, the placement
``node_of`` (L, N), and the radio constants.  Per episode it draws distances
and fading from the caller's generator and turns channel gains and tokens
into :class:`~siftmoe_gym.instances.DecodeInstance` /
:class:`~siftmoe_gym.instances.PrefillInstance` objects.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from . import channels
from .bounds import extended_delta
from .config import PRESETS, SystemConfig, make_config
from .energy import LinkParams, load_cost_tables, node_cost_vectors
from .instances import DecodeInstance, PrefillInstance
from .placement import make_placement
from .tracefile import Trace, TraceError, load_trace
from .workload import SyntheticWorkload, TokenBatch, TraceWorkload


TRACE_KEYS = ("num_experts", "top_k", "num_layers", "hidden_size", "renormalize_gates", "quantile")
"""Configuration fields a trace fixes (its metadata): an explicit config value must equal the trace's."""


def explicit_keys(config: SystemConfig | Mapping[str, Any] | str | None) -> set[str]:
    """The :class:`SystemConfig` fields ``config`` sets explicitly: the keys of a mapping (with those of its
    ``preset``), a preset's own keys, or the fields of a :class:`SystemConfig` that differ from the defaults."""
    if config is None:
        return set()
    if isinstance(config, str):
        return set(PRESETS.get(config, {}))
    if isinstance(config, Mapping):
        keys = {k for k in config if k != "preset"}
        name = config.get("preset")
        if isinstance(name, str):
            keys |= set(PRESETS.get(name, {}))
        return keys
    if isinstance(config, SystemConfig):
        default = SystemConfig()
        return {f.name for f in dataclasses.fields(SystemConfig) if getattr(config, f.name) != getattr(default, f.name)}
    return set()


def config_for_trace(config: SystemConfig, trace: Trace, explicit: Iterable[str] = ()) -> SystemConfig:
    """``config`` with the model shape (N, k, L, d, gate normalization, quantile) taken from ``trace``.

    A field in ``explicit`` (given by the caller) whose value differs from the
    trace's raises ``ValueError`` naming both values; equal values are fine.
    ``node_capacity`` too small for the trace's experts is reset to ``None``
    (even spread) unless it was given explicitly (then ``ValueError``).
    """
    explicit = set(explicit)
    changes = {key: getattr(trace, key) for key in TRACE_KEYS}
    conflicts = [f"{key}={getattr(config, key)!r} (trace: {key}={changes[key]!r})" for key in TRACE_KEYS
                 if key in explicit and getattr(config, key) != changes[key]]
    if conflicts:
        where = f"the trace (recorded from model {trace.model!r})" if trace.model else "the trace"
        raise ValueError(
            f"config conflicts with {where}: {', '.join(conflicts)}; the trace fixes these keys: drop them from the "
            f"config or give the trace's values"
        )
    if config.node_capacity is not None and config.local_capacity + config.num_nodes * config.node_capacity < trace.num_experts:
        if "node_capacity" in explicit:
            raise ValueError(
                f"config node_capacity={config.node_capacity!r} cannot hold the trace's num_experts={trace.num_experts} "
                f"(local_capacity + num_nodes * node_capacity = {config.local_capacity} + {config.num_nodes} * "
                f"{config.node_capacity}); drop node_capacity or raise it"
            )
        changes["node_capacity"] = None
    return config.replace(**changes)


class WideSystem:
    """Everything constant for one environment instance.

    ``trace`` (a path or a :class:`~siftmoe_gym.tracefile.Trace`, checked by
    :meth:`~siftmoe_gym.tracefile.Trace.validate`) replaces the synthetic
    workload and fixes the model's shape (:data:`TRACE_KEYS`); a field set
    explicitly in ``config`` (``explicit`` names them; by default
    :func:`explicit_keys` of ``config``) must agree with it.
    """

    def __init__(self, config: SystemConfig | dict | str | None = None, trace: Trace | str | Path | None = None,
                 explicit: Iterable[str] | None = None):
        if explicit is None:
            explicit = explicit_keys(config)
        config = make_config(config)
        if trace is not None and not isinstance(trace, Trace):
            if not isinstance(trace, (str, os.PathLike)):
                raise TraceError(f"trace must be a path (str or os.PathLike) or a Trace, got {type(trace).__name__}")
            trace = load_trace(trace)
        elif trace is not None:
            trace.validate()
        if trace is not None:
            config = config_for_trace(config, trace, explicit)
            self.workload: SyntheticWorkload | TraceWorkload = TraceWorkload(config, trace)
        else:
            self.workload = SyntheticWorkload(config)
        self.config = config
        self.trace = trace
        self.profile = self.workload.profile
        self.budgets = self.profile.budgets(config)
        self.delta_ext = extended_delta(self.profile.delta, self.profile.sigma)  # (L, N, N+1)
        place_rng = np.random.default_rng([config.model_seed, 0x9A])
        self.node_of = make_placement(config, rng=place_rng, popularity=self.profile.popularity)
        self.link = LinkParams.from_config(config)

    # ------------------------------------------------------------- shortcuts
    @property
    def num_experts(self) -> int:
        return self.config.num_experts

    @property
    def num_nodes(self) -> int:
        return self.config.num_nodes

    @property
    def top_k(self) -> int:
        return self.config.top_k

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    # -------------------------------------------------------------- channels
    def draw_distances(self, rng: np.random.Generator) -> np.ndarray:
        return channels.draw_distances(rng, self.config)

    def fading_process(self, shape: tuple[int, ...] | None = None, rho: float | None = None) -> channels.FadingProcess:
        cfg = self.config
        return channels.FadingProcess(
            cfg.fading, shape or (cfg.num_nodes,), rician_k=cfg.rician_k, rho=cfg.rho if rho is None else rho
        )

    def gains(self, distances: np.ndarray, fading_power: np.ndarray) -> np.ndarray:
        """Channel power gains ``beta(r) * |h|^2`` (..., M)."""
        return channels.path_gain(distances) * fading_power

    def sample_tokens(self, rng: np.random.Generator, num_tokens: int) -> TokenBatch:
        return self.workload.sample(rng, num_tokens)

    # ----------------------------------------------------------------- costs
    def node_costs(self, gains: np.ndarray, n_tokens: int = 1, tau_s: float | None = None):
        """Per-node ``(energy, feasible, violation)`` arrays (..., M+1), node 0 first."""
        return node_cost_vectors(gains, self.config.tau_s if tau_s is None else tau_s, self.link, n_tokens)

    def load_tables(self, gains: np.ndarray, max_tokens: int, tau_s: float | None = None):
        """Per-node load cost tables (..., M+1, max_tokens+1) for prefill."""
        return load_cost_tables(gains, max_tokens, self.config.tau_prefill_s if tau_s is None else tau_s, self.link)

    # ------------------------------------------------------------- instances
    def decode_instance(self, tokens: TokenBatch, t: int, layer: int, gains: np.ndarray) -> DecodeInstance:
        energy, feasible, violation = self.node_costs(gains)
        return self.decode_instance_from_costs(tokens, t, layer, energy, feasible, violation)

    def decode_instance_from_costs(self, tokens: TokenBatch, t: int, layer: int, energy, feasible, violation) -> DecodeInstance:
        return DecodeInstance(
            gates=tokens.gates[t, layer],
            topk=tokens.topk[t, layer],
            delta=self.profile.delta[layer],
            sigma=self.profile.sigma[layer],
            node_of=self.node_of[layer],
            node_cost=energy,
            node_feasible=feasible,
            compute_cost=self.config.compute_energy_j,
            budget=float(self.budgets[layer]),
            node_violation_s=violation,
            layer=layer,
            _dext=self.delta_ext[layer],
        )

    def prefill_instance(self, tokens: TokenBatch, layer: int, gains: np.ndarray, tau_s: float | None = None) -> PrefillInstance:
        """All tokens of ``tokens`` passing ``layer`` as one prefill block."""
        t = tokens.num_tokens
        energy, feasible, violation = self.load_tables(gains, t, tau_s)
        return PrefillInstance(
            gates=tokens.gates[:, layer],
            topk=tokens.topk[:, layer],
            delta=self.profile.delta[layer],
            sigma=self.profile.sigma[layer],
            node_of=self.node_of[layer],
            cost_table=energy,
            feasible_table=feasible,
            compute_cost=self.config.compute_energy_j,
            budget=float(self.budgets[layer]),
            violation_table=violation,
            layer=layer,
        )
