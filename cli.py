"""xpnet's command line: train, resume, evaluate and predict.

    python cli.py                                   # LNet on the built-in synthetic digits
    python cli.py --device cuda --model lnet        # the same on an NVIDIA GPU
    python cli.py --dataset svhn --download         # real SVHN (needs the network once)
    python cli.py --model cnn --augment --schedule onecycle --lr 3e-3 --epochs 30   # the best recipe
    python cli.py --resume runs/lnet-.../checkpoint.npz --epochs 20
    python cli.py --evaluate runs/lnet-.../best.npz
    python cli.py --predict house.png --checkpoint runs/lnet-.../best.npz

Mistakes a user can make end in one line ``error: ...`` on stderr and exit code 2. Ctrl-C
or SIGTERM, at any moment, ends the run with exit code 130 and keeps every completed
epoch (training/interrupts.py). A closed standard output (``| head``) stops the printing,
not the training (training/streams.py). A run folder belongs to one run
(training/run_folder.py).
"""
from __future__ import annotations

import signal
import sys

_signals_at_start: list[int] = []  # stop signals that came while `python cli.py` was starting
if __name__ == "__main__":  # first of all: a Ctrl-C or SIGTERM during the imports below is recorded; main() acts on it
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, lambda signum, frame: _signals_at_start.append(signum))

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from decimal import Decimal, InvalidOperation  # noqa: E402
from pathlib import Path  # noqa: E402

from training import interrupts, streams  # noqa: E402
from training.errors import XpnetError  # noqa: E402
from training.schedules import SCHEDULES  # noqa: E402  (names only: math and dataclasses)

DEFAULTS = {
    "model": "lnet",
    "optimizer": "adam",
    "lr": None,  # per optimizer: LEARNING_RATES
    "momentum": 0.9,
    "weight_decay": None,  # per optimizer: 0, or 1e-2 for AdamW
    "epochs": 12,
    "batch_size": 64,
    "dataset": "synthetic",
    "data_dir": "data/svhn",
    "seed": 0,
    "dtype": "float32",
    "train_size": 20_000,
    "test_size": 5_000,
    "extra": False,
    "schedule": "constant",
    "augment": False,
    "dropout": None,  # the model's own (0.3 for the cnn); only models with Dropout layers take one
}
LEARNING_RATES = {"adam": 1e-3, "adamw": 1e-3, "sgd": 0.05}
EVALUATION_BATCH = 500
# The saved settings each command takes from a checkpoint (when its flag is not given).
RESUMED_SETTINGS = ("model", "optimizer", "lr", "momentum", "weight_decay", "batch_size", "dataset",
                    "data_dir", "seed", "dtype", "train_size", "test_size", "extra", "schedule", "augment", "dropout")
EVALUATION_SETTINGS = ("dataset", "data_dir", "seed", "dtype", "test_size")
PREDICTION_SETTINGS = ("dtype",)
# The flags --evaluate and --predict honour; any other flag given with them is a usage error, never ignored.
COMMAND_FLAGS = {
    "evaluate": ("device", "dtype", "model", "batch_size", "dataset", "data_dir", "download", "test_size", "seed", "quiet"),
    "predict": ("checkpoint", "device", "dtype", "model", "batch_size", "quiet"),
}
# What each command imports before it starts, with stop signals deferred (see import_modules).
COMMON_MODULES = ("numpy", "backends", "models", "training.checkpoint", "training.data", "training.run_folder")
COMMAND_MODULES = {
    "train": ("training.trainer", "training.data.synthetic", "training.optim", "training.data.download"),
    "evaluate": ("training.trainer", "training.data.synthetic", "training.data.download"),
    "predict": ("training.data.images", "PIL.Image", "PIL.ImageOps"),
}
SYNTHETIC_ONLY = ("train_size", "test_size")
SVHN_ONLY = ("data_dir", "download", "extra")
BYTES_PER_IMAGE = 3 * 32 * 32
MAX_SHIFT = 3  # --augment: random shifts of up to this many pixels


# -- the flags --------------------------------------------------------------------------------------
def number_argument(kind: type, minimum: float, description: str, inclusive: bool = True, below: float | None = None):
    """An argparse type: ``kind(text)``, finite, ≥ (or >) ``minimum`` and < ``below``, else a usage error."""

    def parse(text: str):
        try:
            value = kind(text) if kind is float else whole_number(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}") from None
        in_range = (value >= minimum if inclusive else value > minimum) and value < (math.inf if below is None else below)
        if not in_range:  # also NaN, which no comparison accepts
            raise argparse.ArgumentTypeError(f"must be {description}, got {text}")
        return value

    return parse


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


positive_int = number_argument(int, 1, "at least 1")
non_negative_int = number_argument(int, 0, "zero or positive")
positive_float = number_argument(float, 0.0, "a positive number", inclusive=False)
non_negative_float = number_argument(float, 0.0, "zero or positive")
momentum_float = number_argument(float, 0.0, "at least 0 and below 1 (at 1 or more, SGD's steps grow without bound)", below=1.0)


