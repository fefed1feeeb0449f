"""Training curves and the confusion matrix as PNG files (matplotlib's Agg canvas, no window)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .atomic import write_atomically


def plot_curves(history: list[dict], path) -> Path:
    """Loss (train, test) and accuracy (train, test) per epoch, side by side."""
    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(10, 4))  # fixed margins: constrained layout doubled the drawing time
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.91, wspace=0.22)
    FigureCanvasAgg(figure)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [row["train_loss"] for row in history], "o-", label="train")
    loss_axes.plot(epochs, [row["test_loss"] for row in history], "s-", label="test")
    loss_axes.set(title="Cross-entropy loss", xlabel="epoch", ylabel="loss")
    accuracy_axes.plot(epochs, [100 * row["train_acc"] for row in history], "o-", label="train")
    accuracy_axes.plot(epochs, [100 * row["test_acc"] for row in history], "s-", label="test")
    accuracy_axes.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend()
        axes.xaxis.get_major_locator().set_params(integer=True)
    write_atomically(Path(path), lambda stream: figure.savefig(stream, format="png", dpi=100))
    return Path(path)


def plot_confusion(confusion: np.ndarray, path, class_names=None, title: str = "Confusion matrix (test)") -> Path:
    """Counts per (true, predicted) class, coloured by the row's share, with each count written."""
    confusion = np.asarray(confusion)
    classes = confusion.shape[0]
    names = [str(c) for c in range(classes)] if class_names is None else list(class_names)
    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    figure = Figure(figsize=(6.5, 5.5))
    figure.subplots_adjust(left=0.1, right=0.97, bottom=0.1, top=0.93)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, label="share of the true class")
    for row in range(classes):
        for column in range(classes):
            colour = "white" if shares[row, column] > 0.5 else "black"
            axes.text(column, row, str(confusion[row, column]), ha="center", va="center", fontsize=7, color=colour)
    axes.set(xticks=range(classes), yticks=range(classes), xticklabels=names, yticklabels=names,
             xlabel="predicted", ylabel="true", title=title)
    write_atomically(Path(path), lambda stream: figure.savefig(stream, format="png", dpi=100))
    return Path(path)


