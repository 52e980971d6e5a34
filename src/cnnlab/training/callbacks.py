"""Callbacks of a training run: epoch timing, TensorBoard logs, checkpoints written
atomically, precise BatchNorm statistics, and resume through
``keras.callbacks.BackupAndRestore``.

Resume, and what guarantees what (``backup/<stage>/`` of a run folder):

- ``keras.callbacks.BackupAndRestore``, used as Keras ships it, saves the fitted model's
  weights, optimizer state and epoch counter at the end of every epoch into
  ``backup/<stage>/working/`` and restores them when ``fit`` starts. It writes those files in
  place, so a SIGKILL during its write leaves a working copy that cannot be read.
- :class:`PublishBackup`, the callback after it in the same ``on_epoch_end``, renames the
  finished ``working/`` to ``backup/<stage>/epoch-<n>/`` (``n``: epochs completed), then
  removes older snapshots; Keras writes a new ``working/`` at the next epoch's end. A rename
  is atomic, so every ``epoch-<n>/`` on disk is complete.
- :func:`restore_backup`, before every ``fit``, deletes ``working/`` (a kill may have cut it,
  so it is never read) and copies the newest snapshot there, from which Keras restores.
  ``fit`` then drops the ``history.csv`` rows of the epochs that run again.

So a run killed at any moment resumes at the end of its last published epoch: at most the
epoch in progress runs again, and no row is repeated. This holds when the process dies
(SIGKILL, out of memory); surviving a power cut (fsync) is not attempted.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import time
from pathlib import Path

import keras
import tensorflow as tf

from cnnlab.files import remove_stale_temporaries, write_text
from cnnlab.training.runs import RunFolder, save_weights_atomic


class EpochTimer(keras.callbacks.Callback):
    """Adds the epoch's wall-clock ``seconds`` to the logs (so ``history.csv`` has it)."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["seconds"] = round(time.perf_counter() - self._start, 3)


_NOTICES_SHOWN: set[str] = set()


def notice_once(key: str, text: str) -> bool:
    """Prints ``text`` the first time ``key`` is noticed in this process (a notebook's kernel);
    returns whether it printed. For explanations every run of a kind would repeat."""
    if key in _NOTICES_SHOWN:
        return False
    _NOTICES_SHOWN.add(key)
    print(text)
    return True


class ProgressTable(keras.callbacks.Callback):
    """One row per epoch, as fastai's progress table: a compact alternative to Keras' logs.

    Prints a header when the stage starts (``stage``, then the column names), then for every
    epoch its number (counted from 1, across stages), each metric of the logs rounded to 4
    digits (``loss``, ``accuracy``, then the validation ones) and the epoch's seconds. Put it
    after :class:`EpochTimer`, which adds ``seconds`` to the logs.

    Args:
        stage: Label of the stage printed above its rows (e.g. ``"fine_tune"``).
    """

    STAGE_NAMES = {"frozen": "stage 1, the head on the frozen backbone",
                   "fine_tune": "stage 2, fine-tuning", "train": "training"}

    def __init__(self, stage: str = "train"):
        super().__init__()
        self.stage, self.columns = self.STAGE_NAMES.get(stage, stage), None

    def on_train_begin(self, logs=None):
        self.columns = None

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if self.columns is None:
            def order(key):  # loss first, then the metrics; training before validation
                name = key.removeprefix("val_")
                return (key == "seconds", key.startswith("val_"), name != "loss", name)

            self.columns = sorted(logs, key=order)
            widths = [max(len(k), 8) for k in self.columns]
            print(f"{self.stage}:")
            print("epoch " + " ".join(k.rjust(w) for k, w in zip(self.columns, widths)),
                  flush=True)
        cells = []
        for key in self.columns:
            value = logs.get(key, float("nan"))
            text = f"{value:.1f}" if key == "seconds" else f"{value:.4f}"
            cells.append(text.rjust(max(len(key), 8)))
        print(f"{epoch + 1:>5} " + " ".join(cells), flush=True)


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


# Keras' BackupAndRestore writes here; the published snapshots are its siblings epoch-<n>/.
BACKUP_WORKING = "working"
_SNAPSHOT = re.compile(r"^epoch-(\d+)$")


