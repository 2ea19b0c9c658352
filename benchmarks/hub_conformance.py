"""Conformance of structure learning on keras_hub backbones (small configs, random weights, no download).

Every backbone class keras_hub exports is listed. Each vision and text backbone that builds offline from a
small config gets a Dense head (vision: global average pooling or the first token; text: the last token of
the sequence output, the one a causal decoder lets attend to every position) and is put through:

* **analysed**: ``ms.analyze`` reads it (layers it has no handler for are read through their call);
* **costs = profiler**: morphsparse's FLOPs equal TensorFlow's profiler for the ops that multiply by weights
  (MatMul, BatchMatMul, Conv2D, DepthwiseConv2dNative, Einsum); grouped convolutions run as an XLA call the
  profiler does not see, so they are left out of both sides, as in the keras.applications table;
* **params**: the analytic count equals ``model.count_params()``;
* **regularised**: ``MorphRegularizer(target="flops", source="group_lasso")`` prices exactly the analytic
  FLOPs and ``fit`` runs a few steps with its MorphOptimizer;
* **exported**: about a third of the channels of every removable group (heads, FFN neurons, conv filters...)
  are marked dead and their weights zeroed; the slim model exported with ``exact=True`` must be smaller and
  give the same logits (relative 1e-5) as the original;
* **expanded**: the slim model is widened back to the original FLOPs; the result must fit the budget;
* **sparse-trained**: ``ms.sparse_optimizer`` (RigL, 80%) trains a few steps and reaches its sparsity.

Writes benchmarks/results/hub_conformance.json and docs/hub_conformance.md.

    python benchmarks/hub_conformance.py [--models BertBackbone ViTBackbone ...] [--no-profiler] [--update]

``--update`` replaces the rows of the given models in the JSON and rewrites the table.
"""

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import numpy as np  # noqa: E402

import morphsparse as ms  # noqa: E402
from morphsparse import handlers as msh  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEQUENCE_LENGTH = 8
IMAGE = (32, 32, 3)
T = dict(vocabulary_size=50, num_layers=2, hidden_dim=16, intermediate_dim=32)
# two key/value heads, so that grouped-query attention has a head group to remove (one kv head always stays)
LLM = dict(vocabulary_size=50, num_layers=2, num_query_heads=4, num_key_value_heads=2, hidden_dim=16,
           intermediate_dim=32)

