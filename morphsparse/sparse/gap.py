"""GaP, scheduled grow-and-prune (Ma et al., ICLR 2022): cyclic GaP as a mask updater, and parallel GaP.

The masked layers are split into ``k`` partitions. Training starts from a random sparse model at the target
distribution; then, phase after phase, one partition is grown dense while every other partition stays at its
target sparsity::

    phase j (steps begin + j*P + 1 ... begin + (j+1)*P):  partition j mod k is dense, the rest sparse
    at the step between two phases:  the dense partition is pruned back to target by |W|, the next one grows
    after rounds*k phases:          everything is at target; training goes on with the mask fixed (fine-tune)

A grown position restarts from zero with reset optimizer slots; this is the ``SparseOptimizer``'s rule for any
position a mask update adds, so GaP only has to say which masks are all ones.

Cyclic GaP runs through ``ms.sparse_optimizer(model, optimizer, method="gap", ...)`` with the same contract as
RigL: ``fit`` (or a custom loop's ``optimizer.apply_gradients``) drives it from the optimizer's step, and
``ms.strip`` at any point prunes a partition grown in the current phase back to target.

Parallel GaP (:func:`parallel_gap`) trains ``k`` copies for one phase, copy ``i`` growing partition ``i``, and
combines partition ``i`` from copy ``i``. Here the copies train one after another; the combination is written
as the element-wise sum of per-copy contributions precisely so that, on ``k`` workers, it is one all-reduce
(see docs/gap_snip_lottery.md).
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from morphsparse.recipe import compile_wrapped, compiler_like, two_phases

from .api import check_passed_options, copy_model, sparse_optimizer
from .footprint import live_parameters
from .kernels import layer_tree
from .lottery import prune_by_magnitude
from .optimizer import find_sparse_optimizer
from .schedules import UpdateSchedule, whole_number
from .updaters import MaskUpdater, register_updater

_PACKAGE = "morphsparse"
NO_PARTITION = -1      # grown_partition() outside the grow-and-prune rounds: every partition is at target


# ---------------------------------------------------------------------------------------------- partitions
def _check_partition_spec(partitions):
    """Validate ``partitions=`` early (before a model is known): a count >= 1 or a list of name lists."""
    if isinstance(partitions, bool):
        raise TypeError("partitions must be a number of partitions or a list of lists of layer names")
    if isinstance(partitions, (int, np.integer)):
        if int(partitions) < 1:
            raise ValueError(f"partitions must be at least 1, got {partitions}")
        return int(partitions)
    if isinstance(partitions, (list, tuple)) and partitions:
        groups = []
        for group in partitions:
            group = [group] if isinstance(group, str) else list(group)
            if not group or not all(isinstance(name, str) for name in group):
                raise TypeError(f"each partition must be a non-empty list of layer names or globs, got {group!r}")
            groups.append(group)
        return groups
    raise TypeError(f"partitions must be a positive number or a list of lists of layer names, got {partitions!r}")


def partition_count(partitions) -> int:
    spec = _check_partition_spec(partitions)
    return spec if isinstance(spec, int) else len(spec)


def resolve_partitions(layer_paths: list, partitions) -> list:
    """Split masked layers (paths in model order) into partitions: a list of lists of paths.

    A number ``k`` gives ``k`` contiguous groups whose sizes differ by at most one layer (the earlier groups get
    the extra layers), the split the GaP paper uses for ResNet-50. A list of lists of layer names (or globs,
    matched against the layer's name or path) gives the partitions explicitly; every masked layer must be in
    exactly one of them.
    """
    spec = _check_partition_spec(partitions)
    paths = list(layer_paths)
    if isinstance(spec, int):
        if spec > len(paths):
            raise ValueError(f"partitions={spec} but the model has only {len(paths)} masked layer(s) "
                             f"({paths}); use at most {len(paths)} partitions")
        return [list(chunk) for chunk in np.array_split(np.array(paths, dtype=object), spec)]
    owner = {}
    for index, group in enumerate(spec):
        for pattern in group:
            hits = [p for p in paths
                    if fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p.rsplit("/", 1)[-1], pattern)]
            if not hits:
                raise ValueError(f"partition {index} names {pattern!r}, which matches no masked layer; masked "
                                 f"layers are: {paths}")
            for path in hits:
                if owner.setdefault(path, index) != index:
                    raise ValueError(f"layer {path!r} is in partitions {owner[path]} and {index}; each masked "
                                     "layer must be in exactly one partition")
    missing = [p for p in paths if p not in owner]
    if missing:
        raise ValueError(f"masked layer(s) {missing} are in no partition; every masked layer must be in one")
    return [[p for p in paths if owner[p] == index] for index in range(len(spec))]


# ---------------------------------------------------------------------------------------------- schedule
@keras.saving.register_keras_serializable(package=_PACKAGE)
class GapSchedule(UpdateSchedule):
    """When GaP's phases start and which partition is dense in each.

    Masks change at ``begin_step + j * P`` for ``j = 0 .. rounds * partitions``; the last of these is the final
    prune. ``P = steps_per_phase``, or, when that is None, ``(end_step - begin_step) // (rounds * partitions)``
    with the model's end step (75% of the first ``fit`` by default), so the grow-and-prune rounds fill the same
    share of training as RigL's updates and the rest is fine-tuning with a fixed mask.
    """

    def __init__(self, partitions: int = 4, rounds: int = 1, steps_per_phase: int | None = None,
                 begin_step: int = 0):
        if isinstance(partitions, (int, np.integer)) and not isinstance(partitions, bool) and int(partitions) < 1:
            raise ValueError(f"partitions must be at least 1, got {partitions}")
        self.partitions = whole_number(partitions, "partitions", 1)
        self.rounds = whole_number(rounds, "rounds", 1)
        self.steps_per_phase = whole_number(steps_per_phase, "steps_per_phase", 1, allow_none=True)
        begin_step = whole_number(begin_step, "begin_step", 0)
        phases = self.rounds * self.partitions
        # Known end: the optimizer's end step is not needed. None: the optimizer's end step (from total_steps).
        end_step = None if self.steps_per_phase is None else int(begin_step) + phases * self.steps_per_phase
        super().__init__(update_every=self.steps_per_phase or 1, begin_step=begin_step, end_step=end_step)

    @property
    def phases(self) -> int:
        return self.rounds * self.partitions

    @property
    def needs_end(self) -> bool:
        return self.steps_per_phase is None

    def last_update_step(self, model_end_step: int):
        if self.steps_per_phase is None and (model_end_step is None or model_end_step < 0):
            return None
        return int(self.grow_end(model_end_step))

    def phase_length(self, model_end_step):
        """P, as an int64 tensor."""
        if self.steps_per_phase is not None:
            return tf.constant(self.steps_per_phase, tf.int64)
        span = tf.cast(model_end_step, tf.int64) - self.begin_step
        return tf.maximum(span // self.phases, 1)

    def grow_end(self, model_end_step):
        """The step of the final prune (no partition is dense from this step's update on)."""
        return self.begin_step + self.phases * self.phase_length(model_end_step)

    def is_update_step(self, step, model_end_step):
        step = tf.cast(step, tf.int64)
        length = self.phase_length(model_end_step)
        return ((step >= self.begin_step) & (step <= self.grow_end(model_end_step))
                & tf.equal((step - self.begin_step) % length, 0))

    def grown_partition(self, step, model_end_step):
        """The partition an update at ``step`` makes dense (int64), or ``NO_PARTITION`` (-1)."""
        step = tf.cast(step, tf.int64)
        phase = (step - self.begin_step) // self.phase_length(model_end_step)
        inside = (step >= self.begin_step) & (step < self.grow_end(model_end_step))
        return tf.where(inside, phase % self.partitions, tf.constant(NO_PARTITION, tf.int64))

    def get_config(self):
        return {"partitions": self.partitions, "rounds": self.rounds, "steps_per_phase": self.steps_per_phase,
                "begin_step": self.begin_step}


# ---------------------------------------------------------------------------------------------- updater
@register_updater("gap")
class GaP(MaskUpdater):
    """Cyclic scheduled grow-and-prune. Use through ``sparse_optimizer(model, optimizer, sparsity, method="gap", ...)``.

    Args:
        partitions: number of contiguous partitions of the masked layers in model order (default 4, as in the
            paper's ResNet-50 runs), or an explicit list of lists of layer names/globs.
        rounds: how many times each partition is grown.
        steps_per_phase: optimizer steps a partition stays dense. None: the grow-and-prune rounds fill the
            steps up to ``end_step`` (75% of ``total_steps`` by default) evenly; the rest fine-tunes.

    ``sparse_optimizer``'s ``update_every`` and ``drop_fraction`` do not apply to GaP (giving them is an error);
    ``begin_step`` delays the first phase.
    """

    def __init__(self, partitions=4, rounds: int = 1, steps_per_phase: int | None = None,
                 sparsity_type="unstructured"):
        super().__init__(sparsity_type)
        self.partitions = _check_partition_spec(partitions)
        if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or int(rounds) < 1:
            raise ValueError(f"rounds must be a positive whole number, got {rounds!r}")
        if steps_per_phase is not None and (isinstance(steps_per_phase, bool) or int(steps_per_phase) < 1):
            raise ValueError(f"steps_per_phase must be a positive number of steps or None, got {steps_per_phase!r}")
        self.rounds = int(rounds)
        self.steps_per_phase = None if steps_per_phase is None else int(steps_per_phase)
        self.partition_paths = []      # resolved by attach(): [[layer path, ...], ...]
        self.partition_of = {}         # kernel key -> partition index

    def default_schedule(self, begin_step=0, **cadence) -> GapSchedule:
        if cadence:
            given = ", ".join(f"{name}={value!r}" for name, value in cadence.items())
            raise ValueError(f"{given} has no effect with method='gap': GaP's phases are set by steps_per_phase, "
                             "rounds and partitions (and begin_step)")
        return GapSchedule(partition_count(self.partitions), self.rounds, self.steps_per_phase, begin_step)

    def attach(self, sparse):
        if not isinstance(sparse.schedule, GapSchedule):
            raise TypeError(f"method='gap' needs a GapSchedule, got {type(sparse.schedule).__name__}; leave "
                            "schedule=None in sparse_optimizer() (steps_per_phase, rounds and partitions set it)")
        paths = list(dict.fromkeys(unit.layer for unit in sparse.units))
        self.partition_paths = resolve_partitions(paths, self.partitions)
        if len(self.partition_paths) != sparse.schedule.partitions:
            raise ValueError(f"the schedule has {sparse.schedule.partitions} partitions but the updater resolved "
                             f"{len(self.partition_paths)}")
        index_of_path = {path: i for i, group in enumerate(self.partition_paths) for path in group}
        self.partition_of = {unit.key: index_of_path[unit.layer] for unit in sparse.units}

    def update_mask(self, kernel, context):
        grown = context.schedule.grown_partition(context.step, context.end_step)
        mine = tf.equal(grown, self.partition_of[kernel.key])
        # Not grown: the base update prunes by |W| down to the kernel's target count, which is a no-op for a
        # kernel already at target and the prune-back for the partition that was dense in the phase just ended.
        return tf.cond(mine, lambda: tf.ones_like(kernel.mask),
                       lambda: MaskUpdater.update_mask(self, kernel, context))

    def export_mask(self, kernel):
        target = self.sparsity_type.kept_count(tuple(kernel.weight.shape), kernel.sparsity)
        live = int(np.count_nonzero(keras.ops.convert_to_numpy(kernel.mask)))
        if live <= target:
            return kernel.mask
        return self.sparsity_type.update(kernel.mask, tf.abs(kernel.weight) * kernel.mask, None, target, 0)

    def get_config(self):
        return dict(super().get_config(), partitions=self.partitions, rounds=self.rounds,
                    steps_per_phase=self.steps_per_phase)


# ---------------------------------------------------------------------------------------------- introspection
@dataclass
class GapPhase:
    """Where a cyclic GaP model is in its schedule (after ``step`` optimizer steps)."""

    step: int
    phase_length: int
    phase: int | None             # index of the current phase, None before the first / after the last
    round: int | None
    grown_partition: int | None   # the partition that is dense now, None when all are at target
    fine_tuning: bool             # True once the final prune has happened
    partitions: list = field(default_factory=list)   # layer paths per partition


def gap_phase(model) -> GapPhase:
    """The phase a ``method="gap"`` sparse model is in now, read from its step counter and schedule."""
    sparse = find_sparse_optimizer(model)
    if not isinstance(sparse.method, GaP):
        raise TypeError(f"gap_phase needs a model made with method='gap', got method={sparse.method.name!r}")
    schedule = sparse.schedule
    step = int(keras.ops.convert_to_numpy(sparse.iterations))
    end = sparse.end_step
    if schedule.steps_per_phase is None and end < 0:
        return GapPhase(step, 0, None, None, None, False, sparse.method.partition_paths)
    length = int(schedule.phase_length(end))
    grow_end = int(schedule.grow_end(end))
    # The update that opens phase j runs at the end of step begin + j*P, so after `step` steps the last update
    # seen is the one at step - 1.
    last = step - 1
    if last < schedule.begin_step:
        return GapPhase(step, length, None, None, None, False, sparse.method.partition_paths)
    if last >= grow_end:
        return GapPhase(step, length, None, None, None, True, sparse.method.partition_paths)
    phase = (last - schedule.begin_step) // length
    return GapPhase(step, length, phase, phase // schedule.partitions, phase % schedule.partitions, False,
                    sparse.method.partition_paths)


def planned_peak_parameters(model) -> int:
    """Most live parameters a cyclic GaP model holds in any phase: all targets plus the densest grown partition.

    ``footprint.PeakParameterMonitor`` measures the same thing during ``fit``; this is the plan it must match.
    """
    sparse = find_sparse_optimizer(model)
    counts = live_parameters(model)
    kept = {unit.key: sparse.method.sparsity_type.kept_count(tuple(unit.kernel.shape), unit.sparsity)
            for unit in sparse.units}
    base = counts.live - counts.masked_live + sum(kept.values())
    extra = 0
    if isinstance(sparse.method, GaP):
        for group in sparse.method.partition_paths:
            members = set(group)
            extra = max(extra, sum(unit.size - kept[unit.key] for unit in sparse.units
                                   if unit.layer in members))
    return base + extra


# ---------------------------------------------------------------------------------------------- parallel GaP
def weight_owners(model, partition_paths) -> list:
    """For each weight of ``model`` (in ``get_weights`` order): the partition whose layers hold it, or
    None for weights outside every partition (normalisation layers, layers kept dense), which copies share."""
    index = {id(w): j for j, w in enumerate(model.weights)}
    owners = [None] * len(index)
    tree = layer_tree(model)
    for partition, paths in enumerate(partition_paths):
        for path in paths:
            for weight in tree[path].weights:
                owners[index[id(weight)]] = partition
    return owners


def grow_copy(combined, partition: list, *, compile_model, sparsify_options: dict):
    """A copy of the sparse model ``combined`` (static masks), compiled by ``compile_model`` with its optimizer
    wrapped, with the layers in ``partition`` dense. Returns ``(model, its SparseOptimizer)``.

    Its revived positions hold zeros (``combined`` keeps pruned weights at zero) and its optimizer is fresh, so
    revived weights start from zero with fresh slots, as in cyclic GaP.
    """
    source = find_sparse_optimizer(combined)
    copy = copy_model(combined)
    compile_wrapped(copy, compile_model, lambda network, inner: sparse_optimizer(network, inner, method="static",
                                                                                 **sparsify_options))
    sparse = find_sparse_optimizer(copy)
    copy.set_weights(combined.get_weights())     # sparse_optimizer drew its own masks; take combined's
    grown = set(partition)
    sparse.set_masks({unit.key: (np.ones(tuple(unit.mask.shape), np.float32) if unit.layer in grown
                                 else keras.ops.convert_to_numpy(other.mask))
                      for unit, other in zip(sparse.units, source.units)})
    return copy, sparse


def copy_contribution(weights: list, owners: list, copy_index: int, copies: int) -> list:
    """What copy ``copy_index`` adds to the combined model: its own partition's weights as they are, zeros for
    other partitions, and ``1/copies`` of every shared weight. Summed over copies this is the combined model;
    on ``copies`` workers that sum is a single all-reduce."""
    contribution = []
    for weight, owner in zip(weights, owners):
        if owner is None:
            contribution.append(np.asarray(weight, np.float64) / copies)
        elif owner == copy_index:
            contribution.append(np.asarray(weight, np.float64))
        else:
            contribution.append(np.zeros(np.shape(weight), np.float64))
    return contribution


def combine_contributions(contributions: list, like: list) -> list:
    """Element-wise sum of the copies' contributions (the all-reduce), cast back to the weights' dtypes."""
    return [np.sum([c[j] for c in contributions], axis=0).astype(np.asarray(w).dtype) for j, w in enumerate(like)]


@dataclass
class ParallelGap:
    """What :func:`parallel_gap` returns."""

    model: object                       # the combined sparse model after fine-tuning (fixed masks)
    partitions: list                    # layer paths per partition
    rounds: int
    peak_parameters: int                # most live parameters one copy (one worker) held
    phase_histories: list = field(default_factory=list)   # [{"round", "copy", "history"}]
    fine_tune_history: dict = field(default_factory=dict)
    phase_seconds: float = 0.0          # all copies, one after another
    fine_tune_seconds: float = 0.0

    @property
    def training_seconds(self):
        return self.phase_seconds + self.fine_tune_seconds


def parallel_gap(model, fit=None, y=None, *, compile=None, fine_tune=None, fine_tune_compile=None,
                 sparsity: float | None = 0.9, distribution=None, partitions=4, rounds: int = 1, seed: int = 0,
                 **sparsify_options) -> ParallelGap:
    """Parallel GaP on one machine: per round, ``k`` copies each grow one partition for a phase.

    Starting from a random sparse model at ``sparsity`` (per-layer targets from ``distribution``), each round
    trains ``k`` copies of the current model, copy ``i`` with partition ``i`` dense (revived weights from zero,
    fresh optimizer). The combined model takes partition ``i``'s layers from copy ``i`` and the average of the
    copies for weights outside every partition; then every kernel is magnitude-pruned to its target and the
    result is what all copies start the next round from. After ``rounds`` rounds the combined model is
    fine-tuned with its mask fixed. Each copy sees the whole training set per phase, so one worker trains
    ``rounds * phase epochs + fine-tuning epochs`` epochs; here the ``k`` copies run one after another, so the
    time is about ``k`` times one worker's.

    Args:
        model: a built Keras model (left unchanged).
        fit: ``Model.fit`` keyword arguments of each phase, e.g. ``dict(x=x, y=y, epochs=3, batch_size=128)``
            (``epochs``: per phase; the convention of ``ms.prune`` and ``ms.cycle``).
        compile: ``dict(optimizer=..., loss=..., metrics=[...])`` or a callable compiling a model; by default
            the seed model's compile configuration. Each copy's phase gets a fresh optimizer.
        fine_tune: ``fit`` arguments of the fine-tuning, merged over ``fit`` (``dict(epochs=0)``: none).
        fine_tune_compile: how to compile the fine-tuned model (default: ``compile``).
        partitions: number of contiguous partitions, or lists of layer names (as for ``method="gap"``).
        sparsify_options: passed to ``sparse_optimizer`` (``layers=``, ...).

    The form of earlier releases, ``parallel_gap(model, x, y, phase_epochs=..., fine_tune_epochs=...,
    optimizer=..., loss=..., ...)``, still works for one release with a DeprecationWarning.
    """
    old_fine_tune_optimizer = sparsify_options.pop("fine_tune_optimizer", None)
    fit, compile, fine_tune = two_phases("parallel_gap", fit, y, compile, fine_tune, "fine_tune",
                                         ("phase_epochs", "fine_tune_epochs"), sparsify_options)
    if old_fine_tune_optimizer is not None:          # the old form's own keyword
        if not isinstance(compile, dict):
            raise TypeError("fine_tune_optimizer= belongs to the old form of parallel_gap: write fine_tune_compile="
                            "dict(optimizer=..., loss=...) or a callable compiling the fine-tuned model")
        fine_tune_compile = dict(compile, optimizer=old_fine_tune_optimizer)
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise ValueError(f"rounds must be a whole number >= 1, got {rounds!r}")
    compile_model = compiler_like(model, compile, "parallel_gap()")
    compile_fine_tune = (compile_model if fine_tune_compile is None
                         else compiler_like(model, fine_tune_compile, "parallel_gap()"))
    check_passed_options("parallel_gap", sparsify_options)
    options = dict(sparsify_options, sparsity=sparsity, distribution=distribution, seed=seed)
    combined = copy_model(model)
    compile_wrapped(combined, compile_fine_tune,
                    lambda network, inner: sparse_optimizer(network, inner, method="static", **options))
    groups = resolve_partitions(list(dict.fromkeys(unit.layer for unit in find_sparse_optimizer(combined).units)),
                                partitions)
    owners = weight_owners(combined, groups)
    result = ParallelGap(model=combined, partitions=groups, rounds=int(rounds),
                         peak_parameters=live_parameters(combined).live)
    started = time.perf_counter()
    for round_index in range(int(rounds)):
        contributions = []
        for copy_index, group in enumerate(groups):
            worker, _ = grow_copy(combined, group, compile_model=compile_model, sparsify_options=options)
            history = worker.fit(**fit)
            result.phase_histories.append({"round": round_index, "copy": copy_index, "history": history.history})
            result.peak_parameters = max(result.peak_parameters, live_parameters(worker).live)
            contributions.append(copy_contribution(worker.get_weights(), owners, copy_index, len(groups)))
            del worker
        like = combined.get_weights()
        combined.set_weights(combine_contributions(contributions, like))
        prune_by_magnitude(combined)        # identical on every worker: no broadcast needed after the all-reduce
    result.phase_seconds = time.perf_counter() - started
    if fine_tune.get("epochs", 1):
        started = time.perf_counter()
        result.fine_tune_history = combined.fit(**fine_tune).history
        result.fine_tune_seconds = time.perf_counter() - started
    return result
