"""Reading through composite layers: the inner graph of a layer (or model) call, as a functional model.

A custom layer whose ``call`` is built from Keras layers and ``keras.ops`` records nothing of its inside when it
is called in a functional model: Keras runs its ``call`` on backend placeholders, and the outer graph holds one
node for the whole layer. Calling the layer's ``call`` method itself (not ``__call__``) on fresh
``keras.Input`` tensors does record every inner layer and ``keras.ops`` call as a node, so a functional model
over those inputs exposes the inner graph, made of the *same* inner layer objects (weights shared).

:func:`trace_call` does this for one call (one node) of a layer or of a nested functional model, with the
arguments that call was made with (masks, ``training``, keyword tensors): every symbolic tensor of the call is
replaced by a fresh input of the same shape and dtype. The same is used for a nested functional model whose
own graph has less specific shapes than the tensors it is called on (a keras_hub text backbone takes
sequences of any length; called on a fixed length, its costs are known only once re-traced at that length).

The nodes the trace records on the inner layers are taken off them again once the functional view exists, so
the user's layers keep the call history they had (the view holds its own references to those nodes).
"""

from __future__ import annotations

import contextlib
import inspect

import keras

from morphsparse.keras_internals import forget_nodes, nodes_in_order


class TraceError(ValueError):
    """The layer's call cannot be read as a graph of Keras layers and keras.ops (the message says why)."""


class Trace:
    """The inner graph of one call: ``model`` (a functional model over fresh inputs), ``input_positions``
    (for each of ``model.inputs``, the position of the outer node's input tensor it stands for). ``sealed``:
    None, or why the graph must not be rebuilt piece by piece (it bakes the batch size into a shape), in which
    case the layer is kept whole and its channels pinned."""

    def __init__(self, model, input_positions, sealed=None, output_positions=None):
        self.model = model
        self.input_positions = input_positions
        self.sealed = sealed
        # for each of ``model.outputs``, the position of the outer node's output it computes (a call that
        # returns None beside its tensors, ``(x, None)``, has a placeholder output no trace computes)
        self.output_positions = list(range(len(model.outputs))) if output_positions is None else output_positions

    def outer_values(self, values, count):
        """``values`` (one per ``model.outputs``) spread over the outer node's ``count`` outputs (None where
        the call returned None)."""
        full = [None] * count
        for position, value in zip(self.output_positions, values):
            full[position] = value
        return full

    def input_maps(self, maps):
        """The outer call's per-input-tensor values (channel maps, tensor keys), in ``model.inputs`` order."""
        return [maps[p] for p in self.input_positions]


def _untraced_weights(op, model):
    """Weights of ``op`` that no layer of its traced graph holds: weights it created itself (used in its call
    as constants, which a traced graph cannot carry) or weights of sub-layers its call never uses."""
    held = {id(w) for layer in model.layers for w in layer.weights}
    return [w for w in op.weights if id(w) not in held]


def trace_call(op, node, functional=None, input_shapes=None, infer_output_shapes=None):
    """A :class:`Trace` of ``op``'s call at ``node`` (a layer, or the functional graph ``functional`` of a
    nested model). Raises :class:`TraceError` when the call cannot be traced.

    The inputs get an unknown batch size, as in the model. Code that builds constants of the batch size
    (keras_hub's causal mask: ``ops.broadcast_to(mask, (ops.shape(x)[0], ...))``) cannot run on an unknown
    one; such a call is traced again with a batch of one, whose constants broadcast over any batch.
    ``input_shapes``: the shapes of the call's input tensors where they are known better than Keras recorded
    them (see ``graph._refined_shapes``). ``infer_output_shapes(layer, input_shapes)``: output shapes where a
    sub-layer's output spec forgets a dimension (the handlers' inference), or None."""
    shapes = input_shapes or [tuple(t.shape) for t in node.input_tensors]
    infer = infer_output_shapes or (lambda layer, in_shapes: None)
    try:
        return _trace(op, node, functional, shapes, None, infer)
    except TraceError as first:
        try:
            trace = _trace(op, node, functional, shapes, 1, infer)
        except TraceError as second:
            if str(second) == str(first):
                raise first from None
            raise TraceError(f"{first}; with a batch of one, {second}") from None
    # A graph traced at batch 1 is rebuilt for any batch only if no operation took the batch size into its
    # configuration (a reshape to (batch, ...)): compare with a trace at batch 2.
    try:
        other = _trace(op, node, functional, shapes, 2, infer)
        differs = _batch_dependent(trace.model, other.model)
    except TraceError as err:
        differs = f"it does not trace at batch 2 ({err})"
    if differs:
        trace.sealed = f"builds shapes from the batch size ({differs}), so it is kept whole"
    return trace


