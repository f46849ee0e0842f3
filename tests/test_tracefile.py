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
    with pytest.raises(TraceError, match=rf"version {VERSION + 1}.*reads version {VERSION}"):
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
    with pytest.raises(TraceError, match="sigma > 0"):
        load_trace(write_raw(tmp_path / "b.npz", arrays, tr.metadata()))
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
