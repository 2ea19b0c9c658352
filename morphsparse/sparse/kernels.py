"""Which weights of which layers sparse training masks, and how to find them in a model.

Nothing here wraps or changes a layer: masks live in the ``SparseOptimizer`` and the layers run their own dense
kernels (pruned weights are exact zeros in the variables).
"""

from __future__ import annotations

import fnmatch

import keras
import tensorflow as tf

from morphsparse import keras_internals as _keras
from morphsparse.handlers.base import positions

# Which weights are masked, per layer family (algorithms.md 1.1). isinstance makes subclasses of these layers
# supported too. Biases, norms and other 1-D weights are never masked.
MASKED_KERNELS = (
    (keras.layers.SeparableConv1D, ("pointwise_kernel",)),
    (keras.layers.SeparableConv2D, ("pointwise_kernel",)),
    (keras.layers.DepthwiseConv1D, ("kernel",)),
    (keras.layers.DepthwiseConv2D, ("kernel",)),
    (keras.layers.Conv1DTranspose, ("kernel",)),
    (keras.layers.Conv2DTranspose, ("kernel",)),
    (keras.layers.Conv3DTranspose, ("kernel",)),
    (keras.layers.Conv1D, ("kernel",)),
    (keras.layers.Conv2D, ("kernel",)),
    (keras.layers.Conv3D, ("kernel",)),
    (keras.layers.Dense, ("kernel",)),
    (keras.layers.EinsumDense, ("kernel",)),      # also the projections inside MultiHeadAttention
    (keras.layers.Embedding, ("embeddings",)),
)
SEPARABLE_CONVS = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)


def maskable_kernels(layer, mask_separable_depthwise: bool = False) -> tuple:
    """Names of the weights of ``layer`` that sparse training masks (empty for unsupported layers)."""
    for layer_class, names in MASKED_KERNELS:
        if isinstance(layer, layer_class):
            if mask_separable_depthwise and isinstance(layer, SEPARABLE_CONVS):
                return ("depthwise_kernel",) + names
            return names
    return ()


def kernel_variable(layer, name):
    """The variable behind ``layer.<name>``; Dense/Conv/Embedding keep it in ``_<name>`` behind a property."""
    variable = _keras.weight_attribute(layer, name)
    if not isinstance(variable, keras.Variable):
        variable = getattr(layer, name, None)
    if not isinstance(variable, keras.Variable):
        weights = ", ".join(w.name for w in layer.weights) or "none"
        raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) has no weight {name!r} to mask; its "
                         f"weights are: {weights}")
    return variable


def own_weights(layer) -> list:
    """The weights ``layer`` creates itself (not those of layers nested inside it)."""
    nested = {id(w) for child in _keras.sub_layers(layer) for w in child.weights}
    return [w for w in layer.weights if id(w) not in nested]


def is_kernel_like(variable) -> bool:
    """A trainable weight of rank >= 2: what a sparse method would want to mask."""
    return bool(variable.trainable) and len(variable.shape) >= 2


def layer_tree(model) -> dict:
    """``{path: layer}`` of every layer inside ``model``, recursively; paths join layer names with '/'.

    A layer reachable along two paths (keras_hub backbones keep ``token_embedding`` both inside their
    embedding block and as an attribute of the backbone) is listed once, under the first path found, so that
    its kernel gets one mask.
    """
    found, seen = {}, set()

    def visit(layer, prefix):
        for child in _keras.sub_layers(layer, recursive=False):
            if isinstance(child, keras.layers.InputLayer) or id(child) in seen:
                continue
            path = f"{prefix}{child.name}"
            if path not in found:
                found[path] = child
                seen.add(id(child))
                visit(child, path + "/")

    visit(model, "")
    return found


def build_by_calling(model):
    """Build every sublayer of ``model`` by calling it once on zeros of its recorded input shape.

    ``Model.build(shape)`` on a subclassed model marks it built without building the layers its ``call`` uses;
    one call on zeros builds them all. A layer the call never reaches stays unbuilt: it holds no weights, so
    there is nothing of it to mask.
    """
    unbuilt = [layer.name for layer in _keras.sub_layers(model) if not layer.built]
    if not unbuilt:
        return
    config = model.get_build_config() if model.built else None
    shape = (config or {}).get("input_shape")

    def zeros(s, dtype="float32"):
        return tf.zeros([1 if d is None else d for d in s], dtype)

    if shape is not None:
        model(zeros(shape) if _is_shape(shape) else tf.nest.map_structure(zeros, shape, check_types=False))
    elif getattr(model, "inputs", None):      # a functional model: its own inputs, with their dtypes
        model(tf.nest.map_structure(lambda t: zeros(t.shape, t.dtype), model.input))
    else:
        raise ValueError(f"model {model.name!r} has layers that are not built ({', '.join(unbuilt[:5])}); "
                         "call it on a batch first")


def _is_shape(value):
    return isinstance(value, (list, tuple)) and all(d is None or isinstance(d, int) for d in value)


def matches(pattern: str, path: str, layer) -> bool:
    return fnmatch.fnmatchcase(layer.name, pattern) or fnmatch.fnmatchcase(path, pattern)


def output_positions(layer, kernel_name) -> int:
    """How many times a kernel is applied per example: output pixels of a conv, 1 for a Dense on a vector (an
    estimate, for models the cost model cannot read: see sparsity_report)."""
    if isinstance(layer, keras.layers.Embedding):
        return 0  # a lookup, not a multiply
    transposed = isinstance(layer, (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                                    keras.layers.Conv3DTranspose))
    try:
        # A transposed conv multiplies once per input position.
        shape = tuple(layer.input.shape) if transposed else tuple(layer.output.shape)
    except (AttributeError, ValueError):
        input_shape = _keras.build_input_shape(layer)
        if input_shape is None:
            return 1
        shape = tuple(input_shape) if transposed else tuple(layer.compute_output_shape(input_shape))
    if getattr(layer, "data_format", "channels_last") == "channels_first" and len(shape) > 2:
        shape = (shape[0], *shape[2:], shape[1])       # (batch, channels, spatial...) seen channels-last
    # an unknown length counts once: this is an estimate, where the cost model refuses to guess
    return positions(tuple(1 if d is None else d for d in shape))
