"""Every supported MoE family, built from its published routing settings, against an independent reference rule.

Each family's tiny random model (hidden 32, 2 decoder layers) takes the
routing fields of a published checkpoint's ``config.json`` (expert count,
top-k, norm_topk_prob, routed scaling, groups, selection bias, jitter; only
sizes shrunk, and ``first_k_dense_replace`` / ``moe_layer_start_index``
lowered to 1 so that one of the two layers is an MoE layer).  The values
were transcribed from the published files; this machine has no network to
re-read them.  For each family the test extracts a trace and checks

- the stored scores, selection and gates against a numpy float64
  implementation of the family's published rule (written here, from the
  router weights, not from the model's router code);
- the trace replayed in Decode-v0 keeps every observation inside the space;
- all-keep decisions reproduce the model's logits bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import gymnasium as gym  # noqa: E402

import siftmoe_gym  # noqa: E402,F401  (registers the environments)
from siftmoe_gym.hf.adapters import SUPPORTED, moe_layers  # noqa: E402
from siftmoe_gym.hf.decisions import follow_decisions, keep_all  # noqa: E402
from siftmoe_gym.hf.loading import ByteTokenizer  # noqa: E402
from siftmoe_gym.hf.testing import tiny_random_model  # noqa: E402
from siftmoe_gym.tracefile import load_trace, save_trace  # noqa: E402
from siftmoe_gym.traces import extract_trace  # noqa: E402

torch.set_num_threads(1)  # tiny models: one thread is fastest, and immune to busy cores

TEXT = ("class Router:\n    def route(self, x):\n        return softmax(x @ self.w)  # top-k experts\n"
        "Experts far away cost a radio round trip; similar ones can stand in. ") * 6
T = 64
_S = dict(moe_intermediate_size=8)  # shrunk expert width where the family has one
_DS = dict(kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, rope_scaling=None)

PUBLISHED: dict[str, tuple[str, dict]] = {
    "mixtral": ("mistralai/Mixtral-8x7B-v0.1", dict(num_local_experts=8, num_experts_per_tok=2, router_jitter_noise=0.0)),
    "qwen2_moe": ("Qwen/Qwen1.5-MoE-A2.7B", dict(num_experts=60, num_experts_per_tok=4, norm_topk_prob=False,
                                                  shared_expert_intermediate_size=32, **_S)),
    "qwen3_moe": ("Qwen/Qwen3-30B-A3B", dict(num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, **_S)),
    "qwen3_next": ("Qwen/Qwen3-Next-80B-A3B-Instruct", dict(num_experts=512, num_experts_per_tok=10, norm_topk_prob=True,
                                                            shared_expert_intermediate_size=32, **_S)),
    "olmoe": ("allenai/OLMoE-1B-7B-0924", dict(num_experts=64, num_experts_per_tok=8, norm_topk_prob=False,
                                               intermediate_size=8)),
    "minimax": ("MiniMaxAI/MiniMax-Text-01", dict(num_local_experts=32, num_experts_per_tok=2, intermediate_size=8)),
    "hunyuan_v1_moe": ("tencent/Hunyuan-A13B-Instruct", dict(num_experts=64, moe_topk=8, num_shared_expert=1,
                                                             intermediate_size=8)),
    "jamba": ("ai21labs/AI21-Jamba-Mini-1.5", dict(num_experts=16, num_experts_per_tok=2, expert_layer_period=2,
                                                   expert_layer_offset=1, intermediate_size=8)),
    "granitemoe": ("ibm-granite/granite-3.1-3b-a800m-base", dict(num_local_experts=40, num_experts_per_tok=8,
                                                                 intermediate_size=8)),
    "gpt_oss": ("openai/gpt-oss-20b", dict(num_local_experts=32, num_experts_per_tok=4, intermediate_size=8)),
    "ernie4_5_moe": ("baidu/ERNIE-4.5-21B-A3B-PT", dict(moe_num_experts=64, moe_k=6, moe_num_shared_experts=2,
                                                        moe_norm_min=1e-12, moe_layer_start_index=1,
                                                        moe_layer_interval=1, **_S)),
    "deepseek_v2": ("deepseek-ai/DeepSeek-V2", dict(n_routed_experts=160, num_experts_per_tok=6, n_group=8,
                                                    topk_group=3, topk_method="group_limited_greedy",
                                                    routed_scaling_factor=16.0, n_shared_experts=2,
                                                    first_k_dense_replace=1, **_S, **_DS)),
    "deepseek_v3": ("deepseek-ai/DeepSeek-V3", dict(n_routed_experts=256, num_experts_per_tok=8, n_group=8, topk_group=4,
                                                    routed_scaling_factor=2.5, norm_topk_prob=True, n_shared_experts=1,
                                                    first_k_dense_replace=1, **_S, **_DS)),
    "glm4_moe": ("zai-org/GLM-4.5", dict(n_routed_experts=160, num_experts_per_tok=8, n_group=1, topk_group=1,
                                         routed_scaling_factor=2.5, norm_topk_prob=True, n_shared_experts=1,
                                         first_k_dense_replace=1, **_S)),
    "phimoe": ("microsoft/Phi-3.5-MoE-instruct", dict(num_local_experts=16, num_experts_per_tok=2,
                                                      router_jitter_noise=0.01, input_jitter_noise=0.01,
                                                      intermediate_size=8)),
    "dbrx": ("databricks/dbrx-base", dict(ffn_config={"ffn_hidden_size": 8, "moe_num_experts": 16, "moe_top_k": 4,
                                                      "moe_normalize_expert_weights": 1.0})),
    "jetmoe": ("jetmoe/jetmoe-8b", dict(num_local_experts=8, num_experts_per_tok=2)),
}
EXTRA = {"deepseek_v2-lite": ("deepseek_v2", "deepseek-ai/DeepSeek-V2-Lite",
                              dict(n_routed_experts=64, num_experts_per_tok=6, n_group=1, topk_group=1,
                                   topk_method="greedy", routed_scaling_factor=1.0, n_shared_experts=2,
                                   first_k_dense_replace=1, **_S, **_DS))}
CASES = {**{k: (k, *v) for k, v in PUBLISHED.items()}, **EXTRA}
assert set(PUBLISHED) == set(SUPPORTED)


# ---------------------------------------------------------------- the published rules, in numpy float64
def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _top(c, k):
    return np.argsort(-c, axis=-1, kind="stable")[..., :k]


def _group_mask(c, n_group, topk_group, group_score):
    t, n = c.shape
    g = group_score(c.reshape(t, n_group, n // n_group))  # (T, G)
    keep = np.zeros_like(g, dtype=bool)
    np.put_along_axis(keep, _top(g, topk_group), True, axis=-1)
    return np.repeat(keep, n // n_group, axis=-1)


def _sparsemixer(z, eps):
    """PhiMoE's eval-mode sparsemixer (two slots)."""
    rows = np.arange(len(z))
    out_i, out_g, masked = [], [], z.copy()
    for _ in range(2):
        i = masked.argmax(axis=-1)
        m = masked[rows, i][:, None]
        factor = np.maximum(np.abs(z), m)
        mm = np.where((m - z) / factor > 2 * eps, -np.inf, masked)
        out_i.append(i)
        out_g.append(_softmax(mm)[rows, i])
        masked = masked.copy()
        masked[rows, i] = -np.inf
    return np.stack(out_i, -1), np.stack(out_g, -1)