def path_argument(text: str) -> Path:
    """A file or folder name; ``~`` stands for the home folder also in ``--out=~/x``, where the shell leaves it."""
    if not text.strip():  # e.g. an unset shell variable: Path("") would silently mean the current folder
        raise argparse.ArgumentTypeError("expected a file or folder name, got an empty one")
    return Path(text).expanduser()


def probability(text: str) -> float:
    """--dropout: a number in [0, 1), else a usage error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1), got {text}")
    return value


def build_parser(flags: dict | None = None) -> argparse.ArgumentParser:
    """The command line's parser. ``flags``, if given, receives each flag's argparse Action by
    destination: its choices and type are what a setting saved in a checkpoint is checked with."""
    table = {} if flags is None else flags
    parser = argparse.ArgumentParser(
        prog="python cli.py",
        description="Train, evaluate and use xpnet's MLP, LNet and CNN on SVHN-style digit images.",
        epilog="Exit codes: 0 done; 2 an error (one 'error:' line on stderr); 130 interrupted (Ctrl-C or SIGTERM: "
               "every completed epoch is kept); 1 --evaluate or --predict output cut short by a closed pipe.",
    )
    what = _flag_group(parser, "what to run", table)
    what("--model", choices=["lnet", "mlp", "cnn"], help=f"network (default {DEFAULTS['model']})")
    what("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto (the default) = cuda when it works, else cpu")
    what("--dtype", choices=["float32", "float64"], help="floating-point type of weights and batches (default float32)")
    what("--resume", metavar="CKPT", type=path_argument, help="continue a run from its checkpoint.npz up to --epochs in total")
    what("--evaluate", metavar="CKPT", type=path_argument, help="only evaluate a checkpoint on the test set")
    what("--predict", metavar="IMAGE", type=path_argument, nargs="+", help="print the top-3 classes of PNG/JPEG images")
    what("--checkpoint", metavar="CKPT", type=path_argument, help="the checkpoint --predict uses")

    optim = _flag_group(parser, "optimisation", table)
    optim("--optimizer", choices=["sgd", "adam", "adamw"], help=f"optimizer (default {DEFAULTS['optimizer']})")
    optim("--lr", type=positive_float, help="learning rate (default 1e-3 for adam/adamw, 0.05 for sgd)")
    optim("--momentum", type=momentum_float, help=f"SGD momentum, in [0, 1) (default {DEFAULTS['momentum']})")
    optim("--weight-decay", type=non_negative_float, help="L2 penalty, or decoupled decay for adamw (default 0; 1e-2 for adamw)")
    optim("--epochs", type=positive_int, help=f"total epochs, also when resuming (default {DEFAULTS['epochs']})")
    optim("--batch-size", type=positive_int,
                       help=f"images per training step (default {DEFAULTS['batch_size']}; with --evaluate or --predict: images per forward pass, "
                            f"default {EVALUATION_BATCH})")
    optim("--seed", type=non_negative_int, help="seed of the weights, the shuffling and the synthetic data (default 0)")
    optim("--schedule", choices=SCHEDULES,
                       help="learning rate per batch: constant (the default), step (x0.1 at 50%% and 75%% of the steps), "
                            "cosine (to 0), onecycle (torch's OneCycleLR with max_lr = --lr)")
    optim("--dropout", type=probability, help="dropout probability of the cnn (default 0.3)")
    optim("--augment", action="store_true", default=None,
                       help=f"shift each training image by up to {MAX_SHIFT} pixels each way, at random (edges repeated)")

    data = _flag_group(parser, "data", table)
    data("--dataset", choices=["synthetic", "svhn"], help="synthetic (the default: built in, no download) or svhn")
    data("--data-dir", type=path_argument, help=f"folder of the SVHN .mat files (default {DEFAULTS['data_dir']})")
    data("--download", action="store_true", help="download the SVHN files into --data-dir (checksums verified)")
    data("--extra", action="store_true", default=None, help="also train on SVHN's extra_32x32.mat (531k images)")
    data("--train-size", type=positive_int, help=f"synthetic training images (default {DEFAULTS['train_size']})")
    data("--test-size", type=positive_int, help=f"synthetic test images (default {DEFAULTS['test_size']})")

    output = _flag_group(parser, "output", table)
    output("--out", metavar="DIR", type=path_argument,
                        help="run folder (default runs/<model>-<timestamp>; when resuming, the checkpoint's folder)")
    output("--overwrite", action="store_true",
                        help="replace the run already in --out (without it, a folder that holds another run is refused)")
    output("--quiet", action="store_true", help="no progress bar, no per-epoch lines or notes; only the final result (and errors)")
    return parser


def _flag_group(parser: argparse.ArgumentParser, title: str, table: dict):
    """A function that adds flags to the parser's group ``title`` and records each in ``table``."""
    group = parser.add_argument_group(title)

    def add(*names, **options) -> argparse.Action:
        action = group.add_argument(*names, **options)
        table[action.dest] = action
        return action

    return add


