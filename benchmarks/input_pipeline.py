"""Input pipeline throughput, side by side on one folder of real JPEGs.

Rows (images per second, one pass over every image, batch 32):
  (a) ImageDataGenerator.flow_from_directory, as the course projects used it
  (b) keras.utils.image_dataset_from_directory
  (c) cnnlab.data.make_dataset: first epoch (decode + resize), then a cached epoch
  (d) decode-only limit: tf.io.decode_jpeg at full resolution over all cores
at two image sizes, with ratios to (a) and to (d).

Usage: python benchmarks/input_pipeline.py [FOLDER] (default ../shared/datasets/cards/train,
a class-per-folder tree). Prints a table; nothing is written.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from cnnlab.data import make_dataset  # noqa: E402
from cnnlab.datasets import IMAGE_SUFFIXES  # noqa: E402

BATCH = 32


def _files(folder: Path):
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files, labels = [], []
    for index, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                files.append(str(path))
                labels.append(index)
    return files, labels


def _rate(iterable, count: int) -> float:
    start = time.perf_counter()
    seen = 0
    for images, _ in iterable:
        seen += int(images.shape[0])
        if seen >= count:
            break
    return seen / (time.perf_counter() - start)


def image_data_generator(folder: Path, size: int, count: int) -> float:
    from tensorflow.keras.preprocessing.image import ImageDataGenerator  # the course recipe

    flow = ImageDataGenerator(rescale=1 / 255).flow_from_directory(
        folder, target_size=(size, size), batch_size=BATCH, class_mode="sparse", shuffle=True)
    return _rate(flow, count)


def dataset_from_directory(folder: Path, size: int, count: int) -> float:
    ds = keras.utils.image_dataset_from_directory(folder, image_size=(size, size),
                                                  batch_size=BATCH, verbose=False)
    return _rate(ds.prefetch(tf.data.AUTOTUNE), count)


def decode_only(files: list[str]) -> float:
    ds = tf.data.Dataset.from_tensor_slices(files).map(
        lambda f: tf.io.decode_jpeg(tf.io.read_file(f), channels=3),
        num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH).prefetch(tf.data.AUTOTUNE)
    start = time.perf_counter()
    seen = sum(int(batch.shape[0]) for batch in ds)
    return seen / (time.perf_counter() - start)


def main(folder: Path) -> None:
    files, labels = _files(folder)
    count = len(files)
    print(f"{count} images in {folder.name}/, {os.cpu_count()} cores, "
          f"TensorFlow {tf.__version__}, batch {BATCH}")
    limit = decode_only(files)
    rows = [("(d) decode-only limit (full resolution)", "-", limit)]
    for size in (224, 128):
        ours = make_dataset(files, labels, size, BATCH, shuffle=True, cache="memory")
        first = _rate(ours, count)
        cached = _rate(ours, count)
        rows += [
            ("(a) ImageDataGenerator.flow_from_directory", size,
             image_data_generator(folder, size, count)),
            ("(b) image_dataset_from_directory", size, dataset_from_directory(folder, size, count)),
            ("(c) cnnlab first epoch", size, first),
            ("(c) cnnlab cached epoch", size, cached),
        ]
    baseline = {size: rate for name, size, rate in rows if name.startswith("(a)")}
    print(f"{'pipeline':45s} {'size':>5s} {'img/s':>9s} {'x (a)':>7s} {'x (d)':>7s}")
    for name, size, rate in rows:
        ratio_a = f"{rate / baseline[size]:.2f}" if size in baseline else "-"
        print(f"{name:45s} {size!s:>5s} {rate:9.0f} {ratio_a:>7s} {rate / limit:7.2f}")


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cards" / "train"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
