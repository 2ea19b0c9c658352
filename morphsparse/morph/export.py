"""Slim export: rebuild a model without its dead channels, as an ordinary Keras model.

``export(model)`` reads which channels are alive (``alive.py``), then

1. works out, tensor by tensor, which channel-axis entries survive (:func:`live_entries`): dead group channels
   go everywhere; a layer that reads no surviving entry disappears (a residual branch whose channels all died,
   a concat tower with no live channel), and its output is a constant;
2. runs the original layers once on two random probe inputs with the dead channels set to what they carry
   once dead (act(beta) behind a BatchNorm, act(bias) for a zeroed kernel), to learn the value every removed
   entry has where a layer reads it (:class:`Probe`);
3. rebuilds the graph call by call with narrower layers (each layer's handler says how: new config, weight
   slices, see ``handlers.py``), folding the constants of removed inputs into the next bias (or into the
   moving mean of the BatchNorm after a bias-free conv), and merging constant branches into the surviving
   path with a keras.ops add/multiply.

The fold is exact for Dense layers and 1x1 or 'valid' convolutions. A spatial 'same' convolution sees zeros
beyond the image border where the constant channel would have had its value, so there the slim model differs
at border pixels; ``exact=True`` keeps such channels instead (no fold of a non-zero constant through a
padded spatial kernel). Channels read by a layer that normalises across channels (LayerNormalization,
GroupNormalization, UnitNormalization, Softmax) are always kept: removing one would change the statistics of
the others. Channels that turn out not to be constant (a gamma-regularised channel multiplied by an
unregularised one, say) are kept too. The report lists every such decision.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import keras
import numpy as np

from morphsparse import handlers as _handlers
from morphsparse.checks import flag
from morphsparse.costs import BUDGET_TARGETS, check_target, count_flops, count_params, resolve_budget
from morphsparse.graph import GraphError, analyze, random_inputs
from morphsparse.morph import alive as _alive
from morphsparse import rebuild as _rebuild

#: relative tolerance for "the same value" when deciding whether a removed entry is constant
CONSTANT_RTOL = 1e-5
#: export(exact=True) checks the slim model's outputs against the original's to this relative tolerance
EXACT_RTOL = 1e-5


class ExportError(GraphError):
    """The model cannot be exported as asked; the message names the layer and the reason."""


# --- the probe -----------------------------------------------------------------------------------------

@dataclass
class EntryValues:
    """What the removed entries of one input of one call carry: ``value`` (one number per removed entry, at
    the centre of the image), ``varies`` (differs between probe examples: not a constant at all) and
    ``uniform`` (the same at every position)."""

    removed: np.ndarray          # boolean mask over the input's channel axis
    value: np.ndarray
    varies: np.ndarray
    uniform: np.ndarray


def run_calls(graph, arrays, before=None, forced=None):
    """Run ``graph``'s calls eagerly, one by one, on ``arrays`` (one per network input). ``before(call, data)``
    sees every call with ``data`` (tensor key -> numpy value) holding its inputs; ``forced``: per call index,
    ``(output position, entries, value)`` written over the call's outputs (dead channels). Values nobody reads
    any more are freed as the walk goes. Shared by the export's probe and the calibration statistics."""
    data = dict(zip(graph.model_inputs, arrays))
    readers_left = Counter(key for call in graph.calls for key in call.input_keys)
    for k, call in enumerate(graph.calls):
        if call.node is None:
            continue
        if before is not None:
            before(call, data)
        outputs = [keras.ops.convert_to_numpy(t) for t in keras.tree.flatten(apply_call(graph, call, data))]
        for position, entries, value in (forced or {}).get(k, ()):
            outputs[position][..., entries] = value[entries]
        for key, value in zip(call.output_keys, outputs):
            data[key] = value
        for key in call.input_keys:
            readers_left[key] -= 1
            if readers_left[key] == 0 and key not in graph.model_outputs:
                data.pop(key, None)
    return data


def apply_call(graph, call, data):
    """The outputs of one call run again on ``data`` (tensor key -> value)."""
    args, kwargs = graph.call_arguments(call, data)
    if isinstance(call.layer, keras.layers.Layer):
        return call.layer(*args, **kwargs)
    # a keras.ops call, as its handler applies it (a traced reshape may read (None, ...))
    return _handlers.rebuild_part(call.handler).apply_op(call, args, kwargs, lambda i, lo, hi: hi - lo)


