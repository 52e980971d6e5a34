"""Tests for cnnlab.segmentation: DeepLabV3 TFLite segmentation on real ../shared assets."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import types
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from cnnlab.segmentation import deeplab as segment
from cnnlab.segmentation.agreement import (
    VOC_CLASS_MAPS,
    agreement_summary,
    agreement_table,
    plot_agreement_failures,
)
from cnnlab.segmentation.deeplab import (
    DEEPLAB_DIR_ENV,
    DEEPLAB_MODELS,
    VOC_CLASSES,
    DeepLabSegmenter,
    Segmenter,
    class_fractions,
    deeplab_model_path,
    dominant_class,
)
from cnnlab.segmentation.iou import mean_iou, per_class_iou, segmentation_confusion
from cnnlab.segmentation.overlays import (
    class_palette,
    colorize_mask,
    overlay,
    plot_segmentation,
    voc_colormap,
)

CAR = VOC_CLASSES.index("car")
# The first car photos in sorted order; measured: 7 of 8 have car as dominant class with
# either model (over all 200 car photos: 150 float, 149 quant).
N_CAR_IMAGES = 8


@pytest.fixture(scope="session")
def deeplab_dir(shared_dir: Path) -> Path:
    return shared_dir / "models" / "deeplab"


@pytest.fixture(scope="session")
def car_images(shared_dir: Path) -> list[np.ndarray]:
    files = sorted((shared_dir / "datasets" / "vehicles" / "car").glob("*.jpg"))[:N_CAR_IMAGES]
    assert len(files) == N_CAR_IMAGES
    return [np.asarray(Image.open(f).convert("RGB")) for f in files]


@pytest.fixture(scope="module", params=sorted(DEEPLAB_MODELS))
def segmenter(request: pytest.FixtureRequest, deeplab_dir: Path) -> DeepLabSegmenter:
    return DeepLabSegmenter(request.param, path=deeplab_dir, num_threads=2)


@pytest.fixture(autouse=True)
def _no_deeplab_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEEPLAB_DIR_ENV, raising=False)


# --------------------------------------------------------------------------- model files


def test_registry() -> None:
    assert segment.DEFAULT_DEEPLAB_MODEL == "deeplabv3_257_float"
    float_spec = DEEPLAB_MODELS["deeplabv3_257_float"]
    quant_spec = DEEPLAB_MODELS["deeplabv3_513_quant"]
    assert (float_spec.input_size, float_spec.input_kind, float_spec.output_kind) == (
        257,
        "float",
        "logits",
    )
    assert (quant_spec.input_size, quant_spec.input_kind, quant_spec.output_kind) == (
        513,
        "uint8",
        "class_index",
    )
    for spec in DEEPLAB_MODELS.values():
        assert spec.url.startswith("https://") and spec.url.endswith(spec.filename)
        assert len(spec.sha256) == 64


@pytest.mark.shared
def test_model_path_from_env(monkeypatch: pytest.MonkeyPatch, deeplab_dir: Path) -> None:
    monkeypatch.setenv(DEEPLAB_DIR_ENV, str(deeplab_dir))
    for name, spec in DEEPLAB_MODELS.items():
        assert deeplab_model_path(name) == deeplab_dir / spec.filename


@pytest.mark.shared
def test_model_path_explicit_overrides_env(
    monkeypatch: pytest.MonkeyPatch, deeplab_dir: Path, tmp_path: Path
) -> None:
    monkeypatch.setenv(DEEPLAB_DIR_ENV, str(tmp_path))  # empty: would fail if consulted
    file = deeplab_dir / "deeplabv3_257_mv_gpu.tflite"
    assert deeplab_model_path(path=file) == file
    assert deeplab_model_path(path=deeplab_dir) == file
    assert deeplab_model_path("deeplabv3_513_quant", path=str(deeplab_dir)).name == (
        "deeplabv3_mnv2_pascal_quant.tflite"
    )


def test_missing_path_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="deeplabv3_257_mv_gpu.tflite"):
        deeplab_model_path(path=tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.tflite"):
        deeplab_model_path(path=tmp_path / "nope.tflite")
    monkeypatch.setenv(DEEPLAB_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=DEEPLAB_DIR_ENV):
        deeplab_model_path("deeplabv3_513_quant")


def test_sha256_mismatch_raises(tmp_path: Path) -> None:
    fake = tmp_path / "deeplabv3_257_mv_gpu.tflite"
    fake.write_bytes(b"not a model")
    expected = DEEPLAB_MODELS["deeplabv3_257_float"].sha256
    with pytest.raises(ValueError, match=expected) as info:
        deeplab_model_path(path=tmp_path)
    assert hashlib.sha256(b"not a model").hexdigest() in str(info.value)


def test_unknown_model_name() -> None:
    with pytest.raises(ValueError, match="deeplabv3_257_float"):
        deeplab_model_path("deeplabv4")


def test_download_goes_through_keras_get_file(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_get_file(fname, origin, file_hash, cache_subdir):
        calls.append((fname, origin, file_hash, cache_subdir))
        return f"/cache/{cache_subdir}/{fname}"

    fake_keras = types.SimpleNamespace(utils=types.SimpleNamespace(get_file=fake_get_file))
    monkeypatch.setitem(sys.modules, "keras", fake_keras)  # no network, no TF import
    spec = DEEPLAB_MODELS["deeplabv3_513_quant"]
    assert deeplab_model_path(spec.name) == Path(f"/cache/models/deeplab/{spec.filename}")
    assert calls == [(spec.filename, spec.url, spec.sha256, "models/deeplab")]


def test_download_failure_is_loud(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_get_file(*args, **kwargs):
        raise OSError("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    fake_keras = types.SimpleNamespace(utils=types.SimpleNamespace(get_file=failing_get_file))
    monkeypatch.setitem(sys.modules, "keras", fake_keras)
    url = DEEPLAB_MODELS["deeplabv3_257_float"].url
    with pytest.raises(RuntimeError, match=DEEPLAB_DIR_ENV) as info:
        deeplab_model_path()
    assert url in str(info.value) and "path=" in str(info.value)


def test_load_deeplab_models_goes_on_without_a_failed_download_and_says_so(
        monkeypatch: pytest.MonkeyPatch, capsys, deeplab_dir: Path, tmp_path: Path) -> None:
    def failing_get_file(*args, **kwargs):
        raise OSError("URL fetch failure: [Errno 111] Connection refused")

    fake_keras = types.SimpleNamespace(utils=types.SimpleNamespace(get_file=failing_get_file))
    monkeypatch.setitem(sys.modules, "keras", fake_keras)
    monkeypatch.delenv(DEEPLAB_DIR_ENV, raising=False)
    assert segment.load_deeplab_models() == {}
    out = capsys.readouterr().out
    for name, spec in DEEPLAB_MODELS.items():
        assert f"WARNING: NO PRETRAINED DEEPLAB MODEL {name.upper()}" in out
        assert spec.url in out and DEEPLAB_DIR_ENV in out
    # The files that can be had are used; a folder that lacks them is the user's to fix.
    monkeypatch.setenv(DEEPLAB_DIR_ENV, str(deeplab_dir))
    assert list(segment.load_deeplab_models()) == list(DEEPLAB_MODELS)
    monkeypatch.setenv(DEEPLAB_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not contain"):
        segment.load_deeplab_models()


@pytest.mark.shared
def test_fallback_to_tf_lite_warns(monkeypatch: pytest.MonkeyPatch, deeplab_dir: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import fails
    fake_tf = types.SimpleNamespace(lite=types.SimpleNamespace(Interpreter=Interpreter))
    monkeypatch.setitem(sys.modules, "tensorflow", fake_tf)  # avoid a slow real TF import
    with pytest.warns(RuntimeWarning, match="tf.lite.Interpreter"):
        seg = DeepLabSegmenter(path=deeplab_dir)
    assert seg.predict_mask(np.zeros((8, 8, 3), np.uint8)).shape == (8, 8)


@pytest.mark.shared
def test_no_xnnpack_log_line(deeplab_dir: Path) -> None:
    """LiteRT logs "Created TensorFlow Lite XNNPACK delegate" on fd 2 (once per process)."""
    model = str(deeplab_model_path(path=deeplab_dir))
    ours = ("import sys, numpy as np\n"
            "from cnnlab.segmentation.deeplab import DeepLabSegmenter\n"
            "DeepLabSegmenter(path=sys.argv[1]).predict_mask(np.zeros((8, 8, 3), np.uint8))\n")
    raw = ("import sys\n"
           "from ai_edge_litert.interpreter import Interpreter\n"
           "Interpreter(model_path=sys.argv[1]).allocate_tensors()\n")
    stderr = {}
    for name, code, arg in (("ours", ours, str(deeplab_dir)), ("raw", raw, model)):
        result = subprocess.run([sys.executable, "-c", code, arg], capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        stderr[name] = result.stderr
    assert "XNNPACK delegate" in stderr["raw"]  # the line exists, so the next check can fail
    assert "XNNPACK delegate" not in stderr["ours"]


# --------------------------------------------------------------------------- inference


@pytest.mark.shared
def test_predict_mask_on_car_photos(
    segmenter: DeepLabSegmenter, car_images: list[np.ndarray]
) -> None:
    masks = segmenter.predict_masks(car_images)
    assert len(masks) == len(car_images)
    for image, mask in zip(car_images, masks):
        assert mask.shape == image.shape[:2]
        assert mask.dtype == np.uint8
        assert mask.max() < len(VOC_CLASSES)
    dominant = Counter(dominant_class(m) for m in masks)
    # Measured 7 of 8 for both models; the photos are 100x100 px, low quality.
    assert dominant[CAR] >= 5, dominant
    assert dominant.most_common(1)[0][0] == CAR


@pytest.mark.shared
def test_predict_mask_any_size_and_dtype(
    segmenter: DeepLabSegmenter, car_images: list[np.ndarray]
) -> None:
    image = car_images[0]
    wide = np.concatenate([image, image[:, ::-1]], axis=1)  # 100 x 200: padded, then cropped
    mask = segmenter.predict_mask(wide)
    assert mask.shape == (100, 200) and mask.dtype == np.uint8
    assert dominant_class(mask[:, :100]) == CAR and dominant_class(mask[:, 100:]) == CAR
    tall = segmenter.predict_mask(image[:37])
    assert tall.shape == (37, 100)
    np.testing.assert_array_equal(
        segmenter.predict_mask(image.astype(np.float32)), segmenter.predict_mask(image)
    )


@pytest.mark.shared
def test_float_and_quant_models_agree(deeplab_dir: Path, car_images: list[np.ndarray]) -> None:
    float_masks = DeepLabSegmenter("deeplabv3_257_float", deeplab_dir).predict_masks(car_images)
    quant_masks = DeepLabSegmenter("deeplabv3_513_quant", deeplab_dir).predict_masks(car_images)
    agreement = np.mean([(a == b).mean() for a, b in zip(float_masks, quant_masks)])
    assert agreement > 0.7  # measured 0.82 (per image 0.68 to 0.97)


@pytest.mark.shared
@pytest.mark.parametrize("shape", [(64, 64), (64, 64, 4), (64, 64, 1), (3, 64, 64), (1, 8, 8, 3)])
def test_bad_image_shape_raises(shape: tuple[int, ...], deeplab_dir: Path) -> None:
    seg = DeepLabSegmenter(path=deeplab_dir)
    with pytest.raises(ValueError, match=r"expected \(height, width, 3\)") as info:
        seg.predict_mask(np.zeros(shape, np.uint8))
    assert str(shape) in str(info.value)


# --------------------------------------------------------------------------- classes, colours


@pytest.mark.shared
def test_voc_classes_match_label_file(deeplab_dir: Path) -> None:
    lines = (deeplab_dir / "pascal_voc_segmentation_labels.txt").read_text().splitlines()
    # The file holds the 21 names, then a blank line and a note on the ignore label 255.
    assert tuple(lines[: len(VOC_CLASSES)]) == VOC_CLASSES
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[7] == "car" and VOC_CLASSES[15] == "person"


def test_voc_colormap_known_entries() -> None:
    cmap = voc_colormap()
    assert cmap.shape == (21, 3) and cmap.dtype == np.uint8
    assert tuple(cmap[0]) == (0, 0, 0)
    assert tuple(cmap[1]) == (128, 0, 0)
    assert tuple(cmap[7]) == (128, 128, 128)
    assert tuple(cmap[15]) == (192, 128, 128)
    assert tuple(cmap[20]) == (0, 64, 128)
    assert tuple(voc_colormap(256)[255]) == (224, 224, 192)
    assert len({tuple(c) for c in cmap}) == 21


def test_class_fractions_and_dominant_class() -> None:
    a = np.zeros((10, 10), np.uint8)
    a[:3] = CAR  # 30 px car
    b = np.full((5, 4), 15, np.uint8)  # 20 px person, other size
    frame = class_fractions([a, b])
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["class", "pixels", "fraction"]
    assert list(frame["class"]) == ["background", "car", "person"]
    assert list(frame["pixels"]) == [70, 30, 20]
    assert frame["fraction"].sum() == pytest.approx(1.0)
    assert list(frame.index) == [0, CAR, 15]
    assert dominant_class(a) == CAR
    assert dominant_class(a, ignore_background=False) == 0
    assert dominant_class(np.zeros((4, 4), np.int64)) == 0
    with pytest.raises(ValueError, match="class index 30"):
        class_fractions([np.full((2, 2), 30)])


def test_colorize_and_overlay() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:10] = 15
    colours = colorize_mask(mask)
    assert colours.shape == (20, 30, 3) and colours.dtype == np.uint8
    assert tuple(colours[6, 6]) == (192, 128, 128)
    blended = overlay(image, mask, alpha=0.5)
    assert blended.shape == (20, 30, 3) and blended.dtype == np.uint8
    np.testing.assert_array_equal(blended[mask == 0], image[mask == 0])  # background kept
    np.testing.assert_array_equal(overlay(image, mask, alpha=1.0)[6, 6], (192, 128, 128))
    with pytest.raises(ValueError, match="must share"):
        overlay(image, mask[:10])
    with pytest.warns(UserWarning, match=r"\[0, 1\]"):
        overlay(image / 255.0, mask)
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, mask, alpha=1.5)
    with pytest.raises(ValueError, match=r"\(20, 30\); expected \(height, width, 3\)"):
        overlay(image[..., 0], mask)


def test_plot_segmentation_returns_figure() -> None:
    images = [np.full((16, 24, 3), 100, np.uint8), np.zeros((10, 10, 3), np.float32)]
    masks = [np.full((16, 24), CAR, np.uint8), np.zeros((10, 10), np.uint8)]
    masks[1][2:5, 2:5] = 15
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plot_segmentation(images, masks, titles=["a", "b"])
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3 * len(images)
    legend_labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert legend_labels == ["background", "car", "person"]
    with pytest.raises(ValueError, match="one mask per image"):
        plot_segmentation(images, masks[:1])


def _min_distance(colours) -> float:
    """Smallest RGB distance (0-255 scale) between any two of ``colours``."""
    array = np.asarray(list(colours), dtype=float)
    return min(np.linalg.norm(a - b) for i, a in enumerate(array) for b in array[i + 1:])


# Vehicle classes side by side: bus (6) and motorbike (14) are 64 apart in the VOC colour map.
VEHICLES = {"bus": 6, "car": 7, "motorbike": 14, "person": 15}


def _vehicle_mask() -> np.ndarray:
    mask = np.zeros((20, 50), np.uint8)
    for column, index in enumerate(VEHICLES.values()):
        mask[:, 10 * (column + 1):10 * (column + 2)] = index
    return mask


def test_classes_present_get_distinct_colours_named_in_the_legend() -> None:
    from readable import assert_readable

    assert _min_distance(voc_colormap()[list(VEHICLES.values())]) < 70  # why: VOC's are close
    mask = _vehicle_mask()
    fig = plot_segmentation([np.full((20, 50, 3), 120, np.uint8)], [mask])
    assert_readable(fig, "segmentation")
    legend = fig.legends[0]
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["background", *VEHICLES]
    colours = {label: np.asarray(h.get_facecolor()[:3]) * 255
               for label, h in zip(labels, legend.legend_handles)}
    assert _min_distance(colours.values()) >= 100
    painted = fig.axes[1].images[0].get_array()  # the mask panel, in the legend's colours
    for column, name in enumerate(VEHICLES):
        np.testing.assert_allclose(painted[0, 10 * (column + 1)], colours[name], atol=1)
    many = class_palette(range(11))  # background and ten classes
    assert len(many) == 11 and _min_distance(many.values()) >= 60


def test_overlay_title_names_the_backend(tmp_path: Path) -> None:
    mask = _vehicle_mask()
    image = np.full((20, 50, 3), 90, np.uint8)
    fig = plot_segmentation([image], [mask], backend="DeepLabV3 TFLite 257 px float")
    assert "DeepLabV3 TFLite 257 px float" in fig._suptitle.get_text()

    class Fixed(Segmenter):
        name = "fixed-backend"
        class_names = VOC_CLASSES

        def predict_mask(self, image):
            return mask

    file = tmp_path / "bus.png"
    Image.fromarray(image).save(file)
    table = pd.DataFrame({"label": ["bus"], "file": [str(file)], "largest segment": ["car"],
                          "agrees": [False]})
    failures = plot_agreement_failures(Fixed(), table, k=1)
    assert Fixed().description == "fixed-backend"
    assert "fixed-backend" in failures._suptitle.get_text()


def test_predictions_beside_ground_truth() -> None:
    from readable import assert_readable

    truth = _vehicle_mask()
    predicted = truth.copy()
    predicted[:, 10:20] = VEHICLES["car"]  # the bus taken for a car: 10 of 50 columns wrong
    truth[0, :5] = 255  # ignored pixels are not counted
    image = np.full((20, 50, 3), 60, np.uint8)
    fig = plot_segmentation([image, image], [predicted, np.where(truth == 255, 0, truth)],
                            titles=["a", "b"], ground_truth=[truth, truth],
                            backend="DeepLabV3+ (test)")
    assert_readable(fig, "ground truth")
    assert len(fig.axes) == 6
    titles = [ax.get_title() for ax in fig.axes[:3]]
    assert titles[0] == "a: input" and titles[1] == "ground truth"
    assert titles[2].startswith("prediction (80% of pixels")
    assert "input | ground truth | prediction" in fig._suptitle.get_text()
    truth_panel, predicted_panel = (ax.images[0].get_array() for ax in fig.axes[1:3])
    np.testing.assert_array_equal(predicted_panel[5, 15], truth_panel[5, 25])  # car, one colour
    assert not np.array_equal(predicted_panel[5, 15], truth_panel[5, 15])  # bus is not car
    with pytest.raises(ValueError, match="ground_truth\\[0\\] has shape"):
        plot_segmentation([image], [predicted], ground_truth=[truth[:10]])


# --------------------------------------------------------------------------- Segmenter, IoU


@pytest.mark.shared
def test_both_deeplab_backends_are_segmenters(deeplab_dir: Path) -> None:
    for name in DEEPLAB_MODELS:
        seg = DeepLabSegmenter(name, deeplab_dir)
        assert isinstance(seg, Segmenter) and seg.name == name
        assert tuple(seg.class_names) == VOC_CLASSES
        spec = DEEPLAB_MODELS[name]  # the description names size and input kind
        assert f"DeepLabV3 TFLite {spec.input_size} px {spec.input_kind}" in seg.description
    assert "257 px float" in DeepLabSegmenter("deeplabv3_257_float", deeplab_dir).description
    assert "513 px uint8" in DeepLabSegmenter("deeplabv3_513_quant", deeplab_dir).description
    with pytest.raises(TypeError):
        Segmenter()  # abstract: a backend must implement predict_mask


def _write_mask(path: Path, mask: np.ndarray) -> np.ndarray:
    Image.fromarray(mask.astype(np.uint8), "L").save(path)
    return np.asarray(Image.open(path))


def test_iou_on_masks_written_to_disk(tmp_path: Path) -> None:
    names = ["background", "car", "person"]
    true_a = np.zeros((10, 10), np.uint8)
    true_a[:, :5] = 1  # car: left half, 50 px
    pred_a = np.zeros((10, 10), np.uint8)
    pred_a[:, :4] = 1  # 40 px of it found, none outside
    true_b = np.zeros((4, 6), np.uint8)
    true_b[:2] = 2  # person: 12 px of another image size
    true_b[3, 5] = 255  # "ignore" border pixel
    pred_b = np.zeros((4, 6), np.uint8)
    pred_b[:2, :3] = 2  # 6 px right
    pred_b[2, :3] = 2  # 3 px too many
    pred_b[3, 5] = 1  # the ignored pixel must not count as a wrong car
    truth = [_write_mask(tmp_path / "a.png", true_a), _write_mask(tmp_path / "b.png", true_b)]
    preds = [_write_mask(tmp_path / "pa.png", pred_a), _write_mask(tmp_path / "pb.png", pred_b)]

    table = per_class_iou(truth, preds, names)
    # Background, counted by hand: image a TP 50, FP 10 (car missed), FN 0; image b (23 px
    # without the ignored one) TP 8, FP 6 (person missed), FN 3 (predicted person).
    assert table.loc["background", "IoU"] == pytest.approx(58 / (58 + 16 + 3))
    assert table.loc["car", "IoU"] == pytest.approx(40 / 50)
    assert table.loc["person", "IoU"] == pytest.approx(6 / (12 + 3))
    assert table.loc["car", "true pixels"] == 50 and table["true pixels"].sum() == 123
    expected = np.mean([58 / 77, 40 / 50, 6 / 15])
    assert mean_iou(truth, preds, names) == pytest.approx(expected)
    assert mean_iou(truth, preds, 3) == pytest.approx(expected)
    # Perfect prediction: 1; a class in neither truth nor prediction is left out (NaN).
    assert mean_iou(true_a, true_a, names) == 1.0
    assert np.isnan(per_class_iou(true_a, true_a, names).loc["person", "IoU"])
    confusion = segmentation_confusion(truth, preds, 3)
    assert confusion.sum() == 100 + 23 and confusion[1, 0] == 10
    with pytest.raises(ValueError, match="has shape"):
        mean_iou([true_a], [true_b], names)
    with pytest.raises(ValueError, match="num_classes"):
        segmentation_confusion(true_a, pred_a + 5, 3)


# --------------------------------------------------------------------------- agreement


@pytest.fixture(scope="module")
def vehicle_rows(shared_dir: Path) -> pd.DataFrame:
    root = shared_dir / "datasets" / "vehicles"
    rows = [{"label": label, "file": str(f)}
            for label in ("bike", "car", "minibus", "pickup", "truck")
            for f in sorted((root / label).glob("*.jpg"))[:N_CAR_IMAGES]]
    return pd.DataFrame(rows)


@pytest.mark.shared
def test_agreement_table_on_real_vehicle_photos(deeplab_dir: Path,
                                                vehicle_rows: pd.DataFrame) -> None:
    seg = DeepLabSegmenter("deeplabv3_257_float", deeplab_dir)
    class_map = VOC_CLASS_MAPS["vehicles"]
    table = agreement_table(seg, vehicle_rows, class_map)
    assert len(table) == 4 * N_CAR_IMAGES and "truck" not in set(table["label"])  # unmapped
    expected = table["label"].map(lambda label: class_map[label])
    assert (table["agrees"] == [s in e for s, e in zip(table["largest segment"], expected)]).all()
    assert table["foreground share"].between(0, 1).all()
    summary = agreement_summary(table)
    assert list(summary.index) == ["bike", "car", "minibus", "pickup", "all"]
    assert summary.loc["all", "images"] == len(table)
    assert summary.loc["all", "agree"] == summary["agree"].iloc[:-1].sum()
    assert (summary["CI low"] <= summary["share"]).all()
    assert (summary["share"] <= summary["CI high"]).all()
    # Measured: car 7 of 8 (as in test_predict_mask_on_car_photos), all mapped 23 of 32.
    assert summary.loc["car", "agree"] >= 5
    assert summary.loc["all", "share"] > 0.5
    fig = plot_agreement_failures(seg, table, k=3)
    assert isinstance(fig, Figure) and len(fig.axes) == 9
    with pytest.raises(ValueError, match="does not predict"):
        agreement_table(seg, vehicle_rows, {"car": ("lorry",)})
    with pytest.raises(ValueError, match="no image has a label"):
        agreement_table(seg, vehicle_rows, {"drinks": ("bottle",)})


def test_a_class_keeps_its_colour_whichever_classes_it_is_shown_with() -> None:
    alone = class_palette([0, 6])
    crowded = class_palette([0, 2, 6, 7, 14, 15, 255])
    assert alone[6] == crowded[6] and alone[0] == (0, 0, 0)
    assert len({class_palette([c, 30])[30] for c in (1, 6, 14)}) == 1  # beyond VOC too
    assert _min_distance(class_palette(range(1, 21)).values()) > 25  # all 20 VOC classes
