"""Shared machinery of the siftmoe_gym environments.

Everything that does not depend on the setting lives here: configuration
handling (highway-env style ``default_config()`` merged with a
:class:`~siftmoe_gym.config.SystemConfig`), the observation layout, the
action spaces and their decoding, the serving of node-set actions (an exact
enumeration table when ``(N+1)^k`` is small, :func:`siftmoe_gym.serving.solve_decode`
otherwise), the reward, and the per-episode precomputation that keeps
``step`` cheap.

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
(the same choice as :func:`pick_row`, usually without scanning all
assignments).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ..config import SystemConfig, make_config
from ..energy import LN2, dbm_to_watt
from ..instances import DecodeInstance
from ..bounds import ABS_TOL, REL_TOL, within_budget
from ..serving import TABLE_LIMIT, solve_decode
from ..serving import pick_rows as serving_pick_rows
from ..system import WideSystem
from .episodes import EpisodeCache

SETTINGS = ("decode", "prefill", "fastfading")
ACTION_MODES = ("nodes", "experts", "slots", "discrete")
OBS_MODES = ("flat", "dict")
RENDER_MODES = ("ansi", "rgb_array")

MARGIN_SCALE_DB = 30.0
"""Link margin (dB above the one-token feasibility threshold) is divided by this and clipped to [-1, 1]."""
COST_CLIP = 10.0
"""Per-node activation costs in top-k units are clipped to [0, COST_CLIP]."""
NORM_CLIP = 4.0
"""Hidden-state norm over the layer's typical norm, clipped to [0, NORM_CLIP]."""
SOLO_CLIP = 8.0
"""Solo error bounds in budget units, clipped to [0, SOLO_CLIP]."""
ALLOW_TABLE_LIMIT = 1 << 21
"""Largest L * 2^M * (N+1)^k for which the node-subset -> allowed-assignment table is precomputed."""

_SYSTEM_KEYS = frozenset(f.name for f in dataclasses.fields(SystemConfig)) | {"preset"}
_SHAPE_KEYS = ("num_experts", "top_k", "num_layers", "num_nodes")


# --------------------------------------------------------------------------- serving table
class ServingTable:
    """Every assignment of the top-k slots enumerated once per system.

    ``assign`` (C, k) int (-1 = skip), ``servers`` (C, k) server columns
    (skip = N), ``count`` (C,) distinct computed experts, ``nodes`` (L, C, M+1)
    bool nodes each assignment uses at each layer, and (when small enough)
    ``allow`` (L, 2^M, C): whether the assignment only uses node 0 and the
    nodes of an edge-node bitmask (bit ``m-1`` = node ``m``).
    """

    def __init__(self, system: WideSystem):
        cfg = system.config
        n, k, nl, m1 = cfg.num_experts, cfg.top_k, cfg.num_layers, cfg.num_nodes + 1
        self.enabled = (n + 1) ** k <= TABLE_LIMIT
        if not self.enabled:
            return
        grids = np.stack(np.meshgrid(*[np.arange(n + 1)] * k, indexing="ij"), axis=-1).reshape(-1, k)
        s = np.sort(np.where(grids == n, -1, grids), axis=1)
        count = (s >= 0).sum(axis=1) - np.sum((s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0), axis=1)
        self.servers = grids.astype(np.int64)
        self.assign = np.where(grids == n, -1, grids).astype(np.int64)
        self.count = count.astype(np.float64)
        onehot = np.zeros((nl, n + 1, m1), dtype=bool)
        for lay in range(nl):
            onehot[lay, np.arange(n), system.node_of[lay]] = True
        self.nodes = onehot[:, grids].any(axis=2)  # (L, C, M+1)
        self.nodes_f = self.nodes.astype(np.float64)
        comp = np.zeros((len(grids), n + 1), dtype=bool)
        np.put_along_axis(comp, grids, True, axis=1)
        self.computed = comp[:, :n]
        c = len(grids)
        nsub = 1 << cfg.num_nodes
        self.allow = None
        if nl * nsub * c <= ALLOW_TABLE_LIMIT:
            bits = ((np.arange(nsub)[:, None] >> np.arange(cfg.num_nodes)[None, :]) & 1).astype(bool)
            disallowed = np.concatenate([np.zeros((nsub, 1), bool), ~bits], axis=1).astype(np.float64)
            self.allow = np.einsum("lcm,am->lac", self.nodes_f, disallowed) == 0  # (L, 2^M, C)

    def allowed_row(self, layer: int, mask: int, allowed_nodes: np.ndarray) -> np.ndarray:
        if self.allow is not None:
            return self.allow[layer, mask]
        return self.nodes_f[layer] @ (~allowed_nodes).astype(np.float64) == 0

    def err_rows(self, dk: np.ndarray, gates: np.ndarray) -> np.ndarray:
        """Error bound of every assignment (S, C) from slot rows ``dk`` (S, k, N+1) and gates (S, k)."""
        err = np.zeros((dk.shape[0], len(self.servers)))
        for s in range(dk.shape[1]):
            err += gates[:, s : s + 1] * dk[:, s][:, self.servers[:, s]]
        return err


