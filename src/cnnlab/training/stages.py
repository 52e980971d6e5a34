"""What each stage of a training run trained: layers frozen and unfrozen, and their rates.

Read from the run's ``args.yaml`` (epochs, head rate, recipe) and the model's backbone, so a
notebook shows the two stages of ``fine_tune`` as a table instead of asking the reader to
trust a description.
"""

from __future__ import annotations

import keras
import pandas as pd

from cnnlab.models.transfer import find_backbone
from cnnlab.training.fine_tuning import stage_two_layers
from cnnlab.training.recipes import FineTuneRecipe, ScratchRecipe, group_multipliers


def _rates(values) -> str:
    return ", ".join(f"{v:.2g}" for v in values)


def fine_tune_stages(result) -> pd.DataFrame:
    """The stages of one trained model: what trains in each, at which learning rates.

    Args:
        result: A ``TrainingResult`` of ``fine_tune``/``train_transfer`` or ``train_custom``.

    Returns:
        One row per stage: ``stage``, ``epochs``, ``backbone layers trained`` (of the backbone
        layers with weights), ``BatchNorm`` (frozen layers and mode), ``head rate`` and
        ``backbone rates`` (peak rates per layer group, lowest first), ``schedule``. A model
        trained end to end (custom CNN, or a backbone from scratch) has one row.
    """
    args = result.run.read_args()
    model = result.model
    backbone = find_backbone(model)
    rate = float(args.get("learning_rate", 0.0))
    if backbone is None or not args.get("pretrained"):
        scratch = args.get("recipe") if backbone is not None else None
        if scratch and "clipnorm" in scratch:  # a backbone from scratch: its ScratchRecipe
            recipe = ScratchRecipe(**scratch)
            rate *= recipe.lr_scale
            schedule = f"warm-up {recipe.warmup:.0%}, cosine"
        else:  # a custom CNN: compile_classifier's constant Adam rate
            schedule = "constant"
        with_weights = sum(1 for layer in (backbone or model).layers if layer.weights)
        return pd.DataFrame([{
            "stage": "end to end", "epochs": len(result.history),
            "backbone layers trained": (f"{with_weights} of {with_weights} (all)"
                                        if backbone is not None else "-"),
            "BatchNorm": "trained (training mode)", "head rate": f"{rate:.2g}",
            "backbone rates": f"{rate:.2g}" if backbone is not None else "-",
            "schedule": schedule}])
    recipe = FineTuneRecipe(**args["recipe"])
    layers = [layer for layer in backbone.layers if layer.weights]
    norms = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]
    unfrozen = [layer for layer in stage_two_layers(backbone, recipe.unfreeze, recipe.train_bn)
                if layer.weights]
    peak = rate * recipe.lr_scale
    multipliers = group_multipliers(recipe.lr_mult, recipe.groups) if recipe.lr_mult != 1 \
        else [1.0]
    frozen_bn = f"{len(norms)} frozen (inference mode)"
    return pd.DataFrame([
        {"stage": "1: head on the frozen backbone", "epochs": args.get("freeze_epochs"),
         "backbone layers trained": f"0 of {len(layers)}", "BatchNorm": frozen_bn,
         "head rate": f"{rate:.2g}", "backbone rates": "-", "schedule": "constant"},
        {"stage": f"2: fine-tune ({recipe.name} recipe)", "epochs": args.get("fine_tune_epochs"),
         "backbone layers trained": f"{len(unfrozen)} of {len(layers)}",
         "BatchNorm": frozen_bn if not recipe.train_bn else "scale/offset trained",
         "head rate": f"{peak:.2g}", "backbone rates": _rates(peak * m for m in multipliers),
         "schedule": (f"warm-up {recipe.warmup:.0%}, cosine" if recipe.schedule == "cosine"
                      else "constant")},
    ])
