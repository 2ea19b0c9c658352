"""The analytic FLOPs agree with TensorFlow's profiler for the ops both count."""
import keras
import pytest

import morphsparse as ms
from morphsparse.profiler import profiler_flops, profiler_mac_flops

L = keras.layers


def test_layer_kinds_match_profiler():
    inp = keras.Input((16, 16, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same")(inp)
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(x)
    x = L.SeparableConv2D(12, 3, padding="valid")(x)
    x = L.Conv2D(12, 1)(x)   # grouped convs run as an XLA call the profiler cannot see: see test_costs
    x = L.Conv2DTranspose(6, 3, strides=2, padding="same")(x)
    x = L.Dense(7)(x)                                       # on a 4-D tensor
    seq = L.Reshape((-1, 7))(x)
    seq = L.Conv1D(5, 3)(seq)
    out = L.Dense(4)(L.Flatten()(seq))
    model = keras.Model(inp, out)
    assert ms.count_flops(model) == profiler_mac_flops(model)


@pytest.mark.slow
@pytest.mark.parametrize("name,size", [("MobileNetV2", 32), ("EfficientNetB0", 32), ("DenseNet121", 32),
                                       ("MobileNetV3Small", 32)])
def test_applications_match_profiler(name, size):
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=10)
    per_type = profiler_flops(model)
    assert per_type.get("Conv2D", 0) > 0
    assert ms.count_flops(model) == profiler_mac_flops(model)
    assert ms.count_params(model) == model.count_params()
