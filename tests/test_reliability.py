"""Reliability: every bad input gets a clear error, faults lose nothing, resume is exact.

Interrupts (SIGTERM, SIGINT) of a real ``python cli.py`` process, an output folder that
cannot be written, a full disk, a missing or broken CUDA, a diverging loss, bad flags,
running out of (GPU) memory, and fuzzed checkpoint and SVHN files: each ends in one
``error: ...`` line (or exit code 130 with a resume command) and loses no saved work.
"""
from __future__ import annotations

import builtins
import contextlib
import io
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import types
import zipfile
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import cli
from cli_helpers import SMALL, one_error_line, run
from backends import get_backend, registry
from layers import CrossEntropyLoss, Linear
from models import MLP, build_model
from training.checkpoint import load_checkpoint, save_checkpoint
from training.data import DataLoader, channel_stats, read_svhn_mat, write_svhn_mat
from training.errors import CheckpointError, DataError, TrainingDiverged, XpnetError
from training import run_folder
from training.optim import SGD, Adam
from training.trainer import Trainer, write_metrics

REPO = Path(__file__).resolve().parent.parent
TIMING = {"examples_per_sec", "seconds"}


pytestmark = pytest.mark.usefixtures("private_cache")


def without_timing(history):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


def assert_same_run(a, b):
    """Two checkpoints hold identical weights, optimizer state and (timing aside) history."""
    assert a.epoch == b.epoch
    assert a.params.keys() == b.params.keys()
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name], err_msg=name)
    assert a.optim.keys() == b.optim.keys()
    for index in a.optim:
        assert a.optim[index].keys() == b.optim[index].keys()
        for key in a.optim[index]:
            np.testing.assert_array_equal(a.optim[index][key], b.optim[index][key], err_msg=f"optim {index} {key}")
    assert without_timing(a.history) == without_timing(b.history)


# -- 1. SIGTERM / SIGINT mid-epoch, then an exact resume ---------------------------------------------
# 480 images in batches of 16: 30 steps an epoch, about a second on one busy core, so a
# signal sent half an epoch after epoch 1 was saved lands in the middle of epoch 2.
SIGNAL_RUN = ["--device", "cpu", "--model", "mlp", "--train-size", "480", "--test-size", "64",
              "--batch-size", "16", "--epochs", "3", "--quiet"]


