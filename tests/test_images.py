"""One decode for every path: the same files give the same uint8 array in training (manifest
and tf.data), inference and Grad-CAM (``load_image``), segmentation and the export checks.

The path tests import only names that predate ``cnnlab.data.images``, so they also run, and
fail, on the code before it (16-bit stretched by the image maximum in ``load_image``, no EXIF
and another resize in segmentation training, TensorFlow's fast IDCT for JPEGs, GIFs with
transparency and palette BMPs decoded wrongly by TensorFlow).
"""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.data import load_image
from cnnlab.data.datasets import build_manifest
from cnnlab.data.pipeline import make_dataset, split_dataset
from cnnlab.segmentation import find_mask_pairs, mask_dataset, read_image

SIZES = (24, 64)  # shrinking (JPEGs decoded at 1/2-1/8 scale) and enlarging most files


def _photo(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth gradient with noise: JPEG-like content, where IDCTs differ."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    smooth = np.stack([xx, yy, (xx + yy) / 2], -1) * 255
    return np.clip(smooth + rng.normal(0, 25, smooth.shape), 0, 255).astype(np.uint8)


def _png16(path: Path, samples: np.ndarray) -> Path:
    """Writes a 16-bit grey (h, w) or RGB (h, w, 3) PNG by hand (Pillow cannot write RGB)."""
    height, width = samples.shape[:2]
    colour = 2 if samples.ndim == 3 else 0
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in samples)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
                     chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


