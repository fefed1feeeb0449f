"""xpnet's command line: train, resume, evaluate and predict.

    python cli.py                                   # LNet on the built-in synthetic digits
    python cli.py --device cuda --model lnet        # the same on an NVIDIA GPU
    python cli.py --dataset svhn --download         # real SVHN (needs the network once)
    python cli.py --model cnn --augment --schedule onecycle --lr 3e-3 --epochs 30   # the best recipe
    python cli.py --resume runs/lnet-.../checkpoint.npz --epochs 20
    python cli.py --evaluate runs/lnet-.../best.npz
    python cli.py --predict house.png --checkpoint runs/lnet-.../best.npz

Mistakes a user can make end in one line ``error: ...`` on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from backends import BackendUnavailableError, get_backend
from training.errors import XpnetError
from training.schedules import SCHEDULES

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
    "schedule": "constant",
    "augment": False,
    "dropout": None,  # the model's own (0.3 for the cnn); only models with Dropout layers take one
}
LEARNING_RATES = {"adam": 1e-3, "adamw": 1e-3, "sgd": 0.05}
RESUMED_SETTINGS = ("model", "optimizer", "lr", "momentum", "weight_decay", "batch_size", "dataset",
                    "data_dir", "seed", "dtype", "train_size", "test_size", "extra", "schedule", "augment", "dropout")
MAX_SHIFT = 3  # --augment: random shifts of up to this many pixels


def number_argument(kind: type, minimum: float, inclusive: bool, description: str):
    """An argparse type: ``kind(text)``, finite and ≥ (or >) ``minimum``, else a usage error."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}") from None
        if not (value >= minimum if inclusive else value > minimum) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be {description}, got {text}")
        return value

    return parse


positive_int = number_argument(int, 1, True, "at least 1")
non_negative_int = number_argument(int, 0, True, "zero or positive")
positive_float = number_argument(float, 0.0, False, "a positive number")
non_negative_float = number_argument(float, 0.0, True, "zero or positive")


