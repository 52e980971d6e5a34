"""Training: the run folder, resumable fit, one-call fine-tuning, and the training options.

Every training run writes ``checkpoints/<run>/``:

- ``args.yaml``: the resolved configuration (model, dataset, image size, epochs, global and
  per-replica batch size, learning rates, seed, manifest fingerprints, the weights actually
  used, strategy, precision) with the TensorFlow, Keras and Python versions;
- ``history.csv``: one row per epoch, written as it goes (``keras.callbacks.CSVLogger``), with
  the epoch's wall-clock ``seconds``; plots read it;
- ``best.weights.h5`` (best validation accuracy) and ``last.weights.h5``, written to a
  temporary name and renamed;
- ``state.json`` (running / finished, completed stages) and ``backup/<stage>/``
  (``keras.callbacks.BackupAndRestore``, written atomically): a run killed at any point,
  SIGKILL included, continues from its last completed epoch when the same command runs again,
  also in the middle of stage 2 of :func:`fine_tune`, and ends with the same epoch count.

The final model goes to ``models/<dataset>-<model>.{keras,h5,json}`` (``export.save_model``:
temporary name, then rename; a previous model is moved to ``models/previous/``).

:func:`fine_tune` is the fastai-style one call for transfer learning: stage 1 trains the head
on the frozen backbone, on cached backbone features when possible (``cnnlab.features``);
stage 2 unfreezes the backbone from its registry boundary with BatchNormalization frozen, at a
lower rate. Options of the profile: mixed precision, XLA, ``tf.distribute`` strategy,
determinism (see ``config.Profile``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import shutil
import time
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf
import yaml

from cnnlab import distribute
from cnnlab.backbones import fine_tune_boundary
from cnnlab.models import find_backbone
from cnnlab.recipes import UNFREEZE_RULES, FineTuneRecipe, get_recipe
from cnnlab.storage import write_json, write_text

# Keys of args.yaml added by RunFolder.write_args, not part of a run's configuration.
_ENVIRONMENT_KEYS = ("tensorflow", "keras", "python", "devices")


# --------------------------------------------------------------------------- run folder


@dataclass(frozen=True)
class RunFolder:
    """The files of one training run under ``checkpoints/<name>/``."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

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
    def frozen(self) -> Path:
        """Weights at the end of stage 1 of :func:`fine_tune` (what stage 2 starts from)."""
        return self.path / "frozen.weights.h5"

    @property
    def backup(self) -> Path:
        return self.path / "backup"

    @property
    def state(self) -> Path:
        return self.path / "state.json"

    def write_args(self, config: dict) -> Path:
        """Writes ``args.yaml``: ``config`` plus library versions and the devices."""
        self.path.mkdir(parents=True, exist_ok=True)
        full = {
            **config,
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version(),
            "devices": [d.device_type for d in tf.config.list_logical_devices()],
        }
        return write_text(self.args, yaml.safe_dump(full, sort_keys=False))

    def read_args(self) -> dict:
        """Reads ``args.yaml`` ({} if absent)."""
        return yaml.safe_load(self.args.read_text()) if self.args.is_file() else {}

    def read_history(self) -> pd.DataFrame:
        """Reads ``history.csv`` (raises FileNotFoundError naming it if absent)."""
        if not self.history.is_file():
            raise FileNotFoundError(f"{self.history} does not exist; train the model first")
        return pd.read_csv(self.history)

    def history_rows(self) -> pd.DataFrame:
        """``history.csv`` as written so far; empty when the file is missing or empty."""
        if not self.history.is_file() or self.history.stat().st_size == 0:
            return pd.DataFrame({"epoch": pd.Series(dtype=int)})
        return pd.read_csv(self.history)

    def read_state(self) -> dict:
        """``state.json``: ``{"status": "running" | "finished", "completed": [stages]}``."""
        if not self.state.is_file():
            return {}
        return json.loads(self.state.read_text())

    def update_state(self, **changes) -> dict:
        """Merges ``changes`` into ``state.json`` (atomic write) and returns the new state."""
        state = {**self.read_state(), **changes}
        write_json(self.state, state)
        return state

    def completed(self, stage: str) -> bool:
        """Whether ``stage`` finished in this run folder (in this or an earlier process)."""
        return stage in self.read_state().get("completed", [])

    def complete(self, stage: str) -> None:
        """Records ``stage`` as finished, then removes its resume backup."""
        done = self.read_state().get("completed", [])
        self.update_state(completed=[*done, stage] if stage not in done else done)
        shutil.rmtree(self.backup / stage, ignore_errors=True)

    @property
    def is_interrupted(self) -> bool:
        """True if a process started this run and did not finish it."""
        if self.read_state().get("status") == "running":
            return True
        return self.backup.is_dir() and any(self.backup.rglob("*.json"))


