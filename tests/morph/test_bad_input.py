"""Bad input on the structure side (export, expand, structure files, regulariser, cycle, CLI): every mistake
gets an error or a warning that names the argument (or the layer, or the file) and says what to do."""

import json
import warnings

import keras
import numpy as np
import pytest

import morphsparse as ms
from morphsparse import cli
from morphsparse.morph.cycle import cycle
from morphsparse.morph.regularizers import MorphRegularizer
from morph_helpers import block_net

L = keras.layers


def mlp():
    """No BatchNorm anywhere: a gamma source has nothing to read."""
    inp = keras.Input((6,), name="x")
    h = L.Dense(8, activation="relu", name="h")(inp)
    return keras.Model(inp, L.Dense(2, name="out")(h), name="mlp")


# --- 1. a source that can never remove anything ------------------------------------------------------------

def test_export_with_a_source_the_model_lacks_warns_naming_source():
    model = mlp()
    with pytest.warns(UserWarning, match=r"source='gamma' can never remove anything.*no channel has a gamma "
                                         r"source.*source=\"group_lasso\"") as record:
        slim = ms.export(model, source="gamma")
    assert slim.get_layer("h").units == 8
    # the warning points at the caller's line, not at morphsparse's internals
    assert [w.filename for w in record if "can never remove" in str(w.message)] == [__file__]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*can never remove.*")
        ms.export(model, source="group_lasso")          # group lasso has a source for every hidden channel
        ms.export(block_net())                           # gamma on a network with BatchNorm


def test_structure_files_share_the_warning(tmp_path):
    model = mlp()
    with pytest.warns(UserWarning, match="source='gamma' can never remove anything"):
        ms.structure_of(model)
    with pytest.warns(UserWarning, match="source='gamma' can never remove anything") as record:
        ms.save_structure(model, tmp_path / "s.json")
    assert {w.filename for w in record if "can never remove" in str(w.message)} == {__file__}


# --- 2. the CLI's budget flags and --target ----------------------------------------------------------------

