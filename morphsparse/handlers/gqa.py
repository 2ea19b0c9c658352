"""Grouped-query attention with rotary embeddings (keras_hub's Llama family): heads as removable groups.

keras_hub's Llama, Llama3, Mistral, Mixtral, Qwen, Qwen2, Qwen-MoE, Qwen3, Qwen3-MoE, Phi3, Gemma, Gemma3 and
GPT-OSS attention layers (and Bloom's and Falcon's, with ALiBi slopes instead of rotary, G = 1)
project the hidden states to ``u`` query heads and ``v`` key/value heads of ``h`` entries each
(``u = G * v``: ``G`` query heads share each key/value head), rotate the queries and keys by position (RoPE,
which mixes entry ``i`` of a head with entry ``i + h/2``, with a frequency set by ``i``), repeat each key/value
head ``G`` times, attend, and project the ``u`` heads back to the hidden width.

**What is removable, and why.** The unit is one *key/value head together with the G query heads that read
it*: removing it removes its key and value slices, the query slices of its G query heads and their slices of
the output projection. That is the coupling of the dependency graph (Torch-Pruning's view): a query head
cannot outlive the key/value head it attends with, and removing whole groups keeps ``u = G * v`` with the
same G, so the slim layer is again a valid grouped-query attention (the repeat of ``ops.repeat(k, G)`` still
lines query head ``i`` up with key/value head ``i // G``). Removing query heads *within* every group instead
(``G`` shrinking) would be a second coupled axis whose costs are products of two alive counts (query
projection: width x key/value heads x group size), which the bilinear cost model
(``ChannelHandler.cost_terms``) cannot price; it is not offered. The head dimension ``h`` is kept whole:
rotary embeddings pair entry ``i`` with ``i + h/2`` at a frequency that depends on ``i / h``, so removing
entries changes every remaining rotation, and queries and keys must keep the same entries to be multiplied.

Each such layer is one call of the channel graph (not read through), with an internal channel axis
``"heads"`` of ``v`` channels (``graph.internal_group(path, "heads")``); it reads the hidden channels with its
three projections and writes new output channels (the residual stream, through the residual add).

**Export and expand** rebuild it as :class:`GroupedQueryAttention`, a Keras layer of this package computing
the same function at any head count: keras_hub's Llama, Qwen and Phi3 layers derive their head dimension
from ``hidden_dim // num_query_heads``, so they cannot be built with fewer heads of the same size. The
keras_hub attributes these handlers read (``_query_dense``, ``rotary_embedding_layer``, ...) are keras_hub's
own, not Keras privates; they are named in :data:`HUB_GQA` only.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from dataclasses import dataclass

import keras
import numpy as np

from morphsparse.handlers import layers as _h
from morphsparse.handlers.base import base_config, layer_config, positions, register_handler

_HUB = "keras_hub.src"


# --- the keras_hub layers read ---------------------------------------------------------------------------

#: keras_hub grouped-query attention classes (by class path under keras_hub.src) and the attributes that hold
#: their parts: the query, key, value and output EinsumDense layers, the rotary embedding, optional query and
#: key norms (over the head dimension), the head counts, the score scale, a logit soft cap and a sliding window
#: (attribute names; None where the class has none). The one place these keras_hub attributes are named.
_LLAMA = dict(query="_query_dense", key="_key_dense", value="_value_dense", output="_output_dense",
              rotary="rotary_embedding_layer", query_norm=None, key_norm=None, query_heads="num_query_heads",
              kv_heads="num_key_value_heads", scale="_inv_norm_factor", soft_cap=None, sliding_window=None,
              dropout="dropout")

def _gemma_scale(layer):
    # Gemma scales the queries by 1/sqrt(head_dim), or by 1/sqrt(hidden_dim // num_query_heads): computed in
    # its call, not stored; the slim layer keeps the original's number
    if layer.query_head_dim_normalize:
        return 1.0 / np.sqrt(layer.head_dim)
    return 1.0 / np.sqrt(layer.hidden_dim // layer.num_query_heads)


_GEMMA = dict(query="query_dense", key="key_dense", value="value_dense", output="output_dense", rotary="rope_layer",
              query_norm=None, key_norm=None, query_heads="num_query_heads", kv_heads="num_key_value_heads",
              scale=_gemma_scale, soft_cap="logit_soft_cap", sliding_window="sliding_window_size",
              sliding_window_on="use_sliding_window_attention", dropout="dropout",
              # Gemma (1 and 2) re-lays the rotated halves of each head out interleaved after its rotary embedding
              interleave=lambda layer: True)
#: Llama's parts with the projections under names without an underscore
_LLAMA_DENSE = dict(_LLAMA, query="query_dense", key="key_dense", value="value_dense", output="output_dense")

HUB_GQA = {
    "models.llama.llama_attention.LlamaAttention": _LLAMA,
    # Mistral's sliding window is applied on the vLLM serving path only; its dense path attends to every key
    "models.mistral.mistral_attention.CachedMistralAttention": dict(
        _LLAMA, query_heads="_num_query_heads", kv_heads="_num_key_value_heads", dropout="_dropout"),
    "models.qwen.qwen_attention.QwenAttention": dict(_LLAMA, sliding_window="sliding_window_size",
                                                      sliding_window_on="use_sliding_window_attention"),
    "models.qwen3.qwen3_attention.Qwen3Attention": dict(
        _LLAMA, query_norm="_query_dense_layer_norm", key_norm="_key_dense_layer_norm",
        sliding_window="sliding_window_size"),
    # Mixtral's sliding window is applied by its decoder's causal mask, which the attention is given
    "models.mixtral.mixtral_attention.CachedMixtralAttention": _LLAMA_DENSE,
    "models.qwen3_moe.qwen3_moe_attention.Qwen3MoeAttention": dict(
        _LLAMA, query_norm="_query_dense_layer_norm", key_norm="_key_dense_layer_norm",
        sliding_window="sliding_window_size"),
    "models.qwen_moe.qwen_moe_attention.QwenMoeAttention": dict(
        _LLAMA, query="query_dense", key="key_dense", value="value_dense", sliding_window="sliding_window_size",
        sliding_window_on="use_sliding_window_attention"),
    # GPT-OSS: per-head attention sinks, a rotary over the even part of the head, a window over past keys
    "models.gpt_oss.gpt_oss_attention.GptOssAttention": dict(
        _LLAMA_DENSE, sliding_window="sliding_window", rotary_dim="_rotary_dim", sinks="sinks", window="past"),
    "models.gemma.gemma_attention.CachedGemmaAttention": _GEMMA,
    # ALiBi instead of rotary, one key/value head per query head. Bloom adds slopes its AlibiBias layer computes
    # from the head count after scaling; Falcon adds an `alibi` input its decoder computes, before scaling.
    # Both project the heads back with a Dense on the flattened heads.
    "models.bloom.bloom_attention.BloomAttention": dict(
        _LLAMA, rotary=None, query_heads="num_heads", kv_heads="num_heads", scale="inv_norm_factor",
        alibi_slopes=lambda layer: layer._alibi_layer._get_slopes(layer.num_heads)),
    "models.falcon.falcon_attention.FalconAttention": dict(
        _LLAMA_DENSE, rotary=None, query_heads="num_heads", kv_heads="num_heads", scale="inv_norm_factor",
        dropout="attention_dropout_rate", alibi_input=lambda layer: True),
    "models.gemma3.gemma3_attention.CachedGemma3Attention": dict(
        _GEMMA, interleave=None, query_norm=lambda layer: getattr(layer, "query_norm", None),
        key_norm=lambda layer: getattr(layer, "key_norm", None),
        # EmbeddingGemma's bidirectional sliding mask is not what GroupedQueryAttention computes
        unsupported=("use_bidirectional_attention",)),
    "models.phi3.phi3_attention.Phi3Attention": _LLAMA_DENSE,
    # SmolLM3: Dense query/key/value projections on the flattened heads (reshaped into heads in its call), a
    # rotary layer of its own that returns (cos, sin) (applied as x * cos + rotate_half(x) * sin, computed once
    # per call), rotary switched off per layer by ``use_rope``; no dropout on its dense path
    "models.smollm3.smollm3_layers.SmolLM3Attention": dict(
        _LLAMA, query="q_proj", key="k_proj", value="v_proj", output="o_proj",
        rotary=lambda layer: layer.rotary_embedding if layer.use_rope else None, query_heads="num_attention_heads",
        head_dim="head_dim", rotary_output=lambda layer: "cos_sin", dropout=None),
}


@dataclass
class Parts:
    """The parts of one grouped-query attention layer, whatever its class."""

    query: object
    key: object
    value: object
    output: object
    rotary: object
    query_norm: object
    key_norm: object
    num_query_heads: int
    num_kv_heads: int
    scale: float
    soft_cap: float | None
    sliding_window: int | None
    dropout: float
    interleave: bool = False
    rotary_dim: int | None = None
    sinks: object = None
    window: str = "band"
    alibi_slopes: list | None = None      # per query head, added after scaling (Bloom)
    alibi_input: bool = False             # an `alibi` call argument, added before scaling (Falcon)
    alibi_heads: list | None = None       # which heads of that argument (a rebuilt layer's own)
    head_size: int | None = None          # the head size, for Dense projections on the flattened heads
    rotary_output: str = "rotated"        # "rotated": rotary(x) is x rotated; "cos_sin": it returns (cos, sin)

    @property
    def groups(self):
        """Query heads per key/value head."""
        return self.num_query_heads // self.num_kv_heads

    @property
    def head_dim(self):
        return int(self.query.kernel.shape[-1] if self.head_size is None else self.head_size)


def _read(layer, names):
    def attr(key):
        name = names.get(key)
        if callable(name):       # a value the class computes rather than stores (Gemma's score scale)
            return name(layer)
        return None if name is None else getattr(layer, name)

    window = attr("sliding_window")
    if names.get("sliding_window_on") and not getattr(layer, names["sliding_window_on"]):
        window = None
    return Parts(query=attr("query"), key=attr("key"), value=attr("value"), output=attr("output"),
                 rotary=attr("rotary"), query_norm=attr("query_norm"), key_norm=attr("key_norm"),
                 num_query_heads=int(attr("query_heads")), num_kv_heads=int(attr("kv_heads")),
                 scale=float(attr("scale")), soft_cap=attr("soft_cap"), sliding_window=window,
                 dropout=float(attr("dropout") or 0.0), interleave=bool(attr("interleave")),
                 rotary_dim=attr("rotary_dim"), sinks=attr("sinks"), alibi_slopes=attr("alibi_slopes"),
                 alibi_input=bool(attr("alibi_input")), alibi_heads=attr("alibi_heads"),
                 head_size=attr("head_dim"), rotary_output=attr("rotary_output") or "rotated",
                 window=(getattr(layer, "window", None) if names.get("window") == "own"
                         else names.get("window", "band")))


# --- kernel layouts --------------------------------------------------------------------------------------

def _einsum_specs(equation):
    """(input, kernel, output) index letters of a two-operand einsum equation."""
    inputs, out = equation.replace(" ", "").split("->")
    x, kernel = inputs.split(",")
    return x, kernel, out


def _in_order(dense):
    """Axis permutation of an input projection's kernel to (width, heads, head entries)."""
    x, kernel, out = _einsum_specs(dense.equation)
    return [kernel.index(c) for c in (x[-1], out[-2], out[-1])]


