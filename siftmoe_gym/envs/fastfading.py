"""``siftmoe_gym/FastFading-v0``: expert selection with per-token channels and an average accuracy budget (P3)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..bounds import within_budget
from ..energy import TOPK_FLOOR_J
from .base import SiftMoEEnv
from .config import check_env_value
from .decode import flatten_tokens  # noqa: F401  (re-exported)
from .episodes import draw_fastfading_episodes, episode_row
from .observations import budget_features
from .rewards import average_excess, average_step_penalty, constraint_costs, reward_terms

SERVING_RULES = ("least_error", "drift", "energy")


def draw_fastfading_episode(system, rng: np.random.Generator, num_tokens: int) -> dict[str, Any]:
    """Everything random in one FastFading episode, drawn in a fixed order from ``rng``.

    Order: distances, fading at token 0, then one Gauss-Markov step
    (``rho = config.rho``) per further token, then the tokens (the batched
    :func:`siftmoe_gym.envs.episodes.draw_fastfading_episodes` draws the same).
    """
    return episode_row(draw_fastfading_episodes(system, [rng], num_tokens), 0)


class FastFadingEnv(SiftMoEEnv):
    """Expert selection under fast fading with a long-run average accuracy budget (P3).

    ## Description

    As in ``siftmoe_gym/Decode-v0`` (one step = one token at one MoE layer,
    token-major), but every link's small-scale fading changes from token to
    token: i.i.d. (``rho = 0``, default) or Gauss-Markov
    ``h(t+1) = rho h(t) + sqrt(1 - rho^2) w(t)`` with ``rho = config.rho``.
    The accuracy constraint is the long-run average per layer,
    ``mean_t err_{t,l} <= eps_l``, with a hard per-token cap
    ``err <= eps_max = eps_max_factor * eps_l`` (``docs/model.md`` section 4).
    The observation carries each layer's virtual queue
    ``Q_l(t+1) = max(Q_l(t) + err/eps_l - 1, 0)`` (in units of the layer
    budget), so the average constraint is learnable: spending accuracy now
    (``err > eps_l`` on a bad channel) must be paid back later.

    ## Action Space

    As in Decode-v0 (``"nodes"`` default ``MultiBinary(M)``, ``"discrete"``
    ``Discrete(2**M)``, ``"experts"`` ``MultiBinary(N)``, ``"slots"``
    ``MultiDiscrete([N+1]*k)``), except how a node set is served.  As in
    Decode-v0 activation is paid: every node of ``U`` costs ``c_m`` (this
    token's channel) and its latency violation counts, used or not, so
    ``E = sum_{m in U} c_m + e_c |C|``.  With
    ``serving_rule="least_error"`` (default) a node set ``U`` is served by the
    assignment over experts on node 0 and ``U`` of least error bound (ties:
    lower error within tolerance, then the first in table order), i.e.
    ``solve_decode(..., energy_weight=0, error_weight=1)``: the agent spends
    accuracy by the links it leaves out, so every decision of the optimum
    (:mod:`baselines.fastfading_dp`) has a node set that reproduces it up to
    compute energy.  Measured on 8 default episodes (seeds 1000003..1000010):
    the optimum's node sets served this way use 0.3212 mJ per token (return
    -86.9) against the optimum's own 0.3220 mJ (-86.7), but 0.3572 mJ (-107.7,
    layer average 1.07 budgets) served by ``"drift"`` and 0.4961 mJ by
    ``"energy"`` (``docs/training.md``).  With
    ``serving_rule="drift"`` a node set ``U`` is served by the
    drift-plus-penalty step restricted to ``U``: the assignment over experts on
    node 0 and ``U`` minimizing ``V * E / E_topk + Q_l * err / eps_l``
    subject to ``err <= eps_max`` (``V = config.drift_v``; only ``e_c |C|``
    of ``E`` varies given ``U``), i.e.
    ``solve_decode(instance with node_cost[U] = 0, allowed, cap=cap_budget, **serving_weights)``;
    with an empty queue this is the cheapest assignment within the cap, and as
    the queue grows the serving spends more energy to cut the error.  With
    ``serving_rule="energy"`` it is always the cheapest assignment within the
    cap.  ``env.unwrapped.serving_weights`` gives the current weights.

    ## Observation Space

    The Decode-v0 blocks (``router_probs``, ``topk_mask``, ``link_margin``,
    ``node_cost``, ``node_feasible`` of this token's channels, ``layer``,
    ``norm``, ``solo_error`` in units of ``eps_l``, ``progress``, ``gates``, ``slot_error``) followed by

    | Index (start, length) | Name        | Bounds | Meaning |
    |-----------------------|-------------|--------|---------|
    | ``D0``, 1             | layer_queue | [0, 1] | ``Q_l / queue_clip`` of the current layer, clipped |
    | ``D0 + 1``, L         | queues      | [0, 1] | every layer's ``Q / queue_clip``, clipped |
    | ``D0 + L + 1``, 1     | layer_allowance | [-1, 1] | ``(T - R_l) / (T - t) / eps_max_factor``, clipped: the current layer's budget left per token left (this one included), over the cap |
    | ``D0 + L + 2``, L     | budget_left | [-1, 1] | every layer's ``(T - R_l) / T``, clipped: the share of its average budget not yet spent |

    where ``D0 = 3N + 4M + L + 3 + k(M+2)`` (``3N + 3M + L + 2`` without solo errors),
    ``T = episode_tokens``, ``t`` the token (0-based) and
    ``R_l = sum_{t' < t} err_{t',l} / eps_l`` the error layer ``l`` has spent
    so far (``env.unwrapped.error_spent``): the average constraint is
    ``R_l <= T`` at the episode's end, so ``(R_l, T - t)`` is the state the
    optimal policy (:mod:`baselines.fastfading_dp`) conditions on.
    ``env.unwrapped.obs_slices`` has the exact slices.

    ## Rewards

    Per step ``r = -(E + f) / (E_topk + f) - [err > eps_max] * penalty * (1 + (err - eps_max) / eps_l)
    - [latency_violation > 0] * (penalty_latency * (1 + latency_violation / tau) + a_worst)``
    (defaults 10 and 50; ``a_worst`` the cap penalty of the token's worst decision, so a latency
    violation costs more than any cap violation, :mod:`siftmoe_gym.envs.rewards`; no per-step penalty between
    ``eps_l`` and the cap: a per-step penalty above ``eps_l`` would forbid the
    flexibility the average constraint gives).  The episode's average excess
    ``- penalty * episode_tokens * sum_l max(0, mean_t(err_{t,l} / eps_l) - 1)``
    (what a per-step penalty ``penalty * (err/eps_l - 1)`` would sum to if
    every token carried the mean excess) is charged as it builds up: each step
    adds ``reward_average = -penalty * (max(0, R_l' - (t + 1)) - max(0, R_l - t))``,
    the change of the spending ahead of the pro-rata budget (``R_l`` before,
    ``R_l'`` after the step), which sums over the episode to exactly that
    charge (:func:`~siftmoe_gym.envs.rewards.average_step_penalty`): returns
    are those of a charge at the last step, but a token over ``eps_l`` while
    the layer is ahead of its budget pays at once (a learnable signal, where
    a charge at the end only came 128 steps later).  Top-k scores exactly -1 per step on
    all-feasible links.  ``info`` adds ``cap``, ``queue`` (all layers, after
    the step), ``cap_violation``, ``activated_nodes``, ``reward_average`` and, at the end,
    ``mean_error_ratio`` (L,).  Constraint costs, as safe-RL environments
    report them (Safety-Gymnasium's convention, one ``cost_*`` per budget and
    their sum ``cost``): ``cost_accuracy`` 1.0 when ``err`` exceeds the cap
    ``eps_max`` although a decision on the latency-feasible nodes keeps it (else 0.0), ``cost_latency`` 1.0 on a latency violation,
    ``cost_average`` 0.0 except at the last step, where it is the episode's
    average excess ``T * sum_l max(0, mean_t err_{t,l} / eps_l - 1)`` (the
    average term of the reward over ``penalty``).

    ## Starting State

    Distances, the fading of every token of the episode and the tokens are
    drawn at reset from ``np_random``; the queues start at 0.

    ## Episode End

    Terminates after ``episode_tokens * L`` steps.  The environment itself
    never truncates; ``max_episode_steps`` truncates as ``TimeLimit`` does.

    Every step's ``info`` carries the episode's metrics so far, flat and
    under ``info["episode_metrics"]``: ``energy_per_token_j``,
    ``topk_energy_per_token_j`` (top-k's energy over the same steps),
    ``saving_pct`` (``100 (1 - E / E_topk)``), ``violation_rate`` (share of
    steps with ``err > eps_l``) and ``latency_violation_rate``, over the
    steps since the reset (``steps / L`` tokens;
    :mod:`siftmoe_gym.envs.metrics`).  On the last step they are the whole
    episode's; on a step where a wrapper truncates the episode
    (``gym.make(..., max_episode_steps=k)``, ``TimeLimit``) those of the part
    played.  The environment does not know about such wrappers, so the
    metrics are on every step: ``Monitor(info_keywords=("saving_pct",))``
    and rl-zoo3's ``monitor_kwargs`` find them however the episode ends.

    ## Arguments

    As Decode-v0; environment keys additionally ``queue_clip`` (default 20,
    in [1e-6, 1e6]) and ``serving_rule`` (``"least_error"``, ``"drift"`` or ``"energy"``).

    ## Version History

    - v0: initial version.
    - v0 (unreleased revision): the average term is charged as the spending builds up (per step, the same
      episode returns) instead of at the last step.
    - v0 (unreleased revision): node sets are served by ``serving_rule="least_error"`` by default (was
      ``"drift"``, under which even the optimum's node sets lost 11% energy and broke the average budget);
      the observation adds ``layer_allowance`` and ``budget_left``; ``info`` adds the constraint costs.
    - v0 (unreleased revision): a latency violation also pays the accuracy penalty of the token's worst
      decision, so the reward ranks latency before accuracy at every budget (before, at very tight budgets,
      top-k's latency violations could score better than the optimum's accuracy violations).
    - v0 (unreleased revision): node-set actions pay every activated node
      (used or not) and its latency violation; the latency term became
      ``penalty_latency * (1 + violation / tau)`` with default 50.
    - v0 (unreleased revision): the synthetic workload draws each token's
      hidden state in its routers' coordinates (``N + 1`` normals and one
      chi-square number per layer instead of ``d``; the same distribution of
      router scores, top-k, gates and norms, see :mod:`siftmoe_gym.synthetic`),
      and an episode's uniforms, normals and chi-square numbers are drawn in
      one call each: the same seed gives different episodes than before.
    """

    setting = "fastfading"

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        cfg = super().default_config()
        cfg.update({"episode_tokens": 32, "queue_clip": 20.0, "serving_rule": "least_error"})
        return cfg

    def _validate_env_config(self, cfg):
        cfg = super()._validate_env_config(cfg)
        cfg["queue_clip"] = check_env_value("queue_clip", cfg["queue_clip"])
        if not isinstance(cfg["serving_rule"], str) or cfg["serving_rule"] not in SERVING_RULES:
            raise ValueError(f"invalid serving_rule={cfg['serving_rule']!r}: must be one of {SERVING_RULES}")
        return cfg

    def _extra_segments(self):
        return [("layer_queue", 1, 0.0, 1.0), ("queues", self.n_layers, 0.0, 1.0),
                ("layer_allowance", 1, -1.0, 1.0), ("budget_left", self.n_layers, -1.0, 1.0)]

    @property
    def token(self) -> int:
        return min(self._s, self._n_steps - 1) // self.n_layers

    def _new_episode(self, rng: np.random.Generator) -> None:
        t = self.env_config["episode_tokens"]
        batch, j = self._ep_cache.next(rng, lambda rngs, states: draw_fastfading_episodes(self.system, rngs, t, states))
        self._load_batch({**{key: val[j : j + 1] for key, val in batch.items() if key != "tokens"},
                          "tokens": type(batch["tokens"])(*(getattr(batch["tokens"], f)[j : j + 1]
                                                            for f in ("probs", "topk", "gates", "norms")))})

    def _load_episode(self, ep: dict[str, Any]) -> None:
        """Load one episode dict (as :func:`draw_fastfading_episode` returns)."""
        tk = ep["tokens"]
        batch = {key: np.asarray(val)[None] for key, val in ep.items() if key != "tokens"}
        batch["tokens"] = type(tk)(tk.probs[None], tk.topk[None], tk.gates[None], tk.norms[None])
        self._load_batch(batch)

    def episode_tables(self, ep: dict[str, Any], obs: bool = True) -> dict[str, Any]:
        """Per-copy episode arrays for a batch (``draw_fastfading_episodes``), leading axis = copy."""
        tk = ep["tokens"]
        b, t, nl = tk.probs.shape[:3]
        s = t * nl
        probs = tk.probs.reshape(b, s, -1)
        topk = tk.topk.reshape(b, s, -1)
        gates = tk.gates.reshape(b, s, -1)
        norms = tk.norms.reshape(b, s)
        layers = np.tile(np.arange(nl), t)
        tok = np.arange(s) // nl
        cost, feas, viol = ep["cost"], ep["feas"], ep["viol"]  # (B, T, M+1)
        no = self.system.node_of[layers[:, None], topk]
        used = np.zeros((b, s, self.n_nodes + 1), dtype=bool)
        np.put_along_axis(used, no, True, axis=-1)
        st = np.sort(topk, axis=-1)
        count = 1 + np.sum(st[..., 1:] != st[..., :-1], axis=-1)
        topk_e = np.where(used, cost[:, tok], 0.0).sum(axis=-1) + self.compute_cost * count
        margin = self._margin_db(ep["gains"])  # (B, T, M)
        out = {"probs": probs, "topk": topk, "gates": gates, "norms": norms, "layers": layers, "tok": tok,
               "topk_used": used, "topk_count": count, "topk_e": topk_e, "margin": margin,
               "cost": cost, "feas": feas, "viol": viol}
        if obs:
            out["obs_table"] = self._static_features(
                probs, topk, layers, norms, None, gates, margin[:, tok], cost[:, tok], feas[:, tok],
                topk_e + self.floor, np.arange(s) / s,
            )
        return out

    def _load_batch(self, epb: dict[str, Any]) -> None:
        tabs = self.episode_tables(epb)
        self._ep = episode_row(epb, 0)
        self._probs, self._topk, self._gates = tabs["probs"][0], tabs["topk"][0], tabs["gates"][0]
        self._norms, self._layers, self._tok = tabs["norms"][0], tabs["layers"], tabs["tok"]
        self._n_steps = len(self._layers)
        self._dk = self.system.delta_ext[self._layers[:, None], self._topk]
        self._topk_used, self._topk_count, self._topk_e = tabs["topk_used"][0], tabs["topk_count"][0], tabs["topk_e"][0]
        self._obs_table = tabs["obs_table"][0]
        self._cost, self._feas, self._viol = tabs["cost"][0], tabs["feas"][0], tabs["viol"][0]
        self._err_tab = self.table.err_rows(self._dk, self._gates) if self.table.enabled else None
        self.queue = np.zeros(self.n_layers)
        self._ratio_sum = np.zeros(self.n_layers)
        self._cap_factor = float(self.system.config.eps_max_factor)
        self._ep_sums = [0.0, 0.0, 0, 0]

    def _step_costs_at(self, s: int):
        t = self._tok[min(s, self._n_steps - 1)]
        return self._cost[t], self._feas[t], self._viol[t]

    def _step_costs(self):
        t = self._tok[min(self._s, self._n_steps - 1)]
        return self._cost[t], self._feas[t], self._viol[t]

    @property
    def distances(self) -> np.ndarray:
        """The episode's link distances (M,) in metres (drawn at reset, fixed for the episode)."""
        return np.asarray(self._ep["distances"], dtype=np.float64).copy()

    @property
    def error_spent(self) -> np.ndarray:
        """Per layer (L,), the error spent so far this episode: ``R_l = sum_t err_{t,l} / eps_l`` (the average
        constraint is ``R_l <= episode_tokens`` at the end)."""
        return self._ratio_sum.copy()

    @property
    def cap_budget(self) -> float:
        """Per-token error cap ``eps_max = eps_max_factor * eps_l`` of the next step."""
        return self._cap_factor * float(self.budgets[self.layer])

    @property
    def serving_weights(self) -> dict[str, float]:
        """``energy_weight`` / ``error_weight`` the next step serves a node set with (see Action Space)."""
        s = min(self._s, self._n_steps - 1)
        rule = self.env_config["serving_rule"]
        if rule == "energy":
            return {"energy_weight": 1.0, "error_weight": 0.0}
        if rule == "least_error":
            return {"energy_weight": 0.0, "error_weight": 1.0}
        layer = int(self._layers[s])
        return {
            "energy_weight": float(self.system.config.drift_v) / max(float(self._topk_e[s]), TOPK_FLOOR_J),
            "error_weight": float(self.queue[layer]) / float(self._eps_div[layer]),
        }

    @property
    def topk_energy(self) -> float:
        return float(self._topk_e[min(self._s, self._n_steps - 1)])

    def _observation(self) -> np.ndarray:
        s = min(self._s, self._n_steps - 1)
        obs = self._obs_table[s].copy()
        budget_features(obs, self.obs_slices, self.queue, self._ratio_sum, int(self._layers[s]),
                        int(self._tok[s]), self.env_config["episode_tokens"], self.env_config["queue_clip"],
                        self._cap_factor)
        return obs

    def step(self, action):
        if not self._episode_ready:
            raise RuntimeError("call reset() before step() (the episode has ended or not started)")
        kind, payload = self.action_codec.decode(action)
        s = self._s
        layer = int(self._layers[s])
        t = int(self._tok[s])
        eps = float(self.budgets[layer])
        cap = self._cap_factor * eps
        w = self.serving_weights
        cost, feas, viol = self._cost[t], self._feas[t], self._viol[t]
        res = self._serve(kind, payload, s, layer, cost, feas, viol, cap, w["energy_weight"], w["error_weight"])
        e_topk = float(self._topk_e[s])
        cfg = self.env_config
        r_e, r_a, r_l, cap_violation = reward_terms(res["energy"], e_topk, res["err"], cap, float(self._eps_div[layer]),
                                                    res["lat"], self.floor, cfg["penalty"], cfg["penalty_latency"], self._tau,
                                                    self._worst_error(s) if res["lat"] > 0.0 else 0.0)
        ratio = res["err"] / float(self._eps_div[layer])
        self.queue[layer] = max(self.queue[layer] + ratio - 1.0, 0.0)
        spent = float(self._ratio_sum[layer])
        self._ratio_sum[layer] += ratio
        r_avg = float(average_step_penalty(spent, float(self._ratio_sum[layer]), t, self.env_config["penalty"]))
        self._s = s + 1
        terminated = self._s >= self._n_steps
        excess = 0.0
        info = {
            "energy_j": res["energy"], "topk_energy_j": e_topk, "error_bound": res["err"], "budget": eps, "cap": cap,
            "violation": not within_budget(res["err"], eps),
            "cap_violation": cap_violation,
            "latency_violation": res["lat"], "assignment": res["assignment"], "computed": res["computed"],
            "nodes_used": res["used"], "activated_nodes": res["active"], "queue": self.queue.copy(),
            "reward_energy": r_e, "reward_accuracy": r_a, "reward_latency": r_l,
            "layer": layer, "token": t,
        }
        sums = self._ep_sums
        sums[0] += res["energy"]
        sums[1] += e_topk
        sums[2] += info["violation"]
        sums[3] += res["lat"] > 0.0
        if not terminated:
            self._add_running_metrics(info, self._s)
        else:
            self._add_episode_metrics(info)
            tokens = self.env_config["episode_tokens"]
            mean_ratio = self._ratio_sum / tokens
            excess = average_excess(mean_ratio, tokens)
            info["mean_error_ratio"] = mean_ratio
            self._episode_ready = False
        info["reward_average"] = r_avg
        info.update(constraint_costs(cap_violation and self._avoidable(s, layer, feas, cap), res["lat"], excess))
        reward = r_e + r_a + r_l + r_avg
        self._last = {**res, "s": s, "layer": layer, "budget": eps, "topk_energy": e_topk, "reward": reward}
        return self._format_obs(self._observation()), reward, terminated, False, info
