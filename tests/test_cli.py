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
