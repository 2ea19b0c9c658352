"""ms.to_litert: sparse storage in LiteRT files, checked against Keras."""

import keras
import numpy as np
import pytest

import morphsparse as ms

pytest.importorskip("ai_edge_litert", reason="the [litert] extra (ai-edge-litert) is not installed")
L = keras.layers


def mlp_with_zeros(seed=0):
    """fc1: 90% zeros in 1x4 blocks along its input axis; fc2: 90% scattered zeros; fc3 dense."""
    rng = np.random.default_rng(seed)
    inp = keras.Input((32,))
    x = L.Dense(64, activation="relu", name="fc1")(inp)
    x = L.Dense(48, activation="relu", name="fc2")(x)
    model = keras.Model(inp, L.Dense(5, name="fc3")(x))
    fc1, fc2 = model.get_layer("fc1"), model.get_layer("fc2")
    fc1.kernel.assign(fc1.kernel.numpy() * (rng.random((8, 64)) > 0.9).repeat(4, axis=0))
    fc2.kernel.assign(fc2.kernel.numpy() * (rng.random((64, 48)) > 0.9))
    return model


def test_block_sparse_dense_layers_get_the_sparse_kernel_and_match_keras(tmp_path):
    model = mlp_with_zeros()
    path = tmp_path / "mlp.tflite"
    report = ms.to_litert(model, path)
    rows = {row.layer: row for row in report.layers}
    assert rows["fc1"].stored == "sparse" and rows["fc1"].kernel == "sparse FULLY_CONNECTED"
    assert rows["fc2"].stored == "sparse" and rows["fc2"].kernel.startswith("densified")
    assert rows["fc3"].stored == "dense" and rows["fc1"].zeros >= 0.85
    assert report.sparse_kernels == ["fc1"]
    assert report.max_difference <= 1e-5 * report.output_scale
    assert path.stat().st_size == report.bytes
    # the written file runs on its own and gives the Keras outputs
    from morphsparse.litert import interpreter, run
    x = np.random.default_rng(3).normal(size=(3, 32)).astype("float32")
    got = run(interpreter(path.read_bytes()), [x])[0]
    np.testing.assert_allclose(got, keras.ops.convert_to_numpy(model(x)), rtol=1e-5, atol=1e-6)


def test_dense_storage_when_sparse_is_off_and_a_smaller_file_when_on():
    model = mlp_with_zeros()
    dense = ms.to_litert(model, sparse=False)
    assert all(row.stored == "dense" for row in dense.layers)
    assert ms.to_litert(model).bytes < dense.bytes


def test_quantised_conversion_is_checked_to_the_quantization_tolerance():
    from morphsparse import litert

    model = mlp_with_zeros()
    data = [np.random.default_rng(i).normal(size=(8, 32)).astype("float32") for i in range(3)]
    report = ms.to_litert(model, quantize="int8", representative_data=data)
    assert report.quantize == "int8" and np.isfinite(report.max_difference)
    assert report.max_difference <= litert.RTOL["int8"] * report.output_scale
    # int8 rounding is far above a float tolerance: with one, the check refuses the file
    with pytest.raises(ms.LiteRTError, match=r"quantize='int8'.*rtol=1e-09"):
        ms.to_litert(model, quantize="int8", representative_data=data, rtol=1e-9)


def test_float16_with_sparse_1x4_blocks_matches_keras(tmp_path):
    # the converter stores fc1's 1x4 blocks sparse in float16 and feeds them to DEQUANTIZE without the DENSIFY
    # it needs: every output was NaN (and was reported as a match)
    model = mlp_with_zeros()
    path = tmp_path / "fp16.tflite"
    report = ms.to_litert(model, path, sparse=True, quantize="float16")
    rows = {row.layer: row for row in report.layers}
    assert rows["fc1"].stored == "sparse" and rows["fc2"].stored == "sparse"
    assert report.bytes < ms.to_litert(model, sparse=False, quantize="float16").bytes
    assert report.max_difference <= 1e-2 * report.output_scale
    from morphsparse.litert import interpreter, run
    x = np.random.default_rng(3).normal(size=(3, 32)).astype("float32")
    got = run(interpreter(path.read_bytes()), [x])[0]
    want = keras.ops.convert_to_numpy(model(x))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=1e-2 * np.abs(want).max())


