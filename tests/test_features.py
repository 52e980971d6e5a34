"""Cached backbone features: keys, reuse, exactness, and training equivalence."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import keras
import numpy as np
import pytest
from PIL import Image

from cnnlab.data.datasets import build_manifest
from cnnlab.models.transfer import build_transfer_model, find_backbone
from cnnlab.training import cached_features as features
from cnnlab.training.fine_tuning import fine_tune
from cnnlab.training.fitting import TrainingData, compile_classifier

BACKBONE = "mobilenet_v3_small_075"


@pytest.fixture()
def weights_file(shared_dir):
    return shared_dir / "weights" / f"{BACKBONE}_imagenet_notop.weights.h5"


@pytest.fixture()
def data(sample_root):
    return TrainingData(build_manifest(sample_root, "sample"), 32, 8, hflip=True, seed=3)


def test_cache_is_computed_once_then_read(data, weights_file, project, capsys):
    model = build_transfer_model(BACKBONE, data.num_classes, 32, str(weights_file))
    cache = features.feature_cache(model, "sample", 32, project.data)
    first, labels = cache.features("train", data.train_rows)
    assert "computed" in capsys.readouterr().out
    again, labels_again = cache.features("train", data.train_rows)
    assert "read from" in capsys.readouterr().out
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(labels, labels_again)
    assert first.shape == (len(data.train_rows), model.get_layer("pool").output.shape[-1])
    path = cache.path("train", data.train_rows)
    assert path.is_file() and path.parent.parent == project.data / "sample" / "features"
    assert f"{BACKBONE}-32px-" in path.parent.name
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files


def test_cache_key_changes_with_weights_size_and_manifest(data, weights_file, project):
    pretrained = build_transfer_model(BACKBONE, data.num_classes, 32, str(weights_file))
    random_init = build_transfer_model(BACKBONE, data.num_classes, 32, "none")
    larger = build_transfer_model(BACKBONE, data.num_classes, 48, str(weights_file))
    folders = {features.feature_cache(m, "sample", size, project.data).folder
               for m, size in ((pretrained, 32), (random_init, 32), (larger, 48))}
    assert len(folders) == 3
    # The head is not part of the key: a new head on the same backbone reuses the features.
    other_head = build_transfer_model(BACKBONE, data.num_classes + 1, 32, str(weights_file))
    assert (features.feature_cache(other_head, "sample", 32, project.data).folder
            == features.feature_cache(pretrained, "sample", 32, project.data).folder)
    fewer = TrainingData(data.manifest, 32, 8, max_train_per_class=3, seed=3)
    assert (features.split_fingerprint(fewer.train_rows)
            != features.split_fingerprint(data.train_rows))
    relabelled = data.train_rows.assign(label_index=data.train_rows["label_index"][::-1].values)
    assert (features.split_fingerprint(relabelled)
            != features.split_fingerprint(data.train_rows))


def _invert(image):
    """Rewrites ``image`` in place with other pixels: same name, other bytes."""
    with Image.open(image) as opened:
        pixels = np.asarray(opened.convert("RGB"))
    Image.fromarray(255 - pixels).save(image)


@pytest.fixture()
def copies(sample_root, tmp_path):
    """Train rows of the sample and of two copies with the same file names and labels.

    ``redownload``: one train image (``changed``) has other bytes; ``moved``: the same bytes
    under another root.
    """
    manifest = build_manifest(sample_root, "sample")
    original = manifest.split("train")
    changed = original["path"][0]
    shutil.copytree(sample_root, tmp_path / "redownload")
    _invert(tmp_path / "redownload" / changed)
    shutil.copytree(sample_root, tmp_path / "moved")
    rows = SimpleNamespace(original=original, changed=changed, moved_root=tmp_path / "moved",
                           classes=manifest.classes)
    for name in ("redownload", "moved"):
        setattr(rows, name, build_manifest(tmp_path / name, "sample").split("train"))
        assert getattr(rows, name)["path"].tolist() == original["path"].tolist()
        assert getattr(rows, name)["label_index"].tolist() == original["label_index"].tolist()
    return rows


def test_split_fingerprint_keys_the_root_and_the_content_of_every_file(copies, sample_root):
    fingerprint = features.split_fingerprint
    assert fingerprint(copies.original) == fingerprint(
        build_manifest(sample_root, "sample").split("train"))
    assert fingerprint(copies.redownload) != fingerprint(copies.original)  # other bytes
    assert fingerprint(copies.moved) != fingerprint(copies.original)  # another root
    # Rows without the manifest's sha256 (built by hand) are keyed by the files' bytes, read
    # when the key is computed: rewriting a file under the same name changes the key.
    by_hand = copies.moved[["file", "label_index"]]
    before = fingerprint(by_hand)
    assert fingerprint(by_hand.assign(sha256="")) == before
    _invert(copies.moved_root / copies.changed)
    assert fingerprint(by_hand) != before
    with pytest.raises(FileNotFoundError, match="does not exist; rebuild the manifest"):
        fingerprint(by_hand.assign(file=by_hand["file"] + ".gone"))


def test_cache_of_another_copy_of_the_dataset_is_computed_not_read(copies, project, capsys):
    keras.utils.set_random_seed(5)
    model = build_transfer_model(BACKBONE, len(copies.classes), 32, "none")
    cache = features.feature_cache(model, "sample", 32, project.data)
    first, _ = cache.features("train", copies.original)
    capsys.readouterr()
    for name in ("redownload", "moved"):
        rows = getattr(copies, name)
        again, _ = cache.features("train", rows)
        out = capsys.readouterr().out
        assert "computed" in out and "read from" not in out, name
        assert cache.path("train", rows) != cache.path("train", copies.original)
        changed = rows.index[rows["path"] == copies.changed]
        # Relative tolerances: features of a randomly initialised backbone are tiny.
        if name == "redownload":  # the new bytes' features, not the old file's
            assert not np.allclose(again[changed], first[changed], rtol=1e-2, atol=0)
        np.testing.assert_allclose(np.delete(again, changed, axis=0),
                                   np.delete(first, changed, axis=0), rtol=1e-5, atol=0)
    cache.features("train", copies.original)
    assert "read from" in capsys.readouterr().out  # the first copy's file is still its own


def test_head_on_features_predicts_exactly_what_the_full_model_predicts(data, weights_file):
    model = build_transfer_model(BACKBONE, data.num_classes, 32, str(weights_file))
    head = features.head_model(model)
    assert head.get_layer("head") is model.get_layer("head")  # shared, not copied
    images = np.random.default_rng(0).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    pooled = features.feature_extractor(model).predict(images, verbose=0)
    np.testing.assert_allclose(head.predict(pooled, verbose=0), model.predict(images, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_model_without_pool_layer_is_refused():
    flat = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
                             keras.layers.Dense(2)], name="flat")
    with pytest.raises(ValueError, match="no layer named 'pool'"):
        features.feature_extractor(flat)


def test_training_on_cached_features_equals_training_the_frozen_model(data, weights_file,
                                                                      project):
    """Same head, same seed, same batches: identical result within float noise."""
    results = {}
    for mode in ("live", "cached"):
        keras.utils.set_random_seed(11)
        model = build_transfer_model(BACKBONE, data.num_classes, 32, str(weights_file),
                                     dropout=0.0)
        find_backbone(model).trainable = False
        if mode == "live":
            compile_classifier(model, 1e-2)
            train = data.train_ds(augment=False)
            model.fit(train, epochs=3, verbose=0, shuffle=False)
        else:
            cache = features.feature_cache(model, "sample", 32, project.data)
            x, y = cache.features("train", data.train_rows)
            head = features.head_model(model)
            compile_classifier(head, 1e-2)
            head.fit(features.features_dataset(x, y, data.batch_size, True, data.seed),
                     epochs=3, verbose=0, shuffle=False)
        results[mode] = model.predict(data.val_ds(), verbose=0)
    np.testing.assert_allclose(results["cached"], results["live"], atol=1e-4)


def test_fine_tune_says_when_the_cache_is_off(data, weights_file, project, capsys):
    model = build_transfer_model(BACKBONE, data.num_classes, 32, str(weights_file))
    fine_tune(model, data, freeze_epochs=1, epochs=0, cache_features=False, dirs=project,
              save=False, verbose=0)
    out = capsys.readouterr().out
    assert "feature cache off (cache_features is off: stage 1 trains on live, augmented" in out
    assert not (project.data / "sample" / "features").exists()
