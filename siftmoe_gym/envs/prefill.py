"""``siftmoe_gym/Prefill-v0``: expert selection for a block of prompt tokens (P2)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..instances import PrefillInstance
from .base import SiftMoEEnv
from .observations import COST_CLIP
from .rewards import constraint_costs, reward_terms


def draw_prefill_episode(system, rng: np.random.Generator, num_tokens: int) -> dict[str, Any]:
    """Distances, fading (once) and the block's tokens, in that order, plus the load cost tables."""
    distances = system.draw_distances(rng)
    fading = system.fading_process().reset(rng)
    tokens = system.sample_tokens(rng, num_tokens)
    gains = system.gains(distances, fading)
    cost_tab, feas_tab, viol_tab = system.load_tables(gains, num_tokens)  # (M+1, T+1)
    return {"distances": distances, "gains": gains, "tokens": tokens, "cost_tab": cost_tab,
            "feas_tab": feas_tab, "viol_tab": viol_tab}


class PrefillEnv(SiftMoEEnv):
    """Expert selection for a prefill block of ``T`` tokens passing each MoE layer together (P2).

    ## Description

    A prompt block of ``T = config.prefill_tokens`` tokens passes every MoE
    layer together.  Edge node ``m`` receives, in one transmission within the
    prefill latency budget ``tau_p = config.tau_prefill_s``, the hidden states
    of the ``n_m`` tokens that use any of its experts, at cost ``c_m(n_m)``
    (convex and increasing).  Each token keeps its own accuracy constraint
    ``err_t <= eps_l``.  The agent decides token by token: steps go through
    the block's tokens at layer 0, then at layer 1, and so on; each node's
    load so far in the block at this layer is part of the observation, and
    the step pays the *marginal* cost ``c_m(n_m + 1) - c_m(n_m)`` of every
    node it adds the token to.  ``env.unwrapped.instance`` is the per-token
    :class:`~siftmoe_gym.instances.DecodeInstance` whose ``node_cost`` is that
    marginal cost (``node_feasible``: whether the link still meets ``tau_p``
    with one more token; ``node_violation_s``: the increase of the block's
    latency overrun), and ``env.unwrapped.block_instance`` the whole layer's
    :class:`~siftmoe_gym.instances.PrefillInstance` with single-transmission
    cost tables.

    ## Action Space

    As in Decode-v0: ``"nodes"`` (default, ``MultiBinary(M)``: every chosen
    node is activated and paid, i.e. its load at this layer goes up by one for
    this token and the step pays its marginal cost and any increase of its
    latency overrun, used or not; the token is served by the fewest computed
    experts over node 0 and the chosen nodes that meet ``eps_l``, exactly as
    ``solve_decode`` with the chosen nodes' costs set to 0), ``"discrete"``
    (``Discrete(2**M)``), ``"experts"`` (``MultiBinary(N)``), ``"slots"``
    (``MultiDiscrete([N+1]*k)``); the last two load and pay the nodes their
    computed experts sit on.

    ## Observation Space

    The Decode-v0 blocks, where ``node_cost`` is the marginal cost over the
    reward scale ``Ebar_l + f`` (clipped to [0, 10]), ``node_feasible`` refers
    to one more token, ``link_margin`` to one token within ``tau_p`` and
    ``progress`` to the whole block episode, followed by

    | Index (start, length) | Name           | Bounds | Meaning |
    |-----------------------|----------------|--------|---------|
    | ``D0``, M             | loads          | [0, 1] | tokens already sent to each edge node at this layer, over ``T`` |
    | ``D0 + M``, 1         | block_position | [0, 1] | ``t / T``: the token's position in the block |
    | ``D0 + M + 1``, M     | block_demand   | [0, 1] | per edge node, the block's tokens from this one on (this layer) whose top-k uses the node, over ``T`` |

    with ``D0 = 3N + 4M + L + 3 + k(M+2)`` (``3N + 3M + L + 2`` without solo errors).

    ## Rewards

    ``r = -(dE + f) / (Ebar_l + f) - [err > eps_l] * penalty * (1 + (err - eps_l) / eps_l)
    - [d_violation > 0] * (penalty_latency * (1 + d_violation / tau_p) + a_worst)``
    (defaults 10 and 50; ``a_worst`` the accuracy penalty of the token's worst decision, so a latency
    violation costs more than any accuracy violation, :mod:`siftmoe_gym.envs.rewards`), where ``dE`` is the step's
    marginal energy (marginal costs of the activated nodes plus ``e_c`` per computed expert),
    ``Ebar_l`` top-k's block energy at this layer divided by ``T`` (a constant
    per layer and episode) and ``d_violation`` the increase of the block's
    latency overrun.  The marginal costs telescope: the return is minus the
    block's energy (per layer in units of ``Ebar_l + f``), penalties aside,
    and top-k averages exactly -1 per step over each layer (up to rounding)
    when its links are feasible.  ``info`` carries the Decode-v0 keys (with
    ``energy_j`` the marginal energy and ``topk_energy_j`` top-k's marginal
    energy at the current loads; ``activated_nodes`` the nodes whose load
    went up) plus ``loads`` (after the step),
    ``block_energy_j`` (the layer's block energy so far) and
    ``reward_scale_j`` (``Ebar_l``), and the constraint costs ``cost_accuracy``
    (1.0 when ``err > eps_l`` although a decision on the nodes that can take
    one more token keeps it), ``cost_latency`` (1.0 when the step increases
    the block's latency overrun) and their sum ``cost`` (Safety-Gymnasium's
    convention, :func:`siftmoe_gym.envs.rewards.constraint_costs`).

    ## Starting State

    Distances, slow fading and the block's tokens are drawn at reset from
    ``np_random``; all loads start at 0.

    ## Episode End

    Terminates after ``T * L`` steps (the block has passed every layer).
    The environment itself never truncates; ``max_episode_steps`` truncates as
    ``TimeLimit`` does.

    Every step's ``info`` carries the episode's metrics so far, flat and
    under ``info["episode_metrics"]``: ``energy_per_token_j``,
    ``topk_energy_per_token_j`` (top-k's energy over the same steps),
    ``saving_pct`` (``100 (1 - E / E_topk)``), ``violation_rate`` (share of
    steps with ``err > eps_l``) and ``latency_violation_rate``, over the
    steps since the reset (``steps / L`` tokens;
    :mod:`siftmoe_gym.envs.metrics`; top-k's reference is ``Ebar_l`` per
    step).  On the last step they are the whole
    episode's; on a step where a wrapper truncates the episode
    (``gym.make(..., max_episode_steps=k)``, ``TimeLimit``) those of the part
    played.  The environment does not know about such wrappers, so the
    metrics are on every step: ``Monitor(info_keywords=("saving_pct",))``
    and rl-zoo3's ``monitor_kwargs`` find them however the episode ends.

    ## Arguments

    As Decode-v0 except ``episode_tokens`` (the episode is one block; set its
    size with the system key ``prefill_tokens``).

    ## Version History

    - v0: initial version.
    - v0 (unreleased revision): the observation adds ``gates`` and ``block_demand``; ``info`` adds the
      constraint costs (``cost``, ``cost_accuracy``, ``cost_latency``).
    - v0 (unreleased revision): a latency violation also pays the accuracy penalty of the token's worst
      decision, so the reward ranks latency before accuracy at every budget (before, at very tight budgets,
      top-k's latency violations could score better than the optimum's accuracy violations).
    - v0 (unreleased revision): node-set actions load and pay every activated
      node (used or not) and its latency overrun; the latency term became
      ``penalty_latency * (1 + d_violation / tau_p)`` with default 50.
    - v0 (unreleased revision): the synthetic workload draws each token's
      hidden state in its routers' coordinates (``N + 1`` normals and one
      chi-square number per layer instead of ``d``; the same distribution of
      router scores, top-k, gates and norms, see :mod:`siftmoe_gym.synthetic`;
      topics from uniforms): the same seed gives different episodes than before.
    """

    setting = "prefill"

    def _setting_tau(self) -> float:
        return float(self.system.config.tau_prefill_s)

    def _extra_segments(self):
        return [("loads", self.n_nodes, 0.0, 1.0), ("block_position", 1, 0.0, 1.0),
                ("block_demand", self.n_nodes, 0.0, 1.0)]

    @property
    def token(self) -> int:
        return min(self._s, self._n_steps - 1) % self._T

    @property
    def token_in_block(self) -> int:
        return self.token

    def _new_episode(self, rng: np.random.Generator) -> None:
        ep = draw_prefill_episode(self.system, rng, int(self.system.config.prefill_tokens))
        self._load_episode(ep)

    def _load_episode(self, ep: dict[str, Any]) -> None:
        self._ep = ep
        tokens = ep["tokens"]
        t_count, nl = tokens.probs.shape[0], self.n_layers
        self._T = t_count
        s = t_count * nl
        self._n_steps = s
        probs = tokens.probs.transpose(1, 0, 2).reshape(s, -1)
        topk = tokens.topk.transpose(1, 0, 2).reshape(s, -1)
        gates = tokens.gates.transpose(1, 0, 2).reshape(s, -1)
        norms = tokens.norms.T.reshape(s)
        layers = np.repeat(np.arange(nl), t_count)
        self._prepare_steps(probs, topk, gates, norms, layers)
        self._cost_tab, self._feas_tab, self._viol_tab = ep["cost_tab"], ep["feas_tab"], ep["viol_tab"]
        m1 = self.n_nodes + 1
        self._ar = np.arange(m1)
        n_topk = self._topk_used.reshape(nl, t_count, m1).sum(axis=1)  # (L, M+1)
        block_topk = self._cost_tab[self._ar[None, :], n_topk].sum(axis=1)
        block_topk = block_topk + self.compute_cost * self._topk_count.reshape(nl, t_count).sum(axis=1)
        self._e_bar = block_topk / t_count  # (L,)
        self._obs_table = self._static_features(
            probs, topk, layers, norms, self._dk, gates,
            np.broadcast_to(self._margin_db(ep["gains"]), (s, self.n_nodes)), None, None,
            None, np.arange(s) / s,
        )
        self._obs_table[:, self.obs_slices["block_position"]] = (np.arange(s) % t_count / t_count)[:, None]
        # the whole block passes the layer together, so the rest of its top-k demand is known: per layer a
        # reverse cumulative count of the tokens whose top-k uses each edge node
        demand = self._topk_used[:, 1:].reshape(nl, t_count, -1)[:, ::-1].cumsum(axis=1)[:, ::-1]
        self._obs_table[:, self.obs_slices["block_demand"]] = demand.reshape(s, -1) / t_count
        self._start_layer()
        self._block_cache: dict[int, PrefillInstance] = {}
        self._ep_sums = [0.0, 0.0, 0, 0]

    def _episode_reference(self) -> tuple[int, float]:
        return self._T, float(self._e_bar.sum()) * self._T

    def _step_costs_at(self, s: int):
        return self._step_costs()

    def _start_layer(self) -> None:
        self._loads = np.zeros(self.n_nodes + 1, dtype=np.int64)
        self._block_viol = 0.0
        self._block_energy = 0.0

    def _step_costs(self):
        loads = self._loads
        nxt = np.minimum(loads + 1, self._T)
        cost = self._cost_tab[self._ar, nxt] - self._cost_tab[self._ar, loads]
        feas = self._feas_tab[self._ar, nxt]
        viol = np.maximum(self._viol_tab[self._ar, nxt] - self._block_viol, 0.0)
        return cost, feas, viol

    @property
    def topk_energy(self) -> float:
        cost, _, _ = self._step_costs()
        return self._topk_energy(min(self._s, self._n_steps - 1), cost)

    @property
    def block_instance(self) -> PrefillInstance:
        """The current layer's whole block as a :class:`PrefillInstance` (single-transmission cost tables)."""
        layer = self.layer
        inst = self._block_cache.get(layer)
        if inst is None:
            inst = self.system.prefill_instance(self._ep["tokens"], layer, self._ep["gains"])
            self._block_cache[layer] = inst
        return inst

    @property
    def loads(self) -> np.ndarray:
        """Tokens already sent to each node (M+1,) at the current layer of the block."""
        return self._loads.copy()

    def _observation(self) -> np.ndarray:
        s = min(self._s, self._n_steps - 1)
        obs = self._obs_table[s].copy()
        cost, feas, _ = self._step_costs()
        layer = int(self._layers[s])
        sl = self.obs_slices
        obs[sl["node_cost"]] = np.clip(cost[1:] / (self._e_bar[layer] + self.floor), 0.0, COST_CLIP)
        obs[sl["node_feasible"]] = feas[1:]
        obs[sl["loads"]] = self._loads[1:] / self._T
        return obs

    def step(self, action):
        if not self._episode_ready:
            raise RuntimeError("call reset() before step() (the episode has ended or not started)")
        kind, payload = self.action_codec.decode(action)
        s = self._s
        layer = int(self._layers[s])
        eps = float(self.budgets[layer])
        cost, feas, viol = self._step_costs()
        res = self._serve(kind, payload, s, layer, cost, feas, viol, eps, 1.0, 0.0)
        e_topk = self._topk_energy(s, cost)
        e_bar = float(self._e_bar[layer])
        cfg = self.env_config
        r_e, r_a, r_l, violation = reward_terms(res["energy"], e_bar, res["err"], eps, float(self._eps_div[layer]),
                                                res["lat"], self.floor, cfg["penalty"], cfg["penalty_latency"], self._tau,
                                                self._worst_error(s) if res["lat"] > 0.0 else 0.0)
        reward = r_e + r_a + r_l
        self._loads = self._loads + res["active"]  # every activated node receives the token (paid)
        self._block_viol += res["lat"]
        self._block_energy += res["energy"]
        info = {
            "energy_j": res["energy"], "topk_energy_j": e_topk, "error_bound": res["err"], "budget": eps,
            "violation": violation, "latency_violation": res["lat"],
            "assignment": res["assignment"], "computed": res["computed"], "nodes_used": res["used"],
            "activated_nodes": res["active"],
            "reward_energy": r_e, "reward_accuracy": r_a, "reward_latency": r_l,
            "layer": layer, "token": s % self._T, "loads": self._loads.copy(),
            "block_energy_j": self._block_energy, "reward_scale_j": e_bar, **constraint_costs(violation and self._avoidable(s, layer, feas, eps), res["lat"]),
        }
        self._last = {**res, "s": s, "layer": layer, "budget": eps, "topk_energy": e_topk, "reward": reward}
        self._s = s + 1
        terminated = self._s >= self._n_steps
        sums = self._ep_sums
        sums[0] += res["energy"]
        sums[1] += e_bar  # top-k's reference: its block energy per token at this layer
        sums[2] += info["violation"]
        sums[3] += res["lat"] > 0.0
        if terminated:
            self._episode_ready = False
            self._add_episode_metrics(info)
        else:
            self._add_running_metrics(info, self._s)
            if self._s % self._T == 0:
                self._start_layer()
        return self._format_obs(self._observation()), reward, terminated, False, info
