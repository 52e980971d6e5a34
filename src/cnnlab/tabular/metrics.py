"""Regression metrics on a whole test split, each with a paired bootstrap 95% interval."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import stats

from cnnlab.evaluation.metrics import BOOTSTRAP_RESAMPLES, CONFIDENCE

__all__ = ["METRICS", "mape", "regression_metrics", "metrics_table", "format_table"]

def _mae(t: np.ndarray, p: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(np.abs(t - p), axis=axis)


def _rmse(t: np.ndarray, p: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.sqrt(np.mean((t - p) ** 2, axis=axis))


def _r2(t: np.ndarray, p: np.ndarray, axis: int = -1) -> np.ndarray:
    residual = np.sum((t - p) ** 2, axis=axis)
    total = np.sum((t - np.mean(t, axis=axis, keepdims=True)) ** 2, axis=axis)
    return 1 - residual / total


def _mape(t: np.ndarray, p: np.ndarray, axis: int = -1) -> np.ndarray:
    return 100 * np.mean(np.abs(t - p) / np.abs(t), axis=axis)


# name -> (f(y_true, y_pred, axis), higher is better), vectorised along ``axis`` for the
# bootstrap; the same definitions as scikit-learn's mean_absolute_error,
# root_mean_squared_error, r2_score and 100 * mean_absolute_percentage_error (tested).
METRICS: dict[str, tuple[Callable[..., np.ndarray], bool]] = {
    "MAE": (_mae, False),
    "RMSE": (_rmse, False),
    "R2": (_r2, True),
    "MAPE %": (_mape, False),
}


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, confidence: float = CONFIDENCE,
                       n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """MAE, RMSE, R² and MAPE of ``y_pred``, each with a bootstrap interval.

    The rows are resampled with replacement (true and predicted value together) with
    ``scipy.stats.bootstrap(paired=True, method="BCa")``: bias-corrected and accelerated,
    since RMSE and R² over a few hundred skewed prices have skewed sampling distributions
    (Efron 1987, "Better bootstrap confidence intervals", JASA 82:171).

    Args:
        y_true: ``(n,)`` true values (USD).
        y_pred: ``(n,)`` predictions (USD).
        confidence: Confidence level in (0, 1).
        n_resamples: Bootstrap resamples.
        seed: Seed of the resampling.

    Returns:
        ``{metric: value, f"{metric} low": ..., f"{metric} high": ..., "n": n}``.

    Raises:
        ValueError: On arrays of different lengths, fewer than 3 rows, or non-finite values.
    """
    y_true = np.asarray(y_true, np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, np.float64).reshape(-1)
    if len(y_true) != len(y_pred) or len(y_true) < 3:
        raise ValueError(f"need equally long arrays of at least 3 values; got {len(y_true)} "
                         f"true and {len(y_pred)} predicted")
    if not (np.isfinite(y_true).all() and np.isfinite(y_pred).all()):
        raise ValueError("predictions or targets hold NaN or infinite values")
    row: dict = {"n": len(y_true)}
    for name, (metric, _) in METRICS.items():
        row[name] = float(metric(y_true, y_pred))
        result = stats.bootstrap((y_true, y_pred), metric, paired=True, vectorized=True,
                                 n_resamples=n_resamples, confidence_level=confidence,
                                 method="BCa", rng=np.random.default_rng(seed))
        row[f"{name} low"] = float(result.confidence_interval.low)
        row[f"{name} high"] = float(result.confidence_interval.high)
    return row


def mape(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean absolute percentage error in percent (``METRICS["MAPE %"]``), no interval."""
    return float(_mape(np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)))


def metrics_table(rows: dict[str, dict], by: str = "MAPE %") -> pd.DataFrame:
    """``{model: regression_metrics(...) plus extra fields}`` -> one row per model.

    Args:
        rows: Metrics and extra fields per model.
        by: Column to order by, lowest first (e.g. ``"val MAPE %"``, so that the first row is
            the model chosen on validation).
    """
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "model"
    return table.sort_values(by if by in table else "MAPE %")


def format_table(table: pd.DataFrame, columns: tuple[str, ...] = ("MAPE %", "MAE", "R2")
                 ) -> pd.DataFrame:
    """The table with ``value [low, high]`` strings, for printing."""
    shown = pd.DataFrame(index=table.index)
    for name in columns:
        digits = 0 if name in ("MAE", "RMSE") else (1 if name == "MAPE %" else 2)
        shown[name] = [f"{v:,.{digits}f} [{lo:,.{digits}f}, {hi:,.{digits}f}]" for v, lo, hi in
                       zip(table[name], table[f"{name} low"], table[f"{name} high"])]
    extra = [c for c in table.columns if c not in METRICS and not c.endswith((" low", " high"))]
    return shown.join(table[extra])
