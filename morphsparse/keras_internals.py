"""The one module that names Keras internals: private attributes, private class paths, naming conventions
(and the one private method of LiteRT's interpreter that morphsparse reads).

morphsparse reads a functional model's node graph, which Keras exposes through no public API, and names a few
classes that live only under ``keras.src``. Every such name is here and nowhere else, so that a Keras release
that renames one breaks one module; ``tests/test_keras_internals.py`` has a test per name that fails naming it.
Nothing is imported from ``keras.src``: private classes are named by their qualified class name (the handler
registry looks handlers up by name along a class's hierarchy).
"""

from __future__ import annotations

import contextlib

import keras

#: Where Keras defines the operation classes behind ``keras.ops`` (a symbolic ``keras.ops.add`` records an
#: ``Add`` node of ``keras.src.ops.numpy``); the handlers for keras.ops calls are registered under these.
OPS_MODULES = {"numpy": "keras.src.ops.numpy", "nn": "keras.src.ops.nn", "core": "keras.src.ops.core",
               "math": "keras.src.ops.math", "image": "keras.src.ops.image"}

#: Private layer classes with no public name that models users bring are made of, and the base classes of
#: Keras's convolutions (a layer deriving from one directly is handled as that kind of convolution).
PRIVATE_CLASSES = {
    "LayerScale": "keras.src.applications.convnext.LayerScale",
    "StochasticDepth": "keras.src.applications.convnext.StochasticDepth",
    "CustomScaleLayer": "keras.src.applications.inception_resnet_v2.CustomScaleLayer",
    "BaseConv": "keras.src.layers.convolutional.base_conv.BaseConv",
    "BaseConvTranspose": "keras.src.layers.convolutional.base_conv_transpose.BaseConvTranspose",
    "BaseDepthwiseConv": "keras.src.layers.convolutional.base_depthwise_conv.BaseDepthwiseConv",
    "BaseSeparableConv": "keras.src.layers.convolutional.base_separable_conv.BaseSeparableConv",
}


def op_class(module, name):
    """The qualified class name of the keras.ops operation ``name`` defined in :data:`OPS_MODULES` ``[module]``."""
    return f"{OPS_MODULES[module]}.{name}"


# --- the functional graph -------------------------------------------------------------------------------

def functional_graph(model):
    """The functional graph behind a model: the model itself when functional, a Sequential's inner functional
    model (None while it has no known input shape), None for a subclassed model."""
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    if isinstance(model, keras.Model) and getattr(model, "_nodes_by_depth", None) is not None:
        try:
            model.inputs
        except AttributeError:
            return None
        return model
    return None


def nodes_in_order(functional):
    """The operation nodes of a functional model (input placeholders left out) in topological order."""
    for depth in sorted(functional._nodes_by_depth, reverse=True):
        for node in functional._nodes_by_depth[depth]:
            if node.operation is not None and not node.is_input:
                yield node


def all_nodes(functional):
    """Every node of a functional model, input placeholders included, in no particular order."""
    return [n for depth in functional._nodes_by_depth.values() for n in depth]


def operation_of(tensor):
    """The operation (layer) that made a symbolic tensor."""
    return tensor._keras_history.operation


def forget_nodes(functional):
    """Take the nodes of ``functional`` off the layers that recorded them (the functional model keeps its own
    references): after a trace, the user's layers look as they did before the analysis."""
    nodes = all_nodes(functional)
    ids = {id(n) for n in nodes}
    for n in nodes:
        op = n.operation
        if op is None:
            continue
        op._inbound_nodes = [x for x in op._inbound_nodes if id(x) not in ids]
        op._outbound_nodes = [x for x in op._outbound_nodes if id(x) not in ids]
        for t in n.input_tensors:
            parent = operation_of(t)
            if parent is not None:
                parent._outbound_nodes = [x for x in parent._outbound_nodes if id(x) not in ids]


def input_structure(functional):
    """How the model's inputs are nested (a dict of token ids and padding mask stays a dict)."""
    return functional._inputs_struct


def output_structure(functional):
    return functional._outputs_struct


# --- layers and variables ---------------------------------------------------------------------------------

def sub_layers(layer, recursive=True):
    """The layers tracked inside ``layer`` (itself left out): its children, or all its descendants."""
    return list(layer._flatten_layers(include_self=False, recursive=recursive))


def build_input_shape(layer):
    """The first input shape ``layer`` was built with, or None (for a layer that was never called)."""
    shapes = getattr(layer, "_build_shapes_dict", None) or {}
    return next(iter(shapes.values()), None)


def weight_attribute(layer, name):
    """The variable a layer keeps behind the property ``name`` (Dense, Conv and Embedding store ``kernel`` as
    ``_kernel`` and return a quantised view from the property), or None."""
    variable = getattr(layer, "_" + name, None)
    return variable if isinstance(variable, keras.Variable) else None


def built_variables(optimizer):
    """The variables an optimizer was built for (what ``apply(grads)`` without variables updates)."""
    return optimizer._trainable_variables


def slot_prefix(variable):
    """The prefix of the names Keras gives an optimizer's per-variable slots (``<variable path>_<slot>``)."""
    return variable.path.replace("/", "_") + "_"


@contextlib.contextmanager
def unlocked(model):
    """Let an attribute be set on a built subclassed model, whose tracker refuses new state once built."""
    tracker = getattr(model, "_tracker", None)
    if tracker is None:
        yield
        return
    locked = tracker.locked
    tracker.unlock()
    try:
        yield
    finally:
        tracker.locked = locked


def interpreter_ops(interpreter):
    """The LiteRT interpreter's op list (``[{"op_name", "inputs", ...}]``); [] where the build has none."""
    try:
        return interpreter._get_ops_details()
    except AttributeError:
        return []


__all__ = ["OPS_MODULES", "PRIVATE_CLASSES", "op_class", "functional_graph", "nodes_in_order", "all_nodes",
           "operation_of", "forget_nodes", "input_structure", "output_structure", "sub_layers",
           "build_input_shape", "weight_attribute", "built_variables", "slot_prefix", "unlocked", "interpreter_ops"]
