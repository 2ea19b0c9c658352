"""Which channels of a model are alive: the regularisation vectors and alive masks of its channel groups.

Every removable channel group of the channel graph gets one value per channel (its *regularisation vector* R)
read from the model's current weights, and a channel is alive when R > threshold (MorphNet, reference 2.1):

* ``source="gamma"``: R = |gamma| of the BatchNormalization that follows each channel source (a Conv, Dense,
  SeparableConv or DepthwiseConv; a chain of channel-keeping layers such as an activation may sit between).
  A source with no BatchNormalization after it is not regularised and does not vote (MorphNet does the same),
  so a group whose sources all lack one has no vector and stays alive.
* ``source="group_lasso"``: R = (1 - l1_fraction) * sqrt(mean(w**2)) + l1_fraction * mean(|w|) over the
  weights feeding each output channel of every source's kernel (the mean, not the sum, so one threshold fits
  layers of any fan-in).
* ``source="zeros"``: R = max |w| over the same weights, with no threshold: a channel dies exactly when every
  weight feeding it is zero. This is the end of sparse training: a neuron whose whole mask column is off (SRigL's
  neuron ablation, ``ms.FanIn(ablation=True)``, or any mask that empties a column) is removed physically, and the
  export folds the constant it still emits (act(bias)) into the layers that read it, so outputs are unchanged.

A group with several sources (a residual Add ties the last conv of every block of a stage) takes the
elementwise max of their vectors, so a channel is alive when any source keeps it (logical OR).

The pieces are public so a regulariser can reuse them on differentiable tensors: :func:`find_sources` lists
(group, layer, weight, channel map) once, and :func:`channel_norms` works with numpy or keras.ops.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import keras
import numpy as np

from morphsparse import handlers as _handlers
from morphsparse.graph import ChannelGraph, GraphError, analyze

SOURCES = ("gamma", "group_lasso", "zeros")
DEFAULT_THRESHOLD = 1e-2


class AliveError(ValueError):
    """A threshold or mask that would remove channels that must stay (the message says which and why)."""


@dataclass(eq=False)
class RegularizationSource:
    """One weight that decides whether channels of a group live.

    ``producer``: the layer call creating the channels; ``layer``: the call holding ``weight`` (the following
    BatchNormalization in gamma mode, the producer itself in group-lasso mode); ``channels[j]``: the group
    channel of entry j of the weight's output axis (depthwise multipliers map several entries to one channel).
    """

    group: int
    kind: str
    producer: object
    layer: object
    weight: object
    channels: np.ndarray
    axis: int = 0     # the producer's output axis (past its outputs: an internal axis, attention heads)

    def values(self, l1_fraction=0.0, xp=np):
        """R for every entry of the weight's output axis (numpy, or a keras.ops tensor when ``xp`` is ops)."""
        if self.kind == "gamma":
            gamma = keras.ops.convert_to_numpy(self.weight) if xp is np else self.weight
            return xp.abs(gamma)
        handler = self.producer.handler
        matrix = (handler.kernel_matrix(self.producer, xp) if self.axis == 0
                  else handler.axis_matrix(self.producer, self.axis, xp))
        return xp.max(xp.abs(matrix), axis=0) if self.kind == "zeros" else channel_norms(matrix, l1_fraction, xp)


def channel_norms(matrix, l1_fraction=0.0, xp=np):
    """Group-lasso norm of each column of a (fan-in, outputs) kernel matrix:
    (1 - l1_fraction) * sqrt(mean(w**2)) + l1_fraction * mean(|w|)."""
    check_l1_fraction(l1_fraction)
    value = 0.0
    if l1_fraction < 1.0:
        value = (1.0 - l1_fraction) * xp.sqrt(xp.mean(xp.square(matrix), axis=0))
    if l1_fraction > 0.0:
        value = value + l1_fraction * xp.mean(xp.abs(matrix), axis=0)
    return value


def _graph(model_or_graph):
    if isinstance(model_or_graph, ChannelGraph):
        return model_or_graph
    if isinstance(model_or_graph, keras.Model):
        return analyze(model_or_graph)
    raise TypeError(f"expected a keras.Model or a ChannelGraph, got {type(model_or_graph).__name__}")


