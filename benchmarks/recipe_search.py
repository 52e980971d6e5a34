"""Recipe search: ``fine_tune`` with variants of the default recipe, on one real dataset.

Each variant is a set of ``recipes.FineTuneRecipe`` fields changed from ``"default"`` (or
from ``"base"``, another registry key). Every run uses the same seed, the same split, the
same stage 1 (20 head epochs on cached features, at Adam 1e-3) and the same number of stage-2
epochs, so the variants differ only in what they change. Prints one ``RESULT`` line per
variant (validation accuracy per stage-2 epoch, its best, seconds): the search reads the
validation split only. The variant with the best validation accuracy is then chosen, and only
its model is scored on the test split (accuracy with its 95% Wilson interval, a ``CHOSEN``
line), so the reported test score was not used to choose. Both go into
``docs/benchmarks/recipe_search.json`` (``runs`` and ``chosen``).

Usage:
  python benchmarks/recipe_search.py --dataset cards --epochs 6 \\
      --variants '[{"lr_mult": 100}, {"lr_mult": 10}, {"lr_mult": 3}]'
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
from time_to_accuracy import DATASET_OPTIONS, score_test_split, temporary_project  # noqa: E402 (this folder)

from cnnlab.data.datasets import get_dataset_spec
from cnnlab.files import write_json
from cnnlab.training.fine_tuning import fine_tune
from cnnlab.training.fitting import TrainingData
from cnnlab.training.recipes import get_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-dir", type=Path, default=Path("../shared"))
    parser.add_argument("--dataset", default="cards", choices=sorted(DATASET_OPTIONS))
    parser.add_argument("--backbone", default="mobilenet_v3_small_075")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--freeze-epochs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=6, help="stage-2 epochs")
    parser.add_argument("--variants", default="[{}]",
                        help="JSON list of recipe field changes; 'base' picks another recipe")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/recipe_search.json"))
    args = parser.parse_args()

    dirs, manifest = temporary_project(args.dataset, args.shared_dir, "cnnlab-recipes-")
    data = TrainingData(manifest, args.image_size, 32, get_dataset_spec(args.dataset).hflip, 42)
    report = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
    report.setdefault("chosen", [])
    best, variants = None, json.loads(args.variants)
    for changes in variants:
        base = changes.pop("base", "default")
        recipe = get_recipe(base).replace(**changes)
        keras.utils.set_random_seed(42)
        start = time.perf_counter()
        result = fine_tune(args.backbone, data, args.freeze_epochs, args.epochs, 1e-3, recipe,
                           weights="local", weights_dir=args.shared_dir / "weights", dirs=dirs,
                           save=False, resume=False, verbose=0)
        seconds = time.perf_counter() - start
        val = [round(v, 3) for v in result.history["val_accuracy"].tolist()[args.freeze_epochs:]]
        row = {"dataset": args.dataset, "backbone": args.backbone,
               "image_size": args.image_size, "base": base, "changes": changes,
               "freeze_epochs": args.freeze_epochs, "epochs": args.epochs,
               "stage2_val_accuracy": val, "best_val_accuracy": max(val),
               "seconds": round(seconds), "measured": time.strftime("%Y-%m-%d"),
               "load_average": os.getloadavg()[0]}
        print("RESULT", json.dumps(row), flush=True)
        report["runs"].append(row)
        write_json(args.out, report)
        if best is None or max(val) > best[0]["best_val_accuracy"]:
            best = (row, result.model)  # the best checkpoint, restored by fine_tune
    if best is not None:
        row, model = best
        test = score_test_split(model, manifest, args.image_size)
        chosen = {**{k: row[k] for k in ("dataset", "backbone", "image_size", "base",
                                         "changes", "best_val_accuracy", "measured")},
                  "test_accuracy": test["test_accuracy"], "test_interval": test["test_interval"],
                  "test_images": test["test_images"], "of_variants": len(variants)}
        print("CHOSEN", json.dumps(chosen), flush=True)
        report["chosen"].append(chosen)
        write_json(args.out, report)


if __name__ == "__main__":
    main()
