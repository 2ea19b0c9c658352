"""keras_hub backbones: a representative subset of the hub conformance table (benchmarks/hub_conformance.py runs
every backbone class). Needs the ``hub`` extra (keras-hub)."""
import sys
from pathlib import Path

import pytest

pytest.importorskip("keras_hub")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import morphsparse as ms  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from hub_conformance import STEPS, build, check_backbone  # noqa: E402

REPRESENTATIVE = ["ResNetBackbone", "MobileNetBackbone", "ViTBackbone", "BertBackbone", "GPT2Backbone"]


def test_bert_groups_heads_ffn_and_residual_stream():
    _, model, _ = build("BertBackbone")
    graph = ms.analyze(model)
    stream = graph.group_of("bert_backbone/token_embedding")
    # token, segment and position embeddings, every attention output and FFN output write the residual stream
    assert {"bert_backbone/segment_embedding", "bert_backbone/transformer_layer_1/feedforward_output_dense",
            "bert_backbone/transformer_layer_0/self_attention_layer"} <= set(stream.producers)
    assert stream.size == 16
    heads = graph.internal_group("bert_backbone/transformer_layer_0/self_attention_layer", "heads")
    assert heads.size == 2 and heads.removable
    ffn = graph.group_of("bert_backbone/transformer_layer_0/feedforward_intermediate_dense")
    assert ffn.size == 32 and ffn.removable
    assert ms.count_params(graph) == model.count_params()


def test_text_backbone_is_read_at_the_models_sequence_length():
    _, model, _ = build("GPT2Backbone")
    graph = ms.analyze(model)
    call = graph.calls_of("gpt2_backbone/transformer_layer_0/self_attention")[0]
    assert call.output_shapes[0][1:] == (8, 16)     # the backbone alone takes sequences of any length
    # attention scores and weighted sum: T*T*heads*(key_dim + value_dim)
    report = ms.cost_report(graph).by_layer()
    t, d, h, k = 8, 16, 2, 8
    assert report[call.path].macs == 3 * t * d * h * k + t * t * h * 2 * k + t * h * k * d


#: rows whose attention is read through its call (heads not removable; rotary layers pinned): GPT-NeoX (partial
#: rotary on a fused query/key/value projection, a None cache passed through its decoder), RoformerV2 and ESM
#: (rotary layers of their own, ESM's called on queries and keys; heads merged by a reshape to (batch, length,
#: -1)), MiT (SegFormer's spatial-reduction attention and Mix-FFN reshape with the batch read from a tensor),
#: DINOv3 (its 2-D rotary layer a table read off the image's shape); and T5, whose attention is kept whole (its
#: relative position bias is a table it looks up itself), its channels pinned
READ_THROUGH_ROWS = ["GPTNeoXBackbone", "RoformerV2Backbone", "ESMBackbone", "ESM2Backbone", "MiTBackbone",
                     "DINOV3Backbone", "T5Backbone"]


def conforming_row(name):
    """The conformance row of backbone ``name``, once every column of the table has passed."""
    row = check_backbone(name, use_profiler=True)
    failed = [s for s in STEPS if not row.get({"params": "params_match", "profiler": "profiler_match"}.get(s, s))]
    assert not failed, row
    return row


@pytest.mark.slow
@pytest.mark.parametrize("name", REPRESENTATIVE + READ_THROUGH_ROWS)
def test_backbone_conforms(name):
    row = conforming_row(name)
    assert row["removable_groups"] > 0 and row["flops_slim"] < row["flops"]


#: rows the grouped-query attention, mixture-of-experts and DINOv2 handlers brought into the table
NEW_ROWS = ["LlamaBackbone", "GemmaBackbone", "FalconBackbone", "MixtralBackbone", "GptOssBackbone",
            "DINOV2Backbone", "SmolLMBackbone"]


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW_ROWS)
def test_llm_moe_and_dinov2_backbones_conform(name):
    row = conforming_row(name)
    assert row["heads_groups"] > 0 and row["flops_slim"] < row["flops"]




