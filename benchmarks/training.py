"""Training throughput and time-to-accuracy, side by side on one folder of real images.

Throughput rows (images per second of training, ``--weights none``, 224 px, one run):
  (a) the course style: ImageDataGenerator.flow_from_directory + fit, batch 20, whole network
      trainable
  (b) cnnlab full fine-tune: tf.data pipeline (cnnlab.data), batch 32, every layer trainable
      except BatchNormalization, which stays in inference mode as in ``fine_tune`` (the
      Keras fine-tuning recipe; the course trained BN statistics too)
  (c) cnnlab frozen backbone, end to end on images (head trained, backbone forward only)
  (d) cnnlab head on cached backbone features (cached_features), plus the one-off extraction
with ratios to (a); (b64) repeats (b) at batch 64. ``--mixed-precision mixed_float16``
repeats (b)-(d) under that policy (on a GPU; on this CPU both mixed_float16 and
mixed_bfloat16 train slower than float32, and XLA far slower).

Time-to-accuracy (``--accuracy``, MobileNetV3Small(alpha=0.75) with the ImageNet weights file
from ``--weights-dir``), each arm once per seed (``--seeds``, at least 3 for a claim):
  (e) the course recipe: ImageDataGenerator + fit, 15 epochs x 200 steps x batch 20, whole
      network trainable, Adam 1e-3; validation after every epoch, test accuracy at the end
  (f) cnnlab ``fine_tune``: head on cached features, then every layer but BatchNorm;
      wall-clock time until it first reaches (e)'s best validation accuracy (the mean over
      the seeds of each seed's best epoch), and its test accuracy with the best checkpoint
      restored; each seed starts without cached features, so its time includes the
      extraction.
Per arm: test accuracy and seconds as mean and standard deviation over the seeds, and the
paired difference (f) - (e) in test accuracy with its 95% bootstrap interval over (seed, test
image) pairs (the same bookkeeping as ``time_to_accuracy.py``).

Usage:
  python benchmarks/training.py [--data-dir ../shared/datasets/cards] [--repeats 3] [--accuracy]
The machine's 1-minute load average (before and after each throughput run and each seed) and
the CPU other processes used during each throughput run and each arm (``with_other_work``) are
recorded next to the figures; a part where other work took over ``OTHER_WORK_LIMIT`` of the
cores is marked busy, its timings not comparable. Results go
to stdout, as JSON to docs/benchmarks/training.json (temporary name, then renamed) and as a
Markdown page beside it (docs/benchmarks/training.md).
Runs write their checkpoints and feature cache under a temporary project folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from time_to_accuracy import (  # noqa: E402  (this folder is on sys.path when run as a script)
    OTHER_WORK_LIMIT,
    SEEDS,
    _others,
    _scores,
    comparison_row,
    score_test_split,
    with_other_work,
)

from cnnlab.config import project_dirs  # noqa: E402
from cnnlab.data.datasets import prepare_dataset
from cnnlab.files import write_json, write_text
from cnnlab.models.backbones import get_backbone_spec, resolve_weights
from cnnlab.models.transfer import build_transfer_model, find_backbone
from cnnlab.notebooks import hardware
from cnnlab.training import cached_features as features  # noqa: E402
from cnnlab.training.fine_tuning import fine_tune
from cnnlab.training.fitting import TrainingData, compile_classifier, precision

IMAGE_SIZE = 224


class _StepClock(keras.callbacks.Callback):
    """Times the training batches after ``warmup`` (tracing and pipeline start excluded)."""

    def __init__(self, warmup: int):
        super().__init__()
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == self.warmup:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


def _rate(model, data, steps: int, warmup: int, batch: int) -> float:
    clock = _StepClock(warmup)
    model.fit(data, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[clock],
              shuffle=False)
    return steps * batch / (clock.end - clock.start)


def _epoch_rate(model, data, images: int, epochs: int) -> float:
    """Images per second over whole epochs (no per-batch callback: Keras then runs the steps
    without a Python round trip each, as ``fit`` does in ``fine_tune``)."""
    model.fit(data, epochs=1, verbose=0, shuffle=False)  # trace and warm up
    start = time.perf_counter()
    model.fit(data, epochs=epochs, verbose=0, shuffle=False)
    return images * epochs / (time.perf_counter() - start)


def _course_model(alpha: float, weights_file: Path | None, classes: int) -> keras.Model:
    """keras.applications.MobileNetV3Small + GAP + softmax, everything trainable (course)."""
    base = keras.applications.MobileNetV3Small(
        input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), alpha=alpha, include_top=False, weights=None)
    if weights_file is not None:
        base.load_weights(weights_file)
    x = keras.layers.GlobalAveragePooling2D()(base.output)
    outputs = keras.layers.Dense(classes, activation="softmax")(x)
    model = keras.Model(base.input, outputs)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _generator(folder: Path, batch: int, shuffle: bool = True):
    from tensorflow.keras.preprocessing.image import ImageDataGenerator  # the course recipe

    # MobileNetV3 rescales inside (include_preprocessing), so no rescale here.
    return ImageDataGenerator().flow_from_directory(
        folder, target_size=(IMAGE_SIZE, IMAGE_SIZE), batch_size=batch, class_mode="sparse",
        shuffle=shuffle)


def throughput(data_dir: Path, data: TrainingData, backbone: str, steps: int, warmup: int,
               policy: str | None, dirs) -> dict:
    """Rows (a)-(d), images per second."""
    rows = {}
    alpha = get_backbone_spec(backbone).kwargs.get("alpha", 1.0)
    if policy is None:
        model = _course_model(alpha, None, data.num_classes)
        rows["a"] = _rate(model, _generator(data_dir / "train", 20), steps, warmup, 20)
        print(f"(a) ImageDataGenerator + fit, batch 20, all trainable: {rows['a']:.1f} img/s")
    with precision(policy):
        model = build_transfer_model(backbone, data.num_classes, IMAGE_SIZE, "none")
    for layer in find_backbone(model).layers:
        # Keras 3: a BatchNormalization layer with trainable=False runs in inference mode.
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    compile_classifier(model, 1e-3)
    rows["b"] = _rate(model, data.train_ds(augment=False).repeat(), steps, warmup,
                      data.batch_size)
    print(f"(b) cnnlab tf.data, batch {data.batch_size}, all trainable but BN: "
          f"{rows['b']:.1f} img/s")
    wider = data.with_batch_size(64)
    rows["b64"] = _rate(model, wider.train_ds(augment=False).repeat(), steps // 2 + 1, warmup,
                        64)
    print(f"(b64) the same at batch 64: {rows['b64']:.1f} img/s")
    find_backbone(model).trainable = False
    compile_classifier(model, 1e-3)
    rows["c"] = _rate(model, data.train_ds(augment=False).repeat(), steps, warmup,
                      data.batch_size)
    print(f"(c) cnnlab frozen backbone, end to end: {rows['c']:.1f} img/s")
    cache = features.feature_cache(model, data.dataset, IMAGE_SIZE, dirs.data)
    start = time.perf_counter()
    x, y = cache.features("train", data.train_rows, data.batch_size)
    rows["extraction"] = len(y) / (time.perf_counter() - start)
    head = features.head_model(model)
    compile_classifier(head, 1e-3)
    batches = features.features_dataset(x, y, data.batch_size, shuffle=True)
    rows["d"] = _epoch_rate(head, batches, len(y), epochs=20)
    print(f"(d) cnnlab head on cached features: {rows['d']:.0f} img/s "
          f"(one-off extraction {rows['extraction']:.0f} img/s)")
    return rows


def course_recipe(data_dir: Path, weights_file: Path, classes: int, epochs: int,
                  steps: int, seed: int) -> dict:
    """Row (e): the course's fit, timed, with validation each epoch and test at the end.

    Returns:
        ``seconds``, per-epoch ``epoch_seconds`` and ``val_accuracy``, ``best_val_accuracy``,
        and the test split's scores with each image's correctness (``_scores``).
    """
    keras.utils.set_random_seed(seed)
    model = _course_model(0.75, weights_file, classes)
    val = _generator(data_dir / "valid", 20, shuffle=False)
    times, clock = [], time.perf_counter()
    timer = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: times.append(time.perf_counter() - clock))
    history = model.fit(_generator(data_dir / "train", 20), steps_per_epoch=steps,
                        epochs=epochs, validation_data=val, callbacks=[timer], verbose=2)
    test = _generator(data_dir / "test", 20, shuffle=False)
    predictions = model.predict(test, verbose=0).argmax(axis=1)
    val_acc = [float(v) for v in history.history["val_accuracy"]]
    return {"seconds": round(times[-1], 1), "epoch_seconds": [round(t, 1) for t in times],
            "val_accuracy": val_acc, "best_val_accuracy": max(val_acc),
            **_scores(predictions == test.classes,
                      [str(data_dir / "test" / f) for f in test.filenames]), "seed": seed}


def cnnlab_fine_tune(data: TrainingData, weights_dir: Path, freeze_epochs: int, epochs: int,
                     base_lr: float, dirs, seed: int) -> dict:
    """Row (f): fine_tune on cards, timed; the same fields as :func:`course_recipe`, with
    ``epoch_seconds`` counted from the start (feature extraction included)."""
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    result = fine_tune("mobilenet_v3_small_075", data, freeze_epochs, epochs, base_lr,
                       weights="local", weights_dir=weights_dir, dirs=dirs, save=False,
                       resume=False)
    total = time.perf_counter() - start
    history = result.history
    # Extraction time: everything not spent inside epochs (model build, cache, restore).
    overhead = total - float(history["seconds"].sum())
    elapsed = overhead + history["seconds"].cumsum()
    return {"seconds": round(total, 1), "epoch_seconds": elapsed.round(1).tolist(),
            "val_accuracy": history["val_accuracy"].tolist(),
            "best_val_accuracy": float(history["val_accuracy"].max()),
            **score_test_split(result.model, data.manifest, data.image_size), "seed": seed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets/cards"))
    parser.add_argument("--weights-dir", type=Path, default=Path("../shared/weights"))
    parser.add_argument("--backbone", default="mobilenet_v3_small_075",
                        help="throughput rows' backbone (random init)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the throughput rows this many times, interleaved; the "
                             "medians are reported (shared machines vary)")
    parser.add_argument("--mixed-precision", help="also time (b)-(d) under this policy")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--accuracy", action="store_true", help="also rows (e) and (f)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS),
                        help="seeds of rows (e) and (f), each arm once per seed")
    parser.add_argument("--course-epochs", type=int, default=15)
    parser.add_argument("--course-steps", type=int, default=200)
    parser.add_argument("--freeze-epochs", type=int, default=20)
    parser.add_argument("--fine-tune-epochs", type=int, default=6)
    parser.add_argument("--base-lr", type=float, default=1e-3)
    parser.add_argument("--course-from", type=Path, help="reuse row (e) from an earlier JSON "
                        "report of this script, same seeds (to try other fine_tune settings)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/training.json"))
    args = parser.parse_args()

    load_before = os.getloadavg()
    devices = [d.device_type for d in tf.config.list_logical_devices()]
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} cores, "
          f"devices {devices}, load average {load_before[0]:.2f}")
    root = Path(tempfile.mkdtemp(prefix="cnnlab-bench-"))
    (root / "notebooks").mkdir()
    dirs = project_dirs(root)
    manifest = prepare_dataset("cards", args.data_dir, dirs)
    data = TrainingData(manifest, IMAGE_SIZE, 32, hflip=False, seed=42)
    command = "python benchmarks/training.py" + (
        f" --repeats {args.repeats}" if args.repeats != 1 else "") + (
        " --accuracy" if args.accuracy else "") + (
        f" --seeds {' '.join(map(str, args.seeds))}"
        if args.accuracy and args.seeds != list(SEEDS) else "") + (
        " --skip-throughput" if args.skip_throughput else "")
    report = {"command": command, "hardware": hardware()["description"],
              "measured": time.strftime("%Y-%m-%d"), "backbone": args.backbone,
              "steps": args.steps, "tensorflow": tf.__version__, "keras": keras.__version__,
              "cores": os.cpu_count(), "devices": devices, "images": len(data.train_rows),
              "load_average_before": load_before}
    if not args.skip_throughput:
        runs = []
        for repeat in range(args.repeats):
            print(f"throughput rows, run {repeat + 1} of {args.repeats}")
            # a fresh random backbone each run: extraction must not hit the earlier cache
            shutil.rmtree(dirs.data / "cards" / "features", ignore_errors=True)
            before = os.getloadavg()[0]
            runs.append(with_other_work(throughput, args.data_dir, data, args.backbone,
                                        args.steps, args.warmup, None, dirs))
            runs[-1]["load_average"] = [round(before, 2), round(os.getloadavg()[0], 2)]
        rows = {key: statistics.median(run[key] for run in runs) for key in ROWS}
        report["throughput"] = rows
        report["throughput_runs"] = runs
        ratios = {key: [run[key] / run["a"] for run in runs] for key in ("b", "b64", "c", "d")}
        report["throughput_ratios"] = ratios
        print(f"medians of {args.repeats} run(s): " +
              ", ".join(f"({k}) {v:.1f}" for k, v in rows.items()) + " img/s")
        print("ratios to (a), per run: " + "; ".join(
            f"({k}) " + " ".join(f"{r:.2f}" for r in v) for k, v in ratios.items()))
        if args.mixed_precision:
            report[f"throughput_{args.mixed_precision}"] = throughput(
                args.data_dir, data, args.backbone, args.steps, args.warmup,
                args.mixed_precision, dirs)
    if args.accuracy:
        weights = resolve_weights("mobilenet_v3_small_075", "local", args.weights_dir)
        if weights.path is None:
            raise FileNotFoundError(f"no {weights.label}; pass --weights-dir")
        earlier = (json.loads(args.course_from.read_text())["accuracy"]["plain"]
                   if args.course_from else None)
        if earlier is not None and [r["seed"] for r in earlier] != args.seeds:
            raise ValueError(f"{args.course_from} has row (e) for seeds "
                             f"{[r['seed'] for r in earlier]}, not {args.seeds}; pass --seeds")
        course, ours, loads = [], [], []
        for i, seed in enumerate(args.seeds):
            before = os.getloadavg()[0]
            course.append(earlier[i] if earlier else with_other_work(
                course_recipe, args.data_dir, weights.path, data.num_classes,
                args.course_epochs, args.course_steps, seed))
            print(f"(e) course recipe, seed {seed}: {course[-1]['seconds'] / 60:.1f} min, best "
                  f"val {course[-1]['best_val_accuracy']:.3f}, test "
                  f"{course[-1]['test_accuracy']:.3f}")
            # every seed extracts its features, as a first run does: the same cache state
            shutil.rmtree(dirs.data / "cards" / "features", ignore_errors=True)
            ours.append(with_other_work(
                cnnlab_fine_tune, dataclasses.replace(data, seed=seed), args.weights_dir,
                args.freeze_epochs, args.fine_tune_epochs, args.base_lr, dirs, seed))
            print(f"(f) cnnlab fine_tune, seed {seed}: {ours[-1]['seconds'] / 60:.1f} min, best "
                  f"val {ours[-1]['best_val_accuracy']:.3f}, test "
                  f"{ours[-1]['test_accuracy']:.3f}")
            loads += [round(before, 2), round(os.getloadavg()[0], 2)]
        row = comparison_row(course, ours)
        gain = row["gain"]
        print(f"(f) - (e): {gain['difference']:+.3f} [{gain['low']:+.3f}, {gain['high']:+.3f}] "
              f"over {gain['n']} (seed, image) pairs; (f) reaches (e)'s best val "
              f"{row['target_val_accuracy']:.3f} after " + (
                  "never (in some seed)" if row["seconds_to_target"] is None else
                  f"{row['seconds_to_target']:.0f} s ({row['ratio_to_plain']:.3f} of (e)'s "
                  "time)"))
        report["accuracy"] = {
            **row, "seeds": args.seeds, "load_average": loads, "cores": os.cpu_count(),
            "course_settings": {"epochs": args.course_epochs, "steps": args.course_steps,
                                "batch_size": 20, "learning_rate": 1e-3},
            "fine_tune_settings": {"freeze_epochs": args.freeze_epochs,
                                   "fine_tune_epochs": args.fine_tune_epochs,
                                   "base_lr": args.base_lr}}
    report["load_average_after"] = os.getloadavg()
    print(f"load average after: {report['load_average_after'][0]:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, report)
    write_text(args.out.with_suffix(".md"), render_markdown(report))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


ROWS = {
    "a": "(a) course style: `ImageDataGenerator` + `fit`, batch 20, whole network trainable",
    "b": "(b) cnnlab full fine-tune: tf.data, batch 32, BatchNorm in inference mode",
    "b64": "(b) the same at batch 64",
    "c": "(c) frozen backbone, end to end on images",
    "extraction": "feature extraction for the cache (once)",
    "d": "(d) head on cached features",
}


def busy(runs: list[dict], cores: int) -> bool:
    """Whether other processes used over ``OTHER_WORK_LIMIT`` of the cores during a run (its
    timings then are not comparable); False where the runs predate the measurement."""
    return max(_others(runs), default=0.0) > OTHER_WORK_LIMIT * cores


def _machine_note(runs: list[dict], loads: list[float], cores: int) -> str:
    note = f"1-minute load {min(loads):.1f}–{max(loads):.1f}"
    others = _others(runs)
    if others:
        # clock-tick round-off can leave a lone run's figure a hair below zero
        note += f"; other processes used at most {max(max(others), 0.0):.2f} cores during a run"
    if busy(runs, cores):
        note += ". BUSY: other work shared the machine, timings not comparable"
    return note + "."


def render_markdown(report: dict) -> str:
    """The report of :func:`main` as a Markdown page: throughput, then time to accuracy."""
    lines = [
        "# Training throughput and time to accuracy", "",
        f"Generated by `{report['command']}` into [training.json](training.json). Cards, "
        f"{report['images']:,} training images at {IMAGE_SIZE} px, on "
        f"{report['hardware']} (TensorFlow {report['tensorflow']}, Keras {report['keras']}), "
        f"measured {report['measured']}; load average "
        f"{report['load_average_before'][0]:.2f} before, "
        f"{report['load_average_after'][0]:.2f} after. The load after counts the "
        "benchmark's own threads; other processes' CPU (from /proc/stat) decides whether a "
        f"part is marked BUSY (over {OTHER_WORK_LIMIT:.0%} of the cores).", ""]
    if "throughput" in report:
        runs = report["throughput_runs"]
        lines += [
            f"Throughput: `{report['backbone']}` with random weights, {report['steps']} timed "
            f"steps per row after a warm-up; median of {len(runs)} interleaved run(s), and the "
            "ratio to (a) in each run.", "",
            "| row | img/s (median) | x (a), per run |", "|---|---|---|"]
        for key, name in ROWS.items():
            ratios = report["throughput_ratios"].get(key)
            per_run = ", ".join(f"{r:.2f}" for r in ratios) if ratios else (
                "1" if key == "a" else "")
            lines.append(f"| {name} | {report['throughput'][key]:,.1f} | {per_run} |")
        loads = [x for run in runs for x in run.get("load_average", [])]
        if loads:
            lines += ["", _machine_note(runs, loads, report["cores"])]
        lines.append("")
    if "accuracy" in report:
        row = report["accuracy"]
        course, ours = row["plain_summary"], row["fine_tune_summary"]
        settings, gain = row["fine_tune_settings"], row["gain"]

        def best_val(runs):
            values = [r["best_val_accuracy"] for r in runs]
            spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            return f"{statistics.mean(values):.3f}{spread}"

        def cells(summary, runs):
            return (f"{summary['seconds_mean']:,.0f} ± {summary['seconds_sd']:,.0f} | "
                    f"{best_val(runs)} | {summary['test_accuracy_mean']:.3f} ± "
                    f"{summary['test_accuracy_sd']:.3f}")

        reached = row["seconds_to_target"]
        verdict = ("the interval excludes zero" if gain["excludes zero"] else
                   "within noise: the interval includes zero")
        lines += [
            f"Time to accuracy: MobileNetV3Small 0.75 from the ImageNet weights file, each "
            f"recipe once per seed (seeds {', '.join(map(str, row['seeds']))}), mean ± "
            "standard deviation over the seeds.", "",
            "| recipe | seconds | best val accuracy | test accuracy |", "|---|---|---|---|",
            f"| (e) course recipe: `ImageDataGenerator` + `fit`, "
            f"{len(row['plain'][0]['val_accuracy'])} epochs, whole network trainable | "
            f"{cells(course, row['plain'])} |",
            f"| (f) `fine_tune`: {settings['freeze_epochs']} head epochs on cached features, "
            f"then {settings['fine_tune_epochs']} fine-tuning epochs | "
            f"{cells(ours, row['fine_tune'])} |", "",
            f"(f) - (e) in test accuracy: {gain['difference']:+.3f} [{gain['low']:+.3f}, "
            f"{gain['high']:+.3f}], the paired 95% bootstrap interval over {gain['n']} "
            f"(seed, test image) pairs; {verdict}. (f) first reached (e)'s best validation "
            f"accuracy ({row['target_val_accuracy']:.3f}, the mean of each seed's best) after "
            + (f"{reached:,.1f} s on average, {row['ratio_to_plain']:.3f} of (e)'s mean time."
               if reached is not None else "never, in some seed."),
            "", _machine_note(row["plain"] + row["fine_tune"], row["load_average"],
                              row["cores"]), ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
