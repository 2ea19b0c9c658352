"""Small reference networks shared by the examples, the demo and the tests.

``small_resnet`` is the seed network of the Fashion-MNIST MorphNet example: a stem, three residual stages
(identity and projection shortcuts, so residual Adds tie channel groups across layers) and an inception-style
concat module (two towers whose channels are concatenated), with BatchNorm after every convolution so the
gamma regulariser applies everywhere. About 5.3 MFLOPs per 28x28 image: it trains on two CPU cores in
about a minute per 20k images.
"""

from __future__ import annotations

import keras

#: Output channels of every convolution of the seed network, keyed by layer name. Layers tied by a residual
#: Add share a width (they are one channel group): ``stem`` with ``b1_conv2``, ``b2_proj`` with ``b2_conv2``,
#: ``b3_proj`` with ``b3_conv2``.
SMALL_RESNET_WIDTHS = {
    "stem": 16,
    "b1_conv1": 16, "b1_conv2": 16,
    "b2_conv1": 32, "b2_conv2": 32, "b2_proj": 32,
    "mix_a": 16, "mix_b1": 16, "mix_b2": 24,
    "b3_conv1": 64, "b3_conv2": 64, "b3_proj": 64,
}

_TIED = (("stem", "b1_conv2"), ("b2_proj", "b2_conv2"), ("b3_proj", "b3_conv2"))


def scaled_widths(multiplier, widths=None):
    """Seed widths times ``multiplier`` (rounded, at least 1): the uniform width-multiplier baseline."""
    widths = dict(widths or SMALL_RESNET_WIDTHS)
    return {name: max(1, int(round(multiplier * w))) for name, w in widths.items()}


def small_resnet(widths=None, width_multiplier=1.0, input_shape=(28, 28, 1), num_classes=10,
                 name="small_resnet", batch_norm=True):
    """A small residual convnet with a concat module; returns an un-compiled functional ``keras.Model``.

    ``widths``: output channels per layer name (defaults to :data:`SMALL_RESNET_WIDTHS`); layers tied by a
    residual Add must get equal widths. ``width_multiplier`` scales all widths uniformly. The model outputs
    logits (use ``from_logits=True``). ``batch_norm=False`` drops the BatchNormalization layers (the convs get
    biases instead): a network for the group-lasso regulariser.
    """
    widths = scaled_widths(width_multiplier, widths)
    for a, b in _TIED:
        if widths[a] != widths[b]:
            raise ValueError(f"layers '{a}' and '{b}' are added together, so they need equal widths; got "
                             f"{widths[a]} and {widths[b]}")
    L = keras.layers

    def conv_bn(x, layer, kernel=3, strides=1, relu=True):
        x = L.Conv2D(widths[layer], kernel, strides=strides, padding="same", use_bias=not batch_norm,
                     name=layer)(x)
        if batch_norm:
            # momentum 0.9: the moving statistics settle within the few hundred steps of a short CPU run
            x = L.BatchNormalization(momentum=0.9, name=f"{layer}_bn")(x)
        return L.ReLU(name=f"{layer}_relu")(x) if relu else x

    inputs = keras.Input(shape=input_shape, name="image")
    # The stem halves the resolution: the whole network then trains in about a minute per 20k images on two
    # CPU cores, and stage 1 (14x14) is still the high-resolution part a FLOP target should thin out.
    x = conv_bn(inputs, "stem", strides=2)
    # stage 1, 14x14: identity shortcut
    y = conv_bn(x, "b1_conv1")
    y = conv_bn(y, "b1_conv2", relu=False)
    x = L.ReLU(name="b1_out")(L.Add(name="b1_add")([x, y]))
    # stage 2, 7x7: strided block with a 1x1 projection shortcut
    y = conv_bn(x, "b2_conv1", strides=2)
    y = conv_bn(y, "b2_conv2", relu=False)
    shortcut = conv_bn(x, "b2_proj", kernel=1, strides=2, relu=False)
    x = L.ReLU(name="b2_out")(L.Add(name="b2_add")([shortcut, y]))
    # concat module, 7x7: a 1x1 tower and a 1x1 -> 3x3 tower
    tower_a = conv_bn(x, "mix_a", kernel=1)
    tower_b = conv_bn(conv_bn(x, "mix_b1", kernel=1), "mix_b2")
    x = L.Concatenate(name="mix_concat")([tower_a, tower_b])
    # stage 3, 4x4
    y = conv_bn(x, "b3_conv1", strides=2)
    y = conv_bn(y, "b3_conv2", relu=False)
    shortcut = conv_bn(x, "b3_proj", kernel=1, strides=2, relu=False)
    x = L.ReLU(name="b3_out")(L.Add(name="b3_add")([shortcut, y]))
    x = L.GlobalAveragePooling2D(name="pool")(x)
    outputs = L.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def conv_widths(model):
    """``{layer name: output channels}`` of every Conv/Dense layer of a model (for width tables and plots)."""
    widths = {}
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            widths[layer.name] = int(layer.kernel.shape[-1])
    return widths


