"""Registry of ImageNet backbones from ``keras.applications``.

Each entry says how to build the backbone, which input preprocessing it expects, where its
fine-tuning boundary lies and which local weights file stands in for the ImageNet download.
Adding a backbone is one entry here, not a new branch elsewhere.

Preprocessing, as documented by ``keras.applications`` (and checked against each model's
``preprocess_input`` in the tests):

- ``"inside"``: the model rescales raw ``[0, 255]`` RGB itself (EfficientNet, MobileNetV3).
- ``"tf"``: ``x / 127.5 - 1`` (InceptionV3, Szegedy et al. 2016, arXiv:1512.00567;
  MobileNetV2, Sandler et al. 2018, arXiv:1801.04381).
- ``"torch"``: ``x / 255``, minus ImageNet mean, divided by std per channel (DenseNet).
- ``"caffe"``: RGB -> BGR, minus ImageNet BGR mean, no scaling (VGG16; Simonyan & Zisserman
  2015, arXiv:1409.1556).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
from keras import ops

WEIGHTS_DIR_ENV = "CNNLAB_WEIGHTS_DIR"

_IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
_IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="cnnlab")
class BackbonePreprocessing(keras.layers.Layer):
    """Maps raw RGB ``[0, 255]`` images to what a ``keras.applications`` backbone expects.

    Written as a layer (not a ``Lambda``) so that models holding it save and load as ``.keras``
    and ``.h5`` and so that every model in this project takes the same raw input.

    Args:
        mode: ``"tf"``, ``"torch"`` or ``"caffe"`` (see the module docstring).

    Call args:
        inputs: ``(batch, h, w, 3)`` float32 RGB in ``[0, 255]``.

    Returns:
        ``(batch, h, w, 3)`` float32 preprocessed for the backbone.
    """

    MODES = ("tf", "torch", "caffe")

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}; choose one of {self.MODES}")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_IMAGENET_MEAN_RGB, dtype=x.dtype)
            std = ops.convert_to_tensor(_IMAGENET_STD_RGB, dtype=x.dtype)
            return (x / 255.0 - mean) / std
        mean = ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=x.dtype)
        return ops.flip(x, axis=-1) - mean

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone of the registry.

    Attributes:
        name: Registry key, also the model name in ``models/``.
        constructor: The ``keras.applications`` function.
        kwargs: Extra constructor arguments (e.g. ``alpha``).
        preprocessing: ``"inside"``, ``"tf"``, ``"torch"`` or ``"caffe"``.
        preprocess_input: The ``keras.applications`` reference function (tests compare to it).
        default_size: ImageNet training resolution in pixels.
        min_size: Smallest accepted input side in pixels.
        frozen_through: Stage 2 of fine-tuning unfreezes every layer after the last one whose
            name starts with this prefix (InceptionV3: after ``mixed8``, the top two inception
            blocks, as in the Keras fine-tuning guide; VGG16: ``block5``; whole blocks for
            MobileNetV2 (``block_13`` to ``block_16``), MobileNetV3, EfficientNet and
            DenseNet). Used by the ``"top"`` unfreeze rule of ``train.fine_tune``.
        reference: Paper of the architecture.
    """

    name: str
    constructor: Callable[..., keras.Model]
    kwargs: dict
    preprocessing: str
    preprocess_input: Callable
    default_size: int
    min_size: int
    frozen_through: str
    reference: str

    @property
    def weights_filename(self) -> str:
        """File name looked up in a weights folder for this backbone's ImageNet weights."""
        return f"{self.name}_imagenet_notop.weights.h5"


_apps = keras.applications

BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "inception_v3", _apps.InceptionV3, {}, "tf", _apps.inception_v3.preprocess_input,
            299, 75, "mixed8", "Szegedy et al. 2016, arXiv:1512.00567",
        ),
        BackboneSpec(
            "vgg16", _apps.VGG16, {}, "caffe", _apps.vgg16.preprocess_input,
            224, 32, "block4", "Simonyan & Zisserman 2015, arXiv:1409.1556",
        ),
        BackboneSpec(
            "mobilenet_v2", _apps.MobileNetV2, {"alpha": 1.0}, "tf",
            _apps.mobilenet_v2.preprocess_input, 224, 32, "block_12",
            "Sandler et al. 2018, arXiv:1801.04381",
        ),
        BackboneSpec(
            "mobilenet_v3_small", _apps.MobileNetV3Small,
            {"alpha": 1.0, "include_preprocessing": True}, "inside",
            _apps.mobilenet_v3.preprocess_input, 224, 32, "expanded_conv_8",
            "Howard et al. 2019, arXiv:1905.02244",
        ),
        BackboneSpec(
            "mobilenet_v3_small_075", _apps.MobileNetV3Small,
            {"alpha": 0.75, "include_preprocessing": True}, "inside",
            _apps.mobilenet_v3.preprocess_input, 224, 32, "expanded_conv_8",
            "Howard et al. 2019, arXiv:1905.02244",
        ),
        BackboneSpec(
            "mobilenet_v3_large", _apps.MobileNetV3Large,
            {"alpha": 1.0, "include_preprocessing": True}, "inside",
            _apps.mobilenet_v3.preprocess_input, 224, 32, "expanded_conv_11",
            "Howard et al. 2019, arXiv:1905.02244",
        ),
        BackboneSpec(
            "efficientnet_b0", _apps.EfficientNetB0, {}, "inside",
            _apps.efficientnet.preprocess_input, 224, 32, "block5",
            "Tan & Le 2019, arXiv:1905.11946",
        ),
        BackboneSpec(
            "densenet121", _apps.DenseNet121, {}, "torch", _apps.densenet.preprocess_input,
            224, 32, "pool4", "Huang et al. 2017, arXiv:1608.06993",
        ),
    )
}


