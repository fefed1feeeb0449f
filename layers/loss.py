"""CrossEntropyLoss: softmax + negative log-likelihood, from raw logits."""
from __future__ import annotations

import array_api_compat



class CrossEntropyLoss:
    """Mean cross-entropy of logits against integer class labels.

    ``forward(logits, labels)``: logits (N, C) float, labels (N,) integers in [0, C);
    returns a 0-d array ``L = -(1/N) Σ_n log softmax(logits_n)[labels_n]``, computed as a
    stable log-softmax (subtracting each row's maximum before ``exp``).

    ``backward()`` returns dL/dlogits = (softmax(logits) - onehot(labels)) / N, shape (N, C).

    ``check_labels`` verifies that labels lie in [0, C). On a GPU that check reads a value
    back to the host each step, so the Trainer, whose datasets are validated when loaded,
    turns it off.
    """

    def __init__(self, check_labels: bool = True):
        self.check_labels = check_labels
        self._cache = None

    def __call__(self, logits, labels):
        return self.forward(logits, labels)

    def forward(self, logits, labels):
        xp = _namespace_of(logits)
        if logits.ndim != 2:
            raise ValueError(f"CrossEntropyLoss expects logits (N, C), got {tuple(logits.shape)}")
        if logits.dtype not in (xp.float32, xp.float64):
            raise TypeError(f"CrossEntropyLoss expects float logits, got {logits.dtype}")
        n, classes = logits.shape
        if type(labels) is not type(logits):
            raise TypeError(
                f"CrossEntropyLoss: labels must be an array on the same device as the logits "
                f"({type(logits).__name__}), got {type(labels).__name__}"
            )
        if labels.ndim != 1 or labels.shape[0] != n:
            raise ValueError(f"CrossEntropyLoss expects labels (N,) = ({n},) for logits {tuple(logits.shape)}, got {tuple(labels.shape)}")
        if not xp.isdtype(labels.dtype, "integral"):
            raise TypeError(f"CrossEntropyLoss expects integer class labels, got {labels.dtype}")
        if self.check_labels and n > 0:
            low, high = int(xp.min(labels)), int(xp.max(labels))
            if low < 0 or high >= classes:
                raise ValueError(f"CrossEntropyLoss: labels must be in [0, {classes - 1}], found values from {low} to {high}")

        shifted = logits - xp.max(logits, axis=1, keepdims=True)
        exps = xp.exp(shifted)
        sum_exps = xp.sum(exps, axis=1, keepdims=True)
        log_probs = shifted - xp.log(sum_exps)
        onehot = xp.astype(labels[:, None] == xp.arange(classes, dtype=labels.dtype)[None, :], logits.dtype)
        loss = -xp.sum(log_probs * onehot) / n
        self._cache = (exps / sum_exps, onehot, n)
        return loss

    def backward(self, dloss=1.0):
        if self._cache is None:
            raise RuntimeError("CrossEntropyLoss.backward called before forward")
        probs, onehot, n = self._cache
        return (probs - onehot) * (dloss / n)

    def __repr__(self) -> str:
        return "CrossEntropyLoss()"


def _namespace_of(array):
    return array_api_compat.array_namespace(array)
