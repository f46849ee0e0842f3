"""Trace files: round trips in both formats and a clear TraceError for every kind of bad file."""

import json

import numpy as np
import pytest

from siftmoe_gym.config import SystemConfig
from siftmoe_gym.tracefile import FORMAT, VERSION, Trace, TraceError, load_trace, save_trace
from siftmoe_gym.workload import SyntheticWorkload

CFG = SystemConfig.from_dict({"num_layers": 3, "model": {"calibration_tokens": 64}})
_WL = SyntheticWorkload(CFG)


def synthetic_trace(tokens=24, seed=0) -> Trace:
    """A trace recorded from the synthetic workload (Delta measured, never hand-written)."""
    tb = _WL.sample(np.random.default_rng(seed), tokens)
    return Trace(
        router_probs=tb.probs, topk=tb.topk, hidden_norms=tb.norms,
        delta=_WL.profile.delta, sigma=_WL.profile.sigma,
        num_experts=CFG.num_experts, top_k=CFG.top_k, num_layers=CFG.num_layers,
        hidden_size=CFG.hidden_size, renormalize_gates=CFG.renormalize_gates,
        quantile=CFG.quantile, model="synthetic-test", extra={"source": "unit test"},
    )


def raw_arrays(trace: Trace) -> dict:
    return {
        "router_probs": trace.router_probs.astype(np.float32),
        "topk": trace.topk.astype(np.int32),
        "hidden_norms": trace.hidden_norms.astype(np.float32),
        "delta": trace.delta.astype(np.float64),
        "sigma": trace.sigma.astype(np.float64),
    }


def write_raw(path, arrays, meta):
    """Write arrays and metadata in the trace layout without any checking (to craft bad files)."""
    text = json.dumps(meta) if not isinstance(meta, str) else meta
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path),
                  metadata=None if meta is None else {"siftmoe": text})
    else:
        extra = {} if meta is None else {"__meta__": np.frombuffer(text.encode(), dtype=np.uint8)}
        with open(path, "wb") as fh:
            np.savez(fh, **extra, **arrays)
    return path


@pytest.fixture(params=[".safetensors", ".npz"])
def suffix(request):
    return request.param


def test_round_trip(tmp_path, suffix):
    tr = synthetic_trace()
    path = save_trace(tr, tmp_path / f"t{suffix}")
    back = load_trace(path)
    np.testing.assert_array_equal(back.router_probs, tr.router_probs.astype(np.float32))
    np.testing.assert_array_equal(back.topk, tr.topk)
    np.testing.assert_array_equal(back.hidden_norms, tr.hidden_norms.astype(np.float32))
    np.testing.assert_array_equal(back.delta, tr.delta)  # float64, exact
    np.testing.assert_array_equal(back.sigma, tr.sigma)
    assert (back.num_experts, back.top_k, back.num_layers, back.hidden_size) == (8, 2, 3, 4096)
    assert back.renormalize_gates is True and back.quantile == 0.99 and back.model == "synthetic-test"
    assert back.extra == {"source": "unit test"}
    assert back.num_tokens == 24


def test_extra_metadata_cannot_override_format_or_version(tmp_path):
    tr = synthetic_trace()
    tr.extra = {"version": 99, "format": "other", "note": "x"}
    back = load_trace(save_trace(tr, tmp_path / "t.npz"))
    assert back.extra == {"note": "x"}