def reference(mt: str, cfg, lay, x: np.ndarray):
    """``(scores (T, N), selected (T, k), gates (T, k))`` by the family's published rule from the router weights."""
    r, k = lay.router, lay.top_k
    w = {"dbrx": lambda: r.layer.weight, "jetmoe": lambda: r.layer.weight, "hunyuan_v1_moe": lambda: r.wg.weight}.get(
        mt, lambda: r.weight)().detach().double().numpy()
    z = x @ w.T
    if mt == "gpt_oss":
        z = z + r.bias.detach().double().numpy()
    if mt in ("deepseek_v3", "glm4_moe"):
        s = 1.0 / (1.0 + np.exp(-z))
        c = s + r.e_score_correction_bias.detach().double().numpy()
        c = np.where(_group_mask(c, cfg.n_group, cfg.topk_group, lambda g: np.sort(g, -1)[..., -2:].sum(-1)), c, -np.inf)
        sel = _top(c, k)
        g = np.take_along_axis(s, sel, -1)
        if cfg.norm_topk_prob:
            g = g / (g.sum(-1, keepdims=True) + 1e-20)
        return s, sel, g * cfg.routed_scaling_factor
    p = _softmax(z)
    if mt == "phimoe":
        sel, g = _sparsemixer(z, cfg.router_jitter_noise)
        return p, sel, g
    if mt == "deepseek_v2":
        c = p
        if cfg.topk_method == "group_limited_greedy":
            c = np.where(_group_mask(p, cfg.n_group, cfg.topk_group, lambda g: g.max(-1)), p, 0.0)
        sel = _top(c, k)
        return p, sel, np.take_along_axis(p, sel, -1) * cfg.routed_scaling_factor
    if mt == "ernie4_5_moe":
        sel = _top(p + r.moe_statics.e_score_correction_bias.detach().double().numpy().reshape(-1), k)
        g = np.take_along_axis(p, sel, -1)
        return p, sel, g / np.maximum(g.sum(-1, keepdims=True), cfg.moe_norm_min)
    if mt in ("gpt_oss", "granitemoe", "jetmoe"):  # softmax over the top-k logits
        sel = _top(z, k)
        return p, sel, _softmax(np.take_along_axis(z, sel, -1))
    sel = _top(p, k)
    g = np.take_along_axis(p, sel, -1)
    if mt == "dbrx":
        pn = cfg.ffn_config.moe_normalize_expert_weights
        return p, sel, g / np.linalg.norm(g, ord=pn, axis=-1, keepdims=True)
    renorm = {"jamba": False, "mixtral": True, "minimax": True, "hunyuan_v1_moe": True}.get(mt, None)
    if renorm is None:
        renorm = bool(cfg.norm_topk_prob)
    return p, sel, g / g.sum(-1, keepdims=True) if renorm else g


