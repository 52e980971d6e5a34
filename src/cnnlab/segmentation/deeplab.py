"""Semantic segmentation with TensorFlow's pretrained DeepLabV3 TFLite models.

DeepLabV3 (Chen et al. 2017, "Rethinking Atrous Convolution for Semantic Image
Segmentation", arXiv:1706.05587) on a MobileNetV2 backbone (Sandler et al. 2018,
"MobileNetV2: Inverted Residuals and Linear Bottlenecks", arXiv:1801.04381), trained on
PASCAL VOC 2012 (21 classes: background + 20 objects). TensorFlow publishes it as a TFLite
model (https://www.tensorflow.org/lite/examples/segmentation/overview); it runs here on the
LiteRT interpreter (``ai_edge_litert``), the maintained successor of ``tf.lite.Interpreter``.

Both published DeepLabV3 files (float 257 px, uint8 513 px) run behind one
:class:`Segmenter` interface, as does the DeepLabV3+ fine-tuned in Keras
(``cnnlab.segmentation.training.KerasSegmenter``), so the measures below apply to any of them:
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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from PIL import Image

from cnnlab.files import sha256_file
from cnnlab.startup_logs import quiet_native_logs

__all__ = [
    "DEEPLAB_DIR_ENV",
    "DEEPLAB_MODELS",
    "DEFAULT_DEEPLAB_MODEL",
    "VOC_CLASSES",
    "DeepLabSegmenter",
    "DeepLabSpec",
    "Segmenter",
    "class_fractions",
    "deeplab_model_path",
    "dominant_class",
    "load_deeplab_models",
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

    @property
    def description(self) -> str:
        """The backend in words, for figure titles (here: its ``name``)."""
        return self.name

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
        with quiet_native_logs():  # LiteRT's "Created ... XNNPACK delegate" line
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

    @property
    def description(self) -> str:
        """E.g. ``"DeepLabV3 TFLite 257 px float (deeplabv3_257_float)"``."""
        return (f"DeepLabV3 TFLite {self.spec.input_size} px {self.spec.input_kind} "
                f"({self.spec.name})")

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


def load_deeplab_models(names=None, num_threads: int | None = None
                        ) -> dict[str, DeepLabSegmenter]:
    """The pretrained DeepLab segmenters that can be had here, the others announced.

    Each model is looked up as :func:`deeplab_model_path` does (``$CNNLAB_DEEPLAB_DIR``, else
    Keras' download cache, else a download). A model whose download fails (offline) is left
    out with a ``WARNING:`` line in capitals saying so and how to provide the file, so that a
    run without network goes on with what it has instead of stopping; a wrong local file or
    folder still raises.

    Args:
        names: Keys of :data:`DEEPLAB_MODELS` (None: all of them, in registry order).
        num_threads: CPU threads per interpreter (None: LiteRT's choice).

    Returns:
        ``{name: DeepLabSegmenter}`` of the models that loaded, in the order asked.

    Raises:
        ValueError: An unknown name, or a file whose sha256 differs from the published one.
        FileNotFoundError: ``$CNNLAB_DEEPLAB_DIR`` does not hold a file.
    """
    loaded = {}
    for name in names or DEEPLAB_MODELS:
        try:
            loaded[name] = DeepLabSegmenter(name, num_threads=num_threads)
        except RuntimeError as error:  # the download failed
            spec = _get_spec(name)
            reason = error.__cause__ or error  # the download's own error, not our advice
            print(f"WARNING: NO PRETRAINED DEEPLAB MODEL {name.upper()}: THE DOWNLOAD FAILED "
                  f"({type(reason).__name__}: {reason}). ITS SECTIONS ARE SKIPPED. Put "
                  f"{spec.filename} (from {spec.url}) in a folder and set "
                  f"${DEEPLAB_DIR_ENV} to it.", flush=True)
    return loaded
