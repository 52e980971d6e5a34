"""tf.data input pipelines: decode, resize, cache, shuffle, augment, batch, prefetch.

Images leave the pipeline as ``(batch, size, size, 3)`` float32 RGB in ``[0, 255]``; every
model does its own rescaling inside, so one pipeline serves all of them. Decoding runs in
parallel (``num_parallel_calls=AUTOTUNE``) and the resized images are cached after the first
epoch, so later epochs never decode a JPEG again (the course projects decoded full-size photos
every epoch). No ``ImageDataGenerator``: it is deprecated and single-threaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from PIL import Image, ImageOps

AUTOTUNE = tf.data.AUTOTUNE
MEMORY_CACHE_LIMIT_BYTES = 4 * 1024**3


def decode_resize(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """Reads and decodes one image file (JPEG, PNG, BMP, GIF) and resizes it.

    Grayscale, palette and RGBA files become 3-channel RGB (alpha is dropped). The resize is
    bilinear with antialiasing and does not keep the aspect ratio (as
    ``keras.utils.image_dataset_from_directory`` does by default).

    Args:
        path: Scalar string tensor, the file path.
        image_size: Output side in pixels.

    Returns:
        ``(image_size, image_size, 3)`` float32 in ``[0, 255]``.
    """
    data = tf.io.read_file(path)
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


def augmentation_layers(hflip: bool = True, seed: int | None = None) -> keras.Sequential:
    """Light train-time augmentation with Keras preprocessing layers.

    Args:
        hflip: Add random horizontal flips (off for data where mirroring changes meaning,
            e.g. the corner indices of playing cards).
        seed: Seed of the random layers.

    Returns:
        A model mapping ``(batch, h, w, 3)`` float32 in ``[0, 255]`` to the same.
    """
    steps = [keras.layers.RandomFlip("horizontal", seed=seed)] if hflip else []
    steps += [
        keras.layers.RandomRotation(0.05, fill_mode="reflect", seed=seed),
        keras.layers.RandomZoom(0.1, fill_mode="reflect", seed=seed),
        keras.layers.RandomTranslation(0.05, 0.05, fill_mode="reflect", seed=seed),
    ]
    return keras.Sequential(steps, name="augmentation")


def make_dataset(
    files: list[str] | pd.Series,
    labels: list[int] | np.ndarray | pd.Series,
    image_size: int,
    batch_size: int = 32,
    shuffle: bool = False,
    augment: keras.Model | None = None,
    cache: str | bool = "auto",
    seed: int = 0,
) -> tf.data.Dataset:
    """Builds a batched pipeline over image files.

    Order: files -> decode + resize (parallel) -> cache -> shuffle -> batch -> augment ->
    prefetch. Augmentation runs after the cache so every epoch sees new variants.

    Args:
        files: Image paths.
        labels: Integer class indices, one per file.
        image_size: Output side in pixels.
        batch_size: Images per batch.
        shuffle: Reshuffle every epoch (training).
        augment: Augmentation model applied to batches (training only), or None.
        cache: ``"auto"`` (memory if the decoded split fits in 4 GiB, else no cache),
            ``True``/``"memory"``, ``False``, or a file path prefix for a disk cache.
        seed: Shuffle seed.

    Returns:
        ``tf.data.Dataset`` of ``(images, labels)``: ``(batch, size, size, 3)`` float32 in
        ``[0, 255]`` and ``(batch,)`` int32.

    Raises:
        ValueError: If ``files`` is empty or ``labels`` has another length.
    """
    files = [str(f) for f in files]
    labels = np.asarray(labels, dtype=np.int32)
    if not files:
        raise ValueError("no image files given; check the manifest split")
    if len(files) != len(labels):
        raise ValueError(f"{len(files)} files but {len(labels)} labels")
    ds = tf.data.Dataset.from_tensor_slices((files, labels))
    ds = ds.map(lambda f, y: (decode_resize(f, image_size), y), num_parallel_calls=AUTOTUNE)
    if cache == "auto":
        cache = len(files) * image_size * image_size * 3 * 4 <= MEMORY_CACHE_LIMIT_BYTES
    if cache is True or cache == "memory":
        ds = ds.cache()
    elif isinstance(cache, (str, os.PathLike)) and cache:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        ds = ds.cache(str(cache))
    if shuffle:
        ds = ds.shuffle(min(len(files), 10_000), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if augment is not None:
        ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def split_dataset(
    rows: pd.DataFrame,
    image_size: int,
    batch_size: int = 32,
    training: bool = False,
    hflip: bool = True,
    seed: int = 0,
) -> tf.data.Dataset:
    """A pipeline over one manifest split (``Manifest.split`` rows).

    Args:
        rows: Rows with ``file`` and ``label_index`` columns.
        image_size: Output side in pixels.
        batch_size: Images per batch.
        training: Shuffle and augment (train split) or keep order (val/test).
        hflip: Whether augmentation may flip horizontally.
        seed: Shuffle and augmentation seed.

    Returns:
        See :func:`make_dataset`.
    """
    augment = augmentation_layers(hflip, seed) if training else None
    return make_dataset(rows["file"], rows["label_index"], image_size, batch_size,
                        shuffle=training, augment=augment, seed=seed)


def load_image(path: str | os.PathLike, image_size: int | None = None) -> np.ndarray:
    """Loads any image Pillow reads, as a deployed model receives it.

    Honours the EXIF orientation of photos, converts every mode (grayscale, palette, RGBA,
    CMYK, 16-bit) to 8-bit RGB, and optionally resizes like :func:`decode_resize`.

    Args:
        path: Image file of any size and format Pillow supports (JPEG, PNG, WebP, TIFF, ...).
        image_size: Output side in pixels, or None to keep the original size.

    Returns:
        ``(h, w, 3)`` float32 RGB in ``[0, 255]``.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not a readable image; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(image, dtype=np.float32)
                image = Image.fromarray((array / max(array.max(), 1) * 255).astype(np.uint8))
            rgb = image.convert("RGB")
    except Exception as error:
        raise ValueError(f"{path} is not a readable image ({error}); use a JPEG, PNG, BMP, "
                         f"GIF, WebP or TIFF file") from error
    array = np.asarray(rgb, dtype=np.float32)
    if image_size is not None:
        array = tf.image.resize(array, (image_size, image_size), antialias=True).numpy()
    return np.clip(array, 0, 255)
