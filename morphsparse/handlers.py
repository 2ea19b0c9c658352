"""Per-layer-class handlers: how a layer moves channels through the network and what it costs.

A handler answers three questions about one layer class, and nothing else needs to know the layer's type:

* ``propagate``: given the channel maps of the layer's input tensors (one class id per channel of the
  channel axis), return the channel maps of its outputs. A producer (Conv, Dense, ...) creates new channels;
  a pass-through layer returns its input map; a merge (Add, ...) ties its inputs together.
* ``macs``: multiply-accumulates of one call, given how many channels of each input and output are alive.
* ``params``: parameters of the layer, given the same alive counts.

Handlers are looked up along the layer's class hierarchy, so a subclass of ``keras.layers.Dense`` is handled as
a Dense. Users register handlers for their own layers with :func:`register_handler`. Structural features
(regulariser, exporter, expander) add their own per-handler methods on the same classes.
"""

from __future__ import annotations

import math
from typing import Callable

import keras
import numpy as np

CHANNELS_LAST_ONLY = ("morphsparse reads channels_last models only; rebuild the model with "
                      "data_format='channels_last' (Keras's default).")


class LayerHandler:
    """Base handler. Subclasses override what differs; the defaults describe a layer with no weights that
    keeps its channels (so ``propagate`` must be overridden by anything that does not)."""

    #: True when the layer's outputs start new channel groups (it has a kernel over channels).
    produces_channels = False

    def propagate(self, call, graph):
        """Return one channel map (numpy int array of class ids) per output tensor of ``call``."""
        raise NotImplementedError

    def macs(self, call, alive_in, alive_out):
        """Multiply-accumulates of one call; ``alive_in``/``alive_out`` are alive channel counts per tensor."""
        return 0

    def params(self, call, alive_in, alive_out):
        """Parameters of the layer. Default: every weight whose last axis is the output channel axis scales
        with the alive output channels; other weights count in full."""
        total = 0
        full = call.output_channels(0)
        for weight in getattr(call.layer, "weights", ()):  # keras.ops operations have none
            shape = tuple(weight.shape)
            size = int(np.prod(shape)) if shape else 1
            if shape and full and shape[-1] == full and alive_out:
                total += size // full * alive_out[0]
            else:
                total += size
        return total

    def describe(self, layer):
        return type(self).__name__


# --- channel-keeping layers ---------------------------------------------------------------------------

class PassThrough(LayerHandler):
    """Keeps the channel axis as it is: normalisation, activation, dropout, pooling, padding, cropping,
    resizing, and the like. Spatial axes may change; channel c of the input is channel c of the output."""

    def propagate(self, call, graph):
        in_map = call.in_maps[0]
        maps = []
        for i in range(len(call.output_shapes)):
            if call.output_channels(i) != len(in_map):
                raise graph.error(call, f"was registered as channel-keeping (PassThrough) but turns "
                                        f"{len(in_map)} channels into {call.output_channels(i)}")
            maps.append(in_map)
        return maps


class ChannelAxisNormalization(PassThrough):
    """BatchNorm/LayerNorm and the like: channel-keeping only when they act on the channel (last) axis."""

    def propagate(self, call, graph):
        axis = getattr(call.layer, "axis", -1)
        rank = len(call.input_shapes[0])
        axes = [a % rank for a in (axis if isinstance(axis, (list, tuple)) else [axis])]
        if rank - 1 not in axes:
            raise graph.error(call, f"normalises over axis {axis}, not the channel axis; morphsparse reads "
                                    "channels_last models only")
        return super().propagate(call, graph)


class Merge(PassThrough):
    """Element-wise merge of several tensors (Add, Multiply, Maximum, ...): channel c of every input and of
    the output is one channel, so they are tied. Inputs with one channel broadcast and tie nothing."""

    def propagate(self, call, graph):
        width = call.output_channels(0)
        tied = [m for m in call.in_maps if len(m) == width]
        if not tied:
            raise graph.error(call, f"merges inputs of widths {[len(m) for m in call.in_maps]} into {width}")
        for other in tied[1:]:
            graph.tie(tied[0], other)
        for m in call.in_maps:
            if len(m) not in (1, width):
                raise graph.error(call, f"merges inputs of widths {[len(x) for x in call.in_maps]}")
        return [tied[0] for _ in call.output_shapes]


