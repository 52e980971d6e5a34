"""Saving and loading models: ``.keras`` and ``.h5`` side by side, with a JSON sidecar.

``models/<name>.keras`` is the native Keras 3 format; ``models/<name>.h5`` is the legacy HDF5
format the course projects deployed. ``models/<name>.json`` records what a deployed model needs
(class names, input size) and how it was made (backbone, weights, training time).

Keras 3 writes MobileNetV3's ``x + 3.0`` and ``x * (1/6)`` (hard-swish) operations into the
legacy HDF5 config as ``Add``/``Multiply`` nodes with a Python float as second input, and then
cannot read them back ("Only input tensors may be passed as positional arguments").
:data:`H5_CUSTOM_OBJECTS` maps those two names to merge layers that also accept a scalar
operand, which :func:`load_model` passes for every ``.h5`` file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import keras
from keras import ops

import cnnlab.backbones  # noqa: F401  (registers BackbonePreprocessing for deserialisation)
from cnnlab.storage import atomic_path, keep_previous, read_json, write_json


class _ScalarOperandMixin:
    """Lets a merge layer take ``(tensor, scalar)`` as legacy HDF5 configs record it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._allow_non_tensor_positional_args = True

    def build(self, input_shape):
        if isinstance(input_shape, list) and input_shape and isinstance(
            input_shape[0], (list, tuple)
        ):
            super().build(input_shape)
        else:
            self.built = True

    def call(self, inputs, *scalars):
        if scalars:
            return self._scalar_op(inputs, scalars[0])
        return super().call(inputs)

    def compute_output_spec(self, inputs, *scalars):
        if scalars:
            return keras.KerasTensor(inputs.shape, dtype=inputs.dtype)
        return super().compute_output_spec(inputs)


class H5CompatAdd(_ScalarOperandMixin, keras.layers.Add):
    """``keras.layers.Add`` that also computes ``tensor + scalar`` (legacy HDF5 ops)."""

    @staticmethod
    def _scalar_op(x, value):
        return ops.add(x, value)


class H5CompatMultiply(_ScalarOperandMixin, keras.layers.Multiply):
    """``keras.layers.Multiply`` that also computes ``tensor * scalar`` (legacy HDF5 ops)."""

    @staticmethod
    def _scalar_op(x, value):
        return ops.multiply(x, value)


H5_CUSTOM_OBJECTS = {"Add": H5CompatAdd, "Multiply": H5CompatMultiply}
MODEL_FORMATS = (".keras", ".h5")


def save_model(
    model: keras.Model, models_dir: str | os.PathLike, name: str, metadata: dict | None = None
) -> dict[str, Path]:
    """Saves ``model`` as ``<name>.keras``, ``<name>.h5`` and ``<name>.json``.

    Each file is written under a temporary name and renamed, so an interrupted save leaves the
    previous files intact. Existing files of the same name are moved to ``previous/`` (never
    overwritten silently) and the move is printed.

    Args:
        model: The model to save.
        models_dir: Destination folder (``models/``).
        name: File stem, e.g. ``cards-mobilenet_v3_small_075``.
        metadata: JSON-serialisable facts for the sidecar (class names, image size, ...).

    Returns:
        ``{".keras": path, ".h5": path, ".json": path}``.
    """
    models_dir = Path(models_dir)
    paths = {suffix: models_dir / f"{name}{suffix}" for suffix in (*MODEL_FORMATS, ".json")}
    for path in paths.values():
        moved = keep_previous(path)
        if moved is not None:
            print(f"kept the previous {path.name} as previous/{moved.name}")
    for suffix in MODEL_FORMATS:
        with atomic_path(paths[suffix]) as tmp:
            model.save(tmp)
    sidecar = {
        "name": name, "saved": time.strftime("%Y-%m-%d %H:%M:%S"),
        "params_total": int(model.count_params()),
        "params_trainable": int(sum(int(ops.size(w)) for w in model.trainable_weights)),
        "keras_version": keras.__version__, **(metadata or {}),
    }
    write_json(paths[".json"], sidecar)
    return paths


def load_model(path: str | os.PathLike, compile: bool = False) -> keras.Model:
    """Loads a ``.keras`` or ``.h5`` model saved by :func:`save_model` (or by plain Keras).

    Args:
        path: Model file.
        compile: Restore the training configuration too.

    Returns:
        The model.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the suffix is neither ``.keras`` nor ``.h5``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist; train it first (notebooks "
                                f"02/03) or check the name in models/")
    if path.suffix not in MODEL_FORMATS:
        raise ValueError(f"{path} is not a .keras or .h5 model file")
    custom = H5_CUSTOM_OBJECTS if path.suffix == ".h5" else None
    return keras.models.load_model(path, custom_objects=custom, compile=compile)


def load_metadata(path: str | os.PathLike) -> dict:
    """Reads the JSON sidecar of a saved model (``models/<name>.json``)."""
    return read_json(Path(path).with_suffix(".json"))


def list_models(models_dir: str | os.PathLike, prefix: str = "", suffix: str = ".keras"):
    """Model files in ``models_dir`` whose name starts with ``prefix`` (sorted)."""
    return sorted(p for p in Path(models_dir).glob(f"{prefix}*{suffix}") if p.is_file()
                  and not p.name.startswith("."))
