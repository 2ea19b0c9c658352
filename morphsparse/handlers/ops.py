"""Channel handlers for ``keras.ops`` calls, by what each operation does to the channel (last) axis.

A functional model or a traced composite layer (``trace.py``) holds ``keras.ops`` calls as graph nodes. Each
operation class gets a handler here, registered by its qualified class name (nothing from ``keras.src`` is
imported), so that a ``keras.ops`` node is read as precisely as the layer doing the same:

* element-wise unary operations (activations, casts, ``sqrt``, ...) keep the channels;
* broadcasting operations (``add``, ``multiply``, ``where``, comparisons, ...) tie their inputs channel by
  channel, like a Merge layer; a constant operand with one value per channel pins those channels (a slim model
  could not slice a constant baked into the graph);
* padding, reshapes, transposes, ``expand_dims``/``squeeze``, tiling and broadcasting keep the channels when the
  channel axis stays last with its width, and a reshape that flattens everything is a Flatten;
* slicing (``x[...]``) and ``split`` on the channel axis take a slice of the channel map (export and expand
  recompute the bounds); on other axes they keep the channels; ``concatenate`` is the Concatenate layer's rule;
* reductions over other axes keep the channels; over the channel axis they read every channel together, so
  those channels are pinned;
* ``softmax``/``log_softmax`` and the normalisations (``normalize``, ``rms_norm``, ``layer_norm``) over the
  channel axis keep the channels but normalise across them (export then keeps dead channels, as for a
  LayerNormalization);
* ``matmul``, ``einsum`` and ``dot_product_attention`` of symbolic tensors (attention written by hand) mix the
  channel axis with others: their inputs and outputs are pinned, and their multiply-accumulates are counted.

Any other operation, or one of the above used in a way its rule does not cover (a reshape that splits the
channel axis into heads, say), pins its inputs and outputs with a reason naming it: correct, if conservative.
"""

from __future__ import annotations

import keras
import numpy as np

from morphsparse.handlers import layers as _h
from morphsparse.handlers.base import RebuildHandler, register_handler
from morphsparse.keras_internals import op_class


def _rank(call, i=0):
    return len(call.input_shapes[i])


def _axes(axis, rank):
    """``axis`` (int, sequence or None = all) as a sorted list of non-negative axes."""
    if axis is None:
        return list(range(rank))
    if isinstance(axis, (list, tuple)):
        return sorted(int(a) % rank for a in axis)
    return [int(axis) % rank]


def _pin_all(call, graph, reason):
    """Pin every input channel axis and give every output new pinned channels."""
    text = f"{call.path}: {reason}"
    for m in call.in_maps:
        graph.pin(m, text)
    return _h.pinned_outputs(call, graph, text)


def _op_name(call):
    return type(call.layer).__name__


class PinnedOp(_h.LayerHandler):
    """An operation whose channel semantics are not modelled: inputs and outputs pinned."""

    def __init__(self, reason=None):
        self.reason = reason

    def propagate(self, call, graph):
        return _pin_all(call, graph, self.reason or f"keras.ops {_op_name(call)} has no channel rule; its "
                                                    "channels are kept")

    def live_outputs(self, call, in_live, out_alive):
        if not all(m.all() for m in in_live):
            raise ValueError(f"keras.ops {_op_name(call)} must keep all its input channels")
        return _h.all_alive(call)


#: the handler of a keras.ops operation no rule covers (the graph walk uses it)
UNKNOWN_OP = PinnedOp()


class _Conditional(_h.LayerHandler):
    """An op that keeps channels in some uses and pins them in others: ``keeps(call)`` returns None when the
    channel axis passes through unchanged, else the reason to pin."""

    def keeps(self, call):
        return None

    def propagate(self, call, graph):
        reason = self.keeps(call)
        if reason is None and all(call.output_channels(i) == len(call.in_maps[0])
                                  for i in range(len(call.output_shapes))):
            return [call.in_maps[0] for _ in call.output_shapes]
        return _pin_all(call, graph, f"keras.ops {_op_name(call)} {reason or 'changes the channel axis'}")

    def live_outputs(self, call, in_live, out_alive):
        if self.keeps(call) is None and all(call.output_channels(i) == len(in_live[0])
                                            for i in range(len(call.output_shapes))):
            return RebuildHandler.live_outputs(self, call, in_live, out_alive)
        return PinnedOp.live_outputs(self, call, in_live, out_alive)


