"""The run folder of a training run: its configuration, history, checkpoints and state.

Every training run writes ``checkpoints/<run>/``:

- ``args.yaml``: the resolved configuration (model, dataset, image size, epochs, global and
  per-replica batch size, learning rates, seed, manifest fingerprints, the weights actually
  used, strategy, precision) with the TensorFlow, Keras and Python versions;
- ``history.csv``: one row per epoch, written as it goes (``keras.callbacks.CSVLogger``), with
  the epoch's wall-clock ``seconds``; plots read it;
- ``best.weights.h5`` (best validation accuracy) and ``last.weights.h5``, written to a
  temporary name and renamed;
- ``tensorboard/<stage>/``: TensorBoard event files of every stage (``train/`` and
  ``validation/``, one point per epoch; ``tensorboard --logdir checkpoints/`` shows them);
- ``state.json`` (running / finished, completed stages) and ``backup/<stage>/``
  (``keras.callbacks.BackupAndRestore``, published per epoch as a complete snapshot by
  :mod:`cnnlab.training.callbacks`): a run killed at any point, SIGKILL included, continues
  from its last completed epoch when the same command runs again, also in the middle of
  stage 2 of :func:`fine_tune`, and ends with the same epoch count. Temporary files a killed
  process left in the run folder are removed when it resumes.

The final model goes to ``models/<dataset>-<model>/`` (``export.save_model``: temporary
name, then rename; a previous model is moved to ``models/previous/``); what a save
killed half-way left under a temporary name is removed before the next save.

Fitting is in :mod:`cnnlab.training.fitting`, the one-call fine-tuning of pretrained
backbones in :mod:`cnnlab.training.fine_tuning` and DeepLabV3+ training in
:mod:`cnnlab.segmentation.training`; all write their runs through this module.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf
import yaml

from cnnlab.files import remove_stale_temporaries, write_json, write_text

# Keys of args.yaml added by RunFolder.write_args, not part of a run's configuration.
_ENVIRONMENT_KEYS = ("tensorflow", "keras", "python", "devices")


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
    def tensorboard(self) -> Path:
        """TensorBoard logs, one folder per stage (``tensorboard/<stage>/``)."""
        return self.path / "tensorboard"

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
    def is_finished(self) -> bool:
        """True if :func:`finish_run` marked this run finished."""
        return self.read_state().get("status") == "finished"

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
              resume: bool = True, reuse_finished: bool = False) -> RunFolder:
    """Creates (or reopens, to resume) ``checkpoints/<name>/`` and writes its ``args.yaml``.

    Args:
        checkpoints_dir: The ``checkpoints/`` folder.
        name: Run name, e.g. ``cards-retail_cnn``.
        config: Resolved configuration to record (YAML-serialisable values).
        resume: If an interrupted run with the same configuration is there, reopen it so
            training continues from its last completed epoch. Otherwise (finished run, other
            configuration, or ``resume=False``) the old folder is kept whole under
            ``<name>.<date-time>`` and a new one is started: nothing is overwritten.
        reuse_finished: If a finished run with the same configuration is there, return it
            as it is (``is_finished``), so the caller loads its results instead of training
            again.

    Returns:
        The run folder (``state.json`` says ``running`` until :func:`finish_run`).
    """
    run = RunFolder(Path(checkpoints_dir) / name)
    config = yaml.safe_load(yaml.safe_dump(config, sort_keys=False))  # as stored: lists
    if run.path.is_dir() and any(run.path.iterdir()):
        changed = _config_differences(run.read_args(), config)
        if reuse_finished and run.is_finished and not changed:
            print(f"checkpoints/{name} holds a finished run with these settings: using it "
                  f"instead of training again")
            return run
        if resume and run.is_interrupted:
            if not changed:
                remove_stale_temporaries(run.path, recursive=True)
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


def _profile_config(profile) -> dict:
    return {"profile": profile.name}


def save_weights_atomic(model: keras.Model, path: str | os.PathLike) -> Path:
    """``model.save_weights`` to a temporary ``.weights.h5`` name, then renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = path.name.removesuffix(".weights.h5")  # Keras insists on the .weights.h5 suffix
    tmp = path.with_name(f".{stem}.tmp{os.getpid()}.weights.h5")
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
