"""Semantic segmentation with TensorFlow's pretrained DeepLabV3 TFLite models.

DeepLabV3 (Chen et al. 2017, "Rethinking Atrous Convolution for Semantic Image
Segmentation", arXiv:1706.05587) on a MobileNetV2 backbone (Sandler et al. 2018,
"MobileNetV2: Inverted Residuals and Linear Bottlenecks", arXiv:1801.04381), trained on
PASCAL VOC 2012 (21 classes: background + 20 objects). TensorFlow publishes it as a TFLite
model (https://www.tensorflow.org/lite/examples/segmentation/overview); it runs here on the
LiteRT interpreter (``ai_edge_litert``), the maintained successor of ``tf.lite.Interpreter``.

Both published DeepLabV3 files (float 257 px, uint8 513 px) run behind one
:class:`Segmenter` interface, as does the DeepLabV3+ fine-tuned in Keras
(``cnnlab.segment_train.KerasSegmenter``), so the measures below apply to any of them:
:func:`mean_iou` and :func:`per_class_iou` against ground-truth masks, and
:func:`agreement_table`, which checks a classifier's labels against the largest segment on
real photos.

Typical use::

    seg = DeepLabSegmenter()                      # float 257 px model, downloaded once
    mask = seg.predict_mask(image)                # (H, W) uint8 VOC class indices
    class_fractions([mask])                       # which classes, how much of the image
    fig = plot_segmentation([image], [mask])

Model files are found by ``deeplab_model_path``: an explicit ``path``, else the folder in
``$CNNLAB_DEEPLAB_DIR``, else a download through ``keras.utils.get_file`` (cached in
``~/.keras/models/deeplab``). Every file is checked against its published sha256.
"""

from __future__ import annotations

import abc
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

from cnnlab.storage import sha256_file

__all__ = [
    "DEEPLAB_DIR_ENV",
    "DEEPLAB_MODELS",
    "DEFAULT_DEEPLAB_MODEL",
    "AGREEMENT_IMAGES",
    "VOC_CLASSES",
    "VOC_CLASS_MAPS",
    "DeepLabSegmenter",
    "DeepLabSpec",
    "Segmenter",
    "agreement_summary",
    "agreement_table",
    "class_fractions",
    "colorize_mask",
    "deeplab_model_path",
    "dominant_class",
    "mean_iou",
    "overlay",
    "per_class_iou",
    "plot_agreement_failures",
    "plot_segmentation",
    "read_image",
    "segmentation_confusion",
    "voc_colormap",
]

DEEPLAB_DIR_ENV = "CNNLAB_DEEPLAB_DIR"
DEFAULT_DEEPLAB_MODEL = "deeplabv3_257_float"


@dataclass(frozen=True)
class DeepLabSpec:
    """One published DeepLabV3 TFLite file and how to feed it.

    Attributes:
        name: Registry key.
        filename: File name on disk (and in ``$CNNLAB_DEEPLAB_DIR``).
        url: Download URL.
        sha256: Expected sha256 of the file (hex).
        input_size: Side of the square input, in pixels.
        input_kind: ``"float"``: float32 RGB scaled to ``[-1, 1]``; ``"uint8"``: uint8 RGB
            ``0..255`` (the quantised model rescales inside, scale 1/128, zero point 128).
        output_kind: ``"logits"``: ``(1, S, S, 21)`` float32 per-class scores;
            ``"class_index"``: ``(1, S, S)`` int64 class indices (argmax done in the graph).
        source: Where the file is documented.
    """

    name: str
    filename: str
    url: str
    sha256: str
    input_size: int
    input_kind: Literal["float", "uint8"]
    output_kind: Literal["logits", "class_index"]
    source: str


