"""Registry of ImageNet backbones from ``keras.applications``.

Each entry says how to build the backbone, which input preprocessing it expects, where its
fine-tuning boundary lies and which local weights file stands in for the ImageNet download.
Adding a backbone is one entry here, not a new branch elsewhere. The registry is plain data:
this module imports neither TensorFlow nor Keras (``cnnlab list`` reads it in a fraction of a
second); the builders live in :mod:`cnnlab.models.transfer`.

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
from dataclasses import dataclass
from pathlib import Path

WEIGHTS_DIR_ENV = "CNNLAB_WEIGHTS_DIR"


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone of the registry.

    Attributes:
        name: Registry key, also the model name in ``models/``.
        application: Name of the ``keras.applications`` constructor, e.g. ``"MobileNetV2"``.
        kwargs: Extra constructor arguments (e.g. ``alpha``).
        preprocessing: ``"inside"``, ``"tf"``, ``"torch"`` or ``"caffe"``.
        module: The ``keras.applications`` submodule holding its ``preprocess_input``.
        default_size: ImageNet training resolution in pixels.
        min_size: Smallest accepted input side in pixels.
        frozen_through: Stage 2 of fine-tuning unfreezes every layer after the last one whose
            name starts with this prefix (InceptionV3: after ``mixed8``, the top two inception
            blocks, as in the Keras fine-tuning guide; VGG16: ``block5``; whole blocks for
            MobileNetV2 (``block_13`` to ``block_16``), MobileNetV3, EfficientNet and
            DenseNet). Used by the ``"top"`` unfreeze rule of ``training.fine_tune``.
        reference: Paper of the architecture.
        imagenet_layers: Layers the ``keras.applications`` constructor adds to the graph only
            with ``weights="imagenet"``, each ``{"after": layer class, "class_name": layer
            class, "config": constructor arguments}``: inserted after every layer of class
            ``after`` when a local ImageNet file is loaded, so that it runs in the graph the
            download builds. EfficientNet divides by ``sqrt(std)`` once more after its
            ``Normalization`` (keras/src/applications/efficientnet.py, tensorflow#49930).
    """

    name: str
    application: str
    kwargs: dict
    preprocessing: str
    module: str
    default_size: int
    min_size: int
    frozen_through: str
    reference: str
    imagenet_layers: tuple[dict, ...] = ()

    @property
    def weights_filename(self) -> str:
        """File name looked up in a weights folder for this backbone's ImageNet weights."""
        return f"{self.name}_imagenet_notop.weights.h5"

    @property
    def constructor(self):
        """The ``keras.applications`` constructor (imports Keras)."""
        import keras

        return getattr(keras.applications, self.application)

    @property
    def preprocess_input(self):
        """The ``keras.applications`` reference preprocessing (tests compare ours to it)."""
        import keras

        return getattr(keras.applications, self.module).preprocess_input


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "inception_v3", "InceptionV3", {}, "tf", "inception_v3",
            299, 75, "mixed8", "Szegedy et al. 2016, arXiv:1512.00567",
        ),
        BackboneSpec(
            "vgg16", "VGG16", {}, "caffe", "vgg16",
            224, 32, "block4", "Simonyan & Zisserman 2015, arXiv:1409.1556",
        ),
        BackboneSpec(
            "mobilenet_v2", "MobileNetV2", {"alpha": 1.0}, "tf",
            "mobilenet_v2", 224, 32, "block_12",
            "Sandler et al. 2018, arXiv:1801.04381",
        ),
        BackboneSpec(
            "mobilenet_v3_small", "MobileNetV3Small",
            {"alpha": 1.0, "include_preprocessing": True}, "inside",
            "mobilenet_v3", 224, 32, "expanded_conv_8",
            "Howard et al. 2019, arXiv:1905.02244",
        ),
        BackboneSpec(
            "mobilenet_v3_small_075", "MobileNetV3Small",
            {"alpha": 0.75, "include_preprocessing": True}, "inside",
            "mobilenet_v3", 224, 32, "expanded_conv_8",
            "Howard et al. 2019, arXiv:1905.02244",
        ),
        BackboneSpec(
            "mobilenet_v3_large", "MobileNetV3Large",
            {"alpha": 1.0, "include_preprocessing": True}, "inside",
            "mobilenet_v3", 224, 32, "expanded_conv_11",
            "Howard et al. 2019, arXiv:1905.02244",
        ),
        BackboneSpec(
            "efficientnet_b0", "EfficientNetB0", {}, "inside",
            "efficientnet", 224, 32, "block5",
            "Tan & Le 2019, arXiv:1905.11946",
            imagenet_layers=({
                "after": "Normalization", "class_name": "Rescaling",
                "config": {"scale": [std ** -0.5 for std in (0.229, 0.224, 0.225)]},
            },),
        ),
        BackboneSpec(
            "densenet121", "DenseNet121", {}, "torch", "densenet",
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


WEIGHTS_MODES = ("imagenet", "auto", "local", "none")
# The label of a backbone that ``"auto"`` starts from random weights because Keras could not
# download its ImageNet file; in capitals, as every random-init label is shown.
OFFLINE_LABEL = "none (RANDOM INIT: the ImageNet download failed, offline?)"


def resolve_weights(
    name: str, weights: str = "imagenet", weights_dir: str | os.PathLike | None = None
) -> WeightsChoice:
    """Decides which weights backbone ``name`` starts from; never falls back silently.

    Args:
        name: Backbone registry key.
        weights: ``"imagenet"``: a local file from ``weights_dir`` if it has one, else the Keras
            download (which raises if unreachable); ``"auto"``: the same, but where Keras
            cannot fetch the file (offline) random initialisation, announced once in capitals
            (:func:`cnnlab.models.transfer.imagenet_download_error`) and stated in the returned
            label; ``"local"``: the local file if present, else random initialisation, stated
            in the returned label (no download is tried); ``"none"``: random initialisation;
            or a path to a ``.weights.h5`` file.
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
    if weights == "auto":
        from cnnlab.models.transfer import imagenet_download_error  # imports Keras

        if imagenet_download_error(name) is not None:
            return WeightsChoice("none", None, OFFLINE_LABEL)
    return WeightsChoice("imagenet", None, "imagenet (keras download)")
