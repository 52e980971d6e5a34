import warnings

import pandas as pd
import pytest
from conftest import write_image

from cnnlab import datasets
from cnnlab.datasets import Manifest, build_manifest, fetch_dataset, image_stats, pick_images


def test_stratified_split_is_disjoint_reproducible_and_balanced(sample_root):
    first = build_manifest(sample_root, "sample", seed=7)
    again = build_manifest(sample_root, "sample", seed=7)
    other = build_manifest(sample_root, "sample", seed=8)
    pd.testing.assert_frame_equal(first.frame, again.frame)
    def test_files(m):
        return set(m.frame.loc[m.frame["split"] == "test", "path"])

    assert test_files(first) != test_files(other)
    assert first.frame["path"].is_unique  # each image in exactly one split
    counts = first.counts()
    assert list(counts.columns) == ["train", "val", "test"]
    assert (counts["train"] > counts["val"]).all() and (counts["val"] > 0).all()
    assert (counts.max() - counts.min()).max() <= 1  # stratified: equal shares per class
    assert first.info["synthetic"] is True


def test_manifest_save_load_round_trip(sample_root, tmp_path):
    manifest = build_manifest(sample_root, "sample")
    manifest.save(tmp_path)
    loaded = Manifest.load(tmp_path)
    pd.testing.assert_frame_equal(loaded.frame, manifest.frame)
    assert loaded.classes == ["circle", "square", "star", "triangle"]
    rows = loaded.split("train", max_per_class=2)
    assert len(rows) == 8 and rows["file"].map(lambda f: __import__("os").path.isfile(f)).all()
    with pytest.raises(FileNotFoundError, match="run notebook"):
        Manifest.load(tmp_path / "missing")


def test_bad_input_is_reported_by_name_and_left_out(tmp_path):
    root = tmp_path / "data"
    for index in range(8):
        write_image(root / "cat" / f"rgb{index}.jpg")
    for index in range(5):
        write_image(root / "dog" / f"rgb{index}.jpg")
    write_image(root / "dog" / "gray.jpg", "L")
    write_image(root / "dog" / "palette.png", "P")
    write_image(root / "dog" / "rgba.png", "RGBA")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "dog" / "empty.jpg").write_bytes(b"")
    data = write_image(tmp_path / "whole.jpg").read_bytes()
    (root / "dog" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "dog" / "fake.png").write_bytes(b"this is text, not a PNG")
    (root / "bird").mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = build_manifest(root, "folder")
    messages = "\n".join(str(w.message) for w in caught)
    assert "bird has no images" in messages
    for name, reason in [("notes.txt", "unsupported file type .txt"), ("empty.jpg", "empty"),
                         ("truncated.jpg", "not a readable image"),
                         ("fake.png", "not a readable image")]:
        assert any(p.path.endswith(name) and reason in p.reason for p in manifest.problems), name
    modes = manifest.frame.loc[manifest.frame["label"] == "dog", "mode"]
    assert sorted(modes) == ["L", "P", "RGB", "RGB", "RGB", "RGB", "RGB", "RGBA"]
    assert manifest.classes == ["cat", "dog"]


def test_missing_data_dir_and_class_mismatch(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        fetch_dataset("cards", tmp_path / "nope")
    for split, label in [("train", "a"), ("train", "b"), ("valid", "a"), ("test", "c")]:
        write_image(tmp_path / "d" / split / label / "x.jpg")
    with pytest.raises(ValueError, match=r"\['c'\] appear in test but not in train"):
        build_manifest(tmp_path / "d")


def test_kaggle_failure_names_the_fix(monkeypatch, tmp_path):
    import kagglehub

    def refuse(handle, *args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(kagglehub, "dataset_download", refuse)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(RuntimeError) as error:
        datasets.kaggle_download("gpiosenka/cards-image-datasetclassification")
    text = str(error.value)
    assert "No Kaggle credentials" in text and "KAGGLE_KEY" in text and "--data-dir" in text


def test_dataset_without_download_asks_for_data_dir(project):
    with pytest.raises(ValueError, match="pass --data-dir"):
        fetch_dataset("vehicles", None, project)


def test_cards_keeps_its_own_splits(shared_dir):
    manifest = build_manifest(shared_dir / "datasets" / "cards", "cards")
    assert len(manifest.classes) == 53
    assert manifest.counts().sum().to_dict() == {"train": 3180, "val": 265, "test": 265}
    assert "own split folders" in manifest.info["split_rule"]
    assert image_stats(manifest)["most common size"].eq("224x224").all()


def test_vehicles_get_a_stratified_split(shared_dir):
    manifest = build_manifest(shared_dir / "datasets" / "vehicles", "vehicles")
    assert manifest.counts().loc["car"].to_dict() == {"train": 140, "val": 30, "test": 30}
    picked = pick_images(shared_dir / "datasets" / "vehicles", 6)
    assert sorted(picked["label"]) == sorted(manifest.classes)


def test_too_few_images_for_a_split(tmp_path):
    for index in range(3):
        write_image(tmp_path / "a" / f"{index}.jpg")
        write_image(tmp_path / "b" / f"{index}.jpg")
    with pytest.raises(ValueError, match="needs at least 8 per class"):
        build_manifest(tmp_path)
