"""Problem P3 (fast fading): the optimal online policy, by dynamic programming over the error spent.

``siftmoe_gym/FastFading-v0`` pays, per layer ``l`` and episode of ``T`` tokens (``docs/model.md``
section 8, "P3 dynamic program"),

    sum_t r_{t,l}(d_t)  -  penalty * max(0, R_{T,l} - T),      R_{t,l} = sum_{s<t} err_{s,l} / eps_l,

where ``r`` is the step reward of decision ``d`` (energy term, per-token cap penalty, latency
penalty) and the second term is the end-of-episode average penalty.  Layers share nothing but the
channel, so with i.i.d. fading (``rho = 0``) the episode's problem splits into one finite-horizon
MDP per layer whose state is ``(t, R_{t,l})``.  Given the episode's link distances (fixed for an
episode and part of the environment's state), the next step's instance is independent of the past,
and the Bellman recursion is

    V_T(R) = -penalty * max(0, R - T)
    V_t(R) = E_inst [ max_d ( r(d) + V_{t+1}(R + err(d) / eps_l) ) ].

:class:`FastFadingDP` solves it on a grid of ``R`` over ``[0, T]`` (linear interpolation; past ``T``
the value is exactly ``V_t(T) - penalty (R - T)``), with the expectation taken as the sample average
over ``samples`` instances drawn by the environment's own episode generator with the episode's
distances (fresh fading and tokens), and the maximum over each instance's decisions: every
assignment of the top-k slots when ``(N+1)^k`` is enumerable (:class:`siftmoe_gym.serving.ServingTable`),
else the P1 front at ``front_levels`` error caps (exact P1 solves over latency-feasible nodes).
:class:`siftmoe_gym.envs` computes the same rewards (a test checks it step by step).

It is optimal for the environment's expected return when ``rho = 0``, up to the grid and the sample
average (``docs/model.md`` gives the convergence table).  With ``rho > 0`` the next channel depends on
the current one, which this state leaves out: the policy is then the i.i.d. model's DP applied to the
exact current instance, a heuristic with no optimality claim.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from siftmoe_gym.bounds import within_budget
from siftmoe_gym.envs.episodes import draw_raw
from siftmoe_gym.envs.rewards import worst_accuracy_penalty, worst_error_rows
from siftmoe_gym.serving import ServingTable, err_table, solve_decode

DEFAULT_SAMPLES = 256
DEFAULT_GRID = 129
FRONT_LEVELS = 16


@dataclass
class RewardModel:
    """The environment's step-reward constants (``SiftMoEEnv`` and ``FastFadingEnv``)."""

    floor: float  # f, added to the energy and to top-k's energy
    penalty: float  # accuracy penalty
    penalty_latency: float
    tau: float  # latency budget (s)
    cap_factor: float  # eps_max / eps_l
    compute_cost: float  # e_c (J)

    @classmethod
    def of(cls, env) -> "RewardModel":
        u = env.unwrapped
        cfg = u.env_config
        return cls(float(u.floor), float(cfg["penalty"]), float(cfg["penalty_latency"]), float(u._tau),
                   float(u.system.config.eps_max_factor), float(u.compute_cost))

    def step_rewards(self, energy, topk_energy, err, lat, eps_div, err_worst):
        """Step reward ``r_e + r_a + r_l`` of decisions (arrays broadcast), as :func:`siftmoe_gym.envs.rewards.reward_terms`
        computes it with the per-token cap as threshold; ``err_worst``: the largest error bound of the step."""
        cap = self.cap_factor * eps_div
        r_e = -(energy + self.floor) / (topk_energy + self.floor)
        r_a = np.where(within_budget(err, cap), 0.0, -self.penalty * (1.0 + (err - cap) / eps_div))
        r_l = np.where(lat > 0.0, -self.penalty_latency * (1.0 + lat / self.tau)
                       - worst_accuracy_penalty(err_worst, cap, eps_div, self.penalty), 0.0)
        return r_e + r_a + r_l


class Candidates:
    """Every decision of a batch of instances at one layer: reward, error ratio and assignment.

    ``reward``, ``ratio`` (B, C); ``assign`` (C, k) when the assignments are enumerated (the same for
    every instance), else (B, C, k).
    """

    def __init__(self, reward: np.ndarray, ratio: np.ndarray, assign: np.ndarray):
        self.reward, self.ratio, self.assign = reward, ratio, assign

    def assignment(self, b: int, c: int) -> np.ndarray:
        return (self.assign[c] if self.assign.ndim == 2 else self.assign[b, c]).copy()


