"""Round trips through .keras and .h5 for every model the project trains."""

import keras
import numpy as np
import pytest

from cnnlab.backbones import BACKBONES
from cnnlab.export import list_models, load_metadata, load_model, save_model
from cnnlab.models import CUSTOM_MODELS, build_custom_model, build_transfer_model

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


def test_saving_again_keeps_the_previous_model(tmp_path, capsys):
    model = _model("retail_cnn")
    save_model(model, tmp_path, "cards-retail_cnn")
    save_model(model, tmp_path, "cards-retail_cnn")
    assert "kept the previous cards-retail_cnn.h5" in capsys.readouterr().out
    assert len(list((tmp_path / "previous").glob("cards-retail_cnn-*.h5"))) == 1
    assert [p.name for p in list_models(tmp_path, "cards-")] == ["cards-retail_cnn.keras"]


def test_interrupted_save_leaves_no_half_file(tmp_path, monkeypatch):
    model = _model("retail_cnn")
    save_model(model, tmp_path, "x")
    before = (tmp_path / "x.keras").read_bytes()

    def crash(self, path, *args, **kwargs):
        open(path, "wb").write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_model(model, tmp_path, "x")
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert (tmp_path / "previous").is_dir()
    kept = sorted((tmp_path / "previous").glob("x-*.keras"))
    assert kept and kept[-1].read_bytes() == before


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train it first"):
        load_model(tmp_path / "none.h5")
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a .keras or .h5"):
        load_model(tmp_path / "model.pt")
