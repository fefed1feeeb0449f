"""RunConfig: every setting of a run, its default, and the one check of its value.

A run's settings (model, optimizer, learning rate, data, ...) are saved in each checkpoint
as JSON, so that ``--resume``, ``--evaluate`` and ``--predict`` can take them from there.
This module is their schema: ``RunConfig`` lists them with their defaults, and the same
rule checks a value wherever it comes from: a RunConfig made in Python, a flag of the
command line (cli.py parses the text with :meth:`Rule.parse`), or a checkpoint's JSON (which
a hand edit may have damaged).

A setting left at ``None`` is not chosen: a resumed run takes it from its checkpoint, a new
run from ``RunConfig.DEFAULTS``. :meth:`RunConfig.resolved` fills them in.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, ClassVar

from ..errors import XpnetError, setting
from ..schedules import SCHEDULES

MODELS = ("lnet", "mlp", "cnn")
OPTIMIZERS = ("sgd", "adam", "adamw")
DEVICES = ("auto", "cpu", "cuda", "strict")  # strict (array-api-strict) from Python only: the CLI offers the first three
LEARNING_RATES = {"adam": 1e-3, "adamw": 1e-3, "sgd": 0.05}
EVALUATION_BATCH = 500  # images per forward pass when only evaluating or predicting
MAX_SHIFT = 3  # augment: random shifts of up to this many pixels

# The saved settings each command takes from a checkpoint (when it is not chosen now).
RESUMED_SETTINGS = ("model", "optimizer", "lr", "momentum", "weight_decay", "batch_size", "dataset",
                    "data_dir", "seed", "dtype", "train_size", "test_size", "extra", "schedule", "augment", "dropout")
EVALUATION_SETTINGS = ("dataset", "data_dir", "seed", "dtype", "test_size")
PREDICTION_SETTINGS = ("dtype",)
# The settings evaluating or predicting honours; any other one chosen with them is an error, never ignored.
COMMAND_SETTINGS = {
    "evaluate": ("device", "dtype", "model", "batch_size", "dataset", "data_dir", "download", "test_size", "seed", "quiet"),
    "predict": ("checkpoint", "device", "dtype", "model", "batch_size", "quiet"),
}
COMMAND_PURPOSES = {"evaluate": "only measures a checkpoint on a test set", "predict": "only classifies the images"}
SYNTHETIC_ONLY = ("train_size", "test_size")
SVHN_ONLY = ("data_dir", "download", "extra")


class SettingError(XpnetError, ValueError):
    """A setting's value is not one it can take."""


