"""Evaluation: metrics with intervals, predictions, the leaderboard, interpretation and Grad-CAM.

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
    "CONFIDENCE": "leaderboard",
    "BOOTSTRAP_RESAMPLES": "leaderboard",
    "LATENCY_BATCH_SIZES": "leaderboard",
    "wilson_interval": "leaderboard",
    "macro_f1": "leaderboard",
    "bootstrap_interval": "leaderboard",
    "Predictions": "leaderboard",
    "ClassMismatchError": "leaderboard",
    "class_order": "leaderboard",
    "predict_dataset": "leaderboard",
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
    "write_leaderboard": "leaderboard",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
