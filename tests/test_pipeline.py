"""End to end: the numbered notebooks executed with papermill, as `cnnlab run` does."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from cnnlab.cli import main
from cnnlab.config import display_path, get_profile
from cnnlab.data.synthetic import SAMPLE_CLASSES
from cnnlab.notebooks import NOTEBOOKS, run_notebooks

REPO = Path(__file__).resolve().parents[1]


def _outputs(path) -> str:
    notebook = nbformat.read(path, as_version=4)
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output.get("output_type") != "error", f"{path.name}: {output}"
            texts.append(output.get("text", "") + json.dumps(output.get("data", {})))
    return "\n".join(texts)


@pytest.fixture()
def offline_assets(shared_dir, monkeypatch, tmp_path):
    # A relative path, as a user would export it: the runner must make it absolute, since
    # the kernels run in notebooks/.
    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(shared_dir / "models" / "deeplab", tmp_path)
    monkeypatch.setenv("CNNLAB_DEEPLAB_DIR", relative)
    return shared_dir


@pytest.mark.slow(minutes=10)
def test_all_seven_notebooks_run_on_real_data_with_smoke_profile(project, offline_assets):
    """Every notebook on the shared assets: cards, vehicles for 04, Houses, Airbnb CSVs, local
    weights and DeepLab files. (The generated sample runs in the offline `make run` test.)"""
    timings = run_notebooks({"dataset": "cards", "data_dir": offline_assets / "datasets" / "cards",
                             "profile": "smoke", "weights": "local",
                             "weights_dir": offline_assets / "weights",
                             "segment_dataset": "vehicles",
                             "segment_data_dir": offline_assets / "datasets" / "vehicles",
                             "mixed_data_dir": offline_assets / "datasets" / "houses",
                             "images_dir": offline_assets / "datasets" / "houses"
                             / "Houses Dataset",
                             "images_glob": "*_frontal.jpg",
                             "airbnb_data_dir": offline_assets / "datasets" / "airbnb-madrid"},
                            run_id="smoke", dirs=project, log_output=False)
    assert timings["notebook"].tolist() == list(NOTEBOOKS)
    report = project.reports / "smoke"
    eda = _outputs(report / "01_download_eda.ipynb")
    assert "3710 images, 53 classes" in eda and "own split folders" in eda
    transfer = _outputs(report / "03_transfer_learning.ipynb")
    assert "imagenet (local file mobilenet_v3_small_075" in transfer
    assert "NONE (RANDOM INIT" in transfer  # efficientnet_b0 has no local weights: said loudly
    board = pd.read_csv(project.reports / "cards-leaderboard.csv")
    assert sorted(board["model"]) == ["efficientnet_b0", "mobilenet_v3_small_075",
                                      "mobilenet_v3_small_075_scratch", "retail_cnn"]
    assert "pretrained - scratch" in transfer  # the twin comparison table
    assert (board["test images"] == 265).all()  # every model on the whole test split
    assert "segmenting 2 images of vehicles" in _outputs(report / "04_segmentation.ipynb")
    inference = _outputs(report / "06_inference.ipynb")
    assert "best validation accuracy" in inference
    assert "6 photos from outside the dataset (*_frontal.jpg in the folder 'Houses Dataset')" \
        in inference and "_frontal.jpg (outside the dataset): " in inference
    mixed = _outputs(report / "07_mixed_data_regression.ipynb")
    assert "Houses dataset (Ahmed & Moustafa 2016): 535 rows" in mixed
    assert "dropped weekly_price" in mixed and "course recipe (leaking columns kept)" in mixed
    for text in (eda, transfer, inference, mixed):  # no machine paths in committed outputs
        assert "/work/" not in text and "../" not in text.replace("../shared", "")
    metrics = pd.read_csv(report / "07_metrics.csv", index_col="model")
    assert {"median", "gbm", "mlp", "cnn", "transfer", "fusion", "frozen_fusion"} == set(
        metrics.index)
    assert (metrics["n"] == 134).all()  # every model on the whole test split
    for figure in ("01_class_counts", "02_architecture_retail_cnn", "03_val_accuracy",
                   "04_segmentation", "05_confusion_normalised", "06_inference",
                   "07_predicted_vs_actual", "07_price_photos"):
        assert (report / "figures" / f"{figure}.png").is_file(), figure
    assert (report / "timings.csv").is_file()
    from cnnlab.notebooks import check_notebooks

    assert check_notebooks(sorted(report.glob("*.ipynb"))) == []
    histories = nbformat.read(report / "02_custom_cnn.ipynb", as_version=4)
    ticks = [output["metadata"]["cnnlab"]["epoch_ticks"]
             for cell in histories.cells for output in cell.get("outputs", [])
             if "cnnlab" in output.get("metadata", {})]
    assert any(ticks)  # the epoch-tick check has figures to read
    meta = nbformat.read(report / "03_transfer_learning.ipynb", as_version=4).metadata
    assert "accelerator" not in meta  # a CPU run does not claim Colab's GPU
    assert meta["cnnlab"]["hardware"].startswith("CPU only: ")


@pytest.mark.slow
def test_run_stops_at_the_first_failing_notebook(project, capsys):
    status = main(["run", "--dataset", "vehicles", "--profile", "smoke", "--quiet",
                   "--run-id", "broken"])
    assert status == 1
    error = capsys.readouterr().err
    assert "01_download_eda.ipynb failed" in error and "pass --data-dir" in error
    assert not (project.reports / "broken" / "02_custom_cnn.ipynb").exists()


def test_every_notebook_declares_the_same_parameters():
    import papermill

    from cnnlab.config import project_dirs

    notebooks = project_dirs().root / "notebooks"
    declared = {name: {p["name"]: p["default"] for p in
                       papermill.inspect_notebook(str(notebooks / name)).values()}
                for name in NOTEBOOKS}
    first = declared[NOTEBOOKS[0]]
    assert {"dataset", "classes", "split_rule", "strategy", "seed", "run_id"} <= set(first)
    for name, params in declared.items():
        assert params == first, f"{name}: parameters cell differs from {NOTEBOOKS[0]}'s"


def test_cli_lists_registries(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_v3_small_075" in out and "retail_cnn" in out and "smoke" in out


def test_startup_log_lines_are_stripped_and_other_stderr_kept():
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    from cnnlab.notebooks import strip_startup_logs

    text = ("WARNING: All log messages before absl::InitializeLog() is called are written to "
            "STDERR\n"
            "I0000 00:00:1796221749.391409   24968 cudart_stub.cc:31] Could not find cuda "
            "drivers on your machine, GPU will not be used.\n"
            "UserWarning: a warning the reader must see\n")
    notebook = new_notebook(cells=[new_code_cell("import keras", outputs=[
        new_output("stream", name="stderr", text=text),
        new_output("stream", name="stderr", text=text.splitlines(keepends=True)[0])])])
    assert strip_startup_logs(notebook) == 3
    outputs = notebook.cells[0].outputs
    assert len(outputs) == 1
    assert outputs[0]["text"] == "UserWarning: a warning the reader must see\n"


def _executed(path, run_id, outputs, injected="dataset = 'cards'\n"):
    import nbformat

    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell(injected)
    parameters.metadata["tags"] = ["injected-parameters"]
    cell = nbformat.v4.new_code_cell("print('x')", execution_count=2)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)
                    for text in outputs]
    notebook.cells = [parameters, cell]
    notebook.metadata["papermill"] = {"parameters": {"run_id": run_id}}
    nbformat.write(notebook, path)
    return path


def test_check_notebooks_names_every_problem(tmp_path):
    from cnnlab.notebooks import check_notebooks

    clean = _executed(tmp_path / "01_a.ipynb", "run-1", ["test accuracy 0.81\n"])
    assert check_notebooks([clean]) == []
    noisy = _executed(tmp_path / "02_b.ipynb", "run-1", [
        "WARNING: All log messages before absl::InitializeLog() is called are written to "
        "STDERR\n", "saved ../shared/x.png\n"], injected="data_dir = '../../shared/cards'\n")
    other_run = _executed(tmp_path / "03_c.ipynb", "run-2", ["ok\n"])
    big = _executed(tmp_path / "04_d.ipynb", "run-1", ["x" * (1024 * 1024 + 10)])
    problems = check_notebooks([clean, noisy, other_run, big])
    text = "\n".join(problems)
    assert "02_b.ipynb: output of cell 2 contains 'absl::InitializeLog'" in text
    assert "02_b.ipynb: output of cell 2 contains '../'" in text
    assert "02_b.ipynb: injected parameters contains '../'" in text
    assert "04_d.ipynb: 1.00 MiB, over 1 MiB" in text
    assert "different runs (01_a.ipynb: run-1, 02_b.ipynb: run-1, 03_c.ipynb: run-2" in text
    script = Path(__file__).resolve().parents[1] / "scripts" / "check_notebooks.py"
    result = subprocess.run([sys.executable, str(script), str(clean), str(noisy)],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "2 notebook(s) checked, 3 problem(s)" in result.stdout


def test_paths_outside_the_checkout_reach_the_notebooks_through_links(project, tmp_path):
    from cnnlab.notebooks import _portable_path

    outside = tmp_path / "elsewhere" / "cards"
    outside.mkdir(parents=True)
    assert _portable_path("data_dir", outside, project.root) == "data/links/data_dir"
    link = project.root / "data" / "links" / "data_dir"
    assert link.is_symlink() and link.resolve() == outside.resolve()
    assert display_path(link) == "./data/links/data_dir"  # the link, not the machine path
    inside = project.data / "mine"
    inside.mkdir(parents=True)
    assert _portable_path("data_dir", inside, project.root) == "data/mine"
    assert _portable_path("profile", "cpu", project.root) == "cpu"
    (project.root / "data" / "links" / "weights_dir").mkdir()  # a real folder is not replaced
    with pytest.raises(FileExistsError, match="is not a link"):
        _portable_path("weights_dir", outside, project.root)


def test_progress_lines_keep_one_line_per_model():
    import logging

    from cnnlab.notebooks import ProgressLines

    record = logging.LogRecord("papermill", logging.INFO, __file__, 1,
                               "Epoch 3/8\n27/27 - 13s - accuracy: 0.9\ntraining retail_cnn: "
                               "3180 images at 64 px, 8 epochs\nmlp: 118 epochs in 28 s, val "
                               "MAPE 28.1%", None, None)
    assert ProgressLines().filter(record)
    assert record.getMessage() == ("training retail_cnn: 3180 images at 64 px, 8 epochs\n"
                                   "mlp: 118 epochs in 28 s, val MAPE 28.1%")
    epochs_only = logging.LogRecord("papermill", logging.INFO, __file__, 1, "Epoch 1/2", None,
                                    None)
    assert not ProgressLines().filter(epochs_only)


def test_progress_lines_show_each_warning_once_per_run():
    import logging

    from cnnlab.notebooks import ProgressLines

    progress = ProgressLines()  # one per `cnnlab run`, across its notebooks
    warning = "WARNING: NO IMAGENET WEIGHTS FOR VGG16: THE KERAS DOWNLOAD FAILED (URLError)."

    def shown(text):
        record = logging.LogRecord("papermill", logging.INFO, __file__, 1, text, None, None)
        return record.getMessage() if progress.filter(record) else None

    assert shown(f"Epoch 1/2\n{warning}") == warning  # notebook 03
    assert shown(f"{warning}\nvgg16: weights = NONE") == "vgg16: weights = NONE"  # notebook 04
    assert shown(warning) is None


@pytest.mark.slow
def test_a_run_prints_no_kernel_or_tensorflow_start_up_lines(project, capfd):
    from cnnlab.startup_logs import keep_line

    earlier = project.reports / "quiet"  # an earlier run of all seven under this run id
    earlier.mkdir(parents=True)
    pd.DataFrame({"notebook": list(NOTEBOOKS), "seconds": [99.0] * 7}).to_csv(
        earlier / "timings.csv", index=False)
    run_notebooks({"dataset": "sample", "profile": "smoke"}, run_id="quiet", only=["01"],
                  dirs=project, log_output=False)
    timings = pd.read_csv(earlier / "timings.csv")
    assert list(timings["notebook"]) == list(NOTEBOOKS)  # the others' rows are kept
    assert timings["seconds"].iloc[0] != 99.0 and set(timings["seconds"].iloc[1:]) == {99.0}
    captured = capfd.readouterr()
    noise = [line for line in (captured.out + captured.err).splitlines()
             if not keep_line(line) or "TCP without encryption" in line]
    assert noise == []
    assert "[1/1] 01_download_eda.ipynb done in" in captured.out


def test_publish_run_commits_the_run_and_writes_readme_results_from_its_files(project):
    from cnnlab.results import END, START, publish_run

    report = project.reports / "r1"
    (report / "figures").mkdir(parents=True)
    for name in NOTEBOOKS:
        _executed(report / name, "r1", [f"cell of {name}\n"],
                  injected="dataset = 'cards'\nrun_id = 'r1'\n")
    notebook = nbformat.read(report / NOTEBOOKS[0], as_version=4)
    notebook.metadata["papermill"]["parameters"].update(dataset="cards", mixed_dataset="houses")
    notebook.metadata["cnnlab"] = {"hardware": "CPU only: 2 cores (x86_64)"}
    nbformat.write(notebook, report / NOTEBOOKS[0])
    # Validation chooses: the model with the better test score is not the one chosen.
    pd.DataFrame({"model": ["retail_cnn", "mobilenet_v2"], "val accuracy": [0.652, 0.849],
                  "test images": [265, 265],
                  "accuracy": [0.9, 0.789], "accuracy CI low": [0.86, 0.736],
                  "accuracy CI high": [0.93, 0.834], "train minutes": [3.0, 64.4]}).to_csv(
        report / "leaderboard.csv", index=False)
    (report / "leaderboard.md").write_text("| model |\n|---|\n| mobilenet_v2 |\n")
    pd.DataFrame({"model": ["mlp", "fusion"], "val MAPE %": [31.0, 25.5],
                  "MAPE %": [20.0, 27.04], "MAPE % low": [17.0, 23.1],
                  "MAPE % high": [24.0, 31.6], "inputs": ["tabular", "tabular + photos"],
                  "seconds": [5.0, 32.0]}).to_csv(report / "07_metrics.csv", index=False)
    pd.DataFrame({"notebook": list(NOTEBOOKS), "seconds": [1.0] * 6 + [625.4]}).to_csv(
        report / "timings.csv", index=False)
    for name, agree, low, high in (("deeplabv3_257_float", 542, 0.644, 0.709),
                                   ("deeplabv3_513_quant", 601, 0.720, 0.780)):
        pd.DataFrame({"class": ["car", "all"], "images": [200, 800], "agree": [150, agree],
                      "share": [0.75, agree / 800], "CI low": [0.686, low],
                      "CI high": [0.805, high]}).to_csv(
            report / f"04_agreement_{name}.csv", index=False)
    (report / "figures" / "05_accuracy_vs_latency.png").write_bytes(b"png")
    readme = project.root / "README.md"
    readme.write_text(f"# x\n\n{START}\nold table\n{END}\n\n| notebook | time |\n|---|---|\n"
                      f"| [07](notebooks/{NOTEBOOKS[6]}) | [9 s](notebooks/{NOTEBOOKS[6]}) |\n"
                      f"\nafter\n")
    publish_run("r1", project, readme)
    text = readme.read_text()
    assert "old table" not in text and text.endswith("\nafter\n")
    assert f"| [07](notebooks/{NOTEBOOKS[6]}) | [10.4 min](notebooks/{NOTEBOOKS[6]}) |" in text
    assert ("| cards | classification | `mobilenet_v2` (val accuracy 0.849) | test accuracy "
            "0.789 [0.736, 0.834] (n=265) | 64.4 min training | "
            "[notebook 05](notebooks/05_evaluation.ipynb) · [course project]"
            "(docs/course_projects.md#playing-cards) |") in text
    assert "| rpc | not run here | – | – |  | [course project](docs/course_projects.md#" \
        "retail-products-rpc) |" in text
    assert "`fusion` (tabular + photos; val MAPE 25.5 %) | test MAPE 27.0 [23.1, 31.6] %" in text
    from cnnlab.results import run_summary

    summary = run_summary(report, {"dataset": "cards", "mixed_dataset": "houses"})
    assert "classification (cards): mobilenet_v2 (val accuracy 0.849): test accuracy 0.789" in \
        summary
    assert "price regression (houses): fusion (tabular + photos; val MAPE 25.5 %)" in summary
    assert "agreement 0.751" in summary and "reports/r1/*.ipynb" in summary
    # A table without validation scores cannot choose: publishing refuses it.
    pd.read_csv(report / "leaderboard.csv").drop(columns="val accuracy").to_csv(
        report / "leaderboard.csv", index=False)
    with pytest.raises(ValueError, match="chosen on validation"):
        publish_run("r1", project, readme)
    assert "classification (benchmark)" not in text  # only the run's own results
    assert "agreement 0.751 [0.720, 0.780] (601 of 800 images)" in text  # the better backend
    assert "cnnlab run --run-id r1` (CPU only: 2 cores (x86_64))" in text
    assert (project.root / "notebooks" / NOTEBOOKS[0]).read_bytes() == (
        report / NOTEBOOKS[0]).read_bytes()
    assert (project.root / "docs" / "results" / "leaderboard.csv").is_file()
    assert (project.root / "docs" / "figures" / "05_accuracy_vs_latency.png").is_file()
    assert "## Seconds per notebook" in (project.root / "docs" / "results.md").read_text()
    # A run whose notebooks fail the check is not published.
    _executed(report / NOTEBOOKS[1], "other-run", ["x\n"])
    with pytest.raises(ValueError, match="different runs"):
        publish_run("r1", project, readme)


@pytest.mark.slow(minutes=10)
def test_make_run_completes_offline_without_shared_and_says_what_it_fell_back_to(tmp_path):
    """A newcomer's `make run`: a fresh folder with no ../shared and every download refused."""
    root = tmp_path / "newcomer"  # tmp_path/shared does not exist: no ../shared beside it
    root.mkdir()
    for name in ("Makefile", "pyproject.toml", "requirements.txt"):
        shutil.copy2(REPO / name, root / name)  # mtimes kept: the venv counts as installed
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    venv = Path(sys.prefix)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CNNLAB_") and k.lower() not in ("no_proxy", "pytest_addopts")}
    unreachable = "http://127.0.0.1:9"  # nothing listens there: every download is refused
    env.update(KERAS_HOME=str(tmp_path / "keras"), HTTPS_PROXY=unreachable,
               HTTP_PROXY=unreachable, https_proxy=unreachable, http_proxy=unreachable)
    result = subprocess.run(
        ["make", "-o", str(venv / ".installed"), "run", f"VENV={venv}",
         # One backbone, to keep CI short: offline, each trains end to end from random init.
         "ARGS=--run-id newcomer --backbones mobilenet_v3_small_075"], cwd=root, env=env,
        capture_output=True, text=True,
        timeout=3600)
    console = result.stdout + result.stderr
    assert result.returncode == 0, console[-3000:]
    assert "--weights auto" in console and "--mixed-dataset sample_houses" in console
    # Each fallback announced in capitals, once per run on the console.
    announced = [line for line in console.splitlines() if "WARNING: NO IMAGENET WEIGHTS" in line]
    assert announced and len(announced) == len(set(announced)), announced
    assert any("MOBILENET_V3_SMALL_075" in line for line in announced)
    assert "WARNING: NO PRETRAINED DEEPLAB MODEL DEEPLABV3_257_FLOAT" in console
    # The closing summary: each task's model chosen on validation, its test score, the notebooks.
    summary = console[console.index("Results (models chosen on validation"):]
    assert "classification (sample): " in summary and "test accuracy " in summary
    assert "price regression (sample_houses): " in summary and "test MAPE " in summary
    assert "reports/newcomer/*.ipynb" in summary
    report = root / "reports" / "newcomer"
    transfer = _outputs(report / "03_transfer_learning.ipynb")
    assert "WARNING: NO IMAGENET WEIGHTS FOR MOBILENET_V3_SMALL_075" in transfer
    assert "RANDOM INIT: THE IMAGENET DOWNLOAD FAILED" in transfer
    assert "SYNTHETIC" in _outputs(report / "01_download_eda.ipynb")
    board = pd.read_csv(report / "leaderboard.csv").set_index("model")
    assert board["weights"].str.contains("RANDOM INIT: the ImageNet download failed").any()
    # The quick profile trains both custom CNNs well above chance on the sample.
    chance = 1 / len(SAMPLE_CLASSES)
    for name in get_profile("quick").custom_models:
        assert board.loc[name, "val accuracy"] >= 2.4 * chance, board.loc[name]
    assert "Synthetic houses" in _outputs(report / "07_mixed_data_regression.ipynb")
    from cnnlab.notebooks import check_notebooks

    assert check_notebooks(sorted(report.glob("*.ipynb"))) == []


