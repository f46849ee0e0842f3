"""Native vector environments: all copies stepped at once in numpy.

``gym.make_vec("siftmoe_gym/Decode-v0", num_envs=1024, vectorization_mode="vector_entry_point")``
returns a :class:`DecodeVectorEnv`.  Copy ``i`` reset with ``seed`` uses the
generator ``seeding.np_random(seed + i)`` (as Gymnasium's ``SyncVectorEnv``
does) and draws its episodes from it with the very numbers the single
environment draws; all copies' episodes are then built at once
(:mod:`siftmoe_gym.envs.episodes`, ``episode_tables``) and stepped with the
same arithmetic row by row, so copy ``i`` reproduces the single environment
step for step, bit for bit.  Autoreset follows Gymnasium 1.x's default ``NEXT_STEP``
mode: the call after a termination (or truncation) resets the copy and returns its
first observation with reward 0 and the reset's ``info``.  ``max_episode_steps``
(which Gymnasium passes to vector entry points) truncates as ``TimeLimit`` does
in a ``SyncVectorEnv`` over ``gym.make(id, max_episode_steps=...)``, and
``info`` has that ``SyncVectorEnv``'s keys, values and ``"_key"`` masks.  A
batch of actions is checked whole before any copy moves (a rejected batch
leaves every copy as it was); ``step`` before ``reset`` raises
``gymnasium.error.ResetNeeded`` as ``SyncVectorEnv`` does; pickling and deep
copies leave out the lazily created reset thread pool.  ``reset(options=...)``
takes ``config`` only: Gymnasium's ``reset_mask`` (resetting some copies, for
autoreset mode ``DISABLED``) raises ``ValueError``, since the copies always
reset together.

Episodes have a fixed length, so every copy is always at the same step;
Decode and FastFading are stepped fully batched (exact enumeration table),
systems too large for the table step the copies one after the other inside
the same API (their infos merged by :func:`~siftmoe_gym.envs.vector_info.merge_infos`), and Prefill has its own batched class
(:mod:`siftmoe_gym.envs.prefill_vector`).  Node-set actions are served copy-minor:
for top-2 routing from the slots' ``N+1`` error terms without enumerating the
assignments (:mod:`siftmoe_gym.envs.vector_kernels`: Decode's and Prefill's
``e_c |C|`` rule, FastFading's least-error rule), otherwise over arrays (combos,
copies) with combos sorted by computed-expert count, so the choice of every copy
is a few reductions along contiguous rows (:meth:`SiftMoEVectorEnv._serve_nodes`);
the same choices either way.  Measured rates: ``benchmarks/bench_scale.py`` and
``docs/scaling.md``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from gymnasium.error import ResetNeeded
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from ..bounds import within_budget
from ..energy import TOPK_FLOOR_J
from ..serving import pick_allowed_rows
from ..serving_table import err_table
from .actions import node_sets
from .config import check_count, reset_config
from .decode import DecodeEnv
from .episodes import draw_decode_episodes, draw_fastfading_episodes
from .fastfading import FastFadingEnv
from .metrics import add_episode_metrics_batch
from .observations import as_dict, budget_features
from .rewards import (average_excess, average_step_penalty, avoidable_rows, constraint_costs, least_feasible_terms,
                      reward_terms_batch)
from .vector_info import merge_infos
from .vector_kernels import decode_nodes_int8, serve_assignment_actions, serve_k2, serve_nodes, serving_static, slot_sum

_STACK = {"decode": draw_decode_episodes, "fastfading": draw_fastfading_episodes}
_UNUSED = frozenset(("probs", "norms", "topk_used", "topk_count", "margin"))  # episode tables the steps never read


class SiftMoEVectorEnv(VectorEnv):
    """Batched copies of one siftmoe_gym environment (see module docstring)."""

    env_class: type = DecodeEnv
    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 1, config: Any = None, reset_threads: int | None = None,
                 max_episode_steps: int | None = None, **kwargs: Any):
        num_envs = check_count("num_envs", num_envs)
        self.max_episode_steps = check_count("max_episode_steps", max_episode_steps, none_ok=True)
        self.reset_threads = check_count("reset_threads", min(2, os.cpu_count() or 1) if reset_threads is None else reset_threads)
        self._pool = None
        self._buf = None  # step work arrays (combos, copies)
        if kwargs.get("render_mode") is not None:
            raise ValueError("the native vector environment does not render; use vectorization_mode='sync' for rendering")
        kwargs.pop("render_mode", None)
        self.env = self.env_class(config, **kwargs)
        self.num_envs = int(num_envs)
        self.single_observation_space = self.env.observation_space
        self.single_action_space = self.env.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.render_mode = None
        self.setting = self.env.setting
        self._batched = self.setting in _STACK and self.env.table.enabled
        self._rngs: list[np.random.Generator] | None = None
        self._copies: list[Any] | None = None
        self._autoreset = False
        self._started = False  # reset() called: step() before it raises ResetNeeded
        self._s = 0

    def __getstate__(self) -> dict[str, Any]:
        """Pickling and deep copies leave out the reset thread pool and the step scratch arrays (rebuilt lazily)."""
        state = self.__dict__.copy()
        state["_pool"] = None
        state["_buf"] = None
        return state

    # ---------------------------------------------------------------- reset
    def _new_rngs(self, seed) -> list[np.random.Generator] | None:
        """The copies' generators for ``reset(seed=seed)`` (None: keep the current ones), before any change."""
        n = self.num_envs
        if seed is None:
            return [seeding.np_random(None)[0] for _ in range(n)] if self._rngs is None else None
        if isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)):
            seeds = [int(seed) + i for i in range(n)]
        else:
            seeds = list(seed) if isinstance(seed, (list, tuple, np.ndarray)) else None
            if seeds is None or len(seeds) != n:
                raise ValueError(f"seed must be an int, None or a list of {n} seeds, got {seed!r}")
        return [seeding.np_random(s)[0] for s in seeds]

    def reset(self, *, seed=None, options=None):
        if isinstance(options, Mapping) and "reset_mask" in options:  # Gymnasium's partial reset (autoreset DISABLED)
            raise ValueError("reset_mask is not supported: the native vector env's copies always reset together (every "
                             "episode has the same length); use vectorization_mode='sync' to reset copies one at a time")
        cfg = reset_config(options)
        rngs = self._new_rngs(seed)  # every check before anything changes
        if cfg is not None:
            self.env._reconfigure(cfg)
            self._batched = self.setting in _STACK and self.env.table.enabled
        if rngs is not None:
            self._rngs = rngs
        self._started = True
        return self._reset_all()

    def _mask(self) -> np.ndarray:
        """The all-True ``"_key"`` mask of the copies (shared, read-only)."""
        if getattr(self, "_ones_n", None) is None or len(self._ones_n) != self.num_envs:
            self._ones_n = np.ones(self.num_envs, dtype=bool)
            self._ones_n.flags.writeable = False
        return self._ones_n

    def _reset_all(self):
        """Start every copy's next episode (from its own generator): ``(obs, info)``, ``info`` as a
        ``SyncVectorEnv`` lays out the single environments' reset infos."""
        env = self.env
        self._s = 0
        self._autoreset = False
        if not self._batched:
            if self._copies is None or len(self._copies) != self.num_envs or self._copies[0].system is not env.system:
                self._copies = [copy.copy(env) for _ in range(self.num_envs)]
            obs, infos = [], []
            for c, rng in zip(self._copies, self._rngs):
                c.env_config, c.floor = env.env_config, env.floor
                c._np_random = rng
                c._s = 0
                c._last = None
                c._new_episode(rng)
                c._episode_ready = True
                obs.append(c._observation())
                infos.append({"layer": c.layer, "token": c.token})
            return self._format(np.stack(obs)), merge_infos(infos, self.num_envs, self._add_info)
        tabs = self._episode_tables_chunked()
        self._topk_e = tabs["topk_e"]
        self._topk, self._gates = tabs["topk"], tabs["gates"]
        self._topk_t = np.ascontiguousarray(self._topk.transpose(1, 2, 0))  # (S, k, n): step-major, copy-minor
        self._gates_t = np.ascontiguousarray(self._gates.transpose(1, 2, 0))
        self._obs_t = tabs["obs_table"]  # (S, n, D): step-major, so that a step's rows are contiguous
        self._cost, self._feas, self._viol = tabs["cost"], tabs["feas"], tabs["viol"]
        self._mask_e, self._mask_lat = tabs.get("mask_e"), tabs.get("mask_lat")  # decode: (B, 2^M)
        self._layers = tabs["layers"]
        self._n_steps = len(self._layers)
        self._tokens_per_ep = env.env_config["episode_tokens"]
        n = self.num_envs
        if self.setting == "fastfading":
            self._queue = np.zeros((n, env.n_layers))
            self._ratio_sum = np.zeros((n, env.n_layers))
        self._ar = np.arange(n)
        self._flat_m = self._ar * (1 << env.n_nodes) if self._mask_e is not None else None
        nl, ne = env.n_layers, env.n_experts
        self._least_base = [self._ar * (nl * ne) + lay * ne for lay in range(nl)]  # flat rows of _least_free
        self._sums = np.zeros((4, n))  # energy, top-k energy, violations, latency violations
        ones = self._mask()
        # Decode: each expert's least error term over the latency-feasible servers (the avoidable test)
        self._least_free = least_feasible_terms(env._features.node_best, env.system.delta_ext[:, :, -1], self._feas) \
            if self.setting == "decode" else None
        self._node_onehot = np.zeros((env.n_layers, env.n_experts, env.n_nodes + 1))
        for lay in range(env.n_layers):
            self._node_onehot[lay, np.arange(env.n_experts), env.system.node_of[lay]] = 1.0
        info = {"layer": np.full(n, int(self._layers[0]), dtype=np.int64), "_layer": ones,
                "token": np.zeros(n, dtype=np.int64), "_token": ones}  # the single environment's reset info
        return self._format(self._observation()), info

    RESET_CHUNK = 64
    """Copies whose episodes are built together (keeps the temporaries in cache)."""

    def _episode_tables_chunked(self) -> dict[str, Any]:
        env, n = self.env, self.num_envs
        draw = _STACK[self.setting]
        tokens = env.env_config["episode_tokens"]
        out: dict[str, Any] = {}
        bounds = [(c0, min(c0 + self.RESET_CHUNK, n)) for c0 in range(0, n, self.RESET_CHUNK)]

        def build(b):
            return env.episode_tables(draw(env.system, self._rngs[b[0]:b[1]], tokens))

        def store(b, part):
            for key, val in part.items():
                if key in ("layers", "tok"):
                    out[key] = val
                    continue
                if key in _UNUSED:
                    continue
                if key == "obs_table":  # step-major (S, n, D)
                    if key not in out:
                        out[key] = np.empty((val.shape[1], n) + val.shape[2:], dtype=val.dtype)
                    out[key][:, b[0]:b[1]] = val.transpose(1, 0, 2)
                    continue
                if key not in out:
                    out[key] = np.empty((n,) + val.shape[1:], dtype=val.dtype)
                out[key][b[0]:b[1]] = val

        # chunks are independent (own generators, disjoint rows): numpy and the generators release the GIL,
        # so a second thread builds chunks alongside; results do not depend on the thread count
        store(bounds[0], build(bounds[0]))
        rest = bounds[1:]
        if self.reset_threads > 1 and len(rest) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.reset_threads, thread_name_prefix="siftmoe-reset")
            for b, part in zip(rest, self._pool.map(build, rest)):
                store(b, part)
        else:
            for b in rest:
                store(b, build(b))
        return out

    def _format(self, flat: np.ndarray):
        if self.env.obs_mode == "flat":
            return flat
        return as_dict(flat, self.env.obs_slices)

    def _observation(self) -> np.ndarray:
        s = min(self._s, self._n_steps - 1)
        obs = self._obs_t[s].copy()  # built at reset by the single environment's code, row by row
        if self.setting == "fastfading":
            env = self.env
            budget_features(obs, env.obs_slices, self._queue, self._ratio_sum, int(self._layers[s]),
                            s // env.n_layers, self._tokens_per_ep, env.env_config["queue_clip"],
                            float(env.system.config.eps_max_factor))
        return obs

    # ---------------------------------------------------------------- actions
    def _bad(self, actions, why):
        return ValueError(f"invalid actions for action_mode={self.env.action_mode!r}: {why}; expected {self.num_envs} stacked elements of {self.single_action_space}, i.e. {self.action_space}")

    def _decode_actions(self, actions):
        """The single environment's action codec over the stacked actions (:mod:`siftmoe_gym.envs.actions`):
        the whole batch is checked (``ValueError``) before anything is served."""
        codec = self.env.action_codec
        if codec.mode == "nodes":
            masks = decode_nodes_int8(actions, self.num_envs, codec.n_nodes, codec.pow2)
            if masks is not None:
                return "nodes", masks
        try:
            arr = np.asarray(actions)
        except (ValueError, TypeError) as exc:  # ragged or otherwise not an array
            raise self._bad(actions, f"not an array ({exc})") from None
        return codec.decode_batch(arr, self.num_envs, self._bad)

    # ------------------------------------------------------------------ step
    def _serving_static(self):
        """Per-system arrays of the batched node-set serving (built once per system and table)."""
        env = self.env
        key = getattr(self, "_static_key", None)
        if key is None or key[0] is not env.system or key[1] is not env.table:
            self._static, self._static_key = serving_static(env), (env.system, env.table)
        return self._static

    def _serve_nodes(self, static, layer, payload, topk, gates, cap):
        """:func:`~siftmoe_gym.envs.vector_kernels.serve_nodes` (its scratch arrays kept on the env)."""
        if self._buf is None:
            self._buf = {}
        return serve_nodes(static, layer, payload, topk, gates, cap, self._buf)

    def _begin_step(self, actions):
        """``ResetNeeded`` before the first reset; on the call after an episode's end (``NEXT_STEP``
        autoreset) the copies' reset as the step's result (the actions checked, not served); else None."""
        if not self._started:
            raise ResetNeeded("Cannot call env.step() before calling env.reset()")
        if not self._autoreset:
            return None
        self._decode_actions(actions)
        obs, info = self._reset_all()
        z = np.zeros(self.num_envs, dtype=bool)
        return obs, np.zeros(self.num_envs), z, z.copy(), info

    def step(self, actions):
        reset = self._begin_step(actions)
        if reset is not None:
            return reset
        n = self.num_envs
        if not self._batched:
            return self._step_loop(actions)
        env = self.env
        kind, payload = self._decode_actions(actions)
        s = self._s
        layer = int(self._layers[s])
        eps = float(env.budgets[layer])
        eps_d = float(env._eps_div[layer])
        tab = env.table
        nn = env.n_experts
        ff = self.setting == "fastfading"
        if ff:
            t = s // env.n_layers
            cost, viol = self._cost[:, t], self._viol[:, t]
        else:
            cost, viol = self._cost, self._viol
        e_topk = self._topk_e[:, s]
        if ff:
            cap = env._cap_factor * eps if hasattr(env, "_cap_factor") else env.system.config.eps_max_factor * eps
            if env.env_config["serving_rule"] == "energy":
                we, wr = np.ones(n), np.zeros(n)
            elif env.env_config["serving_rule"] == "least_error":
                we, wr = np.zeros(n), np.ones(n)
            else:
                we = float(env.system.config.drift_v) / np.maximum(e_topk, TOPK_FLOOR_J)
                wr = self._queue[:, layer] / eps_d
        else:
            cap = eps
        gates = self._gates[:, s]
        ar = self._ar
        least_error = ff and env.top_k == 2 and env.env_config["serving_rule"] == "least_error"
        static = self._serving_static() if kind == "nodes" and (not ff or least_error) else None
        dk = env.system.delta_ext[layer][self._topk[:, s]] if static is None or env.top_k > 2 else None  # (n, k, N+1)
        if static is not None and ff:  # the least error over the activated nodes (kernel: the same choices)
            idx, err = serve_k2(static, layer, payload, self._topk_t[s], self._gates_t[s], cap, least_error=True)
            active = np.take(env._subset_nodes, payload, axis=0)
            energy = np.where(active, cost, 0.0).sum(axis=1) + np.take(env._ec_count, idx)
            lat = np.where(active, viol, 0.0).max(axis=1)
            used = np.take(tab.nodes[layer], idx, axis=0)
            assignment = np.take(tab.assign, idx, axis=0)
            computed = np.take(tab.computed, idx, axis=0)
        elif static is not None:
            # paid activation: every node of the action is paid and its latency counts; the slots are served
            # by the compute energy e_c |C|: error bounds with inf for servers off the activated nodes
            idx, err = self._serve_nodes(static, layer, payload, self._topk_t[s], self._gates_t[s], cap)
            flat = self._flat_m + payload  # (copy, node set) in the (n, 2^M) tables
            energy = np.take(self._mask_e, flat) + np.take(env._ec_count, idx)
            lat = np.take(self._mask_lat, flat)
            active = np.take(env._subset_nodes, payload, axis=0)
            used = np.take(tab.nodes[layer], idx, axis=0)
            if err is None:  # the single environment's sum over the slots
                servers = np.take(tab.servers, idx, axis=0)
                err = (gates * np.take_along_axis(dk, servers[:, :, None], axis=2)[:, :, 0]).sum(axis=1)
            assignment = np.take(tab.assign, idx, axis=0)
            computed = np.take(tab.computed, idx, axis=0)
        elif kind == "nodes":
            # paid activation: every node of the action is paid and its latency counts; the slots are
            # served by the compute energy e_c |C| (plus, in P3, the weighted error)
            err_c = err_table(gates[:, :, None] * dk)  # (n, C)
            ec = env._ec_count  # (C,)
            active = env._subset_nodes[payload] if env._subset_nodes is not None else node_sets(payload, env.n_nodes)
            if tab.allow is not None:
                allow = tab.allow[layer][payload]
            else:
                allow = (~active).astype(np.float64) @ tab.nodes_f[layer].T == 0
            if not ff and self._mask_e is not None:
                ecb = np.broadcast_to(ec, err_c.shape)
                idx = pick_allowed_rows(allow, err_c, ecb, ecb, np.full(n, cap))[0]
                energy = self._mask_e[ar, payload] + ec[idx]
                lat = self._mask_lat[ar, payload]
            elif not ff:  # past DISCRETE_MAX_NODES nodes: no per-node-set table, the same row sums
                ecb = np.broadcast_to(ec, err_c.shape)
                idx = pick_allowed_rows(allow, err_c, ecb, ecb, np.full(n, cap))[0]
                energy = np.where(active, cost, 0.0).sum(axis=1) + ec[idx]
                lat = np.where(active, viol, 0.0).max(axis=1)
            else:
                obj = we[:, None] * ec + wr[:, None] * err_c
                idx, _ = pick_allowed_rows(allow, err_c, np.broadcast_to(ec, err_c.shape), obj, np.full(n, cap))
                energy = np.where(active, cost, 0.0).sum(axis=1) + ec[idx]
                lat = np.where(active, viol, 0.0).max(axis=1)
            servers = tab.servers[idx]
            used = tab.nodes[layer][idx]
            if env.top_k <= 2:
                err = err_c[ar, idx]
            else:
                err = (gates * np.take_along_axis(dk, servers[:, :, None], axis=2)[:, :, 0]).sum(axis=1)
            assignment = tab.assign[idx]
            computed = np.take(tab.computed, idx, axis=0)
        else:
            servers, computed, used = serve_assignment_actions(kind, payload, dk, nn, self._node_onehot[layer])
            energy = np.where(used, cost, 0.0).sum(axis=1) + env.compute_cost * computed.sum(axis=1)
            err = (gates * np.take_along_axis(dk, servers[:, :, None], axis=2)[:, :, 0]).sum(axis=1)
            assignment = np.where(servers >= nn, -1, servers)
            active = used
            lat = np.where(used, viol, 0.0).max(axis=1)
        pen = env.env_config["penalty"]
        worst = slot_sum(env._worst_row[layer], self._topk_t[s], self._gates_t[s], gates, self._topk[:, s])
        r_e, r_a, r_l, over = reward_terms_batch(energy, e_topk, err, cap, eps_d, lat, env.floor, pen,
                                                 env.env_config["penalty_latency"], env._tau, worst)
        reward = r_e + r_a + r_l
        violation = ~within_budget(err, eps)
        info = {
            "energy_j": energy, "topk_energy_j": e_topk, "error_bound": err, "budget": np.full(n, eps),
            "violation": violation, "latency_violation": lat, "assignment": assignment, "computed": computed,
            "nodes_used": used, "activated_nodes": active, "reward_energy": r_e, "reward_accuracy": r_a, "reward_latency": r_l,
            "layer": np.full(n, layer), "token": np.full(n, s // env.n_layers),
        }
        sums = self._sums
        sums[0] += energy
        sums[1] += e_topk
        sums[2] += violation
        sums[3] += lat > 0.0
        self._s = s + 1
        terminated = self._s >= self._n_steps
        if ff:
            ratio = err / eps_d
            self._queue[:, layer] = np.maximum(self._queue[:, layer] + ratio - 1.0, 0.0)
            spent = self._ratio_sum[:, layer].copy()
            self._ratio_sum[:, layer] += ratio
            r_avg = average_step_penalty(spent, self._ratio_sum[:, layer], s // env.n_layers, pen)
            info["cap"] = np.full(n, cap)
            info["cap_violation"] = over  # err over the cap: the accuracy term's test
            info["queue"] = self._queue.copy()
            excess = np.zeros(n)
            if terminated:
                tokens = self._tokens_per_ep
                mean_ratio = self._ratio_sum / tokens
                excess = average_excess(mean_ratio, tokens)
                info["mean_error_ratio"] = mean_ratio
            info["reward_average"] = r_avg
            info.update(constraint_costs(self._avoidable(over, s, layer, cap), lat, excess))
            reward = reward + r_avg
        else:
            least = slot_sum(self._least_free.reshape(-1), self._topk_t[s], self._gates_t[s], gates, self._topk[:, s],
                             self._least_base[layer])
            info.update(constraint_costs(violation & within_budget(least, eps), lat))
        ones = self._mask()
        e, et, nv, nl = self._sums  # the episode's metrics so far (the whole episode's on its last step)
        if terminated:
            add_episode_metrics_batch(info, e, et, nv, nl, self._tokens_per_ep, self._n_steps, ones)
        else:
            add_episode_metrics_batch(info, e, et, nv, nl, self._s / env.n_layers, self._s, ones)
        return self._end_step(info, reward, terminated)

    def _end_step(self, info, reward, terminated: bool):
        """The step's result once ``info`` is filled: every key gets its all-True ``"_key"`` mask (as a
        ``SyncVectorEnv`` lays out the copies' infos), ``max_episode_steps`` truncates, and the next call
        autoresets after an episode's end."""
        ones = self._mask()
        for key in list(info):
            info["_" + key] = ones
        truncated = self._truncated()
        self._autoreset = terminated or truncated
        n = self.num_envs
        return self._format(self._observation()), reward, np.full(n, terminated), np.full(n, truncated), info

    def _avoidable(self, over: np.ndarray, s: int, layer: int, thr: float) -> np.ndarray:
        """``over`` and'ed with whether a decision within the latency budget keeps each copy's error within
        ``thr`` (:func:`~siftmoe_gym.envs.rewards.avoidable_rows`, computed for the violating copies only)."""
        out = np.zeros(len(over), dtype=bool)
        idx = np.flatnonzero(over)
        if len(idx):
            env = self.env
            feas = self._feas[idx, s // env.n_layers] if self.setting == "fastfading" else self._feas[idx]
            dk = env.system.delta_ext[layer][self._topk[idx, s]]
            out[idx] = avoidable_rows(dk, self._gates[idx, s], feas, env._node_ext[layer], thr)
        return out

    def _truncated(self) -> bool:
        """Whether ``max_episode_steps`` ends the episode at the step just taken (``TimeLimit``'s test)."""
        return self.max_episode_steps is not None and self._s >= self.max_episode_steps

    def _step_loop(self, actions):
        """Copies stepped one after the other (systems too large for the table), after the whole batch has
        been checked."""
        n = self.num_envs
        env = self.env
        self._decode_actions(actions)  # raises before any copy moves
        arr = np.asarray(actions)
        obs, rew, term, infos = [], np.zeros(n), np.zeros(n, dtype=bool), []
        for i, c in enumerate(self._copies):
            o, r, te, _, inf = c.step(arr[i])
            obs.append(o if env.obs_mode == "flat" else np.concatenate([o[k] for k in env.obs_slices]))
            rew[i], term[i] = r, te
            infos.append(inf)
        infos = merge_infos(infos, n, self._add_info)  # exactly SyncVectorEnv's layout
        self._s += 1
        truncated = self._truncated()
        self._autoreset = bool(term.all()) or truncated
        return self._format(np.stack(obs)), rew, term, np.full(n, truncated), infos

    # --------------------------------------------------------------- extras
    def close_extras(self, **kwargs):
        self._copies = None
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


class DecodeVectorEnv(SiftMoEVectorEnv):
    """Native vector version of ``siftmoe_gym/Decode-v0``."""

    env_class = DecodeEnv


class FastFadingVectorEnv(SiftMoEVectorEnv):
    """Native vector version of ``siftmoe_gym/FastFading-v0``."""

    env_class = FastFadingEnv
