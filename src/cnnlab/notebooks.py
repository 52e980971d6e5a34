"""Runs the numbered notebooks in order with papermill, as ``cnnlab run`` does.

Each run writes ``reports/<run-id>/``: the executed notebooks, their figures and
``timings.csv`` (seconds per notebook). The first failing notebook stops the run with its
error and the path of the executed copy that shows where it failed.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
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

# Lines of the notebooks' output that `cnnlab run` shows by default: one per model trained
# (what it starts from, or its result), so the console reads as a progress log, and every
# announcement in capitals (``WARNING: ...``, e.g. weights that could not be downloaded).
PROGRESS_LINES = re.compile(r"^(training \S+: |\S+: weights = |\S+: \d+ epochs in |"
                            r"[\w, ]+: not trained in |Best test |WARNING: )")


class ProgressLines(logging.Filter):
    """Keeps only :data:`PROGRESS_LINES` of the cell outputs papermill logs.

    A ``WARNING:`` line is shown once per run, though every notebook that meets the same
    problem prints it in its own output.
    """

    def __init__(self):
        super().__init__()
        self.warned: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        lines = []
        for line in record.getMessage().splitlines():
            if not PROGRESS_LINES.match(line) or line in self.warned:
                continue
            if line.startswith("WARNING: "):
                self.warned.add(line)
            lines.append(line)
        if not lines:
            return False
        record.msg, record.args = "\n".join(lines), ()
        return True


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names it and the executed copy to open."""


LINKS_FOLDER = Path("data") / "links"


def _portable_path(key: str, value, root: Path):
    """A path parameter as a path relative to the project root, with no ``../`` in it.

    The kernels run in the project root. A folder inside the checkout is passed relative to
    the root (``data/cards``); one outside it (``../shared/datasets/cards``) gets a symbolic
    link ``data/links/<key>`` (``data/`` is git-ignored), which is what the notebook receives,
    so executed notebooks show neither machine paths nor ``../``. Other values pass as they
    are.

    Raises:
        FileExistsError: If ``data/links/<key>`` exists and is not a link of this project.
    """
    if value is None or not isinstance(value, (str, os.PathLike)):
        return value
    path = Path(value).expanduser()
    if not path.exists():
        return str(value)
    path = path.resolve()
    if path.is_relative_to(root.resolve()):
        return path.relative_to(root.resolve()).as_posix()
    link = root / LINKS_FOLDER / key
    if link.is_symlink():
        if link.resolve() == path:
            return (LINKS_FOLDER / key).as_posix()
        link.unlink()
    elif link.exists():
        raise FileExistsError(f"{display_path(link)} is not a link; move it away so that "
                              f"cnnlab run can link {key} there")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(path, target_is_directory=path.is_dir())
    return (LINKS_FOLDER / key).as_posix()


# What no committed notebook may contain (check_notebooks): TensorFlow's start-up lines and
# paths that only exist on the machine that ran it.
FORBIDDEN_OUTPUT = ("absl::InitializeLog", "oneDNN", "cuda drivers", "../", "/home/",
                    "/Users/", "/content/drive", "/tmp/", "XNNPACK delegate")
MAX_NOTEBOOK_BYTES = 1024 * 1024


# Words about how the project was made rather than what it shows (issue-tracker language).
PROCESS_WORDS = ("SHORT RUN", "Honest numbers", "JPEG keeps the notebook small",
                 "do not edit by hand")
# Lines of stream output one cell may show besides its progress-table rows (an epoch number
# then numbers, one row per epoch: ``callbacks.ProgressTable``), which a long training cell
# needs a row each of: its notices and table headers fit; Keras' own logs (``verbose``, a line
# per step, "Epoch 1/9") do not.
MAX_STREAM_LINES = 60
_PROGRESS_ROW = re.compile(r"\s*\d+(\s+-?\d+(\.\d+)?)+\s*")
# First names of dotted code names in markdown that refer to other libraries, and the module
# each stands for; any other dotted name is looked up in cnnlab (``training.fine_tune`` is
# ``cnnlab.training.fine_tune``).
LIBRARY_NAMES = {"keras": "keras", "tf": "tensorflow", "tensorflow": "tensorflow",
                 "np": "numpy", "numpy": "numpy", "pd": "pandas", "pandas": "pandas",
                 "sklearn": "sklearn", "plt": "matplotlib.pyplot", "matplotlib": "matplotlib",
                 "sns": "seaborn", "papermill": "papermill", "kagglehub": "kagglehub"}
# A dotted name ending in one of these is a file name (``history.csv``), not code.
FILE_SUFFIXES = {"csv", "yaml", "yml", "json", "h5", "keras", "png", "jpg", "jpeg", "md",
                 "ipynb", "txt", "py", "tflite", "toml", "npz", "zip", "gz"}
