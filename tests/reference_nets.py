"""Independent references for what the tests check: xpnet's MLP and LNet written out in
plain NumPy float64 (forward, cross-entropy and backward), the input normalisation, and
the channel statistics. Nothing here imports xpnet, so a bug in xpnet cannot hide in the
reference as well.

Parameters are a dict {name: array} keyed as the models name them ("1.weight", ...), in
PyTorch's layouts: Linear weight (out, in), Conv2D weight (out, in, kh, kw), NCHW images.
"""
from __future__ import annotations

import numpy as np

# The layers of each model, in order; a layer with weights is named by its index.
ARCHITECTURES = {
    "mlp": [("flatten",), ("linear", "1"), ("relu",), ("linear", "3")],
    "lnet": [("conv", "0", 2), ("pool", 2), ("relu",), ("conv", "3", 1), ("pool", 2), ("relu",),
             ("flatten",), ("linear", "7"), ("relu",), ("linear", "9")],
}
PARAMETER_ORDER = {
    name: [f"{layer[1]}.{kind}" for layer in layers if layer[0] in ("linear", "conv") for kind in ("weight", "bias")]
    for name, layers in ARCHITECTURES.items()
}


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) standard deviation of uint8 images, in pixel/255 units."""
    as_float = images.astype(np.float64) / 255.0
    return as_float.mean(axis=(0, 2, 3)), as_float.std(axis=(0, 2, 3))


def normalise(images: np.ndarray, mean, std) -> np.ndarray:
    """(pixel/255 - mean) / std per channel, in float64."""
    mean = np.asarray(mean, dtype=np.float64).reshape(1, -1, 1, 1)
    std = np.asarray(std, dtype=np.float64).reshape(1, -1, 1, 1)
    return (images.astype(np.float64) / 255.0 - mean) / std


def _conv(x, weight, bias, padding):
    n, c, h, w = x.shape
    f, _, kh, kw = weight.shape
    padded = np.zeros((n, c, h + 2 * padding, w + 2 * padding))
    padded[:, :, padding:padding + h, padding:padding + w] = x
    oh, ow = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    y = np.empty((n, f, oh, ow))
    for r in range(oh):
        for s in range(ow):
            y[:, :, r, s] = np.tensordot(padded[:, :, r:r + kh, s:s + kw], weight, axes=([1, 2, 3], [1, 2, 3]))
    return y + bias[None, :, None, None], padded


def _conv_backward(dy, padded, weight, padding):
    f, c, kh, kw = weight.shape
    dweight = np.zeros_like(weight)
    dpadded = np.zeros_like(padded)
    for r in range(dy.shape[2]):
        for s in range(dy.shape[3]):
            g = dy[:, :, r, s]  # (n, f)
            dweight += np.tensordot(g, padded[:, :, r:r + kh, s:s + kw], axes=([0], [0]))
            dpadded[:, :, r:r + kh, s:s + kw] += np.tensordot(g, weight, axes=([1], [0]))
    h, w = padded.shape[2] - 2 * padding, padded.shape[3] - 2 * padding
    return dpadded[:, :, padding:padding + h, padding:padding + w], dweight, dy.sum(axis=(0, 2, 3))


def _pool(x, k):
    n, c, h, w = x.shape
    windows = x[:, :, : h // k * k, : w // k * k].reshape(n, c, h // k, k, w // k, k).transpose(0, 1, 2, 4, 3, 5)
    windows = windows.reshape(n, c, h // k, w // k, k * k)
    first = windows.argmax(axis=-1)  # argmax returns the first maximum
    return windows.max(axis=-1), first


def _pool_backward(dy, first, shape, k):
    n, c, oh, ow = dy.shape
    dx = np.zeros(shape)
    rows, cols = np.divmod(first, k)
    ni, ci, ri, si = np.meshgrid(np.arange(n), np.arange(c), np.arange(oh), np.arange(ow), indexing="ij")
    np.add.at(dx, (ni, ci, ri * k + rows, si * k + cols), dy)  # windows do not overlap; add.at anyway
    return dx


def forward(name: str, params: dict, x: np.ndarray, keep: list | None = None) -> np.ndarray:
    """Logits (N, 10) of model ``name`` with ``params`` on float inputs ``x`` (N, 3, 32, 32), in float64."""
    p = {key: np.asarray(value, dtype=np.float64) for key, value in params.items()}
    x = np.asarray(x, dtype=np.float64)
    for layer in ARCHITECTURES[name]:
        kind = layer[0]
        saved = x
        if kind == "flatten":
            x = x.reshape(x.shape[0], -1)
        elif kind == "relu":
            x = np.maximum(x, 0.0)
        elif kind == "linear":
            x = x @ p[f"{layer[1]}.weight"].T + p[f"{layer[1]}.bias"]
        elif kind == "conv":
            x, saved = _conv(x, p[f"{layer[1]}.weight"], p[f"{layer[1]}.bias"], layer[2])
        elif kind == "pool":
            x, first = _pool(x, layer[1])
            saved = (saved.shape, first)
        if keep is not None:
            keep.append(saved)
    return x


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the examples of -log softmax(logits)[label]."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def loss_and_gradients(name: str, params: dict, x: np.ndarray, labels: np.ndarray):
    """(logits, mean cross-entropy, {name: dLoss/dparameter}) in float64."""
    p = {key: np.asarray(value, dtype=np.float64) for key, value in params.items()}
    saved: list = []
    logits = forward(name, p, x, keep=saved)
    loss = cross_entropy(logits, labels)
    dy = softmax(logits)
    dy[np.arange(len(labels)), labels] -= 1.0
    dy /= len(labels)
    grads = {}
    for layer, inputs in zip(reversed(ARCHITECTURES[name]), reversed(saved), strict=True):
        kind = layer[0]
        if kind == "flatten":
            dy = dy.reshape(inputs.shape)
        elif kind == "relu":
            dy = dy * (inputs > 0)
        elif kind == "linear":
            weight = p[f"{layer[1]}.weight"]
            grads[f"{layer[1]}.weight"] = dy.T @ inputs
            grads[f"{layer[1]}.bias"] = dy.sum(axis=0)
            dy = dy @ weight
        elif kind == "conv":
            dy, grads[f"{layer[1]}.weight"], grads[f"{layer[1]}.bias"] = _conv_backward(
                dy, inputs, p[f"{layer[1]}.weight"], layer[2])
        elif kind == "pool":
            shape, first = inputs
            dy = _pool_backward(dy, first, shape, layer[1])
    return logits, loss, grads


def confusion(predicted: np.ndarray, labels: np.ndarray, classes: int = 10) -> np.ndarray:
    """Counts by hand: row = true class, column = predicted class."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    for true, guess in zip(labels.tolist(), predicted.tolist(), strict=True):
        counts[true, guess] += 1
    return counts


def ambiguous(logits: np.ndarray, margin: float = 1e-4) -> np.ndarray:
    """Examples whose two largest logits are within ``margin``: float32 rounding may flip their argmax."""
    top2 = np.sort(logits, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) < margin
