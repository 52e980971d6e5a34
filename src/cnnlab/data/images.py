"""Image files in, upright 8-bit RGB arrays out: the one decode and resize of every path.

Training (the tf.data decoder of :mod:`cnnlab.data.pipeline`, fed by a manifest whose odd files
validation has replaced by PNG copies), inference, Grad-CAM, plots, segmentation and the export
checks all read image files through this module, so a model meets at deployment exactly the
pixels it was trained on:

* one suffix list (:data:`IMAGE_SUFFIXES`) for scanning folders;
* one decode (:func:`decode_image`, :func:`read_image`): Pillow, EXIF orientation applied,
  every mode converted to 8-bit RGB by :func:`to_rgb` (alpha dropped, not composited; 16-bit
  samples keep their high byte, as TensorFlow's PNG decoder does);
* one resize (:func:`resize_square`): area averaging when shrinking, bilinear when enlarging,
  rounded to uint8, nothing when the image is already at the output size;
* one rule for which files the tf.data decoder may read as they are (:func:`decodes_as_is`)
  and one writer of the PNG copy for the others (:func:`write_converted`).

JPEGs are decoded with libjpeg's accurate integer IDCT (Pillow's default;
``dct_method="INTEGER_ACCURATE"`` in TensorFlow, whose default ``INTEGER_FAST`` differs by up
to 4 levels) and, when a model size is given, at the 1/2, 1/4 or 1/8 scale that the training
decoder picks (:func:`jpeg_scale`), so both decoders return the same array, to the bit.

This module imports no TensorFlow at load time (validation uses it); only the resize does.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from cnnlab.files import atomic_path

# Suffixes scanned as images (lower case); other files are reported as "not an image".
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Pillow formats tf.io decodes to the array read_image returns (MPO is the multi-picture JPEG
# of cameras). BMP only in RGB (24/32-bit): TensorFlow reads a palette BMP's indices as grey
# levels and refuses 1-bit ones. GIF is left out: TensorFlow blacks out transparent pixels.
TF_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP"})
# EXIF tag 0x0112 (Orientation), values 2-8 need a flip or rotation (EXIF 2.32, section 4.6.4).
EXIF_ORIENTATION = 0x0112
# The scales libjpeg decodes at directly (tf.io.decode_jpeg ``ratio``, Pillow ``draft``).
DCT_RATIOS = (1, 2, 4, 8)
# Modes in which Pillow opens 16-bit (and 32-bit integer) single-channel images.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_JPEG_FORMATS = ("JPEG", "MPO")
# Changes whenever the rules above give other pixels; part of every decoded-image cache key.
DECODER_VERSION = "images-2"
# Bytes read from the start of a file Pillow cannot identify, to say what it is instead.
_SNIFF_BYTES = 1024


def decodes_as_is(format: str, mode: str) -> bool:
    """Whether the tf.data decoder reads a file of this format and mode as :func:`read_image`.

    Args:
        format: Pillow format name (``Image.format``), e.g. ``"JPEG"``.
        mode: Pillow mode as opened, e.g. ``"CMYK"``.

    Returns:
        True for JPEG and PNG in any mode (checked in ``tests/test_images.py``) and for RGB
        BMPs; other files are used through an upright RGB PNG copy (:func:`write_converted`).
    """
    return format in TF_FORMATS and (format != "BMP" or mode == "RGB")


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation of an opened image: 1 (upright) when absent.

    Reading a PNG's EXIF decodes the file, so a broken PNG raises here (``OSError``,
    ``SyntaxError``), which is how validation finds it.
    """
    return int(image.getexif().get(EXIF_ORIENTATION, 1) or 1)


def is_rotated(image: Image.Image) -> bool:
    """Whether the image's EXIF orientation asks for a flip or rotation (values 2-8)."""
    return exif_orientation(image) not in (0, 1)


