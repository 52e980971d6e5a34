"""Round trips through .keras and .h5 for every model the project trains."""

import ast
import re
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pandas as pd
import pytest

import cnnlab
from cnnlab.deploy.export import (
    UnsafeModelError,
    list_models,
    load_metadata,
    load_model,
    save_model,
)
from cnnlab.models.backbones import BACKBONES
from cnnlab.models.custom import CUSTOM_MODELS, build_custom_model
from cnnlab.models.transfer import build_transfer_model

X = np.random.default_rng(1).uniform(0, 255, (2, 75, 75, 3)).astype("float32")


def _model(name):
    if name in CUSTOM_MODELS:
        return build_custom_model(name, 75, 3)
    return build_transfer_model(name, 3, 75)


@pytest.mark.parametrize("name", sorted(BACKBONES) + sorted(CUSTOM_MODELS))
def test_h5_and_keras_round_trip_predict_the_same(name, tmp_path):
    model = _model(name)
    expected = model.predict(X, verbose=0)
    paths = save_model(model, tmp_path, f"demo-{name}", {"class_names": ["a", "b", "c"]})
    for suffix in (".keras", ".h5"):
        again = load_model(paths[suffix])
        np.testing.assert_allclose(again.predict(X, verbose=0), expected, rtol=1e-4, atol=1e-5)
        keras.backend.clear_session()
    assert load_metadata(paths[".h5"])["class_names"] == ["a", "b", "c"]


def test_plain_keras_cannot_reload_mobilenet_v3_h5(tmp_path):
    """Documents the Keras 3 bug that export.H5_CUSTOM_OBJECTS works around."""
    paths = save_model(_model("mobilenet_v3_small_075"), tmp_path, "m")
    with pytest.raises(ValueError, match="Only input tensors may be passed"):
        keras.models.load_model(paths[".h5"])
    assert load_model(paths[".h5"]) is not None


def test_a_model_is_one_folder_and_saving_again_keeps_the_previous_one(tmp_path, capsys):
    model = _model("retail_cnn")
    paths = save_model(model, tmp_path, "cards-retail_cnn", {"class_names": ["a", "b", "c"]})
    folder = tmp_path / "cards-retail_cnn"
    assert paths["folder"] == folder
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "model.h5", "model.keras"]
    assert load_metadata(folder)["class_names"] == load_metadata(paths[".h5"])["class_names"]
    assert load_model(folder).predict(X, verbose=0).shape == (2, 3)
    save_model(model, tmp_path, "cards-retail_cnn")
    assert "kept the previous cards-retail_cnn as" in capsys.readouterr().out
    previous = list((tmp_path / "previous").glob("cards-retail_cnn-*"))
    assert len(previous) == 1 and (previous[0] / "model.keras").is_file()
    assert list_models(tmp_path, "cards-") == [folder]  # previous/ is not a model
    save_model(model, tmp_path, "cards-retail_cnn")  # same second: a second name, no clash
    assert len(list((tmp_path / "previous").glob("cards-retail_cnn-*"))) == 2


