"""The on-disk cache of the synthetic model's calibration (siftmoe_gym.cache): keys, atomic writes, corrupt
files, switches.  Every test uses its own temporary cache folder."""

from __future__ import annotations

import os

import numpy as np
import pytest

from siftmoe_gym import cache, synthetic
from siftmoe_gym.config import SystemConfig
from siftmoe_gym.synthetic import SyntheticMoE
from siftmoe_gym.workload import SyntheticWorkload

CFG = SystemConfig.from_dict({"num_experts": 10, "top_k": 3, "num_layers": 2, "model": {"calibration_tokens": 40}})


@pytest.fixture
def cdir(tmp_path, monkeypatch):
    monkeypatch.setenv("SIFTMOE_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.delenv("SIFTMOE_CACHE", raising=False)
    monkeypatch.setattr(synthetic, "CACHE_MIN_WORK", 0)  # cache even this small model
    return tmp_path / "c"


def _files(d):
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_warm_model_equals_cold_model(cdir):
    ref = SyntheticMoE(CFG, use_cache=False)
    r_delta, r_sigma, r_probs, r_x = ref.calibrate()
    cold = SyntheticMoE(CFG)
    assert cold._layers is not None and _files(cdir) == []
    cold.calibrate()
    assert len(_files(cdir)) == 1 and _files(cdir)[0].endswith(".npz")
    warm = SyntheticMoE(CFG)
    assert warm._layers is None  # the weights are not drawn on a hit
    delta, sigma, probs, x = warm.calibrate()
    for a, b in ((delta, r_delta), (sigma, r_sigma), (probs, r_probs), (x, r_x)):
        assert np.array_equal(a, b)
    for name in ("_tau", "_proj", "_bias_t", "topics"):
        assert np.array_equal(getattr(warm, name), getattr(ref, name))
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    pa, na = warm.sample_routing(rng_a, 7)
    pb, nb = ref.sample_routing(rng_b, 7)
    assert np.array_equal(pa, pb) and np.array_equal(na, nb)
    for la, lb in zip(warm.layers, ref.layers):  # replayed on demand from the seed
        for name in ("w1", "w2", "router", "bias", "cluster_of"):
            assert np.array_equal(getattr(la, name), getattr(lb, name))
    assert np.array_equal(SyntheticWorkload(CFG).profile.delta, r_delta)  # the workload through the cache


@pytest.mark.parametrize("garbage", [b"", b"not an npz at all", "truncate"])
def test_corrupt_file_is_ignored_and_rebuilt(cdir, garbage):
    SyntheticMoE(CFG).calibrate()
    (name,) = _files(cdir)
    path = cdir / name
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2] if garbage == "truncate" else garbage)
    m = SyntheticMoE(CFG)
    assert m._layers is not None  # a miss: drawn and measured again
    delta, *_ = m.calibrate()
    assert np.array_equal(delta, SyntheticMoE(CFG, use_cache=False).calibrate()[0])
    assert cache.load(name[len("synthetic-"):-4], {"delta": delta.shape}) is not None  # rewritten whole


def test_wrong_shapes_or_key_inside_the_file_are_a_miss(cdir):
    key = cache.model_key(CFG)
    assert cache.save(key, {"delta": np.zeros((2, 3, 3))}) is not None
    assert cache.load(key, {"delta": (2, 10, 10)}) is None
    assert cache.load(key, {"sigma": (2, 10)}) is None  # missing array
    cache.save(key, {"delta": np.full((2, 10, 10), np.nan)})
    assert cache.load(key, {"delta": (2, 10, 10)}) is None
    other = cache.model_key(CFG.replace(model_seed=1))
    cache.path_for(key).replace(cache.path_for(other))  # a file under another key's name
    assert cache.load(other, {"delta": (2, 10, 10)}) is None