def probability(text: str) -> float:
    """--dropout: a number in [0, 1), else a usage error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python cli.py",
        description="Train, evaluate and use xpnet's MLP, LNet and CNN on SVHN-style digit images.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    what = parser.add_argument_group("what to run")
    what.add_argument("--model", choices=["lnet", "mlp", "cnn"], default=None, help=f"network (default {DEFAULTS['model']})")
    what.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto = cuda when it works, else cpu")
    what.add_argument("--dtype", choices=["float32", "float64"], default=None, help="float32 (default) or float64")
    what.add_argument("--resume", metavar="CKPT", help="continue a run from its checkpoint.npz up to --epochs in total")
    what.add_argument("--evaluate", metavar="CKPT", help="only evaluate a checkpoint on the test set")
    what.add_argument("--predict", metavar="IMAGE", nargs="+", help="print the top-3 classes of PNG/JPEG images")
    what.add_argument("--checkpoint", metavar="CKPT", help="the checkpoint --predict uses")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default=None, help="default adam")
    optim.add_argument("--lr", type=positive_float, default=None, help="learning rate (default 1e-3 for adam/adamw, 0.05 for sgd)")
    optim.add_argument("--momentum", type=non_negative_float, default=None, help="SGD momentum (default 0.9)")
    optim.add_argument("--weight-decay", type=non_negative_float, default=None, help="default 0 (1e-2 for adamw)")
    optim.add_argument("--epochs", type=positive_int, default=None, help=f"total epochs, also when resuming (default {DEFAULTS['epochs']})")
    optim.add_argument("--batch-size", type=positive_int, default=None, help=f"default {DEFAULTS['batch_size']}")
    optim.add_argument("--seed", type=non_negative_int, default=None, help="seed of the weights, the shuffling and the synthetic data (default 0)")
    optim.add_argument("--schedule", choices=SCHEDULES, default=None,
                       help="learning rate per batch: constant (default), step (x0.1 at 50%% and 75%% of the steps), "
                            "cosine (to 0), onecycle (torch's OneCycleLR with max_lr = --lr)")
    optim.add_argument("--dropout", type=probability, default=None, help="dropout probability of the cnn (default 0.3)")
    optim.add_argument("--augment", action="store_true", default=None,
                       help=f"shift each training image by up to {MAX_SHIFT} pixels each way, at random (edges repeated)")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=["synthetic", "svhn"], default=None, help="default synthetic (built in, no download)")
    data.add_argument("--data-dir", default=None, help=f"folder of the SVHN .mat files (default {DEFAULTS['data_dir']})")
    data.add_argument("--download", action="store_true", help="download the SVHN files into --data-dir (checksums verified)")
    data.add_argument("--extra", action="store_true", default=None, help="also train on SVHN's extra_32x32.mat (531k images)")
    data.add_argument("--train-size", type=positive_int, default=None, help="synthetic training images (default 20000)")
    data.add_argument("--test-size", type=positive_int, default=None, help="synthetic test images (default 5000)")

    output = parser.add_argument_group("output")
    output.add_argument("--out", metavar="DIR", help="run folder (default runs/<model>-<timestamp>; when resuming, the checkpoint's folder)")
    output.add_argument("--quiet", action="store_true", help="no progress bar, no per-epoch lines; only the final line (and errors)")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    modes = [name for name in ("resume", "evaluate", "predict") if getattr(args, name)]
    if len(modes) > 1:
        parser.error(f"--{modes[0]} and --{modes[1]} cannot be used together")
    if args.predict and not args.checkpoint:
        parser.error("--predict needs --checkpoint CKPT (a best.npz or checkpoint.npz of a training run)")
    if args.checkpoint and not args.predict:
        parser.error("--checkpoint goes with --predict; to evaluate a checkpoint use --evaluate CKPT")
    training_only = [flag for flag, value in (("--augment", args.augment), ("--schedule", args.schedule),
                                              ("--dropout", args.dropout)) if value is not None]
    if training_only and (args.evaluate or args.predict):
        parser.error(f"{training_only[0]} applies to training; leave it out with --{'evaluate' if args.evaluate else 'predict'}")
    return args


def settings(args: argparse.Namespace, saved: dict | None = None) -> dict:
    """The run's settings: explicit flags, else the checkpoint's (when resuming), else defaults."""
    saved = saved or {}
    flags = {action.dest: action for action in build_parser()._actions} if saved else {}
    chosen = {}
    for name, default in {**DEFAULTS, "extra": False}.items():
        value = getattr(args, name, None)
        if value is None and name in RESUMED_SETTINGS:
            value = saved.get(name)
            if value is not None:
                check_saved_setting(flags[name], value)
        chosen[name] = default if value is None else value
    if chosen["lr"] is None:
        chosen["lr"] = LEARNING_RATES[chosen["optimizer"]]
    if chosen["weight_decay"] is None:
        chosen["weight_decay"] = 1e-2 if chosen["optimizer"] == "adamw" else 0.0
    return chosen


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
    elif name == "data_dir" and not isinstance(value, str):
        problem = "expected a folder name"
    if problem:
        flag = "--" + name.replace("_", "-")
        raise XpnetError(f"the checkpoint's config has {name} = {value!r}, which {flag} would refuse ({problem}); "
                         f"the file was edited or damaged: give {flag} explicitly or use another checkpoint")


def choose_backend(device: str, log):
    backend = get_backend(device)
    if device == "auto" and backend.name == "cpu":
        try:
            get_backend("cuda")
        except BackendUnavailableError as exc:
            log(f"note: --device auto is using the cpu ({exc})")
    return backend


def load_data(config: dict, download: bool, log):
    """(train, test) ImageSets of the configured dataset."""
    if config["dataset"] == "synthetic":
        from training.synthetic import make_synthetic

        started = time.perf_counter()
        train, test = make_synthetic(config["train_size"], config["test_size"], seed=config["seed"])
        log(f"synthetic digits: {len(train):,} train / {len(test):,} test images ({time.perf_counter() - started:.1f} s)")
        return train, test
    from training.data import load_svhn

    if download:
        from training.download import download_svhn

        splits = ("train", "test", "extra") if config["extra"] else ("train", "test")
        download_svhn(config["data_dir"], splits=splits)
    train, test = load_svhn(config["data_dir"], extra=bool(config["extra"]))
    log(f"SVHN from {config['data_dir']}: {len(train):,} train / {len(test):,} test images")
    return train, test


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


def train(args: argparse.Namespace, log) -> int:
    from models import build_model
    from training.augment import RandomShift
    from training.checkpoint import load_checkpoint
    from training.data import DataLoader, channel_stats
    from training.trainer import Trainer

    checkpoint = load_checkpoint(args.resume) if args.resume else None
    config = settings(args, checkpoint.config if checkpoint else None)
    if args.momentum is not None and config["optimizer"] != "sgd":
        raise XpnetError(f"--momentum applies only to --optimizer sgd; this run uses {config['optimizer']}, whose "
                         "moment estimates have their own fixed betas: leave out --momentum or add --optimizer sgd")
    backend = choose_backend(args.device, log)
    train_set, test_set = load_data(config, args.download, log)
    if checkpoint is not None and "mean" in checkpoint.config:
        mean, std = np.array(checkpoint.config["mean"]), np.array(checkpoint.config["std"])
    else:
        mean, std = channel_stats(train_set.images)
    config.update(mean=mean.tolist(), std=std.tolist())

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
        if start_epoch >= config["epochs"]:
            raise XpnetError(
                f"{args.resume} already holds {start_epoch} epochs; pass --epochs greater than {start_epoch} to train further"
            )
    out = Path(args.out) if args.out else (
        Path(args.resume).parent if checkpoint is not None else Path("runs") / f"{config['model']}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise XpnetError(f"cannot create the output folder {out}: {exc.strerror or exc}; choose another with --out") from exc
    try:  # find out now, not after the first epoch
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise XpnetError(f"the output folder {out} is not writable: {exc.strerror or exc}; choose another with --out") from exc

    config.update(device=backend.name)
    augment = RandomShift(MAX_SHIFT, seed=config["seed"]) if config["augment"] else None
    train_loader = DataLoader(train_set.images, train_set.labels, config["batch_size"], backend, mean, std,
                              shuffle=True, seed=config["seed"], augment=augment)
    schedule = planned_schedule(config, len(train_loader), checkpoint, log)
    test_loader = DataLoader(test_set.images, test_set.labels, max(config["batch_size"], 500), backend, mean, std, shuffle=False)
    if not args.quiet:
        log(model.summary(config["batch_size"]))
    what = f"resuming at epoch {start_epoch + 1}" if checkpoint else "training"
    log(f"{what}: {config['model']} on {backend.name}, {optimizer!r}, batch {config['batch_size']}, "
        f"{config['epochs']} epochs; writing to {out}")

    trainer = Trainer(model, optimizer, backend, out_dir=out, config=config, progress=not args.quiet,
                      log=log if not args.quiet else (lambda message: None), schedule=schedule)
    trainer.history = history
    if checkpoint is not None:  # the schedule's position; checkpoints from before steps were saved: whole epochs
        trainer.step = int(checkpoint.meta.get("step", start_epoch * len(train_loader)))
    # A diverging loss gets one clear error instead of NumPy's overflow warnings, also from
    # the cpu backend's worker threads (np.errstate only covers the calling thread).
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        trainer.fit(train_loader, test_loader, config["epochs"], start_epoch=start_epoch)
    if trainer.interrupted:
        if trainer.checkpoint_epoch:
            print(f"interrupted: {out / 'checkpoint.npz'} holds epoch {trainer.checkpoint_epoch}; continue with: "
                  f"python cli.py --resume {out / 'checkpoint.npz'} --epochs {config['epochs']}", file=sys.stderr)
        else:
            print(f"interrupted before an epoch ended; nothing new was saved in {out}", file=sys.stderr)
        return 130
    best = max(trainer.history, key=lambda row: row["test_acc"])
    final = trainer.history[-1]
    print(f"done: final test accuracy {100 * final['test_acc']:.2f}%, best {100 * best['test_acc']:.2f}% (epoch {best['epoch']}); "
        f"files in {out}: checkpoint.npz best.npz metrics.json curves.png confusion.png mistakes.png filters.png")
    return 0


def restored_model(path, device: str, log):
    from models import build_model
    from training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path)
    backend = choose_backend(device, log)
    config = checkpoint.config
    model = build_model(checkpoint.model_name, seed=0).to(backend, config.get("dtype", "float32"))
    checkpoint.restore_model(model, backend)
    if "mean" not in config or "std" not in config:
        raise XpnetError(f"{path} has no normalisation statistics; it was not written by cli.py training")
    return checkpoint, model.eval(), backend, np.array(config["mean"]), np.array(config["std"])


def evaluate(args: argparse.Namespace, log) -> int:
    from training.data import DataLoader
    from training.metrics import per_class_accuracy
    from training.trainer import Trainer

    checkpoint, model, backend, mean, std = restored_model(args.evaluate, args.device, log)
    config = settings(args, checkpoint.config)
    _, test_set = load_data(config, args.download, log)
    loader = DataLoader(test_set.images, test_set.labels, 500, backend, mean, std, shuffle=False)
    result = Trainer(model, None, backend, progress=False).evaluate(loader)
    log(f"{args.evaluate} ({checkpoint.model_name}, epoch {checkpoint.epoch}) on {test_set.name}: "
        f"loss {result.loss:.4f}, accuracy {100 * result.accuracy:.2f}% of {len(result.labels):,} images")
    log("per-class accuracy: " + "  ".join(f"{digit}: {100 * value:.1f}%" for digit, value in enumerate(per_class_accuracy(result.confusion))))
    print(json.dumps({"loss": result.loss, "accuracy": result.accuracy}))
    return 0


def predict(args: argparse.Namespace, log) -> int:
    from training.images import read_image

    _, model, backend, mean, std = restored_model(args.checkpoint, args.device, log)
    xp = backend.xp
    images = np.stack([read_image(path) for path in args.predict])
    x = (images.astype(np.float32) / 255.0 - mean.reshape(1, 3, 1, 1)) / std.reshape(1, 3, 1, 1)
    logits = backend.to_numpy(model.forward(backend.asarray(x, dtype=model.dtype)))
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    del xp
    for path, row in zip(args.predict, probabilities):
        top = np.argsort(-row, kind="stable")[:3]
        print(f"{path}: " + ", ".join(f"{digit} ({100 * row[digit]:.1f}%)" for digit in top))
    return 0


def _interrupt_on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    log = (lambda message: None) if args.quiet and not (args.evaluate or args.predict) else (lambda message: print(message, flush=True))
    previous = signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        if args.evaluate:
            return evaluate(args, log)
        if args.predict:
            return predict(args, log)
        return train(args, log)
    except (XpnetError, BackendUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory; try a smaller --batch-size", file=sys.stderr)
        return 2
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":  # cupy.cuda.memory.OutOfMemoryError
            print(f"error: the GPU ran out of memory ({exc}); try a smaller --batch-size", file=sys.stderr)
            return 2
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