def err_table(gdk: np.ndarray) -> np.ndarray:
    """Error bound of every enumerated assignment, (..., (N+1)^k), from gate-weighted slot rows ``gdk`` (..., k, N+1).

    The same numbers as :meth:`ServingTable.err_rows` (the slots' terms are
    added in slot order), by broadcasting instead of gathering.
    """
    k, n1 = gdk.shape[-2], gdk.shape[-1]
    lead = gdk.shape[:-2]
    err = gdk[..., 0, :]
    for s in range(1, k):
        err = err[..., None] + gdk[..., s, :].reshape(lead + (1,) * s + (n1,))
    return err.reshape(lead + (n1**k,))


def pick_row(allowed: np.ndarray, err: np.ndarray, energy: np.ndarray, obj: np.ndarray, cap: float) -> tuple[int, bool]:
    """Index of the served assignment (same rule as :func:`siftmoe_gym.serving.solve_decode`)."""
    ok = allowed & within_budget(err, cap)
    if ok.any():
        o = np.where(ok, obj, np.inf)
        best = o.min()
        tie = ok & (o <= best + abs(best) * REL_TOL + ABS_TOL)
        return int(np.argmin(np.where(tie, err, np.inf))), True
    ea = np.where(allowed, err, np.inf)
    tie = ea <= ea.min() * (1.0 + REL_TOL) + ABS_TOL
    return int(np.argmin(np.where(tie, energy, np.inf))), False


