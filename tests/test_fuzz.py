"""Fuzzing every entry point: random configs, random action batches (valid and invalid) and random trace files
through single and vector environments.

The invariant everywhere: either a clear error of the documented type (``ValueError``, of which ``TraceError``
is one; never IndexError / KeyError / TypeError / ZeroDivisionError / FloatingPointError, never a warning),
or a finite observation inside the observation space, a finite reward and finite ``info`` numbers; after a
rejected action the environment is exactly as it was (its next valid step equals a fresh environment's).

Examples are few and small (``derandomize=True``: the same examples every run); the module runs in well under a
minute.
"""

from __future__ import annotations

import json
import math
import re
import warnings

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import siftmoe_gym  # noqa: F401
from siftmoe_gym.config import MODEL_RANGES, SYSTEM_RANGES
from siftmoe_gym.envs.config import ENV_RANGES

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SETTINGS = {"decode": "siftmoe_gym/Decode-v0", "prefill": "siftmoe_gym/Prefill-v0", "fastfading": "siftmoe_gym/FastFading-v0"}
SMALL_INTS = {  # shape keys: small valid values (their large ends are costly, not arithmetic edges)
    "num_experts": (2, 10), "top_k": (1, 3), "num_layers": (1, 3), "num_nodes": (1, 5), "local_capacity": (0, 3),
    "node_capacity": (1, 4), "prefill_tokens": (1, 5), "model_seed": (0, 2**63 - 1),
}
SMALL_MODEL = {"model_dim": (2, 24), "expert_hidden": (1, 24), "num_clusters": (1, 6), "topic_count": (1, 6),
               "calibration_tokens": (8, 48)}
WEIRD = st.sampled_from([math.nan, math.inf, -math.inf, "1", None, [1.0], True, -1e308, 1e308, 5e-324])


def _in_range(rng, small=None):
    """Values inside ``rng`` (both ends, log-uniform in between for wide ranges)."""
    if rng.kind == "int":
        lo, hi = small or (int(rng.low), int(rng.high))
        return st.integers(lo, hi)
    lo = float(np.nextafter(rng.low, math.inf)) if rng.low_open else rng.low
    hi = float(np.nextafter(rng.high, -math.inf)) if rng.high_open else rng.high
    vals = [st.sampled_from([lo, hi]), st.floats(lo, hi, allow_nan=False, allow_infinity=False)]
    if lo > 0 and hi / lo > 1e3:
        vals.append(st.floats(math.log10(lo), math.log10(hi)).map(lambda e: min(max(10.0 ** e, lo), hi)))
    return st.one_of(vals)


def _value(rng, small=None):
    inside = _in_range(rng, small)
    return st.one_of(inside, inside, inside, inside, WEIRD)  # mostly valid: the rest of the config gets exercised


@st.composite
def configs(draw):
    """A config dict: half the time every value inside its range (the env must then work), else some values
    anywhere (out of range, NaN, inf, wrong types) and now and then an unknown key."""
    clean = draw(st.booleans())
    value = _in_range if clean else _value
    cfg = {}
    for name in draw(st.lists(st.sampled_from(sorted(SYSTEM_RANGES)), max_size=6, unique=True)):
        v = draw(value(SYSTEM_RANGES[name], SMALL_INTS.get(name)))
        if name == "distance_range_m":
            v = tuple(sorted((v, draw(value(SYSTEM_RANGES[name]))))) if clean else (
                (v, draw(value(SYSTEM_RANGES[name]))) if draw(st.booleans()) else v)
        elif name == "distances_m":
            v = tuple(draw(st.lists(value(SYSTEM_RANGES[name]), min_size=1, max_size=5)))
        cfg[name] = v
    model = {"calibration_tokens": 16}
    for name in draw(st.lists(st.sampled_from(sorted(MODEL_RANGES)), max_size=3, unique=True)):
        model[name] = draw(value(MODEL_RANGES[name], SMALL_MODEL.get(name)))
    cfg["model"] = model
    for name in draw(st.lists(st.sampled_from(sorted(ENV_RANGES)), max_size=3, unique=True)):
        cfg[name] = draw(value(ENV_RANGES[name], (1, 3) if name == "episode_tokens" else None))
    if not clean and draw(st.sampled_from([False, False, False, True])):
        cfg[draw(st.sampled_from(["bandwith_hz", "penalty_j", "x"]))] = 1.0  # an unknown key
    for key, val in (("num_layers", 2), ("num_experts", 8), ("episode_tokens", 2), ("prefill_tokens", 2)):
        cfg.setdefault(key, val)
    return cfg


