"""The benchmark scripts' bookkeeping: rows merged over processes, summaries and gains."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import time_to_accuracy as tta  # noqa: E402


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
