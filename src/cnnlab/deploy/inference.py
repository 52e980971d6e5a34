"""Classifying new image files with a saved model, as a deployed model is used."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cnnlab.data.pipeline import load_image
from cnnlab.deploy.export import load_metadata, load_model


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
        """Loads ``models/<name>.h5`` or ``.keras`` and its ``<name>.json`` sidecar.

        Raises:
            FileNotFoundError: If the model or its sidecar is missing.
        """
        path = Path(path)
        model = load_model(path)
        meta = load_metadata(path)
        return cls(model, list(meta["class_names"]), int(model.input_shape[1]),
                   meta.get("model", path.stem))

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

    Each picked image is written in another form: a 3x larger PNG, a grayscale JPEG, an RGBA
    PNG, and a WebP turned 90 degrees with an EXIF orientation tag that undoes the turn.

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
        image = Image.open(source).convert("RGB")
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


def best_validation_accuracy(model_file: str | os.PathLike,
                             checkpoints_dir: str | os.PathLike) -> float | None:
    """The best ``val_accuracy`` of the run that trained ``model_file``, or None.

    Reads the model's JSON sidecar (``run_folder``) and that run's ``history.csv``.
    """
    sidecar = Path(model_file).with_suffix(".json")
    if not sidecar.is_file():
        return None
    run = json.loads(sidecar.read_text()).get("run_folder")
    history = Path(checkpoints_dir) / str(run) / "history.csv"
    if not run or not history.is_file():
        return None
    values = pd.read_csv(history).get("val_accuracy")
    return None if values is None or values.isna().all() else float(values.max())


def choose_model(models_dir: str | os.PathLike, reports_dir: str | os.PathLike,
                 dataset: str, name: str | None = None,
                 checkpoints_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The ``.h5`` model to deploy for ``dataset`` and why it was chosen.

    Model selection reads the validation split only (each run's best ``val_accuracy``), so
    the test split stays untouched until the report; choosing by test accuracy would make
    the reported test score optimistic.

    Args:
        models_dir: The ``models/`` folder.
        reports_dir: The ``reports/`` folder (not read for the choice; kept for callers).
        dataset: Dataset name (model files are ``<dataset>-<model>.h5``).
        name: A model name to use as is.
        checkpoints_dir: The ``checkpoints/`` folder (default: beside ``models_dir``).

    Returns:
        ``(path, reason)``: the model whose run reached the best validation accuracy, else
        (no run folder with validation history) the most recently saved one.

    Raises:
        FileNotFoundError: If no model of ``dataset`` exists (train one in 02 or 03).
    """
    models_dir = Path(models_dir)
    if name:
        return models_dir / f"{dataset}-{name}.h5", "chosen by the model_name parameter"
    checkpoints_dir = Path(checkpoints_dir) if checkpoints_dir else models_dir.parent / \
        "checkpoints"
    saved = sorted(models_dir.glob(f"{dataset}-*.h5"), key=lambda p: p.stat().st_mtime)
    if not saved:
        raise FileNotFoundError(f"no {dataset}-*.h5 model in models/; train one with notebook "
                                f"02 or 03 first")
    scored = [(value, path) for path in saved
              if (value := best_validation_accuracy(path, checkpoints_dir)) is not None]
    if scored:
        value, path = max(scored, key=lambda item: item[0])
        return path, (f"best validation accuracy of {len(scored)} model(s) ({value:.3f}, from "
                      f"its run's history.csv; the test split is not used to choose)")
    return saved[-1], "most recently saved (no run folder with validation accuracy)"
