"""Tensor bookkeeping shared by the structural tools: which tensor each layer call reads and writes.

:class:`~morphsparse.graph.ChannelGraph` flattens nested models into one list of layer calls, but a call's
``node`` still refers to the tensors of the (inner) functional model it lives in. To evaluate or rebuild the
flattened network we need one name per tensor across nesting levels; :class:`TensorIndex` walks the model in
exactly the order ``analyze`` does and gives every tensor a key: ``("input", i)`` for the i-th network input and
``(k, j)`` for output j of the k-th call in ``graph.calls``. An inner model's inputs are aliases of the tensors
fed to it, its outputs aliases of the tensors it returns; a layer read through its call (``graph.traces``) is
walked like an inner model.
"""

from __future__ import annotations

from collections import defaultdict

from morphsparse.graph import GraphError, _functional_of, _is_nested_model


class TensorIndex:
    """Keys of the tensors every call of a :class:`ChannelGraph` reads and writes.

    ``inputs_of[k]`` / ``outputs_of[k]``: tensor keys of ``graph.calls[k]``; ``readers[key]``: (call index,
    input position) of every call reading the tensor; ``producer_of[key]``: the index of the call writing it;
    ``model_inputs`` / ``model_outputs``: keys of the network's inputs and outputs.
    """

    def __init__(self, graph):
        self.graph = graph
        self.index_of = {id(call): k for k, call in enumerate(graph.calls)}
        self.inputs_of, self.outputs_of = {}, {}
        self.readers = defaultdict(list)
        self.producer_of = {}
        functional = _functional_of(graph.model)

        input_calls = [k for k, call in enumerate(graph.calls) if call.node is None]
        self.model_inputs = []
        for position, k in enumerate(input_calls):
            key = ("input", position)
            self.inputs_of[k], self.outputs_of[k] = [], [key]
            self.producer_of[key] = k
            self.model_inputs.append(key)
        pending = iter([k for k, call in enumerate(graph.calls) if call.node is not None])

        def walk(fmodel, input_keys):
            alias = {id(t): key for t, key in zip(fmodel.inputs, input_keys)}
            for depth in sorted(fmodel._nodes_by_depth, reverse=True):
                for node in fmodel._nodes_by_depth[depth]:
                    op = node.operation
                    if op is None or node.is_input:
                        continue
                    if any(id(t) not in alias for t in node.input_tensors):
                        continue
                    in_keys = [alias[id(t)] for t in node.input_tensors]
                    traced = graph.traces.get(id(node))
                    if traced is not None:
                        trace = traced[1]
                        out_keys = trace.outer_values(walk(trace.model, trace.input_maps(in_keys)),
                                                      len(node.outputs))
                    elif _is_nested_model(op):
                        out_keys = walk(_functional_of(op), in_keys)
                    else:
                        k = next(pending)
                        if graph.calls[k].node is not node:
                            raise GraphError("the channel graph is out of date with the model; analyse it again")
                        out_keys = [(k, j) for j in range(len(node.outputs))]
                        self.inputs_of[k], self.outputs_of[k] = in_keys, out_keys
                        for position, key in enumerate(in_keys):
                            self.readers[key].append((k, position))
                        for key in out_keys:
                            self.producer_of[key] = k
                    for t, key in zip(node.outputs, out_keys):
                        if key is not None:
                            alias[id(t)] = key
            return [alias[id(t)] for t in fmodel.outputs]

        self.model_outputs = walk(functional, self.model_inputs)

    def tensor_dict(self, k, values):
        """``{id(input KerasTensor of call k's node): value}`` for ``node.arguments.fill_in``."""
        node = self.graph.calls[k].node
        return {id(t): values[key] for t, key in zip(node.input_tensors, self.inputs_of[k])}

    def arguments(self, k, values):
        """(args, kwargs) of call k with its input tensors replaced by ``values[key]``."""
        return self.graph.calls[k].node.arguments.fill_in(self.tensor_dict(k, values))

    def followers(self, key):
        """The calls reading tensor ``key``."""
        return [self.graph.calls[k] for k, _ in self.readers.get(key, ())]
