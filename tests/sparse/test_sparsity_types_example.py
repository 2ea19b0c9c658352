"""examples/fashion_mnist_sparsity_types.py runs end to end on a slice of the real data (a few steps)."""
import json
import sys
from pathlib import Path

import pytest

from morphsparse import data

pytest.importorskip("ai_edge_litert", reason="the [litert] extra (ai-edge-litert) is not installed")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.skipif(not data.fashion_mnist_available(), reason="Debian's dataset-fashion-mnist not installed")
@pytest.mark.slow
def test_every_sparsity_type_trains_converts_and_is_timed(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.syspath_prepend(str(EXAMPLES.parent / "benchmarks"))
    monkeypatch.delitem(sys.modules, "fashion_mnist_sparsity_types", raising=False)
    import fashion_mnist_sparsity_types as example

    out = tmp_path / "types.json"
    example.main(["--seeds", "0", "--epochs", "1", "--train-images", "640", "--rounds", "1", "--calls", "1",
                  "--output", str(out)])
    report = json.loads(out.read_text())
    runs = {r["variant"]: r for r in report["runs"]}
    assert set(runs) == {label for label, _, _ in example.VARIANTS}
    assert runs["dense"]["latency_ratio"] == 1.0
    # LiteRT reads 1x4 blocks with its sparse kernel and densifies scattered zeros
    assert runs["1x4 blocks"]["sparse_kernels"] and not runs["unstructured"]["sparse_kernels"]
    for label, run in runs.items():
        if label != "dense":
            expected = 0.875 if label.startswith("N:M") else 0.9
            assert abs(run["sparsity"] - expected) < 0.01, label
    assert out.with_suffix(".png").exists()
