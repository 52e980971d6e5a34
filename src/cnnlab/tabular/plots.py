"""Figures of the mixed-data regression, each a function returning a ``Figure``."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from cnnlab.tabular.metrics import regression_metrics

__all__ = ["usd", "plot_predicted_vs_actual", "plot_residuals", "plot_price_photos",
           "plot_loss_curves", "plot_metric_intervals"]


def usd(value: float) -> str:
    """A price as people write it: ``$85``, ``$163k``, ``$1.16M`` (never ``$1,163k``)."""
    sign, value = ("-" if value < 0 else ""), abs(value)
    if value >= 1e6:
        return f"{sign}${value / 1e6:.3g}M"
    if value >= 1e3:
        return f"{sign}${value / 1e3:.3g}k"
    return f"{sign}${value:.0f}"


def _plain_log_axis(axis, label=None) -> None:
    """Log-axis ticks as plain numbers (``label``: value -> text; default ``f"{v:g}"``), at
    1, 2 and 5 times each power of ten, with no ``2x10^0`` minor labels."""
    text = label or (lambda value: f"{value:g}")
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: text(value)))
    axis.set_minor_formatter(NullFormatter())


def _panels(count: int, cols: int = 3, size: float = 3.2):
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, min(cols, count), figsize=(size * min(cols, count),
                                                               size * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.axis("off")
    return fig, list(axes.flat)


def plot_predicted_vs_actual(truth: np.ndarray, predictions: dict[str, np.ndarray],
                             title: str = "Predicted vs actual price, test split") -> Figure:
    """One log-log scatter per model with the diagonal, titled with its test MAPE.

    Args:
        truth: ``(n,)`` true prices (USD).
        predictions: ``{model: (n,) predicted prices (USD)}``.
        title: Figure title.
    """
    fig, axes = _panels(len(predictions))
    low, high = truth.min() / 1.5, truth.max() * 1.5
    for ax, (name, pred) in zip(axes, predictions.items()):
        mape = regression_metrics(truth, pred, n_resamples=100)["MAPE %"]
        ax.scatter(truth, pred, s=10, alpha=0.6)
        ax.plot([low, high], [low, high], color="grey", lw=1, ls="--")
        ax.set(xscale="log", yscale="log", xlim=(low, high), ylim=(low, high),
               xlabel="actual price (USD)", ylabel="predicted price (USD)",
               title=f"{name}: MAPE {mape:.1f}%")
        _plain_log_axis(ax.xaxis, usd)
        _plain_log_axis(ax.yaxis, usd)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_residuals(truth: np.ndarray, predictions: dict[str, np.ndarray],
                   title: str = "Residuals (log of predicted / actual), test split") -> Figure:
    """Residual ``log(pred / actual)`` against the actual price, one panel per model.

    A model that shrinks towards the middle shows a falling band: cheap houses over-priced,
    expensive ones under-priced.
    """
    fig, axes = _panels(len(predictions))
    for ax, (name, pred) in zip(axes, predictions.items()):
        residual = np.log(pred / truth)
        ax.scatter(truth, residual, s=10, alpha=0.6)
        ax.axhline(0, color="grey", lw=1, ls="--")
        ax.set(xscale="log", xlabel="actual price (USD)", ylabel="log(predicted / actual)",
               title=f"{name}: median |residual| {np.median(np.abs(residual)):.2f}")
        _plain_log_axis(ax.xaxis, usd)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_price_photos(rows: pd.DataFrame, photos: dict[str, np.ndarray], predicted: np.ndarray,
                      target: str = "price", count: int = 3,
                      title: str = "Houses the image model prices highest and lowest") -> Figure:
    """The ``count`` rows with the highest and the lowest predicted price, all their photos.

    Args:
        rows: The rows (e.g. the test split), in the order of ``photos`` and ``predicted``.
        photos: ``{room: (n, s, s, 3) uint8}``.
        predicted: ``(n,)`` predicted prices (USD) of an image model.
        target: Column of the true price.
        count: Rows shown at each end.
        title: Figure title.
    """
    order = np.argsort(predicted)
    picks = [*order[::-1][:count], *order[:count]]
    rooms = list(photos)
    fig, axes = plt.subplots(len(picks), len(rooms), figsize=(1.7 * len(rooms),
                                                              1.8 * len(picks)), squeeze=False)
    for r, index in enumerate(picks):
        for c, room in enumerate(rooms):
            ax = axes[r][c]
            ax.imshow(photos[room][index])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(room, fontsize=9)
        rank = "highest" if r < count else "lowest"
        axes[r][0].set_ylabel(f"{rank}\npred {usd(predicted[index])}\n"
                              f"true {usd(rows[target].iloc[index])}", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_loss_curves(histories: dict[str, pd.DataFrame],
                     title: str = "Validation loss against training time") -> Figure:
    """Validation MSE (standardised log price) of each model against wall-clock seconds."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, history in histories.items():
        seconds = history["seconds"].cumsum() if "seconds" in history else history.index + 1
        ax.plot(seconds, history["val_loss"], label=name)
    ax.set(xscale="log", yscale="log", xlabel="training time (s, log scale)",
           ylabel="validation MSE (standardised log price)", title=title)
    _plain_log_axis(ax.xaxis)
    _plain_log_axis(ax.yaxis)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_metric_intervals(table: pd.DataFrame, metric: str = "MAPE %",
                          title: str = "Test MAPE with bootstrap 95% intervals") -> Figure:
    """Horizontal interval plot of one metric, one row per model (``metrics_table`` output)."""
    table = table.sort_values(metric, ascending=False)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(table) + 1.2))
    y = np.arange(len(table))
    ax.errorbar(table[metric], y, xerr=[table[metric] - table[f"{metric} low"],
                                        table[f"{metric} high"] - table[metric]],
                fmt="o", capsize=3)
    ax.set_yticks(y, table.index)
    ax.set(xlabel=metric, ylabel="model", title=title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
