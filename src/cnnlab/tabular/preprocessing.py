"""Tabular preprocessing: one scikit-learn pipeline, fitted on the training split only.

The course project imputed its train and test CSVs separately (the test rows' medians leaked
into their own features) and kept the weekly and monthly prices, near-copies of the nightly
price it predicts. Here one ``ColumnTransformer`` holds every step (median imputation with a
missing-value indicator, log1p of skewed columns, standardisation, one-hot encoding with rare
levels pooled), it is fitted on training rows alone, and target copies are dropped, each with
its reason, before anything is fitted.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from cnnlab.tabular.columns import TabularSpec

__all__ = ["COPY_CORRELATION", "find_target_copies", "drop_target_copies", "build_preprocessor",
           "fit_preprocessor", "TargetScaler"]

# Spearman correlation with the target above which a column is treated as a copy of it.
COPY_CORRELATION = 0.95
MIN_CATEGORY_COUNT = 5


def find_target_copies(frame: pd.DataFrame, spec: TabularSpec,
                       threshold: float = COPY_CORRELATION) -> dict[str, str]:
    """Columns that are copies of the target: the spec's known ones, plus any feature whose
    rank correlation with the target on ``frame`` (training rows) reaches ``threshold``.

    Args:
        frame: Training rows.
        spec: The dataset's registry entry.
        threshold: Absolute Spearman correlation that flags a column.

    Returns:
        ``{column: reason}`` for every copy present in ``frame``.
    """
    copies = {c: reason for c, reason in spec.target_copies.items() if c in frame}
    target = frame[spec.target]
    for column in (*spec.numeric, *spec.log_numeric):
        if column in copies or column not in frame:
            continue
        rho = frame[column].corr(target, method="spearman")
        if np.isfinite(rho) and abs(rho) >= threshold:
            copies[column] = (f"Spearman correlation {rho:.2f} with {spec.target} on the "
                              f"training rows (>= {threshold})")
    return copies


def drop_target_copies(spec: TabularSpec, copies: dict[str, str], verbose: bool = True
                       ) -> TabularSpec:
    """The spec without the columns in ``copies``, printing one line per dropped column."""
    import dataclasses

    for column, reason in copies.items():
        if verbose:
            print(f"dropped {column}: {reason}")
    keep = lambda columns: tuple(c for c in columns if c not in copies)  # noqa: E731
    return dataclasses.replace(spec, numeric=keep(spec.numeric),
                               log_numeric=keep(spec.log_numeric),
                               categorical=keep(spec.categorical))


def _category_text(value):
    if pd.isna(value):
        return np.nan
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _as_text(values):
    """Categorical codes as an object array of strings, missing values kept as ``nan``.

    A zipcode read as a number is still a category, and ``62234.0`` (a float column because
    another row is missing) is the same level as ``62234``. The object dtype is what
    :class:`~sklearn.impute.SimpleImputer` needs to impute the missing ones.
    """
    frame = pd.DataFrame(values)
    return frame.map(_category_text).to_numpy(dtype=object)


def build_preprocessor(spec: TabularSpec) -> ColumnTransformer:
    """The unfitted preprocessing of ``spec``'s feature columns.

    numeric: median imputation (plus a missing-value indicator column) and standardisation;
    log_numeric: median imputation, ``log1p`` and standardisation; categorical: as text,
    constant imputation and one-hot encoding, levels seen fewer than 5 times pooled into one
    ``infrequent`` column and unseen levels mapped to it.

    Returns:
        A ``ColumnTransformer`` producing a dense float64 matrix.
    """
    parts = []
    if spec.numeric:
        parts.append(("numeric", make_pipeline(
            SimpleImputer(strategy="median", add_indicator=True), StandardScaler()),
            list(spec.numeric)))
    if spec.log_numeric:
        parts.append(("log", make_pipeline(
            SimpleImputer(strategy="median"),
            FunctionTransformer(np.log1p, feature_names_out="one-to-one"), StandardScaler()),
            list(spec.log_numeric)))
    if spec.categorical:
        parts.append(("categorical", make_pipeline(
            FunctionTransformer(_as_text, feature_names_out="one-to-one"),
            SimpleImputer(strategy="constant", fill_value="missing"),
            OneHotEncoder(handle_unknown="infrequent_if_exist",
                          min_frequency=MIN_CATEGORY_COUNT, sparse_output=False)),
            list(spec.categorical)))
    return ColumnTransformer(parts, remainder="drop", verbose_feature_names_out=True)


def fit_preprocessor(spec: TabularSpec, train: pd.DataFrame) -> Pipeline | ColumnTransformer:
    """:func:`build_preprocessor` fitted on ``train`` (the training split only).

    Args:
        spec: The dataset's entry, target copies already dropped.
        train: Training rows.

    Returns:
        The fitted transformer; ``transform(rows)`` gives ``(n, features)`` float64.
    """
    return build_preprocessor(spec).fit(train)


class TargetScaler:
    """Log-price target, standardised with the training split's mean and spread.

    Prices are skewed (houses: $22,000 to $5.9 M); a model fitted to ``log(price)`` with MSE
    weighs a 10% error alike at every price, which is what MAPE measures.

    Args:
        train_target: ``(n,)`` positive training targets (USD).
    """

    def __init__(self, train_target: np.ndarray):
        log = np.log(np.asarray(train_target, dtype=np.float64))
        self.mean, self.std = float(log.mean()), float(log.std() or 1.0)

    def transform(self, target: np.ndarray) -> np.ndarray:
        """``(n,)`` USD -> ``(n,)`` float32 standardised log price."""
        return ((np.log(np.asarray(target, np.float64)) - self.mean) / self.std).astype(
            np.float32)

    def inverse(self, scaled: np.ndarray) -> np.ndarray:
        """``(n,)`` or ``(n, 1)`` standardised log price -> ``(n,)`` float64 USD."""
        return np.exp(np.asarray(scaled, np.float64).reshape(-1) * self.std + self.mean)

    def config(self) -> dict:
        return {"log_mean": self.mean, "log_std": self.std}
