"""Segmentation figures: class colours, coloured masks and overlays, predictions beside
ground truth."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from cnnlab.segmentation.deeplab import VOC_CLASSES, _as_mask, _as_rgb_image


def _class_name(index: int) -> str:
    if index < len(VOC_CLASSES):
        return VOC_CLASSES[index]
    return "ignore" if index == 255 else str(index)


def voc_colormap(num_classes: int = 21) -> np.ndarray:
    """PASCAL VOC label colours.

    The VOC devkit's ``labelcolormap`` (VOCdevkit ``VOCcode/VOClabelcolormap.m``): the bits of
    the class index are spread over R, G, B from the most significant colour bit down, so
    1 = (128, 0, 0), 7 car = (128, 128, 128), 15 person = (192, 128, 128) and the ignore
    label 255 = (224, 224, 192).

    Args:
        num_classes: Number of entries (21 for VOC; 256 to also cover the ignore label).

    Returns:
        ``(num_classes, 3)`` uint8 RGB array.
    """
    indices = np.arange(num_classes)
    colormap = np.zeros((num_classes, 3), dtype=np.int64)
    for shift in range(7, -1, -1):
        for channel in range(3):
            colormap[:, channel] |= ((indices >> channel) & 1) << shift
        indices = indices >> 3
    return colormap.astype(np.uint8)


# The ignore label of VOC ground truth keeps the devkit's colour in every palette.
IGNORE_COLOUR = (224, 224, 192)


# One colour per class index, the same in every figure: Kelly's colours of maximum contrast
# (K. L. Kelly, "Twenty-two colors of maximum contrast", Color Engineering 3(6), 1965; white and
# black left out) over the 20 PASCAL VOC classes, arranged so that the classes shown here
# together are far apart: bus, car, motorbike and person (>= 140 apart in RGB), and classes
# 1-10 (the generated shapes use 1-4) at least 66 apart.
FIXED_COLOURS: dict[int, tuple[int, int, int]] = {
    1: (230, 143, 172), 2: (136, 45, 23), 3: (226, 88, 34), 4: (194, 178, 128),
    5: (190, 0, 50), 6: (243, 195, 0), 7: (135, 86, 146), 8: (0, 103, 165),
    9: (43, 61, 38), 10: (141, 182, 0), 11: (96, 78, 151), 12: (220, 211, 0),
    13: (132, 132, 130), 14: (0, 136, 86), 15: (161, 202, 241), 16: (246, 166, 0),
    17: (179, 68, 108), 18: (101, 69, 34), 19: (243, 132, 0), 20: (249, 150, 121),
}


def class_colour(index: int) -> tuple[int, int, int]:
    """The fixed colour of a class index: black background (0), the VOC ignore colour (255),
    :data:`FIXED_COLOURS` for 1-20, and hues spaced by the golden ratio beyond."""
    import colorsys

    index = int(index)
    if index == 0:
        return (0, 0, 0)
    if index == 255:
        return IGNORE_COLOUR
    if index in FIXED_COLOURS:
        return FIXED_COLOURS[index]
    red, green, blue = colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.75, 0.9)
    return (int(round(255 * red)), int(round(255 * green)), int(round(255 * blue)))


def class_palette(classes: Iterable[int]) -> dict[int, tuple[int, int, int]]:
    """The colours of the classes a figure shows, one fixed colour per class index.

    The VOC colour map gives some classes that matter here nearly the same colour (bus 6 =
    (0, 128, 128), motorbike 14 = (64, 128, 128)); :func:`class_colour` keeps them apart and
    gives a class the same colour in every figure (bus is always yellow), whichever other
    classes it appears with.

    Args:
        classes: Class indices present (any order, repeats allowed).

    Returns:
        ``{class index: (r, g, b)}`` with uint8 components, one entry per distinct class.
    """
    return {c: class_colour(c) for c in sorted({int(c) for c in classes})}


def _lookup(palette: Mapping[int, Sequence[int]] | None) -> np.ndarray:
    """``(256, 3)`` uint8 colour of each class index: the VOC map overridden by ``palette``."""
    table = voc_colormap(256)
    for index, colour in (palette or {}).items():
        table[int(index)] = colour
    return table


def colorize_mask(mask: np.ndarray, palette: Mapping[int, Sequence[int]] | None = None
                  ) -> np.ndarray:
    """Paint a class-index mask with the VOC colours (or ``palette``'s).

    Args:
        mask: ``(H, W)`` integer class indices in ``0..255``.
        palette: ``{class index: (r, g, b)}`` overriding the VOC colours
            (:func:`class_palette`); None: the VOC colours.

    Returns:
        ``(H, W, 3)`` uint8 RGB image.
    """
    array = _as_mask(mask)
    if array.size and array.max() > 255:
        raise ValueError(f"mask holds class index {array.max()}; the VOC colormap stops at 255")
    return _lookup(palette)[array]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5,
            palette: Mapping[int, Sequence[int]] | None = None) -> np.ndarray:
    """Blend the mask's VOC colours (or ``palette``'s) over the image.

    Background pixels (class 0) keep the image's own colour; the others become
    ``(1 - alpha) * image + alpha * colour``.

    Args:
        image: ``(H, W, 3)`` RGB, uint8 or float in ``[0, 255]``.
        mask: ``(H, W)`` integer class indices, same height and width as ``image``.
        alpha: Opacity of the colours, in ``[0, 1]``.
        palette: ``{class index: (r, g, b)}`` overriding the VOC colours; None: VOC colours.

    Returns:
        ``(H, W, 3)`` uint8 RGB image.

    Raises:
        ValueError: Shapes do not match, or ``alpha`` is outside ``[0, 1]``.
    """
    rgb = _as_rgb_image(image)
    array = _as_mask(mask)
    if array.shape != rgb.shape[:2]:
        raise ValueError(
            f"mask has shape {array.shape} but image has {rgb.shape}; they must share "
            "(height, width) (predict_mask returns masks at the image's size)"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} is outside [0, 1]")
    colours = colorize_mask(array, palette).astype(np.float32)
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colours
    out = np.where((array != 0)[..., None], blended, rgb)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _pixel_accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Share of labelled pixels (not 255) whose predicted class is the true one."""
    labelled = truth != 255
    return float((truth[labelled] == predicted[labelled]).mean()) if labelled.any() else \
        float("nan")