@pytest.mark.parametrize("argv, words", [
    (["--budget-flops", "1e6", "--target", "size"], ["--budget-flops", "--target", "--budget-params"]),
    (["--budget-params", "1e4", "--target", "flops"], ["--budget-params", "--target", "--budget-flops"]),
    (["--budget-flops", "1e6", "--like", "big.keras"], ["--like", "--budget-flops"]),
    ([], ["--like", "--budget-flops"]),
])
def test_cli_budget_flags_that_contradict_are_refused(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["expand", "slim.keras", "-o", "wide.keras"] + argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert all(word in err for word in words), err


def test_cli_budget_params_implies_the_size_target(tmp_path, capsys):
    path = tmp_path / "m.keras"
    mlp().save(path)
    assert cli.main(["expand", str(path), "-o", str(tmp_path / "w.keras"), "--budget-params", "300"]) == 0
    assert "to a budget of 300 params" in capsys.readouterr().out
    assert ms.count_params(keras.saving.load_model(tmp_path / "w.keras")) <= 300


# --- 3. structure dicts ------------------------------------------------------------------------------------

def _structure(**changes):
    structure = ms.structure_of(block_net(), alive={"a": np.ones(8, bool)})
    for name, entry in changes.items():
        structure["layers"][name] = entry
    return structure


@pytest.mark.parametrize("entry, message", [
    ({"channels": 8, "kept": [-1, 2]}, r"layer 'a': kept indices \[-1\] are outside \[0, 8\)"),
    ({"channels": 8, "kept": [0, 99]}, r"layer 'a': kept indices \[99\] are outside \[0, 8\)"),
    ({"channels": 8, "kept": [1, 1, 2]}, r"layer 'a': kept indices \[1\] appear more than once"),
    ({"channels": 8, "kept": [0.0, 1]}, r"layer 'a': 'kept' must be a list of integer"),
    ({"channels": 8, "kept": "0,1"}, r"layer 'a': 'kept' must be a list of integer"),
    ({"kept": [0]}, r"layer 'a': missing 'channels'"),
    ({"channels": 8}, r"layer 'a': missing 'kept'"),
    ({"channels": -8, "kept": []}, r"layer 'a': 'channels' must be a non-negative integer"),
    ([0, 1], r"layer 'a': expected a dict with 'channels' and 'kept'"),
])
def test_bad_layer_entries_name_the_layer(entry, message):
    with pytest.raises(ValueError, match=message):
        ms.masks_from_structure(block_net(), _structure(a=entry))


def test_bad_structure_shapes_are_named():
    model = block_net()
    structure = _structure()
    structure["layers"] = list(structure["layers"])
    with pytest.raises(ValueError, match="'layers' must map layer names"):
        ms.masks_from_structure(model, structure)
    del structure["layers"]
    with pytest.raises(ValueError, match="no 'layers' entry"):
        ms.masks_from_structure(model, structure)
    with pytest.raises(TypeError, match="structure must be a dict"):
        ms.masks_from_structure(model, [1, 2])
    with pytest.raises(ValueError, match=r"layer 'stem_bn', which creates no channels.*\['stem', 'b'\]"):
        ms.masks_from_structure(model, _structure(stem_bn={"channels": 16, "kept": [0]}))


def test_errors_about_a_loaded_structure_name_its_file(tmp_path):
    model = block_net()
    path = tmp_path / "s.json"
    ms.save_structure(model, path)
    structure = ms.load_structure(path)
    assert structure == json.loads(path.read_text())            # still the plain dict it always was
    structure["layers"]["a"]["kept"] = [99]
    with pytest.raises(ValueError, match=rf"structure file '{path}', layer 'a': kept indices \[99\]"):
        ms.masks_from_structure(model, structure)
    structure["layers"]["a"] = {"channels": 9, "kept": [0]}
    with pytest.raises(ValueError, match=rf"structure file '{path}', layer 'a': 8 channels in the model but 9"):
        ms.masks_from_structure(model, structure)
    # a path is read (and checked) directly; a bad entry on disk is reported at load time
    written = json.loads(path.read_text())
    written["layers"]["a"]["kept"] = [-1]
    path.write_text(json.dumps(written))
    for call in (lambda: ms.load_structure(path), lambda: ms.masks_from_structure(model, path)):
        with pytest.raises(ValueError, match=rf"structure file '{path}', layer 'a': kept indices \[-1\]"):
            call()


# --- 4. corrupt structure files ----------------------------------------------------------------------------

def test_corrupt_structure_file_names_the_file_and_the_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"format": "morphsparse.structure/1",\n "layers": {"a": ')
    with pytest.raises(ValueError, match=rf"structure file '{path}' is not valid JSON: .* at line 2 column"):
        ms.load_structure(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ValueError, match=rf"structure file '{path}' is not text"):
        ms.load_structure(path)


# --- 5. MorphRegularizer and cycle arguments ---------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, message", [
    (dict(target=["flops"]), TypeError, r"target must be a string"),
    (dict(target="energy"), ValueError, r"unknown target 'energy'"),
    (dict(source=1), TypeError, r"source must be a string"),
    (dict(threshold="0.01"), TypeError, r"threshold must be a number, got str '0.01'"),
    (dict(threshold=None), TypeError, r"threshold must be a number"),
    (dict(threshold=-1), ValueError, r"threshold must be a finite number >= 0"),
    (dict(strength="1"), TypeError, r"strength must be a number"),
    (dict(strength=-1.0), ValueError, r"strength must be a finite number >= 0"),
    (dict(strength_multiplier="1"), TypeError, r"strength_multiplier must be a number"),
    (dict(strength_multiplier=0), ValueError, r"strength_multiplier must be a finite number > 0"),
    (dict(source="group_lasso", l1_fraction="0.5"), TypeError, r"l1_fraction must be a number"),
    (dict(source="group_lasso", l1_fraction=1.5), ValueError, r"l1_fraction must be in \[0, 1\]"),
    (dict(l1_fraction=0.5), ValueError, r"l1_fraction applies to source='group_lasso' only"),
    (dict(target="latency", device=7), TypeError, r"device must be a measured LatencyTable .*a name in"),
    (dict(target="latency", device="tpu"), ValueError, r"unknown device 'tpu'"),
    (dict(ignore="a"), TypeError, r"ignore must be a list of layer names, got the string 'a'"),
    (dict(ignore=[3]), TypeError, r"ignore must be a list of layer names \(strings\)"),
])
def test_every_regularizer_argument_is_checked_by_name(kwargs, error, message):
    with pytest.raises(error, match=message):
        MorphRegularizer(block_net(), **kwargs)


def test_a_device_without_the_latency_target_warns():
    model = block_net()
    with pytest.warns(UserWarning, match=r"device='t4' is ignored: it only applies to target='latency'"):
        MorphRegularizer(model, target="flops", device="t4")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*device.*")
        MorphRegularizer(model, target="size")
        latency = MorphRegularizer(model, target="latency")
    assert latency.target.device.name == "v100"          # None resolves to the documented default


