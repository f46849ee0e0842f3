"""The reward of the siftmoe_gym environments.

One step's reward is the sum of three terms (``docs/model.md`` section 8,
"Rewards rank decisions as P1 does", with the floor of section 6):

    r = r_energy + r_accuracy + r_latency

    r_energy   = -(E + f) / (E_ref + f)
    r_accuracy = -penalty * (1 + (err - thr) / eps)            if err > thr (up to the budget test), else 0
    r_latency  = -penalty_latency * (1 + violation / tau) - a_worst      if violation > 0, else 0
    a_worst    = penalty * (1 + (err_worst - thr) / eps)     if err_worst > thr, else 0

- ``E``: the step's energy (J); ``E_ref``: the reference energy, top-k's
  on the same token and channels (Decode, FastFading) or top-k's block
  energy per token at the layer (Prefill); ``f = reward_floor_j`` (default
  ``k e_c + 1e-12`` J), added to both so that top-k scores exactly -1 on
  feasible links and nothing divides by zero (section 6).
- ``err``: the step's error bound; ``thr``: the error it may reach (the
  layer budget ``eps_l``; in FastFading the per-token cap
  ``eps_max = eps_max_factor * eps_l``); ``eps``: the layer budget as a
  divisor (``max(eps_l, 1e-12)``).  Over the threshold the penalty has a
  fixed part, so any violation costs more than any energy saving.  The test
  is :func:`siftmoe_gym.bounds.within_budget`.
- ``violation``: the step's latency violation (s), ``tau`` the setting's
  latency budget; ``err_worst = sum_i g_i max_j Delta_{i,j}`` (``j`` over the
  experts and skip) the largest error bound any decision of the step can
  reach, so ``a_worst`` is the largest accuracy penalty the step can incur.
  A latency violation (a hard constraint in P1) therefore costs more than
  any accuracy violation of the same token, at any budget: the reward ranks
  latency first, as P1 does.

FastFading adds the average term of P3 (section 6: the accuracy penalty
belongs to the average), ``-penalty * T * sum_l max(mean_t err_{t,l} / eps_l - 1, 0)``
over the episode (:func:`average_penalty`), spread over the steps as the
change of ``-penalty * max(0, R_l - n_l)``, the spending ahead of the pro-rata
budget (:func:`average_step_penalty`; section 6's "spread it through the
virtual queue").

:func:`reward_terms` computes one step's terms, :func:`reward_terms_batch`
the same for the native vector environment's copies.
"""

from __future__ import annotations

import numpy as np

from ..bounds import within_budget


def worst_error_rows(delta_ext: np.ndarray) -> np.ndarray:
    """Per expert (last axis of ``delta_ext``'s rows), its largest dissimilarity to any server or the skip cost:
    ``err_worst = sum_i g_i rows[topk_i]`` for a token (``delta_ext`` (..., N, N+1) -> (..., N))."""
    return np.ascontiguousarray(np.asarray(delta_ext).max(axis=-1))


def worst_accuracy_penalty(err_worst, thr, eps, penalty):
    """``a_worst`` of the module docstring (scalars or arrays): the accuracy penalty of the step's worst decision."""
    return np.where(within_budget(err_worst, thr), 0.0, penalty * (1.0 + (err_worst - thr) / eps))


def reward_terms(energy: float, ref_energy: float, err: float, thr: float, eps: float, lat: float, floor: float,
                 penalty: float, penalty_latency: float, tau: float, err_worst: float) -> tuple[float, float, float, bool]:
    """``(r_energy, r_accuracy, r_latency, over)`` of one step (module docstring); ``over``: whether
    ``err`` exceeds ``thr`` (the accuracy term applies).  ``err_worst`` is read only when ``lat > 0``."""
    r_e = -(energy + floor) / (ref_energy + floor)
    over = not within_budget(err, thr)
    r_a = -penalty * (1.0 + (err - thr) / eps) if over else 0.0
    if lat > 0.0:
        r_l = -penalty_latency * (1.0 + lat / tau) - float(worst_accuracy_penalty(err_worst, thr, eps, penalty))
    else:
        r_l = 0.0
    return r_e, r_a, r_l, over


