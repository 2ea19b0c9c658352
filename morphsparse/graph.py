"""The channel graph: which channels of a Keras model must be removed together.

``analyze(model)`` walks a built functional or Sequential model (nested models included) in topological order;
a layer with no handler is read through its call (its inner layers and keras.ops calls, see ``trace.py``).
Every channel of every tensor's channel axis gets a *class id*; layer handlers (``handlers.py``) say how classes
flow: producers (Conv, Dense, ...) create new ones, pass-through layers keep them, merges (Add, Multiply, ...)
tie them together. Ties are kept in a union-find, so any pattern of residual adds, concatenations, depthwise
multipliers, grouped convs and Flatten->Dense resolves exactly, channel by channel.

At the end, classes that are tied form one removable channel, and the channels created by producers that share
any channel form one :class:`ChannelGroup`. Every structural feature (costs, regulariser, exporter, expander)
reads the same :class:`ChannelGraph`: for every layer call, the (group, channel) of every entry of each input and
output channel axis, and the tensors it reads and writes (the walk gives every tensor of the flattened network
a key, so producers, readers and chains are questions to the graph, not walks of their own).

The Keras functional internals the graph is read from (a functional model's nodes by depth, a tensor's
history, a layer's node lists) are touched in this module only (section "Keras functional internals").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import keras
import numpy as np

from morphsparse import handlers as _handlers
from morphsparse import keras_internals as _keras
from morphsparse.handlers.ops import UNKNOWN_OP, SealedComposite
from morphsparse.trace import TraceError, symbolic_kwargs, trace_call


class GraphError(ValueError):
    """The model's channel structure cannot be read; the message names the layer and what to do."""


@dataclass(eq=False)
class LayerCall:
    """One call of a layer (or keras.ops operation) in the flattened graph."""

    layer: object
    path: str                      # qualified name: "nested_model/conv1" for layers inside nested models
    node: object
    handler: object
    input_shapes: list
    output_shapes: list
    in_maps: list                  # class ids per input tensor's channel axis (during the walk)
    out_maps: list = field(default_factory=list)
    first_call: bool = True        # False for the 2nd+ call of a shared layer (its weights are counted once)
    # Channel axes inside the layer that no tensor carries (a MultiHeadAttention's heads): names and class ids.
    # The ChannelGraph lists them after the outputs in out_groups / out_channels_idx.
    internal_names: list = field(default_factory=list)
    internal_maps: list = field(default_factory=list)
    # Filled in by ChannelGraph: per tensor, the group id and channel-in-group of each channel-axis entry.
    in_groups: list = field(default_factory=list)
    in_channels: list = field(default_factory=list)
    out_groups: list = field(default_factory=list)
    out_channels_idx: list = field(default_factory=list)
    # The tensors the call reads and writes, as keys of the flattened network (see ChannelGraph's "tensors"
    # queries): ("input", i) for the i-th network input, (k, j) for output j of graph.calls[k].
    index: int = -1                # position in graph.calls
    input_keys: list = field(default_factory=list)
    output_keys: list = field(default_factory=list)

    @property
    def name(self):
        return self.layer.name

    @property
    def n_outputs(self):
        """Number of output tensors (``out_groups`` lists the internal axes after them)."""
        return len(self.output_shapes)

    def internal_index(self, name):
        """Position of internal axis ``name`` in ``out_groups`` / ``out_channels_idx`` / alive_out counts."""
        return self.n_outputs + self.internal_names.index(name)

    def output_channels(self, i=0):
        return _channel_count(self.output_shapes[i])

    def input_channels(self, i=0):
        return _channel_count(self.input_shapes[i])

    def __repr__(self):
        return f"<LayerCall {self.path} ({type(self.layer).__name__})>"


def _channel_count(shape):
    shape = tuple(shape)
    if len(shape) < 2:
        return 1  # one value per example
    return shape[-1]


