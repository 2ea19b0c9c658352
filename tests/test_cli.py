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
