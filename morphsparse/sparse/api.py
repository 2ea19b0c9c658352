"""The user-facing calls: ``sparsify``, ``apply_sparse_gradients``, ``strip`` and ``sparsity_report``."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import keras
import numpy as np

from .distributions import layer_sparsities
from .model import SparseModel, build_by_calling, find_sparse_model, layer_tree
from .schedules import get_schedule
from .updaters import DropGrow, KernelView, MaskUpdater, get_updater, updater_class
from .wrappers import kernel_variable, maskable_kernels


def _check_sparsity(value, what="sparsity"):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{what} must be in [0, 1) (the fraction of weights removed), got {value}")
    return value


def copy_model(model):
    """A copy of ``model`` with its own weights (same values); None when Keras cannot rebuild it."""
    if isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False):
        clone = keras.models.clone_model(model)
    else:
        try:
            clone = type(model).from_config(model.get_config())
        except Exception:  # a subclassed model without a usable get_config
            return None
        build_config = model.get_build_config() if model.built else None
        if build_config:
            clone.build_from_config(build_config)
            try:
                build_by_calling(clone)
            except Exception:  # noqa: BLE001 - cannot rebuild: the caller falls back to the original
                return None
    if len(clone.weights) != len(model.weights):
        return None
    clone.set_weights(model.get_weights())
    return clone


def _matches(pattern: str, path: str, layer) -> bool:
    return fnmatch.fnmatchcase(layer.name, pattern) or fnmatch.fnmatchcase(path, pattern)


def _select(patterns, candidates, what):
    """``{path: layer}`` of candidates matched by any pattern; every pattern must match something."""
    selected = {}
    for pattern in patterns:
        hits = {path: layer for path, layer in candidates.items() if _matches(pattern, path, layer)}
        if not hits:
            raise ValueError(f"{what} names {pattern!r}, which matches no sparsifiable layer; sparsifiable "
                             f"layers are: {sorted(candidates)}")
        selected.update(hits)
    return selected


def sparsify(model, sparsity: float = 0.9, method="rigl", distribution="erk", *, power: float = 1.0,
             layer_sparsity: dict | None = None, keep_dense=(), first_layer_dense: bool = False,
             mask_separable_depthwise: bool = False, update_every: int = 100, begin_step: int = 0,
             end_step: int | None = None, total_steps: int | None = None, end_fraction: float = 0.75,
             drop_fraction: float = 0.3, drop_fraction_schedule="cosine", schedule=None,
             skip_optimizer_step: bool = False, allow_unknown_optimizer: bool = False, seed: int = 0,
             rescale_init: bool = False, copy: bool = True, **method_options) -> SparseModel:
    """Return a ``SparseModel`` that trains ``model`` with masked kernels.

    Args:
        model: a built Keras model: Sequential, functional, nested or subclassed. Its kernels of Dense,
            Conv1D/2D/3D, Conv*Transpose, SeparableConv (pointwise), DepthwiseConv, Embedding and EinsumDense
            layers (and subclasses) are masked; biases and normalisation weights never are.
        sparsity: target fraction of zeros over all masked kernels, in [0, 1).
        method: ``"rigl"``, ``"set"``, ``"snfs"``, ``"static"``, ``"magnitude"``, ``"dense"``, any name added
            with ``register_updater``, or a ``MaskUpdater`` instance.
        distribution: ``"erk"`` (with ``power``), ``"er"``, ``"uniform"``, or a callable
            ``({key: shape}, sparsity) -> {key: sparsity}``.
        layer_sparsity: ``{layer name or glob: sparsity}`` overrides, outside the distribution's budget.
        keep_dense: layer names or globs left dense (not masked, outside the budget).
        first_layer_dense: leave the first masked layer dense (the official RigL code does for uniform).
        mask_separable_depthwise: also mask the depthwise kernels of SeparableConv layers.
        update_every, begin_step, end_step: masks change every ``update_every`` steps from ``begin_step``
            until ``end_step``. ``end_step=None`` is ``end_fraction`` of ``total_steps`` if given, else of the
            first ``fit``.
        drop_fraction, drop_fraction_schedule: initial fraction replaced per update and its decay
            (``"cosine"``, ``"constant"``, ``"inverse_power"`` or a ``DropFraction``).
        schedule: an ``UpdateSchedule`` (``PolynomialSchedule`` for magnitude pruning) or a
            tensorflow-model-optimization ``PolynomialDecay``/``ConstantSparsity`` object.
        skip_optimizer_step: on update steps skip the optimizer step (official RigL order) instead of applying
            it before the update (default; also the only choice under tf.distribute).
        allow_unknown_optimizer: allow optimizers whose slots cannot be zeroed for grown weights.
        seed: base seed; each kernel's randomness also depends on a stable hash of its path.
        rescale_init: divide each masked kernel by sqrt(its density) once, at sparsification, so that the
            sparse layers start with the activation scale of the dense initialiser (sparse-aware init).
        copy: train a copy (default) so that ``model`` keeps its dense weights. A subclassed model that Keras
            cannot rebuild from its config is used in place.
        method_options: extra constructor arguments of the method (e.g. ``decay`` for SNFS).
    """
    sparsity = _check_sparsity(sparsity)
    if isinstance(model, SparseModel):
        raise ValueError("This model is already sparse; call strip() first to start again from its weights")
    if not isinstance(model, keras.Model):
        raise TypeError(f"sparsify expects a keras.Model, got {type(model).__name__}")
    if not model.built:
        raise ValueError(f"Model {model.name!r} is not built; call it on a batch or build(input_shape) first")
    build_by_calling(model)
    options = dict(method_options)
    if not isinstance(method, MaskUpdater) and issubclass(updater_class(method), DropGrow):
        options.setdefault("drop_fraction", drop_fraction)
        options.setdefault("drop_fraction_schedule", drop_fraction_schedule)
    updater = get_updater(method, **options)
    sparse_schedule = get_schedule(schedule, updater.default_schedule(update_every, begin_step, end_step))
    if end_step is None and total_steps is not None:
        end_step = int(end_fraction * int(total_steps))

    inner = copy_model(model) if copy else None
    inner = model if inner is None else inner
    tree = layer_tree(inner)
    candidates = {path: layer for path, layer in tree.items()
                  if maskable_kernels(layer) and not isinstance(layer, keras.Model)}
    if not candidates:
        raise ValueError(f"Model {model.name!r} has nothing to sparsify: no Dense, Conv, SeparableConv, "
                         "DepthwiseConv, Embedding or EinsumDense layer (or subclass) was found in it")
    dense_paths = set(_select(list(keep_dense), candidates, "keep_dense"))
    if first_layer_dense:
        dense_paths.add(next(iter(candidates)))
    overrides = {}
    for pattern, value in (layer_sparsity or {}).items():
        value = _check_sparsity(value, f"layer_sparsity[{pattern!r}]")
        for path in _select([pattern], candidates, "layer_sparsity"):
            overrides[path] = value
    masked = {path: layer for path, layer in candidates.items() if path not in dense_paths}
    if not masked:
        raise ValueError("Every sparsifiable layer was kept dense; nothing is left to sparsify")

    shapes, kernel_overrides = {}, {}
    for path, layer in masked.items():
        for name in maskable_kernels(layer, mask_separable_depthwise):
            key = f"{path}/{name}"
            shapes[key] = tuple(int(d) for d in kernel_variable(layer, name).shape)
            if path in overrides:
                kernel_overrides[key] = overrides[path]
    if updater.forced_sparsity is not None:
        sparsities = {key: float(updater.forced_sparsity) for key in shapes}
    else:
        sparsities = layer_sparsities(shapes, sparsity, distribution, power, kernel_overrides)

    specs = []
    for path, layer in masked.items():
        names = maskable_kernels(layer, mask_separable_depthwise)
        specs.append({"path": path,
                      "sparsities": {name: sparsities[f"{path}/{name}"] for name in names},
                      "keys": {name: f"{path}/{name}" for name in names}})
    sparse = SparseModel(inner, updater, sparse_schedule, specs, seed=seed, end_step=end_step,
                         end_fraction=end_fraction, skip_optimizer_step=skip_optimizer_step,
                         allow_unknown_optimizer=allow_unknown_optimizer, name=f"sparse_{model.name}")
    sparse.initialize_masks(rescale_weights=rescale_init)
    return sparse


def apply_sparse_gradients(model, optimizer, gradients, variables=None):
    """The one per-step call of a custom training loop, in place of ``optimizer.apply_gradients``.

    ``model`` is the SparseModel; ``gradients`` are of the loss w.r.t. ``variables`` (default
    ``model.trainable_variables``), computed as usual with ``tf.GradientTape``. Masks gradients, applies the
    optimizer and, on update steps, updates the masks. Call it inside ``tf.function``/``strategy.run`` as you
    would call ``optimizer.apply_gradients``.
    """
    return find_sparse_model(model).apply_gradients(optimizer, gradients, variables)


def strip(model):
    """A plain Keras copy of a SparseModel's network: no wrappers, pruned weights exactly zero."""
    sparse = find_sparse_model(model)
    sparse.apply_masks()
    plain = copy_model(sparse.model)
    target = sparse.model if plain is None else plain
    _apply_export_masks(sparse, target, in_place=plain is None)
    return target


