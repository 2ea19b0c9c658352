"""ms.cycle: shrink -> export -> expand -> retrain with the user's own data and fit arguments."""

import keras
import numpy as np
import pytest

import morphsparse as ms
from morphsparse.morph.cycle import cycle

L = keras.layers


def digits_net():
    inp = keras.Input((8, 8, 1), name="digit")
    x = L.Conv2D(16, 3, padding="same", use_bias=False, name="c1")(inp)
    x = L.ReLU(name="c1_relu")(L.BatchNormalization(momentum=0.8, name="c1_bn")(x))
    y = L.Conv2D(12, 3, padding="same", use_bias=False, name="c2")(x)
    y = L.ReLU(name="c2_relu")(L.BatchNormalization(momentum=0.8, name="c2_bn")(y))
    y = L.Conv2D(16, 3, padding="same", use_bias=False, name="c3")(y)
    y = L.BatchNormalization(momentum=0.8, name="c3_bn")(y)
    x = L.ReLU(name="out_relu")(L.Add(name="add")([x, y]))
    out = L.Dense(10, name="logits")(L.GlobalAveragePooling2D(name="gap")(x))
    return keras.Model(inp, out, name="digits_net")


def compile_model(model, lr=3e-2):
    model.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


@pytest.mark.slow
def test_two_cycles_keep_the_flop_budget_and_train_every_model(digits):
    x, y, xt, yt = digits
    seed = digits_net()
    compile_model(seed)                               # cycle() compiles new models like the seed
    budget = ms.count_flops(seed)
    seed_weights_before = [w.tolist() for w in seed.get_weights()][:1]
    seen = []
    result = cycle(seed, fit=dict(x=x, y=y, batch_size=64, epochs=4, verbose=0), cycles=2,
                   retrain=dict(epochs=3), regularizer=dict(strength_multiplier=10.0),
                   evaluate=lambda m: seen.append(m) or m.evaluate(xt, yt, verbose=0, return_dict=True),
                   verbose=False)
    assert len(result.steps) == 2 and result.model is result.steps[-1].model
    assert result.budget == budget and result.expand_target == "flops"
    for step in result.steps:
        assert step.slim_flops < budget                              # the regulariser removed channels
        assert step.flops <= budget                                  # the expansion stays under budget
        assert step.flops > 0.8 * budget
        assert len(step.shrink_history["loss"]) == 4 and "alive_flops" in step.shrink_history
        assert len(step.retrain_history["loss"]) == 3 and "alive_flops" not in step.retrain_history
        assert step.evaluation["accuracy"] > 0.3                     # 10 classes: chance is 0.1
    assert seen == [s.model for s in result.steps]
    # every step keeps its own retrained model: the next cycle shrank a copy
    assert result.steps[0].model is not result.steps[1].model
    assert result.steps[0].model.evaluate(xt, yt, verbose=0, return_dict=True)["accuracy"] == pytest.approx(
        result.steps[0].evaluation["accuracy"])
    assert seed_weights_before == [w.tolist() for w in seed.get_weights()][:1]
    # the seed's own compile configuration was reused
    assert isinstance(result.model.optimizer, keras.optimizers.Adam)
    # the result is an ordinary Keras model: no hook left on it or on the seed
    assert "compute_loss" not in result.model.__dict__ and "compute_loss" not in seed.__dict__
    ms.analyze(result.model)


@pytest.mark.slow
def test_cycle_with_a_size_target_and_custom_compile(digits):
    x, y, _, _ = digits
    seed = digits_net()
    compiled = []

    def my_compile(model):
        compiled.append(model)
        compile_model(model, 1e-2)

    result = cycle(seed, fit=dict(x=x[:256], y=y[:256], batch_size=64, epochs=1, verbose=0),
                   regularizer=dict(target="size"), compile=my_compile, verbose=False)
    assert result.expand_target == "size" and result.budget == ms.count_params(seed)
    assert result.steps[0].params <= ms.count_params(seed)
    assert len(compiled) == 2 and compiled[1] is result.model      # the shrink copy, then the widened model
    assert compiled[0] is not seed and "compute_loss" not in seed.__dict__


def test_cycle_refuses_bad_arguments(digits):
    x, y, _, _ = digits
    seed = digits_net()
    with pytest.raises(ValueError, match="compile the seed"):
        cycle(seed, fit=dict(x=x, y=y))
    compile_model(seed)
    weights, optimizer = seed.get_weights(), seed.optimizer
    with pytest.raises(TypeError, match="fit= must be a dict"):
        cycle(seed, fit=(x, y))
    with pytest.raises(ValueError, match="cycles"):
        cycle(seed, fit=dict(x=x, y=y), cycles=0)
    with pytest.raises(ValueError, match=r"expand=dict\(target=...\) must be one of"):
        cycle(seed, fit=dict(x=x, y=y), expand=dict(target="latency"))
    with pytest.raises(ValueError, match="unknown target"):
        cycle(seed, fit=dict(x=x, y=y, epochs=1, verbose=0), regularizer=dict(target="energy"))
    # refused before any work: the seed is untouched (weights, compiled optimizer, no hook left on it)
    assert all(np.array_equal(a, b) for a, b in zip(weights, seed.get_weights()))
    assert seed.optimizer is optimizer and "compute_loss" not in seed.__dict__


def test_demo_prints_the_data_error_and_exits_non_zero_without_fashion_mnist(monkeypatch, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "demo.py"
    spec = importlib.util.spec_from_file_location("morphsparse_demo", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)

    def missing(*args, **kwargs):
        raise ms.DataNotFoundError("Fashion-MNIST was not found in /nowhere")

    monkeypatch.setattr(ms, "load_fashion_mnist", missing)
    assert demo.main([]) == 1
    assert "Fashion-MNIST was not found in /nowhere" in capsys.readouterr().err


def test_old_keywords_of_cycle_are_deprecated_with_the_new_call_spelled_out(digits):
    from morphsparse.morph.cycle import _fold_legacy

    with pytest.warns(DeprecationWarning) as record:
        regularizer, expand = _fold_legacy(dict(target="size", strength_multiplier=3.0, round_to=8,
                                                expand_target="flops", budget=1000), None, None)
    assert regularizer == dict(target="size", strength_multiplier=3.0)
    assert expand == dict(round_to=8, target="flops", budget=1000)
    message = str(record[0].message)
    assert "regularizer=dict(target='size', strength_multiplier=3.0)" in message
    assert "expand=dict(round_to=8, target='flops', budget=1000)" in message
    with pytest.raises(ValueError, match=r"regularizer=dict\(target=...\) twice"):
        _fold_legacy(dict(target="size"), dict(target="flops"), None)
    x, y, _, _ = digits
    seed = digits_net()
    compile_model(seed)
    with pytest.warns(DeprecationWarning, match="cycle"), pytest.raises(ValueError, match="unknown target"):
        cycle(seed, fit=dict(x=x, y=y, epochs=1, verbose=0), target="energy")
