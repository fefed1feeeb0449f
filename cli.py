"""xpnet's command line: train, resume, evaluate and predict.

    python cli.py                                   # LNet on the built-in synthetic digits
    python cli.py --device cuda --model lnet        # the same on an NVIDIA GPU
    python cli.py --dataset svhn --download         # real SVHN (needs the network once)
    python cli.py --model cnn --augment --schedule onecycle --lr 3e-3 --epochs 30   # the best recipe
    python cli.py --resume runs/lnet-.../checkpoint.npz --epochs 20
    python cli.py --evaluate runs/lnet-.../best.npz
    python cli.py --predict house.png --checkpoint runs/lnet-.../best.npz

This file is the flags and what becomes of them; the work is the library's run API
(training/run/: ``train``, ``evaluate``, ``predict`` with a ``RunConfig``), whose messages
name each setting as the flag that sets it (``--lr``), here.

Mistakes a user can make end in one line ``error: ...`` on stderr and exit code 2. Ctrl-C
or SIGTERM, at any moment, ends the run with exit code 130 and keeps every completed
epoch (training/interrupts.py). A closed or failing standard output or error (``| head``, a
full disk) stops the printing, not the training, and any encoding works
(training/run/streams.py). A run folder belongs to one run (training/run/folder.py).
"""
from __future__ import annotations

import signal
import sys

_signals_at_start: list[int] = []  # stop signals that came while `python cli.py` was starting
if __name__ == "__main__":  # first of all: a Ctrl-C or SIGTERM during the imports below is recorded; main() acts on it
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, lambda signum, frame: _signals_at_start.append(signum))

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import warnings  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

from training import interrupts  # noqa: E402
from training.errors import XpnetError, settings_named  # noqa: E402
from training.run import RunConfig, RunInterrupted, evaluate, predict, train  # noqa: E402
from training.run.config import (  # noqa: E402
    COMMAND_PURPOSES,
    COMMAND_SETTINGS,
    EVALUATION_BATCH,
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_EVERY,
    MAX_IMAGES,
    MAX_SHIFT,
    MAX_WEIGHT_DECAY,
    NON_NEGATIVE_INT,
    RULES,
    expanded,
)
from training.run.prepare import check_environment  # noqa: E402
from training.run.streams import readers_may_leave, report_failures  # noqa: E402


