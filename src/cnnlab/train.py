"""Training: compile, fit with callbacks, two-stage fine-tuning, and the run folder.

Every training run writes ``checkpoints/<run>/``: ``args.yaml`` (resolved configuration with
TensorFlow/Keras versions and the weights actually used), ``history.csv`` (one row per epoch,
written as it goes by ``keras.callbacks.CSVLogger``), ``best.weights.h5`` (best validation
accuracy) and ``last.weights.h5``, and a ``backup/`` folder from
``keras.callbacks.BackupAndRestore`` so an interrupted run resumes where it stopped. Plots read
``history.csv``; nothing is copied by hand.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf
import yaml

from cnnlab.backbones import fine_tune_boundary
from cnnlab.models import find_backbone
from cnnlab.storage import write_text


@dataclass(frozen=True)
class RunFolder:
    """The files of one training run under ``checkpoints/<name>/``."""

    path: Path

    @property
    def args(self) -> Path:
        return self.path / "args.yaml"

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def best(self) -> Path:
        return self.path / "best.weights.h5"

    @property
    def last(self) -> Path:
        return self.path / "last.weights.h5"

    @property
    def backup(self) -> Path:
        return self.path / "backup"

    def write_args(self, config: dict) -> Path:
        """Writes ``args.yaml``: ``config`` plus library versions and the machine."""
        self.path.mkdir(parents=True, exist_ok=True)
        full = {
            **config,
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version(),
            "devices": [d.device_type for d in tf.config.list_logical_devices()],
        }
        return write_text(self.args, yaml.safe_dump(full, sort_keys=False))

    def read_history(self) -> pd.DataFrame:
        """Reads ``history.csv`` (raises FileNotFoundError naming it if absent)."""
        if not self.history.is_file():
            raise FileNotFoundError(f"{self.history} does not exist; train the model first")
        return pd.read_csv(self.history)


def start_run(checkpoints_dir: str | os.PathLike, name: str, config: dict,
              resume: bool = True) -> RunFolder:
    """Creates (or reopens) ``checkpoints/<name>/`` and writes its ``args.yaml``.

    Args:
        checkpoints_dir: The ``checkpoints/`` folder.
        name: Run name, e.g. ``cards-retail_cnn``.
        config: Resolved configuration to record.
        resume: If an interrupted run left a backup, keep it and its history so ``fit``
            continues where it stopped. Otherwise (finished run, or False) the old folder is
            renamed ``<name>.<date-time>`` and a new one started: nothing is overwritten.

    Returns:
        The run folder.
    """
    run = RunFolder(Path(checkpoints_dir) / name)
    interrupted = run.backup.is_dir() and any(run.backup.rglob("*.json"))
    if resume and interrupted:
        print(f"resuming the interrupted run in checkpoints/{name}")
    elif run.path.is_dir() and any(run.path.iterdir()):
        # A finished run (BackupAndRestore deletes its backup at the end): keep it whole under
        # a dated name and start a new folder, so no checkpoint or history is lost.
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(run.path.stat().st_mtime))
        kept = run.path.with_name(f"{name}.{stamp}")
        os.replace(run.path, kept)
        print(f"kept the previous run as checkpoints/{kept.name}")
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_args(config)
    return run


def compile_classifier(model: keras.Model, learning_rate: float) -> keras.Model:
    """Compiles with Adam, sparse categorical cross-entropy and accuracy."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def run_callbacks(run: RunFolder, stage: str = "") -> list[keras.callbacks.Callback]:
    """History CSV, best and last checkpoints, and backup-and-restore for a run folder."""
    return [
        keras.callbacks.BackupAndRestore(str(run.backup / (stage or "main"))),
        keras.callbacks.CSVLogger(str(run.history), append=True),
        keras.callbacks.ModelCheckpoint(
            str(run.best), monitor="val_accuracy", mode="max", save_best_only=True,
            save_weights_only=True),
        keras.callbacks.ModelCheckpoint(str(run.last), save_weights_only=True),
    ]


