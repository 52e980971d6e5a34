"""Interpretation and Grad-CAM on really trained small models (flat CNN, nested MobileNetV3)."""

import keras
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from cnnlab.config import get_profile
from cnnlab.data.datasets import build_manifest
from cnnlab.data.pipeline import load_image
from cnnlab.evaluation.interpretation import (
    Interpretation,
    feature_map_layers,
    gradcam_heatmaps,
    gradcam_model,
    overlay_heatmap,
)
from cnnlab.models.transfer import find_backbone
from cnnlab.training.fine_tuning import train_transfer
from cnnlab.training.fitting import train_custom

# MobileNetV3Small 0.75 at 64 px: a 2x2 final feature map, 8x8 at output stride 8, from the
# local ImageNet weights in ../shared (1 frozen + 1 fine-tuning epoch: a backbone trained from
# scratch for 2 epochs collapses to one output for every image, which explains nothing). The
# flat CNN trains 3 epochs from scratch; 48 training images.
SMALL = get_profile("smoke", image_size=64, custom_image_size=32, batch_size=16,
                    custom_epochs=3, freeze_epochs=1, fine_tune_epochs=1,
                    max_train_per_class=12)


@pytest.fixture(scope="module")
def trained(sample_root, tmp_path_factory):
    from cnnlab.config import project_dirs

    dirs = project_dirs(tmp_path_factory.mktemp("interpret"))
    manifest = build_manifest(sample_root, "sample")
    flat = train_custom("vehicles_cnn_bn", manifest, SMALL, dirs)
    return {"manifest": manifest, "dirs": dirs, "flat": flat, "test": manifest.split("test")}


@pytest.fixture(scope="module")
def nested(trained, shared_dir):
    result = train_transfer("mobilenet_v3_small_075", trained["manifest"], SMALL, "local",
                            shared_dir / "weights", trained["dirs"])
    assert result.weights.startswith("imagenet (local file")
    return result


def _images(rows, size, count=4):
    return np.stack([load_image(f, size) for f in rows["file"].iloc[:count]])


def _class_activation_map(features, kernel, classes):
    """CAM (Zhou et al. 2016): ReLU(sum_k w_kc A^k), scaled to [0, 1] per image."""
    cam = np.maximum(np.einsum("nhwk,kn->nhw", features, kernel[:, classes]), 0)
    peak = cam.max(axis=(1, 2), keepdims=True)
    return np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)


def test_usual_keras_recipe_fails_on_a_nested_backbone(trained, nested):
    model = nested.model
    backbone = find_backbone(model)
    images = _images(trained["test"], 64, count=2)
    # Keras 3.15 refuses to build it ("... is not connected to `inputs`"); Keras 3.13 builds
    # it and fails on the first call (KeyError on a tensor of the backbone's own graph).
    with pytest.raises((ValueError, KeyError)):
        naive = keras.Model(model.inputs, [backbone.get_layer("conv_1").output, model.output])
        naive(images)


def test_gradcam_on_nested_backbone_equals_cam(trained, nested):
    # With GAP + dense head on the last feature map, Grad-CAM's channel weights are the
    # head's weights divided by h*w (Selvaraju et al. 2017, sec. 3.1), so it must equal CAM.
    model = nested.model
    images = _images(trained["test"], 64)
    heatmaps = gradcam_heatmaps(model, images)
    assert heatmaps.shape == (4, 2, 2) and heatmaps.dtype == np.float32
    features = find_backbone(model)(images, training=False).numpy()
    kernel = model.get_layer("head").get_weights()[0]
    predicted = model.predict_on_batch(images).argmax(axis=1)
    np.testing.assert_allclose(heatmaps, _class_activation_map(features, kernel, predicted),
                               atol=1e-4)


def test_gradcam_inside_the_nested_backbone(trained, nested):
    model = nested.model
    images = _images(trained["test"], 64)
    assert "mobilenet_v3_small_075/expanded_conv_2_add" in feature_map_layers(model)
    heatmaps = gradcam_heatmaps(model, images, layer="expanded_conv_2_add")
    assert heatmaps.shape == (4, 8, 8)
    assert heatmaps.min() >= 0 and np.isclose(heatmaps.max(axis=(1, 2)), 1).all()
    features, logits = gradcam_model(model, "mobilenet_v3_small_075/expanded_conv_2_add")(images)
    assert features.shape[:3] == (4, 8, 8)
    # The rebuilt chain gives the model's own probabilities, from logits.
    np.testing.assert_allclose(keras.ops.softmax(logits).numpy(),
                               model.predict_on_batch(images), atol=1e-5)
    # Explaining another class gives another map.
    other = gradcam_heatmaps(model, images, np.zeros(4, int), layer="expanded_conv_2_add")
    third = gradcam_heatmaps(model, images, np.full(4, 2), layer="expanded_conv_2_add")
    assert not np.allclose(other, third)


