"""Policies acting on this project's Gymnasium environments.

A policy is bound to an environment and reads the decision state the
environment exposes on ``env.unwrapped`` (``setting``, ``instance``,
``block_instance``, ``token_in_block``, ``layer``, ``queue``, ``cap_budget``,
``topk_energy``, ``system``); it computes an assignment and returns
``env.unwrapped.encode_action(assignment)``, so the same policy works with
every action mode of the environment.  Policies also decide on bare
instances (``decide_instance``), without an environment.
"""

from __future__ import annotations

import numpy as np

from siftmoe_gym.instances import DecodeInstance
from siftmoe_gym.serving import solve_decode

from . import heuristics as H
from .common import gains_from_costs, latency_from_gains
from .fastfading import dpp_decision
from .fastfading_dp import DEFAULT_GRID, DEFAULT_SAMPLES, FastFadingDP
from .prefill import solve_prefill_exact, solve_prefill_fast


SETTINGS = ("decode", "prefill", "fastfading")


class Policy:
    """Base class: ``act(obs, info) -> action`` on a bound environment; ``reset()`` per episode."""

    name = "policy"
    description = ""
    settings: tuple[str, ...] = SETTINGS
    """The settings (``env.unwrapped.setting``) the policy applies to."""

    def __init__(self, env=None, system=None, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected options {sorted(kwargs)}")
        self.env = env
        self.system = system if system is not None else (getattr(env.unwrapped, "system", None) if env is not None else None)
        self.last_solution = None
        if env is not None and self.setting not in self.settings:
            raise ValueError(f"policy {self.name!r} applies to {list(self.settings)}, not to the {self.setting!r} setting")

    @property
    def state(self):
        if self.env is None:
            raise RuntimeError(f"policy {self.name!r} is not bound to an environment")
        return self.env.unwrapped

    @property
    def setting(self) -> str:
        return getattr(self.state, "setting", "decode")

    def reset(self, seed: int | None = None) -> None:
        """Per-episode state (nothing by default)."""
        self.last_solution = None

    def decide(self) -> np.ndarray:
        """Assignment for the environment's current decision."""
        return self.decide_instance(self.state.instance)

    def decide_instance(self, inst: DecodeInstance) -> np.ndarray:
        raise NotImplementedError

    def act(self, obs=None, info=None):
        return self.state.encode_action(self.decide())

    __call__ = act

    # ------------------------------------------------------------ helpers
    def _single_token_costs(self, inst: DecodeInstance):
        """Single-token costs, feasibility and the latency budget behind them (prefill: the block's)."""
        env = self.env.unwrapped if self.env is not None else None
        if env is not None and self.setting == "prefill" and getattr(env, "block_instance", None) is not None:
            b = env.block_instance
            return b.cost_table[:, 1], b.feasible_table[:, 1], self.system.config.tau_prefill_s
        return inst.node_cost, inst.node_feasible, self.system.config.tau_s

    def _gains(self, inst: DecodeInstance) -> np.ndarray:
        if self.system is None:
            raise RuntimeError(f"policy {self.name!r} needs a system (bind an env or pass system=)")
        cost, feas, tau = self._single_token_costs(inst)
        return gains_from_costs(cost, feas, self.system.link, tau)


class TopK(Policy):
    name = "topk"
    description = "standard top-k routing: every slot served by itself (latency violations on infeasible links)"

    def decide_instance(self, inst):
        return H.topk_assignment(inst)


class Top1(Policy):
    name = "top1"
    description = "top-1 routing (Switch Transformer style): keep only the largest-gate slot, skip the rest"

    def decide_instance(self, inst):
        return H.top1_assignment(inst)


class SkipInfeasible(Policy):
    name = "skip-infeasible"
    description = "top-k, skipping experts on links that cannot meet the latency budget"

    def decide_instance(self, inst):
        return H.skip_infeasible_assignment(inst)


class NearestLocal(Policy):
    name = "nearest-local"
    description = "replace each unreachable expert by its most similar reachable expert (or skip), ignoring energy"

    def __init__(self, env=None, system=None, local_only: bool = False, **kw):
        super().__init__(env, system, **kw)
        self.local_only = bool(local_only)

    def decide_instance(self, inst):
        return H.nearest_local_assignment(inst, self.local_only)


class ChannelThreshold(Policy):
    name = "channel-threshold"
    description = "skip experts whose link gain is under a threshold (default: 3 dB above the one-token feasibility gain)"

    def __init__(self, env=None, system=None, threshold_db: float | None = None, margin_db: float = 3.0, **kw):
        super().__init__(env, system, **kw)
        self.threshold_db = threshold_db
        self.margin_db = float(margin_db)

    def threshold(self, tau_s: float) -> float:
        if self.threshold_db is not None:
            return 10.0 ** (self.threshold_db / 10.0)
        link = self.system.link
        x = link.bits_per_token / (link.bandwidth_hz * 0.5 * tau_s)
        g_feas = link.noise_w * np.expm1(np.log(2.0) * x) / link.p_max_w
        return float(g_feas * 10.0 ** (self.margin_db / 10.0))

    def decide_instance(self, inst):
        _, _, tau = self._single_token_costs(inst)
        return H.channel_threshold_assignment(inst, self._gains(inst), self.threshold(tau))


class WdmoeWlr(Policy):
    name = "wdmoe-wlr"
    description = "WDMoE (Xue et al. 2024) weight-to-latency ratio: keep an expert when gate / (latency/tau) >= threshold"

    def __init__(self, env=None, system=None, threshold: float = 1.0, **kw):
        super().__init__(env, system, **kw)
        self.threshold = float(threshold)

    def decide_instance(self, inst):
        _, _, tau = self._single_token_costs(inst)
        lat = latency_from_gains(self._gains(inst), self.system.link)
        return H.wdmoe_wlr_assignment(inst, lat, tau, self.threshold)


class RandomWithinBudget(Policy):
    name = "random-within-budget"
    description = "random reachable node subset, slots served by their most similar expert there, redrawn until within budget"

    def __init__(self, env=None, system=None, seed: int | None = None, tries: int = 32, **kw):
        super().__init__(env, system, **kw)
        self.seed = seed
        self.tries = int(tries)
        self.rng = np.random.default_rng(seed)

    def reset(self, seed=None):
        super().reset(seed)
        if seed is not None:
            self.rng = np.random.default_rng(seed)

    def decide_instance(self, inst):
        return H.random_within_budget_assignment(inst, self.rng, self.tries)


class SiftMoE(Policy):
    """The optimal policy for the environment's setting.

    - decode: the exact P1 optimum (:func:`siftmoe_gym.serving.solve_decode`); on a token where no
      latency-feasible decision meets the budget, the latency-feasible decision the environment's reward
      prefers (least ``E / (E_topk + f) + penalty * err / eps``: P1's least-error decision unless a cheaper
      one costs less than its extra error), so every step's reward is the highest any decision gets
      (``docs/model.md`` section 8; a bare instance without an environment keeps P1's least-error rule);
    - prefill: the exact P2 optimum of the current layer's block
      (``prefill="exact"``, integer program) or the fast best-response policy
      (``prefill="fast"``), solved once per block and layer and replayed
      token by token; ``last_solution`` holds the block solution (with its
      gap for the fast one);
    - fastfading: the dynamic program over the error spent per layer
      (:class:`baselines.fastfading_dp.FastFadingDP`, solved once per
      episode's link distances with ``samples`` sampled instances and a
      ``grid``-point grid), optimal for the episode return when ``rho = 0``.
    """

    name = "siftmoe"
    description = ("optimal: exact P1 (decode), exact P2 integer program replayed per token (prefill), "
                   "dynamic program over the error spent per layer (fast fading)")

    def __init__(self, env=None, system=None, prefill: str = "exact", exact_gap: bool = False,
                 time_limit: float | None = None, samples: int = DEFAULT_SAMPLES, grid: int = DEFAULT_GRID,
                 dp_seed: int = 0, **kw):
        super().__init__(env, system, **kw)
        if prefill not in ("exact", "fast"):
            raise ValueError(f"prefill must be 'exact' or 'fast', got {prefill!r}")
        if int(samples) < 1 or int(grid) < 2:
            raise ValueError(f"samples must be >= 1 and grid >= 2, got samples={samples!r}, grid={grid!r}")
        self.prefill = prefill
        self.exact_gap = exact_gap
        self.time_limit = time_limit
        self.samples, self.grid, self.dp_seed = int(samples), int(grid), int(dp_seed)
        self._block = None
        self._block_key = None
        self._dp: FastFadingDP | None = None
        self._dp_key: bytes | None = None

    def reset(self, seed=None):
        super().reset(seed)
        self._block = None
        self._block_key = None
        self._last_t = -1

    def decide_instance(self, inst):
        sol = solve_decode(inst)
        self.last_solution = sol
        return sol.assignment

    def solve_block(self, block):
        if self.prefill == "exact":
            return solve_prefill_exact(block, time_limit=self.time_limit)
        return solve_prefill_fast(block, exact_gap=self.exact_gap)

    def dynamic_program(self) -> FastFadingDP:
        """The fast-fading DP of the current episode's link distances (solved once per distances)."""
        env = self.state
        dist = np.asarray(env.distances, dtype=np.float64)
        key = dist.tobytes()
        if self._dp is None or self._dp_key != key:
            self._dp = FastFadingDP(self.env, dist, self.samples, self.grid, self.dp_seed)
            self._dp_key = key
        return self._dp

    def decide(self):
        env = self.state
        setting = self.setting
        if setting == "prefill":
            block = env.block_instance
            t = int(env.token_in_block)
            key = (id(block), int(getattr(env, "layer", block.layer)))
            # a new block, a new layer, or a new pass over the same block object: plan again
            if self._block is not block or self._block_key != key or t <= self._last_t:
                self._plan = self.solve_block(block)
                self.last_solution = self._plan
                self._block, self._block_key = block, key
            self._last_t = t
            return self._plan.assignment[t].copy()
        if setting == "decode":
            return self._decide_decode(env)
        if setting == "fastfading":
            dp = self.dynamic_program()
            inst = env.instance
            layer = int(env.layer)
            cands = dp.sets.candidates(layer, inst.gates[None], inst.topk[None], inst.node_cost[None],
                                       inst.node_feasible[None], inst.node_violation_s[None])
            c = dp.choose(layer, int(env.token), float(np.asarray(env.error_spent)[layer]), cands)
            return cands.assignment(0, c)
        return self.decide_instance(env.instance)

    _last_t = -1

    def _decide_decode(self, env) -> np.ndarray:
        inst = env.instance
        sol = solve_decode(inst)
        cfg = getattr(env, "env_config", None)
        if not sol.within_budget and cfg is not None:
            # every latency-feasible decision is over the budget, where the reward is
            # const - (E + f) / (E_topk + f) - penalty * err / eps: take its best
            floor = float(getattr(env, "floor", 0.0))
            penalty = float(cfg["penalty"])
            e_ref = float(env.topk_energy) + floor
            sol = solve_decode(inst, cap=np.inf, energy_weight=1.0 / max(e_ref, 1e-300),
                               error_weight=penalty / max(float(inst.budget), 1e-12))
        self.last_solution = sol
        return sol.assignment


class DriftPlusPenalty(Policy):
    """The paper's online policy for fast fading: drift-plus-penalty with trade-off ``V``.

    Per token, minimize ``V E / E_topk + Q_l err / eps_l`` subject to ``err <= eps_max``
    (:func:`baselines.fastfading.dpp_decision`).  It meets the average budget only up to ``Q_T / T``,
    which is large for short episodes, so it is neither feasible nor optimal for a finite episode;
    the optimum is ``siftmoe``'s dynamic program.
    """

    name = "dpp"
    description = "drift-plus-penalty (the paper's fast-fading policy) with trade-off V (default config.drift_v)"
    settings = ("fastfading",)

    def __init__(self, env=None, system=None, v: float | None = None, **kw):
        super().__init__(env, system, **kw)
        if v is not None and (not np.isfinite(float(v)) or float(v) < 0):
            raise ValueError(f"V must be a finite number >= 0, got {v!r}")
        self.v = v

    @property
    def drift_v(self) -> float:
        if self.v is not None:
            return float(self.v)
        return float(self.system.config.drift_v)

    def decide(self):
        env = self.state
        layer = int(env.layer)
        eps = float(self.system.budgets[layer])
        sol = dpp_decision(env.instance, float(np.asarray(env.queue)[layer]), eps, float(env.cap_budget), self.drift_v,
                           getattr(env, "topk_energy", None))
        self.last_solution = sol
        return sol.assignment


class SiftMoEFast(SiftMoE):
    """The fast P2 policy (best response, exact fallback); prefill only: elsewhere it would be ``siftmoe``."""

    name = "siftmoe-fast"
    description = "the fast best-response P2 policy (reports its gap; the exact program when its block breaks a budget)"
    settings = ("prefill",)

    def __init__(self, env=None, system=None, **kw):
        kw.setdefault("prefill", "fast")
        super().__init__(env, system, **kw)
