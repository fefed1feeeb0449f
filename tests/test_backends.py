"""Backends: names, host/device round trips, and the batch-splitting hook."""
from __future__ import annotations

import builtins
import os
import re
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
from helpers import SMALL, one_error_line, run

from backends import BackendUnavailableError, available_backends, get_backend, registry, workers
from backends.base import cpu_threads
from training.saving.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parent.parent


def test_names_and_round_trip(backend):
    host = np.arange(12, dtype=np.float64).reshape(3, 4)
    device = backend.asarray(host, dtype="float32")
    assert backend.is_array(device) and device.dtype == backend.xp.float32
    back = backend.to_numpy(device)
    assert isinstance(back, np.ndarray) and back.dtype == np.float32
    np.testing.assert_array_equal(back, host)
    backend.synchronize()


def test_available_and_unknown_backends():
    assert {"cpu", "strict"} <= set(available_backends())
    expected = "cuda" if "cuda" in available_backends() else "cpu"  # auto: cuda exactly when it works
    assert get_backend("auto") is get_backend(expected)
    with pytest.raises(ValueError, match="unknown backend 'tpu'; expected one of cpu, cuda, auto, strict"):
        get_backend("tpu")


@pytest.mark.parametrize("length", [1, 15, 16, 33, 250, 1001])
def test_map_slices_covers_the_range_in_order(backend, length):
    seen = backend.map_slices(lambda part: list(range(length))[part], length)
    assert [i for chunk in seen for i in chunk] == list(range(length))


def test_map_slices_runs_parts_in_threads_on_cpu(monkeypatch):
    cpu = get_backend("cpu")
    monkeypatch.setattr(cpu, "threads", 2)
    names = cpu.map_slices(lambda part: threading.current_thread().name, 64)
    assert len(names) == 2 and all(name.startswith("xpnet") for name in names)
    assert len(cpu.map_slices(lambda part: part, 20)) == 1  # too few rows to be worth splitting
    assert len(get_backend("strict").map_slices(lambda part: part, 1000)) == 1


CTRL_C_IN_THE_WORKERS = """
import os, signal, sys, threading, time
sys.path.insert(0, sys.argv[1])
from backends import get_backend
cpu = get_backend("cpu")
cpu.threads = 2
started, finished = [], []
def part(rows, signal_now=False):
    started.append(rows)
    if signal_now and rows.start == 0:
        os.kill(os.getpid(), signal.SIGINT)  # the main thread is waiting for the parts
    time.sleep(0.2)
    finished.append(rows)
def interrupted(**kwargs):
    started.clear(), finished.clear()
    try:
        cpu.map_slices(lambda rows: part(rows, **kwargs), 64)
    except KeyboardInterrupt:
        print(f"{len(started)} parts started, {len(finished)} finished")
start = threading.Thread.start
def start_then_signal(thread):  # a Ctrl-C the moment a worker thread has started
    start(thread)
    if thread.name.startswith("xpnet"):
        os.kill(os.getpid(), signal.SIGINT)
threading.Thread.start = start_then_signal
interrupted()
threading.Thread.start = start
interrupted(signal_now=True)
print(cpu.map_slices(lambda rows: rows, 64))  # the pool still works
"""


