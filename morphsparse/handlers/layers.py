"""Handlers of Keras's own layers: channel-keeping layers, merges, reshapes, and the kernel layers (Dense, the
convolutions, Embedding) that produce channels."""

from __future__ import annotations

import keras
import numpy as np

from morphsparse import keras_internals as _keras
from morphsparse.handlers.base import (CHANNELS_LAST_ONLY, LayerHandler, cost_of_terms, layer_config, positions,
                                       register_handler)


# --- channel-keeping layers ---------------------------------------------------------------------------

class PassThrough(LayerHandler):
    """Keeps the channel axis as it is: normalisation, activation, dropout, pooling, padding, cropping,
    resizing, and the like. Spatial axes may change; channel c of the input is channel c of the output."""

    transparent = True

    def propagate(self, call, graph):
        in_map = call.in_maps[0]
        for i in range(len(call.output_shapes)):
            if call.output_channels(i) != len(in_map):
                raise graph.error(call, f"was registered as channel-keeping (PassThrough) but turns "
                                        f"{len(in_map)} channels into {call.output_channels(i)}")
        return [in_map for _ in call.output_shapes]


class ChannelSizedPassThrough(PassThrough):
    """Channel-keeping layer whose config states its channel count under ``config_key``."""

    transparent = False  # it changes the channels' scale or ties them

    def __init__(self, config_key):
        self.config_key = config_key

    def rebuild_config(self, call, keep_in, keep_out):
        config = layer_config(call.layer)
        config[self.config_key] = int(keep_out[0].sum())
        return config


class ChannelAxisNormalization(PassThrough):
    """BatchNorm/LayerNorm and the like: channel-keeping only when they act on the channel (last) axis."""

    transparent = False  # it changes the channels' scale or ties them

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

    transparent = False  # it changes the channels' scale or ties them

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

    def live_outputs(self, call, in_live, out_alive):
        width = call.output_channels(0)
        live = [m for m in in_live if len(m) == width and m.any()]
        if not live:
            return None
        union = np.logical_or.reduce(live)
        if any(not np.array_equal(m, union) for m in live):
            raise ValueError("its inputs lose different channels (only whole inputs may become constant)")
        return [union for _ in call.output_shapes]

    def rebuild(self, call, step):
        missing = [i for i, t in enumerate(step.inputs) if t is None]
        if not missing:
            return super().rebuild(call, step)
        # A branch with no surviving channel is a per-channel constant. It is held by a standard Rescaling
        # layer (x * scale + offset, with per-channel vectors), never by a tensor baked into the graph: the
        # slim model loads without morphsparse, and export and expand resize the vectors with their group.
        live = [t for t in step.inputs if t is not None]
        constants = [step.constant_of(i) for i in missing]
        layer = call.layer
        base = call.path.replace("/", "__")
        if isinstance(layer, (keras.layers.Add, keras.layers.Multiply)):
            add = isinstance(layer, keras.layers.Add)
            out = live[0] if len(live) == 1 else step.new_layer()(live)
            total = np.sum(constants, axis=0) if add else np.prod(constants, axis=0)
            if np.all(total == (0.0 if add else 1.0)):
                return out
            scale, offset = (1.0, total) if add else (total, 0.0)
            return keras.layers.Rescaling(_per_channel(scale), _per_channel(offset), name=f"{base}_constant")(out)
        # Any other merge (or a keras.ops call) reads the constant as a tensor: live[0] * 0 + constant.
        constant_inputs = {
            i: keras.layers.Rescaling(0.0, _per_channel(c), name=f"{base}_constant{i}")(live[0])
            for i, c in zip(missing, constants)}
        args, kwargs = step.arguments(substitute=constant_inputs.get)
        if isinstance(layer, keras.layers.Layer):
            return step.new_layer()(*args, **kwargs)
        return layer(*args, **kwargs)


def _per_channel(value):
    """A Rescaling argument: a plain float, or a float32 vector serialised the way Rescaling's own
    get_config does (so the slim model's config round-trips)."""
    if np.ndim(value) == 0:
        return float(value)
    return np.asarray(value, dtype="float32")


