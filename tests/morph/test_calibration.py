"""Calibration importances for pruning without retraining (morphsparse.morph.calibration): Wanda-sp and FLAP
scores, heads measured by ablation, and FLAP's bias compensation through the export."""

import warnings

import keras
import numpy as np
import pytest

import morphsparse as ms
from morphsparse.graph import analyze
from morphsparse.handlers import rebuild_part

L = keras.layers


def chain(seed=0):
    """Dense(relu) -> linear Dense: the hidden channels are the only removable group."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12,))
    hidden = L.Dense(32, activation="relu", name="up")(inputs)
    return keras.Model(inputs, L.Dense(3, name="down")(hidden))


def attention_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 16))
    x = L.Dense(16, name="embed")(inputs)
    x = L.LayerNormalization(name="norm")(x)
    attended = L.MultiHeadAttention(4, 8, name="mha")(x, x)
    x = L.Add()([x, attended])
    hidden = L.Dense(24, activation="gelu", name="ffn_up")(x)
    x = L.Add()([x, L.Dense(16, name="ffn_down")(hidden)])
    return keras.Model(inputs, L.Dense(5, name="head")(L.LayerNormalization(name="final")(x)))


def data(shape, n=256, seed=1):
    return np.random.default_rng(seed).normal(size=(n,) + shape).astype("float32")


def hidden_activations(model, x):
    up = model.get_layer("up")
    return np.maximum(x @ up.kernel.numpy() + up.bias.numpy(), 0.0).astype(np.float64)


def test_wanda_and_flap_scores_of_channels_are_the_formulas():
    model, x = chain(), data((12,))
    h = hidden_activations(model, x)
    rows = model.get_layer("down").kernel.numpy().astype(np.float64)
    expected = {"wanda": np.sqrt(np.mean(h ** 2, axis=0)) * np.abs(rows).sum(axis=1),
                "flap": np.var(h, axis=0) * np.square(rows).sum(axis=1)}
    for kind, want in expected.items():
        scores = ms.channel_importance(model, kind, data=x, batches=4)
        (got,) = scores.values()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


def test_flap_folds_the_removed_channels_mean_so_the_mean_output_is_kept():
    model, x = chain(), data((12,), n=512)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slim = ms.prune(model, budget=0.5, target="size", importance="flap", data=x, batches=8)
    assert slim.get_layer("up").units < 32
    before, after = model.predict(x, verbose=0), slim.predict(x, verbose=0)
    scale = np.abs(before).mean()
    np.testing.assert_allclose(after.mean(axis=0), before.mean(axis=0), atol=1e-4 * scale)


def test_input_rows_of_a_dense_layer_are_its_kernel():
    model = chain()
    call = analyze(model).calls_of("down")[0]
    weights = [w.numpy() for w in call.layer.weights]
    rows = rebuild_part(call.handler).input_rows(call, weights)
    np.testing.assert_allclose(rows, call.layer.kernel.numpy(), rtol=1e-6)


@pytest.mark.parametrize("kind", ["wanda", "flap"])
def test_a_head_that_adds_nothing_scores_zero(kind):
    model, x = attention_model(), data((6, 16), n=64)
    mha = model.get_layer("mha")
    kernel = mha.output_dense.kernel.numpy()
    kernel[2] = 0.0            # head 2 writes nothing to the output projection
    mha.output_dense.kernel.assign(kernel)
    graph = analyze(model)
    heads = graph.internal_group("mha")
    scores = ms.channel_importance(model, kind, data=x, batches=1)[heads.id]
    assert scores[2] == pytest.approx(0.0, abs=1e-9)
    assert np.all(np.delete(scores, 2) > 0)
    np.testing.assert_array_equal(mha.output_dense.kernel.numpy(), kernel)    # weights restored


@pytest.mark.parametrize("kind", ["wanda", "flap"])
def test_prune_with_a_calibration_importance_lands_under_the_budget(kind):
    model, x = attention_model(), data((6, 16), n=128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slim, report = ms.prune_with_report(model, budget=0.7, target="size", importance=kind, data=x)
    assert ms.count_params(slim) <= 0.7 * ms.count_params(model)
    assert report.importance == kind
    assert slim.predict(x[:4], verbose=0).shape == (4, 6, 5)
    for producers, (before, after) in report.groups.items():
        assert after <= before, producers          # a heads group is read on its own axis


def test_calibration_importances_take_inputs_alone_or_datasets():
    import tensorflow as tf

    model, x = chain(), data((12,), n=128)
    y = np.zeros((128, 3), "float32")
    alone = ms.channel_importance(model, "wanda", data=x, batches=2)
    paired = ms.channel_importance(model, "wanda", data=(x, y), batches=2)
    dataset = ms.channel_importance(model, "wanda", data=tf.data.Dataset.from_tensor_slices(x).batch(64), batches=2)
    for other in (paired, dataset):
        for key in alone:
            np.testing.assert_allclose(other[key], alone[key], rtol=1e-6)


def test_calibration_importances_need_data_and_say_so():
    model = chain()
    with pytest.raises(ValueError, match="importance='flap' needs data="):
        ms.prune(model, budget=0.5, importance="flap")
    with pytest.raises(TypeError, match="data must be"):
        ms.prune(model, budget=0.5, importance="wanda", data="inputs.npy")
    with pytest.raises(ValueError, match="calibration inputs have 2 arrays"):
        ms.prune(model, budget=0.5, importance="wanda", data={"a": data((12,)), "b": data((12,))},
                 batches=1)
    with pytest.warns(UserWarning, match="loss= is only used by importance='taylor'"):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="prune of .* over-pruned")
            ms.prune(model, budget=0.9, target="size", importance="wanda", data=data((12,)), batches=1,
                     loss="mse")