def _out_order(dense):
    """Axis permutation of the output projection's kernel to (heads, head entries, width)."""
    x, kernel, out = _einsum_specs(dense.equation)
    return [kernel.index(c) for c in (x[-2], x[-1], out[-1])]


def _flat_heads(dense):
    """True for an input projection that is a Dense on the flattened heads (SmolLM3), not an EinsumDense to
    (heads, head entries)."""
    return getattr(dense, "equation", None) is None


def _in_canonical(p, dense, kernel, xp=np):
    """An input projection's kernel as (width, heads, head entries): an EinsumDense's transposed, a Dense's on
    the flattened heads reshaped."""
    if _flat_heads(dense):
        return xp.reshape(kernel, (kernel.shape[0], -1, p.head_dim))
    return xp.transpose(kernel, _in_order(dense))


def _out_canonical(p, kernel, xp=np):
    """The output projection's kernel as (heads, head entries, width): an EinsumDense's transposed, a Dense's
    on the flattened heads (Bloom, Falcon) reshaped."""
    if getattr(p.output, "equation", None) is not None:
        return xp.transpose(kernel, _out_order(p.output))
    return xp.reshape(kernel, (p.num_query_heads, p.head_dim, kernel.shape[-1]))


def alibi_slopes(num_heads, alibi_bias_max=8):
    """The ALiBi slopes of ``num_heads`` heads (Press et al., 2021; keras_hub's AlibiBias): a geometric
    sequence from 2^(-8/n), with the odd-indexed slopes of twice as many heads filling a count that is not a
    power of two. For an expanded layer's new heads."""
    def power_of_2(n):
        start = 2 ** (-(2 ** -(np.log2(n) - np.log2(alibi_bias_max))))
        return [float(start * start ** i) for i in range(n)]
    if float(np.log2(num_heads)).is_integer():
        return power_of_2(num_heads)
    closest = 2 ** int(np.floor(np.log2(num_heads)))
    return power_of_2(closest) + alibi_slopes(2 * closest, alibi_bias_max)[0::2][:num_heads - closest]