@pytest.mark.slow
def test_bert_heads_and_ffn_export_to_standard_layers_and_reload(tmp_path):
    _, model, _ = build("BertBackbone")
    graph = ms.analyze(model)
    layer = "bert_backbone/transformer_layer_0"
    heads = graph.internal_group(f"{layer}/self_attention_layer", "heads")
    ffn = graph.group_of(f"{layer}/feedforward_intermediate_dense")
    attention = model.get_layer("bert_backbone").get_layer("transformer_layer_0")._self_attention_layer
    for dense in (attention.query_dense, attention.key_dense, attention.value_dense):
        value = keras.ops.convert_to_numpy(dense.kernel)
        value[:, 1] = 0.0
        dense.kernel.assign(value)
    value = keras.ops.convert_to_numpy(attention.output_dense.kernel)
    value[1] = 0.0
    attention.output_dense.kernel.assign(value)
    mask = np.ones(32, bool)
    mask[::3] = False
    dense = model.get_layer("bert_backbone").get_layer("transformer_layer_0")._feedforward_intermediate_dense
    value = keras.ops.convert_to_numpy(dense.kernel)
    value[:, ~mask] = 0.0
    dense.kernel.assign(value)
    value = keras.ops.convert_to_numpy(dense.bias)
    value[~mask] = 0.0
    dense.bias.assign(value)
    slim = ms.export(model, source="group_lasso", alive={heads.id: np.array([True, False]), ffn.id: mask})
    mha = slim.get_layer("bert_backbone__transformer_layer_0__self_attention_layer")
    assert isinstance(mha, keras.layers.MultiHeadAttention) and mha.num_heads == 1 and mha.key_dim == 8
    assert slim.get_layer("bert_backbone__transformer_layer_0__feedforward_intermediate_dense").units == int(mask.sum())
    from morphsparse.morph.export import check_equivalent, random_inputs
    difference, noise = check_equivalent(model, slim)
    assert difference <= max(1e-5, 10 * noise)
    path = tmp_path / "slim.keras"
    slim.save(path)
    loaded = keras.models.load_model(path)
    arrays = random_inputs(slim)
    inputs = keras.tree.pack_sequence_as(slim.input, arrays)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(inputs)), keras.ops.convert_to_numpy(slim(inputs)),
                               rtol=1e-5, atol=1e-6)


def _fixed_length_classifier(backbone, length=8):
    import keras_hub
    classifier = keras_hub.models.BertTextClassifier(backbone=backbone, num_classes=3, preprocessor=None)
    inputs = {name: keras.Input((length,), dtype="int32", name=name)
              for name in ("token_ids", "segment_ids", "padding_mask")}
    return classifier, keras.Model(inputs, classifier(inputs))


@pytest.mark.parametrize("head", ["pooled_output", "first_token"])
def test_bert_classifier_resizes_to_its_budget(head):
    backbone, _, _ = build("BertBackbone")
    inputs = {name: keras.Input((8,), dtype="int32", name=name)
              for name in ("token_ids", "segment_ids", "padding_mask")}
    out = backbone(inputs)
    # reading the first token of the sequence output leaves the backbone's pooler computed but unused
    features = out["pooled_output"] if head == "pooled_output" else out["sequence_output"][:, 0, :]
    model = keras.Model(inputs, keras.layers.Dense(3)(features))
    graph = ms.analyze(model)
    used = ms.count_flops(model) - sum(2 * c.handler.macs(c, *graph.alive_counts(c, graph.channel_weights()))
                                       for c in graph.unused_calls)
    if head == "first_token":
        assert [c.path for c in graph.unused_calls][-1].endswith("pooled_dense")
        with pytest.warns(UserWarning, match="no output depends on.*pooled_dense"):
            same = ms.resize(model, 1.0)
    else:
        assert not graph.unused_calls
        same = ms.resize(model, 1.0)
    assert ms.count_flops(same) == used
    half = ms.resize(model, 0.5)
    assert 0.4 * used <= ms.count_flops(half) <= 0.5 * used


def test_backbone_of_unknown_length_is_refused_with_the_fix():
    backbone, _, _ = build("BertBackbone")
    classifier, _ = _fixed_length_classifier(backbone)
    for model in (backbone, classifier):
        with pytest.raises(ms.GraphError, match=r"unknown.*keras.Input\(\(length,\)"):
            ms.analyze(model)


# --- grouped-query attention with rotary embeddings (the Llama family) -------------------------------------