def parse_args(argv=None) -> argparse.Namespace:
    """The parsed flags; a flag that does not fit the others is a usage error (exit code 2)."""
    flags: dict[str, argparse.Action] = {}
    parser = build_parser(flags)
    args = parser.parse_args(argv)
    modes = [name for name in ("resume", "evaluate", "predict") if getattr(args, name)]
    if len(modes) > 1:
        parser.error(f"--{modes[0]} and --{modes[1]} cannot be used together")
    if args.predict and not args.checkpoint:
        parser.error("--predict needs --checkpoint CKPT (a best.npz or checkpoint.npz of a training run)")
    if args.checkpoint and not args.predict:
        parser.error("--checkpoint goes with --predict; to evaluate a checkpoint use --evaluate CKPT")
    for command, purpose in (("evaluate", "only measures a checkpoint on a test set"), ("predict", "only classifies the images")):
        if getattr(args, command):
            ignored = [name for name in given_flags(flags, args) if name not in COMMAND_FLAGS[command] and name != command]
            if ignored:
                parser.error(f"{flag_name(ignored[0])} does not apply to --{command}, which {purpose}; leave it out")
    return args


def given_flags(flags: dict[str, argparse.Action], args: argparse.Namespace) -> list[str]:
    """The destinations of the flags given on the command line (those that differ from their defaults)."""
    return [dest for dest, action in flags.items() if getattr(args, dest) != action.default]


def flag_name(dest: str) -> str:
    return "--" + dest.replace("_", "-")


# -- settings, and the one validation of a checkpoint -----------------------------------------------
def settings(args: argparse.Namespace, checkpoint=None, used: tuple[str, ...] = ()) -> dict:
    """The run's settings: explicit flags, else the checkpoint's saved ones (those in ``used``), else defaults."""
    saved = checkpoint.config if checkpoint is not None else {}
    chosen, from_checkpoint = {}, set()
    for name, default in DEFAULTS.items():
        value = getattr(args, name, None)
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
        chosen["data_dir"] = str(Path(chosen["data_dir"]).expanduser().absolute())
    return chosen


def checked_checkpoint(path: Path, command: str, args: argparse.Namespace):
    """The checkpoint at ``path``, with every field that ``command`` takes from it checked.

    This is the one validation that --resume, --evaluate and --predict share: the header's
    model, the weights (no NaN or infinity), the normalisation statistics, the history
    (for --resume, which continues it), and each saved setting the command uses whose flag
    is not given, checked as its flag would check it. A hand-edited or damaged checkpoint
    gets one clear error here, not a failure deep inside training or a meaningless result.
    """
    from training.checkpoint import load_checkpoint
    from training.errors import CheckpointError

    checkpoint = load_checkpoint(path)
    flags: dict[str, argparse.Action] = {}
    build_parser(flags)
    if checkpoint.model_name not in flags["model"].choices:
        raise CheckpointError(f"{path}: its header names the model {checkpoint.model_name!r}, which is not one of "
                              f"{', '.join(flags['model'].choices)}; the file was edited or damaged: use another checkpoint")
    used = {"resume": RESUMED_SETTINGS, "evaluate": EVALUATION_SETTINGS, "predict": PREDICTION_SETTINGS}[command]
    for name in used:
        value = checkpoint.config.get(name)
        if getattr(args, name, None) is None and value is not None:
            check_saved_setting(flags[name], value)
    checkpoint.check_weights_finite()
    if command != "resume" or "mean" in checkpoint.config:
        checkpoint.normalisation()
    if command == "resume":
        checkpoint.check_history()
    model = getattr(args, "model", None)
    if model is not None and model != checkpoint.model_name:
        raise CheckpointError(f"{path} is a checkpoint of model '{checkpoint.model_name}', not '{model}'; "
                              f"leave out --model (the checkpoint knows its model)")
    return checkpoint


def check_saved_setting(action: argparse.Action, value) -> None:
    """A setting read back from a checkpoint's config must pass the checks its flag has.

    Checkpoints written by xpnet always do; a hand-edited or damaged one gets a clear
    error here instead of a failure deep inside training.
    """
    name = action.dest
    problem = None
    if action.choices is not None:
        if value not in action.choices:
            problem = f"expected one of {', '.join(action.choices)}"
    elif action.type is path_argument:
        if not isinstance(value, str) or not value:
            problem = "expected a folder name"
    elif action.type is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problem = "expected a number"
        else:
            try:
                action.type(str(value))
            except argparse.ArgumentTypeError as exc:
                problem = str(exc)
    elif name in ("extra", "augment") and not isinstance(value, bool):
        problem = "expected true or false"
    if problem:
        flag = flag_name(name)
        raise XpnetError(f"the checkpoint's config has {name} = {value!r}, which {flag} would refuse ({problem}); "
                         f"the file was edited or damaged: give {flag} explicitly or use another checkpoint")