class Unary(_Conditional):
    """Element-wise on one tensor (activations, casts, math functions)."""


class CrossChannel(_Conditional):
    """softmax / log_softmax / normalize / rms_norm / layer_norm: channel-keeping; when their axis is the
    channel axis they normalise across channels."""

    def normalises_across_channels(self, call):
        axis = getattr(call.layer, "axis", -1)
        return _rank(call) - 1 in _axes(axis, _rank(call))


class Broadcasting(_h.Merge):
    """Element-wise on several broadcast tensors (add, multiply, where, comparisons, ...): inputs whose
    channel axis has the output's width are tied; width-1 inputs broadcast. A constant operand with one value
    per channel pins those channels."""

    @staticmethod
    def _ties(call):
        width = call.output_channels(0)
        widths = [s[-1] if len(s) else 1 for s in call.input_shapes]
        return any(w == width for w in widths) and all(w in (1, width) for w in widths)

    def live_outputs(self, call, in_live, out_alive):
        if not self._ties(call):
            return PinnedOp.live_outputs(self, call, in_live, out_alive)
        return super().live_outputs(call, in_live, out_alive)

    def propagate(self, call, graph):
        width = call.output_channels(0)
        tied = [m for m in call.in_maps if len(m) == width]
        if not self._ties(call):
            return _pin_all(call, graph, f"keras.ops {_op_name(call)} broadcasts channel axes of widths "
                                         f"{[len(m) for m in call.in_maps]} into {width}")
        for other in tied[1:]:
            graph.tie(tied[0], other)
        if width > 1 and _has_channel_constant(call, width):
            graph.pin(tied[0], f"{call.path}: keras.ops {_op_name(call)} with a constant operand of one value "
                               "per channel")
        return [tied[0] for _ in call.output_shapes]


def _has_channel_constant(call, width):
    values = list(call.node.arguments.args) + list(call.node.arguments.kwargs.values())
    for v in keras.tree.flatten(values):
        if isinstance(v, keras.KerasTensor):
            continue
        shape = getattr(v, "shape", None)
        if shape is not None and len(shape) >= 1 and shape[-1] == width:
            return True
    return False


class Reduction(_Conditional):
    """mean, sum, max, std, any, argmax, ...: over other axes the channels pass; over the channel axis
    every channel is read together, so they are pinned."""

    axis_attribute = "axis"

    def keeps(self, call):
        rank = _rank(call)
        if rank < 2:
            return "reduces a tensor without a channel axis"
        if rank - 1 in _axes(getattr(call.layer, self.axis_attribute, None), rank):
            return "reduces over the channel axis"
        return None


class Moments(Reduction):
    axis_attribute = "axes"


