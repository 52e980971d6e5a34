"""The five course projects cnnlab rebuilds: what each did and reported, beside our runs.

:data:`COURSE_PROJECTS` is the registry: for each project, the course's dataset, models and
reported figures (from its own write-up), the data it runs on here, how the two differ, where
its published run lives under ``docs/`` and the commands that reproduce it, here and on the
course's own dataset. :func:`publish_course_run` copies a finished ``cnnlab run`` of a project
(its leaderboard and key figures) to ``docs/course_projects/<key>/``;
:func:`course_projects_page` writes ``docs/course_projects.md`` from the registry and the
published files, every number a link to the file it comes from.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cnnlab.config import ProjectDirs, project_dirs
from cnnlab.files import write_text
from cnnlab.results import _interval, classification_row

__all__ = ["CourseProject", "COURSE_PROJECTS", "PAGE_ASSET_BYTES", "publish_course_run",
           "run_id_of", "run_course_project", "course_projects_page",
           "write_course_projects_page", "section_link", "course_project_rows",
           "link_course_projects", "FAMILIES", "family_rows"]

# The page's own files (tables and figures under docs/course_projects/) stay small.
PAGE_ASSET_BYTES = 2 * 1024 * 1024
# Figures a course-project run publishes, when its notebooks drew them.
COURSE_FIGURES = ("05_confusion_counts.png", "03_val_accuracy.png", "05_accuracy_vs_latency.png",
                  "06_inference.png")


@dataclass(frozen=True)
class CourseProject:
    """One course project and where its rebuild is published.

    Attributes:
        key: Registry key, also the section anchor and ``docs/course_projects/<key>/``.
        title: Section heading.
        course_dataset: The course's dataset and its page.
        course_models: What the course built.
        course_reported: What it reported, in its own terms ("no figure" when none).
        here: The data it runs on here.
        differences: How the run here differs (stand-in data, offline weights).
        results: Folder under ``docs/`` holding the run's tables: ``"results"`` (the main
            run), ``"course_projects/<key>"``, or None when it is not run here.
        tables: ``(file, kind)`` pairs in ``results``: kind ``"classification"`` (a
            leaderboard) or ``"regression"`` (notebook 07's metrics).
        command_here: The command that makes the run here.
        command_course: The command that runs it on the course's own dataset.
        not_run: Why it is not run here (with ``results`` None).
        figures: For a project of the main run, its figures under ``docs/`` (a project with
            its own run shows the figures published beside its tables).
        classes: Classes of its classification run here (chance is ``1 / classes``), None for
            a regression project or one not run here.
    """

    key: str
    title: str
    course_dataset: str
    course_models: str
    course_reported: str
    here: str
    differences: str
    results: str | None
    tables: tuple[tuple[str, str], ...]
    command_here: str
    command_course: str
    not_run: str = ""
    figures: tuple[str, ...] = ()
    classes: int | None = None


_RUN = "cnnlab run --profile cpu --weights local --weights-dir ../shared/weights"
COURSE_PROJECTS: dict[str, CourseProject] = {project.key: project for project in (
    CourseProject(
        "rpc", "Retail products (RPC)",
        "Kaggle `diyer22/retail-product-checkout-dataset` (Wei et al. 2019, arXiv:1901.07249): "
        "53,739 single-product photos of 200 products in 17 super-categories",
        "a custom CNN, InceptionV3 frozen then fine-tuned, curves, confusion matrices, sample "
        "predictions, and a pretrained DeepLab segmenting drink products as `bottle`",
        "no figure", "not run here: the dataset is a Kaggle download of 24 GB",
        "the Kaggle download and the COCO-to-17-super-category decoding are tested on fixtures "
        "(`tests/test_datasets.py`)", None, (),
        "", "cnnlab run --dataset rpc --profile gpu --backbones inception_v3",
        not_run="the 24 GB Kaggle download is not reachable from this machine"),
    CourseProject(
        "cards", "Playing cards",
        "Kaggle `gpiosenka/cards-image-datasetclassification`: 53 classes, 7,624 training "
        "images, its own 265-image test split",
        "MobileNetV3 + global average pooling + dense head, best weights checkpointed, the final "
        "model saved as .h5 and loaded by a deployment notebook",
        "\"97.5%\" test accuracy on 40 test images; validation accuracy 0.89-0.92",
        "the cards subset of ../shared (60 training images per class, the full validation and "
        "test splits)",
        "a 60-per-class training subset; ImageNet weights from local files (MobileNetV3Small "
        "0.75, MobileNetV2)", "results", (("leaderboard.csv", "classification"),),
        f"{_RUN} --dataset cards --data-dir ../shared/datasets/cards --segment-dataset vehicles "
        "--segment-data-dir ../shared/datasets/vehicles --mixed-data-dir ../shared/datasets/houses "
        "--airbnb-data-dir ../shared/datasets/airbnb-madrid "
        "--images-dir '../shared/datasets/houses/Houses Dataset' --images-glob '*_frontal.jpg' "
        "--run-id cards-cpu",
        "cnnlab run --dataset cards --profile gpu",
        figures=("figures/05_accuracy_vs_latency.png", "figures/03_val_accuracy.png",
                 "figures/05_confused_block.png"), classes=53),
    CourseProject(
        "vehicles", "Vehicles",
        "car, bus, truck and motorcycle photos (the course's own folder)",
        "two custom CNNs (one with BatchNorm) and a frozen VGG16; precision, recall and F1 per "
        "class, confusion matrices, visualkeras diagrams", "no figure",
        "Zenodo 6634554 (../shared/datasets/vehicles): 6 classes of small 100x100 photos",
        "6 classes as the data has them instead of the course's 4, at 96 px (the photos are "
        "100x100); VGG16 has no ImageNet file offline, so it trains end to end from random "
        "initialisation with its from-scratch recipe (peak rate 1e-4, 12 epochs; "
        "docs/benchmarks/scratch_recipes.md) where the course froze an ImageNet VGG16 (that "
        "runs with `--weights imagenet`); a MobileNetV2 fine-tuned from ImageNet stands beside "
        "the course CNNs", "course_projects/vehicles", (("leaderboard.csv", "classification"),),
        f"{_RUN} --dataset vehicles --data-dir ../shared/datasets/vehicles --classes all "
        "--custom-models retail_cnn,vehicles_cnn_bn --backbones vgg16,mobilenet_v2 "
        "--image-size 96 --only 01,02,03,05,06 --run-id vehicles-cpu",
        "cnnlab run --dataset vehicles --data-dir PATH/TO/VEHICLES --profile gpu "
        "--backbones vgg16", classes=6),
    CourseProject(
        "weather", "Weather",
        "Kaggle `jehanbhathena/weather-dataset`: 6,862 photos of 11 weather phenomena",
        "EfficientNet against DenseNet, then predictions on the students' own photos",
        "EfficientNetB7 76.04% and DenseNet201 84.34% test accuracy on the 11-class set",
        "the Multi-class Weather Dataset (Ajayi 2018, doi:10.17632/4drtyfjtfy.1; "
        "../shared/datasets/weather-mwd): 1,121 photos of 4 classes",
        "4 classes instead of 11, at 128 px; EfficientNetB0 and DenseNet121 (no ImageNet files "
        "offline) train from scratch with their recipes, a MobileNet fine-tuned from ImageNet "
        "beside them; the new photos are the Houses dataset's frontal photos",
        "course_projects/weather", (("leaderboard.csv", "classification"),),
        f"{_RUN} --dataset weather-mwd --data-dir ../shared/datasets/weather-mwd "
        "--backbones efficientnet_b0,densenet121,mobilenet_v2 --only 01,03,05,06 "
        "--images-dir '../shared/datasets/houses/Houses Dataset' --images-glob '*_frontal.jpg' "
        "--image-size 128 --run-id weather-cpu",
        "cnnlab run --dataset weather --profile gpu --backbones efficientnet_b0,densenet121",
        classes=4),
    CourseProject(
        "airbnb", "House and Airbnb prices (mixed data)",
        "Airbnb Madrid listings (OpenDataSoft export, 2017) with their photos, which are gone",
        "an MLP on the columns, a CNN and VGG16 on the photos, and a fused image + tabular model",
        "MLP R² 0.69, with the weekly and monthly price columns (near-copies of the target) "
        "kept",
        "the course's own 1,000 listings as CSVs (../shared/datasets/airbnb-madrid) and, for the "
        "photos, the Houses dataset (Ahmed & Moustafa 2016): 535 houses, 4 photos each",
        "house prices stand in for the listings whose photos are gone; the leaking columns are "
        "dropped (the course recipe is scored beside)", "results",
        (("07_metrics.csv", "regression"), ("07_airbnb_metrics.csv", "regression")),
        f"{_RUN} --only 07 --mixed-data-dir ../shared/datasets/houses "
        "--airbnb-data-dir ../shared/datasets/airbnb-madrid",
        "cnnlab run --only 07 --mixed-dataset houses",
        figures=("figures/07_predicted_vs_actual.png",)),
)}


def publish_course_run(key: str, run_id: str, dirs: ProjectDirs | None = None) -> list[Path]:
    """Copies a course project's finished run to ``docs/course_projects/<key>/``.

    The run's leaderboard (``reports/<run_id>/leaderboard.csv``), the figures of
    :data:`COURSE_FIGURES` it drew and ``run.json`` (run id, hardware, parameters) are written,
    each to a temporary name and then renamed.

    Args:
        key: A project of :data:`COURSE_PROJECTS` published under ``course_projects/``.
        run_id: Its ``cnnlab run --run-id``.
        dirs: Project folders.

    Returns:
        The files written.

    Raises:
        KeyError: If ``key`` is not such a project.
        FileNotFoundError: If the run or its leaderboard is missing (the message names the
            command that makes it).
        ValueError: If ``scripts/check_notebooks.py`` would fail on the run's notebooks.
    """
    import nbformat

    from cnnlab.notebooks import check_notebooks
    from cnnlab.results import _copy

    project = COURSE_PROJECTS.get(key)
    if project is None or project.results != f"course_projects/{key}":
        published = [k for k, p in COURSE_PROJECTS.items()
                     if p.results == f"course_projects/{k}"]
        raise KeyError(f"{key!r} is not a course project published on its own; choose one of "
                       f"{published}")
    dirs = dirs or project_dirs()
    report = dirs.reports / run_id
    if not (report / "leaderboard.csv").is_file():
        raise FileNotFoundError(f"reports/{run_id}/leaderboard.csv is missing; make the run "
                                f"with: {project.command_here}")
    notebooks = sorted(report.glob("*.ipynb"))
    problems = check_notebooks(notebooks)
    if problems:
        raise ValueError("not published:\n" + "\n".join(problems))
    target = dirs.root / "docs" / project.results
    written = []
    for source in [report / "leaderboard.csv",
                   *(report / "figures" / name for name in COURSE_FIGURES)]:
        if source.is_file():
            _copy(source, target / source.name)
            written.append(target / source.name)
    metas = {p.name: nbformat.read(p, as_version=4).metadata for p in notebooks}
    given = {name: meta.get("papermill", {}).get("parameters", {}) for name, meta in metas.items()}
    last = given[notebooks[-1].name] if notebooks else {}
    facts = {"run_id": run_id,
             "hardware": (metas[notebooks[-1].name] if notebooks else {}).get(
                 "cnnlab", {}).get("hardware", "not recorded"),
             "parameters": last}
    # Notebooks re-run with other parameters (``--only``): what each was given otherwise.
    earlier = {name: {k: v for k, v in params.items() if last.get(k) != v}
               for name, params in given.items()}
    if any(earlier.values()):
        facts["other parameters of earlier notebooks"] = {k: v for k, v in earlier.items() if v}
    write_text(target / "run.json", json.dumps(facts, indent=1, default=str) + "\n")
    written.append(target / "run.json")
    return written


def _option(project: CourseProject, flag: str) -> str | None:
    """The value of ``flag`` in a project's ``command_here``, or None when it is not given."""
    import shlex

    words = shlex.split(project.command_here)
    return words[words.index(flag) + 1] if flag in words else None


def run_id_of(project: CourseProject) -> str:
    """The ``--run-id`` of a project's ``command_here``.

    Raises:
        ValueError: If the command names none.
    """
    run_id = _option(project, "--run-id")
    if run_id is None:
        raise ValueError(f"{project.key}: its command names no --run-id")
    return run_id


def run_course_project(key: str, dirs: ProjectDirs | None = None) -> list[Path]:
    """Runs a course project's ``command_here`` (``cnnlab run`` in this Python), then
    publishes it (:func:`publish_course_run`).

    Raises:
        KeyError: If ``key`` is not a project published on its own.
        subprocess.CalledProcessError: If the run fails (its output was shown).
    """
    import shlex
    import subprocess
    import sys

    project = COURSE_PROJECTS[key]
    words = shlex.split(project.command_here)
    subprocess.run([sys.executable, "-m", "cnnlab.cli", *words[1:]], check=True)
    return publish_course_run(key, run_id_of(project), dirs)


def _collapsed(row: pd.Series) -> str:
    """A leaderboard row's collapse reason ("" when the run did not collapse)."""
    reason = row.get("collapsed")
    return str(reason) if pd.notna(reason) and reason else ""


def _classification_rows(table: pd.DataFrame, link: str) -> list[str]:
    """Leaderboard rows, chosen on validation first; every number links to ``link``."""
    for column in ("val accuracy", "accuracy", "accuracy CI low", "accuracy CI high"):
        if column not in table:
            raise ValueError(f"{link} has no {column!r} column; rerun notebook 05")
    ranked = table.sort_values("val accuracy", ascending=False, kind="stable")
    lines = ["| model | starts from | val accuracy | test accuracy [95% CI] (n) | "
             "train minutes |", "|---|---|---|---|---|"]
    for _, row in ranked.iterrows():
        weights = str(row.get("weights", "")).split(" (local file")[0]
        collapsed = _collapsed(row)
        name = f"`{row['model']}`" + (f" (collapsed: {collapsed})" if collapsed else "")
        test = _interval(row["accuracy"], row["accuracy CI low"], row["accuracy CI high"])
        minutes = row.get("train minutes")
        minutes = f"[{minutes:.1f}]({link})" if pd.notna(minutes) else "–"
        lines.append(f"| {name} | {weights} | [{row['val accuracy']:.3f}]({link}) | "
                     f"[{test} (n={int(row['test images'])})]({link}) | {minutes} |")
    return lines


def _regression_rows(table: pd.DataFrame, link: str) -> list[str]:
    """Notebook 07's metrics rows, by validation MAPE where the table has it."""
    if "val MAPE %" in table:
        table = table.sort_values("val MAPE %", kind="stable")
    lines = ["| model | inputs | test MAPE % [95% CI] | R² [95% CI] | n |", "|---|---|---|---|---|"]
    for _, row in table.iterrows():
        inputs = row.get("inputs") if pd.notna(row.get("inputs")) else "–"
        mape = _interval(row["MAPE %"], row["MAPE % low"], row["MAPE % high"], 1)
        r2 = _interval(row["R2"], row["R2 low"], row["R2 high"]) if "R2" in row else "–"
        lines.append(f"| `{row['model']}` | {inputs} | [{mape}]({link}) | [{r2}]({link}) | "
                     f"{int(row['n'])} |")
    return lines


_ROWS = {"classification": _classification_rows, "regression": _regression_rows}


def course_projects_page(docs: str | os.PathLike) -> str:
    """``docs/course_projects.md``: a section per course project, the course beside ours.

    Args:
        docs: The ``docs/`` folder holding the published runs (``results/`` and
            ``course_projects/<key>/``).

    Returns:
        The page's Markdown, links relative to ``docs/``.

    Raises:
        FileNotFoundError: If a project's published table is missing (the message names the
            command that makes the run).
    """
    docs = Path(docs)
    lines = ["# The course projects, rebuilt", "",
             "Each of the five course projects cnnlab rebuilds: what the course did and "
             "reported (from its own write-up), beside what the rebuild reaches on the data "
             "here, whole test splits with 95% intervals, models ordered by validation "
             "accuracy (the test split never chose). Every number links to the file it "
             "comes from. Generated by `python scripts/course_projects.py`.", ""]
    for project in COURSE_PROJECTS.values():
        lines += [f"## {project.title}", "",
                  f"- **Course dataset:** {project.course_dataset}.",
                  f"- **The course built:** {project.course_models}.",
                  f"- **It reported:** {project.course_reported}.",
                  f"- **Here:** {project.here}.",
                  f"- **Differences:** {project.differences}.", ""]
        if project.results is None:
            lines += [f"Not run here: {project.not_run}. On a machine that reaches Kaggle:", "",
                      f"```bash\n{project.command_course}\n```", ""]
            continue
        folder = docs / project.results
        run = folder / "run.json"
        if run.is_file():
            facts = json.loads(run.read_text())
            lines += [f"Run `{facts['run_id']}` ({facts['hardware']}).", ""]
        for name, kind in project.tables:
            path = folder / name
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing; make the run with: "
                                        f"{project.command_here}")
            link = f"{project.results}/{name}"
            lines += [f"From [{name}]({link}):", "", *_ROWS[kind](pd.read_csv(path), link), ""]
        figures = list(project.figures) or [f"{project.results}/{p.name}"
                                             for p in sorted(folder.glob("*.png"))]
        for name in figures:
            if not (docs / name).is_file():
                raise FileNotFoundError(f"docs/{name} is missing; make the run with: "
                                        f"{project.command_here}")
        lines += [f"![{Path(name).stem}]({name})" for name in figures]
        lines += ["" if figures else "", "Reproduce here, then on the course's own dataset:", "",
                  f"```bash\n{project.command_here}\n{project.command_course}\n```", ""]
    lines += family_rows(docs)
    return "\n".join(lines).rstrip() + "\n"