def test_nan_outputs_are_an_error_never_a_match(monkeypatch):
    from morphsparse import litert

    real_run = litert.run

    def nan_run(runner, arrays):   # a broken file: NaN where Keras computes numbers
        return [np.full_like(out, np.nan) for out in real_run(runner, arrays)]

    monkeypatch.setattr(litert, "run", nan_run)
    for quantize in (None, "float16"):
        with pytest.raises(ms.LiteRTError, match=rf"sparse=True, quantize={quantize!r}\) outputs NaN or inf"):
            ms.to_litert(mlp_with_zeros(), quantize=quantize)
    # the converter's own float16 file (before the DENSIFY repair) is caught the same way
    monkeypatch.setattr(litert, "run", real_run)
    monkeypatch.setattr(litert, "densify_before_dequantize", lambda flatbuffer: flatbuffer)
    with pytest.raises(ms.LiteRTError, match="outputs NaN or inf"):
        ms.to_litert(mlp_with_zeros(), quantize="float16")


def test_bad_arguments_are_named():
    model = mlp_with_zeros()
    with pytest.raises(ValueError, match="quantize"):
        ms.to_litert(model, quantize="int4")
    with pytest.raises(ValueError, match="representative_data"):
        ms.to_litert(model, quantize="int8")
    with pytest.raises(ValueError, match="rtol"):
        ms.to_litert(model, rtol=0)
    for bad in (float("inf"), float("nan"), "1e-5"):
        with pytest.raises(ValueError, match="rtol must be a finite number"):
            ms.to_litert(model, rtol=bad)
    with pytest.raises(TypeError, match="sparse must be True or False"):
        ms.to_litert(model, sparse="no")
    with pytest.raises(TypeError, match="keras.Model"):
        ms.to_litert("model.keras")


def test_the_report_knows_xnnpack_keeps_sparse_inference_off_x86_with_avx(monkeypatch, tmp_path):
    from morphsparse import litert

    cpuinfo = tmp_path / "cpuinfo"
    real_open = open

    def fake_open(path, *args, **kwargs):
        return real_open(cpuinfo if path == "/proc/cpuinfo" else path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    monkeypatch.setattr(litert.platform, "machine", lambda: "x86_64")
    cpuinfo.write_text("processor : 0\nflags : fpu sse sse2 avx avx2 avx512f\n")
    assert not litert._xnnpack_may_run_sparse()
    cpuinfo.write_text("processor : 0\nflags : fpu sse sse2 ssse3\n")
    assert litert._xnnpack_may_run_sparse()
    monkeypatch.setattr(litert.platform, "machine", lambda: "aarch64")
    cpuinfo.write_text("processor : 0\nflags : fpu sse sse2 avx avx2\n")
    assert litert._xnnpack_may_run_sparse()


def test_the_report_says_only_1x1_convolutions_can_run_sparse_in_xnnpack(monkeypatch, capsys):
    from morphsparse import litert

    monkeypatch.setattr(litert, "_xnnpack_may_run_sparse", lambda: True)     # as on an ARM phone
    rng = np.random.default_rng(0)
    i = keras.Input((8, 8, 16))
    x = keras.layers.Conv2D(32, 3, padding="same", name="c3")(i)
    x = keras.layers.Conv2D(32, 1, name="c1")(x)
    model = keras.Model(i, keras.layers.Dense(8, name="fc")(keras.layers.GlobalAveragePooling2D()(x)))
    for layer in model.layers:
        if layer.weights:
            kernel = keras.ops.convert_to_numpy(layer.kernel)
            layer.kernel.assign(kernel * (rng.random(kernel.shape) > 0.9))
    capsys.readouterr()
    rows = {row.layer: row for row in ms.to_litert(model).layers}
    assert capsys.readouterr().out == ""          # none of the converter's "Saved artifact" listing
    delegated = [name for name, row in rows.items() if "XNNPACK" in row.kernel]
    assert "c3" in delegated and "c1" in delegated
    assert "dense speed" in rows["c3"].kernel and "sparse 1x1 kernel" in rows["c1"].kernel
    assert all("sparse 1x1" not in row.kernel for name, row in rows.items() if name != "c1")


def test_a_built_subclassed_model_converts_and_is_checked():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(8, activation="relu")
            self.out = keras.layers.Dense(3)

        def call(self, x):
            return self.out(self.hidden(x))

    model = Net()
    model(np.zeros((1, 5), "float32"))
    report = ms.to_litert(model)
    assert report.max_difference <= 1e-4 * report.output_scale
    assert len(report.layers) == 2