def test_key_covers_what_determines_delta_and_only_that():
    k = cache.model_key(CFG)
    assert k == cache.model_key(SystemConfig.from_dict(CFG.to_dict()))
    for change in ({"model_seed": 3}, {"quantile": 0.9}, {"num_layers": 3}, {"num_experts": 11},
                   {"model": {"calibration_tokens": 41}}, {"model": {"cluster_spread": 0.3}},
                   {"model": {"router_score": "sigmoid"}}):
        assert cache.model_key(CFG.replace(**change)) != k, change
    for change in ({"num_nodes": 2}, {"top_k": 2}, {"tau_s": 1e-3}, {"placement": "random"}):
        assert cache.model_key(CFG.replace(**change)) == k, change


def test_key_covers_the_code(monkeypatch):
    k = cache.model_key(CFG)
    monkeypatch.setattr(cache, "code_version", lambda: "another version")
    assert cache.model_key(CFG) != k


def test_switched_off_reads_and_writes_nothing(cdir, monkeypatch):
    monkeypatch.setenv("SIFTMOE_CACHE", "off")
    assert not cache.enabled()
    SyntheticMoE(CFG).calibrate()
    assert _files(cdir) == []
    monkeypatch.setenv("SIFTMOE_CACHE", "1")
    SyntheticMoE(CFG).calibrate()
    monkeypatch.setenv("SIFTMOE_CACHE", "0")
    assert SyntheticMoE(CFG)._layers is not None  # present, but not read


def test_directory_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("SIFTMOE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "siftmoe_gym" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "siftmoe_gym" / "models"
    monkeypatch.setenv("SIFTMOE_CACHE_DIR", str(tmp_path / "mine"))
    assert cache.cache_dir() == tmp_path / "mine"


def test_unwritable_directory_is_not_an_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the directory should be")
    monkeypatch.setenv("SIFTMOE_CACHE_DIR", str(blocker / "sub"))
    monkeypatch.setattr(synthetic, "CACHE_MIN_WORK", 0)
    delta, *_ = SyntheticMoE(CFG).calibrate()
    assert np.array_equal(delta, SyntheticMoE(CFG, use_cache=False).calibrate()[0])


def test_writes_are_atomic_and_leave_no_temporary_files(cdir, monkeypatch):
    SyntheticMoE(CFG).calibrate()
    (name,) = _files(cdir)
    before = (cdir / name).read_bytes()
    calls = []
    real = os.replace

    def spy(src, dst):
        calls.append((os.path.dirname(src), os.path.basename(dst)))
        assert os.path.exists(src) and os.path.getsize(src) > 0  # the whole file is written before it is moved
        return real(src, dst)

    monkeypatch.setattr(cache.os, "replace", spy)
    key = name[len("synthetic-"):-4]
    with np.load(cdir / name) as z:
        arrays = {k: z[k] for k in z.files if k not in ("key", "digest")}
    cache.save(key, arrays)
    assert calls == [(str(cdir), name)]
    assert _files(cdir) == [name]
    assert len((cdir / name).read_bytes()) == len(before)


def test_small_systems_never_touch_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SIFTMOE_CACHE_DIR", str(tmp_path / "c"))
    SyntheticMoE(SystemConfig()).calibrate()
    assert not (tmp_path / "c").exists()
    assert synthetic.calibration_work(SystemConfig()) < synthetic.CACHE_MIN_WORK


def test_edited_arrays_are_a_miss(cdir):
    """A file with the right key and shapes whose values were changed (negated, cast to integers, scaled) no longer
    matches the digest written with it: the model is rebuilt, with the same numbers as without a cache (review
    finding: such files were used)."""
    SyntheticMoE(CFG).calibrate()
    (name,) = _files(cdir)
    path = cdir / name
    with np.load(path) as z:
        saved = {k: z[k] for k in z.files}
    ref = SyntheticMoE(CFG, use_cache=False).calibrate()[0]
    for edit in (lambda d: -d, lambda d: d.astype(np.int64), lambda d: d * 1e6):
        np.savez(path, **{**saved, "delta": edit(saved["delta"])})
        assert cache.load(name[len("synthetic-"):-4], {"delta": saved["delta"].shape}) is None
        assert np.array_equal(SyntheticMoE(CFG).calibrate()[0], ref)
