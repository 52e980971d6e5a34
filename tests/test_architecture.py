"""Architecture diagrams on Keras 3, where visualkeras 0.2.0 alone fails."""

import pytest
import visualkeras
from matplotlib.figure import Figure
from PIL import Image

from cnnlab.architecture import layered_view, plot_architecture, summary_frame
from cnnlab.models import build_custom_model, build_transfer_model


@pytest.fixture(scope="module")
def models():
    sequential = build_custom_model("retail_cnn", 64, 5)
    functional = build_custom_model("vehicles_cnn_bn", 64, 5)
    nested = build_transfer_model("mobilenet_v3_small_075", 5, 64)
    return {"sequential": sequential, "functional": functional, "nested": nested}


def test_plain_visualkeras_fails_on_keras_3(models):
    with pytest.raises(AttributeError, match="output_shape"):
        visualkeras.layered_view(models["functional"])


@pytest.mark.parametrize("kind", ["sequential", "functional", "nested"])
def test_layered_view_works_and_leaves_layers_untouched(models, kind):
    model = models[kind]
    before = [hasattr(layer, "output_shape") for layer in model.layers]
    image = layered_view(model, legend=True)
    assert isinstance(image, Image.Image) and image.width > 50 and image.height > 20
    assert [hasattr(layer, "output_shape") for layer in model.layers] == before


@pytest.mark.parametrize("kind", ["layered", "table", "auto"])
def test_plot_architecture_returns_a_figure(models, kind, tmp_path):
    fig = plot_architecture(models["nested"], path=tmp_path / "arch.png", kind=kind)
    assert isinstance(fig, Figure)
    assert (tmp_path / "arch.png").stat().st_size > 1000


def test_summary_frame_counts_every_parameter(models):
    for model in models.values():
        frame = summary_frame(model)
        assert frame["params"].sum() == model.count_params()
        assert {"layer", "type", "output_shape", "params", "trainable"} <= set(frame.columns)
    nested = summary_frame(models["nested"])
    assert "mobilenet_v3_small_075" in set(nested["layer"])


def test_unknown_kind_is_refused(models):
    with pytest.raises(ValueError):
        plot_architecture(models["sequential"], kind="3d")
