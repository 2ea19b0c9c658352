"""The user-facing calls: ``sparse_optimizer``, ``apply_masks``, ``strip`` and ``sparsity_report``."""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field

import keras
import numpy as np

from morphsparse import keras_internals as _keras
from morphsparse.checks import flag
from morphsparse.costs import cost_report
from morphsparse.graph import GraphError, analyze

from .distributions import ErdosRenyiKernel, get_distribution, layer_sparsities
from .kernels import build_by_calling, is_kernel_like, kernel_variable, layer_tree, maskable_kernels, output_positions
from .masks import kept_count
from .selection import LayerSelection, check_sparsity
from .sparsity_types import Unstructured, get_sparsity_type, serialize_sparsity_type
from .optimizer import SparseOptimizer, find_sparse_optimizer
from .schedules import PolynomialSchedule, PruningScheduleAdapter, UpdateSchedule, get_schedule, whole_number
from .updaters import DropGrow, KernelView, MaskUpdater, get_updater, updater_class


def copy_model(model):
    """An uncompiled copy of ``model`` with its own weights (same values, same weight order).

    Rebuilt from the model's config; a functional model whose subclass ``__init__`` takes other arguments is
    copied layer by layer as a plain functional model. The copy holds no optimizer (``keras.models.clone_model``
    would compile it with the model's), so a stripped copy loads without morphsparse. Raises a ValueError naming
    the model when neither way rebuilds it: callers must never fall back to the model itself.
    """
    ways = {"from_config": lambda: type(model).from_config(model.get_config())}
    if getattr(model, "inputs", None):      # clone an uncompiled functional view of the same layers
        ways["clone_model"] = lambda: keras.models.clone_model(keras.Model(model.input, model.output, name=model.name))
    problems = []
    for way, rebuild in ways.items():
        try:
            clone = rebuild()
            if not clone.built and model.built and model.get_build_config():
                clone.build_from_config(model.get_build_config())
            build_by_calling(clone)
            if len(clone.weights) != len(model.weights):
                raise ValueError(f"the copy has {len(clone.weights)} weights, the model {len(model.weights)}")
            clone.set_weights(model.get_weights())
            return clone
        except Exception as error:  # noqa: BLE001 - every way's reason goes into the error below
            problems.append(f"{way}: {type(error).__name__}: {' '.join(str(error).split())[:200]}")
    raise ValueError(f"cannot copy model {model.name!r} ({type(model).__name__}) [{'; '.join(problems)}]. Give "
                     f"{type(model).__name__} a get_config() returning its __init__ arguments (Keras rebuilds it "
                     "with from_config), or build the network with keras.Sequential or the functional API")


