"""A trace extracted from a tiny real model drives the simulator (WideSystem, and the env when registered)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from siftmoe_gym.hf.loading import ByteTokenizer  # noqa: E402
from siftmoe_gym.hf.testing import tiny_random_model  # noqa: E402
from siftmoe_gym.system import WideSystem  # noqa: E402
from siftmoe_gym.tracefile import save_trace  # noqa: E402
from siftmoe_gym.traces import extract_trace  # noqa: E402

TEXT = "import os\nfor name in sorted(os.listdir('.')):\n    print(name, len(name))\n" * 8


@pytest.fixture(scope="module")
def trace_path(tmp_path_factory):
    model = tiny_random_model("qwen3_moe", seed=5)
    trace = extract_trace(model, ByteTokenizer(), TEXT, 128, quantile=0.99, calibration_tokens=128, window=64,
                          progress=False)
    return save_trace(trace, tmp_path_factory.mktemp("tr") / "qwen3.safetensors"), trace


def test_widesystem_replays_extracted_trace(trace_path):
    path, trace = trace_path
    system = WideSystem({"num_nodes": 3, "eps_rel": 0.25}, trace=path)
    assert system.num_experts == trace.num_experts and system.top_k == trace.top_k
    assert system.num_layers == trace.num_layers and system.config.hidden_size == 32
    np.testing.assert_allclose(system.profile.delta, trace.delta)
    rng = np.random.default_rng(0)
    tokens = system.sample_tokens(rng, 4)
    assert tokens.probs.shape == (4, trace.num_layers, trace.num_experts)
    gains = system.gains(system.draw_distances(rng), system.fading_process().reset(rng))
    from siftmoe_gym.serving import solve_decode

    for t in range(4):
        for layer in range(system.num_layers):
            inst = system.decode_instance(tokens, t, layer, gains)
            top = inst.evaluate(inst.topk_assignment())
            sol = solve_decode(inst)
            assert top.error_bound == 0.0 and sol.energy_j <= top.energy_j + 1e-15
            assert sol.error_bound <= inst.budget * (1 + 1e-9) + 1e-15


def test_decode_env_on_extracted_trace(trace_path):
    gym = pytest.importorskip("gymnasium")
    try:
        import siftmoe_gym.envs  # noqa: F401  (registers the environments)
    except ImportError:
        pytest.skip("siftmoe_gym.envs is not available yet")
    if "siftmoe_gym/Decode-v0" not in gym.registry:
        pytest.skip("siftmoe_gym/Decode-v0 is not registered yet")
    path, _ = trace_path
    env = gym.make("siftmoe_gym/Decode-v0", trace=str(path))
    obs, info = env.reset(seed=0)
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert np.isfinite(reward)
        if terminated or truncated:
            obs, info = env.reset()
    env.close()