def pick_rows(allowed: np.ndarray, err: np.ndarray, energy: np.ndarray, obj: np.ndarray, cap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched :func:`pick_row` over rows (B, C): :func:`siftmoe_gym.serving.pick_rows` on the allowed rows."""
    return serving_pick_rows(obj, np.where(allowed, err, np.inf), energy, allowed & within_budget(err, cap[:, None]))


# --------------------------------------------------------------------------- config helpers
def split_config(spec: Any, env_defaults: Mapping[str, Any]) -> tuple[SystemConfig | None, dict[str, Any], dict[str, Any]]:
    """Split a ``config`` argument into (SystemConfig or None, system-key dict, env-key dict)."""
    if spec is None:
        return None, {}, {}
    if isinstance(spec, SystemConfig):
        return spec, {}, {}
    if isinstance(spec, str):
        return None, {"preset": spec}, {}
    if isinstance(spec, Mapping):
        env_part, sys_part, unknown = {}, {}, []
        for key, value in spec.items():
            if key in env_defaults:
                env_part[key] = value
            elif key in _SYSTEM_KEYS:
                sys_part[key] = value
            else:
                unknown.append(key)
        if unknown:
            raise ValueError(
                f"unknown config key(s) {sorted(map(str, unknown))}; environment keys: {sorted(env_defaults)}; "
                f"system keys: {sorted(_SYSTEM_KEYS)}"
            )
        return None, sys_part, env_part
    raise ValueError(f"config must be a preset name, a mapping or a SystemConfig, got {type(spec).__name__}")


def _check_number(name: str, value: Any, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(float(value)) or value < low:
        raise ValueError(f"invalid {name}={value!r}: must be a finite number >= {low}")
    return float(value)


def one_token_threshold_gain(config: SystemConfig, tau_s: float) -> float:
    """Channel gain at which sending one hidden state within ``tau/2`` needs exactly ``P_max``."""
    noise = float(dbm_to_watt(config.noise_psd_dbm_hz)) * config.bandwidth_hz
    x = config.bits_per_token * LN2 / (config.bandwidth_hz * 0.5 * tau_s)
    with np.errstate(over="ignore"):
        val = noise * math.expm1(min(x, 700.0)) / float(dbm_to_watt(config.p_max_dbm))
    return max(val, 1e-300)


# --------------------------------------------------------------------------- base env
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
        env_part.update(overrides)
        self.action_mode = action_mode
        self.obs_mode = obs_mode
        self.render_mode = render_mode
        self.trace_path = trace
        self.env_config = self._validate_env_config({**defaults, **env_part})
        sys_cfg = base_cfg if base_cfg is not None else make_config(sys_part if sys_part else None)
        self.system = WideSystem(sys_cfg, trace=trace)
        self._setup_static()
        self._build_spaces()
        self._ep_cache = EpisodeCache()
        self._s = 0
        self._episode_ready = False
        self._last: dict[str, Any] | None = None

    def _validate_env_config(self, cfg: dict[str, Any]) -> dict[str, Any]:
        cfg = dict(cfg)
        cfg["penalty"] = _check_number("penalty", cfg["penalty"])
        cfg["penalty_latency"] = _check_number("penalty_latency", cfg["penalty_latency"])
        if cfg["reward_floor_j"] is not None:
            cfg["reward_floor_j"] = _check_number("reward_floor_j", cfg["reward_floor_j"])
            if cfg["reward_floor_j"] <= 0:
                raise ValueError(f"invalid reward_floor_j={cfg['reward_floor_j']!r}: must be > 0 or None")
        if not isinstance(cfg["solo_error_features"], (bool, np.bool_)):
            raise ValueError(f"invalid solo_error_features={cfg['solo_error_features']!r}: must be a bool")
        if "episode_tokens" in cfg:
            v = cfg["episode_tokens"]
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= 100_000:
                raise ValueError(f"invalid episode_tokens={v!r}: must be an integer in [1, 100000]")
            cfg["episode_tokens"] = int(v)
        return cfg

    def _reconfigure(self, spec: Any) -> None:
        """Apply ``reset(options={"config": spec})`` (spaces must keep their shapes)."""
        defaults = self.default_config()
        base_cfg, sys_part, env_part = split_config(spec, defaults)
        new_env = self._validate_env_config({**self.env_config, **env_part})
        if base_cfg is not None or sys_part:
            if base_cfg is not None:
                new_sys = make_config(base_cfg)
            elif "preset" in sys_part:
                new_sys = make_config(sys_part)
            else:
                new_sys = self.system.config.replace(**sys_part)
            system = WideSystem(new_sys, trace=self.system.trace)
            old = self.system.config
            changed = [k for k in _SHAPE_KEYS if getattr(system.config, k) != getattr(old, k)]
            if changed:
                raise ValueError(
                    f"reset options cannot change {changed}: they fix the observation and action spaces; "
                    f"make a new environment instead"
                )
        else:
            system = self.system
        if new_env.get("solo_error_features") != self.env_config.get("solo_error_features"):
            raise ValueError("reset options cannot change solo_error_features: it fixes the observation space")
        self.env_config = new_env
        self._ep_cache.clear()
        if system is not self.system:
            self.system = system
            self._setup_static()

    # ------------------------------------------------------------ static data
    def _setup_static(self) -> None:
        sysm = self.system
        cfg = sysm.config
        self.n_experts, self.top_k, self.n_layers, self.n_nodes = cfg.num_experts, cfg.top_k, cfg.num_layers, cfg.num_nodes
        self.compute_cost = float(cfg.compute_energy_j)
        floor = self.env_config["reward_floor_j"]
        self.floor = float(floor) if floor is not None else self.top_k * self.compute_cost + 1e-12
        self.table = ServingTable(sysm)
        self._pow2 = (1 << np.arange(self.n_nodes)).astype(np.int64)
        self.budgets = np.asarray(sysm.budgets, dtype=np.float64)
        self._eps_div = np.maximum(self.budgets, 1e-12)  # budgets as divisors (a zero budget is allowed)
        self._tau = self._setting_tau()
        self._g_th = one_token_threshold_gain(cfg, self._tau)
        n, m1 = self.n_experts, self.n_nodes + 1
        avail = np.zeros((self.n_layers, m1, n + 1), dtype=bool)
        for lay in range(self.n_layers):
            no = sysm.node_of[lay]
            for m in range(m1):
                avail[lay, m, :n] = (no == 0) | (no == m)
        avail[:, :, n] = True
        self._solo_avail = avail
        subsets = ((np.arange(1 << self.n_nodes)[:, None] >> np.arange(self.n_nodes)[None, :]) & 1).astype(bool)
        self._subset_nodes = np.concatenate([np.ones((len(subsets), 1), bool), subsets], axis=1)
        self._fast_nodes = (
            {subsets[i].astype(np.int8).tobytes(): i for i in range(len(subsets))} if self.n_nodes <= 12 else {}
        )
        # solo_best[l, m, i]: least dissimilarity (or skip cost) of expert i to an expert on node 0 or node m
        dext = sysm.delta_ext  # (L, N, N+1)
        self._solo_best = np.stack(
            [np.where(avail[:, m][:, None, :], dext, np.inf).min(axis=2) for m in range(m1)], axis=1
        )  # (L, M+1, N)
        self._solo_best_rows = np.ascontiguousarray(self._solo_best.transpose(0, 2, 1)).reshape(-1, m1)  # (L*N, M+1)
        self._layer_eye = np.eye(self.n_layers, dtype=np.float32)
        self._arange_k = np.arange(self.top_k)
        self._arange_m1 = np.arange(m1)
        self._thr = self.budgets * (1.0 + REL_TOL) + ABS_TOL  # err <= thr: within budget (same rule as pick_row)
        tab = self.table
        self._set_tables = None
        self._ec_count = None
        self._node_order = None
        if tab.enabled:
            # paid activation: given the activated set, only e_c * |C| varies, so node-set actions are served
            # by the compute energy of each combo; combos sorted by it (stable), with the end of each tie run
            ec = self.compute_cost * tab.count
            self._ec_count = ec
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
        if tab.enabled and m1 <= 12:
            # every combo's node set as an id; energies are summed once per node set
            ids = (tab.nodes.astype(np.int64) << np.arange(m1)).sum(axis=2)  # (L, C)
            sets = ((np.arange(1 << m1)[:, None] >> np.arange(m1)[None, :]) & 1).astype(bool)  # (2^(M+1), M+1)
            self._set_tables = (ids, sets, self.compute_cost * tab.count)

    def _setting_tau(self) -> float:
        return float(self.system.config.tau_s)

    # ---------------------------------------------------------------- spaces
    def _segments(self) -> list[tuple[str, int, float, float]]:
        n, m, nl = self.n_experts, self.n_nodes, self.n_layers
        seg = [
            ("router_probs", n, 0.0, 1.0),
            ("topk_mask", n, 0.0, 1.0),
            ("link_margin", m, -1.0, 1.0),
            ("node_cost", m, 0.0, COST_CLIP),
            ("node_feasible", m, 0.0, 1.0),
            ("layer", nl, 0.0, 1.0),
            ("norm", 1, 0.0, NORM_CLIP),
        ]
        if self.env_config["solo_error_features"]:
            seg.append(("solo_error", m + 1, 0.0, SOLO_CLIP))
        seg.append(("progress", 1, 0.0, 1.0))
        seg.extend(self._extra_segments())
        return seg

    def _extra_segments(self) -> list[tuple[str, int, float, float]]:
        return []

    def _build_spaces(self) -> None:
        seg = self._segments()
        self.obs_segments = seg
        self.obs_slices: dict[str, slice] = {}
        lows, highs, pos = [], [], 0
        for name, size, lo, hi in seg:
            self.obs_slices[name] = slice(pos, pos + size)
            lows.append(np.full(size, lo, np.float32))
            highs.append(np.full(size, hi, np.float32))
            pos += size
        self.obs_dim = pos
        self._obs_low = np.concatenate(lows)
        self._obs_high = np.concatenate(highs)
        if self.obs_mode == "flat":
            self.observation_space = spaces.Box(self._obs_low, self._obs_high, dtype=np.float32)
        else:
            self.observation_space = spaces.Dict(
                {name: spaces.Box(lo, hi, shape=(size,), dtype=np.float32) for name, size, lo, hi in seg}
            )
        n, k, m = self.n_experts, self.top_k, self.n_nodes
        if self.action_mode == "nodes":
            self.action_space = spaces.MultiBinary(m)
        elif self.action_mode == "experts":
            self.action_space = spaces.MultiBinary(n)
        elif self.action_mode == "slots":
            self.action_space = spaces.MultiDiscrete(np.full(k, n + 1, dtype=np.int64))
        else:
            self.action_space = spaces.Discrete(1 << m)

    def _format_obs(self, flat: np.ndarray):
        if self.obs_mode == "flat":
            return flat
        return {name: flat[sl] for name, sl in self.obs_slices.items()}

    # ------------------------------------------------------- episode arrays
    def _static_features(self, probs, topk, layers, norms, dk, gates, gain_db_margin, node_cost, node_feas, e_ref, progress):
        """Static observation rows (..., obs_dim) float32 over any leading shape; dynamic parts are filled per step.

        Every row is computed on its own (the native vector environment calls
        this with leading shape (copies, steps) and gets the single
        environment's rows bit for bit).  ``dk`` is unused (kept for callers).
        """
        sl = self.obs_slices
        lead = probs.shape[:-1]
        obs = np.zeros(lead + (self.obs_dim,), dtype=np.float32)
        obs[..., sl["router_probs"]] = probs
        mask = np.zeros(lead + (self.n_experts,), dtype=np.float32)
        np.put_along_axis(mask, topk, 1.0, axis=-1)
        obs[..., sl["topk_mask"]] = mask
        obs[..., sl["link_margin"]] = np.clip(gain_db_margin / MARGIN_SCALE_DB, -1.0, 1.0)
        if node_cost is not None:
            obs[..., sl["node_cost"]] = np.clip(node_cost[..., 1:] / e_ref[..., None], 0.0, COST_CLIP)
            obs[..., sl["node_feasible"]] = node_feas[..., 1:]
        obs[..., sl["layer"]] = self._layer_eye[layers]
        obs[..., sl["norm"]] = np.clip(norms / self.system.profile.norm_scale[layers], 0.0, NORM_CLIP)[..., None]
        if "solo_error" in sl:
            lay = np.broadcast_to(layers, lead)
            if self.top_k <= 2:  # the same sum, slot by slot (one addition: no rounding-order question)
                flat = self._solo_best_rows  # (L*N, M+1)
                rows = lay * self.n_experts
                solo = gates[..., 0, None] * flat[rows + topk[..., 0]]
                if self.top_k == 2:
                    solo = solo + gates[..., 1, None] * flat[rows + topk[..., 1]]
            else:
                best = self._solo_best[lay[..., None, None], self._arange_m1[:, None], topk[..., None, :]]  # (..., M+1, k)
                solo = np.sum(gates[..., None, :] * best, axis=-1)
            obs[..., sl["solo_error"]] = np.clip(solo / self._eps_div[layers][..., None], 0.0, SOLO_CLIP)
        obs[..., sl["progress"]] = progress[..., None]
        return obs

    def _combo_energies(self, cost: np.ndarray, layer: int | None = None) -> np.ndarray:
        """Energy of every enumerated assignment at every layer: (..., L, C) for node costs (..., M+1)
        (or (..., C) at one ``layer``).

        ``sum of used-node costs + e_c * count``, the formula the served
        energy is reported with, summed once per node set.
        """
        tab = self.table
        if self._set_tables is not None:
            ids, sets, ec_count = self._set_tables
            e_set = np.where(sets, cost[..., None, :], 0.0).sum(axis=-1)  # (..., 2^(M+1))
            return e_set[..., ids if layer is None else ids[layer]] + ec_count
        if layer is not None:
            return np.where(tab.nodes[layer], cost[..., None, :], 0.0).sum(axis=-1) + self.compute_cost * tab.count
        return np.where(tab.nodes, cost[..., None, None, :], 0.0).sum(axis=-1) + self.compute_cost * tab.count

    def _margin_db(self, gains: np.ndarray) -> np.ndarray:
        return 10.0 * np.log10(np.maximum(gains, 1e-300) / self._g_th)

    # --------------------------------------------------------------- actions
    def _bad_action(self, action: Any, why: str) -> ValueError:
        return ValueError(f"invalid action {action!r} for action_mode={self.action_mode!r}: {why}; expected an element of {self.action_space}")

    def decode_action(self, action: Any) -> tuple[str, Any]:
        """Validate ``action`` and return ``("nodes", bitmask)``, ``("experts", mask)`` or ``("slots", servers)``."""
        mode = self.action_mode
        if mode == "discrete":
            if isinstance(action, (bool, np.bool_)):
                raise self._bad_action(action, "a bool is not a node-subset index")
            if isinstance(action, (int, np.integer)):
                a = int(action)
            else:
                arr = np.asarray(action)
                if arr.shape not in ((), (1,)) or arr.dtype.kind not in "iu":
                    raise self._bad_action(action, "need an integer scalar")
                a = int(arr.reshape(-1)[0])
            if not 0 <= a < (1 << self.n_nodes):
                raise self._bad_action(action, f"out of range [0, {(1 << self.n_nodes) - 1}]")
            return "nodes", a
        if mode == "nodes" and type(action) is np.ndarray and action.dtype == np.int8:
            hit = self._fast_nodes.get(action.tobytes()) if action.shape == (self.n_nodes,) else None
            if hit is not None:
                return "nodes", hit
        arr = np.asarray(action)
        shape = (self.n_nodes,) if mode == "nodes" else (self.n_experts,) if mode == "experts" else (self.top_k,)
        if arr.shape != shape:
            raise self._bad_action(action, f"shape {arr.shape} != {shape}")
        kind = arr.dtype.kind
        if kind not in "biuf":
            raise self._bad_action(action, f"dtype {arr.dtype} is not numeric")
        if mode == "slots":
            if kind == "b":
                raise self._bad_action(action, "dtype bool")
            if kind == "f" and not np.all(np.floor(arr) == arr):
                raise self._bad_action(action, "values must be integers")
            srv = arr.astype(np.int64)
            if srv.min() < 0 or srv.max() > self.n_experts:
                raise self._bad_action(action, f"values must be in [0, {self.n_experts}] ({self.n_experts} = skip)")
            return "slots", srv
        if kind != "b":
            if not np.all((arr == 0) | (arr == 1)):
                raise self._bad_action(action, "values must be 0 or 1")
        bits = arr.astype(bool)
        if mode == "nodes":
            return "nodes", int(self._pow2[bits].sum())
        return "experts", bits

    def encode_action(self, assignment: np.ndarray) -> Any:
        """The action of this env's action mode that reproduces ``assignment`` (int (k,), -1 = skip).

        nodes / discrete: the set of edge nodes the assignment uses (node 0 is
        always on); experts: its computed set; slots: the assignment with skip
        written as N.
        """
        a = np.asarray(assignment, dtype=np.int64).reshape(-1)
        if a.shape != (self.top_k,) or a.min() < -1 or a.max() >= self.n_experts:
            raise ValueError(f"assignment must be {self.top_k} ints in [-1, {self.n_experts - 1}], got {assignment!r}")
        if self.action_mode == "slots":
            return np.where(a < 0, self.n_experts, a).astype(np.int64)
        if self.action_mode == "experts":
            out = np.zeros(self.n_experts, dtype=np.int8)
            out[a[a >= 0]] = 1
            return out
        used = np.zeros(self.n_nodes + 1, dtype=bool)
        used[self.system.node_of[self.layer][a[a >= 0]]] = True
        if self.action_mode == "nodes":
            return used[1:].astype(np.int8)
        return int(self._pow2[used[1:]].sum())

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
            active = self._subset_nodes[payload]
            tab = self.table
            if tab.enabled:
                err_c = self._err_tab[s]
                ec = self._ec_count
                allow = tab.allowed_row(layer, payload, active)
                obj = ec if (we == 1.0 and wr == 0.0) else we * ec + wr * err_c
                idx, _ = pick_row(allow, err_c, ec, obj, cap)
                return self._result_from_combo(idx, s, layer, cost, feas, viol, active)
            inst = self._make_instance(np.where(active, 0.0, cost), feas, viol)
            sol = solve_decode(inst, active, cap=cap, energy_weight=we, error_weight=wr)
            servers = np.where(sol.assignment < 0, n, sol.assignment)
        elif kind == "experts":
            computed = payload
            usable = np.append(computed, True)
            servers = np.argmin(np.where(usable[None, :], dk, np.inf), axis=1)
        else:
            servers = payload
        if kind == "experts":
            computed = payload
        else:
            computed = np.zeros(n + 1, dtype=bool)
            computed[servers] = True
            computed = computed[:n]
        used = np.zeros(self.n_nodes + 1, dtype=bool)
        used[node_of[computed]] = True
        active = active if kind == "nodes" else used
        energy = float(np.where(active, cost, 0.0).sum() + self.compute_cost * computed.sum())
        err = float((gates * dk[self._arange_k, servers]).sum())
        lat = float(np.where(active, viol, 0.0).max())
        assignment = np.where(servers >= n, -1, servers).astype(np.int64)
        return {"assignment": assignment, "computed": computed, "energy": energy, "err": err, "lat": lat,
                "used": used, "active": active.copy(), "feasible": bool(feas[active].all())}

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
        active = self._subset_nodes[mask].copy()
        cost, feas, viol = self._step_costs_at(s)
        return {"assignment": tab.assign[idx].copy(), "computed": tab.computed[idx].copy(), "energy": energy,
                "err": err, "lat": lat, "used": used, "active": active, "feasible": bool(feas[active].all()), "s": s,
                "layer": layer, "budget": eps, "topk_energy": e_topk, "reward": reward}

    def _step_costs_at(self, s: int):
        return self._cost, self._feas, self._viol

    EPISODE_METRICS = ("energy_per_token_j", "topk_energy_per_token_j", "saving_pct", "violation_rate",
                       "latency_violation_rate")
    """Keys added to the last step's ``info`` (flat, and together under ``info["episode_metrics"]``)."""

    def _episode_reference(self) -> tuple[int, float]:
        """(tokens of the episode, top-k's energy over the episode)."""
        return self.env_config["episode_tokens"], self._ep_sums[1]

    def _add_episode_metrics(self, info: dict[str, Any]) -> None:
        """Episode-end metrics: energy per token (J), top-k's, saving against top-k (%), violation rates."""
        e, _, nv, nl = self._ep_sums
        tokens, et = self._episode_reference()
        steps = self._n_steps
        m = {
            "energy_per_token_j": e / tokens,
            "topk_energy_per_token_j": et / tokens,
            "saving_pct": 100.0 * (1.0 - e / et) if et > 0 else 0.0,
            "violation_rate": nv / steps,
            "latency_violation_rate": nl / steps,
        }
        info.update(m)
        info["episode_metrics"] = dict(m)

    # ----------------------------------------------------------------- reward
    def _reward(self, energy: float, denom_energy: float, err: float, thr: float, eps: float, lat: float) -> tuple[float, float, float]:
        r_e = -(energy + self.floor) / (denom_energy + self.floor)
        r_a = 0.0 if within_budget(err, thr) else -self.env_config["penalty"] * (1.0 + (err - thr) / eps)
        r_l = -self.env_config["penalty_latency"] * (1.0 + lat / self._tau) if lat > 0.0 else 0.0
        return r_e, r_a, r_l

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if options:
            unknown = sorted(set(options) - {"config"})
            if unknown:
                raise ValueError(f"unknown reset option(s) {unknown}; allowed: ['config']")
            if "config" in options and options["config"] is not None:
                self._reconfigure(options["config"])
        self._s = 0
        self._last = None
        self._new_episode(self.np_random)
        self._episode_ready = True
        return self._format_obs(self._observation()), {"layer": self.layer, "token": self.token}

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='ansi' or 'rgb_array' to gym.make")
            return None
        from . import rendering

        if self.render_mode == "ansi":
            return rendering.render_ansi(self)
        return rendering.render_rgb(self)

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
