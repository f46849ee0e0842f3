"""Placement generators: capacities, coverage, popularity, seeding."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siftmoe_gym.config import PLACEMENTS, SystemConfig
from siftmoe_gym.placement import make_placement


@st.composite
def configs(draw):
    n = draw(st.integers(2, 40))
    m = draw(st.integers(1, 8))
    local = draw(st.integers(0, min(n, 6)))
    explicit = draw(st.booleans())
    cap = None
    if explicit:
        need = max(1, -(-(n - local) // m))
        cap = draw(st.integers(need, max(need, n)))
        cap = min(cap, n)
    kind = draw(st.sampled_from(PLACEMENTS))
    layers = draw(st.integers(1, 3))
    return SystemConfig.from_dict(
        {"num_experts": n, "top_k": 1, "num_nodes": m, "local_capacity": local, "node_capacity": cap,
         "placement": kind, "num_layers": layers}
    )


@settings(max_examples=100, deadline=None)
@given(cfg=configs(), seed=st.integers(0, 2**31))
def test_every_generator_respects_capacities_and_covers_all(cfg, seed):
    rng = np.random.default_rng(seed)
    pop = rng.dirichlet(np.ones(cfg.num_experts), size=cfg.num_layers)
    node_of = make_placement(cfg, rng=np.random.default_rng(seed), popularity=pop)
    assert node_of.shape == (cfg.num_layers, cfg.num_experts)
    assert node_of.min() >= 0 and node_of.max() <= cfg.num_nodes
    caps = np.array([cfg.local_capacity] + [cfg.edge_capacity] * cfg.num_nodes)
    for layer in range(cfg.num_layers):
        counts = np.bincount(node_of[layer], minlength=cfg.num_nodes + 1)
        assert counts.sum() == cfg.num_experts  # every expert placed exactly once
        assert np.all(counts <= caps), (counts, caps)
        if cfg.placement == "popular_local" and cfg.local_capacity > 0:
            top = np.argsort(-pop[layer], kind="stable")[: cfg.local_capacity]
            assert np.all(node_of[layer, top] == 0)
            assert counts[0] == min(cfg.local_capacity, cfg.num_experts)


def test_round_robin_worked_example():
    # caps: node 0 -> 1, edges -> ceil(7/4) = 2. Cycle 0,1,2,3,4 then node 0 is full: 1,2,3.
    cfg = SystemConfig(placement="round_robin").validate()
    node_of = make_placement(cfg)
    np.testing.assert_array_equal(node_of, np.tile([0, 1, 2, 3, 4, 1, 2, 3], (4, 1)))


def test_contiguous_worked_example():
    # node 0 takes expert 0, then 7 experts in blocks of 2, 2, 2, 1
    cfg = SystemConfig(placement="contiguous").validate()
    node_of = make_placement(cfg)
    np.testing.assert_array_equal(node_of[0], [0, 1, 1, 2, 2, 3, 3, 4])


def test_popular_local_puts_most_popular_on_node_zero():
    cfg = SystemConfig(placement="popular_local", local_capacity=2).validate()
    pop = np.tile(np.array([0.05, 0.1, 0.3, 0.05, 0.05, 0.25, 0.1, 0.1]), (4, 1))
    pop[1] = np.roll(pop[0], 1)  # layer 1: the popular experts are 3 and 6
    node_of = make_placement(cfg, popularity=pop)
    assert set(np.flatnonzero(node_of[0] == 0)) == {2, 5}
    assert set(np.flatnonzero(node_of[1] == 0)) == {3, 6}
    # the rest go round-robin over the edge nodes only
    assert set(node_of[0][node_of[0] != 0]) == {1, 2, 3, 4}


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_random_placement_reproducible_and_seed_dependent(seed):
    cfg = SystemConfig(placement="random", num_experts=16, num_layers=2).validate()
    a = make_placement(cfg, rng=np.random.default_rng(seed))
    b = make_placement(cfg, rng=np.random.default_rng(seed))
    np.testing.assert_array_equal(a, b)
    others = [make_placement(cfg, rng=np.random.default_rng(seed + i)) for i in (1, 2)]
    assert any(not np.array_equal(a, o) for o in others)


def test_placement_needs_its_inputs():
    with pytest.raises(ValueError, match="Generator"):
        make_placement(SystemConfig(placement="random").validate())
    with pytest.raises(ValueError, match="popularity"):
        make_placement(SystemConfig(placement="popular_local").validate())
    with pytest.raises(ValueError, match="shape"):
        make_placement(SystemConfig(placement="popular_local").validate(), popularity=np.ones((2, 8)))


def test_system_placement_is_fixed_by_model_seed():
    from siftmoe_gym import WideSystem

    a = WideSystem({"placement": "random", "model_seed": 3}).node_of
    b = WideSystem({"placement": "random", "model_seed": 3}).node_of
    c = WideSystem({"placement": "random", "model_seed": 4}).node_of
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
