"""Callbacks of a training run: epoch timing, checkpoints written atomically, precise
BatchNorm statistics, and resume through ``keras.callbacks.BackupAndRestore``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import keras
import tensorflow as tf

from cnnlab.files import write_text
from cnnlab.training.runs import RunFolder, save_weights_atomic


class EpochTimer(keras.callbacks.Callback):
    """Adds the epoch's wall-clock ``seconds`` to the logs (so ``history.csv`` has it)."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["seconds"] = round(time.perf_counter() - self._start, 3)


class RunCheckpoint(keras.callbacks.Callback):
    """Writes ``last.weights.h5`` every epoch and ``best.weights.h5`` on a new best.

    Both are written atomically. ``target`` is the model whose weights are saved, which can
    differ from the model being fitted (the head on cached features trains layers of the full
    model, and the full model is what the checkpoint must hold).

    Args:
        run: The run folder.
        target: Model to save (default: the fitted model).
        best: Best ``monitor`` value so far (from ``history.csv`` when resuming).
        monitor: Metric that decides the best checkpoint (higher is better).
    """

    def __init__(self, run: RunFolder, target: keras.Model | None = None,
                 best: float = -math.inf, monitor: str = "val_accuracy"):
        super().__init__()
        self.run, self.target, self.best, self.monitor = run, target, best, monitor

    def on_epoch_end(self, epoch, logs=None):
        model = self.target or self.model
        save_weights_atomic(model, self.run.last)
        current = (logs or {}).get(self.monitor)
        if current is not None and float(current) > self.best:
            self.best = float(current)
            save_weights_atomic(model, self.run.best)


PRECISE_BN_IMAGES = 1024


class PreciseBatchNorm(keras.callbacks.Callback):
    """Recomputes BatchNormalization statistics with the epoch's final weights, before validation.

    A BatchNormalization layer trained from scratch normalises with its batch's statistics
    during training but with exponential moving averages at inference; those averages mix
    statistics of weights from many steps back and lag while the weights still move fast (a
    short CPU run: the course's BatchNorm CNN reached 0.59 training accuracy with batch
    statistics and 0.33 on validation with the moving ones). "Precise BN" (Wu & Johnson 2021,
    "Rethinking 'Batch' in BatchNorm", arXiv:2105.07576, section 3; as in pycls and detectron2)
    replaces them with the plain average of the batch means and variances over a fixed number
    of training batches, computed with the current weights and no weight update. Here that runs
    after the last training step of every epoch, so validation accuracy, the best checkpoint
    and the saved model all use the recomputed statistics.

    Only layers in training mode are touched (``trainable``; Keras 3 runs a frozen
    BatchNormalization in inference mode, and a backbone called with ``training=False``
    never updates its statistics).

    Args:
        batches: Un-augmented, shuffled training batches ``(images, labels)``; the first
            ``num_batches`` are used.
        num_batches: Batches to average over.
    """

    def __init__(self, batches: tf.data.Dataset, num_batches: int):
        super().__init__()
        self.batches, self.num_batches = batches, max(1, int(num_batches))

    def on_train_batch_end(self, batch, logs=None):
        if self.params.get("steps") and batch + 1 == self.params["steps"]:
            self.recompute()

    def recompute(self, model: keras.Model | None = None) -> int:
        """Sets the moving statistics to the average over the batches; returns the layer count."""
        model = model or self.model
        layers = batchnorm_in_training_mode(model)
        if not layers:
            return 0
        momenta = [layer.momentum for layer in layers]
        try:
            for k, (images, _) in enumerate(self.batches.take(self.num_batches)):
                for layer in layers:  # running mean: batch k gets weight 1/(k+1)
                    layer.momentum = k / (k + 1)
                model(images, training=True)
        finally:
            for layer, momentum in zip(layers, momenta):
                layer.momentum = momentum
        return len(layers)


def batchnorm_in_training_mode(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """The trainable BatchNormalization layers of ``model``, nested ones included."""
    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` whose backup survives SIGKILL at any moment.

    Keras writes ``latest.weights.h5`` in place, so a kill during the write leaves a file
    that cannot be read. Here the weights and the epoch counter are written to temporary
    names and renamed, so the backup on disk is always the last completed epoch.
    """

    def _save_model(self):
        folder = Path(self.backup_dir)
        folder.mkdir(parents=True, exist_ok=True)
        save_weights_atomic(self.model, self._weights_path)
        write_text(self._training_metadata_path, json.dumps(
            {"epoch": self._current_epoch, "batch": self._last_batch_seen}))


def _backup_epoch(folder: Path) -> int | None:
    meta = folder / "training_metadata.json"
    if not meta.is_file():
        return None
    return int(json.loads(meta.read_text())["epoch"])


def _trim_history(run: RunFolder, first_epoch: int) -> None:
    """Drops rows of epochs that will run (again), so resuming never duplicates a row."""
    history = run.history_rows()
    kept = history[history["epoch"] < first_epoch]
    if len(kept) < len(history):
        write_text(run.history, kept.to_csv(index=False))


def _best_so_far(run: RunFolder, monitor: str = "val_accuracy") -> float:
    history = run.history_rows()
    return float(history[monitor].max()) if monitor in history and len(history) else -math.inf


def run_callbacks(run: RunFolder, stage: str = "train", target: keras.Model | None = None
                  ) -> list[keras.callbacks.Callback]:
    """Epoch timer, history CSV, best/last checkpoints and atomic backup-and-restore.

    Order matters: the timer adds ``seconds`` before CSVLogger writes the row, and the backup
    comes last, so a kill between row and backup repeats (and trims) that row on resume.
    """
    return [
        EpochTimer(),
        keras.callbacks.CSVLogger(str(run.history), append=True),
        RunCheckpoint(run, target, _best_so_far(run)),
        AtomicBackupAndRestore(str(run.backup / stage), delete_checkpoint=False),
    ]
