"""siftmoe_gym: energy-aware expert selection for wireless distributed MoE inference.

The simulator core (configuration, channels, energy, placement, similarity,
bounds, workloads and traces) lives in this package; see ``docs/model.md``.
"""

from .bounds import SKIP, error_bound, measured_deviation
from .config import PRESETS, SyntheticModelConfig, SystemConfig, make_config, preset
from .instances import DecisionResult, DecodeInstance, PrefillInstance, evaluate_decode_batch
from .system import WideSystem
from .tracefile import Trace, TraceError, load_trace, save_trace
from .workload import MoEProfile, TokenBatch

__version__ = "0.1.0"

__all__ = [
    "SKIP", "PRESETS", "DecisionResult", "DecodeInstance", "MoEProfile", "PrefillInstance",
    "SyntheticModelConfig", "SystemConfig", "TokenBatch", "Trace", "TraceError", "WideSystem",
    "error_bound", "evaluate_decode_batch", "load_trace", "make_config", "measured_deviation",
    "preset", "save_trace",
]

from .envs.registration import register_envs as _register_envs  # noqa: E402

_register_envs()
