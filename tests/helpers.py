"""What the tests share, imported by name (``from helpers import assert_close``): the backends
and tolerances, finite differences, independent references, the command line, and test data.

The fixtures are in conftest.py, where pytest finds them; this module has none.
"""
from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import strategies as st

import cli
from backends import BackendUnavailableError, get_backend
from layers import gradcheck
from layers.gradcheck import STEP, central_differences
from layers.gradcheck import TOLERANCE as GRADCHECK_TOLERANCE

REPO = Path(__file__).resolve().parent.parent

# -- backends and tolerances -----------------------------------------------------------------------
ALL_BACKENDS = ("cpu", "strict", "cuda")
# The same, and the backends that run every layer's reference engine (layers/engine.py)
ENGINE_BACKENDS = ALL_BACKENDS + ("cpu-reference", "strict-reference")

# Tolerances against the cpu float64 result, per dtype (relative to the result's scale).
TOLERANCE = {"float64": 1e-10, "float32": 2e-5}


def backend_or_skip(name: str):
    """The backend ``name`` (``cpu-reference``: cpu running the reference engines), or skip, saying why."""
    device, _, engine = name.partition("-")
    try:
        return get_backend(device, engine=engine or None)
    except BackendUnavailableError as exc:
        pytest.skip(f"{name} backend unavailable: {exc}")


def assert_close(actual, expected, dtype: str, what: str = "") -> None:
    """``actual`` (NumPy) matches ``expected`` (NumPy float64) within the dtype's tolerance."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-3)
    error = float(np.max(np.abs(actual - expected), initial=0.0)) / scale
    assert error <= TOLERANCE[dtype], f"{what}: relative error {error:.3g} > {TOLERANCE[dtype]} ({dtype})"


# -- finite differences, in float64: the public layers.gradcheck is the one implementation ---------
def numerical_gradient(f, array: np.ndarray, step: float = STEP, indices=None) -> np.ndarray:
    """df/darray by central differences, at every element or only at ``indices`` (flat).

    ``f()`` reads ``array`` (which is modified in place and restored) and returns a float.
    Entries not in ``indices`` are left as NaN.
    """
    return central_differences(f, array, step, indices).reshape(array.shape)


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """‖a - n‖ / max(‖a‖, ‖n‖, tiny) over the entries ``numeric`` has (non-NaN)."""
    mask = ~np.isnan(numeric)
    a, n = analytic[mask], numeric[mask]
    scale = max(np.linalg.norm(a), np.linalg.norm(n), 1e-12)
    return float(np.linalg.norm(a - n) / scale)


MAX_RELATIVE_ERROR = GRADCHECK_TOLERANCE  # what a float64 backward must reach against the finite differences


def check_layer(layer, x_host, backend, rng, parameter_indices=None, input_grad=True):
    """Compare dx and every parameter gradient with finite differences of sum(y · R): ``layers.gradcheck``."""
    report = gradcheck(layer, x_host, backend, seed=int(rng.integers(2**31)), samples=parameter_indices,
                       input_grad=input_grad)
    assert report.ok, str(report)


# -- independent references: plain NumPy float64, nothing of xpnet ---------------------------------
# A convolution and a max-pool by their definition (loops over the output pixels), and xpnet's MLP
# and LNet written out (forward, cross-entropy and backward), the input normalisation and the
# channel statistics. They use no xpnet code, so a bug in xpnet cannot hide in the reference as well.
# Parameters are a dict {name: array} keyed as the models name them ("1.weight", ...), in PyTorch's
# layouts: Linear weight (out, in), Conv2D weight (out, in, kh, kw), NCHW images.
def reference_conv2d(x, weight, bias, stride, padding):
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x.shape
    f, _, kh, kw = weight.shape
    padded = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    padded[:, :, ph:ph + h, pw:pw + w] = x
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    y = np.zeros((n, f, oh, ow))
    for r in range(oh):
        for s in range(ow):
            patch = padded[:, :, r * sh:r * sh + kh, s * sw:s * sw + kw]
            y[:, :, r, s] = np.einsum("nchw,fchw->nf", patch, weight)
    return y + (0 if bias is None else bias[None, :, None, None])


def reference_maxpool(x, kernel, stride):
    (kh, kw), (sh, sw) = kernel, stride
    n, c, h, w = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    y = np.zeros((n, c, oh, ow))
    for r in range(oh):
        for s in range(ow):
            y[:, :, r, s] = x[:, :, r * sh:r * sh + kh, s * sw:s * sw + kw].max(axis=(2, 3))
    return y


# The layers of each model, in order; a layer with weights is named by its index.
ARCHITECTURES = {
    "mlp": [("flatten",), ("linear", "1"), ("relu",), ("linear", "3")],
    "lnet": [("conv", "0", 2), ("pool", 2), ("relu",), ("conv", "3", 1), ("pool", 2), ("relu",),
             ("flatten",), ("linear", "7"), ("relu",), ("linear", "9")],
}
PARAMETER_ORDER = {
    name: [f"{layer[1]}.{kind}" for layer in layers if layer[0] in ("linear", "conv") for kind in ("weight", "bias")]
    for name, layers in ARCHITECTURES.items()
}


def reference_channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) standard deviation of uint8 images, in pixel/255 units."""
    as_float = images.astype(np.float64) / 255.0
    return as_float.mean(axis=(0, 2, 3)), as_float.std(axis=(0, 2, 3))


