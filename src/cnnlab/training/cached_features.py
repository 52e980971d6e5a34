"""Cached backbone features: the frozen stage of fine-tuning without running the backbone.

While the backbone is frozen (stage 1 of :func:`~cnnlab.training.fine_tune`), its output for an
image never changes, so the pooled features are computed once, written to disk and the head
is trained on them: the same head layers (shared with the full model, so the trained head is
already in place), the same loss and optimiser, but each epoch costs a matrix product instead
of a forward pass through the backbone (the idea of fastai's and Keras' "extract features,
then train a classifier" recipe, https://keras.io/guides/transfer_learning/).

Cache layout: ``data/<dataset>/features/<backbone>-<size>px-<weights>/<split>-<rows>.npz``
where ``<weights>`` is a fingerprint of the backbone's weights (and dtype policy) and of the
image decoder (:data:`cnnlab.data.images.DECODER_VERSION`), and ``<rows>`` one of the split's
rows as the pipeline reads them (:func:`split_fingerprint`: absolute file, so the dataset root
and the converted copy, label index and the file's content), so a different backbone, image
size, weights file, split or copy of the dataset (same file names, other bytes or another
root: a re-download with corrected labels, a cleaned copy) never reads stale features. Files
are written to a temporary name and renamed.

Features come from un-augmented images: augmentation needs live images, so a stage trained on
cached features runs without it (:func:`~cnnlab.training.fine_tune` says so when it uses the cache).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from cnnlab.config import display_path
from cnnlab.data.images import DECODER_VERSION
from cnnlab.files import atomic_path, write_json

POOL_LAYER = "pool"


def split_fingerprint(rows: pd.DataFrame) -> str:
    """Short sha256 of a split's rows as read: file, label and content of each, in order.

    The key of cached features (:class:`FeatureCache`), of saved predictions
    (:func:`cnnlab.evaluation.predictions.split_predictions`) and of a run's rows
    (``args.yaml``). Each row contributes its absolute ``file`` (under the dataset root, or the
    converted copy where there is one), its ``label_index`` and its content: the manifest's
    ``sha256`` of the image where the rows have that column, else the file's size and the
    sha256 of its bytes, read now. So another copy of a dataset with the same file names
    (other bytes, or the same bytes under another root) has another fingerprint.

    Args:
        rows: ``Manifest.split`` rows: ``file`` and ``label_index`` columns, and ``sha256``
            where they come from a manifest (rows built by hand may leave it out or empty).

    Returns:
        12 hex digits; equal for the same files, contents and labels in the same order.

    Raises:
        FileNotFoundError: If a row without a ``sha256`` names a file that does not exist.
    """
    hashes = (rows["sha256"].fillna("").astype(str) if "sha256" in rows
              else pd.Series("", index=rows.index))
    digest = hashlib.sha256()
    for file, label, sha256 in zip(rows["file"].astype(str), rows["label_index"].astype(int),
                                   hashes, strict=True):
        content = f"sha256 {sha256}" if sha256 else _file_content(file)
        digest.update(f"{file}\t{label}\t{content}\n".encode())
    return digest.hexdigest()[:12]


def _file_content(file: str) -> str:
    """Size and sha256 of a file's bytes, for rows without the manifest's ``sha256``."""
    digest = hashlib.sha256()
    try:
        with open(file, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{display_path(file)} is in the split but does not exist; rebuild the manifest "
            f"(notebook 01_download_eda) or fix the rows' file column") from None
    return f"{size} bytes sha256 {digest.hexdigest()}"


def weights_fingerprint(model: keras.Model) -> str:
    """Short sha256 of a model's weights and dtype policy (what its output depends on)."""
    digest = hashlib.sha256()
    for layer in model.layers:
        digest.update(f"{layer.name}:{layer.dtype_policy.name}\n".encode())
    for weight in model.weights:
        digest.update(weight.path.encode())
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()[:12]


def _pool_index(model: keras.Model) -> int:
    names = [layer.name for layer in model.layers]
    if POOL_LAYER not in names:
        raise ValueError(
            f"{model.name} has no layer named {POOL_LAYER!r} between backbone and head; "
            f"build it with models.build_transfer_model or train without the feature cache")
    return names.index(POOL_LAYER)


def feature_extractor(model: keras.Model) -> keras.Model:
    """The part of a transfer model up to the pooled features (preprocessing + backbone + GAP).

    Args:
        model: A model from ``models.build_transfer_model``.

    Returns:
        ``(batch, size, size, 3)`` float32 RGB in ``[0, 255]`` -> ``(batch, channels)``
        pooled backbone features. It shares the model's layers (no copy).

    Raises:
        ValueError: If the model has no ``pool`` layer.
    """
    _pool_index(model)
    return keras.Model(model.inputs, model.get_layer(POOL_LAYER).output,
                       name=f"{model.name}_features")