def check_data_flags(args: argparse.Namespace, config: dict, command: str, checkpoint=None) -> None:
    """Flags of the other dataset are errors, not silently ignored; so is changing the test set of a run."""
    dataset = config["dataset"]
    source = f"{args.resume or args.evaluate} was trained on" if checkpoint is not None and args.dataset is None else "this run uses"
    wrong = SVHN_ONLY if dataset == "synthetic" else SYNTHETIC_ONLY + (("seed",) if command == "evaluate" else ())
    for name in wrong:
        if getattr(args, name) not in (None, False):
            if dataset == "synthetic":
                raise XpnetError(f"{flag_name(name)} applies to --dataset svhn, but {source} the synthetic set, which is "
                                 f"generated, not read from files: leave out {flag_name(name)}, or add --dataset svhn")
            what = "the synthetic test images" if name == "seed" else "the size of the synthetic set"
            raise XpnetError(f"{flag_name(name)} chooses {what}, but {source} SVHN, whose files fix their own: "
                             f"leave out {flag_name(name)}")
    if command != "resume" or checkpoint is None:
        return
    saved = checkpoint.config
    changes_test_set = ("dataset", "test_size", "seed") if dataset == "synthetic" else ("dataset",)
    for name in changes_test_set:
        given = getattr(args, name)
        if given is not None and name in saved and given != saved[name]:
            raise XpnetError(
                f"{args.resume} was trained with {flag_name(name)} {saved[name]}; continuing it with {flag_name(name)} "
                f"{given} would measure its later epochs on another test set and mix two datasets in one history: "
                f"leave out {flag_name(name)}, or start a new run"
            )


def check_training_settings(args: argparse.Namespace, config: dict) -> None:
    """Settings that would waste a run: an ignored --momentum, a weight decay that destroys the weights."""
    if args.momentum is not None and config["optimizer"] != "sgd":
        raise XpnetError(f"--momentum applies only to --optimizer sgd; this run uses {config['optimizer']}, whose "
                         "moment estimates have their own fixed betas: leave out --momentum or add --optimizer sgd")
    shrink = config["lr"] * config["weight_decay"]
    if config["optimizer"] in ("sgd", "adamw") and shrink >= 1:
        raise XpnetError(f"--weight-decay {config['weight_decay']:g} with --lr {config['lr']:g} would shrink every weight by "
                         f"lr × weight decay = {shrink:g} of itself per step, which must be below 1 (the weights would "
                         f"flip sign and grow): choose a smaller --weight-decay")


def check_memory_for(sizes: dict[str, int]) -> None:
    """Refuse, before generating it, a synthetic set larger than this machine's memory.

    ``sizes`` maps flags to image counts, e.g. {"--train-size": 20000, "--test-size": 5000}.
    """
    needed = sum(sizes.values()) * BYTES_PER_IMAGE
    try:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): let the allocation decide
        return
    if needed > available:
        counts = " and ".join(f"{flag} {count:,}" for flag, count in sizes.items())
        raise XpnetError(f"{counts}: the synthetic images would need {needed / 2**30:,.1f} GiB of memory, more than this "
                         f"machine's {available / 2**30:,.1f} GiB: choose a smaller {max(sizes, key=sizes.get)}")


def check_environment() -> None:
    """XPNET_NUM_THREADS, when set, must be a whole number ≥ 1 (the cpu backend's threads)."""
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


def import_modules(*names: str) -> None:
    """Import ``names`` with stop signals deferred, then act on a signal that came meanwhile.

    An import cut short by KeyboardInterrupt leaves a module half-initialised (NumPy then
    refuses to load a second time), and the clean-up after an interrupt needs several of
    them. Importing them first, in one piece, delays a Ctrl-C by at most the import time.
    """
    import importlib

    with interrupts.deferred():
        for name in names:
            importlib.import_module(name)
    interrupts.check()


# -- data and device ----------------------------------------------------------------------------
def choose_backend(device: str, log):
    from backends import BackendUnavailableError, get_backend

    def backend_named(name: str):
        with interrupts.deferred():  # importing CuPy and starting CUDA: not to be cut in half
            return get_backend(name)

    try:
        backend = backend_named(device)
    except BackendUnavailableError as exc:
        raise XpnetError(str(exc)) from None
    if device == "auto" and backend.name == "cpu":
        try:
            backend_named("cuda")
        except BackendUnavailableError as exc:
            log(f"note: --device auto is using the cpu ({exc})")
    interrupts.check()
    return backend


def svhn_folder(config: dict, args: argparse.Namespace, checkpoint, splits) -> Path:
    """The SVHN folder, downloaded into with --download; a folder saved in a checkpoint is checked here."""
    data_dir = Path(config["data_dir"]).expanduser()
    if args.download:
        from training.data.download import download_svhn

        download_svhn(data_dir, splits=splits, progress=not args.quiet)
    elif checkpoint is not None and checkpoint.config.get("dataset") == "svhn" and args.data_dir is None and not data_dir.is_dir():
        relative = "" if data_dir.is_absolute() else (
            f"; it is relative to the folder that run started in, and from here it would be {data_dir.absolute()}")
        raise XpnetError(f"the SVHN folder {data_dir} that {checkpoint.path} was trained with does not exist here{relative}: "
                         f"pass --data-dir with the folder that holds {' and '.join(f'{s}_32x32.mat' for s in splits)}")
    return data_dir


