"""Input pipeline throughput, side by side on one folder of real JPEGs.

Rows (images per second over every image of the folder, batch 32, labels included):
  (a) ImageDataGenerator.flow_from_directory, as the course projects used it
  (b) keras.utils.image_dataset_from_directory
  (c) cnnlab's make_dataset: first epoch (decode + resize + fill the cache), then a cached
      epoch; at 128 px also with dct_scaling=0.85 (JPEG decoded at 1/2 scale, then upsampled)
  (d) the decode-only limit: tf.io.decode_jpeg at full resolution over all cores, no resize;
      and the same while filling a memory cache (what caching itself costs)
at 224 and 128 pixels, with the ratios the targets are stated in. cnnlab reads the folder the
way the notebooks do, through a validated manifest (its format and size columns let the
pipeline fix the JPEG scale when it is built). Every row is measured ``--repeats`` times,
interleaved, after one warm-up pass that brings the files into the page cache; the median is
printed, with the process CPU time per image (user + system), which a shared machine disturbs
less than the wall-clock rate.

Usage: python benchmarks/input_pipeline.py [FOLDER] [--repeats N] [--out JSON] (default
../shared/datasets/cards/train, a class-per-folder tree). Prints the tables and writes them,
with the machine and its load, to ``docs/benchmarks/input_pipeline.json`` (temporary name,
then renamed) and ``docs/benchmarks/input_pipeline.md``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

from cnnlab.data.datasets import build_manifest
from cnnlab.data.pipeline import make_dataset
from cnnlab.files import write_json, write_text
from cnnlab.notebooks import hardware

BATCH = 32
SIZES = (224, 128)


def _rate(batches, count: int) -> tuple[float, float]:
    """(images per second, CPU milliseconds per image) to draw ``count`` images."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    seen = 0
    for images, _ in batches:
        seen += int(images.shape[0])
        if seen >= count:
            break
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return seen / wall, 1000 * cpu / seen


def image_data_generator(folder: Path, size: int, count: int) -> float:
    """(a) The course recipe: deprecated, single-threaded, float32 batches."""
    from tensorflow.keras.preprocessing.image import ImageDataGenerator

    flow = ImageDataGenerator(rescale=1 / 255).flow_from_directory(
        folder, target_size=(size, size), batch_size=BATCH, class_mode="sparse", shuffle=True)
    return _rate(flow, count)


def dataset_from_directory(folder: Path, size: int, count: int) -> float:
    """(b) Keras' own directory loader (tf.data, parallel, float32, no cache)."""
    ds = keras.utils.image_dataset_from_directory(folder, image_size=(size, size),
                                                  batch_size=BATCH, verbose=False)
    return _rate(ds.prefetch(tf.data.AUTOTUNE), count)