# The five backbone families of the course projects (a model belongs to a family when its
# keras.applications constructor's name starts with it), and the from-scratch benchmark.
FAMILIES = ("InceptionV3", "VGG16", "MobileNetV3", "EfficientNet", "DenseNet")
SCRATCH_BENCHMARK = "benchmarks/scratch_recipes.json"


def _family_of(model: str) -> str | None:
    """The family of a leaderboard model name (``_scratch`` twins included), or None."""
    from cnnlab.models.backbones import BACKBONES

    spec = BACKBONES.get(model.removesuffix("_scratch"))
    return next((f for f in FAMILIES if spec and spec.application.startswith(f)), None)


def family_rows(docs: str | os.PathLike) -> list[str]:
    """The page's family section: every published test score of each of :data:`FAMILIES`.

    Rows come from the course projects' published leaderboards (chance from
    ``CourseProject.classes``) and the chosen runs of the from-scratch benchmark
    (:data:`SCRATCH_BENCHMARK`), collapsed runs left out; each number links to its file. A
    closing line names the families at 3x chance or more somewhere, and those that are not.

    Args:
        docs: The ``docs/`` folder.

    Returns:
        Markdown lines.
    """
    docs = Path(docs)
    found: dict[str, list[tuple[str, float]]] = {family: [] for family in FAMILIES}
    for project in COURSE_PROJECTS.values():
        if project.results is None or project.classes is None:
            continue
        for name, kind in project.tables:
            path = docs / project.results / name
            if kind != "classification" or not path.is_file():
                continue
            link = f"{project.results}/{name}"
            table = pd.read_csv(path)
            for _, row in table.iterrows():
                family = _family_of(row["model"])
                if family is None or _collapsed(row):
                    continue  # a collapsed run is no score of its family
                weights = str(row.get("weights", "")).split(" (")[0]
                weights = {"imagenet": "ImageNet", "none": "random init"}.get(weights.lower(),
                                                                       weights)
                test = _interval(row["accuracy"], row["accuracy CI low"],
                                 row["accuracy CI high"])
                times = row["accuracy"] * project.classes
                found[family].append((
                    f"| {family} | `{row['model']}` | {project.title} run, {project.classes} "
                    f"classes, {int(row['image size'])} px | {weights} | "
                    f"[{test} (n={int(row['test images'])})]({link}) | {times:.1f} |", times))
    benchmark = docs / SCRATCH_BENCHMARK
    runs = json.loads(benchmark.read_text())["runs"] if benchmark.is_file() else {}
    for entry in runs.values():
        family, chosen = _family_of(entry["backbone"]), entry.get("chosen")
        if family is None or not chosen:
            continue
        low, high = chosen["test_interval"]
        times = chosen["test_accuracy"] * entry["classes"]
        found[family].append((
            f"| {family} | `{entry['backbone']}` | {entry['dataset']} (from-scratch "
            f"benchmark), {entry['classes']} classes, {entry['image_size']} px | random init, "
            f"{entry['epochs']} epochs, rate {chosen['lr']:g} chosen on validation | "
            f"[{_interval(chosen['test_accuracy'], low, high)} (n={chosen['test_images']})]"
            f"({SCRATCH_BENCHMARK}) | {times:.1f} |", times))
    source = (" and the from-scratch benchmark ([scratch_recipes.md]"
              "(benchmarks/scratch_recipes.md))" if benchmark.is_file() else "")
    lines = ["## The five families, each trained", "",
             "Every published test score of the five backbone families the course projects "
             f"use (collapsed runs left out), from the runs above{source}; × chance is test "
             "accuracy times the number of classes.", "",
             "| family | model | data | starts from | test accuracy [95% CI] (n) | × chance |",
             "|---|---|---|---|---|---|"]
    for family in FAMILIES:
        lines += [line for line, _ in found[family]]
    reached = [f for f in FAMILIES if any(times >= 3 for _, times in found[f])]
    missed = [f for f in FAMILIES if f not in reached]
    lines += ["", f"At 3x chance or more on at least one dataset: {', '.join(reached) or 'none'}"
              + (f"; not yet: {', '.join(missed)}." if missed else "."), ""]
    return lines


