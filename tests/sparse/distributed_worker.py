"""Run by test_sparse_distributed.py in a fresh process (logical devices and TF_CONFIG must precede TF start).

Usage: python distributed_worker.py MODE OUTPUT.npz [METHOD]
MODE: "single" (one device), "mirrored" (MirroredStrategy over two logical CPUs), "multiworker" (this process is
one worker of a MultiWorkerMirroredStrategy described by $TF_CONFIG). Trains a small MLP on fixed global batches
and saves every mask, the kernels and, for mirrored, each replica's copy of the masks.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
MODE, OUTPUT = sys.argv[1], sys.argv[2]
METHOD = sys.argv[3] if len(sys.argv) > 3 else "rigl"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

if MODE == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

import morphsparse.sparse as mss  # noqa: E402

GLOBAL_BATCH, STEPS = 32, 12

if MODE == "mirrored":
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
elif MODE == "multiworker":
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
else:
    strategy = tf.distribute.get_strategy()

rng = np.random.default_rng(0)
x = rng.normal(size=(GLOBAL_BATCH * STEPS, 12)).astype("float32")
y = rng.integers(0, 4, GLOBAL_BATCH * STEPS)

with strategy.scope():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="tanh"),
                              keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(4)])
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    if METHOD != "plain":
        optimizer = mss.sparse_optimizer(model, optimizer, 0.7, METHOD, "erk",
                                         schedule=mss.UpdateSchedule(update_every=3, end_step=STEPS),
                                         seed=1)

if MODE == "multiworker":
    # Keras 3.15's fit() fails under MultiWorkerMirroredStrategy for any model (in its own
    # _maybe_symbolic_build), so the workers use a custom loop: optimizer.apply_gradients, as for any Keras
    # optimizer (no extra call for sparse training). Worker i takes rows
    # [i * 16, (i + 1) * 16) of every global batch: together they see exactly the single run's batches.
    def dataset_fn(context):
        per_worker = GLOBAL_BATCH // context.num_input_pipelines
        start = context.input_pipeline_id * per_worker
        xs = x.reshape(STEPS, GLOBAL_BATCH, 12)[:, start:start + per_worker]
        ys = y.reshape(STEPS, GLOBAL_BATCH)[:, start:start + per_worker]
        return tf.data.Dataset.from_tensor_slices((xs, ys))

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    with strategy.scope():
        optimizer.build(model.trainable_variables)

    @tf.function
    def train_step(batch_x, batch_y):
        def replica_step(bx, by):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(loss_fn(by, model(bx, training=True))) / GLOBAL_BATCH
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        strategy.run(replica_step, args=(batch_x, batch_y))

    for batch_x, batch_y in strategy.distribute_datasets_from_function(dataset_fn):
        train_step(batch_x, batch_y)
else:
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    with strategy.scope():
        model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    if METHOD != "plain":
        assert "sparsity" in history.history, history.history
if METHOD == "plain":
    sys.exit(0)

sparse = optimizer
arrays = {f"mask:{u.key}": keras.ops.convert_to_numpy(u.mask) for u in sparse.units}
arrays.update({f"kernel:{u.key}": keras.ops.convert_to_numpy(u.kernel) for u in sparse.units})
arrays["step"] = np.array(int(keras.ops.convert_to_numpy(sparse.iterations)))
arrays["changes"] = np.array(int(keras.ops.convert_to_numpy(sparse.mask_changes)))
for unit in sparse.units:
    components = getattr(unit.mask.value, "values", None)
    if components is not None and len(components) > 1:
        for i, component in enumerate(components):
            arrays[f"replica{i}:{unit.key}"] = component.numpy()
np.savez(OUTPUT, **arrays)
print("done", MODE, int(arrays["step"]), int(arrays["changes"]))
