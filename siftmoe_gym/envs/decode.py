"""``siftmoe_gym/Decode-v0``: energy-aware expert selection while decoding (problem P1)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import SiftMoEEnv


def draw_decode_episode(system, rng: np.random.Generator, num_tokens: int) -> dict[str, Any]:
    """Everything random in one Decode episode, drawn in a fixed order from ``rng``.

    Order: distances, fading (once: slow fading), tokens.  Shared with the
    native vector environment so that copy ``i`` seeded with ``seed + i``
    replays the single environment seeded with ``seed + i``.
    """
    distances = system.draw_distances(rng)
    fading = system.fading_process().reset(rng)
    tokens = system.sample_tokens(rng, num_tokens)
    gains = system.gains(distances, fading)
    cost, feas, viol = system.node_costs(gains)
    return {"distances": distances, "gains": gains, "tokens": tokens, "cost": cost, "feas": feas, "viol": viol}


def flatten_tokens(tokens, num_layers: int):
    """Token-major step order: step ``s`` is token ``s // L`` at layer ``s % L``."""
    t = tokens.probs.shape[0]
    s = t * num_layers
    return (
        tokens.probs.reshape(s, -1),
        tokens.topk.reshape(s, -1),
        tokens.gates.reshape(s, -1),
        tokens.norms.reshape(s),
        np.tile(np.arange(num_layers), t),
    )


