"""Training: run folders, fine_tune stages, resume after SIGKILL, precision, XLA, determinism."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import yaml
from conftest import CLI, leftovers, run_python

import cnnlab.training.fitting as train_module
from cnnlab.config import PROFILES, get_profile, parse_overrides
from cnnlab.data.datasets import build_manifest
from cnnlab.deploy.export import load_model
from cnnlab.models.custom import build_custom_model
from cnnlab.models.transfer import (
    build_backbone,
    build_transfer_model,
    find_backbone,
    fine_tune_boundary,
)
from cnnlab.training.callbacks import PreciseBatchNorm
from cnnlab.training.fine_tuning import fine_tune, set_fine_tune_trainable, train_transfer
from cnnlab.training.fitting import TrainingData, compile_classifier, precision, train_custom
from cnnlab.training.runs import load_weights, start_run

TINY = get_profile("smoke", image_size=32, custom_image_size=32, max_train_per_class=6,
                   batch_size=8, custom_epochs=2, freeze_epochs=1, fine_tune_epochs=1)
BACKBONE = "mobilenet_v3_small_075"


def _weights(shared_dir):
    return shared_dir / "weights" / f"{BACKBONE}_imagenet_notop.weights.h5"


def _tensorboard_steps(folder) -> dict[str, list[int]]:
    """``{tag: steps}`` of the TensorBoard event files in ``folder`` (one writer)."""
    steps: dict[str, list[int]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(event.step)
    return steps


def test_train_custom_writes_run_folder_and_models(sample_root, project):
    manifest = build_manifest(sample_root, "sample")
    result = train_custom("retail_cnn", manifest, TINY, project)
    run = result.run.path
    assert run == project.checkpoints / "sample-retail_cnn"
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["epochs"] == 2 and args["keras"] == keras.__version__ and args["seed"] == 42
    assert set(args["manifest"]) == {"train", "val"} and args["weights"] == "none (custom CNN)"
    history = pd.read_csv(run / "history.csv")
    assert history["epoch"].tolist() == [0, 1]
    assert {"accuracy", "loss", "val_accuracy", "val_loss", "seconds"} <= set(history.columns)
    assert (run / "best.weights.h5").is_file() and (run / "last.weights.h5").is_file()
    assert json.loads((run / "state.json").read_text())["status"] == "finished"
    assert not (run / "backup").exists()
    # TensorBoard: a point per epoch for training and for validation, seconds included.
    train_points = _tensorboard_steps(run / "tensorboard" / "train" / "train")
    assert {"epoch_accuracy", "epoch_loss", "epoch_seconds"} <= set(train_points)
    assert train_points["epoch_accuracy"] == [0, 1]
    assert _tensorboard_steps(run / "tensorboard" / "train" / "validation")[
        "epoch_accuracy"] == [0, 1]
    assert not result.is_pretrained
    for file in ("model.keras", "model.h5", "meta.json"):
        assert (project.models / "sample-retail_cnn" / file).is_file()
    # A second run starts a new folder and keeps the old one, whole, beside it.
    train_custom("retail_cnn", manifest, TINY, project)
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == [0, 1]
    kept = list(project.checkpoints.glob("sample-retail_cnn.*"))
    assert len(kept) == 1 and (kept[0] / "best.weights.h5").is_file()


def test_train_transfer_runs_both_stages_on_cached_features(sample_root, project, shared_dir):
    manifest = build_manifest(sample_root, "sample")
    result = train_transfer(BACKBONE, manifest, TINY, "local", shared_dir / "weights", project)
    assert result.weights.startswith("imagenet (local file")
    assert result.history["epoch"].tolist() == [0, 1]
    assert result.stage_boundary == 1 and result.feature_cache
    args = yaml.safe_load(result.run.args.read_text())
    assert "imagenet (local file" in args["weights"] and args["pretrained"] is True
    assert json.loads(result.run.state.read_text())["completed"] == ["frozen", "fine_tune"]
    assert list((project.data / "sample" / "features").glob(f"{BACKBONE}-32px-*/train-*.npz"))
    assert result.is_pretrained
    logs = result.run.tensorboard  # one folder per stage, the epochs numbered across both
    assert _tensorboard_steps(logs / "frozen" / "validation")["epoch_accuracy"] == [0]
    assert _tensorboard_steps(logs / "fine_tune" / "validation")["epoch_accuracy"] == [1]


def _fine_tune_on_sample(sample_root, project, shared_dir, recipe=None):
    """fine_tune on the sample with the local ImageNet file; the weights before, the run.

    fine_tune restores the best validation epoch, which may be the frozen stage's on 9
    validation images; the weights stage 2 trained are the last checkpoint, loaded here.
    """
    data = TrainingData(build_manifest(sample_root, "sample"), 32, 8, seed=5)
    model = build_transfer_model(BACKBONE, data.num_classes, 32, str(_weights(shared_dir)))
    layers = [*find_backbone(model).layers, model.get_layer("head")]
    before = {layer.name: [w.numpy() for w in layer.weights] for layer in layers}
    result = fine_tune(model, data, freeze_epochs=1, epochs=2, base_lr=1e-2, recipe=recipe,
                       dirs=project, save=False, verbose=0)
    load_weights(model, result.run.last)
    return model, before, result


def _changed(before: dict, layer) -> bool:
    return any(not np.array_equal(a, b.numpy()) for a, b in zip(before[layer.name],
                                                                layer.weights))


def test_fine_tune_trains_above_the_boundary_only_and_keeps_bn_statistics(
        sample_root, project, shared_dir):
    model, before, result = _fine_tune_on_sample(sample_root, project, shared_dir, "top")
    backbone = find_backbone(model)
    boundary = fine_tune_boundary(backbone)
    changed = {layer.name: _changed(before, layer)
               for layer in backbone.layers if layer.weights}
    below = [backbone.layers[i].name for i in range(boundary) if backbone.layers[i].weights]
    above = [layer.name for layer in backbone.layers[boundary:]
             if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)]
    bn = [layer.name for layer in backbone.layers
          if isinstance(layer, keras.layers.BatchNormalization)]
    assert below and above and bn
    assert not any(changed[name] for name in below)  # frozen below the boundary
    assert all(changed[name] for name in above)  # every conv above it was trained
    assert not any(changed[name] for name in bn)  # gamma, beta, moving mean and variance
    assert _changed(before, model.get_layer("head"))
    assert len(result.history) == 3 and result.stage_boundary == 1


def test_default_recipe_trains_the_whole_backbone_and_keeps_bn_statistics(
        sample_root, project, shared_dir):
    model, before, result = _fine_tune_on_sample(sample_root, project, shared_dir)
    backbone = find_backbone(model)
    bn = [layer for layer in backbone.layers
          if isinstance(layer, keras.layers.BatchNormalization)]
    others = [layer for layer in backbone.layers
              if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and len(others) > 40

    assert all(_changed(before, layer) for layer in others)  # the stem too, not only the top
    assert not any(_changed(before, layer) for layer in bn)  # gamma, beta, moving mean and variance
    args = yaml.safe_load(result.run.args.read_text())
    assert args["recipe"]["name"] == "default" and args["recipe"]["unfreeze"] == "all"
    # The stage-2 optimizer gives the stem a smaller rate than the top blocks and the head.
    optimizer = model.optimizer
    stem = optimizer.rate_multiplier(others[0].trainable_weights[0])
    top = optimizer.rate_multiplier(others[-1].trainable_weights[0])
    head = optimizer.rate_multiplier(model.get_layer("head").trainable_weights[0])
    assert stem < top < head == 1.0


@pytest.mark.parametrize("name,first_trainable", [
    ("vgg16", "block5_conv1"),  # Keras guide / course recipe: the last conv block
    ("efficientnet_b0", "block6a_expand_conv"),  # whole blocks: 6 and 7, then the top
    ("mobilenet_v3_small_075", "expanded_conv_9_expand"),
])
def test_registry_boundaries_unfreeze_whole_blocks(name, first_trainable):
    backbone = build_backbone(name, 32, "none")
    assert backbone.layers[fine_tune_boundary(backbone)].name == first_trainable


def test_inception_v3_unfreezes_the_top_two_inception_blocks():
    backbone = build_backbone("inception_v3", 75, "none")
    # "we will freeze the first 249 layers and unfreeze the rest" (Keras applications docs,
    # fine-tuning InceptionV3): everything after mixed8, i.e. blocks mixed9 and mixed10.
    assert fine_tune_boundary(backbone) == 249
    names = [layer.name for layer in backbone.layers[249:]]
    assert "mixed9" in names and "mixed10" in names and "mixed8" not in names


def test_set_fine_tune_trainable_freezes_bn_and_lower_layers(shared_dir):
    model = build_transfer_model(BACKBONE, 3, 32, str(_weights(shared_dir)))
    backbone = find_backbone(model)
    set_fine_tune_trainable(model)
    bn = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and not any(layer.trainable for layer in bn)
    assert not backbone.layers[10].trainable and backbone.layers[-3].trainable
    set_fine_tune_trainable(model, train_bn=True)
    assert bn[-1].trainable and not bn[0].trainable  # above the boundary only


def test_random_init_backbone_is_trained_from_scratch(sample_root, project):
    manifest = build_manifest(sample_root, "sample")
    result = train_transfer("mobilenet_v3_small", manifest, TINY, "none", None, project)
    assert result.stage_boundary is None and result.weights == "none (random init)"
    assert not result.is_pretrained
    assert len(result.history) == TINY.freeze_epochs + TINY.fine_tune_epochs
    assert find_backbone(result.model).trainable and not result.feature_cache


def test_precise_bn_sets_the_moving_statistics_to_the_average_over_batches():
    keras.utils.set_random_seed(3)
    model = build_custom_model("vehicles_cnn_bn", 32, 4)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (8, 32, 32, 3)).astype("float32") for _ in range(5)]
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.stack(batches), np.zeros((5, 8), "int32")))
    first = next(layer for layer in model.layers
                 if isinstance(layer, keras.layers.BatchNormalization))
    before = first.momentum
    inputs = keras.Model(model.input, first.input)
    features = [keras.ops.convert_to_numpy(inputs(b)).reshape(-1, first.input.shape[-1])
                for b in batches]
    assert PreciseBatchNorm(dataset, num_batches=4).recompute(model) == 3
    expected_mean = np.mean([f.mean(0) for f in features[:4]], axis=0)
    expected_var = np.mean([f.var(0) for f in features[:4]], axis=0)
    np.testing.assert_allclose(first.moving_mean.numpy(), expected_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(first.moving_variance.numpy(), expected_var, rtol=1e-3,
                               atol=1e-6)
    assert first.momentum == before  # restored


def test_precise_bn_runs_once_per_epoch_before_validation(sample_root, project, capsys,
                                                         monkeypatch):
    calls = []

    class Recorder(PreciseBatchNorm):
        validations = 0

        def on_test_begin(self, logs=None):  # fit's validation pass
            Recorder.validations += 1

        def recompute(self, model=None):
            calls.append(Recorder.validations)  # validations begun so far
            return super().recompute(model)

    from cnnlab.training import callbacks

    monkeypatch.setattr(train_module, "PreciseBatchNorm", Recorder)
    monkeypatch.setattr(callbacks, "_NOTICES_SHOWN", set())
    manifest = build_manifest(sample_root, "sample")
    train_custom("vehicles_cnn_bn", manifest, TINY, project)
    assert calls == [0, 1]  # epoch 1 before its validation, epoch 2 before its own
    out = capsys.readouterr().out
    assert "Precise BN" in out
    assert "training:\nepoch     loss accuracy val_loss val_accuracy  seconds\n    1 " in out, out
    assert "Epoch 1/2" not in out  # the progress table, not Keras' log lines
    calls.clear()
    train_custom("retail_cnn", manifest, TINY, project)  # no BatchNormalization
    assert calls == [] and "Precise BN" not in capsys.readouterr().out
    assert not callbacks.notice_once("precise_bn", "again")  # said once per process


@pytest.mark.slow
def test_resume_after_sigkill_in_stage_2_continues_from_the_last_epoch(
        sample_root, project, shared_dir):
    from cnnlab.training.callbacks import backup_snapshots

    build_manifest(sample_root, "sample").save(project.data / "sample")
    command = [sys.executable, "-m", "cnnlab.cli", "train", BACKBONE, "--dataset", "sample",
               "--profile", "smoke", "--set", "image_size=32", "--set", "batch_size=2",
               "--set", "freeze_epochs=2", "--set", "fine_tune_epochs=4", "--weights",
               "local", "--weights-dir", str(shared_dir / "weights")]
    env = {**os.environ, "CNNLAB_ROOT": str(project.root), "TF_CPP_MIN_LOG_LEVEL": "2"}
    run = project.checkpoints / f"sample-{BACKBONE}"
    backup = run / "backup" / "fine_tune"
    log = project.root / "first.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, cwd=project.root, stdout=out,
                                   stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while not backup_snapshots(backup) and process.poll() is None \
                and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # into the next epoch
        process.kill()  # SIGKILL: no handler runs, nothing gets flushed
        process.wait()
    assert backup_snapshots(backup), log.read_text()[-3000:]
    resumed_at = max(backup_snapshots(backup))
    before = pd.read_csv(run / "history.csv")
    assert 3 <= resumed_at < 6 and json.loads((run / "state.json").read_text())["status"] \
        == "running"
    second = subprocess.run(command, env=env, cwd=project.root, capture_output=True, text=True)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-3000:]
    assert "resuming the interrupted run" in out
    assert "stage 1 finished in an earlier run" in out and "cached" not in out
    assert f"fine_tune: resuming after epoch {resumed_at} of 6" in out
    after = pd.read_csv(run / "history.csv")
    assert after["epoch"].tolist() == list(range(6))  # same final count, no repeated row
    pd.testing.assert_frame_equal(after.iloc[:resumed_at], before.iloc[:resumed_at])
    assert json.loads((run / "state.json").read_text())["status"] == "finished"
    assert not [p.name for p in project.models.iterdir() if p.name.startswith(".")]
    assert load_model(project.models / f"sample-{BACKBONE}").output.shape[-1] == 4


def _saved_model(models, name: str):
    """The saved model ``name``: its folder ``models/<name>/`` or the file ``<name>.keras``."""
    return models / name if (models / name).is_dir() else models / f"{name}.keras"


def test_run_callbacks_use_keras_backup_and_restore_as_is(tmp_path):
    from cnnlab.training.callbacks import PublishBackup, run_callbacks

    callbacks = run_callbacks(start_run(tmp_path, "x", {}), "train")
    backups = [c for c in callbacks if isinstance(c, keras.callbacks.BackupAndRestore)]
    assert [type(c) for c in backups] == [keras.callbacks.BackupAndRestore]  # no subclass
    assert isinstance(callbacks[callbacks.index(backups[0]) + 1], PublishBackup)
    (board,) = [c for c in callbacks if isinstance(c, keras.callbacks.TensorBoard)]
    assert board.log_dir == str(tmp_path / "x" / "tensorboard" / "train")
    assert (board.histogram_freq, board.write_graph, board.update_freq) == (0, False, "epoch")


CUSTOM_COMMAND = ["train", "retail_cnn", "--dataset", "sample", "--profile", "smoke",
                  "--set", "custom_image_size=32", "--set", "batch_size=4",
                  "--set", "custom_epochs=3", "--set", "max_train_per_class=6"]


def _rerun(command: list[str], project) -> str:
    """The plain command again (no kill); returns its output after checking it succeeded."""
    again = subprocess.run([sys.executable, "-m", "cnnlab.cli", *command], cwd=project.root,
                           capture_output=True, text=True, timeout=600,
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-3000:]
    assert "resuming the interrupted run" in out
    return out


def _assert_finished_cleanly(project, run, epochs: int, name: str, classes: int = 4) -> None:
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == list(range(epochs))
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))  # written on resume too
    assert json.loads((run / "state.json").read_text())["status"] == "finished"
    assert not leftovers(project.checkpoints, project.models)
    assert load_model(_saved_model(project.models, name)).output_shape[-1] == classes


@pytest.mark.parametrize("point,rows_killed,rows_kept", [
    ("mid_epoch", 1, 1),  # in epoch 2: epoch 1 kept, epoch 2 runs again
    ("during_backup", 2, 1),  # Keras' backup of epoch 2 cut: epoch 2 runs again, one row
    ("during_save", 3, 3),  # every epoch done: nothing retrained, the model saved
])
def test_sigkill_then_the_same_command_finishes_with_the_same_epochs(
        point, rows_killed, rows_kept, sample_root, project):
    build_manifest(sample_root, "sample").save(project.data / "sample")
    killed = run_python(CLI, *CUSTOM_COMMAND, point=point, cwd=project.root)
    assert killed.returncode == -signal.SIGKILL, (killed.stdout + killed.stderr)[-3000:]
    run = project.checkpoints / "sample-retail_cnn"
    before = pd.read_csv(run / "history.csv")
    assert len(before) == rows_killed
    assert json.loads((run / "state.json").read_text())["status"] == "running"
    if point == "during_save":  # killed with the model folder half-written
        assert leftovers(project.models) and not _saved_model(project.models,
                                                              "sample-retail_cnn").exists()
    out = _rerun(CUSTOM_COMMAND, project)
    if point != "during_save":  # from the backup of the last complete epoch
        assert f"train: resuming after epoch {rows_kept} of 3" in out
    after = pd.read_csv(run / "history.csv")
    pd.testing.assert_frame_equal(after.iloc[:rows_kept], before.iloc[:rows_kept])
    _assert_finished_cleanly(project, run, 3, "sample-retail_cnn")


def test_sigkill_between_the_stages_resumes_at_stage_2(sample_root, project, shared_dir):
    build_manifest(sample_root, "sample").save(project.data / "sample")
    command = ["train", BACKBONE, "--dataset", "sample", "--profile", "smoke",
               "--set", "image_size=32", "--set", "batch_size=4", "--set", "freeze_epochs=2",
               "--set", "fine_tune_epochs=2", "--weights", "local",
               "--weights-dir", str(shared_dir / "weights")]
    killed = run_python(CLI, *command, point="between_stages", cwd=project.root)
    assert killed.returncode == -signal.SIGKILL, (killed.stdout + killed.stderr)[-3000:]
    run = project.checkpoints / f"sample-{BACKBONE}"
    before = pd.read_csv(run / "history.csv")
    assert json.loads((run / "state.json").read_text())["completed"] == ["frozen"]
    assert len(before) == 2
    out = _rerun(command, project)
    assert "stage 1 finished in an earlier run" in out
    pd.testing.assert_frame_equal(pd.read_csv(run / "history.csv").iloc[:2], before)
    _assert_finished_cleanly(project, run, 4, f"sample-{BACKBONE}")


def test_interrupted_run_with_other_settings_is_not_resumed(tmp_path, capsys):
    run = start_run(tmp_path, "cards-x", {"epochs": 3, "seed": 1})
    assert run.is_interrupted
    again = start_run(tmp_path, "cards-x", {"epochs": 3, "seed": 1})
    assert again.path == run.path and "resuming" in capsys.readouterr().out
    start_run(tmp_path, "cards-x", {"epochs": 5, "seed": 1})
    assert "other settings (epochs)" in capsys.readouterr().out
    assert len(list(tmp_path.glob("cards-x.*"))) == 1


@pytest.mark.parametrize("policy,compute", [("mixed_bfloat16", "bfloat16"),
                                            ("mixed_float16", "float16")])
def test_mixed_precision_trains_with_a_float32_softmax(policy, compute):
    with precision(policy):
        model = build_custom_model("vehicles_cnn_bn", 32, 3)
        transfer = build_transfer_model("mobilenet_v3_small", 3, 32, "none")
    assert keras.config.dtype_policy().name == "float32"  # restored afterwards
    conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    assert conv.compute_dtype == compute and conv.kernel.dtype == "float32"
    assert model.output.dtype == "float32" and transfer.output.dtype == "float32"
    compile_classifier(model, 1e-3)
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    x = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    history = model.fit(x, np.arange(16) % 3, batch_size=8, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert model.predict(x[:2], verbose=0).dtype == np.float32


def test_unknown_precision_policy_is_refused():
    with pytest.raises(ValueError, match="unknown mixed precision policy 'float8'"):
        with precision("float8"):
            pass


def test_xla_jit_compiled_train_step_runs_on_cpu():
    model = compile_classifier(build_custom_model("retail_cnn", 32, 3), 1e-3, jit_compile=True)
    assert model.jit_compile
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    history = model.fit(x, np.arange(8) % 3, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_profiles_turn_mixed_precision_and_xla_on_for_gpu_only():
    assert PROFILES["gpu"].mixed_precision == "mixed_float16" and PROFILES["gpu"].jit_compile
    for name in ("cpu", "smoke"):
        assert PROFILES[name].mixed_precision is None and not PROFILES[name].jit_compile
    assert parse_overrides(["mixed_precision=mixed_bfloat16", "batch_size=4",
                            "cache_features=false", "jit_compile=auto"]) == {
        "mixed_precision": "mixed_bfloat16", "batch_size": 4, "cache_features": False,
        "jit_compile": "auto"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["epochs=3"])
    with pytest.raises(ValueError, match="bad value"):
        parse_overrides(["batch_size=many"])


def test_same_seed_gives_same_split_and_same_initial_weights(sample_root):
    first, second = build_manifest(sample_root, "sample", seed=7), build_manifest(
        sample_root, "sample", seed=7)
    pd.testing.assert_frame_equal(first.frame, second.frame)
    rows = [TrainingData(first, 32, seed=7, max_train_per_class=4).train_rows["path"].tolist()
            for _ in range(2)]
    assert rows[0] == rows[1]
    weights = []
    for seed in (7, 7, 8):
        keras.utils.set_random_seed(seed)
        weights.append(build_custom_model("vehicles_cnn_bn", 32, 4).get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(weights[0], weights[1]))
    assert not all(np.array_equal(a, b) for a, b in zip(weights[0], weights[2]))


DETERMINISM_SCRIPT = """
import json, sys
from cnnlab.config import get_profile, project_dirs
from cnnlab.data.datasets import build_manifest
from cnnlab.training.fitting import train_custom
dirs = project_dirs(sys.argv[2])
profile = get_profile("smoke", custom_image_size=32, batch_size=8, custom_epochs=2,
                      max_train_per_class=8, deterministic=True)