@pytest.mark.parametrize("failing", [".keras", ".h5"])
def test_interrupted_save_leaves_the_previous_model_in_place(tmp_path, monkeypatch, failing):
    model = _model("retail_cnn")
    save_model(model, tmp_path, "x")
    folder = tmp_path / "x"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real_save = keras.Model.save

    def crash(self, path, *args, **kwargs):
        if str(path).endswith(failing):
            open(path, "wb").write(b"half")
            raise KeyboardInterrupt
        return real_save(self, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_model(model, tmp_path, "x")
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    # the model folder stays complete where it was; nothing moved aside
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not list(tmp_path.glob("previous/x-*"))


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train it first"):
        load_model(tmp_path / "none.h5")
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a .keras or .h5"):
        load_model(tmp_path / "model.pt")


@pytest.mark.slow
def test_tflite_export_float_dynamic_and_int8_on_real_images(project, shared_dir, capsys):
    """Vehicles photos, trained models, the whole test split, through the CLI."""
    from cnnlab.cli import main
    from cnnlab.config import get_profile
    from cnnlab.data.datasets import prepare_dataset
    from cnnlab.deploy.export import export_deployment
    from cnnlab.training.fine_tuning import fine_tune
    from cnnlab.training.fitting import TrainingData, train_custom

    manifest = prepare_dataset("vehicles", shared_dir / "datasets" / "vehicles", project)
    data = TrainingData(manifest, 96, 32, max_train_per_class=40, seed=0)
    fine_tune("mobilenet_v3_small_075", data, freeze_epochs=4, epochs=0, base_lr=3e-3,
              weights="local", weights_dir=shared_dir / "weights", dirs=project, verbose=0)
    name = "vehicles-mobilenet_v3_small_075"
    assert main(["export", name, "--format", "tflite"]) == 0
    out = capsys.readouterr().out
    assert f"{name}/model.tflite" in out and "test split, 120 images: Keras accuracy" in out
    path, float32 = export_deployment(name, dirs=project)  # again: the old file is kept
    assert path == project.models / name / "model.tflite"
    assert list((project.models / name / "previous").glob("model-*.tflite"))
    assert float32["images"] == 120 and float32["keras_accuracy"] > 0.5  # chance: 0.25
    assert float32["tflite_accuracy"] == pytest.approx(float32["keras_accuracy"], abs=0.01)
    assert float32["agreement"] >= 0.99 and float32["max_abs_diff"] < 1e-3
    path_dynamic, dynamic = export_deployment(name, quantize="dynamic", dirs=project)
    assert path_dynamic.name == "model.dynamic.tflite"
    assert dynamic["tflite_accuracy"] == pytest.approx(dynamic["keras_accuracy"], abs=0.06)
    # Full int8 on a plain conv/ReLU network (MobileNetV3's hard-swish does not survive it,
    # tensorflow/models#11274): parity within a few points.
    profile = get_profile("smoke", custom_image_size=64, batch_size=16, custom_epochs=4,
                          max_train_per_class=40, learning_rate=3e-3)
    train_custom("vehicles_cnn_bn", manifest, profile, project, seed=0)
    path8, int8 = export_deployment("vehicles-vehicles_cnn_bn", quantize="int8", dirs=project,
                                    calibration_images=64)
    assert path8.name == "model.int8.tflite"
    assert int8["tflite_kib"] < 0.5 * (project.models / "vehicles-vehicles_cnn_bn"
                                       / "model.h5").stat().st_size / 1024
    assert int8["tflite_accuracy"] == pytest.approx(int8["keras_accuracy"], abs=0.05)
    assert int8["agreement"] >= 0.9


def test_tflite_export_errors(tmp_path):
    from cnnlab.deploy.export import export_tflite, resolve_model_file

    model = _model("retail_cnn")
    with pytest.raises(ValueError, match="representative images"):
        export_tflite(model, tmp_path / "m.tflite", "int8")
    with pytest.raises(ValueError, match="unknown quantisation"):
        export_tflite(model, tmp_path / "m.tflite", "int4")
    with pytest.raises(FileNotFoundError, match="saved models: none"):
        resolve_model_file("cards-nothing", tmp_path)


def _lambda_model(kind):
    """A tiny model with a Lambda layer: a Python lambda, a named function, or nested."""
    inputs = keras.Input((4,))
    if kind == "python_lambda":
        outputs = keras.layers.Lambda(lambda x: x * 2.0, name="custom_op")(inputs)
    elif kind == "named_function":  # no bytecode: plain Keras loads it even in safe mode
        outputs = keras.layers.Lambda(keras.activations.relu, name="custom_op")(inputs)
    else:  # a Lambda inside a nested Sequential
        inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                                  keras.layers.Lambda(lambda x: x + 1.0, name="custom_op")])
        outputs = inner(inputs)
    return keras.Model(inputs, outputs)


def _save_lambda_model(tmp_path, kind="python_lambda"):
    paths = save_model(_lambda_model(kind), tmp_path / "models", "cards-lambda",
                       {"class_names": ["a", "b", "c", "d"], "dataset": "cards",
                        "image_size": 4, "model": "lambda"})
    keras.backend.clear_session()
    return paths


