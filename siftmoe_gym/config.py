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
ROUTER_SCORES = ("softmax", "sigmoid")


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"invalid config value {name}={' '.join(repr(value).split())}: must be {allowed}")  # one line


def _num(x: float) -> str:
    return f"{x:g}"


def _plain(value: Any) -> Any:
    """NumPy scalars as the Python numbers they hold and 1-D NumPy arrays as tuples, so that a config built with
    NumPy values passes the same checks as one written by hand (the values are unchanged)."""
    if type(value).__module__ == "numpy":
        tolist = getattr(value, "tolist", None)
        if tolist is not None and getattr(value, "ndim", 0) <= 1:
            out = tolist()
            return tuple(out) if isinstance(out, list) else out
    if isinstance(value, (list, tuple)):  # e.g. distances_m as a list of np.int64
        return type(value)(_plain(v) for v in value)
    return value


@dataclass(frozen=True)
class Range:
    """The accepted values of one numeric configuration field (one row of :data:`SYSTEM_RANGES`)."""

    kind: str  # "int" or "float"
    low: float
    high: float
    unit: str = ""
    low_open: bool = False
    high_open: bool = False

    def describe(self, high: float | None = None) -> str:
        hi = self.high if high is None else high
        what = "an integer" if self.kind == "int" else "a finite number"
        fmt = (lambda x: str(int(x))) if self.kind == "int" else _num
        interval = f"{'(' if self.low_open else '['}{fmt(self.low)}, {fmt(hi)}{')' if self.high_open else ']'}"
        return f"{what} in {interval}" + (f" {self.unit}" if self.unit else "")

    def check(self, name: str, value: Any, high: float | None = None) -> None:
        """Raise ``ValueError`` naming ``name`` unless ``value`` is of the kind and inside the range."""
        hi = self.high if high is None else high
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                _fail(name, value, self.describe(hi))
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
                _fail(name, value, self.describe(hi))
        low_bad = value <= self.low if self.low_open else value < self.low
        high_bad = value >= hi if self.high_open else value > hi
        if low_bad or high_bad:
            _fail(name, value, self.describe(hi))


SYSTEM_RANGES: dict[str, Range] = {
    "num_experts": Range("int", 2, 1024),
    "top_k": Range("int", 1, 12),  # and <= num_experts; the slot dynamic program holds 3^k (mask, group) pairs
    "num_layers": Range("int", 1, 256),
    "num_nodes": Range("int", 1, 32),  # past 16: node-set actions as per-node bits only (no Discrete(2**M))
    "hidden_size": Range("int", 1, 65536),
    "bits_per_element": Range("int", 1, 64),
    "bandwidth_hz": Range("float", 1e3, 1e10, "Hz"),
    "noise_psd_dbm_hz": Range("float", -220.0, -100.0, "dBm/Hz"),
    "p_max_dbm": Range("float", -100.0, 60.0, "dBm"),
    "distance_range_m": Range("float", 1.0, 1e5, "m"),  # each end
    "distances_m": Range("float", 1.0, 1e5, "m"),  # each distance
    "tau_s": Range("float", 1e-6, 10.0, "s"),
    "compute_energy_j": Range("float", 0.0, 1e3, "J"),
    "eps_rel": Range("float", 0.0, 100.0),
    "eps_abs": Range("float", 0.0, 1e6),
    "quantile": Range("float", 0.0, 1.0, low_open=True),
    "local_capacity": Range("int", 0, 1024),  # and <= num_experts
    "node_capacity": Range("int", 1, 1024),  # and <= num_experts
    "rician_k": Range("float", 0.0, 1e4),
    "rho": Range("float", 0.0, 1.0, high_open=True),
    "prefill_tokens": Range("int", 1, 4096),
    "tau_prefill_s": Range("float", 1e-6, 100.0, "s"),
    "eps_max_factor": Range("float", 1.0, 1e3),
    "drift_v": Range("float", 1e-6, 1e6),
    "model_seed": Range("int", 0, 2**63 - 1),
}
"""Accepted values of every numeric :class:`SystemConfig` field (units: Hz, dBm, dBm/Hz, m, s, J).

Chosen so that every quantity the simulator derives from them stays finite
(energies are capped at ``siftmoe_gym.energy.MAX_VALUE``, rewards and
observations stay finite over the whole box): dBm within [-100, 60], noise
PSD within [-220, -100] dBm/Hz (thermal noise at 290 K is -174), distances
within [1, 1e5] m, latency budgets from 1 us, energies within [0, 1e3] J.
``docs/model.md`` section 5 lists them beside the defaults."""