manifest = build_manifest(sys.argv[1], "sample")
runs = [train_custom("vehicles_cnn_bn", manifest, profile, dirs, seed).history
        .drop(columns="seconds").to_dict("list") for seed in (3, 3, 4)]
print("RESULT" + json.dumps(runs))
"""


@pytest.mark.slow
def test_op_determinism_gives_the_same_metrics_on_cpu(sample_root, tmp_path):
    """enable_op_determinism is process-wide, so the runs happen in a fresh process."""
    (tmp_path / "notebooks").mkdir()
    result = subprocess.run([sys.executable, "-c", DETERMINISM_SCRIPT, str(sample_root),
                             str(tmp_path)], capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout.split("RESULT", 1)[1])
    assert runs[0] == runs[1]  # same seed: identical losses and accuracies, every epoch
    assert runs[0]["loss"] != runs[2]["loss"]  # another seed: another run


def test_short_real_fine_tune_beats_its_own_frozen_stage(project, shared_dir):
    """On real photos (vehicles, 6 classes) stage 2 must add to what the frozen head learned.

    At 128 px the gain on the 180 test images was +0.07 to +0.15 over seeds 0-5; at 96 px
    it was +0.02 to +0.14, and a +0.022 failed CI once, so the test runs at 128 px.
    """
    from cnnlab.data.datasets import prepare_dataset
    from cnnlab.data.pipeline import split_dataset

    manifest = prepare_dataset("vehicles", shared_dir / "datasets" / "vehicles", project,
                               classes=["all"])
    train_module.seed_everything(0)
    data = TrainingData(manifest, 128, 32, hflip=True, seed=0, max_train_per_class=40)
    result = fine_tune("mobilenet_v3_small_075", data, freeze_epochs=10, epochs=4,
                       weights="local", weights_dir=shared_dir / "weights", dirs=project,
                       save=False, verbose=0)
    test_rows = manifest.split("test")
    test = split_dataset(test_rows, 128, 64)
    labels = test_rows["label_index"].to_numpy()

    def accuracy(model):
        return float((model.predict(test, verbose=0).argmax(axis=1) == labels).mean())

    final = accuracy(result.model)
    load_weights(result.model, result.run.frozen)
    frozen = accuracy(result.model)
    assert final > frozen + 0.03, (frozen, final)


def test_a_crash_during_the_model_save_resumes_and_saves_without_retraining(
        sample_root, project, monkeypatch):
    import cnnlab.deploy.export
    import cnnlab.training.fitting as train

    manifest = build_manifest(sample_root, "sample")
    real_save = cnnlab.deploy.export.save_model

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(cnnlab.deploy.export, "save_model", crash)
    with pytest.raises(KeyboardInterrupt):
        train.train_custom("retail_cnn", manifest, TINY, project)
    run = project.checkpoints / "sample-retail_cnn"
    assert json.loads((run / "state.json").read_text())["status"] == "running"
    assert not (project.models / "sample-retail_cnn").exists()
    epochs = len(pd.read_csv(run / "history.csv"))

    monkeypatch.setattr(cnnlab.deploy.export, "save_model", real_save)
    result = train.train_custom("retail_cnn", manifest, TINY, project)
    assert len(pd.read_csv(run / "history.csv")) == epochs == TINY.custom_epochs  # no retraining
    assert result.run.path == run and json.loads((run / "state.json").read_text())[
        "status"] == "finished"
    assert (project.models / "sample-retail_cnn" / "model.keras").is_file()


def test_train_minutes_is_one_definition_the_epochs_seconds():
    import pandas as pd

    from cnnlab.training.fitting import train_minutes

    history = pd.DataFrame({"epoch": [0, 1, 2], "seconds": [30.0, 60.0, 90.0]})
    assert train_minutes(history, fallback_seconds=999.0) == 3.0  # not the call's wall time
    assert train_minutes(pd.DataFrame({"epoch": [0]}), 120.0) == 2.0
    assert train_minutes(pd.DataFrame({"epoch": [0]})) is None