@dataclass(eq=False)
class ChannelGroup:
    """Channels that live and die together: ``size`` channels, each of which may be removed on its own.

    ``producers`` are the layers whose output channels make up the group (several when a residual Add or a
    channel-wise Multiply ties them); ``consumers`` the layers whose kernels read them; ``layers`` every layer
    with the group on an input or output channel axis. A group is ``removable`` unless a channel of it is
    pinned (network input or output, a layer in ``ignore=``, an opaque layer); ``pinned_by`` says why.
    """

    id: int
    size: int
    producers: list = field(default_factory=list)
    consumers: list = field(default_factory=list)
    layers: list = field(default_factory=list)
    pinned_by: list = field(default_factory=list)
    producer_channels: dict = field(default_factory=dict)   # producer path -> group channel of each output

    @property
    def removable(self):
        return not self.pinned_by

    def describe(self, width=100):
        state = "removable" if self.removable else "pinned: " + "; ".join(sorted(set(self.pinned_by)))[:60]
        lines = [f"G{self.id:<4d} {self.size:>5d} ch  {state}"]
        for label, names in (("producers", self.producers), ("consumers", self.consumers)):
            text = ", ".join(names) if names else "-"
            if len(text) > width:
                text = text[: width - 20] + f"... ({len(names)} in all)"
            lines.append(f"        {label}: {text}")
        return "\n".join(lines)

    def __str__(self):
        return self.describe()


class _UnionFind:
    def __init__(self):
        self.parent = []

    def add(self, n):
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, a):
        parent = self.parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:  # path compression
            parent[a], a = root, parent[a]
        return root

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb

    def roots(self):
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


class _Builder:
    """The state of one walk, handed to handlers: create, tie, consume and pin channel classes."""

    def __init__(self):
        self.classes = _UnionFind()
        self.creators = []            # (call, class ids) in creation order
        self.consumers = []           # (call, class ids)
        self.pins = []                # (class ids, reason)
        self._layer_outputs = {}      # (id(layer), output index) -> class ids, so shared layers share channels
        self._layer_inputs = {}       # (id(layer), slot) -> class ids read by the kernel at the first call

    def new_channels(self, call, n, pinned=False, output=0):
        # A kernel layer called twice (shared weights) emits the same channels at every call.
        key = (id(call.layer), output) if call.handler.produces_channels else None
        if key in self._layer_outputs:
            return self._layer_outputs[key]
        ids = self.classes.add(int(n))
        if key is not None:
            self._layer_outputs[key] = ids
        self.creators.append((call, ids))
        if pinned:
            self.pin(ids, f"{call.path}: " + ("network input" if isinstance(call.layer, keras.layers.InputLayer)
                                               else "fixed channels"))
        return ids

    def tie(self, a, b):
        if len(a) != len(b):
            raise GraphError(f"cannot tie channel axes of different widths {len(a)} and {len(b)}")
        union = self.classes.union
        for x, y in zip(a.tolist(), b.tolist()):
            union(x, y)

    def consume(self, call, ids, slot=0):
        """``call``'s kernel reads channels ``ids``; ``slot`` tells apart the kernels of a layer with several
        (a MultiHeadAttention's query, key and value projections)."""
        key = (id(call.layer), slot)
        previous = self._layer_inputs.get(key)
        if previous is not None and previous is not ids:
            self.tie(previous, ids)   # a shared layer reads the same kernel rows at every call
        else:
            self._layer_inputs[key] = ids
        self.consumers.append((call, ids))

    def internal(self, call, name, ids):
        """Declare a channel axis inside ``call`` that no tensor carries (attention heads)."""
        call.internal_names.append(name)
        call.internal_maps.append(np.asarray(ids))

    def pin(self, ids, reason):
        self.pins.append((np.asarray(ids), reason))

    def error(self, call, message):
        return GraphError(f"layer '{call.path}' ({type(call.layer).__name__}) {message}")


def functional_of(model):
    """The functional graph behind a Functional or Sequential model, or None for a subclassed one."""
    functional = _keras.functional_graph(model)
    if functional is None and isinstance(model, keras.Sequential):
        raise GraphError(
            f"Sequential model '{model.name}' is not built with a known input shape; start it with "
            "keras.Input(shape=...) or call model.build(input_shape) before analysing it.")
    return functional


def input_specs(model):
    """(shape, dtype) of every network input: a functional model's inputs, or the shape a subclassed model
    was built with (its dtype is not recorded: float32)."""
    functional = functional_of(model)
    if functional is not None:
        return [(tuple(t.shape), str(t.dtype)) for t in functional.inputs]
    shape = (model.get_build_config() or {}).get("input_shape") if model.built else None
    if shape is None or not all(isinstance(d, int) or d is None for d in shape):
        raise ValueError(f"model '{model.name}' ({type(model).__name__}) records no single input shape: call it "
                         "on a batch first, or pass the inputs to check it on")
    return [(tuple(shape), "float32")]