#: the issue's example: 4 query heads sharing 2 key/value heads of 8 entries
LLAMA = dict(vocabulary_size=100, num_layers=2, num_query_heads=4, num_key_value_heads=2, hidden_dim=32,
             intermediate_dim=64)
#: one attention layer of each keras_hub grouped-query family, with the options that change its computation
GQA_FAMILIES = {
    "LlamaBackbone": dict(max_sequence_length=16),
    "MistralBackbone": {},
    "QwenBackbone": {},
    "Qwen3Backbone": dict(head_dim=8),
    "Phi3Backbone": dict(max_sequence_length=16, pretraining_sequence_length=16),
    "GemmaBackbone": dict(head_dim=8),
    "Gemma3Backbone": dict(head_dim=8, image_size=16, use_query_key_norm=True, query_head_dim_normalize=False),
    # a window of 3 past keys in 8 tokens, and attention sinks
    "GptOssBackbone": dict(num_experts=2, top_k=2, head_dim=8, sliding_window=3),
}
#: ALiBi attention (one key/value head per query head): Bloom's slopes and Falcon's alibi argument
ALIBI_FAMILIES = {
    "BloomBackbone": dict(vocabulary_size=100, num_layers=1, num_heads=4, hidden_dim=32, intermediate_dim=64),
    "FalconBackbone": dict(vocabulary_size=100, num_layers=1, num_attention_heads=4, hidden_dim=32,
                           intermediate_dim=64),
}


def _llm(name, num_layers=2, length=8):
    import keras_hub
    config = (dict(ALIBI_FAMILIES[name], num_layers=num_layers) if name in ALIBI_FAMILIES
              else dict(LLAMA, num_layers=num_layers, **GQA_FAMILIES[name]))
    backbone = getattr(keras_hub.models, name)(**config)
    inputs = {n: keras.Input((length,), dtype="int32", name=n) for n in ("token_ids", "padding_mask")}
    # the last token: under a causal mask it is the one that attends to every position
    return backbone, keras.Model(inputs, keras.layers.Dense(3, name="head")(backbone(inputs)[:, -1, :]))


def _attention_calls(graph):
    return [c for c in graph.calls if "heads" in c.internal_names]


def _zero_heads(call, dead):
    """Zero every weight of the dead key/value heads (and of their query heads), as group lasso leaves them."""
    for variable, axis, entries in call.handler.axis_weights(call, call.internal_index("heads")):
        value = keras.ops.convert_to_numpy(variable).copy()
        index = [slice(None)] * value.ndim
        index[axis] = entries(dead)
        value[tuple(index)] = 0.0
        variable.assign(value)


