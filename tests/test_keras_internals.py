"""One test per Keras internal that morphsparse/keras_internals.py names: when a Keras release renames one, the
test of that name fails and says which."""

import importlib

import keras
import numpy as np
import pytest

from morphsparse import keras_internals as internals

L = keras.layers


def _defined(qualified):
    module, _, name = qualified.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


OPS_EXAMPLES = {"numpy": lambda x: keras.ops.add(x, x), "nn": keras.ops.relu,
                "core": lambda x: keras.ops.cast(x, "float16"), "math": keras.ops.rsqrt,
                "image": lambda x: keras.ops.image.resize(x, (2, 2))}


@pytest.mark.parametrize("module", sorted(internals.OPS_MODULES))
def test_ops_module_is_where_keras_defines_the_operation(module):
    x = keras.Input((4, 4, 3))
    operation = internals.operation_of(OPS_EXAMPLES[module](x))
    assert type(operation).__module__ == internals.OPS_MODULES[module], (
        f"keras_internals.OPS_MODULES[{module!r}] = {internals.OPS_MODULES[module]!r}, but Keras now defines "
        f"{type(operation).__name__} in {type(operation).__module__}")


@pytest.mark.parametrize("name", sorted(internals.PRIVATE_CLASSES))
def test_private_class_still_exists_at_its_path(name):
    qualified = internals.PRIVATE_CLASSES[name]
    cls = _defined(qualified)
    assert isinstance(cls, type) and cls.__name__ == name, (
        f"keras_internals.PRIVATE_CLASSES[{name!r}] = {qualified!r} no longer names a class in Keras")


@pytest.mark.parametrize("public, base", [(L.Conv2D, "BaseConv"), (L.Conv2DTranspose, "BaseConvTranspose"),
                                          (L.DepthwiseConv2D, "BaseDepthwiseConv"),
                                          (L.SeparableConv2D, "BaseSeparableConv")])
def test_public_convolutions_derive_from_the_named_base(public, base):
    names = {f"{k.__module__}.{k.__qualname__}" for k in public.__mro__}
    assert internals.PRIVATE_CLASSES[base] in names, f"{public.__name__} no longer derives from {base}"


def _chain():
    i = keras.Input((4,), name="x")
    h = L.Dense(3, name="a")(i)
    return keras.Model(i, L.Dense(2, name="b")(h)), i, h


def test_functional_graph_of_functional_sequential_and_subclassed():
    model, _, _ = _chain()
    assert internals.functional_graph(model) is model
    seq = keras.Sequential([keras.Input((4,)), L.Dense(2)])
    assert internals.functional_graph(seq) is not None and internals.functional_graph(seq).outputs
    assert internals.functional_graph(keras.Sequential([L.Dense(2)])) is None

    class Sub(keras.Model):
        def call(self, x):
            return x

    assert internals.functional_graph(Sub()) is None


def test_nodes_in_order_and_all_nodes():
    model, _, _ = _chain()
    assert [n.operation.name for n in internals.nodes_in_order(model)] == ["a", "b"]
    assert len(internals.all_nodes(model)) == 3          # the input placeholder too


def test_operation_of_a_symbolic_tensor():
    _, _, h = _chain()
    assert internals.operation_of(h).name == "a"


def test_forget_nodes_restores_the_layers_call_history():
    model, i, h = _chain()
    dense = model.get_layer("b")
    before = (len(dense._inbound_nodes), len(model.get_layer("a")._outbound_nodes))
    second = keras.Model(i, dense(h))
    assert len(dense._inbound_nodes) == before[0] + 1
    internals.forget_nodes(second)
    assert (len(dense._inbound_nodes), len(model.get_layer("a")._outbound_nodes)) == before


def test_input_and_output_structure():
    a, b = keras.Input((2,), name="a"), keras.Input((2,), name="b")
    model = keras.Model({"a": a, "b": b}, [L.Add()([a, b])])
    assert isinstance(internals.input_structure(model), dict)
    assert isinstance(internals.output_structure(model), list)


def test_sub_layers_direct_and_recursive():
    inner = keras.Sequential([keras.Input((4,)), L.Dense(3, name="deep")], name="inner")
    i = keras.Input((4,))
    model = keras.Model(i, L.Dense(2, name="top")(inner(i)))
    direct = {layer.name for layer in internals.sub_layers(model, recursive=False)}
    every = {layer.name for layer in internals.sub_layers(model)}
    assert "inner" in direct and "deep" not in direct and "deep" in every


def test_build_input_shape():
    layer = L.Dense(3)
    assert internals.build_input_shape(layer) is None
    layer.build((None, 5))
    assert tuple(internals.build_input_shape(layer)) == (None, 5)


def test_weight_attribute_is_the_variable_behind_the_property():
    layer = L.Dense(3)
    layer.build((None, 5))
    assert internals.weight_attribute(layer, "kernel") is layer.kernel
    assert internals.weight_attribute(layer, "no_such_weight") is None


def test_slot_prefix_matches_the_names_of_an_optimizers_slots():
    variable = keras.Variable(np.zeros((2, 2), "float32"), name="w")
    optimizer = keras.optimizers.Adam()
    optimizer.build([variable])
    slots = [v for v in optimizer.variables if tuple(v.shape) == (2, 2)]
    assert slots and all(v.name.startswith(internals.slot_prefix(variable)) for v in slots), (
        [v.name for v in slots], internals.slot_prefix(variable))


def test_built_variables_are_those_the_optimizer_was_built_for():
    variables = [keras.Variable(np.zeros((2,), "float32")), keras.Variable(np.ones((3,), "float32"))]
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(variables)
    assert [id(v) for v in internals.built_variables(optimizer)] == [id(v) for v in variables]


def test_unlocked_lets_state_be_added_to_a_built_subclassed_model():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Sub()
    model(np.zeros((1, 3), "float32"))
    with internals.unlocked(model):
        model.extra_metric = keras.metrics.Mean(name="extra")
    assert any(m.name == "extra" for m in model.metrics)


def test_interpreter_ops_lists_the_operations():
    from morphsparse import litert
    try:
        litert._interpreter_class()
    except ImportError:
        pytest.skip("no LiteRT interpreter installed")
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((1, 4), tf.float32)])
    def double(x):
        return x * 2.0

    flatbuffer = tf.lite.TFLiteConverter.from_concrete_functions([double.get_concrete_function()]).convert()
    ops = internals.interpreter_ops(litert.interpreter(flatbuffer, delegates=False))
    assert ops and {"op_name", "inputs"} <= set(ops[0]), "the interpreter's _get_ops_details() changed"
