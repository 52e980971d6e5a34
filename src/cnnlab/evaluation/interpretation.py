"""Explaining a classifier's mistakes: one object per model and split, and Grad-CAM.

:class:`Interpretation` follows fastai's ``ClassificationInterpretation``
(https://docs.fast.ai/interpret.html): one pass of predictions over a whole split, then the
confusion matrix, the most confused pairs, the per-class report, the images with the highest
loss, sample predictions and Grad-CAM heatmaps, all from that one pass.

Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", arXiv:1610.02391) weights the channels of a convolutional
feature map by the spatial mean of the gradient of the class score (the logit, before
softmax) with respect to them. The usual Keras recipe
(https://keras.io/examples/vision/grad_cam/) builds
``keras.Model(model.inputs, [model.get_layer(name).output, model.output])``, which fails with
"Graph disconnected" when the layer sits inside a backbone nested as one layer of the
transfer model (``build_transfer_model`` does this, as the Keras transfer-learning guide
does): the inner layer's tensor belongs to the backbone's own graph, not the outer one.
:func:`gradcam_model` instead rebuilds the outer chain of layers on a new input and calls the
backbone as a sub-model that returns both the inner feature map and its output.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import keras
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import tensorflow as tf
from matplotlib.figure import Figure

from cnnlab.config import display_path
from cnnlab.data.pipeline import load_image, split_dataset
from cnnlab.deploy.export import load_metadata, load_model, model_name
from cnnlab.evaluation.predictions import (
    Predictions,
    class_order,
    predict_dataset,
    split_predictions,
)
from cnnlab.files import atomic_path
from cnnlab.plots import (
    confused_classes,
    fit_label,
    plot_confused_block,
    plot_confusion_matrix,
    plot_predictions,
)


def _chain_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The model's top-level layers in call order, without its input layers."""
    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def _is_feature_map(layer: keras.layers.Layer) -> bool:
    try:
        return len(layer.output.shape) == 4
    except (AttributeError, ValueError):  # a layer called more than once, or never
        return False


def feature_map_layers(model: keras.Model) -> list[str]:
    """Names of the layers with a 4-D ``(batch, h, w, channels)`` output, in call order.

    Layers inside a nested backbone are listed as ``"<backbone>/<layer>"``.
    """
    names = []
    for layer in _chain_layers(model):
        if isinstance(layer, keras.Model):
            names += [f"{layer.name}/{inner.name}" for inner in _chain_layers(layer)
                      if _is_feature_map(inner)]
        elif _is_feature_map(layer):
            names.append(layer.name)
    return names


def _find_target(model: keras.Model, layer: str | None
                 ) -> tuple[keras.Model | None, keras.layers.Layer]:
    """``(backbone or None, layer)`` for a layer name, or the last feature map by default."""
    candidates = feature_map_layers(model)
    if not candidates:
        raise ValueError(f"{model.name} has no layer with a 4-D feature map output; Grad-CAM "
                         f"needs a convolutional layer")
    if layer is None:
        layer = candidates[-1]
    elif layer not in candidates:  # a bare inner name is accepted too: "conv_1"
        matches = [c for c in candidates if c.split("/")[-1] == layer]
        if len(matches) != 1:
            shown = ", ".join(candidates[-8:])
            raise ValueError(f"layer {layer!r} is not a feature-map layer of {model.name}; "
                             f"choose one of {len(candidates)}, e.g. the last ones: {shown}")
        layer = matches[0]
    if "/" in layer:
        backbone_name, inner = layer.split("/", 1)
        backbone = model.get_layer(backbone_name)
        return backbone, backbone.get_layer(inner)
    return None, model.get_layer(layer)


