"""Energy and latency of links: worked examples, monotonicity, convexity, overflow safety."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from siftmoe_gym.channels import path_gain
from siftmoe_gym.config import SystemConfig
from siftmoe_gym.energy import (
    MAX_VALUE,
    LinkParams,
    dbm_to_watt,
    link_costs,
    load_cost_tables,
    node_cost_vectors,
    required_power,
)

LINK = LinkParams.from_config(SystemConfig())
G200 = 6.578505108925862e-11  # 10^(-101.818728/10), path loss at 200 m (see test_channels)
G300 = 10 ** (-108.4397591774593 / 10)


def test_link_params_worked_example():
    # N0 B = 10^((-174 - 30)/10) W/Hz * 1e7 Hz = 10^-20.4 * 1e7 = 3.98107e-14 W
    assert LINK.noise_w == pytest.approx(3.981072e-14, rel=1e-6)
    # P_max = 10^((23 - 30)/10) = 0.199526 W
    assert LINK.p_max_w == pytest.approx(0.1995262, rel=1e-6)
    assert LINK.bits_per_token == 65536.0 and LINK.bandwidth_hz == 1e7
    assert dbm_to_watt(30.0) == pytest.approx(1.0)


def test_required_power_worked_example_200m():
    # one token, t = tau/2 = 1 ms: spectral efficiency 65536 / (1e7 * 1e-3) = 6.5536 b/s/Hz
    # 2^6.5536 - 1 = 92.93559; P = N0B / G * 92.93559 = 3.98107e-14 / 6.57851e-11 * 92.93559
    #   = 6.05163e-4 * 92.93559 = 0.0562412 W
    p = required_power(G200, 1, 1e-3, LINK)
    assert p == pytest.approx(0.05624124, rel=1e-6)
    # n = 0 needs nothing
    assert required_power(G200, 0, 1e-3, LINK) == 0.0
    # two tokens in the same time: 2^13.1072 - 1 = 8820.1; P = 6.05163e-4 * 8820.1 = 5.3376 W
    assert required_power(G200, 2, 1e-3, LINK) == pytest.approx(6.05163e-4 * (2**13.1072 - 1), rel=1e-5)


def test_c_m_of_one_and_feasibility_200m_vs_300m():
    c = link_costs(np.array([G200, G300]), 1, 2e-3, LINK)
    # c_m(1) = 2 * (tau/2) * P = 2e-3 * 0.0562412 = 1.124825e-4 J
    assert c.energy_j[0] == pytest.approx(1.124825e-4, rel=1e-5)
    assert c.feasible[0] and c.latency_violation_s[0] == 0.0
    # spare: 10 log10(0.1995262 / 0.0562412) = 5.4995 dB  (~5.5 dB, model.md section 5)
    spare_db = 10 * np.log10(LINK.p_max_w / c.power_w[0])
    assert spare_db == pytest.approx(5.4995, abs=1e-3)
    # 300 m: P = N0B / G300 * 92.93559 = 3.98107e-14 * 10^10.843976 * 92.93559 = 0.25832 W > P_max
    assert required_power(G300, 1, 1e-3, LINK) == pytest.approx(0.2583200, rel=1e-5)
    assert not c.feasible[1]


def test_infeasible_fallback_energy_and_violation_300m():
    # SNR at P_max: 127 dB - 108.439759 dB = 18.560241 dB -> 71.78341
    # rate = 1e7 * log2(72.78341) = 6.185538e7 b/s; t' = 65536 / 6.185538e7 = 1.059504e-3 s
    # energy = 2 P_max t' = 2 * 0.1995262 * 1.059504e-3 = 4.227976e-4 J
    # violation = 2 t' - tau = 2.119007e-3 - 2e-3 = 1.190074e-4 s
    c = link_costs(G300, 1, 2e-3, LINK)
    assert not c.feasible
    assert c.energy_j == pytest.approx(4.227976e-4, rel=1e-5)
    assert c.latency_violation_s == pytest.approx(1.190074e-4, rel=1e-5)
    assert c.power_w == pytest.approx(LINK.p_max_w)


def test_prefill_load_table_worked_example():
    # tau_p = 20 ms, half = 10 ms: 0.65536 b/s/Hz per token; c(n) = 0.02 * 6.05163e-4 * (2^(0.65536 n) - 1)
    # n=1: 1.210326e-5 * 0.575011 = 6.95949e-6; n=2: 1.210326e-5 * 1.480654 = 1.79207e-5
    # n=3: 1.210326e-5 * 2.907058 = 3.51848e-5
    energy, feasible, viol = load_cost_tables(np.array([G200, G300]), 3, 20e-3, LINK)
    assert energy.shape == (3, 4) and feasible.shape == (3, 4) and viol.shape == (3, 4)
    np.testing.assert_array_equal(energy[0], 0.0)
    assert feasible[0].all()
    np.testing.assert_allclose(energy[1], [0.0, 6.95949e-6, 1.79207e-5, 3.51848e-5], rtol=1e-5)
    assert feasible[1].all() and (viol[1] == 0).all()


def test_node_cost_vectors_layout():
    gains = np.array([[G200, G300, 1e-6, 1e-20], [G300, G200, G200, G200]])
    energy, feasible, viol = node_cost_vectors(gains, 2e-3, LINK)
    assert energy.shape == (2, 5)
    assert energy[0, 0] == 0.0 and feasible[:, 0].all() and (viol[:, 0] == 0).all()
    assert energy[0, 1] == pytest.approx(1.124825e-4, rel=1e-5)
    assert energy[0, 2] == pytest.approx(4.227976e-4, rel=1e-5)
    np.testing.assert_array_equal(feasible[0], [True, True, False, True, False])
    assert viol[0, 4] > 0


@settings(max_examples=100, deadline=None)
@given(
    g1=st.floats(1e-16, 1e-6),
    ratio=st.floats(1.0001, 1e4),
    n=st.integers(1, 64),
    tau=st.floats(1e-4, 1e-1),
)
def test_energy_falls_with_gain(g1, ratio, n, tau):
    g2 = g1 * ratio
    a = link_costs(g1, n, tau, LINK)
    b = link_costs(g2, n, tau, LINK)
    assert b.energy_j <= a.energy_j * (1 + 1e-12)
    assert b.latency_violation_s <= a.latency_violation_s + 1e-18
    assert b.feasible >= a.feasible
    if a.feasible and b.feasible:  # strictly on the feasible region
        assert b.energy_j < a.energy_j


@settings(max_examples=100, deadline=None)
@given(g=st.floats(1e-14, 1e-6), tau=st.floats(1e-3, 1e-1), nmax=st.integers(3, 64))
def test_energy_rises_convexly_with_load(g, tau, nmax):
    energy, feasible, viol = load_cost_tables(np.array([g]), nmax, tau, LINK)
    e, f = energy[1], feasible[1]
    assert np.all(np.diff(e) > 0)  # increasing everywhere (also through the fallback)
    assert np.all(np.diff(viol[1]) >= 0)
    # feasibility is monotone: a prefix of loads is feasible
    assert np.all(np.diff(f.astype(int)) <= 0)
    ef = e[f]
    assume(len(ef) >= 3)
    second = ef[2:] - 2 * ef[1:-1] + ef[:-2]
    assert np.all(second >= -1e-12 * ef[2:])


EXTREME_GAINS = [0.0, 1e-300, 1e-30, 1e-12, 1.0, 1e300, -1.0]
EXTREME_N = [0, 1, 16, 1e6, 1e300]


@settings(max_examples=100, deadline=None)
@given(
    bw=st.sampled_from([1e-300, 1.0, 1e7, 1e300]),
    bits=st.sampled_from([1.0, 65536.0, 1e300]),
    psd=st.sampled_from([-300.0, -174.0, 100.0]),
    pmax=st.sampled_from([-100.0, 23.0, 100.0]),
    tau=st.sampled_from([1e-12, 2e-3, 1e6]),
    dist=st.sampled_from([0.0, 1e-300, 200.0, 1e300]),
)
def test_no_nan_or_inf_for_extremes(bw, bits, psd, pmax, tau, dist):
    link = LinkParams(bw, float(dbm_to_watt(psd)) * bw, float(dbm_to_watt(pmax)), bits)
    gains = np.array(EXTREME_GAINS + [float(path_gain(dist))])
    n = np.array(EXTREME_N, dtype=float)[:, None]
    p = required_power(gains, n, tau / 2, link)
    c = link_costs(gains, n, tau, link)
    for arr in (p, c.energy_j, c.latency_violation_s, c.power_w):
        assert np.all(np.isfinite(arr)) and np.all(arr >= 0) and np.all(arr <= 2 * MAX_VALUE)
    assert c.feasible[0].all() and (c.energy_j[0] == 0).all()  # n = 0 costs nothing
    vec = node_cost_vectors(np.broadcast_to(gains, (2, len(gains))), tau, link, n_tokens=3)
    tab = load_cost_tables(gains, 5, tau, link)
    for arr in vec[::2] + tab[::2]:
        assert np.all(np.isfinite(arr))
    # an infeasible link always costs something (energy or overrun)
    bad = ~c.feasible
    assert np.all(c.energy_j[bad] > 0)


def test_zero_gain_is_infeasible_but_finite():
    c = link_costs(np.array([0.0, 1e-300]), 1, 2e-3, LINK)
    assert not c.feasible.any()
    assert np.all(np.isfinite(c.energy_j)) and np.all(c.energy_j > 0)
    assert np.all(c.latency_violation_s > 0)


def test_system_node_costs_match_energy_module():
    from siftmoe_gym import WideSystem

    s = WideSystem()
    g = np.array([G200, G300, G200, G300])
    e, f, v = s.node_costs(g)
    np.testing.assert_allclose(e, [0.0, 1.124825e-4, 4.227976e-4, 1.124825e-4, 4.227976e-4], rtol=1e-5)
    np.testing.assert_array_equal(f, [True, True, False, True, False])