def _config_differences(old: dict, new: dict) -> list[str]:
    keys = (set(old) | set(new)) - set(_ENVIRONMENT_KEYS)
    return sorted(k for k in keys if old.get(k) != new.get(k))


def start_run(checkpoints_dir: str | os.PathLike, name: str, config: dict,
              resume: bool = True) -> RunFolder:
    """Creates (or reopens, to resume) ``checkpoints/<name>/`` and writes its ``args.yaml``.

    Args:
        checkpoints_dir: The ``checkpoints/`` folder.
        name: Run name, e.g. ``cards-retail_cnn``.
        config: Resolved configuration to record (YAML-serialisable values).
        resume: If an interrupted run with the same configuration is there, reopen it so
            training continues from its last completed epoch. Otherwise (finished run, other
            configuration, or ``resume=False``) the old folder is kept whole under
            ``<name>.<date-time>`` and a new one is started: nothing is overwritten.

    Returns:
        The run folder (``state.json`` says ``running`` until :func:`finish_run`).
    """
    run = RunFolder(Path(checkpoints_dir) / name)
    config = yaml.safe_load(yaml.safe_dump(config, sort_keys=False))  # as stored: lists
    if run.path.is_dir() and any(run.path.iterdir()):
        if resume and run.is_interrupted:
            changed = _config_differences(run.read_args(), config)
            if not changed:
                done = run.read_state().get("completed", [])
                epochs = len(run.history_rows())
                print(f"resuming the interrupted run in checkpoints/{name}: {epochs} epoch(s) "
                      f"in history.csv" + (f", finished stages: {', '.join(done)}" if done
                                             else ""))
                return run
            print(f"checkpoints/{name} holds an interrupted run with other settings "
                  f"({', '.join(changed)}): starting a new run instead of resuming it")
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(run.path.stat().st_mtime))
        kept = run.path.with_name(f"{name}.{stamp}")
        os.replace(run.path, kept)
        print(f"kept the previous run as checkpoints/{kept.name}")
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_args(config)
    run.update_state(status="running", completed=[])
    return run


def finish_run(run: RunFolder) -> None:
    """Marks a run finished: running the same command again starts a new run."""
    run.update_state(status="finished")
    shutil.rmtree(run.backup, ignore_errors=True)


# --------------------------------------------------------------------------- callbacks


def save_weights_atomic(model: keras.Model, path: str | os.PathLike) -> Path:
    """``model.save_weights`` to a temporary ``.weights.h5`` name, then renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{os.getpid()}.{path.name}")  # keeps the .weights.h5 suffix
    try:
        model.save_weights(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_weights(model: keras.Model, path: str | os.PathLike) -> None:
    """Loads a ``.weights.h5`` file, quiet about optimizer state from another stage.

    Weight files written while a model is compiled carry its optimizer variables; after
    fine-tuning changes the trainable set, Keras skips them with a warning. The model weights
    themselves always load.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model.load_weights(path)


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