def jpeg_scale(width: int, height: int, image_size: int, dct_scaling: float | None) -> int:
    """The libjpeg scale denominator at which a ``width x height`` JPEG is decoded.

    Args:
        width: Stored width in pixels.
        height: Stored height in pixels.
        image_size: Output side in pixels.
        dct_scaling: Smallest allowed ratio of the decoded shorter side to ``image_size``
            (1.0: never decode below the output size); None: always decode in full.

    Returns:
        1, 2, 4 or 8: the largest ``r`` with ``min(width, height) / r >= dct_scaling *
        image_size`` (1 when ``dct_scaling`` is None).
    """
    if not dct_scaling:
        return 1
    fits = [r for r in DCT_RATIOS if min(width, height) / r >= dct_scaling * image_size]
    return max(fits, default=1)


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts an image of any Pillow mode to 8-bit RGB.

    Grayscale is repeated over the three channels, palettes are looked up, alpha is dropped
    (not composited over a background), CMYK goes through Pillow's conversion. Single-channel
    16-bit images keep the high byte of each sample (``v >> 8``, i.e. ``floor(v / 256)``),
    not a stretch to the image's own maximum: the rule libpng's ``png_set_strip_16`` applies,
    so TensorFlow's decoder, a PNG copy and a direct read agree, and a dark 16-bit scan stays
    dark instead of being brightened by its brightest pixel. Pillow already reduces 16-bit
    RGB(A) PNGs to 8 bits the same way when it opens them. 32-bit integer images (mode
    ``"I"``) are clipped to ``[0, 65535]`` first, as Pillow opens some 16-bit files in it.

    Args:
        image: An opened (or loaded) Pillow image.

    Returns:
        An RGB image of the same size.
    """
    if image.mode in WIDE_MODES:
        wide = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        image = Image.fromarray((wide >> 8).astype(np.uint8))
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_image(path: str | os.PathLike, image_size: int | None = None,
                 dct_scaling: float | None = 1.0) -> np.ndarray:
    """Decodes an image file to upright 8-bit RGB, before the resize to ``image_size``.

    The file is opened once; a JPEG without EXIF rotation is decoded at the libjpeg scale the
    training decoder uses for ``image_size`` (:func:`jpeg_scale`; Pillow's ``draft``); the
    EXIF orientation is applied; the mode is converted by :func:`to_rgb`. No TensorFlow.

    Args:
        path: Image file of any size and format (JPEG, PNG, BMP, GIF, WebP, TIFF, ...).
        image_size: The side the image will be resized to (it chooses the JPEG scale), or
            None to decode in full.
        dct_scaling: See :func:`jpeg_scale`; the training pipeline's default is 1.0.

    Returns:
        ``(height, width, 3)`` uint8 RGB, upright.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If ``path`` is not a readable image file; the message names it and, where
            it can be told, what it is instead: a folder, an empty file, an HTML page or an
            SVG drawing saved under an image's name, a truncated file, or a decompression
            bomb (more pixels than Pillow's ``2 x PIL.Image.MAX_IMAGE_PIXELS``).
    """
    path = Path(path)
    _check_image_file(path)
    format = None
    try:
        with Image.open(path) as image:
            format = image.format
            rotated = is_rotated(image)
            if image_size and image.format in _JPEG_FORMATS and not rotated:
                ratio = jpeg_scale(image.width, image.height, image_size, dct_scaling)
                if ratio > 1:  # Pillow picks the largest scale keeping at least this size
                    image.draft(image.mode, (max(1, image.width // ratio),
                                             max(1, image.height // ratio)))
            image.load()
            return np.asarray(to_rgb(ImageOps.exif_transpose(image) if rotated else image))
    except Exception as error:
        raise ValueError(_unreadable_reason(path, error, format)) from error


def _check_image_file(path: str | os.PathLike) -> None:
    """Refuses, before any decode, a path that cannot be an image file.

    Args:
        path: The path given for an image file.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If ``path`` is a folder, not a regular file, or an empty (0-byte) file.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not an image file; pass the image files "
                         f"inside it")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; check the path or the manifest's "
                                f"data folder")
    if not path.is_file():
        raise ValueError(f"{path} is not a regular file (a device, socket or pipe), not an "
                         f"image file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is not a readable image: it is empty (0 bytes); download "
                         f"or copy it again, or delete it")