def _default_sigint():  # a child of a background job may inherit SIGINT ignored
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli_process(argv, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "XPNET_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(REPO / "cli.py"), *argv], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_default_sigint)


def finish(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, out, err


@pytest.fixture(scope="module")
def signal_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("signal-cache")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, signal_cache):
    """checkpoint.npz of the 3-epoch run that nobody interrupts (also fills the data cache)."""
    out = tmp_path_factory.mktemp("uninterrupted")
    code, _, err = finish(cli_process(SIGNAL_RUN + ["--out", str(out)], signal_cache))
    assert code == 0, err
    return load_checkpoint(out / "checkpoint.npz")


def _complete_png(path: Path) -> bool:
    data = path.read_bytes() if path.exists() else b""
    return data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_epoch_keeps_the_checkpoint_and_resume_is_exact(tmp_path, signal_cache, uninterrupted, signum):
    out = tmp_path / "run"
    process = cli_process(SIGNAL_RUN + ["--out", str(out)], signal_cache)
    try:
        deadline = time.monotonic() + 120
        history = []
        while time.monotonic() < deadline and process.poll() is None:
            # metrics.json and then the plots, filters.png last, are the last files written after epoch 1.
            if (out / "metrics.json").exists() and _complete_png(out / "filters.png"):
                history = json.loads((out / "metrics.json").read_text())["history"]
                break
            time.sleep(0.02)
        assert [row["epoch"] for row in history] == [1], "epoch 1 did not end in time"
        # early in epoch 2: on a loaded machine its length varies too much to aim for the middle
        time.sleep(history[0]["seconds"] / 10)
        process.send_signal(signum)
        code, _, err = finish(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert code == 130, err
    assert "Traceback" not in err
    checkpoint = out / "checkpoint.npz"
    assert f"interrupted: {checkpoint} holds epoch 1; continue with: python cli.py --resume {checkpoint} --epochs 3" in err
    assert load_checkpoint(checkpoint).epoch == 1  # epoch 1 done, epoch 2 not
    assert [row["epoch"] for row in json.loads((out / "metrics.json").read_text())["history"]] == [1]
    assert _complete_png(out / "confusion.png") and _complete_png(out / "curves.png")
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"

    code, _, err = finish(cli_process(["--resume", str(checkpoint), "--epochs", "3", "--device", "cpu", "--quiet"], signal_cache))
    assert code == 0, err
    assert_same_run(load_checkpoint(checkpoint), uninterrupted)


def test_interrupt_while_saving_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    """Ctrl-C inside the checkpoint write of epoch 2: epoch 1's file stays, and the message says so."""
    out = tmp_path / "run"
    assert run(SMALL + ["--epochs", "1", "--out", str(out)], capsys)[0] == 0
    before = (out / "checkpoint.npz").read_bytes()

    def interrupted_write(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted_write)
    code, _, err = run(["--resume", str(out / "checkpoint.npz"), "--epochs", "3", "--device", "cpu", "--quiet"], capsys)
    assert code == 130
    assert f"{out / 'checkpoint.npz'} holds epoch 1; continue with" in err
    assert (out / "checkpoint.npz").read_bytes() == before
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


# -- 2. output folder unwritable, disk full ----------------------------------------------------------
def test_output_folder_under_a_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    code, _, err = run(SMALL + ["--epochs", "1", "--out", str(tmp_path / "file" / "run")], capsys)
    assert code == 2
    line = one_error_line(err)
    assert line.startswith("error: cannot create the output folder") and "choose another with --out" in line


def test_read_only_output_folder_fails_before_training(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    out.chmod(0o500)
    if os.access(out, os.W_OK):  # root ignores the mode: make the folder refuse files another way
        real_open = os.open

        def refuse_in_out(path, *args, **kwargs):  # the first file a run makes is its folder's lock
            if Path(path).parent == out:
                raise PermissionError(13, "Permission denied")
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(run_folder.os, "open", refuse_in_out)
    trained = []
    monkeypatch.setattr(Trainer, "fit", lambda self, *a, **k: trained.append(1))
    try:
        code, _, err = run(SMALL + ["--epochs", "1", "--out", str(out)], capsys)
    finally:
        out.chmod(0o700)
    assert code == 2 and not trained, "an unwritable --out must be found before training starts"
    line = one_error_line(err)
    assert f"the output folder {out} is not writable: Permission denied; choose another with --out" in line


@pytest.mark.parametrize("failing", ["savez", "replace"])
def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch, failing):
    out = tmp_path / "run"
    assert run(SMALL + ["--epochs", "1", "--out", str(out)], capsys)[0] == 0
    before = (out / "checkpoint.npz").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np if failing == "savez" else os, failing, disk_full)
    code, _, err = run(["--resume", str(out / "checkpoint.npz"), "--epochs", "2", "--device", "cpu", "--quiet"], capsys)
    assert code == 2
    line = one_error_line(err)
    assert line.startswith(f"error: cannot write checkpoint {out / 'checkpoint.npz'}: No space left on device")
    assert (out / "checkpoint.npz").read_bytes() == before
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary file left behind"


def test_write_metrics_failure_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "metrics.json"
    with pytest.raises(XpnetError, match=rf"cannot write {path}: .*choose a writable folder with --out"):
        write_metrics(path, {}, [{"epoch": 1, "test_acc": 0.5}])


@pytest.mark.parametrize("failing", ["metrics.json", "curves.png"])
def test_disk_full_after_the_checkpoint_is_a_clear_error(tmp_path, capsys, monkeypatch, failing):
    """metrics.json or a plot cannot be written: one error line, and the epoch's checkpoint is kept."""
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, **kwargs):  # every file is written through a temporary one next to it
        if kwargs.get("prefix") == f".{failing}." and (tmp_path / "run" / "checkpoint.npz").exists():
            raise OSError(28, "No space left on device")
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    out = tmp_path / "run"
    code, _, err = run(SMALL + ["--epochs", "2", "--out", str(out)], capsys)
    assert code == 2
    line = one_error_line(err)
    assert line.startswith(f"error: cannot write {out / failing}: No space left on device")
    assert "--out" in line and f"{out / 'checkpoint.npz'} holds epoch 1; resume from it" in line
    assert load_checkpoint(out / "checkpoint.npz").epoch == 1