def test_llama_key_value_heads_with_their_query_heads_are_removable_groups():
    _, model = _llm("LlamaBackbone")
    graph = ms.analyze(model)
    calls = _attention_calls(graph)
    assert [c.path for c in calls] == [f"llama_backbone/transformer_layer_{i}/self_attention" for i in (0, 1)]
    for call in calls:
        heads = graph.internal_group(call.path, "heads")
        assert heads.size == 2 and heads.removable          # 2 key/value heads, each with its 2 query heads
    # per example: T=8 tokens, width 32, 4 query and 2 key/value heads of 8: query and output projections,
    # key and value projections, scores and weighted sum, the rotary angles of queries and keys
    t, d, u, v, h = 8, 32, 4, 2, 8
    expected = 2 * t * d * u * h + 2 * t * d * v * h + 2 * t * t * u * h + 2 * t * (h // 2)
    report = ms.cost_report(graph).by_layer()
    assert all(report[c.path].macs == expected for c in calls)
    assert ms.count_params(graph) == model.count_params()
    # the gated feed-forward: gate and up projections stay one group
    ffn = graph.group_of("llama_backbone/transformer_layer_0/feedforward_gate_dense")
    assert ffn.removable and {"llama_backbone/transformer_layer_0/feedforward_gate_dense",
                              "llama_backbone/transformer_layer_0/feedforward_intermediate_dense"} <= set(ffn.producers)


def test_llama_costs_equal_the_profiler_before_and_after_export():
    from morphsparse.profiler import profiler_mac_flops
    _, model = _llm("LlamaBackbone")
    graph = ms.analyze(model)
    assert ms.count_flops(model) == profiler_mac_flops(model)
    call = _attention_calls(graph)[0]
    _zero_heads(call, np.array([False, True]))
    slim = ms.export(model, source="group_lasso", alive={graph.internal_group(call.path, "heads").id:
                                                         np.array([True, False])})
    assert ms.count_flops(slim) == profiler_mac_flops(slim) < ms.count_flops(model)


@pytest.mark.parametrize("name", sorted(GQA_FAMILIES))
def test_grouped_query_attention_exports_to_the_same_function(name):
    """One attention layer with random weights (norm scales included) on a masked batch, every position read:
    rebuilt with every head it is the same function; with a key/value head removed (its weights zeroed in the
    original) it is the zeroed original's function, with half the heads."""
    _, whole_model = _llm(name, num_layers=1)
    layer = _attention_calls(ms.analyze(whole_model))[0].layer     # the backbone's own attention layer
    rng = np.random.default_rng(0)
    for w in layer.weights:
        w.assign((0.5 * rng.normal(size=w.shape)).astype("float32"))
    x, mask = keras.Input((8, 32)), keras.Input((8, 8), dtype="bool")
    model = keras.Model([x, mask], layer(x, attention_mask=mask))
    causal = np.tril(np.ones((8, 8), bool))[None].repeat(2, 0)
    causal[1, 3:, :2] = False                                   # padding-like holes in the second example
    data = [rng.normal(size=(2, 8, 32)).astype("float32"), causal]
    graph = ms.analyze(model)
    call = _attention_calls(graph)[0]
    heads = graph.internal_group(call.path, "heads")

    def relative_difference(slim):
        want, got = (keras.ops.convert_to_numpy(m(data)) for m in (model, slim))
        return np.abs(want - got).max() / np.abs(want).max()

    with pytest.warns(UserWarning):    # nothing removed
        whole = ms.export(model, source="group_lasso", alive={heads.id: np.array([True, True])})
    assert relative_difference(whole) <= 1e-5
    _zero_heads(call, np.array([True, False]))
    slim = ms.export(model, source="group_lasso", alive={heads.id: np.array([False, True])})
    rebuilt = [l for l in slim.layers if isinstance(l, ms.handlers.gqa.GroupedQueryAttention)]
    assert [(l.num_query_heads, l.num_key_value_heads, l.head_dim) for l in rebuilt] == [(2, 1, 8)]
    assert relative_difference(slim) <= 1e-5
    assert ms.count_params(slim) < ms.count_params(model)


@pytest.mark.parametrize("name", sorted(ALIBI_FAMILIES))
def test_alibi_attention_heads_export_to_the_same_function(name):
    """Bloom and Falcon: ALiBi (a slope per head) instead of rotary. With random attention weights, the model
    rebuilt with every head is the same function, and with a head removed (zeroed in the original) too: the
    kept heads keep their own slopes."""
    from morphsparse.morph.export import check_equivalent
    from morphsparse.profiler import profiler_mac_flops
    _, model = _llm(name, num_layers=1)
    graph = ms.analyze(model)
    assert ms.count_flops(model) == profiler_mac_flops(model)
    assert ms.count_params(graph) == model.count_params()
    call = _attention_calls(graph)[0]
    rng = np.random.default_rng(0)
    for w in call.layer.weights:
        w.assign((0.5 * rng.normal(size=w.shape)).astype("float32"))
    heads = graph.internal_group(call.path, "heads")
    assert heads.size == 4 and heads.removable
    with pytest.warns(UserWarning):    # nothing removed
        whole = ms.export(model, source="group_lasso", alive={heads.id: np.ones(4, bool)})
    difference, noise = check_equivalent(model, whole)
    assert difference <= max(1e-5, 10 * noise)
    _zero_heads(call, np.array([True, False, False, True]))
    slim = ms.export(model, source="group_lasso", alive={heads.id: np.array([False, True, True, False])})
    difference, noise = check_equivalent(model, slim)
    assert difference <= max(1e-5, 10 * noise)
    assert ms.count_flops(slim) == profiler_mac_flops(slim) < ms.count_flops(model)


@pytest.mark.parametrize("name", ["LlamaBackbone", "GemmaBackbone", "FalconBackbone"])
def test_llm_backbone_exports_reloads_and_expands_to_its_budget(name, tmp_path):
    from morphsparse.morph.export import check_equivalent, random_inputs
    _, model = _llm(name)
    graph = ms.analyze(model)
    call = _attention_calls(graph)[1]
    heads = graph.internal_group(call.path, "heads")
    dead = np.arange(heads.size) == 0
    _zero_heads(call, dead)
    reg = ms.MorphRegularizer(model, target="flops", source="group_lasso")
    assert reg.initial_cost == ms.count_flops(model)
    slim = ms.export(model, source="group_lasso", alive={heads.id: ~dead}, exact=True)
    difference, noise = check_equivalent(model, slim)
    assert difference <= max(1e-5, 10 * noise)
    path = tmp_path / "slim.keras"
    slim.save(path)
    loaded = keras.models.load_model(path)
    inputs = keras.tree.pack_sequence_as(slim.input, random_inputs(slim))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(inputs)), keras.ops.convert_to_numpy(slim(inputs)),
                               rtol=1e-5, atol=1e-6)
    wide, report = ms.expand_with_report(slim, budget=1.0, reference=model)
    assert report.cost_after <= ms.count_flops(model) < report.cost_next_step
    assert max(l.num_key_value_heads for l in wide.layers if isinstance(l, ms.handlers.gqa.GroupedQueryAttention)) >= 2