def fit(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset,
    run: RunFolder,
    epochs: int,
    initial_epoch: int = 0,
    stage: str = "",
    verbose: int | str = 2,
) -> keras.callbacks.History:
    """``model.fit`` with the run folder's callbacks; returns the Keras History.

    Args:
        model: A compiled model.
        train_ds: Training batches.
        val_ds: Validation batches.
        run: Where history and checkpoints go.
        epochs: Index of the last epoch (Keras semantics, counting from ``initial_epoch``).
        initial_epoch: First epoch (continues the numbering of an earlier stage).
        stage: Name of the stage, to keep its resume backup separate.
        verbose: Keras verbosity (2: one line per epoch, readable in notebooks).
    """
    # shuffle=False: the tf.data pipeline already reshuffles every epoch (fit's own flag
    # does nothing for datasets and only warns).
    return model.fit(train_ds, validation_data=val_ds, epochs=epochs,
                     initial_epoch=initial_epoch, callbacks=run_callbacks(run, stage),
                     verbose=verbose, shuffle=False)


def train_classifier(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset,
    run: RunFolder,
    epochs: int,
    learning_rate: float = 1e-3,
) -> pd.DataFrame:
    """Trains a model end to end, then restores the best validation checkpoint.

    Returns:
        The run's history (``history.csv``) as a DataFrame.
    """
    compile_classifier(model, learning_rate)
    fit(model, train_ds, val_ds, run, epochs, stage="train")
    if run.best.exists():
        model.load_weights(run.best)
    return run.read_history()


def set_fine_tune_trainable(model: keras.Model, train_bn: bool = False) -> int:
    """Unfreezes the backbone of a transfer model from its registry boundary on.

    Layers before :func:`cnnlab.backbones.fine_tune_boundary` stay frozen, and so do all
    BatchNormalization layers unless ``train_bn`` (their statistics never change anyway, as
    the backbone is called with ``training=False``).

    Args:
        model: A model built by ``models.build_transfer_model``.
        train_bn: Also train BatchNormalization scale and offset.

    Returns:
        Number of trainable backbone layers.

    Raises:
        ValueError: If ``model`` has no nested backbone.
    """
    backbone = find_backbone(model)
    if backbone is None:
        raise ValueError(f"{model.name} has no nested backbone to fine-tune")
    start = fine_tune_boundary(backbone)
    backbone.trainable = True
    count = 0
    for index, layer in enumerate(backbone.layers):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = index >= start and (train_bn or not is_bn)
        count += bool(layer.trainable and layer.weights)
    return count


def fine_tune(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset,
    run: RunFolder,
    freeze_epochs: int,
    epochs: int,
    base_lr: float = 1e-3,
    lr_mult: float = 0.1,
    train_bn: bool = False,
) -> pd.DataFrame:
    """Two-stage transfer learning: head on a frozen backbone, then the top of the backbone.

    Stage 1 trains only the head for ``freeze_epochs`` at ``base_lr``. Stage 2 unfreezes the
    backbone after its registry boundary (BatchNormalization kept frozen) and trains
    ``epochs`` more at ``base_lr * lr_mult``, the Keras transfer-learning guide's recipe
    (https://keras.io/guides/transfer_learning/). The best validation checkpoint over both
    stages is restored at the end.

    Returns:
        The run's history (``history.csv``), epochs numbered across both stages.
    """
    backbone = find_backbone(model)
    if backbone is None:
        raise ValueError(f"{model.name} has no nested backbone; use train_classifier")
    backbone.trainable = False
    compile_classifier(model, base_lr)
    fit(model, train_ds, val_ds, run, freeze_epochs, stage="frozen")
    if epochs > 0:
        unfrozen = set_fine_tune_trainable(model, train_bn)
        print(f"fine-tuning {unfrozen} backbone layers of {backbone.name} at "
              f"lr {base_lr * lr_mult:g}")
        compile_classifier(model, base_lr * lr_mult)
        fit(model, train_ds, val_ds, run, freeze_epochs + epochs, initial_epoch=freeze_epochs,
            stage="fine_tune")
    if run.best.exists():
        model.load_weights(run.best)
    return run.read_history()


