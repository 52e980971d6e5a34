"""The generated ``sample`` dataset: visible objects, whole regeneration, and learnable by the
custom CNNs under the ``quick`` profile that ``make run`` uses."""

from __future__ import annotations

import numpy as np
from PIL import Image

from cnnlab.data.synthetic import (
    GENERATOR_VERSION,
    SAMPLE_CLASSES,
    make_sample_dataset,
    render_sample,
)


def _luma(pixels: np.ndarray) -> np.ndarray:
    return pixels @ np.array([0.299, 0.587, 0.114])


def test_every_object_stands_out_from_its_background():
    rng = np.random.default_rng(7)
    gaps = []
    for index in range(200):
        image, mask = render_sample(SAMPLE_CLASSES[index % 4], rng, 64)
        pixels = np.asarray(image, dtype=np.float64)
        on = mask > 0
        assert 0.05 < on.mean() < 0.7  # the object is neither a speck nor the whole frame
        gaps.append(abs(_luma(pixels[on]).mean() - _luma(pixels[~on]).mean()))
    # 80 of 255 by construction, less the lines and noise; an object the colour of its
    # background (which the first generator drew) has a gap near 0.
    assert min(gaps) > 40


def test_an_older_or_different_sample_folder_is_replaced_whole(tmp_path):
    root = tmp_path / "sample"
    stale = root / "images" / "circle" / "circle_999.png"
    stale.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(stale)
    (root / ".complete-80-128-0").touch()  # the stamp of the first generator

    images = make_sample_dataset(root, per_class=3, size=32)

    assert images == root / "images"
    assert not stale.exists()
    assert sorted(p.name for p in root.glob(".complete-*")) == [
        f".complete-v{GENERATOR_VERSION}-3-32-0"]
    for kind in SAMPLE_CLASSES:
        names = sorted(p.name for p in (root / "masks" / kind).iterdir())
        assert names == [f"{kind}_{i:03d}.png" for i in range(3)]
        assert sorted(p.name for p in (root / "images" / kind).iterdir()) == names
    assert not list(tmp_path.glob(".*.partial"))
    # The same arguments again: nothing is rewritten.
    before = (root / "images" / "star" / "star_000.png").stat().st_mtime_ns
    make_sample_dataset(root, per_class=3, size=32)
    assert (root / "images" / "star" / "star_000.png").stat().st_mtime_ns == before
