"""The real-model report: per-layer bound coverage and accuracy / perplexity change per budget (tiny random models)."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from siftmoe_gym.hf import report  # noqa: E402
from siftmoe_gym.hf.loading import ByteTokenizer  # noqa: E402
from siftmoe_gym.hf.testing import tiny_random_model  # noqa: E402
from siftmoe_gym.hf.tiny_model import heldout_ids  # noqa: E402

torch.set_num_threads(1)


@pytest.mark.parametrize("arch", ["mixtral", "deepseek_v3"])
def test_per_layer_rows(arch):
    model = tiny_random_model(arch, seed=4)
    ids = heldout_ids(104 + 96)
    rep = report.run_report(model, ByteTokenizer(), ids[:104], ids[104:], eps_list=(0.25, 4.0), window=32,
                            quantile=1.0, progress=False)
    rows, lay = rep["rows"], rep["layer_rows"]
    assert [r["policy"] for r in rows] == ["top-k", "siftmoe", "siftmoe"]
    assert rows[0]["accuracy"] == rep["base_accuracy"] and rows[0]["changed_decisions"] == 0.0  # top-k = the model
    assert [(r["layer"], r["eps_rel"]) for r in lay] == [(l, e) for l in range(2) for e in (0.25, 4.0)]
    for r in lay:
        for key in ("coverage_changed", "coverage_changed_all_layers"):
            assert math.isnan(r[key]) or 0.0 <= r[key] <= 1.0
        if r["changed_decisions"] == 0.0:  # nothing changed at that layer: the model's own logits, bit for bit
            assert r["accuracy_change"] == 0.0 and r["perplexity_change"] == 0.0
    # a looser budget changes more decisions at every layer
    for layer in range(2):
        tight, loose = (r for r in lay if r["layer"] == layer)
        assert loose["changed_decisions"] >= tight["changed_decisions"]
    assert any(r["changed_decisions"] > 0 for r in lay)
    text = report.layer_markdown(rep)
    assert text.count("\n") == 1 + len(lay) and "| 1 | 4 |" in text


def test_layer_coverage_counts_only_changed_decisions_of_the_layer():
    from siftmoe_gym.hf.decisions import DecisionLog, LayerRecord

    topk = np.array([[0, 1], [1, 2], [2, 0]])
    g = np.full((3, 2), 0.5)
    a = topk.copy()
    a[1, 1] = -1  # one skip at token 1
    a[2, 0] = 1  # one replacement at token 2
    delta = np.array([[[0, 1, 1], [1, 0, 1], [1, 1, 0.0]]])
    sigma = np.ones((1, 3))

    class T:
        pass

    tr = T()
    tr.delta, tr.sigma = delta, sigma
    # bounds: token 1 skip: 0.5 * 1 = 0.5; token 2 replace: 0.5 * 1 = 0.5
    log = DecisionLog([LayerRecord(0, 0, topk, g, a, np.ones(3), np.array([9.0, 0.4, 0.6]))])
    changed, cov = report._layer_coverage(log, tr, 0)
    assert changed == pytest.approx(2 / 3) and cov == 0.5  # token 0 unchanged (its 9.0 is not counted)
    assert report._layer_coverage(log, tr, 1) == (0.0, pytest.approx(float("nan"), nan_ok=True))


def test_report_command_prints_the_per_layer_table(tmp_path, capsys):
    model = tiny_random_model("mixtral", seed=5)
    path = tmp_path / "m"
    model.save_pretrained(path)
    ByteTokenizer().save_pretrained(path)
    capsys.readouterr()
    out = tmp_path / "r.json"
    code = report.main(["--model", str(path), "--eps", "0.5", "--calibration-tokens", "64", "--eval-tokens", "64",
                        "--window", "32", "--threads", "1", "--json", str(out)])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "per layer" in cap.out and "| 0 | 0.5 |" in cap.out and "| 1 | 0.5 |" in cap.out
    code = report.main(["--model", str(path), "--eps", "0.5", "--calibration-tokens", "64", "--eval-tokens", "64",
                        "--window", "32", "--threads", "1", "--no-per-layer"])
    assert code == 0 and "per layer" not in capsys.readouterr().out


def test_report_refuses_an_unsupported_model_before_weights(tmp_path, capsys):
    path = tmp_path / "m"
    path.mkdir()
    (path / "config.json").write_text('{"model_type": "llama4"}')
    ByteTokenizer().save_pretrained(path)
    assert report.main(["--model", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model_type 'llama4' is refused" in err[0]
