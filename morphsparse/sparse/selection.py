"""Which kernels of a model ``sparse_optimizer`` masks: the ``LayerSelection`` value and its resolution."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import keras
import numpy as np

from morphsparse.checks import flag

from .kernels import is_kernel_like, kernel_variable, layer_tree, maskable_kernels, matches, own_weights


def check_sparsity(value, what="sparsity"):
    """``value`` as a float in [0, 1), or an error naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what} must be a number in [0, 1), got {value!r}")
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{what} must be in [0, 1) (the fraction of weights removed), got {value}")
    return value


def _patterns(value, what):
    if isinstance(value, str):
        raise TypeError(f"{what} must be a list of layer names or globs, got the string {value!r}; write "
                        f"{what}=[{value!r}]")
    return tuple(value)


@dataclass(frozen=True)
class LayerSelection:
    """The layers ``sparse_optimizer`` masks, besides the built-in kernels (``layers=`` of ``sparse_optimizer``).

    Args:
        keep_dense: layer names or globs left dense (not masked, outside the sparsity budget).
        include: names or globs of other (custom) layers whose ``kernel`` is masked too, or
            ``{name: [weight names]}``.
        layer_sparsity: ``{layer name or glob: sparsity}`` overrides, outside the distribution's budget.
        first_layer_dense: leave the first masked layer dense (the official RigL code does for uniform).
        mask_separable_depthwise: also mask the depthwise kernels of SeparableConv layers.
    """

    keep_dense: tuple = ()
    include: tuple | dict = ()
    layer_sparsity: dict = field(default_factory=dict)
    first_layer_dense: bool = False
    mask_separable_depthwise: bool = False

    def __post_init__(self):
        object.__setattr__(self, "keep_dense", _patterns(self.keep_dense, "keep_dense"))
        if isinstance(self.include, str):
            raise TypeError(f"include must be a list of layer names or a dict {{name: [weight names]}}, got the "
                            f"string {self.include!r}; write include=[{self.include!r}]")
        if not isinstance(self.include, dict):
            object.__setattr__(self, "include", tuple(self.include))
        if not isinstance(self.layer_sparsity or {}, dict):
            raise TypeError(f"layer_sparsity must be a dict {{layer name or glob: sparsity}}, got "
                            f"{type(self.layer_sparsity).__name__}")
        overrides = {pattern: check_sparsity(value, f"layer_sparsity[{pattern!r}]")
                     for pattern, value in (self.layer_sparsity or {}).items()}
        object.__setattr__(self, "layer_sparsity", overrides)
        object.__setattr__(self, "first_layer_dense", flag(self.first_layer_dense, "first_layer_dense"))
        object.__setattr__(self, "mask_separable_depthwise",
                           flag(self.mask_separable_depthwise, "mask_separable_depthwise"))

    def kernels(self, model, sparsity_type):
        """``(specs, overrides)``: one ``{"key", "layer", "weight", "variable", "shape"}`` per masked kernel of
        ``model`` (keys ``layer path/weight name``), and ``{key: sparsity}`` for the kernels ``layer_sparsity``
        names. Warns about layers it leaves unmasked; raises when nothing is left to mask."""
        tree = layer_tree(model)
        extra = self._extra(tree)
        candidates = {path: layer for path, layer in tree.items()
                      if (maskable_kernels(layer) and not isinstance(layer, keras.Model)) or path in extra}
        # a layer a subclassed model holds but its call never uses is never built: it has no weights to mask
        unbuilt = [path for path, layer in candidates.items() if not layer.weights]
        if unbuilt:
            warnings.warn(f"not masked: layer(s) {unbuilt} hold no weights (the model's call never uses them), so "
                          "there is nothing of them to mask", UserWarning, stacklevel=4)
            candidates = {path: layer for path, layer in candidates.items() if path not in unbuilt}
        if not candidates:
            raise ValueError(f"model {model.name!r} has nothing to sparsify: no Dense, Conv, SeparableConv, "
                             "DepthwiseConv, Embedding or EinsumDense layer (or subclass) was found in it; name "
                             "custom layers with layers=ms.LayerSelection(include=[...])")
        frozen = [path for path, layer in candidates.items() if not layer.trainable
                  or not any(kernel_variable(layer, n).trainable for n in self._names(layer, path, extra))]
        dense_paths = set(_select(self.keep_dense, candidates, "keep_dense"))
        if self.first_layer_dense:
            dense_paths.add(next(iter(candidates)))
        layer_overrides = {}
        for pattern, value in self.layer_sparsity.items():
            for path in _select([pattern], candidates, "layer_sparsity"):
                if path in dense_paths:
                    raise ValueError(f"layer {path!r} is named by both keep_dense and layer_sparsity[{pattern!r}]; "
                                     "give one of them")
                layer_overrides[path] = value
        skipped_frozen = [p for p in frozen if p not in dense_paths]
        if skipped_frozen:
            warnings.warn(f"not masked: layer(s) {skipped_frozen} are frozen (trainable=False), so the optimizer "
                          "never sees them; unfreeze them before sparse_optimizer(), or list them in keep_dense= "
                          "to silence this", UserWarning, stacklevel=4)
        masked = {path: layer for path, layer in candidates.items()
                  if path not in dense_paths and path not in frozen}
        if not masked:
            raise ValueError("every sparsifiable layer was kept dense (keep_dense=, first_layer_dense=) or is "
                             "frozen; nothing is left to sparsify")
        _warn_unmasked(tree, candidates)
        _warn_ablating_outputs(model, masked, sparsity_type)
        specs, overrides = [], {}
        for path, layer in masked.items():
            for name in self._names(layer, path, extra):
                variable = kernel_variable(layer, name)
                key = f"{path}/{name}"
                shape = tuple(int(d) for d in variable.shape)
                sparsity_type.check(shape, key)
                if path in layer_overrides:
                    overrides[key] = layer_overrides[path]
                specs.append({"key": key, "layer": path, "weight": name, "variable": variable.path, "shape": shape})
        return specs, overrides

    def _names(self, layer, path, extra):
        return extra.get(path) or maskable_kernels(layer, self.mask_separable_depthwise)

    def _extra(self, tree):
        """``{path: (weight names)}`` of the extra (custom) layers ``include`` names."""
        items = (self.include.items() if isinstance(self.include, dict)
                 else [(name, ("kernel",)) for name in self.include])
        found = {}
        for pattern, names in items:
            names = (names,) if isinstance(names, str) else tuple(names)
            hits = {path: layer for path, layer in tree.items()
                    if matches(pattern, path, layer) and not isinstance(layer, keras.Model)}
            if not hits:
                raise ValueError(f"include names {pattern!r}, which matches no layer of the model; layers are: "
                                 f"{sorted(tree)}")
            for path, layer in hits.items():
                for name in names:
                    variable = kernel_variable(layer, name)       # raises, naming the layer's weights
                    if len(variable.shape) < 2:
                        raise ValueError(f"include: {path}/{name} has shape {tuple(variable.shape)}; only weights "
                                         "of rank >= 2 can be masked")
                found[path] = names
        return found