def sparse_optimizer(model, optimizer, sparsity: float | None = None, method="rigl", distribution=None, *,
                     total_steps: int | None = None, schedule=None, sparsity_type=None,
                     layers: LayerSelection | None = None, seed: int = 0, rescale_init: bool = False,
                     **method_options):
    """Make ``model`` train sparse: prune its kernels now and return the optimizer that keeps them sparse.

        optimizer = ms.sparse_optimizer(model, keras.optimizers.SGD(0.05, momentum=0.9), sparsity=0.9,
                                        method="rigl", total_steps=epochs * steps_per_epoch)
        model.compile(optimizer=optimizer, loss=..., metrics=[...])
        model.fit(...)                      # as often as you like; custom loops: optimizer.apply_gradients()

    ``model`` stays the same object (Sequential, functional, nested or subclassed), with no wrapper layer: its
    masked kernels hold exact zeros at pruned positions from now on. The returned ``SparseOptimizer`` wraps
    ``optimizer`` and holds the masks; ``fit``'s logs get ``sparsity``, ``mask_changes`` and ``alive_params``.
    Four values say the rest, each with its defaults: *what* (``method`` and its options), *how much where*
    (``sparsity``, ``distribution``, ``layers``), *which patterns* (``sparsity_type``) and *when*
    (``schedule``, ``total_steps``).

    Args:
        model: a built Keras model. Kernels of Dense, Conv1D/2D/3D, Conv*Transpose, SeparableConv (pointwise),
            DepthwiseConv, Embedding and EinsumDense layers (and subclasses) are masked; biases and
            normalisation weights never are. Other layers with weights of rank >= 2 are listed in a warning.
        optimizer: the optimizer to wrap (an instance, or a name such as ``"adam"``). A
            ``LossScaleOptimizer`` is kept outside: its inner optimizer is wrapped.
        sparsity: target fraction of zeros over all masked kernels, in [0, 1); default 0.9 (1 - N/M for an
            ``"N:M"`` sparsity type, which allows no other value).
        method: ``"rigl"``, ``"set"``, ``"snfs"``, ``"static"``, ``"magnitude"``, ``"dense"``, ``"gap"``,
            ``"snip"``, a name added with ``register_updater``, or a ``MaskUpdater`` instance.
        distribution: ``"erk"`` (the default), ``"er"``, ``"uniform"``, a ``Distribution`` such as
            ``ms.ErdosRenyiKernel(power=0.5)``, or a callable ``({key: shape}, sparsity) -> {key: sparsity}``.
        total_steps: the length of the whole training in steps (over all ``fit`` calls); masks stop changing
            after the schedule's ``end_fraction`` (75%) of it. Without it (and without the schedule's
            ``end_step``) masks keep changing for the whole of training (a warning says so).
        schedule: when masks change: ``ms.UpdateSchedule(update_every=100, begin_step=0, end_step=None,
            end_fraction=0.75, skip_optimizer_step=False)`` (the method's own kind of schedule runs at that
            cadence: gradual pruning for ``method="magnitude"``), ``ms.PolynomialSchedule(...)`` to set the
            gradual pruning's shape, or a tensorflow-model-optimization ``PolynomialDecay`` / ``ConstantSparsity``
            object. None: the method's default with those values.
        sparsity_type: which patterns of zeros a mask may hold, for every method (docs/sparse_training.md,
            "Sparsity types"): ``"unstructured"`` (default); blocks ``"1x4"``, ``"1x16"``, ``"4x1"`` (outputs x
            inputs, kept or removed whole); ``"N:M"`` such as ``"2:4"`` (N of every M consecutive inputs of each
            output; fixes the sparsity at 1 - N/M, so the distribution has no say); ``"fan_in"`` (every output
            neuron keeps the same number of inputs, SRigL); ``ms.FanIn(ablation=True, min_salient_fraction=0.3)``
            for SRigL's neuron ablation; a name added with ``register_sparsity_type`` or a type object. Per-layer
            counts follow the distribution, rounded to whole blocks/groups.
        layers: a :class:`LayerSelection`: layers kept dense, custom layers included, per-layer sparsity
            overrides, the first layer dense, separable depthwise kernels masked. None: the built-in kernels.
        seed: base seed; each kernel's randomness also depends on a stable hash of its path.
        rescale_init: divide each masked kernel by sqrt(its density) once (sparse-aware initialisation).
        method_options: constructor arguments of the method, e.g. ``drop_fraction=0.3`` and
            ``drop_fraction_schedule="cosine"`` for drop/grow methods (rigl, set, snfs), ``decay`` for SNFS.
            Any other keyword is a TypeError naming it.
    """
    method_options, legacy = _split_legacy(method_options)
    cadence = {}
    if legacy:
        distribution, layers, cadence = _apply_legacy(legacy, distribution, layers, schedule)
    layers = _check_layers(layers)
    structure = _resolve_sparsity_type(sparsity_type, method)
    effective = structure or (method.sparsity_type if isinstance(method, MaskUpdater) else Unstructured())
    fixed = getattr(effective, "fixed_sparsity", None)
    if fixed is not None:
        structure_name = effective.name
        if sparsity is not None and abs(check_sparsity(sparsity) - fixed) > 1e-9:
            raise ValueError(f"sparsity_type={structure_name!r} keeps exactly {effective.n} of every {effective.m} "
                             f"weights, i.e. sparsity={fixed:g}; got sparsity={sparsity!r}. Pass sparsity={fixed:g} "
                             "(or leave sparsity out)")
        if layers.layer_sparsity:
            raise ValueError(f"layer_sparsity= cannot apply with sparsity_type={structure_name!r}, which fixes every "
                             f"masked kernel at sparsity {fixed:g}; keep layers dense with keep_dense= instead")
        if distribution is not None:
            warnings.warn(f"distribution={distribution!r} is ignored: sparsity_type={structure_name!r} fixes every "
                          f"masked kernel at sparsity {fixed:g}", UserWarning, stacklevel=2)
            distribution = None
        sparsity = fixed
    sparsity = 0.9 if sparsity is None else sparsity
    distribution = get_distribution("erk" if distribution is None else distribution)
    if not isinstance(model, keras.Model):
        raise TypeError(f"sparse_optimizer expects a keras.Model as model=, got {type(model).__name__}")
    if not model.built:
        raise ValueError(f"model {model.name!r} is not built; call it on a batch or build(input_shape) first")
    sparsity = check_sparsity(sparsity)
    if find_sparse_optimizer(model, required=False) is not None:
        raise ValueError(f"model {model.name!r} is already sparse (it has a SparseOptimizer); sparsify a fresh "
                         "model, or ms.strip(model) for a dense copy to start again from")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be a whole number, got {seed!r} ({type(seed).__name__})")
    rescale_init = flag(rescale_init, "rescale_init")
    outer, inner = _split_loss_scale(optimizer)

    if structure is not None:
        method_options = dict(method_options, sparsity_type=structure)
    updater = _resolve_method(method, method_options)
    _check_method_and_type(updater)
    total_steps = whole_number(total_steps, "total_steps", 1, allow_none=True)
    if type(schedule) is UpdateSchedule:
        # a plain UpdateSchedule says when masks change; the method's own kind of schedule (gradual for
        # magnitude pruning, GaP's phases) runs at that cadence
        defaults = UpdateSchedule().get_config()
        cadence = {name: value for name, value in schedule.get_config().items() if value != defaults[name]}
    if cadence:
        schedule = updater.default_schedule(**cadence)
    sparse_schedule = get_schedule(schedule, updater.default_schedule())
    if schedule is not None and not updater.changes_topology and not isinstance(sparse_schedule,
                                                                                PruningScheduleAdapter):
        raise ValueError(f"schedule= has no effect with method={updater.name!r}: its mask never changes (leave "
                         "schedule= out)")
    end_step = _end_step(sparse_schedule, total_steps, given=schedule is not None)
    if (isinstance(sparse_schedule, PolynomialSchedule) or getattr(sparse_schedule, "needs_end", False)) \
            and sparse_schedule.end_step is None and end_step is None:
        raise ValueError(f"method={updater.name!r} needs to know when its schedule ends: pass total_steps= (the "
                         "whole training, in steps) or a schedule with end_step=")

    build_by_calling(model)
    plan = _plan(model, sparsity, distribution, layers, updater)
    with model.distribute_strategy.scope():
        sparse = SparseOptimizer(inner, kernels=plan, method=updater, schedule=sparse_schedule, seed=seed,
                                 end_step=end_step, skip_optimizer_step=sparse_schedule.skip_optimizer_step)
        sparse.bind(model)
        sparse.build(model.trainable_variables)
        masks = {}
        for unit in sparse.units:
            mask = updater.initial_mask(tuple(unit.kernel.shape), unit.sparsity, unit.key_hash, seed)
            masks[unit.key] = mask
            density = float(mask.mean())
            if rescale_init and 0.0 < density < 1.0:
                unit.kernel.assign(unit.kernel * (1.0 / np.sqrt(density)))
        sparse.set_masks(masks)
    if outer is None:
        return sparse
    return keras.optimizers.LossScaleOptimizer(sparse, initial_scale=outer.initial_scale,
                                               dynamic_growth_steps=outer.dynamic_growth_steps, name=outer.name)


