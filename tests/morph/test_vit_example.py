"""examples/fashion_mnist_vit.py runs end to end (--smoke: a one-block ViT, a few dozen steps, real data)."""
import json
import sys
from pathlib import Path

import pytest

import morphsparse as ms
from morphsparse import data
from morphsparse.models import small_vit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def vit_example(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))        # the example imports the other examples' helpers
    monkeypatch.delitem(sys.modules, "fashion_mnist_vit", raising=False)
    import fashion_mnist_vit
    return fashion_mnist_vit


@pytest.mark.skipif(not data.fashion_mnist_available(), reason="Debian's dataset-fashion-mnist not installed")
def test_smoke_run_learns_exports_and_matches_a_uniform_vit(vit_example, tmp_path):
    assert vit_example.main(["--smoke", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "fashion_mnist_vit_smoke.json").read_text())
    learned, uniform = report["runs"]
    assert (learned["method"], uniform["method"]) == ("learned", "uniform")
    arch = report["settings"]["architecture"]
    # the export removed heads or FFN neurons, and the uniform ViT was sized to at most the learned FLOPs
    assert learned["flops"] < report["seed_flops"]
    assert uniform["flops"] <= learned["flops"]
    for block in learned["blocks"]:
        assert 1 <= block["heads"] <= arch["heads"] and len(block["head_indices"]) == block["heads"]
        assert 1 <= block["ffn"] <= arch["ffn"]
    # what is recorded is what ms.count_flops counts for a ViT of those widths
    rebuilt = small_vit(**{**arch, "heads": [b["heads"] for b in learned["blocks"]],
                           "ffn": [b["ffn"] for b in learned["blocks"]]})
    assert ms.count_flops(rebuilt) == learned["flops"] and ms.count_params(rebuilt) == learned["params"]
    assert {r["method"] for r in report["summary"]} == {"learned", "uniform"}
    assert "learned_minus_uniform_points_mean" in report["claims"]


def test_missing_data_is_an_error_message_and_status_1(vit_example, monkeypatch, capsys):
    def missing(*args, **kwargs):
        raise ms.DataNotFoundError("Fashion-MNIST was not found in /nowhere")

    monkeypatch.setattr(data, "load_fashion_mnist", missing)
    assert vit_example.main(["--smoke"]) == 1
    assert "Fashion-MNIST was not found in /nowhere" in capsys.readouterr().err
