"""tf.distribute: masks agree across replicas/workers and with a single-device run on the same global batches.

Each configuration runs in its own process (distributed_worker.py) because logical CPU devices and TF_CONFIG
must be set before TensorFlow initialises.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("distributed_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def _run(mode, output, method, env=None, timeout=240):
    return subprocess.Popen([sys.executable, str(WORKER), mode, str(output), method], cwd=ROOT,
                            env=dict(os.environ, **(env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(process, timeout=240):
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        pytest.fail(f"distributed worker timed out:\n{out[-3000:]}")
    assert process.returncode == 0, out[-3000:]
    return out


def _masks(path):
    data = np.load(path)
    return {k: data[k] for k in data.files if k.startswith("mask:")}, data


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("single") / "single.npz"
    _finish(_run("single", output, "rigl"))
    return _masks(output)


@pytest.mark.slow
def test_mirrored_two_replicas_match_single_device(single_run, tmp_path):
    output = tmp_path / "mirrored.npz"
    _finish(_run("mirrored", output, "rigl"))
    masks, data = _masks(output)
    single_masks, single_data = single_run
    replica_keys = [k for k in data.files if k.startswith("replica0:")]
    assert replica_keys, "the mirrored run did not produce per-replica masks"
    for key in replica_keys:
        np.testing.assert_array_equal(data[key], data[key.replace("replica0:", "replica1:")])
    assert masks.keys() == single_masks.keys()
    for key in masks:
        np.testing.assert_array_equal(masks[key], single_masks[key])
    assert int(data["changes"]) > 0 and int(data["changes"]) == int(single_data["changes"])
    for key in (k for k in data.files if k.startswith("kernel:")):
        np.testing.assert_allclose(data[key], single_data[key], atol=1e-5)


@pytest.mark.slow
def test_multi_worker_masks_identical_on_both_workers(single_run, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    processes = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        processes.append(_run("multiworker", tmp_path / f"worker{index}.npz", "rigl",
                              env={"TF_CONFIG": tf_config}))
    for process in processes:
        _finish(process)
    first, first_data = _masks(tmp_path / "worker0.npz")
    second, _ = _masks(tmp_path / "worker1.npz")
    single_masks, _ = single_run
    assert first.keys() == second.keys() == single_masks.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
        np.testing.assert_array_equal(first[key], single_masks[key])
    assert int(first_data["changes"]) > 0


OUTSIDE_THE_SCOPE = """
import os, sys
import tensorflow as tf
tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                           [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
import morphsparse as ms
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
x, y = np.random.rand(32, 6).astype("float32"), np.random.randint(0, 3, 32)
def net():
    i = keras.Input((6,))
    return keras.Model(i, keras.layers.Dense(3)(keras.layers.Dense(8)(i)))
def sparse(model):
    return ms.sparse_optimizer(model, keras.optimizers.SGD(0.1), sparsity=0.5, method="rigl", total_steps=8)
try:
    model = net()                                  # the model outside, the optimizer and compile inside
    with strategy.scope():
        model.compile(optimizer=sparse(model), loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
except ValueError as err:
    print("A:", err)
try:
    model = net()                                  # everything outside, fit inside
    model.compile(optimizer=sparse(model), loss="sparse_categorical_crossentropy")
    with strategy.scope():
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
except ValueError as err:
    print("B:", err)
"""


def test_a_model_built_outside_the_strategy_scope_is_refused_with_the_fix():
    # plain Keras fails in both cases with a bare AssertionError from inside its distributed update
    done = subprocess.run([sys.executable, "-c", OUTSIDE_THE_SCOPE], cwd=ROOT, capture_output=True, text=True,
                          timeout=240, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    lines = [line for line in done.stdout.splitlines() if line[:2] in ("A:", "B:")]
    assert [line[:2] for line in lines] == ["A:", "B:"], done.stdout[-2000:] + done.stderr[-2000:]
    for line in lines:
        assert "created outside the MirroredStrategy's scope" in line and "strategy.scope()" in line