def _check_layers(layers):
    if layers is None:
        return LayerSelection()
    if not isinstance(layers, LayerSelection):
        raise TypeError(f"layers must be an ms.LayerSelection(keep_dense=..., include=..., layer_sparsity=..., "
                        f"first_layer_dense=..., mask_separable_depthwise=...), got {type(layers).__name__}")
    return layers


def _end_step(schedule, total_steps, given):
    """The SparseOptimizer's end step: the schedule's own, or its ``end_fraction`` of ``total_steps``.
    ``given``: the user gave the schedule (a method's default, such as GaP's phases, may end by itself)."""
    if given and schedule.end_step is not None and total_steps is not None:
        raise ValueError(f"the schedule ends at end_step={schedule.end_step} and total_steps={total_steps} would "
                         "set the end again (its end_fraction of total_steps); give one of them")
    end_step = None if total_steps is None else max(int(schedule.end_fraction * total_steps), 1)
    if schedule.end_step is None and end_step is not None and end_step <= schedule.begin_step:
        raise ValueError(f"the schedule begins at begin_step={schedule.begin_step} but its end_fraction="
                         f"{schedule.end_fraction} of total_steps={total_steps} ends it at step {end_step}: no "
                         "mask update would ever happen")
    return None if schedule.end_step is not None and given else end_step


