"""ms.recalibrate_batchnorm: BatchNorm statistics re-estimated as the cumulative average over batches."""

import keras
import numpy as np
import pytest

import morphsparse as ms

L = keras.layers


def two_bn_net(momentum):
    inp = keras.Input((4, 4, 2))
    x = L.Conv2D(3, 1, name="c1")(inp)
    x = L.ReLU()(L.BatchNormalization(momentum=momentum, name="bn1")(x))
    x = L.BatchNormalization(momentum=momentum, name="bn2")(L.Conv2D(2, 1, name="c2")(x))
    return keras.Model(inp, L.Dense(3)(L.Flatten()(x)))


def numpy_weights(layer):
    return [keras.ops.convert_to_numpy(w).astype(np.float64) for w in layer.weights]


def hand_statistics(model, batches):
    """Each BN's statistics as the average over batches of the batch mean and (biased) variance, with every
    BN normalising by its batch's statistics on the way, computed in float64."""
    (k1, b1), (k2, b2) = numpy_weights(model.get_layer("c1")), numpy_weights(model.get_layer("c2"))
    bn1 = model.get_layer("bn1")
    g1, be1 = numpy_weights(bn1)[:2]
    sums = {"bn1": [0, 0], "bn2": [0, 0]}
    for x in batches:
        z = x.astype(np.float64) @ k1[0, 0] + b1
        m, v = z.mean(axis=(0, 1, 2)), z.var(axis=(0, 1, 2))
        sums["bn1"][0] += m
        sums["bn1"][1] += v
        h = np.maximum((z - m) / np.sqrt(v + bn1.epsilon) * g1 + be1, 0) @ k2[0, 0] + b2
        sums["bn2"][0] += h.mean(axis=(0, 1, 2))
        sums["bn2"][1] += h.var(axis=(0, 1, 2))
    return {name: (s[0] / len(batches), s[1] / len(batches)) for name, s in sums.items()}


@pytest.mark.parametrize("momentum", [0.99, 0.5])
def test_statistics_are_the_cumulative_average_whatever_the_momentum(momentum):
    model = two_bn_net(momentum)
    rng = np.random.default_rng(0)
    for layer in (model.get_layer("bn1"), model.get_layer("bn2")):
        layer.gamma.assign(rng.uniform(0.5, 2, 3 if layer.name == "bn1" else 2).astype("float32"))
        layer.moving_mean.assign(np.full(layer.moving_mean.shape, 7.0, "float32"))     # stale statistics
    batches = [rng.normal(loc=i, size=(8, 4, 4, 2)).astype("float32") for i in range(3)]
    expected = hand_statistics(model, batches)
    used = ms.recalibrate_batchnorm(model, [(x, np.zeros(8)) for x in batches])
    assert used == 3
    for name, (mean, variance) in expected.items():
        layer = model.get_layer(name)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean), mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_variance), variance, rtol=1e-4)
        assert layer.momentum == momentum                              # restored


def test_arrays_steps_and_bad_input():
    model = two_bn_net(0.99)
    x = np.random.default_rng(1).normal(size=(100, 4, 4, 2)).astype("float32")
    assert ms.recalibrate_batchnorm(model, x) == 4                      # batches of 32
    assert ms.recalibrate_batchnorm(model, x, steps=2) == 2
    with pytest.raises(ValueError, match="steps"):
        ms.recalibrate_batchnorm(model, x, steps=0)
    with pytest.raises(ValueError, match="no batch"):
        ms.recalibrate_batchnorm(model, [])
    with pytest.raises(TypeError, match="data"):
        ms.recalibrate_batchnorm(model, None)
    plain = keras.Sequential([keras.Input((3,)), L.Dense(2)])
    with pytest.warns(UserWarning, match="no BatchNormalization"):
        assert ms.recalibrate_batchnorm(plain, np.zeros((4, 3), "float32")) == 0


def test_export_recalibrates_the_slim_model_on_calibration_data():
    model = two_bn_net(0.99)
    model.get_layer("bn1").gamma.assign(np.array([1.0, 0.0, 1.0], "float32"))     # channel 1 dies
    x = np.random.default_rng(2).normal(size=(64, 4, 4, 2)).astype("float32")
    slim = ms.export(model, calibration_data=x, calibration_steps=1)
    assert slim.get_layer("c1").filters == 2
    batch = keras.ops.convert_to_numpy(slim.get_layer("c1")(x[:32])).reshape(-1, 2)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(slim.get_layer("bn1").moving_mean), batch.mean(0),
                               rtol=1e-4, atol=1e-5)