_CODE_NAME = re.compile(r"`([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?:\(\))?`")


def resolves(name: str) -> bool:
    """Whether a dotted name from notebook markdown (``training.fine_tune``,
    ``keras.applications``, ``cnnlab.data.load_image``) names something that exists.

    A first name in :data:`LIBRARY_NAMES` is looked up in that library; any other in
    ``cnnlab`` (with or without the ``cnnlab.`` prefix). File names (``args.yaml``) resolve.
    """
    import importlib

    parts = name.split(".")
    if parts[-1].lower() in FILE_SUFFIXES:
        return True
    if parts[0] in LIBRARY_NAMES:
        parts = LIBRARY_NAMES[parts[0]].split(".") + parts[1:]
    elif parts[0] != "cnnlab":
        parts = ["cnnlab", *parts]
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(found, attribute):
                return False
            found = getattr(found, attribute)
        return True
    return False


def _output_text(output) -> str:
    """What an output shows as text: a stream's text, or a result's ``text/plain``."""
    return str(output.get("text") or output.get("data", {}).get("text/plain", ""))


def _forbidden_output(path, notebook) -> list[str]:
    problems = []
    for cell in notebook.cells:
        texts = []
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            texts.append(("injected parameters", cell.source))
        for output in cell.get("outputs", []):
            texts.append((f"output of cell {cell.get('execution_count')}", _output_text(output)))
        for where, text in texts:
            for needle in FORBIDDEN_OUTPUT:
                if needle in text:
                    line = next(x for x in text.splitlines() if needle in x)
                    problems.append(f"{path.name}: {where} contains {needle!r}: "
                                    f"{line.strip()[:120]}")
    return problems


def _size(path, notebook) -> list[str]:
    size = path.stat().st_size
    if size > MAX_NOTEBOOK_BYTES:
        return [f"{path.name}: {size / 1048576:.2f} MiB, over 1 MiB (store photo grids as JPEG, "
                f"plots.jpeg_image)"]
    return []


def _markdown_names(path, notebook) -> list[str]:
    problems = []
    for number, cell in enumerate(notebook.cells):
        if cell.cell_type != "markdown":
            continue
        for name in dict.fromkeys(_CODE_NAME.findall(cell.source)):
            if not resolves(name):
                problems.append(f"{path.name}: markdown cell {number} names `{name}`, which does "
                                f"not exist (rename it to the current module or function)")
    return problems


def _stream_lines(path, notebook) -> list[str]:
    problems = []
    for cell in notebook.cells:
        lines = [line for output in cell.get("outputs", [])
                 if output.get("output_type") == "stream"
                 for line in output.get("text", "").splitlines()]
        other = sum(not _PROGRESS_ROW.fullmatch(line) for line in lines)
        if other > MAX_STREAM_LINES:
            problems.append(f"{path.name}: cell {cell.get('execution_count')} prints {other} "
                            f"lines besides progress-table rows (over {MAX_STREAM_LINES}): show "
                            f"a progress table, full logs only with verbose")
    return problems


def _process_words(path, notebook) -> list[str]:
    problems = []
    for cell in notebook.cells:
        text = "\n".join([cell.source] + [_output_text(output)
                                          for output in cell.get("outputs", [])]).lower()
        for words in PROCESS_WORDS:
            if words.lower() in text:
                where = (f"cell {cell.execution_count}" if cell.cell_type == "code"
                         else "a markdown cell")
                problems.append(f"{path.name}: {where} says {words!r}: say what the reader "
                                f"sees instead")
    return problems


def _epoch_ticks(path, notebook) -> list[str]:
    problems = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            facts = output.get("metadata", {}).get("cnnlab", {})
            ticks = facts.get("epoch_ticks", [])
            if any(float(t) != int(t) for t in ticks):
                problems.append(f"{path.name}: a figure of cell {cell.get('execution_count')} "
                                f"has epoch ticks {ticks}: epochs are whole numbers "
                                f"(matplotlib.ticker.MaxNLocator(integer=True))")
    return problems


# Each check reads one notebook and returns its problems; ``check_notebooks`` runs them all.
NOTEBOOK_CHECKS = {
    "forbidden_output": _forbidden_output,
    "size": _size,
    "markdown_names": _markdown_names,
    "stream_lines": _stream_lines,
    "process_words": _process_words,
    "epoch_ticks": _epoch_ticks,
}


def _one_run_id(notebooks: dict) -> list[str]:
    run_ids = {name: nb.metadata.get("papermill", {}).get("parameters", {}).get("run_id")
               for name, nb in notebooks.items()}
    if len(set(run_ids.values())) > 1:
        listed = ", ".join(f"{name}: {rid}" for name, rid in sorted(run_ids.items()))
        return [f"the notebooks come from different runs ({listed}); commit one cnnlab run's "
                f"notebooks"]
    return []


