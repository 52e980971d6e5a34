"""Classifying new image files with a saved model, as a deployed model is used."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cnnlab.data.images import load_image, read_image
from cnnlab.deploy.export import (
    MODEL_FILES,
    list_models,
    load_metadata,
    load_model,
    model_name,
)


@dataclass
class Classifier:
    """A saved model with its class names and input size.

    Attributes:
        model: The Keras model.
        class_names: Names in index order (from the model's JSON sidecar).
        image_size: Input side in pixels.
        name: Model name.
    """

    model: object
    class_names: list[str]
    image_size: int
    name: str

    @classmethod
    def load(cls, path: str | os.PathLike) -> Classifier:
        """Loads a saved model: its folder ``models/<name>/`` or its ``model.h5``/``.keras``.

        Raises:
            FileNotFoundError: If the model or its ``meta.json`` is missing.
        """
        path = Path(path)
        model = load_model(path)
        meta = load_metadata(path)
        return cls(model, list(meta["class_names"]), int(model.input_shape[1]),
                   meta.get("model", model_name(path)))

    def predict_files(self, files, top_k: int = 3) -> pd.DataFrame:
        """Top-k classes with probabilities for image files of any size and format.

        Args:
            files: Image paths (JPEG, PNG, WebP, TIFF, ... any mode; EXIF rotation honoured).
            top_k: Classes per image.

        Returns:
            One row per file and rank: file, rank, class, probability.

        Raises:
            ValueError: If a file is not a readable image (the message names it).
        """
        files = [Path(f) for f in files]
        batch = np.stack([load_image(f, self.image_size) for f in files])
        probs = np.asarray(self.model.predict(batch, verbose=0))
        top_k = min(top_k, probs.shape[1])
        rows = []
        for file, p in zip(files, probs):
            for rank, index in enumerate(np.argsort(p)[::-1][:top_k], start=1):
                rows.append({"file": file.name, "rank": rank,
                             "class": self.class_names[index], "probability": float(p[index])})
        return pd.DataFrame(rows)


def demo_images(rows: pd.DataFrame, out_dir: str | os.PathLike, count: int = 4,
                seed: int = 0) -> list[Path]:
    """Copies test images into the shapes a deployed model meets, as new files.

    Each picked image is read as training reads it (:func:`cnnlab.data.images.read_image`:
    upright, 8-bit RGB, so a 16-bit or rotated source comes out right) and written in another
    form: a 3x larger PNG, a grayscale JPEG, an RGBA PNG, and a WebP turned 90 degrees with an
    EXIF orientation tag that undoes the turn.

    Args:
        rows: Split rows with a ``file`` column.
        out_dir: Destination folder.
        count: Images to write (at most 4 forms, cycled).
        seed: Sampling seed.

    Returns:
        The written files.
    """
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    picks = rows.sample(min(count, len(rows)), random_state=seed)["file"].tolist()
    written = []
    for index, source in enumerate(picks):
        image = Image.fromarray(read_image(source))
        stem = f"new_{index + 1}_{Path(source).parent.name.replace(' ', '_')}"
        form = index % 4
        if form == 0:
            path = out_dir / f"{stem}_large.png"
            image.resize((image.width * 3, image.height * 3)).save(path)
        elif form == 1:
            path = out_dir / f"{stem}_gray.jpg"
            image.convert("L").save(path, quality=90)
        elif form == 2:
            path = out_dir / f"{stem}_rgba.png"
            image.convert("RGBA").save(path)
        else:
            path = out_dir / f"{stem}_exif_rotated.webp"
            exif = Image.Exif()
            exif[0x0112] = 6  # orientation: rotate 90 CW to display
            image.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)
        written.append(path)
    return written


def best_validation_accuracy(model: str | os.PathLike,
                             checkpoints_dir: str | os.PathLike) -> float | None:
    """The best ``val_accuracy`` in the history of the run that trained ``model``, or None.

    Reads the model's ``meta.json`` (``run_folder``) and that run's ``history.csv``.
    """
    try:
        run = load_metadata(model).get("run_folder")
    except FileNotFoundError:
        return None
    history = Path(checkpoints_dir) / str(run) / "history.csv"
    if not run or not history.is_file():
        return None
    values = pd.read_csv(history).get("val_accuracy")
    return None if values is None or values.isna().all() else float(values.max())


def choose_model(models_dir: str | os.PathLike, reports_dir: str | os.PathLike,
                 dataset: str, name: str | None = None,
                 checkpoints_dir: str | os.PathLike | None = None,
                 val_rows: pd.DataFrame | None = None, class_names: list[str] | None = None,
                 batch_size: int = 32) -> tuple[Path, str]:
    """The ``.h5`` model to deploy for ``dataset`` and why it was chosen.

    Model selection reads the validation split only, so the test split stays untouched until
    the report; choosing by test accuracy would make the reported test score optimistic. With
    ``val_rows``, every saved model of ``dataset`` trained on ``class_names`` is scored on
    the whole validation split through its saved predictions
    (``models/<name>/predictions/val.npz``, computed once); without them, by the best
    ``val_accuracy`` of its run's ``history.csv``.

    Args:
        models_dir: The ``models/`` folder.
        reports_dir: The ``reports/`` folder (not read for the choice; kept for callers).
        dataset: Dataset name (model folders are ``models/<dataset>-<model>/``).
        name: A model name to use as is.
        checkpoints_dir: The ``checkpoints/`` folder (default: beside ``models_dir``).
        val_rows: The validation split's rows (``Manifest.split("val")``).
        class_names: The split's class names in label-index order (with ``val_rows``).
        batch_size: Images per prediction batch.

    Returns:
        ``(path, reason)``: ``models/<name>/model.h5`` of the model with the best validation
        accuracy, else (nothing to score it by) the most recently saved one.

    Raises:
        FileNotFoundError: If no model of ``dataset`` exists (train one in 02 or 03).
    """
    from cnnlab.evaluation.predictions import ClassMismatchError, split_predictions

    models_dir = Path(models_dir)
    if name:
        return models_dir / f"{dataset}-{name}" / MODEL_FILES[".h5"], \
            "chosen by the model_name parameter"
    checkpoints_dir = Path(checkpoints_dir) if checkpoints_dir else models_dir.parent / \
        "checkpoints"
    saved = sorted(list_models(models_dir, f"{dataset}-"),
                   key=lambda p: (p / MODEL_FILES[".keras"]).stat().st_mtime)
    if not saved:
        raise FileNotFoundError(f"no {dataset}-* model in models/; train one with notebook "
                                f"02 or 03 first")
    if val_rows is not None and class_names is not None and len(val_rows):
        scored = []
        for folder in saved:
            try:
                predictions = split_predictions(folder, "val", val_rows, class_names,
                                                batch_size)
            except ClassMismatchError:
                continue
            scored.append((float((predictions.y_pred == predictions.y_true).mean()), folder))
        source = (f"on the whole validation split ({len(val_rows)} images, saved "
                  f"predictions)")
    else:
        scored = [(value, folder) for folder in saved
                  if (value := best_validation_accuracy(folder, checkpoints_dir)) is not None]
        source = "from its run's history.csv"
    if scored:
        value, folder = max(scored, key=lambda item: item[0])
        return folder / MODEL_FILES[".h5"], (
            f"best validation accuracy of {len(scored)} model(s) ({value:.3f}, {source}; the "
            f"test split is not used to choose)")
    return saved[-1] / MODEL_FILES[".h5"], \
        "most recently saved (no validation accuracy to choose by)"
