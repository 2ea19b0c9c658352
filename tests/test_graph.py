import keras
import numpy as np
import pytest

import morphsparse as ms
from morphsparse import handlers

L = keras.layers


def residual_concat_net():
    inp = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(16, 3, padding="same", name="stem")(inp)
    x = L.BatchNormalization(name="stem_bn")(x)
    y = L.Conv2D(8, 1, name="branch_a")(x)
    y = L.ReLU(name="branch_relu")(y)
    y = L.Conv2D(16, 3, padding="same", name="branch_b")(y)
    x = L.Add(name="add")([x, y])
    t1 = L.Conv2D(4, 1, name="tower1")(x)
    t2 = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(x)
    x = L.Concatenate(name="cat")([t1, t2])
    x = L.Flatten(name="flat")(x)
    out = L.Dense(10, name="logits")(x)
    return keras.Model(inp, out, name="resnet_like")


def test_residual_add_ties_producers_into_one_group():
    graph = ms.analyze(residual_concat_net())
    group = graph.group_of("stem")
    assert graph.group_of("branch_b") is group
    assert set(group.producers) == {"stem", "branch_b"}
    assert group.size == 16 and group.removable
    assert graph.group_of("branch_a") is not group


def test_concat_keeps_offsets_and_depthwise_repeats_channels():
    graph = ms.analyze(residual_concat_net())
    call = graph.calls_of("flat")[0]
    groups, channels = call.in_groups[0], call.in_channels[0]
    tower, stem = graph.group_of("tower1").id, graph.group_of("stem").id
    assert groups[:4].tolist() == [tower] * 4 and channels[:4].tolist() == [0, 1, 2, 3]
    # depth multiplier 2: input channel c feeds outputs 2c and 2c+1
    assert groups[4:].tolist() == [stem] * 32
    assert channels[4:10].tolist() == [0, 0, 1, 1, 2, 2]


def test_flatten_dense_rows_follow_channels():
    graph = ms.analyze(residual_concat_net())
    dense = graph.calls_of("logits")[0]
    assert len(dense.in_groups[0]) == 8 * 8 * 36
    # row r of the kernel belongs to channel r % 36 of the concatenation
    assert np.array_equal(dense.in_channels[0][:36], dense.in_channels[0][36:72])
    assert {"tower1", "dw"} <= set(graph.group_of("stem").layers) | set(graph.group_of("tower1").layers)
    assert "logits" in graph.group_of("tower1").consumers


def test_inputs_and_outputs_are_pinned_and_ignore_pins_more():
    graph = ms.analyze(residual_concat_net())
    assert not graph.group_of("image").removable
    assert not graph.group_of("logits").removable
    assert graph.group_of("branch_a").removable
    pinned = ms.analyze(residual_concat_net(), ignore=["branch_a"])
    assert not pinned.group_of("branch_a").removable
    assert "ignore" in " ".join(pinned.group_of("branch_a").pinned_by)


def test_ignore_naming_no_layer_is_an_error():
    with pytest.raises(ms.GraphError, match="no_such_layer"):
        ms.analyze(residual_concat_net(), ignore=["no_such_layer"])


def test_grouped_conv_ties_channels_across_groups():
    inp = keras.Input((6, 6, 8))
    x = L.Conv2D(8, 1, name="pre")(inp)
    x = L.Conv2D(12, 3, groups=4, name="grouped")(x)
    out = L.GlobalAveragePooling2D()(x)
    out = L.Dense(3, name="head")(out)
    graph = ms.analyze(keras.Model(inp, out))
    assert graph.group_of("pre").size == 2          # 8 channels in 4 groups: channel k of each group tied
    assert graph.group_of("grouped").size == 3      # 12 outputs in 4 groups: removable 3 at a time
    assert ms.count_params(graph) == keras.Model(inp, out).count_params()


