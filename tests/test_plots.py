import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cnnlab import plots
from cnnlab.data.datasets import build_manifest


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
        plots.plot_histories({"a": history, "b": history}),
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