def _signature(model):
    rows = []
    for n in nodes_in_order(model):
        op = n.operation
        if isinstance(op, keras.layers.Layer):
            rows.append(type(op).__name__)
            continue
        config = {k: v for k, v in op.get_config().items() if k != "name"}
        rows.append((type(op).__name__, repr(config)))
    return rows


def _batch_dependent(model_1, model_2):
    """A description of the first operation whose configuration differs between traces at batch 1 and 2."""
    a, b = _signature(model_1), _signature(model_2)
    if len(a) != len(b):
        return "its graph changes with the batch size"
    for x, y in zip(a, b):
        if x != y:
            return f"keras.ops {x[0] if isinstance(x, tuple) else x}"
    return None


def _trace(op, node, functional, shapes, batch, infer):
    fresh, positions = {}, []
    for position, tensor in enumerate(node.input_tensors):
        if id(tensor) in fresh:
            continue
        shape = tuple(shapes[position])
        if shape:
            shape = (batch,) + shape[1:]     # a call inside a batch-1 trace is traced at an unknown batch too
        fresh[id(tensor)] = keras.Input(batch_shape=shape, dtype=tensor.dtype)
        positions.append(position)
    args, kwargs = node.arguments.fill_in(fresh)
    target = functional if functional is not None else op
    try:
        with _lenient_output_specs(op, infer) as placeholders:
            outputs = target.call(*args, **kwargs)
    except Exception as err:  # any failure means: not traceable as symbolic Keras code
        raise TraceError(f"calling it on symbolic inputs failed ({type(err).__name__}: {err})") from None
    flat = keras.tree.flatten(outputs)
    if len(flat) > len(node.outputs):
        # a block that returns a sub-layer's None output (a cache) when it is not None: the placeholder
        # standing for that None made it return it; the call the model recorded did not
        flat = [t for t in flat if t is not None and id(t) not in placeholders]
    # outputs that do not depend on the inputs (None, or constants such as an empty tuple of hidden states
    # stacked as zeros) are left out of the trace: nothing in the model computes them from its inputs
    kept = [i for i, t in enumerate(flat) if isinstance(t, keras.KerasTensor)]
    if len(flat) != len(node.outputs) or not kept:
        raise TraceError("its call does not return symbolic tensors matching its outputs")
    for t, outer in ((flat[i], node.outputs[i]) for i in kept):
        if len(t.shape) != len(outer.shape) or any(
                a is not None and b is not None and a != b for a, b in zip(t.shape[1:], outer.shape[1:])):
            raise TraceError(f"its traced output has shape {tuple(t.shape)}, not {tuple(outer.shape)}")
    inputs = [fresh[id(node.input_tensors[p])] for p in positions]
    try:
        model = keras.Model(inputs, [flat[i] for i in kept], name=f"{op.name}_traced")
    except Exception as err:
        raise TraceError(f"its traced graph is not a functional graph ({type(err).__name__}: {err})") from None
    forget_nodes(model)
    missing = _untraced_weights(op, model)
    if missing:
        raise TraceError(f"its weights {[w.path for w in missing[:3]]} are not held by any layer its call is "
                         "made of (weights it creates itself and uses directly cannot be traced)")
    return Trace(model, positions, output_positions=kept)


def _none_to_placeholder(value, made=None):
    """None leaves of a call's output structure (keras_hub blocks return ``(x, None)`` when they compute no
    attention scores or cache) become scalar placeholders, so that Keras records the call; the caller drops
    them, and the trace of that call leaves them out (``Trace.output_positions``)."""
    if value is None:
        placeholder = keras.KerasTensor((), dtype="float32")
        if made is not None:
            made[id(placeholder)] = placeholder     # held, so that the id stays its own
        return placeholder
    if isinstance(value, (list, tuple)):
        return type(value)(_none_to_placeholder(v, made) for v in value)
    if isinstance(value, dict):
        return {k: _none_to_placeholder(v, made) for k, v in value.items()}
    return value


