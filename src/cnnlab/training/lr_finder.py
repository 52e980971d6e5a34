"""Learning-rate range test: an exponential sweep of the rate over a few hundred steps.

The rate grows by a constant factor every training step, from ``start_lr`` to ``end_lr``,
while the loss is recorded (smoothed with an exponential moving average, bias-corrected).
The sweep stops early once the smoothed loss exceeds ``divergence`` times its minimum. The
suggestion is the rate where the smoothed loss falls fastest against ``log10(rate)``
("steepest descent"). Method: Smith 2017, "Cyclical Learning Rates for Training Neural
Networks" (arXiv:1506.01186), section 3.3; the smoothing and the stopping rule follow
fastai's ``lr_find`` (https://docs.fast.ai/callback.schedule.html#learner.lr_find).

The model's weights (BatchNormalization statistics included) are restored afterwards, so the
sweep leaves no trace; the model is left compiled with the sweep's optimizer, and training
compiles it again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np

from cnnlab.models.transfer import find_backbone


@dataclass
class LRFinderResult:
    """What the sweep measured.

    Attributes:
        learning_rates: Rate of each recorded step.
        losses: Smoothed training loss at each step (bias-corrected moving average).
        raw_losses: Loss of each step's batch.
        suggestion: Steepest-descent learning rate.
        diverged: Whether the sweep stopped early because the loss blew up.
        on_features: Whether the sweep trained the head on cached backbone features.

    A sweep whose smoothed loss never falls below 95% of where it started (a network that
    needs more than ``num_steps`` steps to move at any rate) has no meaningful steepest
    descent: :attr:`has_descent` is False, and the plot and :meth:`describe` say so.
    """

    learning_rates: np.ndarray
    losses: np.ndarray
    raw_losses: np.ndarray
    suggestion: float
    diverged: bool
    on_features: bool = False

    @property
    def descent(self) -> float:
        """How far the smoothed loss fell: ``1 - min / start`` (start: first 5 steps)."""
        start = float(np.mean(self.losses[:5]))
        return float(1 - self.losses.min() / start) if start > 0 else 0.0

    @property
    def has_descent(self) -> bool:
        """Whether the loss fell by at least 5% during the sweep."""
        return self.descent >= 0.05

    def describe(self) -> str:
        """One line for notebooks: the suggestion, or why there is none."""
        if not self.has_descent:
            return (f"no clear descent: the loss fell {self.descent:.0%} over "
                    f"{len(self.losses)} steps, so the steepest point "
                    f"({self.suggestion:.1e}) is noise; keep the profile's rate or sweep longer")
        return (f"steepest descent at {self.suggestion:.1e} (loss fell {self.descent:.0%}"
                + (", then diverged)" if self.diverged else ")"))

    def plot(self):
        """Loss against rate (log scale) with the suggestion marked; a Figure."""
        from cnnlab.plots import plot_lr_find

        return plot_lr_find(self)


class _RateSweep(keras.callbacks.Callback):
    """Sets the rate before each one-step epoch and records that step's loss."""

    def __init__(self, rates: np.ndarray, beta: float, divergence: float):
        super().__init__()
        self.rates, self.beta, self.divergence = rates, beta, divergence
        self.raw, self.smooth = [], []
        self.diverged = False
        self._average, self._best = 0.0, math.inf

    def on_epoch_begin(self, epoch, logs=None):
        self.model.optimizer.learning_rate.assign(float(self.rates[epoch]))

    def on_epoch_end(self, epoch, logs=None):
        loss = float(logs["loss"])
        self._average = self.beta * self._average + (1 - self.beta) * loss
        smoothed = self._average / (1 - self.beta ** (epoch + 1))
        self.raw.append(loss)
        self.smooth.append(smoothed)
        self._best = min(self._best, smoothed)
        if not math.isfinite(loss) or smoothed > self.divergence * self._best:
            self.diverged = True
            self.model.stop_training = True


