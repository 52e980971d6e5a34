"""Fitting one model: seeds and precision, compiling, the training data of a run, the resumable
``fit`` loop and the end-to-end training of a custom CNN (``train_custom``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf

from cnnlab.training import distribute
from cnnlab.training.callbacks import (
    PRECISE_BN_IMAGES,
    PreciseBatchNorm,
    _trim_history,
    batchnorm_in_training_mode,
    notice_once,
    restore_backup,
    run_callbacks,
)
from cnnlab.training.runs import RunFolder, _profile_config, finish_run, load_weights, start_run


def fit(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset,
    run: RunFolder,
    epochs: int,
    initial_epoch: int = 0,
    stage: str = "train",
    verbose: int | str = "table",
    target: keras.Model | None = None,
    class_weight: dict | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
    monitor: str = "val_accuracy",
) -> keras.callbacks.History:
    """``model.fit`` with the run folder's callbacks, resuming a stage that was interrupted.

    The stage resumes from its newest complete backup snapshot
    (:func:`cnnlab.training.callbacks.restore_backup`, restored by
    ``keras.callbacks.BackupAndRestore``); rows of ``history.csv`` from that epoch on are
    dropped first, so an epoch that runs again is not listed twice.

    Args:
        model: A compiled model.
        train_ds: Training batches.
        val_ds: Validation batches.
        run: Where history and checkpoints go.
        epochs: Index of the last epoch (Keras semantics, counting from ``initial_epoch``).
        initial_epoch: First epoch (continues the numbering of an earlier stage).
        stage: Name of the stage; its resume backup is ``backup/<stage>/``.
        verbose: ``"table"``: one row per epoch (``callbacks.ProgressTable``), Keras silent;
            otherwise Keras' own verbosity (2: its per-epoch log lines, 1: progress bars).
        target: Model the checkpoints save (default ``model``).
        class_weight: ``{class index: weight}`` for imbalanced data, or None.
        callbacks: Extra callbacks, run before the run folder's (e.g. :class:`PreciseBatchNorm`,
            which must finish before the checkpoint of the epoch is written).
        monitor: Metric of ``best.weights.h5``, higher is better.

    Returns:
        The Keras History of the epochs run in this call.
    """
    resumed = restore_backup(run.backup / stage)
    if resumed is not None:
        print(f"{stage}: resuming after epoch {resumed} of {epochs} from "
              f"checkpoints/{run.name}/backup/{stage}")
    _trim_history(run, resumed if resumed is not None else initial_epoch)
    # shuffle=False: the tf.data pipeline already reshuffles every epoch (fit's own flag
    # does nothing for datasets and only warns).
    return model.fit(train_ds, validation_data=val_ds, epochs=epochs,
                     initial_epoch=initial_epoch,
                     callbacks=list(callbacks or []) + run_callbacks(
                         run, stage, target, monitor, table=verbose == "table"),
                     verbose=0 if verbose == "table" else verbose, shuffle=False,
                     class_weight=class_weight)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seeds Python, NumPy and TensorFlow; optionally makes every op deterministic.

    With ``deterministic``, ``tf.config.experimental.enable_op_determinism`` makes reruns with
    the same seed give the same metrics on the same hardware (slower on GPU; process-wide,
    https://www.tensorflow.org/api_docs/python/tf/config/experimental/enable_op_determinism).
    """
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


PRECISION_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


@contextlib.contextmanager
def precision(policy: str | None):
    """Builds models under a Keras dtype policy, then restores the previous global policy.

    ``mixed_float16`` and ``mixed_bfloat16`` compute in 16 bits with float32 variables
    (Micikevicius et al. 2018, arXiv:1710.03740); ``compile`` adds loss scaling for float16.
    Every model here ends in a float32 softmax, so outputs and losses stay float32.

    Args:
        policy: One of :data:`PRECISION_POLICIES`, or None for float32.

    Raises:
        ValueError: On an unknown policy.
    """
    policy = policy or "float32"
    if policy not in PRECISION_POLICIES:
        raise ValueError(f"unknown mixed precision policy {policy!r}; choose one of "
                         f"{PRECISION_POLICIES} (or None)")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def compile_classifier(model: keras.Model, learning_rate: float,
                       jit_compile: bool | str = False,
                       optimizer: keras.optimizers.Optimizer | None = None,
                       loss: keras.losses.Loss | None = None) -> keras.Model:
    """Compiles with Adam, sparse categorical cross-entropy and accuracy.

    Args:
        model: Model ending in a softmax.
        learning_rate: Adam learning rate (ignored when ``optimizer`` is given).
        jit_compile: XLA-compile the train step (``"auto"``: Keras decides, off on CPU).
        optimizer: Another optimizer (e.g. a recipe's ``LayerwiseAdamW``).
        loss: Another loss (e.g. with label smoothing).
    """
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(learning_rate),
        loss=loss or keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
    )
    return model


