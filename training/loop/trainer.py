"""Trainer: epochs of training and evaluation, progress, history, checkpoints and plots."""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from layers import CrossEntropyLoss

from ..errors import TrainingDiverged, XpnetError, setting
from ..saving.checkpoint import save_checkpoint
from ..saving.layer_stats_plot import plot_layer_stats
from ..saving.metrics_file import write_error, write_metrics
from ..saving.plots import (
    first_layer_filters,
    most_confident_mistakes,
    plot_confusion,
    plot_curves,
    plot_filters,
    plot_mistakes,
)
from .metrics import confusion_matrix
from .tally import CorrectCount, Tally


@dataclass
class Evaluation:
    """The result of one pass over a test set."""

    loss: float
    accuracy: float
    predictions: np.ndarray  # (N,) int64 predicted classes, on the host
    labels: np.ndarray  # (N,) int64 true classes, on the host
    confusion: np.ndarray  # (C, C) counts, row = true class
    confidence: np.ndarray | None = None  # (N,) the probability the model gave its predicted class
    indices: np.ndarray | None = None  # (N,) the data set index of each example, in evaluation order


def max_probability(xp, logits, row_max):
    """max_c softmax(z)_c = 1 / Σ_c exp(z_c - max z): the probability of the predicted class (fused, with its sum)."""
    return 1 / xp.sum(xp.exp(logits - row_max), axis=1)


# A training loss this many times that of guessing (log of the number of classes) means
# the weights have blown up: no model that learns gets there, even one that overfits.
EXPLODED_LOSS_FACTOR = 10