@dataclass
class TrainingResult:
    """What one training run produced.

    Attributes:
        name: Model name (``retail_cnn``, ``mobilenet_v3_small_075``, ...).
        model: The trained model (best validation checkpoint restored).
        history: ``history.csv`` as a DataFrame.
        run: The run folder.
        paths: Saved model files (``.keras``, ``.h5``, ``.json``).
        seconds: Wall-clock training time.
        weights: What the model started from.
        stage_boundary: Epochs of stage 1 (frozen backbone), for plots; None for custom CNNs.
    """

    name: str
    model: keras.Model
    history: pd.DataFrame
    run: RunFolder
    paths: dict
    seconds: float
    weights: str
    stage_boundary: int | None = None

    def summary(self) -> dict:
        """Best validation accuracy and the facts a comparison table needs."""
        best = self.history["val_accuracy"].idxmax()
        return {"model": self.name, "weights": self.weights,
                "epochs": len(self.history),
                "best val accuracy": round(float(self.history["val_accuracy"].max()), 4),
                "best epoch": int(self.history["epoch"].iloc[best]) + 1,
                "train minutes": round(self.seconds / 60, 1)}


def _datasets_for(manifest, image_size: int, profile, hflip: bool, seed: int):
    from cnnlab.data import split_dataset

    train_rows = manifest.split("train", profile.max_train_per_class, seed)
    val_rows = manifest.split("val")
    return (split_dataset(train_rows, image_size, profile.batch_size, True, hflip, seed),
            split_dataset(val_rows, image_size, profile.batch_size), len(train_rows))


def _save(model, dirs, manifest, name, image_size, seconds, weights, run, extra):
    from cnnlab.export import save_model

    metadata = {"model": name, "dataset": manifest.dataset, "class_names": manifest.classes,
                "image_size": image_size, "input": "RGB float32 in [0, 255]",
                "weights": weights, "train_seconds": round(seconds, 1),
                "run_folder": run.path.name, **extra}
    return save_model(model, dirs.models, f"{manifest.dataset}-{name}", metadata)


def train_custom(name: str, manifest, profile, dirs=None, seed: int = 42,
                 hflip: bool = True) -> TrainingResult:
    """Trains custom CNN ``name`` on a manifest and saves it to ``models/``.

    Args:
        name: Key of ``models.CUSTOM_MODELS``.
        manifest: A ``datasets.Manifest``.
        profile: A ``config.Profile`` (image size, epochs, batch size, rate).
        dirs: Project folders.
        seed: Seed for weights initialisation, shuffling and augmentation.
        hflip: Whether augmentation may flip horizontally.

    Returns:
        The result; files: ``checkpoints/<dataset>-<name>/`` and ``models/<dataset>-<name>.*``.
    """
    from cnnlab.config import project_dirs
    from cnnlab.models import build_custom_model

    dirs = dirs or project_dirs()
    keras.utils.set_random_seed(seed)
    size = profile.custom_image_size
    train_ds, val_ds, n_train = _datasets_for(manifest, size, profile, hflip, seed)
    model = build_custom_model(name, size, len(manifest.classes))
    run = start_run(dirs.checkpoints, f"{manifest.dataset}-{name}", {
        "model": name, "dataset": manifest.dataset, "image_size": size,
        "train_images": n_train, "epochs": profile.custom_epochs,
        "batch_size": profile.batch_size, "learning_rate": profile.learning_rate,
        "seed": seed, "profile": profile.name, "weights": "none (custom CNN)"})
    print(f"training {name}: {n_train} images at {size} px, {profile.custom_epochs} epochs")
    start = time.perf_counter()
    history = train_classifier(model, train_ds, val_ds, run, profile.custom_epochs,
                               profile.learning_rate)
    seconds = time.perf_counter() - start
    paths = _save(model, dirs, manifest, name, size, seconds, "none (custom CNN)", run, {})
    return TrainingResult(name, model, history, run, paths, seconds, "none (custom CNN)")