def _refusal(path):
    return (rf"{re.escape(path.name)} holds a Lambda layer \('custom_op'\) \(arbitrary code\); "
            rf"Keras refuses it in safe mode\. Rebuild the model without Lambda layers or, if "
            rf"you trust the file, load it yourself with "
            rf"keras\.saving\.load_model\(\.\.\., safe_mode=False\)")


def _load_export(path):
    return load_model(path)


def _load_classifier(path):
    from cnnlab.deploy.inference import Classifier

    return Classifier.load(path)


def _load_interpretation(path):
    from cnnlab.evaluation.interpretation import Interpretation

    return Interpretation.from_model(path, pd.DataFrame({"file": [], "label_index": []}))


def _load_evaluate(path):
    from cnnlab.evaluation.leaderboard import evaluate_models

    return evaluate_models([path], pd.DataFrame({"file": [], "label_index": []}),
                           ["a", "b", "c", "d"], latency_batch_sizes=())


def _load_export_deployment(path):
    from cnnlab.deploy.export import export_deployment

    return export_deployment(path, dirs=SimpleNamespace(models=path.parent))


def _load_tabular_round_trip(path):
    """``tabular.training`` saves each model and reloads its ``.h5`` copy to check it."""
    from cnnlab.tabular import training

    run = SimpleNamespace(spec=SimpleNamespace(name="cards"), info={"lambda": {}})
    return training._save_and_check(_lambda_model("python_lambda"), {}, "lambda", run,
                                    SimpleNamespace(models=path.parent), {})


LOADERS = {
    "export.load_model": _load_export,
    "inference.Classifier.load": _load_classifier,
    "interpret.Interpretation.from_model": _load_interpretation,
    "evaluate.evaluate_models": _load_evaluate,
    "export.export_deployment": _load_export_deployment,
    "tabular.training (saved .h5 reloaded)": _load_tabular_round_trip,
}


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_every_loader_refuses_a_lambda_layer(tmp_path, loader, suffix):
    if loader.startswith("tabular") and suffix == ".keras":
        pytest.skip("the tabular round trip reloads the .h5 copy it has just saved")
    path = _save_lambda_model(tmp_path)[suffix]
    with pytest.raises(UnsafeModelError, match=_refusal(path)):
        LOADERS[loader](path)


@pytest.mark.parametrize("kind", ["named_function", "nested"])
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_lambda_layers_are_refused_even_where_keras_safe_mode_loads_them(tmp_path, kind,
                                                                         suffix):
    path = _save_lambda_model(tmp_path, kind)[suffix]
    if kind == "named_function":  # documents why load_model searches the config itself
        assert keras.models.load_model(path, compile=False) is not None
        keras.backend.clear_session()
    with pytest.raises(UnsafeModelError, match=_refusal(path)):
        load_model(path)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_plain_keras_refuses_a_python_lambda_in_both_formats(tmp_path, suffix):
    """Keras 3 safe mode covers the legacy .h5 loader too; load_model answers first."""
    path = _save_lambda_model(tmp_path)[suffix]
    with pytest.raises(ValueError, match="safe_mode=False"):
        keras.models.load_model(path, compile=False)


def test_no_loader_bypasses_export_load_model():
    """Every model load in src/cnnlab goes through export.load_model, in safe mode."""
    risky = ("enable_unsafe_deserialization", "model_from_json", "model_from_config",
             "load_model_from_hdf5")
    calls = {}
    for file in sorted(Path(cnnlab.__file__).parent.rglob("*.py")):
        tree = ast.parse(file.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and any(a.name == "load_model"
                                                        for a in node.names):
                assert node.module == "cnnlab.deploy.export", (file, node.module)
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            unsafe = [k for k in node.keywords if k.arg == "safe_mode"
                      and not (isinstance(k.value, ast.Constant) and k.value.value is True)]
            if (name.endswith("load_model") and name != "load_model") or \
                    name.endswith(risky) or unsafe:
                calls.setdefault(file.name, []).append(ast.unparse(node))
    assert list(calls) == ["export.py"] and len(calls["export.py"]) == 1, calls
    assert "safe_mode=True" in calls["export.py"][0]