def test_llm_backbone_of_unknown_length_is_still_refused_with_the_fix():
    import keras_hub
    backbone = keras_hub.models.LlamaBackbone(**dict(LLAMA, num_layers=1))
    with pytest.raises(ms.GraphError, match=r"unknown.*keras.Input\(\(length,\)"):
        ms.analyze(backbone)


def test_attention_with_a_cache_is_refused_with_the_fix():
    import keras_hub
    from keras_hub.src.models.llama.llama_attention import LlamaAttention
    layer = LlamaAttention(num_query_heads=4, num_key_value_heads=2, name="attention")
    x = keras.Input((8, 32))
    cache = keras.Input((2, 8, 2, 8))
    index = keras.ops.convert_to_tensor(0)
    out, _ = layer(x, cache=cache, cache_update_index=index)
    with pytest.raises(ms.GraphError, match="attention.*cache.*without one"):
        ms.analyze(keras.Model([x, cache], out))
    assert keras_hub


# --- mixture-of-experts blocks ---------------------------------------------------------------------------

MOE_FAMILIES = {
    "MixtralBackbone": dict(num_experts=3, top_k=2),
    "Qwen3MoeBackbone": dict(moe_intermediate_dim=16, num_experts=3, top_k=2, head_dim=8),
    "QwenMoeBackbone": dict(moe_intermediate_dim=16, shared_expert_intermediate_dim=16, num_experts=3, top_k=2),
    "GptOssBackbone": dict(num_experts=3, top_k=2, head_dim=8),
}


@pytest.mark.parametrize("name", sorted(MOE_FAMILIES))
def test_experts_width_is_a_removable_group_and_exports_exactly(name):
    """The expert width (neuron i of every expert) is one group; with random weights (router included, so
    tokens pick different experts) and a third of the neurons' weights zeroed in every expert, the slim
    block computes the same on every token; the costs equal the profiler's."""
    import keras_hub
    from morphsparse.profiler import profiler_mac_flops
    backbone = getattr(keras_hub.models, name)(**dict(LLAMA, num_layers=1), **MOE_FAMILIES[name])
    inputs = {n: keras.Input((8,), dtype="int32", name=n) for n in ("token_ids", "padding_mask")}
    block = next(c.layer for c in ms.analyze(keras.Model(inputs, backbone(inputs))).calls
                 if "ffn" in c.internal_names)      # the backbone's own mixture-of-experts block
    rng = np.random.default_rng(0)
    for w in block.weights:
        w.assign((0.5 * rng.normal(size=w.shape)).astype("float32"))
    x = keras.Input((8, 32))
    model = keras.Model(x, block(x)[0])
    graph = ms.analyze(model)
    assert ms.count_flops(model) == profiler_mac_flops(model)
    assert ms.count_params(graph) == model.count_params()
    call = next(c for c in graph.calls if "ffn" in c.internal_names)
    alive = {}
    for axis in call.internal_names:
        group = graph.internal_group(call.path, axis)
        assert group.removable
        keep = np.arange(group.size) % 3 != 1
        for variable, weight_axis, entries in call.handler.axis_weights(call, call.internal_index(axis)):
            value = keras.ops.convert_to_numpy(variable).copy()
            index = [slice(None)] * value.ndim
            index[weight_axis] = entries(~keep)
            value[tuple(index)] = 0.0
            variable.assign(value)
        alive[group.id] = keep
    slim = ms.export(model, source="group_lasso", alive=alive)
    data = rng.normal(size=(2, 8, 32)).astype("float32")
    want, got = (keras.ops.convert_to_numpy(m(data)) for m in (model, slim))
    assert np.abs(want - got).max() <= 1e-5 * np.abs(want).max()
    assert ms.count_flops(slim) == profiler_mac_flops(slim) < ms.count_flops(model)
    wide, report = ms.expand_with_report(slim, budget=1.0, reference=model)
    assert report.cost_after <= ms.count_flops(model) < report.cost_next_step


