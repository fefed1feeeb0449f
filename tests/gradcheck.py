"""Central finite differences in float64, to check every hand-written backward."""
from __future__ import annotations

import numpy as np


def numerical_gradient(f, array: np.ndarray, step: float = 1e-6, indices=None) -> np.ndarray:
    """df/darray by central differences, at every element or only at ``indices`` (flat).

    ``f()`` reads ``array`` (which is modified in place and restored) and returns a float.
    Entries not in ``indices`` are left as NaN.
    """
    flat = array.reshape(-1)
    grad = np.full(flat.shape, np.nan)
    for index in range(flat.size) if indices is None else indices:
        original = flat[index]
        flat[index] = original + step
        plus = f()
        flat[index] = original - step
        minus = f()
        flat[index] = original
        grad[index] = (plus - minus) / (2 * step)
    return grad.reshape(array.shape)


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """‖a - n‖ / max(‖a‖, ‖n‖, tiny) over the entries ``numeric`` has (non-NaN)."""
    mask = ~np.isnan(numeric)
    a, n = analytic[mask], numeric[mask]
    scale = max(np.linalg.norm(a), np.linalg.norm(n), 1e-12)
    return float(np.linalg.norm(a - n) / scale)
