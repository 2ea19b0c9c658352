"""``ms.LayerSelection`` and the grouped arguments of ``sparse_optimizer`` (issue 18, arguments as values)."""

import warnings

import keras
import pytest

import morphsparse as ms


def _mlp():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((10,)), keras.layers.Dense(16, name="a"), keras.layers.Dense(12, name="b"),
                             keras.layers.Dense(3, name="c")], name="mlp")


def _plan(optimizer):
    return {unit.key: round(unit.sparsity, 9) for unit in optimizer.units}


def test_a_selection_is_an_immutable_checked_value():
    selection = ms.LayerSelection(keep_dense=["c"], layer_sparsity={"a": 0.5}, first_layer_dense=False)
    assert selection.keep_dense == ("c",) and selection.layer_sparsity == {"a": 0.5}
    with pytest.raises(AttributeError):
        selection.keep_dense = ("a",)
    with pytest.raises(TypeError, match="first_layer_dense must be True or False"):
        ms.LayerSelection(first_layer_dense="yes")
    with pytest.raises(TypeError, match=r"include must be a list .*include=\['a'\]"):
        ms.LayerSelection(include="a")


def test_the_old_keywords_give_the_same_optimizer_as_the_values_with_a_warning_naming_them():
    new = ms.sparse_optimizer(_mlp(), "sgd", 0.8, "rigl", distribution=ms.ErdosRenyiKernel(power=0.5),
                              layers=ms.LayerSelection(keep_dense=["c"], layer_sparsity={"a": 0.5}),
                              schedule=ms.UpdateSchedule(update_every=3, end_fraction=0.5), total_steps=40)
    with pytest.warns(DeprecationWarning, match=r"sparse_optimizer\(power=0.5, keep_dense=\['c'\], .*deprecated.*"
                                                r"write distribution=ms.ErdosRenyiKernel\(power=0.5\), "
                                                r"layers=ms.LayerSelection\(keep_dense=\['c'\], layer_sparsity="
                                                r".*schedule=ms.UpdateSchedule\(update_every=3, end_fraction=0.5\)"):
        old = ms.sparse_optimizer(_mlp(), "sgd", 0.8, "rigl", power=0.5, keep_dense=["c"],
                                  layer_sparsity={"a": 0.5}, update_every=3, end_fraction=0.5, total_steps=40)
    assert _plan(old) == _plan(new) and "c/kernel" not in _plan(new) and _plan(new)["a/kernel"] == 0.5
    assert old.schedule.get_config() == new.schedule.get_config() and old.end_step == new.end_step == 20


def test_an_old_keyword_and_its_value_together_are_refused():
    with pytest.raises(ValueError, match=r"got both schedule= and update_every=.*give them inside it"):
        ms.sparse_optimizer(_mlp(), "sgd", 0.8, schedule=ms.UpdateSchedule(), update_every=3)
    with pytest.raises(ValueError, match=r"got both layers= and keep_dense="):
        ms.sparse_optimizer(_mlp(), "sgd", 0.8, layers=ms.LayerSelection(), keep_dense=["c"])


def test_a_plain_schedule_sets_the_cadence_of_the_methods_own_kind():
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="sparse_optimizer", category=DeprecationWarning)
        optimizer = ms.sparse_optimizer(_mlp(), "sgd", 0.8, "magnitude", total_steps=100,
                                        schedule=ms.UpdateSchedule(update_every=7, begin_step=4))
    assert isinstance(optimizer.schedule, ms.PolynomialSchedule)      # gradual pruning, as the method's default
    assert (optimizer.schedule.update_every, optimizer.schedule.begin_step) == (7, 4)
    shaped = ms.sparse_optimizer(_mlp(), "sgd", 0.8, "magnitude", total_steps=100,
                                 schedule=ms.PolynomialSchedule(initial_sparsity=0.2, exponent=1.0))
    assert shaped.schedule.initial_sparsity == 0.2 and shaped.schedule.exponent == 1.0


def test_skip_optimizer_step_travels_in_the_schedule_and_is_saved(tmp_path):
    model = _mlp()
    optimizer = ms.sparse_optimizer(model, "sgd", 0.8, "rigl", total_steps=10,
                                    schedule=ms.UpdateSchedule(update_every=2, skip_optimizer_step=True))
    assert optimizer.skip_optimizer_step is True
    model.compile(optimizer, "mse")
    model.fit(keras.random.normal((8, 10)), keras.random.normal((8, 3)), verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.optimizer.skip_optimizer_step is True
    assert loaded.optimizer.schedule.get_config() == optimizer.schedule.get_config()