def _sized_minus_one(in_dims, rest):
    """``rest``, a reshape's target past the batch with one -1 in it, with the -1 sized from the input's
    dimensions past the batch; None where they do not fix it (an unknown dimension, no single -1, no fit)."""
    if None in tuple(in_dims) or None in rest or rest.count(-1) != 1:
        return None
    known = int(np.prod([d for d in rest if d != -1]))
    total = int(np.prod(in_dims))
    if known == 0 or total % known:
        return None
    return [total // known if d == -1 else d for d in rest]


class Reshape(_h.LayerHandler):
    """keras.ops.reshape: keeps channels when the last axis keeps its width; a reshape to (batch, -1) of a
    channels-last tensor is a Flatten; anything else (splitting channels into heads) pins."""

    def _kind(self, call):
        in_shape, out_shape = call.input_shapes[0], call.output_shapes[0]
        if out_shape[-1] == in_shape[-1] and len(out_shape) >= 2 and len(in_shape) >= 2:
            return "keep"
        if len(out_shape) == 2 and len(in_shape) > 2 and None not in in_shape[1:] and out_shape[-1] == int(
                np.prod(in_shape[1:])):
            return "flatten"
        return None

    def infer_output_shapes(self, layer, in_shapes):
        """A reshape to ``(batch, ..., -1)`` whose batch was read from a symbolic tensor (``ops.shape(x)[0]``,
        None while tracing): Keras cannot size the -1 with the batch unknown; with the other input dimensions
        known, the batch carries over and the -1 is what is left (RoformerV2 merges its heads so)."""
        newshape = layer.newshape if isinstance(layer.newshape, (list, tuple)) else [layer.newshape]
        in_shape = tuple(in_shapes[0])
        if not in_shape or newshape[0] is not None:
            return None
        rest = _sized_minus_one(in_shape[1:], list(newshape[1:]))
        return None if rest is None else [(in_shape[0],) + tuple(rest)]

    def propagate(self, call, graph):
        kind = self._kind(call)
        if kind == "keep":
            return [call.in_maps[0]]
        if kind == "flatten":
            return _h.Flatten().propagate(call, graph)
        return _pin_all(call, graph, f"keras.ops.reshape {call.input_shapes[0]} -> {call.output_shapes[0]} "
                                     "mixes the channel axis with others")

    def live_outputs(self, call, in_live, out_alive):
        kind = self._kind(call)
        if kind == "keep":
            return [in_live[0]] if in_live[0].any() else None
        if kind == "flatten":
            return _h.Flatten().live_outputs(call, in_live, out_alive)
        return PinnedOp.live_outputs(self, call, in_live, out_alive)

    def apply_op(self, call, args, kwargs, new_count):
        x = args[0] if args else kwargs["x"]
        newshape = list(call.layer.newshape) if isinstance(call.layer.newshape, (list, tuple)) else [
            call.layer.newshape]
        if self._kind(call) == "keep" and newshape[-1] not in (-1, None):
            newshape[-1] = new_count(0, 0, call.input_shapes[0][-1])
        elif self._kind(call) == "flatten":
            in_shape = call.input_shapes[0]
            positions = int(np.prod(in_shape[1:-1]))
            newshape = [-1, positions * new_count(0, 0, in_shape[-1])]
        if sum(d is None or d == -1 for d in newshape) == 1:
            # a shape read from a symbolic tensor (ops.shape(x)[0] is None while tracing): the batch
            newshape = [-1 if d is None else d for d in newshape]
        elif newshape and newshape[0] is None:
            # the batch read so, and a -1 besides (RoformerV2's (batch, length, -1)): the -1 sized from the
            # rebuilt input's other dimensions (at their new widths), the batch left to the reshape
            rest = _sized_minus_one(tuple(x.shape)[1:], newshape[1:])
            if rest is not None:
                newshape = [-1] + rest
        return keras.ops.reshape(x, newshape)


class Transpose(_Conditional):
    """transpose / moveaxis / swapaxes: channel-keeping when the last axis stays last."""

    def _permutation(self, call):
        rank, op = _rank(call), call.layer
        name = _op_name(call)
        order = list(range(rank))
        if name == "Transpose":
            return order[::-1] if op.axes is None else [int(a) % rank for a in op.axes]
        if name == "Swapaxes":
            a, b = int(op.axis1) % rank, int(op.axis2) % rank
            order[a], order[b] = order[b], order[a]
            return order
        if name == "Moveaxis":
            source, dest = _axes(op.source, rank), _axes(op.destination, rank)
            rest = [a for a in order if a not in source]
            result = [None] * rank
            for s, d in zip(source, dest):
                result[d] = s
            it = iter(rest)
            return [r if r is not None else next(it) for r in result]
        return None

    def keeps(self, call):
        perm = self._permutation(call)
        if perm is None or perm[-1] != _rank(call) - 1:
            return "moves the channel axis"
        return None


class ExpandDims(_Conditional):
    def keeps(self, call):
        rank_out = len(call.output_shapes[0])
        axes = _axes(call.layer.axis, rank_out)
        return "adds an axis after the channel axis" if rank_out - 1 in axes else None


class Squeeze(_Conditional):
    def keeps(self, call):
        rank = _rank(call)
        axis = call.layer.axis
        if axis is None:
            return "squeezes the channel axis" if call.input_shapes[0][-1] == 1 else None
        return "squeezes the channel axis" if rank - 1 in _axes(axis, rank) else None


class Pad(_Conditional):
    def keeps(self, call):
        pad = np.asarray(call.layer.pad_width)
        if pad.ndim == 2 and pad.shape[0] == _rank(call) and tuple(pad[-1]) != (0, 0):
            return "pads the channel axis"
        if pad.ndim < 2 and pad.size and np.any(pad):
            return "pads every axis, the channel axis included"
        return None


class Tile(_Conditional):
    def keeps(self, call):
        repeats = call.layer.repeats
        repeats = [repeats] if isinstance(repeats, int) else list(repeats)
        return None if repeats and repeats[-1] == 1 else "tiles the channel axis"


class BroadcastTo(_Conditional):
    def apply_op(self, call, args, kwargs, new_count):
        x = args[0] if args else kwargs["x"]
        shape = list(call.layer.shape)
        if self.keeps(call) is None:
            shape[-1] = new_count(0, 0, call.input_shapes[0][-1])
        return keras.ops.broadcast_to(x, shape)


class AxisOp(_Conditional):
    """An op along one axis (roll, flip, sort, cumsum, take, repeat, unstack): channel-keeping unless that
    axis is the channel axis."""

    def keeps(self, call):
        axis = getattr(call.layer, "axis", None)
        rank = _rank(call)
        if axis is None or rank - 1 in _axes(axis, rank):
            return "works along the channel axis"
        return None


def _index_key(key):
    """An index key as Keras's GetItem applies it: a list is a tuple of per-axis entries (a model loaded from
    a .keras file holds ``x[:, 0, :]`` as the list ``[slice, 0, slice]``, which numpy would not accept)."""
    return tuple(key) if isinstance(key, list) else key


def _normalised_key(key, rank):
    """The index ``key`` as one entry per input axis: ints, slices, or None for a new axis (after expanding
    the Ellipsis). Returns None for keys it cannot read (tensors, booleans)."""
    key = _index_key(key)
    if not isinstance(key, tuple):
        key = (key,)
    if any(isinstance(k, (keras.KerasTensor, list, np.ndarray)) or hasattr(k, "shape") for k in key):
        return None
    consumed = sum(1 for k in key if k is not None and k is not Ellipsis)
    out = []
    for k in key:
        if k is Ellipsis:
            out.extend([slice(None)] * (rank - consumed))
        else:
            out.append(k)
    consumed_now = sum(1 for k in out if k is not None)
    out.extend([slice(None)] * (rank - consumed_now))
    return out


class GetItem(_h.LayerHandler):
    """``x[key]``: channels pass when the key leaves the channel axis whole; a step-1 slice of the channel
    axis takes those channels (export and expand recompute its bounds); anything else pins."""

    def _channel_entry(self, call):
        key = call.node.arguments.args[1] if len(call.node.arguments.args) > 1 else None
        norm = _normalised_key(key, _rank(call))
        if norm is None:
            return "unknown", None
        last = [k for k in norm if k is not None][-1]
        if isinstance(last, slice):
            start, stop, step = last.indices(call.input_shapes[0][-1])
            if (start, stop, step) == (0, call.input_shapes[0][-1], 1):
                return "keep", None
            if step == 1 and stop > start:
                return "slice", (start, stop)
        return "unknown", None

    def propagate(self, call, graph):
        kind, bounds = self._channel_entry(call)
        if call.output_shapes[0]:
            if kind == "keep" and call.output_channels(0) == len(call.in_maps[0]):
                return [call.in_maps[0]]
            if kind == "slice" and call.output_channels(0) == bounds[1] - bounds[0]:
                return [call.in_maps[0][bounds[0]:bounds[1]]]
        return _pin_all(call, graph, "keras.ops indexing that is not a plain slice of the channel axis")

    def live_outputs(self, call, in_live, out_alive):
        kind, bounds = self._channel_entry(call)
        if kind == "keep" and call.output_channels(0) == len(in_live[0]):
            return [in_live[0]] if in_live[0].any() else None
        if kind == "slice" and call.output_channels(0) == bounds[1] - bounds[0]:
            keep = in_live[0][bounds[0]:bounds[1]]
            return [keep] if keep.any() else None
        return PinnedOp.live_outputs(self, call, in_live, out_alive)

    def apply_op(self, call, args, kwargs, new_count):
        kind, bounds = self._channel_entry(call)
        x, key = args[0], _index_key(args[1])
        if kind != "slice":
            return x[key]
        norm = _normalised_key(key, _rank(call))
        positions = [i for i, k in enumerate(norm) if k is not None]
        start = new_count(0, 0, bounds[0])
        norm[positions[-1]] = slice(start, start + new_count(0, bounds[0], bounds[1]))
        return x[tuple(norm)]


class Split(_h.LayerHandler):
    """split / array_split: along the channel axis each output takes its slice of the channels (export and
    expand recompute the split points); along another axis every output keeps the channels."""

    def _on_channels(self, call):
        axis = getattr(call.layer, "axis", 0)
        return int(axis) % _rank(call) == _rank(call) - 1

    def _bounds(self, call):
        ends = np.cumsum([s[-1] for s in call.output_shapes])
        return [(int(e - s[-1]), int(e)) for e, s in zip(ends, call.output_shapes)]

    def propagate(self, call, graph):
        if self._on_channels(call):
            return [call.in_maps[0][a:b] for a, b in self._bounds(call)]
        return [call.in_maps[0] for _ in call.output_shapes]

    def live_outputs(self, call, in_live, out_alive):
        if self._on_channels(call):
            return [in_live[0][a:b] for a, b in self._bounds(call)]
        return [in_live[0] for _ in call.output_shapes]

    def apply_op(self, call, args, kwargs, new_count):
        x = args[0] if args else kwargs["x"]
        if not self._on_channels(call):
            return call.layer(*args, **kwargs)
        bounds = self._bounds(call)
        if any(new_count(0, a, b) == 0 for a, b in bounds):
            raise ValueError("a part of a split of the channel axis would have no channel left")
        points = [new_count(0, 0, b) for _, b in bounds[:-1]]
        return keras.ops.split(x, points, axis=-1)


class Stack(Broadcasting):
    """stack: along the channel axis it makes a new axis of the inputs (pinned); elsewhere it ties the
    inputs' channels like an element-wise merge."""

    def _on_channels(self, call):
        rank_out = len(call.output_shapes[0])
        return int(call.layer.axis) % rank_out == rank_out - 1

    def propagate(self, call, graph):
        if self._on_channels(call):
            return _pin_all(call, graph, "keras.ops.stack along the channel axis")
        return Broadcasting.propagate(self, call, graph)

    def live_outputs(self, call, in_live, out_alive):
        if self._on_channels(call):
            return PinnedOp.live_outputs(self, call, in_live, out_alive)
        return Broadcasting.live_outputs(self, call, in_live, out_alive)


def einsum_macs(equation, shapes):
    """Multiply-accumulates of an einsum: the product of the sizes of every index letter (batch: 1)."""
    inputs = equation.split("->")[0].split(",")
    sizes = {}
    for spec, shape in zip(inputs, shapes):
        spec = spec.replace(" ", "")
        if "..." in spec:
            head, tail = spec.split("...")
            ell = len(shape) - len(head) - len(tail)
            letters = list(head) + [f"_{i}" for i in range(ell)] + list(tail)
        else:
            letters = list(spec)
        for letter, dim in zip(letters, shape):
            sizes[letter] = max(sizes.get(letter, 1), 1 if dim is None else int(dim))
    return int(np.prod(list(sizes.values()))) if sizes else 0


class Contraction(PinnedOp):
    """matmul / einsum / tensordot / dot_product_attention of symbolic tensors: the channel axis is
    contracted with or moved to another axis, so inputs and outputs are pinned; the multiply-accumulates are
    counted (batch size 1)."""

    def propagate(self, call, graph):
        return _pin_all(call, graph, f"keras.ops {_op_name(call)} contracts the channel axis")

    def macs(self, call, alive_in, alive_out):
        name = _op_name(call)
        shapes = [tuple(1 if d is None else d for d in s) for s in call.input_shapes]
        if name == "Einsum":
            return einsum_macs(call.layer.subscripts, shapes)
        if name in ("Matmul", "Dot", "Inner", "Vdot", "Tensordot") and len(shapes) == 2:
            out = tuple(1 if d is None else d for d in call.output_shapes[0])
            if name == "Matmul" or name == "Dot":
                k = shapes[0][-1] if shapes[0] else 1
                return int(np.prod(out[1:] if len(out) > 1 and call.output_shapes[0][0] is None else out)) * k
            return 0
        if name == "DotProductAttention":
            q, k = shapes[0], shapes[1]          # (batch, T, heads, dim), (batch, S, kv_heads, dim)
            v = shapes[2] if len(shapes) > 2 else k
            t, heads, dim, s = q[1], q[2], q[3], k[1]
            return t * s * heads * (dim + v[3])
        return 0


class SealedComposite(PinnedOp):
    """A composite layer that was traced but cannot be rebuilt piece by piece (``Trace.sealed``): it is kept
    as one layer with its channels pinned; its cost is that of its traced graph (``macs``, which the graph
    counts when it reads the trace)."""

    def __init__(self, trace, macs):
        super().__init__(trace.sealed)
        self.trace = trace
        self._macs = int(macs)

    def propagate(self, call, graph):
        return _pin_all(call, graph, f"{type(call.layer).__name__} {self.trace.sealed}")

    def macs(self, call, alive_in, alive_out):
        return self._macs

    def params(self, call, alive_in, alive_out):
        return int(sum(np.prod(w.shape) for w in call.layer.weights))

    def slice_weights(self, call, keep_in, keep_out, weights):
        return weights


def _register(names, handler, module="numpy"):
    for name in names.split():
        register_handler(op_class(module, name), handler)


def register_defaults():
    """Register the handlers of the keras.ops operations (called once by ``morphsparse.handlers``)."""
    unary = Unary()
    _register("Absolute Abs Fabs Angle Arccos Arccosh Arcsin Arcsinh Arctan Arctanh BitwiseInvert BitwiseNot Cbrt "
              "Ceil Clip Conjugate Conj Copy Cos Cosh Deg2rad Rad2deg Exp Exp2 Expm1 Floor Imag Isfinite Isinf "
              "Isnan Isneginf Isposinf Isreal Log Log10 Log1p Log2 LogicalNot NanToNum Negative Real Reciprocal "
              "Round Sign Signbit Sin Sinc Sinh Sqrt Square Tan Tanh Trunc OnesLike ZerosLike FullLike EmptyLike "
              "View I0", unary)
    _register("Relu Relu6 Sigmoid SparseSigmoid Softplus Softsign SoftShrink SparsePlus Silu Squareplus LogSigmoid "
              "LeakyRelu HardSigmoid HardSilu Elu Selu Gelu Celu TanhShrink HardTanh HardShrink Threshold",
              unary, "nn")
    _register("Cast SaturateCast StopGradient ConvertToTensor", unary, "core")
    _register("Rsqrt Erf Erfc Erfinv", unary, "math")
    _register("Softmax LogSoftmax Sparsemax Normalize RMSNorm LayerNorm", CrossChannel(), "nn")

    _register("Add Subtract Multiply Divide DivideNoNan TrueDivide FloorDivide Power Maximum Minimum Fmax Fmin "
              "Mod Fmod Arctan2 Hypot Logaddexp Logaddexp2 Equal NotEqual Greater GreaterEqual Less LessEqual "
              "LogicalAnd LogicalOr LogicalXor BitwiseAnd BitwiseOr BitwiseXor BitwiseLeftShift LeftShift "
              "BitwiseRightShift RightShift Heaviside Where Nextafter Ldexp Gcd Lcm Isclose", Broadcasting())

    reduction = Reduction()
    _register("All Any Amax Amin Argmax Argmin Average CountNonzero Max Min Mean Median Nanargmax Nanargmin Nanmax "
              "Nanmean Nanmedian Nanmin Nanprod Nanstd Nansum Nanvar Percentile Prod Ptp Quantile Nanpercentile "
              "Nanquantile Std Sum Var", reduction)
    _register("Logsumexp", reduction, "math")
    _register("Moments", Moments(), "nn")

    _register("Reshape", Reshape())
    _register("Transpose Swapaxes Moveaxis", Transpose())
    _register("ExpandDims", ExpandDims())
    _register("Squeeze", Squeeze())
    _register("Pad", Pad())
    _register("Tile", Tile())
    _register("BroadcastTo", BroadcastTo())
    axis_op = AxisOp()
    _register("Roll Flip Sort Argsort Cumsum Cumprod Nancumsum Nancumprod Take TakeAlongAxis Repeat Diff", axis_op)
    _register("Unstack", axis_op, "core")
    _register("GetItem", GetItem())
    _register("Split ArraySplit", Split())
    register_handler(op_class("numpy", "Concatenate"), _h.Concatenate())
    _register("Stack", Stack())
    contraction = Contraction()
    _register("Matmul Einsum Dot Tensordot Inner Vdot", contraction)
    _register("DotProductAttention", contraction, "nn")
    pool = _h.PassThrough()
    _register("MaxPool AveragePool AdaptiveMaxPool AdaptiveAveragePool", pool, "nn")
    _register("Resize", pool, "image")


__all__ = ["PinnedOp", "UNKNOWN_OP", "Unary", "CrossChannel", "Broadcasting", "Reduction", "Reshape", "Transpose",
           "ExpandDims", "Squeeze", "Pad", "Tile", "BroadcastTo", "AxisOp", "GetItem", "Split", "Stack",
           "Contraction", "SealedComposite", "einsum_macs", "register_defaults"]
