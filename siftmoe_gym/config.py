"""Typed configuration of a WIDE (wireless distributed MoE) system.

A :class:`SystemConfig` fixes everything an environment instance keeps
constant: the MoE model's shape, the radio links, the latency and accuracy
budgets, the expert placement and the fading model.  The synthetic model the
simulator draws when no trace is given is described by the nested
:class:`SyntheticModelConfig`.

Configurations load from and save to plain dicts and YAML.  Unknown keys and
invalid values raise :class:`ValueError` naming the field, the value and what
is allowed.  See ``docs/model.md`` for the meaning of every symbol.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

PLACEMENTS = ("round_robin", "contiguous", "random", "popular_local")
FADINGS = ("rayleigh", "rician", "none")


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"invalid config value {name}={value!r}: must be {allowed}")


def _check_finite(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(name, value, "a number")
    if not math.isfinite(float(value)):
        _fail(name, value, "a finite number")


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(name, value, "an integer")
    if value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        _fail(name, value, f"an integer {rng}")


def _check_positive(name: str, value: Any, allow_zero: bool = False) -> None:
    _check_finite(name, value)
    if value < 0 or (value == 0 and not allow_zero):
        _fail(name, value, "a finite number >= 0" if allow_zero else "a finite number > 0")


@dataclass
class SyntheticModelConfig:
    """Shape of the synthetic MoE model used when no trace is given.

    Experts are two-layer ReLU MLPs without biases (positively homogeneous, so
    the dissimilarity ratio does not depend on the hidden-state scale), drawn
    in ``num_clusters`` clusters: each expert is its cluster's centre plus a
    relative perturbation of size ``cluster_spread``, so similar experts exist.
    """

    model_dim: int = 32
    expert_hidden: int = 32
    num_clusters: int = 3
    cluster_spread: float = 0.2
    router_temperature: float = 0.7
    popularity_skew: float = 0.5
    topic_count: int = 6
    calibration_tokens: int = 512

    def validate(self) -> None:
        _check_int("model.model_dim", self.model_dim, 2)
        _check_int("model.expert_hidden", self.expert_hidden, 1)
        _check_int("model.num_clusters", self.num_clusters, 1)
        _check_positive("model.cluster_spread", self.cluster_spread, allow_zero=True)
        _check_positive("model.router_temperature", self.router_temperature)
        _check_positive("model.popularity_skew", self.popularity_skew, allow_zero=True)
        _check_int("model.topic_count", self.topic_count, 1)
        _check_int("model.calibration_tokens", self.calibration_tokens, 8)


@dataclass
class SystemConfig:
    """Every constant of a WIDE system (defaults: ``docs/model.md`` section 5).

    Units: Hz, dBm, dBm/Hz, metres, seconds, joules.  ``eps_abs`` (absolute
    per-layer error budget) overrides the relative ``eps_rel`` when given.
    ``node_capacity`` is per edge node and layer; ``None`` means just enough
    to hold the experts node 0 does not, spread evenly.
    """

    num_experts: int = 8
    top_k: int = 2
    num_layers: int = 4
    num_nodes: int = 4
    hidden_size: int = 4096
    bits_per_element: int = 16
    bandwidth_hz: float = 10e6
    noise_psd_dbm_hz: float = -174.0
    p_max_dbm: float = 23.0
    distance_range_m: tuple[float, float] = (50.0, 300.0)
    distances_m: tuple[float, ...] | None = None
    tau_s: float = 2e-3
    compute_energy_j: float = 1e-6
    eps_rel: float = 0.25
    eps_abs: float | None = None
    quantile: float = 0.99
    placement: str = "round_robin"
    local_capacity: int = 1
    node_capacity: int | None = None
    fading: str = "rayleigh"
    rician_k: float = 3.0
    rho: float = 0.0
    renormalize_gates: bool = True
    prefill_tokens: int = 16
    tau_prefill_s: float = 20e-3
    eps_max_factor: float = 3.0
    drift_v: float = 10.0
    model_seed: int = 0
    model: SyntheticModelConfig = field(default_factory=SyntheticModelConfig)

    # ------------------------------------------------------------------ derived
    @property
    def bits_per_token(self) -> int:
        """``D = d * b``: bits of one hidden state in one direction."""
        return self.hidden_size * self.bits_per_element

    @property
    def edge_capacity(self) -> int:
        """Experts per layer each edge node may hold."""
        if self.node_capacity is not None:
            return self.node_capacity
        remote = max(self.num_experts - self.local_capacity, 0)
        return max(1, math.ceil(remote / self.num_nodes))

    # --------------------------------------------------------------- validation
    def validate(self) -> "SystemConfig":
        """Raise ``ValueError`` on the first invalid field; return ``self``."""
        _check_int("num_experts", self.num_experts, 2)
        _check_int("top_k", self.top_k, 1, self.num_experts)
        _check_int("num_layers", self.num_layers, 1)
        _check_int("num_nodes", self.num_nodes, 1, 16)
        _check_int("hidden_size", self.hidden_size, 1)
        _check_int("bits_per_element", self.bits_per_element, 1, 64)
        _check_positive("bandwidth_hz", self.bandwidth_hz)
        _check_finite("noise_psd_dbm_hz", self.noise_psd_dbm_hz)
        _check_finite("p_max_dbm", self.p_max_dbm)
        rng = self.distance_range_m
        if not isinstance(rng, (tuple, list)) or len(rng) != 2:
            _fail("distance_range_m", rng, "a pair (min, max) of distances in metres")
        for v in rng:
            _check_positive("distance_range_m", v)
        if rng[0] > rng[1]:
            _fail("distance_range_m", rng, "a pair with min <= max")
        if self.distances_m is not None:
            if not isinstance(self.distances_m, (tuple, list)) or len(self.distances_m) != self.num_nodes:
                _fail("distances_m", self.distances_m, f"None or {self.num_nodes} distances in metres (one per edge node)")
            for v in self.distances_m:
                _check_positive("distances_m", v)
        _check_positive("tau_s", self.tau_s)
        _check_positive("compute_energy_j", self.compute_energy_j, allow_zero=True)
        _check_positive("eps_rel", self.eps_rel, allow_zero=True)
        if self.eps_abs is not None:
            _check_positive("eps_abs", self.eps_abs, allow_zero=True)
        _check_finite("quantile", self.quantile)
        if not 0.0 < self.quantile <= 1.0:
            _fail("quantile", self.quantile, "in (0, 1]")
        if self.placement not in PLACEMENTS:
            _fail("placement", self.placement, f"one of {PLACEMENTS}")
        _check_int("local_capacity", self.local_capacity, 0, self.num_experts)
        if self.node_capacity is not None:
            _check_int("node_capacity", self.node_capacity, 1, self.num_experts)
        if self.local_capacity + self.num_nodes * self.edge_capacity < self.num_experts:
            _fail(
                "node_capacity",
                self.node_capacity,
                f"large enough that local_capacity + num_nodes * node_capacity >= num_experts "
                f"({self.local_capacity} + {self.num_nodes} * {self.edge_capacity} < {self.num_experts})",
            )
        if self.fading not in FADINGS:
            _fail("fading", self.fading, f"one of {FADINGS}")
        _check_positive("rician_k", self.rician_k, allow_zero=True)
        _check_finite("rho", self.rho)
        if not 0.0 <= self.rho < 1.0:
            _fail("rho", self.rho, "in [0, 1)")
        if not isinstance(self.renormalize_gates, bool):
            _fail("renormalize_gates", self.renormalize_gates, "a bool")
        _check_int("prefill_tokens", self.prefill_tokens, 1, 4096)
        _check_positive("tau_prefill_s", self.tau_prefill_s)
        _check_finite("eps_max_factor", self.eps_max_factor)
        if self.eps_max_factor < 1.0:
            _fail("eps_max_factor", self.eps_max_factor, ">= 1 (the per-token cap is at least the average budget)")
        _check_positive("drift_v", self.drift_v)
        _check_int("model_seed", self.model_seed, 0)
        if not isinstance(self.model, SyntheticModelConfig):
            _fail("model", self.model, "a SyntheticModelConfig or dict")
        self.model.validate()
        return self

    # ---------------------------------------------------------------- (de)serde
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("distance_range_m", "distances_m"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: "SystemConfig | None" = None) -> "SystemConfig":
        """Build a config from ``data`` on top of ``base`` (defaults when None).

        Unknown keys raise ``ValueError``; the result is validated.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"config must be a mapping, got {type(data).__name__}")
        base = base if base is not None else cls()
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; allowed: {sorted(known)}")
        values = dataclasses.asdict(base)
        model = dict(values.pop("model"))
        for key, value in data.items():
            if key == "model":
                if isinstance(value, SyntheticModelConfig):
                    value = dataclasses.asdict(value)
                if not isinstance(value, Mapping):
                    _fail("model", value, "a mapping of SyntheticModelConfig fields")
                mknown = {f.name for f in dataclasses.fields(SyntheticModelConfig)}
                bad = sorted(set(value) - mknown)
                if bad:
                    raise ValueError(f"unknown config key(s) model.{bad}; allowed: {sorted(mknown)}")
                model.update(value)
            else:
                values[key] = value
        for key in ("distance_range_m", "distances_m"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        cfg = cls(**values, model=SyntheticModelConfig(**model))
        return cfg.validate()

    def replace(self, **changes: Any) -> "SystemConfig":
        """A validated copy with ``changes`` applied (same rules as ``from_dict``)."""
        return SystemConfig.from_dict(changes, base=self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path_or_text: str | Path) -> "SystemConfig":
        p = Path(path_or_text) if not isinstance(path_or_text, Path) else path_or_text
        text = p.read_text() if (isinstance(path_or_text, Path) or ("\n" not in str(path_or_text) and p.exists())) else str(path_or_text)
        data = yaml.safe_load(text) or {}
        if "preset" in data:
            base = preset(data.pop("preset"))
            return cls.from_dict(data, base=base)
        return cls.from_dict(data)


PRESETS: dict[str, dict[str, Any]] = {
    "mixtral-small": {},
    "qwen3-30b-a3b": {
        "num_experts": 128,
        "top_k": 8,
        "num_layers": 48,
        "hidden_size": 2048,
        "local_capacity": 8,
        "renormalize_gates": True,
        "model": {"num_clusters": 16, "calibration_tokens": 256},
    },
    "olmoe": {
        "num_experts": 64,
        "top_k": 8,
        "num_layers": 16,
        "hidden_size": 2048,
        "local_capacity": 4,
        "renormalize_gates": False,
        "model": {"num_clusters": 8, "calibration_tokens": 256},
    },
}
"""Named systems: the default small Mixtral-like one, a Qwen3-30B-A3B-like
(N=128, k=8, L=48) and an OLMoE-like (N=64, k=8, L=16) one."""


def preset(name: str) -> SystemConfig:
    """The validated preset ``name`` (see :data:`PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    return SystemConfig.from_dict(PRESETS[name])


def make_config(spec: "SystemConfig | Mapping[str, Any] | str | None" = None) -> SystemConfig:
    """Coerce a preset name, dict (optionally with a ``preset`` key) or config."""
    if spec is None:
        return SystemConfig().validate()
    if isinstance(spec, SystemConfig):
        return SystemConfig.from_dict({}, base=spec)
    if isinstance(spec, str):
        return preset(spec)
    if isinstance(spec, Mapping):
        data = dict(spec)
        base = preset(data.pop("preset")) if "preset" in data else None
        return SystemConfig.from_dict(data, base=base)
    raise ValueError(f"config must be a preset name, mapping or SystemConfig, got {type(spec).__name__}")
