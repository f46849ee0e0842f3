"""Real-model integration on tiny random models of several architectures (built from configs, no downloads)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from siftmoe_gym.bounds import SKIP, error_bound, measured_deviation  # noqa: E402
from siftmoe_gym.hf.adapters import SUPPORTED, UnsupportedModelError, moe_layers  # noqa: E402
from siftmoe_gym.hf.decisions import follow_decisions, keep_all  # noqa: E402
from siftmoe_gym.hf.evaluate import evaluate_policy  # noqa: E402
from siftmoe_gym.hf.loading import ByteTokenizer, encode_text  # noqa: E402
from siftmoe_gym.hf.testing import ARCH_KWARGS, tiny_random_model  # noqa: E402
from siftmoe_gym.tracefile import load_trace, save_trace  # noqa: E402
from siftmoe_gym.traces import extract_trace  # noqa: E402

torch.set_num_threads(1)  # tiny models: one thread is fastest, and immune to busy cores

TEXT = (
    "def energy(tokens, layer):\n    # wireless distributed mixture of experts\n    return sum(t * layer for t in tokens)\n"
    "Similar experts can replace each other; skipping an expert costs at most its gain. " * 4
)
ARCHS = sorted(ARCH_KWARGS)
assert set(ARCHS) == set(SUPPORTED)


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request):
    return request.param, tiny_random_model(request.param, seed=3)


def _random_policy(seed: int, only_layer: int | None = None, p_change: float = 0.6):
    rng = np.random.default_rng(seed)

    def policy(r):
        a = r.topk.copy()
        if only_layer is not None and r.layer != only_layer:
            return a
        n = r.probs.shape[1]
        change = rng.random(a.shape) < p_change
        repl = rng.integers(-1, n, size=a.shape)  # -1 = skip
        return np.where(change, repl, a)

    return policy


def test_trace_shapes_and_similarity(arch_model, tmp_path):
    arch, model = arch_model
    layers = moe_layers(model)
    n, k = layers[0].num_experts, layers[0].top_k
    trace = extract_trace(model, ByteTokenizer(), TEXT, 80, quantile=0.99, calibration_tokens=96, window=48, progress=False)
    assert trace.router_probs.shape == (80, 2, n)
    assert trace.topk.shape == (80, 2, k) and trace.hidden_norms.shape == (80, 2)
    assert trace.delta.shape == (2, n, n) and trace.sigma.shape == (2, n)
    assert np.array_equal(trace.delta, np.swapaxes(trace.delta, 1, 2))
    assert np.all(np.diagonal(trace.delta, axis1=1, axis2=2) == 0)
    assert np.all(trace.sigma > 0) and np.all(trace.delta[:, ~np.eye(n, dtype=bool)] > 0)
    assert trace.hidden_size == 32 and trace.num_layers == 2
    # the gates the environment serves are the model's own gates, and the scores are the router's
    _, cal = extract_trace(model, ByteTokenizer(), TEXT, 48, calibration_tokens=48, window=48, progress=False,
                           return_calibration=True)
    from siftmoe_gym.config import SystemConfig
    from siftmoe_gym.workload import TraceWorkload

    wl = TraceWorkload(SystemConfig(num_experts=n, top_k=k, num_layers=2), trace)
    for lay in layers:
        idx_s, w_s = lay.route(cal["hidden"][lay.index])
        assert np.array_equal(trace.topk[:48, lay.index], idx_s.numpy())
        np.testing.assert_allclose(wl._gates[:48, lay.index], w_s.double().numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(trace.router_probs[:48, lay.index], lay.scores(cal["hidden"][lay.index]).numpy(),
                                   rtol=1e-6, atol=1e-7)
    path = save_trace(trace, tmp_path / f"{arch}.safetensors")
    back = load_trace(path)
    assert back.extra["gate_mode"] in ("renormalized", "plain", "explicit")
    np.testing.assert_array_equal(back.topk, trace.topk)


def test_all_keep_is_bitwise_identical(arch_model):
    _, model = arch_model
    x = torch.from_numpy(np.array(encode_text(ByteTokenizer(), TEXT)[:64])).reshape(2, 32)
    with torch.no_grad():
        ref = model(input_ids=x).logits
        with follow_decisions(model, keep_all) as log:
            kept = model(input_ids=x).logits
        with follow_decisions(model, lambda r: None):
            kept2 = model(input_ids=x).logits
        after = model(input_ids=x).logits  # patch removed
    assert torch.equal(ref, kept) and torch.equal(ref, kept2) and torch.equal(ref, after)
    assert len(log.records) == 2 and all(np.all(r.deviation == 0) for r in log.records)


class _Recording:
    """An adapter that records ``(layer, x, served output)`` of every call and otherwise defers to ``inner``."""

    def __init__(self, inner, seen):
        self.inner, self.seen = inner, seen

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def install(self, lay, handler):
        def rec(l, x, idx, w, orig):
            out = handler(l, x, idx, w, orig)
            self.seen.append((l, x.detach().clone(), out.detach().clone()))
            return out

        return self.inner.install(lay, rec)


def test_skip_and_replace_follow_served_output_formula(arch_model):
    _, model = arch_model
    layers = moe_layers(model)
    x_ids = torch.from_numpy(np.array(encode_text(ByteTokenizer(), TEXT)[:40]))[None]
    seen: list = []
    for lay in layers:
        lay.adapter = _Recording(lay.adapter, seen)
    with torch.no_grad(), follow_decisions(model, _random_policy(7), layers=layers) as log:
        model(input_ids=x_ids)
    assert len(seen) == len(log.records) == len(layers)
    changed_any = False
    for (lay, x, out), rec in zip(seen, log.records):
        assert lay.index == rec.layer
        a, g = rec.assignment, rec.gates
        changed_any |= bool(np.any(a != rec.topk))
        assert np.any(a == SKIP) and np.any((a >= 0) & (a != rec.topk))
        outs = lay.expert_outputs(x).double()  # (N, T, d) from the expert callables
        t_idx = torch.arange(x.shape[0])
        want = torch.zeros_like(outs[0])
        for s in range(a.shape[1]):
            keep = torch.from_numpy(a[:, s] >= 0)
            srv = torch.from_numpy(np.maximum(a[:, s], 0))
            want += torch.from_numpy(g[:, s])[:, None] * outs[srv, t_idx] * keep[:, None]
        torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
        # the logged deviation is ||y_hat - y|| / ||x|| with y the top-k output
        dev = measured_deviation(outs.numpy(), x.double().numpy(), g, rec.topk, a)
        np.testing.assert_allclose(rec.deviation, dev, rtol=1e-4, atol=1e-6)
    assert changed_any


def test_deviation_within_bound_on_calibration_tokens_q1(arch_model):
    _, model = arch_model
    tok = ByteTokenizer()
    trace, cal = extract_trace(model, tok, TEXT, 96, quantile=1.0, calibration_tokens=96, window=48,
                               progress=False, return_calibration=True)
    ids = cal["ids"][:96]
    # offline, with the core's formula on the captured calibration hidden states
    for lay in moe_layers(model):
        x = cal["hidden"][lay.index]
        outs = lay.expert_outputs(x).double().numpy()
        rng = np.random.default_rng(lay.index)
        a = np.where(rng.random((96, trace.top_k)) < 0.7, rng.integers(-1, trace.num_experts, (96, trace.top_k)),
                     trace.topk[:, lay.index])
        gates = trace.applied_gates()
        dev = measured_deviation(outs, x.double().numpy(), gates[:, lay.index], trace.topk[:, lay.index], a)
        bnd = error_bound(gates[:, lay.index], trace.topk[:, lay.index], a, trace.delta[lay.index], trace.sigma[lay.index])
        assert np.all(dev <= bnd * (1 + 1e-9) + 1e-12)
    # inside the model: change one layer at a time so its input is the calibration input
    for layer in range(trace.num_layers):
        res = evaluate_policy(model, ids, _random_policy(11 + layer, only_layer=layer, p_change=0.8), window=48,
                              delta=trace.delta, sigma=trace.sigma)
        rec = [r for r in res["log"].records if r.layer == layer]
        np.testing.assert_allclose(np.concatenate([r.norms for r in rec]), trace.hidden_norms[:, layer], rtol=1e-5)
        dev, bnd = res["log"].bounds(trace.delta, trace.sigma)
        tol = res["log"].tolerances()
        assert np.all(dev <= bnd * (1 + 1e-9) + tol), float(np.max(dev - bnd - tol))
        assert np.all(tol < 1e-4 * np.maximum(bnd, 1.0))
        assert res["coverage"] == 1.0 and res["max_deviation"] > 0


def test_unsupported_model_raises_clear_error():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=64)
    model = LlamaForCausalLM(cfg)
    with pytest.raises(UnsupportedModelError, match="model_type 'llama' is not a supported MoE family.*MixtralForCausalLM"):
        moe_layers(model)
    with pytest.raises(UnsupportedModelError, match="Supported classes"):
        extract_trace(model, ByteTokenizer(), TEXT, 16, progress=False)


def test_bad_policy_output_is_rejected():
    model = tiny_random_model("mixtral")
    x = torch.zeros((1, 8), dtype=torch.long)
    with pytest.raises(ValueError, match="assignment"):
        with follow_decisions(model, lambda r: np.zeros((1, 1), dtype=np.int64)):
            model(input_ids=x)
    with pytest.raises(ValueError, match=r"\[-1, 7\]"):
        with follow_decisions(model, lambda r: np.full_like(r.topk, 8)):
            model(input_ids=x)
    # the patch is removed even after an error
    assert "forward" not in moe_layers(model)[0].experts.__dict__


def test_dense_layers_are_skipped_and_indexed():
    model = tiny_random_model("deepseek_v3", first_k_dense_replace=1)
    layers = moe_layers(model)
    assert [(l.index, l.layer_idx) for l in layers] == [(0, 1)]
    trace = extract_trace(model, ByteTokenizer(), TEXT, 32, calibration_tokens=32, window=32, progress=False)
    assert trace.num_layers == 1 and trace.extra["moe_layer_indices"] == [1]
    assert trace.extra["gate_mode"] == "explicit" and not trace.renormalize_gates
    sel = np.take_along_axis(trace.router_probs, trace.topk, -1)  # sigmoid scores; the gates: renormalized x 2.5
    np.testing.assert_allclose(trace.gates, sel / sel.sum(-1, keepdims=True) * 2.5, rtol=1e-5)