def statistics(model):
    from morphsparse.morph.batchnorm import batch_norm_layers

    return {layer.name: (keras.ops.convert_to_numpy(layer.moving_mean).copy(),
                         keras.ops.convert_to_numpy(layer.moving_variance).copy())
            for layer in batch_norm_layers(model)}


def assert_same_statistics(a, b):
    assert a.keys() == b.keys()
    for name in a:
        for x, y in zip(a[name], b[name]):
            np.testing.assert_array_equal(x, y)


def test_data_the_model_cannot_take_leaves_the_statistics_as_they_were():
    model = two_bn_net(0.99)
    for name in ("bn1", "bn2"):
        layer = model.get_layer(name)
        layer.moving_mean.assign(np.full(layer.moving_mean.shape, 3.0, "float32"))
        layer.moving_variance.assign(np.full(layer.moving_variance.shape, 5.0, "float32"))
    before = statistics(model)
    wrong = np.zeros((8, 5, 5, 2), "float32")
    with pytest.raises(ValueError, match=r"first batch of data .*\(8, 5, 5, 2\).*expects inputs of shape "
                                         r"\(None, 4, 4, 2\)"):
        ms.recalibrate_batchnorm(model, wrong)
    assert_same_statistics(statistics(model), before)
    # a later batch that fails puts the statistics back too
    good = np.random.default_rng(0).normal(size=(8, 4, 4, 2)).astype("float32")
    with pytest.raises(Exception):
        ms.recalibrate_batchnorm(model, [good, wrong])
    assert_same_statistics(statistics(model), before)
    assert model.get_layer("bn1").momentum == 0.99


def test_an_unbuilt_model_is_built_from_the_data_or_refused_clearly():
    model = keras.Sequential([L.Dense(3), L.BatchNormalization(name="bn")])
    x = np.random.default_rng(0).normal(loc=2.0, size=(40, 5)).astype("float32")
    assert ms.recalibrate_batchnorm(model, x) == 2
    assert model.built and np.abs(keras.ops.convert_to_numpy(model.get_layer("bn").moving_mean)).max() > 0
    unbuilt = keras.Sequential([L.Conv2D(3, 1), L.BatchNormalization()])
    with pytest.raises(ValueError, match=r"is not built, so build it first"):
        ms.recalibrate_batchnorm(unbuilt, np.zeros((4, 5), "float32"))


def test_x_y_tuples_and_datasets_of_them_calibrate_on_x_only():
    import tensorflow as tf

    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, 4, 4, 2)).astype("float32")
    y, w = rng.integers(0, 3, size=64), np.ones(64, "float32")
    model = two_bn_net(0.99)
    initial = model.get_weights()
    ms.recalibrate_batchnorm(model, x)
    want = statistics(model)
    for data in ((x, y), (x, y, w), tf.data.Dataset.from_tensor_slices((x, y)).batch(32),
                 tf.data.Dataset.from_tensor_slices((x, y, w)).batch(32)):
        model.set_weights(initial)
        assert ms.recalibrate_batchnorm(model, data) == 2
        got = statistics(model)
        for name in want:
            for a, b in zip(want[name], got[name]):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # export(calibration_data=) takes the same forms
    model.set_weights(initial)
    model.get_layer("bn1").gamma.assign(np.array([1.0, 0.0, 1.0], "float32"))
    from_x = ms.export(model, calibration_data=x)
    from_xy = ms.export(model, calibration_data=(x, y))
    assert from_xy.get_layer("c1").filters == 2
    assert_same_statistics(statistics(from_xy), statistics(from_x))


def test_several_inputs_as_a_list_of_arrays_with_labels():
    a, b = keras.Input((3,)), keras.Input((3,))
    out = L.BatchNormalization(name="bn")(L.Concatenate()([a, b]))
    model = keras.Model([a, b], L.Dense(1)(out))
    rng = np.random.default_rng(0)
    xa, xb = rng.normal(loc=1.0, size=(40, 3)).astype("float32"), rng.normal(loc=-1.0, size=(40, 3)).astype("float32")
    assert ms.recalibrate_batchnorm(model, ([xa, xb], np.zeros(40))) == 2
    mean = keras.ops.convert_to_numpy(model.get_layer("bn").moving_mean)
    expected = (np.concatenate([xa, xb], axis=1)[:32].mean(0) + np.concatenate([xa, xb], axis=1)[32:].mean(0)) / 2
    np.testing.assert_allclose(mean, expected, rtol=1e-4, atol=1e-5)
