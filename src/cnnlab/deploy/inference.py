"""Classifying new image files with a saved model, as a deployed model is used."""

from __future__ import annotations

import os
from collections.abc import Iterable
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

# Columns of Classifier.predict_files, one row per file and rank (one per unreadable file).
PREDICTION_COLUMNS = ("file", "rank", "class", "probability", "error")
# Images per model call in Classifier.predict_files: a batch of 224 px float32 inputs is 19 MB.
PREDICT_BATCH = 32


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

    def predict_files(self, files: Iterable[str | os.PathLike], top_k: int = 3,
                      errors: str = "report", batch_size: int = PREDICT_BATCH
                      ) -> pd.DataFrame:
        """Top-k classes with probabilities for image files of any size and format.

        Files are decoded one at a time (:func:`cnnlab.data.images.load_image`, the decode of
        training) and classified ``batch_size`` at a time, so thousands of photos never sit in
        memory at once. A folder of a user's own photos often holds a few files that are no
        image (an empty download, a web page saved as ``.jpg``, an SVG, a cut-off copy): with
        ``errors="report"`` each gets one row saying why and every other file is classified.

        Args:
            files: Image paths (JPEG, PNG, WebP, TIFF, ... any mode; EXIF rotation honoured).
            top_k: Classes per image.
            errors: ``"report"``: one row per unreadable file, with the reason in ``error``;
                ``"raise"``: raise at the first unreadable file.
            batch_size: Images per model call.

        Returns:
            A DataFrame in the order of ``files``, columns ``file`` (``str`` of the path as
            given, so ``a/1.jpg`` and ``b/1.jpg`` stay apart), ``rank`` (Int64, 1 to
            ``top_k``), ``class``, ``probability`` (float64) and ``error`` (str): ``top_k``
            rows per readable file with an empty ``error``; one row per unreadable file with
            ``rank``, ``class`` and ``probability`` missing (NA) and the reason in ``error``,
            the reading error's message without the leading path (e.g. ``"is a folder, not an
            image file; ..."``, ``"does not exist; ..."``, ``"is a decompression bomb: ..."``).

        Raises:
            ValueError: If ``errors`` or ``batch_size`` is invalid; with ``errors="raise"``,
                if a file is not a readable image (the message names it and says what it is).
            FileNotFoundError: With ``errors="raise"``, if a file does not exist.
        """
        if errors not in ("report", "raise"):
            raise ValueError(f"errors={errors!r}; use 'report' or 'raise'")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; use 1 or more")
        names = [str(f) for f in files]
        rows: list[list[dict]] = [[] for _ in names]
        batch: list[tuple[int, np.ndarray]] = []
        for index, name in enumerate(names):
            try:
                batch.append((index, load_image(name, self.image_size)))
            except (FileNotFoundError, ValueError) as error:
                if errors == "raise":
                    raise
                rows[index] = [{"file": name, "rank": None, "class": None,
                                "probability": np.nan, "error": _reason(name, error)}]
            if len(batch) == batch_size:
                self._predict_batch(batch, names, rows, top_k)
                batch = []
        if batch:
            self._predict_batch(batch, names, rows, top_k)
        table = pd.DataFrame([row for file_rows in rows for row in file_rows],
                             columns=list(PREDICTION_COLUMNS))
        return table.astype({"rank": "Int64", "probability": "float64"})

    def _predict_batch(self, batch: list[tuple[int, np.ndarray]], names: list[str],
                       rows: list[list[dict]], top_k: int) -> None:
        """Classifies ``(index, image)`` pairs and puts each file's top-k rows at its index."""
        probs = np.asarray(self.model.predict_on_batch(np.stack([image for _, image in batch])))
        for (index, _), p in zip(batch, probs):
            rows[index] = [{"file": names[index], "rank": rank, "class": self.class_names[k],
                            "probability": float(p[k]), "error": ""}
                           for rank, k in enumerate(np.argsort(p)[::-1][:top_k], start=1)]


def _reason(name: str, error: Exception) -> str:
    """The error's message without the leading path (the ``file`` column already names it)."""
    message = str(error)
    for prefix in (f"{name} ", f"{Path(name)} "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


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


def pick_files(folder: str | os.PathLike, pattern: str = "*", count: int = 6,
               seed: int = 0) -> list[Path]:
    """Up to ``count`` files of ``folder`` matching ``pattern``, picked at random by ``seed``.

    For classifying photos from outside the dataset (e.g. the Houses dataset's
    ``*_frontal.jpg`` photos for a weather model): the pick is the same on every run with the
    same seed, and returned sorted by name.

    Args:
        folder: A folder of files (not searched recursively).
        pattern: ``glob`` pattern of the files to consider.
        count: Most files returned.
        seed: Sampling seed.

    Raises:
        FileNotFoundError: If ``folder`` is not a folder or holds no file matching
            ``pattern`` (the message names both).
    """
    import random

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; set images_dir to a folder of "
                                f"photos")
    files = sorted(p for p in folder.glob(pattern) if p.is_file())
    if not files:
        raise FileNotFoundError(f"no file in {folder} matches {pattern!r}; set images_glob "
                                f"to a pattern of its files (e.g. '*.jpg')")
    return sorted(random.Random(seed).sample(files, min(count, len(files))))


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