class Probe:
    """Runs the original layers eagerly on random inputs, with dead channels forced to their dead value, and
    records the values of removed entries where they are read."""

    def __init__(self, graph, forced, live, batch=2, seed=0):
        self.values = {}

        def record(call, data):
            for i, key in enumerate(call.input_keys):
                removed = ~live[key]
                if removed.any():
                    self.values[(call.index, i)] = _entry_values(data[key], removed)
        run_calls(graph, random_inputs(graph.model, batch, seed), record, forced)

    def at(self, k, i):
        return self.values.get((k, i))

    def replace(self, removed_values):
        """Removed entries carry ``removed_values[(call index, input)]`` (full-width) where that call reads
        them, by decision (prune's bias compensation: their mean on calibration data), not by probing."""
        for key, full in removed_values.items():
            values = self.values.get(key)
            if values is not None:
                if len(full) != len(values.removed):
                    raise ExportError(f"removed_values[{key!r}] has {len(full)} entries; that input has "
                                      f"{len(values.removed)}")
                values.value = np.asarray(full, np.float64)[values.removed]
                values.varies[:] = False
                values.uniform[:] = True


def _outputs(model, arrays):
    out = model(keras.tree.pack_sequence_as(model.input, list(arrays)), training=False)
    return [keras.ops.convert_to_numpy(t).astype(np.float64) for t in keras.tree.flatten(out)]


def check_equivalent(model, slim, rtol=1e-5, seed=7):
    """Compare the slim model with the original on random inputs (inference mode). Returns the largest
    output difference relative to the output scale, and that of the original itself when its input moves
    by one part in a million (float32 rounding alone moves a deep net with random statistics that much)."""
    arrays = random_inputs(model, batch=2, seed=seed)
    want, got = _outputs(model, arrays), _outputs(slim, arrays)
    nudged = _outputs(model, [a * (1 + 1e-6) if a.dtype.kind == "f" else a for a in arrays])
    scale = max(max(float(np.abs(w).max()) for w in want), 1e-12)
    diff = max(float(np.abs(w - g).max()) for w, g in zip(want, got))
    noise = max(float(np.abs(w - n).max()) for w, n in zip(want, nudged))
    return diff / scale, noise / scale