def _apply_export_masks(sparse, target, in_place):
    """Zero what each method's ``export_mask`` removes (GaP: its grown partition pruned back to target)."""
    tree = layer_tree(target)
    units = iter(sparse.units)
    for spec, wrapper in zip(sparse.layer_specs, sparse.sparse_layers):
        for name in wrapper.sparsities:
            unit = next(units)
            mask = unit.mask.value if isinstance(unit.mask, keras.Variable) else unit.mask
            view = KernelView(unit.key, unit.key_hash, unit.sparsity, keras.ops.convert_to_tensor(unit.kernel),
                              keras.ops.convert_to_tensor(mask), None, dict(unit.state))
            exported = sparse.updater.export_mask(view)
            if exported is view.mask:
                continue
            kernel = kernel_variable(tree[spec["path"]], name)
            kernel.assign(kernel * keras.ops.cast(exported, kernel.dtype))
            if in_place:
                unit.mask.assign(exported)


# ---------------------------------------------------------------------------------------------- report
def _output_positions(layer, kernel_name) -> int:
    """How many times a kernel is applied per example: output pixels of a conv, 1 for a Dense on a vector."""
    if isinstance(layer, keras.layers.Embedding):
        return 0  # a lookup, not a multiply
    try:
        if isinstance(layer, (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                              keras.layers.Conv3DTranspose)):
            shape = tuple(layer.input.shape)       # a transposed conv multiplies once per input position
        else:
            shape = tuple(layer.output.shape)
    except (AttributeError, ValueError):
        build_shapes = getattr(layer, "_build_shapes_dict", None) or {}
        input_shape = next(iter(build_shapes.values()), None)
        if input_shape is None:
            return 1
        shape = tuple(layer.compute_output_shape(input_shape))
    if isinstance(layer, keras.layers.EinsumDense):
        return 1
    inner = shape[1:-1]   # spatial positions (a Dense on a sequence: time steps); both separable kernels
    return int(np.prod([d for d in inner if d is not None])) if inner else 1