def get_backbone_spec(name: str) -> BackboneSpec:
    """Returns the registry entry ``name``.

    Raises:
        KeyError: If ``name`` is unknown; the message lists the registry.
    """
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name]


@dataclass(frozen=True)
class WeightsChoice:
    """What a backbone starts from.

    Attributes:
        source: ``"imagenet"`` (Keras download), ``"file"`` (a local ImageNet weights file) or
            ``"none"`` (random initialisation).
        path: The local file for ``"file"``.
        label: Human-readable description, shown in notebooks and the leaderboard.
    """

    source: str
    path: Path | None
    label: str

    @property
    def is_pretrained(self) -> bool:
        return self.source != "none"


WEIGHTS_MODES = ("imagenet", "local", "none")


def resolve_weights(
    name: str, weights: str = "imagenet", weights_dir: str | os.PathLike | None = None
) -> WeightsChoice:
    """Decides which weights backbone ``name`` starts from; never falls back silently.

    Args:
        name: Backbone registry key.
        weights: ``"imagenet"``: a local file from ``weights_dir`` if it has one, else the Keras
            download (which raises if unreachable); ``"local"``: the local file if present, else
            random initialisation, stated in the returned label; ``"none"``: random
            initialisation; or a path to a ``.weights.h5`` file.
        weights_dir: Folder of ``<backbone>_imagenet_notop.weights.h5`` files; defaults to
            ``$CNNLAB_WEIGHTS_DIR``.

    Returns:
        The choice, with a label saying what was chosen and why.

    Raises:
        ValueError: On an unknown ``weights`` value.
        FileNotFoundError: If ``weights`` is a path that does not exist or ``weights_dir`` is
            not a folder.
    """
    spec = get_backbone_spec(name)
    if weights not in WEIGHTS_MODES:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"weights file {weights} for {name} does not exist; pass one of "
                f"{WEIGHTS_MODES} or the path of a .weights.h5 file"
            )
        return WeightsChoice("file", path, f"file {path.name}")
    if weights == "none":
        return WeightsChoice("none", None, "none (random init)")
    folder = weights_dir or os.environ.get(WEIGHTS_DIR_ENV)
    local = None
    if folder:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"weights folder {folder} does not exist; fix --weights-dir or "
                f"${WEIGHTS_DIR_ENV}"
            )
        candidate = folder / spec.weights_filename
        local = candidate if candidate.is_file() else None
    if local is not None:
        return WeightsChoice("file", local, f"imagenet (local file {local.name})")
    if weights == "local":
        return WeightsChoice(
            "none", None, f"none (random init: no {spec.weights_filename} in weights folder)"
        )
    return WeightsChoice("imagenet", None, "imagenet (keras download)")


def build_backbone(
    name: str, image_size: int, weights: WeightsChoice | str = "none"
) -> keras.Model:
    """Builds a headless backbone for square RGB input.

    Args:
        name: Backbone registry key.
        image_size: Input side in pixels (at least the backbone's ``min_size``).
        weights: A :class:`WeightsChoice` or a ``weights`` value for :func:`resolve_weights`.

    Returns:
        ``keras.Model`` mapping ``(batch, image_size, image_size, 3)`` preprocessed input to
        ``(batch, h', w', channels)`` features (no pooling, no top).

    Raises:
        ValueError: If ``image_size`` is below the backbone's minimum.
        RuntimeError: If the ImageNet download fails; the message says how to go offline.
    """
    spec = get_backbone_spec(name)
    if image_size < spec.min_size:
        raise ValueError(
            f"{name} needs images of at least {spec.min_size} px, got {image_size}; "
            f"raise image_size or choose another backbone"
        )
    choice = weights if isinstance(weights, WeightsChoice) else resolve_weights(name, weights)
    kwargs = dict(spec.kwargs, input_shape=(image_size, image_size, 3), include_top=False)
    if choice.source == "imagenet":
        try:
            model = spec.constructor(weights="imagenet", **kwargs)
        except Exception as error:  # network errors come in many types
            raise RuntimeError(
                f"could not download the ImageNet weights of {name} ({error}). Offline, put "
                f"{spec.weights_filename} in a folder and pass --weights-dir (or set "
                f"${WEIGHTS_DIR_ENV}), or train from scratch with --weights none"
            ) from error
    else:
        model = spec.constructor(weights=None, **kwargs)
        if choice.source == "file":
            model.load_weights(str(choice.path))
    model.name = name  # type: ignore[misc]
    return model


def fine_tune_boundary(backbone: keras.Model, name: str | None = None) -> int:
    """Index of the first backbone layer that stage 2 of fine-tuning unfreezes.

    Args:
        backbone: A model built by :func:`build_backbone`.
        name: Registry key (default: ``backbone.name``).

    Returns:
        ``i`` such that ``backbone.layers[i:]`` are trainable in stage 2.

    Raises:
        ValueError: If no layer matches the registry's ``frozen_through`` prefix.
    """
    spec = get_backbone_spec(name or backbone.name)
    matches = [i for i, layer in enumerate(backbone.layers)
               if layer.name.startswith(spec.frozen_through)]
    if not matches:
        raise ValueError(f"no layer of {backbone.name} starts with {spec.frozen_through!r}")
    return matches[-1] + 1
