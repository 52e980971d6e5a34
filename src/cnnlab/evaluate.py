"""Predictions and metrics over whole splits, and the leaderboard across models.

Every figure is computed on the entire split (never a few batches) with scikit-learn, and the
split size is reported next to it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    log_loss,
)

from cnnlab.export import list_models, load_metadata, load_model


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
        return self.probs.argmax(axis=1)

    def metrics(self) -> dict:
        """Accuracy, cross-entropy loss and macro-F1 over the whole split, with its size."""
        labels = np.arange(len(self.class_names))
        return {
            "test images": int(len(self.y_true)),
            "accuracy": float(accuracy_score(self.y_true, self.y_pred)),
            "loss": float(log_loss(self.y_true, np.clip(self.probs, 1e-7, 1), labels=labels)),
            "macro-F1": float(f1_score(self.y_true, self.y_pred, average="macro",
                                       labels=labels, zero_division=0)),
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


def predict_dataset(model: keras.Model, dataset: tf.data.Dataset,
                    class_names: list[str]) -> Predictions:
    """Runs ``model`` over every batch of ``dataset`` (an ordered, unshuffled split).

    Args:
        model: A classifier returning probabilities.
        dataset: Batches of ``(images, labels)``.
        class_names: Names in index order.

    Returns:
        The predictions with true labels, in dataset order.
    """
    labels, probs = [], []
    for images, y in dataset:
        probs.append(model.predict_on_batch(images))
        labels.append(y.numpy())
    return Predictions(np.concatenate(labels), np.concatenate(probs).astype(np.float32),
                       list(class_names))


def saved_models(models_dir: str | os.PathLike, dataset: str) -> list[Path]:
    """The ``.keras`` models of ``dataset`` in ``models/`` (files named ``<dataset>-*.keras``)."""
    return list_models(models_dir, prefix=f"{dataset}-")


def leaderboard_row(path: str | os.PathLike, predictions: Predictions) -> dict:
    """One leaderboard row: test metrics, parameters, file sizes and how the model was made."""
    path = Path(path)
    meta = load_metadata(path)
    h5 = path.with_suffix(".h5")
    return {
        "model": meta.get("model", path.stem),
        **predictions.metrics(),
        "params": meta.get("params_total"),
        "trainable params": meta.get("params_trainable"),
        ".keras MB": round(path.stat().st_size / 1e6, 2),
        ".h5 MB": round(h5.stat().st_size / 1e6, 2) if h5.exists() else None,
        "weights": meta.get("weights", "n/a"),
        "image size": meta.get("image_size"),
        "train minutes": round(meta.get("train_seconds", 0) / 60, 1),
    }


def evaluate_models(paths, rows: pd.DataFrame, class_names: list[str], batch_size: int = 32):
    """Evaluates saved models on a whole split, each at its own input size.

    Args:
        paths: ``.keras`` model files (``saved_models``).
        rows: Split rows with ``file`` and ``label_index`` (``Manifest.split("test")``).
        class_names: Names in index order.
        batch_size: Images per batch.

    Returns:
        ``(leaderboard, predictions)``: a DataFrame sorted by accuracy (one row per model:
        test accuracy, loss, macro-F1, parameters, file sizes, weights, training minutes)
        and ``{model name: Predictions}``.

    Raises:
        FileNotFoundError: If ``paths`` is empty (train models in notebooks 02/03 first).
    """
    from cnnlab.data import split_dataset

    paths = list(paths)
    if not paths:
        raise FileNotFoundError("no saved models to evaluate; run notebooks 02 and 03 first")
    rows_out, predictions = [], {}
    for path in paths:
        model = load_model(path)
        size = int(model.input_shape[1])
        name = load_metadata(path).get("model", Path(path).stem)
        dataset = split_dataset(rows, size, batch_size)
        predictions[name] = predict_dataset(model, dataset, class_names)
        rows_out.append(leaderboard_row(path, predictions[name]))
        keras.backend.clear_session()
    board = pd.DataFrame(rows_out).sort_values("accuracy", ascending=False)
    return board.reset_index(drop=True), predictions


def write_leaderboard(board: pd.DataFrame, stem: str | os.PathLike) -> tuple[Path, Path]:
    """Writes the leaderboard as ``<stem>.csv`` and ``<stem>.md`` (atomically)."""
    from cnnlab.storage import atomic_path, write_text

    stem = Path(stem)
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        board.to_csv(tmp, index=False)
    write_text(stem.with_suffix(".md"), board.to_markdown(index=False, floatfmt=".4f") + "\n")
    return stem.with_suffix(".csv"), stem.with_suffix(".md")
