"""The course-projects page: every project a section, every number a link to its file."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from cnnlab.course_projects import COURSE_PROJECTS, course_projects_page


def _leaderboard(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def _board_row(model, val, acc, weights="imagenet (local file x.h5)", collapsed=""):
    return {"model": model, "val accuracy": val, "accuracy": acc, "accuracy CI low": acc - 0.05,
            "accuracy CI high": acc + 0.03, "test images": 180, "train minutes": 2.5,
            "image size": 96,
            "weights": weights, "collapsed": collapsed}


def _metrics(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"model": m, "n": 134, "MAPE %": v, "MAPE % low": v - 4, "MAPE % high": v + 5,
                   "R2": 0.6, "R2 low": 0.4, "R2 high": 0.75, "inputs": "tabular",
                   "val MAPE %": v - 1} for m, v in (("mlp", 30.4), ("fusion", 27.0))]
                 ).to_csv(path, index=False)


def test_the_page_has_every_project_and_links_every_number(tmp_path):
    docs = tmp_path / "docs"
    _leaderboard(docs / "results" / "leaderboard.csv",
                 [_board_row("mobilenet_v2", 0.85, 0.81), _board_row("retail_cnn", 0.6, 0.62,
                                                                     "none (custom CNN)")])
    _metrics(docs / "results" / "07_metrics.csv")
    _metrics(docs / "results" / "07_airbnb_metrics.csv")
    for project in COURSE_PROJECTS.values():
        for figure in project.figures:
            (docs / figure).parent.mkdir(parents=True, exist_ok=True)
            (docs / figure).write_bytes(b"png")
    for key in ("vehicles", "weather"):
        _leaderboard(docs / "course_projects" / key / "leaderboard.csv",
                     [_board_row("vgg16", 0.7, 0.68, "NONE (RANDOM INIT)"),
                      _board_row("mobilenet_v2", 0.97, 0.96),
                      _board_row("efficientnet_b0", 0.26, 0.25, "none", "predicts 'a' for 100%")])
        (docs / "course_projects" / key / "run.json").write_text(json.dumps(
            {"run_id": f"{key}-cpu", "hardware": "CPU only: 2 cores"}))
    benchmark = docs / "benchmarks" / "scratch_recipes.json"
    benchmark.parent.mkdir()
    benchmark.with_suffix(".md").write_text("# table")
    benchmark.write_text(json.dumps({"runs": {"weather-mwd:inception_v3:75": {
        "backbone": "inception_v3", "dataset": "weather-mwd", "classes": 4, "image_size": 75,
        "epochs": 12, "chosen": {"lr": 1e-3, "test_accuracy": 0.8, "test_interval": [0.73, 0.86],
                                 "test_images": 165}}}}))
    page = course_projects_page(docs)
    for project in COURSE_PROJECTS.values():
        assert f"## {project.title}" in page
    families = page.split("## The five families, each trained")[1]
    assert re.search(r"\| VGG16 \| `vgg16` \| Vehicles run, 6 classes, 96 px \| random init \| "
                     r"\[0\.680 \[0\.630, 0\.710\] \(n=180\)\]\(course_projects/vehicles/"
                     r"leaderboard\.csv\) \| 4\.1 \|", families), families
    assert "| InceptionV3 | `inception_v3` | weather-mwd (from-scratch benchmark)" in families
    assert "efficientnet_b0" not in families  # collapsed: no score of its family
    assert "on at least one dataset: InceptionV3, VGG16; not yet: MobileNetV3, EfficientNet, " \
        "DenseNet." in families
    assert "EfficientNetB7 76.04%" in page and "\"97.5%\"" in page and "R² 0.69" in page
    assert "Not run here" in page and "cnnlab run --dataset rpc" in page
    vehicles = page.split("## Vehicles")[1].split("## Weather")[0]
    models = re.findall(r"^\| `(\w+)`", vehicles, flags=re.M)
    assert models == ["mobilenet_v2", "vgg16", "efficientnet_b0"]  # by validation accuracy
    assert "collapsed: predicts 'a'" in vehicles and "Run `vehicles-cpu`" in vehicles
    for line in page.splitlines():  # every number of a results row is a link
        if line.startswith("| `"):
            for cell in line.split("|")[3:5]:
                assert re.fullmatch(r"\s*\[.+\]\([\w/.]+\.csv\)\s*", cell), line
    for target in re.findall(r"\]\(([\w/.]+)\)", page):
        assert (docs / target).is_file(), target
    from cnnlab.course_projects import course_project_rows

    rows = {row["dataset"]: row for row in course_project_rows(docs)}
    assert list(rows) == ["rpc", "vehicles", "weather-mwd"]  # cards and airbnb: the main run's
    assert rows["vehicles"]["best model"] == "`mobilenet_v2` (val accuracy 0.970)"
    assert rows["weather-mwd"]["source"] == "[course project](docs/course_projects.md#weather)"
    (docs / "course_projects" / "weather" / "leaderboard.csv").unlink()
    with pytest.raises(FileNotFoundError, match="--run-id weather-cpu"):
        course_projects_page(docs)


def test_a_course_run_is_published_under_its_project(project):
    import nbformat

    from cnnlab.course_projects import publish_course_run

    report = project.reports / "vehicles-cpu"
    _leaderboard(report / "leaderboard.csv", [_board_row("vgg16", 0.7, 0.68)])
    (report / "figures").mkdir()
    (report / "figures" / "05_confusion_counts.png").write_bytes(b"png")
    (report / "figures" / "01_class_counts.png").write_bytes(b"png")  # not a page figure
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["papermill"] = {"parameters": {"run_id": "vehicles-cpu",
                                                     "dataset": "vehicles"}}
    notebook.metadata["cnnlab"] = {"hardware": "CPU only: 2 cores"}
    nbformat.write(notebook, report / "01_download_eda.ipynb")
    written = publish_course_run("vehicles", "vehicles-cpu", project)
    folder = project.root / "docs" / "course_projects" / "vehicles"
    assert sorted(p.name for p in written) == ["05_confusion_counts.png", "leaderboard.csv",
                                               "run.json"]
    facts = json.loads((folder / "run.json").read_text())
    assert facts["run_id"] == "vehicles-cpu" and facts["hardware"] == "CPU only: 2 cores"
    with pytest.raises(KeyError, match="not a course project published on its own"):
        publish_course_run("cards", "vehicles-cpu", project)
    with pytest.raises(FileNotFoundError, match="--run-id weather-cpu"):
        publish_course_run("weather", "missing", project)
    noisy = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x", execution_count=1)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="see ../shared\n")]
    noisy.cells = [cell]
    nbformat.write(noisy, report / "02_custom_cnn.ipynb")
    with pytest.raises(ValueError, match="not published"):
        publish_course_run("vehicles", "vehicles-cpu", project)


def test_every_command_parses_with_cnnlab_run():
    import shlex

    from cnnlab.cli import _parser

    for project in COURSE_PROJECTS.values():
        for command in filter(None, (project.command_here, project.command_course)):
            words = shlex.split(command)
            assert words[:2] == ["cnnlab", "run"], command
            _parser().parse_args(words[1:])  # exits (SystemExit) on an unknown option


def test_each_published_project_names_its_run():
    from cnnlab.course_projects import run_id_of

    for key in ("vehicles", "weather"):
        assert run_id_of(COURSE_PROJECTS[key]) == f"{key}-cpu"
    with pytest.raises(ValueError, match="names no --run-id"):
        run_id_of(COURSE_PROJECTS["airbnb"])
    assert run_id_of(COURSE_PROJECTS["cards"]) == "cards-cpu"  # the main run


def test_the_committed_page_is_current_and_its_links_resolve():
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs"
    page = (docs / "course_projects.md").read_text(encoding="utf-8")
    assert page == course_projects_page(docs), "rerun: python scripts/course_projects.py"
    for project in COURSE_PROJECTS.values():
        assert f"## {project.title}" in page
    links = re.findall(r"\]\(([^)#\s]+)\)", page)
    local = [target for target in links if "://" not in target]
    assert local, "the page links none of its files"
    for target in local:
        assert (docs / target).is_file(), f"docs/course_projects.md links a missing {target}"
    assets = [p for p in (docs / "course_projects").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in assets) < 2 * 2**20


def test_the_readme_results_are_current(tmp_path):
    from pathlib import Path

    from cnnlab.config import project_dirs
    from cnnlab.results import write_readme_results

    root = Path(__file__).resolve().parents[1]
    readme = tmp_path / "README.md"
    readme.write_text((root / "README.md").read_text(encoding="utf-8"), encoding="utf-8")
    write_readme_results(project_dirs(root), readme)
    assert readme.read_text(encoding="utf-8") == (root / "README.md").read_text(
        encoding="utf-8"), "rerun: python scripts/course_projects.py"
