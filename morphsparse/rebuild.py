"""The rebuild engine: a new functional model made call by call from a channel graph.

Export (a slim copy with the surviving weights) and expand (a freshly initialised copy at new widths) both
rebuild the network the same way: new inputs of the same shapes, then every call of ``graph.calls`` in
topological order on the new tensors, nested models flattened (an inner layer is named ``outer__inner``),
shared layers kept shared, and a model with the original's input and output structure. They differ only in
what one call becomes, which the client passes as ``build(call, rebuild)``, and in the width each output must
have, ``width(call, position)``; :func:`rebuild` does the rest and checks the widths.
"""

from __future__ import annotations

import keras
import numpy as np

from morphsparse import handlers as _handlers
from morphsparse.graph import GraphError
from morphsparse.handlers import layer_config, rebuild_part
from morphsparse.trace import symbolic_kwargs


class Rebuild:
    """One rebuild in progress: the new tensor of each tensor key built so far (``tensors``), and the new
    layer of each original layer (a layer called twice is rebuilt once, so its weights stay shared)."""

    def __init__(self, graph, error=GraphError):
        self.graph, self.error = graph, error
        self.tensors = {}
        self._layers = {}

    def inputs(self, call):
        """The new tensors ``call`` reads, in input order (None for a tensor the new model does not have)."""
        return [self.tensors.get(key) for key in call.input_keys]

    def arguments(self, call, substitute=None):
        """(args, kwargs) of ``call``'s original node with the new tensors in place; a missing input is
        replaced by ``substitute(its position)``."""
        values = {}
        for position, key in enumerate(call.input_keys):
            value = self.tensors.get(key)
            if value is None and substitute is not None:
                value = substitute(position)
            values[key] = value
        return self.graph.call_arguments(call, values)

    def new_layer(self, call, config=None):
        """The rebuilt layer of ``call``: the class its handler rebuilds it as (``rebuild_class``, its own by
        default) made from ``config`` (default: the layer's own config), named after the call's path; the one
        made at the first call of a shared layer at later calls."""
        layer = call.layer
        if id(layer) not in self._layers:
            config = dict(layer_config(layer) if config is None else config)
            config.pop("build_config", None)
            config["name"] = call.path.replace("/", "__")
            cls = rebuild_part(call.handler).rebuild_class(call) if call.handler is not None else type(layer)
            self._layers[id(layer)] = layer_from_config(layer, config, cls)
        return self._layers[id(layer)]


def rebuild(graph, build, width, name, skip=frozenset(), error=GraphError):
    """A new ``keras.Model`` made from ``graph`` call by call.

    ``build(call, rebuild)`` returns the new output tensor(s) of one call (``rebuild`` is the
    :class:`Rebuild` in progress: new input tensors, arguments, layers); ``width(call, position)`` is the
    number of channels output ``position`` must have; calls whose index is in ``skip`` are left out (nothing
    that is rebuilt may read them). Failures are raised as ``error``, naming the layer.
    """
    state = Rebuild(graph, error)
    new_inputs = [keras.Input(batch_shape=tuple(tensor.shape), dtype=tensor.dtype, name=graph.producer(key).name)
                  for key, tensor in zip(graph.model_inputs, graph.input_tensors)]
    state.tensors.update(zip(graph.model_inputs, new_inputs))
    for call in graph.calls:
        if call.node is None or call.index in skip:
            continue
        try:
            outputs = build(call, state)
        except (error, GraphError):
            raise
        except Exception as err:  # the layer's class decides what it accepts; say which one failed
            raise error(f"cannot rebuild layer '{call.path}' ({type(call.layer).__name__}): {err}") from err
        for position, (key, tensor) in enumerate(zip(call.output_keys, keras.tree.flatten(outputs))):
            if tensor is None:
                continue
            expected = width(call, position)
            if len(tensor.shape) > 1 and tensor.shape[-1] not in (None, expected):
                raise error(f"layer '{call.path}' ({type(call.layer).__name__}) was rebuilt with "
                            f"{tensor.shape[-1]} output channels instead of {expected}; register a handler "
                            "whose rebuild_config sets its width")
            state.tensors[key] = tensor
    missing = [graph.producer(key).path for key in graph.model_outputs if key not in state.tensors]
    if missing:
        raise error(f"network output(s) {missing} are not computed by the rebuilt model")
    outputs = [state.tensors[key] for key in graph.model_outputs]
    return keras.Model(graph.pack_inputs(new_inputs), graph.pack_outputs(outputs), name=name)


def layer_from_config(layer, config, cls=None):
    """A new layer of ``cls`` (default: ``layer``'s class) from ``config``. A layer without weights whose class cannot read its own
    config back (keras_hub 0.32's LlamaRotaryEmbedding passes ``scaling_factor`` twice) is used as it is when
    nothing in its config changed: it holds no state, so the new model may share it."""
    cls = type(layer) if cls is None else cls
    try:
        return cls.from_config(config)
    except Exception:
        unchanged = {k: v for k, v in config.items() if k != "name"} == {
            k: v for k, v in layer_config(layer).items() if k not in ("name", "build_config")}
        if layer.weights or not unchanged or cls is not type(layer):
            raise
        return layer


def build_at_widths(model, graph, counts, name=None, error=GraphError):
    """A freshly initialised copy of ``model`` whose removable groups have ``counts[group id]`` channels
    (groups not in ``counts`` keep their size). Layers get their new widths from their handler's
    ``rebuild_config``; nested models are flattened (inner layer names become ``outer__inner``). Failures
    are raised as ``error``, naming the layer. (``ms.expand`` and ``ms.profile_latency`` build with it.)"""
    factor = np.ones(len(graph.groups))
    for gid, count in counts.items():
        factor[gid] = count / graph.groups[gid].size

    def width(groups):
        # every channel of a group appears equally often in a tensor (tiling, depth multipliers), so each
        # group's share is a whole number of channels; a concatenation is the sum of its inputs' shares
        ids, entries = np.unique(groups, return_counts=True)
        return int(sum(round(n * factor[g]) for g, n in zip(ids.tolist(), entries.tolist())))

    def build(call, engine):
        # handlers describe a call's new widths as masks over its entries: every entry of a new width is kept
        keep_in = [np.ones(width(g), bool) for g in call.in_groups]
        keep_out = [np.ones(width(g), bool) for g in call.out_groups]
        args, kwargs = engine.arguments(call)
        rules = _handlers.rebuild_part(call.handler)
        try:
            if isinstance(call.layer, keras.layers.Layer):
                layer = engine.new_layer(call, rules.rebuild_config(call, keep_in, keep_out))
                return layer(*args, **symbolic_kwargs(layer, kwargs))
            # a keras.ops call: its handler re-applies it (a reshape or slice names channel positions)
            return rules.apply_op(call, args, kwargs, lambda i, lo, hi: width(call.in_groups[i][lo:hi]))
        except Exception as err:  # the layer's class decides what it accepts; say which one failed
            raise error(f"cannot rebuild layer '{call.path}' ({type(call.layer).__name__}) with "
                              f"{[len(m) for m in keep_in]} input and {[len(m) for m in keep_out]} output "
                              f"channels: {err}. Register a handler whose rebuild_config sets its width.") from err

    return rebuild(graph, build, lambda call, position: width(call.out_groups[position]), name or model.name,
                   error=error)


__all__ = ["rebuild", "Rebuild", "layer_from_config", "build_at_widths"]