def _check_source(source):
    if not isinstance(source, str):
        raise TypeError(f"source must be a string, one of {SOURCES}; got {type(source).__name__} {source!r}")
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; use one of {SOURCES}")


# --- argument checks shared by alive_masks, export, structure files and the regulariser -------------------

def real_number(name, value):
    """``value`` as a float, or a TypeError naming the argument: a string such as "0.01" read from a config
    file would otherwise fail deep inside numpy with a message about ufuncs and casting rules."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def resolve_threshold(source, threshold):
    """The threshold a call uses: None means DEFAULT_THRESHOLD, or 0 for ``source="zeros"``, which takes no
    other value (it removes exactly the channels whose weights are all zero)."""
    if source == "zeros":
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)
                                      or float(threshold) != 0.0):
            raise ValueError(f"source='zeros' removes exactly the channels whose weights are all zero and takes no "
                             f"threshold; got threshold={threshold!r} (leave it out, or use "
                             "source='group_lasso' with a threshold)")
        return 0.0
    return check_threshold(DEFAULT_THRESHOLD if threshold is None else threshold)


def check_round_to(round_to, error=ValueError):
    """``round_to`` is None or a positive whole number of channels (2.5 channels has no meaning); else
    ``error`` naming it. Shared by export and expand."""
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, numbers.Integral)
                                 or round_to < 1):
        raise error(f"round_to must be a positive integer or None, got {round_to!r}")
    return round_to


def check_threshold(threshold):
    """A threshold is a finite number >= 0 (R is a norm or |gamma|, never negative)."""
    if threshold is None:
        raise TypeError("threshold must be a number, got None")
    value = real_number("threshold", threshold)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    return value


def check_l1_fraction(l1_fraction, source="group_lasso"):
    """l1_fraction mixes L1 into the group-lasso norm, so it is a number in [0, 1] and only means something
    for ``source="group_lasso"`` (with gamma it would be ignored without a word)."""
    value = real_number("l1_fraction", l1_fraction)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"l1_fraction must be in [0, 1], got {l1_fraction!r}")
    if value and source != "group_lasso":
        raise ValueError(f"l1_fraction applies to source='group_lasso' only (got source={source!r}); leave it "
                         "at 0 or switch the source")
    return value


def warn_user(message, category=UserWarning):
    """Warn at the user's own line: the first caller outside morphsparse. The same check is reached at
    different depths (export -> alive_masks, save_structure -> structure_of -> alive_masks), so no fixed
    stacklevel points at the right place."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


class Report:
    """Base of the export, expand and prune reports: one prints as its :meth:`summary`."""

    def __str__(self):
        return self.summary()


def widths_table(title, widths, column):
    """``{name: (before, after)}`` channel counts as a table, the names cut to ``column`` characters."""
    lines = [f"{title:{column}s} {'before':>8s} {'after':>8s}"]
    lines += [f"{name[:column]:{column}s} {before:8d} {after:8d}" for name, (before, after) in widths.items()]
    return "\n".join(lines)


def is_channel_source(call):
    """True for calls whose weights decide which of their output channels live (kernel layers)."""
    return call.handler.kernel_layer and call.first_call


def following_batch_norm(graph, call, with_scale=True):
    """The BatchNormalization that alone reads ``call``'s output, directly or through a chain of single
    channel-keeping layers (``graph.chain``). None when any other layer reads the output on the way: gamma
    then does not silence the channel everywhere (DenseNet's transition conv also feeds a concatenation)."""
    for reader in graph.chain(call):
        if isinstance(reader.layer, keras.layers.BatchNormalization):
            return reader if _normalises_channels(reader) and (reader.layer.scale or not with_scale) else None
    return None


def _normalises_channels(call):
    axis = call.layer.axis
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    rank = len(call.input_shapes[0])
    return [a % rank for a in axes] == [rank - 1]