class DecodeEnv(SiftMoEEnv):
    """Per-token, per-layer expert selection for wireless distributed MoE decoding (P1, slow fading).

    ## Description

    A source device (node 0) runs an MoE language model whose routed experts
    are spread over itself and ``M`` edge nodes reached by wireless links.
    For every generated token and every MoE layer the router picks its top-k
    experts; activating an edge node means sending the hidden state over its
    link and back within the layer's latency budget ``tau``, which costs
    energy ``c_m(1)`` (or, on a link too weak to meet the budget, the energy
    of sending at ``P_max`` plus a latency violation).  The agent may serve a
    top-k slot by a *similar* expert on a node that is already active, or skip
    it, at the price of an error bound ``err = sum_i g_i Delta_{i,a(i)}``
    that must stay within the layer's budget ``eps_l``
    (``docs/model.md`` sections 2-4).  Channels are drawn once per request
    (slow fading).  One step is one token at one layer; the layers of a token
    come in order, then the next token.

    ## Action Space

    Set by ``action_mode``:

    - ``"nodes"`` (default) ``MultiBinary(M)``: ``action[m-1] = 1`` activates
      edge node ``m`` (node 0 is always available).  The token is then served
      exactly as P1 prescribes for that node set
      (:func:`siftmoe_gym.serving.solve_decode` with ``allowed = [True] + action``):
      the cheapest assignment over experts on node 0 and the active nodes whose
      error bound meets ``eps_l``, or the least-error one when none does.  The
      best node set therefore reaches the exact P1 optimum.  Activating an
      infeasible node is allowed: it pays the fallback energy and the latency
      violation if the serving uses it.
    - ``"discrete"`` ``Discrete(2**M)``: the same node subsets as an integer,
      bit ``m-1`` = node ``m``.
    - ``"experts"`` ``MultiBinary(N)``: the computed set.  Each slot is served
      by the least-error computed expert (or skipped when its skip cost is
      smaller); every computed expert is paid for, used or not.
    - ``"slots"`` ``MultiDiscrete([N+1] * k)``: the serving expert of each
      top-k slot (in the order of ``topk``, descending router probability);
      ``N`` means skip.

    ``env.unwrapped.encode_action(assignment)`` turns an assignment into the
    action of the current mode.  Malformed actions raise ``ValueError``.

    ## Observation Space

    ``obs_mode="flat"`` (default): ``Box(float32)`` of length
    ``2N + 3M + L + 1 + (M+1) + 1`` (the ``solo_error`` block can be turned
    off with ``solo_error_features=False``), laid out as below; ``"dict"``
    gives the same blocks as a ``Dict`` of ``Box`` es keyed by name.

    | Index (start, length)      | Name            | Bounds      | Meaning |
    |----------------------------|-----------------|-------------|---------|
    | ``0``, N                   | router_probs    | [0, 1]      | router probabilities of the token at this layer |
    | ``N``, N                   | topk_mask       | {0, 1}      | 1 for the top-k experts |
    | ``2N``, M                  | link_margin     | [-1, 1]     | ``10 log10(G_m / G_th) / 30`` clipped; ``G_th`` is the gain at which one hidden state needs exactly ``P_max`` within ``tau``; > 0 means feasible |
    | ``2N+M``, M                | node_cost       | [0, 10]     | ``c_m(1) / (E_topk + floor)`` clipped (fallback energy when infeasible) |
    | ``2N+2M``, M               | node_feasible   | {0, 1}      | the link meets the latency budget |
    | ``2N+3M``, L               | layer           | {0, 1}      | one-hot layer |
    | ``2N+3M+L``, 1             | norm            | [0, 4]      | hidden-state norm over the layer's typical norm |
    | ``2N+3M+L+1``, M+1         | solo_error      | [0, 8]      | error bound (in budget units) with node 0 alone, then with node 0 plus node ``m`` alone |
    | ``2N+4M+L+2``, 1           | progress        | [0, 1]      | share of the episode's steps already taken |

    The exact slices are in ``env.unwrapped.obs_slices``.

    ## Rewards

    ``r = -(E + f) / (E_topk + f) - penalty * max(0, err - eps_l) / eps_l
    - penalty_latency * latency_violation / tau``, where ``E`` is the step's
    energy, ``E_topk`` the energy top-k routing would spend on the same token
    and channels, and ``f = reward_floor_j`` (default ``k * e_c + 1e-12`` J)
    a floor added to both so that top-k scores exactly ``-1`` on every step
    whose links are all feasible and nothing divides by zero.  Serving
    cheaper than top-k gives ``r > -1``; zero communication gives
    ``-(k' e_c + f)/(E_topk + f)``.  A wasted activation is penalized in
    proportion to its cost over top-k's: when top-k's experts all sit on node
    0, ``E_topk = k e_c`` and activating an edge node costing ``c_m`` gives
    ``r ~ -c_m / (2 k e_c)``; with the defaults (``c_m(1)`` of 2e-6 to 1e-4 J
    on feasible links, ``e_c = 1e-6``) that is down to about -25, and on an
    infeasible link (fallback energy up to ~1e-3 J) down to about -250, plus
    the latency penalty.  Choose ``reward_floor_j`` larger to tame this.
    ``info`` carries the breakdown (``reward_energy``, ``reward_accuracy``,
    ``reward_latency``) and ``energy_j``, ``topk_energy_j``, ``error_bound``,
    ``budget``, ``violation`` (``err > budget``), ``latency_violation`` (s),
    ``assignment``, ``computed``, ``nodes_used``, ``layer``, ``token``.

    ## Starting State

    At reset the edge nodes' distances (uniform in ``distance_range_m`` unless
    ``distances_m`` is fixed), the small-scale fading and the request's
    ``episode_tokens`` tokens (router scores, hidden-state norms) are drawn
    from the environment's ``np_random``.  The model, its similarity profile
    and the placement are fixed per environment (``model_seed``).

    ## Episode End

    The episode terminates after ``episode_tokens * L`` steps (the request
    has been generated).  There is no truncation.

    ## Arguments

    ``gym.make("siftmoe_gym/Decode-v0", config=None, trace=None,
    action_mode="nodes", obs_mode="flat", penalty=None, penalty_latency=None,
    episode_tokens=None, render_mode=None)``

    - ``config``: a preset name (``"mixtral-small"``, ``"qwen3-30b-a3b"``,
      ``"olmoe"``), a :class:`~siftmoe_gym.config.SystemConfig`, or a dict of
      system keys (optionally ``preset``) and environment keys from
      :meth:`default_config` (``episode_tokens``, ``penalty``,
      ``penalty_latency``, ``reward_floor_j``, ``solo_error_features``).
      Unknown keys raise ``ValueError``.  ``reset(options={"config": {...}})``
      changes it between episodes (keys that change the spaces excepted).
    - ``trace``: path to a trace file recorded from a real model; the
      synthetic workload is used when absent.
    - ``penalty``, ``penalty_latency``, ``episode_tokens``: override the
      config's values.
    - ``render_mode``: ``"ansi"`` or ``"rgb_array"``.

    ## Version History

    - v0: initial version.
    """

    setting = "decode"

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        cfg = super().default_config()
        cfg["episode_tokens"] = 32
        return cfg

    @property
    def token(self) -> int:
        return min(self._s, self._n_steps - 1) // self.n_layers

    def _new_episode(self, rng: np.random.Generator) -> None:
        ep = draw_decode_episode(self.system, rng, self.env_config["episode_tokens"])
        self._load_episode(ep)

    def _load_episode(self, ep: dict[str, Any]) -> None:
        self._ep = ep
        probs, topk, gates, norms, layers = flatten_tokens(ep["tokens"], self.n_layers)
        self._n_steps = len(layers)
        self._prepare_steps(probs, topk, gates, norms, layers)
        cost, feas, viol = ep["cost"], ep["feas"], ep["viol"]
        self._cost, self._feas, self._viol = cost, feas, viol
        self._topk_e = np.where(self._topk_used, cost[None, :], 0.0).sum(axis=1) + self.compute_cost * self._topk_count
        if self.table.enabled:
            self._energy_lc = self.table.nodes_f @ cost + self.compute_cost * self.table.count  # (L, C)
        s = self._n_steps
        e_ref = self._topk_e + self.floor
        margin = np.broadcast_to(self._margin_db(ep["gains"]), (s, self.n_nodes))
        self._obs_table = self._static_features(
            probs, topk, layers, norms, self._dk, gates, margin,
            np.broadcast_to(cost, (s, self.n_nodes + 1)), np.broadcast_to(feas, (s, self.n_nodes + 1)),
            e_ref, np.arange(s) / s,
        )

    def _combo_energy(self, s, layer, cost):
        return self._energy_lc[layer]

    def _step_costs(self):
        return self._cost, self._feas, self._viol

    def _observation(self) -> np.ndarray:
        return self._obs_table[min(self._s, self._n_steps - 1)].copy()

    @property
    def topk_energy(self) -> float:
        return float(self._topk_e[min(self._s, self._n_steps - 1)])

    def step(self, action):
        if not self._episode_ready:
            raise RuntimeError("call reset() before step() (the episode has ended or not started)")
        kind, payload = self.decode_action(action)
        s = self._s
        layer = int(self._layers[s])
        eps = float(self.budgets[layer])
        res = self._serve(kind, payload, s, layer, self._cost, self._feas, self._viol, eps, 1.0, 0.0)
        e_topk = float(self._topk_e[s])
        r_e, r_a, r_l = self._reward(res["energy"], e_topk, res["err"], eps, float(self._eps_div[layer]), res["lat"])
        reward = r_e + r_a + r_l
        info = {
            "energy_j": res["energy"], "topk_energy_j": e_topk, "error_bound": res["err"], "budget": eps,
            "violation": res["err"] > eps * (1.0 + 1e-12) + 1e-15, "latency_violation": res["lat"],
            "assignment": res["assignment"], "computed": res["computed"], "nodes_used": res["used"],
            "reward_energy": r_e, "reward_accuracy": r_a, "reward_latency": r_l,
            "layer": layer, "token": s // self.n_layers,
        }
        self._last = {**res, "s": s, "layer": layer, "budget": eps, "topk_energy": e_topk, "reward": reward}
        self._s = s + 1
        terminated = self._s >= self._n_steps
        if terminated:
            self._episode_ready = False
        obs = self._format_obs(self._observation())
        return obs, reward, terminated, False, info