def _logits_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A linear copy of a softmax ``Dense`` head (same weights), so scores are logits."""
    config = layer.get_config()
    config.update(activation="linear", name=f"{layer.name}_logits")
    linear = keras.layers.Dense.from_config(config)
    linear.build(layer.input.shape)
    linear.set_weights(layer.get_weights())
    return linear


def gradcam_model(model: keras.Model, layer: str | None = None) -> keras.Model:
    """A model mapping images to ``[feature map, class scores]`` for Grad-CAM.

    Works for flat models (the course CNNs) and for transfer models whose backbone is nested
    as one layer (``models.build_transfer_model``), including layers deep inside that
    backbone. The outer model's layers are called again, in order, on a new input; the
    backbone is replaced by a sub-model of itself that also returns the inner feature map.
    A final softmax ``Dense`` head is replaced by a linear copy with the same weights, so the
    scores are logits, as Grad-CAM prescribes.

    Args:
        model: A classifier whose top-level layers form a chain (each takes the previous
            one's output), flat or with a nested backbone.
        layer: Feature-map layer: a top-level name, ``"<backbone>/<inner>"``, or an inner
            name alone; None takes the last one (the backbone's output for transfer models).

    Returns:
        A model: ``(batch, h, w, 3)`` float32 in ``[0, 255]`` -> ``[(batch, h', w', c)
        feature map, (batch, classes) logits]``.

    Raises:
        ValueError: If ``layer`` is unknown (the message lists candidates) or the model has
            no feature map.
    """
    backbone, target = _find_target(model, layer)
    inputs = keras.Input(model.input_shape[1:], name="gradcam_image")
    chain = _chain_layers(model)
    x, features = inputs, None
    for index, current in enumerate(chain):
        if current is backbone:
            inner = keras.Model(backbone.inputs, [target.output, backbone.output],
                                name=f"{backbone.name}_gradcam")
            features, x = inner(x)
            continue
        is_head = index == len(chain) - 1 and isinstance(current, keras.layers.Dense) and \
            current.get_config().get("activation") == "softmax"
        x = _logits_layer(current)(x) if is_head else current(x)
        if current is target:
            features = x
    return keras.Model(inputs, [features, x], name=f"{model.name}_gradcam")


# How far the rebuilt chain's probabilities may stray from ``model.predict_on_batch``: the
# chain runs eagerly, predict through a compiled graph whose fused kernels round differently;
# on a barely trained EfficientNetB0 (smoke profile) that alone reached 1.05e-3.
REBUILD_ATOL = 1e-2


def gradcam_heatmaps(model: keras.Model, images: np.ndarray,
                     class_indices: np.ndarray | None = None, layer: str | None = None,
                     check: bool = True) -> np.ndarray:
    """Grad-CAM heatmaps of ``images`` for the given (or the predicted) classes.

    ``heatmap = ReLU(sum_k alpha_k A^k)`` with ``alpha_k`` the spatial mean of
    ``d logit_c / d A^k`` (Selvaraju et al. 2017, eq. 1-2), scaled to ``[0, 1]`` per image.

    Args:
        model: A classifier (see :func:`gradcam_model`).
        images: ``(n, h, w, 3)`` float32 RGB in ``[0, 255]`` at the model's input size.
        class_indices: ``(n,)`` classes to explain; None explains the predicted ones.
        layer: Feature-map layer (see :func:`gradcam_model`).
        check: Verify that the rebuilt model reproduces ``model``'s probabilities, so a
            model that is not a chain of layers fails loudly instead of explaining another
            network.

    Returns:
        ``(n, h', w')`` float32 in ``[0, 1]`` at the feature map's resolution (all zeros
        where no location raises the class score).

    Raises:
        ValueError: If the rebuilt model's probabilities differ from ``model``'s by more
            than ``REBUILD_ATOL``.
    """
    images = tf.convert_to_tensor(np.asarray(images, dtype=np.float32))
    explainer = gradcam_model(model, layer)
    with tf.GradientTape() as tape:
        features, logits = explainer(images, training=False)
        logits = tf.cast(logits, tf.float32)
        if class_indices is None:
            class_indices = tf.argmax(logits, axis=1)
        scores = tf.gather(logits, tf.convert_to_tensor(class_indices, tf.int64), batch_dims=1)
    grads = tf.cast(tape.gradient(scores, features), tf.float32)
    if check:
        expected = np.asarray(model.predict_on_batch(images), dtype=np.float32)
        rebuilt = tf.nn.softmax(logits).numpy()
        if not np.allclose(expected, rebuilt, atol=REBUILD_ATOL):
            raise ValueError(
                f"{model.name} is not a chain of layers that Grad-CAM can rebuild (its "
                f"probabilities differ by up to {np.abs(expected - rebuilt).max():.3g}); "
                f"pass a flat CNN or a transfer model from cnnlab.models")
    alpha = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(alpha * tf.cast(features, tf.float32), axis=-1)).numpy()
    peak = cam.max(axis=(1, 2), keepdims=True)
    return np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0).astype(np.float32)


def overlay_heatmap(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blends a ``[0, 1]`` heatmap (jet colours, resized bilinearly) over an image.

    Args:
        image: ``(h, w, 3)`` RGB in ``[0, 255]``.
        heatmap: ``(h', w')`` float in ``[0, 1]``.
        alpha: Opacity of the heatmap.

    Returns:
        ``(h, w, 3)`` uint8 RGB.
    """
    height, width = image.shape[:2]
    resized = tf.image.resize(heatmap[..., None], (height, width), method="bilinear")
    colours = plt.get_cmap("jet")(np.clip(resized.numpy()[..., 0], 0, 1))[..., :3] * 255
    blended = (1 - alpha) * np.asarray(image, np.float32) + alpha * colours
    return np.clip(blended, 0, 255).astype(np.uint8)


@dataclass
class Interpretation:
    """A model's predictions over a whole split, and the figures that explain them.

    Attributes:
        model: The classifier.
        rows: The split's rows (``file``, ``label_index``), in prediction order.
        predictions: One pass of predictions over all of ``rows`` (columns in the split's
            class order).
        name: Model name for titles.
        column_order: The model's output column of each of the split's classes
            (``leaderboard.class_order``), or None when the two orders are the same. Grad-CAM
            maps split classes through it before asking the model for a logit.
    """

    model: keras.Model
    rows: pd.DataFrame
    predictions: Predictions
    name: str
    column_order: np.ndarray | None = None

    @classmethod
    def from_model(cls, model: keras.Model | str | os.PathLike, split: pd.DataFrame,
                   class_names: list[str] | None = None, batch_size: int = 32,
                   name: str | None = None, column_order=None,
                   split_name: str | None = None) -> Interpretation:
        """Predicts a whole split once, at the model's own input size.

        For a saved model and a ``split_name``, the predictions are those kept beside the
        model (``models/<name>/predictions/<split_name>.npz``,
        :func:`~cnnlab.evaluation.predictions.split_predictions`): computed on the first call,
        read afterwards.

        Args:
            model: A classifier taking ``(batch, h, w, 3)`` float32 in ``[0, 255]``, or a
                model folder saved by ``export.save_model`` (class names from ``meta.json``).
            split: Rows with ``file`` and ``label_index`` (``Manifest.split("test")``).
            class_names: Names in index order (required for an in-memory model).
            batch_size: Images per prediction batch.
            name: Model name for titles (default: the sidecar's or the model's).
            column_order: The model's output columns in ``class_names`` order
                (``leaderboard.class_order``); for a path it comes from the sidecar.
            split_name: ``"val"`` or ``"test"``: read or write the saved predictions of a
                saved model for that split.

        Raises:
            ValueError: If ``class_names`` is missing for an in-memory model, or the split
                holds label indices beyond it.
            evaluate.ClassMismatchError: If a saved model's sidecar lists other classes than
                ``class_names``.
        """
        saved = None
        if isinstance(model, (str, os.PathLike)):
            saved = model
            meta = load_metadata(model)
            if class_names is not None and column_order is None:
                column_order = class_order(meta.get("class_names"), class_names,
                                           display_path(model))
            class_names = class_names or meta.get("class_names")
            name = name or meta.get("model", model_name(model))
            model = load_model(model)
        if not class_names:
            raise ValueError(f"pass class_names for {model.name} (names in label-index order)")
        if split["label_index"].max() >= len(class_names):
            raise ValueError(f"the split holds label index {split['label_index'].max()} but "
                             f"only {len(class_names)} class names were given")
        rows = split.reset_index(drop=True)
        if saved is not None and split_name is not None:
            predictions = split_predictions(saved, split_name, rows, class_names, batch_size,
                                            model)
        else:
            dataset = split_dataset(rows, int(model.input_shape[1]), batch_size)
            predictions = predict_dataset(model, dataset, class_names, column_order)
        return cls(model, rows, predictions, name or model.name,
                   None if column_order is None else np.asarray(column_order, dtype=int))

    @property
    def class_names(self) -> list[str]:
        return self.predictions.class_names

    @property
    def image_size(self) -> int:
        """Side of the model's square input in pixels."""
        return int(self.model.input_shape[1])

    def metrics(self) -> dict:
        """Accuracy and macro-F1 with 95% intervals, loss, test images (``Predictions``)."""
        return self.predictions.metrics()

    def confusion_matrix(self, normalize: str | None = None) -> np.ndarray:
        """``(classes, classes)`` confusion matrix; ``normalize``: None, true, pred or all."""
        return self.predictions.confusion(normalize)

    def plot_confusion_matrix(self, normalize: str | None = "true") -> Figure:
        """Heatmap of the confusion matrix (counts, or row-normalised by default).

        Readable at 53 classes: cells carry colour only above 20 classes, and the figure grows
        with the class count so that every class is labelled at 8 pt;
        :meth:`plot_confused_block` enlarges the classes mistaken for each other most.
        """
        n = len(self.rows)
        kind = "counts" if normalize is None else f"normalised over {normalize}"
        return plot_confusion_matrix(self.confusion_matrix(normalize), self.class_names,
                                     f"{self.name}: confusion matrix ({kind}), {n} images",
                                     normalized=normalize is not None)

    def plot_confused_block(self, k: int = 12) -> Figure:
        """The confusion matrix of the ``k`` most confused classes, enlarged, with counts.

        The classes are those of :meth:`most_confused`'s pairs, taken in its order while both
        classes of a pair fit (``plots.confused_classes``), shown in class order.

        Args:
            k: Most classes shown.
        """
        index = {name: i for i, name in enumerate(self.class_names)}
        confused = self.most_confused()
        pairs = zip(confused["true"].map(index), confused["predicted"].map(index))
        counts = self.confusion_matrix()
        block = confused_classes(counts, k, pairs)
        title = (f"{self.name}: the {len(block)} most confused of {len(self.class_names)} "
                 f"classes, counts of {len(self.rows)} images" if len(block) else
                 f"{self.name}: no image of {len(self.rows)} is misclassified")
        return plot_confused_block(counts, self.class_names, k,
                                   classes=block if len(block) else None, title=title)

    def most_confused(self, min_count: int = 1) -> pd.DataFrame:
        """Pairs (true, predicted) of different classes, most frequent first.

        Args:
            min_count: Leave out pairs seen fewer times.

        Returns:
            Rows ``true, predicted, count, share of true class``.
        """
        matrix = self.confusion_matrix()
        np.fill_diagonal(matrix, 0)
        true_idx, pred_idx = np.nonzero(matrix >= max(1, min_count))
        support = self.confusion_matrix().sum(axis=1)
        table = pd.DataFrame({
            "true": [self.class_names[i] for i in true_idx],
            "predicted": [self.class_names[j] for j in pred_idx],
            "count": matrix[true_idx, pred_idx].astype(int),
            "share of true class": matrix[true_idx, pred_idx] / support[true_idx],
        })
        return table.sort_values(["count", "true"], ascending=[False, True]).reset_index(
            drop=True)

    def classification_report(self, path: str | os.PathLike | None = None) -> pd.DataFrame:
        """Per-class precision, recall, F1 and support, with the averages (scikit-learn).

        Args:
            path: Also write it there as CSV (atomically).
        """
        report = self.predictions.report()
        if path is not None:
            with atomic_path(path) as tmp:
                report.to_csv(tmp, index_label="class")
        return report

    def top_losses(self, k: int = 9) -> pd.DataFrame:
        """The ``k`` images with the highest cross-entropy loss.

        Returns:
            Rows ``index`` (position in the split), ``file``, ``true``, ``predicted``,
            ``probability`` (of the predicted class), ``true probability``, ``loss`` (nats).
        """
        losses = self.predictions.losses
        order = np.argsort(-losses, kind="stable")[:k]
        probs, y_pred = self.predictions.probs, self.predictions.y_pred
        y_true = self.predictions.y_true
        return pd.DataFrame({
            "index": order,
            "file": self.rows["file"].iloc[order].to_numpy(),
            "true": [self.class_names[y_true[i]] for i in order],
            "predicted": [self.class_names[y_pred[i]] for i in order],
            "probability": probs[order, y_pred[order]],
            "true probability": probs[order, y_true[order]],
            "loss": losses[order],
        })

    def plot_top_losses(self, k: int = 9, cols: int = 3) -> Figure:
        """The ``k`` highest-loss images titled true / predicted / probability / loss."""
        table = self.top_losses(k)
        rows = max(1, math.ceil(len(table) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.2, rows * 2.6), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, (_, row) in zip(axes.flat, table.iterrows()):
            ax.imshow(load_image(row["file"]).astype(np.uint8))
            right = row["true"] == row["predicted"]
            ax.set_title(f"true: {fit_label(row['true'], 22)}\npred: "
                         f"{fit_label(row['predicted'], 22)}\n"
                         f"p={row['probability']:.2f}  loss={row['loss']:.2f}",
                         fontsize=8, color="green" if right else "red")
        fig.suptitle(f"{self.name}: top {len(table)} losses of {len(self.rows)} test images")
        fig.tight_layout()
        return fig

    def plot_samples(self, k: int = 12, seed: int = 0, cols: int = 6) -> Figure:
        """Random images titled true / predicted, green when right, red when wrong."""
        return plot_predictions(self.rows, self.predictions.y_pred, self.class_names,
                                self.predictions.probs, k=k, cols=cols, seed=seed,
                                title=f"{self.name} on random test images")

    def gradcam(self, indices, layer: str | None = None,
                class_indices: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Grad-CAM heatmaps of split images (see :func:`gradcam_heatmaps`).

        Args:
            indices: Positions in the split.
            layer: Feature-map layer; None: the last one.
            class_indices: Classes to explain, as the split's label indices; None: the
                predicted ones. They are mapped to the model's own output columns.

        Returns:
            ``(images, heatmaps)``: ``(n, s, s, 3)`` float32 in ``[0, 255]`` at the model's
            input size and ``(n, h', w')`` float32 in ``[0, 1]``.
        """
        indices = np.asarray(indices, dtype=int)
        images = np.stack([load_image(self.rows["file"].iloc[i], self.image_size)
                           for i in indices])
        if class_indices is None:
            class_indices = self.predictions.y_pred[indices]
        columns = np.asarray(class_indices, dtype=int)
        if self.column_order is not None:
            columns = self.column_order[columns]
        return images, gradcam_heatmaps(self.model, images, columns, layer)

    def plot_gradcam(self, k: int = 6, layer: str | None = None, which: str = "top_losses",
                     seed: int = 0, cols: int = 3) -> Figure:
        """Each image beside its Grad-CAM heatmap for the predicted class.

        Args:
            k: Images shown.
            layer: Feature-map layer; None: the last one (the backbone's output).
            which: ``"top_losses"`` (the worst mistakes) or ``"random"``.
            seed: Sampling seed for ``"random"``.
            cols: Image pairs per row.

        Raises:
            ValueError: If ``which`` is neither.
        """
        if which == "top_losses":
            indices = self.top_losses(k)["index"].to_numpy()
        elif which == "random":
            rng = np.random.default_rng(seed)
            indices = rng.choice(len(self.rows), size=min(k, len(self.rows)), replace=False)
        else:
            raise ValueError(f"which={which!r}; choose 'top_losses' or 'random'")
        images, heatmaps = self.gradcam(indices, layer)
        target = layer or feature_map_layers(self.model)[-1]
        rows = max(1, math.ceil(len(indices) / cols))
        fig, axes = plt.subplots(rows, 2 * cols, figsize=(cols * 3.2, rows * 1.85),
                                 squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        y_true, y_pred = self.predictions.y_true, self.predictions.y_pred
        for n, (i, image, heatmap) in enumerate(zip(indices, images, heatmaps)):
            ax_img, ax_cam = axes.flat[2 * n], axes.flat[2 * n + 1]
            ax_img.imshow(image.astype(np.uint8))
            ax_img.set_title(f"true: {fit_label(self.class_names[y_true[i]])}", fontsize=7)
            ax_cam.imshow(overlay_heatmap(image, heatmap))
            ax_cam.set_title(f"pred: {fit_label(self.class_names[y_pred[i]])}", fontsize=7,
                             color="green" if y_true[i] == y_pred[i] else "red")
        fig.suptitle(f"{self.name}: Grad-CAM of the predicted class at {target} "
                     f"({which.replace('_', ' ')})", fontsize=9)
        fig.tight_layout()
        return fig
