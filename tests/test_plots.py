import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from readable import assert_readable

from cnnlab import plots
from cnnlab.data.datasets import build_manifest


@pytest.fixture(autouse=True)
def _no_open_figures():
    """Every test starts and ends with no pyplot figure open (they would pile up past 20)."""
    plt.close("all")
    yield
    plt.close("all")


def test_every_plot_returns_a_figure(sample_root, tmp_path):
    manifest = build_manifest(sample_root, "sample")
    rows = manifest.split("test")
    history = pd.DataFrame({"epoch": [0, 1, 2], "accuracy": [.3, .5, .6], "loss": [1, .8, .7],
                            "val_accuracy": [.3, .4, .5], "val_loss": [1, .9, .8]})
    y_pred = np.zeros(len(rows), dtype=int)
    figures = [
        plots.plot_class_counts(manifest.counts()),
        plots.plot_class_samples(rows, per_class=1),
        plots.plot_history(history, "x", stage_boundary=1),
        plots.plot_histories({"a": history, "b": history}, x="epoch"),
        plots.plot_confusion_matrix(np.eye(4, dtype=int) * 3, manifest.classes),
        plots.plot_confusion_matrix(np.eye(53), [str(i) for i in range(53)], normalized=True),
        plots.plot_predictions(rows, y_pred, manifest.classes, k=4),
        plots.plot_top_k([np.zeros((8, 8, 3))], pd.DataFrame(
            {"file": ["f"], "rank": [1], "class": ["a"], "probability": [0.7]})),
    ]
    assert all(isinstance(f, Figure) for f in figures)
    plots.save_figure(figures[0], tmp_path / "counts.png")
    assert (tmp_path / "counts.png").stat().st_size > 1000
    samples = figures[1].axes
    assert sorted(a.get_title() for a in samples if a.get_title()) == manifest.classes