def small_mobilenet(input_shape=(8, 8, 1), num_classes=10, widths=(16, 32, 64, 64), batch_norm=True,
                    name="small_mobilenet"):
    """A MobileNet-style net: a 3x3 stem, then depthwise-separable blocks (3x3 depthwise conv -> BN -> ReLU ->
    1x1 pointwise conv -> BN -> ReLU), the second strided, the last with a residual Add; GAP and a Dense
    head. The depthwise convs share their channels with the pointwise conv before them (one channel group).

    ``batch_norm=False`` (for the group-lasso source) drops the BatchNormalization layers; the convs then get
    biases and He initialisation (over each output's kh*kw inputs for the depthwise convs) and the depthwise
    convs are linear (no ReLU), which keeps the signal from vanishing.
    """
    L = keras.layers
    if batch_norm:
        conv_opts, dw_opts = dict(use_bias=False), dict(use_bias=False)
    else:
        conv_opts = dict(use_bias=True, kernel_initializer="he_normal")
        # a depthwise kernel (kh, kw, C, 1) reads kh*kw inputs per output: Keras's fan_in counts kh*kw*C
        dw_opts = dict(use_bias=True, depthwise_initializer=keras.initializers.VarianceScaling(
            2.0, mode="fan_out", distribution="truncated_normal"))

    def norm_relu(x, prefix, relu=True):
        if batch_norm:
            x = L.BatchNormalization(momentum=0.9, name=f"{prefix}_bn")(x)
        return L.ReLU(name=f"{prefix}_relu")(x) if relu else x

    inputs = keras.Input(shape=input_shape, name="image")
    x = norm_relu(L.Conv2D(widths[0], 3, padding="same", name="stem", **conv_opts)(inputs), "stem")
    for i, (width, stride) in enumerate(zip(widths[1:], (1, 2, 1)), start=1):
        y = L.DepthwiseConv2D(3, strides=stride, padding="same", name=f"dw{i}", **dw_opts)(x)
        y = norm_relu(y, f"dw{i}", relu=batch_norm)
        y = norm_relu(L.Conv2D(width, 1, name=f"pw{i}", **conv_opts)(y), f"pw{i}", relu=i != 3)
        x = L.ReLU(name=f"add{i}_relu")(L.Add(name=f"add{i}")([x, y])) if i == 3 else y
    x = L.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, L.Dense(num_classes, name="logits")(x), name=name)