def _check_step(env, obs, reward, info, where):
    assert env.observation_space.contains(obs), (where, obs)
    assert np.all(np.isfinite(reward)), (where, reward)
    for key, val in info.items():
        if isinstance(val, dict):
            continue
        arr = np.asarray(val)
        if arr.dtype.kind == "f":
            assert np.all(np.isfinite(arr)), (where, key, val)


def _run_env(env_id, cfg, mode, steps=6):
    """Build and step a single env; ValueError is the only accepted failure."""
    try:
        env = gym.make(env_id, config=cfg, action_mode=mode)
    except ValueError as exc:
        assert str(exc), "an error message"
        event(f"config rejected: {str(exc)[:50]}")
        return None
    event("config accepted")
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    for t in range(steps):
        obs, r, term, trunc, info = env.step(env.action_space.sample())
        _check_step(env, obs, r, info, (env_id, mode, t))
        if term or trunc:
            obs, _ = env.reset()
    return env


@FUZZ
@given(cfg=configs(), setting=st.sampled_from(sorted(SETTINGS)), mode=st.sampled_from(["nodes", "discrete", "experts", "slots"]))
def test_fuzz_configs(cfg, setting, mode):
    env_id = SETTINGS[setting]
    cfg = dict(cfg)
    if setting == "prefill":
        cfg.pop("episode_tokens", None)
    if setting != "fastfading":
        cfg.pop("queue_clip", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = _run_env(env_id, cfg, mode)
        if env is None:
            return
        # the native vector env on the same config: copy i replays the single env seeded seed + i
        venv = gym.make_vec(env_id, 2, vectorization_mode="vector_entry_point", config=cfg, action_mode=mode)
        single = gym.make(env_id, config=cfg, action_mode=mode)
        vobs, _ = venv.reset(seed=3)
        sobs, _ = single.reset(seed=3)
        np.testing.assert_array_equal(vobs[0], sobs)
        rng = np.random.default_rng(0)
        for t in range(5):
            acts = _valid_batch(venv.single_action_space, 2, rng)
            vobs, vr, vterm, _, vinfo = venv.step(acts)
            _check_step(venv, vobs, vr, vinfo, ("vector", t))
            if "energy_j" in vinfo:
                sobs, sr, sterm, _, _ = single.step(acts[0])
                assert sr == vr[0] and sterm == vterm[0]
                np.testing.assert_array_equal(vobs[0], sobs)
            if vterm.all():
                break
        venv.close()


# ---------------------------------------------------------------- actions
def _valid_batch(space, n, rng):
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(0, space.n, size=n)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return rng.integers(0, space.nvec, size=(n,) + space.shape)
    return rng.integers(0, 2, size=(n,) + space.shape).astype(np.int8)


def _invalid(space, valid, kind, rng):
    """A mutation of one valid action (or batch, by its last row) that the space does not contain."""
    a = np.array(valid, copy=True)
    hi = space.n if isinstance(space, gym.spaces.Discrete) else (space.nvec.flat[0] if isinstance(space, gym.spaces.MultiDiscrete) else 2)
    row = (-1,) if a.ndim >= 1 else ()
    if kind == "high":
        a = a.astype(np.int64)
        a[row + (0,) * (a.ndim - len(row))] = hi + int(rng.integers(0, 5))
        return a
    if kind == "negative":
        a = a.astype(np.int64)
        a[row + (0,) * (a.ndim - len(row))] = -1
        return a
    if kind == "nan":
        a = a.astype(np.float64)
        a[row + (0,) * (a.ndim - len(row))] = np.nan
        return a
    if kind == "inf":
        a = a.astype(np.float64)
        a[row + (0,) * (a.ndim - len(row))] = np.inf
        return a
    if kind == "fraction":
        a = a.astype(np.float64)
        a[row + (0,) * (a.ndim - len(row))] = 0.5
        return a
    if kind == "short":
        return a[..., :-1] if a.ndim and a.shape[-1] > 1 else np.append(np.atleast_1d(a), [0])
    if kind == "long":
        return np.concatenate([np.atleast_1d(a), np.atleast_1d(a)], axis=-1)
    if kind == "ragged":
        return [list(np.atleast_1d(a).ravel()), [0]]
    if kind == "text":
        return "0101"
    return None


INVALID = ["high", "negative", "nan", "inf", "fraction", "short", "long", "ragged", "text", "none"]


@FUZZ
@given(setting=st.sampled_from(sorted(SETTINGS)), mode=st.sampled_from(["nodes", "discrete", "experts", "slots"]),
       big=st.booleans(), plan=st.lists(st.one_of(st.just("ok"), st.sampled_from(INVALID)), min_size=4, max_size=14),
       seed=st.integers(0, 2**16))
def test_fuzz_actions(setting, mode, big, plan, seed):
    """Random valid and invalid actions through the single env and the native vector env; a rejected action or
    batch leaves the environment exactly as a fresh one stepped with the valid actions only."""
    env_id = SETTINGS[setting]
    cfg = {"num_layers": 2, "model": {"calibration_tokens": 16}}
    cfg.update({"prefill_tokens": 2} if setting == "prefill" else {"episode_tokens": 2})
    if big and setting != "prefill":
        cfg.update({"num_experts": 16, "top_k": 3, "num_nodes": 3})  # copies stepped in turn
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env, fresh = (gym.make(env_id, config=cfg, action_mode=mode) for _ in range(2))
        venv, vfresh = (gym.make_vec(env_id, 3, vectorization_mode="vector_entry_point", config=cfg, action_mode=mode)
                        for _ in range(2))
        env.reset(seed=seed)
        fresh.reset(seed=seed)
        venv.reset(seed=seed)
        vfresh.reset(seed=seed)
        space = env.action_space
        for t, what in enumerate(plan):
            act = _valid_batch(space, 1, rng)[0]
            batch = _valid_batch(space, 3, rng)
            if what != "ok":
                with pytest.raises(ValueError):
                    env.step(_invalid(space, act, what, rng))
                with pytest.raises(ValueError):
                    venv.step(_invalid(space, batch, what, rng))
                continue
            r1, r2 = env.step(act), fresh.step(act)
            np.testing.assert_array_equal(r1[0], r2[0])
            assert r1[1:4] == r2[1:4] and r1[4].keys() == r2[4].keys()
            _check_step(env, r1[0], r1[1], r1[4], t)
            if r1[2]:
                env.reset()
                fresh.reset()
            v1, v2 = venv.step(batch), vfresh.step(batch)
            for a, b in zip(v1[:4], v2[:4]):
                np.testing.assert_array_equal(a, b)
            _check_step(venv, v1[0], v1[1], v1[4], t)


# ---------------------------------------------------------------- trace files
def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@st.composite
def trace_files(draw):
    n = draw(st.integers(2, 8))
    k = draw(st.integers(1, min(3, n)))
    nl = draw(st.integers(1, 2))
    t = draw(st.integers(2, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    probs = _softmax(rng.normal(size=(t, nl, n)) * draw(st.sampled_from([0.1, 1.0, 30.0])))
    topk = np.argsort(-probs, axis=-1, kind="stable")[..., :k]
    norms = rng.uniform(0.0, 10.0, size=(t, nl))
    d = rng.uniform(0.0, 2.0, size=(nl, n, n))
    delta = (d + d.transpose(0, 2, 1)) / 2
    for lay in range(nl):
        np.fill_diagonal(delta[lay], 0.0)
    sigma = rng.uniform(0.05, 3.0, size=(nl, n))
    meta = {"format": "siftmoe-trace", "version": 1, "num_experts": n, "top_k": k, "num_layers": nl,
            "hidden_size": int(draw(st.sampled_from([16, 4096]))), "renormalize_gates": True, "quantile": 0.99,
            "model": "fuzz"}
    arrays = {"router_probs": probs.astype(np.float32), "topk": topk.astype(np.int32),
              "hidden_norms": norms.astype(np.float32), "delta": delta, "sigma": sigma}
    drop = None
    for _ in range(draw(st.integers(0, 2))):  # corruptions (none: a valid file)
        what = draw(st.sampled_from(["scale_probs", "neg_prob", "big_prob", "dup", "swap", "oob", "neg_norm", "nan",
                                     "inf", "neg_delta", "asym", "diag", "sigma0", "huge", "meta_bool", "meta_int",
                                     "meta_shape", "meta_quantile", "gate_mode", "router_score", "drop", "dtype"]))
        i, lay = int(rng.integers(t)), int(rng.integers(nl))
        if what == "scale_probs":
            arrays["router_probs"][i, lay] *= 0.5
        elif what == "neg_prob":
            arrays["router_probs"][i, lay, 0] = -0.1
        elif what == "big_prob":
            arrays["router_probs"][i, lay, int(rng.integers(n))] = 3.0
        elif what == "dup" and k > 1:
            arrays["topk"][i, lay, 1] = arrays["topk"][i, lay, 0]
        elif what == "swap" and k > 1:
            arrays["topk"][i, lay] = arrays["topk"][i, lay, ::-1]
        elif what == "oob":
            arrays["topk"][i, lay, 0] = n + int(rng.integers(0, 3)) if rng.random() < 0.5 else -1
        elif what == "neg_norm":
            arrays["hidden_norms"][i, lay] = -1.0
        elif what in ("nan", "inf"):
            name = draw(st.sampled_from(["router_probs", "hidden_norms", "delta", "sigma"]))
            arrays[name].reshape(-1)[0] = np.nan if what == "nan" else np.inf
        elif what == "neg_delta" and n > 1:
            arrays["delta"][lay, 0, 1] = arrays["delta"][lay, 1, 0] = -0.5
        elif what == "asym" and n > 1:
            arrays["delta"][lay, 0, 1] += 1.0
        elif what == "diag":
            arrays["delta"][lay, 0, 0] = 0.3
        elif what == "sigma0":
            arrays["sigma"][lay, 0] = 0.0
        elif what == "huge":
            arrays["sigma"][lay, 0] = 1e300
        elif what == "meta_bool":
            meta["renormalize_gates"] = draw(st.sampled_from(["false", 0, None, False]))
        elif what == "meta_int":
            meta[draw(st.sampled_from(["num_experts", "top_k", "num_layers", "hidden_size"]))] = draw(
                st.sampled_from([0, -3, "8", 2.5, None, 10**9]))
        elif what == "meta_shape":
            meta["num_experts"] = n + 1
        elif what == "meta_quantile":
            meta["quantile"] = draw(st.sampled_from([0.0, 1.5, "0.9", math.nan]))
        elif what == "gate_mode":
            meta["gate_mode"] = draw(st.sampled_from(["explicit", "plain", "renormalized", "other", 3]))
        elif what == "router_score":
            meta["router_score"] = draw(st.sampled_from(["sigmoid", "softmax", "tanh"]))
        elif what == "drop":
            drop = draw(st.sampled_from(sorted(arrays)))
        elif what == "dtype":
            arrays["topk"] = arrays["topk"].astype(np.float32)
    if drop is not None:  # (after the other corruptions, which edit the arrays in place)
        arrays.pop(drop)
    suffix = draw(st.sampled_from([".npz", ".safetensors"]))
    explicit = draw(st.sampled_from([{}, {"num_experts": n}, {"num_experts": n + 1}, {"top_k": k},
                                     {"renormalize_gates": False}, {"num_layers": nl}]))
    return arrays, meta, suffix, explicit


@FUZZ
@given(spec=trace_files(), setting=st.sampled_from(sorted(SETTINGS)), vector=st.booleans())
def test_fuzz_trace_files(tmp_path_factory, spec, setting, vector):
    arrays, meta, suffix, explicit = spec
    path = tmp_path_factory.mktemp("fuzz") / f"trace{suffix}"
    text = json.dumps(meta)
    if suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path), metadata={"siftmoe": text})
    else:
        with open(path, "wb") as fh:
            np.savez(fh, __meta__=np.frombuffer(text.encode(), dtype=np.uint8), **arrays)
    env_id = SETTINGS[setting]
    cfg = {**explicit, **({"prefill_tokens": 3} if setting == "prefill" else {"episode_tokens": 3})}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            if vector:
                env = gym.make_vec(env_id, 2, vectorization_mode="vector_entry_point", config=cfg, trace=str(path))
            else:
                env = gym.make(env_id, config=cfg, trace=str(path))
        except ValueError as exc:  # TraceError included
            assert str(exc)
            message = re.sub(r"'/[^']*'", "<path>", str(exc))  # (no temporary paths in the statistics)
            event(f"trace rejected: {type(exc).__name__}: {message[:60]}")
            return
        event("trace accepted")
        rng = np.random.default_rng(0)
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        for t in range(8):
            space = env.single_action_space if vector else env.action_space
            act = _valid_batch(space, 2, rng) if vector else _valid_batch(space, 1, rng)[0]
            obs, r, term, trunc, info = env.step(act)
            _check_step(env, obs, r, info, t)
            if not vector and (term or trunc):
                obs, _ = env.reset()