def test_check_notebooks_finds_stale_names_long_logs_process_words_and_epoch_halves(tmp_path):
    import nbformat

    from cnnlab.notebooks import MAX_STREAM_LINES, check_notebooks, resolves

    assert resolves("training.fine_tune") and resolves("cnnlab.segmentation.VOC_CLASS_MAPS")
    assert resolves("keras.applications") and resolves("tf.data") and resolves("args.yaml")
    assert not resolves("segment.VOC_CLASS_MAPS") and not resolves("training.no_such_name")
    path = _executed(tmp_path / "03_x.ipynb", "run-1",
                     ["Epoch 1/9\n" * (MAX_STREAM_LINES + 1), "vgg16: SHORT RUN of cpu\n"])
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.append(nbformat.v4.new_markdown_cell(
        "Fitted by `train.fine_tune`, shown by `plots.plot_history`; Honest numbers."))
    figure = nbformat.v4.new_code_cell("fig", execution_count=3)
    figure.outputs = [nbformat.v4.new_output(
        "display_data", data={"image/png": "iVBORw0KGgo="},
        metadata={"cnnlab": {"epoch_ticks": [1.0, 1.5, 2.0]}})]
    notebook.cells.append(figure)
    nbformat.write(notebook, path)
    text = "\n".join(check_notebooks([path]))
    assert f"cell 2 prints {MAX_STREAM_LINES + 2} lines besides progress-table rows" in text
    assert "cell 2 says 'SHORT RUN'" in text
    assert "a markdown cell says 'Honest numbers'" in text
    assert "names `train.fine_tune`, which does not exist" in text
    assert "plot_history" not in text  # it resolves
    assert "a figure of cell 3 has epoch ticks [1.0, 1.5, 2.0]" in text
    # A long progress table (a row per epoch, three models of 32 epochs) with its headers and
    # notices is what a training cell should print.
    rows = "".join(f"{epoch:>5}   2.2491   0.4830   2.0642       0.5660     70.3\n"
                   for epoch in range(1, 97))
    table = _executed(tmp_path / "02_x.ipynb", "run-1",
                      ["stage 1:\nepoch     loss accuracy val_loss val_accuracy  seconds\n", rows])
    assert check_notebooks([table], ["stream_lines"]) == []
    assert check_notebooks([path], ["size"]) == []


