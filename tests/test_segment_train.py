"""DeepLabV3+ fine-tuning on the generated sample dataset's masks."""

import json
import signal

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import leftovers, run_python
from PIL import Image

from cnnlab.config import get_profile
from cnnlab.data.synthetic import SAMPLE_CLASSES
from cnnlab.segmentation.deeplab import Segmenter
from cnnlab.segmentation.iou import mean_iou
from cnnlab.segmentation.training import (
    KerasSegmenter,
    build_deeplabv3_plus,
    count_classes,
    find_mask_pairs,
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
    profile = get_profile("smoke")
    run = train_segmenter(pairs, CLASS_NAMES, profile, tmp_path, backbone="mobilenet_v3_small",
                          weights="none", seed=0, verbose=0)
    history = pd.read_csv(run.run_folder / "history.csv")
    assert history["epoch"].tolist() == list(range(profile.segment_epochs))
    assert history[["mIoU", "val_mIoU"]].stack().between(0, 1).all()
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    assert (run.run_folder / "args.yaml").is_file() and run.weights == "none (random init)"
    # The run engine of classification writes the TensorBoard logs here too.
    assert list((run.run_folder / "tensorboard" / "train" / "validation").glob(
        "events.out.tfevents.*"))
    segmenter = run.segmenter()
    assert isinstance(segmenter, KerasSegmenter) and isinstance(segmenter, Segmenter)
    image = np.zeros((37, 50, 3), np.uint8)
    assert segmenter.predict_mask(image).shape == (37, 50)
    # Our mean_iou agrees with Keras' MeanIoU on the same predictions at the model's size.
    val_ds = mask_dataset(run.val, profile.segment_image_size, batch_size=32)
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
    examples = run.examples_by_class(table)  # every class shown, the worst first
    shown = [c for c in CLASS_NAMES[1:] if table.loc[c, "true pixels"] > 0]
    assert sorted(examples["class"]) == sorted(shown)
    assert examples["IoU"].tolist() == sorted(examples["IoU"].tolist())
    for _, row in examples.iterrows():
        index = list(CLASS_NAMES).index(row["class"])
        assert (read_mask(row["mask"]) == index).any()
    with pytest.raises(ValueError, match="class names"):
        train_segmenter(pairs, CLASS_NAMES[:3], profile, tmp_path)


SEGMENT_SCRIPT = """
from cnnlab.config import get_profile
from cnnlab.data.synthetic import SAMPLE_CLASSES
from cnnlab.segmentation.training import find_mask_pairs, train_segmenter
train_segmenter(find_mask_pairs(sys.argv[1]), ("background", *SAMPLE_CLASSES),
                get_profile("smoke", segment_epochs=3), sys.argv[2],
                backbone="mobilenet_v3_small", seed=0, verbose=0)
"""


def test_train_segmenter_resumes_after_sigkill_and_reuses_a_finished_run(
        pairs, sample_root, tmp_path, capsys):
    args = (str(sample_root.parent), str(tmp_path))
    killed = run_python(SEGMENT_SCRIPT, *args, point="mid_epoch")
    assert killed.returncode == -signal.SIGKILL, (killed.stdout + killed.stderr)[-3000:]
    run = tmp_path / "deeplabv3plus"
    before = pd.read_csv(run / "history.csv")
    assert len(before) == 1 and json.loads((run / "state.json").read_text())["status"] == \
        "running"
    again = run_python(SEGMENT_SCRIPT, *args)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-3000:]
    assert "resuming the interrupted run" in out and "train: resuming after epoch 1 of 3" in out
    after = pd.read_csv(run / "history.csv")
    assert after["epoch"].tolist() == [0, 1, 2]  # the epoch count of an uninterrupted run
    pd.testing.assert_frame_equal(after.iloc[:1], before)
    assert json.loads((run / "state.json").read_text())["status"] == "finished"
    assert not leftovers(tmp_path) and (run / "best.weights.h5").is_file()
    # The same call once more: the finished run is loaded, not trained again.
    capsys.readouterr()
    result = train_segmenter(pairs, CLASS_NAMES, get_profile("smoke", segment_epochs=3),
                             tmp_path, backbone="mobilenet_v3_small", seed=0, verbose=0)
    assert "holds a finished run" in capsys.readouterr().out
    pd.testing.assert_frame_equal(result.history, after)
    assert result.run_folder == run and not list(tmp_path.glob("deeplabv3plus.*"))
    assert result.seconds == pytest.approx(after["seconds"].sum())


def test_profiles_hold_the_segmentation_and_agreement_settings():
    from cnnlab.config import PROFILES, parse_overrides

    smoke, cpu, gpu = PROFILES["smoke"], PROFILES["cpu"], PROFILES["gpu"]
    assert (smoke.segment_image_size, smoke.segment_epochs, smoke.segment_batch_size,
            smoke.segment_filters, smoke.segment_max_pairs, smoke.segment_pretrained,
            smoke.agreement_images) == (64, 2, 8, 32, 48, False, 24)
    assert (cpu.segment_image_size, cpu.segment_epochs, cpu.segment_batch_size,
            cpu.segment_filters, cpu.segment_max_pairs, cpu.segment_pretrained,
            cpu.agreement_images) == (128, 12, 16, 64, None, True, None)
    assert (gpu.segment_image_size, gpu.segment_epochs, gpu.segment_filters) == (256, 30, 256)
    assert {p.segment_learning_rate for p in PROFILES.values()} == {1e-3}
    assert parse_overrides(["segment_epochs=3", "segment_max_pairs=none", "agreement_images=10",
                            "segment_pretrained=true", "segment_learning_rate=0.01"]) == {
        "segment_epochs": 3, "segment_max_pairs": None, "agreement_images": 10,
        "segment_pretrained": True, "segment_learning_rate": 0.01}
    assert parse_overrides(["segment_max_pairs=20", "agreement_images=none"], cpu) == {
        "segment_max_pairs": 20, "agreement_images": None}