# 16-bit samples up to 40000: v >> 8 tops out at 156, a stretch to the maximum at 255.
DEEP = (np.mgrid[0:24, 0:24].sum(0) * 40000 // 46).astype(np.uint16)
DEEP_RGB = np.stack([DEEP[:20, :18], DEEP[:20, :18] // 2, 40000 - DEEP[:20, :18]], -1)
ROTATED = _photo(60, 44, 1)  # stored 60 wide; EXIF orientation 6 shows it 44 wide, 60 high


def _write_odd_files(folder: Path) -> None:
    folder.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(ROTATED).save(folder / "rotated.jpg", exif=exif, quality=90)
    Image.fromarray(DEEP).save(folder / "deep.png")  # mode I;16
    Image.fromarray(DEEP).save(folder / "scan.tiff")  # 16-bit TIFF: a PNG copy
    _png16(folder / "deep_rgb.png", DEEP_RGB)
    rgb = Image.fromarray(_photo(40, 30, 2))
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.bmp")
    rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32).save(folder / "glass.gif",
                                                                     transparency=3)
    rgb.convert("RGBA").save(folder / "rgba.png")
    rgb.convert("LA").save(folder / "gray_alpha.png")
    rgb.convert("1").save(folder / "bilevel.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg", quality=90)
    rgb.convert("L").save(folder / "gray.jpg", quality=90)
    Image.fromarray(_photo(50, 36, 3)).save(folder / "photo.webp", quality=80)
    Image.fromarray(_photo(200, 150, 4)).save(folder / "big.jpg", quality=90)
    Image.fromarray(_photo(30, 30, 5)).save(folder / "bitmap.bmp")


def _corpus(root: Path, work: Path) -> dict:
    """The manifest of ``root`` (PNG copies under ``work``) and every path's arrays."""
    manifest = build_manifest(root, "folder", converted_dir=work / "converted")
    manifest.folder = work
    rows = manifest.split("train")
    rows["original"] = [str(manifest.root / p) for p in rows["path"]]
    return {"manifest": manifest, "rows": rows, "root": root, "work": work}


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    work = tmp_path_factory.mktemp("odd")
    _write_odd_files(work / "data" / "train" / "odd")
    return _corpus(work / "data", work)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, shared_dir):
    work = tmp_path_factory.mktemp("photos")
    picks = {"vehicles": sorted((shared_dir / "datasets" / "vehicles").glob("*/*.jpg"))[:3],
             "cards": sorted((shared_dir / "datasets" / "cards" / "train").glob("*/*.jpg"))[:3]}
    for name, files in picks.items():
        if not files:
            pytest.skip(f"no {name} photos under {shared_dir}/datasets")
        for index, source in enumerate(files):
            target = work / "data" / "train" / name / f"{index}{source.suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    return _corpus(work / "data", work)


CORPORA = ["odd", pytest.param("photos", marks=pytest.mark.shared)]


def _training(corpus: dict, size: int) -> np.ndarray:
    """The reference: the tf.data pipeline over the manifest, as a model is trained."""
    return np.concatenate([x.numpy() for x, _ in split_dataset(corpus["rows"], size)])


def _assert_same(kind: str, rows, got, want) -> None:
    """Every file's array equal; the message names each file that differs and by how much."""
    assert len(got) == len(want)
    bad = []
    for name, a, b in zip(rows["path"], got, want, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            bad.append(f"{name}: shape {a.shape} vs {b.shape}")
        elif not np.array_equal(a, b):
            bad.append(f"{name}: max diff {np.abs(a.astype(int) - b.astype(int)).max()}")
    assert not bad, f"{kind} differs from training: " + "; ".join(bad)


def test_the_corpus_goes_through_validation_as_intended(odd):
    frame = odd["manifest"].frame.set_index("path")
    assert len(frame) == 15  # nothing excluded
    copies = frame.loc[frame["converted"] != ""].index.str.rsplit("/", n=1).str[-1]
    assert set(copies) == {"rotated.jpg", "scan.tiff", "photo.webp", "glass.gif", "palette.bmp"}


@pytest.mark.parametrize("name", CORPORA)
@pytest.mark.parametrize("size", SIZES)
def test_both_training_decoders_and_the_export_check_agree(name, size, request):
    from cnnlab.deploy.export import split_images

    corpus = request.getfixturevalue(name)
    rows, want = corpus["rows"], _training(corpus, size)
    per_file = make_dataset(rows["file"], rows["label_index"], size, cache=False)
    _assert_same("decode_resize", rows, np.concatenate([x.numpy() for x, _ in per_file]), want)
    for (width, height), same in rows[rows["format"] == "JPEG"].groupby(["width", "height"]):
        fixed = make_dataset(same["file"], same["label_index"], size, cache=False,
                             formats=list(same["format"]), sizes=[(width, height)] * len(same))
        _assert_same(f"the fixed {width}x{height} JPEG decoder", same,
                     np.concatenate([x.numpy() for x, _ in fixed]), want[same.index])
    exported, _ = split_images(corpus["manifest"], "train", size)
    _assert_same("export.split_images", rows, exported.astype(np.uint8), want)


@pytest.mark.parametrize("name", CORPORA)
@pytest.mark.parametrize("size", SIZES)
def test_load_image_gives_the_training_array(name, size, request):
    corpus = request.getfixturevalue(name)
    rows = corpus["rows"]
    got = [load_image(f, size) for f in rows["original"]]
    assert all(g.dtype == np.float32 for g in got)
    _assert_same("load_image", rows, [g.astype(np.uint8) for g in got], _training(corpus, size))


@pytest.mark.parametrize("name", CORPORA)
@pytest.mark.parametrize("size", SIZES)
def test_segmentation_training_reads_the_training_array(name, size, request, tmp_path):
    corpus = request.getfixturevalue(name)
    rows = corpus["rows"]
    for index, original in enumerate(rows["original"]):
        target = tmp_path / "images" / f"{index:02d}{Path(original).suffix}"
        target.parent.mkdir(exist_ok=True)
        shutil.copy(original, target)
        (tmp_path / "masks").mkdir(exist_ok=True)
        Image.new("L", (8, 8)).save(tmp_path / "masks" / f"{index:02d}.png")
    pairs = find_mask_pairs(tmp_path)
    found = [int(Path(f).stem) for f in pairs["image"]]
    images = np.concatenate([x.numpy() for x, _ in mask_dataset(pairs, size, batch_size=8)])
    assert images.dtype == np.float32
    _assert_same("segmentation mask_dataset", rows.iloc[found], images.astype(np.uint8),
                 _training(corpus, size)[found])
    missing = sorted(set(rows["path"]) - set(rows["path"].iloc[found]))
    assert not missing, f"find_mask_pairs skips {missing}"


@pytest.mark.parametrize("name", CORPORA)
def test_segmentation_read_image_is_load_image_in_uint8(name, request):
    corpus = request.getfixturevalue(name)
    rows = corpus["rows"]
    full = [load_image(f) for f in rows["original"]]
    _assert_same("segmentation.read_image", rows, [read_image(f) for f in rows["original"]],
                 [f.astype(np.uint8) for f in full])


@pytest.mark.parametrize("name", CORPORA)
def test_demo_images_start_from_the_decoded_pixels(name, request, tmp_path):
    from cnnlab.deploy.inference import demo_images

    corpus = request.getfixturevalue(name)
    rows = corpus["rows"]
    rgba = []  # the third form is a lossless RGBA PNG of the picked image, at full size
    for index in range(len(rows)):
        forms = demo_images(rows.iloc[[index] * 4], tmp_path / str(index), count=4)
        rgba.append(read_image(forms[2]))
    _assert_same("deploy.demo_images", rows, rgba,
                 [load_image(f).astype(np.uint8) for f in rows["file"]])


def test_the_training_array_is_upright_and_keeps_the_16_bit_high_byte(odd):
    rows = odd["rows"].set_index("path")
    deep = read_image(rows.loc["train/odd/deep.png", "original"])
    assert np.array_equal(deep, np.repeat((DEEP >> 8)[..., None], 3, -1).astype(np.uint8))
    deep_rgb = read_image(rows.loc["train/odd/deep_rgb.png", "original"])
    assert np.array_equal(deep_rgb, (DEEP_RGB >> 8).astype(np.uint8))
    stored = read_image(rows.loc["train/odd/rotated.jpg", "original"])
    assert stored.shape == (60, 44, 3)  # upright: 44 wide, 60 high
    with Image.open(rows.loc["train/odd/rotated.jpg", "original"]) as image:
        sideways = np.asarray(image.convert("RGB"))
    assert np.array_equal(stored, np.rot90(sideways, k=-1))  # turned 90 degrees clockwise
    at_size = _training(odd, 24)[list(rows.index).index("train/odd/deep.png")]
    assert np.array_equal(at_size[..., 0], DEEP >> 8)  # 24 px: decoded, not resampled


def test_one_suffix_list_and_one_rule_for_tensorflow_files():
    from cnnlab.data import datasets, images, validate
    from cnnlab.segmentation import training

    assert datasets.IMAGE_SUFFIXES is validate.IMAGE_SUFFIXES is training.IMAGE_SUFFIXES \
        is images.IMAGE_SUFFIXES
    assert validate.write_converted is images.write_converted
    assert images.decodes_as_is("JPEG", "CMYK") and images.decodes_as_is("PNG", "I;16")
    assert images.decodes_as_is("BMP", "RGB") and not images.decodes_as_is("BMP", "P")
    assert not images.decodes_as_is("GIF", "P") and not images.decodes_as_is("WEBP", "RGB")


def test_read_image_errors_name_the_file(tmp_path):
    from cnnlab.data.images import read_image as read

    (tmp_path / "notes.jpg").write_text("not a JPEG")
    with pytest.raises(ValueError, match="notes.jpg is not a readable image.*cnnlab validate"):
        read(tmp_path / "notes.jpg")
    with pytest.raises(FileNotFoundError, match="missing.png does not exist"):
        read(tmp_path / "missing.png", 32)


def test_is_greyscale_tells_a_grey_photo_saved_as_rgb_jpeg_from_a_colour_one(tmp_path):
    from cnnlab.data import is_greyscale

    photo = _photo(64, 48, seed=3)
    grey = np.repeat(photo.mean(axis=-1, keepdims=True), 3, axis=-1).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey_rgb.jpg", quality=75)  # chroma noise from JPEG
    Image.fromarray(grey[..., 0]).save(tmp_path / "grey_l.png")
    Image.fromarray(photo).save(tmp_path / "colour.jpg", quality=75)
    assert is_greyscale(tmp_path / "grey_rgb.jpg")
    assert is_greyscale(tmp_path / "grey_l.png")
    assert not is_greyscale(tmp_path / "colour.jpg")
    with pytest.raises(FileNotFoundError):
        is_greyscale(tmp_path / "missing.jpg")
