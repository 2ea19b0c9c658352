"""Handlers for attention and the embedding layers of transformers (Keras and keras_hub).

``MultiHeadAttention`` (and its subclasses, such as keras_hub's ``CachedMultiHeadAttention``) reads the channels
of its query, key and value tensors with three projection kernels, works per head, and writes new output
channels with its output projection. Its heads are an *internal* channel axis of the layer (no tensor carries
it): each head is one channel of a removable group, and removing it removes its query, key, value and output
slices together. Its output channels start a group like any kernel layer's; in a transformer the residual add
ties them to the residual stream.

Costs, per example (T query positions, S key positions, h heads of key size k and value size v, widths d_q,
d_k, d_v of the inputs and d_o of the output): projections T*d_q*h*k + S*d_k*h*k + S*d_v*h*v + T*h*v*d_o, the
attention scores T*S*h*k and their weighted sum T*S*h*v multiply-accumulates (over the attention axes).

Embeddings of keras_hub models: ``PositionEmbedding`` takes its width from its input and its output is added
to it, so its channels *are* its input's channels (the residual stream); ``ViTPatchingAndEmbedding`` is a
patch convolution plus a class token and position embeddings over the same new channels. keras_hub classes are
registered by name, so keras_hub is never imported here.
"""

from __future__ import annotations

import inspect

import keras
import numpy as np

from morphsparse.handlers import layers as _h
from morphsparse.handlers.base import base_config, get_handler, layer_config, positions, register_handler
from morphsparse.handlers.gqa import _deserialize, _einsum_specs, _serialize, _serialized
from morphsparse.handlers.ops import _pin_all, einsum_macs
from morphsparse.trace import symbolic_kwargs

_HUB = "keras_hub.src"


def _one_per_head(mask):
    """A heads mask over a weight axis with one entry per head."""
    return np.asarray(mask, bool)