def load_training_data(config: dict, args: argparse.Namespace, log, checkpoint=None):
    """(train, test) ImageSets of the configured dataset."""
    if config["dataset"] == "synthetic":
        from training.data.synthetic import make_synthetic

        check_memory_for({"--train-size": config["train_size"], "--test-size": config["test_size"]})
        started = time.perf_counter()
        with out_of_memory_advice("making the synthetic images", "choose a smaller --train-size"):
            train, test = make_synthetic(config["train_size"], config["test_size"], seed=config["seed"])
        log(f"synthetic digits: {len(train):,} train / {len(test):,} test images ({time.perf_counter() - started:.1f} s)")
        return train, test
    from training.data import load_svhn

    import_modules("scipy.io")
    splits = ("train", "test", "extra") if config["extra"] else ("train", "test")
    data_dir = svhn_folder(config, args, checkpoint, splits)
    with out_of_memory_advice("reading the SVHN files", "leave out --extra, or use a machine with more memory"):
        train, test = load_svhn(data_dir, extra=bool(config["extra"]))
    log(f"SVHN from {data_dir}: {len(train):,} train / {len(test):,} test images")
    return train, test


def load_test_data(config: dict, args: argparse.Namespace, log, checkpoint):
    """Only the test split: all that evaluation needs."""
    if config["dataset"] == "synthetic":
        from training.data.synthetic import make_synthetic_test

        check_memory_for({"--test-size": config["test_size"]})
        n_train = checkpoint.config.get("train_size")  # to find the training run's cached set
        if checkpoint.config.get("dataset") != "synthetic" or type(n_train) is not int or n_train < 1:
            n_train = None
        with out_of_memory_advice("making the synthetic images", "choose a smaller --test-size"):
            return make_synthetic_test(config["test_size"], seed=config["seed"], n_train=n_train)
    from training.data import load_svhn_split

    import_modules("scipy.io")
    test = load_svhn_split(svhn_folder(config, args, checkpoint, ("test",)), "test")
    log(f"SVHN test set from {config['data_dir']}: {len(test):,} images")
    return test


def normalisation_of(train_set, checkpoint):
    """(mean, std): the checkpoint's, else measured on the training images (never the test images)."""
    from training.data import channel_stats

    if checkpoint is not None and "mean" in checkpoint.config:
        return checkpoint.normalisation()
    mean, std = channel_stats(train_set.images)
    if (std == 0).any():
        channel = int(std.argmin())
        raise XpnetError(f"every training image of {train_set.name} has the same value in colour channel {channel} "
                         f"({round(255 * mean[channel])} of 255), so the inputs cannot be normalised: check the data files")
    return mean, std


def make_optimizer(name: str, parameters, config: dict):
    from training.optim import SGD, Adam, AdamW

    if name == "sgd":
        return SGD(parameters, lr=config["lr"], momentum=config["momentum"], weight_decay=config["weight_decay"])
    optimizer_class = {"adam": Adam, "adamw": AdamW}[name]
    return optimizer_class(parameters, lr=config["lr"], weight_decay=config["weight_decay"])


def model_options(config: dict) -> dict:
    """Constructor options of the configured model: ``dropout`` for models with Dropout layers."""
    import inspect

    from models import MODELS

    if config.get("dropout") is None:
        return {}
    if "dropout" not in inspect.signature(MODELS[config["model"]]).parameters:
        raise XpnetError(f"--dropout applies to models with dropout layers (cnn); {config['model']} has none: "
                         "leave out --dropout or use --model cnn")
    return {"dropout": config["dropout"]}


def planned_schedule(config: dict, steps_per_epoch: int, checkpoint, log):
    """The learning-rate schedule of the run, over all its steps (None for a constant rate).

    A resumed run keeps the plan it was started with (its total steps), so the schedule
    continues exactly; only the rate (--lr, the peak) may be changed by a flag.
    """
    from training.schedules import make_schedule

    if config["schedule"] == "constant":
        return None
    total = config["epochs"] * steps_per_epoch
    saved = checkpoint.schedule if checkpoint is not None else None
    if saved and saved.get("name") == config["schedule"] and isinstance(saved.get("total_steps"), int) \
            and saved["total_steps"] >= 1:
        planned = saved["total_steps"]
        if planned != total:
            log(f"note: the {config['schedule']} schedule was planned over {planned:,} steps "
                f"({planned / steps_per_epoch:g} epochs); it keeps that plan (and its last rate after it ends)")
        total = planned
    return make_schedule(config["schedule"], config["lr"], total)