@dataclass
class TrainingData:
    """The train and validation splits of a manifest as ``tf.data`` pipelines.

    Attributes:
        manifest: A ``datasets.Manifest``.
        image_size: Side in pixels the images are resized to.
        batch_size: Global batch size (all replicas together).
        hflip: Whether augmentation may flip horizontally (False for playing cards).
        seed: Seed of the training subsample, shuffling and augmentation.
        max_train_per_class: Cap on training images per class (a seeded sample), or None.
        class_weights: Weight classes inversely to their frequency (scikit-learn's
            ``"balanced"`` rule) for imbalanced datasets.
        cache_dir: Folder for the decoded-image disk cache of splits too large for memory.
    """

    manifest: object
    image_size: int
    batch_size: int = 32
    hflip: bool = True
    seed: int = 42
    max_train_per_class: int | None = None
    class_weights: bool = False
    cache_dir: Path | None = None

    @classmethod
    def from_profile(cls, manifest, profile, image_size: int | None = None,
                     hflip: bool | None = None, seed: int = 42, dirs=None) -> TrainingData:
        """Data for a run with ``profile`` (image size, batch size, cap per class).

        Args:
            manifest: A ``datasets.Manifest``.
            profile: A ``config.Profile``.
            image_size: Overrides ``profile.image_size`` (custom CNNs use their own size).
            hflip: Overrides the dataset registry's ``hflip``.
            seed: Seed.
            dirs: Project folders (for the disk cache under ``data/<dataset>/cache``).
        """
        from cnnlab.data.datasets import get_dataset_spec

        spec = get_dataset_spec(manifest.dataset, own_folder=True)  # it has a manifest
        cache_dir = dirs.data / manifest.dataset / "cache" if dirs is not None else None
        return cls(manifest, image_size or profile.image_size, profile.batch_size,
                   spec.hflip if hflip is None else hflip, seed, profile.max_train_per_class,
                   bool(getattr(spec, "class_weights", False)), cache_dir)

    @property
    def dataset(self) -> str:
        return self.manifest.dataset

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    @property
    def num_classes(self) -> int:
        return len(self.manifest.classes)

    @cached_property
    def train_rows(self) -> pd.DataFrame:
        return self.manifest.split("train", self.max_train_per_class, self.seed)

    @cached_property
    def val_rows(self) -> pd.DataFrame:
        return self.manifest.split("val")

    def with_batch_size(self, batch_size: int) -> TrainingData:
        """A copy with another global batch size (the rows stay the same)."""
        return dataclasses.replace(self, batch_size=batch_size)

    def train_ds(self, augment: bool = True) -> tf.data.Dataset:
        """Shuffled training batches, augmented unless ``augment=False``.

        Returns:
            ``(images, labels)`` batches: ``(batch, size, size, 3)`` RGB in ``[0, 255]`` and
            ``(batch,)`` int32 (see ``data.make_dataset``).
        """
        from cnnlab.data.pipeline import split_dataset

        return distribute.shard_by_data(split_dataset(
            self.train_rows, self.image_size, self.batch_size, training=True, hflip=self.hflip,
            seed=self.seed, augment=augment, cache_dir=self.cache_dir))

    def val_ds(self) -> tf.data.Dataset:
        """Validation batches in manifest order (no shuffle, no augmentation)."""
        from cnnlab.data.pipeline import split_dataset

        return distribute.shard_by_data(split_dataset(
            self.val_rows, self.image_size, self.batch_size, cache_dir=self.cache_dir))

    def class_weight(self) -> dict[int, float] | None:
        """``{class index: weight}`` (balanced) when ``class_weights``, else None."""
        if not self.class_weights:
            return None
        from cnnlab.data.datasets import balanced_class_weights

        return balanced_class_weights(self.train_rows["label_index"].to_numpy())

    def fingerprints(self) -> dict[str, str]:
        """Short hashes of the train and val rows: files, labels and contents (``args.yaml``).

        Returns:
            ``{"train": ..., "val": ...}``, each :func:`~cnnlab.training.split_fingerprint`.
        """
        from cnnlab.training.cached_features import split_fingerprint

        return {"train": split_fingerprint(self.train_rows),
                "val": split_fingerprint(self.val_rows)}