def _entry_values(array, removed):
    array = np.asarray(array, dtype=np.float64)
    picked = array[..., removed]                       # (batch, *spatial, n)
    tol = CONSTANT_RTOL * (1.0 + np.abs(picked).max(initial=0.0))
    flat = picked.reshape(picked.shape[0], -1, picked.shape[-1])
    varies = np.abs(flat - flat[:1]).max(axis=(0, 1)) > tol
    centre = flat[0, flat.shape[1] // 2]
    uniform = np.abs(flat[0] - centre).max(axis=0) <= tol
    return EntryValues(removed, centre, varies, uniform)


def _forced_values(graph, sources, masks):
    """Per call index: (output position, entries, value) to overwrite: the dead channels of every source."""
    flat = _alive.flat_mask(graph, masks)
    forced = {}
    for src in sources:
        call, layer = src.layer, src.layer.layer
        dead = ~_alive.entry_mask(graph, flat, call.out_groups[0], call.out_channels_idx[0])
        dead &= call.out_groups[0] == src.group
        if not dead.any():
            continue
        if src.kind == "gamma":
            offset = layer.beta if getattr(layer, "center", True) else None
        else:
            offset = getattr(layer, "bias", None) if getattr(layer, "use_bias", False) else None
        value = (keras.ops.convert_to_numpy(offset) if offset is not None
                 else np.zeros(call.output_channels(0), "float32"))
        activation = getattr(layer, "activation", None)
        if src.kind != "gamma" and activation is not None:
            value = keras.ops.convert_to_numpy(activation(keras.ops.convert_to_tensor(value)))
        forced.setdefault(call.index, []).append((0, dead, np.asarray(value)))
    return forced


# --- the report ----------------------------------------------------------------------------------------

@dataclass
class LayerWidths:
    path: str
    class_name: str
    in_before: list
    in_after: list
    out_before: list
    out_after: list
    status: str            # "kept", "narrowed" or "removed"
    # out_before / out_after list the output tensors' widths, then the internal axes' (attention heads)


@dataclass
class ExportReport(_alive.Report):
    """What :func:`export` did. ``masks``: alive masks used (after channels kept for exactness);
    ``effective_masks``: channels present in the slim model; the slim model costs
    ``count_flops(model, alive=report.effective_masks)`` less the layers in ``dead_ends``; ``kept``: (group, channel, reason) of dead
    channels kept; ``inexact``: (layer, channels, reason) of folds that are not exact at image borders."""

    model_name: str
    source: str
    threshold: float
    exact: bool
    masks: dict
    effective_masks: dict     # see the class docstring
    layers: list = field(default_factory=list)
    kept: list = field(default_factory=list)
    inexact: list = field(default_factory=list)
    folded: int = 0
    flops_before: int = 0
    flops_after: int = 0
    params_before: int = 0
    params_after: int = 0
    seconds: float = 0.0
    packages: dict = field(default_factory=dict)   # see loading_packages

    @property
    def removed_anything(self):
        """True when the slim model is smaller than the original (some layer narrowed or removed)."""
        return any(row.status != "kept" for row in self.layers)

    @property
    def removed_layers(self):
        """Layers the slim model does not have: those that read no live channel and the dead ends."""
        return [row.path for row in self.layers if row.status in ("removed", "dead end")]

    @property
    def dead_ends(self):
        """Layers dropped because nothing that survives reads their output (their channels may be alive
        elsewhere, so ``count_flops(model, alive=masks)`` still counts them)."""
        return [row.path for row in self.layers if row.status == "dead end"]

    def summary(self):
        narrowed = sum(row.status == "narrowed" for row in self.layers)
        return (f"export of '{self.model_name}': {self.flops_before:,d} -> {self.flops_after:,d} FLOPs "
                f"(x{self.flops_after / max(self.flops_before, 1):.3f}), {self.params_before:,d} -> "
                f"{self.params_after:,d} params; {narrowed} layers narrowed, {len(self.removed_layers)} removed, "
                f"{self.folded} constant folds ({len(self.inexact)} inexact at borders), {len(self.kept)} dead "
                f"channels kept; {self.seconds:.2f} s"
                + (f"; loading it needs {_packages_text(self.packages)}" if self.packages else ""))

    def table(self, only_changed=True):
        lines = [f"{'layer':44s} {'class':20s} {'in before->after':>18s} {'out before->after':>18s}  status"]
        for row in self.layers:
            if only_changed and row.status == "kept":
                continue
            ins = f"{'+'.join(map(str, row.in_before))}->{'+'.join(map(str, row.in_after))}"
            outs = f"{'+'.join(map(str, row.out_before))}->{'+'.join(map(str, row.out_after))}"
            lines.append(f"{row.path[:44]:44s} {row.class_name[:20]:20s} {ins[:18]:>18s} {outs[:18]:>18s}  "
                         f"{row.status}")
        return "\n".join(lines)


# --- the rebuild ---------------------------------------------------------------------------------------

class RebuildStep:
    """One layer call being rebuilt: all a handler's ``rebuild`` sees of the export (it reaches nothing
    else). ``inputs``: the new tensors (None for an input with no surviving entry); ``keep_in`` /
    ``keep_out`` / ``keep_internal``: surviving entries of each input, output and internal axis; ``probe``:
    :class:`EntryValues` of each input's removed entries (None when nothing was removed); methods to make the
    new layer, call it, set its weights and fold constants."""

    def __init__(self, exporter, engine, call):
        self._exporter, self._engine, self.call, self.k = exporter, engine, call, call.index
        self.inputs = engine.inputs(call)
        self.keep_in = [exporter.live[key] for key in self.call.input_keys]
        self.keep_out = [exporter.live[key] for key in self.call.output_keys]
        # internal channel axes (attention heads): which of their channels the rebuilt layer keeps
        self.keep_internal = [exporter.live[key] for key in _alive.internal_keys(exporter.graph, call.index)]
        self.probe = [exporter.probe.at(call.index, i) for i in range(len(self.inputs))]

    def new_count(self, i, lo, hi):
        """How many of the original entries ``lo:hi`` of input i's channel axis survive."""
        return int(np.sum(self.keep_in[i][lo:hi]))

    def constant_of(self, i):
        """Input i (which has no surviving entry) as a numpy constant over the output's surviving entries
        (broadcast over batch and space), for merging it into the surviving path."""
        values = self.probe[i]
        if values is None:
            raise ExportError(f"layer '{self.call.path}': input {i} has no recorded value")
        full = np.zeros(len(values.removed))
        full[values.removed] = values.value
        if values.varies.any():
            raise ExportError(f"layer '{self.call.path}': input {i} has no live channel but is not constant")
        if not values.uniform.all():
            self._exporter.report.inexact.append((self.call.path, int((~values.uniform).sum()),
                                                 "constant branch differs at the image border"))
        if len(full) == len(self.keep_out[0]):
            full = full[self.keep_out[0]]
        return full.astype("float32")

    def arguments(self, substitute=None):
        """(args, kwargs) of the original call with the new tensors in place (removed inputs replaced by
        ``substitute(i)``)."""
        return self._engine.arguments(self.call, substitute)

    def new_layer(self, config=None):
        return self._engine.new_layer(self.call, config)

    def old_weights(self):
        return [keras.ops.convert_to_numpy(w) for w in self.call.layer.weights]

    def fold_constants(self, handler, old_weights):
        """What the removed constant inputs of this kernel layer add to each of its outputs (full width), or
        None when they add nothing; notes folds that are not exact at image borders."""
        values = self.probe[0]
        if values is None:
            return None
        constants = np.zeros(len(values.removed))
        constants[values.removed] = values.value
        if not constants.any():
            return None
        delta = handler.bias_shift(self.call, values.removed, constants, old_weights)
        if delta is None:
            return None
        report = self._exporter.report
        self.note_fold()
        nonzero = values.value != 0
        border = (~values.uniform) | (nonzero & (not handler.fold_exact(self.call)))
        if border.any():
            report.inexact.append((self.call.path, int(border.sum()),
                                   "constant channels folded through a padded spatial kernel"))
        return np.asarray(delta, dtype=np.float64)

    def fold_into_bias(self, config, weights, delta):
        """Add ``delta`` (per original output entry) to the bias. A bias-free layer whose only reader is a
        BatchNormalization shifts that BN's moving mean instead (BN(y + d) with mean m = BN(y) with mean
        m - d); any other bias-free layer gets a bias."""
        layer, keep = self.call.layer, self.keep_out[0]
        weights = list(weights)
        if getattr(layer, "use_bias", False) and getattr(layer, "bias", None) is not None:
            position = _weight_position(layer, layer.bias)
            weights[position] = (weights[position] + delta[keep]).astype(weights[position].dtype)
            return weights
        exporter = self._exporter
        readers = exporter.graph.readers(self.call.output_keys[0])
        if len(readers) == 1 and readers[0].index not in exporter.removed and isinstance(
                readers[0].layer, keras.layers.BatchNormalization):
            shift = exporter.pending_mean_shift.setdefault(readers[0].index, np.zeros(len(keep)))
            shift += delta
            return weights
        config["use_bias"] = True
        weights.append(delta[keep].astype("float32"))
        return weights

    def note_fold(self):
        """Count a constant folded into a bias by the handler itself (the report says how many)."""
        self._exporter.report.folded += 1

    def set_weights(self, layer, arrays):
        shift = self._exporter.pending_mean_shift.get(self.k)
        if shift is not None:
            arrays = list(arrays)
            position = _weight_position(self.call.layer, self.call.layer.moving_mean)
            arrays[position] = (arrays[position] - shift[self.keep_in[0]]).astype(arrays[position].dtype)
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(a.shape) for a in arrays]
        if expected != got:
            raise ExportError(f"layer '{self.call.path}': sliced weights {got} do not fit the rebuilt layer "
                              f"{expected}; its handler's slice_weights/rebuild_config disagree")
        layer.set_weights(arrays)


