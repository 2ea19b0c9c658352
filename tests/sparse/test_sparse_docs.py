"""The sparse-training docs' examples run as written (their python blocks, in order, in one namespace)."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"

# gap_snip_lottery.md's example uses names its reader already has: a model (4 maskable layers), data, a loss.
GAP_PRELUDE = """
import keras, numpy as np
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((6,))] + [keras.layers.Dense(8, activation="relu") for _ in range(3)]
                         + [keras.layers.Dense(3)])
x, y = np.random.rand(64, 6).astype("float32"), np.random.randint(0, 3, 64)
loss, steps_per_epoch = "sparse_categorical_crossentropy", 2
"""


def _blocks(name):
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), flags=re.S)


@pytest.mark.parametrize("name,prelude", [("sparse_training.md", ""), ("gap_snip_lottery.md", GAP_PRELUDE)])
def test_examples_run_as_written(name, prelude, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(prelude, "prelude", "exec"), namespace)
    blocks = _blocks(name)
    assert blocks
    for index, block in enumerate(blocks):
        block = block.replace("epochs=12", "epochs=2")          # the only change: shorter training
        exec(compile(block, f"{name} block {index + 1}", "exec"), namespace)