def test_missing_file(tmp_path):
    with pytest.raises(TraceError, match="does not exist"):
        load_trace(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("keep", [0.5, 0.9, 20])
def test_truncated_file(tmp_path, suffix, keep):
    path = save_trace(synthetic_trace(), tmp_path / f"t{suffix}")
    data = path.read_bytes()
    cut = int(len(data) * keep) if keep < 1 else keep
    path.write_bytes(data[:cut])
    with pytest.raises(TraceError, match="truncated or corrupt"):
        load_trace(path)


def test_wrong_version(tmp_path, suffix):
    tr = synthetic_trace()
    meta = {**tr.metadata(), "version": VERSION + 1}
    path = write_raw(tmp_path / f"t{suffix}", raw_arrays(tr), meta)
    with pytest.raises(TraceError, match=rf"version {VERSION + 1}.*reads versions 1, 2 \(writes version {VERSION}\)"):
        load_trace(path)


def test_wrong_format_string(tmp_path, suffix):
    tr = synthetic_trace()
    path = write_raw(tmp_path / f"t{suffix}", raw_arrays(tr), {**tr.metadata(), "format": "other-trace"})
    with pytest.raises(TraceError, match="not a siftmoe trace.*other-trace"):
        load_trace(path)


def test_missing_or_bad_metadata(tmp_path, suffix):
    tr = synthetic_trace()
    with pytest.raises(TraceError, match="no siftmoe metadata"):
        load_trace(write_raw(tmp_path / f"a{suffix}", raw_arrays(tr), None))
    with pytest.raises(TraceError, match="unreadable metadata"):
        load_trace(write_raw(tmp_path / f"b{suffix}", raw_arrays(tr), "{not json"))
    with pytest.raises(TraceError, match="expected a JSON object"):
        load_trace(write_raw(tmp_path / f"c{suffix}", raw_arrays(tr), "[1, 2]"))
    with pytest.raises(TraceError, match="top_k=None"):
        meta = tr.metadata()
        del meta["top_k"]
        load_trace(write_raw(tmp_path / f"d{suffix}", raw_arrays(tr), meta))
    with pytest.raises(TraceError, match="quantile"):
        load_trace(write_raw(tmp_path / f"e{suffix}", raw_arrays(tr), {**tr.metadata(), "quantile": "high"}))


def test_mismatched_shapes_vs_metadata(tmp_path, suffix):
    tr = synthetic_trace()
    path = write_raw(tmp_path / f"t{suffix}", raw_arrays(tr), {**tr.metadata(), "num_experts": 9})
    with pytest.raises(TraceError, match=r"'router_probs' has shape \(24, 3, 8\), expected \(24, 3, 9\)"):
        load_trace(path)
    path = write_raw(tmp_path / f"u{suffix}", raw_arrays(tr), {**tr.metadata(), "num_layers": 4})
    with pytest.raises(TraceError, match="shape"):
        load_trace(path)
    arrays = raw_arrays(tr)
    arrays["hidden_norms"] = arrays["hidden_norms"][:-1]
    with pytest.raises(TraceError, match=r"'hidden_norms' has shape \(23, 3\), expected \(24, 3\)"):
        load_trace(write_raw(tmp_path / f"v{suffix}", arrays, tr.metadata()))


def test_missing_array(tmp_path, suffix):
    tr = synthetic_trace()
    arrays = raw_arrays(tr)
    del arrays["sigma"]
    with pytest.raises(TraceError, match=r"lacks array\(s\) \['sigma'\]"):
        load_trace(write_raw(tmp_path / f"t{suffix}", arrays, tr.metadata()))


def test_wrong_dtype(tmp_path, suffix):
    tr = synthetic_trace()
    arrays = raw_arrays(tr)
    arrays["topk"] = arrays["topk"].astype(np.float32)
    with pytest.raises(TraceError, match="'topk' has dtype float32, expected integer"):
        load_trace(write_raw(tmp_path / f"t{suffix}", arrays, tr.metadata()))
    arrays = raw_arrays(tr)
    arrays["delta"] = (arrays["delta"] * 100).astype(np.int64)
    with pytest.raises(TraceError, match="'delta' has dtype int64, expected floating"):
        load_trace(write_raw(tmp_path / f"u{suffix}", arrays, tr.metadata()))


def test_nan(tmp_path, suffix):
    tr = synthetic_trace()
    arrays = raw_arrays(tr)
    arrays["router_probs"][3, 1, 2] = np.nan
    with pytest.raises(TraceError, match="'router_probs' holds NaN"):
        load_trace(write_raw(tmp_path / f"t{suffix}", arrays, tr.metadata()))


def test_asymmetric_delta(tmp_path, suffix):
    tr = synthetic_trace()
    arrays = raw_arrays(tr)
    arrays["delta"][1, 0, 3] += 0.5
    with pytest.raises(TraceError, match="symmetric"):
        load_trace(write_raw(tmp_path / f"t{suffix}", arrays, tr.metadata()))


def test_other_invalid_contents(tmp_path):
    tr = synthetic_trace()
    arrays = raw_arrays(tr)
    arrays["topk"][0, 0, 0] = 8
    with pytest.raises(TraceError, match=r"topk indices must be in \[0, 7\]"):
        load_trace(write_raw(tmp_path / "a.npz", arrays, tr.metadata()))
    arrays = raw_arrays(tr)
    arrays["sigma"][0, 0] = 0.0
    with pytest.raises(TraceError, match=r"sigma must be > 0 \(first at index \(0, 0\)\)"):
        load_trace(write_raw(tmp_path / "b.npz", arrays, tr.metadata()))
    arrays = raw_arrays(tr)
    arrays["delta"][1, 2, 3] = arrays["delta"][1, 3, 2] + 0.5  # the array and the first bad entry are named
    with pytest.raises(TraceError, match=r"delta must be symmetric in its last two axes \(first at index \(1, 2, 3\)\)"):
        load_trace(write_raw(tmp_path / "b2.npz", arrays, tr.metadata()))
    arrays = raw_arrays(tr)
    arrays["delta"][0, 2, 2] = 0.1
    with pytest.raises(TraceError, match="zero diagonal"):
        load_trace(write_raw(tmp_path / "c.npz", arrays, tr.metadata()))


def test_wrong_suffix(tmp_path):
    tr = synthetic_trace()
    with pytest.raises(TraceError, match=r"must end in \.safetensors or \.npz"):
        save_trace(tr, tmp_path / "t.pt")
    good = save_trace(tr, tmp_path / "t.npz")
    renamed = good.rename(tmp_path / "t.pt")
    with pytest.raises(TraceError, match=r"must end in \.safetensors or \.npz"):
        load_trace(renamed)


def test_save_refuses_invalid_trace(tmp_path):
    tr = synthetic_trace()
    tr.sigma = tr.sigma[:, :-1]
    with pytest.raises(TraceError, match="sigma"):
        save_trace(tr, tmp_path / "t.npz")
    assert not (tmp_path / "t.npz").exists()


def test_trace_error_is_value_error():
    assert issubclass(TraceError, ValueError)
    assert FORMAT == "siftmoe-trace"


# ---------------------------------------------------------------- version 2: scores and applied gates apart
def v2_trace(tokens=24, seed=1, scale=2.5) -> Trace:
    """Sigmoid scores, a bias-corrected selection that is not the scores' own top-k, and renormalized gates times
    ``scale`` (the DeepSeek-V3 rule) computed here from the scores."""
    rng = np.random.default_rng(seed)
    n, k, nl = CFG.num_experts, CFG.top_k, CFG.num_layers
    scores = 1.0 / (1.0 + np.exp(-rng.normal(size=(tokens, nl, n))))
    bias = rng.normal(scale=0.3, size=n)
    topk = np.argsort(-(scores + bias), axis=-1, kind="stable")[..., :k]
    sel = np.take_along_axis(scores, topk, axis=-1)
    order = np.argsort(-sel, axis=-1, kind="stable")  # slots by descending gate
    topk, sel = np.take_along_axis(topk, order, -1), np.take_along_axis(sel, order, -1)
    gates = sel / sel.sum(axis=-1, keepdims=True) * scale
    tr = synthetic_trace(tokens)
    tr.router_probs, tr.topk, tr.gates = scores, topk, gates
    tr.renormalize_gates = False
    tr.extra = {"router_score": "sigmoid", "gate_mode": "explicit", "routed_scaling_factor": scale}
    return tr


def test_v2_round_trip_keeps_scores_and_gates_apart(tmp_path, suffix):
    tr = v2_trace().validate()
    assert tr.version == 2
    back = load_trace(save_trace(tr, tmp_path / f"t{suffix}"))
    assert back.version == 2 and back.metadata()["version"] == 2 == VERSION
    np.testing.assert_array_equal(back.gates, tr.gates.astype(np.float32))
    np.testing.assert_array_equal(back.router_probs, tr.router_probs.astype(np.float32))
    np.testing.assert_allclose(back.applied_gates().sum(axis=-1), 2.5, rtol=1e-6)  # the scaling is kept
    obs = back.observed_scores()
    assert obs.min() >= 0.0 and obs.max() <= 1.0
    np.testing.assert_array_equal(obs, back.router_probs.astype(np.float64))  # scores observed as stored


def test_v1_files_still_load_with_their_gate_rule(tmp_path, suffix):
    tr = synthetic_trace()
    path = save_trace(tr, tmp_path / f"t{suffix}")
    meta = load_trace(path).metadata()
    assert meta["version"] == 1
    back = load_trace(path)
    assert back.gates is None and back.version == 1
    sel = np.take_along_axis(back.router_probs.astype(np.float64), back.topk, axis=-1)
    np.testing.assert_allclose(back.applied_gates(), sel / sel.sum(axis=-1, keepdims=True))  # renormalized
    back.renormalize_gates = False
    np.testing.assert_array_equal(back.applied_gates(), sel)
    # a v1 "explicit" trace: the top-k positions hold the model's gates (here 16 x the score), observed clipped
    probs = back.router_probs.astype(np.float64)
    np.put_along_axis(probs, back.topk, 16 * sel, axis=-1)
    back.router_probs, back.extra = probs, {"gate_mode": "explicit"}
    back.validate()
    np.testing.assert_allclose(back.applied_gates(), 16 * sel)
    assert back.observed_scores().max() <= 1.0


def test_popularity_counts_selections_not_scores():
    tr = v2_trace(tokens=400, seed=3)
    pop = tr.popularity()
    np.testing.assert_allclose(pop.sum(axis=1), 1.0)
    want = np.stack([np.bincount(tr.topk[:, l].ravel(), minlength=CFG.num_experts) for l in range(CFG.num_layers)])
    np.testing.assert_allclose(pop, want / (400 * CFG.top_k))
    # with a selection bias the mean raw score ranks experts differently from the selection counts
    assert not np.array_equal(np.argsort(-pop[0]), np.argsort(-tr.router_probs[:, 0].mean(axis=0)))


@pytest.mark.parametrize("what, match", [
    ("negative", r"gates must be in \[0, 1000\] \(first at token 2, layer 1"),
    ("huge", r"gates must be in \[0, 1000\]"),
    ("order", r"topk slots must be in descending gates order \(first at token 2, layer 1"),
    ("nan", r"'gates' holds NaN"),
    ("shape", r"'gates' has shape \(24, 3, 1\), expected \(24, 3, 2\)"),
    ("score_over_one", r"router_probs must be <= 1"),
    ("missing", r"lacks array\(s\) \['gates'\]"),
])
def test_v2_bad_gates_are_named(tmp_path, suffix, what, match):
    tr = v2_trace()
    arrays = {**raw_arrays(tr), "gates": tr.gates.astype(np.float32)}
    g = arrays["gates"]
    if what == "negative":
        g[2, 1, 1] = -0.5
    elif what == "huge":
        g[2, 1, 0] = 2e3
    elif what == "order":
        g[2, 1] = [0.1, 2.0]
    elif what == "nan":
        g[0, 0, 0] = np.nan
    elif what == "shape":
        arrays["gates"] = g[..., :1]
    elif what == "score_over_one":
        np.put_along_axis(arrays["router_probs"], tr.topk, g, axis=-1)  # v1's explicit layout is refused in v2
    else:
        del arrays["gates"]
    with pytest.raises(TraceError, match=match):
        load_trace(write_raw(tmp_path / f"t{suffix}", arrays, tr.metadata()))


def test_v2_softmax_scores_must_sum_to_one(tmp_path):
    tr = synthetic_trace()
    sel = np.take_along_axis(tr.router_probs, tr.topk, axis=-1)
    tr.gates = 16.0 * sel  # DeepSeek-V2: p_i times routed_scaling_factor 16, rows of scores still a softmax
    tr.renormalize_gates = False
    back = load_trace(save_trace(tr, tmp_path / "t.npz"))
    assert back.observed_scores().max() <= 1.0 and back.applied_gates().max() > 1.0
    arrays = {**raw_arrays(tr), "gates": tr.gates.astype(np.float32)}
    arrays["router_probs"][5, 2] *= 0.5
    with pytest.raises(TraceError, match=r"rows must sum to 1.*\(first at token 5, layer 2"):
        load_trace(write_raw(tmp_path / "u.npz", arrays, tr.metadata()))
