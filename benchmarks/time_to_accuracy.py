"""Time to accuracy: the plain Keras recipe against cnnlab ``fine_tune``, on real images.

For each dataset (the cards subset and the vehicles set in ../shared) and each backbone with
real ImageNet weights offline (MobileNetV3Small 0.75, MobileNetV2 1.0; ../shared/weights), in
one process:

  (a) the plain Keras recipe, about 20 lines as a keras-io example would write it:
      ``keras.utils.image_dataset_from_directory`` (over the manifest's split, linked into
      folders, so both recipes see the same images), RandomRotation(0.05), RandomZoom(0.1) and
      RandomTranslation(0.05) layers, the backbone frozen and its head trained 8 epochs at
      Adam 1e-3, then every layer but BatchNormalization 12 epochs at Adam 2e-4; validation
      after every epoch; test accuracy of the final model;
  (b) ``cnnlab.training.fine_tune`` with the default recipe and the ``cpu`` profile's epochs;
      test accuracy with the best validation checkpoint restored (as ``fine_tune`` returns it).

It prints each one's test accuracy with its 95% Wilson interval and wall time, the time (b)
needs to pass (a)'s final validation accuracy, and the ratio of that time to (a)'s. With
``--ablation DATASET:BACKBONE`` it also runs ``fine_tune`` with the recipe changed one
ingredient at a time from the plain recipe's stage 2 to the default, to show what each bought.

Results are merged into ``docs/benchmarks/time_to_accuracy.json`` (one entry per dataset and
backbone, each measured in one process; temporary name, then renamed) and rendered to
``docs/benchmarks/time_to_accuracy.md``. Runs write their files under a temporary project
folder.

Usage:
  python benchmarks/time_to_accuracy.py [--datasets cards vehicles]
      [--backbones mobilenet_v3_small_075 mobilenet_v2] [--ablation vehicles:mobilenet_v3_small_075]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cnnlab.config import get_profile, project_dirs  # noqa: E402
from cnnlab.data.datasets import get_dataset_spec, prepare_dataset
from cnnlab.data.pipeline import split_dataset
from cnnlab.evaluation.metrics import wilson_interval
from cnnlab.files import write_json, write_text
from cnnlab.models.backbones import get_backbone_spec, resolve_weights
from cnnlab.training.fine_tuning import fine_tune
from cnnlab.training.fitting import TrainingData
from cnnlab.training.recipes import RECIPES, get_recipe

SEED = 42
PLAIN = {"head_epochs": 8, "head_lr": 1e-3, "epochs": 12, "lr": 2e-4, "batch_size": 32}
DATASET_OPTIONS = {"cards": {}, "vehicles": {"classes": ["all"]}}


class EpochClock(keras.callbacks.Callback):
    """Records seconds since ``start`` and validation accuracy at the end of every epoch."""

    def __init__(self, start: float):
        super().__init__()
        self.start, self.seconds, self.val_accuracy = start, [], []

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(round(time.perf_counter() - self.start, 1))
        self.val_accuracy.append(float((logs or {}).get("val_accuracy", float("nan"))))


def _interval(correct: int, n: int) -> list[float]:
    low, high = wilson_interval(correct, n)
    return [round(low, 3), round(high, 3)]


def _link_split(rows, folder: Path) -> Path:
    """The split's files as ``folder/<class>/<n>.<ext>`` links (image_dataset_from_directory)."""
    for n, (file, label) in enumerate(zip(rows["file"], rows["label"])):
        target = folder / str(label) / f"{n:05d}{Path(file).suffix.lower()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(Path(file).resolve())
    return folder