class MultiHeadAttention(_h.MultiAxis):
    """``keras.layers.MultiHeadAttention``: heads are one removable group (internal axis ``"heads"``; a layer
    with no head cannot be rebuilt, ``num_heads=0``, so the group keeps its strongest head when every head falls
    below the threshold: ``morphsparse.morph.alive.keep_one_groups``)."""

    def _roles(self, call):
        """Input positions of query, key and value in the call's input tensors."""
        args, kwargs = call.node.arguments.args, call.node.arguments.kwargs
        query = args[0] if len(args) > 0 else kwargs.get("query")
        value = args[1] if len(args) > 1 else kwargs.get("value")
        key = args[2] if len(args) > 2 else kwargs.get("key")
        key = value if key is None else key
        position = {}
        for i, t in enumerate(call.node.input_tensors):
            position.setdefault(id(t), i)
        return position[id(query)], position[id(key)], position[id(value)]

    def _sizes(self, call):
        layer = call.layer
        return layer.num_heads, layer.key_dim, layer.value_dim or layer.key_dim

    def _lengths(self, call):
        """(T, S, scores): query positions, key positions, and query-key pairs over the attention axes."""
        qi, ki, _ = self._roles(call)
        q_shape, k_shape = call.input_shapes[qi], call.input_shapes[ki]
        t, s = positions(q_shape, "the query"), positions(k_shape, "the key")
        rank = len(q_shape)
        axes = call.layer.attention_axes
        axes = list(range(1, rank - 1)) if axes is None else [a % rank for a in axes]
        others = int(np.prod([q_shape[a] for a in range(1, rank - 1) if a not in axes]) or 1)
        pairs = others * int(np.prod([q_shape[a] for a in axes])) * int(np.prod([k_shape[a] for a in axes]))
        return t, s, pairs

    def propagate(self, call, graph):
        for slot, i in zip(("query", "key", "value"), self._roles(call)):
            graph.consume(call, call.in_maps[i], slot=slot)
        graph.internal(call, "heads", graph.new_channels(call, call.layer.num_heads, output="heads"))
        # the attention scores, (batch, heads, T, S), when asked for
        return [graph.new_channels(call, call.output_channels(0))] + _h.pinned_outputs(
            call, graph, f"{call.path}: attention scores", first=1)

    # --- costs ------------------------------------------------------------------------------------------
    def cost_terms(self, call):
        """The MACs and parameters as a sum of bilinear terms, each in the alive counts of two channel axes:
        ``(in_ref, out_ref, macs(a, b), params(a, b))`` with refs ``("in", i)``, ``("out", j)`` (j past the
        outputs: an internal axis) or None (a constant 1)."""
        qi, ki, vi = self._roles(call)
        h, k, v = self._sizes(call)
        t, s, pairs = self._lengths(call)
        bias = 1 if call.layer.use_bias else 0
        heads = ("out", call.internal_index("heads"))
        return [
            (("in", qi), heads, lambda a, b: t * k * a * b, lambda a, b: k * a * b + bias * k * b),
            (("in", ki), heads, lambda a, b: s * k * a * b, lambda a, b: k * a * b + bias * k * b),
            (("in", vi), heads, lambda a, b: s * v * a * b, lambda a, b: v * a * b + bias * v * b),
            (None, heads, lambda a, b: pairs * (k + v) * b, lambda a, b: 0),
            (heads, ("out", 0), lambda a, b: t * v * a * b, lambda a, b: v * a * b + bias * b),
        ]

    def timed_axes(self, call):
        """Timed along the query width and the heads: what a narrowed transformer changes."""
        return self._roles(call)[0], call.internal_index("heads")

    # --- group lasso (morphsparse.morph.alive) ----------------------------------------------------------
    def kernel_matrix(self, call, xp=np):
        return _h.as_matrix(call.layer.output_dense.kernel, xp)

    def axis_columns(self, call, axis, xp):
        """For the heads: every query, key, value and output weight of the head."""
        layer = call.layer
        return [_h.as_matrix(kernel, xp, out_axis=head_axis)
                for kernel, head_axis in ((layer.query_dense.kernel, 1), (layer.key_dense.kernel, 1),
                                          (layer.value_dense.kernel, 1), (layer.output_dense.kernel, 0))]

    def axis_weights(self, call, axis):
        """Every weight sliced by head: the query, key and value kernels (d, heads, size) and biases (heads,
        size), and the output kernel (heads, size, d)."""
        if axis != call.internal_index("heads"):
            return None
        layer = call.layer
        out = []
        for dense in (layer.query_dense, layer.key_dense, layer.value_dense):
            out.append((dense.kernel, 1, _one_per_head))
            if getattr(dense, "bias", None) is not None:
                out.append((dense.bias, 0, _one_per_head))
        out.append((layer.output_dense.kernel, 0, _one_per_head))
        return out

    # --- export and expand ------------------------------------------------------------------------------
    def live_outputs(self, call, in_live, out_alive):
        self.live_heads(call, out_alive)
        if not all(in_live[i].any() for i in self._roles(call)) or not out_alive[0].any():
            return None
        return [out_alive[0]] + _h.all_alive(call, first=1)

    def rebuild_config(self, call, keep_in, keep_out):
        config = layer_config(call.layer)
        qi = self._roles(call)[0]
        config["num_heads"] = int(self.internal_mask(call, keep_out, "heads").sum())
        out = int(np.sum(keep_out[0]))
        if config.get("output_shape") is not None or out != int(np.sum(keep_in[qi])):
            config["output_shape"] = out
        return config

    def slice_weights(self, call, keep_in, keep_out, weights):
        qi, ki, vi = self._roles(call)
        heads, out = self.internal_mask(call, keep_out, "heads"), keep_out[0]
        layer = call.layer
        cuts = {}
        for dense, rows in ((layer.query_dense, keep_in[qi]), (layer.key_dense, keep_in[ki]),
                            (layer.value_dense, keep_in[vi])):
            cuts[id(dense.kernel)] = lambda w, rows=rows: w[rows][:, heads]
            if getattr(dense, "bias", None) is not None:
                cuts[id(dense.bias)] = lambda w: w[heads]
        cuts[id(layer.output_dense.kernel)] = lambda w: w[heads][..., out]
        if getattr(layer.output_dense, "bias", None) is not None:
            cuts[id(layer.output_dense.bias)] = lambda w: w[out]
        return _h.sliced_by_role(layer, weights, layer.weights, cuts)

    def rebuild(self, call, step):
        old = step.old_weights()
        keep_out = list(step.keep_out) + step.keep_internal
        config = self.rebuild_config(call, step.keep_in, keep_out)
        weights = self.slice_weights(call, step.keep_in, keep_out, old)
        weights = self._fold(call, step, weights, old)
        layer = step.new_layer(config)
        args, kwargs = step.arguments()
        outputs = layer(*args, **symbolic_kwargs(layer, kwargs))
        step.set_weights(layer, weights)
        return outputs

    def _fold(self, call, step, weights, old):
        """Fold constant removed query/key/value input channels into the projection biases."""
        layer = call.layer
        heads = self.internal_mask(call, list(step.keep_out) + step.keep_internal, "heads")
        position = {id(v): i for i, v in enumerate(layer.weights)}
        for role, dense, index in zip(("query", "key", "value"),
                                      (layer.query_dense, layer.key_dense, layer.value_dense), self._roles(call)):
            values = step.probe[index]
            if values is None or not np.any(values.value):
                continue
            constants = np.zeros(len(values.removed))
            constants[values.removed] = values.value
            kernel = old[position[id(dense.kernel)]].astype(np.float64)        # (d, heads, size)
            delta = np.tensordot(constants, kernel, axes=(0, 0))[heads]
            if getattr(dense, "bias", None) is None:
                raise ValueError(f"removed {role} input channels carry a constant and the layer has no bias "
                                 "to fold it into")
            i = position[id(dense.bias)]
            weights[i] = (weights[i] + delta).astype(weights[i].dtype)
            step.note_fold()
        return weights