def _sub_layers(root):
    """Every layer reachable from ``root``'s attributes (and lists/dicts of them), ``root`` excluded."""
    found, pending, seen = [], [root], {id(root)}
    while pending:
        obj = pending.pop()
        values = list(vars(obj).values()) if hasattr(obj, "__dict__") else []
        while values:
            value = values.pop()
            if isinstance(value, (list, tuple)):
                values.extend(value)
            elif isinstance(value, dict):
                values.extend(value.values())
            elif isinstance(value, keras.layers.Layer) and id(value) not in seen:
                seen.add(id(value))
                found.append(value)
                pending.append(value)
    return found


def _first_parameter(layer):
    """The name of the first parameter of ``layer.call`` (the argument holding its main input)."""
    try:
        parameters = list(inspect.signature(layer.call).parameters)
    except (TypeError, ValueError):
        return None
    return parameters[0] if parameters else None


@contextlib.contextmanager
def _lenient_output_specs(root, infer_output_shapes):
    """While tracing, let sub-layers take call arguments their ``compute_output_spec`` does not declare when
    they are None (keras_hub's CachedMultiHeadAttention is called with ``cache=None``, which the
    MultiHeadAttention output spec refuses): an instance attribute drops them, and is removed afterwards.
    Yields ``{id: placeholder}`` of the placeholders made for None outputs (:func:`_none_to_placeholder`)."""
    patched, placeholders = [], {}
    for layer in _sub_layers(root):
        spec = layer.compute_output_spec
        try:
            parameters = inspect.signature(spec).parameters
        except (TypeError, ValueError):
            continue
        names = None if any(p.kind is p.VAR_KEYWORD for p in parameters.values()) else frozenset(parameters)
        def lenient(*args, _spec=spec, _names=names, _layer=layer, **kwargs):
            if _names is not None:
                kwargs = {k: v for k, v in kwargs.items() if k in _names or v is not None}
            try:
                out = _spec(*args, **kwargs)
            except Exception:   # noqa: BLE001 - an output spec that cannot be computed (SmolLM3's attention
                # reads its input shape as a list of shapes): the handler's inference of the output, if it has one
                hidden = kwargs.get(_first_parameter(_layer)) if not args else args[0]
                inferred = (infer_output_shapes(_layer, [tuple(hidden.shape)])
                            if isinstance(hidden, keras.KerasTensor) else None)
                if not inferred or len(inferred) != 1:
                    raise
                return keras.KerasTensor(inferred[0], dtype=_layer.compute_dtype)
            tensors = [a for a in args if isinstance(a, keras.KerasTensor)]
            if isinstance(out, keras.KerasTensor) and len(tensors) > 1:
                # one output spec for a call that returns several (ESM's rotary layer, called on the queries
                # and the keys, returns both rotated): the handler's inference, when it says so
                inferred = infer_output_shapes(_layer, [tuple(t.shape) for t in tensors])
                if inferred and len(inferred) > 1:
                    return tuple(keras.KerasTensor(shape, dtype=out.dtype) for shape in inferred)
            if isinstance(out, keras.KerasTensor) and None in out.shape[1:] and args:
                # Keras forgets a dimension it could know (EinsumDense's partial output_shape): code that
                # reads ops.shape() of the result would bake that None into its operations
                inferred = infer_output_shapes(_layer, [tuple(args[0].shape)])
                if inferred:
                    shape = tuple(o if o is not None else n for o, n in zip(out.shape, inferred[0]))
                    out = keras.KerasTensor(shape, dtype=out.dtype)
            return _none_to_placeholder(out, placeholders)

        object.__setattr__(layer, "compute_output_spec", lenient)
        patched.append(layer)
    try:
        yield placeholders
    finally:
        for layer in patched:
            object.__delattr__(layer, "compute_output_spec")


def symbolic_kwargs(layer, kwargs):
    """``kwargs`` for calling ``layer`` on symbolic tensors: None-valued arguments its ``compute_output_spec``
    does not declare are dropped (keras_hub's CachedMultiHeadAttention records ``cache=None`` when read
    through its decoder; called again with it, Keras refuses the call)."""
    try:
        parameters = inspect.signature(layer.compute_output_spec).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in parameters or v is not None}