def small_mlp(input_shape=(8, 8, 1), num_classes=10, widths=(128, 128, 64), batch_norm=True, name="small_mlp"):
    """An MLP: Flatten, Dense layers (each followed by BatchNorm when ``batch_norm``, for the gamma source)
    with ReLU, and a Dense head."""
    L = keras.layers
    inputs = keras.Input(shape=input_shape, name="image")
    x = L.Flatten(name="flatten")(inputs)
    for i, width in enumerate(widths, start=1):
        x = L.Dense(width, use_bias=not batch_norm, name=f"fc{i}")(x)
        if batch_norm:
            x = L.BatchNormalization(momentum=0.9, name=f"fc{i}_bn")(x)
        x = L.ReLU(name=f"fc{i}_relu")(x)
    return keras.Model(inputs, L.Dense(num_classes, name="logits")(x), name=name)


@keras.saving.register_keras_serializable(package="morphsparse")
class AddPositionEmbedding(keras.layers.Layer):
    """Adds a learned (sequence length, width) table to its input: a ViT's position embedding.

    Keras has no such layer, and an ``Embedding`` called on a constant ``arange`` inside a functional model
    is run once at construction (its output becomes a frozen constant, its table is not a weight of the
    model), so the table lives here. Its channels are its input's; the channel graph handles it with the
    keras_hub ``PositionEmbedding`` handler (``morphsparse/handlers/attention.py``), slicing the table's columns with the
    residual stream.
    """

    def build(self, input_shape):
        self.position_embeddings = self.add_weight(
            shape=(input_shape[-2], input_shape[-1]), initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="position_embeddings")

    def call(self, inputs):
        return inputs + keras.ops.cast(self.position_embeddings, inputs.dtype)


def small_vit(input_shape=(28, 28, 1), num_classes=10, patch=7, dim=64, depth=2, heads=4, key_dim=16, ffn=128,
              name="small_vit"):
    """A small Vision Transformer for 28x28 images: a strided Conv2D cuts ``patch`` x ``patch`` patches into
    tokens of width ``dim`` (16 tokens for 7x7 patches), a learned position embedding is added, then ``depth``
    pre-norm blocks ``LayerNormalization -> MultiHeadAttention -> Add -> LayerNormalization -> Dense(ffn, gelu)
    -> Dense(dim) -> Add``, a final LayerNormalization, global average pooling over the tokens and a Dense
    head (logits).

    ``heads`` and ``ffn`` are an int (every block) or one value per block, so narrowed and learned structures
    can be built by construction. Every block's heads and FFN width are removable channel groups; the residual
    stream (patch embedding, position embedding, attention and FFN outputs) is one group, which export keeps
    whole because LayerNormalization reads it (docs/channel_graph.md).
    """
    heads = [heads] * depth if isinstance(heads, int) else list(heads)
    ffn = [ffn] * depth if isinstance(ffn, int) else list(ffn)
    if len(heads) != depth or len(ffn) != depth:
        raise ValueError(f"heads and ffn need one value per block ({depth}), got {heads} and {ffn}")
    L = keras.layers
    inputs = keras.Input(shape=input_shape, name="image")
    x = L.Conv2D(dim, patch, strides=patch, name="patchify")(inputs)
    tokens = (input_shape[0] // patch) * (input_shape[1] // patch)
    x = L.Reshape((tokens, dim), name="tokens")(x)
    # A learned position embedding as an Embedding of the token indices: a plain Keras layer the channel
    # graph already reads (its output is added to the stream, so its channels are the stream's).
    x = AddPositionEmbedding(name="position")(x)
    for i in range(depth):
        y = L.LayerNormalization(epsilon=1e-6, name=f"b{i}_ln1")(x)
        y = L.MultiHeadAttention(heads[i], key_dim, name=f"b{i}_mha")(y, y)
        x = L.Add(name=f"b{i}_add1")([x, y])
        y = L.LayerNormalization(epsilon=1e-6, name=f"b{i}_ln2")(x)
        y = L.Dense(ffn[i], activation="gelu", name=f"b{i}_ffn1")(y)
        y = L.Dense(dim, name=f"b{i}_ffn2")(y)
        x = L.Add(name=f"b{i}_add2")([x, y])
    x = L.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    x = L.GlobalAveragePooling1D(name="pool")(x)
    outputs = L.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)