# -- 3. --device cuda without CuPy, without a GPU, with a broken driver -----------------------------
class CUDARuntimeError(RuntimeError):
    """Stands in for cupy_backends.cuda.api.runtime.CUDARuntimeError."""


def _fake_cupy(device_count):
    def get_device_count():
        if isinstance(device_count, Exception):
            raise device_count
        return device_count

    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_device_count)))


CUPY_BANNER = """
================================================================
Failed to import CuPy.

If you installed CuPy via wheels (cupy-cudaXXX or cupy-rocm-X-X), make sure that the package matches with the version of CUDA or ROCm installed.

Original error:
  ImportError: libcudart.so.12: cannot open shared object file: No such file or directory
================================================================
"""

CUDA_FAULTS = {
    "no-cupy": (ModuleNotFoundError("No module named 'cupy'", name="cupy"),
                ["needs CuPy, which is not installed", 'pip install ".[cuda12]"', "--device cpu"]),
    "broken-cupy": (ImportError(CUPY_BANNER),
                    ["CuPy is installed but failed to import (ImportError: libcudart.so.12: cannot open shared object file",
                     "reinstall the CuPy wheel that matches your CUDA driver"]),
    "no-gpu": (_fake_cupy(0), ["no NVIDIA GPU was found", "--device cpu"]),
    "broken-driver": (_fake_cupy(CUDARuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")),
                      ["the CUDA driver could not be used (CUDARuntimeError: cudaErrorInsufficientDriver", "nvidia-smi"]),
}


@pytest.fixture
def fake_cuda(monkeypatch):
    """Make ``import cupy`` raise or return a stand-in; the cached cuda backend is forgotten."""
    real_import = builtins.__import__

    def install(fault):
        def importer(name, globals=None, locals=None, fromlist=(), level=0):
            if name == "cupy" or name.startswith("cupy."):
                if isinstance(fault, BaseException):
                    raise fault
                return fault
            return real_import(name, globals, locals, fromlist, level)

        monkeypatch.setattr(builtins, "__import__", importer)
        registry._cuda.cache_clear()

    yield install
    registry._cuda.cache_clear()


@pytest.mark.parametrize("fault", list(CUDA_FAULTS))
def test_cuda_unavailable_is_one_line_naming_the_cause(fault, fake_cuda, capsys):
    cause, phrases = CUDA_FAULTS[fault]
    fake_cuda(cause)
    code, _, err = run(SMALL[2:] + ["--device", "cuda", "--epochs", "1"], capsys)
    assert code == 2
    line = one_error_line(err)
    assert line.startswith("error: device 'cuda'")
    for phrase in phrases:
        assert phrase in line


@pytest.mark.parametrize("fault", ["no-cupy", "broken-driver"])
def test_auto_falls_back_to_cpu_with_a_notice(fault, fake_cuda, tmp_path, capsys):
    cause, phrases = CUDA_FAULTS[fault]
    fake_cuda(cause)
    out = tmp_path / "run"
    code, stdout, err = run([a for a in SMALL if a != "--quiet"][2:] + ["--device", "auto", "--epochs", "1", "--out", str(out)], capsys)
    assert code == 0, err
    notice = [line for line in stdout.splitlines() if line.startswith("note: --device auto is using the cpu")]
    assert len(notice) == 1 and phrases[0] in notice[0]
    assert load_checkpoint(out / "checkpoint.npz").config["device"] == "cpu"


# -- 4. the loss becomes NaN or infinite ---------------------------------------------------------------
def test_divergence_in_the_first_epoch_claims_no_checkpoint(tmp_path, capsys):
    """--overwrite removed the earlier run's checkpoint; the diverged run must not claim one of its own."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.npz").write_bytes(b"a checkpoint of some earlier run in the same folder")
    argv = SMALL + ["--optimizer", "sgd", "--lr", "1e6", "--epochs", "2", "--out", str(out)]
    code, _, err = run(argv, capsys)
    assert code == 2 and "already holds a run (checkpoint.npz)" in one_error_line(err)
    assert (out / "checkpoint.npz").read_bytes() == b"a checkpoint of some earlier run in the same folder"
    code, _, err = run(argv + ["--overwrite"], capsys)
    assert code == 2
    line = one_error_line(err)  # also: no NumPy overflow warnings around it
    assert line.startswith("error: the training loss became") and "try a smaller --lr; no checkpoint was saved" in line
    assert "intact" not in line
    assert sorted(p.name for p in out.iterdir()) == []


def test_resume_with_a_smaller_lr_uses_it(tmp_path, capsys):
    """After a divergence the advice is a smaller --lr: a resumed run must use it, not the saved one."""
    out = tmp_path / "run"
    assert run(SMALL + ["--optimizer", "sgd", "--lr", "0.05", "--epochs", "1", "--out", str(out)], capsys)[0] == 0
    resume = ["--resume", str(out / "checkpoint.npz"), "--device", "cpu", "--quiet"]
    code, _, err = run(resume + ["--epochs", "2", "--lr", "0.001", "--weight-decay", "0.0001"], capsys)
    assert code == 0, err
    checkpoint = load_checkpoint(out / "checkpoint.npz")
    assert checkpoint.meta["optimizer"]["hyper"]["lr"] == checkpoint.config["lr"] == 0.001
    assert checkpoint.meta["optimizer"]["hyper"]["weight_decay"] == 0.0001
    assert checkpoint.meta["optimizer"]["hyper"]["momentum"] == 0.9
    code, _, err = run(resume + ["--epochs", "3", "--momentum", "0.5"], capsys)
    assert code == 2 and "trained with --momentum 0.9; momentum cannot change when resuming" in one_error_line(err)


class PoisonedSGD(SGD):
    """SGD whose step number ``at`` leaves a NaN in the weights (an overshoot on the last step)."""

    def __init__(self, params, at, **kwargs):
        super().__init__(params, **kwargs)
        self.at, self.steps = at, 0

    def step(self):
        super().step()
        self.steps += 1
        if self.steps == self.at:
            self.params[0].data[0, 0] = np.nan


def test_weights_broken_by_the_last_step_are_never_saved(tmp_path):
    """The training loss of epoch 2 is finite but its weights are NaN: epoch 1's checkpoint must stay."""
    cpu = get_backend("cpu")
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (64, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 64)
    mean, std = channel_stats(images)
    loader = DataLoader(images, labels, 16, cpu, mean, std)  # 4 steps an epoch
    model = build_model("mlp", seed=0)
    trainer = Trainer(model, PoisonedSGD(model.parameters(), at=8, lr=0.01), cpu, out_dir=tmp_path,
                      progress=False, log=lambda message: None)
    with pytest.raises(TrainingDiverged, match=r"test loss became nan after epoch 2.*\(epoch 1\), is intact"):
        with np.errstate(invalid="ignore"):
            trainer.fit(loader, loader, epochs=3)
    assert load_checkpoint(tmp_path / "checkpoint.npz").epoch == 1
    assert all(np.isfinite(a).all() for a in load_checkpoint(tmp_path / "checkpoint.npz").params.values())
    assert [row["epoch"] for row in json.loads((tmp_path / "metrics.json").read_text())["history"]] == [1]


# -- 5. bad values on the command line ------------------------------------------------------------------
# The usage-error cases (negative, NaN, infinite or non-numeric values, unknown choices,
# conflicting modes) are in tests/test_cli.py: test_bad_arguments_are_usage_errors.


def _parse_quietly(argv):
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            return cli.parse_args(argv)
        except SystemExit as exc:
            assert exc.code == 2
            return None


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=12) | st.from_regex(r"-?[0-9]{0,3}(\.[0-9]{0,3})?(e-?[0-9]{1,3})?", fullmatch=True))
def test_any_number_flag_text_is_accepted_or_a_usage_error(text):
    """Whatever follows --lr/--epochs/--seed: a valid value, or exit code 2; never a traceback."""
    args = _parse_quietly([f"--lr={text}", "--momentum=0"])
    if args is not None:
        assert 0 < args.lr < float("inf") and args.lr == float(text)
    args = _parse_quietly([f"--epochs={text}", f"--batch-size={text}"])
    if args is not None:  # a whole number, also one written with an exponent ("2e4")
        assert args.epochs == args.batch_size == Decimal(text) >= 1
    args = _parse_quietly([f"--seed={text}"])
    if args is not None:
        assert args.seed == Decimal(text) >= 0