@pytest.mark.parametrize("name", sorted(GQA_FAMILIES) + sorted(ALIBI_FAMILIES))
def test_grouped_query_attention_is_timed_along_its_key_value_heads(name):
    """A latency table times keras_hub's grouped-query attention as it times MultiHeadAttention: at a
    narrower hidden width and fewer key/value heads (each with its query heads), rebuilt as the class export
    makes of it, so that the latency target can price its heads."""
    from morphsparse import latency as L
    _, model = _llm(name, num_layers=1)
    graph = ms.analyze(model)
    spec = next(s for s in L.timed_calls(graph) if "heads" in s.call.internal_names)
    kv_heads = graph.internal_group(spec.call.path, "heads").size
    assert spec.kind == "attention" and spec.widths() == (32, kv_heads)
    one, shapes = L._one_layer_model(spec, graph, 2, 16, 1)
    layer = next(l for l in one.layers if isinstance(l, ms.handlers.gqa.GroupedQueryAttention))
    assert layer.num_key_value_heads == 1
    assert layer.num_query_heads == spec.call.handler.parts(spec.call).groups
    assert tuple(keras.ops.shape(one(L._random_inputs(one.inputs, shapes)))) == (2, 8, 16)


def test_the_latency_target_prices_llama_heads():
    """Each key/value head of Llama is charged what the table says it costs (a fixed entry charged
    nothing), and a latency-targeted prune may remove heads."""
    from latency_helpers import hand_table
    from morphsparse import latency as L
    _, model = _llm("LlamaBackbone")
    graph = ms.analyze(model)
    table = hand_table(model)
    latency = L.LatencyModel(graph, table)
    marginal = latency.marginal(np.ones(latency.n_channels))
    for call in _attention_calls(graph):
        assert marginal[graph.offsets[graph.internal_group(call.path, "heads").id]] > 0
    saving = ms.predict_latency(graph, table) - ms.predict_latency(
        graph, table, alive={graph.internal_group(c.path, "heads").id: 1 for c in _attention_calls(graph)})
    assert saving > 0


def test_alibi_slopes_of_a_new_head_count_are_keras_hubs():
    from keras_hub.layers import AlibiBias
    from morphsparse.handlers.gqa import alibi_slopes
    for heads in range(1, 13):
        np.testing.assert_allclose(alibi_slopes(heads), AlibiBias()._get_slopes(heads), rtol=1e-6)


def test_llama_prunes_to_a_budget_in_heads_and_ffn():
    """ms.prune ranks key/value heads (with their query heads) and FFN neurons together and lands under the
    budget; the slim attention layers are grouped-query attention with a valid grouping."""
    _, model = _llm("LlamaBackbone")
    slim = ms.prune(model, 0.7, importance="l1")
    assert ms.count_flops(slim) <= 0.7 * ms.count_flops(model)
    rebuilt = [l for l in slim.layers if isinstance(l, ms.handlers.gqa.GroupedQueryAttention)]
    assert len(rebuilt) == 2
    assert all(l.num_query_heads == 2 * l.num_key_value_heads for l in rebuilt)