class Concatenate(LayerHandler):
    """Concatenation on the channel axis keeps each input's channels at its offset; on another axis the
    inputs are merged element-wise along channels, like Add."""

    def propagate(self, call, graph):
        rank = len(call.output_shapes[0])
        axis = call.layer.axis if hasattr(call.layer, "axis") else call.node.arguments.kwargs.get("axis", -1)
        if axis % rank == rank - 1:
            return [np.concatenate(call.in_maps)]
        return Merge().propagate(call, graph)


class Flatten(LayerHandler):
    """Flatten of a channels-last tensor: channel c of the input becomes every H*W-th entry of the output,
    so a following Dense sees channel c on H*W of its kernel rows."""

    def propagate(self, call, graph):
        in_shape = call.input_shapes[0]
        if getattr(call.layer, "data_format", "channels_last") == "channels_first":
            raise graph.error(call, CHANNELS_LAST_ONLY)
        positions = int(np.prod(in_shape[1:-1])) if len(in_shape) > 2 else 1
        return [np.tile(call.in_maps[0], positions)]


class Reshape(LayerHandler):
    """A reshape that keeps the last axis keeps channels; one that flattens everything is a Flatten; any
    other reshape mixes channels with other axes, so its input channels are pinned and its output starts a
    fixed group (correct, if conservative)."""

    def propagate(self, call, graph):
        in_shape, out_shape = call.input_shapes[0], call.output_shapes[0]
        if in_shape[-1] == out_shape[-1]:
            return [call.in_maps[0]]
        if len(out_shape) == 2 and out_shape[-1] == np.prod(in_shape[1:]):
            return Flatten().propagate(call, graph)
        graph.pin(call.in_maps[0], f"{call.path}: reshape mixes channels with other axes")
        return [graph.new_channels(call, call.output_channels(0), pinned=True)]


class Opaque(LayerHandler):
    """A layer whose channel semantics are unknown but harmless to keep: its inputs and outputs are pinned
    (never removed). Register it for a custom layer you do not want pruned around."""

    def propagate(self, call, graph):
        for m in call.in_maps:
            graph.pin(m, f"{call.path}: opaque layer ({type(call.layer).__name__})")
        return [graph.new_channels(call, call.output_channels(i), pinned=True, output=i)
                for i in range(len(call.output_shapes))]


# --- channel producers --------------------------------------------------------------------------------

def _spatial_positions(shape):
    """Number of positions a channels-last tensor has besides batch and channels."""
    return int(np.prod(shape[1:-1])) if len(shape) > 2 else 1


class Producer(LayerHandler):
    produces_channels = True

    def _check_format(self, call, graph):
        if getattr(call.layer, "data_format", "channels_last") == "channels_first":
            raise graph.error(call, CHANNELS_LAST_ONLY)

    def propagate(self, call, graph):
        self._check_format(call, graph)
        graph.consume(call, call.in_maps[0])
        return [graph.new_channels(call, call.output_channels(0))]


class Dense(Producer):
    def macs(self, call, alive_in, alive_out):
        return _spatial_positions(call.output_shapes[0]) * alive_in[0] * alive_out[0]

    def params(self, call, alive_in, alive_out):
        bias = alive_out[0] if call.layer.use_bias else 0
        return alive_in[0] * alive_out[0] + bias