def _unreadable_reason(path: str | os.PathLike, error: Exception,
                      format: str | None = None) -> str:
    """Why Pillow could not read ``path``, with the fix, as one message that names the file.

    Pillow's own exceptions say what went wrong (``cannot identify image file``, ``image file
    is truncated``, ``Image size ... exceeds limit``); this names what the file is, where
    its type, its format or its first bytes tell: a decompression bomb (over Pillow's limit of
    ``2 x PIL.Image.MAX_IMAGE_PIXELS`` pixels), an HTML page or an SVG drawing saved under an
    image's name, a truncated file of a known format.

    Args:
        path: The file Pillow failed on.
        error: The exception Pillow (or the file system) raised.
        format: Pillow's format name when the file was identified before failing, e.g.
            ``"JPEG"``; None when it was not.

    Returns:
        A message starting with ``path``.
    """
    path = Path(path)
    if isinstance(error, Image.DecompressionBombError):
        counts = [int(n) for n in re.findall(r"\d+", str(error))]
        limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None
        pixels = f"{counts[0]:,} pixels" if counts else "more pixels than allowed"
        over = f"over Pillow's limit of {limit:,}" if limit else "over Pillow's limit"
        return (f"{path} is a decompression bomb: {pixels}, {over} (2 x "
                f"PIL.Image.MAX_IMAGE_PIXELS); raise PIL.Image.MAX_IMAGE_PIXELS only for "
                f"files you trust")
    if isinstance(error, PermissionError):
        return f"{path} cannot be read (permission denied); check the file's permissions"
    detail = str(error)
    if isinstance(error, Image.UnidentifiedImageError):
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES).lower()
        if b"<!doctype html" in head or b"<html" in head:
            return (f"{path} is not a readable image: it is an HTML page (a web page saved "
                    f"under an image's name); open it in a browser and save the image itself")
        if b"<svg" in head:
            return (f"{path} is not a readable image: it is an SVG drawing (vector graphics, "
                    f"which Pillow does not read); export it as a PNG")
        detail = "Pillow recognises no image format in it"  # its message repeats the path
    elif format and re.search(r"truncat|premature|end of", detail, re.I):
        return (f"{path} is not a readable image: it is a truncated {format} file, its data "
                f"ends early ({detail}); download or copy it again")
    return (f"{path} is not a readable image ({detail}); re-save it as a JPEG or PNG, or run "
            f"cnnlab validate on its folder")


def read_image(path: str | os.PathLike, image_size: int | None = None,
               dct_scaling: float | None = 1.0) -> np.ndarray:
    """Reads any image file Pillow supports as upright 8-bit RGB, as training decodes it.

    :func:`decode_image`, then, with ``image_size``, :func:`resize_square`. For a file a
    manifest lists (or the original of its converted copy) this is, to the bit, the image
    the tf.data pipeline feeds the model.

    Args:
        path: Image file of any size and format (JPEG, PNG, BMP, GIF, WebP, TIFF, ...).
        image_size: Output side in pixels, or None to keep the (upright) original size.
        dct_scaling: See :func:`jpeg_scale`; the training pipeline's default is 1.0.

    Returns:
        ``(height, width, 3)`` uint8 RGB in ``[0, 255]``; ``(image_size, image_size, 3)`` when
        ``image_size`` is given.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not a readable image; the message names it.
    """
    array = decode_image(path, image_size, dct_scaling)
    if image_size is None:
        return array
    import tensorflow as tf

    return resize_square(tf.constant(array), image_size).numpy()