@dataclass
class KernelReport:
    key: str
    shape: tuple
    sparsity: float
    nonzeros: int
    size: int
    dense_macs: int
    sparse_macs: int

    @property
    def dense_flops(self):
        return 2 * self.dense_macs

    @property
    def sparse_flops(self):
        return 2 * self.sparse_macs


@dataclass
class SparsityReport:
    """Per masked kernel: shape, sparsity, non-zeros and MACs/FLOPs (FLOPs = 2 x MACs) dense vs sparse."""

    kernels: list = field(default_factory=list)

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
    def dense_flops(self):
        return sum(k.dense_flops for k in self.kernels)

    @property
    def sparse_flops(self):
        return sum(k.sparse_flops for k in self.kernels)

    def to_dict(self):
        return {"sparsity": self.sparsity, "nonzeros": self.nonzeros, "size": self.size,
                "dense_flops": self.dense_flops, "sparse_flops": self.sparse_flops,
                "kernels": [dict(key=k.key, shape=list(k.shape), sparsity=k.sparsity, nonzeros=k.nonzeros,
                                 size=k.size, dense_flops=k.dense_flops, sparse_flops=k.sparse_flops)
                            for k in self.kernels]}

    def __str__(self):
        rows = [("kernel", "shape", "sparsity", "non-zeros", "FLOPs dense", "FLOPs sparse")]
        for k in self.kernels:
            rows.append((k.key, "x".join(map(str, k.shape)), f"{k.sparsity:.4f}", f"{k.nonzeros}",
                         f"{k.dense_flops:,}", f"{k.sparse_flops:,}"))
        rows.append(("total", "", f"{self.sparsity:.4f}", f"{self.nonzeros}", f"{self.dense_flops:,}",
                     f"{self.sparse_flops:,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                                   enumerate(zip(r, widths))) for r in rows)

    def _repr_pretty_(self, printer, cycle):  # pragma: no cover - IPython display
        printer.text(str(self))


def sparsity_report(model, print_fn=None) -> SparsityReport:
    """Per-kernel sparsity and FLOPs of a SparseModel (printed with ``print_fn`` when given)."""
    sparse = find_sparse_model(model)
    report = SparsityReport()
    for unit in sparse.units:
        mask = keras.ops.convert_to_numpy(unit.mask)
        size = int(mask.size)
        nonzeros = int(np.count_nonzero(mask))
        positions = _output_positions(unit.wrapper.layer, unit.name)
        report.kernels.append(KernelReport(unit.key, tuple(mask.shape), 1.0 - nonzeros / size, nonzeros, size,
                                           size * positions, nonzeros * positions))
    if print_fn is not None:
        print_fn(str(report))
    return report


__all__ = ["sparsify", "apply_sparse_gradients", "strip", "sparsity_report", "SparsityReport", "KernelReport",
           "copy_model"]