class Conv(Producer):
    """Conv1D/2D/3D. Grouped convolutions can only lose channels equally in every group, so channel k of
    each input group is tied to channel k of the other groups, and likewise for outputs."""

    def propagate(self, call, graph):
        self._check_format(call, graph)
        groups = getattr(call.layer, "groups", 1) or 1
        in_map = call.in_maps[0]
        if groups > 1:
            per_group = in_map.reshape(groups, -1)
            for g in range(1, groups):
                graph.tie(per_group[0], per_group[g])
        graph.consume(call, in_map)
        if groups > 1:
            return [np.tile(graph.new_channels(call, call.output_channels(0) // groups), groups)]
        return [graph.new_channels(call, call.output_channels(0))]

    def _kernel_positions(self, call):
        return int(np.prod(call.layer.kernel_size))

    def macs(self, call, alive_in, alive_out):
        groups = getattr(call.layer, "groups", 1) or 1
        return (_spatial_positions(call.output_shapes[0]) * self._kernel_positions(call)
                * (alive_in[0] // groups) * alive_out[0])

    def params(self, call, alive_in, alive_out):
        groups = getattr(call.layer, "groups", 1) or 1
        bias = alive_out[0] if call.layer.use_bias else 0
        return self._kernel_positions(call) * (alive_in[0] // groups) * alive_out[0] + bias


class ConvTranspose(Conv):
    """Transposed conv: each input position scatters a full kernel, so the cost uses the input's spatial
    size (this matches TensorFlow's profiler for 'same' padding)."""

    def macs(self, call, alive_in, alive_out):
        return (_spatial_positions(call.input_shapes[0]) * self._kernel_positions(call)
                * alive_in[0] * alive_out[0])


class DepthwiseConv(Producer):
    """DepthwiseConv with depth multiplier m: input channel c becomes outputs c*m .. c*m+m-1. With m = 1 the
    channels pass through; with m > 1 each output still belongs to its input's channel (they die together)."""

    produces_channels = False

    def propagate(self, call, graph):
        self._check_format(call, graph)
        graph.consume(call, call.in_maps[0])
        return [np.repeat(call.in_maps[0], call.layer.depth_multiplier)]

    def macs(self, call, alive_in, alive_out):
        return _spatial_positions(call.output_shapes[0]) * int(np.prod(call.layer.kernel_size)) * alive_out[0]

    def params(self, call, alive_in, alive_out):
        bias = alive_out[0] if call.layer.use_bias else 0
        return int(np.prod(call.layer.kernel_size)) * alive_out[0] + bias


class SeparableConv(Producer):
    """SeparableConv = depthwise (multiplier m) then pointwise; only the pointwise output is a new group."""

    def macs(self, call, alive_in, alive_out):
        m = call.layer.depth_multiplier
        k = int(np.prod(call.layer.kernel_size))
        return _spatial_positions(call.output_shapes[0]) * alive_in[0] * m * (k + alive_out[0])

    def params(self, call, alive_in, alive_out):
        m = call.layer.depth_multiplier
        k = int(np.prod(call.layer.kernel_size))
        bias = alive_out[0] if call.layer.use_bias else 0
        return k * alive_in[0] * m + alive_in[0] * m * alive_out[0] + bias


class Embedding(Producer):
    """Embedding: integer ids in, ``output_dim`` new channels out; a table look-up costs no MACs."""

    def propagate(self, call, graph):
        return [graph.new_channels(call, call.output_channels(0))]

    def params(self, call, alive_in, alive_out):
        return call.layer.input_dim * alive_out[0]


class Input(LayerHandler):
    """Network inputs: their channels exist but are never removable."""

    def propagate(self, call, graph):
        return [graph.new_channels(call, call.output_channels(0), pinned=True)]


class Nested(LayerHandler):
    """A functional or Sequential model used as a layer: the graph walks into it (see graph.py)."""


# --- registry -----------------------------------------------------------------------------------------

_REGISTRY: dict[type, LayerHandler] = {}
_NAME_REGISTRY: dict[str, LayerHandler] = {}


def register_handler(layer_class, handler: LayerHandler | type[LayerHandler]):
    """Register ``handler`` for ``layer_class`` and its subclasses (a more specific registration wins).

    ``layer_class`` may be a class or a dotted/qualified class name string (for classes defined in modules
    you do not want to import eagerly). Example, for a custom channel-keeping layer::

        morphsparse.register_handler(MyScale, morphsparse.handlers.PassThrough())
    """
    if isinstance(handler, type):
        handler = handler()
    if not isinstance(handler, LayerHandler):
        raise TypeError(f"handler must be a morphsparse.LayerHandler (instance or class), got {handler!r}")
    if isinstance(layer_class, str):
        _NAME_REGISTRY[layer_class] = handler
    elif isinstance(layer_class, type):
        _REGISTRY[layer_class] = handler
    else:
        raise TypeError(f"layer_class must be a class or a class-name string, got {layer_class!r}")
    return handler


def get_handler(layer) -> LayerHandler | None:
    """The handler for ``layer`` (an instance or class), searched along its class hierarchy; None if none."""
    cls = layer if isinstance(layer, type) else type(layer)
    for klass in cls.__mro__:
        if klass in _REGISTRY:
            return _REGISTRY[klass]
        for key in (f"{klass.__module__}.{klass.__qualname__}", klass.__qualname__):
            if key in _NAME_REGISTRY:
                return _NAME_REGISTRY[key]
    return None


def _register_defaults():
    L = keras.layers
    pass_through = PassThrough()
    for cls in (L.BatchNormalization, L.LayerNormalization, L.GroupNormalization):
        register_handler(cls, ChannelAxisNormalization())
    for cls in (
        L.UnitNormalization, L.Normalization, L.Rescaling, L.Activation, L.ReLU, L.LeakyReLU, L.PReLU, L.ELU, L.Softmax,
        L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D, L.GaussianNoise,
        L.GaussianDropout, L.AlphaDropout, L.ActivityRegularization, L.Identity, L.Masking,
        L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D, L.AveragePooling2D,
        L.AveragePooling3D, L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
        L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
        L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D, L.Cropping1D, L.Cropping2D, L.Cropping3D,
        L.UpSampling1D, L.UpSampling2D, L.UpSampling3D, L.Resizing, L.CenterCrop,
    ):
        register_handler(cls, pass_through)
    # keras.applications' own channel-keeping layers (ConvNeXt, EfficientNet); named to avoid imports.
    for name in ("keras.src.applications.convnext.LayerScale", "keras.src.applications.convnext.StochasticDepth"):
        register_handler(name, pass_through)
    # Preprocessing/augmentation layers keep channels.
    for name in dir(L):
        if name.startswith("Random"):
            register_handler(getattr(L, name), pass_through)

    merge = Merge()
    for cls in (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum):
        register_handler(cls, merge)
    # InceptionResNetV2's x[0] + x[1] * scale layer.
    register_handler("keras.src.applications.inception_resnet_v2.CustomScaleLayer", merge)
    register_handler(L.Concatenate, Concatenate())
    register_handler(L.Flatten, Flatten())
    register_handler(L.Reshape, Reshape())
    register_handler(L.InputLayer, Input())

    register_handler(L.Dense, Dense())
    register_handler(L.Embedding, Embedding())
    from keras.src.layers.convolutional.base_conv import BaseConv
    from keras.src.layers.convolutional.base_conv_transpose import BaseConvTranspose
    from keras.src.layers.convolutional.base_depthwise_conv import BaseDepthwiseConv
    from keras.src.layers.convolutional.base_separable_conv import BaseSeparableConv
    register_handler(BaseConv, Conv())
    register_handler(BaseConvTranspose, ConvTranspose())
    register_handler(BaseDepthwiseConv, DepthwiseConv())
    register_handler(BaseSeparableConv, SeparableConv())

    # Operations written as keras.ops calls on symbolic tensors (x + 3.0, ops.multiply(a, b), ...).
    from keras.src.ops import numpy as knp
    from keras.src.ops import nn as knn
    for name in ("Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum", "Power"):
        if hasattr(knp, name):
            register_handler(getattr(knp, name), merge)
    if hasattr(knp, "Concatenate"):
        register_handler(knp.Concatenate, Concatenate())
    for module, names in ((knp, ("Absolute", "Abs", "Square", "Sqrt", "Exp", "Negative", "Clip", "Tanh")),
                          (knn, ("Relu", "Relu6", "Sigmoid", "HardSigmoid", "HardSwish", "Silu", "Swish",
                                 "Gelu", "Elu", "Selu", "Softplus", "LeakyRelu", "Tanh"))):
        for name in names:
            if hasattr(module, name):
                register_handler(getattr(module, name), pass_through)


_register_defaults()

__all__ = ["LayerHandler", "PassThrough", "ChannelAxisNormalization", "Merge", "Concatenate", "Flatten", "Reshape", "Opaque", "Producer",
           "Dense", "Conv", "ConvTranspose", "DepthwiseConv", "SeparableConv", "Embedding", "Input",
           "register_handler", "get_handler"]
