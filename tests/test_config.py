"""Configuration: validation messages, presets, dict and YAML round trips."""

import math

import pytest

from siftmoe_gym.config import PRESETS, SyntheticModelConfig, SystemConfig, make_config, preset


def _raises(match_parts, **changes):
    with pytest.raises(ValueError) as exc:
        SystemConfig.from_dict(changes)
    msg = str(exc.value)
    for part in match_parts:
        assert part in msg, f"{part!r} not in {msg!r}"
    return msg


def test_defaults_match_model_page():
    c = SystemConfig().validate()
    assert (c.num_experts, c.top_k, c.num_layers, c.num_nodes) == (8, 2, 4, 4)
    # D = d * b = 4096 * 16 = 65,536 bits
    assert c.bits_per_token == 65536
    assert c.bandwidth_hz == 10e6 and c.noise_psd_dbm_hz == -174.0 and c.p_max_dbm == 23.0
    assert c.tau_s == 2e-3 and c.compute_energy_j == 1e-6 and c.eps_rel == 0.25
    # N - cap_0 = 7 remote experts over 4 edge nodes -> ceil(7 / 4) = 2 each
    assert c.edge_capacity == 2


def test_negative_bandwidth_names_field_value_and_rule():
    _raises(["bandwidth_hz", "-5", "[1000, 1e+10] Hz"], bandwidth_hz=-5.0)


def test_k_greater_than_n():
    _raises(["top_k", "9", "[1, 8]"], top_k=9)


def test_more_experts_than_nodes_can_hold():
    # 1 (node 0) + 4 nodes * 1 = 5 < 8 experts
    _raises(["node_capacity", "1", "num_experts", "1 + 4 * 1 < 8"], node_capacity=1)


def test_unknown_fading_kind():
    _raises(["fading", "'nakagami'", "rayleigh", "rician", "none"], fading="nakagami")


def test_unknown_placement():
    _raises(["placement", "'diagonal'", "round_robin"], placement="diagonal")


@pytest.mark.parametrize("field", ["bandwidth_hz", "p_max_dbm", "noise_psd_dbm_hz", "tau_s", "eps_rel", "rho", "quantile"])
def test_nan_rejected(field):
    _raises([field, "nan", "finite"], **{field: math.nan})


def test_inf_and_int_fields():
    _raises(["tau_s", "inf", "finite"], tau_s=math.inf)
    _raises(["num_experts", "nan", "integer"], num_experts=math.nan)
    _raises(["num_layers", "2.5", "integer"], num_layers=2.5)
    _raises(["renormalize_gates", "1", "bool"], renormalize_gates=1)


def test_ranges():
    _raises(["rho", "1.0", "[0, 1)"], rho=1.0)
    _raises(["quantile", "0.0", "(0, 1]"], quantile=0.0)
    _raises(["distance_range_m", "(300.0, 50.0)", "min <= max"], distance_range_m=(300.0, 50.0))
    _raises(["distances_m", "4 distances"], distances_m=(100.0, 200.0))
    _raises(["eps_max_factor", "0.5", "[1, 1000]"], eps_max_factor=0.5)
    _raises(["model.cluster_spread", "-0.1"], model={"cluster_spread": -0.1})


def test_unknown_keys():
    msg = _raises(["unknown config key", "bandwith_hz", "bandwidth_hz"], bandwith_hz=1e6)
    assert "allowed" in msg
    _raises(["unknown config key", "dim", "model_dim"], model={"dim": 3})


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown preset 'gpt5'.*mixtral-small"):
        preset("gpt5")
    with pytest.raises(ValueError, match="unknown preset"):
        make_config({"preset": "gpt5"})


def test_presets_build_and_validate():
    q = preset("qwen3-30b-a3b")
    assert (q.num_experts, q.top_k, q.num_layers) == (128, 8, 48)
    o = preset("olmoe")
    assert (o.num_experts, o.top_k, o.num_layers, o.renormalize_gates) == (64, 8, 16, False)
    m = preset("mixtral-small")
    assert m == SystemConfig()
    assert set(PRESETS) == {"mixtral-small", "qwen3-30b-a3b", "olmoe", "deepseek-v3", "qwen3-235b-a22b"}
    d = preset("deepseek-v3")
    assert (d.num_experts, d.top_k, d.num_layers, d.hidden_size, d.model.router_score) == (256, 8, 58, 7168, "sigmoid")
    w = preset("qwen3-235b-a22b")
    assert (w.num_experts, w.top_k, w.num_layers, w.hidden_size, w.model.router_score) == (128, 8, 94, 4096, "softmax")
    # preset plus override
    c = make_config({"preset": "olmoe", "num_nodes": 8})
    assert c.num_nodes == 8 and c.num_experts == 64


def test_presets_build_systems():
    from siftmoe_gym import WideSystem

    for name in ("mixtral-small", "olmoe"):
        s = WideSystem(name)
        cfg = s.config
        assert s.node_of.shape == (cfg.num_layers, cfg.num_experts)
        assert s.profile.delta.shape == (cfg.num_layers, cfg.num_experts, cfg.num_experts)
        assert s.budgets.shape == (cfg.num_layers,) and (s.budgets > 0).all()


