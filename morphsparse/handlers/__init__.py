"""Per-layer-class handlers: how a layer moves channels through the network, what it costs, and how it is
rebuilt narrower or wider. Nothing outside this package needs to know a layer's type.

* :mod:`.base`: the protocol (:class:`ChannelHandler`, :class:`RebuildHandler`, :class:`LayerHandler`, every
  capability declared with its default) and the registry (:func:`register_handler`, :func:`get_handler`);
* :mod:`.layers`: Keras's layers (channel-keeping layers, merges, reshapes, Dense, the convolutions, Embedding);
* :mod:`.ops`: ``keras.ops`` calls, by what each operation does to the channel axis;
* :mod:`.attention`: MultiHeadAttention, EinsumDense and the embedding and normalisation layers of transformers
  (keras_hub's by class name, so keras_hub is never imported);
* :mod:`.gqa`: grouped-query attention with rotary embeddings (keras_hub's Llama family), its heads removable,
  and the layer it is rebuilt as;
* :mod:`.moe`: keras_hub's dense mixture-of-experts blocks, the expert width removable.

Importing this package registers the stock handlers; a user's :func:`register_handler` for the same class wins.
"""

from morphsparse.handlers import attention, gqa, layers, moe, ops
from morphsparse.handlers.base import (CHANNELS_LAST_ONLY, DEFAULT_REBUILD, ChannelHandler, LayerHandler,
                                       RebuildHandler, get_handler, layer_config, rebuild_part, register_handler)
from morphsparse.handlers.layers import (ChannelAxisNormalization, ChannelSizedPassThrough, Concatenate, Conv,
                                         ConvTranspose, Dense, DepthwiseConv, Embedding, Flatten, Input, Merge,
                                         Opaque, PassThrough, Producer, Rescaling, Reshape, SeparableConv)

for _module in (layers, ops, attention, gqa, moe):     # the most general first: later registrations are more specific
    _module.register_defaults()

__all__ = ["ChannelHandler", "RebuildHandler", "LayerHandler", "DEFAULT_REBUILD", "rebuild_part", "layer_config",
           "CHANNELS_LAST_ONLY", "register_handler", "get_handler", "PassThrough", "ChannelSizedPassThrough",
           "ChannelAxisNormalization", "Merge", "Rescaling", "Concatenate", "Flatten", "Reshape", "Opaque",
           "Producer", "Dense", "Conv", "ConvTranspose", "DepthwiseConv", "SeparableConv", "Embedding", "Input",
           "layers", "ops", "attention", "gqa", "moe"]
