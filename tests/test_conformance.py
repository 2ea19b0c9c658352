"""A representative subset of the keras.applications conformance table (benchmarks/conformance.py runs all 40)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from conformance import application_names, check_model  # noqa: E402


def test_the_recorded_table_covers_every_constructor_and_is_current():
    """docs/conformance.md is written from benchmarks/results/conformance.json: it must list every constructor
    this Keras has, each matching, with the FLOPs the cost model counts today."""
    rows = {row["model"]: row for row in json.loads((ROOT / "benchmarks/results/conformance.json").read_text())}
    assert sorted(rows) == application_names()
    assert all(row["params_match"] and row["profiler_match"] for row in rows.values())
    assert check_model("MobileNet", use_profiler=False)["flops"] == rows["MobileNet"]["flops"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ResNet50V2", "Xception", "NASNetMobile", "ConvNeXtTiny", "EfficientNetV2B0",
                                  "InceptionResNetV2", "VGG16", "MobileNet"])
def test_application_conforms(name):
    row = check_model(name, use_profiler=name in ("ConvNeXtTiny", "MobileNet"))
    assert row["params_match"], row
    assert row.get("profiler_match", True), row
    assert row["removable_groups"] > 0


def test_import_registers_the_classes_written_into_keras_files():
    # a plain `import morphsparse` (no submodule touched) must let keras.saving.load_model find the classes
    # morphsparse saves: its optimizer, methods and schedules
    names = ["morphsparse>SparseOptimizer", "morphsparse.updaters>RigL", "morphsparse>UpdateSchedule"]
    code = f"import keras, morphsparse; print(*[keras.saving.get_registered_object(n) is not None for n in {names}])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True", "True"], out
