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
