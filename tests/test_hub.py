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


@pytest.mark.slow
@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_backbone_conforms(name):
    row = check_backbone(name, use_profiler=True)
    failed = [s for s in STEPS if not row.get({"params": "params_match", "profiler": "profiler_match"}.get(s, s))]
    assert not failed, row
    assert row["removable_groups"] > 0 and row["flops_slim"] < row["flops"]


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