def _select(patterns, candidates, what):
    """``{path: layer}`` of candidates matched by any pattern; every pattern must match something."""
    selected = {}
    for pattern in patterns:
        hits = {path: layer for path, layer in candidates.items() if matches(pattern, path, layer)}
        if not hits:
            raise ValueError(f"{what} names {pattern!r}, which matches no sparsifiable layer; sparsifiable "
                             f"layers are: {sorted(candidates)}")
        selected.update(hits)
    return selected


def _warn_ablating_outputs(model, masked, sparsity_type):
    """Neuron ablation on a layer whose outputs are the model's would mask whole outputs (a class that can
    never be predicted): say so, naming the layer."""
    if not getattr(sparsity_type, "ablation", False):
        return
    names = set(getattr(model, "output_names", None) or [])
    if isinstance(model, keras.Sequential) and model.layers:
        names.add(model.layers[-1].name)
    hits = [path for path, layer in masked.items() if layer.name in names]
    if hits:
        warnings.warn(f"layer(s) {hits} produce the model's outputs and neuron ablation may mask whole outputs "
                      f"of them (a logit that never changes); pass layers=ms.LayerSelection(keep_dense={hits}) to "
                      "keep them out of the sparse budget", UserWarning, stacklevel=5)


def _warn_unmasked(tree, candidates):
    skipped = []
    for path, layer in tree.items():
        if path in candidates or isinstance(layer, keras.Model):
            continue
        kernels = [w for w in own_weights(layer) if is_kernel_like(w)]
        if kernels:
            skipped.append(f"{path} ({type(layer).__name__}: {', '.join(w.name for w in kernels)}, "
                           f"{sum(int(np.prod(w.shape)) for w in kernels):,} weights)")
    if skipped:
        warnings.warn("not masked (no built-in rule for these layers; pass layers=ms.LayerSelection(include="
                      f"[name]) to mask a custom layer's kernel): {'; '.join(skipped)}", UserWarning, stacklevel=5)


__all__ = ["LayerSelection", "check_sparsity"]