def random_inputs(model, batch=2, seed=0):
    """One random array per network input: normal floats, or 0/1 for integer inputs (ids)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for shape, dtype in input_specs(model):
        shape = (batch,) + tuple(shape[1:])
        if None in shape:
            raise ValueError(f"model '{model.name}' has an input of unknown size {shape[1:]}: pass inputs to check "
                             "it on")
        if "int" in dtype:
            arrays.append(rng.integers(0, 2, size=shape).astype(dtype))
        else:
            arrays.append(rng.normal(size=shape).astype(dtype))
    return arrays


def _is_nested_model(op):
    return isinstance(op, keras.Model) and _functional_of_or_none(op) is not None


def _functional_of_or_none(model):
    try:
        return functional_of(model)
    except GraphError:
        return None


def _shape(tensor):
    return tuple(tensor.shape)


class ChannelGraph:
    """The coupled-channel structure of a Keras model; build it with :func:`analyze`.

    Attributes: ``model``, ``calls`` (every :class:`LayerCall` in topological order), ``groups`` (every
    :class:`ChannelGroup`, indexed by id), ``analysis_seconds``. Print it for the group table.

    The graph also records the tensors of the flattened network (nested models and traced composites
    included), each by a key: ``("input", i)`` for the i-th network input, ``(k, j)`` for output j of
    ``calls[k]``. ``model_inputs`` / ``model_outputs`` list the network's; :meth:`inputs_of`,
    :meth:`outputs_of`, :meth:`producer`, :meth:`readers`, :meth:`groups_of` and :meth:`chain` answer the
    questions the structural tools (export, expand, alive masks) ask of them.
    """

    def __init__(self, model, calls, builder, output_maps, seconds_so_far, traces=None,
                 output_keys=()):
        start = time.perf_counter()
        self.model = model
        self.calls = calls
        # id(node) -> (node, Trace) for every layer or nested model read through a trace (see trace.py)
        self.traces = traces or {}
        self._record_tensors(output_keys)
        roots = builder.classes.roots()

        # Producers that share a root class belong to one group: union-find over creators.
        creator_parent = list(range(len(builder.creators)))

        def find(i):
            while creator_parent[i] != i:
                creator_parent[i] = creator_parent[creator_parent[i]]
                i = creator_parent[i]
            return i

        owner_of_root = {}
        for ci, (_, ids) in enumerate(builder.creators):
            for r in np.unique(roots[ids]).tolist():
                other = owner_of_root.setdefault(r, ci)
                if other != ci:
                    a, b = find(other), find(ci)
                    if a != b:
                        creator_parent[max(a, b)] = min(a, b)

        # Number the groups in creation order, and the channels of each group in first-producer order.
        group_of_creator, groups, root_index = {}, [], {}
        for ci, (call, ids) in enumerate(builder.creators):
            head = find(ci)
            if head not in group_of_creator:
                group_of_creator[head] = len(groups)
                groups.append(ChannelGroup(id=len(groups), size=0))
            group = groups[group_of_creator[head]]
            channels = []
            for r in roots[ids].tolist():
                if r not in root_index:
                    root_index[r] = (group.id, group.size)
                    group.size += 1
                channels.append(root_index[r][1])
            if call.path not in group.producers:
                group.producers.append(call.path)
                group.producer_channels[call.path] = np.asarray(channels, dtype=np.int64)
        self.groups = groups
        self._offsets = np.cumsum([0] + [g.size for g in groups])

        root_group = np.full(len(roots), -1, dtype=np.int64)
        root_channel = np.full(len(roots), -1, dtype=np.int64)
        for r, (gid, ch) in root_index.items():
            root_group[r], root_channel[r] = gid, ch
        self._class_group = root_group[roots]
        self._class_channel = root_channel[roots]

        def locate(ids):
            return self._class_group[ids], self._class_channel[ids]

        for call in calls:
            call.in_groups, call.in_channels = [], []
            for m in call.in_maps:
                g, c = locate(m)
                call.in_groups.append(g)
                call.in_channels.append(c)
            call.out_groups, call.out_channels_idx = [], []
            for m in list(call.out_maps) + list(call.internal_maps):
                g, c = locate(m)
                call.out_groups.append(g)
                call.out_channels_idx.append(c)
            for gid in np.unique(np.concatenate(call.in_groups + call.out_groups)).tolist() if (
                    call.in_groups or call.out_groups) else []:
                if call.path not in groups[gid].layers:
                    groups[gid].layers.append(call.path)
        for call, ids in builder.consumers:
            for gid in np.unique(self._class_group[ids]).tolist():
                if call.path not in groups[gid].consumers:
                    groups[gid].consumers.append(call.path)

        for ids, reason in builder.pins:
            for gid in np.unique(self._class_group[ids]).tolist() if len(ids) else []:
                groups[gid].pinned_by.append(reason)
        for path, m in output_maps:
            for gid in np.unique(self._class_group[m]).tolist():
                groups[gid].pinned_by.append(f"{path}: network output")
        self.analysis_seconds = seconds_so_far + time.perf_counter() - start

    def _record_tensors(self, output_keys):
        self._producer, self._readers = {}, {}
        self.model_inputs = []
        for call in self.calls:
            if call.node is None:
                self.model_inputs.extend(call.output_keys)
            for key in call.output_keys:
                self._producer[key] = call
            for key in call.input_keys:
                self._readers.setdefault(key, []).append(call)
        self.model_outputs = list(output_keys)
        # calls no network output depends on (a nested backbone's pooled output that the head never reads):
        # the model runs them, a rebuilt (exported, expanded) network has no reason to
        used, pending = set(), [k for k in self.model_outputs if k in self._producer]
        while pending:
            call = self._producer[pending.pop()]
            if call.index not in used:
                used.add(call.index)
                pending.extend(k for k in call.input_keys if k in self._producer)
        self.unused_calls = [c for c in self.calls if c.index not in used and c.node is not None]

    # --- tensors ------------------------------------------------------------------------------------------
    def _call(self, call):
        return self.calls[call] if isinstance(call, (int, np.integer)) else call

    def inputs_of(self, call):
        """Keys of the tensors ``call`` (a :class:`LayerCall` or its index) reads, in input order."""
        return self._call(call).input_keys

    def outputs_of(self, call):
        """Keys of the tensors ``call`` writes, in output order."""
        return self._call(call).output_keys

    def producer(self, key):
        """The :class:`LayerCall` writing tensor ``key`` (a network input's is its InputLayer call)."""
        return self._producer[key]

    def readers(self, key):
        """The calls reading tensor ``key``, once per input position that reads it; [] for none."""
        return self._readers.get(key, [])

    def groups_of(self, key):
        """(group ids, channel within group) of each entry of tensor ``key``'s channel axis."""
        call = self._producer[key]
        position = call.output_keys.index(key)
        return call.out_groups[position], call.out_channels_idx[position]

    def chain(self, call):
        """The calls that follow ``call`` in single file: the only reader of its first output, then the only
        reader of that call's first output, and so on.

        One rule serves every client: the walk goes on through plain channel-keeping layers (handler exactly
        :class:`~morphsparse.handlers.PassThrough`: activations, dropout, padding, pooling, ...), which
        change neither which channels exist nor their scale per channel; it stops after yielding the first
        call that is anything else (a BatchNormalization, a Multiply, a conv), or before a tensor that has no
        reader or several (then the chain does not lead anywhere on its own). The graph is acyclic, so the
        walk ends."""
        call = self._call(call)
        while call.output_keys:
            readers = self.readers(call.output_keys[0])
            if len(readers) != 1:
                return
            call = readers[0]
            yield call
            if not call.handler.transparent:
                return

    def call_arguments(self, call, values):
        """(args, kwargs) of ``call``'s node with each input tensor replaced by ``values[its key]`` (to run
        the call again on arrays, or on the tensors of a rebuilt model)."""
        call = self._call(call)
        return call.node.arguments.fill_in({id(t): values[key] for t, key in zip(call.node.input_tensors,
                                                                                 call.input_keys)})

    @property
    def input_tensors(self):
        """The model's symbolic input tensors, in ``model_inputs`` order."""
        return list(functional_of(self.model).inputs)

    def pack_inputs(self, values):
        """``values`` (one per network input) nested the way the model takes its inputs."""
        return keras.tree.pack_sequence_as(_keras.input_structure(functional_of(self.model)), list(values))

    def pack_outputs(self, values):
        """``values`` (one per network output) nested the way the model returns its outputs."""
        return keras.tree.pack_sequence_as(_keras.output_structure(functional_of(self.model)), list(values))

    # --- look-ups ---------------------------------------------------------------------------------------
    def calls_of(self, name):
        """Every call of the layer with this path or plain name."""
        found = [c for c in self.calls if c.path == name or c.layer.name == name]
        if not found:
            raise KeyError(f"no layer named '{name}' in model '{self.model.name}'")
        return found

    def output_groups(self, name):
        """Ids of the groups on the output channel axis of layer ``name`` (usually one)."""
        call = self.calls_of(name)[0]
        outs = call.out_groups[:call.n_outputs]
        return sorted(set(np.concatenate(outs).tolist())) if outs else []

    def internal_group(self, name, axis="heads"):
        """The group of internal axis ``axis`` of layer ``name`` (a MultiHeadAttention's heads)."""
        call = self.calls_of(name)[0]
        if axis not in call.internal_names:
            raise KeyError(f"layer '{name}' has no internal axis '{axis}' (it has {call.internal_names})")
        groups = np.unique(call.out_groups[call.internal_index(axis)])
        return self.groups[int(groups[0])]

    def internal_group_ids(self, calls=None):
        """Ids of the groups on an internal axis (a MultiHeadAttention's heads) of ``calls`` (default: every
        call), each once, in the order the calls come: each channel of them is a whole unit of many lanes."""
        ids = [gid for call in (self.calls if calls is None else calls)
               for groups in call.out_groups[call.n_outputs:] for gid in np.unique(groups).tolist()]
        return list(dict.fromkeys(ids))

    def group_of(self, name):
        """The single group on layer ``name``'s output channel axis."""
        ids = self.output_groups(name)
        if len(ids) != 1:
            raise ValueError(f"layer '{name}' has {len(ids)} groups on its output channel axis: {ids}")
        return self.groups[ids[0]]

    @property
    def removable_groups(self):
        return [g for g in self.groups if g.removable]

    # --- alive channels -----------------------------------------------------------------------------------
    def channel_weights(self, alive=None):
        """One float per channel of every group, concatenated in group order: how much of that channel is
        alive. ``alive`` maps a group id (or a producer layer's name) to a boolean mask of the group's
        channels or to an integer count (counts may exceed the group's size, for expansion; every entry then
        weighs count/size). Groups not named are fully alive."""
        weights = np.ones(int(self._offsets[-1]), dtype=np.float64)
        for key, value in (alive or {}).items():
            group = self.resolve_group(key)
            lo, hi = self._offsets[group.id], self._offsets[group.id + 1]
            value = np.asarray(value)
            if value.dtype == bool:
                if value.shape != (group.size,):
                    raise ValueError(f"alive mask for group G{group.id} has shape {value.shape}, expected "
                                     f"({group.size},)")
                weights[lo:hi] = value
            elif value.ndim == 0 and np.issubdtype(value.dtype, np.integer) or (
                    value.ndim == 0 and float(value).is_integer()):
                count = int(value)
                if count < 0:
                    raise ValueError(f"alive count for group G{group.id} must be >= 0, got {count}")
                weights[lo:hi] = count / group.size if group.size else 0.0
            else:
                raise ValueError(f"alive[{key!r}] must be a boolean mask or an integer count, got {value!r}")
        return weights

    @property
    def offsets(self):
        """Where each group's channels start in the group-order concatenation of all channels (one entry
        more than there are groups: the last is the total)."""
        return self._offsets

    def resolve_group(self, key):
        """The :class:`ChannelGroup` named by ``key``: a group, a group id, or a producer layer's name."""
        if isinstance(key, ChannelGroup):
            return key
        if isinstance(key, (int, np.integer)):
            if not 0 <= key < len(self.groups):
                raise KeyError(f"no channel group G{key}; the graph has {len(self.groups)} groups")
            return self.groups[int(key)]
        return self.group_of(key)

    def alive_counts(self, call, weights):
        """(alive entries per input channel axis, per output channel axis) of one call."""
        def count(groups, channels):
            return int(round(float(weights[self._offsets[groups] + channels].sum())))
        return ([count(g, c) for g, c in zip(call.in_groups, call.in_channels)],
                [count(g, c) for g, c in zip(call.out_groups, call.out_channels_idx)])

    def call_costs(self, alive=None, used_only=False):
        """``[(call, macs, params, alive_in, alive_out)]`` for every call, at the widths ``alive`` gives (see
        :meth:`channel_weights`): the one cost model every tool reads (``morphsparse.costs`` reports it). A
        layer called several times has its parameters counted at its first call only. ``used_only``: leave out
        the :attr:`unused_calls` (what a rebuilt network costs)."""
        weights = self.channel_weights(alive)
        rows, counted = [], set()
        unused = {c.index for c in self.unused_calls} if used_only else set()
        for call in self.calls:
            if call.index in unused:
                continue
            alive_in, alive_out = self.alive_counts(call, weights)
            macs = int(call.handler.macs(call, alive_in, alive_out))
            params = 0
            if id(call.layer) not in counted:
                counted.add(id(call.layer))
                params = int(call.handler.params(call, alive_in, alive_out))
            rows.append((call, macs, params, alive_in, alive_out))
        return rows

    # --- printing -----------------------------------------------------------------------------------------
    def summary(self):
        removable = len(self.removable_groups)
        return (f"ChannelGraph of '{self.model.name}': {len(self.calls)} layer calls, {len(self.groups)} channel "
                f"groups ({removable} removable, {sum(g.size for g in self.removable_groups)} removable "
                f"channels), analysed in {self.analysis_seconds:.3f} s")

    def __str__(self):
        return "\n".join([self.summary()] + [g.describe() for g in self.groups])

    def __repr__(self):
        return f"<ChannelGraph '{self.model.name}': {len(self.calls)} calls, {len(self.groups)} groups>"


def _check_ignore(ignore):
    """``ignore`` is a collection of layer names; a bare string would be read letter by letter."""
    if isinstance(ignore, str):
        raise TypeError(f"ignore must be a list of layer names, got the string {ignore!r}; write "
                        f"ignore=[{ignore!r}]")
    try:
        names = list(ignore)
    except TypeError:
        raise TypeError(f"ignore must be a list of layer names, got {type(ignore).__name__}") from None
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"ignore must be a list of layer names (strings), got an entry {name!r} of type "
                            f"{type(name).__name__}")


