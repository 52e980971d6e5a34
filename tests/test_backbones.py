import importlib

import keras
import numpy as np
import pytest

from cnnlab.models import backbones
from cnnlab.models.backbones import BACKBONES, WeightsChoice, resolve_weights
from cnnlab.models.transfer import BackbonePreprocessing, build_backbone, fine_tune_boundary

RAW = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_preprocessing_matches_keras_preprocess_input(name):
    spec = BACKBONES[name]
    inputs = keras.Input((8, 8, 3))
    if spec.preprocessing == "inside":
        # EfficientNet/MobileNetV3 take raw [0, 255]: their preprocess_input is the identity.
        np.testing.assert_allclose(spec.preprocess_input(RAW.copy()), RAW)
        return
    ours = keras.Model(inputs, BackbonePreprocessing(spec.preprocessing)(inputs)).predict(
        RAW, verbose=0)
    np.testing.assert_allclose(ours, spec.preprocess_input(RAW.copy()), rtol=1e-5, atol=1e-4)


def test_unknown_mode_and_backbone_are_refused():
    with pytest.raises(ValueError, match="unknown preprocessing mode"):
        BackbonePreprocessing("bgr")
    with pytest.raises(KeyError, match="choose one of"):
        backbones.get_backbone_spec("resnet9000")


def test_resolve_weights_modes(tmp_path):
    assert resolve_weights("vgg16", "none").source == "none"
    assert resolve_weights("vgg16", "imagenet").source == "imagenet"
    local = resolve_weights("vgg16", "local", tmp_path)
    assert local.source == "none" and "no vgg16_imagenet_notop.weights.h5" in local.label
    (tmp_path / "vgg16_imagenet_notop.weights.h5").write_bytes(b"x")
    for mode in ("local", "imagenet"):
        choice = resolve_weights("vgg16", mode, tmp_path)
        assert choice.source == "file" and choice.label.startswith("imagenet (local file")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_weights("vgg16", str(tmp_path / "missing.weights.h5"))
    with pytest.raises(FileNotFoundError, match="weights-dir"):
        resolve_weights("vgg16", "local", tmp_path / "nope")


def test_download_failure_says_how_to_go_offline(monkeypatch):
    def offline(**kwargs):
        raise OSError("URL fetch failure")

    monkeypatch.setattr(keras.applications, "VGG16", offline)
    with pytest.raises(RuntimeError, match="--weights-dir.*--weights none"):
        build_backbone("vgg16", 32, "imagenet")


def test_auto_weights_fall_back_to_random_init_offline_and_say_so_once(monkeypatch, capsys,
                                                                        tmp_path):
    from cnnlab.models import transfer

    calls = []

    def offline(**kwargs):
        calls.append(kwargs["weights"])
        raise OSError("URL fetch failure on https://storage.googleapis.com/...: refused")

    monkeypatch.setattr(keras.applications, "VGG16", offline)
    monkeypatch.setattr(transfer, "_DOWNLOAD_ERRORS", {})
    first = resolve_weights("vgg16", "auto")
    second = resolve_weights("vgg16", "auto")
    assert first == second and first.source == "none" and not first.is_pretrained
    assert first.label == backbones.OFFLINE_LABEL and "RANDOM INIT" in first.label
    assert calls == ["imagenet"]  # tried once per process
    announced = capsys.readouterr().out
    assert announced.count("WARNING: NO IMAGENET WEIGHTS FOR VGG16") == 1
    assert "URL fetch failure" in announced and "--weights-dir" in announced
    # A local file still wins, and strict "imagenet" still refuses to go on without weights.
    (tmp_path / "vgg16_imagenet_notop.weights.h5").write_bytes(b"x")
    assert resolve_weights("vgg16", "auto", tmp_path).source == "file"
    with pytest.raises(RuntimeError, match="could not download"):
        build_backbone("vgg16", 32, "imagenet")


def test_auto_weights_use_the_download_when_keras_can_fetch_it(monkeypatch):
    from cnnlab.models import transfer

    monkeypatch.setattr(keras.applications, "VGG16", lambda **kwargs: None)
    monkeypatch.setattr(transfer, "_DOWNLOAD_ERRORS", {})
    choice = resolve_weights("vgg16", "auto")
    assert choice.source == "imagenet" and choice.label == "imagenet (keras download)"


