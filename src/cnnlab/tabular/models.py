"""Mixed-data regression models: MLP, CNN, transfer, and two fusions, in a registry.

Every model predicts the standardised log price (see ``TargetScaler``) from named inputs:
``tabular`` ``(batch, features)`` float32 (the fitted preprocessor's output) and/or one photo
per room, ``bathroom``, ``bedroom``, ``frontal``, ``kitchen``, each ``(batch, s, s, 3)``
float32 RGB in ``[0, 255]``. Each is built from named sub-models, so two saved models can be
fused without the layer-name clashes of the course project ("The name dense_4 is used 2
times"); layer names are unique across branches too, since the ``.h5`` format stores a nested
model's weights by layer name:

- ``tabular_branch``: the tabular columns -> an embedding;
- ``image_encoder``: one photo -> a feature vector, shared by the four rooms (one backbone,
  called four times). Four photos at full resolution keep what a 2x2 montage at the same
  input size would shrink by half per side, and the montage's seams would sit inside the
  backbone's receptive fields;
- ``image_branch``: the four rooms' vectors, pooled (averaged) -> an embedding;
- ``price``: the output layer, one linear unit.

A frozen pretrained encoder is run once over every photo (``photos.encode_photos``) and the
rest is trained on those cached features (:func:`feature_inputs`); :func:`with_encoder` then
puts the encoder in front, giving a model that takes photos.
"""

from __future__ import annotations

import keras
from keras import layers

from cnnlab.models.backbones import get_backbone_spec
from cnnlab.models.transfer import BackbonePreprocessing, build_backbone
from cnnlab.tabular.registry import MIXED_MODELS, uses_photos, uses_tabular

__all__ = ["MIXED_MODELS", "uses_tabular", "uses_photos", "tabular_branch", "image_encoder",
           "cnn_encoder", "image_branch", "photo_cnn", "feature_inputs", "build_head",
           "with_encoder", "frozen_fusion", "find_layer"]

TABULAR = "tabular"
L2 = 1e-4


def _dense(units: int, name: str) -> layers.Dense:
    return layers.Dense(units, activation="relu", kernel_regularizer=keras.regularizers.L2(L2),
                        name=name)