def train_minutes(history: pd.DataFrame, fallback_seconds: float | None = None) -> float | None:
    """``train minutes``, defined once: the sum of the epochs' wall-clock ``seconds`` in
    ``history.csv`` (each epoch's training and validation, every epoch of a resumed run too),
    rounded to 0.1. One-off work outside the epochs (stage 1's feature extraction, saving the
    model) is not counted; it is printed where it happens.

    Args:
        history: A run's ``history.csv``.
        fallback_seconds: Used when the history has no complete ``seconds`` column.

    Returns:
        Minutes, or None when neither is known.
    """
    if "seconds" in history and len(history) and history["seconds"].notna().all():
        return round(float(history["seconds"].sum()) / 60, 1)
    return None if fallback_seconds is None else round(fallback_seconds / 60, 1)


@dataclass
class TrainingResult:
    """What one training run produced.

    Attributes:
        name: Model name (``retail_cnn``, ``mobilenet_v3_small_075``, ...).
        model: The trained model (best validation checkpoint restored).
        history: ``history.csv`` as a DataFrame.
        run: The run folder.
        paths: Saved model files (``.keras``, ``.h5``, ``.json``); empty if not saved.
        seconds: Wall-clock training time of this process (a resumed run counts its part).
        weights: What the model started from.
        stage_boundary: Epochs of stage 1 (frozen backbone), for plots; None for models
            trained end to end.
        feature_cache: Whether stage 1 trained the head on cached features.
    """

    name: str
    model: keras.Model
    history: pd.DataFrame
    run: RunFolder
    paths: dict = field(default_factory=dict)
    seconds: float = 0.0
    weights: str = ""
    stage_boundary: int | None = None
    feature_cache: bool = False

    @property
    def train_minutes(self) -> float:
        """Minutes of training, the one definition used wherever ``train minutes`` is shown:
        :func:`train_minutes` of the run's history (``seconds`` of the call if it has none)."""
        return train_minutes(self.history, self.seconds)

    @property
    def is_pretrained(self) -> bool:
        """Whether the model started from pretrained weights (``pretrained`` in ``args.yaml``).

        Custom CNNs, and backbones trained from random init, are not; their ``weights`` is
        shown in capitals wherever results are printed.
        """
        return bool(self.run.read_args().get("pretrained", False))

    def summary(self) -> dict:
        """Best validation accuracy and the facts a comparison table needs."""
        best = self.history["val_accuracy"].idxmax()
        args = self.run.read_args()
        row = {"model": self.name, "weights": self.weights,
               "image px": args.get("image_size"), "train images": args.get("train_images"),
               "epochs": len(self.history),
               "best val accuracy": round(float(self.history["val_accuracy"].max()), 4),
               "best epoch": int(self.history["epoch"].iloc[best]) + 1,
               "train minutes": self.train_minutes}
        if "seconds" in self.history:
            seconds = self.history["seconds"]
            if self.stage_boundary:  # the two stages cost very different amounts per epoch
                row["s/epoch stage 1"] = round(float(seconds.iloc[:self.stage_boundary]
                                                     .median()), 2)
                row["s/epoch stage 2"] = round(float(seconds.iloc[self.stage_boundary:]
                                                     .median()), 1)
            else:
                row["s/epoch"] = round(float(seconds.median()), 1)
        if self.stage_boundary:
            row["stage 1 on cached features"] = self.feature_cache
        return row


def _save(model, dirs, data: TrainingData, name, seconds, weights, run, extra):
    from cnnlab.deploy.export import save_model

    metadata = {"model": name, "dataset": data.dataset, "class_names": data.classes,
                "image_size": data.image_size, "input": "RGB in [0, 255]",
                "weights": weights, "train_seconds": round(seconds, 1),
                "run_folder": run.path.name, **extra}
    return save_model(model, dirs.models, f"{data.dataset}-{name}", metadata)


def _prepare(data: TrainingData, strategy, base_lr: float):
    """The strategy, and data and rate scaled to its replicas (linear scaling rule)."""
    strategy = distribute.make_strategy(strategy)
    replicas = strategy.num_replicas_in_sync
    batch, lr = distribute.scale_for_replicas(data.batch_size, base_lr, replicas)
    if replicas > 1:
        print(f"{distribute.strategy_name(strategy)}: global batch {batch} "
              f"({data.batch_size} per replica), learning rate {lr:g} ({base_lr:g} x "
              f"{replicas}, linear scaling rule)")
        data = data.with_batch_size(batch)
    return strategy, data, lr


def _run_name(data: TrainingData, name: str, strategy) -> str:
    run_name = f"{data.dataset}-{name}"
    if not distribute.is_chief(strategy):  # other workers keep their own copy, never models/
        run_name += f".worker{distribute.worker_index(strategy)}"
    return run_name


