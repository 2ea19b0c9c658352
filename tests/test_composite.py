"""Composite layers read through their call, keras.ops rules and MultiHeadAttention (issue 11, points 1-3)."""
import keras
import numpy as np
import pytest

import morphsparse as ms
from morphsparse.morph.export import check_equivalent
from morphsparse.profiler import profiler_mac_flops

L = keras.layers


class ConvBlock(L.Layer):
    """A user's composite layer: conv, batch norm, activation and a residual add written with keras.ops."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = L.Conv2D(filters, 3, padding="same", name="conv")
        self.bn = L.BatchNormalization(name="bn")
        self.project = L.Conv2D(filters, 1, name="project")

    def call(self, x, training=None):
        y = keras.ops.relu(self.bn(self.conv(x), training=training))
        return self.project(y) + x

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


def block_net():
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 1, name="stem")(inp)
    x = ConvBlock(6, name="block")(x)
    x = keras.ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    out = L.Dense(3, name="head")(L.GlobalAveragePooling2D()(x))
    return keras.Model(inp, out, name="block_net")


def test_composite_layers_are_read_through():
    model = block_net()
    graph = ms.analyze(model)
    paths = [c.path for c in graph.calls]
    assert {"block/conv", "block/bn", "block/project"} <= set(paths)
    # the residual add inside the block ties the block's projection to the stem
    assert graph.group_of("stem") is graph.group_of("block/project")
    assert graph.group_of("block/conv").removable
    assert ms.count_params(graph) == model.count_params()
    assert ms.count_flops(graph) == profiler_mac_flops(model)
    assert len(graph.traces) == 1
    # the user's layers keep the call history they had: the trace's nodes are taken off them again
    assert not model.get_layer("block").conv._inbound_nodes


def test_composite_layer_exports_flattened_and_expands():
    model = block_net()
    graph = ms.analyze(model)
    conv = graph.group_of("block/conv")
    mask = np.ones(conv.size, bool)
    mask[[1, 4]] = False
    bn = model.get_layer("block").bn
    for variable in (bn.gamma, bn.beta):   # the two channels are dead as a gamma-regularised model has them
        value = keras.ops.convert_to_numpy(variable)
        value[~mask] = 0.0
        variable.assign(value)
    slim, report = ms.export_with_report(model, alive={conv.id: mask})
    assert report.removed_anything
    difference, noise = check_equivalent(model, slim)
    assert difference <= max(1e-5, 10 * noise)
    assert slim.get_layer("block__conv").filters == 6 - 2
    wide = ms.expand(slim, budget=1.0, reference=model)
    assert ms.count_flops(wide) <= ms.count_flops(model)


def test_untraceable_composite_names_the_layer():
    class Scale(L.Layer):
        def build(self, shape):
            self.scale = self.add_weight(shape=(shape[-1],), initializer="ones")

        def call(self, x):
            return x * self.scale

    inp = keras.Input((4,))
    model = keras.Model(inp, L.Dense(2)(Scale(name="scale")(L.Dense(3)(inp))))
    with pytest.raises(ms.GraphError, match="'scale'.*Scale.*cannot be read through.*register_handler"):
        ms.analyze(model)


def test_keras_ops_rules_follow_the_channel_axis():
    inp = keras.Input((4, 6))
    x = L.Dense(8, name="d1")(inp)
    a, b = keras.ops.split(x, [3], axis=-1)                      # channel split: two slices of d1's channels
    y = keras.ops.concatenate([b, a], axis=-1)                   # back together, in another order
    y = keras.ops.transpose(y, (0, 2, 1))                        # moves the channel axis: pinned
    y = keras.ops.transpose(y, (0, 2, 1))
    z = L.Dense(8, name="d2")(x)
    z = keras.ops.mean(z, axis=1, keepdims=True) + z[:, :, :]    # reduction over positions keeps channels
    z = z[..., 2:6]                                              # a slice of the channel axis
    out = L.Dense(2, name="head")(keras.ops.reshape(z, (-1, 16)))
    out = out + L.Dense(2, name="side")(keras.ops.reshape(y, (-1, 32)))
    model = keras.Model(inp, out)
    graph = ms.analyze(model)
    assert not graph.group_of("d1").removable                    # read by a transpose that moves it
    assert "moves the channel axis" in " ".join(graph.group_of("d1").pinned_by)
    d2 = graph.group_of("d2")
    assert d2.removable
    head = graph.calls_of("head")[0]
    assert set(head.in_groups[0].tolist()) == {d2.id} and sorted(set(head.in_channels[0].tolist())) == [2, 3, 4, 5]
    mask = np.ones(8, bool)
    mask[[3, 6]] = False
    slim = ms.export(model, source="group_lasso", alive={d2.id: mask})
    assert slim.get_layer("d2").units == 6
    assert slim.get_layer("head").kernel.shape[0] == 12        # 3 of the 4 sliced channels, 4 positions
    assert ms.count_params(slim) == slim.count_params()


def attention_net(heads=3, key_dim=4, value_dim=5):
    inp = keras.Input((6, 8))
    x = L.Dense(8, name="embed")(inp)
    a = L.MultiHeadAttention(heads, key_dim, value_dim=value_dim, name="mha")(x, x)
    x = L.LayerNormalization(name="ln")(x + a)
    h = L.Dense(16, activation="relu", name="ffn_in")(x)
    x = x + L.Dense(8, name="ffn_out")(h)
    out = L.Dense(3, name="head")(x[:, 0, :])
    return keras.Model(inp, out, name="attention_net")


def test_attention_heads_are_a_group_and_costs_match_the_profiler():
    model = attention_net()
    graph = ms.analyze(model)
    heads = graph.internal_group("mha", "heads")
    assert heads.size == 3 and heads.removable
    assert graph.group_of("mha") is graph.group_of("embed")      # the residual stream
    assert graph.group_of("ffn_in").removable
    t, d, h, k, v = 6, 8, 3, 4, 5
    attention = t * d * h * (2 * k + v) + t * t * h * (k + v) + t * h * v * d
    assert ms.cost_report(graph).by_layer()["mha"].macs == attention
    assert ms.count_flops(graph) == profiler_mac_flops(model)
    assert ms.count_params(graph) == model.count_params()
    # two heads alive: every part of the attention cost scales with the heads
    assert ms.cost_report(graph, alive={heads.id: 2}).by_layer()["mha"].macs == attention * 2 // 3


def _scale_heads(model, name, heads, factor=0.0):
    """Multiply the query, key, value and output kernel weights of ``heads`` of layer ``name`` by ``factor``."""
    mha = model.get_layer(name)
    for kernel, axis in ((mha.query_dense.kernel, 1), (mha.key_dense.kernel, 1), (mha.value_dense.kernel, 1),
                         (mha.output_dense.kernel, 0)):
        value = keras.ops.convert_to_numpy(kernel)
        np.moveaxis(value, axis, 0)[heads] *= factor
        kernel.assign(value)


def _zero_head(model, head):
    _scale_heads(model, "mha", head)


def test_heads_and_ffn_neurons_are_regularised_exported_and_expanded():
    model = attention_net()
    reg = ms.MorphRegularizer(model, target="flops", source="group_lasso", threshold=1e-3)
    assert reg.initial_cost == ms.count_flops(model)
    graph = reg.graph
    heads = graph.internal_group("mha", "heads")
    assert any(s.group == heads.id for s in reg.sources)         # a group-lasso source on the heads' weights
    _zero_head(model, 1)
    ffn_in = model.get_layer("ffn_in")
    kernel = keras.ops.convert_to_numpy(ffn_in.kernel)
    kernel[:, [0, 5, 9]] = 0.0
    ffn_in.kernel.assign(kernel)
    masks = reg.alive_masks()
    assert masks[heads.id].tolist() == [True, False, True]
    assert (~masks[graph.group_of("ffn_in").id]).sum() == 3
    assert reg.cost() == ms.count_flops(graph, alive=masks)
    slim, report = ms.export_with_report(model, source="group_lasso", threshold=1e-3)
    assert slim.get_layer("mha").num_heads == 2 and slim.get_layer("mha").key_dim == 4
    assert slim.get_layer("ffn_in").units == 13
    difference, noise = check_equivalent(model, slim)
    assert difference <= max(1e-5, 10 * noise)
    assert report.flops_after == ms.count_flops(slim) < report.flops_before
    wide, expand_report = ms.expand_with_report(slim, budget=1.0, reference=model)
    assert wide.get_layer("mha").num_heads >= 2
    assert expand_report.cost_after <= ms.count_flops(model) < expand_report.cost_next_step


def test_regulariser_gradient_reaches_the_heads():
    import tensorflow as tf
    model = attention_net()
    reg = ms.MorphRegularizer(model, target="flops", source="group_lasso")
    mha = model.get_layer("mha")
    with tf.GradientTape() as tape:
        loss = reg.loss()
    grads = tape.gradient(loss, [mha.query_dense.kernel, mha.output_dense.kernel])
    assert all(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)


def test_small_vit_heads_and_ffn_widths_are_groups_and_export_rebuilds_it(tmp_path):
    from morphsparse.models import small_vit
    model = small_vit(dim=16, depth=2, heads=4, key_dim=4, ffn=24)
    graph = ms.analyze(model)
    stream = graph.group_of("patchify")
    # the position embedding (a weight of the model, not a constant) is on the stream and counted
    assert graph.group_of("position") is stream and stream is graph.group_of("b1_ffn2")
    assert ms.count_params(graph) == model.count_params()
    assert ms.cost_report(graph).by_layer()["position"].params == 16 * 16
    for i in range(2):
        assert graph.internal_group(f"b{i}_mha", "heads").size == 4
        assert graph.group_of(f"b{i}_ffn1").size == 24 and graph.group_of(f"b{i}_ffn1").removable
    # the budget regulariser prices heads and neurons; ignore= on the patch embedding pins the whole stream
    reg = ms.MorphRegularizer(model, target="flops", source="group_lasso", budget=0.5, ignore=["patchify"])
    assert not reg.graph.group_of("b0_ffn2").removable
    assert {s.group for s in reg.sources} >= {reg.graph.internal_group("b1_mha", "heads").id,
                                              reg.graph.group_of("b0_ffn1").id}
    _scale_heads(model, "b0_mha", [1, 2])
    _scale_heads(model, "b1_mha", [0])
    dense = model.get_layer("b1_ffn1")
    for weight in (dense.kernel, dense.bias):
        value = keras.ops.convert_to_numpy(weight)
        value[..., ::3] = 0.0
        weight.assign(value)
    slim, report = ms.export_with_report(model, source="group_lasso", threshold=1e-3)
    assert [slim.get_layer(f"b{i}_mha").num_heads for i in range(2)] == [2, 3]
    assert slim.get_layer("b1_ffn1").units == 16 and slim.get_layer("b0_ffn1").units == 24
    difference, noise = check_equivalent(model, slim)
    assert difference <= max(1e-5, 10 * noise)
    assert report.flops_after == ms.count_flops(slim) < report.flops_before
    # the report lists a layer that lost heads as narrowed, the heads after its output width (16+4 -> 16+2)
    rows = {row.path: row for row in report.layers}
    assert rows["b0_mha"].status == "narrowed" and rows["b0_mha"].out_before == [16, 4]
    assert rows["b0_mha"].out_after == [16, 2]
    assert "b0_mha" in report.table() and "4 layers narrowed" in report.summary()   # b0_mha, b1_mha, b1_ffn1/2
    path = tmp_path / "slim.keras"
    slim.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.count_params() == slim.count_params()
    # the uniform baseline: one multiplier on heads and FFN widths, the stream left whole
    narrow = ms.resize(small_vit(dim=16, depth=2, heads=4, key_dim=4, ffn=24), budget=ms.count_flops(slim),
                       ignore=["patchify"])
    assert ms.count_flops(narrow) <= ms.count_flops(slim)
    assert narrow.get_layer("b0_ffn2").units == 16
    assert narrow.get_layer("b0_mha").num_heads == narrow.get_layer("b1_mha").num_heads < 4


def test_an_attention_layer_keeps_its_strongest_head_when_all_fall_below_the_threshold():
    """A MultiHeadAttention with no head cannot be rebuilt, so the alive masks, the regulariser's in-graph
    alive cost (what the budget controller steers) and export all keep one head: before, the controller could
    price a layer with zero heads, and export (or reg.cost() at the end of fit) raised."""
    model = attention_net(heads=3)
    reg = ms.MorphRegularizer(model, target="flops", source="group_lasso", threshold=1e-3, budget=0.5, steps=10)
    heads = reg.graph.internal_group("mha", "heads")
    _zero_head(model, [0, 2])
    _scale_heads(model, "mha", [1], 1e-4)                        # below the threshold too, but the largest
    assert float(np.max(ms.group_vectors(model, source="group_lasso")[heads.id])) < 1e-3
    masks = reg.alive_masks()
    assert masks[heads.id].tolist() == [False, True, False]
    _, flops, _ = reg._loss_and_costs()
    assert float(flops) == reg.cost() == ms.count_flops(reg.graph, alive=masks)
    assert float(reg.controller.update()) == pytest.approx(reg.cost() / reg.initial_cost)
    slim = ms.export(model, source="group_lasso", threshold=1e-3)
    assert slim.get_layer("mha").num_heads == 1
    assert ms.count_flops(slim) == reg.cost()


class HeadsMerge(L.Layer):
    """Splits a projection into heads and merges them back with a reshape to (batch, length, -1) whose batch is
    read from a tensor (RoformerV2, ESM, DINOv3 and MiT do so): Keras cannot size the -1 while the batch is
    unknown; the graph sizes it from the input."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.project = L.Dense(8, name="project")
        self.out = L.Dense(6, name="out")

    def build(self, input_shape):
        self.project.build(input_shape)
        self.out.build((None, None, 8))

    def call(self, x):
        b, s = keras.ops.shape(x)[0], keras.ops.shape(x)[1]
        y = keras.ops.reshape(self.project(x), (b, s, 2, 4))
        return self.out(keras.ops.reshape(keras.ops.relu(y), (b, s, -1)))


def test_reshape_to_minus_one_with_the_batch_read_from_a_tensor_exports():
    inp = keras.Input((5, 6))
    x = L.Dense(6, name="stem")(inp)
    x = HeadsMerge(name="merge")(x) + x
    model = keras.Model(inp, L.Dense(3, name="head")(L.Dense(12, name="ffn")(x)), name="heads_merge")
    graph = ms.analyze(model)
    assert ms.count_params(graph) == model.count_params()
    assert ms.count_flops(graph) == profiler_mac_flops(model)
    ffn = graph.group_of("ffn")
    keep = np.arange(ffn.size) % 3 != 0
    kernel = keras.ops.convert_to_numpy(model.get_layer("ffn").kernel).copy()
    kernel[:, ~keep] = 0.0
    model.get_layer("ffn").kernel.assign(kernel)
    slim = ms.export(model, alive={ffn.id: keep}, exact=True)
    assert slim.get_layer("ffn").units == 8
    difference, noise = check_equivalent(model, slim)
    assert difference <= max(1e-5, 10 * noise)
    wide = ms.expand(slim, budget=1.0, reference=model)
    assert wide.count_params() > slim.count_params()
