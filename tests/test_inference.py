"""Classifying a folder of a user's own files: every readable one, a reason for each other."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import bomb_png
from PIL import Image

from cnnlab.data.images import load_image
from cnnlab.deploy.export import save_model
from cnnlab.deploy.inference import Classifier

CLASSES = ["ace of clubs", "joker", "queen"]
SIZE = 16
RED, GREEN, BLUE = (220, 30, 30), (30, 220, 30), (30, 30, 220)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Classifier:
    """A saved and reloaded tiny model that calls red ace of clubs, green joker, blue queen."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    kernel = keras.initializers.Constant(np.eye(3) * 8 - 2)
    outputs = keras.layers.Dense(3, activation="softmax", kernel_initializer=kernel)(x)
    paths = save_model(keras.Model(inputs, outputs), tmp_path_factory.mktemp("models"),
                       "cards-tiny", {"class_names": CLASSES, "model": "tiny"})
    keras.backend.clear_session()
    return Classifier.load(paths["folder"])


class BatchSpy:
    """A model stand-in that records the batch size of every call and delegates to ``model``."""

    def __init__(self, model):
        self.model, self.batches = model, []

    def _record(self, method, x, *args, **kwargs):
        self.batches.append(len(x))
        return getattr(self.model, method)(x, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        return self._record("predict", x, *args, **kwargs)

    def predict_on_batch(self, x, *args, **kwargs):
        return self._record("predict_on_batch", x, *args, **kwargs)

    def __call__(self, x, *args, **kwargs):
        return self._record("__call__", x, *args, **kwargs)


def _photo(path: Path, colour: tuple[int, int, int], size=(40, 30), **save) -> Path:
    """A noisy single-colour photo (JPEG or PNG by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(sum(colour) + size[0])
    pixels = np.clip(np.array(colour) + rng.normal(0, 10, (size[1], size[0], 3)), 0, 255)
    Image.fromarray(pixels.astype(np.uint8)).save(path, **save)
    return path


@pytest.fixture()
def photos(tmp_path: Path) -> tuple[list, dict[str, str], dict[str, str]]:
    """A user's folder: good photos (two named 1.jpg) among files that are no image.

    Returns:
        ``(files in the order passed, {given path: expected top-1 class of each good file},
        {given path: pattern of the reason of each bad file})``.
    """
    good = {
        _photo(tmp_path / "ace of clubs" / "1.jpg", RED, quality=95): "ace of clubs",
        _photo(tmp_path / "joker" / "1.jpg", GREEN, quality=95): "joker",
        _photo(tmp_path / "queen.png", BLUE, size=(120, 90)): "queen",
        _photo(tmp_path / "more" / "green 2.jpg", GREEN, quality=95): "joker",
        _photo(tmp_path / "red.png", RED): "ace of clubs",
    }
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "page.jpg").write_text("<!DOCTYPE html>\n<html><body><img src='a.jpg'>"
                                       "</body></html>")
    (tmp_path / "drawing.svg").write_text('<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org'
                                          '/2000/svg" width="4" height="4"/>')
    (tmp_path / "x.jpg").mkdir()
    whole = _photo(tmp_path / "cut.jpg", BLUE, size=(64, 64), quality=95).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[:len(whole) // 2])
    bomb_png(tmp_path / "bomb.png")
    limit = f"{2 * Image.MAX_IMAGE_PIXELS:,}"
    bad = {
        tmp_path / "empty.jpg": r"is not a readable image: it is empty \(0 bytes\)",
        tmp_path / "page.jpg": r"is not a readable image: it is an HTML page",
        tmp_path / "drawing.svg": r"is not a readable image: it is an SVG drawing",
        tmp_path / "x.jpg": r"is a folder, not an image file",
        tmp_path / "missing.jpg": r"does not exist",
        tmp_path / "bomb.png": rf"is a decompression bomb: 1,600,000,000 pixels, over "
                               rf"Pillow's limit of {limit} \(2 x PIL\.Image\.MAX_IMAGE_PIXELS\)"
                               rf"; raise PIL\.Image\.MAX_IMAGE_PIXELS only for files you trust",
        tmp_path / "cut.jpg": r"is not a readable image: it is a truncated JPEG file",
    }
    good_files, bad_files = list(good), list(bad)
    # Interleaved, one good file given as a str; bad files first and last.
    files = [bad_files[0], str(good_files[0]), *bad_files[1:3], *good_files[1:3],
             bad_files[3], *good_files[3:], *bad_files[4:]]
    return files, {str(f): c for f, c in good.items()}, {str(f): p for f, p in bad.items()}


def test_predict_files_classifies_every_readable_file_and_reports_the_others(classifier,
                                                                            photos):
    files, good, bad = photos
    spy = BatchSpy(classifier.model)
    table = dataclasses.replace(classifier, model=spy).predict_files(files, top_k=2,
                                                                     batch_size=2)
    assert spy.batches == [2, 2, 1]  # the 5 readable files, never all in one array
    assert list(table.columns) == ["file", "rank", "class", "probability", "error"]
    assert list(dict.fromkeys(table["file"])) == [str(f) for f in files]  # given order, paths
    assert table["rank"].dtype == "Int64" and table["probability"].dtype == "float64"
    for file, expected in good.items():
        rows = table[table["file"] == file]
        assert rows["rank"].tolist() == [1, 2] and (rows["error"] == "").all(), file
        assert rows["class"].iloc[0] == expected, file
        assert rows["probability"].is_monotonic_decreasing and rows["probability"].sum() <= 1
        one = classifier.model.predict(load_image(file, SIZE)[None], verbose=0)[0]
        assert rows["probability"].iloc[0] == pytest.approx(one.max(), abs=1e-6), file
    for file, reason in bad.items():
        rows = table[table["file"] == file]
        assert len(rows) == 1, file
        row = rows.iloc[0]
        assert pd.isna(row["rank"]) and pd.isna(row["class"]) and pd.isna(row["probability"])
        assert re.match(reason, row["error"]), (file, row["error"])
    assert "re-save" not in table.loc[table["file"].str.endswith("bomb.png"), "error"].item()
    # Same base name, different folders: two files, two sets of rows.
    assert table["file"].str.endswith("1.jpg").sum() == 4
    assert len(table) == 2 * len(good) + len(bad)


def test_predict_files_raise_stops_at_the_first_bad_file_and_names_it(classifier, photos):
    files, good, bad = photos
    first_bad = next(f for f in files if str(f) in bad)
    with pytest.raises(ValueError, match=re.escape(str(first_bad)) + " is not a readable "
                                         "image: it is empty"):
        classifier.predict_files(files, errors="raise")
    missing = next(f for f in files if str(f).endswith("missing.jpg"))
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing)) + " does not exist"):
        classifier.predict_files([*good, missing], errors="raise")
    assert len(classifier.predict_files(list(good), top_k=1, errors="raise")) == len(good)
    with pytest.raises(ValueError, match="errors='skip'; use 'report' or 'raise'"):
        classifier.predict_files(list(good), errors="skip")


def test_predict_files_of_only_bad_files_or_none_keeps_the_columns(classifier, tmp_path):
    table = classifier.predict_files([tmp_path / "gone.jpg", tmp_path])
    assert table["error"].str.match("does not exist|is a folder").all() and len(table) == 2
    empty = classifier.predict_files([])
    assert list(empty.columns) == ["file", "rank", "class", "probability", "error"]
    assert empty.empty


def test_photos_from_outside_the_dataset_are_picked_by_pattern_and_seed(tmp_path):
    from cnnlab.deploy.inference import pick_files

    for i in range(10):
        (tmp_path / f"{i}_frontal.jpg").write_bytes(b"x")
        (tmp_path / f"{i}_kitchen.jpg").write_bytes(b"x")
    picked = pick_files(tmp_path, "*_frontal.jpg", count=6, seed=1)
    assert len(picked) == 6 and all(p.name.endswith("_frontal.jpg") for p in picked)
    assert picked == sorted(picked) == pick_files(tmp_path, "*_frontal.jpg", 6, seed=1)
    assert picked != pick_files(tmp_path, "*_frontal.jpg", 6, seed=2)
    assert len(pick_files(tmp_path, "*_frontal.jpg", count=50)) == 10
    with pytest.raises(FileNotFoundError, match="matches '\\*.png'"):
        pick_files(tmp_path, "*.png")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        pick_files(tmp_path / "missing")