def _sorted_by_gate(sel, g):
    o = np.lexsort((sel, -g), axis=-1) if sel.ndim == 1 else np.stack([np.lexsort((s, -gg)) for s, gg in zip(sel, g)])
    return np.take_along_axis(sel, o, -1), np.take_along_axis(g, o, -1)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    mt, ckpt, routing = CASES[request.param]
    model = tiny_random_model(mt, seed=7, **routing)
    trace, cal = extract_trace(model, ByteTokenizer(), TEXT, T, calibration_tokens=T, window=32, progress=False,
                               return_calibration=True, model_name=ckpt)
    path = save_trace(trace, tmp_path_factory.mktemp("fam") / f"{request.param}.safetensors")
    return request.param, mt, model, trace, cal, path


def test_routing_matches_the_published_rule(case):
    name, mt, model, trace, cal, _ = case
    assert trace.version == 2 and trace.extra["router_score"] == SUPPORTED[mt].score
    for lay in moe_layers(model):
        x = cal["hidden"][lay.index].double().numpy()
        s, sel, g = reference(mt, model.config, lay, x)
        np.testing.assert_allclose(trace.router_probs[:, lay.index], s, atol=2e-6, err_msg=name)
        assert np.array_equal(np.sort(trace.topk[:, lay.index], -1), np.sort(sel, -1)), name
        sel_s, g_s = _sorted_by_gate(sel, g)
        np.testing.assert_allclose(trace.gates[:, lay.index], g_s, rtol=1e-4, atol=1e-6, err_msg=name)
        assert np.array_equal(trace.topk[:, lay.index], sel_s) or mt == "phimoe"  # PhiMoE ties: see below
    # scores and gates are apart: the scores are bounded, the gates carry the scaling
    assert 0.0 <= trace.router_probs.min() and trace.router_probs.max() <= 1.0
    scale = SUPPORTED[mt].scaling(model.config)
    if scale != 1.0:
        assert trace.extra["routed_scaling_factor"] == scale and trace.gates.max() > 1.0 / trace.top_k