def _in_order(notebooks: dict) -> list[str]:
    """Each notebook started after the one before it ended (papermill's start and end times):
    one run executes them in order, so a notebook re-run on its own shows up out of order."""
    from datetime import datetime

    def time(notebook, key):
        value = notebook.metadata.get("papermill", {}).get(key)
        return datetime.fromisoformat(value) if value else None

    problems = []
    names = sorted(notebooks)
    for before, after in zip(names, names[1:]):
        ended, started = time(notebooks[before], "end_time"), time(notebooks[after], "start_time")
        if ended and started and started < ended:
            later = before if started < time(notebooks[before], "start_time") else after
            problems.append(f"{after} started before {before} ended: {later} was executed "
                            f"again on its own; rerun the notebooks in one cnnlab run")
    return problems


# Checks across the notebooks of a run, by name like NOTEBOOK_CHECKS.
RUN_CHECKS = {"run_id": _one_run_id, "run_order": _in_order}


def check_notebooks(paths, checks: Iterable[str] | None = None) -> list[str]:
    """Problems that keep executed notebooks from being committed; empty when there are none.

    Checks (:data:`NOTEBOOK_CHECKS`), for each notebook: outputs and injected parameters free
    of :data:`FORBIDDEN_OUTPUT` (TensorFlow start-up lines, ``../`` and machine paths); the
    file under 1 MiB; every dotted code name in markdown resolving (:func:`resolves`); no cell
    printing more than :data:`MAX_STREAM_LINES` lines besides its progress-table rows; none
    of :data:`PROCESS_WORDS`; whole numbers on every epoch axis (the figure facts of
    ``plots.show_figure_facts``). Across them (:data:`RUN_CHECKS`): one papermill run id, and
    executed in order, each notebook started after the one before it ended (none re-run on its own).

    Args:
        paths: Executed ``.ipynb`` files (e.g. ``notebooks/*.ipynb``).
        checks: Names of :data:`NOTEBOOK_CHECKS` and :data:`RUN_CHECKS` to run (default:
            all).

    Returns:
        One line per problem, naming the notebook and what was found.

    Raises:
        KeyError: If a check name is unknown.
    """
    import nbformat

    names = list(checks or [*NOTEBOOK_CHECKS, *RUN_CHECKS])
    unknown = [name for name in names if name not in NOTEBOOK_CHECKS and name not in RUN_CHECKS]
    if unknown:
        raise KeyError(f"unknown notebook checks {unknown}; choose from "
                       f"{[*NOTEBOOK_CHECKS, *RUN_CHECKS]}")
    problems, notebooks = [], {}
    for path in map(Path, paths):
        notebook = nbformat.read(path, as_version=4)
        notebooks[path.name] = notebook
        for name in names:
            if name in NOTEBOOK_CHECKS:
                problems += NOTEBOOK_CHECKS[name](path, notebook)
    for name in names:
        if name in RUN_CHECKS:
            problems += RUN_CHECKS[name](notebooks)
    return problems


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


def hardware() -> dict:
    """What the kernels run on: ``{"accelerator": "GPU" or None, "description": ...}``.

    Looked up without TensorFlow: ``nvidia-smi -L`` for NVIDIA GPUs, else the CPU cores.
    """
    import platform
    import shutil
    import subprocess

    if shutil.which("nvidia-smi"):
        try:
            listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                    timeout=10).stdout.strip().splitlines()
        except (OSError, subprocess.SubprocessError):
            listed = []
        gpus = [line.split(":", 1)[1].split("(")[0].strip() for line in listed if ":" in line]
        if gpus:
            return {"accelerator": "GPU", "description": f"{len(gpus)} x {gpus[0]}"}
    return {"accelerator": None,
            "description": f"CPU only: {os.cpu_count()} cores ({platform.machine()})"}


