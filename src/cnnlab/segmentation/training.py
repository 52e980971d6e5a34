"""Fine-tuning a segmentation network: DeepLabV3+ in Keras on any images + masks folder.

DeepLabV3+ (Chen et al. 2018, "Encoder-Decoder with Atrous Separable Convolution for Semantic
Image Segmentation", ECCV, arXiv:1802.02611) adds a decoder to DeepLabV3: the backbone's
output-stride-16 features go through atrous spatial pyramid pooling (ASPP: a 1x1 branch, 3x3
branches at dilation 6, 12 and 18, and image-level pooling), are upsampled 4x, joined with
stride-4 low-level features reduced to 48 channels, refined by two 3x3 convolutions and
upsampled 4x to the input size. The layout follows the keras-io example "Multiclass semantic
segmentation using DeepLabV3+" (Soumik Rakshit, https://keras.io/examples/vision/deeplabv3_plus/),
on any ``keras.applications`` backbone of ``cnnlab.models`` (the stride-4 and stride-16
layers are found by their output size) instead of its fixed ResNet50 layer names.

Masks are ``(H, W)`` images whose pixel values are class indices (0 = background), stored
beside the images: ``<root>/images/<path>.<ext>`` and ``<root>/masks/<path>.png`` (the layout
of the generated ``sample`` dataset, whose masks are class index + 1 on the object). Training
reports the validation mIoU per epoch (``keras.metrics.MeanIoU``) in the run folder's
``history.csv``. Its settings are the ``segment_*`` fields of a ``config.Profile``, and it runs
through the same run folder engine as classification (:mod:`cnnlab.training.runs`): killed, the
same call resumes from the last completed epoch; finished, it is not trained again.
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
from keras import layers
from matplotlib.figure import Figure
from PIL import Image

from cnnlab.data.images import IMAGE_SUFFIXES, decode_image, resize_square
from cnnlab.models.backbones import WeightsChoice, get_backbone_spec, resolve_weights
from cnnlab.models.transfer import SCRATCH_BN_MOMENTUM, BackbonePreprocessing, build_backbone
from cnnlab.segmentation.deeplab import Segmenter
from cnnlab.segmentation.iou import per_class_iou

AUTOTUNE = tf.data.AUTOTUNE


def find_mask_pairs(root: str | os.PathLike, images: str = "images", masks: str = "masks"
                    ) -> pd.DataFrame:
    """Pairs every image under ``root/images`` with its mask under ``root/masks``.

    A mask has the image's relative path with a ``.png`` suffix. The first folder level
    below ``images`` (the class folder, if any) is kept as ``group`` for a stratified split.

    Args:
        root: Folder holding ``images`` and ``masks``.
        images: Name of the image folder.
        masks: Name of the mask folder.

    Returns:
        Rows ``image, mask, group`` (absolute paths), sorted by image path.

    Raises:
        FileNotFoundError: If either folder is missing, an image has no mask (the message
            names up to five), or no image is found.
    """
    root = Path(root)
    image_dir, mask_dir = root / images, root / masks
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} does not exist; a segmentation folder holds "
                                    f"{images}/ and {masks}/ with matching relative paths")
    rows, missing = [], []
    for path in sorted(image_dir.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        relative = path.relative_to(image_dir)
        mask = (mask_dir / relative).with_suffix(".png")
        if not mask.is_file():
            missing.append(str(relative))
            continue
        group = relative.parts[0] if len(relative.parts) > 1 else ""
        rows.append({"image": str(path), "mask": str(mask), "group": group})
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) under {image_dir} have no mask in "
                                f"{mask_dir} (e.g. {', '.join(missing[:5])}); add the .png "
                                f"masks or remove the images")
    if not rows:
        raise FileNotFoundError(f"no images found under {image_dir}")
    return pd.DataFrame(rows)


def split_pairs(pairs: pd.DataFrame, val_fraction: float = 0.2, seed: int = 42,
                max_images: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Seeded train/validation split, stratified by ``group`` when there are groups.

    Args:
        pairs: From :func:`find_mask_pairs`.
        val_fraction: Share of pairs for validation.
        seed: Split seed.
        max_images: Keep at most this many pairs first (a stratified, seeded sample).

    Returns:
        ``(train, val)`` rows.
    """
    from sklearn.model_selection import train_test_split

    groups = pairs["group"] if pairs["group"].nunique() > 1 else None
    if max_images and max_images < len(pairs):
        pairs, _ = train_test_split(pairs, train_size=max_images, random_state=seed,
                                    stratify=groups)
        groups = pairs["group"] if groups is not None else None
    train, val = train_test_split(pairs, test_size=val_fraction, random_state=seed,
                                  stratify=groups)
    return train.sort_values("image").reset_index(drop=True), \
        val.sort_values("image").reset_index(drop=True)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Reads a class-index mask PNG as ``(H, W)`` uint8 (palette and grey images as stored)."""
    with Image.open(path) as image:
        if image.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"{path} is a {image.mode} image; a mask must be single-channel "
                             f"(L or P) with class indices as pixel values")
        return np.asarray(image).astype(np.uint8)


def count_classes(pairs: pd.DataFrame) -> int:
    """Number of classes the masks hold: their largest pixel value + 1."""
    return int(max(read_mask(m).max() for m in pairs["mask"])) + 1


def _decode_image(path: tf.Tensor, image_size: int) -> tf.Tensor:
    # Pillow through cnnlab.data.images (EXIF orientation, 16-bit rule, WebP/TIFF/GIF), then
    # the shared resize in the graph: read_image's pixels, as classification reads the file.
    def decode(name: bytes) -> np.ndarray:
        return decode_image(name.decode(), image_size)

    image = tf.numpy_function(decode, [path], tf.uint8, stateful=False)
    image.set_shape([None, None, 3])
    return tf.cast(resize_square(image, image_size), tf.float32)


def _decode_mask(path: tf.Tensor, image_size: int) -> tf.Tensor:
    mask = tf.io.decode_png(tf.io.read_file(path), channels=1)
    mask = tf.image.resize(mask, (image_size, image_size), method="nearest")
    return tf.cast(mask[..., 0], tf.int32)


def _flip_pair(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor):
    flip = tf.random.stateless_uniform((), seed) < 0.5
    image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
    mask = tf.cond(flip, lambda: tf.reverse(mask, axis=[1]), lambda: mask)
    return image, mask


def mask_dataset(pairs: pd.DataFrame, image_size: int, batch_size: int = 16,
                 training: bool = False, seed: int = 0) -> tf.data.Dataset:
    """A tf.data pipeline of ``(image, mask)`` batches.

    Images are read as on every path (:func:`cnnlab.data.images.read_image`: EXIF orientation,
    any mode to 8-bit RGB, area averaging when shrinking), masks are resized with nearest
    neighbour so they keep class indices; training batches are shuffled and flipped
    left-right (image and mask together).

    Returns:
        Batches of ``(batch, s, s, 3)`` float32 in ``[0, 255]`` and ``(batch, s, s)`` int32.
    """
    ds = tf.data.Dataset.from_tensor_slices((pairs["image"].tolist(), pairs["mask"].tolist()))
    ds = ds.map(lambda i, m: (_decode_image(i, image_size), _decode_mask(m, image_size)),
                num_parallel_calls=AUTOTUNE).cache()
    if training:
        ds = ds.shuffle(len(pairs), seed=seed, reshuffle_each_iteration=True)
        counter = tf.data.Dataset.counter().map(lambda i: tf.stack([i, tf.cast(seed, tf.int64)]))
        ds = tf.data.Dataset.zip((ds, counter)).map(
            lambda pair, s: _flip_pair(pair[0], pair[1], s), num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size).prefetch(AUTOTUNE)


def stride_layers(backbone: keras.Model, strides: tuple[int, ...] = (4, 16)) -> list[str]:
    """For each output stride, the name of the backbone's last layer at that stride.

    Args:
        backbone: A headless ``keras.applications`` backbone with a square input.
        strides: Input side divided by the feature map side.

    Returns:
        Layer names, one per stride.

    Raises:
        ValueError: If the backbone has no layer at a stride (the input is too small).
    """
    size = backbone.input_shape[1]
    names = []
    for stride in strides:
        found = [layer.name for layer in backbone.layers
                 if len(layer.output.shape) == 4 and layer.output.shape[1] == size // stride]
        if not found or size % stride:
            raise ValueError(f"{backbone.name} at {size} px has no layer at output stride "
                             f"{stride}; use an image size that is a multiple of 16, at least "
                             f"64")
        names.append(found[-1])
    return names


# The new head's BatchNormalization: with Keras' default momentum (0.99) its moving statistics
# lag the quickly changing features of a short run, and validation (which uses them) with
# them; 0.9 follows the data within an epoch or two (as models.SCRATCH_BN_MOMENTUM).
HEAD_BN_MOMENTUM = SCRATCH_BN_MOMENTUM


def _conv_block(x, filters: int, kernel_size: int = 3, dilation_rate: int = 1, name: str = ""):
    x = layers.Conv2D(filters, kernel_size, dilation_rate=dilation_rate, padding="same",
                      use_bias=False, kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=HEAD_BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _aspp(x, filters: int):
    """Atrous spatial pyramid pooling (Chen et al. 2017, arXiv:1706.05587, sec. 3.3)."""
    height, width = x.shape[1], x.shape[2]
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pool")(x)
    pooled = _conv_block(pooled, filters, 1, name="aspp_pool")
    pooled = layers.UpSampling2D((height, width), interpolation="bilinear",
                                 name="aspp_pool_up")(pooled)
    branches = [pooled, _conv_block(x, filters, 1, name="aspp_1x1")]
    branches += [_conv_block(x, filters, 3, rate, name=f"aspp_rate{rate}") for rate in (6, 12, 18)]
    x = layers.Concatenate(name="aspp_concat")(branches)
    return _conv_block(x, filters, 1, name="aspp_out")


def build_deeplabv3_plus(
    num_classes: int,
    image_size: int = 128,
    backbone: str = "mobilenet_v3_small_075",
    weights: WeightsChoice | str = "none",
    weights_dir: str | os.PathLike | None = None,
    filters: int = 256,
) -> keras.Model:
    """DeepLabV3+ with a ``cnnlab.models`` backbone (Chen et al. 2018).

    A pretrained backbone keeps its BatchNormalization layers frozen and in inference mode, so
    their statistics stay as loaded while the other weights are fine-tuned (the Keras
    transfer-learning recipe); a random one trains normally.

    Args:
        num_classes: Classes including the background (index 0).
        image_size: Square input side in pixels, a multiple of 16.
        backbone: Key of ``backbones.BACKBONES``.
        weights: What the backbone starts from (``backbones.resolve_weights``).
        weights_dir: Folder of local ImageNet weights files.
        filters: Channels of the ASPP and decoder convolutions (256 in the paper).

    Returns:
        Uncompiled model: ``(batch, s, s, 3)`` float32 RGB in ``[0, 255]`` ->
        ``(batch, s, s, num_classes)`` float32 logits.

    Raises:
        ValueError: If ``image_size`` is not a multiple of 16 or below the backbone's minimum.
    """
    if image_size % 16:
        raise ValueError(f"image_size={image_size} is not a multiple of 16 (DeepLabV3+ runs "
                         f"the backbone at output stride 16)")
    spec = get_backbone_spec(backbone)
    choice = weights if isinstance(weights, WeightsChoice) else \
        resolve_weights(backbone, weights, weights_dir)
    base = build_backbone(backbone, image_size, choice)
    if choice.is_pretrained:
        # A BatchNormalization layer with trainable=False runs in inference mode in Keras 3
        # (https://keras.io/guides/transfer_learning/). The training=False call below alone is
        # not enough here: measured, the multi-output feature sub-model still ran the
        # backbone's BN on batch statistics under fit (features differ by up to 10).
        for layer in base.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.trainable = False
    else:  # from scratch: moving statistics must follow the data within a short run
        for layer in base.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = min(layer.momentum, SCRATCH_BN_MOMENTUM)
    low_name, high_name = stride_layers(base, (4, 16))
    features = keras.Model(base.input, [base.get_layer(low_name).output,
                                        base.get_layer(high_name).output], name=backbone)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    if spec.preprocessing != "inside":
        x = BackbonePreprocessing(spec.preprocessing, name="preprocessing")(x)
    low, high = features(x, training=False) if choice.is_pretrained else features(x)
    x = _aspp(high, filters)
    x = layers.UpSampling2D(4, interpolation="bilinear", name="decoder_up4")(x)
    low = _conv_block(low, 48, 1, name="decoder_low")
    x = layers.Concatenate(name="decoder_concat")([x, low])
    x = _conv_block(x, filters, 3, name="decoder_a")
    x = _conv_block(x, filters, 3, name="decoder_b")
    x = layers.UpSampling2D(4, interpolation="bilinear", name="decoder_out_up")(x)
    outputs = layers.Conv2D(num_classes, 1, dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=f"deeplabv3plus_{backbone}")


class KerasSegmenter(Segmenter):
    """A Keras segmentation model (logits per pixel) behind the :class:`Segmenter` interface.

    Images are resized (bilinear, aspect ratio not kept, as in training) to the model's input;
    the argmax mask is resized back with nearest neighbour.

    Args:
        model: ``(batch, s, s, 3)`` float32 in ``[0, 255]`` -> ``(batch, s, s, classes)``.
        class_names: Name of each class index.
        name: Backend name for reports.
    """

    def __init__(self, model: keras.Model, class_names, name: str | None = None) -> None:
        self.model = model
        self.class_names = tuple(class_names)
        self.name = name or model.name
        if model.output_shape[-1] != len(self.class_names):
            raise ValueError(f"{self.name} predicts {model.output_shape[-1]} classes but "
                             f"{len(self.class_names)} class names were given")

    @property
    def description(self) -> str:
        """E.g. ``"Keras DeepLabV3+ (deeplabv3plus_mobilenet_v3_small_075), 128 px"``."""
        size = self.model.input_shape[1]
        return f"Keras DeepLabV3+ ({self.name})" + (f", {size} px" if size else "")

    def predict_mask(self, image) -> np.ndarray:
        """``(H, W)`` uint8 class indices of one ``(H, W, 3)`` RGB image in ``[0, 255]``."""
        return self.predict_masks([image])[0]

    def predict_masks(self, images) -> list[np.ndarray]:
        """Segments images of any sizes in one batch per call; see :meth:`predict_mask`."""
        images = [np.asarray(im, dtype=np.float32) for im in images]
        size = int(self.model.input_shape[1])
        batch = np.stack([tf.image.resize(im, (size, size)).numpy() for im in images])
        labels = np.asarray(self.model.predict_on_batch(batch)).argmax(axis=-1)
        return [np.asarray(Image.fromarray(lab.astype(np.uint8)).resize(
            (im.shape[1], im.shape[0]), Image.NEAREST)) for lab, im in zip(labels, images)]


@dataclass
class SegmentationRun:
    """What one DeepLabV3+ fine-tuning run produced.

    Attributes:
        model: The trained model (best validation mIoU restored).
        history: One row per epoch: loss, mIoU, val_loss, val_mIoU.
        class_names: Name of each class index.
        train: Training pairs.
        val: Validation pairs.
        run_folder: ``checkpoints/<name>/`` with ``args.yaml`` and ``history.csv``.
        seconds: Wall-clock training time.
        weights: What the backbone started from.
    """

    model: keras.Model
    history: pd.DataFrame
    class_names: tuple[str, ...]
    train: pd.DataFrame
    val: pd.DataFrame
    run_folder: Path
    seconds: float
    weights: str

    def segmenter(self) -> KerasSegmenter:
        """The trained model behind the :class:`~cnnlab.segmentation.Segmenter` interface."""
        return KerasSegmenter(self.model, self.class_names)

    def per_class_iou(self) -> pd.DataFrame:
        """IoU per class on the validation pairs at their original mask size."""
        from cnnlab.segmentation.agreement import read_image

        images = [read_image(f) for f in self.val["image"]]
        truth = [read_mask(f) for f in self.val["mask"]]
        return per_class_iou(truth, self.segmenter().predict_masks(images), self.class_names)

    def examples_by_class(self, iou: pd.DataFrame | None = None) -> pd.DataFrame:
        """One validation pair per class, the class with the lowest IoU first.

        For each class but the background (index 0), the pair whose ground-truth mask holds
        the most pixels of it, so a figure of these rows shows every class, the ones the model
        handles worst at the top.

        Args:
            iou: :meth:`per_class_iou`'s table (computed when None).

        Returns:
            Rows of ``val`` with a ``class`` and an ``IoU`` column, ordered by ``IoU``
            (classes with no validation pixels left out).
        """
        iou = self.per_class_iou() if iou is None else iou
        counts = np.stack([np.bincount(read_mask(f).ravel(), minlength=256)[:len(self.class_names)]
                           for f in self.val["mask"]])
        rows = []
        for index, name in enumerate(self.class_names):
            if index == 0 or counts[:, index].max() == 0:
                continue
            row = self.val.iloc[int(counts[:, index].argmax())].copy()
            row["class"], row["IoU"] = name, float(iou.loc[name, "IoU"])
            rows.append(row)
        return pd.DataFrame(rows).sort_values("IoU", kind="stable").reset_index(drop=True)


def train_segmenter(
    pairs: pd.DataFrame,
    class_names,
    profile,
    checkpoints_dir: str | os.PathLike,
    run_name: str = "deeplabv3plus",
    backbone: str = "mobilenet_v3_small_075",
    weights: str = "none",
    weights_dir: str | os.PathLike | None = None,
    seed: int = 42,
    verbose: int | str = "table",
    resume: bool = True,
) -> SegmentationRun:
    """Fine-tunes DeepLabV3+ on image/mask pairs and reports validation mIoU per epoch.

    Loss: sparse categorical cross-entropy on logits; metric: ``keras.metrics.MeanIoU``
    (argmax of the logits against the mask), so ``history.csv`` holds ``mIoU`` and
    ``val_mIoU`` per epoch. The best validation mIoU checkpoint is restored at the end.

    The run folder ``checkpoints_dir/<run_name>/`` is a classification run folder
    (:func:`cnnlab.training.runs.start_run`: ``args.yaml``, ``history.csv``, ``state.json``,
    best/last weights, the resume backup): a run killed at any point continues from its last
    completed epoch when the same call runs again, and ends with the same epoch count; a
    finished run with the same settings is loaded, not trained again.

    Args:
        pairs: From :func:`find_mask_pairs`.
        class_names: Name of each class index (index 0: background).
        profile: A ``config.Profile``; its ``segment_*`` fields set the image size, epochs,
            batch size, filters, rate, pair cap and whether the backbone is pretrained.
        checkpoints_dir: Where the run folder ``<run_name>/`` goes.
        run_name: Run folder name.
        backbone: Key of ``backbones.BACKBONES``.
        weights: ``"imagenet"``, ``"local"``, ``"none"`` or a file (``resolve_weights``);
            ``"none"`` regardless when ``profile.segment_pretrained`` is False.
        weights_dir: Folder of local ImageNet weights files.
        seed: Seed of the split, initialisation, shuffling and flips.
        verbose: "table" (one row per epoch) or Keras verbosity (2: its per-epoch lines).
        resume: Continue an interrupted run, or reuse a finished one, of the same settings;
            False: always a new run (an old folder is kept under a dated name).

    Returns:
        The run; ``seconds`` is this call's training time (for a finished run reused, the
        sum of its epochs' ``seconds`` in ``history.csv``).

    Raises:
        ValueError: If a mask holds a class index without a name.
    """
    from cnnlab.training.fitting import fit
    from cnnlab.training.runs import _profile_config, finish_run, load_weights, start_run

    class_names = tuple(class_names)
    found = count_classes(pairs)
    if found > len(class_names):
        raise ValueError(f"the masks hold class indices up to {found - 1} but only "
                         f"{len(class_names)} class names were given")
    keras.utils.set_random_seed(seed)
    size, epochs = profile.segment_image_size, profile.segment_epochs
    train, val = split_pairs(pairs, seed=seed, max_images=profile.segment_max_pairs)
    choice = resolve_weights(backbone, weights if profile.segment_pretrained else "none",
                             weights_dir)
    model = build_deeplabv3_plus(len(class_names), size, backbone, choice,
                                 filters=profile.segment_filters)
    model.compile(
        optimizer=keras.optimizers.Adam(profile.segment_learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.MeanIoU(len(class_names), name="mIoU", sparse_y_pred=False)],
    )
    run = start_run(checkpoints_dir, run_name, {
        "model": model.name, "backbone": backbone, "weights": choice.label,
        "class_names": list(class_names), "train_pairs": len(train), "val_pairs": len(val),
        "pairs": {"train": _pairs_fingerprint(train), "val": _pairs_fingerprint(val)},
        "image_size": size, "epochs": epochs, "batch_size": profile.segment_batch_size,
        "filters": profile.segment_filters, "learning_rate": profile.segment_learning_rate,
        "max_pairs": profile.segment_max_pairs, "seed": seed, **_profile_config(profile)},
        resume, reuse_finished=resume)
    start = time.perf_counter()
    if not run.is_finished:
        label = choice.label if choice.is_pretrained else choice.label.upper()
        print(f"{model.name}: backbone weights = {label}; {len(train)} train / {len(val)} "
              f"validation pairs at {size} px, {epochs} epochs")
        if not run.completed("train"):
            train_ds = mask_dataset(train, size, profile.segment_batch_size, True, seed)
            val_ds = mask_dataset(val, size, profile.segment_batch_size)
            fit(model, train_ds, val_ds, run, epochs, stage="train", verbose=verbose,
                monitor="val_mIoU")
            run.complete("train")
    seconds = time.perf_counter() - start
    if run.best.exists():
        load_weights(model, run.best)
    history = run.read_history()
    if run.is_finished and "seconds" in history:
        seconds = float(history["seconds"].sum())
    finish_run(run)
    return SegmentationRun(model, history, class_names, train, val, run.path, seconds,
                           choice.label)


def _pairs_fingerprint(rows: pd.DataFrame) -> str:
    """12 hex digits of the pairs' ``group/file name`` in order (recorded in ``args.yaml``)."""
    digest = hashlib.sha256()
    for group, image in zip(rows["group"], rows["image"]):
        digest.update(f"{group}/{Path(image).name}\n".encode())
    return digest.hexdigest()[:12]


def plot_miou_history(history: pd.DataFrame, title: str = "") -> Figure:
    """Training and validation mIoU and loss per epoch, from a run's ``history.csv``.

    Args:
        history: Rows per epoch with ``epoch``, ``mIoU``, ``val_mIoU``, ``loss``, ``val_loss``.
        title: Figure title (default: ``"DeepLabV3+: mIoU and loss per epoch"``).
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    from cnnlab.plots import epoch_axis

    epochs = history["epoch"] + 1
    for ax, metric in zip(axes, ("mIoU", "loss")):
        ax.plot(epochs, history[metric], "o-", label="train")
        ax.plot(epochs, history[f"val_{metric}"], "o-", label="validation")
        ax.set_xlabel("epoch")
        epoch_axis(ax, int(epochs.max()) if len(epochs) else 1)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    best = history["val_mIoU"].idxmax()
    axes[0].axvline(epochs[best], ls="--", c="grey",
                    label=f"best: {history['val_mIoU'][best]:.3f} (restored)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title or "DeepLabV3+: mIoU and loss per epoch")
    fig.tight_layout()
    return fig
