"""CrossEntropyLoss: softmax + negative log-likelihood, from raw logits.

The math is ``LossReference`` (``cross_entropy_reference`` calls it with plain
arguments); ``FusedLoss`` computes the same in four operations. Both have the engine
interface of layers/engine.py; the backend picks one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backends import backend_of

from .base import Layer
from .engine import Engines, Workspace


@dataclass(frozen=True)
class LossParams:
    """What every loss engine reads: the labels (N,), integers in [0, C)."""

    labels: Any


class LossReference:
    """The definition of the mean cross-entropy (the engine ``engine="reference"`` runs)."""

    @staticmethod
    def forward(xp, logits, params: LossParams, work=None):
        """``log p = z - max z - log Σ exp(z - max z)`` (a stable log-softmax), ``L = -(1/N) Σ_n log p[n, y_n]``.

        logits (N, C) → L (0-d); saved: (softmax(z), onehot(y)).
        """
        n, classes = logits.shape
        shifted = logits - xp.max(logits, axis=1, keepdims=True)
        log_probs = shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))
        onehot = xp.astype(params.labels[:, None] == xp.arange(classes, dtype=params.labels.dtype)[None, :],
                           logits.dtype)
        # An empty batch: a sum over no examples, 0 (PyTorch's mean gives NaN; the fast engine agrees with this).
        return -xp.sum(log_probs * onehot) / max(n, 1), (xp.exp(log_probs), onehot)

    @staticmethod
    def backward(xp, dloss, saved, params: LossParams, work=None, need_dx=True, out=None):
        """``dL/dz = dloss · (softmax(z) - onehot(y)) / N``."""
        probabilities, onehot = saved
        return (probabilities - onehot) * (dloss / max(probabilities.shape[0], 1)), {}


def cross_entropy_reference(xp, logits, labels):
    """(L, dL/dlogits) of ``LossReference`` with plain arguments, the oracle the fast form is tested against."""
    params = LossParams(labels)
    loss, saved = LossReference.forward(xp, logits, params)
    return loss, LossReference.backward(xp, 1.0, saved, params)[0]


# The same computation as three fused kernels and a reduction. With m_n = max_c z_nc and
# s_n = Σ_c exp(z_nc - m_n): log p_nc = z_nc - m_n - log s_n.
def sum_exp(xp, logits, row_max):
    """s_n = Σ_c exp(z_nc - m_n)."""
    return xp.sum(xp.exp(logits - row_max), axis=1)


def mean_nll(xp, logits, row_max, sums, labels, classes, inverse_n):
    """L = (1/N) Σ_n -log p[n, y_n] = Σ_n (m_n + log s_n - z[n, y_n]) / N.

    (1/N is applied before the sum: in a fused kernel an argument cannot be used after the reduction.)"""
    return xp.sum(xp.astype(labels == classes, logits.dtype) * (row_max + xp.log(sums) - logits) * inverse_n)


def softmax_minus_onehot(xp, logits, row_max, sums, labels, classes, scale):
    """dL/dz = (softmax(z) - onehot(y)) · scale, with softmax(z)_nc = exp(z_nc - m_n) / s_n."""
    return (xp.exp(logits - row_max) / sums - xp.astype(labels == classes, logits.dtype)) * scale


class FusedLoss:
    """The loss in four operations (a row maximum and three fused kernels), on every device."""

    @staticmethod
    def forward(xp, logits, params: LossParams, work):
        fuse, (n, classes) = work.backend.fuse, logits.shape
        row_max = xp.max(logits, axis=1, keepdims=True)  # (N, 1)
        sums = xp.reshape(fuse(sum_exp)(logits, row_max), (n, 1))
        labels = xp.reshape(params.labels, (n, 1))
        class_row = work.constant(f"classes-{classes}-{labels.dtype}",
                                  lambda: xp.reshape(xp.arange(classes, dtype=labels.dtype), (1, classes)))
        loss = fuse(mean_nll)(logits, row_max, sums, labels, class_row, 1.0 / max(n, 1))
        return loss, (logits, row_max, sums, labels, class_row)

    @staticmethod
    def backward(xp, dloss, saved, params: LossParams, work, need_dx=True, out=None):
        logits, row_max, sums, labels, class_row = saved
        scale = float(dloss) / max(logits.shape[0], 1)
        return work.backend.fuse(softmax_minus_onehot)(logits, row_max, sums, labels, class_row, scale), {}


ENGINES = Engines(reference=LossReference, cpu=FusedLoss, launch_bound=FusedLoss)


class CrossEntropyLoss(Layer):
    """Mean cross-entropy of logits against integer class labels.

    ``forward(logits, labels)``: logits (N, C) float, labels (N,) integers in [0, C);
    returns a 0-d array ``L = -(1/N) Σ_n log softmax(logits_n)[labels_n]``, computed as a
    stable log-softmax (subtracting each row's maximum before ``exp``).

    ``backward()`` returns dL/dlogits = (softmax(logits) - onehot(labels)) / N, shape (N, C).

    Both compute ``LossReference`` (``engine="reference"``), or the same in four operations
    (``FusedLoss``: a row maximum and three fused kernels) instead of a dozen, and without
    reading anything back to the host.

    ``check_labels`` verifies that labels lie in [0, C). On a GPU that check reads a value
    back to the host each step, so the Trainer, whose datasets are validated when loaded,
    turns it off.
    """

    def __init__(self, check_labels: bool = True):
        super().__init__()
        self.check_labels = check_labels
        self._works = {}  # the logits' backend → its workspace (the loss follows its input, it is not moved)

    def __call__(self, logits, labels):
        return self.forward(logits, labels)

    def forward(self, logits, labels):
        backend = self._check_arguments(logits, labels)
        xp, (n, classes) = backend.xp, logits.shape
        if self.check_labels and n > 0:
            low, high = int(xp.min(labels)), int(xp.max(labels))
            if low < 0 or high >= classes:
                raise ValueError(f"CrossEntropyLoss: labels must be in [0, {classes - 1}], found values from {low} to {high}")
        work = self._works.setdefault(id(backend), Workspace(backend))
        engine = ENGINES.pick(backend)
        loss, saved = engine.forward(xp, logits, LossParams(labels), work)
        self._cache = (engine, work, saved, labels)
        return loss

    def backward(self, dloss=1.0):
        if self._cache is None:
            raise RuntimeError("CrossEntropyLoss.backward called before forward")
        engine, work, saved, labels = self._cache
        return engine.backward(work.xp, dloss, saved, LossParams(labels), work)[0]

    def _check_arguments(self, logits, labels):
        """The logits' backend; logits and labels that cannot be a batch are refused, saying what was expected."""
        # the backend it was moved to (and its engine), else the one the logits live on
        backend = self.backend if self.backend.is_array(logits) else backend_of(logits)
        if backend is None:
            raise TypeError(f"CrossEntropyLoss expects logits as an array of a backend (NumPy, CuPy or "
                            f"array-api-strict), got {type(logits).__name__}")
        if logits.ndim != 2:
            raise ValueError(f"CrossEntropyLoss expects logits (N, C), got {tuple(logits.shape)}")
        xp = backend.xp
        if logits.dtype not in (xp.float32, xp.float64):
            raise TypeError(f"CrossEntropyLoss expects float logits, got {logits.dtype}")
        n = logits.shape[0]
        if type(labels) is not type(logits):
            raise TypeError(
                f"CrossEntropyLoss: labels must be an array on the same device as the logits "
                f"({type(logits).__name__}), got {type(labels).__name__}"
            )
        if labels.ndim != 1 or labels.shape[0] != n:
            raise ValueError(f"CrossEntropyLoss expects labels (N,) = ({n},) for logits {tuple(logits.shape)}, got {tuple(labels.shape)}")
        if not xp.isdtype(labels.dtype, "integral"):
            raise TypeError(f"CrossEntropyLoss expects integer class labels, got {labels.dtype}")
        return backend

    def __repr__(self) -> str:
        return "CrossEntropyLoss()"
