"""Tests for cnnlab.models.architecture (Keras 3 architecture diagrams)."""

from __future__ import annotations

import shutil

import pytest

keras = pytest.importorskip("keras")
visualkeras = pytest.importorskip("visualkeras")

from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from cnnlab.models import architecture  # noqa: E402
from cnnlab.models.architecture import (  # noqa: E402
    layered_view,
    output_shapes_provided,
    plot_architecture,
    summary_frame,
)

layers = keras.layers
N_CLASSES = 5


def _sequential_cnn() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            layers.Conv2D(8, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(N_CLASSES, activation="softmax"),
        ],
        name="seq_cnn",
    )


def _functional_cnn() -> keras.Model:
    inputs = keras.Input((64, 64, 3))
    x = layers.Conv2D(100, 9, activation="relu")(inputs)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(50, 5, activation="relu")(x)
    x = layers.Dropout(0.2)(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(25, 3, activation="relu")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(64, activation="relu")(x)
    x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(N_CLASSES, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="custom_cnn")


def _transfer_model() -> keras.Model:
    base = keras.applications.MobileNetV3Small(
        input_shape=(64, 64, 3), alpha=0.75, include_top=False, weights=None
    )
    base.trainable = False
    inputs = keras.Input((64, 64, 3))
    x = base(inputs, training=False)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(N_CLASSES, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="transfer")


@pytest.fixture(scope="module")
def models() -> dict[str, keras.Model]:
    return {
        "sequential": _sequential_cnn(),
        "functional": _functional_cnn(),
        "transfer": _transfer_model(),
    }


MODEL_NAMES = ["sequential", "functional", "transfer"]


def _attr_state(model: keras.Model) -> list[bool]:
    return [hasattr(layer, "output_shape") for layer in model.layers]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_plain_visualkeras_fails_on_keras3(models, name):
    """Documents the bug: visualkeras 0.2.0 reads `layer.output_shape`, gone in Keras 3."""
    with pytest.raises(AttributeError, match="output_shape"):
        visualkeras.layered_view(models[name], legend_text_spacing_offset=0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_layered_view_returns_image_and_restores_layers(models, name):
    model = models[name]
    before = _attr_state(model)
    assert not all(before)  # Keras 3 layers lack output_shape (only nested models have it)

    image = layered_view(model, legend=True)

    assert isinstance(image, Image.Image)
    assert image.width > 0 and image.height > 0
    assert image.getextrema() != ((255, 255), (255, 255), (255, 255), (255, 255))  # not blank
    assert _attr_state(model) == before
    assert all("output_shape" not in vars(layer) for layer in model.layers)


def test_transfer_backbone_is_one_box(models):
    model = models["transfer"]
    with output_shapes_provided(model) as added:
        assert model.layers[1].name not in added  # the nested model keeps its own property
        assert model.layers[1].output_shape == (None, 2, 2, 432)
        assert added[model.layers[2].name] == (None, 432)
        assert model.layers[-1].output_shape == (None, N_CLASSES)
    assert len(model.layers) == 4


def test_adapter_restores_layers_when_body_raises(models):
    model = models["functional"]
    before = _attr_state(model)
    with pytest.raises(RuntimeError, match="boom"), output_shapes_provided(model) as added:
        assert added and all(hasattr(layer, "output_shape") for layer in model.layers)
        raise RuntimeError("boom")
    assert _attr_state(model) == before


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_summary_frame_matches_model(models, name):
    model = models[name]
    frame = summary_frame(model)
    assert list(frame.columns) == ["layer", "type", "output_shape", "params", "trainable"]
    assert len(frame) == len(model.layers)
    assert int(frame["params"].sum()) == model.count_params()
    assert frame["output_shape"].iloc[-1] == f"(None, {N_CLASSES})"


def test_summary_frame_transfer_rows(models):
    frame = summary_frame(models["transfer"]).set_index("layer")
    backbone = frame.iloc[1]
    assert backbone["type"] == "Functional"
    assert backbone["output_shape"] == "(None, 2, 2, 432)"
    assert not backbone["trainable"]
    assert frame["params"].iloc[1] == models["transfer"].layers[1].count_params()


@pytest.mark.parametrize("kind", ["layered", "table", "auto"])
def test_plot_architecture_kinds(models, kind, tmp_path, capsys):
    for name in MODEL_NAMES:
        path = tmp_path / kind / f"{name}.png"
        fig = plot_architecture(models[name], path=path, kind=kind)
        assert isinstance(fig, Figure)
        assert fig.dpi == 100
        with Image.open(path) as png:
            assert png.width > 50 and png.height > 50
    assert sorted(p.name for p in (tmp_path / kind).iterdir()) == sorted(
        f"{n}.png" for n in MODEL_NAMES
    )  # no temporary files left behind
    if kind == "auto":  # the first choice worked: nothing to say
        assert "plot_architecture" not in capsys.readouterr().out


def test_auto_falls_back_to_table_and_says_why(models, monkeypatch, capsys):
    def no_visualkeras():
        raise ImportError("visualkeras missing (simulated)")

    monkeypatch.setattr(architecture, "_import_visualkeras", no_visualkeras)
    monkeypatch.setattr(architecture.shutil, "which", lambda _name: None)
    fig = plot_architecture(models["transfer"], kind="auto")
    assert isinstance(fig, Figure)
    out = capsys.readouterr().out
    assert "using the 'table' view" in out
    assert "'layered' failed" in out and "visualkeras missing" in out
    assert "'graph' failed" in out and "apt-get install graphviz" in out


def test_graph_without_dot_raises_clear_error(models, monkeypatch):
    monkeypatch.setattr(architecture.shutil, "which", lambda _name: None)
    with pytest.raises(RuntimeError, match="apt-get install graphviz"):
        plot_architecture(models["sequential"], kind="graph")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` not installed")
def test_graph_with_dot(models):
    pytest.importorskip("pydot")
    assert isinstance(plot_architecture(models["transfer"], kind="graph"), Figure)


def test_invalid_kind_and_unbuilt_model(models):
    with pytest.raises(ValueError, match="kind must be one of"):
        plot_architecture(models["sequential"], kind="pie")
    with pytest.raises(ValueError, match="not built"):
        layered_view(keras.Sequential([layers.Dense(2)]))


@pytest.mark.parametrize("kind", ["layered", "table"])
def test_transfer_diagram_draws_the_backbone_as_one_labelled_block(models, kind):
    model = models["transfer"]
    backbone = model.layers[1]
    params = f"{backbone.count_params():,}"
    fig = plot_architecture(model, kind=kind)
    title = fig._suptitle.get_text().replace("\n", " ")
    assert f"backbone {backbone.name} ({params} params)" in title
    assert "head " + " → ".join(layer.name for layer in model.layers[2:]) in title
    if kind == "layered":
        labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
        blocks = [label for label in labels if label.startswith("backbone")]
        assert blocks == [f"backbone {backbone.name} (frozen): {params} params, "
                          f"output 2×2×432"]
        assert "Functional" not in labels  # not a bare type name
        assert {"GlobalAveragePooling2D", "Dense"} <= set(labels)  # then the head's layers
    else:
        cells = [cell.get_text().get_text() for cell in fig.axes[0].tables[0].get_celld().values()]
        assert "backbone (Functional)" in cells and backbone.name in cells


def test_flat_model_legend_names_its_layer_types(models):
    fig = plot_architecture(models["functional"], kind="layered")
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert labels == ["InputLayer", "Conv2D", "MaxPooling2D", "Dropout", "Flatten", "Dense"]
    assert fig._suptitle.get_text() == "custom_cnn"
