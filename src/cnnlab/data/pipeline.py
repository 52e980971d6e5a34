"""tf.data input pipelines: decode, resize, cache, shuffle, augment, batch, prefetch.

Images leave the pipeline as ``(batch, size, size, 3)`` uint8 RGB in ``[0, 255]`` (float32 in
``[0, 255]`` after train-time augmentation); every model casts and rescales inside, so one
pipeline serves all of them, the cache holds 1 byte per pixel instead of 4, and on a GPU the
cast runs on the device, as timm's ``PrefetchLoader`` and NVIDIA DALI do. Decoding runs in
parallel (``num_parallel_calls=AUTOTUNE``); JPEGs are decoded at 1/2, 1/4 or 1/8 scale through
libjpeg's DCT scaling when that still gives at least the output size (``dct_scaling``); images
already at the output size are not resampled; and the decoded images are cached after the
first epoch, so later epochs never decode a JPEG again (the course projects decoded full-size
photos every epoch). No ``ImageDataGenerator``: it is deprecated and single-threaded.

The decoding rules (which files are read as they are, the 16-bit and mode conversions, the
libjpeg scale, the resize) are those of :mod:`cnnlab.data.images`; JPEGs are decoded with the
accurate integer IDCT, so this decoder and :func:`cnnlab.data.images.read_image` (inference,
Grad-CAM, segmentation) return the same array for every file a manifest lists.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from cnnlab.data.images import (
    DCT_RATIOS,
    DECODER_VERSION,
    jpeg_scale,
    resize_square,
    resize_uint8,
)
from cnnlab.data.images import load_image as load_image  # re-exported: callers import it here

AUTOTUNE = tf.data.AUTOTUNE
MEMORY_CACHE_LIMIT_BYTES = 4 * 1024**3
# libjpeg's accurate integer IDCT, Pillow's default; TensorFlow's own default (INTEGER_FAST)
# differs from it by up to 4 levels and is barely faster with libjpeg-turbo's SIMD (0.40 vs
# 0.43 ms per 224-px card on this CPU; decoded once, then cached).
DCT_METHOD = "INTEGER_ACCURATE"


def _decode_jpeg_scaled(data: tf.Tensor, image_size: int, dct_scaling: float) -> tf.Tensor:
    shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.float32)
    shorter = tf.minimum(shape[0], shape[1])
    larger_ratios = tf.constant(DCT_RATIOS[1:], tf.float32)
    # Index of the largest ratio r with shorter / r >= dct_scaling * image_size.
    index = tf.reduce_sum(tf.cast(shorter / larger_ratios >= dct_scaling * image_size, tf.int32))
    return tf.switch_case(index, [
        (lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r, dct_method=DCT_METHOD))
        for r in DCT_RATIOS])


def decode_resize(path: tf.Tensor, image_size: int, dct_scaling: float | None = 1.0) -> tf.Tensor:
    """Reads and decodes one image file (JPEG, PNG, BMP, GIF) and resizes it.

    Grayscale, palette, RGBA, CMYK and 16-bit files become 8-bit RGB (alpha is dropped, 16-bit
    samples keep their high byte); EXIF orientation is not applied here (validation writes
    upright copies of rotated photos, and of the files
    :func:`cnnlab.data.images.decodes_as_is` rejects). The resize
    (:func:`cnnlab.data.images.resize_square`: area averaging when shrinking, bilinear when
    enlarging) does not keep the aspect ratio (as ``keras.utils.image_dataset_from_directory``
    does by default); an image already at the output size is returned as decoded.

    Args:
        path: Scalar string tensor, the file path.
        image_size: Output side in pixels.
        dct_scaling: JPEGs are decoded at the smallest libjpeg scale (1/2, 1/4, 1/8) whose
            shorter side is still at least ``dct_scaling * image_size``: 1.0 never decodes
            below the output size; 0.85 lets a 224-pixel JPEG decode at 112 for a 128-pixel
            output (4x fewer pixels, then a 1.14x upsample). None always decodes in full.

    Returns:
        ``(image_size, image_size, 3)`` uint8.
    """
    data = tf.io.read_file(path)

    def decode_jpeg() -> tf.Tensor:
        if dct_scaling:
            return _decode_jpeg_scaled(data, image_size, dct_scaling)
        return tf.io.decode_jpeg(data, channels=3, dct_method=DCT_METHOD)

    image = tf.cond(tf.io.is_jpeg(data), decode_jpeg,
                    lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
    image.set_shape([None, None, 3])  # decode_image's rank is unknown while tracing
    return resize_square(image, image_size)


def make_decoder(image_size: int, dct_scaling: float | None = 1.0,
                 formats: list[str] | None = None,
                 sizes: list[tuple[int, int]] | None = None):
    """Chooses the cheapest decode function for a set of files.

    When the manifest says every file is a JPEG of one size (cards, prepared RPC), the scale,
    and whether to resize at all, are fixed when the pipeline is built: a bare
    ``tf.io.decode_jpeg`` per file, with no branching inside the graph. Otherwise each file
    goes through :func:`decode_resize`, which decides per file.

    Args:
        image_size: Output side in pixels.
        dct_scaling: See :func:`decode_resize`.
        formats: Pillow format name per file (manifest ``format`` column), or None.
        sizes: ``(width, height)`` per file, or None.

    Returns:
        A function from a scalar path tensor to ``(image_size, image_size, 3)`` uint8.
    """
    if formats is None or sizes is None or not set(formats) <= {"JPEG", "MPO"} or \
            len(set(sizes)) != 1:
        return lambda path: decode_resize(path, image_size, dct_scaling)
    (width, height), = set(sizes)
    ratio = jpeg_scale(width, height, image_size, dct_scaling)
    decoded = (-(-height // ratio), -(-width // ratio))  # libjpeg rounds scaled sizes up
    shrink = decoded[0] > image_size or decoded[1] > image_size

    def decode(path: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3, ratio=ratio,
                                  dct_method=DCT_METHOD)
        if decoded != (image_size, image_size):
            image = resize_uint8(image, image_size, shrink)
        return tf.ensure_shape(image, (image_size, image_size, 3))

    return decode


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


def cache_key(files: list[str], image_size: int) -> str:
    """A short hash of the files, image size and decoder version, naming a disk cache.

    Each file counts by its absolute path (so the dataset's root), its size and its
    modification time (a file rewritten under the same name is another file), and
    :data:`cnnlab.data.images.DECODER_VERSION` is part of it, so a cache written under other
    decoding rules is never read back as if it held today's pixels.
    """
    stamps = []
    for file in files:
        path = Path(file).resolve()
        stat = path.stat() if path.exists() else None
        stamps.append(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}" if stat else str(path))
    parts = [DECODER_VERSION, str(image_size), *stamps]
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return f"{image_size}px-{digest[:16]}"


def make_dataset(
    files: list[str] | pd.Series,
    labels: list[int] | np.ndarray | pd.Series,
    image_size: int,
    batch_size: int = 32,
    shuffle: bool = False,
    augment: keras.Model | None = None,
    cache: str | bool = "auto",
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    dct_scaling: float | None = 1.0,
    formats: list[str] | None = None,
    sizes: list[tuple[int, int]] | None = None,
) -> tf.data.Dataset:
    """Builds a batched pipeline over image files.

    Order: files -> decode + resize (parallel) -> cache -> shuffle -> batch -> augment ->
    prefetch. Augmentation runs after the cache so every epoch sees new variants, and on whole
    batches, which is where Keras preprocessing layers are fastest.

    Args:
        files: Image paths.
        labels: Integer class indices, one per file.
        image_size: Output side in pixels.
        batch_size: Images per batch.
        shuffle: Reshuffle every epoch (training).
        augment: Augmentation model applied to batches (training only), or None.
        cache: ``"auto"`` (memory if the decoded split fits in 4 GiB, else on disk under
            ``cache_dir``, else none, with a warning), ``True``/``"memory"``, ``"disk"``,
            ``False``, or a file path prefix for a disk cache.
        seed: Shuffle seed.
        cache_dir: Folder for disk caches (e.g. ``data/<dataset>/cache``); the file name is
            :func:`cache_key` of the files and size, so another split or size never reads it.
        dct_scaling: See :func:`decode_resize`.
        formats: Pillow format per file (from the manifest), for :func:`make_decoder`.
        sizes: ``(width, height)`` per file (from the manifest), likewise.

    Returns:
        ``tf.data.Dataset`` of ``(images, labels)``: ``(batch, size, size, 3)`` uint8 (float32
        in ``[0, 255]`` when ``augment`` is set) and ``(batch,)`` int32.

    Raises:
        ValueError: If ``files`` is empty, ``labels`` has another length, or a disk cache is
            asked for without ``cache_dir``.
    """
    files = [str(f) for f in files]
    labels = np.asarray(labels, dtype=np.int32)
    if not files:
        raise ValueError("no image files given; check the manifest split")
    if len(files) != len(labels):
        raise ValueError(f"{len(files)} files but {len(labels)} labels")
    decode = make_decoder(image_size, dct_scaling, formats, sizes)
    ds = tf.data.Dataset.from_tensor_slices((files, labels))
    ds = ds.map(lambda f, y: (decode(f), y), num_parallel_calls=AUTOTUNE)
    if cache == "auto":
        fits = len(files) * image_size * image_size * 3 <= MEMORY_CACHE_LIMIT_BYTES
        cache = "memory" if fits else ("disk" if cache_dir else False)
        if not cache:
            warnings.warn(f"{len(files)} images at {image_size} px do not fit the memory cache "
                          f"and no cache_dir was given: every epoch decodes again", stacklevel=2)
    if cache == "disk":
        if cache_dir is None:
            raise ValueError("cache='disk' needs cache_dir (e.g. data/<dataset>/cache)")
        cache = Path(cache_dir) / cache_key(files, image_size)
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


def measure_throughput(dataset: tf.data.Dataset, epochs: int = 2) -> pd.DataFrame:
    """Times full passes over a pipeline (e.g. first epoch, then cached).

    Args:
        dataset: Batches of ``(images, labels)``.
        epochs: Passes to time.

    Returns:
        One row per epoch: ``epoch``, ``images``, ``seconds``, ``images/s``.
    """
    import time

    rows = []
    for epoch in range(1, epochs + 1):
        start, seen = time.perf_counter(), 0
        for images, _ in dataset:
            seen += int(images.shape[0])
        seconds = time.perf_counter() - start
        rows.append({"epoch": epoch, "images": seen, "seconds": round(seconds, 2),
                     "images/s": round(seen / seconds)})
    return pd.DataFrame(rows)


def split_dataset(
    rows: pd.DataFrame,
    image_size: int,
    batch_size: int = 32,
    training: bool = False,
    hflip: bool = True,
    seed: int = 0,
    augment: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tf.data.Dataset:
    """A pipeline over one manifest split (``Manifest.split`` rows).

    Args:
        rows: Rows with ``file`` and ``label_index`` columns (and ``format``, ``width``,
            ``height`` from the manifest, which let :func:`make_decoder` fix the decode).
        image_size: Output side in pixels.
        batch_size: Images per batch.
        training: Shuffle and augment (train split) or keep order (val/test).
        hflip: Whether augmentation may flip horizontally.
        seed: Shuffle and augmentation seed.
        augment: Augment the images; None: when ``training``.
        cache_dir: Folder for a disk cache when the split does not fit in memory.

    Returns:
        See :func:`make_dataset`.
    """
    augment = training if augment is None else augment
    layers = augmentation_layers(hflip, seed) if augment else None
    known = {"format", "width", "height"} <= set(rows.columns)
    return make_dataset(rows["file"], rows["label_index"], image_size, batch_size,
                        shuffle=training, augment=layers, seed=seed, cache_dir=cache_dir,
                        formats=list(rows["format"]) if known else None,
                        sizes=list(zip(rows["width"], rows["height"], strict=True))
                        if known else None)
