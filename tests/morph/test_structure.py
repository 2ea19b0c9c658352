"""Structure files (ms.save_structure / ms.load_structure)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import morphsparse as ms
from morph_helpers import block_net, inputs_for, kill, randomize


def test_structure_round_trip(tmp_path):
    model = randomize(block_net())
    kill(model.get_layer("a_bn"), [0, 5])
    kill(model.get_layer("stem_bn"), [2])
    kill(model.get_layer("b_bn"), [2])
    written = ms.save_structure(model, tmp_path / "s.json")
    structure = ms.load_structure(tmp_path / "s.json")
    assert structure == json.loads(json.dumps(written))
    assert structure["layers"]["a"] == {"channels": 8, "alive": 6, "kept": [1, 2, 3, 4, 6, 7],
                                        "group": ms.analyze(model).group_of("a").id}
    assert structure["layers"]["stem"]["alive"] == structure["layers"]["b"]["alive"] == 15
    masks = ms.masks_from_structure(model, structure)
    expected = ms.alive_masks(model)
    assert all(np.array_equal(masks[g], expected[g]) for g in expected)
    assert structure["alive_flops"] == ms.count_flops(model, alive=expected) < structure["flops"]


def test_structure_of_slim_model_is_all_alive_and_keyed_by_layer_name(tmp_path):
    model = randomize(block_net())
    kill(model.get_layer("t1_bn"), slice(None))
    slim = ms.export(model)
    structure = ms.save_structure(slim, tmp_path / "slim.json")
    assert "t1" not in structure["layers"]
    assert all(entry["alive"] == entry["channels"] for entry in structure["layers"].values())
    assert structure["alive_flops"] == structure["flops"] == ms.count_flops(slim)


def test_structure_drives_export(tmp_path):
    model = randomize(block_net())
    structure = ms.structure_of(model, alive={"a": np.array([1, 0, 1, 0, 1, 1, 1, 1], bool)})
    slim = ms.export(model, alive=ms.masks_from_structure(model, structure))
    assert slim.get_layer("a").filters == 6


def test_bad_structure_files(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"layers": {}}))
    with pytest.raises(ValueError, match="not a morphsparse structure"):
        ms.load_structure(tmp_path / "bad.json")
    model = block_net()
    structure = ms.structure_of(model)
    structure["layers"]["nonexistent"] = {"channels": 3, "alive": 3, "kept": [0, 1, 2]}
    with pytest.raises(ValueError, match="does not have"):
        ms.masks_from_structure(model, structure)
    structure = ms.structure_of(model)
    structure["layers"]["a"]["channels"] = 9
    with pytest.raises(ValueError, match="channels"):
        ms.masks_from_structure(model, structure)


@pytest.mark.slow   # a fresh Python process importing TensorFlow
def test_slim_model_saves_and_loads_without_morphsparse(tmp_path):
    model = randomize(block_net())
    kill(model.get_layer("a_bn"), slice(None))
    kill(model.get_layer("t1_bn"), [0, 1])
    slim = ms.export(model)
    x = inputs_for(model)
    path = tmp_path / "slim.keras"
    slim.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", keras.ops.convert_to_numpy(slim(x)))
    script = ("import sys, numpy as np, keras\n"
              f"m = keras.saving.load_model({str(path)!r})\n"
              f"x = np.load({str(tmp_path / 'x.npy')!r}); y = np.load({str(tmp_path / 'y.npy')!r})\n"
              "assert 'morphsparse' not in sys.modules\n"
              "print(float(np.abs(np.asarray(m(x)) - y).max()))\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH="")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) < 1e-5