# -- the rules ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """What values one setting takes: one of ``choices``; or a number of ``kind`` (int or float)
    at least (``inclusive``) or above ``minimum``, and below ``below`` or at most ``maximum``
    (every number has an upper bound that the program can honour); or a folder name
    (``path``); or true/false (``flag``). :meth:`problem` says what is wrong with a value."""

    choices: tuple[str, ...] | None = None
    kind: type | None = None
    minimum: float = 0.0
    description: str = ""
    inclusive: bool = True
    below: float | None = None
    maximum: float | None = None
    maximum_text: str = ""  # how messages write ``maximum`` (default: as Python does)
    path: bool = False
    flag: bool = False

    def parse(self, text: str):
        """The number written in ``text`` (a flag's value); ValueError with the problem otherwise."""
        try:
            value = float(text) if self.kind is float else whole_number(text)
        except ValueError:
            raise ValueError(f"expected {'a whole number' if self.kind is int else 'a number'}, got {text!r}") from None
        if self.maximum is not None and value > self.maximum:  # a number past the most this setting can honour
            raise ValueError(f"must be at most {self.maximum_text or self.maximum}, got {text}")
        in_range = (value >= self.minimum if self.inclusive else value > self.minimum) and \
            value < (math.inf if self.below is None else self.below)
        if not in_range:  # also NaN, which no comparison accepts
            raise ValueError(f"must be {self.description}, got {text}")
        return value

    def problem(self, value) -> str | None:
        """What is wrong with ``value`` (as Python or JSON gives it), or None if it is fine."""
        if self.choices is not None:
            return None if value in self.choices else f"expected one of {', '.join(self.choices)}"
        if self.path:
            if not (isinstance(value, (str, Path)) and str(value)):
                return "expected a folder name"
            try:
                expanded(value)
            except ValueError as exc:
                return str(exc)
            return None
        if self.flag:
            return None if isinstance(value, bool) else "expected true or false"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "expected a number"
        try:
            self.parse(str(value))
        except ValueError as exc:
            return str(exc)
        return None


def whole_number(text: str) -> int:
    """``int(text)``, also for a whole number written with an exponent ("2e4"); ValueError otherwise."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(text) from None
    if not value.is_finite() or value.adjusted() >= 4300 or value != value.to_integral_value():
        raise ValueError(text)  # 4300 digits: Python's own limit for int(text)
    return int(value)


def expanded(path) -> Path:
    """``Path(path)`` with a leading ``~`` or ``~user`` expanded; ValueError that names the user if there is none."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # Path.expanduser: "Could not determine home directory."
        user = str(path).split("/", 1)[0][1:]
        raise ValueError(f"cannot expand {str(path)!r}: " + (f"there is no user {user!r}" if user else
                                                              "the home folder is unknown (HOME is not set)")) from None


# The bounds, each one the program can honour (see docs/troubleshooting.md, "Numbers and their ranges").
MAX_EPOCHS = 10**6  # the schedules count steps in float64 exactly far beyond this
MAX_BATCH = 10**6  # images per step; memory refuses far less on most machines, with its own error
MAX_IMAGES = 10**9  # synthetic images; the memory check refuses what does not fit
MAX_SEED = 2**63 - 1  # NumPy's generators and the cache's file names take any seed up to here
MAX_WEIGHT_DECAY = 1e4  # beyond, λθ and its square overflow float32 in Adam's L2 gradient
MAX_EVERY = 10**9  # --layer-stats: every this many steps (more than any run takes)

EPOCHS = Rule(kind=int, minimum=1, maximum=MAX_EPOCHS, description="at least 1")
BATCH = Rule(kind=int, minimum=1, maximum=MAX_BATCH, description="at least 1")
IMAGES = Rule(kind=int, minimum=1, maximum=MAX_IMAGES, description="at least 1")
SEED = Rule(kind=int, minimum=0, maximum=MAX_SEED, description="zero or positive", maximum_text=f"2**63 - 1 = {MAX_SEED}")
NON_NEGATIVE_INT = Rule(kind=int, minimum=0, maximum=MAX_EVERY, description="zero or positive")
POSITIVE_FLOAT = Rule(kind=float, minimum=0.0, description="a positive number", inclusive=False)  # and finite
NON_NEGATIVE_FLOAT = Rule(kind=float, minimum=0.0, description="zero or positive")
WEIGHT_DECAY = Rule(kind=float, minimum=0.0, maximum=MAX_WEIGHT_DECAY,
                    description="zero or positive", maximum_text=f"{MAX_WEIGHT_DECAY:g}")
MOMENTUM = Rule(kind=float, minimum=0.0, below=1.0,
                description="at least 0 and below 1 (at 1 or more, SGD's steps grow without bound)")
PROBABILITY = Rule(kind=float, minimum=0.0, below=1.0, description="a probability in [0, 1)")
FOLDER = Rule(path=True)
FLAG = Rule(flag=True)


def _setting(default, rule: Rule):
    """A saved setting: None (not chosen) unless given; ``default`` is what a new run then uses."""
    return field(default=None, metadata={"default": default, "rule": rule})


# -- the configuration ----------------------------------------------------------------------------
@dataclass
class RunConfig:
    """Everything a run is told: what to train, how, on what data, and where to write it.

    The saved settings (model ... dropout) default to None, "not chosen": a new run then
    uses ``RunConfig.DEFAULTS``, a resumed one (``resume=path``) the checkpoint's. The run
    options after them (device ... quiet) are not saved. Every value is checked when the
    RunConfig is made; a wrong one raises SettingError, which names the setting.

    Example: ``RunConfig(model="lnet", epochs=3, train_size=2000, device="cpu", out="runs/a")``.
    """

    model: str | None = _setting("lnet", Rule(choices=MODELS))
    optimizer: str | None = _setting("adam", Rule(choices=OPTIMIZERS))
    lr: float | None = _setting(None, POSITIVE_FLOAT)  # None: the optimizer's own, LEARNING_RATES
    momentum: float | None = _setting(0.9, MOMENTUM)  # SGD's only
    weight_decay: float | None = _setting(None, WEIGHT_DECAY)  # None: 0, or 1e-2 for AdamW
    epochs: int | None = _setting(12, EPOCHS)  # in total, also when resuming
    batch_size: int | None = _setting(64, BATCH)
    dataset: str | None = _setting("synthetic", Rule(choices=("synthetic", "svhn")))
    data_dir: str | Path | None = _setting("data/svhn", FOLDER)  # SVHN's .mat files
    seed: int | None = _setting(0, SEED)  # weights, shuffling, augmentation, the synthetic set
    dtype: str | None = _setting("float32", Rule(choices=("float32", "float64")))
    train_size: int | None = _setting(20_000, IMAGES)  # synthetic images
    test_size: int | None = _setting(5_000, IMAGES)
    extra: bool | None = _setting(False, FLAG)  # also SVHN's extra_32x32.mat
    schedule: str | None = _setting("constant", Rule(choices=tuple(SCHEDULES)))
    augment: bool | None = _setting(False, FLAG)  # random shifts of up to MAX_SHIFT pixels
    dropout: float | None = _setting(None, PROBABILITY)  # None: the model's own (0.3 for the cnn)

    device: str = "auto"  # auto: cuda when it works, else cpu
    out: str | Path | None = None  # the run folder; None: runs/<model>-<timestamp>, or the resumed checkpoint's
    overwrite: bool = False  # replace another run in ``out``
    resume: str | Path | None = None  # a checkpoint.npz to continue up to ``epochs``
    download: bool = False  # fetch the SVHN files into data_dir
    quiet: bool = False  # no progress bar, no per-epoch lines or notes
    layer_stats: int = 0  # every this many steps, per-layer statistics into metrics.json and layers.png (0: off)

    DEFAULTS: ClassVar[dict[str, Any]]  # setting -> the value a new run uses when it is not chosen

    def __post_init__(self) -> None:
        for name, rule in RULES.items():
            value = getattr(self, name)
            problem = None if value is None else rule.problem(value)
            if problem:
                raise SettingError(f"{setting(name)} = {value!r}: {problem}")
            if value is not None and rule.kind is not None:  # 3.0 epochs is 3: a whole number where one is counted
                setattr(self, name, rule.parse(str(value)))
        options = {"device": Rule(choices=DEVICES), "out": FOLDER, "resume": FOLDER,
                   "overwrite": FLAG, "download": FLAG, "quiet": FLAG, "layer_stats": NON_NEGATIVE_INT}
        for name, rule in options.items():
            value = getattr(self, name)
            problem = None if value is None and name in ("out", "resume") else rule.problem(value)
            if problem:
                raise SettingError(f"{setting(name)} = {value!r}: {problem}")
        for name in ("out", "resume"):  # data_dir stays as given: it is saved as text
            if getattr(self, name) is not None:
                setattr(self, name, expanded(getattr(self, name)))

    def chosen(self) -> list[str]:
        """The names of the settings and options that differ from RunConfig()'s (those chosen for this run)."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != f.default]

    def resolved(self, checkpoint=None, used: tuple[str, ...] = ()) -> RunConfig:
        """A copy with every setting filled in: chosen here, else the checkpoint's (those in ``used``), else the default."""
        saved = checkpoint.config if checkpoint is not None else {}
        chosen, from_checkpoint = {}, set()
        for name, default in self.DEFAULTS.items():
            value = getattr(self, name)
            if value is None and name in used and (name != "data_dir" or saved.get("dataset") == "svhn"):
                value = saved.get(name)
                if value is not None:
                    from_checkpoint.add(name)
            chosen[name] = default if value is None else value
        if checkpoint is not None:
            chosen["model"] = checkpoint.model_name
        if chosen["lr"] is None:
            chosen["lr"] = LEARNING_RATES[chosen["optimizer"]]
        if chosen["weight_decay"] is None:
            chosen["weight_decay"] = 1e-2 if chosen["optimizer"] == "adamw" else 0.0
        if "data_dir" not in from_checkpoint:
            # A folder named now is saved as an absolute path, so a resume from elsewhere finds it.
            chosen["data_dir"] = expanded(chosen["data_dir"]).absolute()
        return dataclasses.replace(self, **chosen)

    def to_dict(self) -> dict:
        """The saved settings as JSON values (folders as text), in the checkpoint's order."""
        return {name: str(value) if isinstance(value, Path) else value
                for name, value in ((name, getattr(self, name)) for name in RULES)}

    @classmethod
    def from_dict(cls, saved: dict, **options) -> RunConfig:
        """The RunConfig of a checkpoint's (or metrics.json's) config; keys it does not know (mean, std,
        device) are left out, missing ones (older checkpoints) stay None. Checked like any other."""
        return cls(**{name: saved[name] for name in RULES if name in saved}, **options)


RULES: dict[str, Rule] = {f.name: f.metadata["rule"] for f in dataclasses.fields(RunConfig) if "rule" in f.metadata}
RunConfig.DEFAULTS = {f.name: f.metadata["default"] for f in dataclasses.fields(RunConfig) if "rule" in f.metadata}


def check_saved_setting(name: str, value) -> None:
    """A setting read back from a checkpoint's config must pass the check its RunConfig field has.

    Checkpoints written by xpnet always do; a hand-edited or damaged one gets a clear
    error here instead of a failure deep inside training.
    """
    problem = RULES[name].problem(value)
    if problem:
        raise XpnetError(f"the checkpoint's config has {name} = {value!r}, which {setting(name)} would refuse ({problem}); "
                         f"the file was edited or damaged: give {setting(name)} explicitly or use another checkpoint")
