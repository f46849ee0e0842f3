"""Channels: path loss, fading kinds, slow and fast (Gauss-Markov) fading, seeding."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siftmoe_gym import channels
from siftmoe_gym.config import SystemConfig

SEEDS = st.integers(0, 2**32 - 1)


def test_path_loss_worked_example():
    # 128.1 + 37.6 * log10(0.2) = 128.1 - 37.6 * 0.698970 = 101.8187 dB
    assert channels.path_loss_db(200.0) == pytest.approx(101.81873, abs=1e-4)
    # 128.1 + 37.6 * log10(0.3) = 128.1 - 37.6 * 0.522879 = 108.4398 dB
    assert channels.path_loss_db(300.0) == pytest.approx(108.43976, abs=1e-4)
    # 1 km: exactly 128.1 dB
    assert channels.path_loss_db(1000.0) == pytest.approx(128.1)
    # gain = 10^(-10.181873) = 6.5785e-11
    assert channels.path_gain(200.0) == pytest.approx(6.578505e-11, rel=1e-5)


def test_path_loss_is_finite_for_tiny_and_huge_distances():
    pl = channels.path_loss_db(np.array([0.0, 1e-300, 1.0, 1e300]))
    assert np.all(np.isfinite(pl))
    # clipped at 1 m: 128.1 - 3 * 37.6 = 15.3 dB
    assert pl[0] == pytest.approx(15.3) and pl[1] == pytest.approx(15.3)
    g = channels.path_gain(np.array([0.0, 1e300]))
    assert np.all(np.isfinite(g)) and np.all(g >= 0)


def test_fixed_distances_and_range():
    c = SystemConfig(distances_m=(10.0, 20.0, 30.0, 40.0)).validate()
    d = channels.draw_distances(np.random.default_rng(0), c)
    np.testing.assert_array_equal(d, [10.0, 20.0, 30.0, 40.0])
    c = SystemConfig().validate()
    d = channels.draw_distances(np.random.default_rng(0), c)
    assert d.shape == (4,) and np.all((d >= 50.0) & (d <= 300.0))


@settings(max_examples=50, deadline=None)
@given(seed=SEEDS)
def test_distances_reproducible_and_seed_dependent(seed):
    c = SystemConfig().validate()
    a = channels.draw_distances(np.random.default_rng(seed), c)
    b = channels.draw_distances(np.random.default_rng(seed), c)
    o = channels.draw_distances(np.random.default_rng(seed + 1), c)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, o)


@settings(max_examples=50, deadline=None)
@given(seed=SEEDS, kind=st.sampled_from(["rayleigh", "rician"]), rho=st.sampled_from([0.0, 0.5, 0.95]))
def test_fading_reproducible_and_seed_dependent(seed, kind, rho):
    def run(s):
        rng = np.random.default_rng(s)
        proc = channels.FadingProcess(kind, (3, 4), rician_k=3.0, rho=rho)
        seq = [proc.reset(rng)] + [proc.step(rng) for _ in range(5)]
        return np.stack(seq)

    a, b, o = run(seed), run(seed), run(seed + 1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, o)
    assert a.shape == (6, 3, 4) and np.all(a >= 0) and np.all(np.isfinite(a))
    x = channels.draw_fading_power(np.random.default_rng(seed), kind, 5, rician_k=2.0)
    y = channels.draw_fading_power(np.random.default_rng(seed), kind, 5, rician_k=2.0)
    z = channels.draw_fading_power(np.random.default_rng(seed + 1), kind, 5, rician_k=2.0)
    np.testing.assert_array_equal(x, y)
    assert not np.array_equal(x, z)


def test_no_fading_is_one():
    proc = channels.FadingProcess("none", (2, 3))
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(proc.reset(rng), np.ones((2, 3)))
    np.testing.assert_array_equal(proc.step(rng), np.ones((2, 3)))


@pytest.mark.parametrize("kind,k", [("rayleigh", 0.0), ("rician", 3.0), ("rician", 0.0)])
def test_fading_power_statistics(kind, k):
    # |h|^2 has mean 1. Rayleigh: Exp(1), variance 1. Rician K: variance (1 + 2K) / (K + 1)^2.
    p = channels.draw_fading_power(np.random.default_rng(1), kind, 200_000, rician_k=k)
    assert p.mean() == pytest.approx(1.0, abs=0.01)
    var = 1.0 if kind == "rayleigh" else (1 + 2 * k) / (k + 1) ** 2  # K=3: 7/16 = 0.4375
    assert p.var() == pytest.approx(var, rel=0.03)


@pytest.mark.parametrize("rho", [0.0, 0.6, 0.9])
def test_gauss_markov_correlation(rho):
    # h(t+1) = rho h(t) + sqrt(1 - rho^2) w(t): stationary CN(0,1), E[h(t+1) conj(h(t))] = rho,
    # and the power |h|^2 has lag-1 correlation rho^2 (Rayleigh).
    rng = np.random.default_rng(2)
    proc = channels.FadingProcess("rayleigh", (20_000,), rho=rho)
    proc.reset(rng)
    h0 = proc._w.copy()
    p0 = proc.power
    proc.step(rng)
    h1 = proc._w.copy()
    p1 = proc.power
    assert np.mean(h1 * np.conj(h0)).real == pytest.approx(rho, abs=0.03)
    assert np.mean(np.abs(h1) ** 2) == pytest.approx(1.0, abs=0.03)
    assert np.corrcoef(p0, p1)[0, 1] == pytest.approx(rho**2, abs=0.03)


def test_fading_bad_arguments():
    with pytest.raises(ValueError, match="nakagami"):
        channels.FadingProcess("nakagami", (2,))
    with pytest.raises(ValueError, match="rho"):
        channels.FadingProcess("rayleigh", (2,), rho=1.0)
