"""The parts of a run, made from its settings: the backend, the data, the model, the optimizer
and the learning-rate schedule, each with the check that gives a mistake one clear error."""
from __future__ import annotations

import inspect
import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from backends import BackendUnavailableError, get_backend
from models import MODELS

from .. import interrupts
from ..data import DataLoader, channel_stats, download, load_svhn, load_svhn_split
from ..data.augment import RandomShift
from ..data.synthetic import make_synthetic, make_synthetic_test
from ..errors import XpnetError, setting
from ..optim import SGD, Adam, AdamW
from ..schedules import make_schedule
from .config import EVALUATION_BATCH, MAX_SHIFT, RunConfig, expanded

BYTES_PER_IMAGE = 3 * 32 * 32


def logger(config: RunConfig, log=None):
    """Where progress lines go: ``log`` (default print), or nowhere with ``config.quiet``."""
    if config.quiet:
        return lambda message: None
    return log if log is not None else (lambda message: print(message, flush=True))


# -- the device -------------------------------------------------------------------------------------
def check_environment() -> None:
    """XPNET_NUM_THREADS, when set, must be a whole number ≥ 1 (the cpu backend's threads); XPNET_CACHE,
    when set, a folder name whose ``~user`` (if any) names a user."""
    cache = os.environ.get("XPNET_CACHE", "")
    if cache:
        try:
            expanded(cache)
        except ValueError as exc:
            raise XpnetError(f"XPNET_CACHE: {exc}; set it to a folder, or unset it to use ~/.cache/xpnet") from None
    value = os.environ.get("XPNET_NUM_THREADS", "").strip()
    if not value:
        return
    try:
        valid = int(value) >= 1
    except ValueError:
        valid = False
    if not valid:
        raise XpnetError(f"XPNET_NUM_THREADS must be a whole number of at least 1 (the cpu backend's threads), got {value!r}: "
                         f"set it to e.g. 2, or unset it to use every core")


def choose_backend(device: str, log):
    """The backend of ``device`` (auto: cuda when it works, else cpu, with a note that says why)."""
    def backend_named(name: str):
        with interrupts.deferred():  # importing CuPy and starting CUDA: not to be cut in half
            return get_backend(name)

    try:
        backend = backend_named(device)
    except BackendUnavailableError as exc:
        raise XpnetError(exc.advice(f"run with {setting('device')} cpu")) from None
    if device == "auto" and backend.name == "cpu":
        try:
            backend_named("cuda")
        except BackendUnavailableError as exc:
            log(f"note: {setting('device')} auto is using the cpu ({exc.reason})")
    interrupts.check()
    return backend


@contextmanager
def out_of_memory_advice(activity: str, advice: str):
    """Turn running out of memory during ``activity`` into one error line with ``advice``."""
    try:
        yield
    except MemoryError:
        raise XpnetError(f"out of memory while {activity}; {advice}") from None
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":  # cupy.cuda.memory.OutOfMemoryError
            raise XpnetError(f"the GPU ran out of memory ({exc}); {advice}") from None
        raise