def reference_normalise(images: np.ndarray, mean, std) -> np.ndarray:
    """(pixel/255 - mean) / std per channel, in float64."""
    mean = np.asarray(mean, dtype=np.float64).reshape(1, -1, 1, 1)
    std = np.asarray(std, dtype=np.float64).reshape(1, -1, 1, 1)
    return (images.astype(np.float64) / 255.0 - mean) / std


def _conv(x, weight, bias, padding):
    n, c, h, w = x.shape
    f, _, kh, kw = weight.shape
    padded = np.zeros((n, c, h + 2 * padding, w + 2 * padding))
    padded[:, :, padding:padding + h, padding:padding + w] = x
    oh, ow = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    y = np.empty((n, f, oh, ow))
    for r in range(oh):
        for s in range(ow):
            y[:, :, r, s] = np.tensordot(padded[:, :, r:r + kh, s:s + kw], weight, axes=([1, 2, 3], [1, 2, 3]))
    return y + bias[None, :, None, None], padded


def _conv_backward(dy, padded, weight, padding):
    f, c, kh, kw = weight.shape
    dweight = np.zeros_like(weight)
    dpadded = np.zeros_like(padded)
    for r in range(dy.shape[2]):
        for s in range(dy.shape[3]):
            g = dy[:, :, r, s]  # (n, f)
            dweight += np.tensordot(g, padded[:, :, r:r + kh, s:s + kw], axes=([0], [0]))
            dpadded[:, :, r:r + kh, s:s + kw] += np.tensordot(g, weight, axes=([1], [0]))
    h, w = padded.shape[2] - 2 * padding, padded.shape[3] - 2 * padding
    return dpadded[:, :, padding:padding + h, padding:padding + w], dweight, dy.sum(axis=(0, 2, 3))


