"""train(config): a whole training run as one library call, what ``python cli.py`` does.

    from training.run import RunConfig, train
    result = train(RunConfig(model="lnet", epochs=3, train_size=2000, test_size=500, device="cpu", out="runs/a"))
    result.history[-1]["test_acc"], result.folder, result.best_epoch

In order: check the settings (and the checkpoint when resuming), claim the run folder (a
lock; never another run's files, unless ``overwrite``, and never a file that is no run's),
make the backend, data, model, optimizer and schedule (prepare.py), then let the Trainer
train, save and draw each epoch. The files of a run that ``overwrite`` replaces are set
aside (set_aside.py) until the new run has saved its first epoch, and put back if it fails
or is interrupted before that.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from models import build_model

from .. import interrupts
from ..errors import CheckpointError, XpnetError, setting
from ..loop.layer_stats import LayerStats
from ..loop.trainer import Evaluation, Trainer
from ..saving import metrics_file
from ..saving.checkpoint import read_header
from ..saving.regular_files import NotARegularFile, open_to_read
from .best_file import seed_best_file
from .checks import check_data_settings, check_training_settings, checked_checkpoint
from .config import RESUMED_SETTINGS, RunConfig
from .folder import (
    RUN_FILES,
    FolderInUseError,
    RunFolder,
    check_new_run,
    check_resume_target,
    check_run_file_kinds,
    check_strangers,
    claim,
)
from .prepare import (
    choose_backend,
    load_training_data,
    logger,
    make_loaders,
    make_optimizer,
    model_options,
    normalisation_of,
    np_quiet,
    out_of_memory_advice,
    planned_schedule,
)
from .set_aside import SetAside, left_aside, recover


@dataclass
class RunResult:
    """What a finished run gives back (its files are in ``folder``).

    history: one dict per epoch (epoch, train_loss, train_acc, test_loss, test_acc,
    examples_per_sec, seconds), also the resumed run's earlier epochs; best_epoch: the
    epoch of the best test accuracy (what best.npz holds); evaluation: the last epoch's
    test Evaluation (predictions, confusion, ...); config: the settings as filled in.
    """

    history: list[dict]
    model: object
    backend: object
    folder: Path
    best_epoch: int
    evaluation: Evaluation
    config: RunConfig

    @property
    def best(self) -> dict:
        """The history's row of the best epoch."""
        return next(row for row in self.history if row["epoch"] == self.best_epoch)


