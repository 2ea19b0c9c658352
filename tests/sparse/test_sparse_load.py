"""Loading is ordinary: files written during sparse training load in a fresh process after `import morphsparse`
(either import order), the CLI reads them, and without morphsparse the error says what to import."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import morphsparse.sparse as mss
from morphsparse import cli

ROOT = Path(__file__).resolve().parents[2]


def _python(code, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A ModelCheckpoint file written mid-training (after 3 of 6 steps), and the model's state at that point."""
    folder = tmp_path_factory.mktemp("ckpt")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10,))
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(hidden), name="net")
    optimizer = mss.sparse_optimizer(model, keras.optimizers.Adam(0.01), 0.8, "rigl",
                                     schedule=mss.UpdateSchedule(update_every=2),
                                     total_steps=12)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(24, 10)).astype("float32"), rng.integers(0, 3, 24)
    path = folder / "ckpt-3.keras"
    saved = {}

    class Remember(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                saved.update(masks=optimizer.masks(), step=int(keras.ops.convert_to_numpy(optimizer.iterations)))

    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False,
              callbacks=[Remember(), keras.callbacks.ModelCheckpoint(folder / "ckpt-{batch}.keras",
                                                                        save_freq=3)])
    assert path.exists()
    np.savez(folder / "masks.npz", **{k.replace("/", "|"): v for k, v in saved["masks"].items()})
    np.savez(folder / "data.npz", x=x, y=y)
    return folder, path, saved


LOAD_AND_TRAIN = """
import sys, numpy as np
{imports}
folder = sys.argv[1]
model = keras.saving.load_model(folder + "/ckpt-3.keras")
sparse = model.optimizer
masks = np.load(folder + "/masks.npz")
assert type(sparse).__name__ == "SparseOptimizer", type(sparse)
assert int(sparse.iterations) == 3, int(sparse.iterations)
for key in masks.files:
    assert (sparse.masks()[key.replace("|", "/")] == masks[key]).all(), key
data = np.load(folder + "/data.npz")
model.optimizer.bind(model)        # Keras builds a loaded optimizer without its model: the logs need it
history = model.fit(data["x"], data["y"], batch_size=4, epochs=1, verbose=0)
assert "sparsity" in history.history, history.history
for unit in sparse.units:
    assert not np.any(np.asarray(unit.kernel)[np.asarray(unit.mask) == 0])
print("ok", int(sparse.iterations))
"""


@pytest.mark.parametrize("imports", ["import morphsparse\nimport keras", "import keras\nimport morphsparse",
                                     "import morphsparse\nimport tensorflow\nimport keras"],
                         ids=["morphsparse-first", "keras-first", "morphsparse-then-tensorflow"])
def test_checkpoint_loads_in_a_fresh_process_after_import_morphsparse(checkpoint, imports):
    folder, _, _ = checkpoint
    done = _python(LOAD_AND_TRAIN.format(imports=imports), folder)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["ok", "9"]


def test_without_morphsparse_the_error_says_import_morphsparse(checkpoint):
    folder, path, _ = checkpoint
    done = _python("import sys, keras\nkeras.saving.load_model(sys.argv[1])", path)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("TypeError: Could not locate class 'SparseOptimizer'")
    # Keras writes its own sentence and the object's module and class first; the hint is the first thing of
    # ours it prints, and short, so that it is read before the long config
    hint = "'config': {'requires': 'import morphsparse first (or load_model(path, compile=False))'"
    assert hint in last and last.index(hint) < last.index("'kernels'")
    assert len(mss.optimizer.REQUIRES) <= 64
    plain = _python("import sys, keras\nm = keras.saving.load_model(sys.argv[1], compile=False)\n"
                    "print(type(m).__name__, m.count_params())", path)
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert plain.stdout.split() == ["Functional", str(10 * 16 + 16 + 16 * 3 + 3)]


def test_stripped_model_loads_without_morphsparse(checkpoint, tmp_path):
    _, path, saved = checkpoint
    model = keras.saving.load_model(path)
    plain = mss.strip(model)
    plain.save(tmp_path / "plain.keras")
    done = _python("import sys, keras, numpy as np\nm = keras.saving.load_model(sys.argv[1])\n"
                   "print(int(np.count_nonzero(m.get_layer('hidden').kernel.numpy())))", tmp_path / "plain.keras")
    assert done.returncode == 0, done.stderr[-2000:]
    kernel = keras.ops.convert_to_numpy(plain.get_layer("hidden").kernel)
    assert not np.any(kernel[saved["masks"]["hidden/kernel"] == 0])
    assert int(done.stdout) == int(np.count_nonzero(kernel)) > 0
    assert "morphsparse" not in json.dumps(plain.get_config())


def test_cli_reads_a_training_checkpoint(checkpoint, tmp_path, capsys):
    _, path, _ = checkpoint
    assert cli.main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "hidden" in out and "FLOPs" in out
    slim = tmp_path / "slim.keras"
    assert cli.main(["export", str(path), "-o", str(slim), "--source", "group_lasso", "--threshold", "0"]) == 0
    assert slim.exists()


def test_cli_names_a_file_it_cannot_load(tmp_path, capsys):
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip file")
    with pytest.raises(SystemExit, match=r"cannot load .*broken.keras"):
        cli.main(["report", str(broken)])