# -- the flags --------------------------------------------------------------------------------------
def typed(setting):
    """An argparse type: the number that RunConfig's rule of ``setting`` (a name, or a run option's Rule)
    reads from the text, else a usage error."""
    rule = RULES[setting] if isinstance(setting, str) else setting

    def parse(text: str):
        try:
            return rule.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def path_argument(text: str) -> Path:
    """A file or folder name; ``~`` stands for the home folder also in ``--out=~/x``, where the shell leaves it."""
    if not text.strip():  # e.g. an unset shell variable: Path("") would silently mean the current folder
        raise argparse.ArgumentTypeError("expected a file or folder name, got an empty one")
    try:
        return expanded(text)
    except ValueError as exc:  # ~nosuchuser/...
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser(flags: dict | None = None) -> argparse.ArgumentParser:
    """The command line's parser: a flag for each RunConfig field, checked by the field's rule.
    ``flags``, if given, receives each flag's argparse Action by destination."""
    table = {} if flags is None else flags
    parser = argparse.ArgumentParser(
        prog="python cli.py",
        description="Train, evaluate and use xpnet's MLP, LNet and CNN on SVHN-style digit images.",
        epilog="Exit codes: 0 done; 2 an error (one 'error:' line on stderr); 130 interrupted (Ctrl-C or SIGTERM: "
               "every completed epoch is kept); 1 --evaluate or --predict output cut short by a closed pipe or a full disk.",
    )
    what = _flag_group(parser, "what to run", table)
    what("--model", choices=RULES["model"].choices, help=f"network (default {RunConfig.DEFAULTS['model']})")
    what("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto (the default) = cuda when it works, else cpu")
    what("--dtype", choices=RULES["dtype"].choices, help="floating-point type of weights and batches (default float32)")
    what("--resume", metavar="CKPT", type=path_argument, help="continue a run from its checkpoint.npz up to --epochs in total")
    what("--evaluate", metavar="CKPT", type=path_argument, help="only evaluate a checkpoint on the test set")
    what("--predict", metavar="IMAGE", type=path_argument, nargs="+", help="print the top-3 classes of PNG/JPEG images")
    what("--checkpoint", metavar="CKPT", type=path_argument, help="the checkpoint --predict uses")

    optim = _flag_group(parser, "optimisation", table)
    optim("--optimizer", choices=RULES["optimizer"].choices, help=f"optimizer (default {RunConfig.DEFAULTS['optimizer']})")
    optim("--lr", type=typed("lr"), help="learning rate, positive and finite (default 1e-3 for adam/adamw, 0.05 for sgd)")
    optim("--momentum", type=typed("momentum"), help=f"SGD momentum, in [0, 1) (default {RunConfig.DEFAULTS['momentum']})")
    optim("--weight-decay", type=typed("weight_decay"), help=f"L2 penalty, or decoupled decay for adamw, in [0, {MAX_WEIGHT_DECAY:g}], and lr x weight decay "
                                                            "below 1 for sgd and adamw (default 0; 1e-2 for adamw)")
    optim("--epochs", type=typed("epochs"), help=f"total epochs, also when resuming, 1 to {MAX_EPOCHS} (default {RunConfig.DEFAULTS['epochs']})")
    optim("--batch-size", type=typed("batch_size"),
                       help=f"images per training step, 1 to {MAX_BATCH} (default {RunConfig.DEFAULTS['batch_size']}; with --evaluate or --predict: images per forward pass, "
                            f"default {EVALUATION_BATCH})")
    optim("--seed", type=typed("seed"), help="seed of the weights, the shuffling and the synthetic data, 0 to 2**63 - 1 (default 0)")
    optim("--schedule", choices=RULES["schedule"].choices,
                       help="learning rate per batch: constant (the default), step (x0.1 at 50%% and 75%% of the steps), "
                            "cosine (to 0), onecycle (torch's OneCycleLR with max_lr = --lr)")
    optim("--dropout", type=typed("dropout"), help="dropout probability of the cnn, in [0, 1) (default 0.3)")
    optim("--augment", action="store_true", default=None,
                       help=f"shift each training image by up to {MAX_SHIFT} pixels each way, at random (edges repeated)")

    data = _flag_group(parser, "data", table)
    data("--dataset", choices=RULES["dataset"].choices, help="synthetic (the default: built in, no download) or svhn")
    data("--data-dir", type=path_argument, help=f"folder of the SVHN .mat files (default {RunConfig.DEFAULTS['data_dir']})")
    data("--download", action="store_true", help="download the SVHN files into --data-dir (checksums verified)")
    data("--extra", action="store_true", default=None, help="also train on SVHN's extra_32x32.mat (531k images)")
    data("--train-size", type=typed("train_size"), help=f"synthetic training images, 1 to {MAX_IMAGES} (default {RunConfig.DEFAULTS['train_size']})")
    data("--test-size", type=typed("test_size"), help=f"synthetic test images, 1 to {MAX_IMAGES} (default {RunConfig.DEFAULTS['test_size']})")

    output = _flag_group(parser, "output", table)
    output("--out", metavar="DIR", type=path_argument,
                        help="run folder (default runs/<model>-<timestamp>; when resuming, the checkpoint's folder)")
    output("--overwrite", action="store_true",
                        help="replace the run already in --out (without it, a folder that holds another run is refused)")
    output("--quiet", action="store_true", help="no progress bar, no per-epoch lines or notes; only the final result (and errors)")
    output("--layer-stats", metavar="N", type=typed(NON_NEGATIVE_INT), default=0,
           help="every N training steps, record each layer's activation mean and std, gradient norm and "
                f"update/weight ratio, into metrics.json (layer_stats) and layers.png, 0 to {MAX_EVERY} (default 0: off)")
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
    for command, purpose in COMMAND_PURPOSES.items():
        if getattr(args, command):
            given = [dest for dest, action in flags.items() if getattr(args, dest) != action.default]
            ignored = [name for name in given if name not in COMMAND_SETTINGS[command] and name != command]
            if ignored:
                parser.error(f"{flag_name(ignored[0])} does not apply to --{command}, which {purpose}; leave it out")
    return args


def flag_name(dest: str) -> str:
    """The flag of a setting, as messages name it here: lr -> --lr, batch_size -> --batch-size."""
    return "--" + dest.replace("_", "-")


