"""What fine-tuning recipes build: AdamW with a learning-rate multiplier per variable, the
label-smoothed loss, the warm-up + cosine schedule and the backbone's layer groups.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="cnnlab")
class LayerwiseAdamW(keras.optimizers.Adam):
    """Adam with decoupled weight decay and a learning-rate multiplier per variable.

    Each variable's step uses ``learning_rate * multipliers[variable.path]`` (1.0 for paths
    not listed), and so does its decoupled weight decay ``variable -= variable *
    weight_decay * rate`` (AdamW, Loshchilov & Hutter 2019, arXiv:1711.05101, algorithm 2),
    applied to kernels only: biases and normalisation parameters (1-D variables) are not
    decayed, as in timm's ``param_groups_weight_decay``. ``learning_rate`` may be a schedule;
    the multipliers scale whatever it gives at each step.

    Args:
        learning_rate: Rate (float or ``keras.optimizers.schedules`` schedule) of the
            variables with multiplier 1 (the head).
        weight_decay: Decoupled weight decay coefficient (0 for plain Adam).
        multipliers: ``{variable.path: factor}``.
        **kwargs: Further ``keras.optimizers.Adam`` arguments (``beta_1``, ``epsilon``, ...).
    """

    def __init__(self, learning_rate=1e-3, weight_decay: float = 0.01,
                 multipliers: dict[str, float] | None = None, **kwargs):
        kwargs["weight_decay"] = None  # applied per variable in update_step, with its rate
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.decoupled_weight_decay = float(weight_decay)
        self.multipliers = {str(k): float(v) for k, v in (multipliers or {}).items()}

    def build(self, var_list):
        super().build(var_list)
        self._scales = [self.multipliers.get(v.path, 1.0) for v in var_list]
        self._decays = [len(v.shape) > 1 for v in var_list]

    def rate_multiplier(self, variable) -> float:
        """The factor applied to ``variable``'s learning rate (after :meth:`build`)."""
        return self._scales[self._get_variable_index(variable)]

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        rate = ops.multiply(ops.cast(learning_rate, variable.dtype), self._scales[index])
        if self.decoupled_weight_decay and self._decays[index]:
            self.assign_sub(variable, ops.multiply(
                variable, ops.multiply(rate, self.decoupled_weight_decay)))
        super().update_step(gradient, variable, rate)

    def get_config(self):
        config = super().get_config()
        config.update(weight_decay=self.decoupled_weight_decay, multipliers=self.multipliers)
        return config


@keras.saving.register_keras_serializable(package="cnnlab")
class SparseCategoricalCrossentropy(keras.losses.Loss):
    """Sparse categorical cross-entropy with label smoothing.

    Keras 3's ``SparseCategoricalCrossentropy`` has no ``label_smoothing``; this one turns the
    integer labels into one-hot rows and calls ``keras.losses.categorical_crossentropy``,
    whose smoothing puts ``1 - s + s / classes`` on the true class and ``s / classes`` on the
    others (Szegedy et al. 2016, arXiv:1512.00567, section 7).

    Args:
        label_smoothing: ``s`` in ``[0, 1)``; 0 is the plain loss.

    Call args:
        y_true: ``(batch,)`` or ``(batch, 1)`` integer class indices.
        y_pred: ``(batch, classes)`` float probabilities (a softmax output).
    """

    def __init__(self, label_smoothing: float = 0.0, name: str = "sparse_categorical_crossentropy",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        one_hot = ops.one_hot(labels, ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(one_hot, y_pred,
                                                     label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def warmup_cosine(peak: float, total_steps: int, warmup_steps: int,
                  start_fraction: float = 0.1, end_fraction: float = 0.01
                  ) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up to ``peak``, then cosine decay: ``keras.optimizers.schedules.CosineDecay``.

    Args:
        peak: Rate reached at the end of the warm-up.
        total_steps: Steps of the whole stage (warm-up included).
        warmup_steps: Steps of linear warm-up from ``peak * start_fraction``.
        start_fraction: First rate as a fraction of ``peak``.
        end_fraction: Last rate as a fraction of ``peak`` (cosine's ``alpha``).

    Returns:
        A schedule: step 0 gives ``peak * start_fraction``, step ``warmup_steps`` gives
        ``peak``, step ``total_steps`` gives ``peak * end_fraction``.
    """
    warmup_steps = max(0, min(int(warmup_steps), int(total_steps) - 1))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak * start_fraction, decay_steps=max(1, total_steps - warmup_steps),
        alpha=end_fraction, warmup_target=peak, warmup_steps=warmup_steps)


def layer_groups(backbone: keras.Model, groups: int) -> list[list[keras.layers.Layer]]:
    """Splits a backbone's trainable layers into ``groups`` consecutive groups, bottom first.

    Only layers with trainable weights count; each group gets an equal share of them (the
    last groups one more when they do not divide evenly), so "group 0" is the stem and the
    last group the top blocks.

    Raises:
        ValueError: If ``groups`` is below 1.
    """
    if groups < 1:
        raise ValueError(f"layer groups must be at least 1, got {groups}")
    layers = [layer for layer in backbone.layers if layer.trainable_weights]
    groups = min(groups, len(layers)) or 1
    bounds = [round(i * len(layers) / groups) for i in range(groups + 1)]
    return [layers[bounds[i]:bounds[i + 1]] for i in range(groups)]