def write_course_projects_page(dirs: ProjectDirs | None = None) -> Path:
    """Writes ``docs/course_projects.md`` (temporary name, then renamed).

    Raises:
        FileNotFoundError: As :func:`course_projects_page`.
        ValueError: If the page's assets under ``docs/course_projects/`` pass
            :data:`PAGE_ASSET_BYTES`.
    """
    dirs = dirs or project_dirs()
    docs = dirs.root / "docs"
    text = course_projects_page(docs)
    assets = sum(p.stat().st_size for p in (docs / "course_projects").rglob("*") if p.is_file())
    if assets > PAGE_ASSET_BYTES:
        raise ValueError(f"docs/course_projects/ holds {assets / 1048576:.1f} MiB, over "
                         f"{PAGE_ASSET_BYTES / 1048576:.0f} MiB: publish smaller figures")
    page = docs / "course_projects.md"
    write_text(page, text)
    return page


def section_link(key: str, page: str = "docs/course_projects.md") -> str:
    """The link to a project's section of the course-projects page (GitHub's heading anchor:
    lower case, punctuation dropped, spaces as hyphens).

    Raises:
        KeyError: If ``key`` is not in :data:`COURSE_PROJECTS`.
    """
    anchor = re.sub(r"[^\w\- ]", "", COURSE_PROJECTS[key].title.lower()).replace(" ", "-")
    return f"{page}#{anchor}"


