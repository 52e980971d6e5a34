"""Saving, loading and exporting models: one folder per model, with ``.keras``, ``.h5`` and JSON.

A saved model is the folder ``models/<name>/``: ``model.keras`` (the native Keras 3 format),
``model.h5`` (the legacy HDF5 format the course projects deployed) and ``meta.json`` (what a
deployed model needs, class names and input size, and how it was made: backbone, weights,
training time). What is computed from the model later lives in the same folder:
``predictions/<split>.npz`` (:mod:`cnnlab.evaluation.predictions`) and ``model.tflite``.
:func:`save_model` writes the folder under a temporary name and renames it into place, so a
model folder is always complete.

Keras 3 writes MobileNetV3's ``x + 3.0`` and ``x * (1/6)`` (hard-swish) operations into the
legacy HDF5 config as ``Add``/``Multiply`` nodes with a Python float as second input, and then
cannot read them back ("Only input tensors may be passed as positional arguments").
:data:`H5_CUSTOM_OBJECTS` maps those two names to merge layers that also accept a scalar
operand, which :func:`load_model` passes for every ``.h5`` file.

:func:`load_model`, through which every loader of the project goes (``inference.Classifier``,
``evaluate``, ``interpret``, ``export_deployment``, ``tabular.training``), loads in Keras' safe
mode and refuses a file holding a ``Lambda`` layer before Keras reads it: a Lambda layer's
function is stored as Python bytecode (or the name of a Python function), so loading it can
run arbitrary code. The architecture JSON (``config.json`` in a ``.keras`` zip, the
``model_config`` attribute of an ``.h5`` file) is searched, nested models included.

:func:`export_tflite` converts a model for phones and microcontrollers (LiteRT, formerly
TensorFlow Lite): float32; ``dynamic`` (int8 weights, float activations); or ``int8``, full
integer post-training quantisation calibrated on a representative dataset
(https://ai.google.dev/edge/litert/models/post_training_quantization).
:func:`compare_tflite` measures the exported model against the Keras model on a split, since
quantisation can cost accuracy: MobileNetV3 in particular loses much of it under full int8
post-training quantisation (its hard-swish and squeeze-excite activations, reported in
tensorflow/models#11274); ``dynamic`` keeps it and still stores int8 weights.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterable
from pathlib import Path

import keras
import numpy as np
from keras import ops

import cnnlab.models.transfer  # noqa: F401  (registers BackbonePreprocessing for deserialisation)
from cnnlab.config import display_path
from cnnlab.files import atomic_path, keep_previous, read_json, remove_stale_temporaries
from cnnlab.startup_logs import quiet_native_logs


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


MODEL_FILES = {".keras": "model.keras", ".h5": "model.h5", ".json": "meta.json"}


def model_folder(path: str | os.PathLike) -> Path:
    """The folder of a saved model, from the folder itself or any file in it.

    Args:
        path: ``models/<name>/`` or one of its files (``model.keras``, ``model.h5``, ...).

    Returns:
        ``models/<name>/``.
    """
    path = Path(path)
    return path if path.is_dir() or not path.suffix else path.parent


def model_name(path: str | os.PathLike) -> str:
    """The name of a saved model (its folder's name), or a plain file's stem."""
    path = Path(path)
    if path.is_dir() or path.name in MODEL_FILES.values():
        return model_folder(path).name
    return path.stem


def save_model(
    model: keras.Model, models_dir: str | os.PathLike, name: str, metadata: dict | None = None
) -> dict[str, Path]:
    """Saves ``model`` as the folder ``models_dir/<name>/`` (``model.keras``, ``model.h5``,
    ``meta.json``).

    The folder is written complete under a temporary name (``.<name>.tmp<pid>/``), then
    renamed into place. Only once it is complete is an existing folder of the same name moved
    to ``previous/<name>-<time>/`` (never overwritten silently; the move is printed). A crash
    while saving leaves the previous model where it was, and no half folder under ``name``.

    Args:
        model: The model to save.
        models_dir: Destination folder (``models/``).
        name: Model name, e.g. ``cards-mobilenet_v3_small_075``.
        metadata: JSON-serialisable facts for ``meta.json`` (class names, image size, ...).

    Returns:
        ``{".keras": path, ".h5": path, ".json": path, "folder": path}``, the final paths.
    """
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    folder = models_dir / name
    temporary = models_dir / f".{name}.tmp{os.getpid()}"
    sidecar = {
        "name": name, "saved": time.strftime("%Y-%m-%d %H:%M:%S"),
        "params_total": int(model.count_params()),
        "params_trainable": int(sum(int(ops.size(w)) for w in model.trainable_weights)),
        "keras_version": keras.__version__, **(metadata or {}),
    }
    remove_stale_temporaries(models_dir)  # of processes killed while saving
    if temporary.exists():
        shutil.rmtree(temporary)
    try:
        temporary.mkdir()
        for suffix in MODEL_FORMATS:
            model.save(temporary / MODEL_FILES[suffix])
        (temporary / MODEL_FILES[".json"]).write_text(
            json.dumps(sidecar, indent=2, default=str) + "\n", encoding="utf-8")
        moved = keep_previous(folder)  # only now: the new folder is complete
        if moved is not None:
            print(f"kept the previous {name} as {display_path(moved)}")
        os.replace(temporary, folder)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary)
    return {**{suffix: folder / file for suffix, file in MODEL_FILES.items()}, "folder": folder}


class UnsafeModelError(ValueError):
    """A model file holds a ``Lambda`` layer, whose stored Python code Keras' safe mode refuses."""


def read_model_config(path: str | os.PathLike) -> dict | None:
    """The architecture JSON of a ``.keras`` or ``.h5`` file, read without building the model.

    Args:
        path: A ``.keras`` file (a zip holding ``config.json``) or an ``.h5`` file (its
            ``model_config`` attribute).

    Returns:
        The parsed config, or None when the file holds none that can be read (a weights-only
        or damaged file; Keras then reports the problem itself).
    """
    path = Path(path)
    try:
        if path.suffix == ".h5":
            import h5py

            with h5py.File(path, "r") as h5:
                text = h5.attrs.get("model_config")
        else:
            with zipfile.ZipFile(path) as zipped:
                text = zipped.read("config.json")
    except (OSError, KeyError, zipfile.BadZipFile):
        return None
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    try:
        return json.loads(text)
    except ValueError:
        return None


def lambda_layers(config) -> list[str]:
    """Names of the ``Lambda`` layers anywhere in a model config, nested models included.

    Args:
        config: A config from :func:`read_model_config` (dicts and lists).

    Returns:
        Layer names in the order found (``"?"`` for one without a name); empty if none.
    """
    found = []
    if isinstance(config, dict):
        if config.get("class_name") == "Lambda":
            inner = config.get("config")
            name = inner.get("name") if isinstance(inner, dict) else None
            found.append(str(name or config.get("name") or "?"))
        for value in config.values():
            found += lambda_layers(value)
    elif isinstance(config, list):
        for value in config:
            found += lambda_layers(value)
    return found


def _lambda_refusal(path: Path, names: list[str]) -> str:
    which = f" ({', '.join(repr(n) for n in names)})" if names else ""
    return (f"{display_path(path)} holds a Lambda layer{which} (arbitrary code); Keras refuses "
            f"it in safe mode. Rebuild the model without Lambda layers or, if you trust the "
            f"file, load it yourself with keras.saving.load_model(..., safe_mode=False)")


def load_model(path: str | os.PathLike, compile: bool = False) -> keras.Model:
    """Loads a ``.keras`` or ``.h5`` model saved by :func:`save_model` (or by plain Keras).

    Always in Keras' safe mode: a file holding a ``Lambda`` layer (stored Python code) is
    refused before Keras reads it, ``.h5`` files included.

    Args:
        path: A model folder ``models/<name>/`` (its ``model.keras`` is read), or a
            ``.keras`` or ``.h5`` file.
        compile: Restore the training configuration too.

    Returns:
        The model.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        UnsafeModelError: If the file holds a ``Lambda`` layer; the message names the file and
            the fix.
        ValueError: If the suffix is neither ``.keras`` nor ``.h5``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILES[".keras"]
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist; train it first (notebooks "
                                f"02/03) or check the name in models/")
    if path.suffix not in MODEL_FORMATS:
        raise ValueError(f"{path} is not a .keras or .h5 model file")
    names = lambda_layers(read_model_config(path))
    if names:
        raise UnsafeModelError(_lambda_refusal(path, names))
    custom = H5_CUSTOM_OBJECTS if path.suffix == ".h5" else None
    try:
        return keras.models.load_model(path, custom_objects=custom, compile=compile,
                                       safe_mode=True)
    except ValueError as error:  # a Lambda the config search missed: Keras' own refusal
        if "safe_mode" in str(error) and "Lambda" in str(error):
            raise UnsafeModelError(_lambda_refusal(path, [])) from error
        raise


def load_metadata(path: str | os.PathLike) -> dict:
    """Reads ``meta.json`` of a saved model.

    Args:
        path: The model folder or a file in it; for a plain model file elsewhere, the JSON
            file of the same stem beside it.

    Raises:
        FileNotFoundError: If there is none.
    """
    path = Path(path)
    if path.is_dir() or path.name in MODEL_FILES.values():
        return read_json(model_folder(path) / MODEL_FILES[".json"])
    return read_json(path.with_suffix(".json"))


def list_models(models_dir: str | os.PathLike, prefix: str = "") -> list[Path]:
    """Saved model folders in ``models_dir`` whose name starts with ``prefix`` (sorted).

    A folder counts when it holds ``model.keras``; hidden (temporary) folders and
    ``previous/`` do not.
    """
    return sorted(p for p in Path(models_dir).glob(f"{prefix}*") if p.is_dir()
                  and not p.name.startswith(".") and p.name != "previous"
                  and (p / MODEL_FILES[".keras"]).is_file())


TFLITE_QUANTIZATIONS = ("none", "dynamic", "int8")
CALIBRATION_IMAGES = 200


def tflite_path(keras_path: str | os.PathLike, quantize: str = "none") -> Path:
    """Where :func:`export_tflite` puts a model: ``<name>.tflite``, ``<name>.int8.tflite``..."""
    keras_path = Path(keras_path)
    suffix = ".tflite" if quantize == "none" else f".{quantize}.tflite"
    return keras_path.with_name(keras_path.stem + suffix)


def export_tflite(
    model: keras.Model,
    path: str | os.PathLike,
    quantize: str = "none",
    representative: Iterable[np.ndarray] | None = None,
) -> Path:
    """Converts a Keras model to a TFLite flatbuffer (float32 or int8).

    The model is exported as a SavedModel (``model.export``, Keras 3) and converted with
    ``tf.lite.TFLiteConverter.from_saved_model``, which behaves the same in Keras 3.13 and
    3.15. ``quantize="dynamic"`` stores weights as int8 and computes in float
    (dynamic-range quantisation, no calibration). ``quantize="int8"`` makes weights and
    activations int8 (full-integer post-training quantisation, ``TFLITE_BUILTINS_INT8``
    ops), calibrated on ``representative`` images; input and output stay float32 (raw RGB
    in, probabilities out), so a caller needs no scale or zero point. The file is written to
    a temporary name and renamed; an existing file is moved to ``previous/``.

    Args:
        model: A model taking ``(batch, h, w, 3)`` RGB in ``[0, 255]``.
        path: Destination ``.tflite`` file.
        quantize: ``"none"``, ``"dynamic"`` or ``"int8"``.
        representative: For int8: batches of ``(batch, h, w, 3)`` images, typically a few
            hundred training images (un-augmented).

    Returns:
        The written path.

    Raises:
        ValueError: On an unknown ``quantize``, or int8 without ``representative``.
    """
    import tensorflow as tf

    if quantize not in TFLITE_QUANTIZATIONS:
        raise ValueError(f"unknown quantisation {quantize!r}; choose one of "
                         f"{TFLITE_QUANTIZATIONS}")
    if quantize == "int8" and representative is None:
        raise ValueError("int8 quantisation needs representative images (a few hundred "
                         "training images) to calibrate activation ranges")
    path = Path(path)
    folder = Path(tempfile.mkdtemp(prefix="cnnlab-savedmodel-"))
    try:
        model.export(str(folder / "model"), format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(folder / "model"))
        if quantize == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "int8":
            def calibration():
                for batch in representative:
                    for image in np.asarray(batch, dtype=np.float32):
                        yield [image[None]]

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = calibration
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        flatbuffer = converter.convert()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    moved = keep_previous(path)
    if moved is not None:
        print(f"kept the previous {path.name} as previous/{moved.name}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(flatbuffer)
    return path


def tflite_interpreter(path: str | os.PathLike):
    """A LiteRT interpreter for ``path`` with tensors allocated, and which kernels it uses.

    The XNNPACK delegate (LiteRT's default on CPU) refuses some int8 graphs whose
    quantisation scales fall outside the ranges it supports ("failed to create XNNPACK
    runtime ... failed to prepare"); those run on LiteRT's built-in reference kernels.

    Returns:
        ``(interpreter, "xnnpack" | "builtin")``.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        interpreter = Interpreter(model_path=str(path))
        with quiet_native_logs():  # LiteRT's "Created ... XNNPACK delegate" line
            interpreter.allocate_tensors()
        return interpreter, "xnnpack"
    except RuntimeError as error:
        if "XNNPACK" not in str(error):
            raise
    interpreter = Interpreter(
        model_path=str(path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    return interpreter, "builtin"


def tflite_predict(path: str | os.PathLike, images: np.ndarray) -> np.ndarray:
    """Runs a TFLite classifier with the LiteRT interpreter (``ai_edge_litert``).

    One image per ``invoke`` at the input shape the converter wrote (batch 1), as on a
    device.

    Args:
        path: ``.tflite`` file from :func:`export_tflite`.
        images: ``(n, h, w, 3)`` RGB in ``[0, 255]``.

    Returns:
        ``(n, classes)`` float32 probabilities.
    """
    interpreter, _ = tflite_interpreter(path)
    source = interpreter.get_input_details()[0]
    target = interpreter.get_output_details()[0]
    outputs = []
    for image in np.asarray(images, dtype=np.float32):
        interpreter.set_tensor(source["index"], image[None])
        interpreter.invoke()
        outputs.append(np.array(interpreter.get_tensor(target["index"])[0], dtype=np.float32))
    return np.stack(outputs)


def compare_tflite(model: keras.Model, path: str | os.PathLike, images: np.ndarray,
                   labels: np.ndarray) -> dict:
    """Accuracy of the Keras model and its TFLite export on the same images.

    Args:
        model: The Keras model.
        path: Its ``.tflite`` export.
        images: ``(n, h, w, 3)`` RGB in ``[0, 255]`` (e.g. the whole test split).
        labels: ``(n,)`` integer classes.

    Returns:
        ``{"images", "runtime" (LiteRT kernels: xnnpack or builtin), "keras_accuracy",
        "tflite_accuracy", "agreement" (share of identical top-1 predictions),
        "max_abs_diff" (largest probability difference), "tflite_kib"}``.
    """
    labels = np.asarray(labels)
    expected = model.predict(np.asarray(images, dtype=np.float32), verbose=0)
    got = tflite_predict(path, images)
    return {"images": int(len(labels)), "runtime": tflite_interpreter(path)[1],
            "keras_accuracy": float(np.mean(expected.argmax(1) == labels)),
            "tflite_accuracy": float(np.mean(got.argmax(1) == labels)),
            "agreement": float(np.mean(expected.argmax(1) == got.argmax(1))),
            "max_abs_diff": float(np.abs(expected - got).max()),
            "tflite_kib": round(Path(path).stat().st_size / 1024, 1)}


def split_images(manifest, split: str, image_size: int, limit: int | None = None,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Decoded images and labels of a manifest split, as the training pipeline resizes them.

    Args:
        manifest: A ``datasets.Manifest``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: Side in pixels.
        limit: Keep a seeded random sample of this many images (None: all).
        seed: Seed of that sample.

    Returns:
        ``(images, labels)``: ``(n, size, size, 3)`` float32 in ``[0, 255]`` and ``(n,)``.
    """
    from cnnlab.data.pipeline import make_dataset

    rows = manifest.split(split)
    if limit is not None and limit < len(rows):
        rows = rows.sample(limit, random_state=seed).reset_index(drop=True)
    ds = make_dataset(rows["file"], rows["label_index"], image_size, 64, cache=False)
    images = np.concatenate([np.asarray(x, dtype=np.float32) for x, _ in ds])
    return images, rows["label_index"].to_numpy()


def resolve_model_file(model: str | os.PathLike, models_dir: str | os.PathLike) -> Path:
    """A model's ``.keras`` file from a path (folder or file) or a name in ``models/``.

    Args:
        model: ``models/<name>/``, a model file, or a name such as ``cards-retail_cnn``.
        models_dir: The ``models/`` folder.

    Raises:
        FileNotFoundError: If none exists; the message lists the saved models.
    """
    path = Path(model)
    if path.is_file():
        return path
    for folder in (path, Path(models_dir) / str(model)):
        if (folder / MODEL_FILES[".keras"]).is_file():
            return folder / MODEL_FILES[".keras"]
    saved = ", ".join(p.name for p in list_models(models_dir)) or "none"
    raise FileNotFoundError(f"no model {model} (neither a file nor a folder of models/); saved "
                            f"models: {saved}")


def export_deployment(model: str | os.PathLike, format: str = "tflite", quantize: str = "none",
                      dirs=None, calibration_images: int = CALIBRATION_IMAGES
                      ) -> tuple[Path, dict]:
    """``cnnlab export``: converts a saved model and checks it on the whole test split.

    Reads the model's JSON sidecar for its dataset and image size, loads
    ``data/<dataset>/manifest.csv``, calibrates int8 on ``calibration_images`` training
    images, and compares accuracy of the export and the Keras model on the test split.

    Args:
        model: Model file or name in ``models/``.
        format: Export format; only ``"tflite"``.
        quantize: ``"none"``, ``"dynamic"`` or ``"int8"``.
        dirs: Project folders.
        calibration_images: Training images for int8 calibration.

    Returns:
        The exported file and the :func:`compare_tflite` report.

    Raises:
        ValueError: On an unknown format.
        FileNotFoundError: If the model or its dataset's manifest is missing.
    """
    from cnnlab.config import project_dirs
    from cnnlab.data.datasets import load_manifest

    if format != "tflite":
        raise ValueError(f"unknown export format {format!r}; supported: tflite")
    dirs = dirs or project_dirs()
    source = resolve_model_file(model, dirs.models)
    meta = load_metadata(source)
    keras_model = load_model(source)
    manifest = load_manifest(meta["dataset"], dirs)
    size = int(meta["image_size"])
    representative = None
    if quantize == "int8":
        calibration, _ = split_images(manifest, "train", size, calibration_images)
        representative = [calibration]
    target = export_tflite(keras_model, tflite_path(source, quantize), quantize,
                           representative)
    images, labels = split_images(manifest, "test", size)
    return target, compare_tflite(keras_model, target, images, labels)