def backup_snapshots(folder: str | os.PathLike) -> dict[int, Path]:
    """The complete snapshots of a stage's backup folder: ``{epochs completed: folder}``."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.iterdir():
        match = _SNAPSHOT.match(path.name)
        if match and path.is_dir():
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


class PublishBackup(keras.callbacks.Callback):
    """Publishes the epoch's ``keras.callbacks.BackupAndRestore`` files as a complete snapshot.

    Runs after Keras' callback in the same ``on_epoch_end``, once Keras has written
    ``<folder>/working/`` in full: renames it to ``<folder>/epoch-<n>/`` and removes the older
    snapshots (see the module docstring for what this guarantees).

    Args:
        folder: The stage's backup folder, ``backup/<stage>/``.
    """

    def __init__(self, folder: str | os.PathLike):
        super().__init__()
        self.folder = Path(folder)

    def on_epoch_end(self, epoch, logs=None):
        completed = epoch + 1
        target = self.folder / f"epoch-{completed}"
        if target.exists():  # defensive: a resumed stage publishes after its newest snapshot
            shutil.rmtree(target)
        os.replace(self.folder / BACKUP_WORKING, target)
        for count, path in backup_snapshots(self.folder).items():
            if count != completed:
                shutil.rmtree(path, ignore_errors=True)


def restore_backup(folder: str | os.PathLike) -> int | None:
    """Prepares a stage's backup folder for ``fit``: Keras restores from its newest snapshot.

    Deletes ``working/`` (possibly cut by a kill) and temporaries that killed processes left,
    then copies the newest ``epoch-<n>/`` snapshot to ``working/``, where
    ``keras.callbacks.BackupAndRestore`` reads it when training begins (a copy: the snapshot
    stays whole while Keras overwrites ``working/``).

    Args:
        folder: The stage's backup folder, ``backup/<stage>/``.

    Returns:
        ``n``, the epochs the snapshot completed (the next epoch's index), or None if there
        is no snapshot (the stage starts from its beginning).
    """
    folder = Path(folder)
    shutil.rmtree(folder / BACKUP_WORKING, ignore_errors=True)
    remove_stale_temporaries(folder)
    snapshots = backup_snapshots(folder)
    if not snapshots:
        return None
    completed, newest = list(snapshots.items())[-1]
    shutil.copytree(newest, folder / BACKUP_WORKING)
    return completed


def _trim_history(run: RunFolder, first_epoch: int) -> None:
    """Drops rows of epochs that will run (again), so resuming never duplicates a row."""
    history = run.history_rows()
    kept = history[history["epoch"] < first_epoch]
    if len(kept) < len(history):
        write_text(run.history, kept.to_csv(index=False))


def _best_so_far(run: RunFolder, monitor: str = "val_accuracy") -> float:
    history = run.history_rows()
    return float(history[monitor].max()) if monitor in history and len(history) else -math.inf


def tensorboard_logs(run: RunFolder, stage: str = "train") -> keras.callbacks.TensorBoard:
    """``keras.callbacks.TensorBoard`` writing ``run``'s ``tensorboard/<stage>/``.

    Cheap: one point per epoch, no weight histograms, graph, images or profiler.
    """
    return keras.callbacks.TensorBoard(log_dir=str(run.tensorboard / stage), histogram_freq=0,
                                       write_graph=False, write_images=False,
                                       write_steps_per_second=False, update_freq="epoch",
                                       profile_batch=0)


def run_callbacks(run: RunFolder, stage: str = "train", target: keras.Model | None = None,
                  monitor: str = "val_accuracy", table: bool = False
                  ) -> list[keras.callbacks.Callback]:
    """Epoch timer, history CSV, TensorBoard logs, best/last checkpoints, Keras' backup and
    its publication.

    Order matters: the timer adds ``seconds`` before CSVLogger writes the row and
    ``keras.callbacks.TensorBoard`` its point (``tensorboard/<stage>/train/`` and
    ``validation/``, one per epoch); the checkpoints come before the backup, so a published
    snapshot always has its row and checkpoints; and :class:`PublishBackup` follows
    ``keras.callbacks.BackupAndRestore``, whose files it publishes. A kill between the row and
    the snapshot repeats (and trims) that row on resume. TensorBoard's event files are a
    view, not the record: its writer flushes every two minutes and when the stage ends, so
    after a kill the newest points can be missing or, for an epoch that runs again, appear
    twice (a resumed stage adds an event file to the same folder); ``history.csv`` is exact.

    Args:
        run: The run folder.
        stage: Name of the stage; its backup is ``backup/<stage>/``, its TensorBoard logs
            ``tensorboard/<stage>/``.
        target: Model the checkpoints save (default: the fitted model).
        monitor: Metric of the best checkpoint, higher is better (``val_mIoU`` for
            segmentation).
        table: Also print a :class:`ProgressTable` row per epoch (after the timer).

    Returns:
        The callbacks, in the order Keras must call them.
    """
    folder = run.backup / stage
    return [
        EpochTimer(),
        *([ProgressTable(stage)] if table else []),
        keras.callbacks.CSVLogger(str(run.history), append=True),
        tensorboard_logs(run, stage),
        RunCheckpoint(run, target, _best_so_far(run, monitor), monitor),
        keras.callbacks.BackupAndRestore(str(folder / BACKUP_WORKING)),
        PublishBackup(folder),
    ]