# README's task of a main-run row, and the kind of table it comes from.
_TASK_KINDS = {"classification": "classification", "price regression": "regression"}


def link_course_projects(rows: list[dict]) -> list[dict]:
    """README's main-run rows, each whose task a course project publishes from the main run
    (cards classification, house prices) followed by a link to that project's section.

    Args:
        rows: Rows of :func:`cnnlab.results.results_rows`.

    Returns:
        New rows; ``source`` gains `` · [course project](...)`` where a project matches.
    """
    linked = []
    for row in rows:
        kind = _TASK_KINDS.get(row["task"])
        keys = [p.key for p in COURSE_PROJECTS.values()
                if p.results == "results" and kind in {k for _, k in p.tables}]
        source = row["source"] + "".join(f" · [course project]({section_link(k)})" for k in keys)
        linked.append({**row, "source": source})
    return linked


def course_project_rows(docs: str | os.PathLike) -> list[dict]:
    """README's rows for the course projects not in the main run: each published one's best
    model on validation with its test accuracy, and a row for each project not run here.

    Projects whose run is not published yet under ``docs/course_projects/<key>/`` are left out.

    Args:
        docs: The ``docs/`` folder.

    Returns:
        Rows ``dataset, task, best model, result, time, source`` (links from the root).
    """
    rows = []
    for project in COURSE_PROJECTS.values():
        link = f"[course project]({section_link(project.key)})"
        if project.results is None:
            rows.append({"dataset": project.key, "task": "not run here", "best model": "–",
                         "result": "–", "time": "", "source": link})
            continue
        if project.results == "results":
            continue
        for name, kind in project.tables:
            path = Path(docs) / project.results / name
            if kind == "classification" and path.is_file():
                rows.append(classification_row(path, _option(project, "--dataset") or project.key,
                                                link))
    return rows