def fit(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset,
    run: RunFolder,
    epochs: int,
    initial_epoch: int = 0,
    stage: str = "train",
    verbose: int | str = 2,
    target: keras.Model | None = None,
    class_weight: dict | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> keras.callbacks.History:
    """``model.fit`` with the run folder's callbacks, resuming a stage that was interrupted.

    Args:
        model: A compiled model.
        train_ds: Training batches.
        val_ds: Validation batches.
        run: Where history and checkpoints go.
        epochs: Index of the last epoch (Keras semantics, counting from ``initial_epoch``).
        initial_epoch: First epoch (continues the numbering of an earlier stage).
        stage: Name of the stage; its resume backup is ``backup/<stage>/``.
        verbose: Keras verbosity (2: one line per epoch, readable in notebooks).
        target: Model the checkpoints save (default ``model``).
        class_weight: ``{class index: weight}`` for imbalanced data, or None.
        callbacks: Extra callbacks, run before the run folder's (e.g. :class:`PreciseBatchNorm`,
            which must finish before the checkpoint of the epoch is written).

    Returns:
        The Keras History of the epochs run in this call.
    """
    resumed = _backup_epoch(run.backup / stage)
    if resumed is not None:
        print(f"{stage}: resuming after epoch {resumed} of {epochs} from "
              f"checkpoints/{run.name}/backup/{stage}")
    _trim_history(run, resumed if resumed is not None else initial_epoch)
    # shuffle=False: the tf.data pipeline already reshuffles every epoch (fit's own flag
    # does nothing for datasets and only warns).
    return model.fit(train_ds, validation_data=val_ds, epochs=epochs,
                     initial_epoch=initial_epoch,
                     callbacks=list(callbacks or []) + run_callbacks(run, stage, target),
                     verbose=verbose, shuffle=False, class_weight=class_weight)


# --------------------------------------------------------------------------- options


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


# --------------------------------------------------------------------------- data


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
        from cnnlab.datasets import get_dataset_spec

        spec = get_dataset_spec(manifest.dataset)
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
        from cnnlab.data import split_dataset

        return distribute.shard_by_data(split_dataset(
            self.train_rows, self.image_size, self.batch_size, training=True, hflip=self.hflip,
            seed=self.seed, augment=augment, cache_dir=self.cache_dir))

    def val_ds(self) -> tf.data.Dataset:
        """Validation batches in manifest order (no shuffle, no augmentation)."""
        from cnnlab.data import split_dataset

        return distribute.shard_by_data(split_dataset(
            self.val_rows, self.image_size, self.batch_size, cache_dir=self.cache_dir))

    def class_weight(self) -> dict[int, float] | None:
        """``{class index: weight}`` (balanced) when ``class_weights``, else None."""
        if not self.class_weights:
            return None
        from cnnlab.datasets import balanced_class_weights

        return balanced_class_weights(self.train_rows["label_index"].to_numpy())

    def fingerprints(self) -> dict[str, str]:
        """Short hashes of the train and val rows (recorded in ``args.yaml``)."""
        from cnnlab.features import split_fingerprint

        return {"train": split_fingerprint(self.train_rows),
                "val": split_fingerprint(self.val_rows)}


# --------------------------------------------------------------------------- results


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

    def summary(self) -> dict:
        """Best validation accuracy and the facts a comparison table needs."""
        best = self.history["val_accuracy"].idxmax()
        args = self.run.read_args()
        row = {"model": self.name, "weights": self.weights,
               "image px": args.get("image_size"), "train images": args.get("train_images"),
               "epochs": len(self.history),
               "best val accuracy": round(float(self.history["val_accuracy"].max()), 4),
               "best epoch": int(self.history["epoch"].iloc[best]) + 1,
               "train minutes": round(self.seconds / 60, 1)}
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
    from cnnlab.export import save_model

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
                      jit_compile, verbose, callbacks=None) -> None:
    if run.completed("train"):  # killed after training, before the run was marked finished
        return
    compile_classifier(model, lr, jit_compile)
    extra = []
    if batchnorm_in_training_mode(model):
        images = min(PRECISE_BN_IMAGES, len(data.train_rows))
        extra.append(PreciseBatchNorm(data.train_ds(augment=False),
                                      math.ceil(images / data.batch_size)))
        print(f"BatchNorm statistics are recomputed on {images} un-augmented training images "
              f"after every epoch, before validation (Precise BN, arXiv:2105.07576)")
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
    verbose: int | str = 2,
) -> pd.DataFrame:
    """Trains a model end to end (resumable), then restores the best validation checkpoint.

    Returns:
        The run's history (``history.csv``) as a DataFrame.
    """
    _train_end_to_end(model, data, run, epochs, learning_rate, jit_compile, verbose)
    history = _restore_best(model, run)
    finish_run(run)
    return history


