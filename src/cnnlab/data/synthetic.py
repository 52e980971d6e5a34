"""The ``sample`` dataset: synthetic shapes with per-pixel masks, generated in seconds.

It exists so that every notebook runs with no network, no credentials and no GPU. It is
synthetic and is labelled so wherever it is shown. Four classes of objects (circle, square,
triangle, star) vary in position, scale, rotation, colour and background (flat, gradient or
noise, with distractor lines); each image has a mask whose pixels hold the class index + 1
on the object and 0 on the background.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SAMPLE_CLASSES = ("circle", "square", "triangle", "star")


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


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    kind = rng.integers(3)
    base = rng.integers(0, 256, 3)
    if kind == 0:
        array = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    elif kind == 1:
        other = rng.integers(0, 256, 3)
        t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
        array = np.broadcast_to(base * (1 - t) + other * t, (size, size, 3))
        array = array.transpose(1, 0, 2) if rng.random() < 0.5 else array
    else:
        array = base + rng.normal(0, 40, (size, size, 3))
    image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(0, 4)):
        xy = [tuple(rng.integers(0, size, 2).tolist()) for _ in range(2)]
        draw.line(xy, fill=tuple(rng.integers(0, 256, 3).tolist()), width=int(rng.integers(1, 3)))
    return image


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
    image = _background(rng, size)
    mask_image = Image.new("L", (size, size), 0)
    r = size * rng.uniform(0.15, 0.35)
    cx, cy = rng.uniform(r, size - r, 2)
    colour = tuple(rng.integers(0, 256, 3).tolist())
    label = SAMPLE_CLASSES.index(kind) + 1
    for target, fill in ((ImageDraw.Draw(image), colour), (ImageDraw.Draw(mask_image), label)):
        if kind == "circle":
            target.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            target.polygon(_polygon(kind, cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=fill)
    return image, np.asarray(mask_image, dtype=np.uint8)


def make_sample_dataset(
    root: str | os.PathLike, per_class: int = 80, size: int = 128, seed: int = 0
) -> Path:
    """Writes the synthetic ``sample`` dataset (deterministic from ``seed``).

    Layout: ``root/images/<class>/<class>_NNN.png`` and ``root/masks/<class>/<class>_NNN.png``
    (mask pixel = class index + 1 on the object, 0 elsewhere). Nothing is rewritten if the
    folder already holds a complete dataset made with the same arguments.

    Args:
        root: Destination folder.
        per_class: Images per class.
        size: Image side in pixels.
        seed: Random seed.

    Returns:
        ``root/images``, a class-per-folder tree.
    """
    root = Path(root)
    stamp = root / f".complete-{per_class}-{size}-{seed}"
    if stamp.exists():
        return root / "images"
    rng = np.random.default_rng(seed)
    for kind in SAMPLE_CLASSES:
        (root / "images" / kind).mkdir(parents=True, exist_ok=True)
        (root / "masks" / kind).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            image, mask = render_sample(kind, rng, size)
            name = f"{kind}_{index:03d}.png"
            image.save(root / "images" / kind / name)
            Image.fromarray(mask, "L").save(root / "masks" / kind / name)
    stamp.touch()
    return root / "images"