# The keywords sparse_optimizer took before its arguments were grouped into values: each still works for one
# release, with a DeprecationWarning naming the value it belongs to.
_LEGACY = {"power": "distribution", "keep_dense": "layers", "include": "layers", "layer_sparsity": "layers",
           "first_layer_dense": "layers", "mask_separable_depthwise": "layers", "update_every": "schedule",
           "begin_step": "schedule", "end_step": "schedule", "end_fraction": "schedule",
           "skip_optimizer_step": "schedule"}


def _split_legacy(options):
    options = dict(options)
    legacy = {name: options.pop(name) for name in list(options) if name in _LEGACY}
    return options, legacy


def _apply_legacy(legacy, distribution, layers, schedule):
    """Fold the old keywords into the values they now belong to, warning once with what to write instead.
    Returns ``(distribution, layers, cadence)``: the schedule's arguments, for the method's default schedule."""
    groups = {}
    for name, value in legacy.items():
        groups.setdefault(_LEGACY[name], {})[name] = value
    given = {"distribution": distribution, "layers": layers, "schedule": schedule}
    clashes = [f"{key}= and {', '.join(f'{k}=' for k in names)}" for key, names in groups.items()
               if given[key] is not None and not (key == "distribution" and isinstance(distribution, str))]
    if clashes:
        raise ValueError(f"sparse_optimizer() got both {'; '.join(clashes)}: the old keywords are parts of the "
                         "new value, so give them inside it")
    advice = []
    if "distribution" in groups:
        if distribution is not None and str(distribution).lower() != "erk":
            raise ValueError(f"power={legacy['power']!r} applies only to distribution='erk', not distribution="
                             f"{distribution!r}")
        distribution = ErdosRenyiKernel(legacy["power"])
        advice.append(f"distribution=ms.ErdosRenyiKernel(power={legacy['power']!r})")
    if "layers" in groups:
        layers = LayerSelection(**groups["layers"])
        advice.append(f"layers=ms.LayerSelection({_arguments(groups['layers'])})")
    cadence = groups.get("schedule", {})
    if cadence:
        advice.append(f"schedule=ms.UpdateSchedule({_arguments(cadence)})")
    warnings.warn(f"sparse_optimizer({_arguments(legacy)}): these keywords are deprecated and will be removed in "
                  f"the next release; write {', '.join(advice)}", DeprecationWarning, stacklevel=3)
    return distribution, layers, cadence


def _arguments(values):
    return ", ".join(f"{name}={value!r}" for name, value in values.items())


def _resolve_sparsity_type(sparsity_type, method):
    """The sparsity type object given as ``sparsity_type=`` (None: the method's own, unstructured by default)."""
    if sparsity_type is None:
        return None
    structure = get_sparsity_type(sparsity_type)
    if isinstance(method, MaskUpdater):
        if serialize_sparsity_type(method.sparsity_type) != serialize_sparsity_type(structure):
            raise ValueError(f"sparsity_type={sparsity_type!r} cannot be applied to the method instance "
                             f"{type(method).__name__} (its sparsity type is {method.sparsity_type.name!r}); pass "
                             "it to its constructor")
        return None
    return structure


def _check_method_and_type(updater):
    structure = updater.sparsity_type
    if type(structure) is Unstructured:
        return
    if updater.forced_sparsity is not None:
        raise ValueError(f"method={updater.name!r} keeps every weight, so sparsity_type={structure.name!r} has "
                         "nothing to shape; use sparsity_type='unstructured' (the default) with it")
    if getattr(structure, "fixed_sparsity", None) is not None and updater.dense_start:
        warnings.warn(f"method={updater.name!r} prunes gradually, but sparsity_type={structure.name!r} has no "
                      f"intermediate sparsity: every kernel goes from dense to {structure.name} at the first "
                      "mask update of the schedule", UserWarning, stacklevel=3)