def find_sources(model_or_graph, source="gamma"):
    """Every :class:`RegularizationSource` of the model for ``source`` ("gamma" or "group_lasso")."""
    _check_source(source)
    graph = _graph(model_or_graph)
    found = []
    for call in graph.calls:
        if not is_channel_source(call) or not call.out_groups:
            continue
        for axis in call.handler.regularized_axes(call):
            groups, channels = call.out_groups[axis], call.out_channels_idx[axis]
            if len(set(groups.tolist())) != 1:
                continue  # a producer always starts one group; anything else is not ours to regularise
            gid = int(groups[0])
            if source == "gamma":
                bn = following_batch_norm(graph, call) if axis == 0 else None
                if bn is None:
                    continue
                found.append(RegularizationSource(gid, source, call, bn, bn.layer.gamma, channels))
            else:
                found.append(RegularizationSource(gid, source, call, call, None, channels, axis))
    return found


def group_vectors(model_or_graph, source="gamma", l1_fraction=0.0, sources=None):
    """``{group id: R}`` for every group with at least one regularisation source (removable or not).

    R has one float per channel of the group: the max over the group's sources. Channels no source covers
    get +inf (they can never die).
    """
    graph = _graph(model_or_graph)
    sources = find_sources(graph, source) if sources is None else sources
    vectors = {}
    for src in sources:
        size = graph.groups[src.group].size
        vector = vectors.setdefault(src.group, np.full(size, -np.inf))
        np.maximum.at(vector, src.channels, np.asarray(src.values(l1_fraction), dtype=np.float64))
    for vector in vectors.values():
        vector[np.isneginf(vector)] = np.inf
    return vectors


def alive_masks(model_or_graph, source="gamma", threshold=None, l1_fraction=0.0, check=True,
                propagate=True):
    """``{group id: boolean mask}`` for every group of the channel graph.

    A channel of a removable group is alive when its regularisation value exceeds ``threshold`` (None:
    DEFAULT_THRESHOLD, or 0 for ``source="zeros"``); groups
    that are not removable (network inputs and outputs, ``ignore=`` layers, opaque layers) and groups with no
    regularisation source are all alive. With ``check`` (the default) an :class:`AliveError` is raised when
    the threshold kills every channel of a non-removable group, or leaves no live path from the network's
    inputs to an output. With ``propagate`` (the default) channels computed only by layers that read no live
    channel are dead too (:func:`propagated_masks`), so these masks price exactly what :func:`export` keeps.
    """
    _check_source(source)
    threshold = resolve_threshold(source, threshold)
    check_l1_fraction(l1_fraction, source)
    graph = _graph(model_or_graph)
    vectors = group_vectors(graph, source, l1_fraction)
    _warn_if_source_removes_nothing(graph, source, vectors)
    masks = {}
    for group in graph.groups:
        vector = vectors.get(group.id)
        if vector is None:
            masks[group.id] = np.ones(group.size, dtype=bool)
            continue
        alive = vector > threshold
        if not group.removable:
            if not alive.any() and check:
                raise AliveError(
                    f"threshold {threshold} kills every channel of group G{group.id} (max {source} value "
                    f"{vector.max():.3g}), which cannot be removed ({'; '.join(sorted(set(group.pinned_by)))}). "
                    "Lower the threshold, or check that the regulariser did not collapse the network.")
            alive = np.ones(group.size, dtype=bool)
        masks[group.id] = alive
    for gid in keep_one_groups(graph):
        if gid in vectors and not masks[gid].any():
            masks[gid][int(np.argmax(vectors[gid]))] = True
    if check:
        check_connected(graph, masks)
    if propagate:
        masks = propagated_masks(graph, masks)
    return masks


def keep_one_groups(graph):
    """Ids of the removable groups that must keep at least one channel: the internal axes of layers whose
    handler has ``keeps_one_internal`` (a MultiHeadAttention with no head cannot be rebuilt). When the
    threshold kills all of such a group, the alive masks (and the regulariser's in-graph alive count) keep
    its channel with the largest R, so the cost they report is what export can deliver."""
    return [gid for gid in graph.internal_group_ids([c for c in graph.calls if c.handler.keeps_one_internal])
            if graph.groups[gid].removable]