# -- training ---------------------------------------------------------------------------------------
def train(args: argparse.Namespace, log) -> int:
    """A new run, or a resumed one (--resume): exit code 0 when every epoch is done, 130 when interrupted."""
    checkpoint = checked_checkpoint(args.resume, "resume", args) if args.resume else None
    config = settings(args, checkpoint, used=RESUMED_SETTINGS)
    check_data_flags(args, config, "resume" if checkpoint else "train", checkpoint)
    check_training_settings(args, config)
    if checkpoint is not None and checkpoint.epoch >= config["epochs"]:
        raise XpnetError(f"{args.resume} already holds {checkpoint.epoch} epochs; "
                         f"pass --epochs greater than {checkpoint.epoch} to train further")
    folder, trainer, interrupted = None, None, False
    try:
        folder, replaced = claim_output_folder(args, config, checkpoint)
        found = file_identity(folder.path / "checkpoint.npz")  # another run's, or the resumed run's own
        if folder.stale_lock_of:
            log(f"note: {folder.path} had a stale lock of process {folder.stale_lock_of}, which has ended; taking it over")
        trainer, train_loader, test_loader, start_epoch = prepared_trainer(args, config, checkpoint, folder, replaced, log)
        with np_quiet(), out_of_memory_advice("training", "try a smaller --batch-size"):
            trainer.fit(train_loader, test_loader, config["epochs"], start_epoch=start_epoch)
        interrupted = trainer.interrupted
    except KeyboardInterrupt:
        interrupted = True
    finally:
        interrupts.shutting_down()  # a second Ctrl-C cannot cut short what follows
        saved_epoch = None
        if folder is not None:
            try:
                path = folder.path / "checkpoint.npz"
                if file_identity(path) != found or (checkpoint is not None and "checkpoint.npz" not in replaced):
                    saved_epoch = epoch_saved_in(path)  # written by this run, or an earlier state of it
            finally:
                folder.release()
    if interrupted:
        report_interrupt(args, config, checkpoint, folder, saved_epoch)
        return 130
    best = max(trainer.history, key=lambda row: row["test_acc"])
    final = trainer.history[-1]
    print(f"done: final test accuracy {100 * final['test_acc']:.2f}%, best {100 * best['test_acc']:.2f}% (epoch {best['epoch']}); "
          f"files in {folder.path}: checkpoint.npz best.npz metrics.json curves.png confusion.png mistakes.png filters.png")
    return 0


def claim_output_folder(args: argparse.Namespace, config: dict, checkpoint):
    """``(folder, replaced)``: the run folder, locked for this process and checked to lose no
    other run, and the names of the files of another run in it that --overwrite replaces."""
    from training.run_folder import FolderInUseError, check_new_run, check_resume_target, claim

    if args.out is None and checkpoint is None:  # a fresh default name: runs/<model>-<timestamp>[-n]
        base = Path("runs") / f"{config['model']}-{time.strftime('%Y%m%d-%H%M%S')}"
        for attempt in range(1, 100):
            candidate = base if attempt == 1 else base.with_name(f"{base.name}-{attempt}")
            if candidate.exists():
                continue
            try:
                folder = claim(candidate)
            except FolderInUseError:  # another run took this name a moment ago
                continue
            if folder.created(candidate):
                return folder, []
            folder.release()
        raise XpnetError(f"found no free folder name like {base}; choose one with --out")
    out = args.out if args.out is not None else args.resume.parent
    folder = claim(out)
    try:
        if checkpoint is None:
            check_new_run(folder, args.overwrite)
            replaced = folder.run_files()  # with --overwrite; without it, check_new_run refused them
        else:
            replaced = check_resume_target(folder, args.resume, checkpoint.history, args.overwrite)
    except BaseException:
        folder.release()
        raise
    return folder, replaced