def analyze(model, ignore=()) -> ChannelGraph:
    """Read the coupled-channel structure of a built Keras 3 functional or Sequential model.

    ``ignore``: names of layers whose output channels must never be removed (in addition to the network's
    inputs and outputs). Layers with no registered handler are read through their call (composite layers made
    of Keras layers and keras.ops). Raises :class:`GraphError` for subclassed top-level models, unbuilt models
    and layers with no handler that cannot be read through (the message names the layer and says how to
    register a handler).
    """
    start = time.perf_counter()
    if isinstance(model, keras.Sequential):
        functional_of(model)  # raises the "not built" error when needed
    _check_ignore(ignore)
    functional = _functional_of_or_none(model)
    if functional is None:
        if isinstance(model, keras.Model):
            raise GraphError(
                f"model '{model.name}' ({type(model).__name__}) is a subclassed keras.Model: its call() is "
                "Python code whose graph cannot be read. Build the same network with the functional API "
                "(keras.Input and layer calls) or keras.Sequential, then analyse that model.")
        raise GraphError(f"analyze() takes a keras.Model, got {type(model).__name__}")

    builder = _Builder()
    calls = []
    seen_layers = set()
    traces = {}
    shapes = {}      # id(tensor) -> its shape where the walk knows it better than Keras (see _refined_shapes)

    def shape_of(t):
        return shapes.get(id(t), _shape(t))

    def walk(fmodel, prefix, input_maps, input_shapes, input_keys):
        # An inner model's (or trace's) inputs are aliases of the tensors fed to it, its outputs aliases of
        # the tensors it returns: every tensor of the flattened network has one key (LayerCall.input_keys).
        tensor_maps = {id(t): m for t, m in zip(fmodel.inputs, input_maps)}
        tensor_keys = {id(t): key for t, key in zip(fmodel.inputs, input_keys)}
        for t, shape in zip(fmodel.inputs, input_shapes):
            if shape != _shape(t):
                shapes[id(t)] = shape
        for node in _keras.nodes_in_order(fmodel):
            op = node.operation
            inputs = node.input_tensors
            if any(id(t) not in tensor_maps for t in inputs):
                continue  # not reachable from these inputs (another call of a shared model)
            in_maps = [tensor_maps[id(t)] for t in inputs]
            in_keys = [tensor_keys[id(t)] for t in inputs]
            in_shapes = [shape_of(t) for t in inputs]
            handler = None if _is_nested_model(op) else _handlers.get_handler(op)
            trace = None
            if _is_nested_model(op):
                inner = functional_of(op)
                if any(_shape(a) != b for a, b in zip(inner.inputs, in_shapes)):
                    # called on more specific shapes (a fixed sequence length): read it at those
                    trace = _trace_or_error(op, node, prefix, inner, in_shapes)
                else:
                    out_maps, out_keys = walk(inner, f"{prefix}{op.name}/", in_maps, in_shapes, in_keys)
                    _carry_shapes(shapes, inner.outputs, node.outputs)
            elif handler is None and _traceable(op):
                trace = _trace_or_error(op, node, prefix, None, in_shapes)
            elif handler is None and isinstance(op, keras.Operation):
                handler = UNKNOWN_OP   # a keras.ops call with no rule: its channels are kept
            if trace is not None and trace.sealed:
                # kept whole, as one pinned call; its inner graph must be readable too (raises if not)
                handler, trace = SealedComposite(trace, _total_macs(analyze(trace.model))), None
            if trace is not None:
                traces[id(node)] = (node, trace)
                out_maps, out_keys = walk(trace.model, f"{prefix}{op.name}/", trace.input_maps(in_maps),
                                          trace.input_maps(in_shapes), trace.input_maps(in_keys))
                _carry_shapes(shapes, trace.model.outputs, [node.outputs[p] for p in trace.output_positions])
                out_maps = trace.outer_values(out_maps, len(node.outputs))
                out_keys = trace.outer_values(out_keys, len(node.outputs))
            elif _is_nested_model(op) and handler is None:
                pass
            else:
                out_shapes = [_shape(t) for t in node.outputs]
                if any(None in s[1:] for s in out_shapes) and all(None not in s[1:] for s in in_shapes):
                    out_shapes = _refined_shapes(op, node, handler, in_shapes, out_shapes)
                    for t, shape in zip(node.outputs, out_shapes):
                        shapes[id(t)] = shape
                out_keys = [(len(calls), j) for j in range(len(node.outputs))]
                call = LayerCall(layer=op, path=prefix + op.name, node=node, handler=handler,
                                 input_shapes=in_shapes, output_shapes=out_shapes, in_maps=in_maps,
                                 first_call=id(op) not in seen_layers, index=len(calls),
                                 input_keys=in_keys, output_keys=out_keys)
                if handler is None:
                    raise GraphError(
                        f"layer '{call.path}' of class {type(op).__module__}.{type(op).__qualname__} has no "
                        "channel handler, so morphsparse cannot tell which of its channels are coupled. "
                        + _REGISTER_HINT.format(name=type(op).__name__))
                for shape in call.output_shapes:
                    if len(shape) >= 2 and shape[-1] is None:
                        raise builder.error(call, "has an output with an unknown channel count; give the "
                                                  "model static channel dimensions")
                seen_layers.add(id(op))
                out_maps = handler.propagate(call, builder)
                if len(out_maps) != len(node.outputs):
                    raise builder.error(call, f"handler returned {len(out_maps)} channel maps for "
                                              f"{len(node.outputs)} outputs")
                for i, m in enumerate(out_maps):
                    if len(m) != call.output_channels(i):
                        raise builder.error(call, f"handler gave {len(m)} channels for output {i} of width "
                                                  f"{call.output_channels(i)}")
                call.out_maps = list(out_maps)
                calls.append(call)
            for t, m, key in zip(node.outputs, out_maps, out_keys):
                if m is not None:   # None: a placeholder for a None the call returned
                    tensor_maps[id(t)] = m
                    tensor_keys[id(t)] = key
        missing = [t for t in fmodel.outputs if id(t) not in tensor_maps]
        if missing:
            raise GraphError(f"model '{fmodel.name}': outputs {[t.name for t in missing]} are not reachable "
                             "from its inputs")
        return [tensor_maps[id(t)] for t in fmodel.outputs], [tensor_keys[id(t)] for t in fmodel.outputs]

    input_maps, input_keys = [], []
    for position, tensor in enumerate(functional.inputs):
        layer = _keras.operation_of(tensor)
        call = LayerCall(layer=layer, path=layer.name, node=None, handler=_handlers.get_handler(layer),
                         input_shapes=[], output_shapes=[_shape(tensor)], in_maps=[], index=len(calls),
                         output_keys=[("input", position)])
        call.out_maps = call.handler.propagate(call, builder)
        calls.append(call)
        input_maps.append(call.out_maps[0])
        input_keys.append(("input", position))
    output_maps, output_keys = walk(functional, "", input_maps, [_shape(t) for t in functional.inputs],
                                    input_keys)
    output_names = [_keras.operation_of(t).name for t in functional.outputs]

    known = {c.path for c in calls} | {c.layer.name for c in calls}
    for name in ignore:
        if name not in known:
            raise GraphError(f"ignore= names layer '{name}', which is not in model '{model.name}'; "
                             f"layer names look like {sorted(known)[:5]}")
        for call in calls:
            if call.path == name or call.layer.name == name:
                for m in call.out_maps:
                    builder.pin(m, f"{call.path}: ignore=")

    return ChannelGraph(model, calls, builder, list(zip(output_names, output_maps)),
                        time.perf_counter() - start, traces, output_keys)