# --- the rebuilt layer ------------------------------------------------------------------------------------

def _serialize(layer):
    """A sublayer's serialized config; for a class with no usable ``get_config`` (keras_hub 0.32's Gemma
    RMSNormalization), its constructor arguments read off its attributes (``handlers.layer_config`` warns)."""
    if layer is None:
        return None
    try:
        return keras.saving.serialize_keras_object(layer)
    except NotImplementedError:
        return _serialized(layer, dict(layer_config(layer), dtype=keras.dtype_policies.serialize(layer.dtype_policy)))


def _serialized(layer, config):
    """The serialized form of ``layer`` with ``config`` (for a class whose own ``get_config`` cannot give it)."""
    return {"module": type(layer).__module__, "class_name": type(layer).__name__, "config": config,
            "registered_name": None}


def _deserialize(config):
    """A sublayer from its serialized config (``keras.saving.serialize_keras_object``).

    keras_hub 0.32's LlamaRotaryEmbedding cannot read its own config back: it writes ``scaling_factor``, which
    its constructor passes to its base itself ("multiple values for keyword argument"), and
    ``original_max_embeddings``, which no constructor takes ("Unrecognized keyword arguments"). A key refused
    in either way is one the class does not take from its caller, so it is dropped and the layer made again."""
    if config is None or isinstance(config, keras.layers.Layer):
        return config
    try:
        cls = getattr(importlib.import_module(config["module"]), config["class_name"])
    except (KeyError, ImportError, AttributeError):
        return keras.saving.deserialize_keras_object(config)
    inner = dict(config["config"])
    for _ in range(len(inner) + 1):
        try:
            return cls.from_config(inner)
        except (TypeError, ValueError) as err:
            key = _refused_key(str(err))
            if key is None or key not in inner:
                raise
            inner.pop(key)
    raise ValueError(f"cannot make {config['class_name']} from its config {config['config']}")


def _refused_key(message):
    """The argument name a constructor refused, from its error message; None when it refused something else."""
    found = re.search(r"multiple values for keyword argument '(\w+)'", message) or re.search(
        r"Unrecognized keyword arguments passed to \w+: \{'(\w+)'", message)
    return found.group(1) if found else None