def _split_loss_scale(optimizer):
    if isinstance(optimizer, SparseOptimizer):
        raise ValueError("optimizer= is already a SparseOptimizer; pass the plain optimizer to wrap")
    try:
        optimizer = keras.optimizers.get(optimizer)
    except (ValueError, TypeError) as err:
        raise ValueError(f"optimizer must be a keras optimizer or its name (e.g. 'adam'), got {optimizer!r}: "
                         f"{err}") from None
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer, optimizer.inner_optimizer
    if getattr(optimizer, "built", False):
        raise ValueError(f"optimizer {optimizer.name!r} was already built (used) for other variables; pass a "
                         "fresh optimizer")
    return None, optimizer


def _resolve_method(method, options):
    if isinstance(method, MaskUpdater):
        if options:
            raise ValueError(f"{_arguments(options)} cannot be applied to the method instance "
                             f"{type(method).__name__}; pass them to its constructor")
        return method
    cls = updater_class(method)
    takes = _method_options(cls)
    unknown = sorted(set(options) - takes)
    if unknown:
        drop_grow = {"drop_fraction", "drop_fraction_schedule"} & set(unknown)
        if drop_grow and not issubclass(cls, DropGrow):
            raise ValueError(f"{_arguments({n: options[n] for n in sorted(drop_grow)})} has no effect with method="
                             f"{method!r}: only drop/grow methods (rigl, set, snfs) replace a fraction of weights")
        raise TypeError(f"sparse_optimizer() got unexpected keyword argument(s) {unknown}: neither its own "
                        f"arguments nor options of method={getattr(cls, 'name', cls.__name__)!r}, which takes "
                        f"{sorted(takes)}")
    return get_updater(method, **options)


def _method_options(cls) -> set:
    """The keyword arguments an updater class's constructor takes, following ``**kwargs`` up its bases."""
    takes = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = list(inspect.signature(vars(klass)["__init__"]).parameters.values())[1:]
        takes |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return takes


def check_passed_options(caller, options):
    """TypeError naming every keyword in ``options`` (which ``caller`` passes on to ``sparse_optimizer`` with
    method="static") that sparse_optimizer would not take."""
    takes = (set(inspect.signature(sparse_optimizer).parameters) | _method_options(updater_class("static"))
             | set(_LEGACY)) - {"model", "optimizer", "method", "method_options"}
    unknown = sorted(set(options) - takes)
    if unknown:
        raise TypeError(f"{caller}() got unexpected keyword argument(s) {unknown}; besides its own arguments it "
                        f"passes these on to sparse_optimizer: {sorted(takes)}")


def _plan(model, sparsity, distribution, layers, updater):
    """One spec per masked kernel: ``{"key", "layer", "weight", "variable", "shape", "sparsity"}``."""
    specs, overrides = layers.kernels(model, updater.sparsity_type)
    shapes = {spec["key"]: spec["shape"] for spec in specs}
    fixed = getattr(updater.sparsity_type, "fixed_sparsity", None)
    if updater.forced_sparsity is not None or fixed is not None:
        value = updater.forced_sparsity if updater.forced_sparsity is not None else fixed
        sparsities = {key: float(value) for key in shapes}
    else:
        sparsities = _solve(shapes, sparsity, distribution, overrides)
    for spec in specs:
        spec["sparsity"] = sparsities[spec["key"]]
    _warn_rounding(shapes, sparsities, sparsity, overrides, updater.sparsity_type)
    return specs


def _solve(shapes, sparsity, distribution, overrides):
    solver = get_distribution(distribution)
    budgeted = {key: shape for key, shape in shapes.items() if key not in overrides}
    if callable(solver) and not hasattr(solver, "solve") and budgeted:
        result = solver(dict(budgeted), sparsity)
        if not isinstance(result, dict) or set(result) != set(budgeted):
            got = sorted(result) if isinstance(result, dict) else type(result).__name__
            raise ValueError(f"distribution={distribution!r} must return {{key: sparsity}} for exactly the keys "
                             f"{sorted(budgeted)}; it returned {got}")
        for key, value in result.items():
            check_sparsity(value, f"distribution()[{key!r}]")
    return layer_sparsities(shapes, sparsity, solver, None, overrides)