DEEPLAB_MODELS: dict[str, DeepLabSpec] = {
    spec.name: spec
    for spec in (
        DeepLabSpec(
            name="deeplabv3_257_float",
            filename="deeplabv3_257_mv_gpu.tflite",
            # TensorFlow Lite's segmentation model page and the tensorflow/examples
            # image_segmentation app link this file.
            url="https://storage.googleapis.com/download.tensorflow.org/models/tflite/gpu/"
            "deeplabv3_257_mv_gpu.tflite",
            sha256="68a539782c2c6a72f8aac3724600124a85ed977162b44e84cbae5db717c933c6",
            input_size=257,
            input_kind="float",
            output_kind="logits",
            source="https://www.tensorflow.org/lite/examples/segmentation/overview",
        ),
        DeepLabSpec(
            name="deeplabv3_513_quant",
            filename="deeplabv3_mnv2_pascal_quant.tflite",
            # Google Coral's test data: the CPU (non-Edge-TPU) build of the model that
            # pycoral's examples/semantic_segmentation.py and libcoral's model-correctness
            # tests use; pycoral's examples/install_requirements.sh downloads from this
            # repository (https://github.com/google-coral/test_data, Apache-2.0).
            url="https://github.com/google-coral/test_data/raw/master/"
            "deeplabv3_mnv2_pascal_quant.tflite",
            sha256="350af47fd346ea6d74b58833a351f583ba860e9806ec5bd292ff8d8f1f249398",
            input_size=513,
            input_kind="uint8",
            output_kind="class_index",
            source="https://github.com/google-coral/test_data",
        ),
    )
}

# PASCAL VOC 2012 segmentation classes in label-index order (VOC devkit names; index 255 in
# the ground truth is the "ignore" label and is never predicted).
VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


# --------------------------------------------------------------------------- model files


def _get_spec(name: str) -> DeepLabSpec:
    try:
        return DEEPLAB_MODELS[name]
    except KeyError:
        raise ValueError(
            f"Unknown DeepLab model {name!r}; choose one of {sorted(DEEPLAB_MODELS)}"
        ) from None


def _check_sha256(path: Path, spec: DeepLabSpec) -> Path:
    actual = sha256_file(path)
    if actual != spec.sha256:
        raise ValueError(
            f"{path} does not match the published {spec.name} model: sha256 {actual}, "
            f"expected {spec.sha256}. Replace it with the file from {spec.url}"
        )
    return path


def deeplab_model_path(
    name: str = DEFAULT_DEEPLAB_MODEL,
    path: str | os.PathLike | None = None,
) -> Path:
    """Locate (or download) a DeepLab TFLite file and verify its sha256.

    Resolution order:

    1. ``path``: the model file itself, or a folder holding it under ``spec.filename``;
    2. ``$CNNLAB_DEEPLAB_DIR``: a folder holding the file under ``spec.filename``;
    3. download with ``keras.utils.get_file`` into ``~/.keras/models/deeplab`` (cached).

    Args:
        name: Key of ``DEEPLAB_MODELS``.
        path: Explicit file or folder; overrides the environment variable.

    Returns:
        Path of the verified ``.tflite`` file.

    Raises:
        ValueError: ``name`` is not in the registry, or the file's sha256 differs from the
            published one (both hashes in the message).
        FileNotFoundError: ``path`` or ``$CNNLAB_DEEPLAB_DIR`` does not hold the file.
        RuntimeError: The download failed (the message names the URL).
    """
    spec = _get_spec(name)
    if path is not None:
        given = Path(path).expanduser()
        candidate = given / spec.filename if given.is_dir() else given
        if not candidate.is_file():
            raise FileNotFoundError(
                f"DeepLab model {spec.name!r} not found at {candidate}; pass path= pointing "
                f"to {spec.filename} (or a folder holding it), or download it from {spec.url}"
            )
        return _check_sha256(candidate, spec)

    env_dir = os.environ.get(DEEPLAB_DIR_ENV)
    if env_dir:
        candidate = Path(env_dir).expanduser() / spec.filename
        if not candidate.is_file():
            raise FileNotFoundError(
                f"${DEEPLAB_DIR_ENV}={env_dir} does not contain {spec.filename} "
                f"(looked for {candidate}); put the file there (from {spec.url}) or unset "
                f"{DEEPLAB_DIR_ENV} to download it"
            )
        return _check_sha256(candidate, spec)

    import keras  # lazy: importing Keras/TensorFlow costs seconds, only downloads need it

    try:
        downloaded = keras.utils.get_file(
            spec.filename, origin=spec.url, file_hash=spec.sha256, cache_subdir="models/deeplab"
        )
    except Exception as exc:  # get_file raises bare Exception for HTTP/URL errors
        raise RuntimeError(
            f"Could not download DeepLab model {spec.name!r} from {spec.url}: {exc}. "
            f"Set {DEEPLAB_DIR_ENV} to a folder holding {spec.filename}, or pass path=."
        ) from exc
    return Path(downloaded)