def test_replay_in_decode_keeps_observations_in_space(case):
    name, mt, model, trace, _, path = case
    back = load_trace(path)
    np.testing.assert_array_equal(back.gates, trace.gates.astype(np.float32))
    env = gym.make("siftmoe_gym/Decode-v0", trace=str(path), config={"episode_tokens": 4})
    space = env.observation_space
    obs, _ = env.reset(seed=0)
    assert space.contains(obs), name
    u = env.unwrapped
    np.testing.assert_allclose(u.system.workload._gates, back.gates, rtol=1e-6)  # the env serves the model's gates
    for i in range(8):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert space.contains(obs) and np.isfinite(reward), (name, i)
        if terminated or truncated:
            obs, _ = env.reset(seed=i + 1)
            assert space.contains(obs)
    env.close()
    if SUPPORTED[mt].scaling(model.config) != 1.0:  # DeepSeek-V2 x16 used to put gates into router_probs (issue 17)
        from gymnasium.utils.env_checker import check_env

        check_env(gym.make("siftmoe_gym/Decode-v0", trace=str(path), config={"episode_tokens": 4}).unwrapped,
                  skip_render_check=True)
    # popular_local placement ranks experts by how often the model selected them
    sel = np.stack([np.bincount(back.topk[:, l].ravel(), minlength=back.num_experts) for l in range(back.num_layers)])
    np.testing.assert_allclose(u.system.profile.popularity, sel / sel.sum(axis=1, keepdims=True))


def test_all_keep_reproduces_logits_bitwise(case):
    name, _, model, _, cal, _ = case
    ids = torch.from_numpy(np.asarray(cal["ids"][:64])).reshape(2, 32)
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        with follow_decisions(model, keep_all) as log:
            kept = model(input_ids=ids).logits
    assert torch.equal(ref, kept), name
    assert log.records and all(np.all(r.deviation == 0) for r in log.records)


@pytest.mark.parametrize("mt", ["qwen3_moe", "qwen2_moe", "gpt_oss", "mixtral"])
def test_bfloat16_gates_are_stored_and_their_rule_found(mt):
    """bf16 models used to be recorded as "explicit" with router_probs rows summing to 1.3-1.7."""
    routing = dict(PUBLISHED[mt][1], num_experts_per_tok=2) if mt != "mixtral" else {}
    model = tiny_random_model(mt, seed=2, dtype=torch.bfloat16, **routing)
    trace = extract_trace(model, ByteTokenizer(), TEXT, T, calibration_tokens=T, window=32, progress=False)
    assert trace.extra["dtype"] in ("bfloat16", "float32")
    np.testing.assert_allclose(trace.router_probs.sum(-1), 1.0, atol=1e-5)
    want = "renormalized" if SUPPORTED[mt].renormalizes(model.config) else "plain"
    assert trace.extra["gate_mode"] == want and trace.renormalize_gates == (want == "renormalized")
    sel = np.take_along_axis(trace.router_probs, trace.topk, -1).astype(np.float64)
    rule = sel / sel.sum(-1, keepdims=True) if want == "renormalized" else sel
    np.testing.assert_allclose(trace.gates, rule, rtol=2 ** -7, atol=1e-6)  # within bf16 rounding of the rule
