"""SNIP: the mask keeps the largest |g * W| (checked against a hand-computed gradient), then never moves."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from morphsparse.sparse import SNIP, connection_sensitivity, find_sparse_optimizer, kept_count, sparse_optimizer


def _layer_model():
    keras.utils.set_random_seed(4)
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, name="only")])


def _data(n=12, seed=2):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)).astype("float32"), rng.integers(0, 4, n)


def _hand_gradient(x, y, kernel, bias):
    """d mean(cross-entropy(softmax(x W + b), y)) / dW, written out: x^T (softmax - onehot) / n."""
    logits = x.astype(np.float64) @ kernel + bias
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    probs[np.arange(len(y)), y] -= 1.0
    return x.T.astype(np.float64) @ probs / len(y)


def test_snip_keeps_the_top_scoring_weights_of_a_hand_checked_layer():
    model = _layer_model()
    kernel, bias = [np.array(w) for w in model.get_weights()]
    x, y = _data()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    sparse = sparse_optimizer(model, "sgd", 0.6, method="snip", data=(x, y), loss=loss, batch_size=12,
                              distribution="uniform")
    scores = np.abs(_hand_gradient(x, y, kernel, bias) * kernel)
    kept = kept_count(kernel.size, 0.6)
    assert kept == 8
    expected = np.zeros(kernel.size)
    expected[np.argsort(-scores.ravel(), kind="stable")[:kept]] = 1
    mask = sparse.masks()["only/kernel"]
    np.testing.assert_array_equal(mask.ravel(), expected)
    # Survivors keep their initial values; everything else is exactly zero; the bias is never masked.
    inner = model.layers[0]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(inner.kernel), kernel * mask)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(inner.bias), bias)


def test_snip_averages_the_gradient_over_several_batches():
    model = _layer_model()
    kernel, bias = [np.array(w) for w in model.get_weights()]
    x, y = _data(n=16)
    sparse_optimizer(model, "sgd", 0.0, method="static", distribution="uniform")     # all masks ones: dense
    scores = connection_sensitivity(model, (x, y), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                                    batches=2, batch_size=8)
    gradient = (_hand_gradient(x[:8], y[:8], kernel, bias) + _hand_gradient(x[8:], y[8:], kernel, bias)) / 2
    np.testing.assert_allclose(scores["only/kernel"], np.abs(gradient * kernel), rtol=1e-5, atol=1e-7)


def test_snip_uses_the_distribution_budget_and_then_a_fixed_mask(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(16, activation="relu", name="a"),
                              keras.layers.Dense(12, activation="relu", name="b"), keras.layers.Dense(3, name="c")])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 20)).astype("float32"), rng.integers(0, 3, 64)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    sparse = sparse_optimizer(model, "adam", 0.8, method="snip", data=dataset,
                              loss="sparse_categorical_crossentropy", batches=3)
    for unit in sparse.units:
        assert int(keras.ops.convert_to_numpy(unit.mask).sum()) == kept_count(int(np.prod(unit.mask.shape)),
                                                                               unit.sparsity)
    assert len({round(unit.sparsity, 6) for unit in sparse.units}) > 1      # ERK: not uniform
    before = sparse.masks()
    model.compile(optimizer=sparse, loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    for key, mask in sparse.masks().items():
        np.testing.assert_array_equal(mask, before[key])
    path = tmp_path / "snip.keras"
    model.save(path)
    loaded = find_sparse_optimizer(keras.saving.load_model(path))          # no data needed once the mask exists
    assert isinstance(loaded.method, SNIP)
    for key, mask in loaded.masks().items():
        np.testing.assert_array_equal(mask, before[key])


def test_snip_errors():
    with pytest.raises(ValueError, match="data="):
        sparse_optimizer(_layer_model(), "sgd", 0.5, method="snip")
    with pytest.raises(ValueError, match="loss="):
        sparse_optimizer(_layer_model(), "sgd", 0.5, method="snip", data=_data())
    with pytest.raises(ValueError, match="batches must be >= 1"):
        sparse_optimizer(_layer_model(), "sgd", 0.5, method="snip", data=_data(), loss="mse", batches=0)
    with pytest.raises(ValueError, match=r"\(x, y\) pair"):
        sparse_optimizer(_layer_model(), "sgd", 0.5, method="snip", data=[np.zeros((2, 5))], loss="mse")
