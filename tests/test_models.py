import keras
import numpy as np
import pytest

from cnnlab.models.custom import CUSTOM_MODELS, build_custom_model
from cnnlab.models.transfer import build_transfer_model, find_backbone


def test_retail_cnn_is_the_course_architecture():
    model = build_custom_model("retail_cnn", 64, 17)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [(c.filters, c.kernel_size) for c in convs] == [(100, (9, 9)), (50, (5, 5)),
                                                          (25, (3, 3))]
    assert [d.rate for d in model.layers if isinstance(d, keras.layers.Dropout)] == [0.3, 0.2]
    assert isinstance(model.layers[0], keras.layers.Rescaling)  # the course version had none
    assert model.output_shape == (None, 17)


@pytest.mark.parametrize("name", sorted(CUSTOM_MODELS))
def test_custom_models_output_probabilities(name):
    model = build_custom_model(name, 32, 5)
    probs = model.predict(np.random.uniform(0, 255, (3, 32, 32, 3)), verbose=0)
    assert probs.shape == (3, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)


def test_unknown_custom_model():
    with pytest.raises(KeyError, match="retail_cnn"):
        build_custom_model("lenet", 32, 2)


def test_transfer_model_nests_backbone_with_its_preprocessing():
    model = build_transfer_model("densenet121", 4, 32)  # random init: trained from scratch
    backbone = find_backbone(model)
    assert backbone is not None and backbone.name == "densenet121"
    assert backbone.trainable
    scratch = find_backbone(build_transfer_model("mobilenet_v3_small", 4, 32))
    momenta = {layer.momentum for layer in scratch.layers
               if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {0.9}  # 0.999 in keras.applications: too slow for short runs
    assert model.get_layer("preprocessing").mode == "torch"
    assert model.output_shape == (None, 4)
    assert model.layers[-1].dtype_policy.name == "float32"
    inside = build_transfer_model("efficientnet_b0", 4, 32)
    assert "preprocessing" not in [layer.name for layer in inside.layers]
    assert find_backbone(build_custom_model("retail_cnn", 32, 2)) is None


def test_pretrained_backbone_is_frozen_and_runs_in_inference_mode(shared_dir):
    model = build_transfer_model("mobilenet_v3_small_075", 4, 32,
                                 str(shared_dir / "weights" /
                                     "mobilenet_v3_small_075_imagenet_notop.weights.h5"))
    backbone = find_backbone(model)
    assert not backbone.trainable
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    # training=False inside: dropout aside, train-mode calls give the same features
    features = keras.Model(model.input, model.get_layer("pool").output)
    np.testing.assert_allclose(features(x, training=True), features(x, training=False),
                               rtol=1e-4, atol=1e-5)


def test_layer_table_shows_shapes_parameters_and_what_trains():
    from cnnlab.models.custom import build_custom_model
    from cnnlab.models.summary import layer_table
    from cnnlab.models.transfer import build_transfer_model, find_backbone

    cnn = build_custom_model("vehicles_cnn_bn", 64, 4)
    table = layer_table(cnn)
    assert table.iloc[-1]["params"] == cnn.count_params()
    conv = table[table["type"] == "Conv2D"].iloc[0]
    assert conv["output shape"] == "(batch, 64, 64, 32)" and conv["params"] == 3 * 3 * 3 * 32
    bn = table[table["type"] == "BatchNormalization"].iloc[0]
    assert bn["trains"] == "yes" and bn["trainable params"] == 2 * 32  # not the statistics
    assert table.iloc[-2]["output shape"] == "(batch, 4)"
    model = build_transfer_model("mobilenet_v3_small_075", 4, 64)
    find_backbone(model).trainable = False
    frozen = layer_table(model)
    backbone = frozen[frozen["layer"] == find_backbone(model).name].iloc[0]
    assert backbone["trains"] == "no" and "frozen" in backbone["type"]
    assert backbone["trainable params"] == 0 < backbone["params"]
    assert frozen.iloc[-1]["trainable params"] == sum(
        int(np.prod(w.shape)) for w in model.trainable_weights)
