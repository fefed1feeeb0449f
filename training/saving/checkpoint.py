"""Checkpoints: model, optimizer, progress and history in one .npz, written atomically.

Layout of the file (every entry a plain array, so it loads with ``allow_pickle=False``):

    meta                    0-d unicode array: JSON with format version, model name,
                            parameter names and shapes, optimizer name and
                            hyperparameters, epoch, loader seed, config and history
    param/<name>            each model parameter ("param/0.weight", ...)
    buffer/<name>           each model buffer, e.g. a BatchNorm's "buffer/1.running_mean"
                            (models without buffers have none; the header lists them
                            under "buffers", with their shapes)
    optim/<i>/<key>         each optimizer state array or step count of parameter i

The header also holds, where they apply: "layer_state" (host-side layer state such as a
Dropout layer's step count, by layer index), "step" (training steps taken, the position of
a learning-rate schedule and of the random draws keyed by it) and "schedule".

The shuffle order and the augmentation shifts of epoch e are pure functions of (seed, e),
and a Dropout layer's masks of (seed, its step count), so ``epoch``, the layer state and
the seed are the whole random state a resumed run needs.
"""
from __future__ import annotations

import functools
import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, setting
from .atomic import write_atomically
from .regular_files import NotARegularFile, open_to_read

FORMAT_VERSION = 1
# What the trainer writes for each epoch; metrics.json holds the same rows.
HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "examples_per_sec", "seconds")
# Bounds on what a checkpoint may ask the reader to unpack (see load_checkpoint).
HEADER_LIMIT = ((), 2**30)  # the header: one text of at most 1 GiB (4 bytes a character; 10**6 epochs of history: 0.8 GiB)
NPY_HEADER_LIMIT = 2**16  # bytes of an entry's .npy header (numpy itself reads at most 10 000)
MAX_ITEMSIZE = 8  # bytes per number: float64, int64
MAX_NUMBERS = 2**28  # parameters and buffers of a model xpnet does not register (1 GiB of float32)
_EDITED = "the file was edited or damaged: use another checkpoint (best.npz or checkpoint.npz of a run)"


def _is_real(value) -> bool:
    """An int or float read back from JSON (not a bool, string or list)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fits_history(key: str, value) -> bool:
    """Whether a history row's ``value`` for ``key`` is one the trainer could have written."""
    if not _is_real(value):
        return False
    if key.endswith("_acc"):
        return 0 <= value <= 1
    if key.endswith("_loss"):
        return 0 <= value < float("inf")
    return value != value or 0 <= value < float("inf")  # examples_per_sec, seconds: NaN when too fast to time


def save_checkpoint(path, model, optimizer=None, *, epoch: int, backend, config: dict | None = None,
                    history: list | None = None, extra: dict | None = None, step: int | None = None,
                    schedule: dict | None = None) -> Path:
    """Write a checkpoint atomically: a temporary file in the same folder, fsync, rename.

    If anything fails (folder not writable, disk full), the previous checkpoint at
    ``path`` is left exactly as it was and CheckpointError says what happened.
    """
    path = Path(path)
    names = [parameter.name for parameter in model.parameters()]
    if "" in names or len(set(names)) != len(names):  # a plain Sequential's parameters have no names
        raise CheckpointError(f"cannot save {path}: the model's parameters are not named one by one ({names}); build it "
                              "as a models.Model, which names each after its layer (\"0.weight\", ...)")
    arrays: dict[str, np.ndarray] = {}
    for parameter in model.parameters():
        arrays[f"param/{parameter.name}"] = backend.to_numpy(parameter.data)
    meta: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "model": model.name,
        "parameters": {p.name: list(p.shape) for p in model.parameters()},
        "dtype": str(model.parameters()[0].data.dtype),
        "epoch": int(epoch),
        "config": config or {},
        "history": history or [],
        "extra": extra or {},
    }
    buffers = model.named_buffers() if hasattr(model, "named_buffers") else []
    if buffers:
        meta["buffers"] = {name: list(array.shape) for name, array in buffers}
        for name, array in buffers:
            arrays[f"buffer/{name}"] = backend.to_numpy(array)
    layer_state = model.layer_state() if hasattr(model, "layer_state") else {}
    if layer_state:
        meta["layer_state"] = layer_state
    if step is not None:
        meta["step"] = int(step)
    if schedule is not None:
        meta["schedule"] = schedule
    if optimizer is not None:
        state = optimizer.state_dict()
        meta["optimizer"] = {
            "name": state["optimizer"],
            "hyper": state["hyper"],
            "num_params": state["num_params"],
        }
        for index, entries in state["state"].items():
            for key, value in entries.items():
                arrays[f"optim/{index}/{key}"] = np.asarray(value if isinstance(value, (int, float)) else backend.to_numpy(value))
    arrays["meta"] = np.array(json.dumps(meta))
    _atomic_savez(path, arrays)
    return path


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda stream: np.savez(stream, **arrays))
    except OSError as exc:
        raise CheckpointError(
            f"cannot write checkpoint {path}: {exc.strerror or exc}; the previous checkpoint (if any) is unchanged; "
            f"free some disk space or choose a writable {setting('out')} folder"
        ) from exc