def reward_terms_batch(energy: np.ndarray, ref_energy: np.ndarray, err: np.ndarray, thr: float, eps: float,
                       lat: np.ndarray, floor: float, penalty: float, penalty_latency: float,
                       tau: float, err_worst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`reward_terms` over copies (arrays (n,); ``thr`` and ``eps`` shared): ``(r_energy, r_accuracy,
    r_latency, over)``, elementwise the single step's numbers."""
    r_e = -(energy + floor) / (ref_energy + floor)
    ok = within_budget(err, thr)
    r_a = np.where(ok, 0.0, -penalty * (1.0 + np.maximum(err - thr, 0.0) / eps))
    r_l = np.where(lat > 0.0, -penalty_latency * (1.0 + lat / tau) - worst_accuracy_penalty(err_worst, thr, eps, penalty),
                   0.0)
    return r_e, r_a, r_l, ~ok


def average_excess(mean_ratio: np.ndarray, tokens: int):
    """FastFading's average excess ``T * sum_l max(mean_ratio_l - 1, 0)`` from the mean error ratios (..., L)
    (``err / eps_l`` averaged over the episode's ``T`` tokens), in token-budget units; a float for one
    episode, an array over copies."""
    excess = np.maximum(mean_ratio - 1.0, 0.0).sum(axis=-1)
    if np.ndim(excess) == 0:
        excess = float(excess)
    return tokens * excess


def average_penalty(mean_ratio: np.ndarray, tokens: int, penalty: float):
    """FastFading's end-of-episode term ``-penalty * T * sum_l max(mean_ratio_l - 1, 0)``
    (``-penalty *`` :func:`average_excess`)."""
    return -penalty * average_excess(mean_ratio, tokens)


def average_step_penalty(spent_before, spent_after, tokens_done, penalty):
    """FastFading's average term, spread over the steps: ``-penalty * (max(0, R' - (n + 1)) - max(0, R - n))``
    for a step of layer ``l`` that moves its error spent from ``R = spent_before`` to ``R' = spent_after``
    (budget units, ``R_l = sum_t err_{t,l} / eps_l``) after ``n = tokens_done`` earlier tokens of the layer.

    The potential ``-penalty * max(0, R_l - n_l)`` (the spending ahead of the pro-rata budget ``n_l``) is 0
    at the start and ``-penalty * T * max(0, mean_t err_{t,l}/eps_l - 1)`` after the layer's ``T``-th token,
    so the steps' terms telescope to :func:`average_penalty` exactly (up to rounding): every episode's
    return is that of the end-of-episode charge, and the charge comes when the spending happens (a token over
    ``eps_l`` while ahead of the pro-rata budget pays at once, one under it while ahead earns it back).
    Scalars or arrays over copies."""
    return -penalty * (np.maximum(spent_after - (tokens_done + 1), 0.0) - np.maximum(spent_before - tokens_done, 0.0))


COST_KEYS = ("cost", "cost_accuracy", "cost_latency")
"""The constraint-cost keys of every step's ``info`` (FastFading adds ``cost_average``)."""


def avoidable_rows(dk: np.ndarray, gates: np.ndarray, feas: np.ndarray, node_ext: np.ndarray, thr) -> np.ndarray:
    """Per row, whether a decision within the latency budget keeps the error bound within ``thr``.

    ``dk`` (n, k, N+1): ``Delta_ext`` rows of the tokens' top-k slots (column ``N`` the skip cost);
    ``gates`` (n, k); ``feas`` (n, M+1) bool, the links that meet the latency budget; ``node_ext`` (N+1,) the
    node of each expert of the layer, then 0 for skip (always allowed).  The least error bound over
    assignments to experts on feasible nodes or skip is ``sum_i g_i min_j Delta_ext[i, j]`` (the bound is
    a sum over slots, each chosen on its own); the test is :func:`~siftmoe_gym.bounds.within_budget`.
    Returns (n,) bool.
    """
    allowed = np.take(feas, node_ext, axis=1)  # (n, N+1)
    least = (gates * np.where(allowed[:, None, :], dk, np.inf).min(axis=2)).sum(axis=1)
    return within_budget(least, thr)


def least_feasible_terms(node_best: np.ndarray, skip: np.ndarray, feas: np.ndarray) -> np.ndarray:
    """(n, L, N): each expert's least ``Delta_ext`` over the servers on latency-feasible nodes, skip included
    when node 0 is feasible (as :func:`avoidable_rows` allows it), per row of ``feas`` (n, M+1): the per-slot
    minima of :func:`avoidable_rows` for every expert at once, for links fixed over an episode.  From the
    per-node minima ``node_best`` (L, N, M+1) (``FeatureTables.node_best``, inf on a node without experts) and
    the skip costs ``skip`` (L, N): a minimum over the nodes' minima is the minimum over their servers."""
    best = np.where(feas[:, None, None, :], node_best[None], np.inf).min(axis=3)
    return np.minimum(best, np.where(feas[:, 0, None, None], skip[None], np.inf))


def constraint_costs(accuracy_violation, latency_violation, average=None) -> dict:
    """A step's constraint costs as safe-RL environments report them (Safety-Gymnasium's convention: one
    ``cost_<constraint>`` per budget and their sum ``cost``), scalars or arrays over copies:

    - ``cost_accuracy``: 1.0 when the step's error bound breaks its per-step budget (Decode, Prefill:
      ``eps_l``; FastFading: the cap ``eps_max``) although a decision within the latency budget keeps it
      (:func:`avoidable_rows`), else 0.0.  Violations no decision avoids (every feasible server too far off)
      cost nothing: in Decode the optimum's cost rate is 0 and an agent's is its excess violation rate (the
      test is per step: in Prefill the block optimum pays it on tokens it leaves over budget when the whole
      block cannot meet every budget, 7.8% of the steps of 8 default episodes);
    - ``cost_latency``: 1.0 when the step violates the latency budget (``latency_violation > 0`` s), else 0.0;
    - ``cost_average`` (FastFading only, ``average`` not None): the episode's average excess
      (:func:`average_excess`) on its last step, 0.0 before.

    The budgets these costs are held to: Decode and Prefill's per-step constraints are hard (a cost of 0
    every step); a benchmark row counts as feasible with at most 1% more violating steps than the optimum's
    (``agents.evaluation``)."""
    if not isinstance(accuracy_violation, np.ndarray):  # one step (the hot path of the single environments)
        acc, lat = float(bool(accuracy_violation)), float(latency_violation > 0.0)
        out = {"cost": acc + lat, "cost_accuracy": acc, "cost_latency": lat}
        if average is not None:
            out["cost_average"] = float(average)
            out["cost"] = acc + lat + float(average)
        return out
    acc = np.asarray(accuracy_violation, dtype=np.float64)
    lat = (np.asarray(latency_violation) > 0.0).astype(np.float64)
    out = {"cost_accuracy": acc, "cost_latency": lat}
    total = acc + lat
    if average is not None:
        avg = np.asarray(average, dtype=np.float64)
        out["cost_average"] = avg
        total = total + avg
    out["cost"] = total
    return out
