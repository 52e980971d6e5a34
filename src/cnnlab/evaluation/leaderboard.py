"""Predictions and metrics over whole splits, with confidence intervals, and the leaderboard.

Every figure is computed on the entire split (never a few batches) with scikit-learn, and the
split size and a 95% confidence interval are reported next to it: a Wilson score interval for
accuracy (Wilson 1927; recommended by Brown, Cai & DasGupta 2001, "Interval Estimation for a
Binomial Proportion", Statistical Science 16(2)), from SciPy, and for macro-F1 a paired
bootstrap, stratified by true class, with the BCa interval (Efron 1987, "Better bootstrap
confidence intervals", JASA 82:171; see :func:`bootstrap_interval`). The leaderboard adds
what a deployment choice needs: parameters, file sizes, inference latency measured on the
machine it ran on, training time and the weights each model started from.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from matplotlib.figure import Figure
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    log_loss,
)

from cnnlab.config import display_path
from cnnlab.deploy.export import list_models, load_metadata, load_model

if TYPE_CHECKING:
    from cnnlab.evaluation.interpretation import Interpretation

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 1000
LATENCY_BATCH_SIZES = (1, 32)


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE
                    ) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (e.g. accuracy = correct / n).

    Unlike the normal ("Wald") interval it stays inside [0, 1] and keeps its coverage for
    small ``n`` and proportions near 0 or 1 (Brown, Cai & DasGupta 2001). Computed by
    ``scipy.stats.binomtest(...).proportion_ci(method="wilson")``.

    Args:
        successes: Number of successes (correct predictions), ``0 <= successes <= n``.
        n: Number of trials (test images).
        confidence: Confidence level in (0, 1).

    Returns:
        ``(low, high)``, always containing ``successes / n``.

    Raises:
        ValueError: If ``n`` is 0 or ``successes`` is outside ``[0, n]``.
    """
    if n <= 0:
        raise ValueError(f"cannot compute an interval over n={n} images; the split is empty")
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} is outside [0, n={n}]")
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, labels: Iterable[int]) -> float:
    """Macro-averaged F1 over ``labels`` (scikit-learn ``f1_score(average="macro")``).

    A class that appears neither in ``y_true`` nor in ``y_pred`` has no defined F1 and is left
    out of the average (``zero_division=np.nan``) instead of counting as 0, so a bootstrap
    resample that happens to miss a class is not penalised for it. A class with true images
    but no correct prediction counts as 0.
    """
    return float(f1_score(y_true, y_pred, labels=list(labels), average="macro",
                          zero_division=np.nan))