class PositionEmbedding(_h.Producer):
    """keras_hub ``PositionEmbedding``: a (sequence_length, width) table whose width is its input's; its
    output is added to its input, so its channels are its input's channels."""

    produces_channels = False

    def reads_channels_separately(self, call):
        return True    # it reads only its input's shape: a removed input channel takes its column with it

    def propagate(self, call, graph):
        return [call.in_maps[0]]

    def params(self, call, alive_in, alive_out):
        return int(call.layer.position_embeddings.shape[0]) * alive_out[0]

    def kernel_matrix(self, call, xp=np):
        return _h.as_matrix(call.layer.position_embeddings, xp)

    def live_outputs(self, call, in_live, out_alive):
        return [in_live[0]] if in_live[0].any() else None

    def slice_weights(self, call, keep_in, keep_out, weights):
        return [w[:, keep_out[0]] for w in weights]


class AddedTable(PositionEmbedding):
    """A layer that adds tables of its own weights to its input (``x + self.pos_embed``, keras_hub ViTDet's
    ``AddPositionalEmbedding``): every weight has the channels on its last axis, so its channels are its
    input's, and each weight is sliced with them. ``width_key``: the config key of its width."""

    def __init__(self, width_key=None):
        self.width_key = width_key

    def params(self, call, alive_in, alive_out):
        return sum(int(np.prod(w.shape[:-1])) for w in call.layer.weights) * alive_out[0]

    def kernel_matrix(self, call, xp=np):
        return _h.as_matrix(call.layer.weights[0], xp)

    def slice_weights(self, call, keep_in, keep_out, weights):
        return [w[..., keep_out[0]] for w in weights]


