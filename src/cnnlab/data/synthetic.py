"""The ``sample`` dataset: synthetic shapes with per-pixel masks, generated in seconds.

It exists so that every notebook runs with no network, no credentials and no GPU. It is
synthetic and is labelled so wherever it is shown. Four classes of objects (circle, square,
triangle, star) vary in position, scale (radius 20-38% of the side), rotation, colour and
background (flat, a gradient or mild noise, with up to two 1-px distractor lines); the object's
luma always differs from the background's by at least 80 of 255, so the class is visible in
every image and a small CNN learns it in a minute on a CPU. Each image has a mask whose pixels
hold the class index + 1 on the object and 0 on the background.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SAMPLE_CLASSES = ("circle", "square", "triangle", "star")
# Bumped whenever render_sample draws differently, so an older generated folder is replaced.
GENERATOR_VERSION = 2


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        corners = [angle + math.pi / 4 + k * math.pi / 2 for k in range(4)]
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in corners]
    if kind == "triangle":
        corners = [angle + k * 2 * math.pi / 3 for k in range(3)]
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in corners]
    points = []  # five-pointed star
    for k in range(10):
        radius = r if k % 2 == 0 else r * 0.45
        a = angle + k * math.pi / 5
        points.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
    return points


def _luminance(rgb) -> float:
    """ITU-R BT.601 luma of an RGB triple, 0-255."""
    r, g, b = rgb
    return 0.299 * r + 0.587 * g + 0.114 * b


def _background(rng: np.random.Generator, size: int) -> tuple[Image.Image, float]:
    kind = rng.integers(3)
    base = rng.integers(0, 256, 3)
    if kind == 0:
        array = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    elif kind == 1:
        # A gradient towards a colour of similar luma, so the object stays visible across it.
        other = np.clip(base + rng.integers(-60, 61, 3), 0, 255)
        t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
        array = np.broadcast_to(base * (1 - t) + other * t, (size, size, 3))
        array = array.transpose(1, 0, 2) if rng.random() < 0.5 else array
    else:
        array = base + rng.normal(0, 12, (size, size, 3))
    image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(0, 3)):  # thin distractor lines, never thicker than 1 px
        xy = [tuple(rng.integers(0, size, 2).tolist()) for _ in range(2)]
        draw.line(xy, fill=tuple(rng.integers(0, 256, 3).tolist()), width=1)
    return image, _luminance(np.clip(array.mean(axis=(0, 1)), 0, 255))


def _contrasting_colour(rng: np.random.Generator, background_luma: float) -> tuple[int, ...]:
    """A random colour whose luma differs from the background's by at least 80 (of 255)."""
    while True:
        colour = tuple(rng.integers(0, 256, 3).tolist())
        if abs(_luminance(colour) - background_luma) >= 80:
            return colour