def macro_f1_batch(y_true: np.ndarray, y_pred: np.ndarray, labels: Iterable[int]
                   ) -> np.ndarray:
    """:func:`macro_f1` of each row of ``(m, n)`` label arrays at once, with NumPy.

    Per row and class, ``F1 = 2 TP / (true count + predicted count)`` from confusion counts
    made by one ``np.bincount`` each; a class with neither true nor predicted images in a row
    is left out of that row's mean, as in :func:`macro_f1` (the same numbers as scikit-learn's
    ``f1_score(..., average="macro", zero_division=np.nan)``, tested). Labels outside
    ``labels`` count as errors of the listed classes, as in scikit-learn.

    Args:
        y_true: ``(m, n)`` (or ``(n,)``) non-negative int true class indices.
        y_pred: Predicted class indices, the same shape.
        labels: The classes averaged over (non-negative ints).

    Returns:
        ``(m,)`` float64 macro-F1 of each row (``()`` for 1-D input); NaN for a row where no
        class of ``labels`` occurs.

    Raises:
        ValueError: If the shapes differ or a label is negative.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = np.asarray(list(labels), dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    squeeze = y_true.ndim == 1
    y_true, y_pred = np.atleast_2d(y_true), np.atleast_2d(y_pred)
    if (y_true.size and min(y_true.min(), y_pred.min()) < 0) or (labels < 0).any():
        raise ValueError("class indices must be non-negative")
    k = len(labels)
    # position of each class index in ``labels``; k for classes not listed (dropped below)
    lookup = np.full(max(int(y_true.max(initial=0)), int(y_pred.max(initial=0)),
                         int(labels.max(initial=0))) + 1, k)
    lookup[labels] = np.arange(k)
    rows = (np.arange(len(y_true)) * (k + 1))[:, None]
    true_code, pred_code = lookup[y_true] + rows, lookup[y_pred] + rows
    size = len(y_true) * (k + 1)
    n_true = np.bincount(true_code.ravel(), minlength=size).reshape(-1, k + 1)[:, :k]
    n_pred = np.bincount(pred_code.ravel(), minlength=size).reshape(-1, k + 1)[:, :k]
    hits = true_code[y_true == y_pred]
    tp = np.bincount(hits, minlength=size).reshape(-1, k + 1)[:, :k]
    support = n_true + n_pred
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(support > 0, 2 * tp / support, np.nan)
        counted = (support > 0).sum(axis=1)
        result = np.where(counted > 0, np.nansum(f1, axis=1) / np.maximum(counted, 1), np.nan)
    return result[0] if squeeze else result


_CHUNK_ELEMENTS = 1 << 22  # labels per call of a vectorised statistic (bounds the memory)


def _evaluate(statistic: Callable, y_true: np.ndarray, y_pred: np.ndarray,
              index: np.ndarray, vectorized: bool) -> np.ndarray:
    """``statistic`` on each row of ``index`` (``(m, k)`` image indices) -> ``(m,)`` float."""
    if not vectorized:
        return np.array([statistic(y_true[i], y_pred[i]) for i in index], dtype=np.float64)
    step = max(1, _CHUNK_ELEMENTS // max(1, index.shape[1]))
    return np.concatenate([
        np.asarray(statistic(y_true[index[i:i + step]], y_pred[index[i:i + step]]),
                   dtype=np.float64).reshape(-1)
        for i in range(0, len(index), step)])


def _resample_index(strata: list[np.ndarray], n_resamples: int,
                    rng: np.random.Generator) -> np.ndarray:
    """``(n_resamples, n)`` image indices drawn with replacement within each stratum."""
    return np.concatenate([s[rng.integers(0, len(s), (n_resamples, len(s)))] for s in strata],
                          axis=1)


def _jackknife(strata: list[np.ndarray], statistic: Callable, y_true: np.ndarray,
               y_pred: np.ndarray, vectorized: bool) -> tuple[float, float]:
    """BCa acceleration and the small-stratum variance factor, from the jackknife.

    With the jackknife influence ``l_sj = (n_s - 1) (mean_i theta_(-i) - theta_(-j))`` of
    image ``j`` of stratum ``s`` (the mean over the images ``i`` of ``s``; Davison & Hinkley
    1997, §2.7 and §3.2), the acceleration is
    ``a = sum_s n_s^-3 sum_j l_sj^3 / (6 v^(3/2))`` with ``v = sum_s n_s^-2 sum_j l_sj^2``
    (with one stratum, Efron's 1987 jackknife ``a``, as in SciPy's BCa). ``v`` is the
    variance that resampling ``n_s`` images out of ``n_s`` reproduces, short of the unbiased
    ``sum_s sum_j l_sj^2 / (n_s (n_s - 1))`` by the factor ``(n_s - 1) / n_s`` of each
    stratum; the square root of their ratio is returned as the rescaling factor.

    Returns:
        ``(a, factor)``: ``a`` is NaN when every influence is 0; ``factor`` is then 1.
    """
    n = len(y_true)
    cols, step = np.arange(n - 1)[None, :], max(1, _CHUNK_ELEMENTS // n)
    theta_jack = np.concatenate([  # row i: every image but i, (step, n - 1) at a time
        _evaluate(statistic, y_true, y_pred,
                  cols + (cols >= np.arange(start, min(start + step, n))[:, None]), vectorized)
        for start in range(0, n, step)])
    cubes = squares = unbiased = 0.0
    for s in strata:
        if len(s) < 2:
            continue  # an image alone in its stratum is in every resample: no influence
        influence = (len(s) - 1) * (theta_jack[s].mean() - theta_jack[s])
        cubes += np.sum(influence ** 3) / len(s) ** 3
        squares += np.sum(influence ** 2) / len(s) ** 2
        unbiased += np.sum(influence ** 2) / (len(s) * (len(s) - 1))
    if not squares > 0:
        return float("nan"), 1.0
    return float(cubes / (6 * squares ** 1.5)), float(np.sqrt(unbiased / squares))


def bootstrap_interval(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    confidence: float = CONFIDENCE,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    *,
    stratify: bool = True,
    method: str = "BCa",
    vectorized: bool = False,
) -> tuple[float, float]:
    """Paired bootstrap interval of a metric over test images: BCa, stratified by true class.

    Test images are resampled with replacement, true and predicted label together.

    With ``stratify`` (the default) they are resampled within each true class, so every
    resample keeps the split's class counts: the test splits are drawn stratified by class
    (``datasets.build_manifest``), and a bootstrap should repeat the sampling design
    (Davison & Hinkley 1997, "Bootstrap Methods and their Application", §3.2). This removes
    the resamples in which a small class is missing or has one image, which drag the
    bootstrap distribution of macro-F1 below the estimate. Resampling ``n_s`` of the
    ``n_s`` images of a class shrinks the variance by ``(n_s - 1) / n_s`` (0.8 for the 5
    test images per class of a 265-image, 53-class split), so the interval is then widened
    about the estimate by ``sqrt(n_s / (n_s - 1))``, weighted over the classes by the
    jackknife influence values (:func:`_jackknife`): the linearised form of the rescaling
    bootstrap of Rao & Wu 1988, "Resampling inference with complex survey data", JASA
    83:231.

    With ``method="BCa"`` (the default) the interval is the bias-corrected and accelerated
    percentile interval (Efron 1987, "Better bootstrap confidence intervals", JASA 82:171):
    the bias correction ``z0 = Phi^-1(share of resamples below the estimate, ties counted
    half)`` shifts the interval up by as much as resampling pulls macro-F1 down (a plain
    percentile interval shifts it the wrong way), and the acceleration ``a`` comes from the
    jackknife. ``method="percentile", stratify=False`` is the former interval, as
    ``scipy.stats.bootstrap(paired=True, method="percentile")`` computed it.

    Chosen by simulation (as in ``tests/test_evaluate.py``: 53 classes of 5 test images,
    per-class accuracy spread over 0.1-1, 0.35-0.95 or 0.5-1, the population macro-F1 known
    exactly; 600 test sets each, 1000 resamples). At the 95% level the former interval
    covered the population macro-F1 in 79-83% of test sets, nearly all misses below it,
    with the estimate at 0.71 of the interval's width; unstratified BCa covered 89-91%
    (misses mostly above), stratified percentile 88-93% and stratified BCa without the
    rescaling 89-92%; this interval covers 93-95%, misses about even on both sides, the
    estimate at 0.41-0.44 of the width and inside every interval. With 10 classes of 26-27
    images every variant covers 93-95% (the former 92.7%, this one 94.2%).

    Degenerate cases: one image gives ``(value, value)``. Where BCa is undefined (every
    resample gives the estimate, e.g. all predictions correct under within-class
    resampling, or all resamples lie on one side of it, or every jackknife influence is 0)
    the percentile interval is used instead, widened to contain the estimate. An interval of
    zero width then says that resampling saw no variation, not that there is none.

    Args:
        y_true: ``(n,)`` int true class indices (the strata).
        y_pred: ``(n,)`` int predicted class indices.
        statistic: ``f(y_true, y_pred) -> float`` of ``(n,)`` arrays, e.g. a partial of
            :func:`macro_f1`; with ``vectorized``, ``f`` of ``(m, n)`` arrays returning
            ``(m,)`` values, one per row, e.g. a partial of :func:`macro_f1_batch` (about 60
            times faster). It must not depend on the order of the images.
        confidence: Confidence level in (0, 1).
        n_resamples: Bootstrap resamples (at least 1).
        seed: Seed of the resampling.
        stratify: Resample within each true class, with the rescaling (else over all
            images, without it).
        method: ``"BCa"`` or ``"percentile"``.
        vectorized: Whether ``statistic`` takes ``(m, n)`` arrays.

    Returns:
        ``(low, high)``, floats. Resamples on which ``statistic`` is not finite are left out.

    Raises:
        ValueError: If the arrays are empty or of different lengths, the method, level or
            number of resamples is invalid, or the statistic is finite on no resample.
    """
    y_true, y_pred = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    if len(y_true) == 0 or len(y_true) != len(y_pred):
        raise ValueError(f"need equally long, non-empty label arrays; got {len(y_true)} true "
                         f"and {len(y_pred)} predicted")
    if method not in ("BCa", "percentile"):
        raise ValueError(f"method must be 'BCa' or 'percentile', got {method!r}")
    if not 0 < confidence < 1 or n_resamples < 1:
        raise ValueError(f"need 0 < confidence < 1 and n_resamples >= 1; got {confidence} "
                         f"and {n_resamples}")
    everything = np.arange(len(y_true))
    point = float(_evaluate(statistic, y_true, y_pred, everything[None, :], vectorized)[0])
    if len(y_true) == 1:  # one image: every resample is that image
        return point, point
    if stratify:
        order = np.argsort(y_true, kind="stable")
        strata = np.split(order, np.flatnonzero(np.diff(y_true[order])) + 1)
    else:
        strata = [everything]
    index = _resample_index(strata, n_resamples, np.random.default_rng(seed))
    theta = _evaluate(statistic, y_true, y_pred, index, vectorized)
    theta = theta[np.isfinite(theta)]
    if len(theta) == 0:
        raise ValueError("the statistic was not finite on any bootstrap resample")
    alpha = (1 - confidence) / 2
    levels = np.array([alpha, 1 - alpha])
    a, factor = (_jackknife(strata, statistic, y_true, y_pred, vectorized)
                 if method == "BCa" or stratify else (float("nan"), 1.0))
    if not stratify:
        factor = 1.0
    low = high = None
    if method == "BCa" and np.ptp(theta) > 0:
        below = (np.count_nonzero(theta < point) + np.count_nonzero(theta <= point)) / 2
        z0, z = stats.norm.ppf(below / len(theta)), stats.norm.ppf(levels)
        bca = stats.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
        if np.isfinite(bca).all():
            low, high = np.percentile(theta, 100 * bca)
    if low is None:  # percentile interval (also BCa's fallback, then around the estimate)
        low, high = np.percentile(theta, 100 * levels)
        if method == "BCa":
            low, high = min(low, point), max(high, point)
    return float(point + factor * (low - point)), float(point + factor * (high - point))


@dataclass
class Predictions:
    """Predictions of one model over one split.

    Attributes:
        y_true: ``(n,)`` int true class indices.
        probs: ``(n, classes)`` float32 predicted probabilities.
        class_names: Names in index order.
    """

    y_true: np.ndarray
    probs: np.ndarray
    class_names: list[str]

    @property
    def y_pred(self) -> np.ndarray:
        """``(n,)`` int predicted class indices (argmax of ``probs``)."""
        return self.probs.argmax(axis=1)

    @property
    def losses(self) -> np.ndarray:
        """``(n,)`` float32 cross-entropy of each image: ``-log p(true class)`` (nats)."""
        p_true = self.probs[np.arange(len(self.y_true)), self.y_true]
        return -np.log(np.clip(p_true, 1e-7, 1.0)).astype(np.float32)

    def metrics(self, confidence: float = CONFIDENCE, n_resamples: int = BOOTSTRAP_RESAMPLES,
                seed: int = 0) -> dict:
        """Accuracy and macro-F1 with confidence intervals, loss, and the split size.

        Args:
            confidence: Level of both intervals.
            n_resamples: Bootstrap resamples for the macro-F1 interval.
            seed: Seed of the bootstrap.

        Returns:
            ``{"test images", "accuracy", "accuracy CI low", "accuracy CI high", "macro-F1",
            "macro-F1 CI low", "macro-F1 CI high", "loss"}``: accuracy with a Wilson interval,
            macro-F1 with a paired bootstrap BCa interval stratified by true class
            (:func:`bootstrap_interval`), mean cross-entropy (nats).
        """
        labels = np.arange(len(self.class_names))
        n, correct = len(self.y_true), int((self.y_pred == self.y_true).sum())
        acc_low, acc_high = wilson_interval(correct, n, confidence)

        def statistic(y_true, y_pred):
            return macro_f1_batch(y_true, y_pred, labels)

        f1_low, f1_high = bootstrap_interval(self.y_true, self.y_pred, statistic, confidence,
                                             n_resamples, seed, vectorized=True)
        return {
            "test images": int(n),
            "accuracy": float(accuracy_score(self.y_true, self.y_pred)),
            "accuracy CI low": acc_low,
            "accuracy CI high": acc_high,
            "macro-F1": macro_f1(self.y_true, self.y_pred, labels),
            "macro-F1 CI low": f1_low,
            "macro-F1 CI high": f1_high,
            "loss": float(log_loss(self.y_true, np.clip(self.probs, 1e-7, 1), labels=labels)),
        }

    def report(self) -> pd.DataFrame:
        """Per-class precision, recall, F1 and support (scikit-learn), plus the averages."""
        report = classification_report(
            self.y_true, self.y_pred, labels=np.arange(len(self.class_names)),
            target_names=self.class_names, output_dict=True, zero_division=0)
        return pd.DataFrame(report).T.rename(columns={"f1-score": "f1"})

    def confusion(self, normalize: str | None = None) -> np.ndarray:
        """``(classes, classes)`` confusion matrix, rows true, columns predicted.

        Args:
            normalize: None (counts), ``"true"`` (rows sum to 1), ``"pred"`` or ``"all"``.
        """
        return confusion_matrix(self.y_true, self.y_pred,
                                labels=np.arange(len(self.class_names)), normalize=normalize)


class ClassMismatchError(ValueError):
    """A model was trained on other classes than the split it is asked to score."""


def class_order(model_classes: list[str] | None, class_names: list[str],
                model: str = "the model") -> np.ndarray | None:
    """Output columns of a model in the split's class-index order.

    A model saved before a dataset's classes were renamed, filtered or re-sorted outputs its
    probabilities in its own order (the sidecar's ``class_names``); scoring it against the
    manifest's label indices without this mapping silently mixes classes up.

    Args:
        model_classes: The model's class names in output order (None: unknown, assumed equal).
        class_names: The split's class names in label-index order.
        model: The model's name or file, for the error message.

    Returns:
        None when both orders are the same, else the column index of each of ``class_names``.

    Raises:
        ClassMismatchError: If the two lists do not hold the same names.
    """
    if model_classes is None or list(model_classes) == list(class_names):
        return None
    if sorted(model_classes) != sorted(class_names):
        only_model = sorted(set(model_classes) - set(class_names))
        only_split = sorted(set(class_names) - set(model_classes))
        raise ClassMismatchError(
            f"{model} was trained on other classes than this split (only the model: "
            f"{only_model}; only the split: {only_split}); train it again on this manifest "
            f"(notebooks 02/03) or move it out of models/")
    return np.array([list(model_classes).index(name) for name in class_names])


def predict_dataset(model: keras.Model, dataset: tf.data.Dataset,
                    class_names: list[str], column_order: np.ndarray | None = None
                    ) -> Predictions:
    """Runs ``model`` over every batch of ``dataset`` (an ordered, unshuffled split).

    Args:
        model: A classifier returning ``(batch, classes)`` probabilities.
        dataset: Batches of ``(images, labels)``.
        class_names: Names in index order.
        column_order: Output columns in ``class_names`` order (:func:`class_order`), or None.

    Returns:
        The predictions with true labels, in dataset order.
    """
    labels, probs = [], []
    for images, y in dataset:
        probs.append(model.predict_on_batch(images))
        labels.append(y.numpy())
    probs = np.concatenate(probs).astype(np.float32)
    if column_order is not None:
        probs = probs[:, column_order]
    return Predictions(np.concatenate(labels), probs, list(class_names))


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
        ``{"batch size", "median ms/batch", "median ms/image", "p90 ms/image", "runs"}``.
    """
    shape = (batch_size, *model.input_shape[1:])
    images = np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)
    seconds = time_calls(lambda: model.predict_on_batch(images), warmup, repeats)
    return {
        "batch size": batch_size,
        "median ms/batch": float(np.median(seconds) * 1e3),
        "median ms/image": float(np.median(seconds) * 1e3 / batch_size),
        "p90 ms/image": float(np.percentile(seconds, 90) * 1e3 / batch_size),
        "runs": repeats,
    }


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
    """The ``.keras`` models of ``dataset`` in ``models/`` (files named ``<dataset>-*.keras``)."""
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
        one, else the sidecar's ``train_seconds``; None where neither exists.
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
        path: The model's ``.keras`` file (its ``.h5`` and ``.json`` sit beside it).
        predictions: The model's predictions on the whole test split.
        model: The loaded model, to count parameters (else the sidecar's counts).
        latency: Results of :func:`measure_latency`, one per batch size (adds the device
            and the 1-minute load average after timing).
        checkpoints_dir: The ``checkpoints/`` folder, for :func:`training_record`.

    Returns:
        A dict of column name to value.
    """
    path = Path(path)
    meta = load_metadata(path)
    h5 = path.with_suffix(".h5")
    if model is not None:
        total = int(model.count_params())
        trainable = int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))
    else:
        total, trainable = meta.get("params_total"), meta.get("params_trainable")
    row = {
        "model": meta.get("model", path.stem),
        **predictions.metrics(),
        "params": total,
        "trainable params": trainable,
        ".keras MB": round(path.stat().st_size / 1e6, 2),
        ".h5 MB": round(h5.stat().st_size / 1e6, 2) if h5.exists() else None,
        "image size": meta.get("image_size"),
    }
    for result in latency:
        row[f"ms/image (batch {result['batch size']})"] = round(result["median ms/image"], 2)
    if latency:
        row["latency device"] = machine_description()
        # Other work on a shared machine slows the timings; the load says how busy it was.
        row["load (1 min)"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") \
            else None
    row.update(training_record(meta, checkpoints_dir))
    row["weights"] = meta.get("weights", "n/a")
    return row


def pareto_front(board: pd.DataFrame, cost: str, value: str = "accuracy") -> pd.Series:
    """Which models no other model beats on both ``cost`` (lower) and ``value`` (higher).

    Args:
        board: One row per model.
        cost: Column to minimise, e.g. ``"ms/image (batch 1)"``.
        value: Column to maximise.

    Returns:
        Boolean Series aligned with ``board``: True on the Pareto front.
    """
    costs, values = board[cost].to_numpy(float), board[value].to_numpy(float)
    dominated = [
        bool(np.any((costs <= c) & (values >= v) & ((costs < c) | (values > v))))
        for c, v in zip(costs, values)
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
) -> tuple[pd.DataFrame, dict[str, Interpretation]]:
    """Evaluates saved models on a whole split, each at its own input size.

    Args:
        paths: ``.keras`` model files (``saved_models``).
        rows: Split rows with ``file`` and ``label_index`` (``Manifest.split("test")``).
        class_names: Names in index order.
        batch_size: Images per batch for the predictions.
        latency_batch_sizes: Batch sizes whose latency per image is timed (empty: none).
        warmup: Untimed calls before each latency measurement.
        repeats: Timed calls per latency measurement (the median is reported).
        checkpoints_dir: The ``checkpoints/`` folder holding the run folders.

    Returns:
        ``(leaderboard, interpretations)``: a DataFrame sorted by accuracy (one row per model,
        columns of :func:`leaderboard_row`, plus ``Pareto`` when batch-1 latency was timed)
        and ``{model name: interpret.Interpretation}`` with each model and its predictions.

    A model whose sidecar lists other classes than ``class_names`` is skipped with a printed
    reason; one with the same classes in another order is scored with its outputs reordered
    (:func:`class_order`).

    Raises:
        FileNotFoundError: If ``paths`` is empty (train models in notebooks 02/03 first).
        ClassMismatchError: If every model was trained on other classes.
    """
    from cnnlab.evaluation.interpretation import Interpretation

    paths = list(paths)
    if not paths:
        raise FileNotFoundError("no saved models to evaluate; run notebooks 02 and 03 first")
    rows_out, interpretations = [], {}
    for path in paths:
        meta = load_metadata(path)
        name = meta.get("model", Path(path).stem)
        try:
            order = class_order(meta.get("class_names"), class_names, display_path(path))
        except ClassMismatchError as error:
            print(f"skipped: {error}")
            continue
        model = load_model(path)
        interp = Interpretation.from_model(model, rows, class_names, batch_size, name=name,
                                           column_order=order)
        timings = [measure_latency(model, b, warmup, repeats) for b in latency_batch_sizes]
        rows_out.append(leaderboard_row(path, interp.predictions, model, timings,
                                        checkpoints_dir))
        interpretations[name] = interp
    if not rows_out:
        raise ClassMismatchError("no saved model was trained on this split's classes (see the "
                                 "lines above); run notebooks 02 and 03 on this manifest")
    board = pd.DataFrame(rows_out).sort_values("accuracy", ascending=False).reset_index(drop=True)
    if "ms/image (batch 1)" in board:
        board.insert(board.columns.get_loc("ms/image (batch 1)"), "Pareto",
                     pareto_front(board, "ms/image (batch 1)"))
    return board, interpretations


def plot_accuracy_vs_latency(board: pd.DataFrame, latency: str = "ms/image (batch 1)",
                             title: str = "") -> Figure:
    """Test accuracy (with its 95% interval) against latency, the Pareto front marked.

    Args:
        board: From :func:`evaluate_models` (needs ``latency``, ``accuracy`` and its CI).
        latency: Latency column for the x axis (log scale).
        title: Figure title (default: test images and the latency device).

    Returns:
        The Figure: one point per model, filled and joined by a step line on the front.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    front = pareto_front(board, latency)
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
    for _, row in board.iterrows():
        ax.annotate(row["model"], (row[latency], row["accuracy"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel(f"latency, {latency} (log scale)")
    ax.set_ylabel("test accuracy (95% CI)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    device = board["latency device"].iloc[0] if "latency device" in board else ""
    ax.set_title(title or f"{int(board['test images'].iloc[0])} test images; {device}",
                 fontsize=9)
    fig.tight_layout()
    return fig


def _interval(row: pd.Series, metric: str) -> str:
    return (f"{row[metric]:.3f} [{row[f'{metric} CI low']:.3f}, "
            f"{row[f'{metric} CI high']:.3f}]")


def leaderboard_markdown(board: pd.DataFrame) -> str:
    """The leaderboard as a Markdown table, metrics written ``value [CI low, CI high]``.

    Args:
        board: From :func:`evaluate_models`.

    Returns:
        Markdown text (GitHub table) with the test-set size in the metric headers.
    """
    table = board.copy()
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
