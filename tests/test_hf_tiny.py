"""The tiny locally trained MoE: training runs, saves, loads; the trace CLI works on it."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from siftmoe_gym.hf import tiny_model  # noqa: E402
from siftmoe_gym.hf.adapters import moe_layers  # noqa: E402
from siftmoe_gym.hf.loading import ByteTokenizer, load_moe_model, load_tokenizer  # noqa: E402
from siftmoe_gym.tracefile import load_trace  # noqa: E402

SMALL = dict(hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, head_dim=16, num_local_experts=4)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    info = tiny_model.train(out, steps=3, batch_size=2, seq_len=32, eval_tokens=128, config_overrides=SMALL,
                            progress=False, max_seconds=None)
    return out, info


def test_stdlib_split_is_deterministic_and_disjoint():
    tr, ho = tiny_model.stdlib_files("train"), tiny_model.stdlib_files("heldout")
    assert tr and ho and not set(tr) & set(ho)
    assert tr == tiny_model.stdlib_files("train")
    assert len(tiny_model.heldout_ids(500)) == 500


def test_byte_tokenizer_roundtrip(tmp_path):
    tok = ByteTokenizer()
    ids = tok.encode("héllo\n")
    assert max(ids) < 256 and tok.decode(ids) == "héllo\n"
    tok.save_pretrained(tmp_path)
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)


def test_training_saves_and_loads(tiny_dir):
    out, info = tiny_dir
    assert info["steps"] == 3 and info["stopped_by"] == "steps"
    assert 0.0 <= info["heldout_accuracy"] <= 1.0 and np.isfinite(info["heldout_perplexity"])
    assert json.loads((out / "train_info.json").read_text())["steps"] == 3
    model, tok = load_moe_model(out)
    assert isinstance(tok, ByteTokenizer) and not model.training
    assert type(model).__name__ == "MixtralForCausalLM" and len(moe_layers(model)) == 2
    # same seed, same weights
    out2 = out.parent / "tiny2"
    tiny_model.train(out2, steps=3, batch_size=2, seq_len=32, eval_tokens=128, config_overrides=SMALL,
                     progress=False, max_seconds=None)
    m2, _ = load_moe_model(out2)
    for (n1, p1), (_, p2) in zip(model.named_parameters(), m2.named_parameters()):
        assert torch.equal(p1, p2), n1


def test_trace_cli_on_tiny_model(tiny_dir, tmp_path, capsys):
    from siftmoe_gym import traces

    out, _ = tiny_dir
    text = tmp_path / "text.txt"
    text.write_text(tiny_model.corpus_text("heldout", 4000))
    dest = tmp_path / "tiny.npz"
    assert traces.main(["extract", "--model", str(out), "--text", str(text), "--tokens", "64", "--out", str(dest),
                        "--quantile", "1.0", "--calibration-tokens", "96", "--window", "32", "--threads", "2"]) == 0
    tr = load_trace(dest)
    assert tr.num_tokens == 64 and tr.num_layers == 2 and tr.num_experts == 4 and tr.top_k == 2
    assert tr.renormalize_gates and tr.extra["gate_mode"] == "renormalized" and tr.quantile == 1.0
    assert "wrote" in capsys.readouterr().out


def test_trace_errors_on_short_text(tiny_dir):
    from siftmoe_gym.traces import extract_trace

    model, tok = load_moe_model(tiny_dir[0])
    with pytest.raises(ValueError, match="fewer than"):
        extract_trace(model, tok, "short", 64, progress=False)


def test_import_siftmoe_gym_stays_light():
    import subprocess
    import sys

    code = "import sys, siftmoe_gym, siftmoe_gym.traces, siftmoe_gym.hf; print('torch' in sys.modules, 'transformers' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["False", "False"]
