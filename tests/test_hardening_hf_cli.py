"""The real-model commands answer bad input with one line ``<prog>: error: ...`` naming the option, exit status 2,
before loading any model."""

from __future__ import annotations

import pytest

from siftmoe_gym import traces
from siftmoe_gym.hf import report


@pytest.fixture
def text(tmp_path):
    p = tmp_path / "text.txt"
    p.write_text("hello world " * 10)
    return str(p)


@pytest.mark.parametrize("extra, needle", [
    (["--model", "/no/such/folder"], "--model"),
    (["--tokens", "0"], "--tokens"),
    (["--out", "trace.txt"], "--out"),
    (["--dtype", "int8"], "--dtype"),
    (["--window", "1"], "--window"),
    (["--batch-size", "0"], "--batch-size"),
    (["--quantile", "1.5"], "--quantile"),
    (["--text", "/no/such/file.txt"], "--text"),
])
def test_extract_refuses_bad_options_before_loading(tmp_path, text, capsys, extra, needle, monkeypatch):
    import siftmoe_gym.hf.loading as loading

    monkeypatch.setattr(loading, "load_moe_model", lambda *a, **k: pytest.fail("loaded a model despite bad input"))
    model = tmp_path / "ckpt"
    model.mkdir()
    (model / "config.json").write_text("{}")
    args = {"--model": str(model), "--text": text, "--tokens": "8", "--out": str(tmp_path / "t.npz")}
    for i in range(0, len(extra), 2):
        args[extra[i]] = extra[i + 1]
    argv = ["extract"] + [x for kv in args.items() for x in kv]
    assert traces.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m siftmoe_gym.traces: error:") and needle in err[0]


def test_extract_refuses_a_folder_transformers_cannot_read(tmp_path, text, capsys):
    model = tmp_path / "ckpt"
    model.mkdir()
    (model / "config.json").write_text("{}")  # no model_type: refused from the config
    assert traces.main(["extract", "--model", str(model), "--text", text, "--tokens", "8",
                        "--out", str(tmp_path / "t.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--model {model}: model_type None is not a supported MoE family" in err[0]
    (model / "config.json").write_text("[1, 2")
    assert traces.main(["extract", "--model", str(model), "--text", text, "--tokens", "8",
                        "--out", str(tmp_path / "t.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read" in err[0] and "config.json" in err[0]


@pytest.mark.parametrize("argv, needle", [(["--eps", "-1"], "--eps"), (["--eps", "nan"], "--eps"),
                                          (["--window", "0"], "--window"), (["--model", "/no/such"], "--model"),
                                          (["--quantile", "0"], "--quantile"), (["--threads", "0"], "--threads")])
def test_report_refuses_bad_options(capsys, argv, needle):
    assert report.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m siftmoe_gym.hf.report: error:") and needle in err[0]