def render_sample(kind: str, rng: np.random.Generator, size: int = 128):
    """Draws one synthetic object on a random background.

    Args:
        kind: One of :data:`SAMPLE_CLASSES`.
        rng: Random generator (the caller's seed makes the dataset reproducible).
        size: Image side in pixels.

    Returns:
        ``(image, mask)``: an RGB ``PIL.Image`` and an ``(size, size)`` uint8 array holding
        ``SAMPLE_CLASSES.index(kind) + 1`` on the object and 0 elsewhere.
    """
    image, background_luma = _background(rng, size)
    mask_image = Image.new("L", (size, size), 0)
    r = size * rng.uniform(0.25, 0.4)
    cx, cy = size / 2 + size * rng.uniform(-0.1, 0.1, 2)
    colour = _contrasting_colour(rng, background_luma)
    label = SAMPLE_CLASSES.index(kind) + 1
    for target, fill in ((ImageDraw.Draw(image), colour), (ImageDraw.Draw(mask_image), label)):
        if kind == "circle":
            target.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            target.polygon(_polygon(kind, cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=fill)
    return image, np.asarray(mask_image, dtype=np.uint8)


def make_sample_dataset(
    root: str | os.PathLike, per_class: int = 250, size: int = 128, seed: int = 0
) -> Path:
    """Writes the synthetic ``sample`` dataset (deterministic from ``seed``).

    Layout: ``root/images/<class>/<class>_NNN.png`` and ``root/masks/<class>/<class>_NNN.png``
    (mask pixel = class index + 1 on the object, 0 elsewhere). Nothing is rewritten if the
    folder already holds a complete dataset made with the same arguments and
    :data:`GENERATOR_VERSION`; otherwise its ``images/`` and ``masks/`` are replaced (the
    folder holds generated files only).

    Args:
        root: Destination folder.
        per_class: Images per class.
        size: Image side in pixels.
        seed: Random seed.

    Returns:
        ``root/images``, a class-per-folder tree.
    """
    root = Path(root)
    stamp = f".complete-v{GENERATOR_VERSION}-{per_class}-{size}-{seed}"
    if (root / stamp).exists():
        return root / "images"
    # Generated next to the destination, then renamed into place: an interrupted run leaves no
    # half-written dataset, and images of an older generator version are replaced whole.
    staging = root.parent / f".{root.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for kind in SAMPLE_CLASSES:
        (staging / "images" / kind).mkdir(parents=True)
        (staging / "masks" / kind).mkdir(parents=True)
        for index in range(per_class):
            image, mask = render_sample(kind, rng, size)
            name = f"{kind}_{index:03d}.png"
            image.save(staging / "images" / kind / name)
            Image.fromarray(mask, "L").save(staging / "masks" / kind / name)
    (staging / stamp).touch()
    root.mkdir(parents=True, exist_ok=True)
    for part in ("images", "masks"):
        if (root / part).exists():
            shutil.rmtree(root / part)
        (staging / part).rename(root / part)
    for old in root.glob(".complete-*"):
        old.unlink()
    (staging / stamp).rename(root / stamp)
    staging.rmdir()
    return root / "images"


# Price factor of the shape on a synthetic house's frontal photo: the photos carry part of the
# price, as curb appeal does, so a model that sees them can beat one that reads the columns only.
FRONTAL_PRICE_FACTOR = {"circle": 0.8, "square": 1.0, "triangle": 1.25, "star": 1.6}
SAMPLE_ZIPCODES = {"90001": 0.8, "90210": 1.6, "92101": 1.0, "93101": 1.2, "95014": 1.4}


def make_sample_houses(root: str | os.PathLike, houses: int = 240, size: int = 96,
                       seed: int = 0) -> Path:
    """Writes synthetic houses in the layout of the Houses dataset (deterministic from ``seed``).

    The offline stand-in of the Houses dataset (Ahmed & Moustafa 2016, arXiv:1609.08399) for a
    machine with no network: ``root/HousesInfo.txt`` with one line per house (bedrooms,
    bathrooms, area in sq ft, zipcode, price in USD) and four photos per house,
    ``{i}_{bathroom,bedroom,frontal,kitchen}.jpg``, each a :func:`render_sample` shape. The
    price grows with the area, the bedrooms and a factor per zipcode, times
    :data:`FRONTAL_PRICE_FACTOR` of the frontal photo's shape, times log-normal noise (sigma
    0.1): the columns explain part of it, the frontal photo another part. It is synthetic and
    labelled so wherever it is shown. Nothing is rewritten if ``root`` already holds a complete
    set made with the same arguments.

    Args:
        root: Destination folder (holds generated files only).
        houses: Number of houses.
        size: Photo side in pixels.
        seed: Random seed.

    Returns:
        ``root``, the folder holding ``HousesInfo.txt``.
    """
    root = Path(root)
    stamp = f".complete-v{GENERATOR_VERSION}-{houses}-{size}-{seed}"
    if (root / stamp).exists():
        return root
    staging = root.parent / f".{root.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    zipcodes = list(SAMPLE_ZIPCODES)
    lines = []
    for house in range(1, houses + 1):
        bedrooms = int(rng.integers(1, 6))
        bathrooms = float(rng.integers(2, 2 * bedrooms + 2) / 2)
        area = float(round(500 + 450 * bedrooms + rng.normal(0, 250)))
        area = max(area, 400.0)
        zipcode = zipcodes[int(rng.integers(len(zipcodes)))]
        frontal = SAMPLE_CLASSES[int(rng.integers(len(SAMPLE_CLASSES)))]
        price = (60_000 + 180 * area) * (1 + 0.05 * bedrooms) * SAMPLE_ZIPCODES[zipcode] * \
            FRONTAL_PRICE_FACTOR[frontal] * float(np.exp(rng.normal(0, 0.1)))
        lines.append(f"{bedrooms} {bathrooms} {area:.0f} {zipcode} {price:.0f}")
        for room in ("bathroom", "bedroom", "frontal", "kitchen"):
            kind = frontal if room == "frontal" else \
                SAMPLE_CLASSES[int(rng.integers(len(SAMPLE_CLASSES)))]
            image, _ = render_sample(kind, rng, size)
            image.save(staging / f"{house}_{room}.jpg", quality=90)
    (staging / "HousesInfo.txt").write_text("\n".join(lines) + "\n")
    (staging / stamp).touch()
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(root)
    return root