def _warn_rounding(shapes, sparsities, sparsity, overrides, sparsity_type=None):
    """Warn when whole counts (weights, blocks or per-neuron groups) make the model noticeably denser than
    asked (extreme sparsities, or large blocks)."""
    sizes = {key: int(np.prod(shape)) for key, shape in shapes.items() if key not in overrides}
    total = sum(sizes.values())
    if not total or sparsity == 0.0:
        return
    wanted = total * (1.0 - sparsity)
    if sparsity_type is None or type(sparsity_type) is Unstructured:
        kept = sum(kept_count(size, sparsities[key]) for key, size in sizes.items())
        # Only the floor of one weight per kernel matters here; ordinary rounding adds under one weight per kernel.
        clamped = [key for key, size in sizes.items() if (1.0 - sparsities[key]) * size < 1.0]
        if clamped and kept > 1.05 * wanted + 0.5:
            warnings.warn(f"sparsity={sparsity} asks to keep {wanted:.1f} of {total:,} weights, but each kernel "
                          f"keeps at least one weight (whole counts): the masks keep {kept} (sparsity "
                          f"{1 - kept / total:.6f}). Higher sparsities give the same masks.", UserWarning,
                          stacklevel=4)
        return
    kept = sum(sparsity_type.kept_count(shapes[key], sparsities[key]) for key in sizes)
    if kept > 1.05 * wanted + 0.5 and getattr(sparsity_type, "fixed_sparsity", None) is None:
        warnings.warn(f"sparsity={sparsity} asks to keep {wanted:.1f} of {total:,} weights, but sparsity_type="
                      f"{sparsity_type.name!r} keeps whole blocks/groups (at least one per kernel or neuron): the "
                      f"masks keep {kept} (sparsity {1 - kept / total:.6f})", UserWarning, stacklevel=4)


# ---------------------------------------------------------------------------------------------- masks, strip
def apply_masks(model):
    """Zero every pruned weight of a sparse model now (training does it after every step by itself; call this
    after ``set_weights``/``load_weights`` wrote dense values, before predicting or saving)."""
    find_sparse_optimizer(model).apply_masks()
    return model


def strip(model):
    """A plain Keras copy of a sparse model: no optimizer, pruned weights exactly zero (GaP: its grown
    partition pruned back to target). Loads without morphsparse. Raises a ValueError naming the model when Keras
    cannot copy it (see ``copy_model``); the model itself is never returned."""
    sparse = find_sparse_optimizer(model)
    network = model if isinstance(model, keras.Model) else sparse.bound_model()
    if network is None:
        raise ValueError("strip needs the model: pass the model rather than its optimizer")
    sparse.apply_masks()
    plain = copy_model(network)
    position = {id(w): i for i, w in enumerate(network.weights)}
    for unit in sparse.units:
        mask = keras.ops.convert_to_tensor(unit.mask)
        view = KernelView(unit.key, unit.key_hash, unit.sparsity, keras.ops.convert_to_tensor(unit.kernel),
                          mask, None, dict(unit.state))
        kernel = plain.weights[position[id(unit.kernel)]]       # copy_model keeps the weight order
        kernel.assign(kernel * keras.ops.cast(sparse.method.export_mask(view), kernel.dtype))
    return plain


# ---------------------------------------------------------------------------------------------- report
@dataclass
class KernelReport:
    key: str
    shape: tuple
    sparsity: float
    nonzeros: int
    size: int
    dense_macs: int
    sparse_macs: int
    stray: int = 0           # weights outside the mask that are not zero (written after the last step)

    @property
    def dense_flops(self):
        return 2 * self.dense_macs

    @property
    def sparse_flops(self):
        return 2 * self.sparse_macs