@keras.saving.register_keras_serializable(package="morphsparse")
class GroupedQueryAttention(keras.layers.Layer):
    """Grouped-query self-attention with rotary position embeddings, at any head count: what export and expand
    rebuild keras_hub's Llama-family attention layers as (their own classes derive the head size from the
    hidden width and the head count, so they cannot be made with fewer heads of the same size).

    It computes what those layers compute on their dense path: query, key and value projections
    (``EinsumDense``, optional biases over heads and head entries), optional query and key norms over the head
    entries, the rotary embedding (the original's own layer, from its config), each key/value head repeated for
    its ``num_query_heads // num_key_value_heads`` query heads, scores scaled by ``scale`` (optionally
    soft-capped: ``tanh(s / cap) * cap``), a softmax masked by ``attention_mask`` (and a sliding window of
    ``sliding_window`` positions), and the output projection to ``output_dim`` channels. Options met in keras_hub:
    Gemma's interleaved rotary layout, GPT-OSS's attention sinks, partial rotary and past-only window, ALiBi
    slopes (Bloom) or an ``alibi`` argument (Falcon). Dropout (training only) is applied to the attention output
    before the output projection, as Llama does (Falcon and Bloom drop attention probabilities instead).
    A key/value cache (``cache`` of shape (batch, 2, length, kv heads, head_dim)) works as in keras_hub's
    layers.
    """

    def __init__(self, num_query_heads, num_key_value_heads, head_dim, output_dim, scale, rotary=None,
                 query_norm=None, key_norm=None, use_bias=False, output_bias=False, logit_soft_cap=None,
                 sliding_window=None, dropout=0.0, interleave_rotary=False, rotary_dim=None, sinks=False,
                 window="band", alibi_slopes=None, alibi_heads=None, rotary_output="rotated",
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if num_key_value_heads < 1 or num_query_heads % num_key_value_heads:
            raise ValueError(f"GroupedQueryAttention '{self.name}': num_query_heads ({num_query_heads}) must be a "
                             f"positive multiple of num_key_value_heads ({num_key_value_heads})")
        self.num_query_heads, self.num_key_value_heads = int(num_query_heads), int(num_key_value_heads)
        self.head_dim, self.output_dim = int(head_dim), int(output_dim)
        self.scale = float(scale)
        self.use_bias, self.output_bias = bool(use_bias), bool(output_bias)
        self.logit_soft_cap = logit_soft_cap
        self.sliding_window = sliding_window
        self.dropout = float(dropout)
        self.interleave_rotary = bool(interleave_rotary)
        self.rotary_dim = None if rotary_dim is None else int(rotary_dim)
        self.use_sinks = bool(sinks)
        for name, value, allowed in (("window", window, ("band", "past")),
                                     ("rotary_output", rotary_output, ("rotated", "cos_sin"))):
            if value not in allowed:
                raise ValueError(f"GroupedQueryAttention '{self.name}': {name} must be {allowed[0]!r} or "
                                 f"{allowed[1]!r}, got {value!r}")
        self.window, self.rotary_output = window, rotary_output
        self.alibi_slopes = None if alibi_slopes is None else [float(a) for a in alibi_slopes]
        self.alibi_heads = None if alibi_heads is None else [int(i) for i in alibi_heads]
        for name, values in (("alibi_slopes", self.alibi_slopes), ("alibi_heads", self.alibi_heads)):
            if values is not None and len(values) != self.num_query_heads:
                raise ValueError(f"GroupedQueryAttention '{self.name}': {name} has {len(values)} entries for "
                                 f"{self.num_query_heads} query heads")
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.rotary, self.query_norm, self.key_norm = (_deserialize(c) for c in (rotary, query_norm, key_norm))

    def _projection(self, equation, output_shape, name, bias, input_shape):
        """A built EinsumDense; its bias, if any, over the output's axes past the positions."""
        dense = keras.layers.EinsumDense(equation, output_shape=output_shape,
                                         bias_axes=equation[1 - len(output_shape):] if bias else None,
                                         kernel_initializer=self.kernel_initializer, dtype=self.dtype_policy,
                                         name=name)
        dense.build(input_shape)
        return dense

    def build(self, input_shape):
        u, v, h = self.num_query_heads, self.num_key_value_heads, self.head_dim
        self.query_dense = self._projection("bqm,muh->bquh", (None, u, h), "query", self.use_bias, input_shape)
        self.key_dense = self._projection("bkm,mvh->bkvh", (None, v, h), "key", self.use_bias, input_shape)
        self.value_dense = self._projection("bkm,mvh->bkvh", (None, v, h), "value", self.use_bias, input_shape)
        self.output_dense = self._projection("bquh,uhm->bqm", (None, self.output_dim), "attention_output",
                                             self.output_bias, (None, None, u, h))
        for norm in (self.query_norm, self.key_norm):
            if norm is not None and not norm.built:
                norm.build((None, None, None, self.head_dim))
        if self.use_sinks:      # GPT-OSS: one extra logit per query head that takes part in the softmax only
            self.sinks = self.add_weight(shape=(u,), initializer="zeros", name="sinks")
        self.softmax = keras.layers.Softmax(axis=-1, dtype="float32", name="attention_softmax")
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=self.dtype_policy)
        self.built = True

    def _heads(self, y, norm, start, rotate, angles=None):
        """Projected heads ``y`` normed and rotated."""
        if norm is not None:
            y = norm(y)
        if rotate and angles is not None:
            # a rotary layer returning (cos, sin) of shape (batch, length, head entries) (SmolLM3's):
            # y * cos + rotate_half(y) * sin, rotate_half(y) = concat(-second half, first half)
            ops = keras.ops
            cos, sin = (ops.expand_dims(a, 2) for a in angles)
            first, second = ops.split(y, 2, axis=-1)
            y = y * cos + ops.concatenate([-second, first], axis=-1) * sin
        elif rotate and self.rotary is not None and self.rotary_dim is not None and self.rotary_dim < self.head_dim:
            # partial rotary (GPT-OSS with an odd head size): the first rotary_dim entries only
            y = keras.ops.concatenate([self.rotary(y[..., :self.rotary_dim], start_index=start),
                                       y[..., self.rotary_dim:]], axis=-1)
        elif rotate and self.rotary is not None:
            y = self.rotary(y, start_index=start)
            if self.interleave_rotary:    # Gemma's layout: entry i of each rotated half side by side
                ops = keras.ops
                y = ops.reshape(ops.stack(ops.split(y, 2, axis=-1), axis=-1), ops.shape(y))
        return y

    def call(self, hidden_states=None, attention_mask=None, cache=None, cache_update_index=None, training=None,
             alibi=None, **unused):
        # the hidden states under the name the original class gives them (Falcon: inputs, Gemma: x); its other
        # arguments (Gemma3's cache_update_mask) may be passed as None only
        for alias in ("inputs", "x"):
            if hidden_states is None and alias in unused:
                hidden_states = unused.pop(alias)
        given = sorted(k for k, v in unused.items() if v is not None)
        if given:
            raise ValueError(f"GroupedQueryAttention '{self.name}' does not take {given}")
        ops = keras.ops
        start = 0 if cache_update_index is None else cache_update_index
        query = self.query_dense(hidden_states)
        angles = None
        if self.rotary is not None and self.rotary_output == "cos_sin":     # computed once, for queries and keys
            angles = self.rotary(query, start_index=start)
        query = self._heads(query, self.query_norm, start, True, angles)
        key = self._heads(self.key_dense(hidden_states), self.key_norm, start, True, angles)
        value = self.value_dense(hidden_states)
        if cache is not None:
            if cache_update_index is None:
                key, value = cache[:, 0, ...], cache[:, 1, ...]
            else:
                at = [0, cache_update_index, 0, 0]
                key = ops.slice_update(cache[:, 0, ...], at, key)
                value = ops.slice_update(cache[:, 1, ...], at, value)
                cache = ops.stack((key, value), axis=1)
        groups = self.num_query_heads // self.num_key_value_heads
        key = ops.repeat(key, repeats=groups, axis=2)
        value = ops.repeat(value, repeats=groups, axis=2)
        scores = ops.einsum("bquh,bkuh->buqk", query, key)
        if self.alibi_heads is not None:      # Falcon: its decoder's ALiBi tensor, before the scale
            if alibi is None:
                raise ValueError(f"GroupedQueryAttention '{self.name}' takes an `alibi` argument")
            scores = ops.add(scores, ops.take(ops.cast(alibi, scores.dtype), self.alibi_heads, axis=1))
        scores = ops.multiply(scores, ops.cast(self.scale, self.compute_dtype))
        if self.alibi_slopes is not None:     # Bloom: slope * (key position - last key position)
            positions = ops.cast(ops.arange(1 - ops.shape(scores)[-1], 1), scores.dtype)
            slopes = ops.convert_to_tensor(np.asarray(self.alibi_slopes, "float32"), scores.dtype)
            scores = ops.add(scores, slopes[None, :, None, None] * positions[None, None, None, :])
        if self.logit_soft_cap is not None:
            scores = ops.multiply(ops.tanh(ops.divide(scores, self.logit_soft_cap)), self.logit_soft_cap)
        if self.sliding_window and (attention_mask is not None or self.window == "past"):
            shape = ops.shape(scores)
            window = self._window((shape[0], shape[2], shape[3]), start)
            attention_mask = window if attention_mask is None else ops.logical_and(
                ops.cast(attention_mask, "bool"), window)
        if self.use_sinks:
            scores = self._with_sinks(scores, attention_mask)
        elif attention_mask is not None:
            scores = self.softmax(scores, attention_mask[:, None, :, :])
        else:
            scores = self.softmax(scores)
        scores = ops.cast(scores, self.compute_dtype)
        out = ops.einsum("buqk,bkuh->bquh", scores, value)
        out = self.dropout_layer(out, training=training)
        out = self.output_dense(out)
        return out if cache is None else (out, cache)

    def _window(self, shape, start):
        """Which keys query i (at position start + i) sees. ``window="band"``: key j when |start + i - j| <
        sliding_window, as keras_hub's ``_mask_sliding_window`` (a band of the square key-by-key matrix, sliced
        at the query rows); ``"past"``: key j when j >= start + i - sliding_window (GPT-OSS)."""
        ops = keras.ops
        rows = ops.expand_dims(ops.arange(shape[1]) + start, 1)
        cols = ops.expand_dims(ops.arange(shape[2]), 0)
        if self.window == "past":
            return ops.expand_dims(cols >= rows - self.sliding_window, 0)
        return ops.expand_dims(ops.abs(rows - cols) < self.sliding_window, 0)

    def _with_sinks(self, scores, mask):
        """GPT-OSS's softmax: masked logits (-1e9) and one sink logit per query head, softmax over both, the
        sink's share dropped."""
        ops = keras.ops
        if mask is not None:
            scores = ops.where(ops.cast(mask, "bool")[:, None, :, :], scores, ops.cast(-1e9, scores.dtype))
        shape = ops.shape(scores)
        sinks = ops.broadcast_to(ops.reshape(ops.cast(self.sinks, scores.dtype), (1, -1, 1, 1)),
                                 (shape[0], shape[1], shape[2], 1))
        logits = ops.concatenate([scores, sinks], axis=-1)
        logits = logits - ops.stop_gradient(ops.max(logits, axis=-1, keepdims=True))
        return ops.softmax(logits, axis=-1)[..., :-1]

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return tuple(input_shape[:-1]) + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(num_query_heads=self.num_query_heads, num_key_value_heads=self.num_key_value_heads,
                      head_dim=self.head_dim, output_dim=self.output_dim, scale=self.scale,
                      rotary=_serialize(self.rotary), query_norm=_serialize(self.query_norm),
                      key_norm=_serialize(self.key_norm), use_bias=self.use_bias, output_bias=self.output_bias,
                      logit_soft_cap=self.logit_soft_cap, sliding_window=self.sliding_window,
                      dropout=self.dropout, interleave_rotary=self.interleave_rotary, rotary_dim=self.rotary_dim,
                      sinks=self.use_sinks, window=self.window, alibi_slopes=self.alibi_slopes,
                      alibi_heads=self.alibi_heads, rotary_output=self.rotary_output,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer))
        return config