def test_gradcam_on_flat_cnn_equals_cam(trained):
    model = trained["flat"].model
    images = _images(trained["test"], 32)
    last = feature_map_layers(model)[-1]
    assert last.startswith("max_pooling2d")
    heatmaps = gradcam_heatmaps(model, images)
    assert heatmaps.shape == (4, 4, 4)
    features = keras.Model(model.input, model.get_layer(last).output)(images).numpy()
    kernel = model.layers[-1].get_weights()[0]
    predicted = model.predict_on_batch(images).argmax(axis=1)
    np.testing.assert_allclose(heatmaps, _class_activation_map(features, kernel, predicted),
                               atol=1e-4)


def test_gradcam_check_allows_round_off_and_refuses_another_network(trained, monkeypatch):
    model = trained["flat"].model
    images = _images(trained["test"], 32)
    predict = model.predict_on_batch
    # Eager against compiled round-off (up to about 1e-3 in probability) is the same network.
    monkeypatch.setattr(model, "predict_on_batch", lambda x: predict(x) + 2e-3)
    gradcam_heatmaps(model, images)
    monkeypatch.setattr(model, "predict_on_batch", lambda x: predict(x)[:, ::-1])
    with pytest.raises(ValueError, match="not a chain of layers"):
        gradcam_heatmaps(model, images)


def test_unknown_layer_names_the_candidates(nested):
    with pytest.raises(ValueError, match="mobilenet_v3_small_075/conv_1"):
        gradcam_model(nested.model, "no_such_layer")


def test_overlay_heatmap_resizes_and_colours():
    image = np.full((20, 30, 3), 100, np.float32)
    out = overlay_heatmap(image, np.array([[0.0, 1.0], [0.0, 0.0]], np.float32))
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert out[2, 27, 0] > out[17, 2, 0]  # hot corner is red, cold corner blue
    assert out[17, 2, 2] > out[17, 2, 0]


def test_interpretation_over_the_whole_split(trained, tmp_path):
    test = trained["test"]
    classes = trained["manifest"].classes
    interp = Interpretation.from_model(trained["flat"].model, test, classes, batch_size=4,
                                       name="vehicles_cnn_bn")
    n = len(test)
    y_true, y_pred = interp.predictions.y_true, interp.predictions.y_pred
    np.testing.assert_array_equal(y_true, test["label_index"].to_numpy())
    counts = interp.confusion_matrix()
    assert counts.sum() == n and np.trace(counts) == (y_true == y_pred).sum()
    rows = interp.confusion_matrix("true").sum(axis=1)
    np.testing.assert_allclose(rows[counts.sum(axis=1) > 0], 1)

    confused = interp.most_confused()
    off_diagonal = counts.sum() - np.trace(counts)
    assert confused["count"].sum() == off_diagonal
    assert (confused["true"] != confused["predicted"]).all()
    assert confused["count"].is_monotonic_decreasing
    assert (interp.most_confused(min_count=2)["count"] >= 2).all()

    report = interp.classification_report(tmp_path / "report.csv")
    saved = pd.read_csv(tmp_path / "report.csv", index_col="class")
    assert list(saved.index[:len(classes)]) == classes
    np.testing.assert_allclose(saved.loc[classes, "recall"], report.loc[classes, "recall"])

    top = interp.top_losses(3)
    assert top["loss"].is_monotonic_decreasing and top["loss"].iloc[0] == \
        interp.predictions.losses.max()
    np.testing.assert_allclose(top["loss"], -np.log(np.clip(top["true probability"], 1e-7, 1)),
                               rtol=1e-5)
    metrics = interp.metrics()
    assert metrics["test images"] == n
    assert metrics["accuracy CI low"] <= metrics["accuracy"] <= metrics["accuracy CI high"]

    # The saved model, loaded from its path with the sidecar's class names, agrees.
    again = Interpretation.from_model(trained["flat"].paths[".keras"], test)
    np.testing.assert_allclose(again.predictions.probs, interp.predictions.probs, atol=1e-5)
    assert again.name == "vehicles_cnn_bn" and again.class_names == classes
    with pytest.raises(ValueError, match="class_names"):
        Interpretation.from_model(trained["flat"].model, test)


