import keras
import pytest

from morphsparse import cli


def test_report_on_application(capsys):
    assert cli.main(["report", "MobileNetV2", "--input-size", "32", "--classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "channel groups" in out and "FLOPs" in out and "block_1_expand" in out


def test_report_on_saved_file_with_groups(tmp_path, capsys):
    inp = keras.Input((6,))
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(keras.layers.Dense(4, name="hidden")(inp)))
    path = tmp_path / "m.keras"
    model.save(path)
    assert cli.main(["report", str(path), "--groups"]) == 0
    out = capsys.readouterr().out
    assert "producers: hidden" in out and f"{model.count_params():,d} parameters" in out


def test_unknown_model_is_a_clear_error():
    with pytest.raises(SystemExit, match="neither a model file"):
        cli.main(["report", "NoSuchNet"])


def test_export_of_a_saved_model_that_indexes_a_position(tmp_path, capsys):
    import numpy as np

    inp = keras.Input((8, 16))
    h = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(16, name="d1")(inp))
    model = keras.Model(inp, keras.layers.Dense(3, name="head")(h[:, 0, :]))
    bn = model.get_layer("bn")
    gamma = np.ones(16, "float32")
    gamma[[1, 7]] = 0.0
    bn.gamma.assign(gamma)
    bn.beta.assign(np.linspace(-1, 1, 16).astype("float32"))
    path, out = tmp_path / "m.keras", tmp_path / "slim.keras"
    model.save(path)
    assert cli.main(["export", str(path), "-o", str(out)]) == 0
    slim = keras.saving.load_model(out)
    assert slim.get_layer("head").kernel.shape == (14, 3)
    x = np.random.default_rng(0).normal(size=(2, 8, 16)).astype("float32")
    np.testing.assert_allclose(slim.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flag,value", [("--input-size", "0"), ("--input-size", "-8"), ("--classes", "0")])
def test_sizes_must_be_positive(flag, value, capsys):
    # --input-size 0 was taken as "not given" and built the application at its default size
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["report", "MobileNetV2", flag, value])
    assert exit_info.value.code == 2
    assert f"argument {flag}: must be a whole number >= 1, got '{value}'" in capsys.readouterr().err


def _conv_net():
    i = keras.Input((8, 8, 3))
    x = keras.layers.BatchNormalization(name="bn1")(keras.layers.Conv2D(16, 3, name="c1")(i))
    x = keras.layers.BatchNormalization(name="bn2")(keras.layers.Conv2D(16, 3, name="c2")(keras.layers.ReLU()(x)))
    return keras.Model(i, keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(x)))


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    import numpy as np

    import morphsparse as ms

    folder = tmp_path_factory.mktemp("cli")
    dense = _conv_net()
    dense.save(folder / "dense.keras")
    sparse = _conv_net()
    sparse.compile(optimizer=ms.sparse_optimizer(sparse, keras.optimizers.SGD(0.01), sparsity=0.9, method="static"),
                   loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    sparse.fit(rng.random((16, 8, 8, 3)), rng.integers(0, 3, 16), epochs=1, verbose=0)
    sparse.save(folder / "sparse.keras")
    return folder


def test_report_of_a_sparse_checkpoint_says_its_counts_are_dense(saved_models, capsys):
    assert cli.main(["report", str(saved_models / "sparse.keras")]) == 0
    assert "of the kernel weights are exact zeros" in capsys.readouterr().out
    assert cli.main(["report", str(saved_models / "dense.keras")]) == 0
    assert "exact zeros" not in capsys.readouterr().out


def test_sparsity_command_reads_the_masks_or_the_zeros(saved_models, capsys):
    assert cli.main(["sparsity", str(saved_models / "sparse.keras")]) == 0
    out = capsys.readouterr().out
    assert "FLOPs sparse" in out and "c2/kernel" in out
    assert cli.main(["sparsity", str(saved_models / "dense.keras")]) == 0
    out = capsys.readouterr().out
    assert "no SparseOptimizer" in out and "total: 0 of" in out


def test_prune_command_meets_the_budget(saved_models, capsys):
    import morphsparse as ms

    out = saved_models / "pruned.keras"
    assert cli.main(["prune", str(saved_models / "dense.keras"), "-o", str(out), "--budget", "0.5"]) == 0
    seed = keras.saving.load_model(saved_models / "dense.keras")
    assert ms.count_flops(keras.saving.load_model(out)) <= 0.5 * ms.count_flops(seed)
    assert cli.main(["prune", str(saved_models / "dense.keras"), "-o", str(out), "--budget", "0"]) == 2
    assert "budget must be a positive" in capsys.readouterr().err


def test_prune_command_takes_calibration_inputs_for_wanda_and_flap(saved_models, capsys):
    import numpy as np

    import morphsparse as ms

    inputs = saved_models / "calibration.npy"
    np.save(inputs, np.random.default_rng(0).random((32, 8, 8, 3)).astype("float32"))
    out = saved_models / "flap.keras"
    assert cli.main(["prune", str(saved_models / "dense.keras"), "-o", str(out), "--budget", "0.6",
                     "--importance", "flap", "--calibration", str(inputs)]) == 0
    assert "importance='flap'" in capsys.readouterr().out
    seed = keras.saving.load_model(saved_models / "dense.keras")
    assert ms.count_flops(keras.saving.load_model(out)) <= 0.6 * ms.count_flops(seed)
    with pytest.raises(SystemExit, match="give --calibration"):
        cli.main(["prune", str(saved_models / "dense.keras"), "-o", str(out), "--budget", "0.6",
                  "--importance", "wanda"])
    with pytest.raises(SystemExit, match="--calibration is used by --importance wanda or flap only"):
        cli.main(["prune", str(saved_models / "dense.keras"), "-o", str(out), "--budget", "0.6",
                  "--calibration", str(inputs)])


def test_to_litert_command_writes_a_checked_file(saved_models, capsys):
    out = saved_models / "model.tflite"
    assert cli.main(["to-litert", str(saved_models / "sparse.keras"), "-o", str(out)]) == 0
    assert out.stat().st_size > 0 and "outputs match Keras" in capsys.readouterr().out
