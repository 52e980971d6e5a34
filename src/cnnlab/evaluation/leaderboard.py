"""The leaderboard: every saved model scored on a whole split, with what a deployment needs.

Beside accuracy and macro-F1 with their intervals (:mod:`cnnlab.evaluation.metrics`), read
from the saved predictions (:mod:`cnnlab.evaluation.predictions`), it lists parameters, file
sizes, inference latency measured on the machine it ran on, training time and the weights
each model started from.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from cnnlab.config import display_path
from cnnlab.deploy.export import (
    MODEL_FILES,
    list_models,
    load_metadata,
    load_model,
    model_folder,
    model_name,
)
from cnnlab.evaluation.interpretation import Interpretation
from cnnlab.evaluation.metrics import CONFIDENCE, collapse_reason
from cnnlab.evaluation.predictions import (
    ClassMismatchError,
    Predictions,
    class_order,
    split_predictions,
)

LATENCY_BATCH_SIZES = (1, 32)


def time_calls(call: Callable[[], object], warmup: int = 3, repeats: int = 15) -> np.ndarray:
    """Wall-clock seconds of ``repeats`` calls of ``call``, after ``warmup`` untimed calls.

    The warm-up calls absorb one-off costs (tracing and compiling the predict function,
    allocating buffers, loading kernels) that a deployed model pays once, not per image.

    Args:
        call: The operation to time (blocking: it must return only when done).
        warmup: Untimed calls first (at least 1).
        repeats: Timed calls (at least 1).

    Returns:
        ``(repeats,)`` float64 seconds, one per timed call, measured with
        ``time.perf_counter``.

    Raises:
        ValueError: If ``warmup`` or ``repeats`` is below 1.
    """
    if warmup < 1 or repeats < 1:
        raise ValueError(f"need warmup >= 1 and repeats >= 1, got {warmup} and {repeats}")
    for _ in range(warmup):
        call()
    seconds = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        call()
        seconds[i] = time.perf_counter() - start
    return seconds


def measure_latency(model: keras.Model, batch_size: int = 1, warmup: int = 3,
                    repeats: int = 15, seed: int = 0) -> dict:
    """Inference latency of ``model`` on this machine: median of timed runs after warm-up.

    Each timed run is one ``model.predict_on_batch`` on a fixed random batch of
    ``(batch_size, h, w, 3)`` float32 in ``[0, 255]`` (the model's own input size), which
    includes copying the probabilities back to the host, as a deployed model does.

    Args:
        model: A classifier taking ``(batch, h, w, 3)`` float32 RGB in ``[0, 255]``.
        batch_size: Images per call.
        warmup: Untimed calls first (see :func:`time_calls`).
        repeats: Timed calls; the median is reported.
        seed: Seed of the random input.

    Returns:
        ``{"batch size", "median ms/batch", "median ms/image", "median ms/image low",
        "median ms/image high", "p90 ms/image", "runs"}``: the low/high pair is the 95%
        distribution-free interval of the median (:func:`median_interval`).
    """
    shape = (batch_size, *model.input_shape[1:])
    images = np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)
    seconds = time_calls(lambda: model.predict_on_batch(images), warmup, repeats)
    low, high = median_interval(seconds)
    return {
        "batch size": batch_size,
        "median ms/batch": float(np.median(seconds) * 1e3),
        "median ms/image": float(np.median(seconds) * 1e3 / batch_size),
        "median ms/image low": low * 1e3 / batch_size,
        "median ms/image high": high * 1e3 / batch_size,
        "p90 ms/image": float(np.percentile(seconds, 90) * 1e3 / batch_size),
        "runs": repeats,
    }


def median_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Distribution-free interval of the median: a pair of order statistics.

    The number of values below the population median is Binomial(n, 1/2), so the interval
    between the ``j``-th and ``(n - j + 1)``-th smallest values covers the median with
    probability at least ``confidence`` for the largest such ``j`` (Hollander, Wolfe & Chicken,
    "Nonparametric Statistical Methods", 3rd ed., 2014, §3.6).

    Args:
        values: ``(n,)`` repeated measurements (e.g. seconds per call).
        confidence: Confidence level in (0, 1).

    Returns:
        ``(low, high)``; the smallest and largest value when ``n`` is too small for the level
        (below 6 values at 95%).
    """
    from scipy import stats

    ordered = np.sort(np.asarray(values, np.float64).reshape(-1))
    n, alpha = len(ordered), (1 - confidence) / 2
    # j: the largest count with P(Binomial(n, 1/2) <= j) <= alpha; 0-based, the low bound is
    # the (j + 1)-th smallest value.
    j = int(stats.binom.ppf(alpha, n, 0.5))
    if stats.binom.cdf(j, n, 0.5) > alpha:
        j -= 1
    if j < 0:
        return float(ordered[0]), float(ordered[-1])
    return float(ordered[j]), float(ordered[n - 1 - j])


def machine_description() -> str:
    """The device latency was measured on, e.g. ``"CPU: Intel(R) Xeon(R) Processor, 2 cores"``.

    Names the GPU when TensorFlow sees one (``tf.config.experimental.get_device_details``),
    else the CPU model from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere) and the
    number of logical cores.
    """
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"GPU: {details.get('device_name', gpus[0].name)}"
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"CPU: {name}, {os.cpu_count()} cores"


def saved_models(models_dir: str | os.PathLike, dataset: str) -> list[Path]:
    """The saved models of ``dataset``: the folders ``models/<dataset>-*/``."""
    return list_models(models_dir, prefix=f"{dataset}-")


def training_record(meta: dict, checkpoints_dir: str | os.PathLike | None = None) -> dict:
    """How long a model trained and for how many epochs, read from its run folder.

    Args:
        meta: The model's JSON sidecar (``export.load_metadata``): ``run_folder`` names
            ``checkpoints/<run>/``; ``train_seconds`` is the wall-clock time ``training``
            measured around the run in the process that saved the model.
        checkpoints_dir: The ``checkpoints/`` folder; None skips the run folder.

    Returns:
        ``{"epochs", "train minutes", "train time from", "run folder"}``: epochs are the rows
        of the run's ``history.csv``; minutes are the sum of its per-epoch ``seconds`` column
        (every epoch, also those of an interrupted and resumed run) when the run folder has
        one (``training.fitting.train_minutes``, the definition used everywhere), else the
        sidecar's ``train_seconds``; None where neither exists.
    """
    run = meta.get("run_folder")
    epochs, seconds, source = None, meta.get("train_seconds"), "model sidecar"
    if checkpoints_dir is not None and run:
        history_file = Path(checkpoints_dir) / run / "history.csv"
        if history_file.is_file():
            history = pd.read_csv(history_file)
            epochs = len(history)
            if "seconds" in history and history["seconds"].notna().all():
                seconds, source = float(history["seconds"].sum()), "run folder"
    if seconds is None:
        source = None
    return {"epochs": epochs,
            "train minutes": round(seconds / 60, 1) if seconds is not None else None,
            "train time from": source, "run folder": run}


def leaderboard_row(path: str | os.PathLike, predictions: Predictions,
                    model: keras.Model | None = None, latency: Iterable[dict] = (),
                    checkpoints_dir: str | os.PathLike | None = None) -> dict:
    """One leaderboard row: test metrics with intervals, size, latency, training, weights.

    Args:
        path: The model folder ``models/<name>/`` (or a file in it).
        predictions: The model's predictions on the whole test split.
        model: The loaded model, to count parameters (else the sidecar's counts).
        latency: Results of :func:`measure_latency`, one per batch size (adds the device
            and the 1-minute load average after timing).
        checkpoints_dir: The ``checkpoints/`` folder, for :func:`training_record`.

    Returns:
        A dict of column name to value.
    """
    folder = model_folder(path)
    meta = load_metadata(folder)
    keras_file, h5 = folder / MODEL_FILES[".keras"], folder / MODEL_FILES[".h5"]
    if model is not None:
        total = int(model.count_params())
        trainable = int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))
    else:
        total, trainable = meta.get("params_total"), meta.get("params_trainable")
    row = {
        "model": meta.get("model", model_name(folder)),
        **predictions.metrics(),
        "params": total,
        "trainable params": trainable,
        ".keras MB": round(keras_file.stat().st_size / 1e6, 2),
        ".h5 MB": round(h5.stat().st_size / 1e6, 2) if h5.exists() else None,
        "image size": meta.get("image_size"),
    }
    for result in latency:
        row[f"ms/image (batch {result['batch size']})"] = round(result["median ms/image"], 2)
        for end in ("low", "high"):
            if f"median ms/image {end}" in result:
                row[f"ms/image (batch {result['batch size']}) {end}"] = round(
                    result[f"median ms/image {end}"], 2)
    if latency:
        row["latency device"] = machine_description()
        # Other work on a shared machine slows the timings; the load says how busy it was.
        row["load (1 min)"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") \
            else None
    row.update(training_record(meta, checkpoints_dir))
    row["weights"] = meta.get("weights", "n/a")
    return row


def rank(board: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard in ranking order: by ``val accuracy`` (else ``accuracy``), best first,
    with collapsed models (a non-empty ``collapsed`` column) after every other, unranked.

    Args:
        board: One row per model.

    Returns:
        The rows reordered, index reset.
    """
    order = "val accuracy" if "val accuracy" in board else "accuracy"
    collapsed = board["collapsed"].fillna("").astype(str) != "" if "collapsed" in board else \
        pd.Series(False, index=board.index)
    return board.assign(_collapsed=collapsed).sort_values(
        ["_collapsed", order], ascending=[True, False], kind="stable"
    ).drop(columns="_collapsed").reset_index(drop=True)


def pareto_front(board: pd.DataFrame, cost: str, value: str = "accuracy") -> pd.Series:
    """Which models no other model beats on both ``cost`` (lower) and ``value`` (higher).

    Where ``board`` has ``f"{cost} low"`` and ``f"{cost} high"`` (the interval of a measured
    latency), costs whose intervals overlap count as equal: a model is not kept on the front
    for being 0.01 ms faster inside the noise of the measurement.

    Args:
        board: One row per model.
        cost: Column to minimise, e.g. ``"ms/image (batch 1)"``.
        value: Column to maximise.

    Returns:
        Boolean Series aligned with ``board``: True on the Pareto front.
    """
    costs, values = board[cost].to_numpy(float), board[value].to_numpy(float)
    if f"{cost} low" in board and f"{cost} high" in board:  # measured with an interval
        low, high = board[f"{cost} low"].to_numpy(float), board[f"{cost} high"].to_numpy(float)
        low, high = np.where(np.isnan(low), costs, low), np.where(np.isnan(high), costs, high)
    else:
        low = high = costs
    # j dominates i when j is no slower beyond the measurement's interval (j's low end at or
    # below i's high end), at least as accurate, and better in one: more accurate, or faster
    # with the intervals apart. A latency difference inside the intervals keeps no model.
    dominated = [
        bool(np.any((low <= high[i]) & (values >= values[i])
                    & ((values > values[i]) | (high < low[i]))))
        for i in range(len(costs))
    ]
    return pd.Series(~np.array(dominated, dtype=bool), index=board.index, name="Pareto")


def evaluate_models(
    paths,
    rows: pd.DataFrame,
    class_names: list[str],
    batch_size: int = 32,
    latency_batch_sizes: Iterable[int] = LATENCY_BATCH_SIZES,
    warmup: int = 3,
    repeats: int = 15,
    checkpoints_dir: str | os.PathLike | None = None,
    split: str = "test",
    val_rows: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, dict[str, Interpretation]]:
    """Evaluates saved models on a whole split, each at its own input size.

    The predictions come from :func:`~cnnlab.evaluation.predictions.split_predictions`:
    computed once per model and split, written to ``models/<name>/predictions/<split>.npz``
    and read from there afterwards, so the leaderboard, the interpretations and any later
    reader see the same numbers without scoring the split again.

    Args:
        paths: Saved model folders (``saved_models``).
        rows: Split rows with ``file`` and ``label_index`` (``Manifest.split("test")``).
        class_names: Names in index order.
        batch_size: Images per batch for the predictions.
        latency_batch_sizes: Batch sizes whose latency per image is timed (empty: none).
        warmup: Untimed calls before each latency measurement.
        repeats: Timed calls per latency measurement (the median is reported).
        checkpoints_dir: The ``checkpoints/`` folder holding the run folders.
        split: Name of the split ``rows`` come from (names the predictions file).
        val_rows: The validation split's rows. Given, each model is also scored on it (saved
            predictions, ``models/<name>/predictions/val.npz``) and the board is ordered by
            that ``val accuracy``: its first row is the model chosen on validation, so the
            test split reports and never chooses. Without them the board is ordered by
            ``accuracy`` on ``rows``.

    Returns:
        ``(leaderboard, interpretations)``: a DataFrame (one row per model, columns of
        :func:`leaderboard_row`, ``val accuracy`` with ``val_rows``, ``collapsed`` (why a
        model's outputs show a collapsed run, ``metrics.collapse_reason`` on validation,
        else on ``rows``; such models come last, unranked and off the Pareto front) and
        ``Pareto`` when batch-1 latency was timed), best first, and ``{model name:
        interpret.Interpretation}`` with each model and its predictions.

    A model whose sidecar lists other classes than ``class_names`` is skipped with a printed
    reason; one with the same classes in another order is scored with its outputs reordered
    (:func:`class_order`).

    Raises:
        FileNotFoundError: If ``paths`` is empty (train models in notebooks 02/03 first).
        ClassMismatchError: If every model was trained on other classes.
    """
    paths = list(paths)
    if not paths:
        raise FileNotFoundError("no saved models to evaluate; run notebooks 02 and 03 first")
    rows_out, interpretations = [], {}
    rows = rows.reset_index(drop=True)
    for path in paths:
        meta = load_metadata(path)
        name = meta.get("model", model_name(path))
        try:
            order = class_order(meta.get("class_names"), class_names, display_path(path))
        except ClassMismatchError as error:
            print(f"skipped: {error}")
            continue
        model = load_model(path)
        predictions = split_predictions(path, split, rows, class_names, batch_size, model)
        interp = Interpretation(model, rows, predictions, name, order)
        timings = [measure_latency(model, b, warmup, repeats) for b in latency_batch_sizes]
        row = leaderboard_row(path, interp.predictions, model, timings, checkpoints_dir)
        scored = interp.predictions
        if val_rows is not None:
            scored = split_predictions(path, "val", val_rows.reset_index(drop=True),
                                       class_names, batch_size, model)
            row = {"model": row["model"],
                   "val accuracy": float(np.mean(scored.y_pred == scored.y_true)),
                   "val images": len(scored.y_true), **row}
        row["collapsed"] = collapse_reason(scored.probs, class_names) or ""
        rows_out.append(row)
        interpretations[name] = interp
    if not rows_out:
        raise ClassMismatchError("no saved model was trained on this split's classes (see the "
                                 "lines above); run notebooks 02 and 03 on this manifest")
    board = rank(pd.DataFrame(rows_out))
    if "ms/image (batch 1)" in board:
        front = pareto_front(board, "ms/image (batch 1)") & (board["collapsed"] == "")
        board.insert(board.columns.get_loc("ms/image (batch 1)"), "Pareto", front)
    return board, interpretations


def plot_accuracy_vs_latency(board: pd.DataFrame, latency: str = "ms/image (batch 1)",
                             title: str = "", chance: float | None = None) -> Figure:
    """Test accuracy (with its 95% interval) against latency, the Pareto front marked.

    Models trained from random initialisation (``weights`` says ``random init``) are crossed
    in orange and collapsed ones (a non-empty ``collapsed`` column) in red, each named in the
    legend, so that neither passes for a transfer result.

    Args:
        board: From :func:`evaluate_models` (needs ``latency``, ``accuracy`` and its CI).
        latency: Latency column for the x axis (log scale).
        title: Figure title (default: test images and the latency device).
        chance: Accuracy of guessing (``1 / classes``), drawn as a dotted line; None: none.

    Returns:
        The Figure: one point per model, filled and joined by a step line on the front.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    front = board["Pareto"].astype(bool) if "Pareto" in board else pareto_front(board, latency)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    errors = np.vstack([board["accuracy"] - board["accuracy CI low"],
                        board["accuracy CI high"] - board["accuracy"]])
    ax.errorbar(board[latency], board["accuracy"], yerr=errors, fmt="none", ecolor="grey",
                elinewidth=1, capsize=3, zorder=1)
    for on_front, marker in ((True, "o"), (False, "o")):
        part = board[front == on_front]
        ax.scatter(part[latency], part["accuracy"], s=45, zorder=2, marker=marker,
                   facecolors="tab:blue" if on_front else "white", edgecolors="tab:blue",
                   label="Pareto front" if on_front else "dominated")
    edge = board[front].sort_values(latency)
    ax.step(edge[latency], edge["accuracy"], where="post", c="tab:blue", alpha=0.5, zorder=1)
    weights = board["weights"].astype(str) if "weights" in board else pd.Series("", board.index)
    collapsed = (board["collapsed"].fillna("").astype(str) != "") if "collapsed" in board \
        else pd.Series(False, board.index)
    for mask, colour, label in (
            (weights.str.contains("random init", case=False), "tab:orange",
             "random init (no ImageNet weights)"),
            (collapsed, "tab:red", "collapsed (not ranked)")):
        if mask.any():
            ax.scatter(board.loc[mask, latency], board.loc[mask, "accuracy"], s=70, marker="x",
                       c=colour, zorder=3, label=label)
    if chance is not None:
        ax.axhline(chance, ls=":", c="black", lw=1, zorder=1, label=f"chance ({chance:.3g})")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel(f"latency, {latency} (log scale)")
    ax.set_ylabel("test accuracy (95% CI)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2,
              frameon=False)  # below the axes, where it hides no point or label
    device = board["latency device"].iloc[0] if "latency device" in board else ""
    ax.set_title(title or f"{int(board['test images'].iloc[0])} test images; {device}",
                 fontsize=9)
    fig.tight_layout()
    _label_points(fig, ax, board, latency)
    return fig


def _label_points(fig: Figure, ax: Axes, board: pd.DataFrame, latency: str) -> None:
    """Names each point without overprinting a marker or another name.

    Labels are placed best model first, each on the first line (11 points apart) where its
    rendered text overlaps no marker and no earlier label: downwards from a high point, upwards
    from one in the bottom quarter, on the left of points in the right quarter of the latency
    range. A label moved off its point is joined to it by a thin line.
    """
    renderer = fig.canvas.get_renderer()
    radius = 5 * fig.dpi / 72  # half the marker (s=45 is about 7 points across), in pixels
    occupied = []
    for x, y in ax.transData.transform(board[[latency, "accuracy"]].to_numpy(float)):
        occupied.append(Bbox([[x - radius, y - radius], [x + radius, y + radius]]))
    logs = np.log10(board[latency].astype(float))
    right_edge = logs.min() + 0.75 * (logs.max() - logs.min())
    bottom = 0.25 * float(board["accuracy"].max())
    for _, row in board.sort_values("accuracy", ascending=False).iterrows():
        left = bool(np.log10(float(row[latency])) > right_edge)
        up = float(row["accuracy"]) < bottom
        for line in range(12):
            label = ax.annotate(
                row["model"], (row[latency], row["accuracy"]), textcoords="offset points",
                xytext=(-6 if left else 6, 4 + 11 * line * (1 if up else -1)),
                ha="right" if left else "left", va="center" if line else "baseline",
                fontsize=8, arrowprops=dict(arrowstyle="-", color="grey", lw=0.5, shrinkA=0,
                                            shrinkB=4) if line else None)
            label.update_positions(renderer)
            box = Text.get_window_extent(label, renderer)  # the text, not its line
            if not any(box.overlaps(other) for other in occupied):
                break
            if line < 11:
                label.remove()
        occupied.append(box)


def _interval(row: pd.Series, metric: str) -> str:
    return (f"{row[metric]:.3f} [{row[f'{metric} CI low']:.3f}, "
            f"{row[f'{metric} CI high']:.3f}]")


# The leaderboard columns a notebook shows (the CSV keeps every column): what ranks the models,
# what they score with intervals, what they cost, and what they started from.
LEADERBOARD_SHOWN = ("model", "weights", "val accuracy", "accuracy", "accuracy CI low",
                     "accuracy CI high", "macro-F1", "macro-F1 CI low", "macro-F1 CI high",
                     "ms/image (batch 1)", "params", "image size", "epochs", "train minutes",
                     "collapsed", "test images")


def leaderboard_markdown(board: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """The leaderboard as a Markdown table, metrics written ``value [CI low, CI high]``.

    Args:
        board: From :func:`evaluate_models`.
        columns: Columns to keep (those present, in this order; e.g. :data:`LEADERBOARD_SHOWN`
            for a table that fits a notebook); None keeps every column.

    Returns:
        Markdown text (GitHub table) with the test-set size in the metric headers.
    """
    table = board.copy() if columns is None else board[[c for c in columns if c in board]]
    table = table.copy()
    if "weights" in table:  # the start, without the local file name (the CSV has it)
        table["weights"] = [str(w).split(" (local file")[0] for w in table["weights"]]
    n = int(table["test images"].iloc[0]) if "test images" in table else None
    level = f"{CONFIDENCE:.0%}"
    for metric in ("accuracy", "macro-F1"):
        if f"{metric} CI low" in table:
            table[metric] = [_interval(r, metric) for _, r in table.iterrows()]
            table = table.drop(columns=[f"{metric} CI low", f"{metric} CI high"])
    table = table.rename(columns={
        "accuracy": f"test accuracy [{level} CI] (n={n})",
        "macro-F1": f"macro-F1 [{level} CI] (n={n})",
    }).drop(columns=["test images"], errors="ignore")
    formats = {"params": "{:,.0f}", "trainable params": "{:,.0f}", "loss": "{:.3f}",
               "val accuracy": "{:.3f}", "val images": "{:.0f}",
               ".keras MB": "{:.1f}", ".h5 MB": "{:.1f}", "train minutes": "{:.1f}",
               "epochs": "{:.0f}", "image size": "{:.0f}"}
    formats.update({c: "{:.2f}" for c in table.columns if str(c).startswith("ms/image")})
    for column, fmt in formats.items():
        if column in table:
            table[column] = [fmt.format(v) if pd.notna(v) else "" for v in table[column]]
    return table.to_markdown(index=False, disable_numparse=True)


def write_leaderboard(board: pd.DataFrame, stem: str | os.PathLike) -> tuple[Path, Path]:
    """Writes the leaderboard as ``<stem>.csv`` (all numbers) and ``<stem>.md`` (atomically).

    Returns:
        ``(csv path, md path)``.
    """
    from cnnlab.files import atomic_path, write_text

    stem = Path(stem)
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        board.to_csv(tmp, index=False)
    write_text(stem.with_suffix(".md"), leaderboard_markdown(board) + "\n")
    return stem.with_suffix(".csv"), stem.with_suffix(".md")
