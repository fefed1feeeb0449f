"""Choosing the engine: get_backend(..., engine=) and $XPNET_ENGINE, a learner's one hop from a
layer into the math, and training, gradients and a CLI run with the reference engines."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import TINY, backend_or_skip, call_cli, one_error_line

from backends import BackendUnavailableError, get_backend
from layers import Conv2D, CrossEntropyLoss
from layers.conv import ConvReference
from models import build_model
from training.optim import SGD


def test_the_engine_is_a_backend_setting(monkeypatch):
    monkeypatch.delenv("XPNET_ENGINE", raising=False)
    fast, reference = get_backend("cpu"), get_backend("cpu", engine="reference")
    assert fast.engine == "fast" and reference.engine == "reference"
    assert reference is get_backend("cpu", engine="reference")  # made once
    assert reference.xp is fast.xp and reference.array_type is fast.array_type  # the same device and arrays
    assert repr(reference) == "Backend('cpu', engine='reference')" and repr(fast) == "Backend('cpu')"
    monkeypatch.setenv("XPNET_ENGINE", "reference")
    assert get_backend("cpu") is reference and get_backend("cpu", engine="fast") is fast
    with pytest.raises(ValueError, match="unknown engine 'slow'; expected one of fast, reference"):
        get_backend("cpu", engine="slow")
    monkeypatch.setenv("XPNET_ENGINE", "slow")
    with pytest.raises(BackendUnavailableError, match="XPNET_ENGINE must be one of fast, reference, got 'slow'"):
        get_backend("cpu")


def test_conv2d_forward_steps_into_the_math_in_one_hop(monkeypatch):
    """With the reference engine, Conv2D.forward calls ConvReference.forward, the definition, itself."""
    calls = []
    definition = ConvReference.forward
    monkeypatch.setattr(ConvReference, "forward", staticmethod(lambda *args: calls.append(args) or definition(*args)))
    layer = Conv2D(3, 4, 3, rng=np.random.default_rng(0)).to(get_backend("cpu", engine="reference"))
    layer.forward(np.zeros((2, 3, 8, 8), dtype=np.float32))
    assert len(calls) == 1 and calls[0][1].shape == (2, 3, 8, 8)


@pytest.mark.parametrize("name", ["cpu", "strict"])
def test_training_with_the_reference_engines_follows_the_fast_trajectory(name):
    """Ten SGD steps of the cnn (every op: conv, batchnorm, pool, ReLU, dropout, linear, loss) in
    float64: the reference engines and the fast ones end at the same weights."""
    rng = np.random.default_rng(19)
    images, labels = rng.standard_normal((8, 3, 32, 32)), rng.integers(0, 10, 8)
    finals = []
    for engine in ("fast", "reference"):
        backend = backend_or_skip(name) if engine == "fast" else backend_or_skip(f"{name}-reference")
        model = build_model("cnn", seed=2).to(backend, "float64")
        loss = CrossEntropyLoss().to(backend)
        optimizer = SGD(model.parameters(), lr=0.01)
        x, y = backend.asarray(images), backend.asarray(labels)
        values = []
        for _ in range(10):
            values.append(float(backend.to_numpy(loss.forward(model.forward(x), y))))
            model.backward(loss.backward(), input_grad=False)
            optimizer.step()
        assert values[-1] < values[0]
        finals.append(np.concatenate([backend.to_numpy(p.data).ravel() for p in model.parameters()]))
    np.testing.assert_allclose(finals[1], finals[0], rtol=1e-9, atol=1e-10)


@pytest.mark.usefixtures("private_cache")
def test_a_cli_run_with_the_reference_engines(monkeypatch, tmp_path):
    monkeypatch.setenv("XPNET_ENGINE", "reference")
    result = call_cli(TINY + ["--epochs", "1", "--out", str(tmp_path / "run")])
    assert result.code == 0, result.err
    assert (tmp_path / "run" / "checkpoint.npz").exists()


@pytest.mark.usefixtures("private_cache")
def test_an_unknown_engine_is_one_error_line(monkeypatch, tmp_path):
    monkeypatch.setenv("XPNET_ENGINE", "turbo")
    result = call_cli(TINY + ["--epochs", "1", "--out", str(tmp_path / "run")])
    assert result.code == 2
    assert "XPNET_ENGINE must be one of fast, reference, got 'turbo'" in one_error_line(result.err)


def test_pick_reads_the_policy_and_a_workspace_keeps_its_arrays():
    """The reference on engine="reference", else the launch-bound engine on strict (and GPUs),
    the cpu engine on cpu; scratch arrays are kept from call to call while shape and dtype hold."""
    from layers.engine import Engines, Workspace

    engines = Engines(reference="reference", cpu="cpu", launch_bound="launch_bound")
    assert engines.pick(get_backend("cpu")) == "cpu"
    assert engines.pick(get_backend("strict")) == "launch_bound"
    assert engines.pick(get_backend("cpu", engine="reference")) == "reference"
    work = Workspace(get_backend("cpu"))
    first = work.scratch("a", (2, 3), np.float32)
    assert work.scratch("a", (2, 3), np.float32) is first
    assert work.scratch("b", (2, 3), np.float32) is not first
    assert work.scratch("a", (3, 2), np.float32) is not first
    again = work.scratch("a", (3, 2), np.float64)
    assert first.dtype == np.float32 and again.dtype == np.float64 and again.shape == (3, 2)
    made = []
    table = work.constant("table", lambda: made.append(1) or np.arange(4))
    assert work.constant("table", lambda: made.append(1) or np.arange(4)) is table and made == [1]  # made once