class Trainer:
    """Trains ``model`` with ``optimizer`` and evaluates it after every epoch.

    Each epoch: shuffle (the loader's order is a function of seed and epoch), forward,
    loss, backward, optimizer step for each batch; then evaluate on the test loader, append
    a row to ``history`` and, when ``out_dir`` is set, write ``checkpoint.npz`` (last
    epoch), ``best.npz`` (best test accuracy), ``metrics.json``, ``curves.png``,
    ``confusion.png``, ``mistakes.png`` (the most confidently wrong test images) and
    ``filters.png`` (the first layer's filters) there.

    ``schedule`` (training/schedules.py), if given, sets the optimizer's learning rate before
    every step; ``step`` counts the steps taken (saved in checkpoints, so a resumed run
    continues the schedule where it was). A training loss that explodes but stays finite
    gets one warning through ``warn`` (stderr by default).

    ``layer_stats`` (loop/layer_stats.py), if given, records each layer's activations, gradient
    norms and update ratios every few steps, on the device, read once per epoch; they go into
    metrics.json and ``layers.png``.

    ``best.npz`` always holds the epoch that ``history`` says is best (the first of the highest
    test accuracy), also when ``history`` starts with the epochs of a resumed run: it is written
    only when the epoch just trained is that epoch. (Its earlier best, if any, is out_dir's
    best.npz already; training.run.best_file puts it there on a resume into another folder.)

    ``on_checkpoint(epoch)``, if given, is called each time ``checkpoint.npz`` holds a new epoch.

    ``progress``: a progress bar per epoch, drawn only in a terminal or a notebook (not into
    a file or a CI log, where ``log``'s one line per epoch says enough).

    The running loss and the count of correct predictions stay on the device; they are
    read back only every ``refresh_every`` steps (for the progress bar) and at the end of
    the epoch, so the GPU is not made to wait for the host on every step.
    """

    def __init__(self, model, optimizer, backend, *, out_dir=None, config: dict | None = None,
                 progress: bool = True, log: Callable[[str], None] = print, refresh_every: int = 20,
                 schedule=None, warn: Callable[[str], None] | None = None, layer_stats=None,
                 on_checkpoint: Callable[[int], None] | None = None):
        self.model, self.optimizer, self.backend = model, optimizer, backend
        self.loss = CrossEntropyLoss(check_labels=False)  # datasets are validated when loaded
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.config = dict(config or {})
        self.progress, self.log, self.refresh_every = progress, log, max(1, int(refresh_every))
        self.history: list[dict] = []
        self.interrupted = False
        self.last_evaluation: Evaluation | None = None
        # The epoch that out_dir/checkpoint.npz is known to hold (None: no checkpoint yet).
        self.checkpoint_epoch: int | None = None
        self.schedule = schedule
        self.step = 0  # training steps taken, over all epochs (a schedule's position)
        self.warn = warn if warn is not None else (lambda message: print(message, file=sys.stderr, flush=True))
        self.warned = False
        self._reported_fallbacks: set[str] = set()
        self._test_images = None
        self.layer_stats = layer_stats  # a LayerStats (layer_stats.py) to record every few steps, or None
        self.on_checkpoint = on_checkpoint

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, train_loader, test_loader, epochs: int, start_epoch: int = 0) -> list[dict]:
        """Train from epoch ``start_epoch + 1`` to ``epochs`` (inclusive); returns the history.

        Ctrl-C (or SIGTERM, which the CLI turns into KeyboardInterrupt) stops at once;
        the checkpoint of the last completed epoch stays, and ``self.interrupted`` is set.
        A loss that becomes NaN or infinite raises TrainingDiverged before anything of that
        epoch is saved, so ``checkpoint.npz`` keeps the last good epoch.
        """
        self.interrupted = False
        resumed_here = start_epoch > 0 and self.out_dir is not None and (self.out_dir / "checkpoint.npz").is_file()
        self.checkpoint_epoch = start_epoch if resumed_here else None
        self._test_images = getattr(test_loader, "images", None)
        try:
            for epoch in range(start_epoch + 1, epochs + 1):
                row = self._train_epoch(train_loader, epoch, epochs)
                evaluation = self.evaluate(test_loader)
                self._check_finite(evaluation.loss, epoch, None)
                row.update(test_loss=evaluation.loss, test_acc=evaluation.accuracy)
                self.history.append(row)
                self.last_evaluation = evaluation
                self.log(
                    f"epoch {epoch}/{epochs}  train loss {row['train_loss']:.4f}  train acc {100 * row['train_acc']:.2f}%  "
                    f"test loss {row['test_loss']:.4f}  test acc {100 * row['test_acc']:.2f}%  "
                    f"{row['examples_per_sec']:,.0f} ex/s  {row['seconds']:.1f} s"
                )
                self._report_fallbacks()
                if self.out_dir is not None:
                    self._save_epoch(epoch, evaluation)
        except KeyboardInterrupt:
            self.interrupted = True
            done = self.history[-1]["epoch"] if self.history else start_epoch
            where = ""
            if self.out_dir is not None:
                where = (f"; {self.out_dir / 'checkpoint.npz'} holds epoch {self.checkpoint_epoch}"
                         if self.checkpoint_epoch else "; no checkpoint was saved")
            self.log(f"interrupted during epoch {done + 1}{where}")
        return self.history

    def _train_epoch(self, loader, epoch: int, epochs: int) -> dict:
        xp, model = self.backend.xp, self.model
        model.train()
        loader.set_epoch(epoch)
        # Σ loss·batch and Σ correct stay on the device until read (every refresh_every steps)
        loss_sum, correct = Tally(xp), CorrectCount(self.backend)
        seen = 0
        # disable=None: a bar only where it can be redrawn (a terminal; a notebook draws a widget). Into a file or a
        # CI log each redraw would be one more line; there the per-epoch line is the progress (Keras' verbose=2).
        bar = tqdm(total=len(loader), desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False,
                   disable=None if self.progress else True, dynamic_ncols=True)
        start = time.perf_counter()
        try:
            for step, (x, y) in enumerate(loader, start=1):
                loss, predicted = self.train_step(x, y)
                batch = x.shape[0]
                seen += batch
                loss_sum.add(loss, weight=batch)
                correct.add(predicted, y)
                bar.update(1)
                if step % self.refresh_every == 0:
                    running = loss_sum.total() / seen
                    self._check_finite(running, epoch, step)
                    self._check_not_exploded(running, epoch, step)
                    bar.set_postfix(loss=f"{running:.4f}", acc=f"{100 * correct.total() / seen:.1f}%")
            self.backend.synchronize()
            if self.layer_stats is not None:
                self.layer_stats.read()  # the epoch's statistics, in one device-to-host copy
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        train_loss = loss_sum.total() / max(seen, 1)
        self._check_finite(train_loss, epoch, len(loader))
        self._check_not_exploded(train_loss, epoch, None)
        return {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": correct.total() / max(seen, 1),
            "examples_per_sec": seen / seconds if seconds > 0 else float("nan"),
            "seconds": seconds,
        }

    def train_step(self, x, y):
        """Forward, loss, backward and an optimizer step on one batch; returns the loss (0-d) and
        the predicted classes (N,), both left on the device."""
        stats = self.layer_stats if self.layer_stats is not None and self.layer_stats.due(self.step) else None
        logits = stats.forward(x) if stats else self.model.forward(x)
        loss = self.loss.forward(logits, y)
        self.model.backward(self.loss.backward(), input_grad=False)
        if self.schedule is not None:
            self.schedule.apply(self.optimizer, self.step)  # host numbers, handed to the update kernel
        if stats:
            stats.before_update()
        self.optimizer.step()
        if stats:
            stats.after_update(self.step)
        self.step += 1
        return loss, self.backend.xp.argmax(logits, axis=1)

    def _check_finite(self, value: float, epoch: int, step: int | None) -> None:
        """Raise TrainingDiverged for a NaN/infinite loss (``step`` None: the test loss)."""
        if math.isfinite(value):
            return
        if self.out_dir is None:
            kept = ""
        elif self.checkpoint_epoch:
            kept = f"; the last good checkpoint, {self.out_dir / 'checkpoint.npz'} (epoch {self.checkpoint_epoch}), is intact"
        else:
            kept = "; no checkpoint was saved"
        where = f"the training loss became {value} at epoch {epoch}, step {step}" if step is not None else \
            f"the test loss became {value} after epoch {epoch}"
        raise TrainingDiverged(
            f"{where}: the learning rate (lr={getattr(self.optimizer, 'lr', '?')}) is probably too high; "
            f"try a smaller {setting('lr')}{kept}"
        )

    def _report_fallbacks(self) -> None:
        """Say once which fused kernels were not used (cuda): they cost speed, not correctness."""
        new = [line for line in self.backend.fallbacks() if line not in self._reported_fallbacks]
        if new:
            self._reported_fallbacks.update(new)
            self.warn(f"warning: {len(new)} fused GPU kernel(s) fell back to their plain version (slower, same "
                      "result): " + "; ".join(new))

    def _check_not_exploded(self, value: float, epoch: int, step: int | None) -> None:
        """Warn (once per run) about a finite training loss far above that of guessing."""
        chance = math.log(getattr(self.model, "num_classes", 10))
        if self.warned or not value > EXPLODED_LOSS_FACTOR * chance:
            return
        self.warned = True
        where = f"epoch {epoch}" + (f", step {step}" if step is not None else "")
        self.warn(f"warning: the training loss is {value:.4g} at {where}, more than {EXPLODED_LOSS_FACTOR}x the "
                  f"{chance:.2f} of guessing: the weights have blown up; the learning rate "
                  f"(lr={getattr(self.optimizer, 'lr', '?')}) is probably too high; try a smaller {setting('lr')}")

    # -- evaluation -------------------------------------------------------------------------
    def evaluate(self, loader) -> Evaluation:
        """Loss, accuracy and confusion matrix of the model on every example of ``loader``."""
        return evaluate(self.model, loader, self.backend)

    # -- output -----------------------------------------------------------------------------
    def _save_epoch(self, epoch: int, evaluation: Evaluation) -> None:
        out = self.out_dir
        arguments = dict(model=self.model, optimizer=self.optimizer, epoch=epoch, backend=self.backend,
                         config=self.config, history=self.history, step=self.step,
                         schedule=None if self.schedule is None else self.schedule.state_dict())
        save_checkpoint(out / "checkpoint.npz", **arguments)
        self.checkpoint_epoch = epoch
        if self.on_checkpoint is not None:
            self.on_checkpoint(epoch)
        # best.npz follows the history's best (the first maximum, as max() and the reports find it), not
        # "whether a best.npz exists": on a resume into another folder the best may be a resumed epoch
        best_before = max((row["test_acc"] for row in self.history[:-1]), default=-1.0)
        if self.history[-1]["test_acc"] > best_before:
            save_checkpoint(out / "best.npz", **arguments)
        try:
            layer_stats = None if self.layer_stats is None else self.layer_stats.as_dict()
            write_metrics(out / "metrics.json", self.config, self.history, evaluation, layer_stats=layer_stats)
            plots = [(lambda path: plot_curves(self.history, path), "curves.png"),
                     (lambda path: plot_confusion(evaluation.confusion, path), "confusion.png"),
                     (lambda path: self._plot_mistakes(evaluation, path), "mistakes.png"),
                     (self._plot_filters, "filters.png")]
            if layer_stats is not None:
                plots.append((lambda path: plot_layer_stats(layer_stats, path), "layers.png"))
            for plot, name in plots:
                try:
                    plot(out / name)
                except OSError as exc:
                    raise write_error(out / name, exc) from exc
        except XpnetError as exc:
            raise XpnetError(f"{exc} ({out / 'checkpoint.npz'} holds epoch {epoch}; resume from it)") from exc


    def _plot_mistakes(self, evaluation: Evaluation, path: Path) -> None:
        if self._test_images is None or evaluation.confidence is None or evaluation.indices is None:
            return
        chosen = most_confident_mistakes(evaluation.labels, evaluation.predictions, evaluation.confidence)
        plot_mistakes(self._test_images[evaluation.indices[chosen]], evaluation.labels[chosen],
                      evaluation.predictions[chosen], evaluation.confidence[chosen], path)

    def _plot_filters(self, path: Path) -> None:
        found = first_layer_filters(self.model)
        if found is None:
            return
        layer, title = found
        weight = self.backend.to_numpy(layer.weight.data)
        if weight.ndim == 2:  # a Linear over whole images: its first rows, as images
            weight = weight[:64].reshape((-1, *self.model.input_shape))
        plot_filters(weight, path, title)


