"""The .mat reader on corrupt files (training/data/matlab.py vets them for scipy): random bytes,
invalid element types and randomly mutated SVHN files give a result or a DataError, never a crash
of the interpreter."""
from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from helpers import EDITS, mutate
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from training.data import read_svhn_mat, write_svhn_mat
from training.errors import DataError


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
