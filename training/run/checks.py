"""The checks that a run's settings and its checkpoint make sense together, before any work.

Each mistake gets one clear error that names the setting (``'lr'`` from Python, ``--lr``
from the command line) and says what to do instead.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError, XpnetError, setting
from ..saving.checkpoint import load_checkpoint
from .config import (
    COMMAND_PURPOSES,
    COMMAND_SETTINGS,
    EVALUATION_SETTINGS,
    MODELS,
    PREDICTION_SETTINGS,
    RESUMED_SETTINGS,
    SVHN_ONLY,
    SYNTHETIC_ONLY,
    RunConfig,
    check_saved_setting,
)
from .saved_state import check_saved_state

USED_SETTINGS = {"resume": RESUMED_SETTINGS, "evaluate": EVALUATION_SETTINGS, "predict": PREDICTION_SETTINGS}


def checked_checkpoint(path: Path, command: str, chosen: RunConfig):
    """The checkpoint at ``path``, with every field that ``command`` takes from it checked.

    This is the one validation that resuming, evaluating and predicting share: the header's
    model, the weights (no NaN or infinity), the saved state (training/run/saved_state.py:
    running statistics, and when resuming the optimizer's), the normalisation statistics, the history
    (when resuming, which continues it), and each saved setting the command uses that is
    not chosen now, checked by its RunConfig rule. A hand-edited or damaged checkpoint gets
    one clear error here, not a failure deep inside training or a meaningless result.
    """
    checkpoint = load_checkpoint(path)
    if checkpoint.model_name not in MODELS:
        raise CheckpointError(f"{path}: its header names the model {checkpoint.model_name!r}, which is not one of "
                              f"{', '.join(MODELS)}; the file was edited or damaged: use another checkpoint")
    for name in USED_SETTINGS[command]:
        value = checkpoint.config.get(name)
        if getattr(chosen, name) is None and value is not None:
            check_saved_setting(name, value)
    checkpoint.check_weights_finite()
    check_saved_state(checkpoint, command)
    if command != "resume" or "mean" in checkpoint.config:
        checkpoint.normalisation()
    if command == "resume":
        checkpoint.check_history()
    if chosen.model is not None and chosen.model != checkpoint.model_name:
        raise CheckpointError(f"{path} is a checkpoint of model '{checkpoint.model_name}', not '{chosen.model}'; "
                              f"leave out {setting('model')} (the checkpoint knows its model)")
    return checkpoint


def check_data_settings(chosen: RunConfig, config: RunConfig, command: str, checkpoint=None) -> None:
    """Settings of the other dataset are errors, not silently ignored; so is changing the test set of a run.

    ``chosen``: the settings as given; ``config``: the same, filled in from the checkpoint and the defaults.
    """
    dataset = config.dataset
    source = f"{checkpoint.path} was trained on" if checkpoint is not None and chosen.dataset is None else "this run uses"
    wrong = SVHN_ONLY if dataset == "synthetic" else SYNTHETIC_ONLY + (("seed",) if command == "evaluate" else ())
    for name in wrong:
        if getattr(chosen, name) not in (None, False):
            if dataset == "synthetic":
                raise XpnetError(f"{setting(name)} applies to {setting('dataset')} svhn, but {source} the synthetic set, which "
                                 f"is generated, not read from files: leave out {setting(name)}, or add "
                                 f"{setting('dataset')} svhn")
            what = "the synthetic test images" if name == "seed" else "the size of the synthetic set"
            raise XpnetError(f"{setting(name)} chooses {what}, but {source} SVHN, whose files fix their own: "
                             f"leave out {setting(name)}")
    if command != "resume" or checkpoint is None:
        return
    saved = checkpoint.config
    changes_test_set = ("dataset", "test_size", "seed") if dataset == "synthetic" else ("dataset",)
    for name in changes_test_set:
        given = getattr(chosen, name)
        if given is not None and name in saved and given != saved[name]:
            raise XpnetError(
                f"{checkpoint.path} was trained with {setting(name)} {saved[name]}; continuing it with {setting(name)} "
                f"{given} would measure its later epochs on another test set and mix two datasets in one history: "
                f"leave out {setting(name)}, or start a new run"
            )


def check_training_settings(chosen: RunConfig, config: RunConfig) -> None:
    """Settings that would waste a run: an ignored momentum, a weight decay that destroys the weights."""
    if chosen.momentum is not None and config.optimizer != "sgd":
        raise XpnetError(f"{setting('momentum')} applies only to {setting('optimizer')} sgd; this run uses {config.optimizer}, "
                         f"whose moment estimates have their own fixed betas: leave out {setting('momentum')} or add "
                         f"{setting('optimizer')} sgd")
    shrink = config.lr * config.weight_decay
    if config.optimizer in ("sgd", "adamw") and shrink >= 1:
        raise XpnetError(f"{setting('weight_decay')} {config.weight_decay:g} with {setting('lr')} {config.lr:g} would shrink "
                         f"every weight by lr × weight decay = {shrink:g} of itself per step, which must be below 1 (the "
                         f"weights would flip sign and grow): choose a smaller {setting('weight_decay')}")


def check_command_settings(config: RunConfig, command: str) -> None:
    """Evaluating or predicting honours only its COMMAND_SETTINGS; another one chosen is an error, never ignored."""
    ignored = [name for name in config.chosen() if name not in COMMAND_SETTINGS[command]]
    if ignored:
        raise XpnetError(f"{setting(ignored[0])} does not apply to {command}, which {COMMAND_PURPOSES[command]}; leave it out")
