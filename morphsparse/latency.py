"""Measured latency: a table of how long each layer call takes on one machine, and what it predicts.

FLOPs are a poor stand-in for time (benchmarks/slim_speedup.json: slim models gain 0.66-0.97 of their FLOP
reduction on a CPU), and the roofline of :class:`morphsparse.morph.regularizers.DeviceProfile` is computed from
data-sheet figures, never measured. This module measures instead:

* :func:`profile_latency` reads a model's channel graph, and for every distinct *call signature* (the layer's
  class and the hyperparameters that are not widths: kernel size, strides, activation, the spatial size or
  sequence length of its input) times standalone one-layer models on a grid of widths, with the discipline of
  benchmarks/slim_speedup.py (warm-up, many rounds alternating the grid points and an empty call, minimum and
  median). The time of the empty call (the fixed cost of entering a compiled function) is subtracted from each
  point, and what the whole model takes beyond the sum of its layers is kept as one constant, ``overhead``.
  The result is a :class:`LatencyTable` (JSON), cached on disk by machine, backend and settings.
* :func:`predict_latency` sums the table's entries, interpolated bilinearly at the model's widths, plus the
  overhead. :class:`LatencyModel` is the same prediction bound to a channel graph, with marginal costs per
  channel (what one channel less saves): what ``MorphRegularizer(target="latency", device=table)``, ``ms.prune``
  and ``ms.expand`` price channels with.

What a layer call's entry depends on (its *kind*):

* ``"kernel"`` (Conv, Dense, SeparableConv, ...): its input and output widths, a 2-D grid;
* ``"depthwise"``: its input width (the output follows it);
* ``"elementwise"`` (BatchNorm, activations, Add, pooling, LayerNorm, ...: every input and output as wide as
  the output): the output width;
* ``"attention"`` (MultiHeadAttention, keras_hub's grouped-query attention: any call whose handler declares
  ``timed_axes``): its query width and its number of (key/value) heads, a 2-D grid;
* ``"fixed"`` (Concatenate, Flatten, Reshape, Embedding, grouped convolutions, ...): one time, whatever the
  widths.

keras.ops calls and layers that do nothing at inference (Dropout, ...) have no entry: their time is in the
overhead. Widths outside an entry's grid are extrapolated linearly from the nearest cell (floored at zero;
:func:`predict_latency` warns): a constant would make widening look free to ``ms.expand``.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from morphsparse import handlers as _handlers
from morphsparse.graph import ChannelGraph, analyze
from morphsparse.rebuild import build_at_widths   # the engine ms.expand builds with
from morphsparse.trace import symbolic_kwargs

FORMAT = "morphsparse-latency-table"
VERSION = 1
BACKENDS = ("keras", "litert")
KINDS = ("kernel", "depthwise", "elementwise", "attention", "fixed")
STATISTICS = ("median", "minimum")
#: layers that compute nothing at inference: no entry, their (dispatch) time is in the overhead
NO_OP_LAYERS = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
                "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity")
#: each timed sample repeats a call until it lasts at least this long (the timer's resolution and jitter)
SAMPLE_SECONDS = 0.002
DEFAULT_REPEATS = 15
DEFAULT_POINTS = 5
#: the environment variable naming the cache directory (default ~/.cache/morphsparse/latency)
CACHE_ENV = "MORPHSPARSE_CACHE"


class LatencyTableError(ValueError):
    """A latency table that is malformed, or does not fit what it is asked for; the message says what to do."""


# --- the machine ----------------------------------------------------------------------------------------------

def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key():
    """What identifies the machine a table was measured on: platform, CPU model, core count and the
    TensorFlow version (a new release changes kernels, and so times)."""
    import tensorflow as tf

    return {"platform": platform.platform(), "cpu": _cpu_model(), "cores": os.cpu_count(),
            "tensorflow": tf.__version__}


MACHINE_KEYS = ("platform", "cpu", "cores", "tensorflow")


# --- the table ----------------------------------------------------------------------------------------------------

@dataclass
class LatencyEntry:
    """Seconds of one call signature on a grid of widths. ``in_widths`` / ``out_widths`` are the grid of the
    input / output width, or None where the kind does not depend on it; ``median`` and ``minimum`` have shape
    ``(len(in_widths or [0]), len(out_widths or [0]))``. ``layer``: a layer it was profiled from (for
    messages)."""

    kind: str
    in_widths: list | None
    out_widths: list | None
    median: list
    minimum: list
    layer: str = ""

    def values(self, statistic="median"):
        return np.asarray(self.median if statistic == "median" else self.minimum, np.float64)

    def to_dict(self):
        return {"kind": self.kind, "layer": self.layer, "in_widths": self.in_widths, "out_widths": self.out_widths,
                "median": self.median, "minimum": self.minimum}


def _axes_of(kind):
    return {"kernel": (True, True), "depthwise": (True, False), "elementwise": (False, True),
            "attention": (True, True), "fixed": (False, False)}[kind]


def _check_entry(signature, data):
    where = f"latency table entry {signature[:80]!r}"
    if not isinstance(data, dict):
        raise LatencyTableError(f"{where} must be an object, got {type(data).__name__}")
    kind = data.get("kind")
    if kind not in KINDS:
        raise LatencyTableError(f"{where}: kind must be one of {KINDS}, got {kind!r}")
    has_in, has_out = _axes_of(kind)
    grids = []
    for name, needed in (("in_widths", has_in), ("out_widths", has_out)):
        grid = data.get(name)
        if not needed:
            if grid is not None:
                raise LatencyTableError(f"{where}: a {kind!r} entry has no {name} (got {grid!r}); write null")
            grids.append([0])
            continue
        if (not isinstance(grid, list) or not grid or not all(isinstance(w, int) and not isinstance(w, bool)
                                                              and w >= 1 for w in grid)):
            raise LatencyTableError(f"{where}: {name} must be a non-empty list of widths >= 1, got {grid!r}")
        if sorted(set(grid)) != grid:
            raise LatencyTableError(f"{where}: {name} must be strictly increasing, got {grid}")
        grids.append(grid)
    shape = (len(grids[0]), len(grids[1]))
    for name in ("median", "minimum"):
        try:
            values = np.asarray(data.get(name), np.float64)
        except (TypeError, ValueError):
            raise LatencyTableError(f"{where}: {name} must be a list of lists of seconds") from None
        if values.shape != shape:
            raise LatencyTableError(f"{where}: {name} has shape {values.shape}, the grid {shape} "
                                    "(len(in_widths or [0]), len(out_widths or [0]))")
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise LatencyTableError(f"{where}: {name} must hold finite seconds >= 0")
    return LatencyEntry(kind, data.get("in_widths"), data.get("out_widths"),
                        np.asarray(data["median"], np.float64).tolist(),
                        np.asarray(data["minimum"], np.float64).tolist(), str(data.get("layer", "")))


#: the share of the weighted votes that must say padded before a table names a step: the tables of this
#: project's benchmark split 0.79-1.0 where the device pads clearly and 0.14-0.52 where it does not or half does
PADDED_MAJORITY = 2 / 3


@dataclass
class LatencyTable:
    """A measured latency table (see the module doc): per call signature, seconds on a grid of widths; a
    whole model takes ``scale`` x the sum of its calls' entries + ``overhead`` (both fitted on two timings of
    the profiling model, at full and at half width: layers run in a model a little faster or slower than
    alone). Serialisable: :meth:`to_json` / :meth:`from_json`,
    :meth:`save` / :meth:`load` (which validate, and refuse a malformed table with a :class:`LatencyTableError`
    naming the field).

    ``threads``: the threads the measurement ran with (0: TensorFlow's default, every core). ``statistic``:
    which of the two statistics predictions use ("median", what an end-to-end timing reports, or "minimum")."""

    machine: dict
    backend: str
    batch_size: int
    threads: int
    entries: dict = field(default_factory=dict)
    overhead: float = 0.0
    statistic: str = "median"
    scale: float = 1.0
    settings: dict = field(default_factory=dict)
    version: int = VERSION

    def __post_init__(self):
        self._validate()

    def _validate(self):
        if not isinstance(self.machine, dict) or any(k not in self.machine for k in MACHINE_KEYS):
            raise LatencyTableError(f"latency table: machine must be an object with keys {MACHINE_KEYS}, got "
                                    f"{self.machine!r}")
        if self.backend not in BACKENDS:
            raise LatencyTableError(f"latency table: backend must be one of {BACKENDS}, got {self.backend!r}")
        for name, low in (("batch_size", 1), ("threads", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise LatencyTableError(f"latency table: {name} must be an integer >= {low}, got {value!r}")
        if self.statistic not in STATISTICS:
            raise LatencyTableError(f"latency table: statistic must be one of {STATISTICS}, got {self.statistic!r}")
        if isinstance(self.overhead, bool) or not isinstance(self.overhead, (int, float)) or not math.isfinite(
                self.overhead):
            raise LatencyTableError(f"latency table: overhead must be a finite number of seconds, got "
                                    f"{self.overhead!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not (
                math.isfinite(self.scale) and self.scale > 0):
            raise LatencyTableError(f"latency table: scale must be a finite number > 0, got {self.scale!r}")
        if not isinstance(self.entries, dict):
            raise LatencyTableError("latency table: entries must be an object {signature: entry}")
        self.entries = {sig: entry if isinstance(entry, LatencyEntry) else _check_entry(sig, entry)
                        for sig, entry in self.entries.items()}

    # --- serialisation ---------------------------------------------------------------------------------
    def to_dict(self):
        return {"format": FORMAT, "version": self.version, "machine": dict(self.machine), "backend": self.backend,
                "batch_size": self.batch_size, "threads": self.threads, "statistic": self.statistic,
                "overhead": float(self.overhead), "scale": float(self.scale), "settings": dict(self.settings),
                "entries": {sig: entry.to_dict() for sig, entry in self.entries.items()}}

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict):
            raise LatencyTableError(f"a latency table is a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise LatencyTableError(f"not a latency table: format is {data.get('format')!r}, expected {FORMAT!r} "
                                    "(make one with ms.profile_latency)")
        if data.get("version") != VERSION:
            raise LatencyTableError(f"latency table version {data.get('version')!r} is not supported (this "
                                    f"morphsparse reads version {VERSION}); profile the model again")
        missing = [k for k in ("machine", "backend", "batch_size", "threads", "entries", "overhead") if k not in data]
        if missing:
            raise LatencyTableError(f"latency table lacks {missing}")
        return cls(machine=data["machine"], backend=data["backend"], batch_size=data["batch_size"],
                   threads=data["threads"], entries=data["entries"], overhead=data["overhead"],
                   statistic=data.get("statistic", "median"), scale=data.get("scale", 1.0),
                   settings=data.get("settings", {}))

    def to_json(self):
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise LatencyTableError(f"latency table is not valid JSON: {err}") from None
        return cls.from_dict(data)

    def save(self, path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)          # never a half-written table in the cache
        return path

    @classmethod
    def load(cls, path):
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no latency table at {path}: make one with ms.profile_latency(model, ...) "
                                    "or `morphsparse profile-latency MODEL -o TABLE.json`")
        return cls.from_json(path.read_text())

    # --- checks -------------------------------------------------------------------------------------------
    def check(self, backend=None, batch_size=None, machine=None, threads=None):
        """Refuse (:class:`LatencyTableError`) a table measured for another backend, batch size, thread count
        or machine than asked (each only when given; ``machine=True`` means this machine)."""
        if backend is not None and backend != self.backend:
            raise LatencyTableError(f"this latency table was measured with backend={self.backend!r}, not "
                                    f"{backend!r}: profile with ms.profile_latency(model, backend={backend!r})")
        if batch_size is not None and batch_size != self.batch_size:
            raise LatencyTableError(f"this latency table was measured at batch_size={self.batch_size}, not "
                                    f"{batch_size}: latency does not scale linearly with the batch; profile "
                                    f"with ms.profile_latency(model, batch_size={batch_size})")
        if threads is not None and threads != self.threads:
            raise LatencyTableError(f"this latency table was measured with threads={self.threads}, not {threads}")
        if machine is not None:
            here = machine_key() if machine is True else machine
            differ = [k for k in MACHINE_KEYS if here.get(k) != self.machine.get(k)]
            if differ:
                raise LatencyTableError(
                    "this latency table was measured on another machine ("
                    + "; ".join(f"{k}: {self.machine.get(k)!r}, here {here.get(k)!r}" for k in differ)
                    + "): profile on this one, or do not ask for machine=")
        return self

    def describe(self):
        return (f"measured latency table ({self.backend}, batch {self.batch_size}, threads {self.threads}, "
                f"{len(self.entries)} call signatures, {self.statistic}; {self.machine.get('cpu')})")

    def __repr__(self):
        return f"<LatencyTable {self.describe()}>"

    # --- granularity ----------------------------------------------------------------------------------------
    def suggested_round_to(self, steps=(16, 8, 4, 2)):
        """The channel granularity the device likes, read off the entries: the largest step s for which widths
        between two multiples of s in a grid mostly cost what the next multiple costs (the kernel pads the
        width to a multiple), on the input widths or on the output widths of the calls; None when the table
        shows no step (its grid has no widths between multiples, or the times are smooth).

        Each width w of a grid with multiples a < w < b of s beside it (b - a = s) votes on every line of the
        entry along that axis: padded when the time it adds over a is nearer to the whole step's (v(b) - v(a))
        than to the line's share of it, ``(w - a) / s``. A vote weighs the step's time, so the axes along
        which time grows carry the decision, not a cheap call's noise; the step is named where
        :data:`PADDED_MAJORITY` of the weight votes padded. The input and output axes are counted
        apart: a kernel pads the channels it computes in tiles (on this project's CPU, LiteRT's convolutions
        pad their outputs, not their inputs), and rounding a group helps whichever side pads."""
        for step in steps:
            for side in (0, 1):
                padded = total = 0.0
                for entry in self.entries.values():
                    grid = entry.out_widths if side == 1 else entry.in_widths
                    if not grid or len(grid) < 3 or (side == 1 and entry.kind == "attention"):  # heads, not lanes
                        continue
                    values = entry.values(self.statistic)
                    lines = values if side == 1 else values.T      # each row runs along this axis
                    index = {w: i for i, w in enumerate(grid)}
                    for i, w in enumerate(grid):
                        a, b = step * (w // step), step * (w // step + 1)
                        if w % step == 0 or a not in index or b not in index:
                            continue
                        share = (w - a) / step
                        for line in lines:
                            rise = line[index[b]] - line[index[a]]
                            if rise <= 0:
                                continue
                            total += rise
                            if line[i] - line[index[a]] > (1 + share) / 2 * rise:
                                padded += rise
                if total > 0 and padded > PADDED_MAJORITY * total:
                    return step
        return None


# --- call signatures ------------------------------------------------------------------------------------------

#: config keys that say nothing about time (``use_bias``: a bias add is fused into the kernel, and export adds
#: one to hold a folded constant, which must not make the slim model's layer a stranger to the table)
_UNTIMED_KEYS = ("name", "trainable", "dtype", "build_config", "seed", "autocast", "use_bias")


#: a kernel call's single reader of these classes is timed with it (a BatchNorm, then an activation): the
#: runtimes fuse them into the kernel (TensorFlow's remapper with oneDNN, the LiteRT converter), so that timed
#: alone they would cost what in the model they do not
FUSED_NORMS = ("BatchNormalization",)
FUSED_ACTIVATIONS = ("ReLU", "Activation", "LeakyReLU", "ELU")


@dataclass
class CallSpec:
    """How :func:`profile_latency` and :class:`LatencyModel` see one timed call: its kind, its signature and
    the calls timed with it (``followers``: the BatchNorm and activation a kernel's output goes through)."""

    call: object
    kind: str
    signature: str
    followers: list = field(default_factory=list)
    #: the input whose width is the entry's first axis, and the position in ``call.out_groups`` of its second
    #: (an internal axis for attention: the heads)
    in_index: int = 0
    out_index: int = 0

    def widths(self):
        """(input width, output width) of the call on the entry's axes."""
        call = self.call
        return (call.input_channels(self.in_index) if call.input_shapes else 0,
                len(call.out_channels_idx[self.out_index]) if self.kind == "attention" else
                call.output_channels(0) if call.output_shapes else 0)


def _followers(graph, call):
    """The BatchNorm (at most one) and then activation (at most one) that ``call``'s output alone goes
    through, each the single reader of the tensor before it, none a network output."""
    found, current = [], call
    while len(current.output_keys) == 1 and current.output_keys[0] not in graph.model_outputs:
        readers = graph.readers(current.output_keys[0])
        if len(readers) != 1 or readers[0].node is None:
            break
        nxt = readers[0]
        name = type(nxt.layer).__name__
        if name in FUSED_NORMS and not found:
            found.append(nxt)
            current = nxt
            continue
        if name in FUSED_ACTIVATIONS:
            found.append(nxt)
        break
    return found


def timed_calls(graph, used_only=False):
    """The :class:`CallSpec` of every call of ``graph`` that has an entry in a latency table, in graph order:
    a kernel call carries the BatchNorm and activation fused into it (:func:`_followers`), which get no entry
    of their own. ``used_only``: leave out the calls no output depends on."""
    unused = {c.index for c in graph.unused_calls} if used_only else set()
    absorbed, specs = set(), []
    for call in graph.calls:
        if call.index in unused or call.index in absorbed:
            continue
        spec = call_spec(call)
        if spec is None:
            continue
        if spec.kind in ("kernel", "depthwise"):
            followers = _followers(graph, call)
            if followers:
                spec = call_spec(call, followers)
                absorbed.update(f.index for f in followers)
        specs.append(spec)
    return specs


def _width_free_config(call):
    """The layer's config without what changes with its widths (read by asking its handler for the config at
    two other widths: the keys that differ are widths) and without what takes no time (names,
    initialisers)."""
    handler = _handlers.rebuild_part(call.handler)
    base = _handlers.layer_config(call.layer)
    # a call timed along an internal axis (attention heads) is probed at other counts of it too
    outputs = len(call.output_shapes) + (len(call.internal_names) if call.handler.timed_axes(call) else 0)
    probes = []
    for w_in, w_out in ((2, 3), (5, 7)):    # two widths the layer may have itself: compare them, not it
        try:
            probes.append(handler.rebuild_config(call, [np.ones(w_in, bool) for _ in call.input_shapes],
                                                 [np.ones(w_out, bool) for _ in range(outputs)]))
        except Exception:   # noqa: BLE001 - a handler that cannot say: keep the whole config (a stricter key)
            probes.append(base)
    config = {}
    for key, value in base.items():
        if key in _UNTIMED_KEYS or key.endswith(("_initializer", "_regularizer", "_constraint")):
            continue
        if _jsonable(probes[0].get(key)) != _jsonable(probes[1].get(key)):
            continue
        config[key] = value
    return config


def _jsonable(value):
    return json.dumps(value, sort_keys=True, default=repr)


def _numeric(value):
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return True
    return isinstance(value, (list, tuple)) and all(_numeric(v) or v is None for v in value) and len(value) > 0


def _spatial(shape):
    return [None if d is None else int(d) for d in tuple(shape)[1:-1]]


def call_spec(call, followers=()):
    """The :class:`CallSpec` of a graph call (timed with ``followers``, see :func:`timed_calls`), or None for a
    call with no entry (a network input, a keras.ops call, a layer that does nothing at inference): its time
    is in the overhead."""
    layer = call.layer
    if call.node is None or not isinstance(layer, keras.layers.Layer) or isinstance(layer, keras.layers.InputLayer):
        return None
    if type(layer).__name__ in NO_OP_LAYERS:
        return None
    handler = call.handler
    n_in, n_out = len(call.input_shapes), len(call.output_shapes)
    widths = [call.input_channels(i) for i in range(n_in)] + [call.output_channels(j) for j in range(n_out)]
    try:
        macs = handler.macs(call, widths[:n_in], widths[n_in:])
    except Exception:   # noqa: BLE001 - a handler that cannot count is timed as a whole
        macs = 0
    grouped = int(getattr(layer, "groups", 1) or 1) > 1 and not handler.reads_channels_separately(call)
    axes = handler.timed_axes(call)
    if axes is not None:
        kind = "attention"
    elif handler.cost_terms(call) is not None or grouped:
        kind = "fixed"
    elif macs and n_in == 1 and n_out == 1:
        kind = "depthwise" if handler.reads_channels_separately(call) else "kernel"
    elif n_out == 1 and n_in >= 1 and len(set(widths)) == 1 and len(call.output_shapes[0]) >= 2:
        kind = "elementwise"
    else:
        kind = "fixed"
    shapes = [_spatial(s) for s in call.input_shapes]
    if kind == "attention":
        # the inputs that read the query's tensor are on the grid; another (cross-attention keys) keeps its width
        query = call.input_keys[axes[0]]
        shapes = [_spatial(s) if key == query else [None if d is None else int(d) for d in tuple(s)[1:]]
                  for s, key in zip(call.input_shapes, call.input_keys)]
    if kind == "fixed":
        shapes = [[None if d is None else int(d) for d in tuple(s)[1:]] if len(s) >= 2 else [] for s in
                  call.input_shapes]
        # the channel width of a fixed call does not matter (it is one time): keep the spatial part only
        shapes = [s[:-1] if s else s for s in shapes]
    dtypes = [str(t.dtype) for t in call.node.input_tensors]
    config = _width_free_config(call)
    if kind == "fixed":
        # one time whatever the widths: numbers in the config (units, heads, a reshape's target) are widths
        # as far as the entry is concerned, so a narrowed copy of the layer finds the same entry
        config = {k: v for k, v in config.items() if not _numeric(v)}
    described = {"class": f"{type(layer).__module__}.{type(layer).__qualname__}", "kind": kind,
                 "config": _jsonable(config), "inputs": shapes, "dtypes": dtypes}
    if followers:
        described["followers"] = [[f"{type(f.layer).__module__}.{type(f.layer).__qualname__}",
                                   _jsonable(_width_free_config(f))] for f in followers]
    in_index, out_index = axes if axes is not None else (0, 0)
    return CallSpec(call, kind, _jsonable(described), list(followers), in_index, out_index)


# --- interpolation -----------------------------------------------------------------------------------------------

def _interpolation_points(grid):
    """Indices of the grid points interpolation runs through: all but the step probes (a width just past a
    multiple of 8 that the grid also holds, see :func:`default_grid`), which show a step between the multiples
    and are no point of a line through them."""
    widths = set(grid)
    return [i for i, w in enumerate(grid) if not (w > 8 and (w - 1) % 8 == 0 and (w - 1) in widths)]


class _Grids:
    """The entries of K rows as padded arrays, so that one vectorised interpolation (numpy or TensorFlow)
    prices every row: X (K x M) input-width grids, Y (K x N) output-width grids, V (K x M x N) seconds.
    Padding extends a grid by steps of 1 with the last value repeated, so a one-point axis is constant."""

    def __init__(self, entries, statistic, probes=True):
        k = len(entries)
        m = max([len(e.in_widths or [0]) for e in entries] + [1])
        n = max([len(e.out_widths or [0]) for e in entries] + [1])
        self.X, self.Y = np.zeros((k, m + 1)), np.zeros((k, n + 1))
        self.V = np.zeros((k, m + 1, n + 1))
        self.inner_x, self.inner_y = np.zeros((k, m + 1), bool), np.zeros((k, n + 1), bool)
        self.last_x, self.last_y = np.zeros(k, np.int64), np.zeros(k, np.int64)
        for row, entry in enumerate(entries):
            xs, ys = entry.in_widths or [0], entry.out_widths or [0]
            keep_x, keep_y = ((list(range(len(xs))), list(range(len(ys)))) if probes else
                              (_interpolation_points(xs), _interpolation_points(ys)))
            values = entry.values(statistic)[np.ix_(keep_x, keep_y)]
            xs, ys = [xs[i] for i in keep_x], [ys[i] for i in keep_y]
            a, b = len(xs), len(ys)
            self.X[row, :a] = xs
            self.X[row, a:] = xs[-1] + np.arange(1, m + 2 - a)
            self.Y[row, :b] = ys
            self.Y[row, b:] = ys[-1] + np.arange(1, n + 2 - b)
            padded = np.zeros((m + 1, n + 1))
            padded[:a, :b] = values
            padded[a:, :b] = values[-1:, :]
            padded[:, b:] = padded[:, b - 1:b]
            self.V[row] = padded
            self.inner_x[row, 1:max(a - 1, 1)] = True
            self.inner_y[row, 1:max(b - 1, 1)] = True
            self.last_x[row], self.last_y[row] = a - 1, b - 1

    def _cells(self, a, b, xp):
        """Cell indices and fractions (t along the input width, u along the output width; outside [0, 1]
        when extrapolating) of every row at widths (a, b)."""
        if xp is np:
            i = np.sum(self.inner_x & (self.X <= a[:, None]), axis=1)
            j = np.sum(self.inner_y & (self.Y <= b[:, None]), axis=1)
            rows = np.arange(len(a))
            x0, x1 = self.X[rows, i], self.X[rows, i + 1]
            y0, y1 = self.Y[rows, j], self.Y[rows, j + 1]
            corners = [self.V[rows, i + di, j + dj] for di in (0, 1) for dj in (0, 1)]
        else:
            import tensorflow as tf
            X, Y, V = (tf.constant(v, tf.float64) for v in (self.X, self.Y, self.V))
            i = tf.reduce_sum(tf.cast(tf.logical_and(self.inner_x, X <= a[:, None]), tf.int32), axis=1)
            j = tf.reduce_sum(tf.cast(tf.logical_and(self.inner_y, Y <= b[:, None]), tf.int32), axis=1)
            x0, x1 = tf.gather(X, i, batch_dims=1), tf.gather(X, i + 1, batch_dims=1)
            y0, y1 = tf.gather(Y, j, batch_dims=1), tf.gather(Y, j + 1, batch_dims=1)
            rows = tf.range(tf.shape(i)[0])
            corners = [tf.gather_nd(V, tf.stack([rows, i + di, j + dj], axis=1)) for di in (0, 1) for dj in (0, 1)]
        return (a - x0) / (x1 - x0), (b - y0) / (y1 - y0), x1 - x0, y1 - y0, corners

    def values(self, a, b, xp=np):
        t, u, _, _, (v00, v01, v10, v11) = self._cells(a, b, xp)
        value = (1 - t) * (1 - u) * v00 + (1 - t) * u * v01 + t * (1 - u) * v10 + t * u * v11
        return xp.maximum(value, 0.0)

    def slopes(self, a, b, xp=np):
        """d value / d a and d value / d b: the seconds one input / output channel more or less costs (the
        slope of the cell; outside the grid, of the edge cell)."""
        t, u, dx, dy, (v00, v01, v10, v11) = self._cells(a, b, xp)
        t, u = xp.clip(t, 0.0, 1.0), xp.clip(u, 0.0, 1.0)
        d_in = ((1 - u) * (v10 - v00) + u * (v11 - v01)) / dx
        d_out = ((1 - t) * (v01 - v00) + t * (v11 - v10)) / dy
        return d_in, d_out

    def outside(self, a, b):
        """Per row: True where (a, b) lies outside the grid of an axis that has one."""
        rows = np.arange(len(a))
        low_x, high_x = self.X[:, 0], self.X[rows, self.last_x]
        low_y, high_y = self.Y[:, 0], self.Y[rows, self.last_y]
        has_x, has_y = self.X[:, 0] > 0, self.Y[:, 0] > 0
        eps = 1e-6
        return ((has_x & ((a < low_x - eps) | (a > high_x + eps)))
                | (has_y & ((b < low_y - eps) | (b > high_y + eps))))


# --- a table on a channel graph -------------------------------------------------------------------------------

class LatencyModel:
    """A :class:`LatencyTable` bound to a channel graph: the predicted latency at any widths (a flat
    per-channel vector of how much of each channel is alive, ``graph.channel_weights``), and what one channel
    saves (its marginal latency). ``used_only``: leave out the calls no output depends on (what a rebuilt,
    exported or expanded, network runs). Raises :class:`LatencyTableError` naming the first layer whose call
    signature the table lacks."""

    def __init__(self, graph, table, used_only=False):
        if not isinstance(table, LatencyTable):
            raise TypeError(f"table must be a morphsparse LatencyTable (ms.profile_latency), got "
                            f"{type(table).__name__}")
        self.graph, self.table = graph, table
        self.specs, entries, in_entries, out_entries = [], [], [], []
        self.step = table.suggested_round_to() or 1
        offsets = graph.offsets
        for spec in timed_calls(graph, used_only):
            call = spec.call
            entry = table.entries.get(spec.signature)
            if entry is None:
                raise LatencyTableError(
                    f"layer '{call.path}' ({type(call.layer).__name__}, input {call.input_shapes[0]}): its "
                    f"{spec.kind} call is not in the latency table ({table.describe()}). Profile this model: "
                    f"ms.profile_latency(model, backend={table.backend!r}, batch_size={table.batch_size})")
            has_in, has_out = _axes_of(spec.kind)
            empty = np.zeros(0, np.int64)
            i, j = spec.in_index, spec.out_index
            in_entries.append(offsets[call.in_groups[i]] + call.in_channels[i] if has_in else empty)
            out_entries.append(offsets[call.out_groups[j]] + call.out_channels_idx[j] if has_out else empty)
            self.specs.append(spec)
            entries.append(entry)
        self.grids = _Grids(entries, table.statistic)
        # the line through the multiples only, without the step probes (a width just past a multiple). Widths
        # at a multiple of the table's step run the device's fast kernel and are priced along it (a probe would
        # drag the line up). Every slope is taken along it: where a kernel pads its widths, the cells either
        # side of a probe are a one-channel jump and a flat stretch, and their slopes (a whole step's cost for
        # one channel, then none) would misprice every channel in them
        self.lines = _Grids(entries, table.statistic, probes=False)
        self.fast = self.lines if self.step > 1 else self.grids
        # which axes have a grid (a one-point axis is a width that never changes)
        self.pads_x = np.array([len(e.in_widths or []) > 1 for e in entries], bool)
        self.pads_y = np.array([len(e.out_widths or []) > 1 for e in entries], bool)
        self.n_channels = int(offsets[-1])
        self.in_matrix = _summing(in_entries)
        self.out_matrix = _summing(out_entries)
        self.overhead = float(table.overhead)
        self.scale = float(table.scale)

    # --- widths and values ---------------------------------------------------------------------------------
    def sums(self, vector, xp=np):
        """(input width, output width) of every timed call at a flat per-channel vector (alive 0/1, or
        fractional channel weights, or R for the regularisation term)."""
        return _apply(self.in_matrix, vector, len(self.specs), xp), _apply(self.out_matrix, vector,
                                                                          len(self.specs), xp)

    def _on_step(self, a_in, a_out, xp=np):
        """Per call: True where every width that has a grid is a multiple of the table's step."""
        if xp is np:
            on = [~pads | (np.abs(a / self.step - np.round(a / self.step)) < 1e-6)
                  for a, pads in ((a_in, self.pads_x), (a_out, self.pads_y))]
            return on[0] & on[1]
        import tensorflow as tf
        on = [tf.logical_or(tf.logical_not(pads), tf.abs(a / self.step - tf.round(a / self.step)) < 1e-6)
              for a, pads in ((a_in, self.pads_x), (a_out, self.pads_y))]
        return tf.logical_and(on[0], on[1])

    def per_call(self, a_in, a_out, xp=np):
        if xp is not np:
            import tensorflow as tf
            a_in, a_out = tf.cast(a_in, tf.float64), tf.cast(a_out, tf.float64)
        ops = np if xp is np else _TF
        values = self.grids.values(a_in, a_out, xp=ops)
        if self.fast is self.grids:
            return values
        fast = self.fast.values(a_in, a_out, xp=ops)
        return (np.where if xp is np else _tf_where)(self._on_step(a_in, a_out, xp), fast, values)

    def _slopes(self, a_in, a_out, xp=np):
        return self.lines.slopes(a_in, a_out, xp=np if xp is np else _TF)

    def cost(self, a_in, a_out, xp=np):
        """Predicted seconds at these widths: the sum of the calls' entries plus the overhead."""
        if xp is np:
            return self.scale * float(np.sum(self.per_call(a_in, a_out))) + self.overhead
        import tensorflow as tf
        return self.scale * tf.reduce_sum(self.per_call(a_in, a_out, xp)) + self.overhead

    def value(self, weights=None):
        """Predicted seconds at a flat channel-weight vector (default: every channel alive)."""
        weights = np.ones(self.n_channels) if weights is None else np.asarray(weights, np.float64)
        return self.cost(*self.sums(weights))

    def term(self, a_in, a_out, r_in, r_out, xp=np):
        """The regularisation term whose gradient in R is each channel's marginal latency: the slopes at the
        current widths (constants) times the sums of R over each call's input and output entries."""
        if xp is np:
            d_in, d_out = self._slopes(np.asarray(a_in, np.float64), np.asarray(a_out, np.float64))
            return self.scale * float(np.sum(d_in * r_in + d_out * r_out))
        import tensorflow as tf
        d_in, d_out = self._slopes(tf.cast(a_in, tf.float64), tf.cast(a_out, tf.float64), xp)
        d_in = tf.stop_gradient(tf.cast(d_in * self.scale, r_in.dtype))
        d_out = tf.stop_gradient(tf.cast(d_out * self.scale, r_out.dtype))
        return tf.reduce_sum(d_in * r_in + d_out * r_out)

    def marginal(self, alive, window=1):
        """Seconds each channel saves if it alone is removed, at the flat 0/1 (or fractional) ``alive``: the
        slope of the table at the current widths. ``window`` > 1: the average saving per channel of removing
        ``window`` channels (a backward difference), which sees through the flat stretches of a device that
        pads widths to a multiple (where the slope is zero, and a greedy search would stop)."""
        a_in, a_out = self.sums(np.asarray(alive, np.float64))
        if window > 1:
            here = self.per_call(a_in, a_out)
            d = []
            for lower in ((np.maximum(a_in - window, 0.0), a_out), (a_in, np.maximum(a_out - window, 0.0))):
                step = np.maximum((a_in - lower[0]) + (a_out - lower[1]), 1e-12)
                d.append((here - self.per_call(*lower)) / step)
            d_in, d_out = d
        else:
            d_in, d_out = self._slopes(a_in, a_out)
        grad = np.zeros(self.n_channels)
        for (pairs, counts), d in ((self.in_matrix, d_in), (self.out_matrix, d_out)):
            if len(pairs):
                np.add.at(grad, pairs[:, 1], counts * d[pairs[:, 0]])
        return self.scale * grad

    def extrapolated(self, weights=None):
        """``[(layer path, input width, output width)]`` of the calls whose widths lie outside their entry's
        grid at ``weights`` (priced by linear extrapolation)."""
        weights = np.ones(self.n_channels) if weights is None else np.asarray(weights, np.float64)
        a_in, a_out = self.sums(weights)
        out = self.grids.outside(a_in, a_out)
        return [(self.specs[k].call.path, float(a_in[k]), float(a_out[k])) for k in np.flatnonzero(out)]

    def warn_extrapolated(self, weights=None, what="the prediction"):
        found = self.extrapolated(weights)
        if found:
            names = ", ".join(f"{p} ({i:g} in, {o:g} out)" if i else f"{p} ({o:g})" for p, i, o in found[:4])
            more = f" and {len(found) - 4} more" if len(found) > 4 else ""
            warnings.warn(f"{what} extrapolates the latency table linearly beyond its measured widths for "
                          f"{len(found)} call(s): {names}{more}. Profile with a grid that covers these widths "
                          "(ms.profile_latency(..., widen=...)) for measured figures.", UserWarning, stacklevel=3)
        return found


def _tf_where(condition, a, b):
    import tensorflow as tf
    return tf.where(condition, a, b)


class _TFOps:
    """The numpy functions _Grids uses, on TensorFlow tensors (keras.ops lacks a batched gather)."""

    def __getattr__(self, name):
        import tensorflow as tf
        return {"maximum": tf.maximum, "clip": tf.clip_by_value, "sum": tf.reduce_sum}[name]


_TF = _TFOps()


def _summing(flat_indices):
    rows, cols = [], []
    for k, idx in enumerate(flat_indices):
        cols.append(np.asarray(idx, np.int64))
        rows.append(np.full(len(idx), k, np.int64))
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    if not len(rows):
        return np.zeros((0, 2), np.int64), np.zeros(0)
    pairs, counts = np.unique(np.stack([rows, cols], axis=1), axis=0, return_counts=True)
    return pairs.reshape(-1, 2), counts.astype(np.float64)


def _apply(matrix, vector, n, xp):
    pairs, counts = matrix
    if xp is np:
        out = np.zeros(n)
        if len(pairs):
            np.add.at(out, pairs[:, 0], counts * vector[pairs[:, 1]])
        return out
    import tensorflow as tf
    if not len(pairs):
        return tf.zeros(n, vector.dtype)
    picked = tf.gather(vector, tf.constant(pairs[:, 1], tf.int32)) * tf.constant(counts, vector.dtype)
    return tf.math.unsorted_segment_sum(picked, tf.constant(pairs[:, 0], tf.int32), n)


def _graph(model_or_graph):
    if isinstance(model_or_graph, ChannelGraph):
        return model_or_graph
    if not isinstance(model_or_graph, keras.Model):
        raise TypeError(f"expected a keras.Model or a ChannelGraph, got {type(model_or_graph).__name__}")
    return analyze(model_or_graph)


def as_table(table, name="table"):
    """``table`` as a :class:`LatencyTable`: a table, its dict (as a MorphOptimizer's config saves it) or the
    path of its JSON file."""
    if isinstance(table, LatencyTable):
        return table
    if isinstance(table, dict):
        return LatencyTable.from_dict(table)
    if isinstance(table, (str, os.PathLike)):
        return LatencyTable.load(table)
    raise TypeError(f"{name} must be a LatencyTable (ms.profile_latency), its dict or a JSON path, got "
                    f"{type(table).__name__}")


def predict_latency(model, table, alive=None, *, backend=None, batch_size=None, machine=None):
    """Predicted seconds of one forward pass of ``model`` (a keras.Model or its ChannelGraph) on the machine,
    backend and batch size ``table`` was measured with: the sum of its calls' entries at their widths plus the
    table's overhead. ``alive``: widths to price instead of the model's own (as ``ms.count_flops`` takes them:
    group id or producer name -> mask or count).

    ``backend``, ``batch_size``, ``machine`` (True: this machine): what you expect the table to be for; a
    table measured otherwise is refused with a :class:`LatencyTableError`. Warns when a width lies outside the
    table's grid (extrapolated)."""
    table = as_table(table)
    table.check(backend=backend, batch_size=batch_size, machine=machine)
    graph = _graph(model)
    latency = LatencyModel(graph, table)
    weights = graph.channel_weights(alive)
    latency.warn_extrapolated(weights, f"predict_latency of '{graph.model.name}'")
    return float(latency.value(weights))


# --- measuring ---------------------------------------------------------------------------------------------------

def _check_profile_arguments(model, backend, batch_size, threads, repeats, points, widen):
    if not isinstance(model, keras.Model):
        raise TypeError(f"profile_latency() takes a keras.Model, got {type(model).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    for name, value in (("batch_size", batch_size), ("repeats", repeats), ("points", points)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                or threads < 1):
        raise ValueError(f"threads must be an integer >= 1 (or None: as TensorFlow is configured), got {threads!r}")
    if isinstance(widen, bool) or not isinstance(widen, (int, float)) or not (1.0 <= widen <= 8.0):
        raise ValueError(f"widen must be a number in [1, 8] (how far past the model's widths the grid goes), "
                         f"got {widen!r}")


def apply_threads(backend, threads):
    """The thread count the measurement runs with. LiteRT takes it per interpreter. TensorFlow takes it only
    before it initialises: when it cannot be applied any more, this warns and returns what TensorFlow uses
    (0: its default, every core)."""
    if backend == "litert":
        return int(threads or 0)
    import tensorflow as tf

    threading = tf.config.threading
    current = threading.get_intra_op_parallelism_threads()
    if threads is None or current == threads:
        return int(current)
    try:
        threading.set_intra_op_parallelism_threads(int(threads))
        threading.set_inter_op_parallelism_threads(int(threads))
        return int(threads)
    except RuntimeError:
        warnings.warn(f"threads={threads} cannot be applied: TensorFlow is already initialised with "
                      f"{current or 'its default (every core)'} intra-op threads; the table records "
                      f"threads={current}. Call ms.profile_latency (or "
                      "tf.config.threading.set_intra_op_parallelism_threads) before TensorFlow runs anything, "
                      "or pass threads=None.", UserWarning, stacklevel=3)
        return int(current)


def default_grid(width, points=DEFAULT_POINTS, step=8, probe=True):
    """Grid of one width axis up to ``width``: ``points`` widths at multiples of ``step`` and width 1 (or, where
    the layer is narrow, at most 2 x step, ``points`` widths from 1), plus, with ``probe``, one width just past a multiple
    (to see whether the device runs multiples faster: :meth:`LatencyTable.suggested_round_to`)."""
    width = int(width)
    if width <= 2 * step:
        values = set(np.unique(np.round(np.linspace(1, width, min(points, width))).astype(int)).tolist())
    else:
        values = {int(max(step, round(x / step) * step)) for x in np.linspace(step, width, points)}
        # and width 1: pruning can take a layer below the first multiple (extrapolating there is a guess)
        values = {v for v in values if v <= width} | {1, width}
        if probe:
            multiples = sorted(v for v in values if v % step == 0 and v + step <= width)
            if multiples:
                values.add(multiples[len(multiples) // 2] + 1)
    return sorted(values)


def cache_directory(cache_dir=None):
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / "latency"
    return Path.home() / ".cache" / "morphsparse" / "latency"


def _time_runners(runners, repeats, clock=time.perf_counter):
    """(minimum, median, ratio) seconds per call of every runner, the ratio being the median over the rounds
    of its sample over the first runner's sample of the same round: warm-up, then ``repeats`` rounds in which
    every runner is timed once, the order reversed every other round (so that load and drift hit all alike);
    each sample repeats the call until it lasts about :data:`SAMPLE_SECONDS`. Python's garbage collector is
    collected first and kept off while timing, as ``timeit`` does: a process that has built many models has
    much to collect, and a collection inside a sample would be charged to whichever call it hit."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        return _time_runners_without_gc(runners, repeats, clock)
    finally:
        if enabled:
            gc.enable()


def _time_runners_without_gc(runners, repeats, clock):
    numbers = []
    for run in runners:
        run()
        run()
        start = clock()
        run()
        once = max(clock() - start, 1e-7)
        numbers.append(int(min(200, max(1, SAMPLE_SECONDS / once))))
    samples = [[] for _ in runners]
    for r in range(repeats):
        order = range(len(runners)) if r % 2 == 0 else reversed(range(len(runners)))
        for i in order:
            run, n = runners[i], numbers[i]
            start = clock()
            for _ in range(n):
                run()
            samples[i].append((clock() - start) / n)
    first = np.array(samples[0])
    return [(min(s), statistics.median(s), float(np.median(np.array(s) / first))) for s in samples]


def _random_inputs(tensors, shapes, seed=0):
    rng = np.random.default_rng(seed)
    arrays = []
    for tensor, shape in zip(tensors, shapes):
        dtype = str(tensor.dtype)
        if "int" in dtype:
            arrays.append(np.zeros(shape, dtype))
        else:
            arrays.append(rng.standard_normal(shape).astype(dtype))
    return arrays


def _runner(model, arrays, backend, threads):
    """A no-argument function running ``model`` once on ``arrays`` in ``backend``."""
    if backend == "keras":
        import tensorflow as tf
        inputs = [tf.constant(a) for a in arrays]
        # in the structure the model was built on (a dict for keras_hub backbones), flattened as model.inputs
        structure = keras.tree.pack_sequence_as(model.input, inputs)
        fn = tf.function(_call_model(model), jit_compile=False)
        return lambda: fn(structure)
    from morphsparse import litert as _litert
    runner = _litert.interpreter(_litert.convert(model, sparse=False), threads=threads or 1)
    # the converter fixes an unknown batch dimension to 1: give the inputs the batch asked for
    resized = False
    for detail in runner.get_input_details():
        same_rank = [a for a in arrays if a.ndim == len(detail["shape"])]
        if same_rank and tuple(detail["shape"])[0] != same_rank[0].shape[0]:
            runner.resize_tensor_input(detail["index"], (same_rank[0].shape[0],) + tuple(detail["shape"])[1:])
            resized = True
    if resized:
        runner.allocate_tensors()
    # by name where the converter kept the names (inputs of one shape, such as a backbone's token ids and
    # padding mask, then get their own arrays), else by shape
    remaining = _litert.in_interpreter_order(runner, model, arrays)
    for detail in runner.get_input_details():
        match = next((a for a in remaining if tuple(a.shape) == tuple(detail["shape"])), None)
        if match is None:
            raise RuntimeError(f"LiteRT input {detail['name']} of shape {tuple(detail['shape'])} has no match")
        remaining = [a for a in remaining if a is not match]
        runner.set_tensor(detail["index"], match.astype(detail["dtype"]))
    return runner.invoke


def _call_model(model):
    # one Python function per model: tf.function counts retracings per function, and warns about many
    def call(x):
        return model(x, training=False)
    return call


def _empty_runner(arrays, backend, threads):
    """The fixed cost of one call: a one-layer model of the same inputs whose layer does nothing (entered
    the way every timed model is entered, so the subtraction leaves the layer's own time)."""
    inputs = [keras.Input(batch_shape=a.shape, dtype=str(a.dtype)) for a in arrays]
    if backend == "keras":
        outputs = [keras.layers.Identity()(x) for x in inputs]
        model = keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs if len(outputs) > 1 else outputs[0])
        return _runner(model, arrays, backend, threads)
    try:
        model = keras.Model(inputs[0], keras.layers.Activation("linear")(inputs[0]) + 0.0)
        return _runner(model, arrays[:1], backend, threads)
    except Exception:   # noqa: BLE001 - a converter that refuses an empty model: no fixed cost subtracted
        return lambda: None


def _one_layer_model(spec, graph, batch_size, w_in=None, w_out=None):
    """A model of one call at new widths (``w_in`` for the kernel's input, ``w_out`` for its output; an
    elementwise call's inputs all take ``w_out``), and the shapes of its inputs."""
    call = spec.call
    handler = _handlers.rebuild_part(call.handler)
    in_widths = [call.input_channels(i) for i in range(len(call.input_shapes))]
    if spec.kind in ("kernel", "depthwise") and w_in is not None:
        in_widths[0] = w_in
    if spec.kind == "elementwise":
        in_widths = [w_out] * len(in_widths)
    query = call.input_keys[spec.in_index]
    if spec.kind == "attention" and w_in is not None:
        in_widths = [w_in if key == query else w for key, w in zip(call.input_keys, in_widths)]
    out_width = w_out if spec.kind in ("kernel", "elementwise") else None
    shapes = []
    for shape, width in zip(call.input_shapes, in_widths):
        shape = tuple(shape)
        if any(d is None for d in shape[1:]):
            raise LatencyTableError(f"layer '{call.path}' ({type(call.layer).__name__}) has an input of unknown size "
                                    f"{shape}: give the model a fixed input shape (and sequence length) to profile "
                                    "it")
        shapes.append((batch_size,) + shape[1:-1] + (width,) if len(shape) >= 2 else (batch_size,))
    # one input per distinct tensor the call reads (self-attention reads one tensor twice)
    fresh = {}
    for key, s, t in zip(call.input_keys, shapes, call.node.input_tensors):
        if key not in fresh:
            fresh[key] = (keras.Input(batch_shape=s, dtype=t.dtype), s)
    inputs, shapes = [x for x, _ in fresh.values()], [s for _, s in fresh.values()]
    # a fresh layer from the config (never the user's layer: calling it again would add a node to it)
    if spec.kind == "depthwise":
        multiplier = max(1, call.output_channels(0) // max(1, call.input_channels(0)))
        keep_out = [np.ones(in_widths[0] * multiplier, bool)]
    elif out_width is not None:
        keep_out = [np.ones(out_width, bool)]
    elif spec.kind == "attention":
        # the output keeps the query's width if it had it (a transformer's residual stream); the timed internal
        # axis (the heads) takes w_out, any other internal axis its full count
        same = call.output_channels(0) == call.input_channels(spec.in_index)
        keep_out = [np.ones(in_widths[spec.in_index] if same else call.output_channels(0), bool)]
        keep_out += [np.ones(call.output_channels(j), bool) for j in range(1, len(call.output_shapes))]
        keep_out += [np.ones(w_out if j == spec.out_index else len(call.out_channels_idx[j]), bool)
                     for j in range(len(call.output_shapes), len(call.out_channels_idx))]
    else:
        keep_out = [np.ones(call.output_channels(j), bool) for j in range(len(call.output_shapes))]
    config = dict(handler.rebuild_config(call, [np.ones(w, bool) for w in in_widths], keep_out))
    config.pop("build_config", None)
    config["name"] = f"profiled_{call.layer.name}"
    layer = handler.rebuild_class(call).from_config(config)
    args, kwargs = graph.call_arguments(call, {key: x for key, (x, _) in fresh.items()})
    outputs = layer(*args, **symbolic_kwargs(layer, kwargs))
    width = len(keep_out[0])
    for follower in spec.followers:     # the BatchNorm and activation the runtime fuses into the kernel
        rules = _handlers.rebuild_part(follower.handler)
        config = dict(rules.rebuild_config(follower, [np.ones(width, bool)], [np.ones(width, bool)]))
        config.pop("build_config", None)
        config["name"] = f"profiled_{follower.layer.name}"
        outputs = rules.rebuild_class(follower).from_config(config)(outputs)
    model = keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs)
    return model, shapes


def _grid_for(kind, in_width, out_width, in_removable, out_removable, points, widen):
    has_in, has_out = _axes_of(kind)
    def axis(width, removable, present):
        if not present:
            return None
        if not removable:
            return [int(width)]
        return default_grid(int(math.ceil(width * widen)), points)
    return axis(in_width, in_removable, has_in), axis(out_width, out_removable, has_out)


def _collect_specs(graph):
    """{signature: (spec of the first call, widest input, widest output, input removable, output removable)}."""
    found = {}
    for spec in timed_calls(graph):
        call = spec.call
        in_w, out_w = spec.widths()
        in_rm, out_rm = (len(groups) > spec_index and any(graph.groups[int(g)].removable
                                                          for g in np.unique(groups[spec_index]))
                         for groups, spec_index in ((call.in_groups, spec.in_index),
                                                    (call.out_groups, spec.out_index)))
        if spec.signature in found:
            first, a, b, c, d = found[spec.signature]
            found[spec.signature] = (first, max(a, in_w), max(b, out_w), c or in_rm, d or out_rm)
        else:
            found[spec.signature] = (spec, in_w, out_w, in_rm, out_rm)
    return found


def _cache_key(machine, backend, batch_size, threads, specs, settings):
    text = _jsonable({"machine": machine, "backend": backend, "batch_size": batch_size, "threads": threads,
                      "signatures": sorted((sig, v[1:]) for sig, v in specs.items()), "settings": settings,
                      "version": VERSION})
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def measure_latency(model, backend="keras", batch_size=1, threads=1, repeats=DEFAULT_REPEATS):
    """``{"minimum": s, "median": s}``: the whole model's forward pass timed end to end, with the discipline
    :func:`profile_latency` times layers with (warm-up, ``repeats`` rounds, a sample lasting about
    :data:`SAMPLE_SECONDS`; for ``backend="litert"``, the converted model in the interpreter with ``threads``).
    What a table's prediction is compared with."""
    _check_profile_arguments(model, backend, batch_size, threads, repeats, 1, 1.0)
    return _measure([model], backend, batch_size, apply_threads(backend, threads), repeats)[0]


def compare_latency(models, backend="keras", batch_size=1, threads=1, repeats=DEFAULT_REPEATS):
    """:func:`measure_latency` of several models timed together, alternating in every round: one list of
    ``{"minimum": s, "median": s, "ratio": r}``. Their ratios are what to compare (a slim model against its
    seed): a machine whose speed drifts from one minute to the next moves them all alike. ``ratio`` is the
    median over the rounds of the model's time over the first model's time in the same round, whose two
    samples are moments apart: it repeats better than the ratio of the medians (over repeated timings on the
    project's CPU, a spread of 5% against 9% in the median configuration,
    ``benchmarks/results/latency_tables_repeatability.json``)."""
    models = list(models)
    for model in models:
        _check_profile_arguments(model, backend, batch_size, threads, repeats, 1, 1.0)
    return _measure(models, backend, batch_size, apply_threads(backend, threads), repeats)


def _measure(models, backend, batch_size, threads, repeats):
    runners = []
    for model in models:
        shapes = [(batch_size,) + tuple(t.shape)[1:] for t in model.inputs]
        runners.append(_runner(model, _random_inputs(model.inputs, shapes), backend, threads))
    return [{"minimum": low, "median": mid, "ratio": ratio} for low, mid, ratio in _time_runners(runners, repeats)]


def _monotone(values):
    """Measured seconds made non-decreasing in both widths (more channels never run faster; a device that
    pads widths shows steps, which stay): the mean of the running maximum from the narrow end and the running
    minimum from the wide end, along each axis. Timing noise would otherwise give some channels a negative
    marginal latency, which no search could use."""
    for axis in (0, 1):
        up = np.maximum.accumulate(values, axis=axis)
        down = np.flip(np.minimum.accumulate(np.flip(values, axis=axis), axis=axis), axis=axis)
        values = (up + down) / 2
    return values


#: the second timing of the profiling model that fits ``scale``: every removable group at this fraction
CALIBRATION_WIDTH = 0.5


class _Calibration:
    """The two whole-model timings that fit a table's ``scale`` and ``overhead``: the model at full width and
    rebuilt with every removable group at :data:`CALIBRATION_WIDTH`. The pair is timed three times (before the
    layers, halfway through them and after them), and the fit uses the timing whose full-model time is the
    median of the three. A slow minute that fell on the only calibration set every absolute prediction of the
    table (the small ViT on LiteRT at batch 1 was calibrated at 0.059 ms and ran at 0.047); the quicker of two
    timings, used next, guarded against that but took Keras's fast minutes (its time wanders both ways): the
    plain CNN on Keras at batch 1 was calibrated at 1.87 ms, not 2.20, and ran at 2.15 for the rest of the run.
    The median of three is off only when two of the three timings are."""

    def __init__(self, model, graph, backend, batch_size, threads, repeats):
        self.model, self.graph = model, graph
        self.timing = (backend, batch_size, threads, repeats)
        self.narrow, self.reason = None, "the model has no removable channel group"
        counts = {g.id: max(1, int(round(g.size * CALIBRATION_WIDTH))) for g in graph.removable_groups
                  if g.size > 1}
        if counts:
            try:
                self.narrow = build_at_widths(model, graph, counts, name=f"{model.name}_calibration")
            except Exception as err:   # noqa: BLE001 - a model the engine cannot rebuild is timed at one width
                self.reason = f"it could not be rebuilt narrower ({err})"
        self.timings = []

    def time(self):
        self.timings.append(_measure([self.model] + ([self.narrow] if self.narrow is not None else []),
                                     *self.timing))

    def fit(self, table):
        """Set ``table.scale`` and ``table.overhead`` from the median timing: solve
        ``time = scale * sum of entries + overhead`` on its two points. Where they cannot fix a scale (no
        removable group, a model that cannot be rebuilt, timings too noisy for a positive slope), the scale
        stays 1 and the overhead is the full model's time less its entries, with a warning."""
        statistic = table.statistic
        ranked = sorted(self.timings, key=lambda pair: pair[0][statistic])
        timed = ranked[(len(ranked) - 1) // 2]         # of two, the quicker
        whole = timed[0][statistic]
        table.settings["whole_model_seconds"] = timed[0]
        table.settings["calibration_seconds"] = [pair[0][statistic] for pair in self.timings]
        full_sum = LatencyModel(self.graph, table).value()          # scale 1, overhead 0 at this point
        reason = self.reason
        narrow_sum = None
        if self.narrow is not None:
            table.settings["narrow_model_seconds"] = {**timed[1], "width": CALIBRATION_WIDTH}
            try:
                narrow_sum = LatencyModel(analyze(self.narrow), table).value()
            except Exception as err:   # noqa: BLE001 - after minutes of timing, a table with scale 1 beats none
                reason = f"its narrower copy cannot be priced ({err})"
        if narrow_sum is not None:
            slope = (whole - timed[1][statistic]) / (full_sum - narrow_sum) if full_sum > narrow_sum else float("nan")
            if math.isfinite(slope) and 0.2 <= slope <= 5.0:
                table.scale = float(slope)
                table.overhead = float(whole - slope * full_sum)
                return
            reason = (f"the two timings give a scale of {slope:.3g} (the machine was busy, or the model's time "
                      "does not follow its layers')")
        table.scale, table.overhead = 1.0, float(whole - full_sum)
        warnings.warn(f"profile_latency of '{self.model.name}': the whole-model calibration keeps scale 1: "
                      f"{reason}; the overhead is the full model's time less its calls' "
                      f"({table.overhead * 1e3:.3f} ms)", UserWarning, stacklevel=4)


#: a fitted overhead below minus this share of the whole model's time means its line reaches zero time while
#: the layers still run: the table's entries hold time the whole model does not spend per layer
NEGATIVE_OVERHEAD_SHARE = 0.25


def _warn_if_time_stays(table, model, stacklevel):
    """Warn where the two whole-model timings fit a line whose overhead is far below zero: the entries, scaled,
    sum to much more than the model takes, so part of what they hold is not spent per layer in the whole
    model, and the line extrapolates narrow widths to less time than they take (in the benchmark, Keras at
    batch 1 fitted the small ViT at -141% of its time, and a resize the table put at 30% ran at 86-90%)."""
    whole = table.settings.get("whole_model_seconds", {}).get(table.statistic)
    if not whole or table.overhead >= -NEGATIVE_OVERHEAD_SHARE * whole:
        return
    warnings.warn(f"profile_latency of '{model.name}': the whole model takes {whole * 1e3:.3f} ms, "
                  f"{-table.overhead * 1e3:.3f} ms less than {table.scale:.3f} x its calls' entries: its time does "
                  f"not shrink with its widths as the table says (per-call dispatch, as Keras has at "
                  f"small batches, or a busy machine); predictions of narrow widths will be too low. Check a "
                  f"result with ms.compare_latency or land it with ms.land_latency; backend='litert' or a larger "
                  f"batch_size is more predictable", UserWarning, stacklevel=stacklevel)


def _progress(enabled, text):
    if enabled:
        print(f"profile_latency: {text}", file=sys.stderr, flush=True)


def profile_latency(model, backend="keras", batch_size=1, threads=1, *, points=DEFAULT_POINTS, widen=1.0,
                    repeats=DEFAULT_REPEATS, statistic="median", cache_dir=None, refresh=False, progress=True):
    """Measure how long each layer call of ``model`` takes as a function of its widths, on this machine:
    a :class:`LatencyTable` for :func:`predict_latency`, ``MorphRegularizer(target="latency", device=table)``,
    ``ms.prune`` and ``ms.expand``.

    Args:
        model: a built functional or Sequential model with fixed input shapes (batch excluded).
        backend: "keras" (a compiled ``tf.function`` of the model, as Keras runs it) or "litert" (each
            one-layer model converted with the LiteRT converter ``ms.to_litert`` uses, timed in the
            interpreter).
        batch_size: the batch the table is for (latency is not linear in it: profile each batch you serve).
        threads: the threads to run with (LiteRT: per interpreter; Keras: TensorFlow's intra- and inter-op
            threads, which can only be set before TensorFlow initialises: otherwise a warning, and the table
            records the threads actually used). None: as TensorFlow is configured.
        points: grid points per width axis (multiples of 8, every width where a layer is narrow; plus one
            width past a multiple to see steps). Axes whose channels cannot change are timed at their width.
        widen: the grid goes to this multiple of the model's widths (for ``ms.expand`` past them).
        repeats: rounds of timing (each times every grid point of a signature once, alternating).
        statistic: which one predictions use: "median" (what an end-to-end timing reports) or "minimum".
        cache_dir: where tables are cached (default ``$MORPHSPARSE_CACHE/latency`` or
            ``~/.cache/morphsparse/latency``); a second call with the same model and settings on the same
            machine loads the table instead of measuring. ``refresh=True`` measures again.
        progress: print one line per call signature to stderr while measuring.

    The one-layer models are rebuilt from each layer's config by its handler, as ``ms.expand`` rebuilds
    layers at new widths; the time of an empty call is subtracted from each. The whole model is then timed
    too, and what it takes beyond the sum of its calls' entries is the table's ``overhead``."""
    _check_profile_arguments(model, backend, batch_size, threads, repeats, points, widen)
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    actual_threads = apply_threads(backend, threads)
    graph = analyze(model)
    specs = _collect_specs(graph)
    machine = machine_key()
    settings = {"points": int(points), "widen": float(widen), "repeats": int(repeats), "statistic": statistic,
                "sample_seconds": SAMPLE_SECONDS, "calibration_width": CALIBRATION_WIDTH, "fused": list(FUSED_NORMS
                + FUSED_ACTIVATIONS), "model": model.name}
    key = _cache_key(machine, backend, batch_size, actual_threads, specs,
                     {k: v for k, v in settings.items() if k != "model"})
    path = cache_directory(cache_dir) / f"{key}.json"
    if path.exists() and not refresh:
        try:
            table = LatencyTable.load(path)
            _progress(progress, f"cached table {path}")
            _warn_if_time_stays(table, model, stacklevel=3)
            return table
        except LatencyTableError as err:
            warnings.warn(f"the cached latency table {path} is unreadable ({err}); measuring again", UserWarning,
                          stacklevel=2)
    import tensorflow as tf
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")    # every one-layer model is a new tf.function: TensorFlow's retracing notes are noise
    try:
        return _profile(model, graph, specs, backend, batch_size, actual_threads, points, widen, repeats, statistic,
                        machine, settings, path, progress)
    finally:
        logger.setLevel(level)


def _profile(model, graph, specs, backend, batch_size, actual_threads, points, widen, repeats, statistic, machine,
             settings, path, progress):
    start = time.perf_counter()
    calibration = _Calibration(model, graph, backend, batch_size, actual_threads, repeats)
    calibration.time()
    entries = {}
    for index, (signature, (spec, in_w, out_w, in_rm, out_rm)) in enumerate(specs.items(), 1):
        if index - 1 == len(specs) // 2:
            calibration.time()      # halfway: the second of three, so that the fit can take the median
        in_grid, out_grid = _grid_for(spec.kind, in_w, out_w, in_rm, out_rm, points, widen)
        cells = [(a, b) for a in (in_grid or [None]) for b in (out_grid or [None])]
        shape = (len(in_grid or [0]), len(out_grid or [0]))
        try:
            runners, first_arrays = [], None
            for a, b in cells:
                one, shapes = _one_layer_model(spec, graph, batch_size, a, b)
                arrays = _random_inputs(one.inputs, shapes)
                first_arrays = first_arrays or arrays
                runners.append(_runner(one, arrays, backend, actual_threads))
        except Exception as err:   # noqa: BLE001 - e.g. a converter that refuses the layer alone
            if isinstance(err, LatencyTableError):
                raise
            warnings.warn(f"profile_latency: layer '{spec.call.path}' ({type(spec.call.layer).__name__}) cannot be "
                          f"timed alone with backend={backend!r} ({str(err).splitlines()[0][:200]}); its entry is "
                          "zero and its time goes into the table's overhead", UserWarning, stacklevel=3)
            zeros = np.zeros(shape).tolist()
            entries[signature] = LatencyEntry(spec.kind, in_grid, out_grid, zeros, zeros, spec.call.path)
            continue
        runners.append(_empty_runner(first_arrays, backend, actual_threads))
        timed = _time_runners(runners, repeats)
        empty_min, empty_median = timed[-1][:2]
        low = _monotone(np.maximum(np.array([t[0] for t in timed[:-1]]) - empty_min, 0.0).reshape(shape))
        mid = _monotone(np.maximum(np.array([t[1] for t in timed[:-1]]) - empty_median, 0.0).reshape(shape))
        entries[signature] = LatencyEntry(spec.kind, in_grid, out_grid, mid.tolist(), low.tolist(), spec.call.path)
        _progress(progress, f"[{index}/{len(specs)}] {spec.call.path} ({type(spec.call.layer).__name__}, "
                            f"{spec.kind}, {len(cells)} widths): {np.max(mid) * 1e3:.3f} ms at the widest; "
                            f"{time.perf_counter() - start:.0f} s")
    table = LatencyTable(machine, backend, int(batch_size), int(actual_threads), entries, overhead=0.0,
                         statistic=statistic, settings=settings)
    calibration.time()
    calibration.fit(table)
    _warn_if_time_stays(table, model, stacklevel=4)
    predicted = LatencyModel(graph, table).value()
    whole = table.settings["whole_model_seconds"]
    table.settings.update(seconds=round(time.perf_counter() - start, 1))
    _progress(progress, f"whole model {whole[statistic] * 1e3:.3f} ms (predicted {predicted * 1e3:.3f} ms): "
                        f"{table.scale:.3f} x the calls + {table.overhead * 1e3:.3f} ms; "
                        f"{time.perf_counter() - start:.0f} s; cached at {path}")
    table.save(path)
    return table


__all__ = ["LatencyTable", "LatencyEntry", "LatencyModel", "LatencyTableError", "profile_latency",
           "predict_latency", "measure_latency", "compare_latency", "machine_key", "call_spec", "timed_calls", "default_grid", "as_table",
           "apply_threads", "cache_directory", "BACKENDS", "KINDS"]
