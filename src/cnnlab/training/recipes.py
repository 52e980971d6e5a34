"""Fine-tuning recipes: what stage 2 of ``training.fine_tune`` unfreezes and how it trains it.

A recipe bundles the choices that decide how well a pretrained backbone transfers: which
layers are unfrozen, discriminative learning rates per layer group (fastai's
``slice(lr / lr_mult, lr)``; Howard & Ruder 2018, "Universal Language Model Fine-tuning",
arXiv:1801.06146, section 3.2), a warm-up then cosine schedule (Goyal et al. 2017,
arXiv:1706.02677; Loshchilov & Hutter 2017, arXiv:1608.03983), AdamW's decoupled weight decay
(Loshchilov & Hutter 2019, arXiv:1711.05101) and label smoothing (Szegedy et al. 2016,
arXiv:1512.00567, section 7). The recipes are plain data (this module imports no Keras);
the optimizer, loss and schedule they build live in :mod:`cnnlab.training.optimizers`.
``RECIPES`` is the registry; ``"default"`` is what
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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

UNFREEZE_RULES = ("all", "top")
SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("adamw", "adam")

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
    """How stage 2 of ``training.fine_tune`` trains the unfrozen backbone.

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
        from cnnlab.training.optimizers import SparseCategoricalCrossentropy

        return SparseCategoricalCrossentropy(self.label_smoothing)

    def learning_rate(self, peak: float, total_steps: int):
        """The stage-2 rate of the head: ``peak`` or a warm-up + cosine schedule of it."""
        from cnnlab.training.optimizers import warmup_cosine

        if self.schedule == "constant":
            return peak
        return warmup_cosine(peak, total_steps, math.ceil(self.warmup * total_steps))

    def multipliers(self, model: keras.Model, backbone: keras.Model) -> dict[str, float]:
        """``{variable.path: factor}`` for the trainable backbone variables of ``model``."""
        from cnnlab.training.optimizers import layer_groups

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
        from cnnlab.training.optimizers import LayerwiseAdamW

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


@dataclass(frozen=True)
class ScratchRecipe:
    """How a backbone without pretrained weights is trained end to end (``fine_tune`` with
    ``weights="none"``): AdamW, a linear warm-up then cosine decay, label smoothing and an
    optional gradient-norm clip, at a rate chosen per family.

    A constant Adam 1e-3, the Keras default, collapsed VGG16 from random initialisation (no
    BatchNorm: in the cards run its training loss reached 14 in the first epoch and it then
    predicted one class, validation loss ln 53). Its recipe warms up over a fifth of the
    steps (Goyal et al. 2017, arXiv:1706.02677), clips the gradient norm at 1 and peaks at
    1e-4: on validation, 1e-3 is slightly ahead on the weather stand-in but collapses on
    vehicles, and 1e-4 trains on both (``benchmarks/scratch_recipes.py``,
    ``docs/benchmarks/scratch_recipes.json``).

    Attributes:
        name: Registry key: a backbone family, the ``keras.applications`` module
            (``backbones.BackboneSpec.module``, e.g. ``"vgg16"``), or ``"default"``.
        lr_scale: Peak rate as a multiple of ``fine_tune``'s ``base_lr``.
        warmup: Warm-up share of all steps.
        weight_decay: AdamW's decoupled weight decay (kernels only).
        label_smoothing: Label smoothing of the loss.
        clipnorm: Gradients rescaled to at most this global norm per variable (None: no clip).
    """

    name: str
    lr_scale: float = 1.0
    warmup: float = 0.1
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    clipnorm: float | None = None

    def replace(self, **changes) -> ScratchRecipe:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def make_optimizer(self, peak: float, total_steps: int) -> keras.optimizers.Optimizer:
        """AdamW at ``peak`` (warm-up then cosine over ``total_steps``), clipped if set."""
        from cnnlab.training.optimizers import LayerwiseAdamW, warmup_cosine

        schedule = warmup_cosine(peak, total_steps, math.ceil(self.warmup * total_steps))
        extra = {"clipnorm": self.clipnorm} if self.clipnorm else {}
        return LayerwiseAdamW(schedule, weight_decay=self.weight_decay, **extra)

    def loss(self) -> keras.losses.Loss:
        """Sparse cross-entropy smoothed by ``label_smoothing``."""
        from cnnlab.training.optimizers import SparseCategoricalCrossentropy

        return SparseCategoricalCrossentropy(self.label_smoothing)

    def describe(self, peak: float) -> str:
        """One line for logs: rate, schedule, optimizer, smoothing, clip."""
        clip = f", gradients clipped at norm {self.clipnorm:g}" if self.clipnorm else ""
        return (f"end to end, AdamW (weight decay {self.weight_decay:g}) peak rate {peak:.2g}, "
                f"warm-up {self.warmup:.0%} then cosine; label smoothing "
                f"{self.label_smoothing:g}{clip}")


SCRATCH_RECIPES: dict[str, ScratchRecipe] = {
    recipe.name: recipe for recipe in (
        ScratchRecipe("default"),
        # No BatchNorm in 13 convolutions: a longer warm-up and a clip. The rate is chosen on
        # validation over both sets measured (docs/benchmarks/scratch_recipes.json): 1e-3 is
        # slightly ahead on the weather stand-in but stays at chance on vehicles; 1e-4 trains
        # on both.
        ScratchRecipe("vgg16", lr_scale=0.1, warmup=0.2, clipnorm=1.0),
    )
}


def get_scratch_recipe(family: str | ScratchRecipe | None) -> ScratchRecipe:
    """The from-scratch recipe of a backbone family (``"default"`` for families without one).

    Args:
        family: A family (``backbones.BackboneSpec.module``, e.g. ``"vgg16"``), a recipe, or
            None for ``"default"``.
    """
    if isinstance(family, ScratchRecipe):
        return family
    return SCRATCH_RECIPES.get(family or "default", SCRATCH_RECIPES["default"])


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