def prepared_trainer(args: argparse.Namespace, config: dict, checkpoint, folder, replaced: list[str], log):
    """Backend, data, model and optimizer: ``(trainer, train_loader, test_loader, start_epoch)`` ready to fit."""
    from models import build_model
    from training.data.augment import RandomShift
    from training.data import DataLoader
    from training.trainer import Trainer

    backend = choose_backend(args.device, log)
    interrupts.check()
    train_set, test_set = load_training_data(config, args, log, checkpoint)
    interrupts.check()
    mean, std = normalisation_of(train_set, checkpoint)
    config.update(mean=mean.tolist(), std=std.tolist(), device=backend.name)

    model = build_model(config["model"], seed=config["seed"], **model_options(config)).to(backend, config["dtype"])
    if hasattr(model, "dropout"):
        config["dropout"] = model.dropout
    optimizer = make_optimizer(config["optimizer"], model.parameters(), config)
    start_epoch, history = 0, []
    if checkpoint is not None:
        checkpoint.restore_model(model, backend)
        checkpoint.restore_optimizer(optimizer)  # the saved hyperparameters too, as torch does ...
        for name in ("lr", "weight_decay"):  # ... but a flag given now wins, e.g. a smaller --lr after divergence
            if getattr(args, name) is not None:
                setattr(optimizer, name, getattr(args, name))
        saved_momentum = getattr(optimizer, "momentum", None)
        if args.momentum is not None and saved_momentum is not None and args.momentum != saved_momentum:
            raise XpnetError(f"{args.resume} was trained with --momentum {saved_momentum}; momentum cannot change "
                             f"when resuming (its buffers depend on it): leave out --momentum")
        start_epoch, history = checkpoint.epoch, list(checkpoint.history)

    loader_options = dict(backend=backend, mean=mean, std=std, dtype=config["dtype"])
    augment = RandomShift(MAX_SHIFT, seed=config["seed"]) if config["augment"] else None
    train_loader = DataLoader(train_set.images, train_set.labels, config["batch_size"], shuffle=True, seed=config["seed"],
                              augment=augment, **loader_options)
    schedule = planned_schedule(config, len(train_loader), checkpoint, log)
    test_loader = DataLoader(test_set.images, test_set.labels, max(config["batch_size"], EVALUATION_BATCH), shuffle=False,
                             **loader_options)
    if not args.quiet:
        log(model.summary(config["batch_size"]))
    what = f"resuming at epoch {start_epoch + 1}" if checkpoint else "training"
    log(f"{what}: {config['model']} on {backend.name} ({config['dtype']}), {optimizer!r}, batch {config['batch_size']}, "
        f"{config['epochs']} epochs; writing to {folder.path}")
    if replaced:  # --overwrite, only now that all is ready: an error above has destroyed nothing
        removed = folder.remove_run_files(replaced)
        log(f"--overwrite: removed the other run's {', '.join(removed)} from {folder.path}")

    trainer = Trainer(model, optimizer, backend, out_dir=folder.path, config=config, progress=not args.quiet,
                      log=log if not args.quiet else (lambda message: None), schedule=schedule)
    trainer.history = history
    if checkpoint is not None:  # the schedule's position; checkpoints from before steps were saved: whole epochs
        trainer.step = int(checkpoint.meta.get("step", start_epoch * len(train_loader)))
    return trainer, interrupts.StopOnSignal(train_loader), interrupts.StopOnSignal(test_loader), start_epoch