class _Exporter:
    def __init__(self, model, graph, masks, sources, exact, name, report, removed_values=None):
        self.model, self.graph, self.exact, self.name = model, graph, exact, name
        self.removed_values = removed_values or {}
        self.masks = {gid: np.array(m, bool) for gid, m in masks.items()}
        self.sources, self.report = sources, report
        self.pending_mean_shift = {}   # BN call index -> shift of its moving mean (bias folded past a conv)
        self.before_forcing = self._between_sources_and_their_batch_norms()

    def _between_sources_and_their_batch_norms(self):
        """Calls from a gamma source's producer to its BatchNorm (excluded): a dead channel there still
        carries the producer's signal, which the BatchNorm then multiplies by gamma ~ 0."""
        calls = set()
        for src in self.sources:
            if src.layer is src.producer:
                continue
            for reader in self.graph.chain(src.producer):   # the chain the source was found along
                calls.add(reader.index)
                if reader is src.layer:
                    break
        return calls

    # 1-2: surviving entries and probe values, keeping channels whose removal would not be exact
    def settle(self):
        for _ in range(8):
            try:
                self.live, self.removed, self.dead_ends = _alive.live_entries(self.graph, self.masks)
            except ValueError as err:
                raise ExportError(str(err)) from None
            forced = _forced_values(self.graph, self.sources, self.masks)
            self.probe = Probe(self.graph, forced, self.live)
            self.probe.replace(self.removed_values)
            if not self._keep_what_must_stay():
                return
        raise ExportError("could not settle which channels to keep (8 rounds); please report this model")

    def _keep_what_must_stay(self):
        """Bring back dead channels whose removal would change the output; True if any came back."""
        changed, unresolved = False, []
        flat = _alive.flat_mask(self.graph, self.masks)
        for (k, i), values in self.probe.values.items():
            call = self.graph.calls[k]
            if k in self.before_forcing or k in self.dead_ends or (
                    k in self.removed and not call.handler.kernel_layer):
                continue
            if k in self.removed and not any(_alive.entry_mask(self.graph, flat, g, c).any()
                                             for g, c in zip(call.out_groups, call.out_channels_idx)):
                continue   # every output channel is dead: what this layer reads does not matter
            normalises = _normalises_across_channels(call)
            # Removed values matter only where they are folded (kernel layers), merged in as a constant (an
            # input with no live entry) or normalised with live channels; elsewhere they just flow on
            # (0 * gate is constant even though the gate is not).
            folds = call.handler.kernel_layer and not call.handler.reads_channels_separately(call)
            merged_constant = values.removed.all() and k not in self.removed
            if not (folds or normalises or merged_constant):
                continue
            groups, channels = call.in_groups[i], call.in_channels[i]
            removed = np.flatnonzero(values.removed)
            reasons = {}
            for j, entry in enumerate(removed.tolist()):
                if values.varies[j]:
                    reasons[entry] = "not constant (depends on the input)"
                elif normalises:
                    reasons[entry] = f"normalised together with other channels by {type(call.layer).__name__}"
                elif folds and self.exact and (not values.uniform[j] or (
                        not call.handler.fold_exact(call) and abs(values.value[j]) > 0.0)):
                    reasons[entry] = "exact=True: constant would cross a padded spatial kernel"
                elif merged_constant and self.exact and not values.uniform[j]:
                    reasons[entry] = "exact=True: constant branch differs at the image border"
            for entry, reason in reasons.items():
                gid, ch = int(groups[entry]), int(channels[entry])
                if not self.masks[gid][ch]:
                    self.masks[gid][ch] = True
                    self.report.kept.append((gid, ch, f"{call.path}: {reason}"))
                    changed = True
                elif self._feed_starved(call.input_keys[i], f"{call.path}: {reason}"):
                    changed = True   # alive, but removed because what computes it starved: feed it again
                elif reason.startswith("not constant"):
                    unresolved.append(call.path)
        if unresolved and not changed:
            # entries removed only because their layer starved, yet not constant: nothing left to bring back
            raise ExportError(f"layer '{unresolved[0]}': a removed input channel is not constant; this model "
                              "cannot be exported exactly (please report it)")
        return changed

    def _feed_starved(self, key, reason):
        """Tensor ``key`` lost entries whose channels are alive because the layers computing them read no
        live channel (a tower starved by a dead layer upstream). Bring back the dead channels those layers
        read, up the chain; True if any came back."""
        flat = _alive.flat_mask(self.graph, self.masks)
        pending, seen, changed = [key], set(), False
        while pending:
            key = pending.pop()
            call = self.graph.producer(key)
            k = call.index
            if call.node is None or k in seen or k in self.dead_ends:
                continue
            seen.add(k)
            for in_key, groups, channels in zip(call.input_keys, call.in_groups, call.in_channels):
                if k not in self.removed:
                    if not self.live[in_key].any():
                        pending.append(in_key)   # a whole input (tower, branch) with nothing left in it
                    continue
                dead = ~_alive.entry_mask(self.graph, flat, groups, channels)
                for gid, ch in sorted(set(zip(groups[dead].tolist(), channels[dead].tolist()))):
                    if self.graph.groups[gid].removable and not self.masks[gid][ch]:
                        self.masks[gid][ch] = True
                        self.report.kept.append((gid, ch, f"{reason} (feeds starved layer '{call.path}')"))
                        changed = True
                pending.append(in_key)
        return changed

    # 3: rebuild
    def rebuild(self):
        graph = self.graph
        for key in graph.model_outputs:
            if not self.live[key].all():
                raise ExportError(f"network output '{graph.producer(key).path}' would lose channels or become "
                                  "constant")

        def build(call, engine):   # the handler's export part, through the RebuildStep interface
            return _handlers.rebuild_part(call.handler).rebuild(call, RebuildStep(self, engine, call))

        def surviving(call, position):
            return int(self.live[call.output_keys[position]].sum())

        return _rebuild.rebuild(graph, build, surviving, self.name, skip=self.removed, error=ExportError)