LOAD_WITHOUT = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None          # an import of it fails, as if it were not installed
import keras
try:
    keras.models.load_model({path!r})
    print("LOADED")
except Exception as err:
    print("FAILED", type(err).__name__)
"""


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:export of .* removed nothing")
def test_export_report_names_the_packages_a_fresh_process_needs_to_load_it(tmp_path):
    import subprocess

    _, model, _ = build("GPT2Backbone")
    slim, report = ms.export_with_report(model, source="group_lasso", threshold=0.0)
    assert report.packages == ms.loading_packages(slim)
    assert "keras_hub" in report.packages and "PositionEmbedding" in report.packages["keras_hub"]
    assert "morphsparse" not in report.packages
    assert "loading it needs keras_hub (" in report.summary()
    path = str(tmp_path / "slim.keras")
    slim.save(path)

    def load(blocked):
        code = LOAD_WITHOUT.format(blocked=blocked, path=path)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        return done.stdout.strip().splitlines()[-1]

    assert load(["morphsparse"]) == "LOADED"
    assert load(["keras_hub", "morphsparse"]).startswith("FAILED")
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    assert ms.loading_packages(plain) == {}


def _gpt2_at_length(length=8):
    """A tiny GPT-2 backbone called on inputs of a fixed length: a model taking a dict, as keras_hub's do."""
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=100, num_layers=1, num_heads=2, hidden_dim=16,
                                             intermediate_dim=32, max_sequence_length=length)
    inputs = {"token_ids": keras.Input((length,), dtype="int32", name="token_ids"),
              "padding_mask": keras.Input((length,), dtype="int32", name="padding_mask")}
    return keras.Model(inputs, backbone(inputs), name="gpt2")


def test_a_backbone_taking_a_dict_converts_to_litert_and_matches_keras():
    """The converter's Keras path fails on it (it calls into tf_keras); the SavedModel path converts it, and
    the interpreter's inputs are matched to the model's by name (the converter reorders them)."""
    pytest.importorskip("ai_edge_litert")
    keras.utils.set_random_seed(0)
    model = _gpt2_at_length()
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 100, (3, 8)).astype("int32")
    mask = np.ones((3, 8), "int32")
    mask[:, 6:] = 0
    report = ms.to_litert(model, check_inputs={"token_ids": tokens, "padding_mask": mask})
    assert report.max_difference <= 1e-5 * report.output_scale
    # swapped inputs give other outputs: the check would catch a wrong matching
    swapped = model({"token_ids": tokens, "padding_mask": np.zeros_like(mask)})
    assert not np.allclose(np.asarray(swapped), np.asarray(model({"token_ids": tokens, "padding_mask": mask})))


def test_a_backbone_taking_a_dict_goes_straight_to_the_saved_model_path(monkeypatch):
    """The Keras path cannot read it, and trying it first cost a minute per conversion of a larger backbone."""
    pytest.importorskip("ai_edge_litert")
    import tensorflow as tf

    tried = []
    keras_path = tf.lite.TFLiteConverter.from_keras_model
    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_keras_model",
                        lambda model: tried.append(model.name) or keras_path(model))
    from morphsparse import litert      # the submodule itself: ms.litert exists only once something imported it
    assert litert.convert(_gpt2_at_length(), sparse=False)
    assert tried == []
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="plain")
    assert litert.convert(plain, sparse=False)
    assert tried == ["plain"]            # a model taking a tensor still takes the Keras path first


@pytest.mark.filterwarnings("ignore:profile_latency of .* keeps scale 1")   # a busy machine: not asserted
@pytest.mark.filterwarnings("ignore:profile_latency of .* does not shrink with its widths")
def test_a_backbone_taking_a_dict_is_profiled_on_litert(tmp_path):
    pytest.importorskip("ai_edge_litert")
    keras.utils.set_random_seed(0)
    model = _gpt2_at_length()
    table = ms.profile_latency(model, backend="litert", threads=1, points=2, repeats=1, refresh=True,
                               progress=False, cache_dir=tmp_path)
    assert "attention" in {entry.kind for entry in table.entries.values()}
    assert ms.predict_latency(model, table) > 0
