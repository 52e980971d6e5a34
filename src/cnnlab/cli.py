"""The ``cnnlab`` command: thin wrappers over the package.

``cnnlab run`` executes the six notebooks in order; ``cnnlab validate DATA_DIR`` checks every
file of a dataset folder (``--fix`` moves bad files to a quarantine folder); ``cnnlab manifest``
builds a dataset's split manifest; ``cnnlab list`` prints the registries.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cnnlab.backbones import BACKBONES, WEIGHTS_MODES
from cnnlab.config import PROFILES
from cnnlab.datasets import DATASETS
from cnnlab.models import CUSTOM_MODELS


def _csv(text: str | None):
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnnlab", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="execute notebooks 01-06 in order with papermill")
    run.add_argument("--dataset", default="sample",
                     help=f"dataset name ({', '.join(DATASETS)}; any name with --data-dir)")
    run.add_argument("--data-dir", help="local copy of the dataset (skips the download)")
    run.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    run.add_argument("--weights", default="imagenet",
                     help=f"backbone weights: {', '.join(WEIGHTS_MODES)} or a .weights.h5 path")
    run.add_argument("--weights-dir", help="folder of <backbone>_imagenet_notop.weights.h5 files "
                     "(default: $CNNLAB_WEIGHTS_DIR)")
    run.add_argument("--backbones", help=f"comma-separated, from: {', '.join(BACKBONES)}")
    run.add_argument("--custom-models", help=f"comma-separated, from: {', '.join(CUSTOM_MODELS)}")
    run.add_argument("--image-size", type=int, help="override the profile's image size")
    run.add_argument("--segment-dataset", help="dataset segmented in notebook 04 "
                     "(default: --dataset)")
    run.add_argument("--segment-data-dir", help="folder of images for notebook 04")
    run.add_argument("--images-dir", help="folder of new images for notebook 06")
    run.add_argument("--model-name", help="model deployed in notebook 06 (default: best)")
    run.add_argument("--only", help="run only these notebooks, e.g. 01,02")
    run.add_argument("--run-id", help="report folder name under reports/")
    run.add_argument("--quiet", action="store_true", help="do not stream notebook output")

    validate = commands.add_parser("validate", help="check every file of a dataset folder")
    validate.add_argument("data_dir", help="class folders, or train/valid/test of class folders")
    validate.add_argument("--fix", action="store_true",
                          help="move excluded files to a quarantine folder (never deletes)")
    validate.add_argument("--quarantine", help="quarantine folder (default DATA_DIR/.quarantine)")
    validate.add_argument("--classes", help="comma-separated class folders to check")
    validate.add_argument("--csv", help="also write the findings to this CSV file")

    manifest = commands.add_parser("manifest", help="build and save a dataset's split manifest")
    manifest.add_argument("--dataset", default="sample")
    manifest.add_argument("--data-dir")
    manifest.add_argument("--seed", type=int, default=42)
    manifest.add_argument("--classes", help="comma-separated class folders to keep ('all': every "
                          "folder; default: the dataset's selection)")
    manifest.add_argument("--rename", help="folder=class pairs, comma-separated")
    manifest.add_argument("--split", choices=("stratified", "group"),
                          help="split rule when the dataset has no split folders")
    manifest.add_argument("--size", type=int, default=224,
                          help="side in pixels of the one-off resize (RPC)")

    commands.add_parser("list", help="print datasets, profiles, backbones and custom models")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cnnlab`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "list":
        for title, registry in (("datasets", DATASETS), ("profiles", PROFILES),
                                ("backbones", BACKBONES), ("custom models", CUSTOM_MODELS)):
            print(f"{title}: {', '.join(registry)}")
        return 0
    if args.command == "validate":
        return _validate(args)
    if args.command == "manifest":
        from cnnlab.datasets import prepare_dataset

        rename = dict(pair.split("=", 1) for pair in _csv(args.rename) or [])
        manifest = prepare_dataset(args.dataset, args.data_dir, seed=args.seed,
                                   classes=_csv(args.classes), rename=rename or None,
                                   split=args.split, size=args.size)
        print(manifest.counts().to_string())
        print(f"{len(manifest.frame)} images; {len(manifest.excluded)} file(s) left out "
              f"(see data/{args.dataset}/validation.csv)")
        return 0
    from cnnlab.pipeline import NotebookFailed, run_notebooks

    if not args.quiet:  # papermill streams cell outputs through its logger
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("    %(message)s"))
        logger = logging.getLogger("papermill")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)

    parameters = {
        "dataset": args.dataset, "data_dir": args.data_dir, "profile": args.profile,
        "weights": args.weights, "weights_dir": args.weights_dir,
        "backbones": _csv(args.backbones), "custom_models": _csv(args.custom_models),
        "image_size": args.image_size, "segment_dataset": args.segment_dataset,
        "segment_data_dir": args.segment_data_dir, "images_dir": args.images_dir,
        "model_name": args.model_name,
    }
    try:
        timings = run_notebooks(parameters, run_id=args.run_id, only=_csv(args.only),
                                log_output=not args.quiet)
    except (NotebookFailed, FileNotFoundError) as error:
        print(f"cnnlab run stopped: {error}", file=sys.stderr)
        return 1
    print(timings.to_string(index=False))
    return 0


def _validate(args) -> int:
    """``cnnlab validate``: prints the report; exit 1 while excluded files remain in place."""
    from cnnlab.validate import QUARANTINE, validate_folder

    try:
        report = validate_folder(args.data_dir, _csv(args.classes))
    except (FileNotFoundError, ValueError) as error:
        print(f"cnnlab validate: {error}", file=sys.stderr)
        return 2
    print(report)
    print(report.summary().to_string(index=False))
    if args.csv:
        print(f"findings written to {report.save(args.csv)}")
    if report.excluded().empty:
        return 0
    if not args.fix:
        print(f"{len(report.excluded())} file(s) would be left out of a manifest; "
              f"--fix moves them to a quarantine folder")
        return 1
    destination = args.quarantine or report.root / QUARANTINE
    moved = report.quarantine(destination)
    print(f"moved {len(moved)} file(s) to {destination} (relative paths kept; nothing deleted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