def test_a_ctrl_c_neither_hangs_the_exit_nor_leaves_a_part_running():
    """A Ctrl-C the moment a worker thread has started, then one while the parts run. Python's
    ThreadPoolExecutor registered a new worker (so that the exit could stop it) only after starting
    it: the first Ctrl-C left a worker that the exit waited for forever (in about 1 of 400 of
    test_faults' random moments). map_slices raises only once the parts it handed out are done."""
    try:
        result = subprocess.run([sys.executable, "-c", CTRL_C_IN_THE_WORKERS, str(REPO)], capture_output=True,
                                text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit: it waits for a worker thread that nothing will stop")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    first, second, after = result.stdout.splitlines()
    counts = [tuple(map(int, re.fullmatch(r"(\d) parts started, (\d) finished", line).groups())) for line in (first, second)]
    assert all(started == finished for started, finished in counts), "a part ran on after map_slices raised"
    assert counts[1][0] >= 1  # the part that signalled (the other may not have started: then it never does)
    assert after == "[slice(0, 32, None), slice(32, 64, None)]"


FORKED_AFTER_A_MAP = """
import os, sys, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12+ warns of fork() in a process with threads
sys.path.insert(0, sys.argv[1])
from backends import get_backend
cpu = get_backend("cpu")
cpu.threads = 2
assert len(cpu.map_slices(lambda rows: rows, 64)) == 2  # the parent's worker threads are running
child = os.fork()
if child == 0:  # the child has no threads but its own: without new ones its map would wait forever
    os._exit(0 if len(cpu.map_slices(lambda rows: rows, 64)) == 2 else 1)
print(os.waitpid(child, 0)[1])
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this system")
def test_a_forked_child_gets_worker_threads_of_its_own():
    try:
        result = subprocess.run([sys.executable, "-c", FORKED_AFTER_A_MAP, str(REPO)], capture_output=True, text=True,
                                timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the forked child waited for its parent's worker threads, which it does not have")
    assert (result.returncode, result.stdout, result.stderr) == (0, "0\n", "")


def interrupted_waits(monkeypatch, times: int, once_running: list):
    """Make WorkerThreads.map's waits raise KeyboardInterrupt ``times`` times, as Ctrl-C would, each
    once a part is running (``once_running`` non-empty): a real signal may reach the main thread
    only after the parts are done, so it cannot pin this down."""
    left = [times]

    class InterruptedEvent(threading.Event):
        def wait(self, timeout=None):
            if left[0]:
                while not once_running:
                    time.sleep(0.001)
                left[0] -= 1
                raise KeyboardInterrupt
            return super().wait(timeout)

    monkeypatch.setattr(workers, "threading", types.SimpleNamespace(Event=InterruptedEvent, Lock=threading.Lock,
                                                                     Thread=threading.Thread))


@pytest.mark.parametrize("interrupts", [1, 2])
def test_an_interrupted_map_starts_no_further_part_and_waits_for_the_running_one(monkeypatch, interrupts):
    """One worker, three parts, Ctrl-C while the first runs (and again while map waits for it):
    map raises only once that part is done, and the other two never start."""
    pool = workers.WorkerThreads(1)
    started, finished = [], []

    def part(index):
        started.append(index)
        time.sleep(0.2)
        finished.append(index)

    interrupted_waits(monkeypatch, interrupts, started)
    with pytest.raises(KeyboardInterrupt):
        pool.map(part, [0, 1, 2])
    assert started == finished == [0], "map raised while a part still ran"
    time.sleep(0.5)
    assert started == [0], "a part started after the interrupt"
    monkeypatch.undo()
    assert pool.map(lambda index: index * 10, [0, 1, 2]) == [0, 10, 20], "the pool still works"


def test_a_failing_part_raises_its_own_error_once_all_parts_are_done():
    pool = workers.WorkerThreads(2)
    finished = []

    def part(index):
        if index == 1:
            raise ValueError("part 1 failed")
        time.sleep(0.2)
        finished.append(index)

    with pytest.raises(ValueError, match="part 1 failed"):
        pool.map(part, [0, 1, 2])
    assert sorted(finished) == [0, 2]
    assert pool.map(str, []) == []


def test_thread_count_from_the_environment(monkeypatch):
    monkeypatch.setenv("XPNET_NUM_THREADS", "3")
    assert cpu_threads() == 3
    monkeypatch.setenv("XPNET_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="XPNET_NUM_THREADS must be a whole number, got 'many'"):
        cpu_threads()


def test_map_slices_splits_only_work_worth_a_thread(monkeypatch):
    cpu = get_backend("cpu")
    monkeypatch.setattr(cpu, "threads", 2)
    parts = lambda **kwargs: cpu.map_slices(lambda part: part, 100, **kwargs)
    assert parts() == [slice(0, 50), slice(50, 100)]
    assert parts(work=1e6) == [slice(0, 100)]  # far below MIN_WORK_PER_THREAD
    assert parts(work=1e12) == [slice(0, 50), slice(50, 100)]
    assert cpu.map_slices(lambda part: part, 20) == [slice(0, 20)]  # fewer than 2 x 16 rows


class CUDARuntimeError(RuntimeError):
    """Stands in for cupy_backends.cuda.api.runtime.CUDARuntimeError."""


def _fake_cupy(device_count):
    def get_device_count():
        if isinstance(device_count, Exception):
            raise device_count
        return device_count

    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_device_count)))


class CompileException(Exception):
    """Stands in for cupy.cuda.compiler.CompileException."""


class _NoCompiler(np.ndarray):
    """An array of a fake CuPy whose run-time compiler (NVRTC) is missing: arithmetic fails."""

    def __mul__(self, other):
        raise CompileException("nvrtc: error: failed to open libnvrtc-builtins.so.12.8")


def _fake_cupy_on_a_gpu(version="14.2.0", failing=None):
    """CuPy on one GPU, NumPy underneath; ``failing`` ("nvrtc", "cublas", "fuse") breaks one
    kind of kernel as a machine with only the NVIDIA driver would."""
    def matmul(a, b):
        if failing == "cublas":
            raise RuntimeError("CUBLAS_STATUS_NOT_INITIALIZED")
        return np.matmul(a, b)

    def fuse(kernel_name=None):
        if failing == "fuse":
            raise CompileException("nvrtc: error: cannot open source file cuda_fp16.h")
        return lambda function: function

    def asarray(host):
        array = np.array(host)
        return array.view(_NoCompiler) if failing == "nvrtc" else array

    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1)
    return types.SimpleNamespace(__version__=version, cuda=types.SimpleNamespace(runtime=runtime), asarray=asarray,
                                 asnumpy=np.asarray, matmul=matmul, fuse=fuse)


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
    "cupy-13": (_fake_cupy_on_a_gpu("13.6.0"), ["CuPy 13.6.0 is too old; xpnet needs CuPy 14 or newer", '".[cuda12]"']),
    "no-nvrtc": (_fake_cupy_on_a_gpu(failing="nvrtc"),
                 ["could not compile and run an element-wise kernel (compiled by NVRTC) (CompileException: nvrtc",
                  '".[cuda12]"', "--device cpu"]),
    "no-cublas": (_fake_cupy_on_a_gpu(failing="cublas"),
                  ["could not compile and run a matrix product (cuBLAS) (RuntimeError: CUBLAS_STATUS_NOT_INITIALIZED"]),
    "no-fuse": (_fake_cupy_on_a_gpu(failing="fuse"), ["could not compile and run a fused kernel (cupy.fuse)"]),
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


@pytest.mark.usefixtures("private_cache")
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


@pytest.mark.usefixtures("private_cache")
@pytest.mark.parametrize("fault", ["no-cupy", "broken-driver", "cupy-13", "no-nvrtc"])
def test_auto_falls_back_to_cpu_with_a_notice(fault, fake_cuda, tmp_path, capsys):
    cause, phrases = CUDA_FAULTS[fault]
    fake_cuda(cause)
    out = tmp_path / "run"
    code, stdout, err = run([a for a in SMALL if a != "--quiet"][2:] + ["--device", "auto", "--epochs", "1", "--out", str(out)], capsys)
    assert code == 0, err
    notice = [line for line in stdout.splitlines() if line.startswith("note: --device auto is using the cpu")]
    assert len(notice) == 1 and phrases[0] in notice[0]
    assert load_checkpoint(out / "checkpoint.npz").config["device"] == "cpu"
    assert "device cpu" not in notice[0], "auto already runs on the cpu: the note does not advise it"


@pytest.mark.parametrize("fault", ["no-cupy", "no-gpu", "broken-driver", "no-nvrtc"])
def test_cuda_unavailable_advises_the_cpu_in_the_user_s_own_terms(fault, fake_cuda, tmp_path):
    """The same cause, worded for whoever asked: Python's get_backend, RunConfig's device, cli.py's --device."""
    from training.errors import XpnetError
    from training.run import RunConfig, train

    fake_cuda(CUDA_FAULTS[fault][0])
    with pytest.raises(BackendUnavailableError) as direct:
        get_backend("cuda")
    assert str(direct.value) == direct.value.reason + ", or use get_backend('cpu')"
    assert "--device" not in str(direct.value)
    with pytest.raises(XpnetError) as configured:
        train(RunConfig(model="mlp", device="cuda", train_size=64, test_size=32, epochs=1, out=str(tmp_path / "run"),
                        quiet=True))
    assert str(configured.value) == direct.value.reason + ", or run with 'device' cpu"
    assert direct.value.advice("run with --device cpu").endswith(", or run with --device cpu")
