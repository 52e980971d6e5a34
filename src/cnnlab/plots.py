"""Every figure of the project, each a function returning a ``matplotlib.figure.Figure``.

Saving is the caller's choice (:func:`save_figure` writes atomically at modest dpi so that
committed notebooks stay small).
"""

from __future__ import annotations

import math
import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from cnnlab.data.images import load_image
from cnnlab.files import atomic_path

FIGURE_DPI = 80


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = FIGURE_DPI) -> None:
    """Saves ``fig`` as PNG (written to a temporary name, then renamed)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")


def plot_class_counts(counts: pd.DataFrame, title: str = "Images per class") -> Figure:
    """Grouped horizontal bar chart of images per class per split.

    Args:
        counts: Classes as rows, splits as columns (``Manifest.counts()``).
        title: Figure title.
    """
    height = max(3.0, 0.22 * len(counts) * max(1, len(counts.columns)) ** 0.5 + 1)
    fig, ax = plt.subplots(figsize=(8, min(height, 14)))
    counts.iloc[::-1].plot.barh(ax=ax, width=0.8)
    ax.set_xlabel("images")
    ax.set_ylabel("")
    ax.set_title(title)
    ax.tick_params(axis="y", labelsize=7 if len(counts) > 20 else 9)
    fig.tight_layout()
    return fig


def _grid(n: int, cols: int, size: float = 1.6):
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size * 1.1), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes.flat


def plot_class_samples(rows: pd.DataFrame, per_class: int = 1, max_classes: int = 60,
                       cols: int = 10, seed: int = 0, title: str = "") -> Figure:
    """A grid of ``per_class`` random images of every class, titled with the class.

    Args:
        rows: Manifest rows with ``file`` and ``label`` columns.
        per_class: Images per class.
        max_classes: At most this many classes are shown.
        cols: Grid columns.
        seed: Sampling seed.
        title: Figure title.
    """
    picks = rows.sample(frac=1, random_state=seed).groupby("label").head(per_class)
    picks = picks.sort_values("label")
    picks = picks[picks["label"].isin(sorted(rows["label"].unique())[:max_classes])]
    fig, axes = _grid(len(picks), min(cols, len(picks)))
    for ax, (_, row) in zip(axes, picks.iterrows()):
        ax.imshow(load_image(row["file"]).astype(np.uint8))
        ax.set_title(str(row["label"])[:18], fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_history(history: pd.DataFrame, title: str = "", stage_boundary: int | None = None
                 ) -> Figure:
    """Accuracy and loss curves, train vs validation, from a run's ``history.csv``.

    Args:
        history: Rows per epoch with ``epoch``, ``accuracy``, ``loss``, ``val_accuracy``,
            ``val_loss`` (as written by ``keras.callbacks.CSVLogger``).
        title: Figure title.
        stage_boundary: Epoch where fine-tuning started, drawn as a dashed line.
    """
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    epochs = history["epoch"] + 1
    for ax, metric in zip(axes, ("accuracy", "loss")):
        ax.plot(epochs, history[metric], "o-", label="train")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], "o-", label="validation")
        if stage_boundary:
            ax.axvline(stage_boundary + 0.5, ls="--", c="grey", label="fine-tune starts")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_histories(histories: dict[str, pd.DataFrame], metric: str = "val_accuracy") -> Figure:
    """One curve per model of ``metric`` against epoch, to compare runs."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, history in histories.items():
        ax.plot(history["epoch"] + 1, history[metric], "o-", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(matrix: np.ndarray, class_names: list[str], title: str = "",
                          normalized: bool = False) -> Figure:
    """Seaborn heatmap of a confusion matrix (rows true, columns predicted).

    Annotations are drawn up to 20 classes; beyond that the colours carry it and the tick
    labels shrink so 53 classes stay readable.
    """
    n = len(class_names)
    side = min(14, max(4, 0.24 * n + 2))
    fig, ax = plt.subplots(figsize=(side + 1, side))
    sns.heatmap(matrix, ax=ax, cmap="Blues", square=True, annot=n <= 20,
                fmt=".2f" if normalized else "d", xticklabels=class_names,
                yticklabels=class_names, cbar_kws={"shrink": 0.6},
                vmin=0, vmax=1 if normalized else None)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.tick_params(labelsize=6 if n > 20 else 9)
    ax.set_title(title or ("row-normalised confusion matrix" if normalized else
                           "confusion matrix (counts)"))
    fig.tight_layout()
    return fig


def plot_predictions(rows: pd.DataFrame, y_pred: np.ndarray, class_names: list[str],
                     probs: np.ndarray | None = None, k: int = 12, cols: int = 6,
                     seed: int = 0, title: str = "") -> Figure:
    """Random images titled true / predicted, green when right and red when wrong.

    Args:
        rows: Split rows with ``file`` and ``label_index`` (the order of ``y_pred``).
        y_pred: Predicted class indices.
        class_names: Names in index order.
        probs: Optional ``(n, classes)`` probabilities, to print the predicted one.
        k: Images shown.
        cols: Grid columns.
        seed: Sampling seed.
        title: Figure title.
    """
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(rows), size=min(k, len(rows)), replace=False)
    fig, axes = _grid(len(picks), min(cols, len(picks)), size=1.9)
    for ax, i in zip(axes, picks):
        true, pred = int(rows["label_index"].iloc[i]), int(y_pred[i])
        ax.imshow(load_image(rows["file"].iloc[i]).astype(np.uint8))
        p = f" {probs[i, pred]:.2f}" if probs is not None else ""
        ax.set_title(f"true: {class_names[true][:16]}\npred: {class_names[pred][:16]}{p}",
                     fontsize=7, color="green" if true == pred else "red")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_top_k(images: list[np.ndarray], table: pd.DataFrame, title: str = "") -> Figure:
    """Each image beside a bar chart of its top-k classes (inference results).

    Args:
        images: ``(h, w, 3)`` float32 RGB in ``[0, 255]``, one per file, in ``table`` order.
        table: Rows ``file, rank, class, probability`` (``Classifier.predict_files``).
        title: Figure title.
    """
    files = list(dict.fromkeys(table["file"]))
    fig, axes = plt.subplots(len(files), 2, figsize=(7, 2.2 * len(files)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1.4]})
    for (ax_img, ax_bar), file, image in zip(axes, files, images):
        ax_img.imshow(image.astype(np.uint8))
        ax_img.set_title(file, fontsize=8)
        ax_img.axis("off")
        top = table[table["file"] == file].sort_values("rank", ascending=False)
        ax_bar.barh(top["class"], top["probability"], color="tab:blue")
        ax_bar.set_xlim(0, 1)
        ax_bar.set_xlabel("probability")
        ax_bar.tick_params(labelsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_lr_find(result) -> Figure:
    """Smoothed training loss against learning rate (log scale) of a ``lr_find`` sweep.

    Args:
        result: A ``lr_finder.LRFinderResult``; its steepest-descent suggestion is marked.
    """
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.plot(result.learning_rates, result.losses, "-", label="smoothed loss")
    ax.plot(result.learning_rates, result.raw_losses, ".", ms=3, alpha=0.35, c="grey",
            label="batch loss")
    at = int(np.argmin(np.abs(result.learning_rates - result.suggestion)))
    ax.plot(result.suggestion, result.losses[at], "o", c="tab:red",
            label=f"steepest descent: {result.suggestion:.1e}" if result.has_descent
            else "no clear descent")
    ax.set_xscale("log")
    top = np.nanpercentile(result.losses, 95) * 1.3
    ax.set_ylim(min(result.losses.min() * 0.9, top * 0.5), top)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("learning-rate range test" + (" (diverged, stopped)" if result.diverged
                                               else ""))
    fig.tight_layout()
    return fig


def jpeg_image(fig: Figure, quality: int = 75, dpi: int = 72):
    """``fig`` as an inline JPEG (``IPython.display.Image``), the figure closed.

    Photo grids stored as PNG make a notebook several times larger than as JPEG; show them
    with ``display(jpeg_image(fig))`` (after saving the PNG, if wanted).

    Args:
        fig: The figure.
        quality: JPEG quality, 1-95.
        dpi: Resolution of the rendering.

    Returns:
        An ``IPython.display.Image`` holding the JPEG bytes.
    """
    import io

    from IPython.display import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="jpeg", dpi=dpi, bbox_inches="tight",
                pil_kwargs={"quality": quality})
    plt.close(fig)
    return Image(data=buffer.getvalue(), format="jpeg")
