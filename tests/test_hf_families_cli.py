"""Real checkpoints on the command line: unsupported models refused from their config before any weight loads,
tokenizers named with --tokenizer, and a folder without one refused with a line that says so."""

from __future__ import annotations

import json

import numpy as np
import pytest

from siftmoe_gym import traces
from siftmoe_gym.hf.families import FAMILIES, REFUSED, UnsupportedModelError, check_config

PROG = "python -m siftmoe_gym.traces: error:"

# routing parts of published config.json files (sizes irrelevant: nothing is built)
LLAMA4_SCOUT = {"model_type": "llama4", "architectures": ["Llama4ForConditionalGeneration"],
                "text_config": {"model_type": "llama4_text", "num_local_experts": 16, "num_experts_per_tok": 1}}


@pytest.fixture
def text(tmp_path):
    p = tmp_path / "text.txt"
    p.write_text("def route(x):\n    return top_k(softmax(x))\n" * 20)
    return str(p)


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if anything tries to load weights."""
    import transformers

    def boom(*a, **k):
        pytest.fail("weights were loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)


def _ckpt(tmp_path, config: dict, tokenizer: bool = True):
    model = tmp_path / "ckpt"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps(config))
    if tokenizer:
        from siftmoe_gym.hf.loading import ByteTokenizer

        ByteTokenizer().save_pretrained(model)
    return model


def _run(argv, capsys):
    code = traces.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("config, needle", [
    (LLAMA4_SCOUT, "model_type 'llama4' is refused: its router scales each expert's input"),
    ({"model_type": "llama4_text", "num_local_experts": 16}, "model_type 'llama4_text' is refused"),
    ({"model_type": "switch_transformers"}, "model_type 'switch_transformers' is refused"),
    ({"model_type": "llama", "num_hidden_layers": 2}, "model_type 'llama' is not a supported MoE family"),
    ({"model_type": "hunyuan_v1_moe", "num_experts": 64, "moe_topk": [8, 8, 4]}, "moe_topk differs between layers"),
    ({"model_type": "qwen2_moe", "num_hidden_layers": 2, "mlp_only_layers": [0, 1]}, "no MoE layer"),
    ({"model_type": "phimoe", "num_experts_per_tok": 4}, "sparsemixer routes exactly 2"),
])
def test_unsupported_configs_are_refused_before_weights(tmp_path, text, capsys, no_weights, config, needle):
    model = _ckpt(tmp_path, config)
    code, err = _run(["extract", "--model", str(model), "--text", text, "--tokens", "8",
                      "--out", str(tmp_path / "t.npz")], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(PROG) and needle in err[0], err
    assert "Traceback" not in "".join(err)


def test_check_config_names_every_family():
    for mt, fam in FAMILIES.items():
        assert check_config({"model_type": mt}) is fam
        assert fam.score in ("softmax", "sigmoid") and fam.rule and fam.example
    for mt in REFUSED:
        with pytest.raises(UnsupportedModelError, match="is refused"):
            check_config({"model_type": mt})
    assert FAMILIES["deepseek_v3"].scaling({"routed_scaling_factor": 2.5}) == 2.5
    assert FAMILIES["mixtral"].scaling({"routed_scaling_factor": 2.5}) == 1.0
    assert FAMILIES["qwen3_moe"].renormalizes({"norm_topk_prob": True}) is True


def test_folder_without_tokenizer_is_refused(tmp_path, text, capsys, no_weights):
    model = _ckpt(tmp_path, {"model_type": "qwen2_moe"}, tokenizer=False)
    (model / "tokenizer_config.json").write_text("{}")  # describes a tokenizer but cannot build one
    code, err = _run(["extract", "--model", str(model), "--text", text, "--tokens", "8",
                      "--out", str(tmp_path / "t.npz")], capsys)
    assert code == 2 and len(err) == 1
    assert f"--model: {model} has no tokenizer files" in err[0] and "--tokenizer PATH|HUB_ID" in err[0]
    empty = tmp_path / "tok"
    empty.mkdir()
    for bad, needle in ((str(empty), f"--tokenizer: {empty} has no tokenizer files"),
                        ("./nothing/here", "--tokenizer: no such folder, and not a hub id")):
        code, err = _run(["extract", "--model", str(model), "--tokenizer", bad, "--text", text, "--tokens", "8",
                          "--out", str(tmp_path / "t.npz")], capsys)
        assert code == 2 and len(err) == 1 and needle in err[0], err


def test_load_moe_model_refuses_before_weights(tmp_path, no_weights):
    from siftmoe_gym.hf.loading import MissingTokenizerError, load_moe_model

    with pytest.raises(UnsupportedModelError, match="llama4"):
        load_moe_model(_ckpt(tmp_path, LLAMA4_SCOUT))
    model = _ckpt(tmp_path, {"model_type": "mixtral"}, tokenizer=False)
    (model / "siftmoe_byte_tokenizer.json").unlink()
    with pytest.raises(MissingTokenizerError, match="has no tokenizer files"):
        load_moe_model(model)


def _saved_model(tmp_path, arch: str):
    pytest.importorskip("torch")
    from siftmoe_gym.hf.testing import tiny_random_model

    model = tiny_random_model(arch, seed=1)
    path = tmp_path / arch
    model.save_pretrained(path)
    return path


def _fast_tokenizer(folder):
    """A real transformers tokenizer (word level over bytes' characters), saved without any download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(i): i for i in range(32, 127)}
    vocab.update({"\n": 10, "[UNK]": 0})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]").save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["byte", "transformers"])
def test_tokenizer_option_extracts_a_v2_trace(tmp_path, text, capsys, kind):
    model = _saved_model(tmp_path, "dbrx")
    assert not any(model.glob("tokenizer*"))
    tok = tmp_path / "tok"
    if kind == "byte":
        from siftmoe_gym.hf.loading import ByteTokenizer

        ByteTokenizer().save_pretrained(tok)
    else:
        _fast_tokenizer(tok)
    out = tmp_path / "t.safetensors"
    code = traces.main(["extract", "--model", str(model), "--tokenizer", str(tok), "--text", text, "--tokens", "48",
                        "--calibration-tokens", "48", "--window", "24", "--threads", "1", "--out", str(out)])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "gate_mode=renormalized" in cap.out and "trace version 2" in cap.out
    from siftmoe_gym.tracefile import load_trace

    tr = load_trace(out)
    assert tr.version == 2 and tr.num_tokens == 48 and tr.extra["architecture"] == "DbrxForCausalLM"
    np.testing.assert_allclose(tr.gates.sum(-1), 1.0, rtol=1e-5)


def test_tokenizer_of_another_model_is_refused(tmp_path, capsys):
    model = _saved_model(tmp_path, "mixtral")  # vocabulary of 259
    tok = tmp_path / "tok"
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 5000}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]").save_pretrained(tok)
    txt = tmp_path / "a.txt"
    txt.write_text("a" * 64)
    capsys.readouterr()  # (save_pretrained's progress bars)
    code = traces.main(["extract", "--model", str(model), "--tokenizer", str(tok), "--text", str(txt),
                        "--tokens", "16", "--threads", "1", "--out", str(tmp_path / "t.npz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "token id 5000, outside the model's vocabulary of 259" in err[0], err
