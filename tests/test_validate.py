"""Validation on a corpus of bad and odd files written here with Pillow and raw bytes."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from conftest import bomb_png, write_image
from PIL import Image

from cnnlab.cli import main
from cnnlab.data.datasets import build_manifest
from cnnlab.data.pipeline import make_dataset
from cnnlab.data.validate import PROBLEMS, safe_extract, validate_folder


def _jpeg_bytes(seed: int = 0, size=(48, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
        buffer, "JPEG")
    return buffer.getvalue()


def _png_bytes(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (30, 40, 3), np.uint8)).save(
        buffer, "PNG")
    return buffer.getvalue()


def _rotated(path):
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation 6: shown rotated 90 degrees clockwise
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (60, 20), (200, 10, 10)).save(path, exif=exif)


def _write_corpus(root):
    """Returns {relative path: expected problem ('' = clean)}; class findings separately."""
    good = [f"train/{label}/good{i}.jpg" for label in ("cat", "dog", "ace of clubs")
            for i in range(4)] + [f"{split}/{label}/good{split}.jpg" for split in ("val", "test")
                                  for label in ("cat", "dog", "ace of clubs")]
    for index, path in enumerate(good):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(_jpeg_bytes(index))
    cases = {}

    def raw(path, data, problem):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
        cases[path] = problem

    def image(path, problem, mode="RGB", **kwargs):
        write_image(root / path, mode, **kwargs)
        cases[path] = problem

    jpeg, png = _jpeg_bytes(99), _png_bytes(98)
    raw("train/cat/notes.txt", b"not an image", "not_image")
    raw("train/cat/README.md", b"# about cats", "not_image")
    raw("train/cat/photo.heic", b"ftypheic" + bytes(40), "not_image")
    raw("train/cat/fake.png", b"this is text, not a PNG", "not_image")
    raw("train/cat/html.jpg", b"<html><body>403 Forbidden</body></html>", "not_image")
    raw("train/cat/empty.jpg", b"", "empty")
    raw("train/dog/empty.png", b"", "empty")
    raw("train/dog/truncated.jpg", jpeg[: len(jpeg) // 2], "truncated")
    raw("train/dog/truncated.png", png[: len(png) // 2], "truncated")
    raw("train/dog/header_only.jpg", jpeg[:200], "truncated")
    idat = png.index(b"IDAT") + 8  # keep the chunk structure, break the compressed pixels
    raw("train/dog/corrupt.png", png[:idat] + b"\xff" * 64 + png[idat + 64:], "undecodable")
    image("train/cat/gray.jpg", "mode", "L")
    image("train/cat/palette.png", "mode", "P")
    image("train/cat/rgba.png", "mode", "RGBA")
    image("train/cat/gray_alpha.png", "mode", "LA")
    image("train/cat/bilevel.png", "mode", "1")
    image("train/cat/cmyk.jpg", "mode", "CMYK")
    image("train/cat/animated.gif", "format", "P")  # TensorFlow blacks out transparent pixels
    image("train/dog/16bit.png", "mode", "I;16")
    image("train/dog/bitmap.bmp", "", "RGB")
    image("train/dog/UPPER.JPG", "", "RGB", fmt="JPEG")
    image("train/dog/png_named.jpg", "", "RGB", fmt="PNG")
    _rotated(root / "train/dog/rotated.jpg")
    cases["train/dog/rotated.jpg"] = "exif_rotated"
    image("train/dog/photo.webp", "format", "RGB")
    image("train/dog/scan.tiff", "format", "RGB")
    raw("train/dog/copy_a.jpg", _jpeg_bytes(107), "")
    raw("train/dog/copy_b.jpg", _jpeg_bytes(107), "duplicate")
    raw("train/cat/leak.jpg", _jpeg_bytes(108), "")
    raw("test/cat/leak_copy.jpg", _jpeg_bytes(108), "cross_split_duplicate")
    raw("val/cat/leak_copy.jpg", _jpeg_bytes(108), "cross_split_duplicate")
    raw("train/cat/conflict.jpg", _jpeg_bytes(112), "label_conflict")  # same bytes, two classes
    raw("train/dog/conflict.jpg", _jpeg_bytes(112), "label_conflict")
    raw("train/dog/filed_twice.jpg", _jpeg_bytes(113), "label_conflict")  # ... and two splits
    raw("test/cat/filed_twice.jpg", _jpeg_bytes(113), "label_conflict")
    raw("test/bird/bird.jpg", _jpeg_bytes(109), "class_not_in_train")
    raw("val/Ace_of_Clubs/ace.jpg", _jpeg_bytes(110), "class_not_in_train")
    raw("train/owl/owl.jpg", _jpeg_bytes(111), "")  # a class with train images only
    raw("train/cat/.DS_Store", b"\x00\x01", None)  # hidden: never scanned
    (root / "train" / "horse").mkdir(parents=True)
    raw("train/fish/broken.jpg", b"", "empty")
    return good, cases


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "data"
    good, cases = _write_corpus(root)
    report = validate_folder(root)
    files = report.files.set_index("path")
    return root, good, cases, report, files


CASES = [
    "train/cat/notes.txt", "train/cat/README.md", "train/cat/photo.heic", "train/cat/fake.png",
    "train/cat/html.jpg", "train/cat/empty.jpg", "train/dog/empty.png",
    "train/dog/truncated.jpg", "train/dog/truncated.png", "train/dog/header_only.jpg",
    "train/dog/corrupt.png", "train/cat/gray.jpg", "train/cat/palette.png",
    "train/cat/rgba.png", "train/cat/gray_alpha.png", "train/cat/bilevel.png",
    "train/cat/cmyk.jpg", "train/cat/animated.gif", "train/dog/16bit.png",
    "train/dog/bitmap.bmp", "train/dog/UPPER.JPG", "train/dog/png_named.jpg",
    "train/dog/rotated.jpg", "train/dog/photo.webp", "train/dog/scan.tiff",
    "train/dog/copy_b.jpg", "test/cat/leak_copy.jpg", "val/cat/leak_copy.jpg",
    "train/cat/conflict.jpg", "train/dog/conflict.jpg", "train/dog/filed_twice.jpg",
    "test/cat/filed_twice.jpg",
    "test/bird/bird.jpg", "val/Ace_of_Clubs/ace.jpg", "train/fish/broken.jpg",
]


def test_corpus_size(corpus):
    _, _, cases, _, _ = corpus
    bad_or_odd = [p for p, problem in cases.items() if problem is not None]
    print(f"\nbad-file corpus: {len(bad_or_odd)} bad or odd files, "
          f"{len(CASES)} checked one by one, plus 3 class-level findings and a zip slip")
    assert len(bad_or_odd) >= 25 and set(CASES) <= set(cases)


@pytest.mark.parametrize("path", CASES)
def test_each_bad_file_is_classified(corpus, path):
    root, _, cases, _, files = corpus
    expected = cases[path]
    row = files.loc[path]
    assert row["problem"] == expected, (path, row["problem"], row["detail"])
    action = PROBLEMS[expected].action if expected else "ok"
    assert row["action"] == action
    assert (root / path).exists()  # validation never moves or deletes


def test_hidden_files_are_not_scanned(corpus):
    _, _, _, _, files = corpus
    assert not any(".DS_Store" in p for p in files.index)


def test_messages_name_the_problem(corpus):
    _, _, _, report, files = corpus
    assert "truncated" in files.loc["train/dog/truncated.jpg", "detail"]
    assert files.loc["train/dog/copy_b.jpg", "detail"] == "same bytes as train/dog/copy_a.jpg"
    assert files.loc["test/cat/leak_copy.jpg", "detail"] == "same bytes as train/cat/leak.jpg"
    assert files.loc["train/dog/rotated.jpg", "detail"] == "EXIF orientation 6"
    assert files.loc["train/cat/cmyk.jpg", "detail"] == "mode CMYK"
    assert ".txt is not an image" in files.loc["train/cat/notes.txt", "detail"]
    assert files.loc["train/cat/conflict.jpg", "detail"] == \
        "filed under 'cat' and 'dog': same bytes as train/dog/conflict.jpg"
    text = str(report)
    assert "[excluded] truncated: train/dog/truncated.jpg" in text
    assert "[excluded] label_conflict: test/cat/filed_twice.jpg: filed under 'cat' and 'dog': " \
           "same bytes as train/dog/filed_twice.jpg" in text


def test_class_level_findings(corpus):
    _, _, _, report, _ = corpus
    found = {(r.split, r.label, r.problem) for r in report.classes.itertuples()}
    assert ("train", "horse", "empty_class") in found
    assert ("train", "fish", "empty_class") in found  # its only file is bad
    assert ("val", "Ace_of_Clubs", "class_name_mismatch") in found
    assert ("test", "owl", "class_missing_from_split") in found
    assert ("val", "owl", "class_missing_from_split") in found
    assert not any(label in ("horse", "fish") and problem == "class_missing_from_split"
                   for _, label, problem in found)
    summary = report.summary().set_index("problem")["count"]
    assert summary["not_image"] == 5 and summary["mode"] == 7 and summary["ok"] > 15


def test_manifest_uses_clean_and_converted_files_and_the_pipeline_reads_them(corpus, tmp_path):
    root, good, cases, report, _ = corpus
    manifest = build_manifest(root, "folder", converted_dir=tmp_path / "converted",
                              report=report)
    manifest.folder = tmp_path
    paths = set(manifest.frame["path"])
    kept = {p for p, problem in cases.items()
            if problem is not None and (not problem or PROBLEMS[problem].action == "converted")}
    assert paths == set(good) | kept
    assert manifest.classes == ["ace of clubs", "cat", "dog", "owl"]
    assert len(manifest.excluded) == sum(
        1 for p in cases.values() if p and PROBLEMS[p].action == "excluded")
    row = manifest.frame.set_index("path").loc["train/dog/rotated.jpg"]
    rotated = row["converted"]
    assert rotated == f"converted/train/dog/rotated.jpg.{row['sha256'][:12]}.png"
    with Image.open(tmp_path / rotated) as upright:
        assert upright.size == (20, 60) and upright.mode == "RGB"  # rotated, not 60x20
    files = manifest.files()
    images = np.concatenate([x.numpy() for x, _ in make_dataset(files, [0] * len(files), 16)])
    assert images.shape == (len(files), 16, 16, 3) and images.dtype == np.uint8
    without = build_manifest(root, "folder", report=report)
    assert "train/dog/rotated.jpg" not in set(without.frame["path"])


def _write(root, path, data):
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_bytes(data)


@pytest.mark.parametrize("copies", [
    ("train/cat/same.jpg", "train/dog/same.jpg"),  # two classes of one split
    ("train/cat/same.jpg", "test/dog/same.jpg"),  # two classes in two splits
    ("train/cat/a.jpg", "train/dog/b.jpg", "val/cat/c.jpg"),  # and a same-class copy
    ("cat/same.jpg", "dog/same.jpg"),  # no split folders
], ids=["same_split", "across_splits", "three_copies", "no_splits"])
def test_same_bytes_under_two_classes_is_a_label_conflict(tmp_path, copies):
    root = tmp_path / "data"
    splits = ("train/", "val/", "test/") if copies[0].startswith("train/") else ("",)
    per_class = 1 if splits[0] else 8  # a manifest splits folders of 8+ images per class
    clean = [f"{split}{label}/clean{i}.jpg" for split in splits for label in ("cat", "dog")
             for i in range(per_class)]
    for seed, path in enumerate(clean, start=10):
        _write(root, path, _jpeg_bytes(seed))
    for path in copies:
        _write(root, path, _jpeg_bytes(7))
    report = validate_folder(root)
    assert set(report.usable()["path"]) == set(clean)
    files = report.files.set_index("path")
    for path in copies:
        row = files.loc[path]
        others = ", ".join(p for p in copies if p != path)
        assert (row["problem"], row["action"]) == ("label_conflict", "excluded"), path
        assert row["detail"] == f"filed under 'cat' and 'dog': same bytes as {others}"
    assert sorted(report.excluded()["path"]) == sorted(copies)  # every copy, none kept
    assert not set(copies) & set(report.usable()["path"])
    findings = report.findings().set_index("path")
    plural = "s" if len(copies) > 2 else ""
    assert set(findings.loc[list(copies), "fix"]) == {
        f"the same image is filed under 'cat' and 'dog'; keep it in the right class folder "
        f"and delete the other{plural}"}
    assert report.summary().set_index("problem").loc["label_conflict", "count"] == len(copies)
    manifest = build_manifest(root, "folder", report=report)
    assert not set(copies) & set(manifest.frame["path"])
    assert sorted(manifest.excluded["path"]) == sorted(copies)


def test_same_class_copies_stay_duplicates_when_names_differ_only_in_spelling(tmp_path):
    root = tmp_path / "data"
    for split, label in (("train", "ace of clubs"), ("val", "Ace_of_Clubs")):
        _write(root, f"{split}/{label}/ace.jpg", _jpeg_bytes(3))
    files = validate_folder(root).files.set_index("path")
    assert files.loc["train/ace of clubs/ace.jpg", "action"] == "ok"
    assert files.loc["val/Ace_of_Clubs/ace.jpg", "problem"] == "cross_split_duplicate"


def test_fix_moves_excluded_files_to_quarantine(tmp_path):
    root = tmp_path / "data"
    _, cases = _write_corpus(root)
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert main(["validate", str(root)]) == 1  # excluded files found, nothing moved
    assert (root / "train/dog/truncated.jpg").exists()
    assert main(["validate", str(root), "--fix"]) == 0
    quarantine = root / ".quarantine"
    moved = sorted(p.relative_to(quarantine).as_posix() for p in quarantine.rglob("*")
                   if p.is_file())
    excluded = sorted(p for p, c in cases.items() if c and PROBLEMS[c].action == "excluded")
    assert moved == excluded
    after = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert len(after) == len(before)  # nothing deleted
    again = validate_folder(root)
    assert again.excluded().empty
    assert main(["validate", str(root)]) == 0


def test_zip_with_path_traversal_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("cards/train/ace/ok.jpg", _jpeg_bytes(1))
        zipped.writestr("../evil", b"owned")
    with pytest.raises(ValueError, match=r"'\.\./evil'.*path traversal"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil").exists() and not (tmp_path / "out").exists()
    absolute = tmp_path / "abs.zip"
    with zipfile.ZipFile(absolute, "w") as zipped:
        zipped.writestr("/etc/evil", b"owned")
    with pytest.raises(ValueError, match="path traversal"):
        safe_extract(absolute, tmp_path / "out")
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zipped:
        zipped.writestr("cards/train/ace/ok.jpg", _jpeg_bytes(1))
    assert (safe_extract(good, tmp_path / "out") / "cards/train/ace/ok.jpg").is_file()


def test_validate_real_datasets(shared_dir):
    cards = validate_folder(shared_dir / "datasets" / "cards")
    assert len(cards.files) == 3710 and cards.excluded().empty
    vehicles = validate_folder(shared_dir / "datasets" / "vehicles")
    assert len(vehicles.files) == 1200
    assert vehicles.excluded()["path"].tolist() == ["truck/truck654.jpg"]  # a real duplicate
    print(f"\ncards: {cards.summary().to_dict('records')}\n"
          f"vehicles: {vehicles.summary().to_dict('records')}")


def test_a_decompression_bomb_is_excluded_with_pillows_limit(tmp_path):
    for name in ("a.png", "b.png"):
        write_image(tmp_path / "cat" / name)
    bomb_png(tmp_path / "cat" / "huge.png")
    files = validate_folder(tmp_path).files.set_index("path")
    row = files.loc["cat/huge.png"]
    assert row["problem"] == "decompression_bomb" and row["action"] == "excluded"
    assert "decompression bomb" in row["detail"].lower()


def test_a_changed_file_under_the_same_name_gets_a_new_converted_copy_and_cache(tmp_path):
    from cnnlab.data.pipeline import cache_key

    source = tmp_path / "data" / "cat" / "a.gif"
    for index in range(10):
        for label in ("cat", "dog"):
            write_image(tmp_path / "data" / label / f"{label}{index}.png")
    write_image(source, mode="P", size=(20, 20))  # a GIF: trained from an RGB PNG copy
    first = build_manifest(tmp_path / "data", "x", converted_dir=tmp_path / "converted")
    key = cache_key(first.files(), 16)
    write_image(source, mode="P", size=(24, 24))  # a cleaned copy: same name, other bytes
    second = build_manifest(tmp_path / "data", "x", converted_dir=tmp_path / "converted")
    old, new = (m.frame.set_index("path").loc["cat/a.gif", "converted"] for m in (first, second))
    assert old != new
    with Image.open(tmp_path / new) as image:
        assert image.size == (24, 24)
    assert cache_key(second.files(), 16) != key