_OWN = dict(query="query_dense", key="key_dense", value="value_dense", output="output_dense", rotary="rotary",
            query_norm="query_norm", key_norm="key_norm", query_heads="num_query_heads",
            kv_heads="num_key_value_heads", scale="scale", soft_cap="logit_soft_cap",
            sliding_window="sliding_window", dropout="dropout", interleave="interleave_rotary",
            rotary_dim="rotary_dim", sinks=lambda layer: getattr(layer, "sinks", None), window="own",
            alibi_slopes="alibi_slopes", alibi_input=lambda layer: layer.alibi_heads is not None,
            alibi_heads="alibi_heads", rotary_output="rotary_output")


def _variables(p):
    """The weights of a grouped-query attention layer in one fixed order, whatever order its class tracks them
    in: query, key, value kernels (each followed by its bias), output kernel (and bias), norm weights."""
    out = []
    for dense in (p.query, p.key, p.value, p.output):
        out.append(dense.kernel)
        if getattr(dense, "bias", None) is not None:
            out.append(dense.bias)
    for norm in (p.query_norm, p.key_norm):
        if norm is not None:
            out += list(norm.weights)
    if p.sinks is not None:
        out.append(p.sinks)
    if p.rotary is not None:
        out += list(p.rotary.weights)
    return out