@contextmanager
def np_quiet():
    """A diverging loss gets one clear error instead of NumPy's overflow warnings.

    Also from the cpu backend's worker threads (np.errstate only covers the calling thread).
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


# -- the data ---------------------------------------------------------------------------------------
def check_memory_for(sizes: dict[str, int]) -> None:
    """Refuse, before generating it, a synthetic set larger than this machine's memory.

    ``sizes`` maps settings to image counts, e.g. {"train_size": 20000, "test_size": 5000}.
    """
    needed = sum(sizes.values()) * BYTES_PER_IMAGE
    try:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): let the allocation decide
        return
    if needed > available:
        counts = " and ".join(f"{setting(name)} {count:,}" for name, count in sizes.items())
        raise XpnetError(f"{counts}: the synthetic images would need {needed / 2**30:,.1f} GiB of memory, more than this "
                         f"machine's {available / 2**30:,.1f} GiB: choose a smaller {setting(max(sizes, key=sizes.get))}")


def svhn_folder(config: RunConfig, chosen: RunConfig, checkpoint, splits) -> Path:
    """The SVHN folder, downloaded into with ``download``; a folder saved in a checkpoint is checked here.

    ``chosen`` is the run's configuration as given (before the checkpoint filled it in).
    """
    data_dir = Path(config.data_dir).expanduser()
    if config.download:
        download.download_svhn(data_dir, splits=splits, progress=not config.quiet)
    elif checkpoint is not None and checkpoint.config.get("dataset") == "svhn" and chosen.data_dir is None \
            and not data_dir.is_dir():
        relative = "" if data_dir.is_absolute() else (
            f"; it is relative to the folder that run started in, and from here it would be {data_dir.absolute()}")
        raise XpnetError(f"the SVHN folder {data_dir} that {checkpoint.path} was trained with does not exist here{relative}: "
                         f"pass {setting('data_dir')} with the folder that holds "
                         f"{' and '.join(f'{s}_32x32.mat' for s in splits)}")
    return data_dir


def load_training_data(config: RunConfig, chosen: RunConfig, log, checkpoint=None):
    """(train, test) ImageSets of the configured dataset."""
    if config.dataset == "synthetic":
        check_memory_for({"train_size": config.train_size, "test_size": config.test_size})
        started = time.perf_counter()
        with out_of_memory_advice("making the synthetic images", f"choose a smaller {setting('train_size')}"):
            train, test = make_synthetic(config.train_size, config.test_size, seed=config.seed)
        log(f"synthetic digits: {len(train):,} train / {len(test):,} test images ({time.perf_counter() - started:.1f} s)")
        return train, test
    interrupts.import_whole("scipy.io")
    splits = ("train", "test", "extra") if config.extra else ("train", "test")
    data_dir = svhn_folder(config, chosen, checkpoint, splits)
    with out_of_memory_advice("reading the SVHN files", f"leave out {setting('extra')}, or use a machine with more memory"):
        train, test = load_svhn(data_dir, extra=bool(config.extra))
    log(f"SVHN from {data_dir}: {len(train):,} train / {len(test):,} test images")
    return train, test


def load_test_data(config: RunConfig, chosen: RunConfig, log, checkpoint):
    """Only the test split: all that evaluation needs."""
    if config.dataset == "synthetic":
        check_memory_for({"test_size": config.test_size})
        n_train = checkpoint.config.get("train_size")  # to find the training run's cached set
        if checkpoint.config.get("dataset") != "synthetic" or type(n_train) is not int or n_train < 1:
            n_train = None
        with out_of_memory_advice("making the synthetic images", f"choose a smaller {setting('test_size')}"):
            return make_synthetic_test(config.test_size, seed=config.seed, n_train=n_train)
    interrupts.import_whole("scipy.io")
    test = load_svhn_split(svhn_folder(config, chosen, checkpoint, ("test",)), "test")
    log(f"SVHN test set from {config.data_dir}: {len(test):,} images")
    return test


def normalisation_of(train_set, checkpoint):
    """(mean, std): the checkpoint's, else measured on the training images (never the test images)."""
    if checkpoint is not None and "mean" in checkpoint.config:
        return checkpoint.normalisation()
    mean, std = channel_stats(train_set.images)
    if (std == 0).any():
        channel = int(std.argmin())
        raise XpnetError(f"every training image of {train_set.name} has the same value in colour channel {channel} "
                         f"({round(255 * mean[channel])} of 255), so the inputs cannot be normalised: check the data files")
    return mean, std


def make_loaders(config: RunConfig, train_set, test_set, backend, mean, std) -> tuple[DataLoader, DataLoader]:
    """``(train_loader, test_loader)``: shuffled (and with ``augment`` randomly shifted) training batches
    of ``batch_size``, and the test set in order, in batches of at least EVALUATION_BATCH; both
    normalised with the training set's ``mean`` and ``std``."""
    options = dict(backend=backend, mean=mean, std=std, dtype=config.dtype)
    augment = RandomShift(MAX_SHIFT, seed=config.seed) if config.augment else None
    train_loader = DataLoader(train_set.images, train_set.labels, config.batch_size, shuffle=True, seed=config.seed,
                              augment=augment, **options)
    test_loader = DataLoader(test_set.images, test_set.labels, max(config.batch_size, EVALUATION_BATCH), shuffle=False,
                             **options)
    return train_loader, test_loader


# -- the model, the optimizer and the schedule ------------------------------------------------------
def model_options(config: RunConfig) -> dict:
    """Constructor options of the configured model: ``dropout`` for models with Dropout layers."""
    if config.dropout is None:
        return {}
    if "dropout" not in inspect.signature(MODELS[config.model]).parameters:
        raise XpnetError(f"{setting('dropout')} applies to models with dropout layers (cnn); {config.model} has none: "
                         f"leave out {setting('dropout')} or use {setting('model')} cnn")
    return {"dropout": config.dropout}


def make_optimizer(config: RunConfig, parameters):
    """The configured optimizer of ``parameters``, with its learning rate and weight decay."""
    if config.optimizer == "sgd":
        return SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    optimizer_class = {"adam": Adam, "adamw": AdamW}[config.optimizer]
    return optimizer_class(parameters, lr=config.lr, weight_decay=config.weight_decay)


def planned_schedule(config: RunConfig, steps_per_epoch: int, checkpoint, log):
    """The learning-rate schedule of the run, over all its steps (None for a constant rate).

    A resumed run keeps the plan it was started with (its total steps), so the schedule
    continues exactly; only the rate (``lr``, the peak) may be changed.
    """
    if config.schedule == "constant":
        return None
    total = config.epochs * steps_per_epoch
    saved = checkpoint.schedule if checkpoint is not None else None
    if saved and saved.get("name") == config.schedule and isinstance(saved.get("total_steps"), int) \
            and saved["total_steps"] >= 1:
        planned = saved["total_steps"]
        if planned != total:
            log(f"note: the {config.schedule} schedule was planned over {planned:,} steps "
                f"({planned / steps_per_epoch:g} epochs); it keeps that plan (and its last rate after it ends)")
        total = planned
    return make_schedule(config.schedule, config.lr, total)