@pytest.mark.parametrize("missing", ["image", "checkpoint", "resume"])
def test_missing_files_are_one_line_errors(tmp_path, capsys, missing):
    out = tmp_path / "run"
    if missing == "image":
        assert run(SMALL + ["--epochs", "1", "--out", str(out)], capsys)[0] == 0
        argv, phrase = ["--predict", str(tmp_path / "nope.png"), "--checkpoint", str(out / "best.npz")], "does not exist"
    elif missing == "checkpoint":
        (tmp_path / "a.png").write_bytes(b"")
        argv, phrase = ["--predict", str(tmp_path / "a.png"), "--checkpoint", str(tmp_path / "nope.npz")], "does not exist"
    else:
        argv, phrase = ["--resume", str(tmp_path / "nope.npz"), "--epochs", "2"], "does not exist"
    code, _, err = run(argv + ["--device", "cpu"], capsys)
    assert code == 2 and phrase in one_error_line(err)


# -- 6. layers: a transposed (non-contiguous) input to Linear ----------------------------------------
def test_linear_with_a_transposed_input(rng):
    layer = Linear(5, 3, rng=rng).to(get_backend("cpu"), "float64")
    columns = rng.standard_normal((5, 7))  # (in_features, N), so columns.T is an F-ordered view
    x = columns.T
    assert not x.flags.c_contiguous
    expected = np.ascontiguousarray(x) @ layer.weight.data.T + layer.bias.data
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal((7, 3)).T.copy().T  # a transposed gradient too
    np.testing.assert_allclose(layer.backward(dy), dy @ layer.weight.data, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.weight.grad, dy.T @ np.ascontiguousarray(x), rtol=1e-12, atol=1e-12)