class DecisionSets:
    """The decisions available on an instance of one system (enumerated, or a ladder of P1 solves)."""

    def __init__(self, system, reward: RewardModel, front_levels: int = FRONT_LEVELS):
        self.system = system
        self.rm = reward
        self.table = ServingTable(system)
        self.worst_row = worst_error_rows(system.delta_ext)  # (L, N): the env's err_worst rows
        self.front_levels = int(front_levels)
        cfg = system.config
        self.n, self.k = cfg.num_experts, cfg.top_k

    def _topk_energy(self, layer: int, topk, cost):
        node_of = self.system.node_of[layer]
        used = np.zeros(cost.shape[:-1] + (cost.shape[-1],), dtype=bool)
        np.put_along_axis(used, node_of[topk], True, axis=-1)
        st = np.sort(topk, axis=-1)
        count = 1 + np.sum(st[..., 1:] != st[..., :-1], axis=-1)
        return np.where(used, cost, 0.0).sum(axis=-1) + self.rm.compute_cost * count

    def candidates(self, layer: int, gates, topk, cost, feas, viol) -> Candidates:
        """Decisions of ``B`` instances at ``layer``: ``gates``/``topk`` (B, k), ``cost``/``feas``/``viol`` (B, M+1)."""
        eps_div = max(float(self.system.budgets[layer]), 1e-12)
        e_topk = self._topk_energy(layer, topk, cost)
        dk = self.system.delta_ext[layer][topk]  # (B, k, N+1)
        worst = (gates * self.worst_row[layer][topk]).sum(axis=-1)  # (B,): the env's err_worst
        tab = self.table
        if tab.enabled:
            err = err_table(gates[..., None] * dk)  # (B, C)
            nodes = tab.nodes[layer]  # (C, M+1)
            energy = np.where(nodes[None], cost[:, None, :], 0.0).sum(axis=-1) + self.rm.compute_cost * tab.count
            lat = np.where(nodes[None], viol[:, None, :], 0.0).max(axis=-1)
            rew = self.rm.step_rewards(energy, e_topk[:, None], err, lat, eps_div, worst[:, None])
            return Candidates(rew, err / eps_div, tab.assign)
        return self._ladder(layer, gates, topk, cost, feas, viol, e_topk, eps_div, worst)

    def _ladder(self, layer, gates, topk, cost, feas, viol, e_topk, eps_div, worst) -> Candidates:
        from siftmoe_gym.instances import DecodeInstance

        sysm = self.system
        dext = sysm.delta_ext[layer]
        cap = self.rm.cap_factor * eps_div
        levels = cap * np.linspace(0.0, 1.0, self.front_levels)
        b = len(gates)
        rew = np.full((b, len(levels)), -np.inf)
        ratio = np.zeros((b, len(levels)))
        assign = np.zeros((b, len(levels), self.k), dtype=np.int64)
        for i in range(b):
            inst = DecodeInstance(gates=gates[i], topk=topk[i], delta=dext[:, : self.n], sigma=dext[:, self.n],
                                  node_of=sysm.node_of[layer], node_cost=cost[i], node_feasible=feas[i],
                                  compute_cost=self.rm.compute_cost, budget=eps_div, node_violation_s=viol[i],
                                  layer=layer, _dext=dext)
            for j, c in enumerate(levels):
                sol = solve_decode(inst, cap=float(c))
                r = inst.evaluate(sol.assignment)
                rew[i, j] = self.rm.step_rewards(r.energy_j, e_topk[i], r.error_bound, r.latency_violation_s, eps_div,
                                                 worst[i])
                ratio[i, j] = r.error_bound / eps_div
                assign[i, j] = sol.assignment
        return Candidates(rew, ratio, assign)