_REGISTER_HINT = ("Register one before analysing, e.g. morphsparse.register_handler({name}, "
                  "morphsparse.handlers.PassThrough()) if it keeps channels, handlers.Merge() if it combines "
                  "inputs element-wise, or handlers.Opaque() to keep its channels fixed.")


def _carry_shapes(shapes, inner_outputs, outer_outputs):
    """The outer tensors of a nested or traced call take the (refined) shapes of the inner outputs."""
    for inner, outer in zip(inner_outputs, outer_outputs):
        shape = shapes.get(id(inner), _shape(inner))
        if shape != _shape(outer):
            shapes[id(outer)] = tuple(a if a is not None else b for a, b in zip(shape, _shape(outer)))


def _refined_shapes(op, node, handler, in_shapes, out_shapes):
    """Output shapes of a call whose symbolic outputs lost a dimension its inputs have (an EinsumDense built
    with ``output_shape=(None, heads, size)`` forgets the sequence length): the operation's output spec on
    inputs of the known shapes, or the handler's own inference. Dimensions still unknown stay None."""
    fresh = {id(t): keras.KerasTensor(shape, dtype=t.dtype) for t, shape in zip(node.input_tensors, in_shapes)}
    refined = out_shapes
    try:
        args, kwargs = node.arguments.fill_in(fresh)
        spec = op.compute_output_spec(*args, **symbolic_kwargs(op, kwargs))
        refined = [_merge_shape(tuple(t.shape), old) for t, old in zip(keras.tree.flatten(spec), out_shapes)]
    except Exception:   # an operation that cannot say: keep what Keras recorded
        pass
    if any(None in s[1:] for s in refined):
        inferred = handler.infer_output_shapes(op, in_shapes)
        if inferred is not None:
            refined = [_merge_shape(tuple(new), old) for new, old in zip(inferred, refined)]
    return refined


def _merge_shape(new, old):
    if len(new) != len(old):
        return old
    return tuple(o if o is not None else n for n, o in zip(new, old))


def _infer_output_shapes(layer, in_shapes):
    handler = _handlers.get_handler(layer)
    return None if handler is None else handler.infer_output_shapes(layer, in_shapes)


def _total_macs(graph):
    """Multiply-accumulates of a whole graph at full width (what ``morphsparse.costs.count_macs`` counts)."""
    return sum(macs for _, macs, _, _, _ in graph.call_costs())


def _traceable(op):
    """Layers (not bare keras.ops operations) with no handler are read through their call."""
    return isinstance(op, keras.layers.Layer) and not isinstance(op, keras.layers.InputLayer)


def _trace_or_error(op, node, prefix, functional=None, input_shapes=None):
    try:
        return trace_call(op, node, functional, input_shapes, _infer_output_shapes)
    except TraceError as err:
        kind = "model" if functional is not None else "layer"
        raise GraphError(
            f"{kind} '{prefix}{op.name}' of class {type(op).__module__}.{type(op).__qualname__} has no channel "
            f"handler and cannot be read through its call: {err}. "
            + _REGISTER_HINT.format(name=type(op).__name__)) from None
