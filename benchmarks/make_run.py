"""``make run`` on a fresh machine: seconds per notebook and what every model scored.

``make run`` with no arguments runs the seven notebooks on the generated ``sample`` dataset
(4 classes of shapes, with masks) under the ``quick`` profile. Its goal: finish in at most
5 minutes on 2 CPU cores with every model well above chance (0.25 for 4 classes), so a
newcomer's first run shows each stage working.

This script runs exactly that command line (``cnnlab run --dataset sample --profile quick
--weights auto``, with ``--weights-dir`` when a weights folder is given and the Houses dataset
or the generated ``sample_houses`` for notebook 07, as the Makefile does) in a fresh
temporary project folder holding only ``notebooks/`` and ``pyproject.toml``, so the sample is
generated and every model trained from nothing, as on a fresh clone. It prints and records:

- wall seconds of the whole command and of each notebook (the run's ``timings.csv``);
- test accuracy of every classifier (notebook 05's leaderboard) against chance;
- DeepLabV3+'s validation mIoU on the sample masks (notebook 04's printed summary);
- test MAPE of every price regressor on the Houses dataset (notebook 07's metrics), when
  ``CNNLAB_HOUSES_DIR`` points at it.

Results go to ``docs/benchmarks/make_run.json`` (temporary name, then renamed) and
``docs/benchmarks/make_run.md``.

Usage:
  python benchmarks/make_run.py [--weights-dir ../shared/weights]
      [--out docs/benchmarks/make_run.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from cnnlab.files import write_json, write_text
from cnnlab.notebooks import NOTEBOOKS, hardware

RUN_ID = "make-run"
GOAL_SECONDS = 300
CHANCE = 0.25  # 4 balanced sample classes
SEGMENT_SUMMARY = re.compile(r"DeepLabV3\+ on the sample masks: validation mIoU ([0-9.]+) "
                             r"over (\d+) images")


def _outputs_text(notebook: Path) -> str:
    """Every stream and text/plain output of an executed notebook, joined."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    parts = []
    for cell in cells:
        for output in cell.get("outputs", []):
            text = output.get("text") or output.get("data", {}).get("text/plain", "")
            parts.append("".join(text) if isinstance(text, list) else text)
    return "\n".join(parts)


def run_make_run(repo: Path, weights_dir: Path | None) -> dict:
    """Runs ``make run``'s command line in a fresh project folder; returns the report."""
    with tempfile.TemporaryDirectory(prefix="cnnlab-make-run-") as tmp:
        root = Path(tmp)
        shutil.copytree(repo / "notebooks", root / "notebooks",
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        shutil.copy2(repo / "pyproject.toml", root / "pyproject.toml")
        env = {k: v for k, v in os.environ.items() if k != "CNNLAB_ROOT"}
        for name, folder in (("CNNLAB_HOUSES_DIR", "houses"),  # as the Makefile exports them
                             ("CNNLAB_AIRBNB_DIR", "airbnb-madrid")):
            shared = repo.parent / "shared" / "datasets" / folder
            if not env.get(name) and shared.is_dir():
                env[name] = str(shared)
        mixed = "houses" if env.get("CNNLAB_HOUSES_DIR") else "sample_houses"
        command = [sys.executable, "-m", "cnnlab.cli", "run", "--dataset", "sample",
                   "--profile", "quick", "--run-id", RUN_ID, "--weights", "auto",
                   "--mixed-dataset", mixed]
        command += ["--weights-dir", str(weights_dir)] if weights_dir else []
        start = time.perf_counter()
        subprocess.run(command, cwd=root, env=env, check=True)
        total = time.perf_counter() - start
        report_dir = root / "reports" / RUN_ID
        timings = pd.read_csv(report_dir / "timings.csv")
        board = pd.read_csv(report_dir / "leaderboard.csv")
        summary = SEGMENT_SUMMARY.search(_outputs_text(report_dir / NOTEBOOKS[3]))
        metrics_file = report_dir / "07_metrics.csv"
        metrics = pd.read_csv(metrics_file) if metrics_file.is_file() else None
    return {
        "command": "make run  (= " + " ".join(command[3:]).replace(str(weights_dir or ""),
                                                                   "WEIGHTS_DIR") + ")",
        "mixed_dataset": mixed,
        "hardware": hardware()["description"],
        "goal_seconds": GOAL_SECONDS,
        "total_seconds": round(total, 1),
        "notebook_seconds": {r.notebook: float(r.seconds) for r in timings.itertuples()},
        "chance_accuracy": CHANCE,
        "classifiers": [
            {"model": r["model"], "test_accuracy": round(float(r["accuracy"]), 3),
             "interval": [round(float(r["accuracy CI low"]), 3),
                          round(float(r["accuracy CI high"]), 3)],
             "test_images": int(r["test images"])}
            for _, r in board.iterrows()],
        "segmentation": ({"model": "DeepLabV3+ (sample masks)",
                          "val_miou": float(summary.group(1)),
                          "val_images": int(summary.group(2))} if summary else None),
        "regression": ([{"model": r["model"], "inputs": r.get("inputs", ""),
                         "test_mape_percent": round(float(r["MAPE %"]), 1)}
                        for _, r in metrics.iterrows()] if metrics is not None else None),
    }


def render_markdown(report: dict) -> str:
    """The JSON report as docs/benchmarks/make_run.md."""
    ok = report["total_seconds"] <= report["goal_seconds"]
    lines = ["# `make run` on the generated sample", "",
             "Generated by `python benchmarks/make_run.py` from "
             "[make_run.json](make_run.json). One fresh run of "
             f"`{report['command']}` on {report['hardware']}, from an empty project folder "
             "(the sample generated, every model trained from nothing).", "",
             f"Total: **{report['total_seconds']:.0f} s** (goal at most "
             f"{report['goal_seconds']} s: {'met' if ok else 'NOT met'}).", "",
             "| notebook | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.0f} |" for name, seconds in
              report["notebook_seconds"].items()]
    lines += ["", f"Classifiers on the sample's test split (chance {report['chance_accuracy']}):",
              "", "| model | test accuracy [95% CI] | test images |", "|---|---|---|"]
    lines += [f"| `{c['model']}` | {c['test_accuracy']:.3f} [{c['interval'][0]:.3f}, "
              f"{c['interval'][1]:.3f}] | {c['test_images']} |" for c in report["classifiers"]]
    if report.get("segmentation"):
        seg = report["segmentation"]
        lines += ["", f"{seg['model']}: validation mIoU {seg['val_miou']:.3f} over "
                      f"{seg['val_images']} images."]
    if report.get("regression"):
        lines += ["", f"Price regression on {report.get('mixed_dataset', 'houses')} (test MAPE, "
                      f"lower is better):", "",
                  "| model | inputs | test MAPE % |", "|---|---|---|"]
        lines += [f"| `{r['model']}` | {r['inputs']} | {r['test_mape_percent']:.1f} |"
                  for r in report["regression"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_weights = Path("../shared/weights")
    parser.add_argument("--weights-dir", type=Path,
                        default=default_weights if default_weights.is_dir() else None)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/make_run.json"))
    args = parser.parse_args()
    repo = Path(__file__).resolve().parents[1]
    weights_dir = args.weights_dir.resolve() if args.weights_dir else None
    report = run_make_run(repo, weights_dir)
    print(render_markdown(report))
    write_json(args.out, report)
    write_text(args.out.with_suffix(".md"), render_markdown(report))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
