"""Fine-tuning pretrained backbones: the fastai-style one call, ``fine_tune``.

Stage 1 trains the head on the frozen backbone, on cached backbone features when possible
(:mod:`cnnlab.training.cached_features`); stage 2 unfreezes the backbone as the recipe says
(:mod:`cnnlab.training.recipes`) with BatchNormalization frozen. ``train_transfer`` and
``train_backbones`` are the entry points of the CLI and notebook 03; ``twin_comparison`` sets
each pretrained model beside its twin trained from scratch.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import keras
import pandas as pd
import tensorflow as tf

from cnnlab.models.transfer import find_backbone, fine_tune_boundary
from cnnlab.training import distribute
from cnnlab.training.fitting import (
    TrainingData,
    TrainingResult,
    _prepare,
    _restore_best,
    _run_name,
    _save,
    _train_end_to_end,
    compile_classifier,
    fit,
    precision,
    seed_everything,
)
from cnnlab.training.recipes import (
    UNFREEZE_RULES,
    FineTuneRecipe,
    ScratchRecipe,
    get_recipe,
    get_scratch_recipe,
)
from cnnlab.training.runs import (
    RunFolder,
    _profile_config,
    finish_run,
    load_weights,
    save_weights_atomic,
    start_run,
)


def set_fine_tune_trainable(model: keras.Model, train_bn: bool = False,
                            unfreeze: str = "top") -> int:
    """Unfreezes the backbone of a transfer model: all of it, or from its registry boundary on.

    With ``unfreeze="top"``, layers before :func:`cnnlab.models.transfer.fine_tune_boundary` stay
    frozen; with ``"all"`` every layer is unfrozen. BatchNormalization layers stay frozen
    either way unless ``train_bn`` (their moving statistics never change anyway: a pretrained
    backbone is called with ``training=False``).

    Args:
        model: A model built by ``models.build_transfer_model``.
        train_bn: Also train BatchNormalization scale and offset of the unfrozen part.
        unfreeze: ``"top"`` or ``"all"`` (``recipes.UNFREEZE_RULES``).

    Returns:
        Number of trainable backbone layers with weights.

    Raises:
        ValueError: If ``model`` has no nested backbone.
    """
    backbone = find_backbone(model)
    if backbone is None:
        raise ValueError(f"{model.name} has no nested backbone to fine-tune")
    unfrozen = {id(layer) for layer in stage_two_layers(backbone, unfreeze, train_bn)}
    backbone.trainable = True
    for layer in backbone.layers:
        layer.trainable = id(layer) in unfrozen
    return sum(1 for layer in backbone.layers if layer.trainable and layer.weights)


def stage_two_layers(backbone: keras.Model, unfreeze: str = "top",
                     train_bn: bool = False) -> list[keras.layers.Layer]:
    """The backbone layers that stage 2 of fine-tuning trains.

    Args:
        backbone: A backbone built by ``models.transfer.build_backbone``.
        unfreeze: ``"top"`` (from :func:`cnnlab.models.transfer.fine_tune_boundary` on) or
            ``"all"``.
        train_bn: Include BatchNormalization layers.

    Raises:
        ValueError: If ``unfreeze`` is not in ``recipes.UNFREEZE_RULES``.
    """
    if unfreeze not in UNFREEZE_RULES:
        raise ValueError(f"unknown unfreeze rule {unfreeze!r}; choose one of {UNFREEZE_RULES}")
    start = fine_tune_boundary(backbone) if unfreeze == "top" else 0
    return [layer for layer in backbone.layers[start:]
            if train_bn or not isinstance(layer, keras.layers.BatchNormalization)]


def _frozen_stage(model, data: TrainingData, run: RunFolder, epochs: int, lr: float,
                  cache_features: bool, strategy, dirs, jit_compile, verbose, loss,
                  callbacks=None) -> bool:
    """Stage 1: the head on the frozen backbone; returns whether cached features were used."""
    from cnnlab.training import cached_features as features

    find_backbone(model).trainable = False
    reason = None
    if not cache_features:
        reason = "cache_features is off: stage 1 trains on live, augmented images"
    elif distribute.is_multi_worker(strategy):
        reason = "multi-worker run: each worker sees only its shard, features are not cached"
    if reason is None:
        try:
            cache = features.feature_cache(model, data.dataset, data.image_size, dirs.data)
        except ValueError as error:
            reason = f"{error}"
    if reason is not None:
        print(f"feature cache off ({reason})")
        compile_classifier(model, lr, jit_compile, loss=loss)
        fit(model, data.train_ds(augment=True), data.val_ds(), run, epochs, stage="frozen",
            verbose=verbose, class_weight=data.class_weight(), callbacks=callbacks)
        return False
    print(f"stage 1: head on cached {model.name} features (computed once; no augmentation, "
          f"cached features come from the un-augmented images)")
    x_train, y_train = cache.features("train", data.train_rows, data.batch_size)
    x_val, y_val = cache.features("val", data.val_rows, data.batch_size)
    head = features.head_model(model)
    compile_classifier(head, lr, jit_compile, loss=loss)
    fit(head, features.features_dataset(x_train, y_train, data.batch_size, True, data.seed),
        features.features_dataset(x_val, y_val, data.batch_size), run, epochs,
        stage="frozen", verbose=verbose, target=model, class_weight=data.class_weight(),
        callbacks=callbacks)
    return True


def fine_tune(
    model_or_backbone: keras.Model | str,
    data: TrainingData,
    freeze_epochs: int = 4,
    epochs: int = 8,
    base_lr: float = 1e-3,
    recipe: str | FineTuneRecipe | None = None,
    *,
    weights: str = "imagenet",
    weights_dir: str | os.PathLike | None = None,
    cache_features: bool = True,
    strategy: str | tf.distribute.Strategy | None = None,
    mixed_precision: str | None = None,
    jit_compile: bool | str = False,
    dirs=None,
    save: bool = True,
    resume: bool = True,
    run_config: dict | None = None,
    scratch_epochs: int | None = None,
    scratch_recipe: str | ScratchRecipe | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
    name: str | None = None,
    verbose: int | str = "table",
) -> TrainingResult:
    """Transfer learning in one call: head on the frozen backbone, then the whole backbone.

    Stage 1 trains only the head for ``freeze_epochs`` at ``base_lr`` (Adam), on cached
    backbone features when ``cache_features`` (``training.cached_features``: computed once, then
    seconds per epoch; no augmentation in this stage). Stage 2 trains ``epochs`` more on live
    augmented images as the ``recipe`` says (``cnnlab.training``). The ``"default"`` recipe,
    fastai's ``fine_tune`` (https://docs.fast.ai/callback.schedule.html#learner.fine_tune)
    with AdamW: every backbone layer unfrozen except BatchNormalization, which stays frozen
    in inference mode (the Keras transfer-learning guide,
    https://keras.io/guides/transfer_learning/); discriminative rates, the head at
    ``base_lr`` and three backbone layer groups geometrically below it down to a third of
    that (``lr_mult=3``); a linear warm-up over the first 10% of the steps, then cosine
    decay; decoupled weight decay 0.01 on kernels; label smoothing 0.1 in both stages. The
    rate spread was chosen on the cards subset (``benchmarks/recipe_search.py``,
    ``docs/benchmarks/recipe_search.json``); the recipe against the plain Keras recipe, and
    its ingredients one at a time against ``"top"`` (the earlier default), are in
    ``docs/benchmarks/time_to_accuracy.json`` (``benchmarks/time_to_accuracy.py``). The
    backbone runs with ``training=False``, so BN moving statistics never change. The best
    validation checkpoint
    over both stages is restored at the end.

    A backbone without pretrained weights (``weights="none"``, or a given model whose backbone
    is trainable) has nothing to transfer: it is trained end to end for ``scratch_epochs``
    (default ``freeze_epochs + epochs``) epochs instead, with its family's from-scratch recipe
    (``recipes.SCRATCH_RECIPES``: AdamW, warm-up then cosine, label smoothing; VGG16 with a
    longer warm-up and a gradient clip), and says so.

    The run is resumable: killed at any point, the same call continues from the last completed
    epoch (stage 1 is not repeated once finished).

    Args:
        model_or_backbone: A backbone registry key (the model is built with
            ``models.build_transfer_model``) or such a model (pretrained backbone frozen).
        data: The splits (:class:`TrainingData`); its batch size is per replica.
        freeze_epochs: Stage 1 epochs.
        epochs: Stage 2 epochs.
        base_lr: Adam learning rate of stage 1 (scaled by the number of replicas); stage 2's
            peak head rate is ``base_lr * recipe.lr_scale``.
        recipe: Stage 2's recipe: a key of ``recipes.RECIPES`` or a ``FineTuneRecipe``
            (None: ``"default"``).
        weights: For a registry key: ``"imagenet"``, ``"local"``, ``"none"`` or a file
            (``backbones.resolve_weights``).
        weights_dir: Folder of local ImageNet weights files.
        cache_features: Train stage 1 on cached features (see above).
        strategy: ``distribute.STRATEGIES`` key or a strategy (None: the current one).
        mixed_precision: Dtype policy while building the model (``training.precision``).
        jit_compile: XLA-compile the train steps.
        dirs: Project folders (default: ``config.project_dirs()``).
        save: Save the final model to ``models/<dataset>-<name>/``.
        resume: Continue an interrupted run of the same configuration.
        run_config: Extra facts for ``args.yaml`` (e.g. the profile name).
        scratch_epochs: Epochs end to end without pretrained weights (see above).
        scratch_recipe: The from-scratch recipe (a ``recipes.SCRATCH_RECIPES`` family key or a
            ``ScratchRecipe``; None: the backbone family's).
        callbacks: Extra Keras callbacks for every stage (e.g. a timer).
        name: Model name for the run folder and ``models/`` (default: the backbone's), e.g.
            ``mobilenet_v2_scratch`` for a from-scratch twin.
        verbose: "table" (one row per epoch, ``callbacks.ProgressTable``) or Keras verbosity.

    Returns:
        The result: model with the best checkpoint, ``history.csv`` (epochs numbered across
        both stages, with ``seconds`` per epoch), run folder, saved paths, seconds, weights.

    Raises:
        ValueError: If a given model has no nested backbone.
    """
    from cnnlab.config import project_dirs
    from cnnlab.models.backbones import resolve_weights
    from cnnlab.models.transfer import build_transfer_model

    recipe = get_recipe(recipe)
    dirs = dirs or project_dirs()
    strategy, data, lr = _prepare(data, strategy, base_lr)
    with precision(mixed_precision), strategy.scope():
        if isinstance(model_or_backbone, str):
            choice = resolve_weights(model_or_backbone, weights, weights_dir)
            model = build_transfer_model(model_or_backbone, data.num_classes, data.image_size,
                                         choice)
            label, pretrained = choice.label, choice.is_pretrained
        else:
            model = model_or_backbone
            backbone = find_backbone(model)
            if backbone is None:
                raise ValueError(f"{model.name} has no nested backbone; use train_classifier")
            pretrained = not backbone.trainable
            label = "as given (backbone frozen: pretrained)" if pretrained else \
                "as given (backbone trainable: trained end to end)"
    if name:
        model.name = name  # type: ignore[misc]
    name = model.name
    shown = label if pretrained else label.upper()
    scratch_epochs = scratch_epochs or freeze_epochs + epochs
    scratch = get_scratch_recipe(scratch_recipe or _family(
        model_or_backbone if isinstance(model_or_backbone, str) else model.name))
    plan = (f"{freeze_epochs} frozen + {epochs} fine-tune epochs" if pretrained
            else f"{scratch_epochs} epochs {scratch.describe(lr * scratch.lr_scale)} (no "
                 f"pretrained weights: a frozen random backbone would teach the head nothing)")
    print(f"{name}: weights = {shown}; {len(data.train_rows)} images at {data.image_size} px, "
          f"{plan}")
    config = {
        "model": name, "dataset": data.dataset, "image_size": data.image_size,
        "train_images": len(data.train_rows), "val_images": len(data.val_rows),
        "manifest": data.fingerprints(), "freeze_epochs": freeze_epochs,
        "fine_tune_epochs": epochs, "scratch_epochs": None if pretrained else scratch_epochs,
        "batch_size": data.batch_size,
        "replicas": strategy.num_replicas_in_sync, "learning_rate": lr,
        "recipe": dataclasses.asdict(recipe) if pretrained else dataclasses.asdict(scratch),
        "seed": data.seed, "weights": label,
        "pretrained": pretrained,
        "cache_features": cache_features, "mixed_precision": mixed_precision or "float32",
        "jit_compile": jit_compile, "strategy": distribute.strategy_name(strategy),
        **(run_config or {})}
    run = start_run(dirs.checkpoints, _run_name(data, name, strategy), config, resume)
    start = time.perf_counter()
    used_cache = False
    with strategy.scope():
        if not pretrained:
            steps = math.ceil(len(data.train_rows) / data.batch_size) * scratch_epochs
            _train_end_to_end(model, data, run, scratch_epochs, lr, jit_compile, verbose,
                              callbacks, scratch.make_optimizer(lr * scratch.lr_scale, steps),
                              scratch.loss())
        else:
            if run.completed("frozen"):
                print(f"stage 1 finished in an earlier run: continuing from "
                      f"checkpoints/{run.name}/{run.frozen.name}")
                load_weights(model, run.frozen)
            elif freeze_epochs > 0:
                used_cache = _frozen_stage(model, data, run, freeze_epochs, lr, cache_features,
                                           strategy, dirs, jit_compile, verbose,
                                           recipe.loss(), callbacks)
                save_weights_atomic(model, run.frozen)
                run.complete("frozen")
            if epochs > 0 and not run.completed("fine_tune"):
                _fine_tune_stage(model, data, run, recipe, lr, freeze_epochs, epochs,
                                 jit_compile, verbose, callbacks)
    history = _restore_best(model, run)
    seconds = time.perf_counter() - start
    paths = {}
    if save and distribute.is_chief(strategy):
        paths = _save(model, dirs, data, name, seconds, label, run,
                      {"backbone": find_backbone(model).name,
                       "freeze_epochs": freeze_epochs if pretrained else 0})
    finish_run(run)  # after the save: a kill before it resumes and saves
    return TrainingResult(name, model, history, run, paths, seconds, label,
                          freeze_epochs if pretrained else None, used_cache)


def _family(name: str) -> str:
    """The registry family (``keras.applications`` module) of backbone ``name``, or
    ``"default"`` for a name outside the registry."""
    from cnnlab.models.backbones import BACKBONES

    return BACKBONES[name].module if name in BACKBONES else "default"


def _fine_tune_stage(model, data: TrainingData, run: RunFolder, recipe: FineTuneRecipe,
                     lr: float, freeze_epochs: int, epochs: int, jit_compile, verbose,
                     callbacks) -> None:
    """Stage 2: the recipe's layers unfrozen, its optimizer, schedule and loss."""
    unfrozen = set_fine_tune_trainable(model, recipe.train_bn, recipe.unfreeze)
    peak = lr * recipe.lr_scale
    steps = math.ceil(len(data.train_rows) / data.batch_size) * epochs
    optimizer = recipe.make_optimizer(model, find_backbone(model), peak, steps)
    print(f"stage 2 ({recipe.name} recipe): {unfrozen} backbone layers with weights trainable: "
          f"{recipe.describe(peak)}; {epochs} epochs of {steps // epochs} steps")
    compile_classifier(model, peak, jit_compile, optimizer=optimizer, loss=recipe.loss())
    # Built now, so that a resumed stage restores the optimizer's step (the schedule) and
    # moments from the backup instead of skipping them.
    model.optimizer.build(model.trainable_variables)
    fit(model, data.train_ds(), data.val_ds(), run, freeze_epochs + epochs,
        initial_epoch=freeze_epochs, stage="fine_tune", verbose=verbose,
        class_weight=data.class_weight(), callbacks=callbacks)
    run.complete("fine_tune")


def fine_tune_options(profile) -> dict:
    """The keyword arguments of :func:`fine_tune` that a ``config.Profile`` sets.

    Returns:
        ``freeze_epochs``, ``epochs``, ``scratch_epochs``, ``base_lr``, ``recipe``,
        ``cache_features``, ``strategy``, ``mixed_precision``, ``jit_compile`` and
        ``run_config``.
    """
    return {"freeze_epochs": profile.freeze_epochs, "epochs": profile.fine_tune_epochs,
            "scratch_epochs": profile.scratch_epochs,
            "base_lr": profile.learning_rate, "recipe": profile.fine_tune_recipe,
            "cache_features": profile.cache_features, "strategy": profile.strategy,
            "mixed_precision": profile.mixed_precision, "jit_compile": profile.jit_compile,
            "run_config": {**_profile_config(profile), "deterministic": profile.deterministic}}


def train_transfer(backbone: str, manifest, profile, weights: str = "imagenet",
                   weights_dir=None, dirs=None, seed: int = 42, hflip: bool | None = None,
                   strategy: str | None = None, name: str | None = None) -> TrainingResult:
    """:func:`fine_tune` with a profile's settings, saved to ``models/``.

    Args:
        backbone: Key of ``backbones.BACKBONES``.
        manifest: A ``datasets.Manifest``.
        profile: A ``config.Profile``.
        weights: ``"imagenet"``, ``"local"``, ``"none"`` or a file (``resolve_weights``).
        weights_dir: Folder of local ImageNet weights files.
        dirs: Project folders.
        seed: Seed for the head's initialisation, shuffling and augmentation.
        hflip: Whether augmentation may flip horizontally (default: the dataset's rule).
        strategy: Overrides ``profile.strategy``.
        name: Model name (default: ``backbone``).

    Returns:
        The result; the weights actually used are printed and stored in ``args.yaml``, the
        model's JSON sidecar and the leaderboard.
    """
    from cnnlab.config import project_dirs

    dirs = dirs or project_dirs()
    seed_everything(seed, profile.deterministic)
    data = TrainingData.from_profile(manifest, profile, None, hflip, seed, dirs)
    options = fine_tune_options(profile)
    options["strategy"] = strategy or options["strategy"]
    return fine_tune(backbone, data, weights=weights, weights_dir=weights_dir, dirs=dirs,
                     name=name, **options)


SCRATCH_SUFFIX = "_scratch"


def train_backbones(manifest, profile, weights: str = "imagenet", weights_dir=None, dirs=None,
                    seed: int = 42, hflip: bool | None = None, strategy: str | None = None
                    ) -> dict[str, TrainingResult]:
    """Notebook 03's models: every backbone of ``profile``, then its from-scratch twins.

    Each backbone runs :func:`train_transfer` with ``profile.for_backbone(name)`` (a short
    run, with a smaller image size and fewer epochs, where the profile says so); each of
    ``profile.scratch_twins`` is trained again from random initialisation as
    ``<backbone>_scratch``, the no-transfer baseline of the same architecture (twins of
    backbones not in ``profile.backbones`` are skipped). A twin is a fair baseline by
    construction (:func:`twin_settings`): the same training images, image size and epoch
    budget as its pretrained twin.

    Args:
        manifest: A ``datasets.Manifest``.
        profile: A ``config.Profile``.
        weights: What the backbones start from (``backbones.resolve_weights``); twins always
            start from random weights.
        weights_dir: Folder of local ImageNet weights files.
        dirs: Project folders.
        seed: Seed of every run.
        hflip: Whether augmentation may flip horizontally (default: the dataset's rule).
        strategy: Overrides ``profile.strategy``.

    Returns:
        ``{model name: result}`` in training order.
    """
    reasons: dict[str, list[str]] = {}
    for name, reason in profile.left_out.items():
        reasons.setdefault(reason, []).append(name)
    for reason, names in reasons.items():
        print(f"{', '.join(names)}: not trained in the {profile.name} profile: {reason}")
    runs = [(name, name, weights) for name in profile.backbones]
    runs += [(f"{name}{SCRATCH_SUFFIX}", name, "none") for name in profile.scratch_twins
             if name in profile.backbones]
    results = {}
    for model_name, backbone, start in runs:
        twin = model_name != backbone
        settings = twin_settings(profile, backbone) if twin else profile.for_backbone(backbone)
        if profile.is_short_run(backbone):
            changed = ", ".join(f"{k}={v}" for k, v in profile.backbone_overrides[backbone]
                                .items())
            print(f"{model_name}: the {profile.name} profile's settings for it: {changed}")
        results[model_name] = train_transfer(
            backbone, manifest, settings, start, weights_dir, dirs, seed, hflip, strategy,
            name=model_name)
    return results


def twin_settings(profile, backbone: str):
    """The settings of ``<backbone>_scratch``: its pretrained twin's, trained end to end.

    The same training images (``max_train_per_class``), image size and epoch budget: the
    twin's ``scratch_epochs`` is the pretrained twin's ``freeze_epochs + fine_tune_epochs``,
    so the two see every training image equally often. A profile may not give a twin
    settings of its own.

    Raises:
        ValueError: If ``profile.backbone_overrides`` has an entry for the twin.
    """
    if f"{backbone}{SCRATCH_SUFFIX}" in profile.backbone_overrides:
        raise ValueError(f"profile {profile.name!r} gives {backbone}{SCRATCH_SUFFIX} settings "
                         f"of its own; a twin takes its pretrained twin's (image size, "
                         f"images, epochs), so remove that entry of backbone_overrides")
    settings = profile.for_backbone(backbone)
    return settings.replace(scratch_epochs=settings.freeze_epochs + settings.fine_tune_epochs)


def twin_comparison(results: dict[str, TrainingResult]) -> pd.DataFrame:
    """Each pretrained backbone beside its from-scratch twin (best validation accuracy).

    Args:
        results: :func:`train_backbones`' results.

    Returns:
        One row per twin pair: ``model``, the budget both had (training images, image size,
        epochs), both starting weights, both best validation accuracies, both training
        minutes and ``pretrained - scratch``.

    Raises:
        ValueError: If a pair was trained on different budgets (not a fair comparison).
    """
    rows = []
    for name, twin in results.items():
        if not name.endswith(SCRATCH_SUFFIX) or name[:-len(SCRATCH_SUFFIX)] not in results:
            continue
        pretrained = results[name[:-len(SCRATCH_SUFFIX)]]
        best = float(pretrained.history["val_accuracy"].max())
        scratch = float(twin.history["val_accuracy"].max())
        ours, theirs = pretrained.run.read_args(), twin.run.read_args()
        budget = {key: ours.get(key) for key in ("train_images", "image_size")}
        budget["epochs"] = len(pretrained.history)
        if budget != {**{key: theirs.get(key) for key in budget}, "epochs": len(twin.history)}:
            raise ValueError(f"{pretrained.name} and {twin.name} were trained on different "
                             f"budgets; train the twin with training.twin_settings")
        rows.append({"model": pretrained.name,
                     "budget (both)": f"{budget['train_images']} images at "
                                      f"{budget['image_size']} px, {budget['epochs']} epochs",
                     "pretrained weights": pretrained.weights,
                     "pretrained best val accuracy": round(best, 3),
                     "scratch best val accuracy": round(scratch, 3),
                     "pretrained - scratch": round(best - scratch, 3),
                     "pretrained train minutes": pretrained.train_minutes,
                     "scratch train minutes": twin.train_minutes})
    return pd.DataFrame(rows)