def _weight_position(layer, variable):
    for position, w in enumerate(layer.weights):
        if w is variable:
            return position
    raise ExportError(f"layer '{layer.name}': weight {variable.name} not found")


def _normalises_across_channels(call):
    if call.handler.normalises_across_channels(call):
        return True   # keras.ops softmax / rms_norm over the channel axis; RMSNorm layers
    layer = call.layer
    if isinstance(layer, (keras.layers.LayerNormalization, keras.layers.GroupNormalization,
                          keras.layers.UnitNormalization, keras.layers.Softmax)):
        return True
    activation = getattr(layer, "activation", None)
    return isinstance(layer, keras.layers.Activation) and getattr(activation, "__name__", "") in (
        "softmax", "log_softmax")


# --- entry point ---------------------------------------------------------------------------------------

def export_with_report(model, source="gamma", threshold=None, l1_fraction=0.0, alive=None,
                       exact=False, ignore=(), name=None, calibration_data=None, calibration_steps=None,
                       round_to=None, min_width=_alive.DEFAULT_MIN_WIDTH, budget=None, target="flops",
                       removed_values=None):
    """:func:`export`, returning ``(slim model, ExportReport)``. ``removed_values``: ``{(call index, input
    index): full-width values}`` that removed entries carry where that kernel call reads them, in place of what
    they carry once dead (``ms.prune(importance="flap")`` passes their calibration means: bias compensation)."""
    start = time.perf_counter()
    if not isinstance(model, keras.Model):
        raise TypeError(f"export() takes a keras.Model, got {type(model).__name__}")
    _alive._check_source(source)
    exact = flag(exact, "exact")
    min_width = _alive.check_min_width(min_width)
    if budget is not None and (threshold is not None or alive is not None or source == "zeros"):
        raise ValueError("export(budget=) chooses the threshold itself, from the regularisation values: give "
                         "budget= or threshold= (or alive=, or source='zeros'), not both")
    threshold = _alive.resolve_threshold(source, threshold)
    graph = analyze(model, ignore=ignore)
    if budget is not None:
        # the budget's masks hold the floor and the rounding already
        threshold, masks = _settled_budget_masks(model, graph, source, l1_fraction, budget, target, min_width,
                                                 round_to, exact)
    elif alive is None:
        # threshold masks only: starved channels are found by the live pass, and forcing one to its dead
        # value (beta) would be wrong -- it carries BN(conv(constant)), which the probe computes
        masks = _alive.alive_masks(graph, source, threshold, l1_fraction, propagate=False)
    else:
        masks = _alive.user_masks(graph, alive)
    sources = _alive.find_sources(graph, source)
    flooring = alive is None and budget is None and source != "zeros"
    rounding = budget is None and _alive.check_round_to(round_to) is not None
    vectors = _alive.group_vectors(graph, source, l1_fraction, sources) if flooring or rounding else None
    if flooring:
        # a floor in every group the regulariser thinned (not in user masks, nor in neurons a sparse training
        # ablated on purpose); revived channels compute what they did, so the outputs do not change
        masks = _alive.floored_masks(graph, masks, min_width, vectors)
        _alive.warn_collapsed(f"export of '{model.name}'", _alive.collapsed_groups(graph, masks), min_width)
    if rounding:
        masks = _alive.rounded_masks(graph, masks, round_to, vectors)
    if budget is not None:
        _alive.warn_collapsed(f"export of '{model.name}'", _alive.collapsed_groups(graph, masks), min_width)
    report = ExportReport(model.name, source, threshold, exact, masks, {})
    exporter = _Exporter(model, graph, masks, sources, exact, name or model.name, report, removed_values)
    exporter.settle()
    slim = exporter.rebuild()
    report.masks = exporter.masks
    report.effective_masks = _alive.effective_masks(graph, exporter.live)
    _fill_report(report, graph, exporter, slim)
    if exact:
        difference, noise = check_equivalent(model, slim)
        if difference > max(EXACT_RTOL, 10 * noise):
            _alive.warn_user(f"export(exact=True) of '{model.name}': the slim model's outputs differ from the "
                             f"original's by {difference:.2e} of their scale on random inputs (float32 "
                             f"rounding alone: {noise:.2e}); please report this model")
    if not report.removed_anything and (sources or alive is not None):
        _warn_nothing_removed(graph, report, alive, l1_fraction)
    if budget is not None:
        absolute = resolve_budget(budget, target, graph)
        cost = BUDGET_TARGETS[target](slim)
        if cost > absolute:
            _alive.warn_user(f"export of '{model.name}' with budget={budget!r}: the slim model costs {cost:,d} "
                             f"{target}, {cost / absolute - 1:.1%} above the budget ({absolute:,.0f}): export kept "
                             "channels it cannot remove (normalised with live ones) beyond what the search could "
                             "pay for; give a slightly lower budget, or min_width=0")
    if calibration_data is not None:
        from morphsparse.morph.batchnorm import recalibrate_batchnorm
        recalibrate_batchnorm(slim, calibration_data, steps=calibration_steps)
    report.seconds = time.perf_counter() - start
    return slim, report