# -- the commands -----------------------------------------------------------------------------------
def run_config(args: argparse.Namespace) -> RunConfig:
    """The RunConfig of the flags: each field its flag's value (None: not given)."""
    return RunConfig(**{field.name: getattr(args, field.name) for field in dataclasses.fields(RunConfig)
                        if hasattr(args, field.name)})


def train_command(args: argparse.Namespace) -> int:
    """A new run, or a resumed one (--resume): exit code 0 when every epoch is done, 130 when interrupted."""
    try:
        result = train(run_config(args))
    except RunInterrupted as interrupt:
        report_interrupt(interrupt)
        return 130
    best, final = result.best, result.history[-1]
    names = ("checkpoint.npz", "best.npz", "metrics.json", "curves.png", "confusion.png", "mistakes.png", "filters.png", "layers.png")
    written = " ".join(name for name in names if (result.folder / name).is_file())  # best.npz may await a better epoch
    print(f"done: final test accuracy {100 * final['test_acc']:.2f}%, best {100 * best['test_acc']:.2f}% (epoch {best['epoch']}); "
          f"files in {result.folder}: {written}")
    return 0


def report_interrupt(interrupt: RunInterrupted) -> None:
    """Say on stderr what an interrupt kept, and how to continue."""
    if interrupt.epoch:
        print(f"interrupted: {interrupt.checkpoint} holds epoch {interrupt.epoch}; continue with: "
              f"python cli.py --resume {interrupt.checkpoint} --epochs {interrupt.epochs}", file=sys.stderr)
    else:
        print(interrupt, file=sys.stderr)


def evaluate_command(args: argparse.Namespace) -> int:
    """Loss and accuracy of a checkpoint on a test set, as JSON on stdout (the rest is the library's log)."""
    result = evaluate(args.evaluate, run_config(args))
    print(json.dumps({"loss": result.loss, "accuracy": result.accuracy}))
    return 0


def predict_command(args: argparse.Namespace) -> int:
    """The three likeliest digits of each image, with their probabilities."""
    prediction = predict(args.checkpoint, args.predict, run_config(args))
    for path, row, top in zip(args.predict, prediction.probabilities, prediction.top(3)):
        print(f"{path}: " + ", ".join(f"{digit} ({100 * row[digit]:.1f}%)" for digit in top))
    return 0


COMMANDS = {"train": train_command, "evaluate": evaluate_command, "predict": predict_command}


# -- the program ------------------------------------------------------------------------------------
def main(argv=None) -> int:
    """Run the command line; returns the exit code (usage errors exit through argparse with code 2).

    ``argv`` None means this is the program itself (``python cli.py``, ``xpnet``): its
    signal handlers then stay, recording only, until the process ends, so a late Ctrl-C
    cannot print a traceback. A caller that passes ``argv`` gets its own handlers back.
    """
    interrupts.catch_signals(received=_signals_at_start[0] if _signals_at_start else None)
    try:
        with readers_may_leave() as (stdout, stderr), interrupts.quiet_unraisable():
            try:
                code, command = run(argv)
            finally:  # what is still buffered fails now or never; then one line on why a stream stopped
                stdout.flush()
                stderr.flush()
                report_failures(stdout, stderr)
            if code == 0 and stdout.reader_left and command in ("evaluate", "predict"):
                return 1  # the output was cut short (its reader left, or its disk filled): Python's own exit code on EPIPE
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
        check_environment()
        with warnings_as_lines(), settings_named(flag_name):  # messages name settings by their flags
            return COMMANDS[command](args), command
    except (XpnetError, KeyboardInterrupt, MemoryError, OSError) as exc:
        interrupts.shutting_down()
        print(failure_line(exc), file=sys.stderr)
        return (130 if isinstance(exc, KeyboardInterrupt) else 2), command


def failure_line(exc: BaseException) -> str:
    """The one line on stderr for what ended a command."""
    if isinstance(exc, XpnetError):
        return f"error: {exc}"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, MemoryError):
        return "error: out of memory; try a smaller --batch-size"
    where = f": {exc.filename}" if exc.filename else ""  # an OSError no check foresaw (a permission, a full disk)
    return f"error: {exc.strerror or exc}{where}; check that file's permissions and the free disk space"


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
