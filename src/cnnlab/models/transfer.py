"""Transfer models: a ``keras.applications`` backbone plus a classification head.

The backbone comes from the registry in :mod:`cnnlab.models.backbones` (ImageNet weights from
Keras' download, a local file, or random initialisation, never chosen silently);
:class:`BackbonePreprocessing` maps raw ``[0, 255]`` RGB to what each backbone expects, as a
saveable layer, so every model of the project takes the same input. Preprocessing, as
documented by ``keras.applications`` and checked against each ``preprocess_input`` in the
tests: ``"inside"`` (EfficientNet, MobileNetV3 rescale themselves), ``"tf"`` (``x / 127.5 -
1``; InceptionV3, MobileNetV2), ``"torch"`` (ImageNet mean/std; DenseNet), ``"caffe"`` (BGR
minus the ImageNet mean; VGG16).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from cnnlab.models.backbones import (
    WEIGHTS_DIR_ENV,
    WeightsChoice,
    get_backbone_spec,
    resolve_weights,
)

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


def build_backbone(
    name: str, image_size: int, weights: WeightsChoice | str = "none"
) -> keras.Model:
    """Builds a headless backbone for square RGB input.

    A local ImageNet file (``WeightsChoice("file", ...)``) is loaded into the same graph that
    ``weights="imagenet"`` builds: Keras adds some layers only when it downloads the weights
    itself (EfficientNet's extra ``Rescaling`` by ``1 / sqrt(std)``, tensorflow#49930), so the
    backbone is built with ``weights=None`` and the registry's ``imagenet_layers`` are inserted
    (:func:`keras.models.clone_model`) before the file is loaded. Random initialisation
    (``"none"``) builds Keras' ``weights=None`` graph.

    Args:
        name: Backbone registry key.
        image_size: Input side in pixels (at least the backbone's ``min_size``).
        weights: A :class:`WeightsChoice` or a ``weights`` value for :func:`resolve_weights`.

    Returns:
        ``keras.Model`` mapping ``(batch, image_size, image_size, 3)`` preprocessed input to
        ``(batch, h', w', channels)`` features (no pooling, no top).

    Raises:
        ValueError: If ``image_size`` is below the backbone's minimum.
        RuntimeError: If the ImageNet download fails (the message says how to go offline),
            or if an ``imagenet_layers`` entry matches no layer of the installed Keras'
            backbone.
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
            model = _with_imagenet_layers(model, name, spec.imagenet_layers)
            model.load_weights(str(choice.path))
    model.name = name  # type: ignore[misc]
    return model


def _with_imagenet_layers(model: keras.Model, name: str, extra: tuple[dict, ...]
                          ) -> keras.Model:
    """``model`` (built with ``weights=None``) with the layers of ``weights="imagenet"`` added.

    The model's own layers are reused (no weights are copied); each entry of ``extra`` puts a
    new layer after every layer of class ``after``. An inserted layer without weights (such as
    ``Rescaling``) leaves the paths in a ``.weights.h5`` file unchanged, so files saved from
    either graph load into this one.
    """
    if not extra:
        return model
    inserted = {entry["after"]: 0 for entry in extra}

    def call(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        for entry in extra:
            if type(layer).__name__ == entry["after"]:
                outputs = getattr(layers, entry["class_name"])(**entry["config"])(outputs)
                inserted[entry["after"]] += 1
        return outputs

    clone = keras.models.clone_model(model, input_tensors=model.input,
                                     clone_function=lambda layer: layer, call_function=call)
    missing = [after for after, count in inserted.items() if not count]
    if missing:
        raise RuntimeError(
            f"{name} built by Keras {keras.__version__} has no {', '.join(missing)} layer to "
            f"put its ImageNet-only layers after; update imagenet_layers of {name} in "
            f"cnnlab.models.backbones.BACKBONES")
    return clone


_DOWNLOAD_ERRORS: dict[str, str | None] = {}


def imagenet_download_error(name: str, timeout: float = 60.0) -> str | None:
    """Fetches backbone ``name``'s ImageNet file through Keras; the error if it cannot.

    Builds the backbone with ``weights="imagenet"`` once per process, which is how Keras
    downloads the file (``keras.utils.get_file``, cached in ``~/.keras/models/`` or
    ``$KERAS_HOME/models/``, so the model built afterwards reads it from there). Where that
    fails (offline, an unreachable or refused origin) the failure is announced once, in
    capitals, on standard output, for ``resolve_weights(name, "auto")`` to fall back to random
    initialisation.

    Args:
        name: Backbone registry key.
        timeout: Seconds a socket may wait for the download server before giving up.

    Returns:
        None when the weights are in Keras' cache (downloaded now or earlier), else the error
        text.
    """
    import socket

    if name not in _DOWNLOAD_ERRORS:
        spec = get_backbone_spec(name)
        size = spec.default_size
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout)
        try:
            spec.constructor(weights="imagenet", include_top=False, input_shape=(size, size, 3),
                             **spec.kwargs)
            _DOWNLOAD_ERRORS[name] = None
        except Exception as error:  # network errors come in many types
            _DOWNLOAD_ERRORS[name] = f"{type(error).__name__}: {error}"
            print(f"WARNING: NO IMAGENET WEIGHTS FOR {name.upper()}: THE KERAS DOWNLOAD FAILED "
                  f"({_DOWNLOAD_ERRORS[name]}). {name.upper()} STARTS FROM RANDOM "
                  f"INITIALISATION. Put {spec.weights_filename} in a folder and pass "
                  f"--weights-dir, or run with network access, for the pretrained model.",
                  flush=True)
        finally:
            socket.setdefaulttimeout(previous)
    return _DOWNLOAD_ERRORS[name]


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


SCRATCH_BN_MOMENTUM = 0.9


def build_transfer_model(
    backbone: str,
    num_classes: int,
    image_size: int,
    weights: WeightsChoice | str = "none",
    dropout: float = 0.2,
) -> keras.Model:
    """Backbone + global average pooling + dropout + dense softmax head.

    A pretrained backbone is nested as one layer, frozen, and called with ``training=False``,
    so its BatchNormalization layers stay in inference mode also when it is unfrozen for
    fine-tuning (the Keras transfer-learning guide's recipe; unfreezing BN statistics is what
    collapsed validation accuracy in the course projects). A backbone without pretrained
    weights is left trainable with BatchNormalization in its normal training behaviour: it is
    trained from scratch, since freezing random features teaches the head nothing.

    Args:
        backbone: Backbone registry key (see ``cnnlab.models.backbones.BACKBONES``).
        num_classes: Number of output classes.
        image_size: Input side in pixels.
        weights: What the backbone starts from (see ``backbones.resolve_weights``).
        dropout: Dropout rate before the dense layer.

    Returns:
        Uncompiled model named after the backbone (backbone frozen when pretrained):
        ``(batch, image_size, image_size, 3)`` float32 RGB in ``[0, 255]`` ->
        ``(batch, num_classes)`` float32 probabilities.
    """
    spec = get_backbone_spec(backbone)
    choice = weights if isinstance(weights, WeightsChoice) else resolve_weights(backbone, weights)
    base = build_backbone(backbone, image_size, choice)
    base.trainable = not choice.is_pretrained
    if not choice.is_pretrained:
        # MobileNetV3 and EfficientNet use BN momentum 0.999 (0.99 is Keras' default), tuned for
        # long ImageNet schedules: over a dozen epochs the moving statistics stay near their
        # initial values, so validation (which uses them) sits at chance while training
        # accuracy rises. 0.9 lets them follow the data within a few hundred steps.
        for layer in base.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = min(layer.momentum, SCRATCH_BN_MOMENTUM)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    if spec.preprocessing != "inside":
        x = BackbonePreprocessing(spec.preprocessing, name="preprocessing")(x)
    x = base(x, training=False) if choice.is_pretrained else base(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="head")(x)
    return keras.Model(inputs, outputs, name=backbone)


def find_backbone(model: keras.Model) -> keras.Model | None:
    """Returns the nested backbone of a transfer model, or None for a flat custom CNN."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    return None