# -- 7. out of (GPU) memory -----------------------------------------------------------------------------
class OutOfMemoryError(Exception):
    """Stands in for cupy.cuda.memory.OutOfMemoryError."""


@pytest.mark.parametrize("error, phrase", [
    (OutOfMemoryError("Out of memory allocating 1,073,741,824 bytes (allocated so far: 77,309,411,328 bytes)."),
     "error: the GPU ran out of memory (Out of memory allocating"),
    (MemoryError(), "error: out of memory"),
])
def test_out_of_memory_suggests_a_smaller_batch(tmp_path, capsys, monkeypatch, error, phrase):
    def fit(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(Trainer, "fit", fit)
    code, _, err = run(SMALL + ["--epochs", "1", "--out", str(tmp_path / "run")], capsys)
    assert code == 2
    line = one_error_line(err)
    assert line.startswith(phrase) and "try a smaller --batch-size" in line


# -- 8. fuzzed checkpoint and SVHN files ---------------------------------------------------------------
def tiny_model(seed=0):
    return MLP(hidden=4, num_classes=3, input_shape=(1, 2, 2), seed=seed).to(get_backend("cpu"), "float32")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> bytes:
    cpu = get_backend("cpu")
    model = tiny_model()
    optimizer = Adam(model.parameters())
    loss = CrossEntropyLoss()
    loss.forward(model.forward(np.ones((2, 1, 2, 2), dtype=np.float32)), np.array([0, 2], dtype=np.int64))
    model.backward(loss.backward(), input_grad=False)
    optimizer.step()
    path = tmp_path_factory.mktemp("tiny") / "checkpoint.npz"
    save_checkpoint(path, model, optimizer, epoch=1, backend=cpu, config={"model": "mlp"}, history=[{"epoch": 1, "test_acc": 0.5}])
    return path.read_bytes()


def _only_checkpoint_errors(data: bytes) -> None:
    """Loading ``data`` (and restoring it into a fresh model) raises CheckpointError or nothing."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "checkpoint.npz"
        path.write_bytes(data)
        try:
            checkpoint = load_checkpoint(path)
            model = tiny_model(seed=1)
            checkpoint.restore_model(model, get_backend("cpu"))
            checkpoint.restore_optimizer(Adam(model.parameters()))
            checkpoint.epoch, checkpoint.config, checkpoint.history  # noqa: B018
        except CheckpointError:
            pass


def mutate(data: bytes, edits) -> bytes:
    """Apply (kind, position, bytes) edits; a negative position counts from the end."""
    data = bytearray(data)
    for kind, where, payload in edits:
        where = (where if where >= 0 else len(data) + where) % (len(data) + 1)
        if kind == "flip":
            if data:
                data[where % len(data)] ^= payload[0] if payload and payload[0] else 0xFF
        elif kind == "truncate":
            del data[where:]
        elif kind == "insert":
            data[where:where] = payload
        else:  # delete
            del data[where:where + len(payload) + 1]
    return bytes(data)


EDITS = st.lists(st.tuples(st.sampled_from(["flip", "truncate", "insert", "delete"]),
                           # near the start or the end (headers, zip directory) or anywhere
                           st.integers(min_value=-300, max_value=300) | st.integers(min_value=0, max_value=1 << 20),
                           st.binary(min_size=1, max_size=16)),
                 min_size=1, max_size=4)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=600) | st.binary(max_size=600).map(lambda b: b"PK\x03\x04" + b))
def test_checkpoint_reader_on_random_bytes(data):
    _only_checkpoint_errors(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=EDITS)
def test_checkpoint_reader_on_mutated_checkpoints(tiny_checkpoint, edits):
    _only_checkpoint_errors(mutate(tiny_checkpoint, edits))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
META_KEYS = ["format", "model", "parameters", "epoch", "config", "history", "optimizer", "extra"]


def _npy(array) -> bytes:
    stream = io.BytesIO()
    np.save(stream, array, allow_pickle=False)
    return stream.getvalue()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    changes=st.dictionaries(st.sampled_from(META_KEYS), JSON, max_size=3),
    dropped=st.lists(st.sampled_from(META_KEYS), max_size=2),
    odd_member=st.sampled_from([None, "raw", "meta-array", "int-param", "bad-shape", "odd-optim"]),
)
def test_checkpoint_reader_on_well_formed_archives_with_odd_contents(tiny_checkpoint, changes, dropped, odd_member):
    """A valid .npz whose header or entries are wrong in type or shape: still only CheckpointError."""
    with zipfile.ZipFile(io.BytesIO(tiny_checkpoint)) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    meta = json.loads(str(np.load(io.BytesIO(members["meta.npy"]))))
    meta.update(changes)
    for key in dropped:
        meta.pop(key, None)
    members["meta.npy"] = _npy(np.array(json.dumps(meta)))
    if odd_member == "raw":
        members["param/3.weight"] = b"\x00" * 20  # no .npy suffix: NpzFile returns bytes
        if isinstance(meta.get("parameters"), dict):
            meta["parameters"]["3.weight"] = [3, 4]
        members["meta.npy"] = _npy(np.array(json.dumps(meta)))
    elif odd_member == "meta-array":
        members["meta.npy"] = _npy(np.array([json.dumps(meta)] * 2))
    elif odd_member == "int-param":
        members["param/1.weight.npy"] = _npy(np.zeros((4, 4), dtype=np.int32))
    elif odd_member == "bad-shape":
        members["param/1.weight.npy"] = _npy(np.zeros((5, 4), dtype=np.float32))
    elif odd_member == "odd-optim":
        members["optim/0/step.npy"] = _npy(np.zeros(3))
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    _only_checkpoint_errors(stream.getvalue())


@pytest.fixture(scope="module")
def tiny_mat(tmp_path_factory) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("mat")
    files = {}
    for compress in (False, True):
        path = folder / f"train_32x32_{compress}.mat"
        write_svhn_mat(path, rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8), np.array([0, 7]), compress=compress)
        files["compressed" if compress else "plain"] = path.read_bytes()
    return files


def svhn_reader_outcome(data: bytes) -> str | None:
    """None when read_svhn_mat reads ``data`` correctly or raises DataError, else what went wrong."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train_32x32.mat"
        path.write_bytes(data)
        try:
            images, labels = read_svhn_mat(path)
        except DataError:
            return None
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
    if not (images.dtype == np.uint8 and images.shape[1:] == (3, 32, 32) and images.flags.c_contiguous
            and labels.dtype == np.int64 and labels.shape == (len(images),) and ((0 <= labels) & (labels <= 9)).all()):
        return f"wrong result: images {images.dtype} {images.shape}, labels {labels.dtype} {labels.shape}"
    return None


class CrashSafe:
    """Calls a function in a forked worker process, so that a crash of the interpreter (scipy's
    .mat reader can segfault on corrupt files) fails the test instead of killing pytest."""

    def __init__(self):
        import multiprocessing

        self.context = multiprocessing.get_context("fork")
        self.pool = None

    def __call__(self, function, *args):
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        if self.pool is None:
            self.pool = ProcessPoolExecutor(1, mp_context=self.context)
        try:
            return self.pool.submit(function, *args).result(timeout=60)
        except BrokenProcessPool:
            self.pool = None
            return "the reader crashed the Python interpreter (segmentation fault or bus error)"

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


@pytest.fixture(scope="module")
def crash_safe():
    runner = CrashSafe()
    yield runner
    runner.close()


MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: posix".ljust(116, b" ") + b"\x00" * 8 + struct.pack("<H", 0x0100) + b"IM"


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=600) | st.binary(max_size=600).map(lambda b: MAT_HEADER + b))
def test_svhn_reader_on_random_bytes(crash_safe, data):
    assert crash_safe(svhn_reader_outcome, data) is None


