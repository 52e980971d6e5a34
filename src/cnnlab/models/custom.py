"""Custom CNNs trained from scratch, one registry entry each.

Every model here takes ``(batch, h, w, 3)`` float32 RGB in ``[0, 255]`` and rescales inside,
so the data pipeline, evaluation and deployment never need to know which model they feed.
Outputs are softmax probabilities in float32 (also under mixed precision). ``CUSTOM_MODELS``
is the registry; Keras is imported by the builders only, so ``cnnlab list`` reads the
registry without loading TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras


def retail_cnn(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """The retail-products course CNN, with the input scaling the course version forgot.

    Conv 100@9x9 -> MaxPool -> Conv 50@5x5 -> Dropout 0.3 -> MaxPool -> Conv 25@3x3 -> Flatten
    -> Dense 64 -> Dropout 0.2 -> softmax (the RPC course project's architecture).

    Pixels are scaled to ``[-1, 1]``, zero-centred (LeCun et al. 1998, "Efficient BackProp",
    section 4.3), not to ``[0, 1]``: with all-positive inputs and no normalisation layer, this
    ReLU network often sat at the uniform prediction (loss ln(classes)) for the whole of a
    short run; on cards at 64 px, 2 of 4 runs of 8 epochs never left it, while centred inputs
    reached 0.26-0.27 validation accuracy after 2 epochs in both seeds tried.

    Args:
        input_shape: ``(h, w, 3)``.
        num_classes: Number of output classes.

    Returns:
        Uncompiled model: ``(batch, h, w, 3)`` float32 in ``[0, 255]`` -> ``(batch, classes)``.
    """
    import keras
    from keras import layers

    return keras.Sequential(
        [
            keras.Input(input_shape),
            layers.Rescaling(1.0 / 127.5, offset=-1.0),
            layers.Conv2D(100, 9, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(50, 5, activation="relu"),
            layers.Dropout(0.3),
            layers.MaxPooling2D(),
            layers.Conv2D(25, 3, activation="relu"),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dropout(0.2),
            layers.Dense(num_classes, activation="softmax", dtype="float32"),
        ],
        name="retail_cnn",
    )


def vehicles_cnn_bn(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """The vehicles course project's second CNN: conv blocks with BatchNormalization.

    Three blocks of Conv 3x3 -> BatchNorm -> ReLU -> MaxPool (32, 64, 128 filters), then global
    average pooling instead of a large Flatten/Dense (fewer parameters, less overfitting),
    Dropout 0.3 and softmax. BatchNorm: Ioffe & Szegedy 2015, arXiv:1502.03167.

    Args:
        input_shape: ``(h, w, 3)``.
        num_classes: Number of output classes.

    Returns:
        Uncompiled model: ``(batch, h, w, 3)`` float32 in ``[0, 255]`` -> ``(batch, classes)``.
    """
    import keras
    from keras import layers

    inputs = keras.Input(input_shape)
    x = layers.Rescaling(1.0 / 255)(inputs)
    for filters in (32, 64, 128):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="vehicles_cnn_bn")


CUSTOM_MODELS: dict[str, Callable[[tuple[int, int, int], int], keras.Model]] = {
    "retail_cnn": retail_cnn,
    "vehicles_cnn_bn": vehicles_cnn_bn,
}


def build_custom_model(name: str, image_size: int, num_classes: int) -> keras.Model:
    """Builds the custom CNN ``name`` for square RGB input.

    Raises:
        KeyError: If ``name`` is not in :data:`CUSTOM_MODELS`; the message lists them.
    """
    if name not in CUSTOM_MODELS:
        raise KeyError(f"unknown custom model {name!r}; choose one of {sorted(CUSTOM_MODELS)}")
    return CUSTOM_MODELS[name]((image_size, image_size, 3), num_classes)
