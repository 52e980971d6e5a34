"""Fine-tuning recipes: what stage 2 of ``train.fine_tune`` unfreezes and how it trains it.

A recipe bundles the choices that decide how well a pretrained backbone transfers: which
layers are unfrozen, discriminative learning rates per layer group (fastai's
``slice(lr / lr_mult, lr)``; Howard & Ruder 2018, "Universal Language Model Fine-tuning",
arXiv:1801.06146, section 3.2), a warm-up then cosine schedule (Goyal et al. 2017,
arXiv:1706.02677; Loshchilov & Hutter 2017, arXiv:1608.03983), AdamW's decoupled weight decay
(Loshchilov & Hutter 2019, arXiv:1711.05101) and label smoothing (Szegedy et al. 2016,
arXiv:1512.00567, section 7). ``RECIPES`` is the registry; ``"default"`` is what
``fine_tune`` uses, ``"top"`` the previous default (top blocks at a tenth of the rate) and
``"plain"`` the 20-line Keras recipe's stage 2 (every layer but BatchNormalization at one
constant Adam rate), kept for the ablation in ``benchmarks/time_to_accuracy.py``.

BatchNormalization stays frozen in every recipe here (inference mode, statistics and scale
untouched): the backbone is called with ``training=False``, as the Keras transfer-learning
guide prescribes (https://keras.io/guides/transfer_learning/).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import keras
from keras import ops

UNFREEZE_RULES = ("all", "top")
SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("adamw", "adam")


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


def group_multipliers(lr_mult: float, groups: int) -> list[float]:
    """Rate factors of ``groups`` backbone groups below a head at factor 1.

    Geometric from ``1 / lr_mult`` (group 0) towards 1, as fastai's ``even_mults`` over
    ``slice(lr / lr_mult, lr)`` with the head as the last group: 2 groups and ``lr_mult=100``
    give 0.01 and 0.1, the head 1.
    """
    if lr_mult <= 0:
        raise ValueError(f"lr_mult must be positive, got {lr_mult}")
    return [lr_mult ** (-(groups - k) / groups) for k in range(groups)]


@dataclass(frozen=True)
class FineTuneRecipe:
    """How stage 2 of ``train.fine_tune`` trains the unfrozen backbone.

    Attributes:
        name: Registry key.
        unfreeze: ``"all"``: every backbone layer but BatchNormalization; ``"top"``: only the
            layers above the registry boundary (``backbones.BackboneSpec.frozen_through``).
        lr_scale: Peak stage-2 rate of the head as a fraction of the stage-1 rate.
        lr_mult: Head rate divided by the rate of the lowest backbone group (1: one rate).
            fastai's default is 100, for natural photos close to ImageNet; 3 here: on the
            cards subset (MobileNetV3Small 0.75, 6 stage-2 epochs, same seed) lr_mult 100 gave
            0.725 final validation accuracy, 10 gave 0.77 and 3 gave 0.83: playing cards are
            far from ImageNet, and the lower layers need to move too.
        groups: Backbone layer groups between which the rate steps (see
            :func:`layer_groups`).
        schedule: ``"cosine"`` (linear warm-up, then cosine decay) or ``"constant"``.
        warmup: Warm-up share of the stage's steps (cosine only).
        optimizer: ``"adamw"`` (decoupled weight decay) or ``"adam"``.
        weight_decay: AdamW coefficient (kernels only).
        label_smoothing: Label smoothing of the loss, in both stages.
        train_bn: Also train BatchNormalization scale and offset (statistics stay frozen).
    """

    name: str
    unfreeze: str = "all"
    lr_scale: float = 1.0
    lr_mult: float = 3.0
    groups: int = 3
    schedule: str = "cosine"
    warmup: float = 0.1
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    train_bn: bool = False

    def __post_init__(self):
        for value, allowed, what in ((self.unfreeze, UNFREEZE_RULES, "unfreeze"),
                                     (self.schedule, SCHEDULES, "schedule"),
                                     (self.optimizer, OPTIMIZERS, "optimizer")):
            if value not in allowed:
                raise ValueError(f"unknown {what} rule {value!r} in recipe {self.name!r}; "
                                 f"choose one of {allowed}")

    def replace(self, **changes) -> FineTuneRecipe:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def loss(self) -> keras.losses.Loss:
        """The training loss (sparse cross-entropy, smoothed by ``label_smoothing``)."""
        return SparseCategoricalCrossentropy(self.label_smoothing)

    def learning_rate(self, peak: float, total_steps: int):
        """The stage-2 rate of the head: ``peak`` or a warm-up + cosine schedule of it."""
        if self.schedule == "constant":
            return peak
        return warmup_cosine(peak, total_steps, math.ceil(self.warmup * total_steps))

    def multipliers(self, model: keras.Model, backbone: keras.Model) -> dict[str, float]:
        """``{variable.path: factor}`` for the trainable backbone variables of ``model``."""
        factors = {}
        groups = layer_groups(backbone, self.groups)
        for group, factor in zip(groups, group_multipliers(self.lr_mult, len(groups))):
            for layer in group:
                for variable in layer.trainable_weights:
                    factors[variable.path] = factor
        return factors

    def make_optimizer(self, model: keras.Model, backbone: keras.Model, peak: float,
                       total_steps: int) -> keras.optimizers.Optimizer:
        """The stage-2 optimizer, with discriminative rates when ``lr_mult != 1``."""
        return LayerwiseAdamW(
            self.learning_rate(peak, total_steps),
            weight_decay=self.weight_decay if self.optimizer == "adamw" else 0.0,
            multipliers=self.multipliers(model, backbone) if self.lr_mult != 1 else {})

    def describe(self, peak: float) -> str:
        """One line for logs: layers, rates, schedule, optimizer, smoothing."""
        layers = ("every backbone layer" if self.unfreeze == "all"
                  else "the backbone above its registry boundary")
        bn = "BatchNorm scale/offset trained" if self.train_bn else "BatchNorm frozen"
        if self.lr_mult != 1:
            rates = ", ".join(f"{peak * f:.2g}" for f in group_multipliers(self.lr_mult,
                                                                             self.groups))
            rates = f"rates {rates} for {self.groups} layer groups, {peak:.2g} for the head"
        else:
            rates = f"one rate {peak:.2g}"
        schedule = (f"warm-up {self.warmup:.0%} then cosine" if self.schedule == "cosine"
                    else "constant")
        optimizer = (f"AdamW (weight decay {self.weight_decay:g})" if self.optimizer == "adamw"
                     else "Adam")
        return (f"{layers} ({bn}); {rates} (peak), {schedule}; {optimizer}; label smoothing "
                f"{self.label_smoothing:g}")


RECIPES: dict[str, FineTuneRecipe] = {
    recipe.name: recipe for recipe in (
        FineTuneRecipe("default"),
        # The 20-line Keras recipe's stage 2: every layer but BN, one constant Adam rate.
        FineTuneRecipe("plain", lr_scale=0.2, lr_mult=1.0, schedule="constant",
                       optimizer="adam", weight_decay=0.0, label_smoothing=0.0),
        # cnnlab's earlier default: the top blocks at a tenth of the head rate.
        FineTuneRecipe("top", unfreeze="top", lr_scale=0.1, lr_mult=1.0,
                       schedule="constant", optimizer="adam", weight_decay=0.0,
                       label_smoothing=0.0),
    )
}


def get_recipe(recipe: str | FineTuneRecipe | None) -> FineTuneRecipe:
    """The recipe ``recipe`` (a registry key or a recipe; None: ``"default"``).

    Raises:
        KeyError: If the key is unknown; the message lists the registry.
    """
    if isinstance(recipe, FineTuneRecipe):
        return recipe
    name = recipe or "default"
    if name not in RECIPES:
        raise KeyError(f"unknown fine-tuning recipe {name!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[name]