#: backbone class -> small config (text backbones take token ids of SEQUENCE_LENGTH; vision ones IMAGE)
CONFIGS = {
    # --- text ---
    "AlbertBackbone": dict(T, num_heads=2, embedding_dim=8, max_sequence_length=SEQUENCE_LENGTH),
    "BartBackbone": dict(T, num_heads=2, max_sequence_length=SEQUENCE_LENGTH),
    "BertBackbone": dict(T, num_heads=2, max_sequence_length=SEQUENCE_LENGTH),
    "BloomBackbone": dict(T, num_heads=2),
    "DebertaV3Backbone": dict(T, num_heads=2, max_sequence_length=SEQUENCE_LENGTH, bucket_size=2),
    "DistilBertBackbone": dict(T, num_heads=2, max_sequence_length=SEQUENCE_LENGTH),
    "ESM2Backbone": dict(T, num_heads=2, max_sequence_length=SEQUENCE_LENGTH),
    "ESMBackbone": dict(T, num_heads=2, max_sequence_length=SEQUENCE_LENGTH),
    "EdRecBackbone": dict(vocab_size=50, num_layers_enc=1, num_layers_dec=1, hidden_dim=16, intermediate_dim=32,
                          num_heads=2),
    "ElectraBackbone": dict(vocab_size=50, num_layers=2, num_heads=2, hidden_dim=16, embedding_dim=8,
                            intermediate_dim=32, max_sequence_length=SEQUENCE_LENGTH),
    "FNetBackbone": dict(T, max_sequence_length=SEQUENCE_LENGTH),
    "FalconBackbone": dict(T, num_attention_heads=2),
    "GPT2Backbone": dict(T, num_heads=2, max_sequence_length=SEQUENCE_LENGTH),
    "GPTNeoXBackbone": dict(T, num_heads=2, max_sequence_length=SEQUENCE_LENGTH),
    "GemmaBackbone": dict(LLM, head_dim=8),
    "Gemma3Backbone": dict(LLM, image_size=16, head_dim=8),
    "Gemma4Backbone": dict(LLM, image_size=16, head_dim=8, sliding_window_size=4),
    "GptOssBackbone": dict(LLM, num_experts=2, top_k=1, head_dim=8),
    "Llama3Backbone": dict(LLM),
    "LlamaBackbone": dict(LLM),
    "MistralBackbone": dict(LLM, sliding_window=4),
    "MixtralBackbone": dict(LLM, num_experts=2, top_k=1, sliding_window=4),
    "OPTBackbone": dict(T, num_heads=2, max_sequence_length=SEQUENCE_LENGTH),
    "Phi3Backbone": dict(LLM, max_sequence_length=SEQUENCE_LENGTH, pretraining_sequence_length=SEQUENCE_LENGTH),
    "Qwen2Backbone": dict(LLM),
    "Qwen3Backbone": dict(LLM, head_dim=8),
    "Qwen3MoeBackbone": dict(LLM, moe_intermediate_dim=16, num_experts=2, top_k=1),
    "QwenBackbone": dict(LLM),
    "QwenMoeBackbone": dict(LLM, moe_intermediate_dim=16, shared_expert_intermediate_dim=16, num_experts=2,
                            top_k=1),
    "RWKV7Backbone": dict(hidden_size=16, head_size=8, num_layers=2, vocabulary_size=50, intermediate_dim=32,
                          gate_lora=4, mv_lora=4, aaa_lora=4, decay_lora=4),
    "RobertaBackbone": dict(T, num_heads=2, max_sequence_length=SEQUENCE_LENGTH),
    "RoformerV2Backbone": dict(T, num_heads=2, head_size=8),
    "SmolLMBackbone": dict(vocabulary_size=50, hidden_dim=16, intermediate_dim=32, num_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, attention_bias=False,
                           attention_dropout=0.0, rope_layer_enabled_list=[True, True],
                           layer_types=["attention", "attention"], mlp_bias=False, layer_norm_epsilon=1e-6,
                           max_position_embeddings=SEQUENCE_LENGTH, rope_theta=10000.0, partial_rotary_factor=1.0),
    "T5Backbone": dict(T, num_heads=2),
    "XLMRobertaBackbone": dict(T, num_heads=2, max_sequence_length=SEQUENCE_LENGTH),
    "XLNetBackbone": dict(T, num_heads=2),
    # --- vision ---
    "CSPNetBackbone": dict(stem_filters=16, stem_kernel_size=3, stem_strides=1, stackwise_depth=[1, 1],
                           stackwise_strides=2, stackwise_num_filters=[16, 24], down_growth=True,
                           bottle_ratio=(0.5, 1.0), block_ratio=(1.0, 0.5), expand_ratio=(2.0, 1.0),
                           block_type="dark_block", stage_type="csp", stem_padding="same", image_shape=IMAGE),
    "DINOV2Backbone": dict(patch_size=4, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32,
                           image_shape=(16, 16, 3), position_embedding_shape=(16, 16, 3)),
    "DINOV3Backbone": dict(patch_size=4, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32,
                           image_shape=(16, 16, 3), num_register_tokens=1),
    "DeiTBackbone": dict(image_shape=(16, 16, 3), patch_size=4, num_layers=2, num_heads=2, hidden_dim=16,
                         intermediate_dim=32),
    "DenseNetBackbone": dict(stackwise_num_repeats=[2, 2], growth_rate=8, image_shape=IMAGE),
    "EfficientNetBackbone": dict(stackwise_kernel_sizes=[3, 3], stackwise_num_repeats=[1, 1],
                                 stackwise_input_filters=[8, 8], stackwise_output_filters=[8, 16],
                                 stackwise_expansion_ratios=[1, 4], stackwise_squeeze_and_excite_ratios=[0.25, 0.25],
                                 stackwise_strides=[1, 2], stackwise_block_types=["v1", "v1"],
                                 width_coefficient=1.0, depth_coefficient=1.0, input_shape=IMAGE),
    "MiTBackbone": dict(layerwise_depths=[1, 1], num_layers=2, layerwise_num_heads=[1, 2],
                        layerwise_sr_ratios=[2, 1], max_drop_path_rate=0.0, layerwise_patch_sizes=[7, 3],
                        layerwise_strides=[4, 2], image_shape=IMAGE, hidden_dims=[8, 16]),
    "MobileNetBackbone": dict(stackwise_expansion=[[16, 24], [32]], stackwise_num_blocks=[2, 1],
                              stackwise_num_filters=[[8, 8], [16]], stackwise_kernel_size=[[3, 3], [5]],
                              stackwise_num_strides=[[2, 1], [2]], stackwise_se_ratio=[[None, None], [0.25]],
                              stackwise_activation=[["relu", "relu"], ["hard_swish"]],
                              stackwise_padding=[[1, 1], [2]], output_num_filters=32, depthwise_filters=8,
                              depthwise_stride=2, depthwise_residual=False, last_layer_filter=32,
                              squeeze_and_excite=0.5, image_shape=IMAGE, input_num_filters=8),
    "ResNetBackbone": dict(input_conv_filters=[8], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16],
                           stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="bottleneck_block",
                           image_shape=IMAGE),
    "ResNetBackbone (v2, basic blocks)": dict(input_conv_filters=[64], input_conv_kernel_sizes=[3],
                                               stackwise_num_filters=[64, 16], stackwise_num_blocks=[1, 1],
                                               stackwise_num_strides=[1, 2], block_type="basic_block",
                                               use_pre_activation=True, image_shape=IMAGE),
    "SwinTransformerBackbone": dict(image_shape=IMAGE, embed_dim=8, depths=[1, 1], num_heads=[1, 2],
                                    window_size=2, patch_size=4, drop_path=0.0),
    "VGGBackbone": dict(stackwise_num_repeats=[1, 1], stackwise_num_filters=[8, 16], image_shape=IMAGE),
    "ViTBackbone": dict(image_shape=(16, 16, 3), patch_size=(4, 4), num_layers=2, num_heads=2, hidden_dim=16,
                        mlp_dim=32),
    "ViTDetBackbone": dict(hidden_size=16, num_layers=2, intermediate_dim=32, num_heads=2,
                           global_attention_layer_indices=[1], image_shape=IMAGE, patch_size=8,
                           num_output_channels=8, window_size=2),
    "XceptionBackbone": dict(stackwise_conv_filters=[[8, 16], [16, 16]], stackwise_pooling=[True, False],
                             image_shape=IMAGE),
}