# --- the handler ------------------------------------------------------------------------------------------

class GroupedQueryAttentionHandler(_h.MultiAxis):
    """Handler of grouped-query attention layers: internal axis ``"heads"`` of one channel per key/value head
    (with its query heads); reads the hidden channels, writes new output channels; costs counted exactly;
    rebuilt as :class:`GroupedQueryAttention`. ``names``: where the layer class keeps its parts (see
    :data:`HUB_GQA`)."""

    def __init__(self, names=None):
        self.names = dict(_OWN if names is None else names)

    def parts(self, call):
        return _read(call.layer, self.names)

    @staticmethod
    def _arguments(call):
        """The call's arguments by the names of the layer's ``call`` parameters (keras_hub's classes call the
        hidden states ``hidden_states``, ``x`` or ``inputs``, and take them, the mask, Falcon's ``alibi`` and
        the cache by position or keyword)."""
        args, kwargs = call.node.arguments.args, call.node.arguments.kwargs
        parameters = list(inspect.signature(call.layer.call).parameters.values())
        bound = dict(zip((p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)),
                         args))
        bound.update(kwargs)
        bound["__hidden__"] = args[0] if args else bound.get(parameters[0].name) if parameters else None
        return bound

    def _position(self, call, name):
        """Input position of the tensor passed as argument ``name``; None when none is."""
        value = self._arguments(call).get(name)
        return next((i for i, t in enumerate(call.node.input_tensors) if value is not None and t is value), None)

    def _hidden(self, call):
        """Input position of the hidden states (the first argument of the layer's call)."""
        position = self._position(call, "__hidden__")
        if position is None:
            raise ValueError(f"layer '{call.path}' ({type(call.layer).__name__}): cannot tell which input holds "
                             "the hidden states; register a handler naming it")
        return position

    def _alibi_input(self, call):
        """Input position of Falcon's ``alibi`` argument; None for a layer that takes none."""
        return self._position(call, "alibi")

    def _mask_input(self, call):
        return self._position(call, "attention_mask")

    def _check(self, call, graph):
        if self._arguments(call).get("cache") is not None:
            raise graph.error(call, "is called with a key/value cache; analyse the model without one (the "
                                    "backbone's forward pass, not a generation step)")
        for name in self.names.get("unsupported", ()):
            if getattr(call.layer, name, False):
                raise graph.error(call, f"has {name}=True, which morphsparse's grouped-query attention does not "
                                        "compute; keep the layer out of the analysed model or register a handler")
        p = self.parts(call)
        if p.num_query_heads % p.num_kv_heads:
            raise graph.error(call, f"has {p.num_query_heads} query heads for {p.num_kv_heads} key/value heads "
                                    "(not a multiple)")
        for name, dense in (("query", p.query), ("key", p.key), ("value", p.value)):
            if _flat_heads(dense):
                heads = p.num_query_heads if dense is p.query else p.num_kv_heads
                if p.head_size is None or tuple(dense.kernel.shape)[-1] != heads * p.head_dim:
                    raise graph.error(call, f"has a {name} projection of {tuple(dense.kernel.shape)[-1]} outputs, "
                                            f"not {heads} heads of a known size; register a handler for it")
                continue
            x, kernel, out = _einsum_specs(dense.equation)
            if len(kernel) != 3 or len(out) != 4 or x[-1] not in kernel or out[-2] not in kernel:
                raise graph.error(call, f"has a {name} projection of equation {dense.equation!r}, not "
                                        "'(width)->(heads, head entries)'; register a handler for it")

    def infer_output_shapes(self, layer, in_shapes):
        """The hidden states' shape at the output projection's width (SmolLM3's own output spec cannot be
        computed from the hidden states' shape alone)."""
        p = _read(layer, self.names)
        return [tuple(in_shapes[0][:-1]) + (int(p.output.kernel.shape[-1]),)]

    def propagate(self, call, graph):
        self._check(call, graph)
        for slot in ("query", "key", "value"):
            graph.consume(call, call.in_maps[self._hidden(call)], slot=slot)
        graph.internal(call, "heads", graph.new_channels(call, self.parts(call).num_kv_heads, output="heads"))
        return [graph.new_channels(call, call.output_channels(0))]

    # --- costs ------------------------------------------------------------------------------------------
    def _rotary_macs(self, call, p, t):
        """keras_hub's RotaryEmbedding computes its angles as an einsum of the positions by the inverse
        frequencies: T * h/2 multiply-accumulates per call, one call for the queries and one for the keys."""
        rotated = p.head_dim if p.rotary_dim is None else min(p.rotary_dim, p.head_dim)
        if p.rotary is not None and p.rotary_output == "cos_sin":
            # SmolLM3's: one matmul of its inverse frequencies by the positions per call, shared by queries and keys
            return t * (rotated // 2)
        if p.rotary is None or not hasattr(p.rotary, "feature_axis"):
            return 0
        return 2 * t * (rotated // 2)

    def cost_terms(self, call):
        """Bilinear terms in (hidden width, key/value heads) and (key/value heads, output width); the rotary
        angles and the head-entry norms do not depend on either."""
        p = self.parts(call)
        hidden = self._hidden(call)
        t = positions(call.input_shapes[hidden], "the hidden states")
        g, h = p.groups, p.head_dim
        qkv_bias = 1 if getattr(p.query, "bias", None) is not None else 0
        out_bias = 1 if getattr(p.output, "bias", None) is not None else 0
        # weights that do not follow the heads (query/key norms over head entries); sinks: one per query head
        fixed = sum(int(np.prod(w.shape)) for w in call.layer.weights
                    if not any(w is v for d in (p.query, p.key, p.value, p.output) for v in d.weights)
                    and w is not p.sinks)
        sinks = 0 if p.sinks is None else g
        rotary = self._rotary_macs(call, p, t)
        heads = ("out", call.internal_index("heads"))
        return [
            (("in", hidden), heads, lambda a, b: t * (g + 2) * h * a * b,
             lambda a, b: (g + 2) * h * a * b + qkv_bias * (g + 2) * h * b),
            (None, heads, lambda a, b: 2 * t * t * g * h * b + rotary, lambda a, b: fixed + sinks * b),
            (heads, ("out", 0), lambda a, b: t * g * h * a * b, lambda a, b: g * h * a * b + out_bias * b),
        ]

    def timed_axes(self, call):
        """Timed along the hidden width and the key/value heads (each with its query heads), as
        MultiHeadAttention is: a latency table prices the heads."""
        return self._hidden(call), call.internal_index("heads")

    # --- group lasso --------------------------------------------------------------------------------------
    def kernel_matrix(self, call, xp=np):
        p = self.parts(call)
        kernel = _out_canonical(p, _h.value_of(p.output.kernel, xp), xp)
        return xp.reshape(kernel, (-1, kernel.shape[-1]))

    def axis_columns(self, call, axis, xp):
        """The weights of each key/value head as a column: its key and value kernels, and the query and output
        kernels of its query heads."""
        p = self.parts(call)
        v, g, h = p.num_kv_heads, p.groups, p.head_dim
        parts = []
        for dense, heads_per in ((p.query, g), (p.key, 1), (p.value, 1), (p.output, g)):
            kernel = _h.value_of(dense.kernel, xp)
            if dense is p.output:                           # (heads, h, width) -> (width, heads, h)
                kernel = xp.transpose(_out_canonical(p, kernel, xp), (2, 0, 1))
            else:
                kernel = _in_canonical(p, dense, kernel, xp)
            kernel = xp.reshape(kernel, (kernel.shape[0], v, heads_per * h))    # query head i: kv head i // g
            kernel = xp.transpose(kernel, (0, 2, 1))
            parts.append(xp.reshape(kernel, (-1, v)))
        return parts

    def axis_weights(self, call, axis):
        """(variable, axis, entries(mask)) of every weight the heads axis slices: a key/value head's mask entry
        covers its ``G`` query heads in the query and output kernels."""
        p = self.parts(call)
        out = []
        for dense, per in ((p.query, p.groups), (p.key, 1), (p.value, 1), (p.output, p.groups)):
            flat = _flat_heads(dense)    # a Dense on the flattened heads: head i is entries i*h .. i*h + h - 1
            entries = functools.partial(np.repeat, repeats=per * p.head_dim if flat else per)
            if dense is p.output:
                out.append((dense.kernel, 0 if flat else _out_order(dense)[0], entries))
                continue
            out.append((dense.kernel, 1 if flat else _in_order(dense)[1], entries))
            if getattr(dense, "bias", None) is not None:
                out.append((dense.bias, 0, entries))
        if p.sinks is not None:
            out.append((p.sinks, 0, functools.partial(np.repeat, repeats=p.groups)))
        return out

    # --- export and expand --------------------------------------------------------------------------------
    def rebuild_class(self, call):
        return GroupedQueryAttention

    def live_outputs(self, call, in_live, out_alive):
        self.live_heads(call, out_alive)
        if not in_live[self._hidden(call)].any() or not out_alive[0].any():
            return None
        return [out_alive[0]]

    def rebuild_config(self, call, keep_in, keep_out):
        layer, p = call.layer, self.parts(call)
        mask = self.internal_mask(call, keep_out, "heads")
        kv = int(mask.sum())
        return dict(base_config(layer), num_query_heads=kv * p.groups, num_key_value_heads=kv, head_dim=p.head_dim,
                    output_dim=int(np.sum(keep_out[0])), scale=p.scale, rotary=_serialize(p.rotary),
                    query_norm=_serialize(p.query_norm), key_norm=_serialize(p.key_norm),
                    use_bias=getattr(p.query, "bias", None) is not None,
                    output_bias=getattr(p.output, "bias", None) is not None, logit_soft_cap=p.soft_cap,
                    sliding_window=p.sliding_window or None, dropout=p.dropout, interleave_rotary=p.interleave,
                    rotary_dim=p.rotary_dim, sinks=p.sinks is not None, window=p.window,
                    rotary_output=p.rotary_output,
                    **self._alibi_config(call, p, mask))

    def _alibi_config(self, call, p, mask):
        """ALiBi of the rebuilt layer's query heads: export keeps the kept heads' slopes (or their rows of the
        alibi argument); expand, which makes a layer of another head count with fresh weights, gives it the
        standard slopes of that count (or the first rows of the alibi argument, which has as many as the
        original layer had)."""
        u = int(mask.sum()) * p.groups
        if p.alibi_slopes is None and not p.alibi_input:
            return {}
        # a mask over this layer's own heads (export) says which heads' ALiBi to keep; a mask of another
        # length (expand) is a new head count
        kept = np.flatnonzero(np.repeat(mask, p.groups)) if len(mask) == p.num_kv_heads else None
        if p.alibi_slopes is not None:
            slopes = (np.asarray(p.alibi_slopes)[kept].tolist() if kept is not None and len(kept) == u
                      else alibi_slopes(u))
            return {"alibi_slopes": slopes}
        rows = list(range(p.num_query_heads)) if p.alibi_heads is None else list(p.alibi_heads)
        if kept is not None and len(kept) == u:
            return {"alibi_heads": [rows[i] for i in kept]}
        available = call.input_shapes[self._alibi_input(call)][1]
        if available is not None and u > available:
            raise ValueError(f"its alibi argument has {available} heads; it cannot be rebuilt with {u}")
        return {"alibi_heads": list(range(u))}

    def slice_weights(self, call, keep_in, keep_out, weights):
        """The kept slices in the order of :func:`_variables` (``rebuild`` puts them in the new layer's order):
        the projections in (width, heads, head entries) and (heads, head entries, width) layouts; the query and
        key norms' weights and a rotary layer's own (SmolLM3's inverse frequencies) unchanged."""
        p = self.parts(call)
        heads = self.internal_mask(call, keep_out, "heads")
        rows, cols = keep_in[self._hidden(call)], keep_out[0]
        query_heads = np.repeat(heads, p.groups)
        cuts = {id(p.output.kernel): lambda w: _out_canonical(p, w)[query_heads][..., cols]}
        for dense, keep in ((p.query, query_heads), (p.key, heads), (p.value, heads)):
            cuts[id(dense.kernel)] = lambda w, dense=dense, keep=keep: _in_canonical(p, dense, w)[rows][:, keep]
            if getattr(dense, "bias", None) is not None:
                cuts[id(dense.bias)] = lambda w, keep=keep: np.reshape(w, (-1, p.head_dim))[keep]
        if getattr(p.output, "bias", None) is not None:
            cuts[id(p.output.bias)] = lambda w: w[cols]
        if p.sinks is not None:
            cuts[id(p.sinks)] = lambda w: w[query_heads]
        return _h.sliced_by_role(call.layer, weights, _variables(p), cuts)

    def rebuild(self, call, step):
        keep_out = list(step.keep_out) + step.keep_internal
        hidden = self._hidden(call)
        _h.refuse_constant(step, hidden, "this attention layer cannot fold into its projections")
        config = self.rebuild_config(call, step.keep_in, keep_out)
        weights = self.slice_weights(call, step.keep_in, keep_out, step.old_weights())
        layer = step.new_layer(config)
        inputs = step.inputs
        mask, alibi = self._mask_input(call), self._alibi_input(call)
        outputs = layer(inputs[hidden], attention_mask=None if mask is None else inputs[mask],
                        alibi=None if alibi is None else inputs[alibi])
        _h.set_weights_by_role(step, layer, _variables(_read(layer, _OWN)), weights)
        return outputs


def register_defaults():
    """Register the grouped-query attention handlers (called once by ``morphsparse.handlers``)."""
    register_handler(GroupedQueryAttention, GroupedQueryAttentionHandler())
    for name, names in HUB_GQA.items():
        register_handler(f"{_HUB}.{name}", GroupedQueryAttentionHandler(names))


__all__ = ["GroupedQueryAttention", "GroupedQueryAttentionHandler", "HUB_GQA", "Parts", "register_defaults"]
