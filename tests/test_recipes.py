"""Fine-tuning recipes: discriminative rates, decoupled weight decay, schedule, smoothing."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from cnnlab.models.transfer import build_transfer_model, find_backbone
from cnnlab.training.fine_tuning import set_fine_tune_trainable
from cnnlab.training.optimizers import (
    LayerwiseAdamW,
    SparseCategoricalCrossentropy,
    layer_groups,
    warmup_cosine,
)
from cnnlab.training.recipes import RECIPES, FineTuneRecipe, get_recipe, group_multipliers


def test_group_multipliers_follow_fastai_even_mults():
    # fastai: slice(lr / 100, lr) over body groups + head gives lr/100, lr/10, lr.
    np.testing.assert_allclose(group_multipliers(100, 2), [0.01, 0.1])
    np.testing.assert_allclose(group_multipliers(8, 3), [0.125, 0.25, 0.5])
    with pytest.raises(ValueError, match="positive"):
        group_multipliers(0, 2)


def test_discriminative_rates_differ_per_layer_group_read_from_the_optimizer():
    model = build_transfer_model("mobilenet_v3_small_075", 4, 32, "none")
    backbone = find_backbone(model)
    backbone.trainable = False  # as a pretrained backbone would be before stage 2
    set_fine_tune_trainable(model, unfreeze="all")
    recipe = get_recipe("default")
    optimizer = recipe.make_optimizer(model, backbone, 1e-3, 100)
    optimizer.build(model.trainable_variables)
    groups = layer_groups(backbone, recipe.groups)
    assert len(groups) == recipe.groups and all(groups)
    expected = group_multipliers(recipe.lr_mult, recipe.groups)
    for group, factor in zip(groups, expected):
        factors = [optimizer.rate_multiplier(v) for layer in group
                   for v in layer.trainable_weights]
        assert factors == pytest.approx([factor] * len(factors))
    head = model.get_layer("head")
    assert {optimizer.rate_multiplier(v) for v in head.trainable_weights} == {1.0}
    assert len(set(expected)) == recipe.groups and expected[0] < expected[-1] < 1.0
    # Every trainable variable of the backbone is in a group; BatchNorm has none trainable.
    in_groups = {v.path for group in groups for layer in group for v in layer.trainable_weights}
    assert in_groups == {v.path for v in backbone.trainable_weights}
    assert not any(isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
                   for layer in backbone.layers)


def test_layerwise_rates_scale_the_adam_step_and_the_weight_decay():
    head = keras.Variable(np.ones((3, 2), "float32"), name="head_kernel")
    low = keras.Variable(np.ones((3, 2), "float32"), name="stem_kernel")
    optimizer = LayerwiseAdamW(1e-2, weight_decay=0.0, multipliers={low.path: 0.1})
    optimizer.build([head, low])
    assert optimizer.rate_multiplier(head) == 1.0 and optimizer.rate_multiplier(low) == 0.1
    gradient = np.full((3, 2), 0.5, "float32")
    optimizer.apply([gradient, gradient], [head, low])
    head_step = 1.0 - np.asarray(head)
    low_step = 1.0 - np.asarray(low)
    # Adam's first step is lr * g / (|g| + eps): the rate itself, scaled by the factor.
    np.testing.assert_allclose(head_step, 1e-2, rtol=1e-3)
    np.testing.assert_allclose(low_step, 1e-3, rtol=1e-3)

    # Decoupled weight decay: with a zero gradient the only change is w * wd * rate * factor,
    # on kernels only (1-D variables such as biases are not decayed).
    kernel = keras.Variable(np.full((2, 2), 2.0, "float32"), name="kernel")
    bias = keras.Variable(np.full((2,), 2.0, "float32"), name="bias")
    decayed = LayerwiseAdamW(1e-2, weight_decay=0.5, multipliers={kernel.path: 0.1})
    decayed.build([kernel, bias])
    zero = [np.zeros((2, 2), "float32"), np.zeros((2,), "float32")]
    decayed.apply(zero, [kernel, bias])
    np.testing.assert_allclose(np.asarray(kernel), 2.0 - 2.0 * 0.5 * 1e-2 * 0.1, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(bias), 2.0)


def test_optimizer_config_round_trips():
    optimizer = LayerwiseAdamW(warmup_cosine(1e-3, 50, 5), weight_decay=0.02,
                               multipliers={"a/kernel": 0.1})
    again = LayerwiseAdamW.from_config(optimizer.get_config())
    assert again.decoupled_weight_decay == 0.02 and again.multipliers == {"a/kernel": 0.1}
    assert again.weight_decay is None  # applied per variable, not by the base class


def test_warmup_cosine_schedule_values_at_known_steps():
    schedule = warmup_cosine(1e-3, total_steps=110, warmup_steps=10)
    values = {step: float(schedule(step)) for step in (0, 5, 10, 60, 110, 500)}
    assert values[0] == pytest.approx(1e-4)  # start: peak / 10
    assert values[5] == pytest.approx(5.5e-4)  # linear half-way
    assert values[10] == pytest.approx(1e-3)  # peak at the end of the warm-up
    # half-way through the cosine: peak * (alpha + (1 - alpha) * 0.5), alpha = 0.01
    assert values[60] == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5), rel=1e-5)
    assert values[110] == pytest.approx(1e-5)  # end: peak * alpha
    assert values[500] == pytest.approx(1e-5)


def test_recipe_rate_is_the_schedule_or_a_constant():
    cosine = RECIPES["default"].learning_rate(1e-3, 100)
    assert float(cosine(0)) < float(cosine(10)) == pytest.approx(1e-3)
    assert RECIPES["plain"].learning_rate(2e-4, 100) == 2e-4


def test_label_smoothing_loss_matches_the_formula():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], "float32")
    labels = np.array([0, 2])
    plain = SparseCategoricalCrossentropy(0.0)(labels, probs)
    reference = keras.losses.SparseCategoricalCrossentropy()(labels, probs)
    np.testing.assert_allclose(float(plain), float(reference), rtol=1e-6)
    smoothed = float(SparseCategoricalCrossentropy(0.3)(labels[:1], probs[:1]))
    target = np.array([1 - 0.3 + 0.1, 0.1, 0.1])
    np.testing.assert_allclose(smoothed, -(target * np.log(probs[0])).sum(), rtol=1e-5)
    with pytest.raises(ValueError, match="label_smoothing"):
        SparseCategoricalCrossentropy(1.0)


def test_unknown_recipe_and_rules_are_refused():
    with pytest.raises(KeyError, match="choose one of"):
        get_recipe("magic")
    with pytest.raises(ValueError, match="unfreeze rule"):
        FineTuneRecipe("x", unfreeze="half")
    with pytest.raises(ValueError, match="schedule rule"):
        FineTuneRecipe("x", schedule="step")
    assert get_recipe(None) is RECIPES["default"]
    assert "AdamW" in RECIPES["default"].describe(1e-3)


def test_fine_tune_stages_table_reads_the_run(sample_root, project, shared_dir):
    from cnnlab.config import get_profile
    from cnnlab.data.datasets import build_manifest
    from cnnlab.training.fine_tuning import train_transfer
    from cnnlab.training.stages import fine_tune_stages

    profile = get_profile("smoke", image_size=32, freeze_epochs=1, fine_tune_epochs=1)
    manifest = build_manifest(sample_root, "sample")
    result = train_transfer("mobilenet_v3_small_075", manifest, profile, "local",
                            shared_dir / "weights", project)
    table = fine_tune_stages(result)
    assert table["stage"].tolist() == ["1: head on the frozen backbone",
                                       "2: fine-tune (default recipe)"]
    layers = sum(1 for layer in find_backbone(result.model).layers if layer.weights)
    norms = sum(1 for layer in find_backbone(result.model).layers
                if isinstance(layer, keras.layers.BatchNormalization))
    assert table.iloc[0]["backbone layers trained"] == f"0 of {layers}"
    assert table.iloc[1]["backbone layers trained"] == f"{layers - norms} of {layers}"
    assert table.iloc[1]["BatchNorm"] == f"{norms} frozen (inference mode)"
    recipe = RECIPES["default"]
    peak = profile.learning_rate * recipe.lr_scale
    rates = [peak * m for m in group_multipliers(recipe.lr_mult, recipe.groups)]
    assert table.iloc[1]["backbone rates"] == ", ".join(f"{r:.2g}" for r in rates)
    assert len(set(table.iloc[1]["backbone rates"].split(", "))) == recipe.groups  # differ


def test_a_twin_has_its_pretrained_twins_images_size_and_epoch_budget():
    import types

    import pandas as pd

    from cnnlab.config import PROFILES, get_profile
    from cnnlab.training.fine_tuning import twin_comparison, twin_settings

    for profile in PROFILES.values():
        for backbone in profile.scratch_twins:
            ours, twin = profile.for_backbone(backbone), twin_settings(profile, backbone)
            assert (twin.image_size, twin.max_train_per_class) == (
                ours.image_size, ours.max_train_per_class)
            assert twin.scratch_epochs == ours.freeze_epochs + ours.fine_tune_epochs
    unfair = get_profile("cpu", backbone_overrides={"mobilenet_v2_scratch": {"image_size": 96}})
    with pytest.raises(ValueError, match="settings of its own"):
        twin_settings(unfair, "mobilenet_v2")

    def result(name, size, epochs, accuracy):
        args = {"train_images": 1060, "image_size": size}
        run = types.SimpleNamespace(read_args=lambda: args)
        return types.SimpleNamespace(name=name, weights="w", seconds=60.0, run=run,
                                     train_minutes=1.0,
                                     history=pd.DataFrame({"val_accuracy": [accuracy] * epochs}))

    table = twin_comparison({"m": result("m", 160, 26, 0.85),
                             "m_scratch": result("m_scratch", 160, 26, 0.1)})
    assert table.loc[0, "budget (both)"] == "1060 images at 160 px, 26 epochs"
    assert table.loc[0, "pretrained - scratch"] == 0.75
    with pytest.raises(ValueError, match="different budgets"):
        twin_comparison({"m": result("m", 160, 26, 0.85),
                         "m_scratch": result("m_scratch", 96, 3, 0.1)})


def test_each_family_has_a_from_scratch_recipe_and_vgg16_warms_up_longer_and_clipped():
    from cnnlab.models.backbones import BACKBONES
    from cnnlab.training.fine_tuning import _family
    from cnnlab.training.recipes import SCRATCH_RECIPES, get_scratch_recipe

    for name in BACKBONES:
        assert get_scratch_recipe(_family(name)).name in SCRATCH_RECIPES
    vgg, default = get_scratch_recipe(_family("vgg16")), get_scratch_recipe(None)
    assert vgg.name == "vgg16" and default.name == "default"
    assert _family("my_model") == "default"  # a given model outside the registry
    assert vgg.warmup > default.warmup and vgg.clipnorm and not default.clipnorm
    optimizer = vgg.make_optimizer(1e-4, 100)
    assert optimizer.clipnorm == vgg.clipnorm
    schedule = optimizer._learning_rate
    rates = [float(keras.ops.convert_to_numpy(schedule(s))) for s in (0, 20, 99)]
    assert rates[0] < rates[1] and rates[2] < rates[1]  # warm-up, then decay
    assert rates[1] == pytest.approx(1e-4)  # the peak after 20% of 100 steps
    assert "clipped at norm 1" in vgg.describe(1e-4)


def test_a_backbone_from_scratch_trains_with_its_family_recipe(sample_root, project):
    from cnnlab.data.datasets import build_manifest
    from cnnlab.training.fine_tuning import fine_tune
    from cnnlab.training.fitting import TrainingData

    data = TrainingData(build_manifest(sample_root, "sample"), 32, 16, True, 0)
    result = fine_tune("vgg16", data, 0, 0, weights="none", dirs=project, scratch_epochs=1,
                       save=False, resume=False, verbose=0)
    args = result.run.read_args()
    assert args["recipe"]["name"] == "vgg16" and args["recipe"]["clipnorm"] == 1.0
    assert args["scratch_epochs"] == 1 and not args["pretrained"]
    assert np.isfinite(result.history["loss"]).all()
    from cnnlab.training.stages import fine_tune_stages

    row = fine_tune_stages(result).iloc[0]
    assert (row["stage"], row["head rate"], row["schedule"]) == (
        "end to end", "0.0001", "warm-up 20%, cosine")  # vgg16's rate, 0.1 x base_lr
    assert row["backbone layers trained"] == "13 of 13 (all)"  # VGG16's 13 convolutions


def test_the_cpu_profile_leaves_families_out_with_the_reason(capsys, monkeypatch):
    from cnnlab.config import PROFILES, get_profile
    from cnnlab.training import fine_tuning

    cpu = PROFILES["cpu"]
    assert set(cpu.left_out) == {"inception_v3", "vgg16", "efficientnet_b0", "densenet121"}
    assert not set(cpu.left_out) & set(cpu.backbones)
    trained = []
    monkeypatch.setattr(fine_tuning, "train_transfer",
                        lambda backbone, *args, name, **kwargs: trained.append(name))
    fine_tuning.train_backbones(None, get_profile("cpu"))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("inception_v3: not trained in the cpu profile: no ImageNet "
                               "weights file in the local weights folder")
    assert lines[1].startswith("vgg16: not trained") and "scratch_recipes.md" in lines[1]
    assert lines[2].startswith("efficientnet_b0, densenet121: not trained")
    assert "course-project run" in lines[2]
    assert not any("../" in line for line in lines)  # notebook outputs carry no ../ paths
    assert trained == ["mobilenet_v3_small_075", "mobilenet_v2", "mobilenet_v3_small_075_scratch"]
    assert "mobilenet_v2: the cpu profile's settings for it: image_size=160" in lines[3]


def test_a_left_out_family_asked_for_by_name_is_trained():
    from cnnlab.config import resolve_profile

    asked = resolve_profile("cpu", backbones=["vgg16", "mobilenet_v2"])
    assert asked.backbones == ("vgg16", "mobilenet_v2") and asked.left_out == {}
    assert resolve_profile("cpu").left_out