VISION = {"CSPNetBackbone", "DINOV2Backbone", "DINOV3Backbone", "DeiTBackbone", "DenseNetBackbone",
          "EfficientNetBackbone", "HGNetV2Backbone", "MiTBackbone", "MobileNetBackbone", "MobileNetV5Backbone",
          "ResNetBackbone", "SwinTransformerBackbone", "VGGBackbone", "ViTBackbone", "ViTDetBackbone",
          "XceptionBackbone"}

#: backbone classes not put through the table, and why
NOT_TRIED = {
    "BASNetBackbone": "segmentation model composed around an image encoder backbone (task model)",
    "BLIP2Backbone": "multimodal (vision encoder + Q-Former + language model)",
    "CLIPBackbone": "multimodal (vision and text encoders)",
    "DFineBackbone": "object detector composed around an HGNetV2 backbone (task model)",
    "DeepLabV3Backbone": "segmentation model composed around an image encoder backbone (task model)",
    "DepthAnythingBackbone": "depth model composed around an image encoder backbone (task model)",
    "FluxBackbone": "image generation (diffusion transformer with text and image streams)",
    "Gemma3nBackbone": "multimodal (audio, vision and text)",
    "HGNetV2Backbone": "needs a stage configuration of a dozen interdependent lists; not tried yet",
    "MetaCLIP2Backbone": "multimodal (vision and text encoders)",
    "MobileNetV5Backbone": "needs a block configuration of 17 interdependent lists; not tried yet",
    "MoonshineBackbone": "audio (speech recognition)",
    "PARSeqBackbone": "OCR model composed around an image encoder (task model)",
    "PaliGemmaBackbone": "multimodal (vision and text)",
    "Qwen3_5Backbone": "hybrid linear-attention text model; not tried yet",
    "Qwen3_5MoeBackbone": "hybrid linear-attention mixture-of-experts text model; not tried yet",
    "RetinaNetBackbone": "object detector composed around an image encoder backbone (task model)",
    "SAM3PromptableConceptBackbone": "promptable segmentation (multimodal)",
    "SAMBackbone": "promptable segmentation (image encoder + prompt encoder + mask decoder)",
    "SegFormerBackbone": "segmentation model composed around a MiT image encoder (task model)",
    "SigLIPBackbone": "multimodal (vision and text encoders)",
    "SmolLM3Backbone": "same layers as SmolLMBackbone (listed there); not tried separately",
    "StableDiffusion3Backbone": "image generation (MMDiT + VAE + text encoders)",
    "T5Gemma2Backbone": "encoder-decoder with a configuration of per-layer attention types; not tried yet",
    "T5GemmaBackbone": "encoder-decoder with a configuration of per-layer attention types; not tried yet",
    "VideoPrismBackbone": "video (and video-text) model",
    "WhisperBackbone": "audio (speech recognition)",
}

