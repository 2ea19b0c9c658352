import keras
import numpy as np
import pytest

import morphsparse as ms

L = keras.layers


def conv_net(w1=16, w2=24, w3=8):
    inp = keras.Input((10, 10, 3))
    x = L.Conv2D(w1, 3, padding="same", name="c1")(inp)
    x = L.BatchNormalization(name="bn1")(x)
    y = L.Conv2D(w2, 1, name="c2")(x)
    y = L.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(y)
    y = L.SeparableConv2D(w3, 3, padding="same", depth_multiplier=2, name="sep")(y)
    z = L.Conv2D(w3, 1, strides=2, name="skip")(x)
    x = L.Add(name="add")([y, z])
    x = L.Flatten()(x)
    out = L.Dense(5, name="fc")(x)
    return keras.Model(inp, out)


def test_hand_computed_costs():
    report = ms.cost_report(conv_net())
    rows = report.by_layer()
    assert rows["c1"].macs == 10 * 10 * 9 * 3 * 16
    assert rows["c2"].macs == 10 * 10 * 16 * 24
    assert rows["dw"].macs == 5 * 5 * 9 * 24
    assert rows["sep"].macs == 5 * 5 * (24 * 2 * 9 + 24 * 2 * 8)
    assert rows["skip"].macs == 5 * 5 * 16 * 8
    assert rows["fc"].macs == 5 * 5 * 8 * 5
    assert report.flops == 2 * report.macs == ms.count_flops(conv_net())
    assert report.params == conv_net().count_params()


def test_grouped_conv_costs():
    inp = keras.Input((6, 6, 12))
    out = L.Conv2D(8, 3, groups=4, name="grouped")(inp)
    row = ms.cost_report(keras.Model(inp, out)).by_layer()["grouped"]
    assert row.macs == 4 * 4 * 9 * (12 // 4) * 8
    assert row.params == 9 * 3 * 8 + 8


def test_alive_counts_price_a_narrower_and_a_wider_twin_exactly():
    model = conv_net()
    graph = ms.analyze(model)
    for widths in [(10, 12, 8), (16, 24, 3), (32, 40, 16)]:
        keras.backend.clear_session()
        twin = conv_net(*widths)
        alive = {"c1": widths[0], "c2": widths[1], "sep": widths[2]}
        assert ms.count_flops(graph, alive=alive) == ms.count_flops(twin)
        assert ms.count_params(graph, alive=alive) == twin.count_params()


def test_alive_masks_count_exactly():
    graph = ms.analyze(conv_net())
    mask = np.zeros(16, bool)
    mask[[1, 5, 7]] = True
    keras.backend.clear_session()
    assert ms.count_flops(graph, alive={"c1": mask}) == ms.count_flops(conv_net(w1=3))
    with pytest.raises(ValueError, match="shape"):
        ms.count_flops(graph, alive={"c1": np.ones(5, bool)})
    with pytest.raises(ValueError, match=">= 0"):
        ms.count_flops(graph, alive={"c1": -1})


def test_every_layer_kind_matches_keras_param_count():
    inp = keras.Input((12, 8))
    x = L.Conv1D(6, 3, padding="same")(inp)
    x = L.LayerNormalization()(x)
    x = L.Dense(10)(x)                     # Dense on a sequence: applied at every position
    x = L.Reshape((12, 10, 1))(x)
    x = L.Conv2DTranspose(4, 3, strides=2, padding="same")(x)
    x = L.Conv2D(6, 3, groups=2)(x)
    x = L.Reshape((22, 18, 1, 6))(x)
    x = L.Conv3D(3, (3, 3, 1))(x)
    x = L.GlobalAveragePooling3D()(x)
    tokens = keras.Input((5,), dtype="int32")
    e = L.GlobalAveragePooling1D()(L.Embedding(50, 3)(tokens))
    out = L.Dense(2)(L.Concatenate()([x, e]))
    model = keras.Model([inp, tokens], out)
    assert ms.count_params(model) == model.count_params()
