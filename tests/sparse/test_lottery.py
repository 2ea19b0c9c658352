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
    result = lottery_ticket(model, dict(x=x, y=y, epochs=2, batch_size=16, verbose=0), retrain=dict(epochs=0),
                            compile=dict(optimizer=keras.optimizers.SGD(0.1), loss=LOSS), sparsity=0.7,
                            distribution="uniform")
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
    result = lottery_ticket(model, dict(x=x, y=y, epochs=1, batch_size=8, shuffle=False, verbose=0),
                            retrain=dict(epochs=0), sparsity=0.6, rewind_step=3,
                            compile=dict(optimizer={"class_name": "SGD", "config": {"learning_rate": 0.05}},
                                         loss=LOSS))
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
    result = lottery_ticket(_model(), dict(x=x, y=y, epochs=1, batch_size=32, verbose=0), retrain=dict(epochs=2),
                            compile=dict(optimizer="adam", loss=LOSS), sparsity=0.8)
    assert len(result.sparse_history["loss"]) == 2
    assert result.training_seconds > 0 and "sparsity" in result.sparse_history
    for unit in find_sparse_optimizer(result.model).units:
        mask = keras.ops.convert_to_numpy(unit.mask)
        np.testing.assert_array_equal(mask, result.masks[unit.key])
        assert int(mask.sum()) == kept_count(mask.size, unit.sparsity)
        assert np.all(keras.ops.convert_to_numpy(unit.kernel)[mask == 0] == 0)


def test_lottery_errors():
    x, y = _data()
    fit, compile = dict(x=x, y=y, verbose=0), dict(loss=LOSS)
    with pytest.raises(ValueError, match="never reached"):
        lottery_ticket(_model(), fit, compile=compile, sparsity=0.5, rewind_step=1000)
    with pytest.raises(ValueError, match="rewind_step"):
        WeightSnapshot(-1)
    with pytest.raises(ValueError, match=r"lottery_ticket\(\) needs to compile the models.*compile=dict"):
        lottery_ticket(_model(), fit, sparsity=0.5)                 # an uncompiled seed and no compile=
    with pytest.raises(ValueError, match=r"compile= needs loss="):
        lottery_ticket(_model(), fit, compile=dict(optimizer="adam"), sparsity=0.5)
    with pytest.raises(TypeError, match=r"fit= must be a dict of Model.fit keyword arguments"):
        lottery_ticket(_model(), [x, y], compile=compile)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        lottery_ticket(_model(), fit, compile=compile, sparsity=1.5)
    with pytest.raises(ValueError, match=r"fit\['epochs'\] must be a whole number >= 1"):
        lottery_ticket(_model(), dict(fit, epochs=0), compile=compile, sparsity=0.5)
    for option in ("bogus", "method"):      # nothing it does not pass on is taken, nor the method it sets itself
        with pytest.raises(TypeError, match=rf"lottery_ticket\(\) got unexpected keyword argument\(s\) \['{option}'\]"):
            lottery_ticket(_model(), fit, compile=compile, sparsity=0.5, **{option: "rigl"})


def test_a_compiled_seed_is_trained_as_compiled_and_the_old_form_still_works():
    x, y = _data()
    seed = _model()
    seed.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    by_seed = lottery_ticket(seed, dict(x=x, y=y, batch_size=16, shuffle=False, verbose=0), sparsity=0.5)
    assert by_seed.dense_model.optimizer.get_config()["learning_rate"] == pytest.approx(0.1)
    with pytest.warns(DeprecationWarning, match=r"lottery_ticket\(model, x, y, .*write lottery_ticket\(model, "
                                                r"fit=dict\(x=\.\.\., y=\.\.\..*compile=dict\(optimizer"):
        old = lottery_ticket(_model(), x, y, sparsity=0.5, epochs=1, optimizer=keras.optimizers.SGD(0.1),
                             loss=LOSS, batch_size=16, fit_options={"shuffle": False})
    for unit in find_sparse_optimizer(old.model).units:        # the same dense run, so the same ticket
        np.testing.assert_array_equal(unit.mask.numpy(), by_seed.masks[unit.key])


def test_reuse_gives_a_second_ticket_from_the_same_dense_run():
    x, y = _data()
    fit = dict(x=x, y=y, batch_size=16, verbose=0)
    first = lottery_ticket(_model(), fit, retrain=dict(epochs=0), sparsity=0.5,
                           compile=dict(optimizer=lambda: keras.optimizers.SGD(0.1), loss=LOSS))
    second = lottery_ticket(_model(), fit, retrain=dict(epochs=0), compile=dict(loss=LOSS), sparsity=0.9,
                            reuse=first)
    assert second.dense_model is first.dense_model and second.dense_seconds == 0.0
    for unit in find_sparse_optimizer(second.model).units:
        assert int(unit.mask.numpy().sum()) == kept_count(int(np.prod(unit.mask.shape)), unit.sparsity)
        inner = first.masks[unit.key]
        assert np.all(inner[unit.mask.numpy() == 1] == 1)     # the 90% ticket sits inside the 50% one
    with pytest.raises(ValueError, match="rewound to step 0"):
        lottery_ticket(_model(), fit, compile=dict(loss=LOSS), sparsity=0.9, rewind_step=2, reuse=first)
    with pytest.raises(TypeError, match="factory"):
        lottery_ticket(_model(), fit, compile=dict(loss=LOSS, optimizer=lambda: "sgd"), sparsity=0.9)
