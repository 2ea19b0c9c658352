"""The handler protocol and registry: what a handler of a layer class must and may say.

A handler has two parts, two protocols that tools use separately:

* :class:`ChannelHandler`, the structural and cost part, all that ``analyze``, the cost counters and the
  regulariser read: ``propagate`` (given the channel maps of the layer's input tensors, one class id per
  channel of the channel axis, return those of its outputs: a producer (Conv, Dense, ...) creates new
  channels, a pass-through layer returns its input map, a merge (Add, ...) ties its inputs together),
  ``macs`` and ``params`` (of one call, given how many channels of each input and output are alive), and the
  capabilities the structural tools ask about, each declared here with its default.
* :class:`RebuildHandler`, the export and expand part: ``live_outputs`` (which output entries survive),
  ``rebuild_config`` (the layer's config at new widths; expand uses it alone), ``slice_weights``,
  ``apply_op`` (a keras.ops call applied again) and ``rebuild(call, step)``, which builds the call in a slim
  model through the :class:`~morphsparse.morph.export.RebuildStep` interface only. A handler that is only a
  ``ChannelHandler`` is rebuilt by the defaults (:data:`DEFAULT_REBUILD`: a channel-keeping layer whose
  per-channel weights sit on the last axis).

:class:`LayerHandler` is both, and what the stock handlers derive from. Handlers are looked up along the
layer's class hierarchy, so a subclass of ``keras.layers.Dense`` is handled as a Dense. Users register
handlers for their own layers with :func:`register_handler`.
"""

from __future__ import annotations

import inspect
import warnings

import keras
import numpy as np


def layer_config(layer) -> dict:
    """``layer.get_config()``; for a layer whose class cannot give one (keras_hub 0.32's Gemma
    ``RMSNormalization`` was made with a dtype policy object and defines no ``get_config``), the constructor
    arguments read back from the attributes of the same names, with a warning naming the layer."""
    try:
        return layer.get_config()
    except Exception as err:  # noqa: BLE001 - Keras raises NotImplementedError or a TypeError by class
        reason = err
    config, missing = constructor_config(layer)
    if missing:
        raise ValueError(f"layer '{layer.name}' ({type(layer).__name__}) has no usable get_config ({reason}) and "
                         f"its constructor arguments {missing} are not attributes; register a handler for it")
    warnings.warn(f"layer '{layer.name}' ({type(layer).__name__}) has no usable get_config(); it is rebuilt from "
                  f"its constructor arguments read off its attributes: "
                  f"{sorted(k for k in config if k not in ('name', 'trainable', 'dtype'))}", UserWarning,
                  stacklevel=3)
    return config

def base_config(layer) -> dict:
    """The config entries every layer takes: name, trainable and the dtype policy in its serialized form, not
    the policy object (a layer made with a policy object has no automatic config, keras_hub's Gemma
    RMSNormalization, so a layer rebuilt with one could not be saved either)."""
    return {"name": layer.name, "trainable": layer.trainable,
            "dtype": keras.dtype_policies.serialize(layer.dtype_policy)}


def constructor_config(layer, renames=None):
    """``(config, missing)``: :func:`base_config` and each other constructor argument of the layer's class read
    off the attribute of its name (``renames``: argument -> attribute where they differ), and the arguments with
    no default that no attribute holds."""
    config, missing = base_config(layer), []
    for p in inspect.signature(type(layer).__init__).parameters.values():
        if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in config:
            continue
        attribute = (renames or {}).get(p.name, p.name)
        if hasattr(layer, attribute):
            config[p.name] = getattr(layer, attribute)
        elif p.default is p.empty:
            missing.append(p.name)
    return config, missing


def cost_of_terms(terms, alive_in, alive_out, which):
    """A call's ``"macs"`` or ``"params"`` from its bilinear cost terms (:meth:`ChannelHandler.cost_terms`) at the
    alive counts of its input and output axes (internal axes, such as heads, after the outputs)."""
    counts = {None: 1, **{("in", i): c for i, c in enumerate(alive_in)}}
    counts.update({("out", j): c for j, c in enumerate(alive_out)})
    pick = 2 if which == "macs" else 3
    return sum(term[pick](counts[term[0]], counts[term[1]]) for term in terms)


