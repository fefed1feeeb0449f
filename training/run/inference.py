"""evaluate(checkpoint) and predict(checkpoint, images): a trained network used from Python.

    from training.run import evaluate, predict
    evaluation = evaluate("runs/a/best.npz")               # loss, accuracy, confusion, ... on its test set
    prediction = predict("runs/a/best.npz", images)       # images: uint8 (N, 32, 32, 3), or image files
    prediction.classes, prediction.probabilities          # (N,), (N, 10)

The checkpoint is checked as a resumed one is (checks.py); the images are normalised with
the statistics it saved, exactly as in training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from array_api_compat import numpy as host_xp

from layers.activations import softmax
from models import build_model

from .. import interrupts
from ..data import DataLoader
from ..data.images import read_image
from ..errors import DataError, XpnetError, setting
from ..loop.metrics import per_class_accuracy
from ..loop.trainer import Evaluation
from ..loop.trainer import evaluate as evaluate_model
from .checks import check_command_settings, check_data_settings, checked_checkpoint
from .config import EVALUATION_BATCH, EVALUATION_SETTINGS, PREDICTION_SETTINGS, RunConfig
from .prepare import choose_backend, load_test_data, logger, np_quiet, out_of_memory_advice


@dataclass
class Prediction:
    """The network's class probabilities for N images: ``probabilities`` (N, C) float64, rows sum to 1."""

    probabilities: np.ndarray

    @property
    def classes(self) -> np.ndarray:
        """(N,) the likeliest class of each image."""
        return self.top(1)[:, 0]

    def top(self, k: int = 3) -> np.ndarray:
        """(N, k) the k likeliest classes of each image, likeliest first (ties: the lower class)."""
        return np.argsort(-self.probabilities, axis=1, kind="stable")[:, :k]


def evaluate(checkpoint, config: RunConfig | None = None, *, log=None, **options) -> Evaluation:
    """Loss, accuracy and confusion matrix of the network in ``checkpoint`` on its test set.

    Only the test split is read: the run's own (its dataset, seed and size), unless
    ``config`` (or ``options``, RunConfig's fields) chooses another. ``batch_size`` here is
    images per forward pass (default EVALUATION_BATCH).
    """
    chosen = _chosen(config, options, "evaluate")
    log = logger(chosen, log)
    checkpoint = checked_checkpoint(Path(checkpoint).expanduser(), "evaluate", chosen)
    config = chosen.resolved(checkpoint, used=EVALUATION_SETTINGS)
    check_data_settings(chosen, config, "evaluate", checkpoint)
    mean, std = checkpoint.normalisation()
    backend = choose_backend(config.device, log)
    model = restored_model(checkpoint, config, backend)
    interrupts.check()
    test_set = load_test_data(config, chosen, log, checkpoint)
    interrupts.check()
    loader = DataLoader(test_set.images, test_set.labels, chosen.batch_size or EVALUATION_BATCH, backend, mean, std,
                        shuffle=False, dtype=config.dtype)
    with np_quiet(), out_of_memory_advice("evaluating", f"try a smaller {setting('batch_size')}"):
        result = evaluate_model(model, interrupts.StopOnSignal(loader), backend)
    if not math.isfinite(result.loss):
        raise XpnetError(f"the network of {checkpoint.path} gives a {result.loss} loss on {test_set.name}: its outputs "
                         f"overflow, so its accuracy means nothing; the checkpoint is damaged or diverged: use another one")
    log(f"{checkpoint.path} ({checkpoint.model_name}, epoch {checkpoint.epoch}) on {test_set.name}: "
        f"loss {result.loss:.4f}, accuracy {100 * result.accuracy:.2f}% of {len(result.labels):,} images")
    log("per-class accuracy: " + "  ".join(f"{digit}: {100 * value:.1f}%"
                                           for digit, value in enumerate(per_class_accuracy(result.confusion))))
    return result


def predict(checkpoint, images, config: RunConfig | None = None, *, log=None, **options) -> Prediction:
    """The network's class probabilities for ``images``: uint8 arrays (N, 32, 32, 3) or (N, 3, 32, 32),
    or a list of image files (PNG, JPEG, ...; each read as 32×32 RGB)."""
    chosen = _chosen(config, options, "predict")
    log = logger(chosen, log)
    checkpoint = checked_checkpoint(Path(checkpoint).expanduser(), "predict", chosen)
    config = chosen.resolved(checkpoint, used=PREDICTION_SETTINGS)
    mean, std = checkpoint.normalisation()
    backend = choose_backend(config.device, log)
    model = restored_model(checkpoint, config, backend)
    batch, names = image_batch(images)
    step = chosen.batch_size or EVALUATION_BATCH
    with np_quiet(), out_of_memory_advice("classifying the images", f"try a smaller {setting('batch_size')}"):
        probabilities = np.concatenate([class_probabilities(model, backend, batch[start:start + step], mean, std)
                                        for start in range(0, len(batch), step)])
    for name, row in zip(names, probabilities):
        if not np.isfinite(row).all():
            raise XpnetError(f"the network of {checkpoint.path} gives non-finite outputs for {name}: they overflow, so its "
                             f"classes mean nothing; the checkpoint is damaged or diverged: use another one")
    return Prediction(probabilities)


def _chosen(config: RunConfig | None, options: dict, command: str) -> RunConfig:
    """The settings ``command`` is given: ``config``'s, changed by ``options``; only those it honours."""
    chosen = RunConfig(**options) if config is None else RunConfig(**{**vars(config), **options})
    check_command_settings(chosen, command)
    return chosen


def image_batch(images) -> tuple[np.ndarray, list[str]]:
    """``(batch, names)``: uint8 images (N, 3, 32, 32) and what to call each in a message."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] not in ((32, 32, 3), (3, 32, 32)):
            raise DataError(f"images must be a uint8 array (N, 32, 32, 3) or (N, 3, 32, 32), "
                            f"got {images.dtype} {images.shape}")
        batch = images if images.shape[1] == 3 else images.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(batch), [f"image {index}" for index in range(len(batch))]
    paths = [images] if isinstance(images, (str, Path)) else list(images)
    if not paths:
        raise DataError("no images to classify")
    interrupts.import_whole("PIL.Image", "PIL.ImageOps")  # in one piece, even if a Ctrl-C comes meanwhile
    return np.stack([read_image(path) for path in paths]), [str(path) for path in paths]


def restored_model(checkpoint, config: RunConfig, backend):
    """The checkpoint's network on ``backend``, in eval mode."""
    model = build_model(checkpoint.model_name, seed=0).to(backend, config.dtype)
    checkpoint.restore_model(model, backend)
    return model.eval()


def class_probabilities(model, backend, images, mean, std) -> np.ndarray:
    """Softmax of the network's outputs for uint8 images (N, 3, 32, 32), as float64 on the host.

    The images are normalised by the DataLoader, exactly as in training; the probabilities
    are taken from the logits in float64, so that tiny ones still print right.
    """
    loader = DataLoader(images, np.zeros(len(images), np.int64), len(images), backend, mean, std, shuffle=False,
                        dtype=model.dtype)
    (x, _), = loader
    logits = backend.to_numpy(model.forward(x)).astype(np.float64)
    return softmax(host_xp, logits, axis=1)
