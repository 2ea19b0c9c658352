"""Small models and hand-written latency tables shared by the latency tests (tests/test_latency.py and
tests/morph/test_landing.py): their values are chosen here, so that no test depends on this machine's speed."""

import keras

import morphsparse as ms
from morphsparse import latency as L

GRID = [1, 2, 3, 4, 8, 12, 16, 24, 32]


def small_cnn(width=16):
    x = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(width, 3, padding="same", name="conv1")(x)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU(name="relu1")(h)
    h = keras.layers.Conv2D(width, 1, name="conv2")(h)
    h = keras.layers.BatchNormalization(name="bn2")(h)
    h = keras.layers.ReLU(name="relu2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    y = keras.layers.Dense(4, name="head")(h)
    return keras.Model(x, y, name="small_cnn")


def kernel_seconds(a, b):
    """A bilinear function of the widths: bilinear interpolation reproduces it exactly inside the grid."""
    return 1e-6 * (2.0 + 0.5 * a + 0.25 * b + 0.01 * a * b)


def elementwise_seconds(b):
    return 1e-6 * (1.0 + 0.1 * b)


def hand_table(model, overhead=5e-6, backend="keras", batch_size=1, kernel=kernel_seconds,
               elementwise=elementwise_seconds, grid=GRID):
    """A table with an entry for every timed call of ``model``, its values from the functions above."""
    entries = {}
    for spec in L.timed_calls(ms.analyze(model)):
        call = spec.call
        has_in, has_out = L._axes_of(spec.kind)
        xs, ys = (grid if has_in else None), (grid if has_out else None)
        values = [[kernel(a, b) if spec.kind in ("kernel", "attention") else elementwise(b) if spec.kind == "elementwise"
                   else kernel(a, a) if spec.kind == "depthwise" else 3e-6 for b in ys or [0]] for a in xs or [0]]
        entries[spec.signature] = dict(kind=spec.kind, layer=call.path, in_widths=xs, out_widths=ys,
                                       median=values, minimum=values)
    return L.LatencyTable(L.machine_key(), backend, batch_size, 1, entries, overhead)
