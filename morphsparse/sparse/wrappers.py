"""The mask-holding layer wrapper and the table of which kernels of which layers are masked.

``SparseWrapper`` owns, for one wrapped layer, a 0/1 mask per masked kernel and any per-kernel state the method
keeps (SNFS's gradient average). It does not change the layer's forward computation: the training step keeps
pruned weights at exactly zero (their gradients are masked and their optimizer slots are zero), so the wrapped
layer runs its own fast kernel and pays nothing per step for the mask. ``SparseModel`` holds one wrapper per
sparsified layer and drives the updates; a wrapper is also a normal serialisable Keras layer on its own.
"""

from __future__ import annotations

import keras
import numpy as np

_PACKAGE = "morphsparse"

# Which weights are masked, per layer family (algorithms.md 1.1). Order matters only for readability; isinstance
# makes subclasses of these layers supported too. Biases, norms and other 1-D weights are never masked.
MASKED_KERNELS = (
    (keras.layers.SeparableConv1D, ("pointwise_kernel",)),
    (keras.layers.SeparableConv2D, ("pointwise_kernel",)),
    (keras.layers.DepthwiseConv1D, ("kernel",)),
    (keras.layers.DepthwiseConv2D, ("kernel",)),
    (keras.layers.Conv1DTranspose, ("kernel",)),
    (keras.layers.Conv2DTranspose, ("kernel",)),
    (keras.layers.Conv3DTranspose, ("kernel",)),
    (keras.layers.Conv1D, ("kernel",)),
    (keras.layers.Conv2D, ("kernel",)),
    (keras.layers.Conv3D, ("kernel",)),
    (keras.layers.Dense, ("kernel",)),
    (keras.layers.EinsumDense, ("kernel",)),      # also the projections inside MultiHeadAttention
    (keras.layers.Embedding, ("embeddings",)),
)
SEPARABLE_CONVS = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)


def maskable_kernels(layer, mask_separable_depthwise: bool = False) -> tuple:
    """Names of the weights of ``layer`` that sparse training masks (empty for unsupported layers)."""
    for layer_class, names in MASKED_KERNELS:
        if isinstance(layer, layer_class):
            if mask_separable_depthwise and isinstance(layer, SEPARABLE_CONVS):
                return ("depthwise_kernel",) + names
            return names
    return ()


def kernel_variable(layer, name):
    """The variable behind ``layer.<name>``; Dense/Conv/Embedding keep it in ``_<name>`` behind a property."""
    variable = getattr(layer, "_" + name, None)
    if not isinstance(variable, keras.Variable):
        variable = getattr(layer, name)
    return variable


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SparseWrapper(keras.layers.Wrapper):
    """Holds the masks of one layer's kernels.

    Args:
        layer: the wrapped layer (Dense, Conv*, SeparableConv*, DepthwiseConv*, Embedding, EinsumDense or a
            subclass of one of them).
        sparsities: ``{kernel name: target sparsity}``, e.g. ``{"kernel": 0.92}``.
        keys: ``{kernel name: stable key}``; the key seeds the kernel's randomness in every process.
        state: ``{state name: initializer}`` of per-kernel variables the method keeps.
    """

    def __init__(self, layer, sparsities: dict, keys: dict | None = None, state: dict | None = None, **kwargs):
        super().__init__(layer, **kwargs)
        unknown = set(sparsities) - set(maskable_kernels(layer, mask_separable_depthwise=True))
        if unknown:
            raise ValueError(f"{type(layer).__name__} {layer.name!r} has no maskable kernel(s) {sorted(unknown)}")
        for name, value in sparsities.items():
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"sparsity of {layer.name}/{name} must be in [0, 1), got {value}")
        self.sparsities = {name: float(value) for name, value in sparsities.items()}
        self.keys = dict(keys or {name: f"{layer.name}/{name}" for name in sparsities})
        self.state_spec = dict(state or {})
        self.masks = {}
        self.states = {}
        if layer.built:
            self._create_masks()

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        if not self.masks:
            self._create_masks()
        self.built = True

    def _create_masks(self):
        for name in self.sparsities:
            kernel = kernel_variable(self.layer, name)
            # Masks are float so that masking a gradient is one multiply; they are never trained and never
            # autocast (a float16 mask would still be exact, but the gradients it multiplies are float32).
            self.masks[name] = self.add_weight(
                name=f"{name}_mask", shape=tuple(kernel.shape), initializer="ones", trainable=False,
                dtype="float32", autocast=False)
            self.states[name] = {
                state: self.add_weight(name=f"{name}_{state}", shape=tuple(kernel.shape),
                                       initializer=initializer, trainable=False, dtype="float32",
                                       autocast=False)
                for state, initializer in self.state_spec.items()}
        self.built = True

    def kernels(self) -> dict:
        """``{kernel name: variable}`` of the wrapped layer's masked kernels."""
        return {name: kernel_variable(self.layer, name) for name in self.sparsities}

    def call(self, *args, **kwargs):
        return self.layer(*args, **kwargs)

    def compute_output_shape(self, *args, **kwargs):
        return self.layer.compute_output_shape(*args, **kwargs)

    def apply_masks(self):
        """Zero the pruned weights (after ``set_weights`` or loading dense values into the wrapped layer)."""
        for name, kernel in self.kernels().items():
            kernel.assign(kernel * keras.ops.cast(self.masks[name], kernel.dtype))

    def nonzero_counts(self) -> dict:
        return {name: int(np.count_nonzero(keras.ops.convert_to_numpy(mask)))
                for name, mask in self.masks.items()}

    def get_config(self):
        return dict(super().get_config(), sparsities=dict(self.sparsities), keys=dict(self.keys),
                    state=dict(self.state_spec))