def test_dict_round_trip():
    c = SystemConfig.from_dict({"num_nodes": 3, "distances_m": [60.0, 120.0, 250.0], "eps_abs": 0.1,
                                "fading": "rician", "model": {"model_dim": 16}})
    d = c.to_dict()
    assert d["distances_m"] == [60.0, 120.0, 250.0] and d["model"]["model_dim"] == 16
    assert SystemConfig.from_dict(d) == c
    assert make_config(c) == c and make_config(c) is not c


def test_yaml_round_trip(tmp_path):
    c = preset("olmoe").replace(rho=0.9, fading="rician", distance_range_m=(20.0, 80.0))
    path = tmp_path / "c.yaml"
    text = c.to_yaml(path)
    assert path.read_text() == text
    assert SystemConfig.from_yaml(path) == c
    assert SystemConfig.from_yaml(str(path)) == c
    assert SystemConfig.from_yaml(text) == c
    # a YAML file with a preset key and overrides
    p2 = tmp_path / "p.yaml"
    p2.write_text("preset: olmoe\nnum_nodes: 2\n")
    c2 = SystemConfig.from_yaml(p2)
    assert c2.num_nodes == 2 and c2.num_experts == 64


def test_replace_validates():
    c = SystemConfig()
    with pytest.raises(ValueError, match="bandwidth_hz"):
        c.replace(bandwidth_hz=0.0)
    assert c.replace(top_k=3).top_k == 3 and c.top_k == 2


def test_model_config_is_typed():
    c = SystemConfig.from_dict({"model": SyntheticModelConfig(model_dim=8)})
    assert isinstance(c.model, SyntheticModelConfig) and c.model.model_dim == 8


def test_top_k_stops_where_exact_serving_still_runs():
    """top_k above 12 is refused up front (the slot dynamic program holds 3^k pairs: at k = 20 a node-set step
    ran out of memory instead of an error)."""
    _raises(["top_k", "13", "[1, 12]"], num_experts=64, top_k=13)
    assert SystemConfig.from_dict({"num_experts": 64, "top_k": 12}).top_k == 12


def test_numpy_values_are_the_numbers_they_hold():
    """A config built with NumPy scalars and arrays passes the same checks as one written by hand (they used to be
    refused: num_experts=np.int64(8), distances_m=np.array of M distances); wrong values are still refused."""
    import numpy as np

    c = SystemConfig.from_dict({"num_experts": np.int64(8), "tau_s": np.float64(0.002), "model_seed": np.int64(3),
                                "distances_m": np.array([100.0, 200, 100, 100]), "model": {"model_dim": np.int32(16)}})
    assert c == SystemConfig.from_dict({"num_experts": 8, "tau_s": 0.002, "model_seed": 3,
                                        "distances_m": (100.0, 200.0, 100.0, 100.0), "model": {"model_dim": 16}})
    assert type(c.num_experts) is int and type(c.model.model_dim) is int
    _raises(["num_experts", "8.5"], num_experts=np.float64(8.5))
    nested = SystemConfig.from_dict({"distances_m": [np.int64(50)] * 4, "distance_range_m": [np.int64(50), np.int64(100)]})
    assert nested.distances_m == (50, 50, 50, 50) and nested.distance_range_m == (50, 100)
    with pytest.raises(ValueError, match="distances_m") as info:
        SystemConfig.from_dict({"distances_m": np.zeros((2, 2))})
    assert "\n" not in str(info.value)


def test_a_model_larger_than_the_machine_is_refused_before_drawing(monkeypatch):
    """A config inside every range whose synthetic model cannot fit in memory is refused up front, naming the fields
    that size it (it used to end in a MemoryError without a field, or run for minutes)."""
    import siftmoe_gym.synthetic as syn

    cfg = SystemConfig.from_dict({"num_experts": 16, "num_layers": 2})
    t = cfg.model.calibration_tokens  # 512; model_dim = expert_hidden = 32
    c = cfg.model.num_clusters
    assert syn.build_bytes(cfg) == 8 * (2 * 2 * 16 * 32 * 32 + 2 * c * 32 * 32 + 16 * 32 * 32 + 16 * t * 32 + t * 2 * 32
                                        + 2 * 16 * 16 + t * 2 * 16)
    monkeypatch.setattr(syn, "physical_memory", lambda: syn.build_bytes(cfg) - 1)
    class Drawn(Exception):
        pass

    def draw(self, rng):
        raise Drawn

    monkeypatch.setattr(syn.SyntheticMoE, "_draw_layers", draw)
    with pytest.raises(ValueError, match=r"needs about .* GiB, more than this machine's .*num_layers=2, num_experts=16"):
        syn.SyntheticMoE(cfg, use_cache=False)
    monkeypatch.setattr(syn, "physical_memory", lambda: syn.build_bytes(cfg))  # exactly enough: drawn
    with pytest.raises(Drawn):
        syn.SyntheticMoE(cfg, use_cache=False)
    monkeypatch.setattr(syn, "physical_memory", lambda: None)  # an OS that does not say: no check
    with pytest.raises(Drawn):
        syn.SyntheticMoE(cfg, use_cache=False)
