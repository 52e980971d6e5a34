"""DeepLabV3+ fine-tuning on the generated sample dataset's masks."""

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cnnlab.data.synthetic import SAMPLE_CLASSES
from cnnlab.segmentation.deeplab import Segmenter
from cnnlab.segmentation.iou import mean_iou
from cnnlab.segmentation.training import (
    KerasSegmenter,
    build_deeplabv3_plus,
    count_classes,
    find_mask_pairs,
    get_segment_train_settings,
    mask_dataset,
    plot_miou_history,
    read_mask,
    split_pairs,
    stride_layers,
    train_segmenter,
)

CLASS_NAMES = ("background", *SAMPLE_CLASSES)


@pytest.fixture(scope="module")
def pairs(sample_root):
    return find_mask_pairs(sample_root.parent)


def test_find_mask_pairs_on_sample(pairs, sample_root, tmp_path):
    assert len(pairs) == 4 * 15 and set(pairs["group"]) == set(SAMPLE_CLASSES)
    first = pairs.iloc[0]
    assert first["mask"].replace("/masks/", "/images/") == first["image"]
    assert count_classes(pairs) == 5
    mask = read_mask(first["mask"])
    assert mask.shape == (48, 48) and set(np.unique(mask)) == {0, 1}  # circle = 1
    train, val = split_pairs(pairs, val_fraction=0.25, seed=0)
    assert len(val) == 15 and set(val["group"]) == set(SAMPLE_CLASSES)
    assert not set(train["image"]) & set(val["image"])
    # An image without a mask is named; an RGB "mask" is refused.
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "lonely.jpg")
    with pytest.raises(FileNotFoundError, match="lonely.jpg"):
        find_mask_pairs(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "masks" / "lonely.png")
    with pytest.raises(ValueError, match="single-channel"):
        read_mask(tmp_path / "masks" / "lonely.png")
    with pytest.raises(FileNotFoundError, match="images/ and masks/"):
        find_mask_pairs(tmp_path / "nothing")


def test_mask_dataset_keeps_class_indices(pairs):
    images, masks = next(iter(mask_dataset(pairs.head(6), 32, batch_size=6, training=True)))
    assert images.shape == (6, 32, 32, 3) and images.dtype == "float32"
    assert masks.shape == (6, 32, 32) and masks.dtype == "int32"
    assert set(np.unique(masks.numpy())) <= {0, 1}  # nearest neighbour: no blended labels


def test_deeplabv3_plus_shapes():
    model = build_deeplabv3_plus(5, 64, "mobilenet_v3_small", "none", filters=16)
    assert model.output_shape == (None, 64, 64, 5)
    backbone = model.get_layer("mobilenet_v3_small")
    assert [o.shape[1] for o in backbone.outputs] == [16, 4]  # strides 4 and 16
    base = keras.applications.MobileNetV3Small(input_shape=(64, 64, 3), include_top=False,
                                               weights=None)
    low, high = stride_layers(base)
    assert base.get_layer(low).output.shape[1] == 16
    assert base.get_layer(high).output.shape[1] == 4
    with pytest.raises(ValueError, match="multiple of 16"):
        build_deeplabv3_plus(5, 72, "mobilenet_v3_small", "none")


def test_train_segmenter_reports_miou_per_epoch(pairs, tmp_path):
    settings = get_segment_train_settings("smoke")
    run = train_segmenter(pairs, CLASS_NAMES, settings, tmp_path, backbone="mobilenet_v3_small",
                          weights="none", seed=0, verbose=0)
    history = pd.read_csv(run.run_folder / "history.csv")
    assert history["epoch"].tolist() == list(range(settings.epochs))
    assert history[["mIoU", "val_mIoU"]].stack().between(0, 1).all()
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    assert (run.run_folder / "args.yaml").is_file() and run.weights == "none (random init)"
    segmenter = run.segmenter()
    assert isinstance(segmenter, KerasSegmenter) and isinstance(segmenter, Segmenter)
    image = np.zeros((37, 50, 3), np.uint8)
    assert segmenter.predict_mask(image).shape == (37, 50)
    # Our mean_iou agrees with Keras' MeanIoU on the same predictions at the model's size.
    val_ds = mask_dataset(run.val, settings.image_size, batch_size=32)
    images, masks = next(iter(val_ds))
    predicted = run.model.predict_on_batch(images).argmax(axis=-1)
    metric = keras.metrics.MeanIoU(len(CLASS_NAMES), sparse_y_pred=True)
    metric.update_state(masks, predicted)
    assert mean_iou(list(masks.numpy()), list(predicted), CLASS_NAMES) == pytest.approx(
        float(metric.result()), abs=1e-5)
    table = run.per_class_iou()
    assert list(table.index) == list(CLASS_NAMES) and table["true pixels"].sum() == \
        len(run.val) * 48 * 48
    fig = plot_miou_history(run.history, "smoke")
    assert [ax.get_ylabel() for ax in fig.axes] == ["mIoU", "loss"]
    with pytest.raises(ValueError, match="class names"):
        train_segmenter(pairs, CLASS_NAMES[:3], settings, tmp_path)
