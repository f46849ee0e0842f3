"""The Gymnasium shell shared by the siftmoe_gym environments.

:class:`SiftMoEEnv` holds what does not depend on the setting: reset, the
configuration (highway-env style ``default_config()`` merged with a
:class:`~siftmoe_gym.config.SystemConfig`), the per-system setup, the
serving of decoded actions and the per-episode precomputation that keeps
``step`` cheap.  Each job with its own rules lives in its own module:

- :mod:`siftmoe_gym.envs.config`: splitting and checking the ``config`` argument;
- :mod:`siftmoe_gym.envs.actions`: the action modes (space, decoding, encoding);
- :mod:`siftmoe_gym.envs.observations`: the observation blocks, their layout and static features;
- :mod:`siftmoe_gym.envs.rewards`: the reward formula;
- :mod:`siftmoe_gym.envs.metrics`: the episode-end metrics;
- :mod:`siftmoe_gym.serving`: the serving rule (:func:`~siftmoe_gym.serving.pick_row`
  over the enumeration table :class:`~siftmoe_gym.serving_table.ServingTable` when
  ``(N+1)^k`` is small, :func:`~siftmoe_gym.serving_free.serve_nodes` otherwise).

Per episode the environment precomputes, for every step ``s`` of the
episode, the arrays the step needs (router rows, the dissimilarity rows of
the top-k slots, top-k's node set, the error bound of every enumerated
assignment, the static part of the observation).  ``step`` then only
gathers rows, serves the action and updates the setting's state.

Episodes are drawn and built by batched code shared with the native vector
environment (:mod:`siftmoe_gym.envs.episodes`): every value is computed row
by row, so a batch of copies gives each copy the single environment's
numbers bit for bit.  A single environment draws its next few episodes in
one batch (:class:`~siftmoe_gym.envs.episodes.EpisodeCache`, invisible:
``np_random`` is left exactly where one-at-a-time drawing would leave it).
Decode serves node-set actions from per-episode tables sorted by energy
(the same choice as :func:`~siftmoe_gym.serving.pick_row`, usually without
scanning all assignments).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from ..bounds import ABS_TOL, REL_TOL
from ..config import make_config
from ..instances import DecodeInstance
from ..serving import pick_row
from ..serving_free import serve_nodes
from ..serving_table import ServingTable
from ..system import WideSystem, explicit_keys
from .actions import ACTION_MODES, DISCRETE_MAX_NODES, make_action_codec, node_sets
from .config import check_env_value, keep_shape, reset_config, split_config
from .episodes import EpisodeCache
from .metrics import EPISODE_METRICS, add_episode_metrics
from .observations import (
    OBS_MODES, FeatureTables, ObservationLayout, as_dict, link_margin_db, one_token_threshold_gain, segments,
    static_features,
)
from .rewards import avoidable_rows, worst_error_rows

SETTINGS = ("decode", "prefill", "fastfading")
RENDER_MODES = ("ansi", "rgb_array", "human")


class SiftMoEEnv(gym.Env):
    """Base class of the three settings; see the concrete classes for the documentation."""

    metadata = {"render_modes": list(RENDER_MODES), "render_fps": 4}
    setting: str = "decode"

    # ----------------------------------------------------------------- config
    @classmethod
    def default_config(cls) -> dict[str, Any]:
        """Environment-level configuration keys and their defaults.

        Any :class:`~siftmoe_gym.config.SystemConfig` field (and ``preset``)
        may be given in the same dict.
        """
        return {
            "penalty": 10.0,
            "penalty_latency": 50.0,
            "reward_floor_j": None,
            "solo_error_features": True,
        }

    def __init__(
        self,
        config: Any = None,
        *,
        trace: Any = None,
        action_mode: str = "nodes",
        obs_mode: str = "flat",
        penalty: float | None = None,
        penalty_latency: float | None = None,
        episode_tokens: int | None = None,
        render_mode: str | None = None,
    ):
        if action_mode not in ACTION_MODES:
            raise ValueError(f"invalid action_mode={action_mode!r}: must be one of {ACTION_MODES}")
        if obs_mode not in OBS_MODES:
            raise ValueError(f"invalid obs_mode={obs_mode!r}: must be one of {OBS_MODES}")
        if render_mode is not None and render_mode not in RENDER_MODES:
            raise ValueError(f"invalid render_mode={render_mode!r}: must be None or one of {RENDER_MODES}")
        self._window = None
        if render_mode == "human":  # a pygame window drawn after every reset and step (fails here without pygame)
            from .rendering import HumanWindow

            self._window = HumanWindow(self.metadata["render_fps"])
            cls_step = self.step

            def step_and_draw(action):
                out = cls_step(action)
                self.render()
                return out

            self.step = step_and_draw
        defaults = self.default_config()
        overrides: dict[str, Any] = {}
        if penalty is not None:
            overrides["penalty"] = penalty
        if penalty_latency is not None:
            overrides["penalty_latency"] = penalty_latency
        if episode_tokens is not None:
            if "episode_tokens" not in defaults:
                raise ValueError(
                    f"{type(self).__name__} takes no episode_tokens: its episode is one prefill block of "
                    f"config.prefill_tokens tokens"
                )
            overrides["episode_tokens"] = episode_tokens
        base_cfg, sys_part, env_part = split_config(config, defaults)
        clash = sorted(k for k in overrides if k in env_part and env_part[k] != overrides[k])
        if clash:  # the same key given twice with two values: refused, not one of them picked
            raise ValueError(f"{clash[0]} given twice: {clash[0]}={overrides[clash[0]]!r} and "
                             f"config[{clash[0]!r}]={env_part[clash[0]]!r}; give one")
        env_part.update(overrides)
        self.action_mode = action_mode
        self.obs_mode = obs_mode
        self.render_mode = render_mode
        self.trace_path = trace
        self.env_config = self._validate_env_config({**defaults, **env_part})
        sys_cfg = base_cfg if base_cfg is not None else make_config(sys_part if sys_part else None)
        self.system = WideSystem(sys_cfg, trace=trace, explicit=explicit_keys(base_cfg if base_cfg is not None else sys_part))
        self._setup_static()
        self._build_spaces()
        self._ep_cache = EpisodeCache(self._episode_batch_limit())
        self._s = 0
        self._episode_ready = False
        self._last: dict[str, Any] | None = None

    def _validate_env_config(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """The environment keys checked (:data:`~siftmoe_gym.envs.config.ENV_RANGES`): ``ValueError`` naming the key."""
        cfg = dict(cfg)
        cfg["penalty"] = check_env_value("penalty", cfg["penalty"])
        cfg["penalty_latency"] = check_env_value("penalty_latency", cfg["penalty_latency"])
        if cfg["reward_floor_j"] is not None:
            cfg["reward_floor_j"] = check_env_value("reward_floor_j", cfg["reward_floor_j"])
        if not isinstance(cfg["solo_error_features"], (bool, np.bool_)):
            raise ValueError(f"invalid solo_error_features={cfg['solo_error_features']!r}: must be a bool")
        if "episode_tokens" in cfg:
            cfg["episode_tokens"] = check_env_value("episode_tokens", cfg["episode_tokens"])
        return cfg

    def _reconfigure(self, spec: Any) -> None:
        """Apply ``reset(options={"config": spec})`` (spaces must keep their shapes)."""
        defaults = self.default_config()
        base_cfg, sys_part, env_part = split_config(spec, defaults)
        new_env = self._validate_env_config({**self.env_config, **env_part})
        if new_env.get("solo_error_features") != self.env_config.get("solo_error_features"):
            raise ValueError("reset options cannot change solo_error_features: it fixes the observation space")
        if base_cfg is not None or sys_part:
            if base_cfg is not None:
                new_sys = make_config(base_cfg)
            elif "preset" in sys_part:
                new_sys = make_config(sys_part)
            else:
                new_sys = self.system.config.replace(**sys_part)
            if self.system.trace is None:  # the config alone fixes the spaces: refuse before building anything
                keep_shape(new_sys, self.system.config)
            system = WideSystem(new_sys, trace=self.system.trace,
                                explicit=explicit_keys(base_cfg if base_cfg is not None else sys_part))
            keep_shape(system.config, self.system.config)
        else:
            system = self.system
        self.env_config = new_env
        self._ep_cache.clear()
        if system is not self.system:
            self.system = system
            self._setup_static()
        else:  # the one attribute derived from an environment key (reward_floor_j)
            self.floor = self._reward_floor()
        self._ep_cache.max_batch = self._episode_batch_limit()  # (episode_tokens may have changed)

    # ------------------------------------------------------------ static data
    def _setup_static(self) -> None:
        sysm = self.system
        cfg = sysm.config
        self.n_experts, self.top_k, self.n_layers, self.n_nodes = cfg.num_experts, cfg.top_k, cfg.num_layers, cfg.num_nodes
        self.compute_cost = float(cfg.compute_energy_j)
        # per layer and expert, the largest dissimilarity to any server (or the skip cost): the worst error rows
        self._worst_row = worst_error_rows(sysm.delta_ext)  # (L, N)
        self._node_ext = np.concatenate([sysm.node_of, np.zeros((sysm.node_of.shape[0], 1), np.int64)], axis=1)  # (L, N+1)
        self.floor = self._reward_floor()
        self.table = ServingTable(sysm)
        self.budgets = np.asarray(sysm.budgets, dtype=np.float64)
        self._eps_div = np.maximum(self.budgets, 1e-12)  # budgets as divisors (a zero budget is allowed)
        self._budget_list, self._eps_div_list = self.budgets.tolist(), self._eps_div.tolist()  # as Python floats
        self._tau = self._setting_tau()
        self._g_th = one_token_threshold_gain(cfg, self._tau)
        self._features = FeatureTables(sysm, self._eps_div)
        # node set of every edge-node bitmask (bit m-1 = node m), node 0 always in: (2^M, M+1); none past
        # DISCRETE_MAX_NODES nodes (node sets are then decoded when needed, node_sets)
        self._subset_nodes = node_sets(np.arange(1 << self.n_nodes), self.n_nodes) \
            if self.n_nodes <= DISCRETE_MAX_NODES else None
        self._arange_k = np.arange(self.top_k)
        self._thr = self.budgets * (1.0 + REL_TOL) + ABS_TOL  # err <= thr: within budget (same rule as pick_row)
        tab = self.table
        self._ec_count = None
        self._node_order = None
        if tab.enabled:
            # paid activation: given the activated set, only e_c * |C| varies, so node-set actions are served
            # by the compute energy of each combo; combos sorted by it (stable), with the end of each tie run
            ec = self.compute_cost * tab.count
            self._ec_count = ec
            self._ec_list = ec.tolist()
            order = np.argsort(ec, kind="stable")
            e_sorted = ec[order]
            lim = e_sorted + np.abs(e_sorted) * REL_TOL + ABS_TOL
            tie_end = (e_sorted[None, :] <= lim[:, None]).sum(axis=1) - 1
            allow_sorted = tab.allow[:, :, order] if tab.allow is not None else None  # (L, 2^M, C)
            self._node_order = (order, tie_end, allow_sorted)
            # count levels (exact lexicographic (count, error) choice in the vector env) when counts never tie
            # (adjacent counts differ by e_c, more than pick_row's tie tolerance unless e_c is ~0)
            levels = np.unique(tab.count)
            distinct = self.compute_cost > float(ec.max()) * 2 * REL_TOL + 2 * ABS_TOL
            self._count_levels = [np.flatnonzero(tab.count == c) for c in levels] if distinct else None

    EPISODE_BATCH_BYTES = 64 << 20  # about the most memory a single environment's drawn-ahead episodes may take

    def _episode_batch_limit(self) -> int:
        """Episodes the :class:`EpisodeCache` may draw at once: 16, fewer when their step tables would pass
        ``EPISODE_BATCH_BYTES`` (a deepseek-v3 episode: about 40 MB); drawing ahead is invisible either way."""
        steps = self.env_config.get("episode_tokens", self.system.config.prefill_tokens) * self.n_layers
        combos = len(self.table.servers) if self.table.enabled else 0
        per_step = 8 * (self.top_k * (self.n_experts + 1) + 2 * self.n_experts + combos) + 4 * self.obs_dim
        return int(max(1, min(16, self.EPISODE_BATCH_BYTES // max(1, steps * per_step))))

    def _reward_floor(self) -> float:
        """``f``: ``reward_floor_j``, or ``k e_c + 1e-12`` J when it is None."""
        floor = self.env_config["reward_floor_j"]
        return float(floor) if floor is not None else self.top_k * self.compute_cost + 1e-12

    def _setting_tau(self) -> float:
        return float(self.system.config.tau_s)

    # ---------------------------------------------------------------- spaces
    def _extra_segments(self) -> list[tuple[str, int, float, float]]:
        """The setting's own observation blocks (name, size, low, high), after the common ones."""
        return []

    def _build_spaces(self) -> None:
        segs = segments(self.n_experts, self.n_nodes, self.n_layers, self.top_k, self.env_config["solo_error_features"],
                        self._extra_segments())
        layout = ObservationLayout(segs, self.obs_mode)
        self.obs_layout = layout
        self.obs_segments = layout.segments
        self.obs_slices = layout.slices
        self.obs_dim = layout.dim
        self._obs_low, self._obs_high = layout.low, layout.high
        self.observation_space = layout.space
        self.action_codec = make_action_codec(self.action_mode, self.n_experts, self.top_k, self.n_nodes)
        self.action_space = self.action_codec.space

    def _format_obs(self, flat: np.ndarray):
        if self.obs_mode == "flat":
            return flat
        return as_dict(flat, self.obs_slices)

    # ------------------------------------------------------- episode arrays
    def _static_features(self, probs, topk, layers, norms, dk, gates, gain_db_margin, node_cost, node_feas, e_ref, progress):
        """:func:`~siftmoe_gym.envs.observations.static_features` with this environment's layout and tables
        (``dk`` is unused, kept for callers)."""
        return static_features(self.obs_layout, self._features, probs, topk, layers, norms, gates, gain_db_margin,
                               node_cost, node_feas, e_ref, progress)

    def _margin_db(self, gains: np.ndarray) -> np.ndarray:
        return link_margin_db(gains, self._g_th)

    # --------------------------------------------------------------- actions
    def decode_action(self, action: Any) -> tuple[str, Any]:
        """Validate ``action`` and return ``("nodes", bitmask)``, ``("experts", mask)`` or ``("slots", servers)``
        (:mod:`siftmoe_gym.envs.actions`)."""
        return self.action_codec.decode(action)

    def encode_action(self, assignment: np.ndarray) -> Any:
        """The action of this env's action mode that reproduces ``assignment`` (int (k,), -1 = skip).

        nodes / discrete: the set of edge nodes the assignment uses (node 0 is
        always on); experts: its computed set; slots: the assignment with skip
        written as N.
        """
        return self.action_codec.encode(assignment, lambda: self.system.node_of[self.layer])

    # --------------------------------------------------------------- serving
    def _serve(self, kind: str, payload: Any, s: int, layer: int, cost: np.ndarray, feas: np.ndarray, viol: np.ndarray,
               cap: float, we: float, wr: float) -> dict[str, Any]:
        """Serve an action; returns assignment, computed mask, energy, error, latency violation, nodes used
        and nodes activated (paid).

        A node-set action activates (and pays for) every node in it: the energy is the activated nodes'
        costs plus ``e_c`` per computed expert, the latency violation the largest over the activated nodes,
        and the slots are served by the assignment over node 0 and the activated nodes minimizing
        ``we * e_c |C| + wr * err`` within ``cap`` (``solve_decode`` with the activated nodes' costs set to 0).
        """
        n = self.n_experts
        dk = self._dk[s]  # (k, N+1)
        gates = self._gates[s]
        node_of = self.system.node_of[layer]
        if kind == "nodes":
            active = self._active_nodes(payload)
            tab = self.table
            if tab.enabled:
                err_c = self._err_tab[s]
                ec = self._ec_count
                allow = tab.allowed_row(layer, payload, active)
                obj = ec if (we == 1.0 and wr == 0.0) else we * ec + wr * err_c
                idx, _ = pick_row(allow, err_c, ec, obj, cap)
                return self._result_from_combo(idx, s, layer, cost, feas, viol, active)
            # solve_decode on the instance with the activated nodes' costs set to 0, without building it
            assign = serve_nodes(dk, gates, node_of, active, cap, self.compute_cost, we, wr)
            servers = assign  # -1 (skip) indexes dk's last column, the skip cost
            computed = np.zeros(n, dtype=bool)
            computed[assign[assign >= 0]] = True
        elif kind == "experts":
            computed = payload
            servers = np.argmin(np.where(np.append(computed, True)[None, :], dk, np.inf), axis=1)
        else:
            servers = payload
            computed = np.zeros(n + 1, dtype=bool)
            computed[servers] = True
            computed = computed[:n]
        used = np.zeros(self.n_nodes + 1, dtype=bool)
        used[node_of[computed]] = True
        active = active if kind == "nodes" else used
        energy = float(np.where(active, cost, 0.0).sum() + self.compute_cost * np.count_nonzero(computed))
        err = float((gates * dk[self._arange_k, servers]).sum())
        lat = float(np.where(active, viol, 0.0).max())
        assignment = assign if kind == "nodes" else np.where(servers >= n, -1, servers).astype(np.int64)
        return {"assignment": assignment, "computed": computed, "energy": energy, "err": err, "lat": lat,
                "used": used, "active": active.copy(), "feasible": bool(feas[active].all())}

    def _active_nodes(self, mask: int) -> np.ndarray:
        """The node set (M+1,) bool of edge-node bitmask ``mask`` (possibly a shared table row: read only)."""
        return self._subset_nodes[mask] if self._subset_nodes is not None else node_sets(mask, self.n_nodes)

    def _result_from_combo(self, idx: int, s: int, layer: int, cost, feas, viol, active) -> dict[str, Any]:
        """Result of serving combo ``idx`` with the node set ``active`` (M+1,) activated and paid."""
        tab = self.table
        servers = tab.servers[idx]
        used = tab.nodes[layer, idx]
        energy = float(np.where(active, cost, 0.0).sum() + self.compute_cost * tab.count[idx])
        err = float((self._gates[s] * self._dk[s][self._arange_k, servers]).sum())
        lat = float(np.where(active, viol, 0.0).max())
        return {"assignment": tab.assign[idx].copy(), "computed": tab.computed[idx].copy(), "energy": energy,
                "err": err, "lat": lat, "used": used.copy(), "active": active.copy(), "feasible": bool(feas[active].all())}

    def _topk_energy(self, s: int, cost: np.ndarray) -> float:
        return float(np.where(self._topk_used[s], cost, 0.0).sum() + self.compute_cost * self._topk_count[s])

    def _worst_error(self, s: int) -> float:
        """The largest error bound any decision can reach at step ``s``: ``sum_i g_i max_j Delta_ext[i, j]``
        (the reward's ``err_worst``, :mod:`~siftmoe_gym.envs.rewards`)."""
        return float((self._gates[s] * self._worst_row[int(self._layers[s])][self._topk[s]]).sum())

    def _avoidable(self, s: int, layer: int, feas: np.ndarray, thr: float) -> bool:
        """Whether some decision on node 0 and the latency-feasible nodes (``feas`` (M+1,)) keeps step ``s``'s
        error bound within ``thr``: the least bound ``sum_i g_i min_j Delta_ext[i, j]`` over those servers
        and skip (slots are independent) passes :func:`~siftmoe_gym.bounds.within_budget`."""
        return bool(avoidable_rows(self._dk[s][None], self._gates[s][None], feas[None], self._node_ext[layer], thr)[0])

    def _make_instance(self, cost, feas, viol, budget: float | None = None) -> DecodeInstance:
        s, layer = self._s, self.layer
        dext = self.system.delta_ext[layer]
        n = self.n_experts
        return DecodeInstance(
            gates=self._gates[s].copy(), topk=self._topk[s].copy(), delta=dext[:, :n], sigma=dext[:, n],
            node_of=self.system.node_of[layer], node_cost=cost.copy(), node_feasible=feas.copy(),
            compute_cost=self.compute_cost, budget=float(self.budgets[layer] if budget is None else budget),
            node_violation_s=viol.copy(), layer=layer, _dext=dext,
        )

    def _prepare_steps(self, probs, topk, gates, norms, layers) -> None:
        """Common per-episode arrays over the S steps."""
        self._probs, self._topk, self._gates, self._norms, self._layers = probs, topk, gates, norms, layers
        self._dk = self.system.delta_ext[layers[:, None], topk]  # (S, k, N+1)
        self._arange_k = np.arange(self.top_k)
        no = self.system.node_of[layers[:, None], topk]  # (S, k)
        used = np.zeros((len(layers), self.n_nodes + 1), dtype=bool)
        np.put_along_axis(used, no, True, axis=1)
        self._topk_used = used
        st = np.sort(topk, axis=1)
        self._topk_count = 1 + np.sum(st[:, 1:] != st[:, :-1], axis=1)
        self._err_tab = self.table.err_rows(self._dk, gates) if self.table.enabled else None

    # ------------------------------------------------------- last step, metrics
    @property
    def _last(self) -> dict[str, Any] | None:
        """What the last step did (for rendering); built lazily when the step stored a compact tuple."""
        v = self._last_v
        if type(v) is tuple:
            v = self._last_from_tuple(v)
            self._last_v = v
        return v

    @_last.setter
    def _last(self, value) -> None:
        self._last_v = value

    def _last_from_tuple(self, t: tuple) -> dict[str, Any]:
        s, idx, mask, energy, err, lat, layer, eps, e_topk, reward = t
        tab = self.table
        used = tab.nodes[layer, idx].copy()
        active = self._active_nodes(mask).copy()
        cost, feas, viol = self._step_costs_at(s)
        return {"assignment": tab.assign[idx].copy(), "computed": tab.computed[idx].copy(), "energy": energy,
                "err": err, "lat": lat, "used": used, "active": active, "feasible": bool(feas[active].all()), "s": s,
                "layer": layer, "budget": eps, "topk_energy": e_topk, "reward": reward}

    def _step_costs_at(self, s: int):
        return self._cost, self._feas, self._viol

    EPISODE_METRICS = EPISODE_METRICS
    """Keys every step's ``info`` carries (flat, and together under ``info["episode_metrics"]``): the episode's
    metrics so far (:mod:`siftmoe_gym.envs.metrics`)."""

    def _episode_reference(self) -> tuple[int, float]:
        """(tokens of the episode, top-k's energy over the episode)."""
        return self.env_config["episode_tokens"], self._ep_sums[1]

    def _add_episode_metrics(self, info: dict[str, Any]) -> None:
        """The metrics of the whole episode, on its last step (:mod:`siftmoe_gym.envs.metrics`)."""
        e, _, nv, nl = self._ep_sums
        tokens, et = self._episode_reference()
        add_episode_metrics(info, e, et, nv, nl, tokens, self._n_steps)

    def _add_running_metrics(self, info: dict[str, Any], steps: int) -> None:
        """The metrics of the episode's first ``steps`` steps, on a step before the last (``steps / L`` tokens)."""
        e, et, nv, nl = self._ep_sums
        add_episode_metrics(info, e, et, nv, nl, steps / self.n_layers, steps)

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        cfg = reset_config(options)
        if cfg is not None:  # checked whole (the seed too) before anything changes: a rejection leaves all as it was
            gym.utils.seeding.np_random(seed) if seed is not None else None
            self._reconfigure(cfg)
        super().reset(seed=seed)
        self._s = 0
        self._last = None
        self._new_episode(self.np_random)
        self._episode_ready = True
        out = self._format_obs(self._observation()), {"layer": self.layer, "token": self.token}
        if self.render_mode == "human":
            self.render()
        return out

    def render(self):
        """``"ansi"``: a text table; ``"rgb_array"``: the frame of :func:`~siftmoe_gym.envs.rendering.render_rgb`;
        ``"human"``: that frame in a pygame window (drawn after every reset and step; needs the ``render`` extra)."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='ansi', 'rgb_array' or 'human' "
                            "to gym.make")
            return None
        from . import rendering

        if self.render_mode == "ansi":
            return rendering.render_ansi(self)
        frame = rendering.render_rgb(self)
        if self.render_mode == "human":
            self._window.show(frame)
            return None
        return frame

    def close(self):
        if getattr(self, "_window", None) is not None:
            self._window.close()
        super().close()

    # ---------------------------------------------------------- to override
    @property
    def layer(self) -> int:
        return int(self._layers[min(self._s, len(self._layers) - 1)])

    @property
    def token(self) -> int:
        raise NotImplementedError

    def _new_episode(self, rng: np.random.Generator) -> None:
        raise NotImplementedError

    def _observation(self) -> np.ndarray:
        raise NotImplementedError

    @property
    def topk_energy(self) -> float:
        """Top-k's energy (J) for the decision the next step takes (floor excluded)."""
        cost, _, _ = self._step_costs()
        return self._topk_energy(min(self._s, len(self._layers) - 1), cost)

    def _step_costs(self):
        raise NotImplementedError

    @property
    def instance(self) -> DecodeInstance:
        """The :class:`DecodeInstance` of the decision the next ``step`` takes."""
        cost, feas, viol = self._step_costs()
        return self._make_instance(cost, feas, viol)

    block_instance = None
    token_in_block = None
    queue = None
    cap_budget = None