def pareto_front(reward: np.ndarray, ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the decisions no other beats in both reward (higher) and ratio (lower), padded to the
    longest front with ``-inf`` reward: ``(reward, ratio)`` (B, P)."""
    order = np.lexsort((-reward, ratio), axis=-1)
    rs = np.take_along_axis(reward, order, axis=-1)
    qs = np.take_along_axis(ratio, order, axis=-1)
    prev = np.maximum.accumulate(rs, axis=-1)
    keep = np.ones_like(rs, dtype=bool)
    keep[:, 1:] = rs[:, 1:] > prev[:, :-1]
    p = int(keep.sum(axis=1).max())
    pos = np.argsort(~keep, axis=1, kind="stable")[:, :p]
    fr = np.take_along_axis(np.where(keep, rs, -np.inf), pos, axis=1)
    fq = np.take_along_axis(np.where(keep, qs, 0.0), pos, axis=1)
    return fr, fq


class FastFadingDP:
    """The dynamic program of one FastFading system for one set of link distances.

    ``value[l]`` (T+1, G): ``V_t(R)`` of layer ``l`` on the grid ``grid`` (G,) over ``[0, T]``;
    :attr:`expected_return` ``= sum_l V_0(0)``, the optimal expected episode return (sample average).
    """

    def __init__(self, env, distances: np.ndarray, samples: int = DEFAULT_SAMPLES, grid: int = DEFAULT_GRID,
                 seed: int = 0, front_levels: int = FRONT_LEVELS):
        if samples < 1 or grid < 2:
            raise ValueError(f"need samples >= 1 and grid >= 2, got samples={samples}, grid={grid}")
        u = env.unwrapped
        self.system = u.system
        self.rm = RewardModel.of(env)
        self.sets = DecisionSets(self.system, self.rm, front_levels)
        self.tokens = int(u.env_config["episode_tokens"])
        self.grid = np.linspace(0.0, float(self.tokens), int(grid))
        self.distances = np.asarray(distances, dtype=np.float64)
        sample_rows = self._sample(int(samples), np.random.default_rng([int(seed), 0x5F3D]))
        self.value = [self._solve_layer(layer, *sample_rows[layer]) for layer in range(self.system.num_layers)]

    def _sample(self, s: int, rng: np.random.Generator):
        """``s`` instances per layer: fresh fading (one draw per instance) and fresh tokens, this episode's distances."""
        sysm = self.system
        cfg = sysm.config
        m = cfg.num_nodes
        raw = draw_raw(sysm, [rng], s, 0)  # the environment's token generator (its distances are ignored)
        tk = raw["tokens"]
        proc = sysm.fading_process((s, m))
        if cfg.fading != "none":
            z = rng.standard_normal((s, 2 * m))
            proc._w = (z[:, :m] + 1j * z[:, m:]) / np.sqrt(2.0)
        gains = sysm.gains(self.distances[None, :], proc.power)
        cost, feas, viol = sysm.node_costs(gains)  # (S, M+1)
        out = []
        for layer in range(sysm.num_layers):
            c = self.sets.candidates(layer, tk.gates[0, :, layer], tk.topk[0, :, layer], cost, feas, viol)
            out.append(pareto_front(c.reward, c.ratio))
        return out

    def _at(self, v: np.ndarray, r: np.ndarray) -> np.ndarray:
        """A value row ``v`` (G,) at error spent ``r``: interpolated on ``[0, T]``, exact linear continuation past ``T``."""
        return np.interp(np.minimum(r, self.tokens), self.grid, v) - self.rm.penalty * np.maximum(r - self.tokens, 0.0)

    def next_value(self, layer: int, t: int, r: np.ndarray) -> np.ndarray:
        """``V_t(R)`` of ``layer`` at error spent ``r`` (any shape)."""
        return self._at(self.value[layer][t], r)

    def _solve_layer(self, layer: int, rew: np.ndarray, ratio: np.ndarray) -> np.ndarray:
        """Backward recursion of one layer from its sampled fronts ``rew``, ``ratio`` (S, P; padding ``-inf``):
        :meth:`_at`'s interpolation, its positions computed once (the grid and the fronts do not change with t)."""
        grid = self.grid
        g = len(grid)
        valid = np.isfinite(rew)
        starts = np.concatenate([[0], np.cumsum(valid.sum(axis=1))[:-1]])  # each sample's first decision
        x = grid[:, None] + ratio[valid][None]  # (G, K): error spent after each decision of each sample
        pos = np.minimum(x, self.tokens) / (grid[1] - grid[0])
        i0 = np.minimum(pos.astype(np.int64), g - 2)
        w = pos - i0
        base = rew[valid][None] - self.rm.penalty * np.maximum(x - self.tokens, 0.0)
        value = np.zeros((self.tokens + 1, g))  # V_T = 0 on [0, T]
        n = rew.shape[0]
        for t in range(self.tokens - 1, -1, -1):
            v = value[t + 1]
            v0 = v[i0]
            q = base + v0 + w * (v[i0 + 1] - v0)
            value[t] = np.maximum.reduceat(q, starts, axis=1).sum(axis=1) / n
        return value

    @property
    def expected_return(self) -> float:
        return float(sum(v[0, 0] for v in self.value))

    def choose(self, layer: int, t: int, spent: float, cands: Candidates, row: int = 0) -> int:
        """Index of the best decision of instance ``row`` of ``cands`` at token ``t`` with error spent ``spent``."""
        q = cands.reward[row] + self.next_value(layer, t + 1, spent + cands.ratio[row])
        best = q.max()
        tie = q >= best - 1e-12 * max(1.0, abs(best))
        return int(np.flatnonzero(tie)[np.argmin(cands.ratio[row][tie])])