def tabular_branch(features: int, width: int = 32, dropout: float = 0.1) -> keras.Model:
    """The tabular columns -> ``(batch, width // 2)`` embedding (two ReLU layers)."""
    inputs = keras.Input((features,), name=TABULAR)
    x = _dense(width, "tabular_dense_1")(inputs)
    x = layers.Dropout(dropout, name="tabular_dropout")(x)
    x = _dense(width // 2, "tabular_dense_2")(x)
    return keras.Model(inputs, x, name="tabular_branch")


def image_encoder(backbone: str, image_size: int, weights="none") -> keras.Model:
    """A frozen pretrained backbone with its preprocessing and global average pooling.

    Args:
        backbone: Backbone registry key (``cnnlab.models.backbones.BACKBONES``).
        image_size: Photo side in pixels.
        weights: What the backbone starts from (``backbones.resolve_weights``).

    Returns:
        ``image_encoder``: ``(batch, s, s, 3)`` float32 in ``[0, 255]`` -> ``(batch, channels)``
        float32, frozen, BatchNormalization in inference mode.
    """
    spec = get_backbone_spec(backbone)
    base = build_backbone(backbone, image_size, weights)
    base.trainable = False
    inputs = keras.Input((image_size, image_size, 3), name="photo")
    x = inputs
    if spec.preprocessing != "inside":
        x = BackbonePreprocessing(spec.preprocessing, name="preprocessing")(x)
    x = base(x, training=False)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    encoder = keras.Model(inputs, x, name="image_encoder")
    encoder.trainable = False
    return encoder


def cnn_encoder(image_size: int, filters: tuple[int, ...] = (16, 32, 64)) -> keras.Model:
    """A small CNN trained from scratch: conv-BN-ReLU-pool blocks, global average pooling.

    Inputs are divided by 255 once, inside the model (the course project divided twice and
    its CNN never converged).

    Returns:
        ``image_encoder``: ``(batch, s, s, 3)`` float32 in ``[0, 255]`` ->
        ``(batch, filters[-1])``.
    """
    inputs = keras.Input((image_size, image_size, 3), name="photo")
    x = layers.Rescaling(1 / 255, name="rescale")(inputs)
    for index, count in enumerate(filters, start=1):
        x = layers.Conv2D(count, 3, padding="same", use_bias=False, name=f"conv_{index}")(x)
        x = layers.BatchNormalization(name=f"bn_{index}")(x)
        x = layers.ReLU(name=f"relu_{index}")(x)
        x = layers.MaxPooling2D(name=f"pool_{index}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, x, name="image_encoder")


def image_branch(rooms: tuple[str, ...], dim: int, width: int = 16,
                 dropout: float = 0.5) -> keras.Model:
    """The rooms' feature vectors, averaged -> ``(batch, width)`` (dropout, one ReLU layer).

    Averaging keeps the input at ``dim`` values whatever the number of rooms. On the Houses
    dataset (320 training houses, MobileNetV2 features, 1,280 per photo) it generalised better
    in the fusion model than concatenating the rooms (validation MSE of the standardised log
    price 0.177 vs 0.186 with the same dropout, 0.231 with less), the room order then carrying
    too many weights for the data.
    """
    inputs = {room: keras.Input((dim,), name=room) for room in rooms}
    x = layers.Average(name="rooms_mean")([inputs[room] for room in rooms])
    x = layers.Dropout(dropout, name="image_dropout")(x)
    x = layers.Dense(width, activation="relu", kernel_regularizer=keras.regularizers.L2(1e-3),
                     name="image_dense")(x)
    return keras.Model(inputs, x, name="image_branch")


def feature_inputs(features: int | None, rooms: tuple[str, ...], dim: int | None
                   ) -> dict[str, keras.KerasTensor]:
    """Inputs of a head: ``tabular`` ``(batch, features)`` and/or one ``(batch, dim)`` per room."""
    inputs = {}
    if features:
        inputs[TABULAR] = keras.Input((features,), name=TABULAR)
    if dim:
        inputs.update({room: keras.Input((dim,), name=room) for room in rooms})
    return inputs


def _output(x) -> keras.KerasTensor:
    return layers.Dense(1, dtype="float32", name="price")(x)


def build_head(kind: str, features: int | None, rooms: tuple[str, ...], dim: int | None
               ) -> keras.Model:
    """The trainable part of model ``kind`` on tabular columns and/or photo features.

    Args:
        kind: ``mlp`` (tabular), ``image`` (room features) or ``fusion`` (both, concatenated
            embeddings -> a dense layer -> price: late fusion trained jointly).
        features: Tabular feature count (None without tabular input).
        rooms: Room names.
        dim: Feature size per photo (None without photos).

    Returns:
        Uncompiled model named ``kind``: the inputs of :func:`feature_inputs` ->
        ``(batch, 1)`` float32 standardised log price.
    """
    inputs = feature_inputs(features if kind != "image" else None, rooms,
                            dim if kind != "mlp" else None)
    parts = []
    if TABULAR in inputs:
        parts.append(tabular_branch(features)(inputs[TABULAR]))
    if dim and kind != "mlp":
        parts.append(image_branch(rooms, dim)({room: inputs[room] for room in rooms}))
    x = parts[0] if len(parts) == 1 else layers.Concatenate(name="fused")(parts)
    if len(parts) > 1:
        x = _dense(16, "fusion_dense")(x)
    return keras.Model(inputs, _output(x), name=kind)


def find_layer(model: keras.Model, name: str) -> keras.layers.Layer:
    """The layer ``name`` of ``model`` or of any model nested in it (depth first).

    Raises:
        ValueError: If no layer has that name; the message lists the top-level layers.
    """
    for layer in model.layers:
        if layer.name == name:
            return layer
        if isinstance(layer, keras.Model):
            try:
                return find_layer(layer, name)
            except ValueError:
                continue
    raise ValueError(f"model {model.name} holds no layer {name!r}; its layers: "
                     f"{[layer.name for layer in model.layers]}")


def frozen_fusion(tabular_model: keras.Model, image_model: keras.Model, rooms: tuple[str, ...]
                  ) -> keras.Model:
    """Fusion of two trained models: their branches frozen, a new dense head on top.

    Args:
        tabular_model: A trained (e.g. reloaded) ``mlp``, holding ``tabular_branch``.
        image_model: A trained (e.g. reloaded) ``transfer`` model, holding ``image_branch``.
        rooms: Room names.

    Returns:
        Uncompiled ``frozen_fusion`` on photo features (put the encoder in front with
        :func:`with_encoder`): ``tabular`` plus one ``(batch, d)`` input per room ->
        ``(batch, 1)``; only the new ``fusion_dense`` and ``price`` layers are trainable.
    """
    tab = find_layer(tabular_model, "tabular_branch")
    img = find_layer(image_model, "image_branch")
    tab.trainable = img.trainable = False
    inputs = feature_inputs(tab.inputs[0].shape[-1], rooms, img.inputs[0].shape[-1])
    fused = layers.Concatenate(name="fused")(
        [tab(inputs[TABULAR]), img({room: inputs[room] for room in rooms})])
    x = _dense(16, "fusion_dense")(fused)
    return keras.Model(inputs, _output(x), name="frozen_fusion")


def with_encoder(head: keras.Model, encoder: keras.Model, rooms: tuple[str, ...],
                 name: str | None = None) -> keras.Model:
    """``head`` (on photo features) behind ``encoder``: a model that takes photos.

    The head's layers are reused (same weights); the encoder is called once per room.

    Args:
        head: A model whose room inputs are ``(batch, d)`` features.
        encoder: ``image_encoder``: ``(batch, s, s, 3)`` -> ``(batch, d)``.
        rooms: Room names.
        name: Name of the new model (default: the head's).

    Returns:
        The head's inputs, rooms replaced by ``(batch, s, s, 3)`` float32 photos in
        ``[0, 255]`` -> ``(batch, 1)``.
    """
    size = encoder.inputs[0].shape[1]
    inputs = {}
    head_inputs = {}
    for tensor in head.inputs:
        key = tensor.name.split(":")[0]
        if key in rooms:
            inputs[key] = keras.Input((size, size, 3), name=key)
            head_inputs[key] = encoder(inputs[key], training=False)
        else:
            inputs[key] = keras.Input(tensor.shape[1:], name=key)
            head_inputs[key] = inputs[key]
    return keras.Model(inputs, head(head_inputs), name=name or head.name)


def photo_cnn(rooms: tuple[str, ...], image_size: int) -> keras.Model:
    """The ``cnn`` model: :func:`cnn_encoder` shared over the rooms, ``image_branch``, price.

    Returns:
        Uncompiled ``cnn``: one ``(batch, s, s, 3)`` float32 photo in ``[0, 255]`` per room
        -> ``(batch, 1)``, trained end to end.
    """
    encoder = cnn_encoder(image_size)
    inputs = {room: keras.Input((image_size, image_size, 3), name=room) for room in rooms}
    vectors = {room: encoder(inputs[room]) for room in rooms}
    branch = image_branch(rooms, encoder.outputs[0].shape[-1])
    return keras.Model(inputs, _output(branch(vectors)), name="cnn")


