"""sparsity_report prices kernels with the cost model that ms.count_flops uses, on every kind of model."""
import sys
import warnings
from pathlib import Path

import keras
import pytest

import morphsparse as ms

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from conformance import build_application  # noqa: E402


def _report(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # ERK rounding and unmasked-layer notices are not the subject here
        ms.sparse_optimizer(model, "sgd", 0.5, "static", layers=ms.LayerSelection(mask_separable_depthwise=True))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "FLOPs of")     # no fallback: every model here can be analysed
        return ms.sparsity_report(model)


def _kernel_flops(report):
    return sum(k.dense_flops for k in report.kernels)


def _einsum():
    i = keras.Input((8, 16))
    h = keras.layers.EinsumDense("btd,de->bte", output_shape=(8, 32), name="einsum")(i)
    return keras.Model(i, keras.layers.Dense(4, name="head")(h))


def _convs():
    inner = keras.Sequential([keras.Input((8, 8, 16)), keras.layers.Conv2D(16, 3, padding="same", groups=4),
                              keras.layers.DepthwiseConv2D(3, depth_multiplier=2)], name="inner")
    i = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 3, padding="same")(i)
    x = inner(x)
    x = keras.layers.SeparableConv2D(8, 3, padding="same")(x)
    x = keras.layers.Conv2DTranspose(4, 3, strides=2)(x)
    x = keras.layers.Reshape((-1, 4))(x)
    x = keras.layers.Conv1D(6, 3)(x)
    shared = keras.layers.Dense(6)
    x = shared(shared(x))                      # one kernel, two calls: both calls' MACs are its
    return keras.Model(i, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(x)))


def _attention():
    """Cross-attention of 8 queries over 5 keys (the projections run at different lengths), then self-attention."""
    q, kv = keras.Input((8, 16)), keras.Input((5, 12))
    x = keras.layers.MultiHeadAttention(2, 8, value_dim=4)(q, kv)
    x = keras.layers.LayerNormalization()(x + q)
    x = x + keras.layers.MultiHeadAttention(2, 8)(x, x)
    return keras.Model([q, kv], keras.layers.Dense(3)(keras.layers.Dense(32, activation="relu")(x)))


@pytest.mark.parametrize("build", [_einsum, _convs])
def test_every_mac_of_a_kernel_model_is_a_masked_kernels(build):
    model = build()
    report = _report(model)
    flops = ms.count_flops(model)
    assert report.dense_flops == flops and _kernel_flops(report) == flops
    assert report.sparse_flops == sum(k.sparse_flops for k in report.kernels) < flops


def test_einsum_dense_over_tokens_is_priced_per_token():
    report = _report(_einsum())
    einsum, head = report.kernels
    assert einsum.dense_flops == 2 * 8 * 16 * 32 and head.dense_flops == 2 * 8 * 32 * 4
    assert einsum.sparse_flops == 2 * 8 * einsum.nonzeros


def test_attention_projections_are_kernels_and_scores_are_not():
    model = _attention()
    report = _report(model)
    scores = 8 * 5 * 2 * (8 + 4) + 8 * 8 * 2 * (8 + 8)      # T * S * heads * (key_dim + value_dim), per block
    flops = {k.key.split("/")[-2]: k.dense_flops for k in report.kernels if k.key.startswith("multi_head_attention/")}
    assert flops == {"query": 2 * 8 * 16 * 16, "key": 2 * 5 * 12 * 16, "value": 2 * 5 * 12 * 8,
                     "attention_output": 2 * 8 * 8 * 16}
    assert report.dense_flops == ms.count_flops(model) == _kernel_flops(report) + 2 * scores
    assert report.dense_flops - report.sparse_flops == _kernel_flops(report) - sum(k.sparse_flops
                                                                                    for k in report.kernels)


@pytest.mark.parametrize("name", ["BertBackbone", "ViTBackbone"])
def test_hub_transformers_total_is_count_flops(name):
    pytest.importorskip("keras_hub")
    from hub_conformance import build
    _, model, _ = build(name)
    report = _report(model)
    assert report.dense_flops == ms.count_flops(model) > _kernel_flops(report)    # attention scores
    priced = [k for k in report.kernels if "embedding" not in k.key]
    assert priced and all(k.dense_flops > 0 for k in priced)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ResNet50V2", "Xception", "NASNetMobile", "ConvNeXtTiny", "EfficientNetV2B0",
                                  "InceptionResNetV2", "VGG16", "MobileNet"])
def test_application_kernels_carry_every_flop(name):
    model = build_application(name)
    report = _report(model)
    assert report.dense_flops == _kernel_flops(report) == ms.count_flops(model)


def test_subclassed_model_falls_back_with_a_warning():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(4, 3)
            self.fc = keras.layers.Dense(2)

        def call(self, x):
            return self.fc(keras.layers.Flatten()(self.conv(x)))

    model = Net()
    model(keras.ops.zeros((1, 6, 6, 3)))
    ms.sparse_optimizer(model, "sgd", 0.5, "static", "uniform")
    with pytest.warns(UserWarning, match="subclassed"):
        report = ms.sparsity_report(model)
    assert report.model_macs is None
    assert report.kernels[0].dense_flops == 2 * 27 * 4 * 16          # 4x4 output positions


def test_a_sequence_of_any_length_falls_back_with_a_warning():
    i = keras.Input((None, 16))                 # FLOPs per example depend on the length
    model = keras.Model(i, keras.layers.Dense(4)(keras.layers.Conv1D(8, 3)(i)))
    ms.sparse_optimizer(model, "sgd", 0.5, "static", "uniform")
    with pytest.warns(UserWarning, match=r"input of shape \(None, None, 16\) has a dimension of unknown size"):
        report = ms.sparsity_report(model)
    assert report.model_macs is None and len(report.kernels) == 2 and report.sparse_flops < report.dense_flops
