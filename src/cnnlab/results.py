"""A run's results, published: its notebooks, tables and figures, and README's results table.

``cnnlab run`` writes everything under ``reports/<run-id>/`` (git-ignored). :func:`publish_run`
turns one such run into what is committed, so README, docs/ and the notebooks cannot disagree:

- the seven executed notebooks are copied to ``notebooks/`` (after :func:`check_notebooks`
  found nothing wrong with them);
- the run's tables go to ``docs/results/`` (leaderboard, classification agreement, mixed
  data metrics, seconds per notebook) and the figures README and docs show to
  ``docs/figures/``;
- ``docs/results.md`` is generated from those tables, and README's results table (between
  ``<!-- results:start -->`` and ``<!-- results:end -->``) is rewritten from them, every
  number linked to the notebook or file it comes from; the run time column of README's
  notebook table is filled from the run's ``timings.csv``.

Nothing is typed by hand: a number that is not in the run's files is not shown.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path

import pandas as pd

from cnnlab.config import ProjectDirs, project_dirs
from cnnlab.files import atomic_path, write_text
from cnnlab.notebooks import NOTEBOOKS, check_notebooks

START, END = "<!-- results:start -->", "<!-- results:end -->"
# Tables of a run that are committed, and the figures README and docs show.
TABLES = ("leaderboard.csv", "leaderboard.md", "07_metrics.csv", "07_airbnb_metrics.csv",
          "timings.csv")
FIGURES = ("05_accuracy_vs_latency.png", "05_confused_block.png", "03_val_accuracy.png",
           "04_segmentation.png", "07_predicted_vs_actual.png")
README_FIGURE = "05_accuracy_vs_latency.png"


def _interval(value: float, low: float, high: float, digits: int = 3) -> str:
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def results_rows(results: Path, run_id: str, meta: dict) -> list[dict]:
    """README's results rows from a run's tables (at most six), each model chosen on validation.

    The classifier is the leaderboard's best ``val accuracy`` and the price regressor the
    lowest ``val MAPE %``; their test scores are reported, never used to choose.

    Args:
        results: ``docs/results/`` holding the run's tables.
        run_id: The run's id.
        meta: ``{"dataset": ..., "segment_dataset": ..., "mixed_dataset": ...}``.

    Returns:
        Rows ``dataset, task, best model, result, time, source`` (Markdown links relative to
        the repository root).
    """
    rows = []
    board_file = results / "leaderboard.csv"
    if board_file.is_file():
        rows.append(classification_row(board_file, meta.get("dataset", "?"),
                                        "[notebook 05](notebooks/05_evaluation.ipynb)"))
    agreements = {path.stem.removeprefix("04_agreement_"): pd.read_csv(path, index_col=0)
                  for path in sorted(results.glob("04_agreement_*.csv"))}
    agreements = {name: table.loc["all"] for name, table in agreements.items()
                  if "all" in table.index}
    if agreements:  # the backend whose largest segment matches the folder's class most often
        name, row = max(agreements.items(), key=lambda item: item[1]["share"])
        share = _interval(row["share"], row["CI low"], row["CI high"])  # agreement_table's
        rows.append({
            "dataset": meta.get("segment_dataset") or meta.get("dataset", "?"),
            "task": "segmentation (DeepLabV3 vs folder label)",
            "best model": f"`{name}`",
            "result": f"agreement {share} ({int(row['agree'])} of {int(row['images'])} images)",
            "time": "", "source": "[notebook 04](notebooks/04_segmentation.ipynb)"})
    metrics_file = results / "07_metrics.csv"
    if metrics_file.is_file():
        metrics = pd.read_csv(metrics_file, index_col="model")
        if "val MAPE %" not in metrics:
            raise ValueError(f"{metrics_file} has no 'val MAPE %' column: the best model is "
                             f"chosen on validation; rerun notebook 07")
        best = metrics["val MAPE %"].idxmin()
        row = metrics.loc[best]
        rows.append({
            "dataset": meta.get("mixed_dataset", "houses"), "task": "price regression",
            "best model": f"`{best}` ({row['inputs']}; val MAPE {row['val MAPE %']:.1f} %)",
            "result": "test MAPE " + _interval(row["MAPE %"], row["MAPE % low"],
                                               row["MAPE % high"], 1) + " %",
            "time": f"{row['seconds']:.0f} s training",
            "source": "[notebook 07](notebooks/07_mixed_data_regression.ipynb)"})
    return rows[:6]


def classification_row(board_file: Path, dataset: str, source: str) -> dict:
    """README's row for a leaderboard: the model with the best validation accuracy among those
    that did not collapse, with its test accuracy (reported, never used to choose).

    Args:
        board_file: A leaderboard CSV written by notebook 05.
        dataset: The dataset's name for the row.
        source: Markdown link to where the numbers come from.

    Returns:
        A row ``dataset, task, best model, result, time, source``.

    Raises:
        ValueError: If the leaderboard has no ``val accuracy`` column, or every model collapsed.
    """
    board = pd.read_csv(board_file)
    if "val accuracy" not in board:
        raise ValueError(f"{board_file} has no 'val accuracy' column: the best model is "
                         f"chosen on validation; rerun notebook 05")
    ranked = board[board["collapsed"].fillna("") == ""] if "collapsed" in board else board
    if ranked.empty:
        raise ValueError(f"every model in {board_file} collapsed: nothing to report")
    top = ranked.loc[ranked["val accuracy"].idxmax()]
    minutes = top.get("train minutes")
    return {"dataset": dataset, "task": "classification",
            "best model": f"`{top['model']}` (val accuracy {top['val accuracy']:.3f})",
            "result": "test accuracy " + _interval(top["accuracy"], top["accuracy CI low"],
                                                   top["accuracy CI high"])
                      + f" (n={int(top['test images'])})",
            "time": f"{minutes:.1f} min training" if pd.notna(minutes) else "",
            "source": source}


def run_summary(report: str | os.PathLike, parameters: dict | None = None) -> str:
    """What a ``cnnlab run`` learned, as the console lines that close it.

    Per task, the model chosen on validation with its test score and interval (the rows of
    :func:`results_rows`, read from the run's tables), then where the notebooks and figures
    are. Tasks whose tables the run did not write are left out.

    Args:
        report: The run's folder ``reports/<run-id>/``.
        parameters: The run's parameters (``dataset``, ``segment_dataset``, ``mixed_dataset``).

    Returns:
        Text of a few lines.
    """
    from cnnlab.config import display_path

    report = Path(report)
    lines = ["Results (models chosen on validation; test scores with 95% intervals):"]
    for row in results_rows(report, report.name, parameters or {}):
        time = f"; {row['time']}" if row["time"] else ""
        lines.append(f"  {row['task']} ({row['dataset']}): {row['best model'].replace('`', '')}"
                     f": {row['result']}{time}")
    if len(lines) == 1:
        lines.append("  no result tables in this run (notebooks 04, 05 and 07 write them)")
    lines.append(f"Notebooks: {display_path(report)}/*.ipynb; figures: "
                 f"{display_path(report / 'figures')}/")
    return "\n".join(lines)


def results_markdown(rows: list[dict], run_id: str, hardware: str,
                     dataset: str = "the dataset") -> str:
    """README's results block: the table, the run it comes from and its one figure."""
    header = ("| dataset | task | best model (chosen on validation) | result [95% CI] | time | "
              "from |")
    lines = [START, "", header, "|---|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['task']} | {r['best model']} | {r['result']} | "
              f"{r['time']} | {r['source']} |" for r in rows]
    course = any(r["source"].startswith("[course project]") for r in rows)
    lines += ["", f"The rows from notebooks: `cnnlab run --run-id {run_id}` ({hardware}); every "
              f"table of the run is in [docs/results.md](docs/results.md)."
              + (" The other rows: each course project's own run, on "
                 "[docs/course_projects.md](docs/course_projects.md)." if course else ""), "",
              f"![Test accuracy against latency per image, notebook 05](docs/figures/"
              f"{README_FIGURE})", "",
              f"Test accuracy against batch-1 latency of every model that "
              f"[notebook 05](notebooks/05_evaluation.ipynb) scored on {dataset}; filled "
              f"points are the Pareto front. The one-call `fine_tune` against a plain Keras "
              f"recipe on the same images over 3 seeds, with the paired difference: "
              f"[time to accuracy](docs/benchmarks/time_to_accuracy.md).", END]
    return "\n".join(lines)


def _results_page(results: Path, run_id: str, hardware: str) -> str:
    parts = [f"# Results of run `{run_id}`", "",
             f"Generated by `python scripts/publish_run.py {run_id}` from the run's files "
             f"({hardware}).", ""]
    for name, title in (("leaderboard.md", "Leaderboard (notebook 05)"),):
        if (results / name).is_file():
            parts += [f"## {title}", "", (results / name).read_text().strip(), ""]
    for csv, title in (("07_metrics.csv", "Mixed data, test split (notebook 07)"),
                       ("07_airbnb_metrics.csv", "Airbnb course CSVs (notebook 07)"),
                       ("timings.csv", "Seconds per notebook")):
        if (results / csv).is_file():
            table = pd.read_csv(results / csv)
            parts += [f"## {title}", "", markdown_table(table), ""]
    for agreement in sorted(results.glob("04_agreement_*.csv")):
        table = pd.read_csv(agreement)
        parts += [f"## Classification agreement, {agreement.stem.removeprefix('04_agreement_')} "
                  f"(notebook 04)", "", markdown_table(table), ""]
    return "\n".join(parts)


def _cell(value) -> str:
    """A table cell: missing values as "–", whole numbers with thousands separators (never
    ``2.28016e+06``), other numbers to 3 decimals."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if float(value).is_integer() and abs(value) >= 1000:
            return f"{int(value):,}"
        if isinstance(value, float):
            return f"{round(value, 3) + 0.0:.3f}".rstrip("0").rstrip(".")  # + 0.0: no "-0"
        return str(value)
    return str(value)


def markdown_table(table: pd.DataFrame) -> str:
    """``table`` as a Markdown table with readable cells (see :func:`_cell`).

    Args:
        table: Any frame; its index is left out.

    Returns:
        The Markdown text (``DataFrame.to_markdown`` of the formatted cells).
    """
    return table.map(_cell).to_markdown(index=False)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def fill_notebook_times(text: str, timings: pd.DataFrame) -> str:
    """README's notebook table with each row's last cell set to the run's seconds.

    A row is a table line whose first cell links ``notebooks/<name>``; its last cell becomes
    ``[<time>](notebooks/<name>)`` from ``timings`` (columns ``notebook, seconds``). Rows of
    notebooks the run did not time are left as they are.
    """
    seconds = dict(zip(timings["notebook"], timings["seconds"]))
    lines = []
    for line in text.split("\n"):
        match = re.match(r"\| \[[^\]]+\]\(notebooks/([^)]+\.ipynb)\) \|", line)
        if match and match.group(1) in seconds and line.rstrip().endswith("|"):
            name = match.group(1)
            cells = line.rstrip().rstrip("|").split(" | ")
            cells[-1] = f"[{_duration(float(seconds[name]))}](notebooks/{name})"
            line = " | ".join(cells) + " |"
        lines.append(line)
    return "\n".join(lines)


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def publish_run(run_id: str, dirs: ProjectDirs | None = None, readme: Path | None = None
                ) -> list[Path]:
    """Publishes ``reports/<run_id>/``: notebooks, tables, figures, docs/results.md, README.

    Args:
        run_id: A finished ``cnnlab run`` of all seven notebooks.
        dirs: Project folders.
        readme: README to update (default: ``README.md`` at the root); it must hold the
            ``<!-- results:start -->`` and ``<!-- results:end -->`` markers.

    Returns:
        The files written.

    Raises:
        FileNotFoundError: If the run or one of its seven notebooks is missing.
        ValueError: If :func:`check_notebooks` finds a problem (each is listed), or the README
            has no markers.
    """
    import nbformat

    dirs = dirs or project_dirs()
    report = dirs.reports / run_id
    executed = [report / name for name in NOTEBOOKS]
    missing = [p.name for p in executed if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"reports/{run_id} lacks {', '.join(missing)}; run all seven "
                                f"notebooks with cnnlab run --run-id {run_id}")
    problems = check_notebooks(executed)
    if problems:
        raise ValueError("not published:\n" + "\n".join(problems))
    readme = readme or dirs.root / "README.md"
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:  # checked before anything is copied
        raise ValueError(f"{readme.name} has no {START} ... {END} block to fill")
    notebook = nbformat.read(executed[0], as_version=4)
    hardware = notebook.metadata.get("cnnlab", {}).get("hardware", "hardware not recorded")
    written = []
    for path in executed:
        _copy(path, dirs.root / "notebooks" / path.name)
        written.append(dirs.root / "notebooks" / path.name)
    results = dirs.root / "docs" / "results"
    for name in (*TABLES, *(p.name for p in report.glob("04_agreement_*.csv"))):
        if (report / name).is_file():
            _copy(report / name, results / name)
            written.append(results / name)
    for name in FIGURES:
        if (report / "figures" / name).is_file():
            _copy(report / "figures" / name, dirs.root / "docs" / "figures" / name)
            written.append(dirs.root / "docs" / "figures" / name)
    page = dirs.root / "docs" / "results.md"
    write_text(page, _results_page(results, run_id, hardware) + "\n")
    written.append(page)
    written.append(write_readme_results(dirs, readme))
    return written


def write_readme_results(dirs: ProjectDirs | None = None, readme: Path | None = None) -> Path:
    """Rewrites README's results block and notebook times from the committed files.

    The block (between ``<!-- results:start -->`` and ``<!-- results:end -->``) comes from
    the committed run (``notebooks/``'s parameters and hardware, ``docs/results/``) and the
    published course projects (``docs/course_projects/``), so publishing either refreshes it.

    Args:
        dirs: Project folders.
        readme: README to update (default: ``README.md`` at the root).

    Returns:
        The README's path (temporary name, then renamed).

    Raises:
        FileNotFoundError: If ``notebooks/01_download_eda.ipynb`` is missing.
        ValueError: If the README has no markers, or a table cannot choose on validation.
    """
    import nbformat

    dirs = dirs or project_dirs()
    readme = readme or dirs.root / "README.md"
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise ValueError(f"{readme.name} has no {START} ... {END} block to fill")
    notebook = nbformat.read(dirs.root / "notebooks" / NOTEBOOKS[0], as_version=4)
    parameters = notebook.metadata.get("papermill", {}).get("parameters", {})
    hardware = notebook.metadata.get("cnnlab", {}).get("hardware", "hardware not recorded")
    run_id = parameters.get("run_id") or "the committed run"
    results = dirs.root / "docs" / "results"
    from cnnlab.course_projects import course_project_rows, link_course_projects

    rows = link_course_projects(results_rows(results, run_id, parameters))
    rows += course_project_rows(dirs.root / "docs")
    block = results_markdown(rows, run_id, hardware, parameters.get("dataset", "the dataset"))
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    text = before + block + after
    if (results / "timings.csv").is_file():
        text = fill_notebook_times(text, pd.read_csv(results / "timings.csv"))
    write_text(readme, text)
    return readme


def main(argv: list[str] | None = None) -> int:
    """``python scripts/publish_run.py RUN_ID``: prints what was written, or why not."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python scripts/publish_run.py RUN_ID", file=sys.stderr)
        return 2
    try:
        written = publish_run(argv[0])
    except (FileNotFoundError, ValueError) as error:
        print(error, file=sys.stderr)
        return 1
    root = project_dirs().root
    print("\n".join(os.path.relpath(p, root) for p in written))
    return 0