def test_squeeze_excite_multiply_ties_the_gate_to_the_features():
    inp = keras.Input((8, 8, 4))
    x = L.Conv2D(16, 3, padding="same", name="features")(inp)
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = L.Conv2D(4, 1, activation="relu", name="se_reduce")(s)
    s = L.Conv2D(16, 1, activation="sigmoid", name="se_expand")(s)
    x = L.Multiply(name="excite")([x, s])
    out = L.Dense(2, name="head")(L.GlobalAveragePooling2D()(x))
    graph = ms.analyze(keras.Model(inp, out))
    assert graph.group_of("features") is graph.group_of("se_expand")
    assert graph.group_of("se_reduce") is not graph.group_of("features")


def test_keras_ops_on_symbolic_tensors_are_followed():
    inp = keras.Input((4, 4, 3))
    x = L.Conv2D(8, 1, name="conv")(inp)
    x = x * keras.ops.relu(x + 3.0) / 6.0    # hard-swish written with keras.ops, as MobileNetV3 does
    out = L.Dense(2, name="head")(L.Flatten()(x))
    graph = ms.analyze(keras.Model(inp, out))
    assert graph.group_of("conv").removable
    assert len(graph.group_of("conv").consumers) == 1


def test_unknown_layer_error_names_layer_class_and_fix(handler_registry):
    # A layer that uses a weight of its own in its call cannot be read through (see test_composite_layers_are
    # _read_through for one that can): the error names it and says how to describe it.
    class Mystery(L.Layer):
        def build(self, shape):
            self.scale = self.add_weight(shape=(shape[-1],), initializer="ones")

        def call(self, x):
            return x * self.scale

    inp = keras.Input((4,))
    out = L.Dense(3)(Mystery(name="mystery")(L.Dense(5)(inp)))
    model = keras.Model(inp, out)
    with pytest.raises(ms.GraphError) as err:
        ms.analyze(model)
    message = str(err.value)
    assert "mystery" in message and "Mystery" in message and "register_handler" in message
    assert "cannot be read through" in message
    ms.register_handler(Mystery, handlers.PassThrough)
    graph = ms.analyze(model)
    assert graph.calls_of("mystery")


def test_wrongly_registered_pass_through_is_caught(handler_registry):
    class Doubler(L.Layer):
        def call(self, x):
            return keras.ops.concatenate([x, x], axis=-1)

    ms.register_handler(Doubler, handlers.PassThrough())
    inp = keras.Input((4,))
    with pytest.raises(ms.GraphError, match="channel-keeping"):
        ms.analyze(keras.Model(inp, Doubler(name="doubler")(L.Dense(5)(inp))))


def test_subclassed_and_unbuilt_models_get_clear_errors():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(2)

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(np.zeros((1, 3), "float32"))
    with pytest.raises(ms.GraphError, match="subclassed"):
        ms.analyze(net)
    with pytest.raises(ms.GraphError, match="not built"):
        ms.analyze(keras.Sequential([L.Dense(2)]))


def test_nested_model_and_sequential_are_walked_into():
    inner_in = keras.Input((8,))
    inner = keras.Model(inner_in, L.Dense(6, name="inner_dense")(L.Dense(5, name="inner_hidden")(inner_in)),
                        name="inner")
    seq = keras.Sequential([keras.Input((6,)), L.Dense(7, name="seq_dense")], name="seq")
    inp = keras.Input((8,))
    x = L.Dense(8, name="outer_first")(inp)
    out = L.Dense(2, name="outer_last")(seq(inner(x)))
    model = keras.Model(inp, out)
    graph = ms.analyze(model)
    paths = [c.path for c in graph.calls]
    assert "inner/inner_hidden" in paths and "seq/seq_dense" in paths
    assert graph.group_of("outer_first").consumers == ["inner/inner_hidden"]
    assert graph.group_of("inner_dense").removable
    assert ms.count_params(graph) == model.count_params()


def test_two_inputs_two_outputs():
    a, b = keras.Input((10,), name="a"), keras.Input((6,), name="b")
    xa = L.Dense(8, name="da")(a)
    xb = L.Dense(8, name="db")(b)
    merged = L.Add(name="merge")([xa, xb])
    h = L.Dense(12, name="hidden")(merged)
    out1, out2 = L.Dense(3, name="out1")(h), L.Dense(1, name="out2")(h)
    model = keras.Model([a, b], [out1, out2])
    graph = ms.analyze(model)
    assert graph.group_of("da") is graph.group_of("db")
    assert graph.group_of("hidden").removable
    assert not graph.group_of("out1").removable and not graph.group_of("out2").removable
    assert not graph.group_of("a").removable and not graph.group_of("b").removable