#: backbones tried that morphsparse cannot read yet, and why (shown before the error in the table's notes)
KNOWN_LIMITS = {
    "DebertaV3Backbone": "disentangled (relative-position) self-attention is not read through; needs a handler",
    "Gemma4Backbone": "its decoder block multiplies by its feed-forward sublayers' kernels with ops.matmul (the "
                      "sublayers are never called) and scales its output by a layer scalar of its own; needs a "
                      "decoder-block handler",
    "RWKV7Backbone": "the RWKV time-mix layer (a recurrence) uses weights it created itself; needs a handler",
    "SwinTransformerBackbone": "window attention uses a relative-position bias table it created itself; needs a "
                               "handler; its window partition also folds windows into the batch axis, which the "
                               "cost model (per example) does not count (see ViTDet)",
    "ViTDetBackbone": "windowed attention with decomposed relative position embeddings (weights used directly); "
                      "with a handler for those it is read, but the window partition folds windows into the "
                      "batch axis, so the windowed blocks are priced for one window (short of the profiler)",
    "XLNetBackbone": "two-stream relative attention computed time-major (length, batch, ...): its mask layer's "
                     "trace does not have the output shape Keras recorded, and its mask layer and attention use "
                     "weights directly; needs a handler",
}

STEPS = ("analysed", "params", "profiler", "regularised", "exported", "expanded", "sparse")


def backbone_names():
    import keras_hub
    return sorted(n for n in dir(keras_hub.models) if n.endswith("Backbone")
                  and n not in ("Backbone", "FeaturePyramidBackbone"))


#: larger configs, for benchmarks/analyze_speed.py (not in the table)
SPEED_CONFIGS = {
    "BertBackbone (base: 12 layers, 768 wide)": dict(vocabulary_size=30522, num_layers=12, num_heads=12,
                                                     hidden_dim=768, intermediate_dim=3072, max_sequence_length=512),
}