def _shape_differences(model_shapes: dict, saved: dict[str, np.ndarray]) -> str:
    """"name: saved (shape), model has (shape)" for each name whose shapes differ ("missing" or
    "none" where one side lacks it), sorted and joined by "; "; "" when all fit."""
    expected = {name: tuple(shape) for name, shape in model_shapes.items()}
    found = {name: tuple(array.shape) for name, array in saved.items()}
    return "; ".join(f"{name}: saved {found.get(name, 'missing')}, model has {expected.get(name, 'none')}"
                     for name in sorted(set(expected) | set(found)) if expected.get(name) != found.get(name))


class Checkpoint:
    """A checkpoint read back: ``meta`` (dict), ``params`` {name: array}, optimizer state."""

    def __init__(self, path: Path, meta: dict, params: dict[str, np.ndarray], optim: dict[int, dict[str, Any]],
                 buffers: dict[str, np.ndarray] | None = None):
        self.path, self.meta, self.params, self.optim = path, meta, params, optim
        self.buffers = buffers or {}

    @property
    def step(self) -> int:
        """Training steps taken (0 for checkpoints written before steps were recorded)."""
        return int(self.meta.get("step", 0))

    @property
    def schedule(self) -> dict | None:
        return self.meta.get("schedule")

    @property
    def model_name(self) -> str:
        return self.meta["model"]

    @property
    def epoch(self) -> int:
        return int(self.meta["epoch"])

    @property
    def config(self) -> dict:
        return self.meta.get("config", {})

    @property
    def history(self) -> list:
        return self.meta.get("history", [])

    # -- checks of what a hand edit or a damaged file could break ----------------------------
    def normalisation(self, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """The per-channel (mean, std) that the run normalised its inputs with, checked.

        Both are in units of pixel/255, so each mean lies in [0, 1] and each std in (0, 1]
        (a std of 0 would mean a constant channel).
        """
        config = self.config
        if "mean" not in config or "std" not in config:
            raise CheckpointError(f"{self.path} has no normalisation statistics; it was not written by cli.py training")
        mean, std = config["mean"], config["std"]
        for name, value, fits in (("mean", mean, lambda v: 0 <= v <= 1), ("std", std, lambda v: 0 < v <= 1)):
            if not (isinstance(value, list) and len(value) == channels and all(_is_real(v) and fits(v) for v in value)):
                bounds = "[0, 1]" if name == "mean" else "(0, 1]"
                raise CheckpointError(f"{self.path}: its config has {name} = {value!r}, expected {channels} numbers in "
                                      f"{bounds}, one per colour channel; {_EDITED}")
        return np.array(mean, dtype=np.float64), np.array(std, dtype=np.float64)

    def check_weights_finite(self) -> None:
        """Refuse weights that hold NaN or infinity: their outputs would be meaningless."""
        for name, array in self.params.items():
            if not np.isfinite(array).all():
                raise CheckpointError(f"{self.path}: parameter {name} holds NaN or infinite values; {_EDITED}")

    def check_history(self) -> None:
        """Each row of the history has the keys the trainer writes, and rows count epochs 1, 2, ..."""
        history = self.history
        for index, row in enumerate(history):
            missing = [key for key in HISTORY_KEYS if key not in row]
            if missing:
                problem = f"has no {', '.join(missing)}"
            elif type(row["epoch"]) is not int or row["epoch"] != index + 1:
                problem = f"has epoch {row['epoch']!r} where {index + 1} belongs"
            else:
                odd = [key for key in HISTORY_KEYS[1:] if not _fits_history(key, row[key])]
                problem = f"has {odd[0]} = {row[odd[0]]!r}, which no training writes" if odd else None
            if problem:
                raise CheckpointError(f"{self.path}: row {index + 1} of its history {problem}; {_EDITED}")
        if len(history) != self.epoch:
            raise CheckpointError(f"{self.path} holds epoch {self.epoch} but a history of {len(history)} epochs; {_EDITED}")

    def restore_model(self, model, backend) -> None:
        """Copy the saved weights into ``model`` (checked: same model and shapes)."""
        if model.name != self.model_name:
            raise CheckpointError(
                f"{self.path} is a checkpoint of model '{self.model_name}', not '{model.name}'; "
                f"use {setting('model')} {self.model_name}"
            )
        differences = _shape_differences({p.name: p.shape for p in model.parameters()}, self.params)
        if differences:
            raise CheckpointError(f"{self.path} does not fit this {model.name}: {differences}")
        self._check_buffers(model)
        for parameter in model.parameters():
            parameter.data = backend.asarray(self.params[parameter.name], dtype=parameter.data.dtype)
            parameter.grad = None
        for name, array in model.named_buffers():
            array[...] = backend.asarray(self.buffers[name], dtype=array.dtype)
        try:
            model.load_layer_state(self.meta.get("layer_state", {}))
        except (ValueError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{self.path}: its layer state does not fit this {model.name} ({exc})") from exc

    def _check_buffers(self, model) -> None:
        """The model's buffers (BatchNorm running statistics) and stateful layers must all be in the file."""
        differences = _shape_differences({name: array.shape for name, array in model.named_buffers()}, self.buffers)
        if differences:
            raise CheckpointError(f"{self.path} lacks layers of this {model.name}: its running statistics do not match "
                                  f"({differences}); it was written by another version or edited")
        missing = sorted(set(model.layer_state()) - set(self.meta.get("layer_state", {})), key=int)
        if missing:
            raise CheckpointError(f"{self.path} lacks layers of this {model.name}: no saved state for layer(s) "
                                  f"{', '.join(missing)} ({', '.join(repr(model.layers[int(i)]) for i in missing)}); "
                                  "it was written by another version or edited")

    def restore_optimizer(self, optimizer) -> None:
        saved = self.meta.get("optimizer")
        if saved is None:
            raise CheckpointError(f"{self.path} holds no optimizer state; it cannot be resumed, only evaluated")
        state = {"optimizer": saved["name"], "hyper": saved["hyper"], "num_params": saved["num_params"], "state": self.optim}
        try:
            optimizer.load_state_dict(state)
        except (ValueError, TypeError, KeyError) as exc:  # TypeError, KeyError: malformed saved state
            raise CheckpointError(f"{self.path}: {exc}; resume with the same {setting('optimizer')}") from exc


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by save_checkpoint; anything else is a CheckpointError.

    Nothing is unpacked before it is known to fit: the header first (at most 1 GiB,
    ``HEADER_LIMIT``), then each entry's size in the zip directory and its .npy
    header against the shapes the header lists, which a registered model bounds. A small
    file that would inflate to gigabytes is refused in milliseconds.
    """
    path = Path(path)
    return _parse(path, _read_entries(path))


def read_header(path) -> dict:
    """Only the header (``meta``) of a checkpoint, checked as load_checkpoint checks it.

    Cheap, whatever the size of the weights: an .npz is a zip archive, and only its
    ``meta`` entry is read.
    """
    path = Path(path)
    return _checked_header(path, _read_entries(path, header_only=True))


def _read_entries(path: Path, header_only: bool = False) -> dict[str, np.ndarray]:
    """The arrays of the .npz archive at ``path`` (only ``meta`` if ``header_only``), each checked
    against the header before it is unpacked."""
    with _opened_regular_file(path) as stream:
        if stream.read(4) != b"PK\x03\x04":  # every .npz is a zip archive
            raise CheckpointError(f"{path} is not a readable xpnet checkpoint (not an .npz archive); it may be corrupt or truncated")
        stream.seek(0)
        try:
            with np.load(stream, allow_pickle=False) as archive:
                directory = {info.filename: info for info in archive.zip.infolist()}
                for filename, info in directory.items():  # first of all: refuse pickles, whatever else is wrong
                    if filename.endswith(".npy") and _npy_header(path, archive, info)[1].hasobject:
                        raise CheckpointError(f"{path} contains pickled objects; xpnet never unpickles files, so it refuses this one")
                contents = {"meta": _read_entry(path, archive, directory, "meta", HEADER_LIMIT)} if "meta.npy" in directory else {}
                if header_only or "meta" not in contents:
                    return contents
                meta = _checked_header(path, contents)
                try:
                    limits = entry_limits(meta)
                except ValueError as exc:
                    raise CheckpointError(f"{path}: {exc}; {_EDITED}") from None
                for filename in directory:
                    name = filename[:-len(".npy")] if filename.endswith(".npy") else filename
                    limit = limits(name)
                    if limit is not None and filename.endswith(".npy"):
                        contents[name] = _read_entry(path, archive, directory, name, limit)
                    elif not filename.endswith(".npy"):  # NpzFile would hand it out as raw bytes
                        raise CheckpointError(f"{path} has an entry {name!r} that is not a NumPy array; it is not an xpnet checkpoint")
                    elif name != "meta":
                        raise CheckpointError(f"{path} has an entry {name!r} that its header does not list; {_EDITED}")
                return contents
        except CheckpointError:
            raise
        except ValueError as exc:  # (pickles never get here: entries of an object dtype are refused first)
            raise CheckpointError(f"{path} is not a readable xpnet checkpoint ({exc}); it may be corrupt or truncated") from exc
        except OSError as exc:
            if exc.errno is not None:  # the system refused (permission, I/O error): the file may well be fine
                raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
            raise CheckpointError(f"{path} is not a readable xpnet checkpoint ({type(exc).__name__}: {exc}); it may be corrupt or truncated") from exc
        except Exception as exc:  # BadZipFile, EOFError, zlib.error, ...: a truncated or mangled archive
            raise CheckpointError(f"{path} is not a readable xpnet checkpoint ({type(exc).__name__}: {exc}); it may be corrupt or truncated") from exc


def _read_entry(path: Path, archive, directory: dict, name: str, limit: tuple[tuple[int, ...] | None, int]) -> np.ndarray:
    """Entry ``name`` of the archive, unpacked only if its .npy header and its size in the zip
    directory fit ``limit``: (the shape the checkpoint's header lists for it, or None: any;
    the most bytes its data may take)."""
    shape, most = limit
    info = directory[name + ".npy"]
    if info.file_size > most + NPY_HEADER_LIMIT:
        raise CheckpointError(f"{path}: entry {name!r} would unpack to {_size(info.file_size)}, more than the "
                              f"{_size(most)} allowed; {_EDITED}")
    stored_shape, dtype = _npy_header(path, archive, info)
    if shape is not None and tuple(stored_shape) != tuple(shape):
        raise CheckpointError(f"{path}: entry {name!r} holds {dtype} of shape {stored_shape}, where its header lists "
                              f"shape {tuple(shape)}; {_EDITED}")
    if math.prod(stored_shape) * dtype.itemsize > most:
        raise CheckpointError(f"{path}: entry {name!r} would unpack to {_size(math.prod(stored_shape) * dtype.itemsize)} "
                              f"({dtype} of shape {stored_shape}), more than the {_size(most)} allowed; {_EDITED}")
    return archive[name]


def _npy_header(path: Path, archive, info) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the .npy header of archive member ``info``: only its first bytes are unpacked."""
    with archive.zip.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version not in ((1, 0), (2, 0)):
            raise CheckpointError(f"{path}: entry {info.filename!r} is a .npy file of version {version}, which "
                                  f"numpy.savez does not write; {_EDITED}")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(member)
    return tuple(shape), dtype


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def entry_limits(meta: dict):
    """A function of an entry's name: (its shape, or None; the most bytes its data may take) for
    an entry the header ``meta`` allows, else None. The shapes are the header's own; their total
    must fit the model it names (``MAX_NUMBERS`` for a model xpnet does not know), so a header
    cannot ask for gigabytes. Optimizer state (``optim/<i>/<key>``) may be as large as parameter i."""
    shapes = {f"param/{name}": tuple(shape) for name, shape in meta["parameters"].items()}
    shapes.update({f"buffer/{name}": tuple(shape) for name, shape in meta.get("buffers", {}).items()})
    total = sum(math.prod(shape) for shape in shapes.values())
    most = model_size(meta["model"])
    if total > most:
        raise ValueError(f"its parameters and buffers hold {total} numbers, more than a model {meta['model']!r} has ({most})")
    limits = {name: (shape, math.prod(shape) * MAX_ITEMSIZE) for name, shape in shapes.items()}
    sizes = [math.prod(shape) for shape in meta["parameters"].values()] if meta.get("optimizer") is not None else []

    def limit(name: str):
        if name in limits:
            return limits[name]
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == "optim" and parts[1].isdigit() and int(parts[1]) < len(sizes):
            return None, max(sizes[int(parts[1])], 1) * MAX_ITEMSIZE  # a step count, or an array like parameter i
        return None

    return limit


@functools.lru_cache(maxsize=None)
def model_size(name: str) -> int:
    """How many numbers (parameters and buffers) the registered model ``name`` holds; MAX_NUMBERS for another name."""
    from models import MODELS, build_model  # here, not at the top: models need not be imported to save

    if name not in MODELS:
        return MAX_NUMBERS
    model = build_model(name)
    return sum(int(p.data.size) for p in model.parameters()) + sum(int(array.size) for _, array in model.named_buffers())


@contextmanager
def _opened_regular_file(path: Path):
    """``path`` opened for reading as a binary stream, if it is a regular file; a CheckpointError
    otherwise (regular_files.py: a FIFO cannot hang the program, /dev/zero is never read)."""
    try:
        stream = open_to_read(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist; pass the checkpoint.npz or best.npz of a run") from None
    except NotARegularFile as exc:
        if exc.kind == "a folder":
            inside = [name for name in ("checkpoint.npz", "best.npz") if (path / name).is_file()]
            hint = f"; did you mean {path / inside[0]}?" if inside else "; pass the checkpoint.npz or best.npz of a run"
            raise CheckpointError(f"{path} is a folder, not a checkpoint file{hint}") from None
        raise CheckpointError(f"{path} is {exc.kind}, not a checkpoint file; pass the checkpoint.npz or best.npz of a run") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    with stream:
        yield stream


def _checked_header(path: Path, contents: dict[str, np.ndarray]) -> dict:
    if "meta" not in contents:
        raise CheckpointError(f"{path} is an .npz file but not an xpnet checkpoint (no 'meta' entry)")
    # Every entry is an array: _read_entries refuses members not named *.npy, which NpzFile hands out as bytes.
    try:
        return _checked_meta(contents["meta"])
    except (ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise CheckpointError(f"{path} has an unreadable header ({exc}); it is not an xpnet checkpoint of this version") from exc


def _parse(path: Path, contents: dict[str, np.ndarray]) -> Checkpoint:
    meta = _checked_header(path, contents)
    parameter_shapes = meta["parameters"]
    params, optim, buffers = {}, {}, {}
    for name, array in contents.items():
        if name.startswith("param/"):
            params[name[len("param/"):]] = array
        elif name.startswith("buffer/"):
            buffers[name[len("buffer/"):]] = array
        elif name.startswith("optim/"):  # "optim/<i>/<key>", i in 0..n-1: entry_limits let no other through
            _, index, key = name.split("/", 2)
            optim.setdefault(int(index), {})[key] = array
    if set(params) != set(parameter_shapes) or any(tuple(params[n].shape) != tuple(s) for n, s in parameter_shapes.items()):
        raise CheckpointError(f"{path} is inconsistent: its parameters do not match its header; it may be corrupt")
    for name, array in params.items():
        if array.dtype.kind != "f":
            raise CheckpointError(f"{path}: parameter {name} has dtype {array.dtype}, expected a float array")
    buffer_shapes = meta.get("buffers", {})
    if set(buffers) != set(buffer_shapes) or any(tuple(buffers[n].shape) != tuple(s) for n, s in buffer_shapes.items()):
        raise CheckpointError(f"{path} is inconsistent: its buffers do not match its header; it may be corrupt")
    for name, array in buffers.items():
        if array.dtype.kind != "f":
            raise CheckpointError(f"{path}: buffer {name} has dtype {array.dtype}, expected a float array")
    return Checkpoint(path, meta, params, optim, buffers)


def _checked_meta(array: np.ndarray) -> dict:
    """The header as a dict, every field that is used later of the type it must have."""
    if array.shape != () or array.dtype.kind != "U":
        raise ValueError(f"'meta' must be a text scalar, got a {array.dtype} array of shape {array.shape}")
    meta = json.loads(str(array))
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"unsupported format {meta.get('format') if isinstance(meta, dict) else meta!r}")

    def check(condition: bool, what: str) -> None:
        if not condition:
            raise ValueError(what)

    def is_count(value) -> bool:
        return type(value) is int and value >= 0

    shapes = meta["parameters"]
    check(isinstance(shapes, dict) and all(isinstance(shape, list) and all(map(is_count, shape)) for shape in shapes.values()),
          "'parameters' must map names to shapes")
    check(isinstance(meta["model"], str), "'model' must be a name")
    check(is_count(meta["epoch"]), "'epoch' must be a whole number")
    check(isinstance(meta.get("config", {}), dict), "'config' must be an object")
    check(isinstance(meta.get("history", []), list) and all(isinstance(row, dict) for row in meta.get("history", [])),
          "'history' must be a list of objects")
    buffers = meta.get("buffers", {})
    check(isinstance(buffers, dict) and all(isinstance(shape, list) and all(map(is_count, shape)) for shape in buffers.values()),
          "'buffers' must map names to shapes")
    check(isinstance(meta.get("layer_state", {}), dict) and all(isinstance(v, dict) for v in meta.get("layer_state", {}).values()),
          "'layer_state' must map layer indices to objects")
    check(is_count(meta.get("step", 0)), "'step' must be a whole number")
    check(meta.get("schedule") is None or isinstance(meta.get("schedule"), dict), "'schedule' must be an object")
    optimizer = meta.get("optimizer")
    check(optimizer is None or (isinstance(optimizer, dict) and isinstance(optimizer.get("name"), str)
                                and isinstance(optimizer.get("hyper"), dict) and is_count(optimizer.get("num_params"))),
          "'optimizer' must hold name, hyper and num_params")
    return meta