# --------------------------------------------------------------------------- fine-tuning


def set_fine_tune_trainable(model: keras.Model, train_bn: bool = False,
                            unfreeze: str = "top") -> int:
    """Unfreezes the backbone of a transfer model: all of it, or from its registry boundary on.

    With ``unfreeze="top"``, layers before :func:`cnnlab.backbones.fine_tune_boundary` stay
    frozen; with ``"all"`` every layer is unfrozen. BatchNormalization layers stay frozen
    either way unless ``train_bn`` (their moving statistics never change anyway: a pretrained
    backbone is called with ``training=False``).

    Args:
        model: A model built by ``models.build_transfer_model``.
        train_bn: Also train BatchNormalization scale and offset of the unfrozen part.
        unfreeze: ``"top"`` or ``"all"`` (``recipes.UNFREEZE_RULES``).

    Returns:
        Number of trainable backbone layers with weights.

    Raises:
        ValueError: If ``model`` has no nested backbone.
    """
    backbone = find_backbone(model)
    if backbone is None:
        raise ValueError(f"{model.name} has no nested backbone to fine-tune")
    if unfreeze not in UNFREEZE_RULES:
        raise ValueError(f"unknown unfreeze rule {unfreeze!r}; choose one of {UNFREEZE_RULES}")
    start = fine_tune_boundary(backbone) if unfreeze == "top" else 0
    backbone.trainable = True
    count = 0
    for index, layer in enumerate(backbone.layers):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = index >= start and (train_bn or not is_bn)
        count += bool(layer.trainable and layer.weights)
    return count


def _frozen_stage(model, data: TrainingData, run: RunFolder, epochs: int, lr: float,
                  cache_features: bool, strategy, dirs, jit_compile, verbose, loss,
                  callbacks=None) -> bool:
    """Stage 1: the head on the frozen backbone; returns whether cached features were used."""
    from cnnlab import features

    find_backbone(model).trainable = False
    reason = None
    if not cache_features:
        reason = "cache_features is off: stage 1 trains on live, augmented images"
    elif distribute.is_multi_worker(strategy):
        reason = "multi-worker run: each worker sees only its shard, features are not cached"
    if reason is None:
        try:
            cache = features.feature_cache(model, data.dataset, data.image_size, dirs.data)
        except ValueError as error:
            reason = f"{error}"
    if reason is not None:
        print(f"feature cache off ({reason})")
        compile_classifier(model, lr, jit_compile, loss=loss)
        fit(model, data.train_ds(augment=True), data.val_ds(), run, epochs, stage="frozen",
            verbose=verbose, class_weight=data.class_weight(), callbacks=callbacks)
        return False
    print(f"stage 1: head on cached {model.name} features (computed once; no augmentation, "
          f"cached features come from the un-augmented images)")
    x_train, y_train = cache.features("train", data.train_rows, data.batch_size)
    x_val, y_val = cache.features("val", data.val_rows, data.batch_size)
    head = features.head_model(model)
    compile_classifier(head, lr, jit_compile, loss=loss)
    fit(head, features.features_dataset(x_train, y_train, data.batch_size, True, data.seed),
        features.features_dataset(x_val, y_val, data.batch_size), run, epochs,
        stage="frozen", verbose=verbose, target=model, class_weight=data.class_weight(),
        callbacks=callbacks)
    return True


