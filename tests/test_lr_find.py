"""Learning-rate range test: the suggestion rule, real sweeps, weights restored."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from matplotlib.figure import Figure

from cnnlab.data.datasets import build_manifest
from cnnlab.models.custom import build_custom_model
from cnnlab.models.transfer import build_transfer_model
from cnnlab.training.fitting import TrainingData
from cnnlab.training.lr_finder import lr_find, steepest_descent


def test_steepest_descent_finds_the_steepest_fall_before_the_minimum():
    rates = np.logspace(-6, 0, 61)
    x = np.log10(rates)
    # Flat, steepest fall around 1e-3, minimum at 1e-2, then divergence.
    losses = 2.0 - np.tanh((x + 3) * 2) + np.where(x > -2, (x + 2) ** 2 * 5, 0)
    assert steepest_descent(rates, losses) == pytest.approx(1e-3, rel=0.3)
    with pytest.raises(ValueError, match="fewer than 3"):
        steepest_descent(rates[:2], losses[:2])


def _linear_data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = (x @ rng.normal(size=(8, 3))).argmax(1).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(n, seed=seed).batch(16)


def test_sweep_on_a_learnable_problem_suggests_a_sensible_rate_and_restores_weights():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, activation="softmax")])
    before = [w.copy() for w in model.get_weights()]
    result = lr_find(model, _linear_data(), start_lr=1e-5, end_lr=1e4, num_steps=100)
    assert 1e-4 < result.suggestion < 1.0  # Adam on a linear softmax problem
    assert result.diverged and len(result.learning_rates) < 100  # stopped once it blew up
    assert np.all(np.diff(result.learning_rates) > 0)
    assert result.losses.min() < result.losses[0]
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert isinstance(result.plot(), Figure)


def test_sweep_without_divergence_runs_every_step():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, activation="softmax")])
    result = lr_find(model, _linear_data(), start_lr=1e-6, end_lr=1e-3, num_steps=20)
    assert not result.diverged and len(result.losses) == 20
    assert result.learning_rates[-1] == pytest.approx(1e-3)


def test_custom_cnn_sweep_restores_batchnorm_statistics(sample_root):
    data = TrainingData(build_manifest(sample_root, "sample"), 32, 8)
    model = build_custom_model("vehicles_cnn_bn", 32, data.num_classes)
    before = [w.copy() for w in model.get_weights()]
    result = lr_find(model, data, num_steps=12, end_lr=1.0)
    assert not result.on_features and len(result.losses) >= 3
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_frozen_transfer_model_sweeps_its_head_on_cached_features(sample_root, project,
                                                                  shared_dir, capsys):
    data = TrainingData(build_manifest(sample_root, "sample"), 32, 8)
    weights = shared_dir / "weights" / "mobilenet_v3_small_075_imagenet_notop.weights.h5"
    model = build_transfer_model("mobilenet_v3_small_075", data.num_classes, 32, str(weights))
    result = lr_find(model, data, num_steps=40, dirs=project)
    assert result.on_features and "feature vectors computed" in capsys.readouterr().out
    assert 1e-7 <= result.suggestion <= 10
    assert list((project.data / "sample" / "features").rglob("train-*.npz"))


def test_bad_ranges_are_refused():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, activation="softmax")])
    with pytest.raises(ValueError, match="start_lr < end_lr"):
        lr_find(model, _linear_data(), start_lr=1.0, end_lr=0.1)
    with pytest.raises(ValueError, match="num_steps"):
        lr_find(model, _linear_data(), num_steps=2)


def test_a_flat_sweep_says_it_has_no_clear_descent():
    from cnnlab.training.lr_finder import LRFinderResult

    rates = np.logspace(-7, 0, 60)
    flat = LRFinderResult(rates, np.full(60, 3.97), np.full(60, 3.97), 3.7e-7, True)
    assert not flat.has_descent and "no clear descent" in flat.describe()
    falling = LRFinderResult(rates, np.r_[np.full(40, 4.0), np.linspace(4.0, 2.0, 20)],
                             np.zeros(60), 1e-2, False)
    assert falling.has_descent and falling.descent == pytest.approx(0.5)
    assert falling.describe().startswith("steepest descent at 1.0e-02")
    assert isinstance(flat.plot(), Figure)
