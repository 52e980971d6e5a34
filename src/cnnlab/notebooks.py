"""Runs the numbered notebooks in order with papermill, as ``cnnlab run`` does.

Each run writes ``reports/<run-id>/``: the executed notebooks, their figures and
``timings.csv`` (seconds per notebook). The first failing notebook stops the run with its
error and the path of the executed copy that shows where it failed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd

from cnnlab.config import ProjectDirs, display_path, project_dirs
from cnnlab.files import atomic_path
from cnnlab.startup_logs import keep_line

NOTEBOOKS = (
    "01_download_eda.ipynb",
    "02_custom_cnn.ipynb",
    "03_transfer_learning.ipynb",
    "04_segmentation.ipynb",
    "05_evaluation.ipynb",
    "06_inference.ipynb",
    "07_mixed_data_regression.ipynb",
)


# Environment variables holding paths, made absolute before the kernels start in notebooks/.
PATH_VARIABLES = ("CNNLAB_DEEPLAB_DIR", "CNNLAB_WEIGHTS_DIR", "CNNLAB_ROOT",
                  "CNNLAB_HOUSES_DIR", "CNNLAB_AIRBNB_DIR")

class NotebookFailed(RuntimeError):
    """A notebook raised; the message names it and the executed copy to open."""


def _relative_to_notebooks(value, notebooks_dir: Path):
    """Paths become relative to ``notebooks/`` so executed notebooks show no machine paths."""
    if value is None or not isinstance(value, (str, os.PathLike)):
        return value
    path = Path(value).expanduser()
    if not path.exists():
        return str(value)
    return os.path.relpath(path.resolve(), notebooks_dir)


def strip_startup_logs(notebook) -> int:
    """Removes TensorFlow's start-up lines (``startup_logs.STARTUP_LOG_LINES``) from outputs.
    Args:
        notebook: An ``nbformat`` notebook, changed in place; outputs left empty are dropped.

    Returns:
        The number of lines removed.
    """
    removed = 0
    for cell in notebook.cells:
        kept = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                lines = output["text"].splitlines(keepends=True)
                clean = [line for line in lines if keep_line(line)]
                removed += len(lines) - len(clean)
                output["text"] = "".join(clean)
                if not output["text"]:
                    continue
            kept.append(output)
        if "outputs" in cell:
            cell["outputs"] = kept
    return removed


def _portable_metadata(path: Path, input_path: str, output_path: str) -> None:
    """Replaces papermill's absolute input/output paths with paths relative to the root, and
    strips TensorFlow's start-up lines from the outputs."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    strip_startup_logs(notebook)
    meta = notebook.metadata.get("papermill", {})
    meta.update(input_path=input_path, output_path=output_path)
    with atomic_path(path) as tmp:
        nbformat.write(notebook, tmp)


def run_notebooks(
    parameters: dict,
    run_id: str | None = None,
    only: list[str] | None = None,
    dirs: ProjectDirs | None = None,
    log_output: bool = True,
) -> pd.DataFrame:
    """Executes the notebooks in ``notebooks/`` in order with papermill.

    Args:
        parameters: Values for the notebooks' ``parameters`` cells (dataset, profile, ...).
            Values that are existing paths are passed relative to ``notebooks/``.
        run_id: Name of the report folder (default: ``<dataset>-<profile>-<timestamp>``).
        only: Run only these notebooks (names or two-digit prefixes such as ``"01"``).
        dirs: Project folders.
        log_output: Stream cell outputs (epoch lines, model names) to the console.

    Returns:
        Seconds per notebook, also written to ``reports/<run-id>/timings.csv``.

    Raises:
        NotebookFailed: At the first notebook that raises.
    """
    import papermill

    dirs = dirs or project_dirs()
    notebooks_dir = dirs.root / "notebooks"
    run_id = run_id or "-".join(
        [str(parameters.get("dataset", "run")), str(parameters.get("profile", "")),
         time.strftime("%Y%m%d-%H%M%S")])
    out_dir = dirs.reports / run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {k: _relative_to_notebooks(v, notebooks_dir) for k, v in parameters.items()}
    for name in PATH_VARIABLES:  # kernels run in notebooks/: relative paths would move
        if os.environ.get(name):
            os.environ[name] = str(Path(os.environ[name]).expanduser().resolve())
    params["run_id"] = run_id
    selected = [n for n in NOTEBOOKS if not only or any(n.startswith(o) or n == o for o in only)]
    timings = []
    for index, name in enumerate(selected, start=1):
        source = notebooks_dir / name
        if not source.is_file():
            raise FileNotFoundError(f"{display_path(source)} is missing from the checkout")
        target = out_dir / name
        print(f"[{index}/{len(selected)}] {name} -> {display_path(target)}", flush=True)
        start = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(source), str(target), parameters=params, cwd=str(notebooks_dir),
                kernel_name="python3", log_output=log_output, progress_bar=False)
        except papermill.PapermillExecutionError as error:
            raise NotebookFailed(
                f"{name} failed in cell {error.exec_count}: {error.ename}: {error.evalue}\n"
                f"open {display_path(target)} to see the failing cell") from None
        seconds = time.perf_counter() - start
        _portable_metadata(target, f"notebooks/{name}", f"reports/{run_id}/{name}")
        timings.append({"notebook": name, "seconds": round(seconds, 1)})
        print(f"[{index}/{len(selected)}] {name} done in {seconds:.0f} s", flush=True)
    table = pd.DataFrame(timings)
    with atomic_path(out_dir / "timings.csv") as tmp:
        table.to_csv(tmp, index=False)
    return table


def report_dir(dataset: str, run_id: str | None = None, dirs: ProjectDirs | None = None) -> Path:
    """``reports/<run-id>/`` (or ``reports/<dataset>/`` outside ``cnnlab run``), created."""
    folder = (dirs or project_dirs()).reports / (run_id or dataset)
    (folder / "figures").mkdir(parents=True, exist_ok=True)
    return folder