def _warn_if_source_removes_nothing(graph, source, vectors):
    """Warn when the model has removable channels but none of them has a ``source`` value: every mask is
    then all-alive whatever the weights, and export would return an unchanged copy without a word (the
    regulariser refuses the same model outright)."""
    removable = [g for g in graph.groups if g.removable and g.size]
    if not removable or any(graph.groups[gid].removable for gid in vectors):
        return
    if source == "gamma":
        hint = ("no channel has a gamma source (a BatchNormalization with scale=True right after the "
                "Conv/Dense creating it). For a network without BatchNorm use source=\"group_lasso\"")
    else:
        hint = (f"no removable channel has a {source} source (a Conv/Dense kernel creating it alone). Pick "
                "the channels yourself with alive=")
    warn_user(f"source={source!r} can never remove anything from model '{graph.model.name}': {hint}. Every "
              f"channel of its {len(removable)} removable group(s) stays alive.")


def user_masks(graph, alive, check=True):
    """``{group id: mask}`` from a user's ``alive=`` mapping (group id or producer layer name -> boolean mask
    of the group's channels); groups it does not name are alive. Errors name the ``alive`` entry. With
    ``check``, masks that remove channels of a non-removable group or cut every input from an output raise
    :class:`AliveError` (what export needs; a structure file may record them as they are)."""
    if not isinstance(alive, Mapping):
        raise TypeError(f"alive must be a mapping of group id or producer layer name -> boolean mask, got "
                        f"{type(alive).__name__}")
    masks = {g.id: np.ones(g.size, bool) for g in graph.groups}
    for key, value in alive.items():
        try:
            group = graph.resolve_group(key)
        except (KeyError, ValueError) as err:
            raise ValueError(f"alive[{key!r}]: {err.args[0]}; use a group id or the name of a layer creating "
                             f"channels (see ms.analyze(model))") from None
        value = np.asarray(value)
        if value.dtype != bool or value.shape != (group.size,):
            raise ValueError(f"alive[{key!r}] must be a boolean mask of shape ({group.size},), got "
                             f"{value.dtype} of shape {value.shape}")
        if check and not group.removable and not value.all():
            raise AliveError(f"alive[{key!r}] removes channels of group G{group.id}, which cannot be "
                             f"removed ({'; '.join(sorted(set(group.pinned_by)))})")
        masks[group.id] = value.copy()
    if check:
        check_connected(graph, masks)
    return masks