def test_interpretation_figures(trained, nested):
    test, classes = trained["test"], trained["manifest"].classes
    interp = Interpretation.from_model(nested.model, test, classes, batch_size=8)
    figures = {
        "confusion": interp.plot_confusion_matrix(),
        "top losses": interp.plot_top_losses(4, cols=2),
        "samples": interp.plot_samples(4),
        "gradcam": interp.plot_gradcam(3, cols=3),
        "gradcam inner": interp.plot_gradcam(2, layer="expanded_conv_2_add", which="random"),
    }
    for name, fig in figures.items():
        assert isinstance(fig, Figure), name
    top_titles = [ax.get_title() for ax in figures["top losses"].axes if ax.get_title()]
    assert len(top_titles) == 4 and all("loss=" in t and "p=" in t for t in top_titles)
    cam_axes = [ax for ax in figures["gradcam"].axes if ax.images]
    assert len(cam_axes) == 6  # image and heatmap for each of 3
    assert str(len(test)) in figures["confusion"].axes[0].get_title()
    with pytest.raises(ValueError, match="top_losses"):
        interp.plot_gradcam(2, which="best")


def test_gradcam_explains_the_split_class_when_the_model_orders_classes_differently(trained):
    from cnnlab.evaluation.predictions import class_order

    test, classes = trained["test"], trained["manifest"].classes
    model = trained["flat"].model
    model_classes = classes[::-1]  # as if the model was saved with its classes reversed
    order = class_order(model_classes, classes)
    interp = Interpretation.from_model(model, test, classes, batch_size=8, column_order=order)
    images = _images(test, interp.image_size, count=3)
    for split_class in range(len(classes)):
        asked = np.full(3, split_class)
        _, heatmaps = interp.gradcam(np.arange(3), class_indices=asked)
        expected = gradcam_heatmaps(model, images, np.full(3, order[split_class]))
        np.testing.assert_allclose(heatmaps, expected, atol=1e-6)
    # the predicted classes are explained through the same mapping
    _, predicted = interp.gradcam(np.arange(3))
    columns = order[interp.predictions.y_pred[:3]]
    np.testing.assert_allclose(predicted, gradcam_heatmaps(model, images, columns), atol=1e-6)


def _interpretation_of(pairs: dict[tuple[int, int], int], classes: int = 53,
                       correct: int = 4) -> Interpretation:
    """Made-up predictions: ``correct`` right per class, ``pairs[(true, predicted)]`` wrong.

    There is no model: only the Interpretation's figures are asked for.
    """
    from cnnlab.evaluation.predictions import Predictions

    y_true = [c for c in range(classes) for _ in range(correct)]
    y_pred = list(y_true)
    for (true, predicted), count in pairs.items():
        y_true += [true] * count
        y_pred += [predicted] * count
    probs = np.eye(classes, dtype=np.float32)[y_pred] * 0.9 + 0.1 / classes
    names = [f"class {i:02d}" for i in range(classes)]
    rows = pd.DataFrame({"file": [f"{i}.jpg" for i in range(len(y_true))],
                         "label_index": y_true})
    return Interpretation(None, rows, Predictions(np.asarray(y_true), probs, names), "made-up")


def test_53_class_confusion_matrix_is_legible():
    from readable import assert_readable

    interp = _interpretation_of({(1, 2): 3, (5, 9): 2})
    for normalize in (None, "true"):
        fig = interp.plot_confusion_matrix(normalize)
        ax = fig.axes[0]
        assert len(ax.get_xticklabels()) == len(ax.get_yticklabels()) == 53
        assert min(t.get_fontsize() for t in ax.get_xticklabels() + ax.get_yticklabels()) >= 7
        assert_readable(fig, f"normalize={normalize}")


def test_confused_block_holds_the_most_confused_pairs():
    from readable import assert_readable

    # Six strong confusions among 11 classes, then one-off mistakes spread over the others.
    strong = {(3, 4): 9, (4, 3): 7, (10, 11): 6, (20, 21): 5, (30, 31): 4, (40, 52): 3,
              (50, 30): 3}
    weak = {(i, i + 1): 1 for i in range(12, 19)}
    interp = _interpretation_of({**strong, **weak})
    fig = interp.plot_confused_block(k=12)
    assert_readable(fig, "confused block")
    ax = fig.axes[0]
    shown = [t.get_text() for t in ax.get_yticklabels()]
    assert [t.get_text() for t in ax.get_xticklabels()] == shown
    assert len(shown) == 12 and "12 most confused of 53" in ax.get_title()
    written = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text()
               for t in ax.texts}
    top = interp.most_confused().head(len(strong))
    for _, pair in top.iterrows():  # every strong pair, both classes, its count written
        assert pair["true"] in shown and pair["predicted"] in shown
        cell = (shown.index(pair["true"]), shown.index(pair["predicted"]))
        assert written[cell] == str(pair["count"])
    few = _interpretation_of({(3, 4): 2, (4, 3): 1}).plot_confused_block(k=12)
    bar = few.axes[1]  # the colour bar counts images: whole numbers, even up to 2
    ticks = [t for t in bar.get_yticks() if bar.get_ylim()[0] <= t <= bar.get_ylim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
