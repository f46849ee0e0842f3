"""Policies and solvers for siftmoe_gym: the optimal SiftMoE policies, heuristics and references.

``get_policy(name, env, **kwargs)`` returns a policy bound to an environment;
``available_policies()`` lists the names.  Solver functions work on decision
instances directly:

- P1: :func:`siftmoe_gym.serving.solve_decode` / ``solve_decode_batch`` (exact),
  references :func:`brute_force_decode`, :func:`milp_decode`;
- P2: :func:`solve_prefill_exact` (integer program), :func:`solve_prefill_fast`
  (best response, with its gap), :func:`prefill_lower_bound`, references
  :func:`brute_force_prefill`, :func:`milp_prefill_onehot`;
- P3: :class:`FastFadingDP` (the optimal online policy's dynamic program), :func:`dpp_decision`,
  :func:`run_dpp` (drift-plus-penalty), :func:`lagrangian_bound` (the clairvoyant bound).
"""

from __future__ import annotations

from siftmoe_gym.serving import DecodeSolution, solve_decode, solve_decode_batch

from .fastfading import LagrangianBound, dpp_decision, lagrangian_bound, run_dpp
from .heuristics import (
    nearest_local_assignment, random_within_budget_assignment, skip_infeasible_assignment, top1_assignment,
    topk_assignment, wdmoe_wlr_assignment, channel_threshold_assignment,
)
from .fastfading_dp import FastFadingDP
from .policies import (
    ChannelThreshold, DriftPlusPenalty, NearestLocal, Policy, RandomWithinBudget, SiftMoE, SiftMoEFast, SkipInfeasible,
    Top1, TopK, WdmoeWlr,
)
from .prefill import PrefillSolution, prefill_lower_bound, solve_prefill_exact, solve_prefill_fast
from .references import brute_force_decode, brute_force_prefill, milp_decode, milp_prefill_onehot

_REGISTRY: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (TopK, SiftMoE, SiftMoEFast, Top1, SkipInfeasible, NearestLocal, ChannelThreshold, WdmoeWlr,
                RandomWithinBudget, DriftPlusPenalty)
}


def available_policies(setting: str | None = None) -> dict[str, str]:
    """``{name: one-line description}`` of every registered policy (that applies to ``setting``, if given:
    ``"decode"``, ``"prefill"`` or ``"fastfading"``)."""
    from .policies import SETTINGS

    if setting is not None and setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; one of {list(SETTINGS)}")
    return {name: cls.description for name, cls in _REGISTRY.items() if setting is None or setting in cls.settings}


def get_policy(name: str, env=None, **kwargs) -> Policy:
    """The policy ``name`` bound to ``env`` (options as keyword arguments)."""
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ValueError(f"unknown policy {name!r}; available: {sorted(_REGISTRY)}")
    return cls(env, **kwargs)


__all__ = [
    "ChannelThreshold", "DecodeSolution", "DriftPlusPenalty", "FastFadingDP", "LagrangianBound", "NearestLocal", "Policy", "PrefillSolution",
    "RandomWithinBudget", "SiftMoE", "SiftMoEFast", "SkipInfeasible", "Top1", "TopK", "WdmoeWlr",
    "available_policies", "brute_force_decode", "brute_force_prefill", "channel_threshold_assignment",
    "dpp_decision", "get_policy", "lagrangian_bound", "milp_decode", "milp_prefill_onehot",
    "nearest_local_assignment", "prefill_lower_bound", "random_within_budget_assignment", "run_dpp",
    "skip_infeasible_assignment", "solve_decode", "solve_decode_batch", "solve_prefill_exact",
    "solve_prefill_fast", "top1_assignment", "topk_assignment", "wdmoe_wlr_assignment",
]