def _portable_metadata(path: Path, input_path: str, output_path: str,
                       machine: dict | None = None) -> None:
    """Replaces papermill's absolute input/output paths with paths relative to the root,
    strips TensorFlow's start-up lines from the outputs and records the hardware of the run.

    The notebooks in ``notebooks/`` carry Colab's ``accelerator: GPU`` (Colab opens them on a
    GPU runtime); an executed copy says what it actually ran on instead: the key is kept for
    a GPU run and removed for a CPU one, and ``metadata.cnnlab.hardware`` describes it.
    """
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    strip_startup_logs(notebook)
    meta = notebook.metadata.get("papermill", {})
    meta.update(input_path=input_path, output_path=output_path)
    machine = machine or hardware()
    if machine["accelerator"]:
        notebook.metadata["accelerator"] = machine["accelerator"]
    else:
        notebook.metadata.pop("accelerator", None)
    notebook.metadata["cnnlab"] = {"hardware": machine["description"]}
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
            Values that are existing paths are passed relative to the project root, where
            the kernels run (folders outside it through links in ``data/links/``).
        run_id: Name of the report folder (default: ``<dataset>-<profile>-<timestamp>``).
        only: Run only these notebooks (names or two-digit prefixes such as ``"01"``).
        dirs: Project folders.
        log_output: Stream cell outputs (epoch lines, model names) to the console.

    Returns:
        Seconds per notebook, also written to ``reports/<run-id>/timings.csv`` (with ``only``,
        the rows of notebooks not rerun are kept from that file); ``attrs["report"]`` is the
        run's folder.

    Raises:
        NotebookFailed: At the first notebook that raises.
    """
    import papermill
    from traitlets.config import Config

    # IPC sockets between papermill and the kernel: nothing on the network, and no kernel
    # warning about unencrypted TCP on every start (TCP stays the transport on Windows).
    config = Config()
    sockets = None
    if os.name != "nt":
        config.KernelManager.transport = "ipc"
        # The socket files (kernel-ipc-1..5) in a private folder, not in the current one,
        # where a killed kernel would leave them.
        sockets = Path(tempfile.mkdtemp(prefix="cnnlab-kernel-"))
        config.KernelManager.ip = str(sockets / "kernel-ipc")
    # A kernel that is slow to exit on a busy machine is interrupted after jupyter_client's
    # default 5 s ("KeyboardInterrupt caught in kernel" on the console); give it longer.
    config.KernelManager.shutdown_wait_time = 30.0
    dirs = dirs or project_dirs()
    notebooks_dir = dirs.root / "notebooks"
    run_id = run_id or "-".join(
        [str(parameters.get("dataset", "run")), str(parameters.get("profile", "")),
         time.strftime("%Y%m%d-%H%M%S")])
    out_dir = dirs.reports / run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {k: _portable_path(k, v, dirs.root) for k, v in parameters.items()}
    for name in PATH_VARIABLES:  # relative paths would depend on the kernel's folder
        if os.environ.get(name):
            os.environ[name] = str(Path(os.environ[name]).expanduser().resolve())
    # The environment's programs (tensorboard for notebook 03's %tensorboard) on the kernels'
    # PATH, also when cnnlab was started by path (.venv/bin/cnnlab) without activating it.
    programs = str(Path(sys.executable).parent)
    if programs not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join(filter(None, [programs, os.environ.get("PATH")]))
    params["run_id"] = run_id
    machine = hardware()
    selected = [n for n in NOTEBOOKS if not only or any(n.startswith(o) or n == o for o in only)]
    timings = []
    try:
        for index, name in enumerate(selected, start=1):
            source = notebooks_dir / name
            if not source.is_file():
                raise FileNotFoundError(f"{display_path(source)} is missing from the checkout")
            target = out_dir / name
            print(f"[{index}/{len(selected)}] {name} -> {display_path(target)}", flush=True)
            start = time.perf_counter()
            try:
                papermill.execute_notebook(
                    str(source), str(target), parameters=params, cwd=str(dirs.root),
                    kernel_name="python3", log_output=log_output, progress_bar=False,
                    config=config)
            except papermill.PapermillExecutionError as error:
                raise NotebookFailed(
                    f"{name} failed in cell {error.exec_count}: {error.ename}: {error.evalue}\n"
                    f"open {display_path(target)} to see the failing cell") from None
            seconds = time.perf_counter() - start
            _portable_metadata(target, f"notebooks/{name}", f"reports/{run_id}/{name}", machine)
            timings.append({"notebook": name, "seconds": round(seconds, 1)})
            print(f"[{index}/{len(selected)}] {name} done in {seconds:.0f} s", flush=True)
    finally:
        if sockets is not None:
            shutil.rmtree(sockets, ignore_errors=True)
    table = pd.DataFrame(timings)
    previous = out_dir / "timings.csv"
    if only and previous.is_file():  # a rerun of some notebooks keeps the others' seconds
        kept = pd.read_csv(previous)
        kept = kept[~kept["notebook"].isin(table["notebook"]) & kept["notebook"].isin(NOTEBOOKS)]
        table = pd.concat([kept, table], ignore_index=True)
        table = table.sort_values("notebook", key=lambda c: c.map(NOTEBOOKS.index),
                                  ignore_index=True)
    with atomic_path(out_dir / "timings.csv") as tmp:
        table.to_csv(tmp, index=False)
    table.attrs["report"] = out_dir
    return table


def report_dir(dataset: str, run_id: str | None = None, dirs: ProjectDirs | None = None) -> Path:
    """``reports/<run-id>/`` (or ``reports/<dataset>/`` outside ``cnnlab run``), created."""
    folder = (dirs or project_dirs()).reports / (run_id or dataset)
    (folder / "figures").mkdir(parents=True, exist_ok=True)
    return folder
