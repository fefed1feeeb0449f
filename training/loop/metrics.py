"""Classification metrics, computed on the host from predicted and true labels."""
from __future__ import annotations

import numpy as np


def accuracy(predictions, labels) -> float:
    """Fraction of predictions equal to the labels; both (N,) integer arrays."""
    predictions, labels = _pair(predictions, labels)
    return float(np.mean(predictions == labels)) if len(labels) else 0.0


def confusion_matrix(predictions, labels, num_classes: int = 10) -> np.ndarray:
    """(num_classes, num_classes) int64 counts: row = true class, column = predicted class."""
    predictions, labels = _pair(predictions, labels)
    for name, values in (("predictions", predictions), ("labels", labels)):
        if len(values) and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} must be in [0, {num_classes - 1}], found {values.min()}..{values.max()}")
    flat = labels * num_classes + predictions
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """(C,) recall of each class from a confusion matrix; NaN for a class with no examples."""
    confusion = np.asarray(confusion)
    totals = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(confusion) / np.maximum(totals, 1), np.nan)


def _pair(predictions, labels) -> tuple[np.ndarray, np.ndarray]:
    predictions = np.asarray(predictions).astype(np.int64, copy=False).reshape(-1)
    labels = np.asarray(labels).astype(np.int64, copy=False).reshape(-1)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} differ in length")
    return predictions, labels
