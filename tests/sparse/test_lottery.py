"""Lottery tickets: magnitude masks from the trained network, survivors rewound to exact early values."""

import keras
import numpy as np
import pytest

from morphsparse.sparse import WeightSnapshot, find_sparse_optimizer, kept_count, live_parameters, lottery_ticket

LOSS = "sparse_categorical_crossentropy"


def _model():
    keras.utils.set_random_seed(7)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(12, activation="relu", name="h1"),
                             keras.layers.Dense(10, activation="relu", name="h2"), keras.layers.Dense(3, name="out")])


def _data(n=64):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(n, 6)).astype("float32")
    return x, (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0)


def _top_mask(weights, kept):
    mask = np.zeros(weights.size, np.float32)
    mask[np.argsort(-np.abs(weights).ravel(), kind="stable")[:kept]] = 1
    return mask.reshape(weights.shape)


def test_rewind_to_initialisation_restores_exact_initial_values():
    model = _model()
    initial = [np.array(w) for w in model.get_weights()]
    x, y = _data()
    result = lottery_ticket(model, x, y, sparsity=0.7, distribution="uniform", epochs=2, retrain_epochs=0,
                            optimizer=keras.optimizers.SGD(0.1), loss=LOSS, batch_size=16)
    for before, after in zip(initial, model.get_weights()):       # the user's model is untouched
        np.testing.assert_array_equal(before, after)
    for before, snapshot in zip(initial, result.rewound_weights):
        np.testing.assert_array_equal(before, snapshot)
    trained = {layer.name: np.array(layer.kernel) for layer in result.dense_model.layers}
    for unit, layer in zip(find_sparse_optimizer(result.model).units, result.model.layers):
        mask = keras.ops.convert_to_numpy(unit.mask)
        kernel = np.array(trained[layer.name])
        np.testing.assert_array_equal(mask, _top_mask(kernel, kept_count(kernel.size, 0.7)))
        initial_kernel = initial[[w.path for w in model.weights].index(f"{model.name}/{layer.name}/kernel")]
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.kernel), initial_kernel * mask)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.bias),
                                      initial[[w.path for w in model.weights].index(f"{model.name}/{layer.name}/bias")])
    assert result.peak_parameters == live_parameters(model).total
    assert result.sparse_history == {}


def test_rewind_to_step_k_restores_the_values_after_k_steps():
    model = _model()
    x, y = _data()
    result = lottery_ticket(model, x, y, sparsity=0.6, rewind_step=3, epochs=1, retrain_epochs=0,
                            optimizer={"class_name": "SGD", "config": {"learning_rate": 0.05}}, loss=LOSS,
                            batch_size=8, fit_options={"shuffle": False})
    # Replay exactly three steps of the same dense run by hand.
    replay = keras.models.clone_model(model)
    replay.set_weights(model.get_weights())
    replay.compile(optimizer=keras.optimizers.SGD(0.05), loss=LOSS)
    replay.fit(x[:24], y[:24], batch_size=8, epochs=1, shuffle=False, verbose=0)
    for expected, snapshot in zip(replay.get_weights(), result.rewound_weights):
        np.testing.assert_array_equal(snapshot, expected)
    for unit, layer in zip(find_sparse_optimizer(result.model).units, result.model.layers):
        mask = keras.ops.convert_to_numpy(unit.mask)
        expected = keras.ops.convert_to_numpy(replay.get_layer(layer.name).kernel) * mask
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.kernel), expected)


def test_retraining_keeps_the_mask_fixed_and_exact():
    x, y = _data()
    result = lottery_ticket(_model(), x, y, sparsity=0.8, epochs=1, retrain_epochs=2, optimizer="adam",
                            loss=LOSS, batch_size=32)
    assert len(result.sparse_history["loss"]) == 2
    assert result.training_seconds > 0 and "sparsity" in result.sparse_history
    for unit in find_sparse_optimizer(result.model).units:
        mask = keras.ops.convert_to_numpy(unit.mask)
        np.testing.assert_array_equal(mask, result.masks[unit.key])
        assert int(mask.sum()) == kept_count(mask.size, unit.sparsity)
        assert np.all(keras.ops.convert_to_numpy(unit.kernel)[mask == 0] == 0)


def test_lottery_errors():
    x, y = _data()
    with pytest.raises(ValueError, match="never reached"):
        lottery_ticket(_model(), x, y, sparsity=0.5, rewind_step=1000, epochs=1, loss=LOSS)
    with pytest.raises(ValueError, match="rewind_step"):
        WeightSnapshot(-1)
    with pytest.raises(ValueError, match="loss="):
        lottery_ticket(_model(), x, y, sparsity=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        lottery_ticket(_model(), x, y, sparsity=1.5, loss=LOSS)
    with pytest.raises(ValueError, match="epochs"):
        lottery_ticket(_model(), x, y, sparsity=0.5, loss=LOSS, epochs=0)
    for option in ("bogus", "method"):      # nothing it does not pass on is taken, nor the method it sets itself
        with pytest.raises(TypeError, match=rf"lottery_ticket\(\) got unexpected keyword argument\(s\) \['{option}'\]"):
            lottery_ticket(_model(), x, y, sparsity=0.5, loss=LOSS, **{option: "rigl"})


def test_reuse_gives_a_second_ticket_from_the_same_dense_run():
    x, y = _data()
    first = lottery_ticket(_model(), x, y, sparsity=0.5, epochs=1, retrain_epochs=0, loss=LOSS, batch_size=16,
                           optimizer=lambda: keras.optimizers.SGD(0.1))
    second = lottery_ticket(_model(), x, y, sparsity=0.9, epochs=1, retrain_epochs=0, loss=LOSS, batch_size=16,
                            reuse=first)
    assert second.dense_model is first.dense_model and second.dense_seconds == 0.0
    for unit in find_sparse_optimizer(second.model).units:
        assert int(unit.mask.numpy().sum()) == kept_count(int(np.prod(unit.mask.shape)), unit.sparsity)
        inner = first.masks[unit.key]
        assert np.all(inner[unit.mask.numpy() == 1] == 1)     # the 90% ticket sits inside the 50% one
    with pytest.raises(ValueError, match="rewound to step 0"):
        lottery_ticket(_model(), x, y, sparsity=0.9, rewind_step=2, loss=LOSS, reuse=first)
    with pytest.raises(TypeError, match="factory"):
        lottery_ticket(_model(), x, y, sparsity=0.9, loss=LOSS, optimizer=lambda: "sgd")
