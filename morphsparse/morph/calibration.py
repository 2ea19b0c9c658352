"""Channel and head importance from calibration data, for pruning without retraining:
``ms.prune(model, budget, importance="wanda" | "flap", data=inputs)``.

Every removable unit u (a channel of a group, or a head of an attention layer) adds a contribution c_u to each
output entry o of every kernel layer that reads it. Two scores summarise that contribution over the calibration
inputs (every example and position):

* ``"wanda"``, the structured Wanda of Wanda-sp (An et al. 2024): the sum over o of RMS(c_{u,o}). For a channel j
  that a layer reads with kernel rows W[j, :], c_{j,o} = x_j W[j, o], so the score is RMS(x_j) * sum_o |W[j, o]|:
  the weights that read the channel, weighted by how large the channel is.
* ``"flap"``, FLAP's fluctuation metric (An et al., AAAI 2024): the sum over o of Var(c_{u,o}), for a channel
  Var(x_j) * sum_o W[j, o]^2: what is lost when the unit is replaced by its mean. :func:`~morphsparse.prune`
  then folds that mean into the reader's bias (bias compensation, through the export's constant folding), so a
  removed channel costs only its fluctuation.

Channels are measured where their readers read them: a gated FFN's intermediate channel is act(gate_j) * up_j
as the down projection sees it. Heads and the other internal axes (grouped-query key/value heads, the width
inside experts) are carried by no tensor; their contribution is measured by running the layer again with the
unit's weights set to zero (the handler's ``axis_weights``): c_u = y - y without u, exactly, since a head adds
its part to the output projection's sum. Rows for spatial kernels are the kernel summed over its positions
(what a constant input adds), an approximation there; for Dense and EinsumDense readers they are exact.
"""

from __future__ import annotations

import keras
import numpy as np

from morphsparse import handlers as _handlers
from morphsparse.morph.export import apply_call, run_calls

CALIBRATION_IMPORTANCES = ("wanda", "flap")


class _Moments:
    """Running first and second moments of each entry of the last axis, over every other axis."""

    def __init__(self):
        self.count, self.total, self.squares = 0, 0.0, 0.0

    def add(self, values):
        values = np.asarray(values, np.float64)
        flat = values.reshape(-1, values.shape[-1]) if values.ndim else values.reshape(1, 1)
        self.count += flat.shape[0]
        self.total = self.total + flat.sum(axis=0)
        self.squares = self.squares + np.square(flat).sum(axis=0)

    @property
    def mean(self):
        return self.total / max(self.count, 1)

    def score(self, kind):
        """Per entry: RMS for "wanda", variance for "flap"."""
        second = self.squares / max(self.count, 1)
        return np.sqrt(second) if kind == "wanda" else np.maximum(second - np.square(self.mean), 0.0)


def _reads_removable(graph, groups):
    return any(graph.groups[int(g)].removable for g in np.unique(groups))


def _scored_axes(graph, call):
    """``[(out_groups position, axis_weights)]`` of the call's removable internal axes its handler can zero."""
    axes = []
    for name in call.internal_names:
        index = call.internal_index(name)
        if not _reads_removable(graph, call.out_groups[index]):
            continue
        weights = call.handler.axis_weights(call, index)
        if weights:
            axes.append((index, weights))
    return axes


def _without_unit(graph, call, data, weights, mask):
    """Output 0 of ``call`` with the weights of the units in ``mask`` set to zero (restored afterwards)."""
    saved = []
    try:
        for variable, axis, entries in weights:
            old = keras.ops.convert_to_numpy(variable)
            saved.append((variable, old))
            new = old.copy()
            index = [slice(None)] * old.ndim
            index[axis] = np.asarray(entries(mask), bool)
            new[tuple(index)] = 0
            variable.assign(new)
        return keras.ops.convert_to_numpy(keras.tree.flatten(apply_call(graph, call, data))[0])
    finally:
        for variable, old in reversed(saved):
            variable.assign(old)


class CalibrationStatistics:
    """What the calibration inputs showed: the moments of every input entry of every kernel call that reads a
    removable group (``inputs[(call index, input index)]``), and of every unit's contribution on the internal
    axes (``units[(call index, axis position)][unit]``)."""

    def __init__(self, graph, batches):
        self.graph, self.inputs, self.units, self.batches = graph, {}, {}, 0
        for arrays in batches:
            run_calls(graph, arrays, self._observe)
            self.batches += 1
        if not self.batches:
            raise ValueError("data= gave no batch to calibrate on")

    def _observe(self, call, data):
        graph = self.graph
        if not call.handler.kernel_layer:
            return
        for i, key in enumerate(call.input_keys):
            if i < len(call.in_groups) and _reads_removable(graph, call.in_groups[i]):
                self.inputs.setdefault((call.index, i), _Moments()).add(data[key])
        axes = _scored_axes(graph, call)
        if not axes:
            return
        full = keras.ops.convert_to_numpy(keras.tree.flatten(apply_call(graph, call, data))[0])
        for index, weights in axes:
            units = len(call.out_channels_idx[index])
            moments = self.units.setdefault((call.index, index), [_Moments() for _ in range(units)])
            for u in range(units):
                mask = np.zeros(units, bool)
                mask[u] = True
                moments[u].add(full - _without_unit(graph, call, data, weights, mask))

    def scores(self, kind):
        """Flat per-channel score of ``kind`` ("wanda" or "flap"); nan where no kernel reads the channel."""
        graph = self.graph
        offsets = graph.offsets
        total = np.zeros(int(offsets[-1]))
        seen = np.zeros(int(offsets[-1]), bool)

        def add(groups, channels, values):
            index = offsets[np.asarray(groups)] + np.asarray(channels)
            np.add.at(total, index, values)
            seen[index] = True

        for (k, i), moments in self.inputs.items():
            call = graph.calls[k]
            rows = self._rows(call) if i == 0 else None
            if rows is None or rows.shape[0] != len(call.in_groups[i]):
                continue
            reach = np.abs(rows).sum(axis=1) if kind == "wanda" else np.square(rows).sum(axis=1)
            add(call.in_groups[i], call.in_channels[i], moments.score(kind) * reach)
        for (k, index), moments in self.units.items():
            call = graph.calls[k]
            add(call.out_groups[index], call.out_channels_idx[index],
                np.array([m.score(kind).sum() for m in moments]))
        total[~seen] = np.nan
        return total

    def _rows(self, call):
        weights = [keras.ops.convert_to_numpy(w) for w in call.layer.weights]
        return _handlers.rebuild_part(call.handler).input_rows(call, weights)

    def means(self):
        """``{(call index, input index): mean of every entry}``: what a removed entry is replaced by (bias
        compensation), in the form :func:`morphsparse.morph.export.export_with_report` takes."""
        return {key: moments.mean for key, moments in self.inputs.items()}


def input_arrays(graph, x):
    """One array per network input (``graph.model_inputs`` order) from ``x`` nested as the model takes it."""
    arrays = [np.asarray(a) for a in keras.tree.flatten(x)]
    if len(arrays) != len(graph.model_inputs):
        raise ValueError(f"calibration inputs have {len(arrays)} arrays; model '{graph.model.name}' takes "
                         f"{len(graph.model_inputs)}")
    return arrays


__all__ = ["CalibrationStatistics", "CALIBRATION_IMPORTANCES", "input_arrays"]