def test_graph_records_tensors_and_answers_queries():
    graph = ms.analyze(residual_concat_net())
    stem, stem_bn = graph.calls_of("stem")[0], graph.calls_of("stem_bn")[0]
    assert graph.model_inputs == [("input", 0)] and graph.producer(("input", 0)).name == "image"
    assert graph.inputs_of(stem) == [("input", 0)] and graph.outputs_of(stem) == [(stem.index, 0)]
    assert graph.calls[stem.index] is stem and graph.inputs_of(stem.index) == stem.input_keys
    assert graph.producer(stem.output_keys[0]) is stem
    assert graph.readers(stem.output_keys[0]) == [stem_bn]
    assert [c.name for c in graph.readers(stem_bn.output_keys[0])] == ["branch_a", "add"]
    assert graph.readers(graph.model_outputs[0]) == []
    assert graph.producer(graph.model_outputs[0]).name == "logits"
    groups, channels = graph.groups_of(stem.output_keys[0])
    assert set(groups.tolist()) == {graph.group_of("stem").id} and sorted(channels.tolist()) == list(range(16))


def test_chain_follows_single_readers_through_plain_channel_keeping_layers():
    inp = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 3, name="conv")(inp)
    x = L.ReLU(name="relu")(x)
    x = L.ZeroPadding2D(name="pad")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="after_bn")(x)
    y = L.Conv2D(4, 1, name="fork")(x)
    out = L.Add(name="sum")([x, y])
    graph = ms.analyze(keras.Model(inp, out))
    assert [c.name for c in graph.chain(graph.calls_of("conv")[0])] == ["relu", "pad", "bn"]
    assert [c.name for c in graph.chain(graph.calls_of("after_bn")[0])] == []      # two readers
    assert [c.name for c in graph.chain(graph.calls_of("fork")[0])] == ["sum"]


def test_nested_models_and_traces_share_one_tensor_key_space():
    inner_in = keras.Input((8,))
    inner = keras.Model(inner_in, L.Dense(6, name="inner_dense")(inner_in), name="inner")
    inp = keras.Input((8,))
    out = L.Dense(2, name="last")(inner(L.Dense(8, name="first")(inp)))
    graph = ms.analyze(keras.Model(inp, out))
    first, inner_dense, last = (graph.calls_of(n)[0] for n in ("first", "inner_dense", "last"))
    assert inner_dense.input_keys == first.output_keys and last.input_keys == inner_dense.output_keys


def test_shared_layer_emits_one_group():
    shared = L.Dense(6, name="shared")
    a, b = keras.Input((4,)), keras.Input((4,))
    pa, pb = L.Dense(4, name="pa")(a), L.Dense(4, name="pb")(b)
    out = L.Dense(1, name="out")(L.Concatenate()([shared(pa), shared(pb)]))
    model = keras.Model([a, b], out)
    graph = ms.analyze(model)
    assert len(graph.calls_of("shared")) == 2
    assert graph.group_of("pa") is graph.group_of("pb")   # both feed the same kernel rows
    assert ms.count_params(graph) == model.count_params()


def test_printable_form_lists_groups():
    text = str(ms.analyze(residual_concat_net()))
    assert "channel groups" in text and "removable" in text and "producers: stem, branch_b" in text


@pytest.mark.parametrize("name,size", [("ResNet50", 32), ("MobileNetV3Small", 32), ("InceptionV3", 75)])
def test_applications_group_structure(name, size):
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=10)
    graph = ms.analyze(model)
    covered = set()
    for call in graph.calls:
        for groups in call.out_groups:
            covered.update(groups.tolist())
    assert covered == set(range(len(graph.groups)))   # every group is on some output channel axis
    assert graph.removable_groups
    if name == "ResNet50":
        stage = graph.group_of("conv2_block1_0_conv")
        assert {"conv2_block1_3_conv", "conv2_block2_3_conv", "conv2_block3_3_conv"} <= set(stage.producers)
