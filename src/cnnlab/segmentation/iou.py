"""Intersection over union of segmentation masks: per class and mean (mIoU).

IoU per class is ``TP / (TP + FP + FN)`` over all pixels of all masks (the PASCAL VOC
protocol: Everingham et al. 2010, "The PASCAL Visual Object Classes Challenge", IJCV 88);
mIoU averages it over the classes present in the ground truth or the prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from cnnlab.segmentation.deeplab import _as_mask


def _mask_pairs(y_true: Any, y_pred: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    if isinstance(y_true, np.ndarray) and y_true.ndim == 2:
        y_true, y_pred = [y_true], [y_pred]
    y_true, y_pred = list(y_true), list(y_pred)
    if len(y_true) != len(y_pred) or not y_true:
        raise ValueError(f"got {len(y_true)} true and {len(y_pred)} predicted masks; pass one "
                         "predicted mask per ground-truth mask")
    pairs = []
    for i, (true, pred) in enumerate(zip(y_true, y_pred)):
        true, pred = _as_mask(true, f"y_true[{i}]"), _as_mask(pred, f"y_pred[{i}]")
        if true.shape != pred.shape:
            raise ValueError(f"y_true[{i}] has shape {true.shape} but y_pred[{i}] has "
                             f"{pred.shape}; predict masks at the image's size")
        pairs.append((true, pred))
    return pairs


def segmentation_confusion(y_true: Any, y_pred: Any, num_classes: int,
                           ignore_index: int | None = 255) -> np.ndarray:
    """Pixel confusion matrix accumulated over a set of masks.

    Args:
        y_true: Ground-truth ``(H, W)`` integer masks (a list, sizes may differ), or one mask.
        y_pred: Predicted masks of the same shapes.
        num_classes: Number of classes (indices ``0 .. num_classes - 1``).
        ignore_index: Ground-truth value left out (VOC marks object borders 255); None keeps
            every pixel.

    Returns:
        ``(num_classes, num_classes)`` int64 pixel counts, rows true, columns predicted
        (``sklearn.metrics.confusion_matrix`` per mask, summed).

    Raises:
        ValueError: Shapes differ, or a mask holds a class index ``>= num_classes`` (other
            than ``ignore_index`` in the ground truth).
    """
    from sklearn.metrics import confusion_matrix

    total = np.zeros((num_classes, num_classes), dtype=np.int64)
    labels = np.arange(num_classes)
    for i, (true, pred) in enumerate(_mask_pairs(y_true, y_pred)):
        keep = true != ignore_index if ignore_index is not None else np.ones(true.shape, bool)
        true, pred = true[keep], pred[keep]
        for what, values in ((f"y_true[{i}]", true), (f"y_pred[{i}]", pred)):
            if values.size and values.max() >= num_classes:
                raise ValueError(f"{what} holds class index {values.max()} but num_classes is "
                                 f"{num_classes}")
        if true.size:
            total += confusion_matrix(true, pred, labels=labels).astype(np.int64)
    return total


def per_class_iou(y_true: Any, y_pred: Any, class_names: Sequence[str],
                  ignore_index: int | None = 255) -> pd.DataFrame:
    """Intersection over union of every class, over the whole set of masks.

    ``IoU = TP / (TP + FP + FN)`` from pixel counts accumulated over all masks, the PASCAL VOC
    segmentation measure (Everingham et al. 2015, "The PASCAL Visual Object Classes
    Challenge: A Retrospective", IJCV 111, sec. 3.2).

    Args:
        y_true: Ground-truth ``(H, W)`` integer masks, or one mask.
        y_pred: Predicted masks of the same shapes.
        class_names: Name of each class index.
        ignore_index: Ground-truth value left out (see :func:`segmentation_confusion`).

    Returns:
        DataFrame indexed by ``class``: ``IoU`` (NaN where the class is in neither the truth
        nor the prediction), ``true pixels``, ``predicted pixels``.
    """
    matrix = segmentation_confusion(y_true, y_pred, len(class_names), ignore_index)
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - tp
    iou = np.divide(tp, union, out=np.full_like(tp, np.nan), where=union > 0)
    return pd.DataFrame({"IoU": iou, "true pixels": matrix.sum(axis=1),
                         "predicted pixels": matrix.sum(axis=0)},
                        index=pd.Index(list(class_names), name="class"))


def mean_iou(y_true: Any, y_pred: Any, class_names: Sequence[str] | int,
             ignore_index: int | None = 255) -> float:
    """Mean IoU (mIoU) over the classes present in the truth or the prediction.

    Args:
        y_true: Ground-truth ``(H, W)`` integer masks, or one mask.
        y_pred: Predicted masks of the same shapes.
        class_names: Name of each class index, or the number of classes.
        ignore_index: Ground-truth value left out.

    Returns:
        The mean of :func:`per_class_iou` over classes with a defined IoU, in ``[0, 1]``.
    """
    names = [str(i) for i in range(class_names)] if isinstance(class_names, int) else \
        class_names
    return float(np.nanmean(per_class_iou(y_true, y_pred, names, ignore_index)["IoU"]))
