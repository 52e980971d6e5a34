"""Every figure of the project, each a function returning a ``matplotlib.figure.Figure``.

Saving is the caller's choice (:func:`save_figure` writes atomically at modest dpi so that
committed notebooks stay small, then closes the figure unless Jupyter is still to show it).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from cnnlab.data.images import load_image
from cnnlab.files import atomic_path

FIGURE_DPI = 80

# Tick labels of a confusion matrix: the figure grows with the class count instead.
MATRIX_LABEL_PT = 8
# Words for the metric columns of history.csv, for axis labels.
_METRIC_WORDS = {"accuracy": "training accuracy", "loss": "training loss",
                 "val_accuracy": "validation accuracy", "val_loss": "validation loss"}


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = FIGURE_DPI) -> None:
    """Saves ``fig`` as PNG (written to a temporary name, then renamed), then closes it.

    Closing stops pyplot from holding every figure saved: a script or test that saves many
    would pass matplotlib's limit of 20 open figures (a ``RuntimeWarning``) and keep their
    memory. In Jupyter (the inline backend, as on Colab and under papermill) the figure is
    left open instead: the backend shows every open figure once when the cell ends, then
    closes it, which is how a notebook cell shows the figure it saved. A photo grid shown
    with ``display(jpeg_image(fig))`` after saving is closed by :func:`jpeg_image`, so it
    appears once, as JPEG.

    Args:
        fig: The figure.
        path: The ``.png`` file; its folder is created if missing.
        dpi: Resolution of the PNG.
    """
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    if not _shown_when_the_cell_ends():
        plt.close(fig)


def _shown_when_the_cell_ends() -> bool:
    """Whether Jupyter's inline backend is active (it shows, then closes, open figures)."""
    return "inline" in matplotlib.get_backend()


