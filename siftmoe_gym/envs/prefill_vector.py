"""Native vector ``siftmoe_gym/Prefill-v0``: every copy's block stepped at once in numpy.

Copy ``i`` reset with ``seed`` draws its block from ``seeding.np_random(seed + i)``:
the raw numbers of :func:`~siftmoe_gym.envs.prefill.draw_prefill_episode`, in its
order (one short loop over the copies), then the routing, top-k, gains and load
tables, and every per-episode table the single
environment builds in ``_load_episode`` (router rows, dissimilarity rows of the
top-k slots, top-k's node sets, the enumeration's error rows, ``Ebar_l``, the
static observation rows, the block demand) is built for all copies at once
with the same row-wise operations, and each step serves, pays and loads every
copy with the single environment's arithmetic over arrays: the marginal node
costs from each copy's loads, the node-set choice of
:func:`~siftmoe_gym.serving.pick_row` (batched as
:func:`~siftmoe_gym.serving.pick_allowed_rows`), the reward, the constraint
costs and the episode metrics.  Copy ``i`` therefore reproduces the single
environment seeded with ``seed + i`` step for step, bit for bit, observations,
rewards and every ``info`` key included (``tests/test_scale_prefill_vector.py``
compares them with ``gymnasium.vector.SyncVectorEnv``).  Above the
enumeration table (large ``(N+1)^k``) node sets are served copy by copy with
:func:`~siftmoe_gym.slot_dp.serve_free`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..serving import pick_allowed_rows
from ..serving_table import err_table
from ..slot_dp import serve_free
from ..synthetic import topk_gates
from ..workload import SyntheticWorkload, TokenBatch
from .actions import node_sets
from .metrics import add_episode_metrics_batch
from .observations import COST_CLIP
from .prefill import PrefillEnv
from .rewards import avoidable_rows, constraint_costs, reward_terms_batch
from .vector import SiftMoEVectorEnv
from .vector_kernels import computed_and_used, serve_assignment_actions, slot_sum


def _draw_blocks(system, rngs, t: int) -> dict[str, Any]:
    """:func:`~siftmoe_gym.envs.prefill.draw_prefill_episode` for every generator: each draws its distances,
    fading and its tokens' raw numbers in that function's order; the tokens' routing (row by row,
    :meth:`~siftmoe_gym.synthetic.SyntheticMoE.routing`), top-k, gains and load tables are then computed for
    all copies at once.  Arrays with a leading copy axis."""
    b = len(rngs)
    wl = system.workload
    synthetic = isinstance(wl, SyntheticWorkload)
    dist = np.empty((b, system.num_nodes))
    fad = np.empty((b, system.num_nodes))
    if synthetic:
        model = wl.model
        nu, nz, ng = model.routing_draw_sizes(t)
        u, z = np.empty((b, nu)), np.empty((b, nz))
        gam = np.empty((b, ng)) if ng else None
    toks = []
    for i, rng in enumerate(rngs):
        dist[i] = system.draw_distances(rng)
        fad[i] = system.fading_process().reset(rng)
        if synthetic:  # SyntheticMoE.sample_routing's draws
            rng.random(out=u[i])
            rng.standard_normal(out=z[i])
            if gam is not None:
                model.draw_chi2(rng, ng, out=gam[i])
        else:
            toks.append(system.sample_tokens(rng, t))
    if synthetic:
        probs, norms = model.routing(model.topics_from_uniform(u), z, gam)
        topk, gates = topk_gates(probs, system.config.top_k, system.config.renormalize_gates)
        tokens = TokenBatch(probs, topk, gates, norms)
    else:
        tokens = TokenBatch(*(np.stack([getattr(x, f) for x in toks]) for f in ("probs", "topk", "gates", "norms")))
    gains = system.gains(dist, fad)
    cost_tab, feas_tab, viol_tab = system.load_tables(gains, t)  # (B, M+1, T+1)
    return {"gains": gains, "tokens": tokens, "cost_tab": cost_tab, "feas_tab": feas_tab, "viol_tab": viol_tab}


class PrefillVectorEnv(SiftMoEVectorEnv):
    """Native vector version of ``siftmoe_gym/Prefill-v0`` (see the module docstring)."""

    env_class = PrefillEnv

    # ---------------------------------------------------------------- reset
    def _reset_all(self):
        env, n = self.env, self.num_envs
        self._s = 0
        self._autoreset = False
        t = int(env.system.config.prefill_tokens)
        self._build(_draw_blocks(env.system, self._rngs, t), t)
        ones = self._mask()
        info = {"layer": np.zeros(n, dtype=np.int64), "_layer": ones,
                "token": np.zeros(n, dtype=np.int64), "_token": ones}  # the single environment's reset info
        return self._format(self._observation()), info

    def _build(self, ep: dict[str, Any], t: int) -> None:
        """``PrefillEnv._load_episode`` for every copy, row by row (``ep``: :func:`_draw_blocks`)."""
        env, n = self.env, self.num_envs
        nl, m1 = env.n_layers, env.n_nodes + 1
        s = t * nl
        self._T, self._n_steps = t, s
        tok = ep["tokens"]
        probs = tok.probs.transpose(0, 2, 1, 3).reshape(n, s, -1)
        topk = tok.topk.transpose(0, 2, 1, 3).reshape(n, s, -1)
        gates = tok.gates.transpose(0, 2, 1, 3).reshape(n, s, -1)
        norms = tok.norms.transpose(0, 2, 1).reshape(n, s)
        layers = np.repeat(np.arange(nl), t)
        self._layers = layers
        self._probs, self._topk, self._gates = probs, topk, gates
        dk = env.system.delta_ext[layers[None, :, None], topk]  # (n, S, k, N+1)
        self._dk = dk
        no = env.system.node_of[layers[None, :, None], topk]  # (n, S, k)
        used = np.zeros((n, s, m1), dtype=bool)
        np.put_along_axis(used, no, True, axis=-1)
        self._topk_used = used
        st = np.sort(topk, axis=-1)
        self._topk_count = 1 + np.sum(st[..., 1:] != st[..., :-1], axis=-1)
        # node sets served copy-minor from the combos' error bounds step by step (SiftMoEVectorEnv._serve_nodes)
        # when the table's counts never tie; else every combo's error bound up front (err_rows's sums)
        self._static = None
        self._static_key = None
        static = self._serving_static() if env.table.enabled else None
        self._err_tab = err_table(gates[..., None] * dk) if env.table.enabled and static is None else None
        self._topk_t = np.ascontiguousarray(topk.transpose(1, 2, 0))  # (S, k, n)
        self._gates_t = np.ascontiguousarray(gates.transpose(1, 2, 0))
        self._cost_tab, self._feas_tab, self._viol_tab = ep["cost_tab"], ep["feas_tab"], ep["viol_tab"]  # (n, M+1, T+1)
        ar = np.arange(m1)
        n_topk = used.reshape(n, nl, t, m1).sum(axis=2)  # (n, L, M+1)
        block_topk = self._cost_tab[np.arange(n)[:, None, None], ar[None, None, :], n_topk].sum(axis=2)
        block_topk = block_topk + env.compute_cost * self._topk_count.reshape(n, nl, t).sum(axis=2)
        self._e_bar = block_topk / t  # (n, L)
        margin = env._margin_db(ep["gains"])  # (n, M)
        obs = env._static_features(probs, topk, layers, norms, None, gates,
                                   np.broadcast_to(margin[:, None, :], (n, s, env.n_nodes)), None, None, None,
                                   np.arange(s) / s)
        sl = env.obs_slices
        obs[:, :, sl["block_position"]] = (np.arange(s) % t / t)[:, None]
        demand = used[:, :, 1:].reshape(n, nl, t, -1)[:, :, ::-1].cumsum(axis=2)[:, :, ::-1]
        obs[:, :, sl["block_demand"]] = demand.reshape(n, s, -1) / t
        self._obs_table = obs
        self._ar, self._arm = np.arange(n), ar
        self._rows = np.arange(n)[:, None]
        self._cost_tab, self._feas_tab, self._viol_tab = (np.ascontiguousarray(x) for x in
                                                          (self._cost_tab, self._feas_tab, self._viol_tab))
        self._tab_base = (self._rows * m1 + ar) * (t + 1)
        self._start_layer()
        self._costs = self._step_costs()
        self._sums = np.zeros((4, n))  # energy, top-k reference, violations, latency violations
        self._node_onehot = np.zeros((nl, env.n_experts, m1))
        for lay in range(nl):
            self._node_onehot[lay, np.arange(env.n_experts), env.system.node_of[lay]] = 1.0

    def _start_layer(self) -> None:
        n, m1 = self.num_envs, self.env.n_nodes + 1
        self._loads = np.zeros((n, m1), dtype=np.int64)
        self._block_viol = np.zeros(n)
        self._block_energy = np.zeros(n)

    def _step_costs(self):
        """Every copy's marginal ``(cost, feas, viol)`` (n, M+1) at its loads (``PrefillEnv._step_costs``)."""
        loads, base = self._loads, self._tab_base  # flat positions in the (n, M+1, T+1) tables
        nxt = np.minimum(loads + 1, self._T)
        nxt += base
        cost = np.take(self._cost_tab, nxt) - np.take(self._cost_tab, loads + base)
        feas = np.take(self._feas_tab, nxt)
        viol = np.maximum(np.take(self._viol_tab, nxt) - self._block_viol[:, None], 0.0)
        return cost, feas, viol

    def _observation(self) -> np.ndarray:
        env = self.env
        s = min(self._s, self._n_steps - 1)
        obs = self._obs_table[:, s].copy()
        cost, feas, _ = self._costs
        layer = int(self._layers[s])
        sl = env.obs_slices
        obs[:, sl["node_cost"]] = np.clip(cost[:, 1:] / (self._e_bar[:, layer] + env.floor)[:, None], 0.0, COST_CLIP)
        obs[:, sl["node_feasible"]] = feas[:, 1:]
        obs[:, sl["loads"]] = self._loads[:, 1:] / self._T
        return obs

    # ------------------------------------------------------------------ step
    def _serve_batch(self, kind: str, payload: np.ndarray, s: int, layer: int, cost, viol, cap: float):
        """``PrefillEnv._serve`` for every copy: (assignment, computed, energy, err, lat, used, active)."""
        env = self.env
        n, nn, tab = self.num_envs, env.n_experts, env.table
        gates, dk = self._gates[:, s], self._dk[:, s]  # (n, k), (n, k, N+1)
        err = None  # (the k <= 2 serving kernels give it: the same sums)
        if kind == "nodes":
            active = env._subset_nodes[payload] if env._subset_nodes is not None else node_sets(payload, env.n_nodes)
            static = self._serving_static() if tab.enabled else None
            if static is not None:  # the same choices as pick_allowed_rows (objective e_c |C|)
                idx, err = self._serve_nodes(static, layer, payload, self._topk_t[s], self._gates_t[s], cap)
                servers = tab.servers[idx]
                computed = np.take(tab.computed, idx, axis=0)
                used = tab.nodes[layer][idx]
                count = tab.count[idx]
            elif tab.enabled:
                err_c = self._err_tab[:, s]  # (n, C)
                ec = env._ec_count
                allow = tab.allow[layer][payload] if tab.allow is not None \
                    else (~active).astype(np.float64) @ tab.nodes_f[layer].T == 0
                ecb = np.broadcast_to(ec, err_c.shape)
                idx = pick_allowed_rows(allow, err_c, ecb, ecb, np.full(n, cap))[0]
                servers = tab.servers[idx]
                computed = np.take(tab.computed, idx, axis=0)
                used = tab.nodes[layer][idx]
                count = tab.count[idx]
            else:
                node_of = env.system.node_of[layer]
                servers = np.empty((n, env.top_k), dtype=np.int64)
                for i in range(n):
                    a = serve_free(dk[i], gates[i], node_of, active[i], cap, env.compute_cost)
                    servers[i] = np.where(a < 0, nn, a)
                computed, used = computed_and_used(servers, nn, self._node_onehot[layer])
                count = computed.sum(axis=1)
        else:
            servers, computed, used = serve_assignment_actions(kind, payload, dk, nn, self._node_onehot[layer])
            active = used
            count = computed.sum(axis=1)
        energy = np.where(active, cost, 0.0).sum(axis=1) + env.compute_cost * count
        if err is None:
            err = (gates * np.take_along_axis(dk, servers[:, :, None], axis=2)[:, :, 0]).sum(axis=1)
        lat = np.where(active, viol, 0.0).max(axis=1)
        assignment = np.where(servers >= nn, -1, servers)
        return assignment, computed, energy, err, lat, used, active

    def step(self, actions):
        reset = self._begin_step(actions)
        if reset is not None:
            return reset
        n = self.num_envs
        env = self.env
        kind, payload = self._decode_actions(actions)  # the whole batch checked before any copy moves
        s = self._s
        layer = int(self._layers[s])
        eps, eps_d = float(env.budgets[layer]), float(env._eps_div[layer])
        cost, feas, viol = self._costs  # (the step costs at the loads the last step left)
        assignment, computed, energy, err, lat, used, active = self._serve_batch(kind, payload, s, layer, cost, viol, eps)
        e_topk = np.where(self._topk_used[:, s], cost, 0.0).sum(axis=1) + env.compute_cost * self._topk_count[:, s]
        e_bar = self._e_bar[:, layer]
        cfg = env.env_config
        gates, topk = self._gates[:, s], self._topk[:, s]
        worst = slot_sum(env._worst_row[layer], self._topk_t[s], self._gates_t[s], gates, topk)
        r_e, r_a, r_l, violation = reward_terms_batch(energy, e_bar, err, eps, eps_d, lat, env.floor, cfg["penalty"],
                                                      cfg["penalty_latency"], env._tau, worst)
        reward = r_e + r_a + r_l
        avoid = np.zeros(n, dtype=bool)
        over = np.flatnonzero(violation)
        if len(over):
            avoid[over] = avoidable_rows(self._dk[over, s], gates[over], feas[over], env._node_ext[layer], eps)
        self._loads = self._loads + active  # every activated node receives the token (paid)
        self._block_viol = self._block_viol + lat
        self._block_energy = self._block_energy + energy
        info = {
            "energy_j": energy, "topk_energy_j": e_topk, "error_bound": err, "budget": np.full(n, eps),
            "violation": violation, "latency_violation": lat,
            "assignment": assignment, "computed": computed, "nodes_used": used, "activated_nodes": active,
            "reward_energy": r_e, "reward_accuracy": r_a, "reward_latency": r_l,
            "layer": np.full(n, layer), "token": np.full(n, s % self._T), "loads": self._loads.copy(),
            "block_energy_j": self._block_energy.copy(), "reward_scale_j": e_bar.copy(),
            **constraint_costs(violation & avoid, lat),
        }
        sums = self._sums
        sums[0] += energy
        sums[1] += e_bar  # top-k's reference: its block energy per token at this layer
        sums[2] += violation
        sums[3] += lat > 0.0
        self._s = s + 1
        terminated = self._s >= self._n_steps
        ones = self._mask()
        if terminated:
            add_episode_metrics_batch(info, sums[0], self._e_bar.sum(axis=1) * self._T, sums[2], sums[3], self._T,
                                      self._n_steps, ones)
        else:
            add_episode_metrics_batch(info, sums[0], sums[1], sums[2], sums[3], self._s / env.n_layers, self._s, ones)
            if self._s % self._T == 0:
                self._start_layer()
        self._costs = self._step_costs()
        return self._end_step(info, reward, terminated)
