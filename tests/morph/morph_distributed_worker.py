"""Run by test_optimizer.py in a fresh process (logical devices must be set before TensorFlow starts).

Usage: python morph_distributed_worker.py MODE OUTPUT.npz, MODE "single" (one device) or "mirrored"
(MirroredStrategy over two logical CPUs). Trains an MLP without BatchNorm (group-lasso source: nothing depends on
how the batch is split) with a FLOP budget on fixed global batches; saves the weights and the controller state.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
MODE, OUTPUT = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

if MODE == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

import morphsparse as ms  # noqa: E402

GLOBAL_BATCH, STEPS = 32, 8
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if MODE == "mirrored" else tf.distribute.get_strategy()
rng = np.random.default_rng(0)
x = rng.normal(size=(GLOBAL_BATCH * STEPS, 12)).astype("float32")
y = rng.integers(0, 4, GLOBAL_BATCH * STEPS)

with strategy.scope():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="tanh"),
                              keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(4)])
    optimizer = ms.morph_optimizer(model, keras.optimizers.SGD(0.1), source="group_lasso", budget=0.5,
                                   steps=STEPS)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)
assert "strength" in history.history, history.history
arrays = {f"weight:{i}": keras.ops.convert_to_numpy(w) for i, w in enumerate(model.trainable_weights)}
arrays.update({f"state:{k}": v for k, v in optimizer.state().items()})
np.savez(OUTPUT, **arrays)
print("done", MODE, int(arrays["state:step"]))
