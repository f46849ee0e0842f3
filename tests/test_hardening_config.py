"""Every numeric configuration field has a documented range: values outside it are a ValueError naming the field,
values inside it keep every observation, reward and info number finite (no overflow, no warning)."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import siftmoe_gym  # noqa: F401
from siftmoe_gym.config import MODEL_RANGES, SYSTEM_RANGES, SystemConfig, make_config
from siftmoe_gym.envs.config import ENV_RANGES

ROOT = Path(__file__).resolve().parents[1]
BASE = {"num_layers": 2, "model": {"calibration_tokens": 16}}


def _inside_ends(rng) -> list:
    lo = float(np.nextafter(rng.low, math.inf)) if rng.low_open else rng.low
    hi = float(np.nextafter(rng.high, -math.inf)) if rng.high_open else rng.high
    return [int(lo), int(hi)] if rng.kind == "int" else [float(lo), float(hi)]


def _outside(rng) -> list:
    out = [rng.low if rng.low_open else (rng.low - 1 if rng.kind == "int" else rng.low - max(1e-3, abs(rng.low) * 1e-3))]
    out.append(rng.high if rng.high_open else (rng.high + 1 if rng.kind == "int" else rng.high + max(1.0, abs(rng.high))))
    if rng.kind == "float":
        out += [math.nan, math.inf, -math.inf, "1.0", True]
    else:
        out += [2.5, math.nan, "3", True]
    return out


def _sys_value(name, v):
    if name == "distance_range_m":
        return (v, v) if isinstance(v, (int, float)) and not isinstance(v, bool) else (v, 100.0)
    if name == "distances_m":
        return (v,) * 4
    return v


# ---------------------------------------------------------------- rejected values
@pytest.mark.parametrize("name", sorted(SYSTEM_RANGES))
def test_system_field_outside_range_names_field(name):
    rng = SYSTEM_RANGES[name]
    for v in _outside(rng):
        if name in ("top_k", "local_capacity", "node_capacity") and v == rng.high + 1:
            v = 9  # their bound is num_experts (8 by default)
        with pytest.raises(ValueError, match=re.escape(name)):
            SystemConfig.from_dict({name: _sys_value(name, v)})


@pytest.mark.parametrize("name", sorted(MODEL_RANGES))
def test_model_field_outside_range_names_field(name):
    for v in _outside(MODEL_RANGES[name]):
        with pytest.raises(ValueError, match=re.escape(f"model.{name}")):
            SystemConfig.from_dict({"model": {name: v}})


@pytest.mark.parametrize("name", sorted(ENV_RANGES))
def test_env_key_outside_range_names_key(name):
    env_id = "siftmoe_gym/FastFading-v0"
    for v in _outside(ENV_RANGES[name]):
        with pytest.raises(ValueError, match=re.escape(f"invalid {name}=")):
            gym.make(env_id, config={**BASE, name: v})


@pytest.mark.parametrize("changes, field", [
    ({"compute_energy_j": 1e307}, "compute_energy_j"),
    ({"penalty": 3.7e307}, "penalty"),
    ({"model": {"cluster_spread": 3e76}}, "model.cluster_spread"),
    ({"p_max_dbm": -3300.0}, "p_max_dbm"),
    ({"noise_psd_dbm_hz": 400.0}, "noise_psd_dbm_hz"),
    ({"distance_range_m": (50.0, 1e300)}, "distance_range_m"),
    ({"tau_s": 1e-300}, "tau_s"),
    ({"model": {"router_temperature": 1e-300}}, "model.router_temperature"),
    ({"reward_floor_j": 1e-300}, "reward_floor_j"),
    ({"queue_clip": 1e-320}, "queue_clip"),
])
def test_issue_examples_are_rejected(changes, field):
    """Values validation used to pass that overflowed to inf/NaN (or divided by zero) downstream."""
    with pytest.raises(ValueError, match=re.escape(field)):
        gym.make("siftmoe_gym/FastFading-v0", config={**BASE, **changes})


def test_unknown_keys_still_list_the_accepted_ones():
    with pytest.raises(ValueError, match=r"unknown config key.*'bandwith_hz'.*environment keys.*system keys.*bandwidth_hz"):
        gym.make("siftmoe_gym/Decode-v0", config={"bandwith_hz": 1e6})
    with pytest.raises(ValueError, match=r"unknown config key.*allowed.*model_dim"):
        make_config({"model": {"dim": 3}})


def test_preset_must_be_a_name():
    for bad in (["mixtral-small"], 3, None):
        with pytest.raises(ValueError, match="preset"):
            make_config({"preset": bad})


# ---------------------------------------------------------------- inside the ranges: finite everywhere
def _cases():
    cases = []
    for name, rng in SYSTEM_RANGES.items():
        if name in ("num_experts", "num_layers", "top_k", "local_capacity", "node_capacity", "model_seed"):
            continue  # shape fields: their ends are large systems, not arithmetic edges (fuzzed small)
        for v in _inside_ends(rng):
            if name == "prefill_tokens" and v > 64:
                continue  # a 4096-token block is valid but slow; the cost tables' arithmetic is per load
            cases.append({name: _sys_value(name, v)})
    for name, rng in MODEL_RANGES.items():
        for v in _inside_ends(rng):
            if name in ("model_dim", "expert_hidden", "calibration_tokens", "topic_count", "num_clusters") and v > 64:
                continue
            cases.append({"model": {**BASE["model"], name: v}})
    for name, rng in ENV_RANGES.items():
        for v in _inside_ends(rng):
            if name == "episode_tokens" and v > 4:
                continue
            cases.append({name: v})
    cases += [  # the corners where the link arithmetic overflows first
        {"p_max_dbm": -100.0, "noise_psd_dbm_hz": -100.0, "bandwidth_hz": 1e6, "tau_s": 1e-6, "hidden_size": 65536,
         "bits_per_element": 64},
        {"p_max_dbm": 60.0, "noise_psd_dbm_hz": -220.0, "bandwidth_hz": 1e10, "tau_s": 10.0, "distance_range_m": (1.0, 1.0)},
        {"compute_energy_j": 0.0, "eps_rel": 0.0, "penalty": 1e6, "penalty_latency": 1e6, "reward_floor_j": 1e-12},
        {"compute_energy_j": 1e3, "eps_abs": 0.0, "distance_range_m": (1e5, 1e5), "tau_prefill_s": 1e-6,
         "model": {"calibration_tokens": 16, "cluster_spread": 100.0, "router_temperature": 1e-3, "popularity_skew": 100.0}},
        {"num_nodes": 16, "top_k": 1, "eps_max_factor": 1e3, "drift_v": 1e6},
        {"num_experts": 2, "top_k": 2, "local_capacity": 0, "drift_v": 1e-6, "queue_clip": 1e-6},
    ]
    return cases


@pytest.mark.parametrize("case", _cases(), ids=lambda c: str(c)[:80])
def test_range_ends_keep_everything_finite(case):
    for env_id in ("siftmoe_gym/Decode-v0", "siftmoe_gym/Prefill-v0", "siftmoe_gym/FastFading-v0"):
        cfg = {**BASE, **case}
        if "Prefill" in env_id:
            cfg.pop("episode_tokens", None)
            cfg.setdefault("prefill_tokens", 2)
        else:
            cfg.setdefault("episode_tokens", 2)
        if "FastFading" not in env_id:
            cfg.pop("queue_clip", None)
        for mode in ("nodes", "experts", "slots"):
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # an overflow warning is a failure too
                env = gym.make(env_id, config=cfg, action_mode=mode)
                env.action_space.seed(0)
                obs, _ = env.reset(seed=0)
                assert env.observation_space.contains(obs)
                for _ in range(10):
                    obs, r, term, _, info = env.step(env.action_space.sample())
                    assert env.observation_space.contains(obs), (env_id, mode, obs)
                    assert np.isfinite(r), (env_id, mode, r)
                    for key, val in info.items():
                        if key != "episode_metrics" and np.asarray(val).dtype.kind == "f":
                            assert np.all(np.isfinite(val)), (env_id, mode, key, val)
                    if term:
                        env.reset()


# ---------------------------------------------------------------- docs in step
def _doc_number(text: str) -> float | None:
    text = text.strip()
    if text == "`num_experts`":
        return None
    return 2**63 - 1 if text == "2^63 - 1" else float(text)


def _check_table(text: str, ranges: dict) -> None:
    rows = dict(re.findall(r"^\| `([a-z_.]+)` \| [^|]+ \| ([^|]+) \|", text, flags=re.M))
    for name, rng in ranges.items():
        assert name in rows, name
        m = re.search(r"([\[(])([^,\[(]+), ([^\])]+)([\])])", rows[name])
        assert m, (name, rows[name])
        lo, hi = _doc_number(m.group(2)), _doc_number(m.group(3))
        assert (m.group(1) == "(", m.group(4) == ")") == (rng.low_open, rng.high_open), name
        assert lo == rng.low, name
        assert hi is None or hi == rng.high, name
        assert ("integer" in rows[name]) == (rng.kind == "int"), name


def test_docs_list_every_range():
    """docs/model.md section 5 lists the accepted range of every SystemConfig field, as validation applies it;
    docs/envs.md the environments' keys."""
    text = (ROOT / "docs/model.md").read_text()
    _check_table(text[text.index("## 5."):text.index("## 6.")],
                 {**SYSTEM_RANGES, **{"model." + k: v for k, v in MODEL_RANGES.items()}})
    _check_table((ROOT / "docs/envs.md").read_text(), ENV_RANGES)