class Rescaling(PassThrough):
    """``keras.layers.Rescaling`` (x * scale + offset). Its scale and offset may be per-channel vectors
    (export stores the constant of a removed residual branch in one): they follow the channel axis, sliced
    to the surviving channels by export and resized by expand (nearest entry), with the layer's group."""

    transparent = False  # it changes the channels' scale or ties them

    def rebuild_config(self, call, keep_in, keep_out):
        config = layer_config(call.layer)
        width, keep = call.output_channels(0), keep_out[0]
        for key in ("scale", "offset"):
            value = np.asarray(getattr(call.layer, key))
            if value.ndim != 1 or len(value) != width:
                continue
            if len(keep) == width:
                value = value[keep]
            else:   # expand: a new width; entry j takes the value of the old entry at the same relative place
                value = value[np.arange(len(keep)) * width // max(len(keep), 1)]
            config[key] = keras.saving.serialize_keras_object(value.astype("float32"))
        return config


class Concatenate(LayerHandler):
    """Concatenation on the channel axis keeps each input's channels at its offset; on another axis the
    inputs are merged element-wise along channels, like Add."""

    def propagate(self, call, graph):
        if self._on_channels(call):
            return [np.concatenate(call.in_maps)]
        return Merge().propagate(call, graph)

    def _on_channels(self, call):
        rank = len(call.output_shapes[0])
        axis = call.layer.axis if hasattr(call.layer, "axis") else call.node.arguments.kwargs.get("axis", -1)
        return axis % rank == rank - 1

    def live_outputs(self, call, in_live, out_alive):
        if not self._on_channels(call):
            return Merge().live_outputs(call, in_live, out_alive)
        union = np.concatenate(in_live)
        return [union] if union.any() else None

    def rebuild(self, call, step):
        live = [t for t in step.inputs if t is not None]
        if len(live) == len(step.inputs):
            return super().rebuild(call, step)
        if not self._on_channels(call):
            raise ValueError("an input of a concatenation along a non-channel axis has no live channel")
        # a tower with no live channel is dropped; its constant is folded by whoever reads the result
        return live[0] if len(live) == 1 else step.new_layer()(live)


class Flatten(LayerHandler):
    """Flatten of a channels-last tensor: channel c of the input becomes every H*W-th entry of the output,
    so a following Dense sees channel c on H*W of its kernel rows."""

    def propagate(self, call, graph):
        in_shape = call.input_shapes[0]
        if getattr(call.layer, "data_format", "channels_last") == "channels_first":
            raise graph.error(call, CHANNELS_LAST_ONLY)
        positions = int(np.prod(in_shape[1:-1])) if len(in_shape) > 2 else 1
        return [np.tile(call.in_maps[0], positions)]

    def live_outputs(self, call, in_live, out_alive):
        if not in_live[0].any():
            return None
        return [np.tile(in_live[0], call.output_channels(0) // len(in_live[0]))]


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

    def live_outputs(self, call, in_live, out_alive):
        keep = in_live[0]
        if not keep.any():
            return None
        if call.input_shapes[0][-1] == call.output_shapes[0][-1]:
            return [keep]
        if len(call.output_shapes[0]) == 2 and call.output_shapes[0][-1] == np.prod(call.input_shapes[0][1:]):
            return [np.tile(keep, call.output_channels(0) // len(keep))]
        if not keep.all():
            raise ValueError("it mixes channels with other axes, so its input must keep every channel")
        return [np.ones(call.output_channels(0), bool)]

    def rebuild_config(self, call, keep_in, keep_out):
        config = layer_config(call.layer)
        target = list(config["target_shape"])
        target[-1] = int(keep_out[0].sum()) if target[-1] != -1 else -1
        config["target_shape"] = tuple(target)
        return config


class Opaque(LayerHandler):
    """A layer whose channel semantics are unknown but harmless to keep: its inputs and outputs are pinned
    (never removed). Register it for a custom layer you do not want pruned around."""

    def propagate(self, call, graph):
        for m in call.in_maps:
            graph.pin(m, f"{call.path}: opaque layer ({type(call.layer).__name__})")
        return [graph.new_channels(call, call.output_channels(i), pinned=True, output=i)
                for i in range(len(call.output_shapes))]

    def live_outputs(self, call, in_live, out_alive):
        if not all(m.all() for m in in_live):
            raise ValueError("an opaque layer must keep all its input channels (an upstream branch died)")
        return all_alive(call)

    def slice_weights(self, call, keep_in, keep_out, weights):
        return weights


# --- channel producers --------------------------------------------------------------------------------

def pinned_outputs(call, graph, reason, first=0):
    """New channels, pinned with ``reason``, for each output of ``call`` from position ``first`` on."""
    outs = []
    for i in range(first, len(call.output_shapes)):
        ids = graph.new_channels(call, call.output_channels(i), output=i)
        graph.pin(ids, reason)
        outs.append(ids)
    return outs


def all_alive(call, first=0):
    """An all-True mask for each output of ``call`` from position ``first`` on."""
    return [np.ones(call.output_channels(i), bool) for i in range(first, len(call.output_shapes))]


def value_of(variable, xp):
    """``variable`` as numpy values when ``xp`` is numpy, else the variable itself (for keras.ops, so a
    regulariser can differentiate it)."""
    return keras.ops.convert_to_numpy(variable) if xp is np else variable


def concatenate(parts, xp):
    """``parts`` concatenated on their first axis with ``xp`` (numpy stays numpy)."""
    return np.concatenate(parts, axis=0) if xp is np else xp.concatenate(parts, axis=0)


def as_matrix(kernel, xp, out_axis=-1):
    """``kernel`` as (fan-in, output entries), through ``xp`` (:func:`value_of`)."""
    kernel = value_of(kernel, xp)
    if out_axis != -1:
        kernel = xp.moveaxis(kernel, out_axis, -1)
    return xp.reshape(kernel, (-1, kernel.shape[-1]))


def _cut(layer, weights, **cuts):
    """``weights`` (numpy, in ``layer.weights`` order) with the variables named in ``cuts`` (attribute name
    -> function of the array) cut down; other weights are copied as they are."""
    variables = {attr: getattr(layer, attr, None) for attr in cuts}
    return sliced_by_role(layer, weights, layer.weights,
                          {id(v): cuts[attr] for attr, v in variables.items() if v is not None})


def weight_of(layer, weights, variable):
    """The array in ``weights`` (``layer.weights`` order) that holds ``variable``, as numpy."""
    return np.asarray(next(weights[i] for i, w in enumerate(layer.weights) if w is variable))


def sliced_by_role(layer, weights, variables, cuts):
    """The arrays of ``variables`` (read from ``weights``, in ``layer.weights`` order), each cut by
    ``cuts[id(variable)]`` where it has one and copied as it is otherwise."""
    return [cuts.get(id(v), np.asarray)(weight_of(layer, weights, v)) for v in variables]


def set_weights_by_role(step, layer, variables, arrays):
    """Give the rebuilt ``layer`` the ``arrays`` of its ``variables`` (listed by role, in the order the arrays
    were sliced in), in whatever order its class tracks its weights."""
    by_variable = {id(v): a for v, a in zip(variables, arrays)}
    step.set_weights(layer, [by_variable[id(v)] for v in layer.weights])


def refuse_constant(step, index, what):
    """Refuse removed channels of input ``index`` that carry a non-zero constant, which ``what`` (a layer that
    cannot fold it)."""
    values = step.probe[index]
    if values is not None and np.any(values.value):
        raise ValueError(f"removed hidden channels carry a non-zero constant, which {what}; keep them (name the "
                         "layers writing them in ignore=)")


def _spatial_sum(kernel):
    """A kernel summed over its spatial axes: what a constant input contributes away from the border."""
    return kernel.astype(np.float64).sum(axis=tuple(range(kernel.ndim - 2)))


def _no_spatial_border(layer):
    """True when a constant input adds the same amount at every output position of a conv."""
    return layer.padding == "valid" or all(k == 1 for k in layer.kernel_size)


class Producer(LayerHandler):
    produces_channels = True
    kernel_layer = True
    #: the config key holding the layer's number of output channels (None: it follows its input)
    width_key = None

    # --- slim export ---------------------------------------------------------------------------------
    def live_outputs(self, call, in_live, out_alive):
        if not in_live[0].any() or not out_alive[0].any():
            return None
        return [out_alive[0]]

    def rebuild_config(self, call, keep_in, keep_out):
        config = layer_config(call.layer)
        if self.width_key:
            config[self.width_key] = int(keep_out[0].sum())
        return config

    def rebuild(self, call, step):
        old = step.old_weights()
        config = self.rebuild_config(call, step.keep_in, step.keep_out)
        weights = self.slice_weights(call, step.keep_in, step.keep_out, old)
        delta = step.fold_constants(self, old)
        if delta is not None:
            weights = step.fold_into_bias(config, weights, delta)
        layer = step.new_layer(config)
        args, kwargs = step.arguments()
        outputs = layer(*args, **kwargs)
        step.set_weights(layer, weights)
        return outputs

    # --- structure learning (morphsparse.morph) ---------------------------------------------------------
    def kernel_matrix(self, call, xp=np):
        return as_matrix(call.layer.kernel, xp)

    def _check_format(self, call, graph):
        if getattr(call.layer, "data_format", "channels_last") == "channels_first":
            raise graph.error(call, CHANNELS_LAST_ONLY)

    def propagate(self, call, graph):
        self._check_format(call, graph)
        graph.consume(call, call.in_maps[0])
        return [graph.new_channels(call, call.output_channels(0))]


class Dense(Producer):
    width_key = "units"

    def slice_weights(self, call, keep_in, keep_out, weights):
        return _cut(call.layer, weights, kernel=lambda w: w[keep_in[0]][:, keep_out[0]],
                    bias=lambda w: w[keep_out[0]])

    def bias_shift(self, call, removed, constants, weights):
        kernel = weight_of(call.layer, weights, call.layer.kernel)
        return constants[removed].astype(np.float64) @ kernel[removed].astype(np.float64)

    def macs(self, call, alive_in, alive_out):
        return positions(call.output_shapes[0]) * alive_in[0] * alive_out[0]

    def params(self, call, alive_in, alive_out):
        bias = alive_out[0] if call.layer.use_bias else 0
        return alive_in[0] * alive_out[0] + bias


class Conv(Producer):
    """Conv1D/2D/3D. Grouped convolutions can only lose channels equally in every group, so channel k of
    each input group is tied to channel k of the other groups, and likewise for outputs."""

    width_key = "filters"

    def _depthwise(self, call):
        """A grouped conv whose every group reads one input channel (``groups`` = input channels) is a
        depthwise conv written as Conv2D(groups=C): input channel c feeds outputs c*m .. c*m+m-1."""
        groups = getattr(call.layer, "groups", 1) or 1
        return groups > 1 and groups == call.input_channels(0)

    def propagate(self, call, graph):
        self._check_format(call, graph)
        groups = getattr(call.layer, "groups", 1) or 1
        in_map = call.in_maps[0]
        if self._depthwise(call):
            graph.consume(call, in_map)
            return [np.repeat(in_map, call.output_channels(0) // groups)]
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
        per_group_in = 1 if self._depthwise(call) else alive_in[0] // groups
        return positions(call.output_shapes[0]) * self._kernel_positions(call) * per_group_in * alive_out[0]

    def params(self, call, alive_in, alive_out):
        groups = getattr(call.layer, "groups", 1) or 1
        bias = alive_out[0] if call.layer.use_bias else 0
        per_group_in = 1 if self._depthwise(call) else alive_in[0] // groups
        return self._kernel_positions(call) * per_group_in * alive_out[0] + bias

    def reads_channels_separately(self, call):
        return self._depthwise(call)

    def live_outputs(self, call, in_live, out_alive):
        if self._depthwise(call):
            m = call.output_channels(0) // call.input_channels(0)
            keep = np.repeat(in_live[0], m) & out_alive[0]
            return [keep] if keep.any() else None
        return super().live_outputs(call, in_live, out_alive)

    def rebuild_config(self, call, keep_in, keep_out):
        config = super().rebuild_config(call, keep_in, keep_out)
        if self._depthwise(call):
            config["groups"] = int(np.sum(keep_in[0]))
        return config

    def _keep_per_group(self, call, keep):
        groups = getattr(call.layer, "groups", 1) or 1
        if self._depthwise(call):
            return np.ones(1, bool)   # every group reads its one channel
        per_group = keep.reshape(groups, -1)
        if not (per_group == per_group[0]).all():
            raise ValueError("a grouped conv must keep the same channels in every group")
        return per_group[0]

    def slice_weights(self, call, keep_in, keep_out, weights):
        keep = self._keep_per_group(call, keep_in[0])
        return _cut(call.layer, weights, kernel=lambda w: w[..., keep, :][..., keep_out[0]],
                    bias=lambda w: w[keep_out[0]])

    def fold_exact(self, call):
        return _no_spatial_border(call.layer)

    def bias_shift(self, call, removed, constants, weights):
        groups = getattr(call.layer, "groups", 1) or 1
        summed = _spatial_sum(weight_of(call.layer, weights, call.layer.kernel))    # (in / groups, out)
        per_group_in = np.where(removed, constants, 0.0).reshape(groups, -1)
        width = summed.shape[1] // groups
        return np.concatenate([per_group_in[g] @ summed[:, g * width:(g + 1) * width] for g in range(groups)])


class ConvTranspose(Conv):
    """Transposed conv: each input position scatters a full kernel, so the cost uses the input's spatial
    size (this matches TensorFlow's profiler for 'same' padding)."""

    def macs(self, call, alive_in, alive_out):
        return (positions(call.input_shapes[0]) * self._kernel_positions(call)
                * alive_in[0] * alive_out[0])

    def kernel_matrix(self, call, xp=np):
        # Keras stores transposed kernels as (*kernel_size, filters, in_channels).
        return as_matrix(call.layer.kernel, xp, out_axis=-2)

    def slice_weights(self, call, keep_in, keep_out, weights):
        return _cut(call.layer, weights, kernel=lambda w: w[..., keep_out[0], :][..., keep_in[0]],
                    bias=lambda w: w[keep_out[0]])

    def fold_exact(self, call):
        # every output position of a 1x1, stride-1 transposed conv reads exactly one input position
        return all(k == 1 for k in call.layer.kernel_size) and all(s == 1 for s in call.layer.strides)

    def bias_shift(self, call, removed, constants, weights):
        summed = _spatial_sum(weight_of(call.layer, weights, call.layer.kernel))    # (out, in)
        return summed[:, removed] @ constants[removed].astype(np.float64)


class DepthwiseConv(Producer):
    """DepthwiseConv with depth multiplier m: input channel c becomes outputs c*m .. c*m+m-1. With m = 1 the
    channels pass through; with m > 1 each output still belongs to its input's channel (they die together)."""

    produces_channels = False

    def reads_channels_separately(self, call):
        return True

    def propagate(self, call, graph):
        self._check_format(call, graph)
        graph.consume(call, call.in_maps[0])
        return [np.repeat(call.in_maps[0], call.layer.depth_multiplier)]

    def kernel_matrix(self, call, xp=np):
        # (kh, kw, in, m) -> columns in*m, in the order c*m + j of the output channels.
        kernel = value_of(call.layer.kernel, xp)
        return xp.reshape(kernel, (-1, kernel.shape[-2] * kernel.shape[-1]))

    def live_outputs(self, call, in_live, out_alive):
        # a removed input channel takes its m outputs with it, so nothing needs folding here
        keep = np.repeat(in_live[0], call.layer.depth_multiplier) & out_alive[0]
        return [keep] if keep.any() else None

    def slice_weights(self, call, keep_in, keep_out, weights):
        return _cut(call.layer, weights, kernel=lambda w: w[..., keep_in[0], :], bias=lambda w: w[keep_out[0]])

    def macs(self, call, alive_in, alive_out):
        return positions(call.output_shapes[0]) * int(np.prod(call.layer.kernel_size)) * alive_out[0]

    def params(self, call, alive_in, alive_out):
        bias = alive_out[0] if call.layer.use_bias else 0
        return int(np.prod(call.layer.kernel_size)) * alive_out[0] + bias


class SeparableConv(Producer):
    """SeparableConv = depthwise (multiplier m) then pointwise; only the pointwise output is a new group."""

    width_key = "filters"

    def macs(self, call, alive_in, alive_out):
        if not alive_out[0]:
            return 0   # no output channel left: the whole layer (depthwise half included) is removed
        m = call.layer.depth_multiplier
        k = int(np.prod(call.layer.kernel_size))
        return positions(call.output_shapes[0]) * alive_in[0] * m * (k + alive_out[0])

    def params(self, call, alive_in, alive_out):
        if not alive_out[0]:
            return 0
        m = call.layer.depth_multiplier
        k = int(np.prod(call.layer.kernel_size))
        bias = alive_out[0] if call.layer.use_bias else 0
        return k * alive_in[0] * m + alive_in[0] * m * alive_out[0] + bias

    def kernel_matrix(self, call, xp=np):
        return as_matrix(call.layer.pointwise_kernel, xp)

    def slice_weights(self, call, keep_in, keep_out, weights):
        rows = np.repeat(keep_in[0], call.layer.depth_multiplier)
        return _cut(call.layer, weights, depthwise_kernel=lambda w: w[..., keep_in[0], :],
                    pointwise_kernel=lambda w: w[..., rows, :][..., keep_out[0]], bias=lambda w: w[keep_out[0]])

    def fold_exact(self, call):
        return _no_spatial_border(call.layer)

    def bias_shift(self, call, removed, constants, weights):
        pointwise = weight_of(call.layer, weights, call.layer.pointwise_kernel)
        depthwise = weight_of(call.layer, weights, call.layer.depthwise_kernel)
        per_copy = _spatial_sum(depthwise) * np.where(removed, constants, 0.0)[:, None]    # (in, m)
        return per_copy.reshape(-1) @ pointwise.reshape(per_copy.size, -1).astype(np.float64)


class MultiAxis(Producer):
    """A kernel layer with internal channel axes besides its outputs (attention heads, the width inside
    experts): its costs are the sum of its bilinear :meth:`cost_terms`, every axis is regularised, and a layer
    with no channel left on an internal axis cannot be rebuilt, so each keeps its strongest channel."""

    keeps_one_internal = True

    def _total(self, call, alive_in, alive_out, which):
        # the internal axes at full width when the caller counted the outputs only
        full = [call.output_channels(i) for i in range(call.n_outputs)] + [len(m) for m in call.internal_maps]
        return cost_of_terms(self.cost_terms(call), alive_in, list(alive_out) + full[len(alive_out):], which)

    def macs(self, call, alive_in, alive_out):
        return self._total(call, alive_in, alive_out, "macs")

    def params(self, call, alive_in, alive_out):
        return self._total(call, alive_in, alive_out, "params")

    def regularized_axes(self, call):
        return [0] + [call.internal_index(name) for name in call.internal_names]

    def axis_columns(self, call, axis, xp):
        """The (fan-in, channels) pieces of internal axis ``axis``, stacked by :meth:`axis_matrix`."""
        raise NotImplementedError

    def axis_matrix(self, call, axis, xp=np):
        if axis == 0:
            return self.kernel_matrix(call, xp)
        return concatenate(self.axis_columns(call, axis, xp), xp)

    @staticmethod
    def internal_mask(call, keep, name):
        """The mask of internal axis ``name`` in ``keep`` (outputs, then internal axes); all True when ``keep``
        has the outputs only."""
        index = call.internal_index(name)
        if len(keep) > index:
            return np.asarray(keep[index], bool)
        return np.ones(len(call.internal_maps[call.internal_names.index(name)]), bool)

    def live_heads(self, call, out_alive):
        """The heads mask, refused when no head is left."""
        heads = self.internal_mask(call, out_alive, "heads")
        if not heads.any():
            raise ValueError("every head of this attention layer is dead; keep at least one (lower the "
                             "threshold or the regulariser strength)")
        return heads


class Embedding(Producer):
    """Embedding: integer ids in, ``output_dim`` new channels out; a table look-up costs no MACs."""

    width_key = "output_dim"

    def propagate(self, call, graph):
        return [graph.new_channels(call, call.output_channels(0))]

    def params(self, call, alive_in, alive_out):
        return call.layer.input_dim * alive_out[0]

    def kernel_matrix(self, call, xp=np):
        return as_matrix(call.layer.embeddings, xp)

    def live_outputs(self, call, in_live, out_alive):
        return [out_alive[0]] if out_alive[0].any() else None

    def slice_weights(self, call, keep_in, keep_out, weights):
        return _cut(call.layer, weights, embeddings=lambda w: w[:, keep_out[0]])


class Input(LayerHandler):
    """Network inputs: their channels exist but are never removable."""

    def propagate(self, call, graph):
        shape = call.output_shapes[0]
        if len(shape) >= 2 and shape[-1] is None:
            # a backbone as keras_hub builds it takes token ids of any length: (batch, None)
            raise graph.error(call, (
                f"is a network input of shape {tuple(shape)} whose last axis is unknown, so its channels (or, for "
                "token ids, its positions) cannot be counted. Call the model on inputs of a fixed size and "
                "analyse that: inputs = {name: keras.Input((length,), dtype='int32') for name in "
                "model.input}; keras.Model(inputs, model(inputs)) (or keras.Input(shape=...) with every "
                "dimension but the batch given)"))
        return [graph.new_channels(call, call.output_channels(0), pinned=True)]


def register_defaults():
    """Register the handlers of Keras's layers (called once by ``morphsparse.handlers``)."""
    L = keras.layers
    pass_through = PassThrough()
    for cls in (L.BatchNormalization, L.LayerNormalization, L.GroupNormalization):
        register_handler(cls, ChannelAxisNormalization())
    for cls in (
        L.UnitNormalization, L.Normalization, L.Activation, L.ReLU, L.LeakyReLU, L.PReLU, L.ELU, L.Softmax,
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
    register_handler(_keras.PRIVATE_CLASSES["LayerScale"], ChannelSizedPassThrough("projection_dim"))
    register_handler(_keras.PRIVATE_CLASSES["StochasticDepth"], pass_through)
    # Preprocessing/augmentation layers keep channels.
    for name in dir(L):
        if name.startswith("Random"):
            register_handler(getattr(L, name), pass_through)

    merge = Merge()
    for cls in (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum):
        register_handler(cls, merge)
    # InceptionResNetV2's x[0] + x[1] * scale layer.
    register_handler(_keras.PRIVATE_CLASSES["CustomScaleLayer"], merge)
    register_handler(L.Concatenate, Concatenate())
    register_handler(L.Rescaling, Rescaling())
    register_handler(L.Flatten, Flatten())
    register_handler(L.Reshape, Reshape())
    register_handler(L.InputLayer, Input())

    register_handler(L.Dense, Dense())
    register_handler(L.Embedding, Embedding())
    # The public convolution classes (their subclasses are found along the class hierarchy), and Keras's base
    # classes by name only, for layers deriving from those directly: nothing is imported from keras.src.
    for handler, public, base in (
            (Conv(), (L.Conv1D, L.Conv2D, L.Conv3D), "BaseConv"),
            (ConvTranspose(), (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose),
             "BaseConvTranspose"),
            (DepthwiseConv(), (L.DepthwiseConv1D, L.DepthwiseConv2D), "BaseDepthwiseConv"),
            (SeparableConv(), (L.SeparableConv1D, L.SeparableConv2D), "BaseSeparableConv")):
        for cls in public:
            register_handler(cls, handler)
        register_handler(_keras.PRIVATE_CLASSES[base], handler)


__all__ = ["PassThrough", "ChannelSizedPassThrough", "ChannelAxisNormalization", "Merge", "Rescaling",
           "Concatenate", "Flatten", "Reshape", "Opaque", "Producer", "Dense", "Conv", "ConvTranspose",
           "DepthwiseConv", "SeparableConv", "Embedding", "Input", "register_defaults"]