def mosaic(tiles: np.ndarray, columns: int, gap: int = 1, background: float = 1.0) -> np.ndarray:
    """Tiles (K, h, w, C) laid out in rows of ``columns``, ``gap`` pixels apart: (rows·(h+gap), columns·(w+gap), C).

    One image drawn once is much faster for matplotlib than one axes per tile.
    """
    count, h, w, c = tiles.shape
    rows = max(1, -(-count // columns))
    grid = np.full((rows * (h + gap), columns * (w + gap), c), background, dtype=np.float64)
    for k in range(count):
        r, q = divmod(k, columns)
        grid[r * (h + gap):r * (h + gap) + h, q * (w + gap):q * (w + gap) + w] = tiles[k]
    return grid


def most_confident_mistakes(labels, predictions, confidence, count: int = 25) -> np.ndarray:
    """Indices of the (at most) ``count`` wrong predictions with the highest confidence, highest first
    (ties: the earlier example first)."""
    labels, predictions, confidence = (np.asarray(a).reshape(-1) for a in (labels, predictions, confidence))
    wrong = np.flatnonzero(predictions != labels)
    return wrong[np.argsort(-confidence[wrong], kind="stable")][:count]


def plot_mistakes(images: np.ndarray, labels, predictions, confidence, path, count: int = 25,
                  class_names=None) -> Path:
    """The ``count`` test images the model got wrong with the highest confidence, in a grid.

    images (N, C, H, W) uint8 as in the data set (C = 3: RGB, C = 1: grey); labels,
    predictions (N,) classes; confidence (N,) the probability the model gave its prediction.
    Each tile is labelled "true → predicted (probability)". With no mistakes, the figure says so.
    """
    labels, predictions, confidence = (np.asarray(a).reshape(-1) for a in (labels, predictions, confidence))
    chosen = most_confident_mistakes(labels, predictions, confidence, count)
    names = (lambda c: str(c)) if class_names is None else (lambda c: str(class_names[c]))
    columns, gap = 5, 14  # the gap above each tile holds its label
    height = 1.6 * max(1, -(-len(chosen) // columns)) + 0.6
    figure = Figure(figsize=(7.5, height))
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.45 / height)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.axis("off")
    axes.set_title(f"The {len(chosen)} most confident mistakes: true → predicted (probability)" if len(chosen)
                   else "No mistakes on the test set", fontsize=10)
    if len(chosen):
        tiles = np.transpose(images[chosen], (0, 2, 3, 1)).astype(np.float64) / 255.0
        if tiles.shape[3] == 1:
            tiles = np.repeat(tiles, 3, axis=3)
        h, w = tiles.shape[1:3]
        padded = np.ones((len(chosen), h + gap, w, 3))
        padded[:, gap:, :, :] = tiles
        axes.imshow(mosaic(padded, columns, gap=3), interpolation="nearest")
        for k, index in enumerate(chosen):
            r, q = divmod(k, columns)
            axes.text(q * (w + 3) + w / 2, r * (h + gap + 3) + gap / 2,
                      f"{names(labels[index])} → {names(predictions[index])} ({100 * confidence[index]:.0f}%)",
                      ha="center", va="center", fontsize=8, color="darkred")
    write_atomically(Path(path), lambda stream: figure.savefig(stream, format="png", dpi=100))
    return Path(path)


def plot_filters(weight: np.ndarray, path, title: str = "First-layer filters") -> Path:
    """Each filter of a first layer as a small image: weight (F, C, kh, kw), C = 3 drawn as RGB.

    Each filter is scaled on its own to [0, 1] (its minimum black, its maximum white), so
    the tiles show the pattern each one looks for, not their relative sizes.
    """
    weight = np.asarray(weight, dtype=np.float64)
    count = weight.shape[0]
    low = weight.min(axis=(1, 2, 3), keepdims=True)
    span = np.maximum(weight.max(axis=(1, 2, 3), keepdims=True) - low, 1e-12)
    tiles = np.transpose((weight - low) / span, (0, 2, 3, 1))
    if tiles.shape[3] != 3:
        tiles = np.repeat(tiles.mean(axis=3, keepdims=True), 3, axis=3)
    columns = min(count, 8)
    rows = -(-count // columns)
    figure = Figure(figsize=(1.0 * columns + 0.4, 1.0 * rows + 0.6))
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.5 / (1.0 * rows + 0.6))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.axis("off")
    axes.set_title(f"{title}: {count} × {weight.shape[1]}×{weight.shape[2]}×{weight.shape[3]}", fontsize=9)
    axes.imshow(mosaic(tiles, columns, gap=max(1, weight.shape[2] // 4)), interpolation="nearest", vmin=0, vmax=1)
    write_atomically(Path(path), lambda stream: figure.savefig(stream, format="png", dpi=100))
    return Path(path)


def first_layer_filters(model):
    """(weight, description) of the model's first layer that looks at the image: its first Conv2D,
    or else a first Linear over whole images (each row drawn as an image, the first 64); None if neither."""
    from layers import Conv2D, Linear

    layers, found = list(getattr(model, "layers", [])), []
    while layers:  # depth first, in order, through nested Sequentials
        layer = layers.pop(0)
        if hasattr(layer, "layers"):
            layers = list(layer.layers) + layers
        elif isinstance(layer, (Conv2D, Linear)):
            found.append(layer)
    for layer in found:
        if isinstance(layer, Conv2D):
            return layer, "First convolution's filters"
    shape = tuple(getattr(model, "input_shape", ()))
    if found and len(shape) == 3 and found[0].in_features == shape[0] * shape[1] * shape[2]:
        return found[0], "First linear layer's weights as images (64 units)"
    return None