def fine_tune(
    model_or_backbone: keras.Model | str,
    data: TrainingData,
    freeze_epochs: int = 4,
    epochs: int = 8,
    base_lr: float = 1e-3,
    recipe: str | FineTuneRecipe | None = None,
    *,
    weights: str = "imagenet",
    weights_dir: str | os.PathLike | None = None,
    cache_features: bool = True,
    strategy: str | tf.distribute.Strategy | None = None,
    mixed_precision: str | None = None,
    jit_compile: bool | str = False,
    dirs=None,
    save: bool = True,
    resume: bool = True,
    run_config: dict | None = None,
    scratch_epochs: int | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
    name: str | None = None,
    verbose: int | str = 2,
) -> TrainingResult:
    """Transfer learning in one call: head on the frozen backbone, then the whole backbone.

    Stage 1 trains only the head for ``freeze_epochs`` at ``base_lr`` (Adam), on cached
    backbone features when ``cache_features`` (``cnnlab.features``: computed once, then
    seconds per epoch; no augmentation in this stage). Stage 2 trains ``epochs`` more on live
    augmented images as the ``recipe`` says (``cnnlab.recipes``). The ``"default"`` recipe,
    fastai's ``fine_tune`` (https://docs.fast.ai/callback.schedule.html#learner.fine_tune)
    with AdamW: every backbone layer unfrozen except BatchNormalization, which stays frozen
    in inference mode (the Keras transfer-learning guide,
    https://keras.io/guides/transfer_learning/); discriminative rates, the head at
    ``base_lr`` and three backbone layer groups geometrically below it down to a third of
    that (``lr_mult=3``); a linear warm-up over the first 10% of the steps, then cosine
    decay; decoupled weight decay 0.01 on kernels; label smoothing 0.1 in both stages. The
    rate spread was chosen on the cards subset (``benchmarks/recipe_search.py``,
    ``docs/benchmarks/recipe_search.json``); the recipe against the plain Keras recipe, and
    its ingredients one at a time against ``"top"`` (the earlier default), are in
    ``docs/benchmarks/time_to_accuracy.json`` (``benchmarks/time_to_accuracy.py``). The
    backbone runs with ``training=False``, so BN moving statistics never change. The best
    validation checkpoint
    over both stages is restored at the end.

    A backbone without pretrained weights (``weights="none"``, or a given model whose backbone
    is trainable) has nothing to transfer: it is trained end to end for ``scratch_epochs``
    (default ``freeze_epochs + epochs``) epochs instead, and says so.

    The run is resumable: killed at any point, the same call continues from the last completed
    epoch (stage 1 is not repeated once finished).

    Args:
        model_or_backbone: A backbone registry key (the model is built with
            ``models.build_transfer_model``) or such a model (pretrained backbone frozen).
        data: The splits (:class:`TrainingData`); its batch size is per replica.
        freeze_epochs: Stage 1 epochs.
        epochs: Stage 2 epochs.
        base_lr: Adam learning rate of stage 1 (scaled by the number of replicas); stage 2's
            peak head rate is ``base_lr * recipe.lr_scale``.
        recipe: Stage 2's recipe: a key of ``recipes.RECIPES`` or a ``FineTuneRecipe``
            (None: ``"default"``).
        weights: For a registry key: ``"imagenet"``, ``"local"``, ``"none"`` or a file
            (``backbones.resolve_weights``).
        weights_dir: Folder of local ImageNet weights files.
        cache_features: Train stage 1 on cached features (see above).
        strategy: ``distribute.STRATEGIES`` key or a strategy (None: the current one).
        mixed_precision: Dtype policy while building the model (``train.precision``).
        jit_compile: XLA-compile the train steps.
        dirs: Project folders (default: ``config.project_dirs()``).
        save: Save the final model to ``models/<dataset>-<name>.{keras,h5,json}``.
        resume: Continue an interrupted run of the same configuration.
        run_config: Extra facts for ``args.yaml`` (e.g. the profile name).
        scratch_epochs: Epochs end to end without pretrained weights (see above).
        callbacks: Extra Keras callbacks for every stage (e.g. a timer).
        name: Model name for the run folder and ``models/`` (default: the backbone's), e.g.
            ``mobilenet_v2_scratch`` for a from-scratch twin.
        verbose: Keras verbosity.

    Returns:
        The result: model with the best checkpoint, ``history.csv`` (epochs numbered across
        both stages, with ``seconds`` per epoch), run folder, saved paths, seconds, weights.

    Raises:
        ValueError: If a given model has no nested backbone.
    """
    from cnnlab.backbones import resolve_weights
    from cnnlab.config import project_dirs
    from cnnlab.models import build_transfer_model

    recipe = get_recipe(recipe)
    dirs = dirs or project_dirs()
    strategy, data, lr = _prepare(data, strategy, base_lr)
    with precision(mixed_precision), strategy.scope():
        if isinstance(model_or_backbone, str):
            choice = resolve_weights(model_or_backbone, weights, weights_dir)
            model = build_transfer_model(model_or_backbone, data.num_classes, data.image_size,
                                         choice)
            label, pretrained = choice.label, choice.is_pretrained
        else:
            model = model_or_backbone
            backbone = find_backbone(model)
            if backbone is None:
                raise ValueError(f"{model.name} has no nested backbone; use train_classifier")
            pretrained = not backbone.trainable
            label = "as given (backbone frozen: pretrained)" if pretrained else \
                "as given (backbone trainable: trained end to end)"
    if name:
        model.name = name  # type: ignore[misc]
    name = model.name
    shown = label if pretrained else label.upper()
    scratch_epochs = scratch_epochs or freeze_epochs + epochs
    plan = (f"{freeze_epochs} frozen + {epochs} fine-tune epochs" if pretrained
            else f"{scratch_epochs} epochs end to end (no pretrained weights: a frozen "
                 f"random backbone would teach the head nothing)")
    print(f"{name}: weights = {shown}; {len(data.train_rows)} images at {data.image_size} px, "
          f"{plan}")
    config = {
        "model": name, "dataset": data.dataset, "image_size": data.image_size,
        "train_images": len(data.train_rows), "val_images": len(data.val_rows),
        "manifest": data.fingerprints(), "freeze_epochs": freeze_epochs,
        "fine_tune_epochs": epochs, "scratch_epochs": None if pretrained else scratch_epochs,
        "batch_size": data.batch_size,
        "replicas": strategy.num_replicas_in_sync, "learning_rate": lr,
        "recipe": dataclasses.asdict(recipe), "seed": data.seed, "weights": label,
        "pretrained": pretrained,
        "cache_features": cache_features, "mixed_precision": mixed_precision or "float32",
        "jit_compile": jit_compile, "strategy": distribute.strategy_name(strategy),
        **(run_config or {})}
    run = start_run(dirs.checkpoints, _run_name(data, name, strategy), config, resume)
    start = time.perf_counter()
    used_cache = False
    with strategy.scope():
        if not pretrained:
            _train_end_to_end(model, data, run, scratch_epochs, lr, jit_compile, verbose,
                              callbacks)
        else:
            if run.completed("frozen"):
                print(f"stage 1 finished in an earlier run: continuing from "
                      f"checkpoints/{run.name}/{run.frozen.name}")
                load_weights(model, run.frozen)
            elif freeze_epochs > 0:
                used_cache = _frozen_stage(model, data, run, freeze_epochs, lr, cache_features,
                                           strategy, dirs, jit_compile, verbose,
                                           recipe.loss(), callbacks)
                save_weights_atomic(model, run.frozen)
                run.complete("frozen")
            if epochs > 0 and not run.completed("fine_tune"):
                _fine_tune_stage(model, data, run, recipe, lr, freeze_epochs, epochs,
                                 jit_compile, verbose, callbacks)
    history = _restore_best(model, run)
    seconds = time.perf_counter() - start
    paths = {}
    if save and distribute.is_chief(strategy):
        paths = _save(model, dirs, data, name, seconds, label, run,
                      {"backbone": find_backbone(model).name,
                       "freeze_epochs": freeze_epochs if pretrained else 0})
    finish_run(run)  # after the save: a kill before it resumes and saves
    return TrainingResult(name, model, history, run, paths, seconds, label,
                          freeze_epochs if pretrained else None, used_cache)


