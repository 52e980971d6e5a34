"""The ``cnnlab`` command: thin wrappers over the package.

``cnnlab run`` executes the seven notebooks in order; ``cnnlab mixed MODEL`` trains one
mixed-data regression model of notebook 07 with its baselines; ``cnnlab validate DATA_DIR``
checks every file of a dataset folder (``--fix`` moves bad files to a quarantine folder);
``cnnlab manifest`` builds a dataset's split manifest; ``cnnlab list`` prints the registries.
"""

from __future__ import annotations

import argparse
import logging
import sys

# Registries only: plain data, no TensorFlow. Each command imports what it runs, so
# `cnnlab --help` and `cnnlab list` answer in well under 2 s.
from cnnlab.config import PROFILES
from cnnlab.data.datasets import DATASETS
from cnnlab.models.backbones import BACKBONES, WEIGHTS_MODES
from cnnlab.models.custom import CUSTOM_MODELS
from cnnlab.tabular.registry import MIXED_MODELS
from cnnlab.training.distribute import STRATEGIES
from cnnlab.training.recipes import RECIPES


def _message(error: Exception) -> str:
    """An exception's message; a ``KeyError``'s without the quotes ``str`` adds."""
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


def _csv(text: str | None):
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnnlab", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="execute notebooks 01-07 in order with papermill")
    run.set_defaults(func=_run)
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
    run.add_argument("--classes", help="comma-separated class folders to keep ('all': every "
                     "folder; default: the dataset's selection)")
    run.add_argument("--split-rule", choices=("stratified", "group"),
                     help="split rule when the dataset has no split folders")
    run.add_argument("--segment-dataset", help="dataset segmented in notebook 04 "
                     "(default: --dataset)")
    run.add_argument("--segment-data-dir", help="folder of images for notebook 04")
    run.add_argument("--images-dir", help="folder of photos from outside the dataset for "
                     "notebook 06 to classify")
    run.add_argument("--images-glob", default="*",
                     help="which files of --images-dir (a glob pattern, e.g. '*_frontal.jpg')")
    run.add_argument("--model-name", help="model deployed in notebook 06 (default: best)")
    run.add_argument("--mixed-dataset", default="houses",
                     choices=("houses", "sample_houses", "airbnb"),
                     help="dataset of notebook 07 (mixed data regression)")
    run.add_argument("--mixed-data-dir", help="local copy of the Houses dataset for notebook 07 "
                     "(default: download it)")
    run.add_argument("--airbnb-data-dir", help="folder of the Airbnb course CSVs for notebook "
                     "07's course comparison (default: skipped)")
    run.add_argument("--only", help="run only these notebooks, e.g. 01,02")
    run.add_argument("--run-id", help="report folder name under reports/")
    run.add_argument("--quiet", action="store_true",
                     help="one line per notebook only (default: also one per model)")
    run.add_argument("--verbose", action="store_true",
                     help="stream every line of the notebooks' output (epochs included)")
    run.add_argument("--strategy", choices=sorted(STRATEGIES),
                     help="tf.distribute strategy of notebooks 02/03 (default: the profile's)")

    validate = commands.add_parser("validate", help="check every file of a dataset folder")
    validate.set_defaults(func=_validate)
    validate.add_argument("data_dir", help="class folders, or train/valid/test of class folders")
    validate.add_argument("--fix", action="store_true",
                          help="move excluded files to a quarantine folder (never deletes)")
    validate.add_argument("--quarantine", help="quarantine folder (default DATA_DIR/.quarantine)")
    validate.add_argument("--classes", help="comma-separated class folders to check")
    validate.add_argument("--csv", help="also write the findings to this CSV file")

    manifest = commands.add_parser("manifest", help="build and save a dataset's split manifest")
    manifest.set_defaults(func=_manifest)
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

    train = commands.add_parser("train", help="train one model (resumable: run it again "
                                "after an interruption to continue)")
    train.set_defaults(func=_train)
    train.add_argument("model", help=f"custom CNN ({', '.join(CUSTOM_MODELS)}) or backbone "
                       f"({', '.join(BACKBONES)})")
    train.add_argument("--dataset", default="sample")
    train.add_argument("--data-dir", help="dataset folder (used if data/<dataset>/manifest.csv "
                       "does not exist yet)")
    train.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    train.add_argument("--set", action="append", metavar="KEY=VALUE", dest="overrides",
                       help="override a profile field, e.g. --set freeze_epochs=2 (repeatable)")
    train.add_argument("--weights", default="imagenet",
                       help=f"backbone weights: {', '.join(WEIGHTS_MODES)} or a .weights.h5 path")
    train.add_argument("--weights-dir", help="folder of <backbone>_imagenet_notop.weights.h5")
    train.add_argument("--strategy", choices=sorted(STRATEGIES),
                       help="tf.distribute strategy (default: the profile's; multiworker "
                       "reads TF_CONFIG)")
    train.add_argument("--cpu-devices", type=int,
                       help="split the CPU into N logical devices (to try --strategy mirrored)")
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--deterministic", action="store_true",
                       help="enable_op_determinism: same seed, same metrics")

    export = commands.add_parser("export", help="convert a saved model (TFLite) and compare its "
                                 "test accuracy with the Keras model")
    export.set_defaults(func=_export)
    export.add_argument("model", help="model file, or name in models/ (e.g. cards-retail_cnn)")
    export.add_argument("--format", default="tflite", choices=("tflite",))
    export.add_argument("--quantize", default="none", choices=("none", "dynamic", "int8"),
                        help="dynamic: int8 weights; int8: weights and activations, calibrated "
                        "on training images (post-training quantisation)")
    export.add_argument("--calibration-images", type=int, default=200)

    mixed = commands.add_parser("mixed", help="train one mixed-data regression model (notebook "
                                "07) with the median and gradient-boosting baselines")
    mixed.set_defaults(func=_mixed)
    mixed.add_argument("model", choices=list(MIXED_MODELS),
                       help="; ".join(f"{k}: {v[2]}" for k, v in MIXED_MODELS.items()))
    mixed.add_argument("--dataset", default="houses",
                       choices=("houses", "sample_houses", "airbnb"))
    mixed.add_argument("--data-dir", help="local copy of the data (houses: default download; "
                       "airbnb: the folder of the course CSVs)")
    mixed.add_argument("--listings-url", help="airbnb: an Inside Airbnb listings.csv.gz URL or "
                       "file; its photos are downloaded once to data/airbnb/photos/")
    mixed.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    mixed.add_argument("--weights", default="imagenet",
                       help=f"backbone weights: {', '.join(WEIGHTS_MODES)} or a .weights.h5 path")
    mixed.add_argument("--weights-dir", help="folder of <backbone>_imagenet_notop.weights.h5")
    mixed.add_argument("--seed", type=int, default=42)

    listing = commands.add_parser("list", help="print datasets, profiles, backbones, custom "
                                  "models, fine-tuning recipes and mixed-data models")
    listing.set_defaults(func=_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cnnlab`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    return args.func(args)


def _list(args) -> int:
    """``cnnlab list``: the registries, read without importing TensorFlow."""
    for title, registry in (("datasets", DATASETS), ("profiles", PROFILES),
                            ("backbones", BACKBONES), ("custom models", CUSTOM_MODELS),
                            ("fine-tuning recipes", RECIPES), ("strategies", STRATEGIES),
                            ("mixed-data models", MIXED_MODELS)):
        print(f"{title}: {', '.join(registry)}")
    return 0


def _manifest(args) -> int:
    """``cnnlab manifest``: builds and saves a dataset's split manifest."""
    from cnnlab.data.datasets import prepare_dataset

    rename = dict(pair.split("=", 1) for pair in _csv(args.rename) or [])
    try:
        manifest = prepare_dataset(args.dataset, args.data_dir, seed=args.seed,
                                   classes=_csv(args.classes), rename=rename or None,
                                   split=args.split, size=args.size)
    except (KeyError, FileNotFoundError, ValueError) as error:
        print(f"cnnlab manifest: {_message(error)}", file=sys.stderr)
        return 2
    print(manifest.counts().to_string())
    print(f"{len(manifest.frame)} images; {len(manifest.excluded)} file(s) left out "
          f"(see data/{args.dataset}/validation.csv)")
    return 0


def _run(args) -> int:
    """``cnnlab run``: executes the notebooks in order."""
    from cnnlab.notebooks import NotebookFailed, ProgressLines, run_notebooks
    from cnnlab.results import run_summary

    if not args.quiet:  # papermill streams cell outputs through its logger
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("    %(message)s"))
        if not args.verbose:  # one line per model, not every epoch
            handler.addFilter(ProgressLines())
        logger = logging.getLogger("papermill")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)

    parameters = {
        "dataset": args.dataset, "data_dir": args.data_dir, "profile": args.profile,
        "weights": args.weights, "weights_dir": args.weights_dir,
        "backbones": _csv(args.backbones), "custom_models": _csv(args.custom_models),
        "image_size": args.image_size, "classes": _csv(args.classes),
        "split_rule": args.split_rule, "segment_dataset": args.segment_dataset,
        "segment_data_dir": args.segment_data_dir, "images_dir": args.images_dir,
        "images_glob": args.images_glob,
        "model_name": args.model_name, "strategy": args.strategy,
        "mixed_dataset": args.mixed_dataset, "mixed_data_dir": args.mixed_data_dir,
        "airbnb_data_dir": args.airbnb_data_dir,
    }
    try:
        timings = run_notebooks(parameters, run_id=args.run_id, only=_csv(args.only),
                                log_output=not args.quiet)
    except (NotebookFailed, FileNotFoundError) as error:
        print(f"cnnlab run stopped: {error}", file=sys.stderr)
        return 1
    print(timings.to_string(index=False))
    print(run_summary(timings.attrs["report"], parameters))
    return 0


def _validate(args) -> int:
    """``cnnlab validate``: prints the report; exit 1 while excluded files remain in place."""
    from cnnlab.data.validate import QUARANTINE, validate_folder

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


def _train(args) -> int:
    """``cnnlab train``: one model, resumable; the same command continues a killed run."""
    import os

    from cnnlab.config import get_profile, parse_overrides, project_dirs
    from cnnlab.data.datasets import load_manifest, prepare_dataset
    from cnnlab.training import distribute
    from cnnlab.training.fine_tuning import train_transfer
    from cnnlab.training.fitting import train_custom

    if args.cpu_devices:
        os.environ[distribute.CPU_DEVICES_ENV] = str(args.cpu_devices)
    try:
        profile = get_profile(args.profile, **parse_overrides(args.overrides))
    except ValueError as error:
        print(f"cnnlab train: {error}", file=sys.stderr)
        return 2
    if args.deterministic:
        profile = profile.replace(deterministic=True)
    # Create the strategy before any other TensorFlow work (multi-worker needs it first).
    strategy = distribute.make_strategy(args.strategy or profile.strategy)
    dirs = project_dirs()
    try:
        if (dirs.data / args.dataset / "manifest.csv").is_file():
            manifest = load_manifest(args.dataset, dirs)
        else:
            manifest = prepare_dataset(args.dataset, args.data_dir, dirs, seed=args.seed)
    except (KeyError, FileNotFoundError, ValueError) as error:
        print(f"cnnlab train: {_message(error)}", file=sys.stderr)
        return 2
    if args.model in CUSTOM_MODELS:
        result = train_custom(args.model, manifest, profile, dirs, args.seed, strategy=strategy)
    elif args.model in BACKBONES:
        result = train_transfer(args.model, manifest, profile, args.weights, args.weights_dir,
                                dirs, args.seed, strategy=strategy)
    else:
        print(f"cnnlab train: unknown model {args.model!r}; choose one of "
              f"{', '.join([*CUSTOM_MODELS, *BACKBONES])}", file=sys.stderr)
        return 2
    print(result.history.to_string(index=False))
    print(f"run folder: checkpoints/{result.run.name}; best val accuracy "
          f"{result.history['val_accuracy'].max():.4f}")
    return 0


def _mixed(args) -> int:
    """``cnnlab mixed``: one model of notebook 07 (plus what it is built from) and baselines."""
    from cnnlab.tabular.metrics import format_table
    from cnnlab.tabular.training import train_mixed

    models = ("mlp", "transfer", "frozen_fusion") if args.model == "frozen_fusion" else (
        args.model,)
    try:
        run = train_mixed(args.dataset, args.data_dir, models=models, profile=args.profile,
                          weights=args.weights, weights_dir=args.weights_dir, seed=args.seed,
                          listings_url=args.listings_url)
    except (FileNotFoundError, ValueError, KeyError) as error:
        print(f"cnnlab mixed: {error}", file=sys.stderr)
        return 2
    table = format_table(run.table("test"), ("MAPE %", "MAE", "R2"))
    print(table[["MAPE %", "MAE", "R2", "inputs", "started from"]].to_string())
    return 0


def _export(args) -> int:
    """``cnnlab export``: TFLite file beside the model, accuracy vs Keras on the test split."""
    from cnnlab.deploy.export import export_deployment

    try:
        path, report = export_deployment(args.model, args.format, args.quantize,
                                         calibration_images=args.calibration_images)
    except (FileNotFoundError, ValueError) as error:
        print(f"cnnlab export: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({report['tflite_kib']} KiB)")
    print(f"test split, {report['images']} images: Keras accuracy "
          f"{report['keras_accuracy']:.4f}, TFLite ({args.quantize}) accuracy "
          f"{report['tflite_accuracy']:.4f}; same top-1 on {report['agreement']:.1%}, largest "
          f"probability difference {report['max_abs_diff']:.4f} (LiteRT {report['runtime']} "
          f"kernels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
