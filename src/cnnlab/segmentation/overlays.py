"""Segmentation figures: the PASCAL VOC colour map, coloured masks and overlays."""

from __future__ import annotations

from collections.abc import Sequence

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


def colorize_mask(mask: np.ndarray) -> np.ndarray:
    """Paint a class-index mask with the VOC colours.

    Args:
        mask: ``(H, W)`` integer class indices in ``0..255``.

    Returns:
        ``(H, W, 3)`` uint8 RGB image.
    """
    array = _as_mask(mask)
    if array.size and array.max() > 255:
        raise ValueError(f"mask holds class index {array.max()}; the VOC colormap stops at 255")
    return voc_colormap(256)[array]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the mask's VOC colours over the image.

    Background pixels (class 0) keep the image's own colour; the others become
    ``(1 - alpha) * image + alpha * colour``.

    Args:
        image: ``(H, W, 3)`` RGB, uint8 or float in ``[0, 255]``.
        mask: ``(H, W)`` integer class indices, same height and width as ``image``.
        alpha: Opacity of the colours, in ``[0, 1]``.

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
    colours = colorize_mask(array).astype(np.float32)
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colours
    out = np.where((array != 0)[..., None], blended, rgb)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def plot_segmentation(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    titles: Sequence[str] | None = None,
    class_names: Sequence[str] = VOC_CLASSES,
) -> Figure:
    """Input, colour mask and overlay side by side, one row per image.

    A legend below the grid lists only the classes present in ``masks``, with their colours.

    Args:
        images: ``(H, W, 3)`` RGB images, uint8 or float in ``[0, 255]``.
        masks: ``(H, W)`` class-index masks, one per image.
        titles: Optional label per row (e.g. file name or true class).
        class_names: Name of each class index, for the legend (default: PASCAL VOC).

    Returns:
        A ``matplotlib.figure.Figure`` with ``3 * len(images)`` axes.
    """
    images, masks = list(images), list(masks)
    if not images or len(images) != len(masks):
        raise ValueError(
            f"got {len(images)} images and {len(masks)} masks; pass one mask per image"
        )
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"got {len(titles)} titles for {len(images)} images")

    rows = len(images)
    fig = plt.figure(figsize=(7.5, 2.5 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, 3, squeeze=False)
    for row, (image, mask) in enumerate(zip(images, masks)):
        rgb = _as_rgb_image(image, f"images[{row}]")
        prefix = f"{titles[row]}: " if titles is not None else ""
        panels = (
            (rgb, f"{prefix}input"),
            (colorize_mask(mask), "mask"),
            (overlay(rgb, mask), "overlay"),
        )
        for ax, (picture, title) in zip(axes[row], panels):
            ax.imshow(picture, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()

    colours = voc_colormap(256) / 255.0
    present = np.unique(np.concatenate([_as_mask(m).ravel() for m in masks]))
    handles = [
        Patch(facecolor=colours[i], edgecolor="black", linewidth=0.5,
              label=class_names[i] if i < len(class_names) else _class_name(i))
        for i in present
    ]
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=min(len(handles), 6),
        fontsize=8,
        frameon=False,
    )
    return fig
