"""Trace files: every value the format promises is checked (a TraceError naming the field and the first bad row),
and a trace never silently overrides configuration keys given explicitly."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

import siftmoe_gym  # noqa: F401
from siftmoe_gym import WideSystem
from siftmoe_gym.config import SystemConfig
from siftmoe_gym.tracefile import Trace, TraceError, load_trace, save_trace
from siftmoe_gym.workload import SyntheticWorkload

CFG = SystemConfig.from_dict({"num_layers": 3, "model": {"calibration_tokens": 64}})
_WL = SyntheticWorkload(CFG)


def good_trace(tokens=12, **extra) -> Trace:
    tb = _WL.sample(np.random.default_rng(0), tokens)
    return Trace(
        router_probs=tb.probs.copy(), topk=tb.topk.copy(), hidden_norms=tb.norms.copy(),
        delta=_WL.profile.delta.copy(), sigma=_WL.profile.sigma.copy(),
        num_experts=CFG.num_experts, top_k=CFG.top_k, num_layers=CFG.num_layers, hidden_size=CFG.hidden_size,
        renormalize_gates=True, quantile=CFG.quantile, model="hardening", extra=dict(extra),
    )


def write(tmp_path, arrays: dict, meta: dict, suffix=".npz"):
    """Write a trace file without any checking (to craft bad ones)."""
    path = tmp_path / f"t{suffix}"
    text = json.dumps(meta)
    if suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path), metadata={"siftmoe": text})
    else:
        with open(path, "wb") as fh:
            np.savez(fh, __meta__=np.frombuffer(text.encode(), dtype=np.uint8), **arrays)
    return path


def parts(tr: Trace):
    arrays = {"router_probs": tr.router_probs.astype(np.float32), "topk": tr.topk.astype(np.int32),
              "hidden_norms": tr.hidden_norms.astype(np.float32), "delta": tr.delta, "sigma": tr.sigma}
    return arrays, tr.metadata()


@pytest.fixture(params=[".npz", ".safetensors"])
def suffix(request):
    return request.param


# ---------------------------------------------------------------- metadata
@pytest.mark.parametrize("value", ["false", "true", 0, 1, None, [True]])
def test_renormalize_gates_must_be_a_json_bool(tmp_path, suffix, value):
    """``"renormalize_gates": "false"`` used to load as True (``bool("false")``)."""
    arrays, meta = parts(good_trace())
    meta["renormalize_gates"] = value
    with pytest.raises(TraceError, match="renormalize_gates"):
        load_trace(write(tmp_path, arrays, meta, suffix))


def test_renormalize_gates_false_is_honoured(tmp_path, suffix):
    arrays, meta = parts(good_trace())
    meta["renormalize_gates"] = False
    assert load_trace(write(tmp_path, arrays, meta, suffix)).renormalize_gates is False


@pytest.mark.parametrize("key, value", [("gate_mode", "weird"), ("router_score", "relu"), ("quantile", float("nan"))])
def test_bad_routing_metadata(tmp_path, key, value):
    arrays, meta = parts(good_trace())
    meta[key] = value
    with pytest.raises(TraceError, match=key):
        load_trace(write(tmp_path, arrays, meta))


# ---------------------------------------------------------------- array contents
def _corrupt(name):
    """(array name, mutation, message part) cases; each mutation edits the arrays in place at token 2, layer 1."""
    def above_one(a):
        a["router_probs"][2, 1, a["topk"][2, 1, 0]] = 1.5

    def negative_prob(a):
        a["router_probs"][2, 1, 3] = -0.01

    def not_normalized(a):
        a["router_probs"][2, 1] *= 0.5

    def duplicate(a):
        a["topk"][2, 1, 1] = a["topk"][2, 1, 0]

    def out_of_order(a):
        a["topk"][2, 1] = a["topk"][2, 1, ::-1]

    def out_of_range(a):
        a["topk"][2, 1, 0] = 8

    def negative_norm(a):
        a["hidden_norms"][2, 1] = -1.0

    def nan_norm(a):
        a["hidden_norms"][2, 1] = np.nan

    def inf_prob(a):
        a["router_probs"][2, 1, 0] = np.inf

    def nan_delta(a):
        a["delta"][1, 0, 1] = a["delta"][1, 1, 0] = np.nan

    def inf_sigma(a):
        a["sigma"][1, 2] = np.inf

    def huge_delta(a):
        a["delta"][1, 0, 1] = a["delta"][1, 1, 0] = 1e7  # above MAX_RATIO (1e6)

    return {
        "above_one": (above_one, r"router_probs must be <= 1.*token 2, layer 1"),
        "negative_prob": (negative_prob, r"router_probs must be >= 0.*token 2, layer 1"),
        "not_normalized": (not_normalized, r"router_probs rows must sum to 1.*token 2, layer 1"),
        "duplicate": (duplicate, r"topk holds a duplicate.*token 2, layer 1"),
        "out_of_order": (out_of_order, r"topk slots must be in descending router_probs order.*token 2, layer 1"),
        "out_of_range": (out_of_range, r"topk indices must be in \[0, 7\].*token 2, layer 1"),
        "negative_norm": (negative_norm, r"hidden_norms must be >= 0.*token 2, layer 1"),
        "nan_norm": (nan_norm, r"'hidden_norms' holds NaN or inf.*token 2, layer 1"),
        "inf_prob": (inf_prob, r"'router_probs' holds NaN or inf.*token 2, layer 1"),
        "nan_delta": (nan_delta, r"'delta' holds NaN or inf"),
        "inf_sigma": (inf_sigma, r"'sigma' holds NaN or inf"),
        "huge_delta": (huge_delta, r"delta and sigma must be at most"),
    }[name]


CASES = ["above_one", "negative_prob", "not_normalized", "duplicate", "out_of_order", "out_of_range", "negative_norm",
         "nan_norm", "inf_prob", "nan_delta", "inf_sigma", "huge_delta"]


@pytest.mark.parametrize("case", CASES)
def test_bad_contents_raise_trace_error_naming_field_and_row(tmp_path, suffix, case):
    """Each of these used to load (or half of them did), and the environment then emitted observations outside its
    observation space or NaN rewards."""
    mutate, message = _corrupt(case)
    arrays, meta = parts(good_trace())
    mutate(arrays)
    path = write(tmp_path, arrays, meta, suffix)
    with pytest.raises(TraceError, match=message):
        load_trace(path)
    with pytest.raises(TraceError, match=message):
        gym.make("siftmoe_gym/Decode-v0", trace=str(path))


@pytest.mark.parametrize("case", ["above_one", "not_normalized", "duplicate", "negative_norm"])
def test_trace_objects_are_checked_too(case):
    mutate, message = _corrupt(case)
    tr = good_trace()
    arrays = {"router_probs": tr.router_probs, "topk": tr.topk, "hidden_norms": tr.hidden_norms,
              "delta": tr.delta, "sigma": tr.sigma}
    mutate(arrays)
    with pytest.raises(TraceError, match=message):
        WideSystem(None, trace=tr)


def test_what_the_format_allows(tmp_path):
    """Sigmoid scores need not sum to 1; explicit gates (gate_mode "explicit") may exceed 1 at the top-k
    positions (DeepSeek's routed scaling); the observation stays inside its space (router scores clipped to 1)."""
    tr = good_trace(router_score="sigmoid")
    tr.router_probs *= 0.5  # sigmoid scores: rows need not sum to 1
    load_trace(save_trace(tr, tmp_path / "sig.npz"))
    tr = good_trace(gate_mode="explicit")
    np.put_along_axis(tr.router_probs, tr.topk[..., :1], 2.5, axis=-1)  # explicit gates above 1
    tr.renormalize_gates = False
    path = save_trace(tr, tmp_path / "explicit.npz")
    env = gym.make("siftmoe_gym/Decode-v0", trace=str(path), config={"episode_tokens": 3})
    obs, _ = env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(12):
        assert env.observation_space.contains(obs)
        obs, r, term, _, info = env.step(env.action_space.sample())
        assert np.isfinite(r)
        if term:
            obs, _ = env.reset()
    bad = good_trace(gate_mode="explicit")
    bad.router_probs[0, 0, bad.topk[0, 0, 0]] = 2e3
    with pytest.raises(TraceError, match="explicit gate"):
        bad.validate()
    off_topk = good_trace(gate_mode="explicit")
    other = np.setdiff1d(np.arange(8), off_topk.topk[0, 0])[0]
    off_topk.router_probs[0, 0, other] = 1.5  # only the top-k positions hold gates
    with pytest.raises(TraceError, match="router_probs must be <= 1"):
        off_topk.validate()


def test_valid_trace_keeps_observations_in_space(tmp_path):
    path = save_trace(good_trace(40), tmp_path / "ok.safetensors")
    for env_id in ("siftmoe_gym/Decode-v0", "siftmoe_gym/Prefill-v0", "siftmoe_gym/FastFading-v0"):
        cfg = {"prefill_tokens": 3} if "Prefill" in env_id else {"episode_tokens": 3}
        env = gym.make(env_id, trace=str(path), config=cfg)
        obs, _ = env.reset(seed=1)
        env.action_space.seed(1)
        for _ in range(10):
            assert env.observation_space.contains(obs)
            obs, r, term, _, _ = env.step(env.action_space.sample())
            assert np.isfinite(r)
            if term:
                obs, _ = env.reset()


def test_trace_argument_type():
    with pytest.raises(TraceError, match="trace must be a path"):
        gym.make("siftmoe_gym/Decode-v0", trace=123)


# ---------------------------------------------------------------- config conflicts
@pytest.mark.parametrize("key, value, trace_value", [
    ("num_experts", 16, 8), ("top_k", 3, 2), ("num_layers", 4, 3), ("hidden_size", 2048, 4096),
    ("renormalize_gates", False, True), ("quantile", 0.9, 0.99),
])
def test_explicit_config_conflicting_with_trace_is_rejected(tmp_path, key, value, trace_value):
    """``trace=`` used to override explicit config keys silently."""
    path = save_trace(good_trace(), tmp_path / "t.npz")
    cfg = {key: value, "local_capacity": 1} if key != "num_experts" else {key: value}
    with pytest.raises(ValueError, match=rf"{key}={value!r} \(trace: {key}={trace_value!r}\)"):
        gym.make("siftmoe_gym/Decode-v0", config=cfg, trace=str(path))
    ok = gym.make("siftmoe_gym/Decode-v0", config={key: trace_value}, trace=str(path))  # equal values are fine
    assert getattr(ok.unwrapped.system.config, key) == trace_value


def test_conflicts_through_every_config_form(tmp_path):
    path = save_trace(good_trace(), tmp_path / "t.npz")
    with pytest.raises(ValueError, match=r"num_experts=128 \(trace: num_experts=8\)"):
        gym.make("siftmoe_gym/Decode-v0", config="qwen3-30b-a3b", trace=str(path))  # a preset's own keys
    with pytest.raises(ValueError, match=r"top_k=3 \(trace: top_k=2\)"):
        gym.make("siftmoe_gym/Decode-v0", config=SystemConfig(top_k=3), trace=str(path))
    with pytest.raises(ValueError, match=r"top_k=3 \(trace: top_k=2\)"):
        WideSystem({"top_k": 3}, trace=str(path))
    env = gym.make("siftmoe_gym/Decode-v0", config={"eps_rel": 0.1}, trace=str(path))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"num_layers=2 \(trace: num_layers=3\)"):
        env.reset(options={"config": {"num_layers": 2}})
    env.reset(options={"config": {"eps_rel": 0.2}})  # keys the trace does not fix still change
    assert env.unwrapped.system.config.eps_rel == 0.2


@pytest.mark.parametrize("arch, score", [("qwen3_moe", "softmax"), ("deepseek_v3", "sigmoid")])
def test_extraction_records_the_router_score(tmp_path, arch, score):
    pytest.importorskip("transformers")
    from siftmoe_gym.hf.loading import ByteTokenizer
    from siftmoe_gym.hf.testing import tiny_random_model
    from siftmoe_gym.traces import extract_trace

    text = "hardening the trace format, " * 8
    trace = extract_trace(tiny_random_model(arch), ByteTokenizer(), text, 32, calibration_tokens=32, window=32,
                          progress=False)
    assert trace.extra["router_score"] == score
    back = load_trace(save_trace(trace, tmp_path / "x.safetensors"))
    assert back.extra["router_score"] == score
