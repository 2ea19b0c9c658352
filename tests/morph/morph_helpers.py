"""Networks and checks shared by the structure-learning tests (not collected: no test_ prefix)."""

import keras
import numpy as np

L = keras.layers


def block_net(bias=True):
    """stem -> residual block (a, b tied to stem by the Add) -> concat of two towers -> logits."""
    inp = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(16, 3, padding="same", use_bias=bias, name="stem")(inp)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(name="stem_relu")(x)
    y = L.Conv2D(8, 1, use_bias=bias, name="a")(x)
    y = L.BatchNormalization(name="a_bn")(y)
    y = L.ReLU(name="a_relu")(y)
    y = L.Conv2D(16, 3, padding="same", use_bias=bias, name="b")(y)
    y = L.BatchNormalization(name="b_bn")(y)
    x = L.Add(name="add")([x, y])
    t1 = L.Conv2D(4, 1, name="t1")(x)
    t1 = L.BatchNormalization(name="t1_bn")(t1)
    t2 = L.Conv2D(6, 1, activation="relu", name="t2")(x)
    t2 = L.BatchNormalization(name="t2_bn")(t2)
    x = L.Concatenate(name="cat")([t1, t2])
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(5, name="logits")(x)
    return keras.Model(inp, out, name="block_net")


def randomize(model, seed=0):
    """Random BatchNorm statistics and biases, so dead channels carry non-trivial constants."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            randomize(layer, seed + 1)
        elif isinstance(layer, L.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.5, n).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.5, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2, n).astype("float32"))
        elif getattr(layer, "use_bias", False) and getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0, 0.3, tuple(layer.bias.shape)).astype("float32"))
    return model


def kill(layer, channels, beta=True):
    """Zero gamma (and beta) of some channels of a BatchNormalization, as a gamma regulariser would."""
    for variable in (layer.gamma, layer.beta if beta else None):
        if variable is not None:
            value = keras.ops.convert_to_numpy(variable)
            value[channels] = 0.0
            variable.assign(value)


def inputs_for(model, n=4, seed=1):
    return np.random.default_rng(seed).normal(size=(n,) + tuple(model.inputs[0].shape[1:])).astype("float32")


def assert_same_outputs(model, slim, rtol=1e-4):
    x = inputs_for(model)
    want = keras.ops.convert_to_numpy(model(x, training=False))
    got = keras.ops.convert_to_numpy(slim(x, training=False))
    assert want.shape == got.shape
    assert np.abs(want - got).max() <= rtol * max(np.abs(want).max(), 1.0)