def _train_end_to_end(model, data: TrainingData, run: RunFolder, epochs: int, lr: float,
                      jit_compile, verbose, callbacks=None, optimizer=None, loss=None) -> None:
    if run.completed("train"):  # killed after training, before the run was marked finished
        return
    compile_classifier(model, lr, jit_compile, optimizer, loss)
    extra = []
    if batchnorm_in_training_mode(model):
        images = min(PRECISE_BN_IMAGES, len(data.train_rows))
        extra.append(PreciseBatchNorm(data.train_ds(augment=False),
                                      math.ceil(images / data.batch_size)))
        notice_once("precise_bn", f"BatchNorm statistics are recomputed on {images} "
                    f"un-augmented training images after every epoch, before validation "
                    f"(Precise BN, arXiv:2105.07576)")
    fit(model, data.train_ds(), data.val_ds(), run, epochs, stage="train", verbose=verbose,
        class_weight=data.class_weight(), callbacks=extra + list(callbacks or []))
    run.complete("train")


def _restore_best(model, run: RunFolder) -> pd.DataFrame:
    """Loads the best checkpoint; the run stays ``running`` until its model is saved, so a
    kill between the last epoch and the save resumes (every stage done) and saves."""
    if run.best.exists():
        load_weights(model, run.best)
    return run.read_history()


def train_classifier(
    model: keras.Model,
    data: TrainingData,
    run: RunFolder,
    epochs: int,
    learning_rate: float = 1e-3,
    jit_compile: bool | str = False,
    verbose: int | str = "table",
) -> pd.DataFrame:
    """Trains a model end to end (resumable), then restores the best validation checkpoint.

    Returns:
        The run's history (``history.csv``) as a DataFrame.
    """
    _train_end_to_end(model, data, run, epochs, learning_rate, jit_compile, verbose)
    history = _restore_best(model, run)
    finish_run(run)
    return history


def train_custom(name: str, manifest, profile, dirs=None, seed: int = 42,
                 hflip: bool | None = None, strategy: str | None = None) -> TrainingResult:
    """Trains custom CNN ``name`` end to end on a manifest and saves it to ``models/``.

    Args:
        name: Key of ``models.CUSTOM_MODELS``.
        manifest: A ``datasets.Manifest``.
        profile: A ``config.Profile`` (image size, epochs, batch size, rate, precision, XLA,
            strategy, determinism).
        dirs: Project folders.
        seed: Seed for weights initialisation, shuffling and augmentation.
        hflip: Whether augmentation may flip horizontally (default: the dataset's rule).
        strategy: Overrides ``profile.strategy``.

    Returns:
        The result; files: ``checkpoints/<dataset>-<name>/`` and ``models/<dataset>-<name>/``.
    """
    from cnnlab.config import project_dirs
    from cnnlab.models.custom import build_custom_model

    dirs = dirs or project_dirs()
    seed_everything(seed, profile.deterministic)
    data = TrainingData.from_profile(manifest, profile, profile.custom_image_size, hflip, seed,
                                     dirs)
    strategy, data, lr = _prepare(data, strategy or profile.strategy, profile.learning_rate)
    with precision(profile.mixed_precision), strategy.scope():
        model = build_custom_model(name, data.image_size, data.num_classes)
    run = start_run(dirs.checkpoints, _run_name(data, name, strategy), {
        "model": name, "dataset": data.dataset, "image_size": data.image_size,
        "train_images": len(data.train_rows), "val_images": len(data.val_rows),
        "manifest": data.fingerprints(), "epochs": profile.custom_epochs,
        "batch_size": data.batch_size, "replicas": strategy.num_replicas_in_sync,
        "learning_rate": lr, "seed": seed, "deterministic": profile.deterministic,
        "weights": "none (custom CNN)", "mixed_precision": profile.mixed_precision or "float32",
        "jit_compile": profile.jit_compile, "strategy": distribute.strategy_name(strategy),
        **_profile_config(profile)})
    print(f"training {name}: {len(data.train_rows)} images at {data.image_size} px, "
          f"{profile.custom_epochs} epochs")
    start = time.perf_counter()
    with strategy.scope():
        _train_end_to_end(model, data, run, profile.custom_epochs, lr, profile.jit_compile, "table")
        history = _restore_best(model, run)
    seconds = time.perf_counter() - start
    paths = {}
    if distribute.is_chief(strategy):
        paths = _save(model, dirs, data, name, seconds, "none (custom CNN)", run, {})
    finish_run(run)  # after the save: a kill before it resumes and saves
    return TrainingResult(name, model, history, run, paths, seconds, "none (custom CNN)")
