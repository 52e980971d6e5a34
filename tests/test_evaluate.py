import json
import time
from functools import partial

import numpy as np
import pandas as pd
import pytest

from cnnlab.config import get_profile
from cnnlab.deploy.export import load_metadata, load_model, save_model
from cnnlab.deploy.inference import Classifier, choose_model, demo_images
from cnnlab.evaluation.interpretation import Interpretation
from cnnlab.evaluation.leaderboard import (
    evaluate_models,
    leaderboard_markdown,
    measure_latency,
    pareto_front,
    plot_accuracy_vs_latency,
    saved_models,
    time_calls,
    training_record,
    write_leaderboard,
)
from cnnlab.evaluation.metrics import bootstrap_interval, macro_f1, macro_f1_batch, wilson_interval
from cnnlab.evaluation.predictions import ClassMismatchError, Predictions
from cnnlab.training.fitting import train_custom

CLASSES = ["a", "b", "c"]
TINY = get_profile("smoke", custom_image_size=32, custom_epochs=2, batch_size=8,
                   max_train_per_class=8)


def _wilson(k, n, z=1.959963984540054):
    """Wilson (1927) score interval, written out: (p + z²/2n ± z√(p(1-p)/n + z²/4n²)) / (1+z²/n)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


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
    low, high = _wilson(4, 6)
    assert metrics["accuracy CI low"] == pytest.approx(low)
    assert metrics["accuracy CI high"] == pytest.approx(high)
    assert metrics["macro-F1 CI low"] <= metrics["macro-F1"] <= metrics["macro-F1 CI high"]
    np.testing.assert_allclose(pred.losses, -np.log(probs[np.arange(6), y]), rtol=1e-5)
    assert pred.confusion().tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    np.testing.assert_allclose(pred.confusion("true").sum(axis=1), 1)
    report = pred.report()
    assert report.loc["b", "recall"] == 1 and report.loc["c", "precision"] == 1


@pytest.mark.parametrize(("k", "n"), [(0, 10), (7, 10), (10, 10), (164, 265), (1, 1)])
def test_wilson_interval_matches_the_formula_and_contains_the_estimate(k, n):
    low, high = wilson_interval(k, n)
    assert (low, high) == pytest.approx(_wilson(k, n), abs=1e-9)
    assert 0 <= low <= k / n <= high <= 1
    with pytest.raises(ValueError, match="empty"):
        wilson_interval(0, 0)


def test_bootstrap_interval_of_macro_f1():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 5, 400)
    y_pred = np.where(rng.random(400) < 0.7, y_true, rng.integers(0, 5, 400))
    statistic = partial(macro_f1, labels=range(5))
    point = statistic(y_true, y_pred)
    low, high = bootstrap_interval(y_true, y_pred, statistic, n_resamples=300)
    assert low < point < high and 0.04 < high - low < 0.2
    small = bootstrap_interval(y_true[:40], y_pred[:40], statistic, n_resamples=300)
    assert small[1] - small[0] > high - low  # fewer images, wider interval
    assert bootstrap_interval(y_true, y_pred, statistic, n_resamples=300) == (low, high)
    # A class absent from both labels and predictions is left out, not counted as F1 = 0.
    assert macro_f1(np.array([0, 1]), np.array([0, 1]), range(3)) == 1.0


def test_macro_f1_batch_matches_scikit_learn():
    rng = np.random.default_rng(3)
    for _ in range(60):
        k, n = int(rng.integers(1, 8)), int(rng.integers(1, 40))
        y_true, y_pred = rng.integers(0, k + 2, (4, n)), rng.integers(0, k + 2, (4, n))
        labels = rng.choice(k + 2, size=int(rng.integers(1, k + 3)), replace=False)
        want = [macro_f1(t, p, labels) for t, p in zip(y_true, y_pred)]
        np.testing.assert_allclose(macro_f1_batch(y_true, y_pred, labels), want)
        assert macro_f1_batch(y_true[0], y_pred[0], labels) == pytest.approx(want[0], nan_ok=True)
    # a class absent from both is left out; one never predicted counts 0
    assert macro_f1_batch(np.array([0, 1]), np.array([0, 1]), range(3)) == 1.0
    assert macro_f1_batch(np.array([0, 1]), np.array([0, 0]), range(2)) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="shape"):
        macro_f1_batch(np.zeros((2, 3), int), np.zeros((3, 2), int), range(2))


def test_bootstrap_interval_vectorised_and_degenerate_cases():
    rng = np.random.default_rng(2)
    y_true = np.repeat(np.arange(6), 5)
    y_pred = np.where(rng.random(30) < 0.6, y_true, rng.integers(0, 6, 30))
    loop = bootstrap_interval(y_true, y_pred, partial(macro_f1, labels=range(6)),
                              n_resamples=200)
    batch = bootstrap_interval(y_true, y_pred, partial(macro_f1_batch, labels=range(6)),
                               n_resamples=200, vectorized=True)
    assert loop == pytest.approx(batch)
    statistic = partial(macro_f1_batch, labels=range(6))
    for stratify in (True, False):
        # all correct: within-class resamples are all 1 (zero width); over all images too
        assert bootstrap_interval(y_true, y_true, statistic, stratify=stratify,
                                  vectorized=True) == (1.0, 1.0)
        assert bootstrap_interval(y_true, (y_true + 1) % 6, statistic, stratify=stratify,
                                  vectorized=True) == (0.0, 0.0)
    assert bootstrap_interval(y_true[:1], y_pred[:1], statistic, vectorized=True) == (1.0, 1.0)
    # classes of one image each (no within-class variation) and one class of many
    low, high = bootstrap_interval(np.r_[0, 1, 2, np.full(20, 3)], np.r_[0, 2, 1, rng.integers(
        2, 4, 20)], partial(macro_f1_batch, labels=range(4)), vectorized=True)
    assert np.isfinite([low, high]).all() and low <= high
    with pytest.raises(ValueError, match="method"):
        bootstrap_interval(y_true, y_pred, statistic, method="basic")
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_interval(y_true[:0], y_pred[:0], statistic)


def _confusion_model(classes, low, high, concentration, seed=0):
    """``(classes, classes)`` P(predicted | true): accuracy from ``low`` to ``high``."""
    rng = np.random.default_rng(seed)
    accuracy = np.linspace(low, high, classes)
    model = np.zeros((classes, classes))
    for c in range(classes):
        others = np.arange(classes) != c
        model[c, others] = (1 - accuracy[c]) * rng.dirichlet(np.full(classes - 1,
                                                                     concentration))
        model[c, c] = accuracy[c]
    return model


def _coverage(model, per_class, test_sets, **kwargs):
    """Share of simulated test sets whose interval holds the population macro-F1, and the
    share whose interval holds its own estimate."""
    classes = len(model)
    # population macro-F1 of a split of this class mix: F1 of the expected confusion counts
    counts = np.full(classes, per_class)
    tp, predicted = counts * np.diag(model), counts @ model
    truth = np.mean(2 * tp / (counts + predicted))
    rng = np.random.default_rng(1)
    y_true = np.repeat(np.arange(classes), per_class)
    cdf = np.cumsum(model, axis=1)[y_true]
    statistic = partial(macro_f1_batch, labels=range(classes))
    covered = inside = 0
    for i in range(test_sets):
        y_pred = np.minimum((rng.random(len(y_true))[:, None] > cdf).sum(axis=1), classes - 1)
        low, high = bootstrap_interval(y_true, y_pred, statistic, seed=i, vectorized=True,
                                       **kwargs)
        covered += low <= truth <= high
        inside += low <= statistic(y_true, y_pred) <= high
    return covered / test_sets, inside / test_sets


def test_macro_f1_interval_covers_the_population_value():
    # The cards test split: 53 classes of 5 images (265); per-class accuracy 0.1 to 1, errors
    # concentrated on a few other classes. The population macro-F1 is known exactly.
    model = _confusion_model(53, 0.1, 1.0, 0.05)
    coverage, inside = _coverage(model, 5, 300)
    assert 0.88 <= coverage <= 0.99 and inside == 1.0
    # The former interval (unstratified percentile) sits below: the criterion fails.
    old, _ = _coverage(model, 5, 300, stratify=False, method="percentile")
    assert old < 0.85 < coverage


def test_time_calls_leaves_the_warm_up_out():
    calls = []

    def call():
        calls.append(time.perf_counter())
        time.sleep(0.25 if len(calls) == 1 else 0.002)  # first call: "tracing"

    seconds = time_calls(call, warmup=2, repeats=5)
    assert len(calls) == 7 and seconds.shape == (5,)
    assert np.median(seconds) < 0.05 and seconds.max() < 0.2
    with pytest.raises(ValueError, match="warmup"):
        time_calls(call, warmup=0)


def test_pareto_front_and_its_figure():
    board = pd.DataFrame({"model": list("abcd"), "accuracy": [0.9, 0.8, 0.7, 0.85],
                          "ms": [10.0, 2.0, 5.0, 20.0], "test images": 100})
    assert pareto_front(board, "ms").tolist() == [True, True, False, False]
    board["accuracy CI low"] = board["accuracy"] - 0.05
    board["accuracy CI high"] = board["accuracy"] + 0.04
    fig = plot_accuracy_vs_latency(board, "ms")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and "100 test images" in ax.get_title()
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == list("abcd")
    filled = [c for c in ax.collections if c.get_label() == "Pareto front"]
    assert len(filled) == 1 and len(filled[0].get_offsets()) == 2
    assert not [c for c in ax.collections if "random init" in c.get_label()]
    board["weights"] = ["imagenet", "NONE (RANDOM INIT: the ImageNet download failed)",
                        "imagenet", "imagenet"]
    board["collapsed"] = ["", "", "predicts 'x' for 100% of 100 images", ""]
    ax = plot_accuracy_vs_latency(board, "ms", chance=0.25).axes[0]
    marked = {c.get_label(): len(c.get_offsets()) for c in ax.collections}
    assert marked["random init (no ImageNet weights)"] == 1
    assert marked["collapsed (not ranked)"] == 1
    assert [line.get_label() for line in ax.lines if line.get_linestyle() == ":"] == [
        "chance (0.25)"]


@pytest.fixture()
def saved(sample_root, project):
    from cnnlab.data.datasets import build_manifest

    manifest = build_manifest(sample_root, "sample")
    result = train_custom("vehicles_cnn_bn", manifest, TINY, project)
    return manifest, result


def test_leaderboard_over_whole_test_split(saved, project):
    manifest, result = saved
    rows = manifest.split("test")
    model = result.model
    latency = measure_latency(model, batch_size=4, warmup=2, repeats=3)
    assert latency["median ms/image"] == pytest.approx(latency["median ms/batch"] / 4)
    assert 0 < latency["median ms/image"] <= latency["p90 ms/image"]

    board, interps = evaluate_models(saved_models(project.models, "sample"), rows,
                                     manifest.classes, batch_size=5, warmup=2, repeats=3,
                                     checkpoints_dir=project.checkpoints)
    row = board.iloc[0]
    assert row["test images"] == len(rows) == len(interps["vehicles_cnn_bn"].predictions.y_true)
    assert row["accuracy CI low"] <= row["accuracy"] <= row["accuracy CI high"]
    assert row["macro-F1 CI low"] <= row["macro-F1"] <= row["macro-F1 CI high"]
    assert row["ms/image (batch 1)"] > 0 and row["ms/image (batch 32)"] > 0
    assert row["latency device"].startswith(("CPU", "GPU")) and bool(row["Pareto"])
    assert row["params"] == model.count_params() and row["trainable params"] <= row["params"]
    history = pd.read_csv(project.checkpoints / "sample-vehicles_cnn_bn" / "history.csv")
    assert row["epochs"] == 2 == len(history) and row["run folder"] == "sample-vehicles_cnn_bn"
    assert row["train minutes"] == round(history["seconds"].sum() / 60, 1)
    assert row["train time from"] == "run folder"
    assert load_metadata(result.paths[".keras"])["train_seconds"] >= history["seconds"].sum()
    assert row["weights"] == "none (custom CNN)" and row[".h5 MB"] > 0

    csv, md = write_leaderboard(board, project.reports / "sample-leaderboard")
    assert pd.read_csv(csv)["model"].tolist() == ["vehicles_cnn_bn"]
    text = md.read_text()
    assert f"test accuracy [95% CI] (n={len(rows)})" in text
    assert f"{row['accuracy']:.3f} [{row['accuracy CI low']:.3f}," in text
    assert text == leaderboard_markdown(board) + "\n"
    with pytest.raises(FileNotFoundError, match="notebooks 02 and 03"):
        evaluate_models([], rows, manifest.classes)


def test_models_saved_with_other_class_orders_are_realigned_or_skipped(saved, project, capsys):
    manifest, result = saved
    rows, classes = manifest.split("test"), list(manifest.classes)
    board, interps = evaluate_models([result.paths[".keras"]], rows, classes,
                                     latency_batch_sizes=())
    reference = interps["vehicles_cnn_bn"].predictions
    # The same network with its output units in another order, and a sidecar that says so
    # (a model saved before the dataset's classes were renamed or re-sorted).
    model = load_model(result.paths[".keras"])
    order = np.roll(np.arange(len(classes)), 1)
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([kernel[:, order], bias[order]])
    shuffled = [classes[i] for i in order]
    meta = {**load_metadata(result.paths[".keras"]), "class_names": shuffled, "model": "rolled"}
    rolled = save_model(model, project.models, "sample-rolled", meta)[".keras"]
    renamed = save_model(model, project.models, "sample-renamed",
                         {**meta, "model": "renamed", "class_names": ["x", *shuffled[1:]]})
    board, interps = evaluate_models([rolled, renamed[".keras"]], rows, classes,
                                     latency_batch_sizes=())
    assert board["model"].tolist() == ["rolled"]  # realigned; the renamed one skipped
    np.testing.assert_allclose(interps["rolled"].predictions.probs, reference.probs, atol=1e-6)
    assert board.iloc[0]["accuracy"] == pytest.approx(float(np.mean(reference.y_pred ==
                                                                     reference.y_true)))
    out = capsys.readouterr().out
    assert "skipped: ./models/sample-renamed/model.keras was trained on other classes" in out
    assert f"only the model: ['x']; only the split: ['{shuffled[0]}']" in out
    with pytest.raises(ClassMismatchError, match="train it again"):
        Interpretation.from_model(renamed[".keras"], rows, classes)
    with pytest.raises(ClassMismatchError, match="no saved model was trained on this split"):
        evaluate_models([renamed[".keras"]], rows, classes, latency_batch_sizes=())


def test_training_record_reads_the_run_folder(tmp_path):
    run = tmp_path / "cards-x"
    run.mkdir()
    history = pd.DataFrame({"epoch": range(5), "accuracy": 0.5, "seconds": 60.0})
    history.to_csv(run / "history.csv", index=False)
    meta = {"run_folder": "cards-x", "train_seconds": 330}
    assert training_record(meta, tmp_path) == {"epochs": 5, "train minutes": 5.0,
                                               "train time from": "run folder",
                                               "run folder": "cards-x"}
    # A run folder written before epochs were timed: the sidecar's time.
    history.drop(columns="seconds").to_csv(run / "history.csv", index=False)
    assert training_record(meta, tmp_path)["train minutes"] == 5.5
    assert training_record(meta, tmp_path)["train time from"] == "model sidecar"
    gone = training_record({"run_folder": "gone"}, tmp_path)
    assert gone["epochs"] is None and gone["train minutes"] is None


def test_deployed_model_classifies_new_files_of_any_format(saved, project, tmp_path):
    manifest, _ = saved
    path, reason = choose_model(project.models, project.reports, "sample")
    assert path == project.models / "sample-vehicles_cnn_bn" / "model.h5"
    assert "best validation accuracy" in reason
    files = demo_images(manifest.split("test"), tmp_path / "new", count=4)
    assert sorted(f.suffix for f in files) == [".jpg", ".png", ".png", ".webp"]
    classifier = Classifier.load(path)
    table = classifier.predict_files(files, top_k=3)
    assert len(table) == 12 and set(table["class"]) <= set(manifest.classes)
    sums = table.groupby("file")["probability"].sum()
    assert (sums <= 1 + 1e-5).all() and (table["rank"].between(1, 3)).all()
    with pytest.raises(FileNotFoundError, match="train one"):
        choose_model(project.models, project.reports, "cards")


def test_deployed_model_is_chosen_by_validation_never_by_test(tmp_path):
    models, checkpoints, reports = (tmp_path / n for n in ("models", "checkpoints", "reports"))
    for folder in (models, checkpoints, reports):
        folder.mkdir()
    for name, val in (("a", [0.5, 0.7]), ("b", [0.8, 0.75]), ("c", None)):
        (models / f"sample-{name}").mkdir()
        for file in ("model.keras", "model.h5"):
            (models / f"sample-{name}" / file).write_bytes(b"")
        (models / f"sample-{name}" / "meta.json").write_text(
            json.dumps({"run_folder": f"sample-{name}"}))
        if val is not None:
            (checkpoints / f"sample-{name}").mkdir()
            pd.DataFrame({"epoch": range(len(val)), "val_accuracy": val}).to_csv(
                checkpoints / f"sample-{name}" / "history.csv", index=False)
    # The leaderboard (test split) ranks a first: it must not decide.
    pd.DataFrame({"model": ["a", "b"], "accuracy": [0.9, 0.6]}).to_csv(
        reports / "sample-leaderboard.csv", index=False)
    path, reason = choose_model(models, reports, "sample")
    assert path == models / "sample-b" / "model.h5"
    assert "best validation accuracy of 2 model(s) (0.800" in reason and "test" in reason


def test_predictions_are_computed_once_per_model_and_split_and_read_by_every_reader(
        saved, project, monkeypatch):
    from cnnlab.evaluation import interpretation, predictions

    manifest, result = saved
    test, val, classes = manifest.split("test"), manifest.split("val"), list(manifest.classes)
    folder = project.models / "sample-vehicles_cnn_bn"
    calls = []
    real = predictions.predict_dataset

    def counting(*args, **kwargs):
        calls.append(args[2:])
        return real(*args, **kwargs)

    monkeypatch.setattr(predictions, "predict_dataset", counting)
    monkeypatch.setattr(interpretation, "predict_dataset", counting)
    board, interps = evaluate_models([folder], test, classes, latency_batch_sizes=())
    assert len(calls) == 1 and (folder / "predictions" / "test.npz").is_file()
    # The leaderboard, an Interpretation and a second evaluation read the saved file.
    board_again, _ = evaluate_models([folder], test, classes, latency_batch_sizes=())
    again = Interpretation.from_model(folder, test, classes, split_name="test")
    assert len(calls) == 1
    pd.testing.assert_frame_equal(board.drop(columns="load (1 min)", errors="ignore"),
                                  board_again.drop(columns="load (1 min)", errors="ignore"))
    np.testing.assert_array_equal(again.predictions.probs,
                                  interps["vehicles_cnn_bn"].predictions.probs)
    # Other rows (one test image fewer) are other predictions: computed again.
    evaluate_models([folder], test.iloc[1:], classes, latency_batch_sizes=())
    assert len(calls) == 2
    # Model selection scores the validation split through its own file, never the test one.
    (folder / "predictions" / "test.npz").unlink()
    path, reason = choose_model(project.models, project.reports, "sample", val_rows=val,
                                class_names=classes)
    assert path == folder / "model.h5" and "whole validation split" in reason
    assert (folder / "predictions" / "val.npz").is_file()
    assert not (folder / "predictions" / "test.npz").exists()
    scored = predictions.split_predictions(folder, "val", val, classes)
    assert f"({float((scored.y_pred == scored.y_true).mean()):.3f}," in reason
    assert len(calls) == 3  # the val predictions were computed once, then read
    # A model saved again is a new folder: its old predictions went with the old one.
    save_model(load_model(folder), project.models, "sample-vehicles_cnn_bn",
               load_metadata(folder))
    assert not (folder / "predictions").exists()


def test_paired_difference_gives_the_known_answer():
    from cnnlab.evaluation.metrics import paired_difference

    rng = np.random.default_rng(0)
    a = rng.normal(30, 10, 400)  # e.g. absolute percentage errors of one model per house
    constant = paired_difference(a, a - 2.5)
    assert constant["difference"] == pytest.approx(-2.5)
    assert constant["low"] == pytest.approx(-2.5) and constant["high"] == pytest.approx(-2.5)
    # b = a + d with d ~ N(1, 2^2): the mean difference's 95% interval is 1 +- 1.96 * 2/20.
    noisy = paired_difference(a, a + rng.normal(1, 2, 400))
    assert noisy["low"] == pytest.approx(noisy["difference"] - 0.196, abs=0.03)
    assert noisy["high"] == pytest.approx(noisy["difference"] + 0.196, abs=0.03)
    assert noisy["excludes zero"] and noisy["n"] == 400
    # Two models far apart marginally but no different per item: within noise.
    same = paired_difference(a, a + rng.normal(0, 2, 400))
    assert same["low"] < 0 < same["high"] and not same["excludes zero"]
    with pytest.raises(ValueError, match="equally long"):
        paired_difference(a, a[:-1])


def test_collapse_is_recognised_from_outputs():
    from cnnlab.evaluation.metrics import collapse_reason

    k = 53
    constant = np.full((100, k), 0.5 / (k - 1))
    constant[:, 7] = 0.5
    assert "predicts 'c7' for 100% of 100 images" in collapse_reason(
        constant, [f"c{i}" for i in range(k)])
    uniform = np.full((100, k), 1 / k) + np.random.default_rng(0).normal(0, 1e-4, (100, k))
    assert "near-uniform" in collapse_reason(uniform)
    healthy = np.eye(k)[np.arange(100) % k] * 0.9 + 0.1 / k
    assert collapse_reason(healthy) is None


def test_a_collapsed_model_is_flagged_and_never_ranked(saved, project):
    import keras

    manifest, result = saved
    test, val, classes = manifest.split("test"), manifest.split("val"), list(manifest.classes)
    # A constant-output model: a softmax whose logits ignore the image, class 0 always first.
    inputs = keras.Input(result.model.input_shape[1:])
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    logits = keras.layers.Dense(len(classes), kernel_initializer="zeros",
                                bias_initializer=keras.initializers.Constant(
                                    [3.0] + [0.0] * (len(classes) - 1)))(x)
    outputs = keras.layers.Softmax(dtype="float32")(logits)
    save_model(keras.Model(inputs, outputs), project.models, "sample-constant",
               {**load_metadata(result.paths[".keras"]), "model": "constant"})
    board, _ = evaluate_models(saved_models(project.models, "sample"), test, classes,
                               batch_size=8, warmup=1, repeats=6, val_rows=val)
    assert board["model"].tolist() == ["vehicles_cnn_bn", "constant"]  # collapsed last
    constant = board.set_index("model").loc["constant"]
    assert "predicts 'circle' for 100%" in constant["collapsed"]
    assert not constant["Pareto"]
    assert board.set_index("model").loc["vehicles_cnn_bn", "collapsed"] == ""
    assert (board["val images"] == len(val)).all()


def test_leaderboard_ranks_on_validation_and_never_reads_test_to_choose(saved, project,
                                                                         monkeypatch):
    from cnnlab.evaluation import leaderboard, predictions
    from cnnlab.results import results_rows

    manifest, result = saved
    test, val, classes = manifest.split("test"), manifest.split("val"), list(manifest.classes)
    seen = []
    real = predictions.split_predictions

    def recording(model, split, rows, *args, **kwargs):
        seen.append(split)
        return real(model, split, rows, *args, **kwargs)

    monkeypatch.setattr(leaderboard, "split_predictions", recording)
    board, _ = evaluate_models(saved_models(project.models, "sample"), test, classes,
                               latency_batch_sizes=(), val_rows=val)
    assert seen == ["test", "val"] and "val accuracy" in board
    # Choosing reads the validation column only: a test score changed to anything leaves the
    # choice as it was.
    board = pd.concat([board, board.assign(model="worse_on_val", **{"val accuracy": 0.0,
                                                                      "accuracy": 1.0})])
    folder = project.reports / "r"
    folder.mkdir()
    board.to_csv(folder / "leaderboard.csv", index=False)
    rows = results_rows(folder, "r", {"dataset": "sample"})
    assert rows[0]["best model"].startswith("`vehicles_cnn_bn`")


def test_pareto_front_ignores_latency_differences_inside_the_measurement_interval():
    board = pd.DataFrame({"model": ["fast", "accurate", "slow"], "accuracy": [0.78, 0.80, 0.7],
                          "ms": [6.98, 6.99, 20.0], "ms low": [6.5, 6.6, 19.0],
                          "ms high": [7.4, 7.5, 21.0]})
    assert pareto_front(board, "ms").tolist() == [False, True, False]
    apart = board.assign(**{"ms low": [6.9, 7.5, 19.0], "ms high": [7.0, 7.6, 21.0]})
    assert pareto_front(apart, "ms").tolist() == [True, True, False]
    assert pareto_front(board.drop(columns=["ms low", "ms high"]), "ms").tolist() == [
        True, True, False]


def test_median_interval_of_repeated_timings():
    from cnnlab.evaluation.leaderboard import median_interval

    values = np.arange(1.0, 16.0)  # 15 timed calls
    low, high = median_interval(values)
    assert low == 4.0 and high == 12.0  # order statistics 4 and 12 of 15 (coverage 96.5%)
    assert median_interval(np.array([3.0, 1.0, 2.0])) == (1.0, 3.0)


def test_predictions_of_another_copy_of_the_dataset_are_computed_again(
        sample_root, project, tmp_path, monkeypatch):
    """Same file names and labels, other bytes or another root: never the old file's numbers."""
    import shutil

    import keras
    from PIL import Image

    from cnnlab.data.datasets import build_manifest
    from cnnlab.evaluation import predictions

    manifest = build_manifest(sample_root, "sample")
    original, classes = manifest.split("test"), list(manifest.classes)
    changed = original["path"][0]
    shutil.copytree(sample_root, tmp_path / "redownload")
    with Image.open(tmp_path / "redownload" / changed) as image:
        pixels = np.asarray(image.convert("RGB"))
    Image.fromarray(255 - pixels).save(tmp_path / "redownload" / changed)
    shutil.copytree(sample_root, tmp_path / "moved")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(len(classes), activation="softmax")])
    folder = save_model(model, project.models, "sample-tiny", {"class_names": classes})["folder"]
    calls = []
    real = predictions.predict_dataset

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(predictions, "predict_dataset", counting)
    first = predictions.split_predictions(folder, "test", original, classes)
    read = predictions.split_predictions(folder, "test", original, classes)
    assert len(calls) == 1  # the same rows: read from models/sample-tiny/predictions/test.npz
    np.testing.assert_array_equal(read.probs, first.probs)
    for count, name in enumerate(("redownload", "moved"), start=2):
        rows = build_manifest(tmp_path / name, "sample").split("test")
        assert rows["path"].tolist() == original["path"].tolist()
        assert rows["label_index"].tolist() == original["label_index"].tolist()
        again = predictions.split_predictions(folder, "test", rows, classes)
        assert len(calls) == count, name
        is_changed = (rows["path"] == changed).to_numpy()
        if name == "redownload":  # the new bytes' probabilities, not the old file's
            assert not np.allclose(again.probs[is_changed], first.probs[is_changed])
        np.testing.assert_allclose(again.probs[~is_changed], first.probs[~is_changed], rtol=1e-5)