def plot_segmentation(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    titles: Sequence[str] | None = None,
    class_names: Sequence[str] = VOC_CLASSES,
    *,
    backend: str | None = None,
    ground_truth: Sequence[np.ndarray] | None = None,
    title: str | None = None,
) -> Figure:
    """Predicted masks beside their images, one row per image, titled with the backend.

    Without ground truth the columns are input | predicted mask | overlay; with it they are
    input | ground truth | prediction, the prediction titled with its pixel accuracy. Classes
    get fixed, distinct colours (:func:`class_palette`: the same colour for a class in every
    panel and every figure), named in a legend below the grid.

    Args:
        images: ``(H, W, 3)`` RGB images, uint8 or float in ``[0, 255]``.
        masks: ``(H, W)`` predicted class-index masks, one per image.
        titles: Optional label per row (e.g. file name or true class).
        class_names: Name of each class index, for the legend (default: PASCAL VOC).
        backend: What made ``masks`` (``Segmenter.description``, e.g. ``"DeepLabV3 TFLite 257
            px float"``), named in the figure title.
        ground_truth: ``(H, W)`` true masks, one per image (255: ignore), to compare with.
        title: Figure title (default: the backend and the columns).

    Returns:
        A ``matplotlib.figure.Figure`` with ``3 * len(images)`` axes.

    Raises:
        ValueError: If the counts of images, masks, titles or ground-truth masks differ, or a
            ground-truth mask's shape differs from its image's.
    """
    images, masks = list(images), list(masks)
    if not images or len(images) != len(masks):
        raise ValueError(
            f"got {len(images)} images and {len(masks)} masks; pass one mask per image"
        )
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"got {len(titles)} titles for {len(images)} images")
    truths = None if ground_truth is None else [_as_mask(m, f"ground_truth[{i}]")
                                                 for i, m in enumerate(ground_truth)]
    if truths is not None and len(truths) != len(images):
        raise ValueError(f"got {len(truths)} ground-truth masks for {len(images)} images")

    shown = [_as_mask(m, f"masks[{i}]") for i, m in enumerate(masks)] + (truths or [])
    present = np.unique(np.concatenate([m.ravel() for m in shown]))
    palette = class_palette(present)
    columns = ("input", "ground truth", "prediction") if truths else \
        ("input", "predicted mask", "overlay")

    rows = len(images)
    fig = plt.figure(figsize=(7.5, 2.5 * rows + 0.9), layout="constrained")
    axes = fig.subplots(rows, 3, squeeze=False)
    for row, (image, mask) in enumerate(zip(images, masks)):
        rgb = _as_rgb_image(image, f"images[{row}]")
        prefix = f"{titles[row]}: " if titles is not None else ""
        if truths:
            truth = truths[row]
            if truth.shape != rgb.shape[:2]:
                raise ValueError(f"ground_truth[{row}] has shape {truth.shape} but images[{row}] "
                                 f"has {rgb.shape}; they must share (height, width)")
            accuracy = _pixel_accuracy(truth, _as_mask(mask))
            panels = (
                (rgb, f"{prefix}input"),
                (colorize_mask(truth, palette), "ground truth"),
                (colorize_mask(mask, palette), f"prediction ({accuracy:.0%} of pixels right)"),
            )
        else:
            panels = (
                (rgb, f"{prefix}input"),
                (colorize_mask(mask, palette), "predicted mask"),
                (overlay(rgb, mask, palette=palette), "overlay"),
            )
        for ax, (picture, panel_title) in zip(axes[row], panels):
            ax.imshow(picture, interpolation="nearest")
            ax.set_title(panel_title, fontsize=9)
            ax.set_axis_off()

    if title is None:
        title = f"{backend or 'Segmentation'}: {' | '.join(columns)}"
    fig.suptitle(title, fontsize=10)
    handles = [
        Patch(facecolor=np.asarray(palette[i]) / 255.0, edgecolor="black", linewidth=0.5,
              label=class_names[i] if i < len(class_names) else _class_name(i))
        for i in present
    ]
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=min(len(handles), 6),
        fontsize=8,
        frameon=False,
        title="classes",
        title_fontsize=8,
    )
    return fig