#: at most this many dead channels are tried, strongest first, to fill what the budget leaves after the threshold
BUDGET_FILL_TRIALS = 2000


def budget_masks(graph, source, l1_fraction, budget, target="flops", min_width=_alive.DEFAULT_MIN_WIDTH,
                 round_to=None, kept=None):
    """``(threshold, masks)``: the alive masks of the largest network that fits ``budget`` (a fraction of the
    model's ``target`` cost, or an absolute cost) keeping the channels with the largest regularisation values.

    The smallest threshold whose masks fit is found first (the channels structure learning drove towards zero
    go first); then the dead channels are revived, strongest first, while the budget still pays for them, so a
    coarse unit that does not fit (an attention head can be 7% of a small transformer's FLOPs) leaves its share
    to finer ones instead of to nothing. The masks include the ``min_width`` floor (and ``round_to``, which
    leaves out the filling); ``kept`` (``{group id: mask}``) are channels kept whatever their values (those
    export must keep), paid for first. Raises a ValueError when even the narrowest network the threshold can
    make costs more than the budget."""
    check_target(target)
    absolute = resolve_budget(budget, target, graph)
    count = BUDGET_TARGETS[target]
    vectors = _alive.group_vectors(graph, source, l1_fraction)
    values = np.unique(np.concatenate([v[np.isfinite(v)] for v in vectors.values()] or [np.zeros(0)]))
    candidates = np.concatenate([[0.0], values])

    def shaped(threshold):
        masks = _alive.alive_masks(graph, source, threshold, l1_fraction, check=False, propagate=False)
        masks = _alive.floored_masks(graph, masks, min_width, vectors)
        masks = masks if round_to is None else _alive.rounded_masks(graph, masks, round_to, vectors)
        return {gid: mask | kept[gid] if kept and gid in kept else mask for gid, mask in masks.items()}

    def cost(masks):            # what export keeps: channels no surviving layer computes die too
        return count(graph, alive=_alive.propagated_masks(graph, masks))

    def connected(threshold):
        try:
            _alive.check_connected(graph, shaped(threshold))
        except _alive.AliveError:
            return False
        return True

    low, high = 0, len(candidates) - 1          # past some threshold the network falls apart: find the last before
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if connected(candidates[middle]) else (low, middle - 1)
    low, high = 0, low                          # the cost falls as the threshold rises: find the first that fits
    if cost(shaped(candidates[high])) > absolute:
        raise ValueError(f"budget={budget!r} ({absolute:,.0f} {target}) is below the narrowest network export can "
                         f"make from these {source} values ({cost(shaped(candidates[high])):,d} {target}, with "
                         f"min_width={min_width}); give a larger budget, or a smaller min_width=")
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if cost(shaped(candidates[middle])) <= absolute else (middle + 1, high)
    masks = {gid: mask.copy() for gid, mask in shaped(candidates[low]).items()}
    if round_to is None:
        dead = [(value, gid, index) for gid, vector in vectors.items() if gid in masks
                for index, value in enumerate(vector) if np.isfinite(value) and not masks[gid][index]]
        for _, gid, index in sorted(dead, key=lambda entry: -entry[0])[:BUDGET_FILL_TRIALS]:
            masks[gid][index] = True
            if cost(masks) > absolute:
                masks[gid][index] = False
    return float(candidates[low]), masks


