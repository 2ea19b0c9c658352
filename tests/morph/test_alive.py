"""Alive masks and regularisation vectors (morphsparse.morph.alive)."""

import keras
import numpy as np
import pytest

import morphsparse as ms
from morphsparse.morph import alive
from morph_helpers import block_net

L = keras.layers


def set_gamma(model, name, values):
    model.get_layer(name).gamma.assign(np.asarray(values, dtype="float32"))


def test_gamma_vectors_take_the_max_over_producers_of_a_group():
    model = block_net()
    graph = ms.analyze(model)
    set_gamma(model, "stem_bn", np.linspace(-1, 1, 16))
    set_gamma(model, "b_bn", np.full(16, 0.5))
    vectors = alive.group_vectors(graph)
    stem = graph.group_of("stem").id
    np.testing.assert_allclose(vectors[stem], np.maximum(np.abs(np.linspace(-1, 1, 16)), 0.5), rtol=1e-6)
    # a tower whose BN sits after an activation still finds it
    assert graph.group_of("t2").id in vectors


def test_alive_is_or_over_producers_and_threshold_applies():
    model = block_net()
    graph = ms.analyze(model)
    set_gamma(model, "a_bn", [0, 0.005, 0.02, 1, 0, 0, 1, 1])
    set_gamma(model, "stem_bn", np.r_[np.zeros(8), np.ones(8)])
    set_gamma(model, "b_bn", np.r_[np.zeros(4), np.ones(12)])
    masks = alive.alive_masks(graph, threshold=1e-2)
    np.testing.assert_array_equal(masks[graph.group_of("a").id], [0, 0, 1, 1, 0, 0, 1, 1])
    np.testing.assert_array_equal(masks[graph.group_of("stem").id], np.r_[np.zeros(4), np.ones(12)])
    assert masks[graph.group_of("logits").id].all()          # output never shrinks
    assert masks[graph.calls_of("image")[0].out_groups[0][0]].all()   # input never shrinks


def test_group_lasso_vector_matches_the_formula():
    model = block_net()
    graph = ms.analyze(model)
    kernel = keras.ops.convert_to_numpy(model.get_layer("a").kernel)
    w = kernel.reshape(-1, 8)
    for l1 in (0.0, 0.3, 1.0):
        expected = (1 - l1) * np.sqrt((w ** 2).mean(0)) + l1 * np.abs(w).mean(0)
        got = alive.group_vectors(graph, "group_lasso", l1_fraction=l1)[graph.group_of("a").id]
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_group_lasso_depthwise_multiplier_maps_outputs_to_input_channels():
    inp = keras.Input((6, 6, 4))
    x = L.Conv2D(4, 1, name="pw")(inp)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x)
    out = L.Dense(3, name="head")(L.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    graph = ms.analyze(model)
    kernel = np.zeros((3, 3, 4, 2), "float32")
    kernel[..., 1, 0] = 1.0     # channel 1, first copy
    model.get_layer("dw").kernel.assign(kernel)
    model.get_layer("pw").kernel.assign(np.zeros((1, 1, 4, 4), "float32"))
    masks = alive.alive_masks(graph, "group_lasso")
    np.testing.assert_array_equal(masks[graph.group_of("pw").id], [False, True, False, False])


def test_tensor_sources_are_differentiable_with_keras_ops():
    model = block_net()
    graph = ms.analyze(model)
    for kind in alive.SOURCES:
        for src in alive.find_sources(graph, kind):
            value = src.values(0.2, xp=keras.ops)
            np.testing.assert_allclose(keras.ops.convert_to_numpy(value), src.values(0.2), rtol=1e-5)


def test_groups_without_a_source_stay_alive():
    inp = keras.Input((10,))
    x = L.Dense(6, name="hidden")(inp)
    out = L.Dense(2, name="out")(x)
    graph = ms.analyze(keras.Model(inp, out))
    assert alive.group_vectors(graph, "gamma") == {}
    assert all(m.all() for m in alive.alive_masks(graph, "gamma").values())


def test_killing_a_non_removable_group_is_an_error():
    inp = keras.Input((10,))
    x = L.Dense(6, name="hidden")(inp)
    x = L.BatchNormalization(name="bn")(x)
    model = keras.Model(inp, x)
    model.get_layer("bn").gamma.assign(np.zeros(6, "float32"))
    with pytest.raises(alive.AliveError, match="network output"):
        alive.alive_masks(model)


def test_a_chain_with_every_channel_dead_is_an_error():
    model = block_net()
    set_gamma(model, "t1_bn", np.zeros(4))
    set_gamma(model, "t2_bn", np.zeros(6))
    with pytest.raises(alive.AliveError, match="no input reaches"):
        alive.alive_masks(model)
    # a residual branch may die whole: the skip path still carries the signal
    model = block_net()
    set_gamma(model, "a_bn", np.zeros(8))
    masks = alive.alive_masks(model)
    assert not any(masks[g].any() for g in [ms.analyze(model).group_of("a").id])


def test_bad_arguments():
    model = block_net()
    with pytest.raises(ValueError, match="unknown source"):
        alive.alive_masks(model, source="l2")
    with pytest.raises(ValueError, match="threshold"):
        alive.alive_masks(model, threshold=-1)
    with pytest.raises(ValueError, match="l1_fraction"):
        alive.group_vectors(model, "group_lasso", l1_fraction=2)
    with pytest.raises(TypeError):
        alive.alive_masks("model.keras")