def plain_recipe(manifest, backbone: str, weights_file: Path, image_size: int, root: Path
                 ) -> dict:
    """(a): the plain Keras recipe, timed from the first line to the last epoch."""
    keras.utils.set_random_seed(SEED)
    start = time.perf_counter()
    folders = {split: _link_split(manifest.split(split), root / "plain" / split)
               for split in ("train", "val", "test")}

    def load(split, shuffle):
        return keras.utils.image_dataset_from_directory(
            folders[split], image_size=(image_size, image_size), batch_size=PLAIN["batch_size"],
            shuffle=shuffle, seed=SEED, verbose=False).prefetch(tf.data.AUTOTUNE)

    train, val, test = load("train", True), load("val", False), load("test", False)
    spec = get_backbone_spec(backbone)
    base = spec.constructor(input_shape=(image_size, image_size, 3), include_top=False,
                            weights=None, **spec.kwargs)
    base.load_weights(weights_file)
    base.trainable = False
    augment = keras.Sequential([keras.layers.RandomRotation(0.05), keras.layers.RandomZoom(0.1),
                                keras.layers.RandomTranslation(0.05, 0.05)])
    inputs = keras.Input((image_size, image_size, 3))
    x = augment(inputs)
    if spec.preprocessing == "tf":  # mobilenet_v2.preprocess_input: x / 127.5 - 1
        x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)
    elif spec.preprocessing != "inside":
        raise ValueError(f"the plain recipe here covers 'tf' and built-in preprocessing, not "
                         f"{spec.preprocessing!r} ({backbone})")
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(len(manifest.classes), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    clock = EpochClock(start)
    model.compile(keras.optimizers.Adam(PLAIN["head_lr"]), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(train, validation_data=val, epochs=PLAIN["head_epochs"], callbacks=[clock],
              verbose=2)
    base.trainable = True
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    model.compile(keras.optimizers.Adam(PLAIN["lr"]), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(train, validation_data=val, epochs=PLAIN["head_epochs"] + PLAIN["epochs"],
              initial_epoch=PLAIN["head_epochs"], callbacks=[clock], verbose=2)
    seconds = time.perf_counter() - start
    predictions = model.predict(test, verbose=0).argmax(axis=1)
    labels = np.concatenate([y.numpy() for _, y in test])
    correct = int((predictions == labels).sum())
    return {"seconds": round(seconds, 1), "epoch_seconds": clock.seconds,
            "val_accuracy": clock.val_accuracy, "final_val_accuracy": clock.val_accuracy[-1],
            "test_accuracy": round(correct / len(labels), 4),
            "test_interval": _interval(correct, len(labels)), "test_images": len(labels),
            "settings": PLAIN}


def cnnlab_fine_tune(data: TrainingData, backbone: str, weights_dir: Path, profile, dirs,
                     recipe=None) -> dict:
    """(b): ``fine_tune`` with ``recipe`` (default: the default recipe), timed."""
    keras.utils.set_random_seed(SEED)
    start = time.perf_counter()
    clock = EpochClock(start)
    result = fine_tune(backbone, data, profile.freeze_epochs, profile.fine_tune_epochs,
                       profile.learning_rate, recipe, weights="local", weights_dir=weights_dir,
                       dirs=dirs, save=False, resume=False, callbacks=[clock])
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 1), "epoch_seconds": clock.seconds,
            "val_accuracy": clock.val_accuracy,
            "best_val_accuracy": float(max(clock.val_accuracy)),
            **score_test_split(result.model, data.manifest, data.image_size),
            "weights": result.weights,
            "settings": {"freeze_epochs": profile.freeze_epochs,
                         "fine_tune_epochs": profile.fine_tune_epochs,
                         "base_lr": profile.learning_rate,
                         "recipe": dataclasses.asdict(get_recipe(recipe))}}


def score_test_split(model, manifest, image_size: int) -> dict:
    """``test_accuracy``, its 95% Wilson ``test_interval`` and ``test_images`` on the split."""
    rows = manifest.split("test")
    predictions = model.predict(split_dataset(rows, image_size, 64), verbose=0).argmax(axis=1)
    correct = int((predictions == rows["label_index"].to_numpy()).sum())
    return {"test_accuracy": round(correct / len(rows), 4),
            "test_interval": _interval(correct, len(rows)), "test_images": len(rows)}


def seconds_to_reach(run: dict, target: float) -> float | None:
    """Seconds until ``run``'s validation accuracy first reached ``target`` (None: never)."""
    for seconds, accuracy in zip(run["epoch_seconds"], run["val_accuracy"]):
        if accuracy >= target:
            return seconds
    return None


def ablation_recipes() -> list[tuple[str, object]]:
    """The recipe changed one ingredient at a time, from the plain stage 2 to the default."""
    default, plain = RECIPES["default"], RECIPES["plain"]
    steps = [("plain stage 2 (all but BN, Adam 2e-4 constant)", plain)]
    current = plain.replace(name="ablation-1", schedule=default.schedule,
                            warmup=default.warmup)
    steps.append(("+ warm-up and cosine decay", current))
    current = current.replace(name="ablation-2", lr_scale=default.lr_scale,
                              lr_mult=default.lr_mult, groups=default.groups)
    steps.append(("+ discriminative rates (higher head rate)", current))
    current = current.replace(name="ablation-3", optimizer=default.optimizer,
                              weight_decay=default.weight_decay)
    steps.append(("+ AdamW weight decay", current))
    steps.append(("+ label smoothing (the default recipe)", default))
    steps.append(("top blocks only, one lower rate (the previous default)", RECIPES["top"]))
    return steps


def _print(label: str, run: dict) -> None:
    low, high = run["test_interval"]
    print(f"{label}: test {run['test_accuracy']:.3f} [{low:.3f}, {high:.3f}] "
          f"(n={run['test_images']}), {run['seconds']:.0f} s")


def render_markdown(report: dict) -> str:
    """The JSON report as the markdown tables of docs/benchmarks/time_to_accuracy.md."""
    lines = ["# Time to accuracy: plain Keras recipe vs cnnlab `fine_tune`", "",
             "Generated by `python benchmarks/time_to_accuracy.py` from "
             "[time_to_accuracy.json](time_to_accuracy.json); do not edit by hand. Each row "
             "was measured in one process, on the machine and at the load recorded in the "
             "JSON. Test accuracy on the whole test split with a 95% Wilson interval.", "",
             "| dataset | backbone | px | (a) plain Keras: test [95% CI] | (a) s | "
             "(b) fine_tune: test [95% CI] | (b) s | (b) reaches (a)'s final val acc after | "
             "ratio to (a)'s time | measured |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(report.get("runs", {})):
        run = report["runs"][key]
        a, b = run["plain"], run["fine_tune"]
        reach = run["seconds_to_target"]
        reached = "never" if reach is None else f"{reach:.0f} s"
        ratio = "" if reach is None else f"{reach / a['seconds']:.2f}"
        lines.append(
            f"| {run['dataset']} | {run['backbone']} | {run['image_size']} | "
            f"{a['test_accuracy']:.3f} [{a['test_interval'][0]:.3f}, {a['test_interval'][1]:.3f}]"
            f" | {a['seconds']:.0f} | {b['test_accuracy']:.3f} [{b['test_interval'][0]:.3f}, "
            f"{b['test_interval'][1]:.3f}] | {b['seconds']:.0f} | "
            f"{reached} | {ratio} | {run['measured']} |")
    for key in sorted(report.get("ablations", {})):
        ablation = report["ablations"][key]
        epochs = (f"{ablation['freeze_epochs']} head epochs on cached features, then "
                  f"{ablation['fine_tune_epochs']} stage-2 epochs" if "freeze_epochs" in ablation
                  else "the same epochs")
        lines += ["", f"## Ablation: {ablation['dataset']}, {ablation['backbone']}, "
                  f"{ablation['image_size']} px ({ablation['measured']})", "",
                  "One change at a time, each row adding to the one above it (the last row "
                  f"is the previous default, for comparison). Every row: {epochs}, same "
                  "seed.", "",
                  "| recipe | best val accuracy | test accuracy [95% CI] | s |",
                  "|---|---|---|---|"]
        for step in ablation["steps"]:
            lines.append(f"| {step['label']} | {step['best_val_accuracy']:.3f} | "
                         f"{step['test_accuracy']:.3f} [{step['test_interval'][0]:.3f}, "
                         f"{step['test_interval'][1]:.3f}] | {step['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-dir", type=Path, default=Path("../shared"))
    parser.add_argument("--datasets", nargs="+", default=["cards", "vehicles"],
                        choices=sorted(DATASET_OPTIONS))
    parser.add_argument("--backbones", nargs="+",
                        default=["mobilenet_v3_small_075", "mobilenet_v2"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--profile", default="cpu", help="fine_tune's epochs and rates")
    parser.add_argument("--fine-tune-epochs", type=int,
                        help="override the profile's stage-2 epochs (e.g. a shorter ablation)")
    parser.add_argument("--ablation", nargs="*", default=[], metavar="DATASET:BACKBONE")
    parser.add_argument("--skip-comparison", action="store_true",
                        help="run only the ablations")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/time_to_accuracy.json"))
    args = parser.parse_args()

    weights_dir = args.shared_dir / "weights"
    profile = get_profile(args.profile, image_size=args.image_size,
                          fine_tune_epochs=args.fine_tune_epochs)
    devices = [d.device_type for d in tf.config.list_logical_devices()]
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} cores, "
          f"devices {devices}, load average {os.getloadavg()[0]:.2f}")
    report = json.loads(args.out.read_text()) if args.out.is_file() else {}
    report.setdefault("runs", {})
    report.setdefault("ablations", {})
    environment = {"tensorflow": tf.__version__, "keras": keras.__version__,
                   "cores": os.cpu_count(), "devices": devices}
    root = Path(tempfile.mkdtemp(prefix="cnnlab-tta-"))
    (root / "notebooks").mkdir()
    dirs = project_dirs(root)
    manifests = {}

    def manifest_for(name):
        if name not in manifests:
            manifests[name] = prepare_dataset(name, args.shared_dir / "datasets" / name, dirs,
                                              **DATASET_OPTIONS[name])
        return manifests[name]

    def data_for(name):
        return TrainingData(manifest_for(name), args.image_size, profile.batch_size,
                            get_dataset_spec(name).hflip, SEED, cache_dir=dirs.data / "cache")

    def weights_file(backbone):
        choice = resolve_weights(backbone, "local", weights_dir)
        if choice.path is None:
            raise FileNotFoundError(f"{backbone}: {choice.label}; the benchmark needs real "
                                    f"ImageNet weights (--shared-dir)")
        return choice.path

    def save():
        write_json(args.out, report)
        write_text(args.out.with_suffix(".md"), render_markdown(report))

    measured = time.strftime("%Y-%m-%d")
    for dataset in [] if args.skip_comparison else args.datasets:
        for backbone in args.backbones:
            load = os.getloadavg()[0]
            print(f"== {dataset}, {backbone}, {args.image_size} px")
            plain = plain_recipe(manifest_for(dataset), backbone, weights_file(backbone),
                                 args.image_size, root / f"{dataset}-{backbone}")
            _print("(a) plain Keras recipe", plain)
            ours = cnnlab_fine_tune(data_for(dataset), backbone, weights_dir, profile, dirs)
            _print("(b) cnnlab fine_tune", ours)
            target = plain["final_val_accuracy"]
            reach = seconds_to_reach(ours, target)
            print(f"(b) passes (a)'s final validation accuracy {target:.3f} after "
                  + ("never" if reach is None else
                     f"{reach:.0f} s ({reach / plain['seconds']:.2f} of (a)'s time)"))
            report["runs"][f"{dataset}:{backbone}:{args.image_size}"] = {
                "dataset": dataset, "backbone": backbone, "image_size": args.image_size,
                "train_images": len(manifest_for(dataset).split("train")),
                "plain": plain, "fine_tune": ours, "target_val_accuracy": target,
                "seconds_to_target": reach,
                "ratio_to_plain": None if reach is None else round(reach / plain["seconds"], 3),
                "measured": measured, "load_average": [load, os.getloadavg()[0]],
                **environment}
            save()
    for item in args.ablation:
        dataset, _, backbone = item.partition(":")
        print(f"== ablation: {dataset}, {backbone}, {args.image_size} px")
        load, steps = os.getloadavg()[0], []
        for label, recipe in ablation_recipes():
            run = cnnlab_fine_tune(data_for(dataset), backbone, weights_dir, profile, dirs,
                                   recipe)
            _print(label, run)
            steps.append({"label": label, **run})
        report["ablations"][f"{dataset}:{backbone}:{args.image_size}"] = {
            "dataset": dataset, "backbone": backbone, "image_size": args.image_size,
            "freeze_epochs": profile.freeze_epochs, "fine_tune_epochs": profile.fine_tune_epochs,
            "steps": steps, "measured": measured,
            "load_average": [load, os.getloadavg()[0]], **environment}
        save()
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