def epoch_axis(ax, epochs: int) -> None:
    """An x axis of epochs ``1..epochs``: whole-number ticks only, half an epoch of margin
    (one epoch included: matplotlib's integer locator alone falls back to fractions when the
    view spans less than one)."""
    ax.set_xlim(0.5, max(int(epochs), 1) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def epoch_ticks(fig: Figure) -> list[float]:
    """The x tick values inside the view of every axes of ``fig`` whose x label starts with
    ``epoch``: all whole numbers when the figure reads well (no epoch 1.5)."""
    values = []
    for ax in fig.axes:
        if ax.get_xlabel().lower().startswith("epoch"):
            low, high = sorted(ax.get_xlim())
            values += [float(t) for t in ax.get_xticks() if low <= t <= high]
    return values


def show_figure_facts(shell=None) -> bool:
    """Adds each figure's facts to its notebook output, for ``scripts/check_notebooks.py``.

    Registers a mime-bundle formatter for figures with IPython, so that every figure a
    notebook shows carries ``{"cnnlab": {"epoch_ticks": [...]}}`` (:func:`epoch_ticks`) in
    its output's metadata. The mime-bundle formatter adds metadata only, and the inline
    backend, which re-registers its PNG formatter whenever it is configured, leaves it alone.

    Args:
        shell: The IPython shell (default: the running one).

    Returns:
        False outside IPython (nothing changed).
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = shell or get_ipython()
    if shell is None:
        return False

    def facts(fig, include=None, exclude=None):
        return {}, {"cnnlab": {"epoch_ticks": epoch_ticks(fig)}}

    shell.display_formatter.mimebundle_formatter.for_type(Figure, facts)
    return True


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
    ax.set_ylabel("class")
    ax.set_title(title)
    ax.tick_params(axis="y", labelsize=7 if len(counts) > 20 else 9)
    fig.tight_layout()
    return fig


def fit_label(label, width: int = 18) -> str:
    """A class name for a small title: whole, wrapped onto lines of ``width`` characters at
    spaces, never cut ("seven of diamonds", not "seven of diamond")."""
    import textwrap

    return "\n".join(textwrap.wrap(str(label), width, break_long_words=False)) or str(label)


def _grid(n: int, cols: int, size: float = 1.6):
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size * 1.1), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes.flat


def plot_class_samples(rows: pd.DataFrame, per_class: int = 1, max_classes: int = 60,
                       cols: int = 10, seed: int = 0, title: str = "") -> Figure:
    """A grid of ``per_class`` random images of every class, each titled with its class.

    Args:
        rows: Manifest rows with ``file`` and ``label`` columns.
        per_class: Images per class.
        max_classes: At most this many classes are shown.
        cols: Grid columns.
        seed: Sampling seed.
        title: Figure title (default: how many images of how many classes).
    """
    picks = rows.sample(frac=1, random_state=seed).groupby("label").head(per_class)
    picks = picks.sort_values("label")
    picks = picks[picks["label"].isin(sorted(rows["label"].unique())[:max_classes])]
    fig, axes = _grid(len(picks), min(cols, len(picks)))
    for ax, (_, row) in zip(axes, picks.iterrows()):
        ax.imshow(load_image(row["file"]).astype(np.uint8))
        ax.set_title(fit_label(row["label"]), fontsize=7)
    classes = picks["label"].nunique()
    fig.suptitle(title or f"{per_class} random image{'s' * (per_class > 1)} of each of "
                          f"{classes} classes")
    fig.tight_layout()
    return fig


def plot_history(history: pd.DataFrame, title: str = "", stage_boundary: int | None = None,
                 chance: float | None = None) -> Figure:
    """Accuracy and loss curves, train vs validation, from a run's ``history.csv``.

    Epochs are whole numbers on the x axis.

    Args:
        history: Rows per epoch with ``epoch``, ``accuracy``, ``loss``, ``val_accuracy``,
            ``val_loss`` (as written by ``keras.callbacks.CSVLogger``).
        title: Figure title (default: ``"accuracy and loss per epoch"``).
        stage_boundary: Epoch where fine-tuning started, drawn as a dashed line.
        chance: Accuracy of guessing (``1 / classes``), drawn as a dotted line on the accuracy
            panel; None draws none.
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
        epoch_axis(ax, int(epochs.max()) if len(epochs) else 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, 1.02)  # the whole scale: a run stuck near chance looks stuck
    if chance is not None:
        axes[0].axhline(chance, ls=":", c="black", lw=1, label=f"chance ({chance:.3g})")
    axes[0].legend(fontsize=8)
    fig.suptitle(title or "accuracy and loss per epoch")
    fig.tight_layout()
    return fig


def plot_histories(histories: Mapping[str, pd.DataFrame], metric: str = "val_accuracy",
                   x: str = "seconds", stage_boundaries: Mapping[str, int | None] | None = None,
                   title: str = "", log_x: bool = False, chance: float | None = None
                   ) -> Figure:
    """One curve per model of ``metric`` against training time (or epoch), to compare runs.

    Epochs cost very different amounts: a frozen-backbone epoch on cached features takes a
    fraction of a second, a backbone trained from scratch minutes. Against wall-clock seconds
    (the cumulative ``seconds`` column that ``cnnlab.training`` writes to every
    ``history.csv``, one value per epoch) the curves compare what each model reached for the
    time spent; each point sits at the end of its epoch.

    Args:
        histories: ``{label: history.csv}`` with ``epoch``, ``metric`` and, for
            ``x="seconds"``, ``seconds``.
        metric: Column to plot.
        x: ``"seconds"`` (cumulative wall-clock training time) or ``"epoch"``. A history
            without ``seconds`` (a run older than the column) turns the figure to epochs,
            with a warning.
        stage_boundaries: ``{label: epochs of stage 1}`` (``TrainingResult.stage_boundary``);
            where fine-tuning starts is drawn as a dashed line in the run's colour.
        title: Figure title (default: the metric against the x axis).
        log_x: Log-scale x axis (spreads the short runs when one run is far longer).
        chance: Accuracy of guessing (``1 / classes``), drawn as a dotted line; None draws
            none.

    Returns:
        The Figure, one line per run; epochs, when on the x axis, are whole numbers.

    Raises:
        ValueError: If ``x`` is neither ``"seconds"`` nor ``"epoch"``.
    """
    if x not in ("seconds", "epoch"):
        raise ValueError(f"x={x!r}; choose 'seconds' (wall clock) or 'epoch'")
    without = [name for name, history in histories.items() if "seconds" not in history]
    if x == "seconds" and without:
        warnings.warn(f"{', '.join(without)}: history.csv has no 'seconds' column; plotting "
                      f"against epochs (retrain to record the time per epoch)", stacklevel=2)
        x = "epoch"
    fig, ax = plt.subplots(figsize=(7, 3.8))
    marked = False
    for name, history in histories.items():
        xs = (history["seconds"].cumsum() if x == "seconds" else history["epoch"] + 1)
        (line,) = ax.plot(xs.to_numpy(), history[metric].to_numpy(), "o-", ms=3, label=name)
        boundary = (stage_boundaries or {}).get(name)
        if boundary and 0 < boundary < len(history):
            at = float(xs.iloc[boundary - 1]) if x == "seconds" else boundary + 0.5
            ax.axvline(at, ls="--", lw=1, c=line.get_color(), alpha=0.8)
            marked = True
    if chance is not None:
        ax.axhline(chance, ls=":", c="black", lw=1, label=f"chance ({chance:.3g})")
    if x == "epoch" and not log_x:
        epoch_axis(ax, max((len(h) for h in histories.values()), default=1))
    handles = ax.get_legend_handles_labels()[0]
    if marked:
        handles.append(Line2D([], [], ls="--", lw=1, c="grey", label="fine-tuning starts"))
    if log_x:
        ax.set_xscale("log")
    scale = " (log scale)" if log_x else ""
    words = _METRIC_WORDS.get(metric, metric)
    ax.set_xlabel(f"training time, wall-clock seconds{scale}" if x == "seconds"
                  else f"epoch{scale}")
    ax.set_ylabel(words)
    ax.grid(alpha=0.3, which="both")
    ax.legend(handles=handles, fontsize=8)
    ax.set_title(title or (f"{words} against training time" if x == "seconds"
                           else f"{words} per epoch"))
    fig.tight_layout()
    return fig


def _matrix_side(n: int) -> float:
    """Inches of a confusion matrix's side: room for ``n`` labels at ``MATRIX_LABEL_PT``."""
    if n <= 20:  # annotated cells
        return max(4.0, 0.32 * n + 2)
    return 0.2 * n + 2.5  # 0.2 in = 14 pt per row for 8 pt labels


def plot_confusion_matrix(matrix: np.ndarray, class_names: list[str], title: str = "",
                          normalized: bool = False) -> Figure:
    """Seaborn heatmap of a confusion matrix (rows true, columns predicted).

    Annotations are drawn up to 20 classes; beyond that the colours carry it. Every class is
    labelled at ``MATRIX_LABEL_PT`` (8 pt) or more: the figure grows with the class count
    (about 13 inches at 53 classes). :func:`plot_confused_block` enlarges the classes that
    are mistaken for each other most.

    Args:
        matrix: ``(classes, classes)`` counts, or shares when ``normalized``.
        class_names: Names in index order.
        title: Figure title (default: what the cells hold).
        normalized: Cells are row shares in ``[0, 1]`` (two decimals) rather than counts.
    """
    n = len(class_names)
    side = _matrix_side(n)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    sns.heatmap(matrix, ax=ax, cmap="Blues", square=True, annot=n <= 20,
                fmt=".2f" if normalized else "d", xticklabels=class_names,
                yticklabels=class_names,
                cbar_kws={"shrink": 0.6,
                          "label": "share of the true class" if normalized else "images"},
                vmin=0, vmax=1 if normalized else None)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.tick_params(labelsize=9 if n <= 20 else MATRIX_LABEL_PT)
    ax.set_title(title or ("row-normalised confusion matrix" if normalized else
                           "confusion matrix (counts)"))
    fig.tight_layout()
    return fig


def confused_classes(matrix: np.ndarray, k: int = 12,
                     pairs: Iterable[tuple[int, int]] | None = None) -> np.ndarray:
    """The classes of the most frequent confusions: at most ``k``, in class-index order.

    Pairs (true, predicted) of different classes are taken most frequent first; a pair joins
    when both its classes fit in the ``k``, so every pair taken is wholly inside the block.
    Places left are filled with the classes of most off-diagonal images (as true or as
    predicted class) not yet in.

    Args:
        matrix: ``(classes, classes)`` counts (rows true, columns predicted).
        k: Most classes returned.
        pairs: Pairs of class indices in priority order (e.g. from
            ``Interpretation.most_confused``); default: by count, then true, then predicted
            index.

    Returns:
        ``(m,)`` int class indices, ``m <= k``; empty when nothing is confused.
    """
    counts = np.asarray(matrix, dtype=float).copy()
    np.fill_diagonal(counts, 0)
    if pairs is None:
        true_idx, pred_idx = np.nonzero(counts > 0)
        order = np.lexsort((pred_idx, true_idx, -counts[true_idx, pred_idx]))
        pairs = zip(true_idx[order], pred_idx[order])
    chosen: list[int] = []
    for true, pred in pairs:
        new = [c for c in dict.fromkeys((int(true), int(pred))) if c not in chosen]
        if len(chosen) + len(new) <= k:
            chosen += new
        if len(chosen) >= k:
            break
    mass = counts.sum(axis=0) + counts.sum(axis=1)
    for index in np.argsort(-mass, kind="stable"):
        if len(chosen) >= k or mass[index] == 0:
            break
        if int(index) not in chosen:
            chosen.append(int(index))
    return np.array(sorted(chosen), dtype=int)


def plot_confused_block(matrix: np.ndarray, class_names: list[str], k: int = 12,
                        classes: Iterable[int] | None = None, title: str = "") -> Figure:
    """The most-confused block of a confusion matrix, enlarged, its counts written out.

    Off-diagonal cells are coloured by count (the mistakes); the diagonal (correct) is grey
    with its count, so the mistakes are not drowned out by it. Row totals leave out the
    predictions of classes outside the block.

    Args:
        matrix: ``(classes, classes)`` counts (rows true, columns predicted).
        class_names: Names in index order.
        k: Most classes shown (:func:`confused_classes`).
        classes: Class indices to show instead (in this order).
        title: Figure title (default: how many classes of how many, and the images).

    Returns:
        The Figure: a ``(m, m)`` annotated heatmap, ``m <= k``. When nothing is confused,
        the first ``k`` classes are shown and the title says so.
    """
    counts = np.asarray(matrix)
    n = len(class_names)
    block = np.asarray(list(classes) if classes is not None else confused_classes(counts, k),
                       dtype=int)
    none_confused = len(block) == 0
    if none_confused:
        block = np.arange(min(k, n))
    part = counts[np.ix_(block, block)]
    off = part.astype(float)
    np.fill_diagonal(off, np.nan)
    m = len(block)
    side = max(4.0, 0.55 * m + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    cmap = plt.get_cmap("Reds").with_extremes(bad="#e0e0e0")  # bad: the diagonal
    peak = np.nanmax(off) if m > 1 and np.isfinite(off).any() else 1.0
    image = ax.imshow(np.ma.masked_invalid(off), cmap=cmap, vmin=0, vmax=max(peak, 1))
    for i in range(m):
        for j in range(m):
            value = part[i, j]
            if value == 0:
                continue
            dark = i != j and value > 0.6 * peak
            ax.text(j, i, f"{int(value)}", ha="center", va="center", fontsize=9,
                    color="white" if dark else "black",
                    fontweight="bold" if i != j else "normal")
    names = [class_names[c] for c in block]
    ax.set_xticks(range(m), names, rotation=90, fontsize=9)
    ax.set_yticks(range(m), names, fontsize=9)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    bar = fig.colorbar(image, ax=ax, shrink=0.6, label="images (off-diagonal; diagonal in grey)")
    bar.locator = MaxNLocator(integer=True)  # counts of images: whole numbers
    bar.update_ticks()
    if not title:
        what = "no image is misclassified" if none_confused else \
            f"the {m} most confused of {n} classes"
        title = f"{what}, counts of {int(counts.sum())} images"
    ax.set_title(title)
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
        title: Figure title (default: how many images, and how many right).
    """
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(rows), size=min(k, len(rows)), replace=False)
    fig, axes = _grid(len(picks), min(cols, len(picks)), size=1.9)
    for ax, i in zip(axes, picks):
        true, pred = int(rows["label_index"].iloc[i]), int(y_pred[i])
        ax.imshow(load_image(rows["file"].iloc[i]).astype(np.uint8))
        p = f" {probs[i, pred]:.2f}" if probs is not None else ""
        ax.set_title(f"true: {fit_label(class_names[true])}\n"
                     f"pred: {fit_label(class_names[pred])}{p}",
                     fontsize=7, color="green" if true == pred else "red")
    right = int((rows["label_index"].to_numpy()[picks] == np.asarray(y_pred)[picks]).sum())
    fig.suptitle(title or f"{len(picks)} random images: true / predicted class, "
                          f"{right} right (green)")
    fig.tight_layout()
    return fig


def plot_top_k(images: list[np.ndarray], table: pd.DataFrame, title: str = "") -> Figure:
    """Each image beside a bar chart of its top-k classes (inference results).

    Args:
        images: ``(h, w, 3)`` float32 RGB in ``[0, 255]``, one per file, in ``table`` order.
        table: Rows ``file, rank, class, probability`` (``Classifier.predict_files``).
        title: Figure title (default: ``"top-k predicted classes"``).
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
        ax_bar.set_ylabel("class")
        ax_bar.tick_params(labelsize=8)
    fig.suptitle(title or f"top-{table['rank'].max()} predicted classes")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))  # 0.4 in for the title
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
