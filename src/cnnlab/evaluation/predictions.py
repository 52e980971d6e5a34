"""Predictions of a model over a whole split, in the split's class order.

:func:`split_predictions` computes them once per saved model and split and writes them
beside the model (``models/<name>/predictions/<split>.npz``), with the model's output columns
already mapped to the split's class order (:func:`class_order`); the leaderboard,
:class:`~cnnlab.evaluation.Interpretation`, Grad-CAM and model selection read that file, so
the test split is scored once and every reader sees the same numbers. The file is keyed by
the model file (size and modification time), the class names and the split's rows as read
(:func:`~cnnlab.training.cached_features.split_fingerprint`: absolute file, label index and
the image's content), so another copy of the dataset (same file names with other bytes, or
another root) is predicted again, never read from the old file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    log_loss,
)

if TYPE_CHECKING:
    pass


from cnnlab.config import display_path
from cnnlab.deploy.export import MODEL_FILES, load_metadata, load_model, model_folder
from cnnlab.evaluation.metrics import (
    BOOTSTRAP_RESAMPLES,
    CONFIDENCE,
    bootstrap_interval,
    macro_f1,
    macro_f1_batch,
    wilson_interval,
)
from cnnlab.files import atomic_path
from cnnlab.training.cached_features import split_fingerprint


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




PREDICTIONS_FOLDER = "predictions"


def predictions_path(model: str | os.PathLike, split: str) -> Path:
    """Where :func:`split_predictions` keeps a model's predictions over ``split``.

    Args:
        model: The model folder ``models/<name>/`` or a file in it.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        ``models/<name>/predictions/<split>.npz``.
    """
    return model_folder(model) / PREDICTIONS_FOLDER / f"{split}.npz"


def _model_stamp(folder: Path) -> str:
    """Size and modification time of ``model.keras``: a re-saved model has other predictions."""
    stat = (folder / MODEL_FILES[".keras"]).stat()
    return f"{stat.st_size}-{stat.st_mtime_ns}"


def _read_saved(path: Path, stamp: str, fingerprint: str,
                class_names: list[str]) -> Predictions | None:
    try:
        with np.load(path, allow_pickle=False) as saved:
            if (str(saved["model_stamp"]) != stamp or str(saved["rows"]) != fingerprint
                    or saved["class_names"].tolist() != list(class_names)):
                return None
            return Predictions(saved["y_true"].astype(int), saved["probs"].astype(np.float32),
                               list(class_names))
    except (OSError, KeyError, ValueError):  # unreadable or from another version: recompute
        return None


def split_predictions(
    model: str | os.PathLike,
    split: str,
    rows: pd.DataFrame,
    class_names: list[str],
    batch_size: int = 32,
    loaded: keras.Model | None = None,
) -> Predictions:
    """A saved model's predictions over a whole split, computed once and kept beside it.

    The first call runs the model over ``rows`` at its own input size, maps its output
    columns to the split's class order (:func:`class_order`, from ``meta.json``) and writes
    ``models/<name>/predictions/<split>.npz`` (atomically). Later calls read that file as long
    as the model file, the class names and the rows (absolute files, labels and contents, in
    order: :func:`~cnnlab.training.cached_features.split_fingerprint`) are the same;
    otherwise the predictions are computed again.

    Args:
        model: The model folder ``models/<name>/`` (or a file in it).
        split: Split name, used for the file name (``"val"``, ``"test"``).
        rows: The split's rows with ``file`` and ``label_index`` (and the manifest's
            ``sha256``; without it each file is hashed), in prediction order.
        class_names: The split's class names in label-index order.
        batch_size: Images per prediction batch.
        loaded: The model already loaded from ``model``, to avoid loading it twice.

    Returns:
        The predictions, columns in ``class_names`` order.

    Raises:
        ClassMismatchError: If ``meta.json`` lists other classes than ``class_names``.
        FileNotFoundError: If ``model`` is not a saved model folder.
    """
    from cnnlab.data.pipeline import split_dataset

    folder = model_folder(model)
    rows = rows.reset_index(drop=True)
    path = predictions_path(folder, split)
    stamp, fingerprint = _model_stamp(folder), split_fingerprint(rows)
    if path.is_file():
        saved = _read_saved(path, stamp, fingerprint, class_names)
        if saved is not None:
            return saved
    meta = load_metadata(folder)
    order = class_order(meta.get("class_names"), class_names, display_path(folder))
    keras_model = loaded if loaded is not None else load_model(folder)
    dataset = split_dataset(rows, int(keras_model.input_shape[1]), batch_size)
    predictions = predict_dataset(keras_model, dataset, class_names, order)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, y_true=predictions.y_true, probs=predictions.probs,
                 class_names=np.array(class_names), files=rows["file"].astype(str).to_numpy(),
                 model_stamp=np.array(stamp), rows=np.array(fingerprint))
    return predictions