def with_element_type(data: bytes, code: int) -> bytes:
    """An uncompressed SVHN .mat file whose X data element claims type ``code``."""
    at = data.index(struct.pack("<II", 2, 2 * 3 * 32 * 32))  # the miUINT8 tag of X's 6144 bytes
    return data[:at] + struct.pack("<I", code) + data[at + 4:]


@pytest.mark.parametrize("code", [0, 8, 11, 19])  # unused codes: NULL slots of scipy's type table
def test_svhn_reader_refuses_an_invalid_element_type(tiny_mat, crash_safe, code):
    """One flipped byte in a real file: DataError, not a crash of the interpreter.

    scipy.io.loadmat segfaults on a data element type code out of range (scipy gh-25349), so
    read_svhn_mat vets each variable's header before calling it.
    """
    assert crash_safe(svhn_reader_outcome, with_element_type(tiny_mat["plain"], code)) is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["plain", "compressed"]), edits=EDITS)
# A version of 0x0101 (still v5 to scipy) and an X data element of type 258: a crash, once.
@example(which="plain", edits=[("flip", 124, b"\x01"), ("flip", 185, b"\x01")])
def test_svhn_reader_on_mutated_files(tiny_mat, crash_safe, which, edits):
    assert crash_safe(svhn_reader_outcome, mutate(tiny_mat[which], edits)) is None
