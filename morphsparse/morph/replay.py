"""Deprecated: the channel graph records its tensors itself.

``ChannelGraph`` gives every tensor of the flattened network a key while it is analysed and answers the
questions this module's :class:`TensorIndex` used to (``graph.inputs_of(call)``, ``graph.outputs_of(call)``,
``graph.producer(key)``, ``graph.readers(key)``, ``graph.model_inputs`` / ``graph.model_outputs``). The class
below is a view over those queries, kept for code written against it.
"""

from __future__ import annotations

import warnings


class TensorIndex:
    """Deprecated view of a :class:`~morphsparse.graph.ChannelGraph`'s tensor queries, with the old
    attribute names (call indices where the graph gives calls)."""

    def __init__(self, graph):
        warnings.warn("morphsparse.morph.replay.TensorIndex is deprecated: ask the ChannelGraph itself "
                      "(graph.inputs_of, graph.outputs_of, graph.producer, graph.readers)", DeprecationWarning,
                      stacklevel=2)
        self.graph = graph
        self.index_of = {id(call): call.index for call in graph.calls}
        self.inputs_of = {call.index: call.input_keys for call in graph.calls}
        self.outputs_of = {call.index: call.output_keys for call in graph.calls}
        self.producer_of = {key: call.index for call in graph.calls for key in call.output_keys}
        self.readers = {}
        for call in graph.calls:
            for position, key in enumerate(call.input_keys):
                self.readers.setdefault(key, []).append((call.index, position))
        self.model_inputs, self.model_outputs = graph.model_inputs, graph.model_outputs

    def arguments(self, k, values):
        return self.graph.call_arguments(k, values)

    def followers(self, key):
        return self.graph.readers(key)
