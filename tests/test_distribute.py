"""tf.distribute strategies: the registry, replica scaling, and real training runs.

MirroredStrategy runs on two logical CPU devices and MultiWorkerMirroredStrategy on two worker
processes on 127.0.0.1 (TF_CONFIG); both must reach the validation accuracy of one device on
the same real images (vehicles from ../shared) within noise. Logical devices and TF_CONFIG must
be set before TensorFlow starts, so those runs are `cnnlab train` subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import tensorflow as tf

from cnnlab.config import get_profile, project_dirs
from cnnlab.data.datasets import prepare_dataset
from cnnlab.training import distribute
from cnnlab.training.fine_tuning import train_transfer

# Frozen ImageNet backbone, live images (no feature cache, so every run trains through the
# strategy's replicas), 40 images per class of 4 vehicle classes at 64 px.
OVERRIDES = {"image_size": 64, "batch_size": 16, "freeze_epochs": 3, "fine_tune_epochs": 0,
             "max_train_per_class": 40, "cache_features": False, "learning_rate": 0.003}
# Validation split: 120 images; the standard error of a difference of two accuracies near 0.75
# is about 0.056, so 0.15 is well over two of them.
TOLERANCE = 0.15


def test_choose_strategy_prefers_tpu_then_several_gpus():
    assert distribute.choose_strategy(has_tpu=True, gpus=0) == "tpu"
    assert distribute.choose_strategy(has_tpu=False, gpus=2) == "mirrored"
    assert distribute.choose_strategy(has_tpu=False, gpus=1) == "default"
    assert distribute.choose_strategy(has_tpu=False, gpus=0) == "default"


def test_auto_picks_tpu_strategy_when_a_tpu_is_attached(monkeypatch):
    made = []
    monkeypatch.setattr(distribute, "tpu_resolver", lambda: object())
    monkeypatch.setitem(distribute.STRATEGIES, "tpu", lambda: made.append("tpu") or "TPU")
    assert distribute._auto() == "TPU" and made == ["tpu"]


def test_scale_for_replicas_is_the_linear_scaling_rule():
    assert distribute.scale_for_replicas(32, 1e-3, 1) == (32, 1e-3)
    assert distribute.scale_for_replicas(32, 1e-3, 8) == (256, 8e-3)


def test_bad_strategy_names_and_missing_tf_config(monkeypatch):
    with pytest.raises(KeyError, match="choose one of"):
        distribute.make_strategy("horovod")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(RuntimeError, match="TF_CONFIG"):
        distribute.make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(RuntimeError, match="not valid JSON"):
        distribute.make_strategy("multiworker")


def test_default_strategy_is_the_chief_with_one_replica():
    strategy = distribute.make_strategy("default")
    assert strategy.num_replicas_in_sync == 1
    assert distribute.is_chief(strategy) and not distribute.is_multi_worker(strategy)
    assert distribute.worker_index(strategy) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _train_command(*extra: str) -> list[str]:
    sets = [arg for key, value in OVERRIDES.items() for arg in ("--set", f"{key}={value}")]
    return [sys.executable, "-m", "cnnlab.cli", "train", "mobilenet_v3_small_075",
            "--dataset", "vehicles", "--profile", "smoke", *sets, "--weights", "local",
            "--seed", "1", *extra]


def _project(root: Path, manifest_dir: Path | None = None):
    (root / "notebooks").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    dirs = project_dirs(root)
    if manifest_dir is not None:
        shutil.copytree(manifest_dir, dirs.data / "vehicles")
    return dirs


@pytest.fixture(scope="module")
def runs(shared_dir, tmp_path_factory):
    """One device in this process; mirrored and two workers in subprocesses, side by side.

    Each setting has its own project folder (the chiefs would otherwise share run names).
    """
    base = tmp_path_factory.mktemp("distribute")
    single_dirs = _project(base / "single")
    manifest = prepare_dataset("vehicles", shared_dir / "datasets" / "vehicles", single_dirs)
    manifest_dir = single_dirs.data / "vehicles"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "CNNLAB_WEIGHTS_DIR": str(shared_dir / "weights")}
    env.pop("TF_CONFIG", None)
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    jobs = [("mirrored", "mirrored", _train_command("--strategy", "mirrored", "--cpu-devices",
                                                    "2"), {})]
    jobs += [(f"worker{i}", "multiworker", _train_command("--strategy", "multiworker"),
              {"TF_CONFIG": json.dumps({"cluster": cluster,
                                        "task": {"type": "worker", "index": i}})})
             for i in (0, 1)]
    roots = {"mirrored": _project(base / "mirrored", manifest_dir),
             "multiworker": _project(base / "multiworker", manifest_dir)}
    processes, logs = {}, {}
    for name, setting, command, extra in jobs:
        root = roots[setting].root
        logs[name] = base / f"{name}.log"
        processes[name] = subprocess.Popen(
            command, cwd=root, env={**env, **extra, "CNNLAB_ROOT": str(root)},
            stdout=open(logs[name], "w"), stderr=subprocess.STDOUT)
    single = train_transfer("mobilenet_v3_small_075", manifest, get_profile("smoke", **OVERRIDES),
                            "local", shared_dir / "weights", single_dirs, seed=1,
                            strategy="default")
    for name, process in processes.items():
        code = process.wait(timeout=600)
        assert code == 0, f"{name} failed:\n{logs[name].read_text()[-3000:]}"
    run = "vehicles-mobilenet_v3_small_075"
    return {"single": single.history,
            "mirrored": pd.read_csv(roots["mirrored"].checkpoints / run / "history.csv"),
            "multiworker": pd.read_csv(roots["multiworker"].checkpoints / run / "history.csv"),
            "worker1": pd.read_csv(roots["multiworker"].checkpoints / f"{run}.worker1"
                                   / "history.csv"),
            "logs": {name: log.read_text() for name, log in logs.items()},
            "models": roots["multiworker"].models}


@pytest.mark.slow
def test_mirrored_on_two_cpu_devices_matches_one_device(runs):
    single, mirrored = runs["single"], runs["mirrored"]
    assert len(mirrored) == len(single) == OVERRIDES["freeze_epochs"]
    assert "global batch 32 (16 per replica), learning rate 0.006" in runs["logs"]["mirrored"]
    assert single["val_accuracy"].iloc[-1] > 0.5  # 4 classes: chance is 0.25
    assert abs(mirrored["val_accuracy"].iloc[-1] - single["val_accuracy"].iloc[-1]) <= TOLERANCE


@pytest.mark.slow
def test_two_workers_on_localhost_match_one_device(runs):
    single, chief, other = runs["single"], runs["multiworker"], runs["worker1"]
    assert len(chief) == len(other) == len(single)
    # Synchronous training: both workers hold the same weights, so they measure the same.
    pd.testing.assert_series_equal(chief["val_accuracy"], other["val_accuracy"], atol=1e-6)
    assert abs(chief["val_accuracy"].iloc[-1] - single["val_accuracy"].iloc[-1]) <= TOLERANCE
    # Only the chief writes models/; worker 1 keeps its checkpoints apart.
    models = runs["models"]
    assert (models / "vehicles-mobilenet_v3_small_075" / "model.keras").is_file()
    assert not list(models.glob("*worker1*"))


def test_split_cpu_refuses_after_tensorflow_started():
    tf.constant(1.0)  # devices are initialised by now in this process
    count = len(tf.config.list_logical_devices("CPU"))
    assert len(distribute.split_cpu(count)) == count  # same count: nothing to change
    with pytest.raises(RuntimeError, match="fresh process"):
        distribute.split_cpu(count + 3)


def test_shard_by_data_sets_the_policy():
    ds = distribute.shard_by_data(tf.data.Dataset.range(4))
    assert (ds.options().experimental_distribute.auto_shard_policy
            == tf.data.experimental.AutoShardPolicy.DATA)


def test_cli_rejects_unknown_strategy(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cnnlab.cli", "train", "retail_cnn",
                             "--strategy", "nope"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and "invalid choice: 'nope'" in result.stderr