def load_image(path: str | os.PathLike, image_size: int | None = None,
               dct_scaling: float | None = 1.0) -> np.ndarray:
    """Loads an image file as a model receives it: :func:`read_image` as float32.

    Args:
        path: Image file of any size and format Pillow supports (JPEG, PNG, WebP, TIFF, ...).
        image_size: Output side in pixels, or None to keep the original size.
        dct_scaling: See :func:`jpeg_scale`.

    Returns:
        ``(h, w, 3)`` float32 RGB in ``[0, 255]`` (whole numbers).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not a readable image; the message names it.
    """
    return read_image(path, image_size, dct_scaling).astype(np.float32)


def is_greyscale(path: str | os.PathLike, tolerance: float = 2.0) -> bool:
    """Whether an image file carries no colour: a greyscale photo, even one saved as RGB.

    JPEG stores a greyscale photo saved in colour with small chroma noise, so a pixel counts as
    grey when its channels differ by a few levels; the image is grey when the mean spread
    ``max(R, G, B) - min(R, G, B)`` over its pixels is at most ``tolerance``.

    Args:
        path: Image file of any format :func:`read_image` reads.
        tolerance: Largest mean channel spread, in 8-bit levels (0-255), of a grey image.

    Returns:
        True for a single-channel file or an RGB one whose channels (nearly) agree.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not a readable image; the message names it.
    """
    array = read_image(path).astype(np.int16)
    spread = array.max(axis=-1) - array.min(axis=-1)
    return float(spread.mean()) <= tolerance


def resize_uint8(image, image_size: int, shrink: bool):
    """Resizes a uint8 image to ``(image_size, image_size, 3)`` uint8.

    Shrinking uses area averaging (a box filter: every source pixel counts, so there is no
    aliasing, at 0.35 ms for 224 -> 128 px where antialiased bilinear takes 0.9 ms on this
    CPU); enlarging uses bilinear interpolation. The aspect ratio is not kept (as
    ``keras.utils.image_dataset_from_directory`` does by default).

    Args:
        image: ``(h, w, 3)`` uint8 tensor or array.
        image_size: Output side in pixels.
        shrink: Area averaging (True) or bilinear (False).

    Returns:
        ``(image_size, image_size, 3)`` uint8 tensor, rounded and clipped.
    """
    import tensorflow as tf

    out = tf.image.resize(image, (image_size, image_size), method="area" if shrink else "bilinear")
    return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)


def resize_square(image, image_size: int):
    """Resizes to a square as every path does: unchanged, shrunk or enlarged.

    Works eagerly and inside ``tf.data`` graphs. An image already ``image_size`` square is
    returned as it is; one with a side longer than ``image_size`` is shrunk by area averaging;
    any other is enlarged bilinearly (:func:`resize_uint8`).

    Args:
        image: ``(h, w, 3)`` uint8 tensor (height and width may be unknown while tracing).
        image_size: Output side in pixels.

    Returns:
        ``(image_size, image_size, 3)`` uint8 tensor.
    """
    import tensorflow as tf

    height, width = tf.shape(image)[0], tf.shape(image)[1]
    image = tf.case([
        (tf.logical_and(tf.equal(height, image_size), tf.equal(width, image_size)),
         lambda: image),
        (tf.logical_or(height > image_size, width > image_size),
         lambda: resize_uint8(image, image_size, shrink=True)),
    ], default=lambda: resize_uint8(image, image_size, shrink=False), exclusive=False)
    return tf.ensure_shape(image, (image_size, image_size, 3))


def write_converted(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Writes the upright 8-bit RGB PNG copy used for training instead of ``source``.

    The pixels are :func:`read_image`'s at full size, so the copy decoded by TensorFlow and
    the original read directly give the same array.

    Args:
        source: An image Pillow reads (any mode, any format, any EXIF orientation).
        target: The PNG to write (atomically); parent folders are created.

    Returns:
        ``target``.

    Raises:
        ValueError: If ``source`` is not a readable image; the message names it.
    """
    target = Path(target)
    rgb = Image.fromarray(read_image(source))
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        rgb.save(tmp, format="PNG")
    return target