def _pool(x, k):
    n, c, h, w = x.shape
    windows = x[:, :, : h // k * k, : w // k * k].reshape(n, c, h // k, k, w // k, k).transpose(0, 1, 2, 4, 3, 5)
    windows = windows.reshape(n, c, h // k, w // k, k * k)
    first = windows.argmax(axis=-1)  # argmax returns the first maximum
    return windows.max(axis=-1), first


def _pool_backward(dy, first, shape, k):
    n, c, oh, ow = dy.shape
    dx = np.zeros(shape)
    rows, cols = np.divmod(first, k)
    ni, ci, ri, si = np.meshgrid(np.arange(n), np.arange(c), np.arange(oh), np.arange(ow), indexing="ij")
    np.add.at(dx, (ni, ci, ri * k + rows, si * k + cols), dy)  # windows do not overlap; add.at anyway
    return dx


def reference_forward(name: str, params: dict, x: np.ndarray, keep: list | None = None) -> np.ndarray:
    """Logits (N, 10) of model ``name`` with ``params`` on float inputs ``x`` (N, 3, 32, 32), in float64."""
    p = {key: np.asarray(value, dtype=np.float64) for key, value in params.items()}
    x = np.asarray(x, dtype=np.float64)
    for layer in ARCHITECTURES[name]:
        kind = layer[0]
        saved = x
        if kind == "flatten":
            x = x.reshape(x.shape[0], -1)
        elif kind == "relu":
            x = np.maximum(x, 0.0)
        elif kind == "linear":
            x = x @ p[f"{layer[1]}.weight"].T + p[f"{layer[1]}.bias"]
        elif kind == "conv":
            x, saved = _conv(x, p[f"{layer[1]}.weight"], p[f"{layer[1]}.bias"], layer[2])
        elif kind == "pool":
            x, first = _pool(x, layer[1])
            saved = (saved.shape, first)
        if keep is not None:
            keep.append(saved)
    return x


def reference_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def reference_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the examples of -log softmax(logits)[label]."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def reference_loss_and_gradients(name: str, params: dict, x: np.ndarray, labels: np.ndarray):
    """(logits, mean cross-entropy, {name: dLoss/dparameter}) in float64."""
    p = {key: np.asarray(value, dtype=np.float64) for key, value in params.items()}
    saved: list = []
    logits = reference_forward(name, p, x, keep=saved)
    loss = reference_cross_entropy(logits, labels)
    dy = reference_softmax(logits)
    dy[np.arange(len(labels)), labels] -= 1.0
    dy /= len(labels)
    grads = {}
    for layer, inputs in zip(reversed(ARCHITECTURES[name]), reversed(saved), strict=True):
        kind = layer[0]
        if kind == "flatten":
            dy = dy.reshape(inputs.shape)
        elif kind == "relu":
            dy = dy * (inputs > 0)
        elif kind == "linear":
            weight = p[f"{layer[1]}.weight"]
            grads[f"{layer[1]}.weight"] = dy.T @ inputs
            grads[f"{layer[1]}.bias"] = dy.sum(axis=0)
            dy = dy @ weight
        elif kind == "conv":
            dy, grads[f"{layer[1]}.weight"], grads[f"{layer[1]}.bias"] = _conv_backward(
                dy, inputs, p[f"{layer[1]}.weight"], layer[2])
        elif kind == "pool":
            shape, first = inputs
            dy = _pool_backward(dy, first, shape, layer[1])
    return logits, loss, grads


def reference_confusion(predicted: np.ndarray, labels: np.ndarray, classes: int = 10) -> np.ndarray:
    """Counts by hand: row = true class, column = predicted class."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    for true, guess in zip(labels.tolist(), predicted.tolist(), strict=True):
        counts[true, guess] += 1
    return counts


def ambiguous(logits: np.ndarray, margin: float = 1e-4) -> np.ndarray:
    """Examples whose two largest logits are within ``margin``: float32 rounding may flip their argmax."""
    top2 = np.sort(logits, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) < margin


# -- the command line ------------------------------------------------------------------------------
SMALL = ["--device", "cpu", "--model", "mlp", "--train-size", "160", "--test-size", "64", "--batch-size", "32", "--quiet"]
# Smaller and faster still (LNet's checkpoints are a twelfth of the MLP's), for tests of what surrounds training.
TINY = ["--device", "cpu", "--model", "lnet", "--train-size", "64", "--test-size", "32", "--batch-size", "32", "--quiet"]


def run(argv, capsys):
    """cli.main(argv) → (exit code, stdout, stderr)."""
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_quietly(argv) -> tuple[int, str, str]:
    """cli.main(argv) with its output captured here (for session fixtures, which have no capsys)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def call_cli(argv: list[str]) -> SimpleNamespace:
    """cli.main(argv) with its output captured here → SimpleNamespace(code, out, err)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(argv)
    return SimpleNamespace(code=code, out=stdout.getvalue(), err=stderr.getvalue())


def cli_in_a_process(patch: str, argv: list[str], cache: Path) -> subprocess.CompletedProcess:
    """``python cli.py argv`` in a process of its own, after the Python lines ``patch`` (which may
    replace what cli.py will call): for a real signal the process sends itself, which would stop
    pytest if it were handled after cli.py had put pytest's handlers back."""
    program = patch + f"import runpy, sys\nsys.argv = ['cli.py', *{list(argv)!r}]\nrunpy.run_path('cli.py', run_name='__main__')\n"
    env = {**os.environ, "XPNET_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", program], cwd=REPO, env=env, text=True, capture_output=True, timeout=120)


def one_error_line(err: str) -> str:
    """The single line of stderr, which must be an ``error:`` line."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a folder and its bytes, to show that nothing in it changed."""
    return {path.name: path.read_bytes() for path in sorted(Path(folder).iterdir())}


def copy_run(template: Path, destination: Path) -> Path:
    shutil.copytree(template, destination)
    return destination


def write_edited_checkpoint(path: Path, arrays: dict, change_meta=None, change_arrays=None) -> Path:
    """Write ``arrays`` (a checkpoint's entries) to ``path`` with its header (a dict) and/or arrays changed."""
    arrays = dict(arrays)
    meta = json.loads(str(arrays["meta"]))
    if change_meta:
        change_meta(meta)
    if change_arrays:
        change_arrays(arrays)
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    return path


def svhn_flags(root):
    """The flags of a small MLP run on the SVHN-format files in ``root`` (see the svhn_patches fixture)."""
    return ["--dataset", "svhn", "--data-dir", str(root), "--device", "cpu", "--model", "mlp", "--batch-size", "32", "--quiet"]


def evaluated(params, arrays, mean, std, name="mlp"):
    """(loss, accuracy, number of ambiguous images) of ``params`` on the test split of ``arrays``, by the reference."""
    images, labels = arrays["test"]
    logits = reference_forward(name, params, reference_normalise(images, mean, std))
    return reference_cross_entropy(logits, labels), float(np.mean(logits.argmax(axis=1) == labels)), int(ambiguous(logits).sum())


# -- test data, a local download server, random edits of a file ----------------------------------
def random_set(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random uint8 images (N, 3, 32, 32) and int64 labels 0..9."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def patch_images(labels: np.ndarray, rng, brighter: int = 0) -> np.ndarray:
    """Noise images whose class is a brighter 6x5 patch at one of ten places."""
    images = rng.integers(0, 160, size=(len(labels), 3, 32, 32)).astype(np.int64) + brighter
    for digit in range(10):
        row, column = 4 + 12 * (digit // 5), 2 + 6 * (digit % 5)
        images[labels == digit, :, row:row + 6, column:column + 5] += 40
    return np.clip(images, 0, 255).astype(np.uint8)


class Server:
    """A ThreadingHTTPServer on 127.0.0.1 serving ``files`` with Range support.

    ``mode`` changes its behaviour: "ok"; "half" (sends half the body, then closes);
    "no-range" (ignores Range, always 200); "error" (500); "slow" (sleeps before answering).
    """

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.mode = "ok"
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                try:
                    self._get()
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                    pass

            def _get(self):
                server.requests.append((self.path, self.headers.get("Range")))
                name = self.path.rsplit("/", 1)[-1]
                if server.mode == "slow":
                    time.sleep(1.0)
                if server.mode == "error":
                    return self.send_error(500, "broken on purpose")
                if name not in server.files:
                    return self.send_error(404)
                body, start = server.files[name], 0
                range_header = self.headers.get("Range")
                if range_header and server.mode != "no-range":
                    start = int(range_header.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        return self.send_error(416)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if server.mode == "half":
                    self.wfile.write(body[start : start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

            def log_message(self, *args):  # keep the test output quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/housenumbers/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


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


def tie_free(rng, shape, gap=0.01):
    """Distinct values at least ``gap`` apart and away from 0: no max-pool ties, no ReLU kinks."""
    count = int(np.prod(shape))
    values = (np.arange(count) - count / 2 + 0.5) * gap
    return rng.permutation(values).reshape(shape)