MODEL_RANGES: dict[str, Range] = {
    "model_dim": Range("int", 2, 4096),
    "expert_hidden": Range("int", 1, 4096),
    "num_clusters": Range("int", 1, 1024),
    "cluster_spread": Range("float", 0.0, 100.0),
    "router_temperature": Range("float", 1e-3, 1e3),
    "popularity_skew": Range("float", 0.0, 100.0),
    "topic_count": Range("int", 1, 4096),
    "calibration_tokens": Range("int", 8, 65536),
}
"""Accepted values of every :class:`SyntheticModelConfig` field (named ``model.<field>`` in messages)."""


@dataclass
class SyntheticModelConfig:
    """Shape of the synthetic MoE model used when no trace is given.

    Experts are two-layer ReLU MLPs without biases (positively homogeneous, so
    the dissimilarity ratio does not depend on the hidden-state scale), drawn
    in ``num_clusters`` clusters: each expert is its cluster's centre plus a
    relative perturbation of size ``cluster_spread``, so similar experts exist.
    ``router_score`` is how router logits become scores: ``"softmax"`` over
    the experts (Mixtral, Qwen, OLMoE) or ``"sigmoid"`` per expert (the
    DeepSeek-V3 style; scores in (0, 1) that need not sum to 1, gates
    renormalized over the top-k when ``renormalize_gates``).

    Accepted ranges (``MODEL_RANGES``) are beside the fields; messages name a
    field ``model.<field>``.
    """

    model_dim: int = 32  # [2, 4096]
    expert_hidden: int = 32  # [1, 4096]
    num_clusters: int = 3  # [1, 1024]
    cluster_spread: float = 0.2  # [0, 100], relative perturbation of an expert around its cluster centre
    router_temperature: float = 0.7  # [1e-3, 1e3]
    popularity_skew: float = 0.5  # [0, 100], std of the router's per-expert bias
    topic_count: int = 6  # [1, 4096]
    calibration_tokens: int = 512  # [8, 65536]
    router_score: str = "softmax"  # one of ROUTER_SCORES: softmax over the experts, or a sigmoid per expert

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field outside its range (:data:`MODEL_RANGES`), or
        ``model.router_score`` outside :data:`ROUTER_SCORES`."""
        for name, rng in MODEL_RANGES.items():
            rng.check(f"model.{name}", getattr(self, name))
        if not isinstance(self.router_score, str) or self.router_score not in ROUTER_SCORES:
            _fail("model.router_score", self.router_score, f"one of {ROUTER_SCORES}")


@dataclass
class SystemConfig:
    """Every constant of a WIDE system (defaults: ``docs/model.md`` section 5).

    Units: Hz, dBm, dBm/Hz, metres, seconds, joules.  ``eps_abs`` (absolute
    per-layer error budget) overrides the relative ``eps_rel`` when given.
    ``node_capacity`` is per edge node and layer; ``None`` means just enough
    to hold the experts node 0 does not, spread evenly.

    Every numeric field has an accepted range (:data:`SYSTEM_RANGES`, written
    beside each field below and in ``docs/model.md`` section 5); inside it every
    energy, reward and observation the simulator derives stays finite.
    Values outside it, of the wrong type, NaN or infinite raise ``ValueError``
    naming the field, the value and the range.
    """

    num_experts: int = 8  # N, [2, 1024]
    top_k: int = 2  # k, [1, min(N, 12)]
    num_layers: int = 4  # L, [1, 256]
    num_nodes: int = 4  # M edge nodes, [1, 32] (the "discrete" action mode: at most 16)
    hidden_size: int = 4096  # d, [1, 65536]
    bits_per_element: int = 16  # b, [1, 64]
    bandwidth_hz: float = 10e6  # B, [1e3, 1e10] Hz
    noise_psd_dbm_hz: float = -174.0  # N0, [-220, -100] dBm/Hz
    p_max_dbm: float = 23.0  # P_max, [-100, 60] dBm
    distance_range_m: tuple[float, float] = (50.0, 300.0)  # each end in [1, 1e5] m, min <= max
    distances_m: tuple[float, ...] | None = None  # None or M distances, each in [1, 1e5] m
    tau_s: float = 2e-3  # tau, [1e-6, 10] s
    compute_energy_j: float = 1e-6  # e_c, [0, 1e3] J
    eps_rel: float = 0.25  # [0, 100]
    eps_abs: float | None = None  # None or [0, 1e6]
    quantile: float = 0.99  # q, (0, 1]
    placement: str = "round_robin"  # one of PLACEMENTS
    local_capacity: int = 1  # cap_0, [0, N]
    node_capacity: int | None = None  # None or [1, N]
    fading: str = "rayleigh"  # one of FADINGS
    rician_k: float = 3.0  # K (linear), [0, 1e4]
    rho: float = 0.0  # [0, 1)
    renormalize_gates: bool = True
    prefill_tokens: int = 16  # T, [1, 4096]
    tau_prefill_s: float = 20e-3  # tau_p, [1e-6, 100] s
    eps_max_factor: float = 3.0  # eps_max / eps_bar, [1, 1e3]
    drift_v: float = 10.0  # V, [1e-6, 1e6]
    model_seed: int = 0  # [0, 2^63 - 1]
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
        """Raise ``ValueError`` on the first invalid field (named in the message); return ``self``.

        Numeric fields must lie in their :data:`SYSTEM_RANGES` row (``top_k``,
        ``local_capacity`` and ``node_capacity`` also at most ``num_experts``).
        """
        r = SYSTEM_RANGES
        r["num_experts"].check("num_experts", self.num_experts)
        r["top_k"].check("top_k", self.top_k, high=min(r["top_k"].high, self.num_experts))
        for name in ("num_layers", "num_nodes", "hidden_size", "bits_per_element", "bandwidth_hz", "noise_psd_dbm_hz",
                     "p_max_dbm"):
            r[name].check(name, getattr(self, name))
        rng = self.distance_range_m
        if not isinstance(rng, (tuple, list)) or len(rng) != 2:
            _fail("distance_range_m", rng, "a pair (min, max) of distances in metres")
        for v in rng:
            r["distance_range_m"].check("distance_range_m", v)
        if rng[0] > rng[1]:
            _fail("distance_range_m", rng, "a pair with min <= max")
        if self.distances_m is not None:
            if not isinstance(self.distances_m, (tuple, list)) or len(self.distances_m) != self.num_nodes:
                _fail("distances_m", self.distances_m, f"None or {self.num_nodes} distances in metres (one per edge node)")
            for v in self.distances_m:
                r["distances_m"].check("distances_m", v)
        for name in ("tau_s", "compute_energy_j", "eps_rel"):
            r[name].check(name, getattr(self, name))
        if self.eps_abs is not None:
            r["eps_abs"].check("eps_abs", self.eps_abs)
        r["quantile"].check("quantile", self.quantile)
        if not isinstance(self.placement, str) or self.placement not in PLACEMENTS:
            _fail("placement", self.placement, f"one of {PLACEMENTS}")
        r["local_capacity"].check("local_capacity", self.local_capacity, high=self.num_experts)
        if self.node_capacity is not None:
            r["node_capacity"].check("node_capacity", self.node_capacity, high=self.num_experts)
        if self.local_capacity + self.num_nodes * self.edge_capacity < self.num_experts:
            _fail(
                "node_capacity",
                self.node_capacity,
                f"large enough that local_capacity + num_nodes * node_capacity >= num_experts "
                f"({self.local_capacity} + {self.num_nodes} * {self.edge_capacity} < {self.num_experts})",
            )
        if not isinstance(self.fading, str) or self.fading not in FADINGS:
            _fail("fading", self.fading, f"one of {FADINGS}")
        r["rician_k"].check("rician_k", self.rician_k)
        r["rho"].check("rho", self.rho)
        if not isinstance(self.renormalize_gates, bool):
            _fail("renormalize_gates", self.renormalize_gates, "a bool")
        for name in ("prefill_tokens", "tau_prefill_s", "eps_max_factor", "drift_v", "model_seed"):
            r[name].check(name, getattr(self, name))
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
            value = _plain(value)
            if key == "model":
                if isinstance(value, SyntheticModelConfig):
                    value = dataclasses.asdict(value)
                if not isinstance(value, Mapping):
                    _fail("model", value, "a mapping of SyntheticModelConfig fields")
                mknown = {f.name for f in dataclasses.fields(SyntheticModelConfig)}
                bad = sorted(set(value) - mknown)
                if bad:
                    raise ValueError(f"unknown config key(s) {['model.' + str(b) for b in bad]}; allowed under model: "
                                     f"{sorted(mknown)}")
                model.update({k: _plain(v) for k, v in value.items()})
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
        """A config from a YAML file (a :class:`~pathlib.Path`, or a one-line string naming a file that exists)
        or from YAML text: a mapping of fields, optionally with ``preset`` (the base the other keys override).
        Read by :mod:`siftmoe_gym.yamlio` (``2e-3`` is a number, a key given twice is refused).
        ``ValueError`` naming the source for a missing file, invalid YAML or anything but a mapping."""
        from .yamlio import load, read

        one_line = isinstance(path_or_text, str) and "\n" not in path_or_text
        p = Path(path_or_text)
        if isinstance(path_or_text, Path) or (one_line and p.exists()):
            if not p.is_file():
                raise ValueError(f"config file {str(p)!r}: " + ("a folder, not a file" if p.exists() else "no such file"))
            where, data = str(p), read(p)
        else:
            where, data = "config YAML", load(str(path_or_text), "config YAML")
        if data is None:
            data = {}
        if not isinstance(data, dict):
            hint = " (no such file)" if one_line else ""
            raise ValueError(f"{where}: a config must be a mapping of fields, got {type(data).__name__} {data!r}{hint}")
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
    "deepseek-v3": {
        "num_experts": 256,
        "top_k": 8,
        "num_layers": 58,
        "hidden_size": 7168,
        "num_nodes": 16,
        "local_capacity": 16,
        "renormalize_gates": True,
        "model": {"num_clusters": 32, "calibration_tokens": 128, "router_score": "sigmoid"},
    },
    "qwen3-235b-a22b": {
        "num_experts": 128,
        "top_k": 8,
        "num_layers": 94,
        "hidden_size": 4096,
        "num_nodes": 16,
        "local_capacity": 8,
        "renormalize_gates": True,
        "model": {"num_clusters": 16, "calibration_tokens": 128},
    },
}
"""Named systems: the default small Mixtral-like one, a Qwen3-30B-A3B-like
(N=128, k=8, L=48), an OLMoE-like (N=64, k=8, L=16), a DeepSeek-V3-like
(N=256 routed experts, k=8, the 58 MoE layers, sigmoid router scores with the
gates renormalized over the top-8, d=7168, 16 edge nodes holding 15 experts
each and node 0 holding 16) and a Qwen3-235B-A22B-like (N=128, k=8, L=94,
d=4096, 16 edge nodes) one.  Model sizes from the models' published
configurations (``config.json``: ``n_routed_experts``, ``num_experts_per_tok``,
``num_hidden_layers`` minus ``first_k_dense_replace``, ``hidden_size``).
DeepSeek-V3's shared expert runs on node 0 for every token: it is never sent
over a link and adds no error, so it changes no decision (its compute energy
is the same constant in every decision, top-k's included) and the simulator
leaves it out.  The synthetic models of the large presets use 128
calibration tokens (their ``Delta`` is the 0.99-quantile, i.e. the second
largest of 128 ratios); their ``Delta`` / ``sigma`` are cached on disk
(:mod:`siftmoe_gym.cache`)."""


def preset(name: str) -> SystemConfig:
    """The validated preset ``name`` (see :data:`PRESETS`)."""
    if not isinstance(name, str) or name not in PRESETS:
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