def _fine_tune_stage(model, data: TrainingData, run: RunFolder, recipe: FineTuneRecipe,
                     lr: float, freeze_epochs: int, epochs: int, jit_compile, verbose,
                     callbacks) -> None:
    """Stage 2: the recipe's layers unfrozen, its optimizer, schedule and loss."""
    unfrozen = set_fine_tune_trainable(model, recipe.train_bn, recipe.unfreeze)
    peak = lr * recipe.lr_scale
    steps = math.ceil(len(data.train_rows) / data.batch_size) * epochs
    optimizer = recipe.make_optimizer(model, find_backbone(model), peak, steps)
    print(f"stage 2 ({recipe.name} recipe): {unfrozen} backbone layers with weights trainable: "
          f"{recipe.describe(peak)}; {epochs} epochs of {steps // epochs} steps")
    compile_classifier(model, peak, jit_compile, optimizer=optimizer, loss=recipe.loss())
    # Built now, so that a resumed stage restores the optimizer's step (the schedule) and
    # moments from the backup instead of skipping them.
    model.optimizer.build(model.trainable_variables)
    fit(model, data.train_ds(), data.val_ds(), run, freeze_epochs + epochs,
        initial_epoch=freeze_epochs, stage="fine_tune", verbose=verbose,
        class_weight=data.class_weight(), callbacks=callbacks)
    run.complete("fine_tune")