def positions(shape, what="its input"):
    """How many positions a channels-last tensor of ``shape`` has besides its batch and channel axes (pixels,
    time steps, tokens): how many times a kernel is applied to it per example. The one place every cost is
    multiplied by it; an unknown length is an error naming ``what``."""
    dims = tuple(shape)[1:-1]
    if any(d is None for d in dims):
        raise ValueError(f"{what} has an unknown length {tuple(shape)}; build the model on inputs of fixed "
                         "length (keras.Input(shape=(length, ...))) to count its costs")
    return int(np.prod(dims)) if dims else 1


CHANNELS_LAST_ONLY = ("morphsparse reads channels_last models only; rebuild the model with "
                      "data_format='channels_last' (Keras's default).")


class ChannelHandler:
    """The structural and cost part of a handler. Subclasses override what differs; ``propagate`` must be
    overridden, the cost defaults describe a layer whose per-channel weights sit on the last axis."""

    #: True when the layer's outputs start new channel groups (it has a kernel over channels).
    produces_channels = False
    #: True when the call multiplies its inputs by a kernel (Conv, Dense, attention projections, ...): its
    #: output channels live or die by their kernel slices (``kernel_matrix``), it is a regularisation source,
    #: and export folds a constant input channel into its bias (``RebuildHandler.fold_exact``/``bias_shift``).
    kernel_layer = False
    #: True for a layer that keeps its channels and their per-channel scale exactly (activations, dropout,
    #: pooling, padding): :meth:`morphsparse.graph.ChannelGraph.chain` walks through it.
    transparent = False
    #: True when an internal channel axis of the call (attention heads) must keep one channel: a layer with no
    #: head cannot be rebuilt.
    keeps_one_internal = False

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

    def kernel_matrix(self, call, xp=np):
        """The weights feeding each output entry, as a (fan-in, output entries) matrix, for group lasso; None
        when the handler cannot say (the layer then cannot be regularised). ``xp``: numpy for values,
        keras.ops for a differentiable tensor."""
        return None

    def axis_matrix(self, call, axis, xp=np):
        """The weights of each channel of output axis ``axis`` (an internal axis: attention heads) as
        (fan-in, channels) columns, for group lasso; axis 0 is :meth:`kernel_matrix`. None: it cannot say."""
        return self.kernel_matrix(call, xp) if axis == 0 else None

    def axis_weights(self, call, axis):
        """For an internal axis: ``[(variable, axis, entries), ...]``, every weight whose slices along ``axis``
        belong to the axis's channels, ``entries(mask)`` turning a per-channel mask into one over that weight
        axis (a key/value head covers several query heads). Lets a caller zero or inspect a channel's weights
        without knowing the layer; None: the handler does not say."""
        return None

    def regularized_axes(self, call):
        """The positions in ``call.out_groups`` whose channels its kernel decides (internal axes included)."""
        return [0]

    def cost_terms(self, call):
        """For a call with several channel axes (attention: heads and widths), its MACs and parameters as a
        sum of terms, each bilinear in the alive counts of two axes: ``[(in_ref, out_ref, macs(a, b),
        params(a, b)), ...]`` (see ``morphsparse.morph.regularizers.KernelCalls``); None: one term in the counts
        of its first input and output."""
        return None

    def timed_axes(self, call):
        """For a call with several channel axes that a latency table times along two of them: ``(input index,
        output axis)``, the input whose width (and every input reading the same tensor) is the table's first
        axis and the output position (an internal axis, such as the heads, past the outputs) that is its
        second; the call's first output keeps the input's width if it had it. None: the call is timed as
        one value whatever its widths (``morphsparse.latency``)."""
        return None

    def reads_channels_separately(self, call):
        """True when each output reads one input channel only (depthwise): a removed input channel takes its
        outputs with it, so there is no constant to fold into a bias."""
        return False

    def normalises_across_channels(self, call):
        """True when the call normalises over the channel axis (removing a channel changes the others, so
        export keeps dead channels feeding it)."""
        return False

    def infer_output_shapes(self, layer, in_shapes):
        """Output shapes from input shapes where Keras's own output spec forgets a dimension; None: no better
        knowledge than Keras's."""
        return None