def _make_interpreter(model_path: Path, num_threads: int | None) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        warnings.warn(
            "ai_edge_litert is not installed; falling back to the deprecated "
            "tf.lite.Interpreter. Install it with `pip install ai-edge-litert`.",
            RuntimeWarning,
            stacklevel=3,
        )
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=str(model_path), num_threads=num_threads)


# --------------------------------------------------------------------------- inference


def _as_rgb_image(image: Any, what: str = "image") -> np.ndarray:
    """Validate an (H, W, 3) RGB array in [0, 255] and return it as uint8."""
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"{what} has shape {array.shape}; expected (height, width, 3) RGB, uint8 or "
            "float in [0, 255] (convert grayscale/RGBA with PIL's .convert('RGB'))"
        )
    if array.dtype == np.uint8:
        return array
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{what} has dtype {array.dtype}; expected uint8 or float in [0, 255]")
    if np.issubdtype(array.dtype, np.floating) and 0 < np.nanmax(array) <= 1.0:
        # A [0, 1] image would be read as almost black; say so rather than segment nothing.
        warnings.warn(
            f"{what} is float with values in [0, 1]; expected [0, 255] (multiply by 255)",
            UserWarning,
            stacklevel=3,
        )
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


class Segmenter(abc.ABC):
    """What every segmentation backend offers: a class index per pixel, at the image's size.

    Subclasses set ``name`` and ``class_names`` and implement :meth:`predict_mask`.

    Attributes:
        name: Backend name (e.g. a ``DEEPLAB_MODELS`` key).
        class_names: Name of each class index the masks hold (index 0 is the background).
    """

    name: str
    class_names: Sequence[str]

    @abc.abstractmethod
    def predict_mask(self, image: Any) -> np.ndarray:
        """Segments one ``(H, W, 3)`` RGB image (uint8 or float in ``[0, 255]``).

        Returns:
            ``(H, W)`` uint8 class indices at the image's own size.
        """

    def predict_masks(self, images: Iterable[Any]) -> list[np.ndarray]:
        """Segments several images (each any size); see :meth:`predict_mask`.

        Args:
            images: Iterable of ``(H, W, 3)`` RGB arrays, uint8 or float in ``[0, 255]``.

        Returns:
            List of ``(H, W)`` uint8 class-index masks, one per image, each at its image's size.
        """
        return [self.predict_mask(image) for image in images]


