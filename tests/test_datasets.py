
import pandas as pd
import pytest
from conftest import write_image

from cnnlab.data import datasets
from cnnlab.data.datasets import Manifest, build_manifest, fetch_dataset, image_stats, pick_images


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


def test_bad_files_are_reported_by_name_and_left_out(tmp_path):
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
    (root / "bird").mkdir()
    manifest = build_manifest(root, "folder")
    excluded = manifest.excluded.set_index("path")["problem"].to_dict()
    assert excluded == {"dog/notes.txt": "not_image", "dog/empty.jpg": "empty"}
    assert ("bird", "empty_class") in set(zip(manifest.findings["label"],
                                             manifest.findings["problem"], strict=True))
    modes = manifest.frame.loc[manifest.frame["label"] == "dog", "mode"]
    assert sorted(modes) == ["L", "P", "RGB", "RGB", "RGB", "RGB", "RGB", "RGBA"]
    assert manifest.classes == ["cat", "dog"]


def test_missing_data_dir_and_class_mismatch(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        fetch_dataset("cards", tmp_path / "nope")
    for split, label in [("train", "a"), ("train", "b"), ("valid", "a"), ("test", "c")]:
        write_image(tmp_path / "d" / split / label / "x.jpg")
    manifest = build_manifest(tmp_path / "d")
    assert manifest.classes == ["a", "b"]  # c has no train images: left out, reported
    assert manifest.excluded.set_index("path")["problem"].to_dict() == {
        "test/c/x.jpg": "class_not_in_train"}


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


def test_vehicles_select_and_rename_the_course_classes(shared_dir):
    manifest = build_manifest(shared_dir / "datasets" / "vehicles", "vehicles")
    assert manifest.classes == ["bus", "car", "motorcycle", "truck"]  # minibus, bike renamed
    assert manifest.counts().loc["car"].to_dict() == {"train": 140, "val": 30, "test": 30}
    assert set(manifest.frame.loc[manifest.frame["label"] == "bus", "path"].str.split("/")
               .str[0]) == {"minibus"}
    every = build_manifest(shared_dir / "datasets" / "vehicles", "vehicles", classes=["all"],
                           rename={})
    assert len(every.classes) == 6 and len(every.frame) == 1199
    # a real exact duplicate in the set (same bytes): left out, named
    assert every.excluded[["path", "problem", "detail"]].values.tolist() == [
        ["truck/truck654.jpg", "duplicate", "same bytes as truck/truck112.jpg"]]
    picked = pick_images(shared_dir / "datasets" / "vehicles", 6)
    assert sorted(picked["label"]) == sorted(every.classes)
    with pytest.raises(ValueError, match=r"\['boat'\] are not folders"):
        build_manifest(shared_dir / "datasets" / "vehicles", "vehicles", classes=["boat"])


def test_too_few_images_for_a_split(tmp_path):
    for index in range(3):
        write_image(tmp_path / "a" / f"{index}.jpg")
        write_image(tmp_path / "b" / f"{index}.jpg")
    with pytest.raises(ValueError, match="needs at least 8 per class"):
        build_manifest(tmp_path)


def _write_rpc(root, skus_per_class=4, views=5):
    """A small RPC download in the real layout: instances_train2019.json + train2019/."""
    import json

    supercategories = ["puffed_food", "drink", "tissue"]
    categories, images, annotations = [], [], []
    for c, supercategory in enumerate(supercategories):
        for k in range(skus_per_class):
            category_id = c * skus_per_class + k + 1
            categories.append({"supercategory": supercategory, "id": category_id,
                               "name": f"{category_id}_{supercategory}"})
            for v in range(views):
                image_id = len(images) + 1
                name = f"20180824-13-{category_id:02d}-{v:02d}-1.jpg"
                write_image(root / "train2019" / name, size=(180, 120))
                images.append({"file_name": name, "width": 180, "height": 120, "id": image_id})
                annotations.append({"area": 1200, "bbox": [40 + v, 30, 60, 40],
                                    "category_id": category_id, "id": image_id,
                                    "image_id": image_id, "iscrowd": 0, "segmentation": []})
    # one image with two boxes: the larger one decides
    annotations.append({"area": 100, "bbox": [0, 0, 10, 10], "category_id": 1,
                        "id": 10_000, "image_id": len(images), "iscrowd": 0})
    (root / "instances_train2019.json").write_text(json.dumps(
        {"info": {}, "licenses": [], "categories": categories, "images": images,
         "annotations": annotations}))
    return len(images)


def test_rpc_coco_labels_group_split_and_leakage(tmp_path, project):
    from cnnlab.data.rpc import read_coco_labels

    raw = tmp_path / "download" / "retail_product_checkout"
    count = _write_rpc(raw)
    labels = read_coco_labels(raw / "instances_train2019.json")
    assert len(labels) == count and labels["sku"].nunique() == 12
    assert sorted(labels["label"].unique()) == ["drink", "puffed food", "tissue"]
    last = labels.set_index("file_name").loc["20180824-13-12-04-1.jpg"]
    assert last["boxes"] == 2 and last["sku"] == "12_tissue"  # larger box wins
    manifest = datasets.prepare_dataset("rpc", tmp_path / "download", project, seed=3, size=64)
    prepared = project.data / "rpc" / "prepared-64"
    assert manifest.root == prepared.resolve()
    assert (prepared / "drink" / "5_drink" / "20180824-13-05-00-1.jpg").is_file()
    assert manifest.frame["width"].eq(64).all() and len(manifest.frame) == count
    # every view of one SKU lands in one split, and each class is in every split
    assert (manifest.frame.groupby("group")["split"].nunique() == 1).all()
    assert (manifest.counts() > 0).all().all()
    leak = manifest.group_leakage().set_index("split")["share %"]
    assert leak["val"] == 0 and leak["test"] == 0
    naive = build_manifest(prepared, "rpc", split="stratified", seed=3)
    naive_leak = naive.group_leakage().set_index("split")["share %"]
    assert naive_leak["test"] > 50  # random split: test products were seen in training
    resplit = manifest.resplit("stratified").group_leakage().set_index("split")["share %"]
    assert resplit["test"] > 50 and len(manifest.resplit("group").frame) == count
    summary = manifest.validation_summary().set_index("problem")["count"]
    assert summary["ok"] == count
    again = datasets.prepare_dataset("rpc", tmp_path / "download", project, seed=3, size=64)
    pd.testing.assert_frame_equal(again.frame, manifest.frame)  # reproducible, resumable
    with pytest.raises(ValueError, match="not a COCO annotation file"):
        (tmp_path / "bad.json").write_text('{"images": []}')
        read_coco_labels(tmp_path / "bad.json")


def test_class_weights_balance_an_imbalanced_split(tmp_path):
    for index in range(30):
        write_image(tmp_path / "d" / "rime" / f"{index}.jpg")
    for index in range(10):
        write_image(tmp_path / "d" / "rainbow" / f"{index}.jpg")
    manifest = build_manifest(tmp_path / "d", "weather")
    weights = manifest.class_weights()
    train = manifest.counts()["train"]
    assert weights[manifest.classes.index("rainbow")] > weights[manifest.classes.index("rime")]
    total = sum(weights[manifest.classes.index(c)] * n for c, n in train.items())
    assert total == pytest.approx(train.sum())  # balanced: weighted count = sample count
    assert datasets.DATASETS["weather"].class_weights and manifest.info["class_weights"]


def test_zip_data_dir_is_extracted_safely(tmp_path, project):
    import zipfile

    archive = tmp_path / "cards.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for split in ("train", "valid", "test"):
            for label in ("a", "b"):
                zipped.write(write_image(tmp_path / "src" / f"{split}{label}.jpg"),
                             f"cards/{split}/{label}/x.jpg")
    root = fetch_dataset("cards", archive, project)
    assert root == (project.data / "cards" / "raw" / "cards").resolve()
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zipped:
        zipped.writestr("../../evil.txt", "x")
    with pytest.raises(ValueError, match="path traversal"):
        fetch_dataset("folder", evil, project)


def test_kaggle_download_prints_version_and_counts(monkeypatch, tmp_path, capsys):
    import kagglehub

    cache = tmp_path / "datasets" / "jehanbhathena" / "weather-dataset" / "versions" / "3"
    write_image(cache / "dataset" / "dew" / "1.jpg")
    (cache / "README.txt").write_text("x")
    monkeypatch.setattr(kagglehub, "dataset_download", lambda handle: str(cache))
    assert datasets.kaggle_download("jehanbhathena/weather-dataset") == cache
    out = capsys.readouterr().out
    assert "version 3" in out and "2 files, 1 images" in out


def test_an_unknown_dataset_name_raises_with_the_registered_names():
    import warnings

    from cnnlab.data.datasets import DATASETS, fetch_dataset, get_dataset_spec

    with pytest.raises(KeyError, match="unknown dataset 'crads'; did you mean 'cards'") as error:
        get_dataset_spec("crads")
    assert all(name in str(error.value) for name in DATASETS)
    with pytest.raises(KeyError, match="choose one of rpc, cards"):
        fetch_dataset("my_holiday_photos")  # no data_dir: not a folder of the user's
    # The user's own folder: read as such, with a warning when the name is close to an entry.
    with pytest.warns(UserWarning, match="did you mean 'vehicles'"):
        assert get_dataset_spec("vehicle", own_folder=True).name == "folder"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a name far from every entry: no warning
        assert get_dataset_spec("my_holiday_photos", own_folder=True).name == "folder"
    assert get_dataset_spec("cards").hflip is False


def test_the_cli_names_the_registered_datasets_for_an_unknown_one(project, capsys):
    from cnnlab.cli import main

    assert main(["manifest", "--dataset", "crads"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnlab manifest: unknown dataset 'crads'; did you mean 'cards'?")
    assert "--data-dir" in err


def test_weather_stand_in_validates_and_trains_from_the_shared_copy(shared_dir, project, capsys):
    from cnnlab import cli

    folder = shared_dir / "datasets" / "weather-mwd"
    spec = datasets.DATASETS["weather-mwd"]
    assert "doi:10.17632/4drtyfjtfy.1" in spec.source and "Ajayi" in spec.source
    assert cli.main(["validate", str(folder)]) == 1  # 1: files would be left out
    report = capsys.readouterr().out
    assert "GIF is not decoded by TensorFlow" in report and "mode RGBA" in report
    assert "25 file(s) would be left out" in report  # the 25 exact duplicates
    assert cli.main(["train", "retail_cnn", "--dataset", "weather-mwd", "--data-dir",
                     str(folder), "--profile", "smoke", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    manifest = datasets.load_manifest("weather-mwd", project)
    assert manifest.classes == ["cloudy", "rain", "shine", "sunrise"]
    assert len(manifest.frame) == 1121 - 25 and len(manifest.excluded) == 25
    saved = [path.name for path in project.models.iterdir()]
    assert any(name.startswith("weather-mwd-retail_cnn") for name in saved), (saved, out)