# --------------------------------------------------------------------------- entry points


def _profile_config(profile) -> dict:
    return {"profile": profile.name}


def fine_tune_options(profile) -> dict:
    """The keyword arguments of :func:`fine_tune` that a ``config.Profile`` sets.

    Returns:
        ``freeze_epochs``, ``epochs``, ``scratch_epochs``, ``base_lr``, ``recipe``,
        ``cache_features``, ``strategy``, ``mixed_precision``, ``jit_compile`` and
        ``run_config``.
    """
    return {"freeze_epochs": profile.freeze_epochs, "epochs": profile.fine_tune_epochs,
            "scratch_epochs": profile.scratch_epochs,
            "base_lr": profile.learning_rate, "recipe": profile.fine_tune_recipe,
            "cache_features": profile.cache_features, "strategy": profile.strategy,
            "mixed_precision": profile.mixed_precision, "jit_compile": profile.jit_compile,
            "run_config": {**_profile_config(profile), "deterministic": profile.deterministic}}


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
        The result; files: ``checkpoints/<dataset>-<name>/`` and ``models/<dataset>-<name>.*``.
    """
    from cnnlab.config import project_dirs
    from cnnlab.models import build_custom_model

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
        _train_end_to_end(model, data, run, profile.custom_epochs, lr, profile.jit_compile, 2)
        history = _restore_best(model, run)
    seconds = time.perf_counter() - start
    paths = {}
    if distribute.is_chief(strategy):
        paths = _save(model, dirs, data, name, seconds, "none (custom CNN)", run, {})
    finish_run(run)  # after the save: a kill before it resumes and saves
    return TrainingResult(name, model, history, run, paths, seconds, "none (custom CNN)")


def train_transfer(backbone: str, manifest, profile, weights: str = "imagenet",
                   weights_dir=None, dirs=None, seed: int = 42, hflip: bool | None = None,
                   strategy: str | None = None, name: str | None = None) -> TrainingResult:
    """:func:`fine_tune` with a profile's settings, saved to ``models/``.

    Args:
        backbone: Key of ``backbones.BACKBONES``.
        manifest: A ``datasets.Manifest``.
        profile: A ``config.Profile``.
        weights: ``"imagenet"``, ``"local"``, ``"none"`` or a file (``resolve_weights``).
        weights_dir: Folder of local ImageNet weights files.
        dirs: Project folders.
        seed: Seed for the head's initialisation, shuffling and augmentation.
        hflip: Whether augmentation may flip horizontally (default: the dataset's rule).
        strategy: Overrides ``profile.strategy``.
        name: Model name (default: ``backbone``).

    Returns:
        The result; the weights actually used are printed and stored in ``args.yaml``, the
        model's JSON sidecar and the leaderboard.
    """
    from cnnlab.config import project_dirs

    dirs = dirs or project_dirs()
    seed_everything(seed, profile.deterministic)
    data = TrainingData.from_profile(manifest, profile, None, hflip, seed, dirs)
    options = fine_tune_options(profile)
    options["strategy"] = strategy or options["strategy"]
    return fine_tune(backbone, data, weights=weights, weights_dir=weights_dir, dirs=dirs,
                     name=name, **options)


SCRATCH_SUFFIX = "_scratch"


def train_backbones(manifest, profile, weights: str = "imagenet", weights_dir=None, dirs=None,
                    seed: int = 42, hflip: bool | None = None, strategy: str | None = None
                    ) -> dict[str, TrainingResult]:
    """Notebook 03's models: every backbone of ``profile``, then its from-scratch twins.

    Each backbone runs :func:`train_transfer` with ``profile.for_backbone(name)`` (a short
    run, with a smaller image size and fewer epochs, where the profile says so); each of
    ``profile.scratch_twins`` is trained again from random initialisation as
    ``<backbone>_scratch``, the no-transfer baseline of the same architecture (twins of
    backbones not in ``profile.backbones`` are skipped).

    Args:
        manifest: A ``datasets.Manifest``.
        profile: A ``config.Profile``.
        weights: What the backbones start from (``backbones.resolve_weights``); twins always
            start from random weights.
        weights_dir: Folder of local ImageNet weights files.
        dirs: Project folders.
        seed: Seed of every run.
        hflip: Whether augmentation may flip horizontally (default: the dataset's rule).
        strategy: Overrides ``profile.strategy``.

    Returns:
        ``{model name: result}`` in training order.
    """
    runs = [(name, name, weights) for name in profile.backbones]
    runs += [(f"{name}{SCRATCH_SUFFIX}", name, "none") for name in profile.scratch_twins
             if name in profile.backbones]
    results = {}
    for model_name, backbone, start in runs:
        settings = profile.for_backbone(model_name)
        if profile.is_short_run(model_name):
            changed = ", ".join(f"{k}={v}" for k, v in profile.backbone_overrides[model_name]
                                .items())
            print(f"{model_name}: SHORT RUN of the {profile.name} profile ({changed})")
        results[model_name] = train_transfer(
            backbone, manifest, settings, start, weights_dir, dirs, seed, hflip, strategy,
            name=model_name)
    return results


def twin_comparison(results: dict[str, TrainingResult]) -> pd.DataFrame:
    """Each pretrained backbone beside its from-scratch twin (best validation accuracy).

    Args:
        results: :func:`train_backbones`' results.

    Returns:
        One row per twin pair: ``model``, both starting weights, both best validation
        accuracies, both training minutes and ``pretrained - scratch``.
    """
    rows = []
    for name, twin in results.items():
        if not name.endswith(SCRATCH_SUFFIX) or name[:-len(SCRATCH_SUFFIX)] not in results:
            continue
        pretrained = results[name[:-len(SCRATCH_SUFFIX)]]
        best = float(pretrained.history["val_accuracy"].max())
        scratch = float(twin.history["val_accuracy"].max())
        rows.append({"model": pretrained.name, "pretrained weights": pretrained.weights,
                     "pretrained best val accuracy": round(best, 3),
                     "scratch best val accuracy": round(scratch, 3),
                     "pretrained - scratch": round(best - scratch, 3),
                     "pretrained train min": round(pretrained.seconds / 60, 1),
                     "scratch train min": round(twin.seconds / 60, 1)})
    return pd.DataFrame(rows)