def test_epoch_axes_have_whole_ticks_and_notebook_outputs_carry_them():
    import types

    from IPython.core.formatters import DisplayFormatter
    from matplotlib.figure import Figure

    from cnnlab import plots

    history = pd.DataFrame({"epoch": [0, 1, 2], "accuracy": [0.3, 0.5, 0.6],
                            "loss": [1.2, 0.9, 0.8], "val_accuracy": [0.35, 0.5, 0.55],
                            "val_loss": [1.1, 0.95, 0.9], "seconds": [1.0, 1.0, 1.0]})
    fig = plots.plot_history(history, chance=0.25)
    assert fig.axes[0].get_ylim() == (0, 1.02)  # accuracy on its whole scale
    ticks = plots.epoch_ticks(fig)
    assert ticks and all(t == int(t) for t in ticks)
    assert "chance (0.25)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    by_epoch = plots.plot_histories({"a": history}, x="epoch", chance=0.25)
    assert all(t == int(t) for t in plots.epoch_ticks(by_epoch))
    from cnnlab.segmentation.training import plot_miou_history

    one = history.head(1)  # a single epoch: matplotlib alone would tick 0.95, 0.975, ...
    miou = one.assign(mIoU=0.2, val_mIoU=0.3)
    for figure in (plots.plot_history(one), plot_miou_history(miou),
                   plots.plot_histories({"a": one}, x="epoch")):
        assert plots.epoch_ticks(figure) and all(t == int(t) for t in plots.epoch_ticks(figure))
    display = DisplayFormatter()
    display.formatters["image/png"].for_type(Figure, lambda figure: "png-bytes")
    shell = types.SimpleNamespace(display_formatter=display)
    assert plots.show_figure_facts(shell)
    display.formatters["image/png"].pop(Figure)  # the inline backend configured again
    display.formatters["image/png"].for_type(Figure, lambda figure: "new-png-bytes")
    data, metadata = display.format(fig)
    assert data["image/png"] == "new-png-bytes" and metadata["cnnlab"] == {"epoch_ticks": ticks}


def test_a_notebook_executed_again_on_its_own_is_named(tmp_path):
    import nbformat

    from cnnlab.notebooks import check_notebooks

    times = {"01_a": ("06:00", "06:10"), "02_b": ("09:00", "09:05"), "03_c": ("06:10", "06:20")}
    paths = []
    for name, (start, end) in times.items():
        path = _executed(tmp_path / f"{name}.ipynb", "run-1", ["ok\n"])
        notebook = nbformat.read(path, as_version=4)
        notebook.metadata["papermill"].update(start_time=f"2026-12-03T{start}:00+00:00",
                                              end_time=f"2026-12-03T{end}:00+00:00")
        nbformat.write(notebook, path)
        paths.append(path)
    assert check_notebooks(paths, ["run_order"]) == [
        "03_c.ipynb started before 02_b.ipynb ended: 02_b.ipynb was executed again on its own; "
        "rerun the notebooks in one cnnlab run"]
    assert check_notebooks(paths[:1] + paths[2:], ["run_order", "run_id"]) == []
    with pytest.raises(KeyError, match="unknown notebook checks"):
        check_notebooks(paths, ["spelling"])