class ReversibleEmbedding(_h.Embedding):
    """``keras.layers.ReversibleEmbedding``: an Embedding whose untied reverse table (width, vocabulary) is
    sliced on its rows."""

    def params(self, call, alive_in, alive_out):
        return sum(int(np.prod(w.shape)) // call.output_channels(0) * alive_out[0] for w in call.layer.weights)

    def slice_weights(self, call, keep_in, keep_out, weights):
        keep = keep_out[0]
        reverse = getattr(call.layer, "reverse_embeddings", None)
        return [w[keep] if reverse is not None and v is reverse else w[:, keep]
                for v, w in zip(call.layer.weights, weights)]


class ViTPatchingAndEmbedding(_h.Producer):
    """keras_hub ``ViTPatchingAndEmbedding`` and ``DeiTEmbeddings``: a patch convolution (``patch_embedding``)
    to ``hidden_dim`` new channels, plus class, distillation and mask tokens and position embeddings over the
    same channels (every other weight of the layer has them on its last axis)."""

    width_key = "hidden_dim"

    def _conv(self, call):
        return call.layer.patch_embedding

    def macs(self, call, alive_in, alive_out):
        conv = self._conv(call)
        patches = 1
        for size, k, stride in zip(call.input_shapes[0][1:-1], conv.kernel_size, conv.strides):
            patches *= (size - k) // stride + 1
        return patches * int(np.prod(conv.kernel_size)) * alive_in[0] * alive_out[0]

    def params(self, call, alive_in, alive_out):
        conv, full_in = self._conv(call), call.input_channels(0)
        total = 0
        for w in call.layer.weights:
            size = int(np.prod(w.shape))
            if w is conv.kernel:
                total += size // full_in // call.output_channels(0) * alive_in[0] * alive_out[0]
            else:
                total += size // call.output_channels(0) * alive_out[0]
        return total

    def kernel_matrix(self, call, xp=np):
        return _h.as_matrix(self._conv(call).kernel, xp)

    def rebuild_config(self, call, keep_in, keep_out):
        config = super().rebuild_config(call, keep_in, keep_out)
        if "num_channels" in config:
            config["num_channels"] = int(np.sum(keep_in[0]))
        # keras_hub 0.32 writes derived values (num_patches, num_positions) into these layers' configs but
        # does not accept them back
        for key in ("num_patches", "num_positions"):
            if key in config and key not in inspect.signature(type(call.layer).__init__).parameters:
                config.pop(key)
        return config

    def slice_weights(self, call, keep_in, keep_out, weights):
        kernel, keep = self._conv(call).kernel, keep_out[0]
        return [w[..., keep_in[0], :][..., keep] if v is kernel else w[..., keep]
                for v, w in zip(call.layer.weights, weights)]


class DINOV2Embedding(ViTPatchingAndEmbedding):
    """keras_hub ``DINOV2Embedding``: a patch convolution (``patch_embeddings.projection``) to ``hidden_dim``
    channels, a class token, register and mask tokens and (interpolated) position embeddings over them."""

    def _conv(self, call):
        return call.layer.patch_embeddings.projection


class EinsumDense(_h.Producer):
    """``keras.layers.EinsumDense``. When its equation contracts the input's last axis with the kernel and
    takes the output's last axis from the kernel (``"btd,dhk->bthk"``: a Dense into heads), it reads its input
    channels like a Dense and creates new output channels (entry k of every head is one channel). Any other
    equation pins its channels; its multiply-accumulates are counted either way."""

    def _letters(self, call):
        x_spec, kernel_spec, out_spec = _einsum_specs(call.layer.equation)
        if "." in x_spec + out_spec + kernel_spec:
            return None
        l_in, l_out = x_spec[-1], out_spec[-1]
        if l_in in kernel_spec and l_in not in out_spec and l_out in kernel_spec and l_out not in x_spec:
            return l_in, l_out
        return None

    def propagate(self, call, graph):
        if self._letters(call) is None:
            return _pin_all(call, graph, f"EinsumDense equation {call.layer.equation!r} does not map input "
                                         "channels to new output channels")
        return super().propagate(call, graph)

    def infer_output_shapes(self, layer, in_shapes):
        """The output shape from the equation, the input's shape and the kernel's (Keras keeps the None of a
        partial ``output_shape`` such as ``(None, heads, size)``)."""
        x_spec, kernel_spec, out_spec = _einsum_specs(layer.equation)
        if "." in x_spec + kernel_spec + out_spec:
            return None
        sizes = dict(zip(kernel_spec, tuple(layer.kernel.shape)))
        sizes.update({letter: d for letter, d in zip(x_spec, in_shapes[0]) if d is not None})
        return [tuple(sizes.get(letter) for letter in out_spec)]

    def _full_macs(self, call):
        x_shape = tuple(1 if d is None else d for d in call.input_shapes[0])
        return einsum_macs(call.layer.equation, [x_shape, tuple(call.layer.kernel.shape)])

    def _fractions(self, call, alive_in, alive_out):
        if self._letters(call) is None:
            return 1.0, 1.0
        return alive_in[0] / call.input_channels(0), alive_out[0] / call.output_channels(0)

    def macs(self, call, alive_in, alive_out):
        f_in, f_out = self._fractions(call, alive_in, alive_out)
        return int(round(self._full_macs(call) * f_in * f_out))

    def params(self, call, alive_in, alive_out):
        f_in, f_out = self._fractions(call, alive_in, alive_out)
        kernel = int(np.prod(call.layer.kernel.shape))
        bias = getattr(call.layer, "bias", None)
        total = int(round(kernel * f_in * f_out))
        if bias is not None:
            total += int(round(int(np.prod(bias.shape)) * (f_out if self._bias_has_output(call) else 1.0)))
        return total

    def _bias_has_output(self, call):
        letters = self._letters(call)
        return letters is not None and letters[1] in (call.layer.bias_axes or "")

    def _kernel_axes(self, call):
        _, kernel_spec, _ = _einsum_specs(call.layer.equation)
        l_in, l_out = self._letters(call)
        return kernel_spec.index(l_in), kernel_spec.index(l_out)

    def kernel_matrix(self, call, xp=np):
        if self._letters(call) is None:
            return _h.as_matrix(call.layer.kernel, xp)
        return _h.as_matrix(call.layer.kernel, xp, out_axis=self._kernel_axes(call)[1])

    def rebuild_config(self, call, keep_in, keep_out):
        config = layer_config(call.layer)
        shape = config.get("output_shape")
        if self._letters(call) is not None and shape is not None:
            shape = list(shape) if isinstance(shape, (list, tuple)) else [shape]
            shape[-1] = int(np.sum(keep_out[0]))
            config["output_shape"] = shape if len(shape) > 1 else shape[0]
        return config

    def slice_weights(self, call, keep_in, keep_out, weights):
        if self._letters(call) is None:
            return weights
        axis_in, axis_out = self._kernel_axes(call)
        out = []
        for v, w in zip(call.layer.weights, weights):
            if v is call.layer.kernel:
                w = np.compress(keep_in[0], w, axis=axis_in)
                w = np.compress(keep_out[0], w, axis=axis_out)
            elif v is getattr(call.layer, "bias", None) and self._bias_has_output(call):
                w = w[..., keep_out[0]]
            out.append(w)
        return out

    def bias_shift(self, call, removed, constants, weights):
        if self._letters(call) is None:
            return None
        kernel = _h.weight_of(call.layer, weights, call.layer.kernel).astype(np.float64)
        axis_in, axis_out = self._kernel_axes(call)
        if kernel.ndim != 2 or not self._bias_has_output(call):
            raise ValueError("removed input channels carry a constant that cannot be folded into this "
                             "EinsumDense's bias")
        kernel = np.moveaxis(kernel, axis_in, 0)
        return constants[removed].astype(np.float64) @ kernel[removed]


class ChannelNormalization(_h.PassThrough):
    """A normalisation over the channel axis with per-channel weights (RMSNorm and the layer norms of LLMs):
    channel-keeping, weights sliced with the channels; it normalises across channels, so export keeps dead
    channels it reads (as for LayerNormalization)."""

    def normalises_across_channels(self, call):
        return True


@keras.saving.register_keras_serializable(package="morphsparse")
class RotaryOnSeveral(keras.layers.Layer):
    """A rotary position embedding layer called on several tensors at once, returning each rotated (ESM's, on
    the queries and the keys): what export and expand rebuild such a call as, since the layer's own output spec
    describes one output, so a model built from it symbolically would expect one. ``rotary``: the layer (or its
    serialized config), called as it is; this layer only says that its outputs have the shapes of its inputs."""

    def __init__(self, rotary, **kwargs):
        super().__init__(**kwargs)
        self.rotary = _deserialize(rotary)

    def call(self, *tensors, **kwargs):
        return tuple(self.rotary(*tensors, **kwargs))

    def compute_output_spec(self, *tensors, **kwargs):
        return tuple(keras.KerasTensor(t.shape, dtype=self.compute_dtype) for t in tensors)

    def get_config(self):
        config = super().get_config()
        config.update(rotary=_serialize(self.rotary))
        return config


def _on_several(call):
    """True when a rotary layer is called on several tensors as separate arguments (ESM's)."""
    return sum(isinstance(a, keras.KerasTensor) for a in call.node.arguments.args) > 1


class Rotary(_h.Opaque):
    """A rotary position embedding: it rotates pairs of channels of each head, so its channels are kept.

    ``sequence_axis``/``feature_axis``: the axes of its first input that hold the positions and the rotated
    channels, for a class that computes its angles once per call as positions x inverse frequencies (T * d/2
    multiply-accumulates) but does not store them (RoformerV2's, which rotates its queries and keys together);
    None: read off the layer (keras_hub's RotaryEmbedding). ``angle_macs=False``: a class that computes its
    angles as an outer product (``ops.outer``, an element-wise multiplication, ESM's), which costs none."""

    def __init__(self, sequence_axis=None, feature_axis=None, angle_macs=True):
        self.sequence_axis, self.feature_axis = sequence_axis, feature_axis
        self.angle_macs = angle_macs

    def propagate(self, call, graph):
        return _pin_all(call, graph, "rotary position embedding (rotates pairs of channels)")

    def infer_output_shapes(self, layer, in_shapes):
        """Called on several tensors (ESM's on the queries and the keys), it returns each rotated: outputs of
        their shapes."""
        return [tuple(s) for s in in_shapes] if len(in_shapes) > 1 else None

    def rebuild_class(self, call):
        """A layer called on several tensors is rebuilt inside a :class:`RotaryOnSeveral`, whose output spec
        has one output per tensor."""
        if _on_several(call) and not isinstance(call.layer, RotaryOnSeveral):
            return RotaryOnSeveral
        return type(call.layer)

    def rebuild_config(self, call, keep_in, keep_out):
        layer = call.layer
        if self.rebuild_class(call) is RotaryOnSeveral and not isinstance(layer, RotaryOnSeveral):
            return dict(base_config(layer), rotary=_serialize(layer))
        return layer_config(layer)

    def macs(self, call, alive_in, alive_out):
        """keras_hub's RotaryEmbedding computes its angles as einsum("bi,j->bij", positions, inverse_freq):
        T * d/2 multiply-accumulates per call (T positions, d channels of the rotated axis)."""
        layer, shape = call.layer, call.input_shapes[0]
        if isinstance(layer, RotaryOnSeveral):      # priced as the layer it calls
            inner = get_handler(layer.rotary)
            if isinstance(inner, Rotary) and inner is not self:
                return inner.macs(call, alive_in, alive_out)
            layer = layer.rotary
        if not self.angle_macs:
            return 0
        if self.sequence_axis is not None:
            t, d = shape[self.sequence_axis], shape[self.feature_axis]
        elif not (hasattr(layer, "sequence_axis") and hasattr(layer, "feature_axis")):
            return 0
        else:
            t, d = shape[layer.sequence_axis], shape[layer.feature_axis]
        return 0 if t is None or d is None else int(t) * (int(d) // 2)


@keras.saving.register_keras_serializable(package="morphsparse")
class TensorOutputs(keras.layers.Layer):
    """A layer whose call returns None among its outputs (keras_hub T5's attention returns ``(x, position bias,
    None)`` when given no cache), returning its tensor outputs only (positions ``outputs``): Keras refuses a
    None output in a functional model. ``layer``: the layer's serialized config (``module``, ``class_name``,
    ``config``), kept as given for ``get_config``; its call is run as it is."""

    def __init__(self, layer, outputs, **kwargs):
        super().__init__(**kwargs)
        self.layer_config = layer
        self.layer = _deserialize(layer)
        self.outputs = [int(i) for i in outputs]

    def build(self, *shapes):
        # the inner layer builds its sublayers on its first call, as it does on its own
        self.built = True

    def call(self, *args, mask=None, **kwargs):
        # the inner call run directly: as an operation of its own Keras would refuse its None output. Keras
        # hands this layer its input's mask as it handed the inner layer (whose call takes one) in the original
        if mask is not None and "mask" in inspect.signature(self.layer.call).parameters:
            kwargs["mask"] = mask
        result = self.layer.call(*args, **kwargs)
        return tuple(result[i] for i in self.outputs)

    def get_config(self):
        config = super().get_config()
        config.update(layer=self.layer_config, outputs=self.outputs)
        return config


class T5Attention(_h.Opaque):
    """keras_hub T5's ``T5MultiHeadAttention``, kept whole with its channels pinned: the first layer of each stack
    looks its relative position bias up in a table of its own (``ops.take`` of a weight, which a trace cannot
    carry) and hands it to the later layers, with the mask folded in. Its multiply-accumulates are counted:
    query, key, value and output projections, scores and weighted sum. Rebuilt inside a :class:`TensorOutputs`
    (its cache output is None), which this handler reads too (a slim model's)."""

    def macs(self, call, alive_in, alive_out):
        layer, arguments = call.layer, call.node.arguments
        if isinstance(layer, TensorOutputs):
            layer = layer.layer
        hidden = arguments.args[0] if arguments.args else arguments.kwargs["hidden_states"]
        memory = arguments.kwargs.get("key_value_states")
        memory = hidden if memory is None else memory
        t, m = (int(d) for d in tuple(hidden.shape)[1:])
        s, k = (int(d) for d in tuple(memory.shape)[1:])
        inner = int(layer.inner_dim)
        return t * m * inner + 2 * s * k * inner + t * inner * int(layer.hidden_dim) + 2 * t * s * inner

    def params(self, call, alive_in, alive_out):
        return int(sum(np.prod(w.shape) for w in call.layer.weights))

    def rebuild_class(self, call):
        return TensorOutputs

    def rebuild_config(self, call, keep_in, keep_out):
        """A :class:`TensorOutputs` around the layer made from its constructor arguments (keras_hub 0.32's class
        has no usable ``get_config``: it was made with an initializer object; its dropout rate is its dropout
        layer's), returning the attention output and the position bias (the cache is None)."""
        layer = call.layer
        if isinstance(layer, TensorOutputs):
            return layer_config(layer)
        config = dict(base_config(layer), is_decoder=layer.is_decoder, hidden_dim=layer.hidden_dim,
                      key_value_dim=layer.key_value_dim, num_heads=layer.num_heads, dropout=layer.dropout_layer.rate,
                      use_relative_attention_bias=layer.use_relative_attention_bias)
        return dict(base_config(layer), layer=_serialized(layer, config), outputs=[0, 1])

    def rebuild(self, call, step):
        layer = step.new_layer(self.rebuild_config(call, step.keep_in, step.keep_out))
        args, kwargs = step.arguments()
        kwargs = {k: v for k, v in kwargs.items() if not (k.startswith("cache") and v is None)}
        out, bias = layer(*args, **kwargs)
        step.set_weights(layer, self.slice_weights(call, step.keep_in, step.keep_out, step.old_weights()))
        return (out, bias) if isinstance(call.layer, TensorOutputs) else (out, bias, None)


class ShapeReader(_h.LayerHandler):
    """A layer that reads only the shape of its input (its batch size) and emits a table of its own (keras_hub
    DeBERTa's RelativeEmbedding): its outputs are new, pinned channels; its input is not read."""

    def propagate(self, call, graph):
        return _h.pinned_outputs(call, graph, f"{call.path}: a table of its own ({type(call.layer).__name__})")

    def params(self, call, alive_in, alive_out):
        return int(sum(np.prod(w.shape) for w in call.layer.weights))

    def live_outputs(self, call, in_live, out_alive):
        return _h.all_alive(call)

    def slice_weights(self, call, keep_in, keep_out, weights):
        return weights


#: keras_hub rotary position embeddings (subclasses of the first are found through it)
HUB_ROTARY = ("layers.modeling.rotary_embedding.RotaryEmbedding",
              "models.smollm3.smollm3_layers.SmolLM3RotaryEmbedding")

#: keras_hub normalisation layers over the channel axis (RMSNorm variants with a per-channel scale)
HUB_CHANNEL_NORMS = (
    "layers.modeling.rms_normalization.RMSNormalization", "models.llama.llama_layernorm.LlamaLayerNorm",
    "models.qwen.qwen_layernorm.QwenLayerNorm", "models.qwen_moe.qwen_moe_layernorm.QwenMoeLayerNorm",
    "models.gemma4.gemma4_layers.RMSNormalization", "models.gemma3.gemma3_layers.RMSNormalization",
    "models.gemma.rms_normalization.RMSNormalization", "models.t5.t5_layer_norm.T5LayerNorm",
    "models.mistral.mistral_layer_norm.MistralLayerNormalization", "models.phi3.phi3_layernorm.Phi3LayerNorm",
    "models.mixtral.mixtral_layer_norm.MixtralLayerNormalization", "models.qwen3.qwen3_layernorm.Qwen3LayerNorm",
    "models.gpt_oss.gpt_oss_layer_norm.GptOssLayerNormalization", "models.edrec.edrec_layers.EdRecRMSNormalization",
    "models.qwen3_moe.qwen3_moe_layernorm.Qwen3MoeLayerNorm", "models.qwen3_5.qwen3_5_layers.Qwen3_5LayerNorm",
    "models.gemma3n.rms_normalization.Gemma3nRMSNorm", "models.roformer_v2.roformer_v2_attention.RoformerNorm",
)


def register_defaults():
    """Register the attention and transformer-layer handlers (called once by ``morphsparse.handlers``)."""
    register_handler(keras.layers.MultiHeadAttention, MultiHeadAttention())
    register_handler(keras.layers.ReversibleEmbedding, ReversibleEmbedding())
    register_handler(f"{_HUB}.layers.modeling.position_embedding.PositionEmbedding", PositionEmbedding())
    # the small ViT's position embedding (morphsparse.models) adds the same kind of table to its input; by name,
    # so the models module is not imported here
    register_handler("morphsparse.models.AddPositionEmbedding", PositionEmbedding())
    register_handler(f"{_HUB}.models.vit.vit_layers.ViTPatchingAndEmbedding", ViTPatchingAndEmbedding())
    register_handler(f"{_HUB}.models.deit.deit_layers.DeiTEmbeddings", ViTPatchingAndEmbedding())
    register_handler(f"{_HUB}.models.vit_det.vit_layers.AddPositionalEmbedding", AddedTable("embed_dim"))
    register_handler(f"{_HUB}.models.dinov2.dinov2_layers.DINOV2Embedding", DINOV2Embedding())
    # x * lambda1, a per-channel scale of the residual branch (as ConvNeXt's LayerScale)
    register_handler(f"{_HUB}.models.dinov2.dinov2_layers.DINOV2LayerScale",
                     _h.ChannelSizedPassThrough("hidden_dim"))
    # DINOv3: the same patch embedding and tokens (no position table); its 2-D rotary layer reads the image's
    # shape only and returns (cos, sin) tables of its own, which the attention applies to the patch tokens
    register_handler(f"{_HUB}.models.dinov3.dinov3_layers.DINOV3Embedding", DINOV2Embedding())
    register_handler(f"{_HUB}.models.dinov3.dinov3_layers.DINOV3LayerScale",
                     _h.ChannelSizedPassThrough("hidden_dim"))
    register_handler(f"{_HUB}.models.dinov3.dinov3_layers.DINOV3RopePositionEmbedding", ShapeReader())
    register_handler(f"{_HUB}.models.t5.t5_multi_head_attention.T5MultiHeadAttention", T5Attention())
    register_handler(TensorOutputs, T5Attention())      # only made around T5's attention (T5Attention.rebuild)
    register_handler(keras.layers.EinsumDense, EinsumDense())
    norm = ChannelNormalization()
    if hasattr(keras.layers, "RMSNormalization"):
        register_handler(keras.layers.RMSNormalization, norm)
    for name in HUB_CHANNEL_NORMS:
        register_handler(f"{_HUB}.{name}", norm)
    for name in HUB_ROTARY:
        register_handler(f"{_HUB}.{name}", Rotary())
    # RoformerV2's rotates a list [queries, keys] of (batch, length, heads, head size)
    register_handler(f"{_HUB}.models.roformer_v2.roformer_v2_attention.RoformrPositionalEmbedding",
                     Rotary(sequence_axis=1, feature_axis=-1))
    register_handler(f"{_HUB}.models.esm.esm_attention.ESMRotaryEmbedding", Rotary(angle_macs=False))
    register_handler(RotaryOnSeveral, Rotary())
    register_handler(f"{_HUB}.models.deberta_v3.relative_embedding.RelativeEmbedding", ShapeReader())


__all__ = ["MultiHeadAttention", "PositionEmbedding", "AddedTable", "DINOV2Embedding", "ReversibleEmbedding",
           "ViTPatchingAndEmbedding", "EinsumDense",
           "ChannelNormalization", "Rotary", "RotaryOnSeveral", "T5Attention", "TensorOutputs", "ShapeReader",
           "HUB_CHANNEL_NORMS", "HUB_ROTARY", "register_defaults"]