@contextmanager
def np_quiet():
    """A diverging loss gets one clear error instead of NumPy's overflow warnings.

    Also from the cpu backend's worker threads (np.errstate only covers the calling thread).
    """
    import numpy as np

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def file_identity(path: Path):
    """What tells one file at ``path`` from the next (every save replaces the file); None if there is none."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino, status.st_mtime_ns


def epoch_saved_in(path: Path) -> int | None:
    """The epoch the checkpoint at ``path`` holds, read from the file itself; None if there is none."""
    from training.checkpoint import read_header
    from training.errors import CheckpointError

    try:
        return int(read_header(path)["epoch"]) if path.is_file() else None
    except CheckpointError:
        return None


def report_interrupt(args: argparse.Namespace, config: dict, checkpoint, folder, saved_epoch: int | None) -> None:
    """Say on stderr what an interrupt kept (as the files say, not as the trainer last knew), and how to continue."""
    continue_from, epoch = (folder.path / "checkpoint.npz", saved_epoch) if folder is not None else (None, None)
    if checkpoint is not None and (epoch is None or checkpoint.epoch > epoch):
        continue_from, epoch = args.resume, checkpoint.epoch
    if epoch:
        print(f"interrupted: {continue_from} holds epoch {epoch}; continue with: "
              f"python cli.py --resume {continue_from} --epochs {config['epochs']}", file=sys.stderr)
    elif folder is not None:
        print(f"interrupted before an epoch ended; nothing was saved in {folder.path}", file=sys.stderr)
    else:
        print("interrupted before training began; nothing was saved", file=sys.stderr)


# -- evaluation and prediction ----------------------------------------------------------------------
def restored_model(checkpoint, config: dict, backend):
    from models import build_model

    model = build_model(checkpoint.model_name, seed=0).to(backend, config["dtype"])
    checkpoint.restore_model(model, backend)
    return model.eval()


def evaluate(args: argparse.Namespace, log) -> int:
    """Loss and accuracy of a checkpoint on a test set (only the test split is read)."""
    from training.data import DataLoader
    from training.metrics import per_class_accuracy
    from training.trainer import evaluate as evaluate_model

    checkpoint = checked_checkpoint(args.evaluate, "evaluate", args)
    config = settings(args, checkpoint, used=EVALUATION_SETTINGS)
    check_data_flags(args, config, "evaluate", checkpoint)
    mean, std = checkpoint.normalisation()
    backend = choose_backend(args.device, log)
    model = restored_model(checkpoint, config, backend)
    interrupts.check()
    test_set = load_test_data(config, args, log, checkpoint)
    interrupts.check()
    loader = DataLoader(test_set.images, test_set.labels, args.batch_size or EVALUATION_BATCH, backend, mean, std,
                        shuffle=False, dtype=config["dtype"])
    with np_quiet(), out_of_memory_advice("evaluating", "try a smaller --batch-size"):
        result = evaluate_model(model, interrupts.StopOnSignal(loader), backend)
    if not math.isfinite(result.loss):
        raise XpnetError(f"the network of {args.evaluate} gives a {result.loss} loss on {test_set.name}: its outputs overflow, "
                         f"so its accuracy means nothing; the checkpoint is damaged or diverged: use another one")
    log(f"{args.evaluate} ({checkpoint.model_name}, epoch {checkpoint.epoch}) on {test_set.name}: "
        f"loss {result.loss:.4f}, accuracy {100 * result.accuracy:.2f}% of {len(result.labels):,} images")
    log("per-class accuracy: " + "  ".join(f"{digit}: {100 * value:.1f}%" for digit, value in enumerate(per_class_accuracy(result.confusion))))
    print(json.dumps({"loss": result.loss, "accuracy": result.accuracy}))
    return 0


def predict(args: argparse.Namespace, log) -> int:
    """The three likeliest digits of each image, with their probabilities."""
    import numpy as np

    from training.data.images import read_image

    checkpoint = checked_checkpoint(args.checkpoint, "predict", args)
    config = settings(args, checkpoint, used=PREDICTION_SETTINGS)
    mean, std = checkpoint.normalisation()
    backend = choose_backend(args.device, log)
    model = restored_model(checkpoint, config, backend)
    images = np.stack([read_image(path) for path in args.predict])
    batch = args.batch_size or EVALUATION_BATCH
    with np_quiet(), out_of_memory_advice("classifying the images", "try a smaller --batch-size"):
        probabilities = np.concatenate([class_probabilities(model, backend, images[start:start + batch], mean, std)
                                        for start in range(0, len(images), batch)])
    for path, row in zip(args.predict, probabilities):
        if not np.isfinite(row).all():
            raise XpnetError(f"the network of {args.checkpoint} gives non-finite outputs for {path}: they overflow, so its "
                             f"classes mean nothing; the checkpoint is damaged or diverged: use another one")
    for path, row in zip(args.predict, probabilities):
        top = np.argsort(-row, kind="stable")[:3]
        print(f"{path}: " + ", ".join(f"{digit} ({100 * row[digit]:.1f}%)" for digit in top))
    return 0


def class_probabilities(model, backend, images, mean, std):
    """Softmax of the network's outputs for uint8 images (N, 3, 32, 32), as float64 on the host.

    The images are normalised by the DataLoader, exactly as in training; the probabilities
    are taken from the logits in float64, so that tiny ones still print right.
    """
    import numpy as np
    from array_api_compat import numpy as host_xp

    from layers.activations import softmax
    from training.data import DataLoader

    loader = DataLoader(images, np.zeros(len(images), np.int64), len(images), backend, mean, std, shuffle=False,
                        dtype=model.dtype)
    (x, _), = loader
    logits = backend.to_numpy(model.forward(x)).astype(np.float64)
    return softmax(host_xp, logits, axis=1)


# -- the program ------------------------------------------------------------------------------------
def main(argv=None) -> int:
    """Run the command line; returns the exit code (usage errors exit through argparse with code 2).

    ``argv`` None means this is the program itself (``python cli.py``, ``xpnet``): its
    signal handlers then stay, recording only, until the process ends, so a late Ctrl-C
    cannot print a traceback. A caller that passes ``argv`` gets its own handlers back.
    """
    interrupts.catch_signals(received=_signals_at_start[0] if _signals_at_start else None)
    try:
        with streams.readers_may_leave() as (stdout, _), interrupts.quiet_unraisable():
            code, command = run(argv)
            if code == 0 and stdout.reader_left and command in ("evaluate", "predict"):
                return 1  # the reader of the output left early: Python's own exit code on EPIPE
            return code
    except KeyboardInterrupt:  # in the moment before run() took over
        interrupts.shutting_down()
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if argv is None:
            interrupts.shutting_down()
        else:
            interrupts.restore_signals()


def run(argv) -> tuple[int, str | None]:
    """Parse and run one command: ``(exit code, command)``; every error a user can cause is one ``error:`` line."""
    command = None
    try:
        interrupts.check()
        args = parse_args(argv)
        command = "evaluate" if args.evaluate else "predict" if args.predict else "train"
        log = (lambda message: None) if args.quiet else (lambda message: print(message, flush=True))
        check_environment()
        import_modules(*COMMON_MODULES, *COMMAND_MODULES[command])
        with warnings_as_lines():
            return {"evaluate": evaluate, "predict": predict, "train": train}[command](args, log), command
    except XpnetError as exc:
        interrupts.shutting_down()
        print(f"error: {exc}", file=sys.stderr)
        return 2, command
    except KeyboardInterrupt:
        interrupts.shutting_down()
        print("interrupted", file=sys.stderr)
        return 130, command
    except MemoryError:
        interrupts.shutting_down()
        print("error: out of memory; try a smaller --batch-size", file=sys.stderr)
        return 2, command
    except OSError as exc:  # the system refused something no check above foresaw (a permission, a full disk)
        interrupts.shutting_down()
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; check that file's permissions and the free disk space", file=sys.stderr)
        return 2, command


@contextmanager
def warnings_as_lines():
    """Python warnings (e.g. "could not cache the synthetic data") as one line ``warning: ...`` each."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


if __name__ == "__main__":
    sys.exit(main())