def dense_unless_sparse_input(outputs, args, kwargs):
    """``outputs`` of a keras.ops call made dense when none of its symbolic inputs is sparse. Keras's output
    spec of an element-wise op takes an operand that is not a KerasTensor for sparse (``x * ops.sqrt(d)`` in
    keras_hub's Gemma backbone is a "sparse" KerasTensor), and a layer whose output spec is inferred by running
    its call then fails on that input. The data is dense whatever the spec says; ``convert_to_tensor(...,
    sparse=False)`` says so (and does nothing to a dense tensor)."""
    inputs = [v for v in keras.tree.flatten((args, kwargs)) if isinstance(v, keras.KerasTensor)]
    if any(t.sparse for t in inputs):
        return outputs

    def dense(t):
        if isinstance(t, keras.KerasTensor) and t.sparse:
            return keras.ops.convert_to_tensor(t, sparse=False)
        return t
    return keras.tree.map_structure(dense, outputs)


class RebuildHandler:
    """The export and expand part of a handler (``morphsparse.morph.export`` and ``expand``).

    ``keep_in`` / ``keep_out``: per input / output tensor, a boolean mask of the channel-axis entries that
    survive (for expand: all-True masks of the new widths). The defaults describe a channel-keeping layer
    whose per-channel weights sit on the last axis."""

    def live_outputs(self, call, in_live, out_alive):
        """Surviving entries of each output given those of the inputs (``out_alive``: the alive masks of
        the output groups); None when the call disappears because nothing it reads survives."""
        if in_live and not any(m.any() for m in in_live):
            return None
        return [in_live[0] for _ in call.output_shapes]

    def rebuild_class(self, call):
        """The class the layer is rebuilt as (its own by default; a layer whose class cannot be made at other
        widths names another, as keras_hub's grouped-query attention does)."""
        return type(call.layer)

    def rebuild_config(self, call, keep_in, keep_out):
        """The layer's config in the slim model (a config of :meth:`rebuild_class`)."""
        return layer_config(call.layer)

    def slice_weights(self, call, keep_in, keep_out, weights):
        """The surviving slices of ``weights`` (numpy, in ``layer.weights`` order)."""
        full = len(keep_out[0])
        return [w[..., keep_out[0]] if w.ndim and w.shape[-1] == full else w for w in weights]

    def apply_op(self, call, args, kwargs, new_count):
        """Apply a keras.ops operation again in a rebuilt model (export or expand). ``new_count(i, lo, hi)``:
        how many entries the rebuilt input i has in place of the original entries ``lo:hi`` of its channel
        axis, for operations whose arguments name channel positions (a reshape's last dimension, a slice)."""
        return dense_unless_sparse_input(call.layer(*args, **kwargs), args, kwargs)

    def fold_exact(self, call):
        """True when a constant input channel adds the same amount to every output position (so folding it
        into the bias is exact); read for kernel layers only (``ChannelHandler.kernel_layer``)."""
        return True

    def bias_shift(self, call, removed, constants, weights):
        """What the removed input entries (``removed`` mask; their values in ``constants``) add to each
        output entry (full width), from the original ``weights``; None when they add nothing."""
        return None

    def input_rows(self, call, weights):
        """What one unit on each entry of input 0 adds to each output entry: an (input entries, output entries)
        matrix read from :meth:`bias_shift` (so for a spatial kernel, the kernel summed over its positions);
        None when the handler does not say. Calibration importances weigh activations by these rows."""
        n = call.input_channels(0)
        everything = np.ones(n, bool)
        rows = []
        for j in range(n):
            unit = np.zeros(n)
            unit[j] = 1.0
            try:
                row = self.bias_shift(call, everything, unit, weights)
            except ValueError:      # a layer with no bias a constant could be folded into
                return None
            if row is None:
                return None
            rows.append(np.asarray(row, np.float64).reshape(-1))
        return np.stack(rows) if rows else None

    def rebuild(self, call, step):
        """Build this call in the slim model; return its new output tensor(s). ``step`` is a
        :class:`morphsparse.morph.export.RebuildStep`, all a handler may use of the export: new input
        tensors, masks, probe values, new layers, weights and constant folds."""
        if not isinstance(call.layer, keras.layers.Layer):
            # a keras.ops operation: apply it again (merges with a constant input go through Merge.rebuild)
            args, kwargs = step.arguments()
            return self.apply_op(call, args, kwargs, step.new_count)
        layer = step.new_layer(self.rebuild_config(call, step.keep_in, step.keep_out))
        args, kwargs = step.arguments()
        outputs = layer(*args, **kwargs)
        step.set_weights(layer, self.slice_weights(call, step.keep_in, step.keep_out, step.old_weights()))
        return outputs