def steepest_descent(learning_rates: np.ndarray, losses: np.ndarray, skip_start: int = 5
                     ) -> float:
    """The rate where ``losses`` falls fastest against ``log10(rate)``.

    Only the part of the curve before its minimum counts (after it, the loss rises), and the
    first ``skip_start`` points are left out (the moving average is still settling there).
    The slope is a central difference over a window of about a twentieth of the sweep on
    each side, so that batch-to-batch noise between neighbouring points does not win.

    Raises:
        ValueError: If fewer than 3 points are usable.
    """
    rates, values = np.asarray(learning_rates, dtype=float), np.asarray(losses, dtype=float)
    if len(rates) < 3:
        raise ValueError("the sweep recorded fewer than 3 steps; raise num_steps")
    end = int(np.argmin(values)) + 1
    start = min(skip_start, max(end - 3, 0))
    if end - start < 3:
        start, end = 0, len(rates)
    logs = np.log10(rates)
    half = max(1, len(rates) // 20)
    best, best_slope = start, np.inf
    for i in range(start, end):
        lo, hi = max(i - half, start), min(i + half, end - 1)
        if hi == lo:
            continue
        slope = (values[hi] - values[lo]) / (logs[hi] - logs[lo])
        if slope < best_slope:
            best, best_slope = i, slope
    return float(rates[best])


def _uses_feature_cache(model: keras.Model, data) -> bool:
    from cnnlab.training.fitting import TrainingData

    if not isinstance(data, TrainingData):
        return False
    backbone = find_backbone(model)
    return backbone is not None and not backbone.trainable and any(
        layer.name == "pool" for layer in model.layers)


def lr_find(
    model: keras.Model,
    data,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    beta: float = 0.98,
    divergence: float = 4.0,
    cache_features: bool = True,
    dirs=None,
) -> LRFinderResult:
    """Runs the learning-rate range test on ``model`` and returns a suggestion.

    Args:
        model: The model to train next (compiled or not; it is compiled here with Adam and
            sparse categorical cross-entropy, as ``training.compile_classifier`` does).
        data: A ``training.TrainingData`` (its training split, un-augmented) or a
            ``tf.data.Dataset`` of ``(images, labels)`` batches.
        start_lr: First rate.
        end_lr: Last rate.
        num_steps: Training steps of the sweep (the rate grows by
            ``(end_lr / start_lr) ** (1 / (num_steps - 1))`` per step).
        beta: Smoothing of the loss's moving average.
        divergence: Stop once the smoothed loss exceeds this multiple of its minimum.
        cache_features: For a transfer model with a frozen backbone and ``TrainingData``,
            sweep the head on the cached backbone features (``training.cached_features``), which
            ``training.fine_tune`` reuses for stage 1: same head, same loss, no backbone passes.
        dirs: Project folders (for the feature cache; default ``config.project_dirs()``).

    Returns:
        Rates, smoothed and raw losses, the steepest-descent suggestion and whether the
        sweep diverged.

    Raises:
        ValueError: If ``start_lr >= end_lr`` or ``num_steps < 3``.
    """
    from cnnlab.training.fitting import compile_classifier

    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    if num_steps < 3:
        raise ValueError(f"num_steps must be at least 3, got {num_steps}")
    on_features = cache_features and _uses_feature_cache(model, data)
    if on_features:
        from cnnlab.config import project_dirs
        from cnnlab.training import cached_features as features

        dirs = dirs or project_dirs()
        cache = features.feature_cache(model, data.dataset, data.image_size, dirs.data)
        x, y = cache.features("train", data.train_rows, data.batch_size)
        train = features.features_dataset(x, y, data.batch_size, True, data.seed)
        target = features.head_model(model)
    else:
        train = data.train_ds(augment=False) if hasattr(data, "train_ds") else data
        target = model
    saved = [np.array(w) for w in model.get_weights()]
    rates = start_lr * (end_lr / start_lr) ** (np.arange(num_steps) / (num_steps - 1))
    compile_classifier(target, start_lr)
    sweep = _RateSweep(rates, beta, divergence)
    try:
        # One step per "epoch": Keras reports the epoch's mean loss, which is then exactly
        # this batch's loss, and the rate changes between steps.
        target.fit(train.repeat(), steps_per_epoch=1, epochs=num_steps, callbacks=[sweep],
                   verbose=0, shuffle=False)
    finally:
        model.set_weights(saved)
    recorded = len(sweep.smooth)
    losses = np.asarray(sweep.smooth)
    suggestion = steepest_descent(rates[:recorded], losses)
    return LRFinderResult(rates[:recorded], losses, np.asarray(sweep.raw), suggestion,
                          sweep.diverged, on_features)
