"""Layer-wise sparsity distributions against the reference test vectors (algorithms.md 1.2)."""

import numpy as np
import pytest

from morphsparse.sparse.distributions import (ErdosRenyi, ErdosRenyiKernel, Uniform, get_distribution,
                                              layer_sparsities)
from morphsparse.sparse.masks import kept_count

MLP = {"fc1": (784, 300), "fc2": (300, 100), "fc3": (100, 10)}
CNN = {"conv1": (3, 3, 3, 32), "conv2": (3, 3, 32, 64), "conv3": (3, 3, 64, 128), "dense": (128, 10)}


def _global(shapes, sparsities):
    sizes = {k: np.prod(s) for k, s in shapes.items()}
    return sum(sparsities[k] * sizes[k] for k in shapes) / sum(sizes.values())


def test_erk_mlp_90():
    sparsities, epsilon = ErdosRenyiKernel().solve(MLP, 0.9)
    assert epsilon == pytest.approx(17.2642, abs=5e-5)
    assert sparsities["fc3"] == 0.0
    assert sparsities["fc1"] == pytest.approx(0.920432, abs=5e-7)
    assert sparsities["fc2"] == pytest.approx(0.769811, abs=5e-7)
    assert _global(MLP, sparsities) == pytest.approx(0.90, abs=1e-9)


def test_erk_mlp_98():
    sparsities, epsilon = ErdosRenyiKernel().solve(MLP, 0.98)
    assert epsilon == pytest.approx(3.34003, abs=5e-6)
    assert sparsities["fc1"] == pytest.approx(0.984606, abs=5e-7)
    assert sparsities["fc2"] == pytest.approx(0.955466, abs=5e-7)
    assert sparsities["fc3"] == pytest.approx(0.632597, abs=5e-7)


def test_erk_cnn_90_forces_first_conv_and_dense_layer_dense():
    sparsities, epsilon = ErdosRenyiKernel().solve(CNN, 0.9)
    assert epsilon == pytest.approx(24.2933, abs=5e-5)
    assert sparsities["conv1"] == 0.0 and sparsities["dense"] == 0.0
    assert sparsities["conv2"] == pytest.approx(0.865564, abs=5e-7)
    assert sparsities["conv3"] == pytest.approx(0.934759, abs=5e-7)
    # The budget uses floor(S * N) per layer, hence slightly below 0.9.
    assert _global(CNN, sparsities) == pytest.approx(0.899983, abs=5e-7)
    # With integer masks (N - floor(S * N) ones per layer) the global sparsity stays within rounding of it.
    sizes = {k: int(np.prod(s)) for k, s in CNN.items()}
    kept = sum(kept_count(sizes[k], sparsities[k]) for k in CNN)
    assert abs(1 - kept / sum(sizes.values()) - 0.899983) < 3 / sum(sizes.values())


def test_erk_cnn_power_half():
    sparsities, _ = ErdosRenyiKernel(power=0.5).solve(CNN, 0.9)
    expected = [0.645774, 0.879035, 0.915732, 0.466075]
    assert [sparsities[k] for k in CNN] == pytest.approx(expected, abs=5e-7)


def test_er_equals_erk_for_dense_kernels_and_uses_last_two_dims_for_convs():
    assert ErdosRenyi()(MLP, 0.9) == pytest.approx(ErdosRenyiKernel()(MLP, 0.9))
    er = ErdosRenyi()(CNN, 0.9)
    erk = ErdosRenyiKernel()(CNN, 0.9)
    assert er != pytest.approx(erk)
    assert _global(CNN, er) == pytest.approx(_global(CNN, erk), abs=1e-4)


def test_uniform_and_power_zero():
    assert Uniform()(MLP, 0.8) == {"fc1": 0.8, "fc2": 0.8, "fc3": 0.8}
    flat = ErdosRenyiKernel(power=0.0)(MLP, 0.8)
    assert all(v == pytest.approx(0.8, abs=1e-4) for v in flat.values())


def test_overrides_are_outside_the_budget():
    result = layer_sparsities(MLP, 0.9, "erk", overrides={"fc1": 0.5})
    assert result["fc1"] == 0.5
    rest = {k: MLP[k] for k in ("fc2", "fc3")}
    assert {k: result[k] for k in rest} == pytest.approx(ErdosRenyiKernel()(rest, 0.9))


def test_unknown_distribution_and_custom_callable():
    with pytest.raises(ValueError, match="Unknown distribution"):
        get_distribution("gaussian")
    custom = layer_sparsities(MLP, 0.9, lambda shapes, s: {k: s / 2 for k in shapes})
    assert custom == {"fc1": 0.45, "fc2": 0.45, "fc3": 0.45}