@dataclass
class SparsityReport:
    """Per masked kernel: shape, sparsity, non-zeros and MACs/FLOPs (FLOPs = 2 x MACs) dense vs sparse.

    ``sparsity`` is over the masked kernels; ``overall_sparsity`` over every trainable weight of rank >= 2,
    including those of layers that are not masked (listed in ``unmasked``). ``dense_flops`` and
    ``sparse_flops`` are the whole model's (``ms.count_flops``, less what the masks remove): layers kept dense
    and attention scores count in both.
    """

    kernels: list = field(default_factory=list)
    unmasked: list = field(default_factory=list)     # [(weight path, size, non-zeros)]
    model_macs: int | None = None                    # the cost model's; None when the model cannot be analysed

    @property
    def size(self):
        return sum(k.size for k in self.kernels)

    @property
    def nonzeros(self):
        return sum(k.nonzeros for k in self.kernels)

    @property
    def sparsity(self):
        return 1.0 - self.nonzeros / self.size if self.size else 0.0

    @property
    def overall_sparsity(self):
        size = self.size + sum(u[1] for u in self.unmasked)
        nonzeros = self.nonzeros + sum(u[2] for u in self.unmasked)
        return 1.0 - nonzeros / size if size else 0.0

    @property
    def stray(self):
        return sum(k.stray for k in self.kernels)

    @property
    def dense_flops(self):
        if self.model_macs is None:
            return sum(k.dense_flops for k in self.kernels)
        return 2 * self.model_macs

    @property
    def sparse_flops(self):
        return self.dense_flops - sum(k.dense_flops - k.sparse_flops for k in self.kernels)

    def to_dict(self):
        return {"sparsity": self.sparsity, "overall_sparsity": self.overall_sparsity, "nonzeros": self.nonzeros,
                "size": self.size, "stray": self.stray, "dense_flops": self.dense_flops,
                "sparse_flops": self.sparse_flops,
                "kernels": [dict(key=k.key, shape=list(k.shape), sparsity=k.sparsity, nonzeros=k.nonzeros,
                                 size=k.size, stray=k.stray, dense_flops=k.dense_flops, sparse_flops=k.sparse_flops)
                            for k in self.kernels],
                "unmasked": [dict(weight=u[0], size=u[1], nonzeros=u[2]) for u in self.unmasked]}

    def __str__(self):
        rows = [("kernel", "shape", "sparsity", "non-zeros", "FLOPs dense", "FLOPs sparse")]
        for k in self.kernels:
            rows.append((k.key, "x".join(map(str, k.shape)), f"{k.sparsity:.4f}", f"{k.nonzeros}",
                         f"{k.dense_flops:,}", f"{k.sparse_flops:,}"))
        rows.append(("total (masked kernels)", "", f"{self.sparsity:.4f}", f"{self.nonzeros}",
                     f"{sum(k.dense_flops for k in self.kernels):,}", f"{sum(k.sparse_flops for k in self.kernels):,}"))
        if self.model_macs is not None:
            rows.append(("model (every layer)", "", "", "", f"{self.dense_flops:,}", f"{self.sparse_flops:,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        if self.unmasked:
            lines.append(f"not masked: {', '.join(u[0] for u in self.unmasked)} "
                         f"({sum(u[1] for u in self.unmasked):,} weights); sparsity over all weights "
                         f"{self.overall_sparsity:.4f}")
        if self.stray:
            lines.append(f"WARNING: {self.stray} pruned weights are not zero (weights written after the last "
                         "training step); call ms.apply_masks(model)")
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle):  # pragma: no cover - IPython display
        printer.text(str(self))


def _cost_model_macs(network, units):
    """``({kernel key: dense MACs per example}, the model's MACs)`` from morphsparse.costs' model.

    Every MAC of a call multiplies by one weight of the kernels that carry it, and each weight of those kernels
    is used equally often (a conv's output positions; a SeparableConv's depthwise and pointwise kernels alike),
    so a call's MACs split over them by size. A layer priced whole with its sublayers' kernels
    (MultiHeadAttention) splits its MACs by its handler's ``cost_terms``; what no kernel carries there
    (attention scores) stays in the model's total only. Raises GraphError when the model cannot be analysed.
    """
    try:
        graph = analyze(network)
        rows = cost_report(graph).layers        # one row per call, in the graph's order
    except (TypeError, ValueError) as error:
        unknown = [tuple(t.shape) for t in keras.tree.flatten(getattr(network, "inputs", None) or [])
                   if None in tuple(t.shape)[1:]]
        if isinstance(error, GraphError) or not unknown:
            raise
        raise GraphError(f"an input of shape {unknown[0]} has a dimension of unknown size (a sequence of any "
                         "length), so the cost per example is not defined; build the model on keras.Input of "
                         "fixed shape") from None
    keys = {id(unit.kernel): unit.key for unit in units}
    macs = dict.fromkeys(keys.values(), 0)
    for call, row in zip(graph.calls, rows):
        for variable, share in _kernel_shares(graph, call, row.macs):
            if id(variable) in keys:
                macs[keys[id(variable)]] += share
    return macs, sum(row.macs for row in rows)


def _mac_kernels(layer, nested=False):
    """The kernels ``layer`` (``nested``: its sublayers) multiplies by; an Embedding's table is looked up."""
    layers = _keras.sub_layers(layer) if nested else [layer]
    return [kernel_variable(sub, name) for sub in layers if not isinstance(sub, keras.layers.Embedding)
            for name in maskable_kernels(sub, True)]


def _kernel_shares(graph, call, macs):
    """``[(variable, MACs)]``: how the cost model's ``macs`` of ``call`` split over the kernels they use."""
    kernels, terms = _mac_kernels(call.layer), None
    if not kernels and isinstance(call.layer, keras.layers.Layer):
        kernels, terms = _mac_kernels(call.layer, nested=True), call.handler.cost_terms(call)
    if not macs or not kernels:
        return []
    sizes = [int(np.prod(v.shape)) for v in kernels]
    if terms is None:
        return [(v, macs * size // sum(sizes)) for v, size in zip(kernels, sizes)]
    alive_in, alive_out = graph.alive_counts(call, graph.channel_weights())
    count = {("in", i): c for i, c in enumerate(alive_in)} | {("out", j): c for j, c in enumerate(alive_out)}
    shares = []
    for in_ref, out_ref, term_macs, term_params in terms:
        a, b = count.get(in_ref, 1), count.get(out_ref, 1)
        if term_params(a, b) != term_params(0, b):       # a kernel's term: its bias does not grow with a
            shares.append((term_params(a, b) - term_params(0, b), term_macs(a, b)))
    if [size for size, _ in shares] != sizes:
        raise GraphError(f"layer {call.path!r} ({type(call.layer).__name__}): its cost terms do not match its "
                         "sublayers' kernels one to one, so its MACs cannot be split over them")
    return [(v, m) for v, (_, m) in zip(kernels, shares)]


def sparsity_report(model, print_fn=None) -> SparsityReport:
    """Per-kernel sparsity and FLOPs of a sparse model (printed with ``print_fn`` when given).

    Dense FLOPs come from morphsparse's cost model (``ms.cost_report``), so the report's model totals match
    ``ms.count_flops``; a model the cost model cannot price (subclassed, or on inputs of unknown length) is
    estimated per kernel from its output positions, with a warning.
    """
    sparse = find_sparse_optimizer(model)
    network = model if isinstance(model, keras.Model) else sparse.bound_model()
    tree = layer_tree(network) if network is not None else {}
    report = SparsityReport()
    try:
        if network is None:
            raise GraphError("sparsity_report was given the optimizer; pass the model to count its FLOPs")
        dense_macs, report.model_macs = _cost_model_macs(network, sparse.units)
    except GraphError as error:
        warnings.warn(f"FLOPs of {getattr(network, 'name', 'the model')!r} are estimates from each kernel's "
                      f"output positions, and cover masked kernels only: {error}", UserWarning, stacklevel=2)
        dense_macs = {}
    masked_ids = set()
    for unit in sparse.units:
        mask = keras.ops.convert_to_numpy(unit.mask)
        kernel = keras.ops.convert_to_numpy(unit.kernel)
        masked_ids.add(id(unit.kernel))
        size = int(mask.size)
        nonzeros = int(np.count_nonzero(mask))
        macs = dense_macs[unit.key] if dense_macs else size * output_positions(tree.get(unit.layer), unit.weight)
        stray = int(np.count_nonzero(kernel[mask == 0]))
        report.kernels.append(KernelReport(unit.key, tuple(mask.shape), 1.0 - nonzeros / size, nonzeros, size,
                                           macs, macs * nonzeros // size, stray))
    if network is not None:
        for variable in network.trainable_weights:
            if id(variable) not in masked_ids and is_kernel_like(variable):
                values = keras.ops.convert_to_numpy(variable)
                report.unmasked.append((variable.path, int(values.size), int(np.count_nonzero(values))))
    if report.stray:
        warnings.warn(f"{report.stray} pruned weights of {getattr(network, 'name', 'the model')!r} are not zero: "
                      "weights were written (set_weights/load_weights) after the last training step; the next "
                      "step zeroes them, or call ms.apply_masks(model) now", UserWarning, stacklevel=2)
    if print_fn is not None:
        print_fn(str(report))
    return report


__all__ = ["sparse_optimizer", "apply_masks", "strip", "sparsity_report", "SparsityReport", "KernelReport",
           "copy_model"]