class LayerHandler(ChannelHandler, RebuildHandler):
    """A whole handler: structure and cost (:class:`ChannelHandler`) and export and expand
    (:class:`RebuildHandler`). The defaults describe a layer with no weights that keeps its channels (so
    ``propagate`` must be overridden by anything that does not)."""


#: the export part of a handler that has only the structural part
DEFAULT_REBUILD = RebuildHandler()


def rebuild_part(handler):
    """The export and expand part of ``handler``: itself, or :data:`DEFAULT_REBUILD` for a handler that is
    only a :class:`ChannelHandler`."""
    return handler if isinstance(handler, RebuildHandler) else DEFAULT_REBUILD



# --- registry ----------------------------------------------------------------------------------------------

_REGISTRY: dict[type, ChannelHandler] = {}
_NAME_REGISTRY: dict[str, ChannelHandler] = {}


def register_handler(layer_class, handler: ChannelHandler | type[ChannelHandler]):
    """Register ``handler`` for ``layer_class`` and its subclasses (a more specific registration wins).

    ``layer_class`` may be a class or a dotted/qualified class name string (for classes defined in modules you
    do not want to import eagerly). ``handler`` is a :class:`LayerHandler`, or a :class:`ChannelHandler` (structure
    and cost only; export and expand then treat the layer as channel-keeping). For a channel-keeping layer::

        morphsparse.register_handler(MyScale, morphsparse.handlers.PassThrough())
    """
    if isinstance(handler, type):
        handler = handler()
    if not isinstance(handler, ChannelHandler):
        raise TypeError(f"handler must be a morphsparse.LayerHandler or ChannelHandler (instance or class), "
                        f"got {handler!r}")
    if isinstance(layer_class, str):
        _NAME_REGISTRY[layer_class] = handler
    elif isinstance(layer_class, type):
        _REGISTRY[layer_class] = handler
    else:
        raise TypeError(f"layer_class must be a class or a class-name string, got {layer_class!r}")
    return handler


def get_handler(layer) -> ChannelHandler | None:
    """The handler for ``layer`` (an instance or class), searched along its class hierarchy; None if none."""
    cls = layer if isinstance(layer, type) else type(layer)
    for klass in cls.__mro__:
        if klass in _REGISTRY:
            return _REGISTRY[klass]
        for key in (f"{klass.__module__}.{klass.__qualname__}", klass.__qualname__):
            if key in _NAME_REGISTRY:
                return _NAME_REGISTRY[key]
    return None



__all__ = ["ChannelHandler", "RebuildHandler", "LayerHandler", "DEFAULT_REBUILD", "rebuild_part", "layer_config",
           "positions", "CHANNELS_LAST_ONLY", "register_handler", "get_handler"]