NOT_LOOKED = object()  # train() had not yet looked at the folder's checkpoint when it was interrupted


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped a run; every completed epoch is kept.

    ``checkpoint``: the file that holds the last completed epoch, ``epoch`` (None if no epoch
    was saved); ``folder``: the run folder (None if none was claimed yet); ``epochs``: the
    run's target, to continue with ``RunConfig(resume=checkpoint, epochs=epochs)``.
    """

    def __init__(self, checkpoint: Path | None, epoch: int | None, folder: Path | None, epochs: int):
        super().__init__(checkpoint, epoch)
        self.checkpoint, self.epoch, self.folder, self.epochs = checkpoint, epoch, folder, epochs

    def __str__(self) -> str:
        if self.epoch:
            return f"interrupted: {self.checkpoint} holds epoch {self.epoch}"
        if self.folder is not None:
            return f"interrupted before an epoch ended; nothing was saved in {self.folder}"
        return "interrupted before training began; nothing was saved"


def train(config: RunConfig, *, log=None) -> RunResult:
    """Train (or, with ``config.resume``, continue) a run; see the module's docstring.

    ``log`` receives each progress line (default: print them, unless ``config.quiet``).
    Raises XpnetError (one clear message) for a mistake, RunInterrupted on Ctrl-C.
    """
    log = logger(config, log)
    chosen = config  # the settings as given; ``config`` from here on: filled in from the checkpoint, then the defaults
    checkpoint = checked_checkpoint(chosen.resume, "resume", chosen) if chosen.resume is not None else None
    config = chosen.resolved(checkpoint, used=RESUMED_SETTINGS)
    check_data_settings(chosen, config, "resume" if checkpoint else "train", checkpoint)
    check_training_settings(chosen, config)
    if checkpoint is not None and checkpoint.epoch >= config.epochs:
        raise XpnetError(f"{chosen.resume} already holds {checkpoint.epoch} epochs; "
                         f"pass {setting('epochs')} greater than {checkpoint.epoch} to train further")
    folder, trainer, interrupted, aside, found = None, None, False, None, NOT_LOOKED
    try:
        with interrupts.deferred():  # under cli.py a Ctrl-C meanwhile is only recorded, and acted on just below
            folder, replaced, recovered = claim_output_folder(chosen, config, checkpoint)
            aside = SetAside(folder.path)
            found = file_identity(folder.path / "checkpoint.npz")  # another run's, or the resumed run's own
        interrupts.check()
        if folder.stale_lock_of:
            log(f"note: {folder.path} had a stale lock of process {folder.stale_lock_of}, which has ended; taking it over")
        if recovered:
            log(f"note: put back {', '.join(recovered)} in {folder.path}, which an interrupted {setting('overwrite')} "
                f"had set aside before the new run saved an epoch")
        for hidden, names in left_aside(folder.path, list(RUN_FILES)).items():
            log(f"note: {hidden} holds {', '.join(names)} of an older run that an interrupted {setting('overwrite')} "
                f"had set aside; they stay there, as {folder.path} holds a run of its own: move them out to keep "
                f"the older run, or remove {hidden}")
        trainer, train_loader, test_loader, start_epoch = prepared_trainer(chosen, config, checkpoint, folder, replaced,
                                                                           aside, log)
        with np_quiet(), out_of_memory_advice("training", f"try a smaller {setting('batch_size')}"):
            trainer.fit(train_loader, test_loader, config.epochs, start_epoch=start_epoch)
        interrupts.check()  # a signal recorded while the last epoch was saved (its file finished first) still stops the run
        interrupted = trainer.interrupted
    except KeyboardInterrupt:
        interrupted = True
    finally:
        interrupts.shutting_down()  # under cli.py's signal handling: a second Ctrl-C cannot cut this short
        saved_epoch = None
        if folder is not None:
            try:
                if aside is not None and aside.pending:  # the new run saved no epoch: the old one comes back
                    _restore(aside, log)
                path = folder.path / "checkpoint.npz"
                if found is not NOT_LOOKED and (file_identity(path) != found
                                                or (checkpoint is not None and "checkpoint.npz" not in replaced)):
                    saved_epoch = epoch_saved_in(path)  # written by this run, or an earlier state of it
            finally:
                folder.release()
    if interrupted:
        raise _interrupted(chosen, config, checkpoint, folder, saved_epoch)
    best = max(trainer.history, key=lambda row: row["test_acc"])
    return RunResult(history=trainer.history, model=trainer.model, backend=trainer.backend, folder=folder.path,
                     best_epoch=best["epoch"], evaluation=trainer.last_evaluation, config=config)


def claim_output_folder(chosen: RunConfig, config: RunConfig, checkpoint) -> tuple[RunFolder, list[str], list[str]]:
    """``(folder, replaced, recovered)``: the run folder, locked for this process and checked to lose no
    other run, the names of the files of another run in it that ``overwrite`` replaces, and those of
    the files an interrupted overwrite had set aside that were put back (set_aside.recover)."""
    if chosen.out is None and checkpoint is None:  # a fresh default name: runs/<model>-<timestamp>[-n]
        base = Path("runs") / f"{config.model}-{time.strftime('%Y%m%d-%H%M%S')}"
        for attempt in range(1, 100):
            candidate = base if attempt == 1 else base.with_name(f"{base.name}-{attempt}")
            if candidate.exists():
                continue
            try:
                folder = claim(candidate)
            except FolderInUseError:  # another run took this name a moment ago
                continue
            if folder.created(candidate):
                return folder, [], []
            folder.release()
        raise XpnetError(f"found no free folder name like {base}; choose one with {setting('out')}")
    out = Path(chosen.out).expanduser() if chosen.out is not None else Path(chosen.resume).parent
    folder = claim(out)
    try:
        check_run_file_kinds(folder)  # a link, a folder or a FIFO at a run file's name: before anything reads it
        recovered = recover(folder.path, list(RUN_FILES))
        check_strangers(folder)  # a file at a run file's name that is no run's: never replaced
        if checkpoint is None:
            check_new_run(folder, chosen.overwrite)
            replaced = folder.run_files()  # with overwrite; without it, check_new_run refused them
        else:
            replaced = check_resume_target(folder, Path(chosen.resume), checkpoint.history, chosen.overwrite)
    except BaseException:
        folder.release()
        raise
    return folder, replaced, recovered


def prepared_trainer(chosen: RunConfig, config: RunConfig, checkpoint, folder: RunFolder, replaced: list[str],
                     aside: SetAside, log):
    """Backend, data, model and optimizer: ``(trainer, train_loader, test_loader, start_epoch)`` ready to fit."""
    backend = choose_backend(config.device, log)
    interrupts.check()
    train_set, test_set = load_training_data(config, chosen, log, checkpoint)
    interrupts.check()
    mean, std = normalisation_of(train_set, checkpoint)
    model = build_model(config.model, seed=config.seed, **model_options(config)).to(backend, config.dtype)
    if hasattr(model, "dropout"):
        config.dropout = model.dropout
    saved = dict(config.to_dict(), mean=mean.tolist(), std=std.tolist(), device=backend.name)  # the checkpoint's config
    optimizer = make_optimizer(config, model.parameters())
    start_epoch, history = 0, []
    if checkpoint is not None:
        checkpoint.restore_model(model, backend)
        checkpoint.restore_optimizer(optimizer)  # the saved hyperparameters too, as torch does ...
        for name in ("lr", "weight_decay"):  # ... but a setting chosen now wins, e.g. a smaller lr after divergence
            if getattr(chosen, name) is not None:
                setattr(optimizer, name, getattr(chosen, name))
        saved_momentum = getattr(optimizer, "momentum", None)
        if chosen.momentum is not None and saved_momentum is not None and chosen.momentum != saved_momentum:
            raise XpnetError(f"{chosen.resume} was trained with {setting('momentum')} {saved_momentum}; momentum cannot "
                             f"change when resuming (its buffers depend on it): leave out {setting('momentum')}")
        start_epoch, history = checkpoint.epoch, list(checkpoint.history)

    train_loader, test_loader = make_loaders(config, train_set, test_set, backend, mean, std)
    schedule = planned_schedule(config, len(train_loader), checkpoint, log)
    log(model.summary(config.batch_size))
    what = f"resuming at epoch {start_epoch + 1}" if checkpoint else "training"
    log(f"{what}: {config.model} on {backend.name} ({config.dtype}), {optimizer!r}, batch {config.batch_size}, "
        f"{config.epochs} epochs; writing to {folder.path}")
    aside.move(replaced)  # overwrite, only now that all is ready: an error above has touched nothing
    first_save = True

    def checkpoint_saved(epoch: int) -> None:
        """The new run's first checkpoint is on disk: the old run's files can go, and best.npz begin."""
        nonlocal first_save
        if not first_save:
            return
        first_save = False
        removed = aside.discard()
        if removed:
            log(f"{setting('overwrite')}: removed the other run's {', '.join(removed)} from {folder.path}")
        if checkpoint is not None:  # before the trainer compares this epoch with the best so far
            seed_best_file(folder.path, Path(chosen.resume), checkpoint.history, log)

    layer_stats = LayerStats(model, backend, config.layer_stats) if config.layer_stats else None
    trainer = Trainer(model, optimizer, backend, out_dir=folder.path, config=saved, progress=not config.quiet,
                      log=log, schedule=schedule, layer_stats=layer_stats, on_checkpoint=checkpoint_saved)
    trainer.history = history
    if checkpoint is not None:  # the schedule's position; checkpoints from before steps were saved: whole epochs
        trainer.step = int(checkpoint.meta.get("step", start_epoch * len(train_loader)))
        if layer_stats is not None:  # the statistics recorded before the resume stay in metrics.json
            layer_stats.continue_from(saved_layer_stats(folder.path / "metrics.json"), trainer.step)
    return trainer, interrupts.StopOnSignal(train_loader), interrupts.StopOnSignal(test_loader), start_epoch


def _restore(aside: SetAside, log) -> None:
    """Put back the files of the run that overwrite was replacing, and say so (or where they are left)."""
    names, where = list(aside.names), aside.aside
    left = aside.restore()
    back = [name for name in names if name not in left]
    if back:
        log(f"{setting('overwrite')}: the new run saved no epoch, so the other run's {', '.join(back)} "
            f"are back in {aside.folder}")
    if left:
        log(f"warning: could not put back {', '.join(left)}; they are in {where}")


def saved_layer_stats(path: Path) -> dict | None:
    """The ``layer_stats`` of a run's metrics.json, or None (none recorded, or no readable file)."""
    try:
        with open_to_read(path, limit=metrics_file.MAX_BYTES) as stream:  # not a FIFO, a device or a huge file
            return json.loads(stream.read().decode("utf-8")).get("layer_stats")
    except (OSError, NotARegularFile, ValueError, AttributeError):
        return None


def file_identity(path: Path):
    """What tells one file at ``path`` from the next (every save replaces the file); None if there is none."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino, status.st_mtime_ns


def epoch_saved_in(path: Path) -> int | None:
    """The epoch the checkpoint at ``path`` holds, read from the file itself; None if there is none."""
    try:
        return int(read_header(path)["epoch"]) if path.is_file() else None
    except CheckpointError:
        return None


def _interrupted(chosen: RunConfig, config: RunConfig, checkpoint, folder: RunFolder | None,
                 saved_epoch: int | None) -> RunInterrupted:
    """What an interrupt kept (as the files say, not as the trainer last knew)."""
    continue_from, epoch = (folder.path / "checkpoint.npz", saved_epoch) if folder is not None else (None, None)
    if checkpoint is not None and (epoch is None or checkpoint.epoch > epoch):
        continue_from, epoch = Path(chosen.resume), checkpoint.epoch
    return RunInterrupted(continue_from, epoch, folder.path if folder is not None else None, config.epochs)