def test_cycle_checks_pass_through_arguments_before_training():
    model = block_net()
    fit = dict(x=np.zeros((4, 8, 8, 3), "float32"), y=np.zeros(4), epochs=1, verbose=0)
    with pytest.raises(TypeError, match="threshold must be a number"):
        cycle(model, fit, regularizer=dict(threshold="0.01"))
    with pytest.raises(ms.ExpandError, match="round_to must be a positive integer"):
        cycle(model, fit, expand=dict(round_to=0))
    with pytest.raises(ms.ExpandError, match="budget must be a positive finite number"):
        cycle(model, fit, expand=dict(budget=-5))
    with pytest.raises(TypeError, match="evaluate= must be a callable"):
        cycle(model, fit, evaluate="accuracy")
    with pytest.warns(UserWarning, match="device='a100' is ignored"), pytest.raises(TypeError, match="retrain="):
        cycle(model, fit, regularizer=dict(device="a100"), retrain=[("epochs", 1)])
    with pytest.raises(TypeError, match=r"regularizer= got unexpected key\(s\) \['strenght'\]"):
        cycle(model, fit, regularizer=dict(strenght=1e-3))
    with pytest.raises(TypeError, match=r"expand= got unexpected key\(s\) \['multiplier'\]"):
        cycle(model, fit, expand=dict(multiplier=2))
    with pytest.raises(TypeError, match="regularizer= must be a dict"):
        cycle(model, fit, regularizer="flops")


# --- 6. a sparse training model ----------------------------------------------------------------------------

def test_a_sparse_training_model_is_analysed_exported_and_expanded_as_it_is():
    # sparse training keeps the user's model (an optimizer wrapper holds the masks), so the structural
    # tools read it directly: no strip, no rebuild
    model = keras.Sequential([keras.Input((6,)), L.Dense(8, name="h"), L.Dense(2, name="out")], name="tiny")
    optimizer = ms.sparse_optimizer(model, keras.optimizers.SGD(0.1), sparsity=0.5, method="static",
                                    distribution="uniform")
    model.compile(optimizer, "mse")
    assert ms.analyze(model).group_of("h").size == 8
    kernel = keras.ops.convert_to_numpy(model.get_layer("h").kernel)
    kernel[:, :3] = 0.0                                    # three neurons lose every input weight
    model.get_layer("h").kernel.assign(kernel)
    slim = ms.export(model, source="group_lasso", threshold=0.0)
    assert slim.get_layer("h").units == 5
    assert ms.count_flops(ms.expand(slim, budget=2 * ms.count_flops(slim))) <= 2 * ms.count_flops(slim)


# --- the rest of this side: export / expand / structure_of arguments ----------------------------------------

def test_export_arguments_name_themselves():
    model = block_net()
    with pytest.raises(TypeError, match="threshold must be a number, got str"):
        ms.export(model, threshold="0.01")
    with pytest.raises(ValueError, match="threshold must be a finite number >= 0, got -1"):
        ms.export(model, threshold=-1)
    with pytest.raises(ValueError, match="l1_fraction applies to source='group_lasso' only"):
        ms.export(model, l1_fraction=0.3)
    with pytest.raises(ValueError, match=r"alive\['nope'\]: no layer named 'nope'"):
        ms.export(model, alive={"nope": np.ones(8, bool)})
    with pytest.raises(ValueError, match=r"alive\[99\]: no channel group G99"):
        ms.export(model, alive={99: np.ones(8, bool)})
    with pytest.raises(TypeError, match="alive must be a mapping"):
        ms.export(model, alive=[np.ones(8, bool)])
    with pytest.raises(ValueError, match=r"alive\['a'\] must be a boolean mask of shape \(8,\), got int64"):
        ms.structure_of(model, alive={"a": np.ones(8, int)})
    with pytest.raises(ValueError, match=r"alive\['nope'\]"):
        ms.structure_of(model, alive={"nope": np.ones(8, bool)})
    with pytest.raises(TypeError, match="ignore must be a list of layer names, got the string 'stem'"):
        ms.export(model, ignore="stem")


def test_expand_arguments_name_themselves():
    model = block_net()
    with pytest.raises(ms.ExpandError, match="budget must be a number .*got True"):
        ms.expand(model, budget=True)
    with pytest.raises(ms.ExpandError, match="budget must be a number .*got 'abc'"):
        ms.expand(model, budget="abc")
    with pytest.raises(ms.ExpandError, match="round_to must be a positive integer or None, got 0"):
        ms.expand(model, budget=1e6, round_to=0)
    with pytest.raises(ms.ExpandError, match="unknown target 'energy'"):
        ms.expand(model, budget=1e6, target="energy")