def test_jpeg_image_is_a_small_jpeg_of_the_figure():
    import matplotlib.pyplot as plt
    import numpy as np

    from cnnlab.plots import jpeg_image

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.imshow(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    image = jpeg_image(fig)
    assert image.data[:3] == b"\xff\xd8\xff" and image.format == "jpeg"
    assert not plt.fignum_exists(fig.number)  # closed: not shown again as PNG


def _history(seconds, accuracy=None):
    n = len(seconds)
    accuracy = np.linspace(0.2, 0.8, n) if accuracy is None else accuracy
    return pd.DataFrame({"epoch": range(n), "accuracy": accuracy, "loss": 1 - accuracy,
                         "val_accuracy": accuracy - 0.05, "val_loss": 1.1 - accuracy,
                         "seconds": seconds})


def test_every_figure_is_titled_with_labelled_axes(sample_root):
    from types import SimpleNamespace

    from cnnlab.evaluation.leaderboard import plot_accuracy_vs_latency
    from cnnlab.segmentation.training import plot_miou_history
    from cnnlab.tabular import plots as tabular_plots

    plt.close("all")
    manifest = build_manifest(sample_root, "sample")
    rows = manifest.split("test")
    history = _history([1.0, 1.2, 1.1])
    miou = pd.DataFrame({"epoch": [0, 1], "mIoU": [.2, .4], "val_mIoU": [.1, .3],
                         "loss": [1, .8], "val_loss": [1.1, .9]})
    lr = SimpleNamespace(learning_rates=np.logspace(-5, -1, 20), losses=np.linspace(2, 1, 20),
                         raw_losses=np.linspace(2, 1, 20), suggestion=1e-3, has_descent=True,
                         diverged=False)
    board = pd.DataFrame({"model": ["a", "b"], "accuracy": [.8, .9], "accuracy CI low": [.7, .85],
                          "accuracy CI high": [.85, .95], "ms/image (batch 1)": [3.0, 9.0],
                          "test images": [100, 100], "latency device": ["2 CPU cores"] * 2})
    truth = np.random.default_rng(0).uniform(100, 900, 12)
    predicted = {"cnn": truth * 1.1, "median": truth * 0.8 + 100}
    intervals = pd.DataFrame({"MAPE %": [10.0, 20], "MAPE % low": [8.0, 15],
                              "MAPE % high": [12.0, 25]}, index=["cnn", "median"])
    photos = {room: np.zeros((12, 8, 8, 3), np.uint8) for room in ("kitchen", "bath")}
    counts = np.eye(6, dtype=int) * 5
    counts[0, 1] = counts[2, 3] = 2
    figures = {
        "class counts": plots.plot_class_counts(manifest.counts()),
        "class samples": plots.plot_class_samples(rows, per_class=1),
        "history": plots.plot_history(history),
        "histories": plots.plot_histories({"a": history, "b": history}),
        "histories per epoch": plots.plot_histories({"a": history}, x="epoch"),
        "confusion": plots.plot_confusion_matrix(counts, [f"c{i}" for i in range(6)]),
        "confused block": plots.plot_confused_block(counts, [f"c{i}" for i in range(6)]),
        "predictions": plots.plot_predictions(rows, np.zeros(len(rows), int), manifest.classes,
                                              k=4),
        "top-k": plots.plot_top_k([np.zeros((8, 8, 3))], pd.DataFrame(
            {"file": ["f"], "rank": [1], "class": ["a"], "probability": [0.7]})),
        "lr find": plots.plot_lr_find(lr),
        "accuracy vs latency": plot_accuracy_vs_latency(board),
        "mIoU history": plot_miou_history(miou),
        "predicted vs actual": tabular_plots.plot_predicted_vs_actual(truth, predicted),
        "residuals": tabular_plots.plot_residuals(truth, predicted),
        "price photos": tabular_plots.plot_price_photos(
            pd.DataFrame({"price": truth}), photos, truth, count=1),
        "loss curves": tabular_plots.plot_loss_curves({"cnn": history}),
        "metric intervals": tabular_plots.plot_metric_intervals(intervals),
    }
    for name, fig in figures.items():
        assert_readable(fig, name)
    plt.close("all")


def test_53_class_confusion_matrix_labels_stay_legible():
    names = [f"class name {i:02d}" for i in range(53)]
    fig = plots.plot_confusion_matrix(np.eye(53), names, normalized=True)
    ax = fig.axes[0]
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        assert [t.get_text() for t in labels] == names  # every class labelled
        assert min(t.get_fontsize() for t in labels) >= 7
    assert_readable(fig, "53 classes")
    fig.canvas.draw()
    row_points = ax.get_window_extent().height / fig.dpi * 72 / 53
    assert row_points >= 1.3 * ax.get_yticklabels()[0].get_fontsize()  # labels do not overlap


def test_histories_against_wall_clock_seconds_mark_the_stage_boundary():
    # Stage 1 on cached features takes 0.3 s an epoch, stage 2 and scratch training minutes.
    transfer = _history([0.3, 0.3, 0.3, 95.0, 96.0])
    scratch = _history([181.0, 180.0, 182.0])
    fig = plots.plot_histories({"transfer": transfer, "scratch": scratch},
                               stage_boundaries={"transfer": 3, "scratch": None})
    assert_readable(fig, "histories")
    ax = fig.axes[0]
    curves = {line.get_label(): line for line in ax.get_lines() if not
              line.get_label().startswith("_")}
    for name, history in (("transfer", transfer), ("scratch", scratch)):
        xs = np.asarray(curves[name].get_xdata(), float)
        assert xs.max() == pytest.approx(history["seconds"].sum())
        np.testing.assert_allclose(xs, history["seconds"].cumsum())
    assert ax.get_xlim()[1] >= scratch["seconds"].sum()
    assert "seconds" in ax.get_xlabel()
    boundaries = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert boundaries == [pytest.approx(0.9)]  # after the three 0.3 s epochs
    assert "fine-tuning starts" in [t.get_text() for t in ax.get_legend().get_texts()]

    by_epoch = plots.plot_histories({"transfer": transfer}, x="epoch",
                                    stage_boundaries={"transfer": 3}).axes[0]
    assert by_epoch.get_lines()[0].get_xdata().max() == 5 and by_epoch.get_xlabel() == "epoch"
    with pytest.warns(UserWarning, match="no 'seconds' column"):
        old = plots.plot_histories({"old": transfer.drop(columns="seconds")}).axes[0]
    assert old.get_xlabel() == "epoch"
    with pytest.raises(ValueError, match="wall clock"):
        plots.plot_histories({"a": transfer}, x="minutes")


def test_save_figure_writes_the_png_and_closes_the_figure(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "More than 20 figures" RuntimeWarning
        for i in range(21):
            fig, ax = plt.subplots(figsize=(1, 1))
            plots.save_figure(fig, tmp_path / "figures" / f"{i}.png", dpi=20)
            assert not plt.fignum_exists(fig.number)
    assert len(list((tmp_path / "figures").glob("*.png"))) == 21
    assert plt.get_fignums() == []


def test_in_jupyter_a_saved_figure_is_shown_once(tmp_path):
    """The notebooks' two patterns, in a real kernel with the inline backend: a saved figure
    is shown once, as PNG, by the backend; a photo grid shown with ``display(jpeg_image(fig))``
    once, as JPEG; no figure stays open."""
    import nbclient
    import nbformat

    cells = [
        "import matplotlib.pyplot as plt\nfrom cnnlab import plots",
        f"fig, ax = plt.subplots()\nplots.save_figure(fig, {str(tmp_path / 'a.png')!r})",
        f"fig, ax = plt.subplots()\nplots.save_figure(fig, {str(tmp_path / 'b.png')!r})\n"
        "display(plots.jpeg_image(fig))",
        "len(plt.get_fignums())",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    images = [[mime for output in cell.outputs for mime in output.get("data", {})
               if mime.startswith("image/")] for cell in notebook.cells]
    assert images == [[], ["image/png"], ["image/jpeg"], []]
    assert notebook.cells[3].outputs[0]["data"]["text/plain"] == "0"
    assert (tmp_path / "a.png").is_file() and (tmp_path / "b.png").is_file()


def test_prices_and_log_axes_read_as_plain_numbers():
    from cnnlab.tabular import plots as tabular_plots

    assert [tabular_plots.usd(v) for v in (85, 163_000, 1_163_000)] == ["$85", "$163k", "$1.16M"]
    truth = np.random.default_rng(0).uniform(90_000, 1_200_000, 40)
    fig = tabular_plots.plot_predicted_vs_actual(truth, {"mlp": truth * 1.1})
    fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert labels and all(text.startswith("$") for text in labels)
    assert not any("^" in text or "," in text for text in labels)
    history = pd.DataFrame({"val_loss": [2.5, 1.2, 0.6], "seconds": [1.0, 1.0, 1.0]})
    fig = tabular_plots.plot_loss_curves({"cnn": history})
    fig.canvas.draw()
    shown = [t.get_text() for t in fig.axes[0].get_yticklabels(minor=True) if t.get_text()]
    assert shown == []  # no "2x10^0" minor labels
    major = [t.get_text() for t in fig.axes[0].get_yticklabels() if t.get_text()]
    assert major and not any("10^" in text or "times" in text for text in major)
    plt.close("all")


def test_class_names_in_small_titles_are_wrapped_never_cut():
    assert plots.fit_label("seven of diamonds") == "seven of diamonds"
    assert plots.fit_label("a very long class name indeed") == "a very long class\nname indeed"
    assert plots.fit_label(3) == "3"