def build(name, sequence_length=SEQUENCE_LENGTH):
    """(backbone, model with a Dense head, kind) for a row of CONFIGS (or SPEED_CONFIGS)."""
    import keras_hub
    cls = getattr(keras_hub.models, name.split(" ")[0])
    backbone = cls(**{**CONFIGS, **SPEED_CONFIGS}[name])
    kind = "vision" if name.split(" ")[0] in VISION else "text"
    def fresh(t):   # an input of the same shape, a fixed sequence length for text
        shape = tuple(t.shape[1:])
        if kind == "text" and shape and shape[0] is None:
            shape = (sequence_length,) + shape[1:]
        return keras.Input(shape, dtype=t.dtype, name=t._keras_history.operation.name)

    inputs = keras.tree.map_structure(fresh, backbone.input)
    out = backbone(inputs)
    if isinstance(out, dict):
        names = ("pooled_output", "sequence_output", "decoder_sequence_output", "encoder_sequence_output")
        out = out[next((k for k in names if k in out), sorted(out)[-1])]
    elif isinstance(out, (list, tuple)):
        out = out[-1]
    if len(out.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(out)
    elif len(out.shape) == 3:
        # text: the last token; under a causal mask (decoder-only LMs) it is the one that attends to every
        # position, so the logits depend on every head's scores (the first token attends to itself only).
        # vision: the first token (the class token)
        x = out[:, -1, :] if kind == "text" else out[:, 0, :]
    else:
        x = out
    logits = keras.layers.Dense(3, name="head")(x)
    return backbone, keras.Model(inputs, logits, name=name.split(" ")[0].replace("Backbone", "").lower()), kind


def example_data(model, n=4, seed=0):
    rng = np.random.default_rng(seed)
    arrays = []
    for t in model.inputs:
        shape = (n,) + tuple(t.shape[1:])
        if "int" in str(t.dtype) or "bool" in str(t.dtype):
            if "mask" in t.name:
                arrays.append(np.ones(shape, str(t.dtype)))
            else:
                arrays.append(rng.integers(0, 2, size=shape).astype(str(t.dtype)))
        else:
            arrays.append(rng.normal(size=shape).astype(str(t.dtype)))
    return keras.tree.pack_sequence_as(model.input, arrays), rng.integers(0, 3, size=(n,))


def _grouped_conv_flops(graph):
    weights = graph.channel_weights()
    return sum(2 * call.handler.macs(call, *graph.alive_counts(call, weights)) for call in graph.calls
               if (getattr(call.layer, "groups", 1) or 1) > 1)


def dead_masks(graph, seed=0, fraction=0.35):
    """About ``fraction`` of every removable group dead (at least one channel alive)."""
    rng = np.random.default_rng(seed)
    masks = {}
    for group in graph.removable_groups:
        mask = rng.random(group.size) > fraction
        mask[rng.integers(group.size)] = True
        masks[group.id] = mask
    return masks


def zero_dead_weights(graph, masks):
    """Make the dead channels exactly zero, as a trained group-lasso model has them (as benchmarks/equivalence.py
    does for keras.applications): the weights feeding them, their biases, and the beta and moving mean of a
    BatchNorm that follows. Export treats a dead channel as one whose source weights are zero, so the original
    then computes what the slim model computes."""
    from morphsparse.handlers.attention import MultiHeadAttention
    from morphsparse.morph import alive as alive_mod
    for src in ms.find_sources(graph, "group_lasso"):
        mask = masks.get(src.group)
        if mask is None:
            continue
        dead = ~mask[src.channels]
        if not dead.any():
            continue
        layer, handler = src.producer.layer, src.producer.handler
        weights = handler.axis_weights(src.producer, src.axis) if src.axis else None
        if weights is not None:     # an internal axis whose handler names its weights (GQA heads, experts)
            for variable, axis, entries in weights:
                _zero(variable, entries(dead), axis=axis)
            continue
        if isinstance(handler, MultiHeadAttention) and src.axis:
            for dense in (layer.query_dense, layer.key_dense, layer.value_dense):
                _zero(dense.kernel, dead, axis=1)
            _zero(layer.output_dense.kernel, dead, axis=0)
            continue
        variable = _source_kernel(layer, handler)
        if variable is None:
            continue
        bias = getattr(getattr(layer, "output_dense", layer), "bias", None)
        if bias is not None and tuple(bias.shape)[-1:] == (len(dead),):
            _zero(bias, dead, axis=-1)
        if src.axis == 0:
            follower = alive_mod.following_batch_norm(graph, src.producer, with_scale=False)
            if follower is not None:
                for bn_weight in (follower.layer.beta if follower.layer.center else None,
                                  follower.layer.moving_mean):
                    if bn_weight is not None:
                        _zero(bn_weight, dead, axis=-1)
        axis = -2 if isinstance(handler, msh.ConvTranspose) else -1
        if isinstance(handler, msh.DepthwiseConv) and not isinstance(handler, msh.Conv):
            value = keras.ops.convert_to_numpy(variable)
            flat = value.reshape(value.shape[:-2] + (-1,))
            flat[..., dead] = 0
            variable.assign(flat.reshape(value.shape))
            continue
        if hasattr(handler, "_kernel_axes") and handler._letters(src.producer) is not None:
            axis = handler._kernel_axes(src.producer)[1]
        _zero(variable, dead, axis=axis)


def _source_kernel(layer, handler):
    for attr in ("output_dense", "patch_embedding"):
        inner = getattr(layer, attr, None)
        if inner is not None and hasattr(inner, "kernel"):
            return inner.kernel
    for attr in ("pointwise_kernel", "kernel", "embeddings", "position_embeddings"):
        if getattr(layer, attr, None) is not None:
            return getattr(layer, attr)
    return None


def _zero(variable, dead, axis):
    value = keras.ops.convert_to_numpy(variable).copy()
    index = [slice(None)] * value.ndim
    index[axis] = dead
    value[tuple(index)] = 0
    variable.assign(value)


def _short(err):
    text = f"{type(err).__name__}: {err}".replace("\n", " ").replace("|", "/")
    return text[:300]


def check_backbone(name, use_profiler=True, fit_steps=2):
    row = {"model": name, "kind": None}
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    try:
        start = time.perf_counter()
        backbone, model, kind = build(name)
        row.update(kind=kind, build_seconds=round(time.perf_counter() - start, 2),
                   keras_params=model.count_params())
    except Exception as err:
        row["build_error"] = _short(err)
        return row
    try:
        start = time.perf_counter()
        graph = ms.analyze(model)
        row["analysis_seconds"] = round(time.perf_counter() - start, 3)
        report = ms.cost_report(graph)
        row.update(analysed=True, layer_calls=len(graph.calls), groups=len(graph.groups),
                   removable_groups=len(graph.removable_groups), traced=len(graph.traces), flops=report.flops,
                   params=report.params, heads_groups=sum(1 for c in graph.calls for n in c.internal_names))
        row["params_match"] = report.params == model.count_params()
    except Exception as err:
        row.update(analysed=False, error=_short(err))
        return row
    if use_profiler:
        try:
            from morphsparse.profiler import profiler_mac_flops
            hidden = _grouped_conv_flops(graph)
            row["profiler_flops"] = profiler_mac_flops(model)
            row["grouped_conv_flops"] = hidden
            row["profiler_match"] = row["profiler_flops"] == report.flops - hidden
        except Exception as err:
            row["profiler_match"] = False
            row["profiler_error"] = _short(err)
    x, y = example_data(model)
    try:
        reg = ms.MorphRegularizer(model, target="flops", source="group_lasso")
        exact = reg.initial_cost == report.flops
        model.compile(ms.MorphOptimizer(keras.optimizers.Adam(1e-3), reg),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(x, y, batch_size=2, epochs=1, steps_per_epoch=fit_steps, verbose=0)
        row["regularised"] = bool(exact and np.isfinite(history.history["loss"][-1]))
        if not exact:
            row["regularised_error"] = f"regulariser prices {reg.initial_cost:,.0f} FLOPs, analysis {report.flops:,d}"
    except Exception as err:
        row["regularised"] = False
        row["regularised_error"] = _short(err)
    keras.utils.set_random_seed(1)
    try:
        masks = dead_masks(graph)
        zero_dead_weights(graph, masks)
        slim, export_report = ms.export_with_report(model, source="group_lasso", alive=masks, exact=True)
        from morphsparse.morph.export import check_equivalent
        difference, noise = check_equivalent(model, slim)
        row.update(flops_slim=export_report.flops_after, params_slim=export_report.params_after,
                   export_difference=difference, export_kept=len(export_report.kept))
        row["exported"] = bool(difference <= max(1e-5, 10 * noise) and export_report.flops_after < report.flops)
        if not row["exported"]:
            row["exported_error"] = (f"relative difference {difference:.2e}" if difference > max(1e-5, 10 * noise)
                                     else "nothing removed")
    except Exception as err:
        row["exported"] = False
        row["exported_error"] = _short(err)
        slim = None
    if slim is not None:
        try:
            wide, expand_report = ms.expand_with_report(slim, budget=1.0, reference=model)
            row.update(flops_expanded=expand_report.cost_after, expand_multiplier=round(expand_report.multiplier, 4))
            row["expanded"] = bool(expand_report.cost_after <= report.flops < expand_report.cost_next_step)
            if not row["expanded"]:
                row["expanded_error"] = "not within one rounding step of the budget"
        except Exception as err:
            row["expanded"] = False
            row["expanded_error"] = _short(err)
    try:
        _, plain, _ = build(name)
        optimizer = ms.sparse_optimizer(plain, keras.optimizers.Adam(1e-3), sparsity=0.8, method="rigl",
                                        schedule=ms.UpdateSchedule(update_every=1), total_steps=fit_steps)
        plain.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        plain.fit(x, y, batch_size=2, epochs=1, steps_per_epoch=fit_steps, verbose=0)
        sparsity = ms.sparsity_report(plain).sparsity
        row["sparsity"] = round(float(sparsity), 4)
        row["sparse"] = bool(abs(sparsity - 0.8) < 0.02)
    except Exception as err:
        row["sparse"] = False
        row["sparse_error"] = _short(err)
    return row


def _mark(row, step):
    key = {"params": "params_match", "profiler": "profiler_match"}.get(step, step)
    value = row.get(key)
    return {True: "yes", False: "**no**", None: "-"}[value]


def write_markdown(rows, path):
    lines = ["# Conformance: keras_hub backbones", "",
             "Generated by `python benchmarks/hub_conformance.py` (do not edit by hand) with keras-hub "
             f"{_hub_version()}. Every backbone class keras_hub exports is listed. Each vision and text backbone is "
             "built from a small config (random weights, no download), given a Dense head, and checked: "
             "*analysed* by `ms.analyze` (composite layers read through their call); *params* equal to "
             "`count_params()`; *profiler*: FLOPs equal to TensorFlow's profiler for MatMul, BatchMatMul, Conv2D, "
             "DepthwiseConv2dNative and Einsum (attention included; grouped convolutions, which run as an XLA "
             "call the profiler cannot see, are left out of both sides); *regularised*: `MorphRegularizer` "
             "(FLOPs, group lasso) prices the analytic FLOPs exactly and trains a few steps; *exported*: a third of "
             "the channels of every removable group (heads, FFN neurons, filters, the residual stream) marked dead "
             "with their weights zeroed, the slim model exported with `exact=True` is smaller and gives the same "
             "logits to 1e-5; "
             "*expanded*: the slim model widened back to the original FLOPs fits the budget to one rounding step; "
             "*sparse*: RigL at 80% trains a few steps. Text backbones read sequences of "
             f"{SEQUENCE_LENGTH} tokens and their head reads the last token (the one a causal decoder lets "
             "attend to every position). *internal groups*: channel axes inside layers that no tensor carries "
             "(attention heads, a grouped-query layer's key/value heads with their query heads, a "
             "mixture-of-experts block's expert width). A backbone that cannot be read says why in its notes.",
             "",
             "| backbone | kind | calls | groups | removable | internal groups | traced layers | MFLOPs | params "
             "| analysed | params = Keras | profiler | regularised | exported | expanded | sparse | analysis (s) "
             "| notes |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|---|---|---|---:|---|"]
    for r in rows:
        if "not_tried" in r:
            lines.append(f"| {r['model']} | - | | | | | | | | not tried | | | | | | | | {r['not_tried']} |")
            continue
        if "build_error" in r:
            lines.append(f"| {r['model']} | {r.get('kind') or '-'} | | | | | | | | not built | | | | | | | | "
                         f"{r['build_error'][:160]} |")
            continue
        if not r.get("analysed"):
            reason = KNOWN_LIMITS.get(r["model"])
            lines.append(f"| {r['model']} | {r['kind']} | | | | | | | | **no** | | | | | | | | "
                         + (f"{reason}. " if reason else "") + f"{r.get('error', '')[:200]} |")
            continue
        notes = "; ".join(f"{step}: {r[step + '_error'][:160]}" for step in
                          ("profiler", "regularised", "exported", "expanded", "sparse") if r.get(step + "_error"))
        if r.get("grouped_conv_flops"):
            notes = (f"profiler excl. {r['grouped_conv_flops'] / 1e6:.3f} MFLOPs of grouped convs"
                     + ("; " + notes if notes else ""))
        lines.append(
            f"| {r['model']} | {r['kind']} | {r['layer_calls']} | {r['groups']} | {r['removable_groups']} | "
            f"{r['heads_groups']} | {r['traced']} | {r['flops'] / 1e6:.3f} | {r['params']:,} | yes | "
            + " | ".join(_mark(r, s) for s in STEPS[1:]) + f" | {r['analysis_seconds']:.3f} | {notes} |")
    tried = [r for r in rows if "not_tried" not in r]
    built = [r for r in tried if "build_error" not in r]
    full = [r for r in built if all(r.get({"params": "params_match", "profiler": "profiler_match"}.get(s, s))
                                    for s in STEPS)]
    structural = [r for r in built if all(r.get({"params": "params_match", "profiler": "profiler_match"}.get(s, s))
                                          for s in STEPS[:-1])]
    classes = {r["model"].split(" ")[0] for r in rows}
    lines += ["", f"{len(classes)} backbone classes listed ({len(rows)} rows); {len(tried)} rows tried, {len(built)} "
              f"built from a small config, {sum(bool(r.get('analysed')) for r in built)} analysed, "
              f"{len(structural)} pass every structural column (all but *sparse*), {len(full)} pass every column."]
    for step in STEPS:
        key = {"params": "params_match", "profiler": "profiler_match"}.get(step, step)
        lines[-1] += f" {step}: {sum(bool(r.get(key)) for r in built)}/{len(built)};"
    path.write_text("\n".join(lines) + "\n")


def _hub_version():
    import keras_hub
    return keras_hub.__version__


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--no-profiler", action="store_true")
    parser.add_argument("--update", action="store_true", help="replace these models' rows in the JSON and table")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the table from the JSON")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "hub_conformance.json"))
    parser.add_argument("--markdown", default=str(ROOT / "docs" / "hub_conformance.md"))
    args = parser.parse_args(argv)
    if args.markdown_only:
        write_markdown(json.loads(Path(args.out).read_text()), Path(args.markdown))
        return 0
    names = args.models
    every = names is None
    if every:
        names = sorted(set(backbone_names()) | set(CONFIGS))
    rows = []
    for name in names:
        if name not in CONFIGS:
            row = {"model": name, "not_tried": NOT_TRIED.get(name, "no small config written yet")}
        else:
            try:
                row = check_backbone(name, use_profiler=not args.no_profiler)
            except Exception as err:  # a table of failures is more useful than the first traceback
                traceback.print_exc()
                row = {"model": name, "build_error": _short(err)}
        rows.append(row)
        print(json.dumps(row, default=str), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if args.update and not every and Path(args.out).exists():
        new = {r["model"]: r for r in rows}
        rows = [new.pop(r["model"], r) for r in json.loads(Path(args.out).read_text())] + list(new.values())
        every = True
    if every:
        Path(args.out).write_text(json.dumps(rows, indent=1, default=str) + "\n")
        write_markdown(rows, Path(args.markdown))
    failed = [r["model"] for r in rows if "not_tried" not in r and not all(
        r.get({"params": "params_match", "profiler": "profiler_match"}.get(s, s)) for s in STEPS)]
    print(f"{len(rows) - len(failed)}/{len(rows)} pass or not tried" + (f"; not passing: {failed}" if failed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
