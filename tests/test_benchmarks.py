"""The benchmark scripts' bookkeeping: rows merged over processes, summaries and gains."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import time_to_accuracy as tta  # noqa: E402
import training as training_bench  # noqa: E402


def _arm(seed, correct, seconds, val=(0.5, 0.8)):
    files = [f"c/{i}.jpg" for i in range(len(correct))]
    return {"seed": seed, "correct": list(correct), "files": files,
            "test_accuracy": sum(correct) / len(correct), "seconds": seconds,
            "best_val_accuracy": max(val), "val_accuracy": list(val),
            "epoch_seconds": [seconds / 2, seconds]}


def test_a_row_adds_seeds_only_with_the_same_settings():
    settings = {"profile": "cpu", "freeze_epochs": 20, "fine_tune_epochs": 12,
                "plain": tta.PLAIN, "tensorflow": "2.21.0", "keras": "3.15.1"}
    row = {"seeds": [0], "settings": settings}
    tta.check_mergeable("cards:mobilenet_v2:160", row, settings, [1, 2])
    with pytest.raises(ValueError, match="measured already"):
        tta.check_mergeable("cards:mobilenet_v2:160", row, settings, [0, 1])
    with pytest.raises(ValueError, match="fine_tune_epochs.*12, 6"):
        tta.check_mergeable("k", row, {**settings, "fine_tune_epochs": 6}, [1])
    with pytest.raises(ValueError, match="records no settings"):
        tta.check_mergeable("k", {"seeds": [0]}, settings, [1])


def test_the_row_summarises_seeds_and_pairs_each_test_image():
    plain = [_arm(0, [1, 0, 0, 1] * 10, 100.0), _arm(1, [1, 0, 1, 0] * 10, 110.0)]
    ours = [_arm(0, [1, 1, 1, 1] * 10, 80.0, (0.6, 0.9)),
            _arm(1, [1, 1, 1, 0] * 10, 90.0, (0.6, 0.9))]
    row = tta.comparison_row(plain, ours)
    assert row["plain_summary"]["test_accuracy_mean"] == 0.5
    assert row["fine_tune_summary"]["test_accuracy_mean"] == 0.875
    assert row["gain"]["difference"] == pytest.approx(0.375)
    assert row["gain"]["n"] == 80 and row["gain"]["excludes zero"]
    assert row["target_val_accuracy"] == 0.8
    ours[1]["files"] = list(reversed(ours[1]["files"]))
    with pytest.raises(ValueError, match="different test images"):
        tta.comparison_row(plain, ours)


def _row(loads, others=(None, None), cores=2):
    plain, ours = [_arm(0, [1, 0] * 10, 100.0)], [_arm(0, [1, 1] * 10, 80.0)]
    for arm, other in zip(plain + ours, others):
        if other is not None:
            arm["other_cpu_cores"] = other
    return {**tta.comparison_row(plain, ours), "plain": plain, "fine_tune": ours,
            "load_average": list(loads), "cores": cores, "dataset": "cards",
            "backbone": "mobilenet_v2", "image_size": 160, "measured": "2026-12-07"}


def test_a_row_is_busy_for_other_work_not_for_its_own_threads():
    # A lone run on 2 cores ends at a load of 2.0 to 2.4: its own threads, not other work.
    assert not tta._busy(_row([0.3, 2.3]))
    assert tta._busy(_row([2.5, 2.3]))  # before /proc/stat was read: the load before a seed
    assert not tta._busy(_row([2.5, 2.3], others=(0.02, 0.1)))
    assert tta._busy(_row([0.3, 2.3], others=(0.02, 0.9)))
    mixed = _row([0.3, 2.3], others=(0.02, None))  # an arm that predates the measurement
    assert tta._other_work(mixed) == [] and not tta._busy(mixed)
    table = tta.render_markdown({"runs": {"k": _row([0.3, 2.3], others=(0.02, 0.9))}})
    assert "others ≤ 0.90 cores BUSY" in table


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads /proc/stat (Linux)")
def test_other_work_counts_another_process_and_not_this_one():
    def spin_child():
        subprocess.run([sys.executable, "-c",
                        "import time\nt = time.process_time()\n"
                        "while time.process_time() - t < 1.0: pass"], check=True)
        return {}

    def spin_here():
        t = time.process_time()
        while time.process_time() - t < 1.0:
            pass
        return {}

    before = tta._cpu_seconds()
    spin_here()
    middle = tta._cpu_seconds()
    child = tta.with_other_work(spin_child)
    after = tta._cpu_seconds()
    # This process's own CPU second counts as its own, and as the machine's.
    assert middle[1] - before[1] >= 0.9 and middle[0] - before[0] >= 0.9
    # The child's CPU second is the machine's, not this process's: other work (other pytest
    # workers may add to it, never subtract).
    assert after[1] - middle[1] < 0.5 and after[0] - middle[0] >= 0.9
    assert child["other_cpu_cores"] > 0.5


@pytest.mark.parametrize("name, module", [("time_to_accuracy", tta),
                                          ("training", training_bench)])
def test_the_committed_table_is_rendered_from_the_committed_json(name, module):
    folder = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
    report = json.loads((folder / f"{name}.json").read_text())
    assert (folder / f"{name}.md").read_text() == module.render_markdown(report)


def _training_report(throughput_others, plain, ours):
    runs = [{**{key: 100.0 for key in training_bench.ROWS}, "a": 50.0,
             "load_average": [0.2, 2.2], "other_cpu_cores": other}
            for other in throughput_others]
    return {"command": "python benchmarks/training.py", "hardware": "CPU only: 2 cores",
            "measured": "2026-12-08", "tensorflow": "2.21.0", "keras": "3.15.1",
            "images": 3180, "cores": 2, "backbone": "mobilenet_v3_small_075", "steps": 30,
            "load_average_before": [0.2], "load_average_after": [2.2],
            "throughput": {key: 100.0 for key in training_bench.ROWS},
            "throughput_runs": runs,
            "throughput_ratios": {key: [2.0] * len(runs) for key in ("b", "b64", "c", "d")},
            "accuracy": {**tta.comparison_row(plain, ours), "seeds": [0, 1],
                         "load_average": [0.2, 2.2, 0.3, 2.3], "cores": 2,
                         "fine_tune_settings": {"freeze_epochs": 20, "fine_tune_epochs": 6,
                                                "base_lr": 1e-3}}}


def test_training_page_gives_seeds_the_paired_gain_and_marks_other_work():
    plain = [_arm(0, [1, 0, 0, 1] * 10, 900.0), _arm(1, [1, 0, 1, 0] * 10, 960.0)]
    ours = [_arm(0, [1, 1, 1, 1] * 10, 240.0, (0.6, 0.9)),
            _arm(1, [1, 1, 1, 0] * 10, 250.0, (0.6, 0.9))]
    page = training_bench.render_markdown(_training_report([0.01, 0.02], plain, ours))
    assert "| 930 ± 42 | 0.800 ± 0.000 | 0.500 ± 0.000 |" in page
    assert "+0.375 [" in page and "over 80 (seed, test image) pairs; the interval excludes" in page
    assert "BUSY:" not in page
    busy = training_bench.render_markdown(_training_report([0.01, 0.9], plain, plain))
    assert "within noise: the interval includes zero" in busy
    assert busy.count("BUSY: other work shared the machine") == 1  # throughput, not accuracy


@pytest.mark.slow  # one step, then 265 validation and 265 test images at 224 px
def test_training_benchmark_scores_the_course_recipe_on_the_manifest_test_images(shared_dir,
                                                                               tmp_path):
    """(e) reads the test folder through ImageDataGenerator, (f) through the manifest: the
    paired difference needs both to key the same images the same way."""
    from cnnlab.config import project_dirs
    from cnnlab.data.datasets import prepare_dataset

    cards = shared_dir / "datasets" / "cards"
    run = training_bench.course_recipe(cards, shared_dir / "weights" /
                                       "mobilenet_v3_small_075_imagenet_notop.weights.h5",
                                       53, epochs=1, steps=1, seed=0)
    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    manifest = prepare_dataset("cards", cards, project_dirs(root))
    rows = manifest.split("test")
    keys = tta._scores(np.zeros(len(rows), bool), [str(f) for f in rows["file"]])["files"]
    assert run["files"] == keys and len(keys) == len(run["correct"]) == 265
    assert run["seed"] == 0 and len(run["val_accuracy"]) == len(run["epoch_seconds"]) == 1
    assert run["test_accuracy"] == pytest.approx(sum(run["correct"]) / 265, abs=1e-4)
