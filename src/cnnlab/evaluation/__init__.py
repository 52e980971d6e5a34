"""Evaluation: metrics with intervals, predictions saved beside each model, the leaderboard,
interpretation and Grad-CAM.

Every public name of the subpackage's modules is readable here too, imported on first
use (see ``cnnlab._exports``).
"""

from cnnlab._exports import lazy_exports

_EXPORTS = {
    "feature_map_layers": "interpretation",
    "gradcam_model": "interpretation",
    "gradcam_heatmaps": "interpretation",
    "overlay_heatmap": "interpretation",
    "Interpretation": "interpretation",
    "LATENCY_BATCH_SIZES": "leaderboard",
    "time_calls": "leaderboard",
    "measure_latency": "leaderboard",
    "machine_description": "leaderboard",
    "saved_models": "leaderboard",
    "training_record": "leaderboard",
    "leaderboard_row": "leaderboard",
    "pareto_front": "leaderboard",
    "evaluate_models": "leaderboard",
    "plot_accuracy_vs_latency": "leaderboard",
    "leaderboard_markdown": "leaderboard",
    "LEADERBOARD_SHOWN": "leaderboard",
    "write_leaderboard": "leaderboard",
    "CONFIDENCE": "metrics",
    "BOOTSTRAP_RESAMPLES": "metrics",
    "wilson_interval": "metrics",
    "macro_f1": "metrics",
    "macro_f1_batch": "metrics",
    "bootstrap_interval": "metrics",
    "Predictions": "predictions",
    "ClassMismatchError": "predictions",
    "class_order": "predictions",
    "predict_dataset": "predictions",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