def _settled_budget_masks(model, graph, source, l1_fraction, budget, target, min_width, round_to, exact):
    """:func:`budget_masks`, aimed lower when export must keep dead channels the masks remove (channels a
    LayerNorm or RMSNorm normalises with live ones, constants it cannot fold): those are paid first."""
    sources = _alive.find_sources(graph, source)
    kept = {}
    for _ in range(8):      # what export keeps can grow as the threshold rises: settle until it does not
        threshold, masks = budget_masks(graph, source, l1_fraction, budget, target, min_width, round_to, kept)
        trial = _Exporter(model, graph, masks, sources, exact, model.name,
                          ExportReport(model.name, source, threshold, exact, masks, {}))
        trial.settle()
        more = {gid: trial.masks[gid] & ~masks[gid] for gid in masks if (trial.masks[gid] & ~masks[gid]).any()}
        if not more:
            break
        for gid, mask in more.items():
            kept[gid] = kept.get(gid, np.zeros_like(mask)) | mask
    return threshold, masks


def export(model, source="gamma", threshold=None, l1_fraction=0.0, alive=None, exact=False,
           ignore=(), name=None, calibration_data=None, calibration_steps=None, return_report=False,
           round_to=None, min_width=_alive.DEFAULT_MIN_WIDTH, budget=None, target="flops"):
    """A slim copy of ``model`` without its dead channels, with the surviving weights copied.

    ``source`` ("gamma" or "group_lasso"), ``threshold`` (default 0.01) and ``l1_fraction`` decide which
    channels are dead from the model's weights alone (see :func:`morphsparse.alive_masks`); ``source="zeros"``
    (no threshold) removes exactly the channels whose incoming weights are all zero: the output neurons a sparse
    training emptied (``ms.FanIn(ablation=True)``), exported straight from the sparse model or after
    ``ms.strip``, with the constant each still emits (act(bias)) folded onward; or pass ``alive``, a mapping group
    id (or producer layer name) -> boolean mask, to choose yourself (a channel you mark dead is exported as if
    its ``source`` weight were zero: gamma, or the kernel slice for group lasso). ``exact=True`` keeps dead
    channels whose constant output would have to be folded through a zero-padded spatial convolution or merged
    in while differing at the border (the only cases where the slim model differs, at image borders), and the
    live channels that feed a layer kept this way; it then checks the slim model's outputs against the
    original's on random inputs (relative 1e-5) and warns if they differ. ``ignore``: layers whose outputs
    must not shrink. ``calibration_data`` (an array of inputs, an ``(x, y)`` or ``(x, y, sample_weight)`` tuple
    of arrays, or a dataset or iterable of such batches: only x is read; see
    :func:`morphsparse.recalibrate_batchnorm`): re-estimate the slim model's BatchNorm statistics on it
    (``calibration_steps`` batches at most).
    ``round_to=8``: keep, in every channel group, a multiple of 8 channels (or all of them), reviving the
    strongest dead channels (they compute what they did, so outputs are unchanged): CPU kernels block channels
    by 8 or 16 and run an odd width at nearly the cost of the next multiple. ``min_width`` (default 0.2): with
    masks read from the weights (not ``alive=``, not ``source="zeros"``), every group that keeps any channel
    keeps at least this fraction of them, the strongest dead ones revived (outputs unchanged): a layer the
    regulariser thinned to a channel or two is a bottleneck that retraining does not repair; a group that dies
    whole (a residual branch, a tower) is still removed. A layer left under 10% of its channels warns.
    ``budget`` (instead of ``threshold``): a fraction of the model's ``target`` cost ("flops" or "size"), or an
    absolute cost; the threshold is chosen so that the slim model keeps the channels with the largest
    regularisation values that fit it (:func:`budget_masks`): the step that lands a structure-learning
    run on its budget when training left it off (``report.threshold`` says which threshold that was).

    Returns the slim ``keras.Model`` (it saves and loads without morphsparse). For the
    :class:`ExportReport` too, call :func:`export_with_report`. Warns when nothing was removed.
    """
    slim, report = export_with_report(model, source, threshold, l1_fraction, alive, exact, ignore, name,
                                      calibration_data, calibration_steps, round_to, min_width, budget, target)
    if return_report:
        _alive.warn_user("export(..., return_report=True) is deprecated: it returns a pair where export "
                         "returns a model; use ms.export_with_report(...)", DeprecationWarning)
        return slim, report
    return slim


