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

Each arm runs once per seed (``--seeds``, at least 3): the seed sets both arms' head
initialisation, shuffling and augmentation, on the same splits. Per row it records each arm's
test accuracy (mean and standard deviation over the seeds, each seed's with its 95% Wilson
interval) and wall time (mean and standard deviation), the paired difference (b) - (a) in test
accuracy with its 95% bootstrap interval (pairs: each test image under each seed,
``cnnlab.evaluation.metrics.paired_difference``; "better" only where it excludes zero), the
time (b) needs to reach (a)'s best validation accuracy (its best epoch, not its last), and the
1-minute load average before and after each seed and the CPU other processes used during each
arm (``with_other_work``); a row where other work took over ``OTHER_WORK_LIMIT`` of the cores
is marked busy, its timings not comparable (``_busy``). With ``--ablation DATASET:BACKBONE``
it also runs ``fine_tune`` with the recipe changed one ingredient at a time from the plain
recipe's stage 2 to the default, to show what each bought; the backbone features are cached
before the first ablation row is timed, so every row starts from the same cache state.

Results are merged into ``docs/benchmarks/time_to_accuracy.json`` (one entry per dataset,
backbone and image size, with the settings it was measured with; temporary name, then
renamed) and rendered to ``docs/benchmarks/time_to_accuracy.md``. A row too long for one
sitting (the JSON records each arm's seconds per seed) can be measured a seed at a time:
``--add-seeds`` adds the seeds of this process to the row measured earlier, refused if any
setting (profile, epochs, plain recipe, TensorFlow and Keras versions) differs or a seed is
measured already. Each seed records the 1-minute load before and after it. Runs write their
files under a temporary project folder.

Usage:
  python benchmarks/time_to_accuracy.py [--datasets cards vehicles] [--seeds 0 1 2]
      [--backbones mobilenet_v3_small_075 mobilenet_v2] [--ablation vehicles:mobilenet_v3_small_075]
  python benchmarks/time_to_accuracy.py --datasets cards --backbones mobilenet_v2 \
      --image-size 160 --seeds 1 --add-seeds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cnnlab.config import get_profile, project_dirs  # noqa: E402
from cnnlab.data.datasets import get_dataset_spec, prepare_dataset
from cnnlab.data.pipeline import split_dataset
from cnnlab.evaluation.metrics import paired_difference, wilson_interval
from cnnlab.files import write_json, write_text
from cnnlab.models.backbones import get_backbone_spec, resolve_weights
from cnnlab.training.fine_tuning import fine_tune
from cnnlab.training.fitting import TrainingData
from cnnlab.training.recipes import RECIPES, get_recipe

SEEDS = (0, 1, 2)
PLAIN = {"head_epochs": 8, "head_lr": 1e-3, "epochs": 12, "lr": 2e-4, "batch_size": 32}
DATASET_OPTIONS = {"cards": {}, "vehicles": {"classes": ["all"]}, "weather-mwd": {}}
OTHER_WORK_LIMIT = 0.25  # share of the cores other processes may use during an arm


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


def plain_recipe(manifest, backbone: str, weights_file: Path, image_size: int, root: Path,
                 seed: int) -> dict:
    """(a): the plain Keras recipe, timed from the first line to the last epoch."""
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    folders = {split: _link_split(manifest.split(split), root / "plain" / split)
               for split in ("train", "val", "test")}

    def load(split, shuffle):
        return keras.utils.image_dataset_from_directory(
            folders[split], image_size=(image_size, image_size), batch_size=PLAIN["batch_size"],
            shuffle=shuffle, seed=seed, verbose=False).prefetch(tf.data.AUTOTUNE)

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
    # The test folder's files in the order image_dataset_from_directory lists them (classes,
    # then names), mapped back to the manifest's files: both arms' correctness per image.
    predictions = model.predict(test, verbose=0).argmax(axis=1)
    labels = np.concatenate([y.numpy() for _, y in test])
    files = [str(Path(f).resolve()) for f in test_files(folders["test"])]
    return {"seconds": round(seconds, 1), "epoch_seconds": clock.seconds,
            "val_accuracy": clock.val_accuracy,
            "best_val_accuracy": float(max(clock.val_accuracy)),
            **_scores(predictions == labels, files), "seed": seed, "settings": PLAIN}


def test_files(folder: Path) -> list[Path]:
    """The files of a class-folder tree in ``image_dataset_from_directory``'s order."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    return [f for c in classes for f in sorted((folder / c).iterdir())]


def _scores(correct: np.ndarray, files: list[str]) -> dict:
    """Test accuracy, its Wilson interval and the per-image correctness keyed by file."""
    n, right = len(correct), int(np.sum(correct))
    order = np.argsort(files)
    return {"test_accuracy": round(right / n, 4), "test_interval": _interval(right, n),
            "test_images": n, "correct": [int(correct[i]) for i in order],
            "files": [f"{Path(files[i]).parent.name}/{Path(files[i]).name}" for i in order]}


def cnnlab_fine_tune(data: TrainingData, backbone: str, weights_dir: Path, profile, dirs,
                     seed: int, recipe=None) -> dict:
    """(b): ``fine_tune`` with ``recipe`` (default: the default recipe), timed."""
    keras.utils.set_random_seed(seed)
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
            "weights": result.weights, "seed": seed,
            "settings": {"freeze_epochs": profile.freeze_epochs,
                         "fine_tune_epochs": profile.fine_tune_epochs,
                         "base_lr": profile.learning_rate,
                         "recipe": dataclasses.asdict(get_recipe(recipe))}}


def temporary_project(dataset: str, shared_dir: Path, prefix: str):
    """A fresh project folder under the system's temporary folder and ``dataset``'s manifest
    prepared in it from ``shared_dir/datasets/<dataset>``: ``(dirs, manifest)``."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    (root / "notebooks").mkdir()
    dirs = project_dirs(root)
    return dirs, prepare_dataset(dataset, shared_dir / "datasets" / dataset, dirs,
                                 **DATASET_OPTIONS[dataset])


def score_test_split(model, manifest, image_size: int) -> dict:
    """``test_accuracy``, its 95% Wilson ``test_interval`` and ``test_images`` on the split."""
    rows = manifest.split("test")
    predictions = model.predict(split_dataset(rows, image_size, 64), verbose=0).argmax(axis=1)
    return _scores(predictions == rows["label_index"].to_numpy(),
                   [str(Path(f).resolve()) for f in rows["file"]])


def summarise(runs: list[dict]) -> dict:
    """Mean and standard deviation (ddof=1) of test accuracy and seconds over seeds."""
    accuracy = np.array([r["test_accuracy"] for r in runs])
    seconds = np.array([r["seconds"] for r in runs])
    return {"seeds": len(runs), "test_accuracy_mean": round(float(accuracy.mean()), 4),
            "test_accuracy_sd": round(float(accuracy.std(ddof=1)), 4) if len(runs) > 1 else 0.0,
            "seconds_mean": round(float(seconds.mean()), 1),
            "seconds_sd": round(float(seconds.std(ddof=1)), 1) if len(runs) > 1 else 0.0}


def paired_gain(plain: list[dict], ours: list[dict]) -> dict:
    """(b) - (a) in test accuracy with its paired 95% interval over (seed, test image) pairs.

    Raises:
        ValueError: If the arms' test images differ (same splits are required).
    """
    a, b = [], []
    for run_a, run_b in zip(plain, ours, strict=True):
        if run_a["files"] != run_b["files"]:
            raise ValueError("the two recipes were scored on different test images")
        a += run_a["correct"]
        b += run_b["correct"]
    result = paired_difference(np.array(a, float), np.array(b, float))
    return {key: (round(v, 4) if isinstance(v, float) else v) for key, v in result.items()}


def warm_feature_cache(data: TrainingData, backbone: str, weights_dir: Path, dirs) -> None:
    """Computes the backbone features ``fine_tune`` caches, before any timed ablation row."""
    from cnnlab.models.transfer import build_transfer_model
    from cnnlab.training.cached_features import feature_cache

    model = build_transfer_model(backbone, data.num_classes, data.image_size,
                                 resolve_weights(backbone, "local", weights_dir))
    cache = feature_cache(model, data.dataset, data.image_size, dirs.data)
    for split, rows in (("train", data.train_rows), ("val", data.val_rows)):
        cache.features(split, rows)


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


def comparison_row(plain: list[dict], ours: list[dict]) -> dict:
    """Summaries, the paired gain, (a)'s best validation accuracy as the target and the time
    (b) needs to reach it, from the per-seed results of both arms."""
    gain = paired_gain(plain, ours)
    target = float(np.mean([r["best_val_accuracy"] for r in plain]))
    reach = [seconds_to_reach(r, target) for r in ours]
    reached = None if None in reach else float(np.mean(reach))
    plain_seconds = float(np.mean([r["seconds"] for r in plain]))
    return {"plain": plain, "fine_tune": ours, "plain_summary": summarise(plain),
            "fine_tune_summary": summarise(ours), "gain": gain,
            "target_val_accuracy": round(target, 4),
            "seconds_to_target": None if reached is None else round(reached, 1),
            "ratio_to_plain": None if reached is None else round(reached / plain_seconds, 3)}


def check_mergeable(key: str, earlier: dict, settings: dict, seeds: list[int]) -> None:
    """Refuses to add seeds to a row measured with other settings or with those seeds.

    Raises:
        ValueError: Naming the setting that differs, or the seeds measured already.
    """
    before = earlier.get("settings")
    if before is None:
        raise ValueError(f"{key}: the row records no settings (an earlier version); measure "
                         f"it again without --add-seeds")
    differ = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
    if differ:
        raise ValueError(f"{key}: cannot add seeds measured with other settings: {differ}")
    again = sorted(set(seeds) & set(earlier["seeds"]))
    if again:
        raise ValueError(f"{key}: seeds {again} are measured already")


def _print(label: str, run: dict) -> None:
    low, high = run["test_interval"]
    others = (f", other processes {run['other_cpu_cores']:.2f} cores"
              if "other_cpu_cores" in run else "")
    print(f"{label}: test {run['test_accuracy']:.3f} [{low:.3f}, {high:.3f}] "
          f"(n={run['test_images']}), {run['seconds']:.0f} s{others}")


def _cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds every process on the machine has used, this process's), or None off Linux.

    The machine's figure is the busy part of ``/proc/stat``'s first line (user, nice, system,
    irq, softirq, steal; proc(5)) over ``SC_CLK_TCK``; this process's is ``os.times()`` user +
    system, every thread included (TensorFlow's and tf.data's threads are threads, not
    children).
    """
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    ticks = os.sysconf("SC_CLK_TCK")
    own = os.times()
    return (user + nice + system + irq + softirq + steal) / ticks, own.user + own.system


def with_other_work(arm: Callable[..., dict], *args) -> dict:
    """Runs one timed arm, ``arm(*args)``, and adds the CPU other processes used meanwhile.

    Returns:
        The arm's result with ``other_cpu_cores`` (float, cores: the machine's CPU seconds
        less this process's, over the arm's wall seconds; at least 0, as the two clocks'
        round-off can leave a lone arm's figure a hair below it), left out off Linux.
    """
    start, began = _cpu_seconds(), time.perf_counter()
    result = arm(*args)
    end, wall = _cpu_seconds(), time.perf_counter() - began
    if start is not None and end is not None:
        others = ((end[0] - start[0]) - (end[1] - start[1])) / wall
        result["other_cpu_cores"] = round(max(others, 0.0), 3)  # ticks' round-off: >= 0
    return result


def _others(arms: list[dict]) -> list[float]:
    """Each arm's ``other_cpu_cores``; empty if an arm predates the measurement."""
    others = [arm.get("other_cpu_cores") for arm in arms]
    return [] if None in others else others


def _other_work(run: dict) -> list[float]:
    """Every arm's ``other_cpu_cores`` in a row; empty if an arm predates the measurement."""
    return _others(run["plain"] + run["fine_tune"])


def _busy(run: dict) -> bool:
    """Whether other work shared the machine during a row (its timings not comparable).

    The 1-minute load after an arm counts the benchmark's own threads (on 2 cores a lone run
    ended at loads of 2.0 to 2.4 in the committed rows), so it decides nothing. Where every
    arm recorded it, the row is busy if other processes used more than ``OTHER_WORK_LIMIT``
    of the cores during an arm; in rows measured before that was recorded, if the load before
    a seed was above one per core.
    """
    others = _other_work(run)
    if others:
        return max(others) > OTHER_WORK_LIMIT * run["cores"]
    return max(run["load_average"][0::2]) > run["cores"]


def render_markdown(report: dict) -> str:
    """The JSON report as the markdown tables of docs/benchmarks/time_to_accuracy.md."""
    lines = ["# Time to accuracy: plain Keras recipe vs cnnlab `fine_tune`", "",
             "Generated by `python benchmarks/time_to_accuracy.py` from "
             "[time_to_accuracy.json](time_to_accuracy.json). Each row "
             "was measured on the machine and at the loads recorded in the JSON (each seed "
             "in one process; a long row's seeds may come from several processes with the "
             "same settings, `--add-seeds`), each arm once per seed on the same splits. "
             "Test accuracy on the whole test split: mean ± standard deviation over the "
             "seeds; (b) - (a) is the paired "
             "difference with its 95% bootstrap interval over (seed, test image) pairs, a "
             "gain only where the interval excludes zero. The target is (a)'s best "
             "validation accuracy. The load column gives the 1-minute loads before and after "
             "each seed; the load after counts the benchmark's own threads. \"others\" is "
             "the most CPU other processes used during any arm (from /proc/stat, in rows "
             "measured since it was recorded). A row is marked BUSY, its timings not "
             f"comparable, where others used over {OTHER_WORK_LIMIT:.0%} of the cores, or, "
             "in earlier rows, where the load before a seed exceeded the cores.", "",
             "| dataset | backbone | px | seeds | (a) plain Keras: test | (a) s | "
             "(b) fine_tune: test | (b) s | (b) - (a) [95% CI] | (b) reaches (a)'s best val "
             "acc after | ratio to (a)'s time | load (1 min) | measured |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(report.get("runs", {})):
        run = report["runs"][key]
        if "gain" not in run:  # a single-seed row of an earlier version: not shown
            continue
        a, b, gain = run["plain_summary"], run["fine_tune_summary"], run["gain"]
        reach = run["seconds_to_target"]
        reached = "never" if reach is None else f"{reach:.0f} s"
        ratio = "" if reach is None else f"{run['ratio_to_plain']:.2f}"
        verdict = "" if gain["excludes zero"] else " (within noise)"
        load = f"{min(run['load_average']):.1f}–{max(run['load_average']):.1f}"
        others = _other_work(run)
        if others:
            load += f"; others ≤ {max(others):.2f} cores"
        busy = " BUSY: timings not comparable" if _busy(run) else ""
        measured = ", ".join(dict.fromkeys(run["measured"].split(", ")))  # each date once
        lines.append(
            f"| {run['dataset']} | {run['backbone']} | {run['image_size']} | {a['seeds']} | "
            f"{a['test_accuracy_mean']:.3f} ± {a['test_accuracy_sd']:.3f} | "
            f"{a['seconds_mean']:.0f} ± {a['seconds_sd']:.0f} | "
            f"{b['test_accuracy_mean']:.3f} ± {b['test_accuracy_sd']:.3f} | "
            f"{b['seconds_mean']:.0f} ± {b['seconds_sd']:.0f} | "
            f"{gain['difference']:+.3f} [{gain['low']:+.3f}, {gain['high']:+.3f}]{verdict} | "
            f"{reached} | {ratio} | {load}{busy} | {measured} |")
    for key in sorted(report.get("ablations", {})):
        ablation = report["ablations"][key]
        if "cache_warmed" not in ablation:  # timed before every row had the same cache state
            continue
        epochs = (f"{ablation['freeze_epochs']} head epochs on cached features, then "
                  f"{ablation['fine_tune_epochs']} stage-2 epochs")
        lines += ["", f"## Ablation: {ablation['dataset']}, {ablation['backbone']}, "
                  f"{ablation['image_size']} px ({ablation['measured']})", "",
                  "One change at a time, each row adding to the one above it (the last row "
                  f"is the previous default, for comparison). Every row: {epochs}, seed "
                  f"{ablation['seed']}, the backbone features cached before the first row.", "",
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
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS),
                        help="seeds of each arm (at least 3 for a claim)")
    parser.add_argument("--profile", default="cpu", help="fine_tune's epochs and rates")
    parser.add_argument("--fine-tune-epochs", type=int,
                        help="override the profile's stage-2 epochs (e.g. a shorter ablation)")
    parser.add_argument("--ablation", nargs="*", default=[], metavar="DATASET:BACKBONE")
    parser.add_argument("--add-seeds", action="store_true",
                        help="add these seeds to the row measured earlier with the same "
                             "settings (a row too long for one sitting, one seed per process)")
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

    def data_for(name, seed):
        return TrainingData(manifest_for(name), args.image_size, profile.batch_size,
                            get_dataset_spec(name).hflip, seed, cache_dir=dirs.data / "cache")

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
    settings = {"profile": args.profile, "freeze_epochs": profile.freeze_epochs,
                "fine_tune_epochs": profile.fine_tune_epochs, "plain": PLAIN,
                "tensorflow": tf.__version__, "keras": keras.__version__}
    for dataset in [] if args.skip_comparison else args.datasets:
        for backbone in args.backbones:
            key = f"{dataset}:{backbone}:{args.image_size}"
            earlier = report["runs"].get(key) if args.add_seeds else None
            if earlier is not None:
                check_mergeable(key, earlier, settings, args.seeds)
            plain = list(earlier["plain"]) if earlier else []
            ours = list(earlier["fine_tune"]) if earlier else []
            loads = list(earlier["load_average"]) if earlier else []
            print(f"== {dataset}, {backbone}, {args.image_size} px, seeds {args.seeds}"
                  + (f" (added to seeds {earlier['seeds']})" if earlier else ""))
            for seed in args.seeds:
                before = os.getloadavg()[0]
                plain.append({"seed": seed, **with_other_work(
                    plain_recipe, manifest_for(dataset), backbone, weights_file(backbone),
                    args.image_size, root / f"{dataset}-{backbone}-{seed}", seed)})
                _print(f"(a) plain Keras recipe, seed {seed}", plain[-1])
                ours.append({"seed": seed, **with_other_work(
                    cnnlab_fine_tune, data_for(dataset, seed), backbone, weights_dir, profile,
                    dirs, seed)})
                _print(f"(b) cnnlab fine_tune, seed {seed}", ours[-1])
                loads += [round(before, 2), round(os.getloadavg()[0], 2)]
            row = comparison_row(plain, ours)
            print(f"(b) - (a): {row['gain']['difference']:+.3f} [{row['gain']['low']:+.3f}, "
                  f"{row['gain']['high']:+.3f}] over {row['gain']['n']} (seed, image) pairs; "
                  f"(b) reaches (a)'s best validation accuracy {row['target_val_accuracy']:.3f} "
                  "after " + ("never (in some seed)" if row["seconds_to_target"] is None else
                              f"{row['seconds_to_target']:.0f} s ({row['ratio_to_plain']:.2f} "
                              "of (a)'s time)"))
            report["runs"][key] = {
                "dataset": dataset, "backbone": backbone, "image_size": args.image_size,
                "train_images": len(manifest_for(dataset).split("train")),
                "seeds": [r["seed"] for r in plain], **row, "settings": settings,
                "measured": measured if not earlier else f"{earlier['measured']}, {measured}",
                "processes": (earlier.get("processes", 1) + 1) if earlier else 1,
                "load_average": loads, **environment}
            save()
    for item in args.ablation:
        dataset, _, backbone = item.partition(":")
        seed = args.seeds[0]
        print(f"== ablation: {dataset}, {backbone}, {args.image_size} px, seed {seed}")
        data = data_for(dataset, seed)
        warm_feature_cache(data, backbone, weights_dir, dirs)
        load, steps = os.getloadavg()[0], []
        for label, recipe in ablation_recipes():
            run = cnnlab_fine_tune(data, backbone, weights_dir, profile, dirs, seed, recipe)
            _print(label, run)
            steps.append({"label": label, **run})
        report["ablations"][f"{dataset}:{backbone}:{args.image_size}"] = {
            "dataset": dataset, "backbone": backbone, "image_size": args.image_size,
            "freeze_epochs": profile.freeze_epochs, "fine_tune_epochs": profile.fine_tune_epochs,
            "seed": seed, "cache_warmed": True, "steps": steps, "measured": measured,
            "load_average": [round(load, 2), round(os.getloadavg()[0], 2)], **environment}
        save()
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
