"""Accuracy, the confusion matrix and per-class accuracy (training/metrics.py), edge cases included."""
from __future__ import annotations

import numpy as np
import pytest

from training.loop.metrics import accuracy, confusion_matrix, per_class_accuracy


def test_metrics():
    predictions, labels = np.array([0, 1, 1, 2, 2, 2]), np.array([0, 1, 2, 2, 2, 0])
    assert accuracy(predictions, labels) == pytest.approx(4 / 6)
    confusion = confusion_matrix(predictions, labels, 4)
    assert confusion.tolist() == [[1, 0, 1, 0], [0, 1, 0, 0], [0, 1, 2, 0], [0, 0, 0, 0]]
    per_class = per_class_accuracy(confusion)
    np.testing.assert_allclose(per_class[:3], [0.5, 1.0, 2 / 3])
    assert np.isnan(per_class[3])
    with pytest.raises(ValueError, match="differ in length"):
        accuracy([1, 2], [1])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\]"):
        confusion_matrix([0], [7], 4)


def test_metrics_edge_cases():
    from training.loop.metrics import accuracy, confusion_matrix, per_class_accuracy

    assert accuracy([], []) == 0.0  # an empty set: 0, not NaN and not 1
    assert accuracy(np.array([[1], [2]]), [1, 3]) == 0.5  # column vectors are flattened
    assert confusion_matrix(np.array([[2], [2]]), np.array([[1], [2]]))[[1, 2], 2].tolist() == [1, 1]
    counts = confusion_matrix([9, 0, 3], [9, 1, 3])  # ten classes unless told otherwise
    assert counts.shape == (10, 10) and counts[9, 9] == counts[3, 3] == counts[1, 0] == 1 and counts.sum() == 3
    with pytest.raises(ValueError, match=r"^predictions must be in \[0, 9\], found 0..10$"):
        confusion_matrix([0, 10], [0, 1])
    with pytest.raises(ValueError, match=r"^labels must be in \[0, 9\], found -1..1$"):
        confusion_matrix([0, 1], [-1, 1])
    with np.errstate(all="raise"):  # a class without examples is NaN, without a floating-point warning
        per_class = per_class_accuracy(counts)
    assert np.isnan(per_class[0]) and per_class[[1, 3, 9]].tolist() == [0.0, 1.0, 1.0]