def test_min_size_is_checked():
    with pytest.raises(ValueError, match="at least 75 px"):
        build_backbone("inception_v3", 64)


@pytest.mark.parametrize("name,first_unfrozen", [
    ("inception_v3", 249),  # the Keras fine-tuning guide: freeze the first 249 layers
    ("vgg16", None), ("mobilenet_v3_small_075", None), ("efficientnet_b0", None),
])
def test_fine_tune_boundary(name, first_unfrozen):
    model = build_backbone(name, 96 if name == "inception_v3" else 32)
    index = fine_tune_boundary(model)
    if first_unfrozen is not None:
        assert index == first_unfrozen
    spec = BACKBONES[name]
    assert model.layers[index - 1].name.startswith(spec.frozen_through)
    assert not any(layer.name.startswith(spec.frozen_through) for layer in model.layers[index:])


def test_local_imagenet_weights_load(shared_dir):
    folder = shared_dir / "weights"
    choice = resolve_weights("mobilenet_v3_small_075", "local", folder)
    assert choice.source == "file"
    pretrained = build_backbone("mobilenet_v3_small_075", 96, choice)
    random = build_backbone("mobilenet_v3_small_075", 96, "none")
    assert pretrained.count_params() == 583_160
    first = next(w for w in pretrained.weights if "kernel" in w.path)
    other = next(w for w in random.weights if w.path == first.path)
    assert not np.allclose(np.asarray(first), np.asarray(other))


def test_mobilenet_v2_local_imagenet_weights_load_and_classify_real_photos(shared_dir):
    """The converted torchvision ImageNet-1k file loads onto keras.applications.MobileNetV2."""
    choice = resolve_weights("mobilenet_v2", "local", shared_dir / "weights")
    assert choice.source == "file" and choice.path.name == "mobilenet_v2_imagenet_notop.weights.h5"
    pretrained = build_backbone("mobilenet_v2", 96, choice)
    random = build_backbone("mobilenet_v2", 96, "none")
    assert pretrained.count_params() == 2_257_984  # keras.applications, alpha 1.0, no top
    first = next(w for w in pretrained.weights if "kernel" in w.path)
    other = next(w for w in random.weights if w.path == first.path)
    assert not np.allclose(np.asarray(first), np.asarray(other))
    assert BACKBONES["mobilenet_v2"].preprocessing == "tf"  # mobilenet_v2.preprocess_input


def test_mobilenet_v2_boundary_unfreezes_blocks_13_to_16():
    backbone = build_backbone("mobilenet_v2", 32, "none")
    names = [layer.name for layer in backbone.layers[fine_tune_boundary(backbone):]]
    assert names[0] == "block_13_expand" and "block_16_project" in names
    assert not any(name.startswith("block_12") for name in names)


@pytest.mark.slow  # ~80 s on 2 shared CPU cores: eight backbones, each built three times
@pytest.mark.filterwarnings("ignore:`input_shape` is undefined or non-square")
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_local_imagenet_file_builds_the_graph_of_the_imagenet_download(name, tmp_path,
                                                                       monkeypatch):
    """A local file runs in the graph weights="imagenet" builds (EfficientNet: tf#49930)."""
    spec, size = BACKBONES[name], BACKBONES[name].min_size
    kwargs = dict(spec.kwargs, include_top=False, input_shape=(size, size, 3))
    weights_file = tmp_path / spec.weights_filename
    spec.constructor(weights=None, **kwargs).save_weights(weights_file)
    fetched = []

    def offline_get_file(fname, *args, **kwargs):  # the "download" is the file just saved
        fetched.append(fname)
        return str(weights_file)

    application = importlib.import_module(f"keras.src.applications.{spec.module}")
    monkeypatch.setattr(application.file_utils, "get_file", offline_get_file)
    downloaded = spec.constructor(weights="imagenet", **kwargs)
    assert fetched  # the reference really went through Keras' ImageNet branch
    local = build_backbone(name, size, WeightsChoice("file", weights_file, "test file"))
    assert ([type(layer).__name__ for layer in local.layers]
            == [type(layer).__name__ for layer in downloaded.layers])
    images = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(local(images, training=False)),
                               keras.ops.convert_to_numpy(downloaded(images, training=False)),
                               rtol=1e-5, atol=1e-4)
