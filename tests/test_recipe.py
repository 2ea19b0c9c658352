"""The one convention for "how to train" (morphsparse/recipe.py): fit=dict, compile=dict or callable."""

import keras
import numpy as np
import pytest

from morphsparse.recipe import compile_wrapped, compiler_like, fit_arguments, legacy_training


def _model():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])


def test_a_compile_dict_gives_every_model_its_own_fresh_optimizer():
    optimizer = keras.optimizers.SGD(0.25)
    compile_model = compiler_like(_model(), dict(optimizer=optimizer, loss="mse", metrics=["mae"]))
    first, second = _model(), _model()
    compile_model(first)
    compile_model(second)
    assert first.optimizer is not optimizer and second.optimizer is not first.optimizer
    assert float(first.optimizer.learning_rate) == pytest.approx(0.25)
    first.fit(np.ones((8, 4)), np.ones((8, 3)), verbose=0)     # each optimizer is built for its own model
    second.fit(np.ones((8, 4)), np.ones((8, 3)), verbose=0)


def test_the_seed_compile_configuration_is_the_default_and_its_absence_is_named():
    seed = _model()
    seed.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    other = _model()
    compiler_like(seed, None, "study()")(other)
    assert float(other.optimizer.learning_rate) == pytest.approx(0.01)
    with pytest.raises(ValueError, match=r"study\(\) needs to compile the models it builds.*compile=dict"):
        compiler_like(_model(), None, "study()")
    assert compiler_like(_model(), None, required=False) is None
    with pytest.raises(ValueError, match=r"compile= needs loss="):
        compiler_like(_model(), dict(optimizer="adam"))
    with pytest.raises(TypeError, match=r"compile= must be a callable .* or a dict"):
        compiler_like(_model(), "adam")


def test_fit_arguments_are_a_dict_copy_or_a_named_error():
    fit = dict(epochs=2)
    assert fit_arguments(fit) == fit and fit_arguments(fit) is not fit
    assert fit_arguments(None, "retrain", required=False) == {}
    with pytest.raises(TypeError, match=r"retrain= must be a dict of Model.fit keyword arguments"):
        fit_arguments([1], "retrain")


def test_compile_wrapped_puts_the_wrapper_in_the_optimizers_place():
    model = _model()
    seen = {}

    def wrap(network, inner):
        seen["inner"] = inner
        return keras.optimizers.LossScaleOptimizer(inner)

    wrapped = compile_wrapped(model, lambda m: m.compile(optimizer="sgd", loss="mse"), wrap)
    assert model.optimizer is wrapped and wrapped.inner_optimizer is seen["inner"]


def test_the_old_positional_form_is_folded_with_a_warning_that_spells_the_new_one():
    options = dict(epochs=3, retrain_epochs=1, loss="mse", batch_size=16, fit_options={"shuffle": False}, keep=1)
    with pytest.warns(DeprecationWarning, match=r"run\(model, fit=dict\(x=\.\.\., y=\.\.\., shuffle=\.\.\., "
                                                r"batch_size=\.\.\., epochs=\.\.\.\), compile=dict\(loss=\.\.\., "
                                                r"optimizer=\.\.\.\), retrain=dict\(epochs=\.\.\.\)\)"):
        fit, compile, phases = legacy_training("run", "X", "Y", options, {"epochs": "fit",
                                                                          "retrain_epochs": "retrain"})
    assert fit == dict(x="X", y="Y", shuffle=False, batch_size=16, epochs=3)
    assert compile == dict(loss="mse", optimizer="adam") and phases == {"retrain": {"epochs": 1}}
    assert options == {"keep": 1}                      # what is not old stays for the caller to check
    assert legacy_training("run", None, None, {"keep": 1}, {"epochs": "fit"}) is None