def head_model(model: keras.Model) -> keras.Model:
    """The head of a transfer model as its own model on pooled features.

    The layers after ``pool`` (dropout, dense softmax) are the model's own layer objects, so
    training this model trains the full model's head.

    Returns:
        ``(batch, channels)`` float32 features -> ``(batch, classes)`` float32 probabilities.

    Raises:
        ValueError: If the model has no ``pool`` layer.
    """
    index = _pool_index(model)
    channels = model.get_layer(POOL_LAYER).output.shape[-1]
    inputs = keras.Input((channels,), name="features")
    x = inputs
    for layer in model.layers[index + 1:]:
        x = layer(x)
    return keras.Model(inputs, x, name=f"{model.name}_head")


@dataclass(frozen=True)
class FeatureCache:
    """Where the features of one backbone, image size and weights live.

    Attributes:
        folder: ``data/<dataset>/features/<backbone>-<size>px-<weights>/``.
        extractor: The feature extractor (see :func:`feature_extractor`).
        image_size: Input side in pixels.
    """

    folder: Path
    extractor: keras.Model
    image_size: int

    def path(self, split: str, rows: pd.DataFrame) -> Path:
        """The file of ``split`` with exactly these rows: files, labels and contents.

        Args:
            split: Split name.
            rows: ``Manifest.split`` rows (see :func:`split_fingerprint`).

        Returns:
            ``<folder>/<split>-<split_fingerprint(rows)>.npz``.
        """
        return self.folder / f"{split}-{split_fingerprint(rows)}.npz"

    def features(self, split: str, rows: pd.DataFrame, batch_size: int = 64
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Features and labels of a split: read from the cache, or computed and cached.

        Args:
            split: Split name, for the file name and the message.
            rows: ``Manifest.split`` rows (``file``, ``path``, ``label_index``).
            batch_size: Images per forward pass when computing.

        Returns:
            ``(features, labels)``: ``(n, channels)`` float32 and ``(n,)`` int32, in the
            order of ``rows``.
        """
        path = self.path(split, rows)
        labels = rows["label_index"].to_numpy(dtype=np.int32)
        if path.is_file():
            with np.load(path) as stored:
                features, cached_labels = stored["features"], stored["labels"]
            if len(features) == len(rows) and np.array_equal(cached_labels, labels):
                print(f"{split}: {len(rows)} feature vectors read from "
                      f"{display_path(path.parent)}/")
                return features, labels
        from cnnlab.data.pipeline import make_dataset

        images = make_dataset(rows["file"], labels, self.image_size, batch_size, cache=False)
        start = time.perf_counter()
        features = self.extractor.predict(images.map(lambda x, y: x), verbose=0)
        seconds = time.perf_counter() - start
        features = np.asarray(features, dtype=np.float32)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:  # np.savez would append .npz to the temp name
                np.savez(handle, features=features, labels=labels)
        write_json(self.folder / "info.json", {
            "backbone": self.extractor.name.removesuffix("_features"),
            "image_size": self.image_size, "channels": int(features.shape[1]),
            "dtype_policy": self.extractor.dtype_policy.name, "keras": keras.__version__,
            "tensorflow": tf.__version__})
        print(f"{split}: {len(rows)} feature vectors computed in {seconds:.1f} s "
              f"({len(rows) / max(seconds, 1e-9):.0f} img/s), cached under "
              f"{display_path(path.parent.parent)}/")  # the folder, not its fingerprint
        return features, labels


def feature_cache(model: keras.Model, dataset: str, image_size: int,
                  data_dir: str | os.PathLike) -> FeatureCache:
    """The feature cache of a transfer model's (frozen) backbone.

    Args:
        model: A model from ``models.build_transfer_model`` (its name is the backbone's).
        dataset: Dataset name (the cache lives beside its manifest).
        image_size: Input side in pixels.
        data_dir: The project's ``data/`` folder.

    Returns:
        The cache; its folder name carries backbone, image size and weights fingerprint.

    Raises:
        ValueError: If the model has no ``pool`` layer.
    """
    extractor = feature_extractor(model)
    key = hashlib.sha256(f"{weights_fingerprint(extractor)}-{DECODER_VERSION}".encode()
                         ).hexdigest()[:12]
    folder = Path(data_dir) / dataset / "features" / f"{model.name}-{image_size}px-{key}"
    return FeatureCache(folder, extractor, image_size)


def features_dataset(features: np.ndarray, labels: np.ndarray, batch_size: int,
                     shuffle: bool = False, seed: int = 0) -> tf.data.Dataset:
    """Batches of cached features for the head, reshuffled every epoch when ``shuffle``.

    Returns:
        ``tf.data.Dataset`` of ``((batch, channels) float32, (batch,) int32)``.
    """
    ds = tf.data.Dataset.from_tensor_slices((features, labels))
    if shuffle:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
