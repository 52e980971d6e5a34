"""Training the mixed-data models and their baselines on one split, in one run.

:func:`train_mixed` reads the dataset and its split manifest, fits the preprocessor on the
training rows, measures the baselines (the training median; scikit-learn's
``HistGradientBoostingRegressor`` on the same tabular columns), then trains each requested
model of :data:`cnnlab.tabular.registry.MIXED_MODELS` with MSE on the standardised log
price, early stopping on the validation split. Each Keras model writes
``checkpoints/<dataset>-<model>/`` (``args.yaml``, ``history.csv``) and is saved as the folder
``models/<dataset>-<model>/`` (``model.keras``, ``model.h5``, ``meta.json``); the ``.h5``
file is reloaded and must reproduce the predictions. ``frozen_fusion`` is built from the
reloaded ``mlp`` and ``transfer`` files. Metrics are computed once, on the
whole test split, with bootstrap intervals.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import keras
import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.pipeline import make_pipeline

from cnnlab.config import Profile, ProjectDirs, display_path, get_profile, project_dirs
from cnnlab.deploy.export import load_model, save_model
from cnnlab.files import atomic_path
from cnnlab.models.backbones import resolve_weights
from cnnlab.tabular import models as mixed
from cnnlab.tabular.columns import SPLITS, TabularData, TabularSpec, load_split
from cnnlab.tabular.metrics import mape, metrics_table, regression_metrics
from cnnlab.tabular.photos import encode_photos, load_photos
from cnnlab.tabular.preprocessing import (
    TargetScaler,
    build_preprocessor,
    drop_target_copies,
    find_target_copies,
    fit_preprocessor,
)
from cnnlab.training.callbacks import EpochTimer, tensorboard_logs
from cnnlab.training.runs import RunFolder

__all__ = ["BASELINES", "MixedRun", "train_mixed", "fit_regressor", "ROUND_TRIP_TOLERANCE"]

BASELINES = ("median", "gbm")
# Largest |difference| in standardised log price between a model and its reloaded .h5 copy.
ROUND_TRIP_TOLERANCE = 1e-3
ROUND_TRIP_ROWS = 8


@dataclass
class MixedRun:
    """Everything one :func:`train_mixed` call produced.

    Attributes:
        data: The rows and their split.
        spec: The dataset's entry after target copies were dropped.
        dropped: ``{column: reason}`` of the dropped target copies.
        preprocessor: The fitted scikit-learn transformer.
        scaler: The target transform.
        predictions: ``{model: {split: (n,) float64 USD}}``, baselines included.
        histories: ``{model: per-epoch DataFrame}`` of the Keras models.
        info: ``{model: {"seconds", "params", "started from", ...}}``.
        paths: ``{model: {".keras": path, ".h5": path, ".json": path}}``.
        photos: ``{room: (rows, s, s, 3) uint8}`` at the transfer size (None without photos).
        photo_sets: ``{size: photos}`` for every size a model of the run used.
    """

    data: TabularData
    spec: TabularSpec
    dropped: dict
    preprocessor: object
    scaler: TargetScaler
    predictions: dict = field(default_factory=dict)
    histories: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    paths: dict = field(default_factory=dict)
    photos: dict | None = None
    photo_sets: dict = field(default_factory=dict)

    def photos_at(self, size: int) -> dict[str, np.ndarray]:
        """The run's photos at ``size`` px (``{room: (rows, size, size, 3) uint8}``).

        Raises:
            KeyError: If no model of the run used that size.
        """
        if size not in self.photo_sets:
            raise KeyError(f"no photos at {size} px in this run; sizes: {sorted(self.photo_sets)}")
        return self.photo_sets[size]

    def table(self, split: str = "test") -> pd.DataFrame:
        """Metrics of every model on ``split`` with intervals, and its validation MAPE.

        Rows are ordered by ``val MAPE %``, lowest first: the first row is the model chosen
        on validation (the test split reports, it never chooses).
        """
        truth, val_truth = self.data.target(split), self.data.target("val")
        rows = {name: {**regression_metrics(truth, by_split[split]),
                       "val MAPE %": mape(val_truth, by_split["val"]),
                       **self.info.get(name, {})}
                for name, by_split in self.predictions.items()}
        return metrics_table(rows, by="val MAPE %")

    def compare(self, a: str, b: str, split: str = "test") -> dict:
        """``b``'s MAPE minus ``a``'s on the same houses, with its paired 95% interval.

        The absolute percentage error of each house under both models is paired
        (:func:`cnnlab.evaluation.metrics.paired_difference`), so the interval is that of the
        difference itself: ``b`` is better only where it lies below zero.

        Returns:
            ``{"difference", "low", "high", "n", "excludes zero"}`` in percentage points.

        Raises:
            KeyError: If either model has no predictions in this run.
        """
        from cnnlab.evaluation.metrics import paired_difference

        truth = self.data.target(split)
        errors = {name: 100 * np.abs(self.predictions[name][split] - truth) / np.abs(truth)
                  for name in (a, b)}
        return paired_difference(errors[a], errors[b])


def _tabular(run: MixedRun, split: str) -> np.ndarray:
    return run.preprocessor.transform(run.data.rows(split)).astype(np.float32)


def fit_regressor(model: keras.Model, train: tuple[dict, np.ndarray],
                  val: tuple[dict, np.ndarray], run: RunFolder, epochs: int,
                  learning_rate: float, batch_size: int, patience: int,
                  seed: int = 42) -> pd.DataFrame:
    """Fits ``model`` with MSE (Adam), keeping the weights of the best validation epoch.

    Args:
        model: Uncompiled regression model ``inputs -> (batch, 1)``.
        train: ``(inputs, y)``, ``y`` ``(n,)`` float32 standardised log price.
        val: The same for validation.
        run: Run folder (``history.csv`` written there, one row per epoch, and TensorBoard
            logs under ``tensorboard/train/``).
        epochs: Maximum epochs.
        learning_rate: Adam rate.
        batch_size: Rows per step.
        patience: Epochs without a better validation loss before stopping.
        seed: Shuffling and initialisation seed.

    Returns:
        The history, one row per epoch (``loss``, ``val_loss``, ``mae``, ``val_mae``,
        ``seconds``).
    """
    keras.utils.set_random_seed(seed)
    # One call per epoch: the per-step Python overhead dominates for these small models.
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse", metrics=["mae"],
                  steps_per_execution=max(1, math.ceil(len(train[1]) / batch_size)))
    run.path.mkdir(parents=True, exist_ok=True)
    with atomic_path(run.history) as tmp:
        model.fit(train[0], train[1], validation_data=val, epochs=epochs, batch_size=batch_size,
                  shuffle=True, verbose=0, callbacks=[
                      EpochTimer(), keras.callbacks.CSVLogger(str(tmp)),
                      tensorboard_logs(run),
                      keras.callbacks.EarlyStopping(patience=patience,
                                                    restore_best_weights=True)])
    return pd.read_csv(run.history)


def _predict(model: keras.Model, inputs: dict, scaler: TargetScaler) -> np.ndarray:
    return scaler.inverse(model.predict(inputs, batch_size=256, verbose=0))


def _take(inputs: dict, rows: slice | np.ndarray) -> dict:
    return {key: value[rows] for key, value in inputs.items()}


def _save_and_check(model: keras.Model, inputs: dict, name: str, run: MixedRun,
                    dirs: ProjectDirs, metadata: dict) -> dict[str, Path]:
    """Saves ``model``, reloads its ``.h5`` file and checks it predicts the same."""
    paths = save_model(model, dirs.models, f"{run.spec.name}-{name}", metadata)
    sample = _take(inputs, slice(0, ROUND_TRIP_ROWS))
    reloaded = load_model(paths[".h5"])
    gap = float(np.max(np.abs(model.predict(sample, verbose=0)
                              - reloaded.predict(sample, verbose=0))))
    if not gap <= ROUND_TRIP_TOLERANCE:
        raise RuntimeError(f"{display_path(paths['.h5'])} predicts {gap:.2g} away from the "
                           f"model it was saved from (tolerance {ROUND_TRIP_TOLERANCE})")
    run.info[name]["h5 round trip |diff|"] = gap
    return paths


def _gbm(seed: int) -> HistGradientBoostingRegressor:
    return HistGradientBoostingRegressor(random_state=seed)


def train_mixed(
    dataset: str = "houses",
    data_dir: str | os.PathLike | None = None,
    models: tuple[str, ...] | None = None,
    profile: Profile | str = "cpu",
    weights: str = "local",
    weights_dir: str | os.PathLike | None = None,
    dirs: ProjectDirs | None = None,
    seed: int = 42,
    verbose: bool = True,
    listings_url: str | None = None,
) -> MixedRun:
    """Baselines and mixed-data models on one dataset and split, in one run.

    Args:
        dataset: ``houses`` (photos + tabular) or ``airbnb`` (tabular only: image models are
            skipped, said in the output).
        data_dir: Local copy of the data (``houses``: downloaded when None).
        models: Keys of ``MIXED_MODELS`` (default: the profile's ``mixed_models``).
        profile: A :class:`cnnlab.config.Profile` or its name: epochs, sizes, backbone.
        weights: What the transfer backbone starts from (``backbones.resolve_weights``).
        weights_dir: Folder of ImageNet weights files.
        dirs: Project folders.
        seed: Seed of the split (first run), initialisation and shuffling.
        verbose: Print one line per model.
        listings_url: ``airbnb`` only: an Inside Airbnb ``listings.csv.gz`` URL or file; its
            photos are downloaded once and the image models train on them (one room,
            ``photo``). See :func:`cnnlab.tabular.columns.load_split`.

    Returns:
        The run: predictions, histories, saved paths; ``run.table()`` scores the test split.

    Raises:
        KeyError: On an unknown model name.
        ValueError: If ``frozen_fusion`` is requested without ``mlp`` and ``transfer``.
    """
    dirs = (dirs or project_dirs()).create()
    profile = get_profile(profile) if isinstance(profile, str) else profile
    requested = tuple(models or profile.mixed_models)
    unknown = [m for m in requested if m not in mixed.MIXED_MODELS]
    if unknown:
        raise KeyError(f"unknown mixed-data model(s) {unknown}; choose from "
                       f"{list(mixed.MIXED_MODELS)}")
    if "frozen_fusion" in requested and not {"mlp", "transfer"} <= set(requested):
        raise ValueError("frozen_fusion fuses the saved mlp and transfer models: request them "
                         "too (they are trained first)")
    data = load_split(dataset, data_dir, seed=seed, dirs=dirs, verbose=verbose,
                      listings_url=listings_url)
    train_rows = data.rows("train")
    copies = find_target_copies(train_rows, data.spec)
    spec = drop_target_copies(data.spec, copies, verbose=verbose)
    run = MixedRun(data, spec, copies, fit_preprocessor(spec, train_rows),
                   TargetScaler(data.target("train")))
    with atomic_path(dirs.models / f"{dataset}-preprocessor.joblib") as tmp:
        joblib.dump({"preprocessor": run.preprocessor, "target": run.scaler.config(),
                     "features": list(spec.features)}, tmp)
    y = {split: run.scaler.transform(data.target(split)) for split in SPLITS}
    tabular = {split: _tabular(run, split) for split in SPLITS}

    # Baselines on the same rows.
    median = float(np.median(data.target("train")))
    run.predictions["median"] = {s: np.full(len(data.rows(s)), median) for s in SPLITS}
    run.info["median"] = {"inputs": "none", "started from": "training median"}
    start = time.perf_counter()
    gbm = make_pipeline(clone(build_preprocessor(spec)), _gbm(seed))
    frame = {s: data.rows(s) for s in SPLITS}
    gbm.fit(frame["train"], y["train"])
    run.predictions["gbm"] = {s: run.scaler.inverse(gbm.predict(frame[s])) for s in SPLITS}
    run.info["gbm"] = {"inputs": "tabular", "started from": "scikit-learn defaults",
                       "seconds": round(time.perf_counter() - start, 1)}

    has_photos = bool(spec.rooms) and data.root is not None
    skipped = [m for m in requested if mixed.uses_photos(m) and not has_photos]
    if skipped and verbose:
        print(f"skipped {', '.join(skipped)}: dataset {dataset} has no photos")
    requested = tuple(m for m in requested if m not in skipped)
    rooms = spec.rooms
    index = {s: np.flatnonzero(data.frame["split"].to_numpy() == s) for s in SPLITS}
    features = encoder = None
    weights_label = "none"
    if any(m in requested for m in ("transfer", "fusion", "frozen_fusion")):
        choice = resolve_weights(profile.mixed_backbone, weights, weights_dir)
        weights_label = choice.label
        run.photos = load_photos(data, profile.mixed_image_size, dirs, verbose=verbose)
        run.photo_sets[profile.mixed_image_size] = run.photos
        encoder = mixed.image_encoder(profile.mixed_backbone, profile.mixed_image_size, choice)
        tag = f"{profile.mixed_backbone}-{choice.source}"
        features = encode_photos(data, run.photos, encoder, tag, dirs, verbose=verbose)

    def inputs_for(name: str, split: str, photos: dict | None = None) -> dict:
        parts = {}
        if mixed.uses_tabular(name):
            parts["tabular"] = tabular[split]
        if mixed.uses_photos(name):
            if photos is not None:
                parts.update({room: photos[room][index[split]].astype(np.float32)
                              for room in rooms})
            else:
                parts.update({room: features[room][index[split]] for room in rooms})
        return parts

    trained: dict[str, keras.Model] = {}
    for name in requested:
        start = time.perf_counter()
        started_from = "random init"
        if name == "mlp":
            model = mixed.build_head("mlp", tabular["train"].shape[1], rooms, None)
        elif name == "cnn":
            small = load_photos(data, profile.mixed_cnn_image_size, dirs, verbose=verbose)
            run.photo_sets[profile.mixed_cnn_image_size] = small
            model = mixed.photo_cnn(rooms, profile.mixed_cnn_image_size)
        elif name in ("transfer", "fusion"):
            dim = next(iter(features.values())).shape[1]
            model = mixed.build_head("image" if name == "transfer" else "fusion",
                                     tabular["train"].shape[1], rooms, dim)
            started_from = f"{profile.mixed_backbone} {weights_label}, frozen"
        else:  # frozen_fusion, from the saved files
            reloaded = {m: load_model(run.paths[m][".keras"]) for m in ("mlp", "transfer")}
            model = mixed.frozen_fusion(reloaded["mlp"], reloaded["transfer"], rooms)
            started_from = "saved mlp + transfer, branches frozen"
        photos = small if name == "cnn" else None
        split_inputs = {s: inputs_for(name, s, photos) for s in SPLITS}
        folder = RunFolder(dirs.checkpoints / f"{dataset}-{name}")
        epochs = profile.mixed_cnn_epochs if name == "cnn" else profile.mixed_epochs
        folder.write_args({
            "model": name, "dataset": dataset, "rows": {s: len(index[s]) for s in SPLITS},
            "epochs": epochs, "learning_rate": profile.mixed_learning_rate,
            "batch_size": profile.mixed_batch_size, "patience": profile.mixed_patience,
            "seed": seed, "started_from": started_from, "target": run.scaler.config(),
            "dropped_columns": copies})
        history = fit_regressor(model, (split_inputs["train"], y["train"]),
                                (split_inputs["val"], y["val"]), folder, epochs,
                                profile.mixed_learning_rate, profile.mixed_batch_size,
                                profile.mixed_patience, seed)
        run.histories[name] = history
        run.predictions[name] = {s: _predict(model, split_inputs[s], run.scaler) for s in SPLITS}
        saved = model
        saved_inputs = split_inputs["test"]
        if name in ("transfer", "fusion", "frozen_fusion"):
            saved = mixed.with_encoder(model, encoder, rooms, name=name)
            saved_inputs = inputs_for(name, "test", run.photos)
        run.info[name] = {
            "inputs": " + ".join(p for p, used in (("tabular", mixed.uses_tabular(name)),
                                                    ("photos", mixed.uses_photos(name))) if used),
            "started from": started_from, "epochs": len(history),
            "seconds": round(time.perf_counter() - start, 1),
            "params": int(saved.count_params())}
        metadata = {"task": "regression", "dataset": dataset, "inputs": list(saved_inputs),
                    "target": spec.target, "target_transform": run.scaler.config(),
                    "preprocessor": f"{dataset}-preprocessor.joblib",
                    "features": list(spec.features), "started_from": started_from}
        if mixed.uses_photos(name):
            metadata["image_size"] = int(saved.inputs[-1].shape[1])
        run.paths[name] = _save_and_check(saved, saved_inputs, name, run, dirs, metadata)
        trained[name] = saved
        if verbose:
            val = regression_metrics(data.target("val"), run.predictions[name]["val"],
                                     n_resamples=200)
            print(f"{name}: {len(history)} epochs in {run.info[name]['seconds']:.0f} s, "
                  f"val MAPE {val['MAPE %']:.1f}%, saved as "
                  f"{display_path(run.paths[name]['.h5'])} (reloaded: same predictions)")
    return run


def train_course_recipe(data_dir: str | os.PathLike, profile: Profile | str = "cpu",
                        dirs: ProjectDirs | None = None, seed: int = 42) -> dict:
    """The course project's Airbnb setup, measured: our MLP on the course's own CSVs.

    The course imputed ``train_data.csv`` and ``test_data.csv`` separately and kept
    ``weekly_price`` and ``monthly_price``, near-copies of the target. This fits the same
    :func:`cnnlab.tabular.models.build_head` ``mlp`` as :func:`train_mixed` (standardised
    columns, log-price target, early stopping on the same validation share) on those files,
    so the gap to ``train_mixed("airbnb")`` is what the leak and the imputation were worth.

    Args:
        data_dir: Folder of the course CSVs (``train_data.csv``, ``test_data.csv``).
        profile: Epochs and rates.
        dirs: Project folders (run folder ``checkpoints/airbnb-course_mlp/``).
        seed: Seed of the validation split and the fit.

    Returns:
        ``regression_metrics`` of the 250 course test listings, plus ``"columns"`` used.
    """
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    from cnnlab.tabular.airbnb import TARGET, read_course_csv

    dirs = (dirs or project_dirs()).create()
    profile = get_profile(profile) if isinstance(profile, str) else profile
    folder = Path(data_dir)
    train = read_course_csv(folder / "train_data.csv")
    test = read_course_csv(folder / "test_data.csv")
    columns = [c for c in train.columns if c != TARGET]
    fit_rows, val_rows = train_test_split(train.index, test_size=0.15, random_state=seed)
    scale = StandardScaler().fit(train.loc[fit_rows, columns])
    scaler = TargetScaler(train.loc[fit_rows, TARGET].to_numpy())
    x = {name: {"tabular": scale.transform(rows[columns]).astype(np.float32)}
         for name, rows in (("fit", train.loc[fit_rows]), ("val", train.loc[val_rows]),
                            ("test", test))}
    y = {name: scaler.transform(rows[TARGET].to_numpy())
         for name, rows in (("fit", train.loc[fit_rows]), ("val", train.loc[val_rows]))}
    model = mixed.build_head("mlp", len(columns), (), None)
    fit_regressor(model, (x["fit"], y["fit"]), (x["val"], y["val"]),
                  RunFolder(dirs.checkpoints / "airbnb-course_mlp"), profile.mixed_epochs,
                  profile.mixed_learning_rate, profile.mixed_batch_size,
                  profile.mixed_patience, seed)
    predicted = _predict(model, x["test"], scaler)
    return {**regression_metrics(test[TARGET].to_numpy(), predicted), "columns": columns}
