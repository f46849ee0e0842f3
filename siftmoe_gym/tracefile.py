"""The trace file format: routing and expert similarity of a real (or synthetic) model.

A trace is a ``.safetensors`` or ``.npz`` file holding (version 2)

=================  ===========  ==========================================================
array              shape        meaning
=================  ===========  ==========================================================
``router_probs``   (T, L, N)    the router's scores as the model defines them, in [0, 1]:
                                softmax probabilities or sigmoid scores (``router_score``)
``topk``           (T, L, k)    the experts the model selected, slots by descending gate
``gates``          (T, L, k)    the gates the model applied to those slots (after
                                renormalization, bias correction and routed scaling)
``hidden_norms``   (T, L)       ``||x||`` of the layer input
``delta``          (L, N, N)    dissimilarity, symmetric, zero diagonal
``sigma``          (L, N)       skip cost (positive)
=================  ===========  ==========================================================

and JSON metadata (safetensors' metadata dict, or an ``__meta__`` byte array
in npz): ``format = "siftmoe-trace"``, ``version``, ``num_experts``,
``top_k``, ``num_layers``, ``hidden_size``, ``renormalize_gates`` (a JSON
bool: the gates are ``p[S] / sum p[S]``), ``quantile`` and free-form
``model``/``source`` strings; extraction (:mod:`siftmoe_gym.traces`) adds
``router_score`` (``"softmax"`` or ``"sigmoid"``), ``gate_mode``
(``"renormalized"``, ``"plain"`` or ``"explicit"``: which rule the stored
gates follow, decided at the tolerance of the model's dtype), ``gate_rule``
(the family's published rule in words) and ``routed_scaling_factor``.

Scores and gates are stored separately because real routers separate them:
DeepSeek-V3 selects by bias-corrected sigmoid scores and applies
renormalized gates times 2.5, DeepSeek-V2 applies softmax probabilities
times 16, PhiMoE applies sparsemixer gates.  The environments observe the
scores (``router_probs`` block, [0, 1]) and serve with the gates, so the
error bound ``sum_i g_i Delta_{i,a(i)}`` and the skip bound use what the
model really multiplies its experts' outputs by (a routed scaling factor
scales bounds and relative budgets alike).

Version 1 files (no ``gates`` array) still load: their gates are recomputed
from ``router_probs`` at the top-k positions, renormalized when
``renormalize_gates``; with ``gate_mode = "explicit"`` those positions hold
the model's gates instead of scores (up to :data:`MAX_GATE`).
:meth:`Trace.applied_gates`, :meth:`Trace.observed_scores` and
:meth:`Trace.popularity` give every version's gates, [0, 1] scores and
expert popularity.  :func:`save_trace` writes version 2 when the trace holds
gates, version 1 otherwise.

What the arrays promise, and :meth:`Trace.validate` checks (a
:class:`TraceError` naming the array or key and the first bad row ``(t, l)``):

- every value finite;
- ``router_probs`` in [0, 1] (version 1, ``gate_mode = "explicit"``: the
  top-k positions may hold gates up to :data:`MAX_GATE`);
- each row of ``router_probs`` sums to 1 (within :data:`SUM_TOL`) when the
  scores are a softmax (``router_score`` ``"softmax"``, the default), unless
  a version-1 trace's gates are explicit;
- ``topk`` rows: distinct indices in [0, N) in descending gate order (version
  2: ``gates`` non-increasing; version 1: ``router_probs`` at the slots), up
  to :data:`ORDER_TOL`;
- ``gates`` (version 2) in [0, :data:`MAX_GATE`];
- ``hidden_norms`` >= 0;
- ``delta`` >= 0, symmetric with a zero diagonal, ``sigma`` > 0, both at most
  :data:`MAX_RATIO` (ratios of norms; keeps every error bound finite).

:func:`load_trace` also checks every shape, dtype, the version and the
metadata types, and raises :class:`TraceError` (a ``ValueError``) naming what
is wrong for truncated or mismatched files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "siftmoe-trace"
VERSION = 2
"""The version :func:`save_trace` writes for a trace with ``gates``."""
VERSIONS = (1, 2)
"""Versions :func:`load_trace` reads."""
ARRAYS = ("router_probs", "topk", "hidden_norms", "delta", "sigma")
"""Arrays of every version; version 2 adds ``gates``."""
META_INT = ("num_experts", "top_k", "num_layers", "hidden_size")
GATE_MODES = ("renormalized", "plain", "explicit")
ROUTER_SCORES = ("softmax", "sigmoid")
SUM_TOL = 1e-3
"""Tolerance of the sum-to-one test of softmax ``router_probs`` rows (float32 storage)."""
ORDER_TOL = 1e-4
"""Tolerance of the descending-order test of the top-k slots (extraction sorts by the model's own gates, which
match the stored scores to 1e-5 relative)."""
MAX_GATE = 1e3
"""Largest gate accepted (version 2 ``gates``; version 1 top-k positions with ``gate_mode = "explicit"``)."""
MAX_RATIO = 1e6
"""Largest ``delta`` / ``sigma`` accepted (relative output deviations)."""


class TraceError(ValueError):
    """A trace file is missing, truncated, of another version, or inconsistent."""


@dataclass
class Trace:
    """A recorded trace (module docstring); ``gates`` is ``None`` for a version-1 trace."""

    router_probs: np.ndarray
    topk: np.ndarray
    hidden_norms: np.ndarray
    delta: np.ndarray
    sigma: np.ndarray
    num_experts: int
    top_k: int
    num_layers: int
    hidden_size: int
    renormalize_gates: bool
    quantile: float = 0.99
    model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    gates: np.ndarray | None = None

    @property
    def num_tokens(self) -> int:
        return self.router_probs.shape[0]

    @property
    def version(self) -> int:
        """2 when the trace stores the applied gates, else 1."""
        return 1 if self.gates is None else 2

    def metadata(self) -> dict[str, Any]:
        return {
            **self.extra,  # first: free-form extras never override the fixed keys
            "format": FORMAT,
            "version": self.version,
            "num_experts": self.num_experts,
            "top_k": self.top_k,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "renormalize_gates": self.renormalize_gates,
            "quantile": self.quantile,
            "model": self.model,
        }

    def applied_gates(self) -> np.ndarray:
        """The gates the model applied, (T, L, k) float64: ``gates`` (version 2); version 1: ``router_probs`` at
        the top-k positions, divided by their sum when ``renormalize_gates`` (explicit gates are stored there)."""
        if self.gates is not None:
            return np.asarray(self.gates, dtype=np.float64)
        gates = np.take_along_axis(self.router_probs.astype(np.float64), self.topk.astype(np.int64), axis=-1)
        if self.renormalize_gates:
            gates = gates / np.maximum(gates.sum(axis=-1, keepdims=True), 1e-300)
        return gates

    def observed_scores(self) -> np.ndarray:
        """Router scores in [0, 1], (T, L, N) float64: ``router_probs`` (version 2, checked to lie in [0, 1]);
        version 1 clips the explicit gates some of its top-k positions hold to 1."""
        probs = self.router_probs.astype(np.float64)
        return np.minimum(probs, 1.0) if np.any(probs > 1.0) else probs

    def popularity(self) -> np.ndarray:
        """Expert popularity (L, N): the share of (token, slot) selections each expert received,
        ``mean_t 1[i in S_t] / k`` (rows sum to 1).  Counted from ``topk``, not from the scores: DeepSeek-V3 and
        GLM-4.5 select by bias-corrected scores, ERNIE by scores plus a statistics bias, so their raw scores
        can rank experts against the selection."""
        t, nl, k = self.topk.shape
        counts = np.zeros((nl, self.num_experts))
        rows = np.broadcast_to(np.arange(nl)[None, :, None], self.topk.shape)
        np.add.at(counts, (rows.reshape(-1), self.topk.reshape(-1).astype(np.int64)), 1.0)
        return counts / (t * k)

    def validate(self) -> "Trace":
        """Check every promise of the module docstring; returns ``self`` or raises :class:`TraceError`."""
        n, k, l = self.num_experts, self.top_k, self.num_layers
        t = self.router_probs.shape[0] if self.router_probs.ndim == 3 else -1
        want = {
            "router_probs": (t, l, n),
            "topk": (t, l, k),
            "hidden_norms": (t, l),
            "delta": (l, n, n),
            "sigma": (l, n),
        }
        if self.gates is not None:
            want["gates"] = (t, l, k)
        for name, shape in want.items():
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.shape != shape:
                got = getattr(arr, "shape", type(arr).__name__)
                raise TraceError(f"trace array {name!r} has shape {got}, expected {shape} (T, L, N, k from metadata)")
            kind = "i" if name == "topk" else "f"
            if arr.dtype.kind not in (kind, "u" if kind == "i" else kind):
                raise TraceError(f"trace array {name!r} has dtype {arr.dtype}, expected {'integer' if kind == 'i' else 'floating'}")
            if kind == "f" and not np.all(np.isfinite(arr)):
                raise TraceError(f"trace array {name!r} holds NaN or inf{_first(~np.isfinite(arr), name)}")
        if t < 1:
            raise TraceError("trace holds no tokens")
        if k > n:
            raise TraceError(f"top_k={k} exceeds num_experts={n}")
        if not isinstance(self.renormalize_gates, (bool, np.bool_)):
            raise TraceError(f"trace metadata renormalize_gates={self.renormalize_gates!r} must be a bool (true or false)")
        gate_mode = self.extra.get("gate_mode")
        if gate_mode is not None and gate_mode not in GATE_MODES:
            raise TraceError(f"trace metadata gate_mode={gate_mode!r} must be one of {GATE_MODES}")
        score = self.extra.get("router_score", "softmax")
        if score not in ROUTER_SCORES:
            raise TraceError(f"trace metadata router_score={score!r} must be one of {ROUTER_SCORES}")
        topk = self.topk
        bad = (topk < 0) | (topk >= n)
        if bad.any():
            raise TraceError(f"topk indices must be in [0, {n - 1}]{_first(bad, 'topk')}")
        if k > 1:
            srt = np.sort(topk, axis=-1)
            dup = (srt[..., 1:] == srt[..., :-1]).any(axis=-1)
            if dup.any():
                raise TraceError(f"topk holds a duplicate expert index in a row{_first(dup, 'topk')}")
        probs = self.router_probs
        if np.any(probs < 0):
            raise TraceError(f"router_probs must be >= 0{_first(probs < 0, 'router_probs')}")
        explicit = self.gates is None and gate_mode == "explicit"  # version 1: top-k positions hold the gates
        over = probs > 1.0
        if explicit:
            np.put_along_axis(over, topk, False, axis=-1)
        if over.any():
            raise TraceError(f"router_probs must be <= 1 (probabilities or scores){_first(over, 'router_probs')}")
        if self.gates is None:
            sel = np.take_along_axis(probs, topk, axis=-1)
            if explicit and np.any(sel > MAX_GATE):
                raise TraceError(f"router_probs holds an explicit gate > {MAX_GATE:g}{_first(sel > MAX_GATE, 'router_probs')}")
            order_name = "router_probs"
        else:
            sel = self.gates
            if np.any(sel < 0) or np.any(sel > MAX_GATE):
                bad = (sel < 0) | (sel > MAX_GATE)
                raise TraceError(f"gates must be in [0, {MAX_GATE:g}]{_first(bad, 'gates')}")
            order_name = "gates"
        if score == "softmax" and not explicit:
            off = np.abs(probs.sum(axis=-1, dtype=np.float64) - 1.0) > SUM_TOL
            if off.any():
                raise TraceError(f"router_probs rows must sum to 1 (softmax scores; router_score={score!r}, within "
                                 f"{SUM_TOL:g}){_first(off, 'router_probs')}")
        if k > 1:
            desc = (sel[..., 1:] > sel[..., :-1] + ORDER_TOL * np.maximum(1.0, np.abs(sel[..., :-1]))).any(axis=-1)
            if desc.any():
                raise TraceError(f"topk slots must be in descending {order_name} order{_first(desc, 'topk')}")
        if np.any(self.hidden_norms < 0):
            raise TraceError(f"hidden_norms must be >= 0{_first(self.hidden_norms < 0, 'hidden_norms')}")
        if np.any(self.delta < 0):
            raise TraceError(f"delta must be >= 0{_first(self.delta < 0, 'delta')}")
        if np.any(self.sigma <= 0):
            raise TraceError(f"sigma must be > 0{_first(self.sigma <= 0, 'sigma')}")
        if np.any(self.delta > MAX_RATIO) or np.any(self.sigma > MAX_RATIO):
            raise TraceError(f"delta and sigma must be at most {MAX_RATIO:g} (relative output deviations)")
        asym = ~np.isclose(self.delta, np.swapaxes(self.delta, 1, 2), rtol=1e-5, atol=1e-7)
        if np.any(asym):
            raise TraceError(f"delta must be symmetric in its last two axes{_first(asym, 'delta')}")
        if np.any(np.abs(np.diagonal(self.delta, axis1=1, axis2=2)) > 1e-7):
            raise TraceError("delta must have a zero diagonal")
        return self


def _first(mask: np.ndarray, name: str) -> str:
    """`` (first at row (t, l) of name)`` for the first True of ``mask`` (leading axes), or ``""``."""
    idx = np.argwhere(mask)
    if not len(idx):
        return ""
    pos = tuple(int(i) for i in idx[0])
    if name in ("router_probs", "topk", "gates", "hidden_norms") and len(pos) >= 2:
        return f" (first at token {pos[0]}, layer {pos[1]}: row {pos[:2]})"
    return f" (first at index {pos})"


def save_trace(trace: Trace, path: str | Path) -> Path:
    """Write ``trace`` to ``path`` (``.safetensors`` or ``.npz`` by suffix): version 2 with ``gates``, else version 1.

    Scores, gates and norms are stored as float32, ``delta``/``sigma`` as float64, ``topk`` as int32.
    Raises :class:`TraceError` for an invalid trace or another suffix."""
    trace.validate()
    path = Path(path)
    arrays = {
        "router_probs": np.ascontiguousarray(trace.router_probs, dtype=np.float32),
        "topk": np.ascontiguousarray(trace.topk, dtype=np.int32),
        "hidden_norms": np.ascontiguousarray(trace.hidden_norms, dtype=np.float32),
        "delta": np.ascontiguousarray(trace.delta, dtype=np.float64),
        "sigma": np.ascontiguousarray(trace.sigma, dtype=np.float64),
    }
    if trace.gates is not None:
        arrays["gates"] = np.ascontiguousarray(trace.gates, dtype=np.float32)
    meta = json.dumps(trace.metadata())
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(arrays, str(path), metadata={"siftmoe": meta})
    elif path.suffix == ".npz":
        with open(path, "wb") as fh:
            np.savez(fh, __meta__=np.frombuffer(meta.encode(), dtype=np.uint8), **arrays)
    else:
        raise TraceError(f"trace path {str(path)!r} must end in .safetensors or .npz")
    return path


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    if not path.exists():
        raise TraceError(f"trace file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            arrays = {}
            with safe_open(str(path), framework="numpy") as fh:
                raw = (fh.metadata() or {}).get("siftmoe")
                for key in fh.keys():
                    arrays[key] = fh.get_tensor(key)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = {key: z[key] for key in z.files}
            raw = arrays.pop("__meta__", None)
            raw = None if raw is None else raw.tobytes().decode()
        else:
            raise TraceError(f"trace path {str(path)!r} must end in .safetensors or .npz")
    except TraceError:
        raise
    except Exception as exc:  # truncated / corrupt archives raise many kinds of errors
        raise TraceError(f"cannot read trace file {str(path)!r} (truncated or corrupt?): {exc}") from exc
    if raw is None:
        raise TraceError(f"trace file {str(path)!r} has no siftmoe metadata")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise TraceError(f"trace file {str(path)!r} has unreadable metadata: {exc}") from exc
    if not isinstance(meta, dict):
        raise TraceError(f"trace file {str(path)!r} has metadata of type {type(meta).__name__}, expected a JSON object")
    return arrays, meta


def load_trace(path: str | Path) -> Trace:
    """Read and check a trace file of any version in :data:`VERSIONS`; raises :class:`TraceError` on any
    problem (a version-1 file loads with ``gates = None``; its gates come from :meth:`Trace.applied_gates`)."""
    path = Path(path)
    arrays, meta = _read(path)
    if meta.get("format") != FORMAT:
        raise TraceError(f"{str(path)!r} is not a siftmoe trace (format={meta.get('format')!r})")
    version = meta.get("version")
    if isinstance(version, bool) or version not in VERSIONS:
        raise TraceError(f"{str(path)!r} has trace version {version!r}; this siftmoe_gym reads versions "
                         f"{', '.join(map(str, VERSIONS))} (writes version {VERSION})")
    for key in META_INT:
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TraceError(f"trace metadata {key}={meta.get(key)!r} must be a positive integer")
    missing = [a for a in ARRAYS + (("gates",) if version == 2 else ()) if a not in arrays]
    if missing:
        raise TraceError(f"trace file {str(path)!r} lacks array(s) {missing}")
    renorm = meta.get("renormalize_gates", True)
    if not isinstance(renorm, bool):
        raise TraceError(f"trace metadata renormalize_gates={renorm!r} must be a JSON bool (true or false)")
    quantile = meta.get("quantile", 0.99)
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0.0 < quantile <= 1.0:  # NaN fails
        raise TraceError(f"trace metadata quantile={quantile!r} must be a number in (0, 1]")
    known = set(META_INT) | {"format", "version", "renormalize_gates", "quantile", "model"}
    trace = Trace(
        **{a: arrays[a] for a in ARRAYS},
        **{k: meta[k] for k in META_INT},
        renormalize_gates=renorm,
        quantile=float(quantile),
        model=str(meta.get("model", "")),
        extra={k: v for k, v in meta.items() if k not in known},
        gates=arrays["gates"] if version == 2 else None,
    )
    return trace.validate()