def decode_only(files: list[str], cache: bool = False) -> float:
    """(d) Decode-only limit: read + tf.io.decode_jpeg at full size, parallel, batched.

    With ``cache``, the decoded images are also kept in a memory cache: the cost any cached
    pipeline pays in its first epoch (on this VM mostly first-touch page faults).
    """
    ds = tf.data.Dataset.from_tensor_slices(files).map(
        lambda f: (tf.io.decode_jpeg(tf.io.read_file(f), channels=3), 0),
        num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.cache() if cache else ds
    return _rate(ds.batch(BATCH).prefetch(tf.data.AUTOTUNE), len(files))


def cnnlab_epochs(rows, files, size: int, dct_scaling: float | None):
    """(c) cnnlab: a fresh pipeline's first epoch (fills the memory cache), then a cached one."""
    ds = make_dataset(files, rows["label_index"], size, BATCH, shuffle=True, cache="memory",
                      dct_scaling=dct_scaling, formats=list(rows["format"]),
                      sizes=list(zip(rows["width"], rows["height"], strict=True)))
    return _rate(ds, len(files)), _rate(ds, len(files))


def main() -> None:
    default = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cards" / "train"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=default)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/input_pipeline.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()
    manifest = build_manifest(args.folder, "folder")
    rows = manifest.frame.assign(
        label_index=manifest.frame["label"].map({c: i for i, c in enumerate(manifest.classes)}))
    files = manifest.files(rows)
    count = len(files)
    print(f"{count} images in {args.folder.name}/ ({args.folder.parent.name}), "
          f"{os.cpu_count()} cores, TensorFlow {tf.__version__}, Keras {keras.__version__}, "
          f"batch {BATCH}, median of {args.repeats} interleaved runs; load average before: "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    decode_only(files)  # warm-up: files into the page cache, TensorFlow's thread pools up
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}

    def record(name: str, size, rate: tuple[float, float]) -> None:
        runs.setdefault((name, str(size)), []).append(rate)

    for _ in range(args.repeats):
        record("(d) decode-only limit, full resolution", "full", decode_only(files))
        record("(d) decode-only + filling a memory cache", "full", decode_only(files, True))
        for size in SIZES:
            record("(a) ImageDataGenerator.flow_from_directory", size,
                   image_data_generator(args.folder, size, count))
            record("(b) keras.utils.image_dataset_from_directory", size,
                   dataset_from_directory(args.folder, size, count))
            first, cached = cnnlab_epochs(rows, files, size, 1.0)
            record("(c) cnnlab first epoch", size, first)
            record("(c) cnnlab cached epoch", size, cached)
        first, cached = cnnlab_epochs(rows, files, 128, 0.85)
        record("(c) cnnlab first epoch, dct_scaling=0.85", 128, first)
    table = pd.DataFrame([{"pipeline": name, "size": size,
                           "img/s": statistics.median(r for r, _ in rates),
                           "CPU ms/img": statistics.median(c for _, c in rates),
                           "runs img/s": " ".join(f"{r:.0f}" for r, _ in rates)}
                          for (name, size), rates in runs.items()])
    limit = table.loc[table["pipeline"].str.startswith("(d) decode-only limit"), "img/s"].iat[0]
    baseline = table[table["pipeline"].str.startswith("(a)")].set_index("size")["img/s"]
    table["x (a)"] = [row["img/s"] / baseline[row["size"]] if row["size"] in baseline else None
                      for _, row in table.iterrows()]
    table["x (d)"] = table["img/s"] / limit
    table = table.sort_values(["size", "pipeline"], key=lambda s: s.map(
        {"full": 0, "224": 1, "128": 2}) if s.name == "size" else s)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))

    def rate(name: str, size: int) -> float:
        return table[(table["pipeline"] == name) & (table["size"] == str(size))]["img/s"].iat[0]

    cpu_limit = table.loc[table["pipeline"].str.startswith("(d) decode-only limit"),
                          "CPU ms/img"].iat[0]

    def cpu(name: str, size: int) -> float:
        return table[(table["pipeline"] == name) & (table["size"] == str(size))][
            "CPU ms/img"].iat[0]

    print("\ntargets (wall-clock rates; in brackets the same ratio from CPU time per image):")
    targets = [
        ("first epoch at 224 >= 95% of the decode-only limit",
         rate("(c) cnnlab first epoch", 224) / limit,
         cpu_limit / cpu("(c) cnnlab first epoch", 224), 0.95),
        ("cached epoch at 224 >= 10x ImageDataGenerator",
         rate("(c) cnnlab cached epoch", 224) / baseline["224"],
         cpu("(a) ImageDataGenerator.flow_from_directory", 224)
         / cpu("(c) cnnlab cached epoch", 224), 10.0),
        ("first epoch at 128 (dct_scaling=0.85) > the decode-only limit",
         rate("(c) cnnlab first epoch, dct_scaling=0.85", 128) / limit,
         cpu_limit / cpu("(c) cnnlab first epoch, dct_scaling=0.85", 128), 1.0),
        ("first epoch at 128 (exact decode) vs the decode-only limit",
         rate("(c) cnnlab first epoch", 128) / limit,
         cpu_limit / cpu("(c) cnnlab first epoch", 128), None),
    ]
    for name, ratio, cpu_ratio, goal in targets:
        verdict = "" if goal is None else ("met" if ratio >= goal else "NOT met")
        print(f"  {name}: {ratio:.2f}x ({cpu_ratio:.2f}x) {verdict}")
    report = {
        "command": "python benchmarks/input_pipeline.py" + (
            f" --repeats {args.repeats}" if args.repeats != 3 else ""),
        "folder": f"{args.folder.parent.name}/{args.folder.name}", "images": count,
        "batch": BATCH, "repeats": args.repeats, "hardware": hardware()["description"],
        "tensorflow": tf.__version__, "keras": keras.__version__,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "measured": time.strftime("%Y-%m-%d"),
        "rows": table.astype(object).where(table.notna(), None).to_dict("records"),
        "targets": [{"target": name, "ratio": ratio, "cpu_time_ratio": cpu_ratio, "goal": goal,
                     "met": None if goal is None else bool(ratio >= goal)}
                    for name, ratio, cpu_ratio, goal in targets]}
    write_json(args.out, report)
    write_text(args.out.with_suffix(".md"), render_markdown(report))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


def render_markdown(report: dict) -> str:
    """The report of :func:`main` as a Markdown page (tables and targets)."""
    def number(value) -> str:
        return "" if value is None or value != value else (
            f"{value:,.0f}" if value >= 100 else f"{value:.2f}")

    lines = [
        "# Input pipeline throughput", "",
        f"Generated by `{report['command']}` into [input_pipeline.json](input_pipeline.json). "
        f"{report['images']:,} JPEGs of `{report['folder']}`, batch "
        f"{report['batch']}, on {report['hardware']} (TensorFlow {report['tensorflow']}, Keras "
        f"{report['keras']}), measured {report['measured']}. Every row ran {report['repeats']} "
        "times, interleaved, after a warm-up pass; the median is shown, with the process CPU "
        "time per image, which a shared machine disturbs less than the wall-clock rate. Load "
        f"average {report['load_average_before'][0]:.2f} before, "
        f"{report['load_average_after'][0]:.2f} after.", "",
        "| pipeline | size | img/s | CPU ms/img | x (a) ImageDataGenerator | x (d) decode-only "
        "| img/s per run |", "|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['pipeline']} | {row['size']} | {number(row['img/s'])} | "
                     f"{row['CPU ms/img']:.2f} | {number(row['x (a)'])} | "
                     f"{number(row['x (d)'])} | {row['runs img/s']} |")
    lines += ["", "Targets (wall-clock ratio; in brackets the same ratio from CPU time per "
              "image):", ""]
    for target in report["targets"]:
        verdict = "" if target["met"] is None else (
            " **met**" if target["met"] else " **not met**")
        lines.append(f"- {target['target']}: {target['ratio']:.2f}x "
                     f"({target['cpu_time_ratio']:.2f}x){verdict}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
