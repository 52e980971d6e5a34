import numpy as np
import pandas as pd
import pytest

from cnnlab.evaluate import Predictions, evaluate_models, saved_models, write_leaderboard
from cnnlab.export import save_model
from cnnlab.inference import Classifier, choose_model, demo_images
from cnnlab.models import build_custom_model

CLASSES = ["a", "b", "c"]


def test_metrics_on_known_predictions():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.9 + 0.1 / 3
    pred = Predictions(y, probs.astype("float32"), CLASSES)
    metrics = pred.metrics()
    assert metrics["test images"] == 6
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # per-class F1: a .5 (P .5, R .5), b .8 (P 2/3, R 1), c 2/3 (P 1, R .5)
    assert metrics["macro-F1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert metrics["loss"] == pytest.approx(-np.mean(np.log(probs[np.arange(6), y])), rel=1e-4)
    assert pred.confusion().tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    np.testing.assert_allclose(pred.confusion("true").sum(axis=1), 1)
    report = pred.report()
    assert report.loc["b", "recall"] == 1 and report.loc["c", "precision"] == 1


@pytest.fixture()
def saved(sample_root, project):
    from cnnlab.datasets import build_manifest

    manifest = build_manifest(sample_root, "sample")
    model = build_custom_model("vehicles_cnn_bn", 32, len(manifest.classes))
    save_model(model, project.models, "sample-vehicles_cnn_bn",
               {"model": "vehicles_cnn_bn", "class_names": manifest.classes, "image_size": 32,
                "weights": "none (custom CNN)", "train_seconds": 60})
    return manifest


def test_leaderboard_over_whole_test_split(saved, project):
    rows = saved.split("test")
    board, predictions = evaluate_models(saved_models(project.models, "sample"), rows,
                                         saved.classes, batch_size=5)
    assert board.loc[0, "test images"] == len(rows) == len(predictions["vehicles_cnn_bn"].y_true)
    assert board.loc[0, "train minutes"] == 1.0 and board.loc[0, ".h5 MB"] > 0
    csv, md = write_leaderboard(board, project.reports / "sample-leaderboard")
    assert pd.read_csv(csv)["model"].tolist() == ["vehicles_cnn_bn"]
    assert "| model" in md.read_text()
    with pytest.raises(FileNotFoundError, match="notebooks 02 and 03"):
        evaluate_models([], rows, saved.classes)


def test_deployed_model_classifies_new_files_of_any_format(saved, project, tmp_path):
    path, reason = choose_model(project.models, project.reports, "sample")
    assert path.name == "sample-vehicles_cnn_bn.h5" and "most recently saved" in reason
    files = demo_images(saved.split("test"), tmp_path / "new", count=4)
    assert sorted(f.suffix for f in files) == [".jpg", ".png", ".png", ".webp"]
    classifier = Classifier.load(path)
    table = classifier.predict_files(files, top_k=3)
    assert len(table) == 12 and set(table["class"]) <= set(saved.classes)
    sums = table.groupby("file")["probability"].sum()
    assert (sums <= 1 + 1e-5).all() and (table["rank"].between(1, 3)).all()
    with pytest.raises(FileNotFoundError, match="train one"):
        choose_model(project.models, project.reports, "cards")