def train_transfer(backbone: str, manifest, profile, weights: str = "imagenet",
                   weights_dir=None, dirs=None, seed: int = 42,
                   hflip: bool = True) -> TrainingResult:
    """Fine-tunes ``backbone`` + head on a manifest (:func:`fine_tune`) and saves it.

    With pretrained weights: :func:`fine_tune` (frozen stage, then the top blocks). Without:
    the whole network is trained from scratch for ``freeze_epochs + fine_tune_epochs`` epochs
    (the no-transfer baseline; a frozen random backbone would give the head nothing to learn).

    Args:
        backbone: Key of ``backbones.BACKBONES``.
        manifest: A ``datasets.Manifest``.
        profile: A ``config.Profile``.
        weights: ``"imagenet"``, ``"local"``, ``"none"`` or a file (``resolve_weights``).
        weights_dir: Folder of local ImageNet weights files.
        dirs: Project folders.
        seed: Seed for the head's initialisation, shuffling and augmentation.
        hflip: Whether augmentation may flip horizontally.

    Returns:
        The result; the weights actually used are printed and stored in ``args.yaml``, the
        model's JSON sidecar and the leaderboard.
    """
    from cnnlab.backbones import resolve_weights
    from cnnlab.config import project_dirs
    from cnnlab.models import build_transfer_model

    dirs = dirs or project_dirs()
    keras.utils.set_random_seed(seed)
    choice = resolve_weights(backbone, weights, weights_dir)
    size = profile.image_size
    train_ds, val_ds, n_train = _datasets_for(manifest, size, profile, hflip, seed)
    model = build_transfer_model(backbone, len(manifest.classes), size, choice)
    label = choice.label if choice.is_pretrained else choice.label.upper()
    plan = (f"{profile.freeze_epochs} frozen + {profile.fine_tune_epochs} fine-tune epochs"
            if choice.is_pretrained else
            f"{profile.freeze_epochs + profile.fine_tune_epochs} epochs from scratch")
    print(f"{backbone}: weights = {label}; {n_train} images at {size} px, {plan}")
    run = start_run(dirs.checkpoints, f"{manifest.dataset}-{backbone}", {
        "model": backbone, "dataset": manifest.dataset, "image_size": size,
        "train_images": n_train, "freeze_epochs": profile.freeze_epochs,
        "fine_tune_epochs": profile.fine_tune_epochs, "batch_size": profile.batch_size,
        "learning_rate": profile.learning_rate, "lr_mult": profile.fine_tune_lr_mult,
        "seed": seed, "profile": profile.name, "weights": choice.label})
    start = time.perf_counter()
    if choice.is_pretrained:
        history = fine_tune(model, train_ds, val_ds, run, profile.freeze_epochs,
                            profile.fine_tune_epochs, profile.learning_rate,
                            profile.fine_tune_lr_mult)
    else:  # random features: train everything from scratch for the same number of epochs
        history = train_classifier(model, train_ds, val_ds, run,
                                   profile.freeze_epochs + profile.fine_tune_epochs,
                                   profile.learning_rate)
    seconds = time.perf_counter() - start
    paths = _save(model, dirs, manifest, backbone, size, seconds, choice.label, run,
                  {"backbone": backbone, "freeze_epochs": profile.freeze_epochs})
    return TrainingResult(backbone, model, history, run, paths, seconds, choice.label,
                          profile.freeze_epochs if choice.is_pretrained else None)