class DeepLabSegmenter(Segmenter):
    """DeepLabV3 + MobileNetV2 (PASCAL VOC 2012, 21 classes) on the LiteRT interpreter.

    Preprocessing keeps the aspect ratio, as DeepLab's own input pipeline does: the image is
    resized (bilinear) so that its longer side equals the model's input size, then padded at
    the bottom/right with the mean pixel (127.5, i.e. 0 after scaling to ``[-1, 1]``) up to
    the square input. The predicted label map is cropped to the unpadded area and resized back
    to the original size with nearest-neighbour interpolation.

    Sources: Chen et al. 2017, arXiv:1706.05587 (DeepLabV3); Sandler et al. 2018,
    arXiv:1801.04381 (MobileNetV2); https://www.tensorflow.org/lite/examples/segmentation/overview.

    Args:
        name: Key of ``DEEPLAB_MODELS`` (``"deeplabv3_257_float"`` or ``"deeplabv3_513_quant"``).
        path: Model file or folder (see ``deeplab_model_path``).
        num_threads: CPU threads for the interpreter; ``None`` lets LiteRT choose.

    Note:
        One interpreter is not safe to call from several threads at once; make one segmenter
        per thread.
    """

    def __init__(
        self,
        name: str = DEFAULT_DEEPLAB_MODEL,
        path: str | os.PathLike | None = None,
        num_threads: int | None = None,
    ) -> None:
        self.spec = _get_spec(name)
        self.name = self.spec.name
        self.class_names = VOC_CLASSES
        self.model_path = deeplab_model_path(name, path)
        self._interpreter = _make_interpreter(self.model_path, num_threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        size = self.spec.input_size
        if tuple(self._input["shape"]) != (1, size, size, 3):
            raise ValueError(
                f"{self.model_path} takes input {tuple(self._input['shape'])}, expected "
                f"(1, {size}, {size}, 3) for {self.spec.name}"
            )

    @property
    def input_size(self) -> int:
        """Side of the model's square input, in pixels."""
        return self.spec.input_size

    def __repr__(self) -> str:
        return f"DeepLabSegmenter(name={self.spec.name!r}, path={str(self.model_path)!r})"

    def _model_input(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        height, width = image.shape[:2]
        size = self.spec.input_size
        scale = size / max(height, width)
        new_w = min(size, max(1, round(width * scale)))
        new_h = min(size, max(1, round(height * scale)))
        resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
        if self.spec.input_kind == "float":
            batch = np.full((1, size, size, 3), 127.5, dtype=np.float32)
            batch[0, :new_h, :new_w] = resized
            batch = batch / 127.5 - 1.0
        else:
            # 128 is the input zero point: the quantised graph reads it as 0.0, the mean pixel.
            batch = np.full((1, size, size, 3), 128, dtype=np.uint8)
            batch[0, :new_h, :new_w] = resized
        return batch.astype(self._input["dtype"], copy=False), (new_h, new_w)

    def predict_mask(self, image: Any) -> np.ndarray:
        """Segment one image.

        Args:
            image: ``(H, W, 3)`` RGB array, uint8 or float in ``[0, 255]``, any size.

        Returns:
            ``(H, W)`` uint8 array of VOC class indices (``0..20``, see ``VOC_CLASSES``) at the
            original image size.

        Raises:
            ValueError: ``image`` is not an ``(H, W, 3)`` array.
        """
        rgb = _as_rgb_image(image)
        batch, (new_h, new_w) = self._model_input(rgb)
        self._interpreter.set_tensor(self._input["index"], batch)
        self._interpreter.invoke()
        output = self._interpreter.get_tensor(self._output["index"])[0]
        labels = output.argmax(axis=-1) if self.spec.output_kind == "logits" else output
        labels = labels[:new_h, :new_w].astype(np.uint8)
        height, width = rgb.shape[:2]
        if labels.shape != (height, width):
            labels = np.asarray(Image.fromarray(labels).resize((width, height), Image.NEAREST))
        return labels


# --------------------------------------------------------------------------- analysis


def _as_mask(mask: Any, what: str = "mask") -> np.ndarray:
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"{what} has shape {array.shape}; expected (height, width) class indices")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what} has dtype {array.dtype}; expected integer class indices")
    if array.size and array.min() < 0:
        raise ValueError(f"{what} holds negative class index {array.min()}")
    return array


def class_fractions(
    masks: np.ndarray | Sequence[np.ndarray], class_names: Sequence[str] = VOC_CLASSES
) -> pd.DataFrame:
    """Share of pixels per class over a set of masks.

    Args:
        masks: A list of ``(H, W)`` integer class-index masks (sizes may differ), or a single
            mask.
        class_names: Name of each class index.

    Returns:
        DataFrame indexed by class index (``class_id``), one row per class present, sorted by
        pixel count descending, with columns ``class`` (name), ``pixels`` (int) and
        ``fraction`` (float, sums to 1).

    Raises:
        ValueError: A mask is not 2-D integer, or holds an index without a name.
    """
    if isinstance(masks, np.ndarray) and masks.ndim == 2:
        masks = [masks]
    counts = np.zeros(len(class_names), dtype=np.int64)
    for i, mask in enumerate(masks):
        array = _as_mask(mask, f"masks[{i}]")
        if array.size and array.max() >= len(class_names):
            raise ValueError(
                f"masks[{i}] holds class index {array.max()}, but only {len(class_names)} "
                "class names were given"
            )
        counts += np.bincount(array.ravel(), minlength=len(class_names))
    present = np.flatnonzero(counts)
    order = present[np.argsort(-counts[present], kind="stable")]
    total = counts.sum()
    frame = pd.DataFrame(
        {
            "class": [class_names[i] for i in order],
            "pixels": counts[order],
            "fraction": counts[order] / total if total else np.zeros(len(order)),
        },
        index=pd.Index(order, name="class_id"),
    )
    return frame