def evaluate(model, loader, backend) -> Evaluation:
    """Loss, accuracy and confusion matrix of ``model`` on every example of ``loader``.

    The model runs in eval mode (BatchNorm's running statistics, no dropout) and is put
    back in training mode after. Everything stays on the device until the end.
    """
    xp, loss = backend.xp, CrossEntropyLoss(check_labels=False)  # datasets are validated when loaded
    model.eval()
    loss_sum = Tally(xp)
    predictions, labels, confidences = [], [], []
    indices = loader.order() if hasattr(loader, "order") else None  # the order it is about to go through
    try:
        for x, y in loader:
            logits = model.forward(x)
            loss_sum.add(loss.forward(logits, y), weight=x.shape[0])
            predictions.append(xp.argmax(logits, axis=1))
            confidences.append(backend.fuse(max_probability)(logits, xp.max(logits, axis=1, keepdims=True)))
            labels.append(y)
    finally:
        model.train()
    predicted = backend.to_numpy(xp.concat(predictions)).astype(np.int64)
    true = backend.to_numpy(xp.concat(labels)).astype(np.int64)
    classes = getattr(model, "num_classes", 10)
    return Evaluation(
        loss=loss_sum.total() / len(true),
        accuracy=float(np.mean(predicted == true)),
        predictions=predicted,
        labels=true,
        confusion=confusion_matrix(predicted, true, classes),
        confidence=backend.to_numpy(xp.concat(confidences)).astype(np.float64),
        indices=indices,
    )