def rounded_masks(graph, masks, multiple, vectors=None):
    """``masks`` with dead channels revived, strongest first (by ``vectors``, else lowest index), until every
    removable channel group keeps a multiple of ``multiple`` channels or all of them. Kernels run faster at
    such widths (oneDNN and XNNPACK block channels by 8 or 16). A group that dies whole stays dead, and internal
    axes (attention heads) are left as they are. A revived channel computes what it did in the full model."""
    return _revived(graph, masks, vectors, lambda alive, size: -(-alive // multiple) * multiple)


def _revived(graph, masks, vectors, wanted):
    """``masks`` with the strongest dead channels of every removable group that keeps any revived until it keeps
    ``wanted(alive, size)`` of them (at most all)."""
    internal = set(graph.internal_group_ids())
    vectors = vectors or {}
    revived = {}
    for gid, mask in masks.items():
        mask = np.asarray(mask, bool).copy()
        alive = int(mask.sum())
        if graph.groups[gid].removable and gid not in internal and 0 < alive < mask.size:
            target = min(mask.size, wanted(alive, mask.size))
            dead = np.flatnonzero(~mask)
            strength = np.asarray(vectors.get(gid, np.zeros(mask.size)), np.float64)[dead]
            mask[dead[np.argsort(-strength, kind="stable")[:max(0, target - alive)]]] = True
        revived[gid] = mask
    return revived


#: every group keeps at least this fraction of its channels after ``ms.export`` and ``ms.prune`` (a group that
#: dies whole, a residual branch or a tower, still goes): a chain cut to a channel or two is an information
#: bottleneck that retraining does not repair (benchmarks/structure_quality.py)
DEFAULT_MIN_WIDTH = 0.2
#: a group left under this fraction of its channels (or one channel of eight or more) is reported by a warning
COLLAPSE_FRACTION = 0.1


def check_min_width(min_width):
    """``min_width`` as a float in [0, 1), or an error naming it."""
    value = real_number("min_width", min_width)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"min_width must be a fraction in [0, 1) of each group's channels, got {min_width!r}")
    return value


def floor_width(size, min_width):
    """The fewest channels a group of ``size`` keeps under ``min_width`` (at least one)."""
    return max(1, math.ceil(min_width * size - 1e-9))


def floored_masks(graph, masks, min_width, vectors=None):
    """``masks`` with dead channels revived, strongest first (by ``vectors``), until every removable group that
    keeps any channel keeps :func:`floor_width` of them; a group that dies whole stays dead, and internal axes
    (attention heads) are left as they are. A revived channel computes what it did in the full model."""
    return _revived(graph, masks, vectors, lambda alive, size: max(alive, floor_width(size, min_width)))


def collapsed_groups(graph, masks):
    """``["producers (before -> after)"]`` for every removable group left under :data:`COLLAPSE_FRACTION` of
    its channels, or at one channel of eight or more (a group removed whole is not collapsed)."""
    return [f"{', '.join(graph.groups[gid].producers)} ({graph.groups[gid].size} -> {int(np.sum(mask))})"
            for gid, mask in masks.items()
            if graph.groups[gid].removable and is_collapsed(graph.groups[gid].size, int(np.sum(mask)))]


def is_collapsed(before, after):
    """A group cut from ``before`` to ``after`` channels is collapsed (removed whole is not)."""
    return 0 < after < before and (after < COLLAPSE_FRACTION * before or (after == 1 and before >= 8))


def warn_collapsed(what, collapsed, min_width):
    if collapsed:
        warn_user(f"{what} left {len(collapsed)} layer(s) collapsed to under {COLLAPSE_FRACTION:.0%} of their "
                  f"channels or to one: {', '.join(collapsed[:5])}{' ...' if len(collapsed) > 5 else ''}; raise "
                  f"min_width= (now {min_width!r}) to keep a floor in every layer")


def propagated_masks(graph, masks):
    """``masks`` less the channels no surviving layer computes: a layer that reads no live channel is
    removed by export (a residual branch or a tower that died upstream), so its own channels die too unless
    another producer of their group lives. Non-removable groups stay whole."""
    live, _, _ = live_entries(graph, masks)
    effective = effective_masks(graph, live)
    return {gid: (effective[gid] if graph.groups[gid].removable else np.ones(graph.groups[gid].size, bool))
            for gid in masks}


def check_connected(graph, masks):
    """Raise :class:`AliveError` when, with these masks, some network output no longer depends on any input
    (a chain of layers whose channels all died: the model would emit a constant)."""
    flat = flat_mask(graph, masks)
    signal = {key: True for key in graph.model_inputs}
    for call in graph.calls:
        if call.node is None:
            continue
        carried = [signal.get(key, False) and bool(entry_mask(graph, flat, groups, channels).any())
                   for key, groups, channels in zip(call.input_keys, call.in_groups, call.in_channels)]
        for key, groups, channels in zip(call.output_keys, call.out_groups, call.out_channels_idx):
            signal[key] = any(carried) and bool(entry_mask(graph, flat, groups, channels).any())
    cut = [graph.producer(key).path for key in graph.model_outputs if not signal.get(key)]
    if cut:
        raise AliveError(
            f"with these alive channels no input reaches output(s) {cut}: every channel of some layer on each "
            "path died, so the exported model would be a constant. Lower the threshold or the regulariser "
            "strength.")


def flat_mask(graph, masks):
    """The masks of all groups concatenated in group order (groups not in ``masks`` are alive)."""
    return np.concatenate([np.asarray(masks.get(g.id, np.ones(g.size, bool)), dtype=bool)
                           for g in graph.groups] or [np.zeros(0, bool)])


def entry_mask(graph, flat, groups, channels):
    """Alive flag of each entry of a channel axis given its (group, channel) arrays and a :func:`flat_mask`."""
    return flat[graph.offsets[groups] + channels]


def live_entries(graph, masks):
    """Surviving entries of every tensor's channel axis, and the calls that disappear.

    Returns ``(live, removed, dead_ends)``: ``live[key]`` a boolean array per tensor key of the graph (see
    :class:`~morphsparse.graph.ChannelGraph`); ``removed`` the call indices that disappear: those whose
    outputs are all constant (nothing they read survives) and the ``dead_ends``, whose outputs no surviving
    layer reads.
    """
    flat = flat_mask(graph, masks)
    live, removed = {}, set()
    for k, call in enumerate(graph.calls):
        out_alive = [entry_mask(graph, flat, g, c) for g, c in zip(call.out_groups, call.out_channels_idx)]
        if call.node is None:
            outs = [np.ones(call.output_channels(0), bool)]
        else:
            in_live = [live[key] for key in call.input_keys]
            try:
                outs = _handlers.rebuild_part(call.handler).live_outputs(call, in_live, out_alive)
            except ValueError as err:
                raise ValueError(f"cannot export layer '{call.path}' ({type(call.layer).__name__}): {err}") from None
        if outs is None:
            removed.add(k)
            outs = [np.zeros(call.output_channels(i), bool) for i in range(len(call.output_shapes))]
        for key, mask in zip(call.output_keys, outs):
            live[key] = np.asarray(mask, bool)
        for j in range(call.n_outputs, len(out_alive)):   # internal axes (attention heads): alive if kept
            live[(k, "internal", j)] = out_alive[j] & (k not in removed)
    # Dead ends: a layer whose outputs reach no output through surviving layers (the depthwise conv at the
    # head of a ConvNeXt branch whose MLP died) is dropped by the functional rebuild too.
    outputs = set(graph.model_outputs)
    needed = set()
    for k in range(len(graph.calls) - 1, -1, -1):
        if k in removed or graph.calls[k].node is None:
            continue
        if any(key in outputs or any(r.index in needed for r in graph.readers(key))
               for key in graph.outputs_of(k) if live[key].any()):
            needed.add(k)
    dead_ends = {k for k, call in enumerate(graph.calls) if call.node is not None and k not in removed
                 and k not in needed}
    for k in dead_ends:
        for key in graph.outputs_of(k) + internal_keys(graph, k):
            live[key] = np.zeros(len(live[key]), bool)
    return live, removed | dead_ends, dead_ends


def internal_keys(graph, k):
    """Keys in ``live`` of the internal axes (attention heads) of call k, in ``out_groups`` order."""
    call = graph.calls[k]
    return [(k, "internal", j) for j in range(call.n_outputs, len(call.out_groups))]


def effective_masks(graph, live):
    """Group masks of the channels that survive somewhere in the slim model (a channel of a group that is
    alive but only read by removed layers is not)."""
    masks = {g.id: np.zeros(g.size, bool) for g in graph.groups}
    for k, call in enumerate(graph.calls):
        for key, groups, channels in zip(call.output_keys + internal_keys(graph, k), call.out_groups,
                                         call.out_channels_idx):
            keep = live[key]
            for gid in np.unique(groups[keep]).tolist():
                masks[gid][channels[keep & (groups == gid)]] = True
    return masks


def alive_counts(masks):
    """``{group id: number of alive channels}``."""
    return {gid: int(np.count_nonzero(mask)) for gid, mask in masks.items()}


__all__ = ["SOURCES", "DEFAULT_THRESHOLD", "AliveError", "keep_one_groups", "RegularizationSource", "channel_norms",
           "find_sources", "group_vectors", "resolve_threshold", "alive_masks", "rounded_masks", "check_connected", "alive_counts",
           "is_channel_source", "flat_mask", "entry_mask", "live_entries", "effective_masks",
           "propagated_masks", "user_masks", "check_threshold", "check_round_to", "check_min_width", "floored_masks",
           "collapsed_groups", "is_collapsed", "warn_collapsed", "floor_width", "DEFAULT_MIN_WIDTH", "check_l1_fraction", "real_number",
           "warn_user", "GraphError"]