def _warn_nothing_removed(graph, report, alive, l1_fraction):
    """Export kept every channel: say why it probably happened and what to change."""
    if alive is not None:
        reason = "the alive= masks mark every removable channel alive"
    elif report.source == "zeros":
        reason = ("no removable channel has all its incoming weights zero (sparse training empties whole neurons "
                  "with sparsity_type=ms.FanIn(ablation=True); other masks rarely do)")
    else:
        vectors = _alive.group_vectors(graph, report.source, l1_fraction)
        smallest = min((float(v.min()) for gid, v in vectors.items() if graph.groups[gid].removable),
                       default=float("nan"))
        reason = (f"no channel's {report.source} value fell to threshold={report.threshold:g} (the smallest is "
                  f"{smallest:.3g}). Train longer with the MorphRegularizer attached (a weight needs about "
                  f"1.5 / learning_rate Adam steps to reach zero), raise its strength or give it a budget=, or "
                  f"raise the threshold")
    _alive.warn_user(f"export of '{report.model_name}' removed nothing ({report.flops_before:,d} FLOPs, "
                     f"{report.params_before:,d} params, as before): {reason}.")


def _fill_report(report, graph, exporter, slim):
    for k, call in enumerate(graph.calls):
        if call.node is None:
            continue
        in_before = [len(exporter.live[key]) for key in call.input_keys]
        in_after = [int(exporter.live[key].sum()) for key in call.input_keys]
        # internal axes (attention heads) after the outputs, as the cost report writes them ("64+4"): a layer
        # that lost heads but kept its output width is narrowed too
        outs = list(call.output_keys) + _alive.internal_keys(graph, k)
        out_before = [len(exporter.live[key]) for key in outs]
        out_after = [int(exporter.live[key].sum()) for key in outs]
        if k in exporter.dead_ends:
            status, out_after = "dead end", [0] * len(out_after)
        elif k in exporter.removed:
            status, out_after = "removed", [0] * len(out_after)
        elif in_before != in_after or out_before != out_after:
            status = "narrowed"
        else:
            status = "kept"
        report.layers.append(LayerWidths(call.path, type(call.layer).__name__, in_before, in_after, out_before,
                                         out_after, status))
    slim_graph = analyze(slim)
    report.flops_before, report.params_before = count_flops(graph), count_params(graph)
    report.flops_after, report.params_after = count_flops(slim_graph), count_params(slim_graph)
    report.packages = loading_packages(slim)


def loading_packages(model):
    """``{package: sorted layer class names}``: the packages other than Keras whose layer classes ``model``
    holds, which must be importable to load it from a .keras file (keras_hub's own layers that export keeps
    as they are, morphsparse's rebuilt grouped-query attention); empty when plain Keras loads it."""
    needed = {}
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.Model):
            stack.extend(layer.layers)
        package = type(layer).__module__.split(".")[0]
        if package != "keras":
            needed.setdefault(package, set()).add(type(layer).__name__)
    return {package: sorted(names) for package, names in sorted(needed.items())}


def _packages_text(packages):
    return ", ".join(f"{package} ({', '.join(names)})" for package, names in packages.items())


__all__ = ["export", "export_with_report", "ExportReport", "ExportError", "RebuildStep", "loading_packages"]