def dominant_class(mask: np.ndarray, ignore_background: bool = True) -> int:
    """Class index covering the most pixels of one mask.

    Args:
        mask: ``(H, W)`` integer class-index mask.
        ignore_background: Skip class 0, so the answer is the largest foreground class.

    Returns:
        The class index; 0 when ``ignore_background`` and the mask is all background. Ties go
        to the lower index.
    """
    array = _as_mask(mask)
    counts = np.bincount(array.ravel(), minlength=1)
    if ignore_background:
        counts[0] = 0
    return int(counts.argmax()) if counts.any() else 0


# --------------------------------------------------------------------------- IoU


def _mask_pairs(y_true: Any, y_pred: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    if isinstance(y_true, np.ndarray) and y_true.ndim == 2:
        y_true, y_pred = [y_true], [y_pred]
    y_true, y_pred = list(y_true), list(y_pred)
    if len(y_true) != len(y_pred) or not y_true:
        raise ValueError(f"got {len(y_true)} true and {len(y_pred)} predicted masks; pass one "
                         "predicted mask per ground-truth mask")
    pairs = []
    for i, (true, pred) in enumerate(zip(y_true, y_pred)):
        true, pred = _as_mask(true, f"y_true[{i}]"), _as_mask(pred, f"y_pred[{i}]")
        if true.shape != pred.shape:
            raise ValueError(f"y_true[{i}] has shape {true.shape} but y_pred[{i}] has "
                             f"{pred.shape}; predict masks at the image's size")
        pairs.append((true, pred))
    return pairs


def segmentation_confusion(y_true: Any, y_pred: Any, num_classes: int,
                           ignore_index: int | None = 255) -> np.ndarray:
    """Pixel confusion matrix accumulated over a set of masks.

    Args:
        y_true: Ground-truth ``(H, W)`` integer masks (a list, sizes may differ), or one mask.
        y_pred: Predicted masks of the same shapes.
        num_classes: Number of classes (indices ``0 .. num_classes - 1``).
        ignore_index: Ground-truth value left out (VOC marks object borders 255); None keeps
            every pixel.

    Returns:
        ``(num_classes, num_classes)`` int64 pixel counts, rows true, columns predicted
        (``sklearn.metrics.confusion_matrix`` per mask, summed).

    Raises:
        ValueError: Shapes differ, or a mask holds a class index ``>= num_classes`` (other
            than ``ignore_index`` in the ground truth).
    """
    from sklearn.metrics import confusion_matrix

    total = np.zeros((num_classes, num_classes), dtype=np.int64)
    labels = np.arange(num_classes)
    for i, (true, pred) in enumerate(_mask_pairs(y_true, y_pred)):
        keep = true != ignore_index if ignore_index is not None else np.ones(true.shape, bool)
        true, pred = true[keep], pred[keep]
        for what, values in ((f"y_true[{i}]", true), (f"y_pred[{i}]", pred)):
            if values.size and values.max() >= num_classes:
                raise ValueError(f"{what} holds class index {values.max()} but num_classes is "
                                 f"{num_classes}")
        if true.size:
            total += confusion_matrix(true, pred, labels=labels).astype(np.int64)
    return total


def per_class_iou(y_true: Any, y_pred: Any, class_names: Sequence[str],
                  ignore_index: int | None = 255) -> pd.DataFrame:
    """Intersection over union of every class, over the whole set of masks.

    ``IoU = TP / (TP + FP + FN)`` from pixel counts accumulated over all masks, the PASCAL VOC
    segmentation measure (Everingham et al. 2015, "The PASCAL Visual Object Classes
    Challenge: A Retrospective", IJCV 111, sec. 3.2).

    Args:
        y_true: Ground-truth ``(H, W)`` integer masks, or one mask.
        y_pred: Predicted masks of the same shapes.
        class_names: Name of each class index.
        ignore_index: Ground-truth value left out (see :func:`segmentation_confusion`).

    Returns:
        DataFrame indexed by ``class``: ``IoU`` (NaN where the class is in neither the truth
        nor the prediction), ``true pixels``, ``predicted pixels``.
    """
    matrix = segmentation_confusion(y_true, y_pred, len(class_names), ignore_index)
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - tp
    iou = np.divide(tp, union, out=np.full_like(tp, np.nan), where=union > 0)
    return pd.DataFrame({"IoU": iou, "true pixels": matrix.sum(axis=1),
                         "predicted pixels": matrix.sum(axis=0)},
                        index=pd.Index(list(class_names), name="class"))


def mean_iou(y_true: Any, y_pred: Any, class_names: Sequence[str] | int,
             ignore_index: int | None = 255) -> float:
    """Mean IoU (mIoU) over the classes present in the truth or the prediction.

    Args:
        y_true: Ground-truth ``(H, W)`` integer masks, or one mask.
        y_pred: Predicted masks of the same shapes.
        class_names: Name of each class index, or the number of classes.
        ignore_index: Ground-truth value left out.

    Returns:
        The mean of :func:`per_class_iou` over classes with a defined IoU, in ``[0, 1]``.
    """
    names = [str(i) for i in range(class_names)] if isinstance(class_names, int) else \
        class_names
    return float(np.nanmean(per_class_iou(y_true, y_pred, names, ignore_index)["IoU"]))


# --------------------------------------------------------------------------- agreement

# Dataset class -> the PASCAL VOC classes that depict it. VOC's annotation guidelines
# (http://host.robots.ox.ac.uk/pascal/VOC/voc2007/guidelines.html) put cars, vans and people
# carriers under "car" and have no truck/lorry class, so the vehicle set's truck and
# juggernaut (articulated lorry) classes have no VOC counterpart and are left out. Folder
# names of Zenodo 6634554 and the names cnnlab's vehicles selection renames them to
# (bike -> motorcycle, minibus -> bus) are both listed. The retail-products course dataset's
# drinks are VOC bottles.
VOC_CLASS_MAPS: dict[str, dict[str, tuple[str, ...]]] = {
    "vehicles": {
        "bike": ("motorbike", "bicycle"),
        "motorcycle": ("motorbike", "bicycle"),
        "car": ("car",),
        "minibus": ("bus", "car"),
        "bus": ("bus", "car"),
        "pickup": ("car",),
    },
    "retail": {"drinks": ("bottle",)},
}

# Images the agreement check segments per run profile (notebook 04): a few in the smoke
# profile that tests run; None: every image (1,200 vehicle photos take about 20 s with the
# float model and 60 s with the uint8 one on 2 CPU cores).
AGREEMENT_IMAGES: dict[str, int | None] = {"smoke": 24, "cpu": None, "gpu": None}


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as ``(H, W, 3)`` uint8 RGB (EXIF orientation applied).

    Raises:
        ValueError: If Pillow cannot read it; the message names the file.
    """
    from PIL import ImageOps

    try:
        with Image.open(path) as image:
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except Exception as error:
        raise ValueError(f"{path} is not a readable image ({error})") from error


def agreement_table(
    segmenter: Segmenter,
    rows: pd.DataFrame,
    class_map: Mapping[str, Sequence[str]],
) -> pd.DataFrame:
    """Segments each image and checks its largest foreground segment against its label.

    Args:
        segmenter: Any :class:`Segmenter` with VOC-named classes.
        rows: Images with ``label`` (dataset class) and ``file`` columns; labels absent from
            ``class_map`` are skipped.
        class_map: Dataset class -> accepted segmenter classes (see ``VOC_CLASS_MAPS``).

    Returns:
        One row per image: ``label``, ``file``, ``largest segment`` (``"background"`` when
        nothing else was found), ``foreground share`` (fraction of pixels not background),
        ``expected`` (accepted classes joined by ``/``) and ``agrees`` (bool).

    Raises:
        ValueError: If ``class_map`` names a class the segmenter does not know, or no row has
            a mapped label.
    """
    names = list(segmenter.class_names)
    unknown = sorted({c for accepted in class_map.values() for c in accepted} - set(names))
    if unknown:
        raise ValueError(f"class_map names {unknown}, which {segmenter.name} does not predict "
                         f"(its classes: {', '.join(names)})")
    mapped = rows[rows["label"].isin(list(class_map))]
    if mapped.empty:
        raise ValueError(f"no image has a label in the class map ({sorted(class_map)}); "
                         f"labels found: {sorted(rows['label'].unique())[:10]}")
    records = []
    for label, file in zip(mapped["label"], mapped["file"]):
        mask = segmenter.predict_mask(read_image(file))
        largest = names[dominant_class(mask)]
        records.append({
            "label": label, "file": str(file), "largest segment": largest,
            "foreground share": float((mask != 0).mean()),
            "expected": "/".join(class_map[label]),
            "agrees": largest in class_map[label],
        })
    return pd.DataFrame(records)


def agreement_summary(table: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per class: images, how many agree, the share with a Wilson interval, what was found.

    Args:
        table: From :func:`agreement_table`.
        confidence: Level of the Wilson score interval of the share (see
            ``cnnlab.evaluate.wilson_interval``).

    Returns:
        One row per class plus ``all``: ``expected``, ``images``, ``agree``, ``share``,
        ``CI low``, ``CI high``, ``largest segments`` (the three most frequent, with counts).
    """
    from scipy.stats import binomtest

    def summarise(label: str, part: pd.DataFrame) -> dict:
        agree, n = int(part["agrees"].sum()), len(part)
        ci = binomtest(agree, n).proportion_ci(confidence, method="wilson")
        found = part["largest segment"].value_counts().head(3)
        expected = part["expected"].unique()
        return {"class": label,
                "expected": expected[0] if len(expected) == 1 else "its mapped classes",
                "images": n, "agree": agree, "share": agree / n,
                "CI low": float(ci.low), "CI high": float(ci.high),
                "largest segments": ", ".join(f"{k} {v}" for k, v in found.items())}

    out = [summarise(label, part) for label, part in table.groupby("label", sort=True)]
    out.append(summarise("all", table))
    return pd.DataFrame(out).set_index("class")


def plot_agreement_failures(segmenter: Segmenter, table: pd.DataFrame, k: int = 6,
                            seed: int = 0) -> Figure:
    """Input, mask and overlay of ``k`` images whose largest segment disagrees with the label.

    Args:
        segmenter: The segmenter that made ``table``.
        table: From :func:`agreement_table`.
        k: Failures shown, spread over the classes (round robin).
        seed: Sampling seed.

    Raises:
        ValueError: If no image disagrees.
    """
    failures = table[~table["agrees"]]
    if failures.empty:
        raise ValueError("every image agrees with its label; there is no failure to show")
    shuffled = failures.sample(frac=1, random_state=seed)
    order = shuffled.groupby("label").cumcount()
    picks = shuffled.assign(_round=order.to_numpy()).sort_values(["_round", "label"]).head(k)
    images = [read_image(f) for f in picks["file"]]
    masks = segmenter.predict_masks(images)
    titles = [f"{row['label']} → {row['largest segment']}" for _, row in picks.iterrows()]
    return plot_segmentation(images, masks, titles, class_names=segmenter.class_names)


# --------------------------------------------------------------------------- colours


def _class_name(index: int) -> str:
    if index < len(VOC_CLASSES):
        return VOC_CLASSES[index]
    return "ignore" if index == 255 else str(index)


def voc_colormap(num_classes: int = 21) -> np.ndarray:
    """PASCAL VOC label colours.

    The VOC devkit's ``labelcolormap`` (VOCdevkit ``VOCcode/VOClabelcolormap.m``): the bits of
    the class index are spread over R, G, B from the most significant colour bit down, so
    1 = (128, 0, 0), 7 car = (128, 128, 128), 15 person = (192, 128, 128) and the ignore
    label 255 = (224, 224, 192).

    Args:
        num_classes: Number of entries (21 for VOC; 256 to also cover the ignore label).

    Returns:
        ``(num_classes, 3)`` uint8 RGB array.
    """
    indices = np.arange(num_classes)
    colormap = np.zeros((num_classes, 3), dtype=np.int64)
    for shift in range(7, -1, -1):
        for channel in range(3):
            colormap[:, channel] |= ((indices >> channel) & 1) << shift
        indices = indices >> 3
    return colormap.astype(np.uint8)


def colorize_mask(mask: np.ndarray) -> np.ndarray:
    """Paint a class-index mask with the VOC colours.

    Args:
        mask: ``(H, W)`` integer class indices in ``0..255``.

    Returns:
        ``(H, W, 3)`` uint8 RGB image.
    """
    array = _as_mask(mask)
    if array.size and array.max() > 255:
        raise ValueError(f"mask holds class index {array.max()}; the VOC colormap stops at 255")
    return voc_colormap(256)[array]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the mask's VOC colours over the image.

    Background pixels (class 0) keep the image's own colour; the others become
    ``(1 - alpha) * image + alpha * colour``.

    Args:
        image: ``(H, W, 3)`` RGB, uint8 or float in ``[0, 255]``.
        mask: ``(H, W)`` integer class indices, same height and width as ``image``.
        alpha: Opacity of the colours, in ``[0, 1]``.

    Returns:
        ``(H, W, 3)`` uint8 RGB image.

    Raises:
        ValueError: Shapes do not match, or ``alpha`` is outside ``[0, 1]``.
    """
    rgb = _as_rgb_image(image)
    array = _as_mask(mask)
    if array.shape != rgb.shape[:2]:
        raise ValueError(
            f"mask has shape {array.shape} but image has {rgb.shape}; they must share "
            "(height, width) (predict_mask returns masks at the image's size)"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} is outside [0, 1]")
    colours = colorize_mask(array).astype(np.float32)
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colours
    out = np.where((array != 0)[..., None], blended, rgb)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def plot_segmentation(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    titles: Sequence[str] | None = None,
    class_names: Sequence[str] = VOC_CLASSES,
) -> Figure:
    """Input, colour mask and overlay side by side, one row per image.

    A legend below the grid lists only the classes present in ``masks``, with their colours.

    Args:
        images: ``(H, W, 3)`` RGB images, uint8 or float in ``[0, 255]``.
        masks: ``(H, W)`` class-index masks, one per image.
        titles: Optional label per row (e.g. file name or true class).
        class_names: Name of each class index, for the legend (default: PASCAL VOC).

    Returns:
        A ``matplotlib.figure.Figure`` with ``3 * len(images)`` axes.
    """
    images, masks = list(images), list(masks)
    if not images or len(images) != len(masks):
        raise ValueError(
            f"got {len(images)} images and {len(masks)} masks; pass one mask per image"
        )
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"got {len(titles)} titles for {len(images)} images")

    rows = len(images)
    fig = plt.figure(figsize=(7.5, 2.5 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, 3, squeeze=False)
    for row, (image, mask) in enumerate(zip(images, masks)):
        rgb = _as_rgb_image(image, f"images[{row}]")
        prefix = f"{titles[row]}: " if titles is not None else ""
        panels = (
            (rgb, f"{prefix}input"),
            (colorize_mask(mask), "mask"),
            (overlay(rgb, mask), "overlay"),
        )
        for ax, (picture, title) in zip(axes[row], panels):
            ax.imshow(picture, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()

    colours = voc_colormap(256) / 255.0
    present = np.unique(np.concatenate([_as_mask(m).ravel() for m in masks]))
    handles = [
        Patch(facecolor=colours[i], edgecolor="black", linewidth=0.5,
              label=class_names[i] if i < len(class_names) else _class_name(i))
        for i in present
    ]
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=min(len(handles), 6),
        fontsize=8,
        frameon=False,
    )
    return fig
