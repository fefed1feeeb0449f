"""A learner's own layer: its Parameter attributes, whatever their names, are found, trained, saved and resumed."""
from __future__ import annotations

import numpy as np

from layers import CrossEntropyLoss, Layer, Linear, Parameter, Sequential
from models import Model
from training.optim import SGD
from training.saving.checkpoint import load_checkpoint, save_checkpoint


class Scale(Layer):
    """y = x · gain, a learnable gain per feature: x (N, F) -> y (N, F); gain (F,)."""

    def __init__(self, features: int):
        super().__init__()
        self.gain = Parameter(self.xp.ones((features,), dtype=self.dtype))

    def forward(self, x):
        self._cache = x
        return x * self.gain.data

    def backward(self, dy):
        x = self._saved()
        self.gain.grad = self.xp.sum(dy * x, axis=0)
        return dy * self.gain.data


class TwoParameters(Layer):
    """Parameters under any names, one of them None and one held twice: order of assignment, once each."""

    def __init__(self):
        super().__init__()
        self.beta = Parameter(self.xp.zeros((2,), dtype=self.dtype))
        self.unused = None
        self.alpha = Parameter(self.xp.ones((3,), dtype=self.dtype))
        self.same_alpha = self.alpha


class Scaled(Model):
    name = "scaled"
    input_shape = (4,)
    num_classes = 3

    def __init__(self, seed: int):
        super().__init__(Linear(4, 3, rng=np.random.default_rng(seed)), Scale(3))


def test_parameters_are_every_parameter_attribute_in_assignment_order():
    assert [name for name, _ in Sequential(Linear(4, 3), Scale(3)).named_parameters()] == \
        ["0.weight", "0.bias", "1.gain"]
    assert [name for name, _ in TwoParameters().named_parameters()] == ["beta", "alpha"]
    assert [name for name, _ in Linear(2, 2, bias=False).named_parameters()] == ["weight"]


def test_a_custom_parameter_is_in_the_flat_buffer_the_summary_and_moves_with_the_model(backend):
    model = Scaled(seed=0).to(backend, "float64")
    gain = model.layers[1].gain
    assert gain.name == "1.gain" and gain.flat is model.flat[0] and model.flat[0].parameters[-1] is gain
    assert backend.is_array(gain.data) and gain.data.dtype == backend.xp.float64
    assert model.num_parameters() == 4 * 3 + 3 + 3
    assert "1: Scale()" in model.summary().splitlines()[-3] and model.summary().splitlines()[-3].endswith(" 3")


def batches(seed: int, count: int):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((8, 4)), rng.integers(0, 3, size=8)) for _ in range(count)]


def train(model, optimizer, data, backend):
    loss = CrossEntropyLoss()
    for x, y in data:
        loss.forward(model.forward(backend.asarray(x, dtype=model.dtype)), backend.asarray(y))
        model.backward(loss.backward(), input_grad=False)
        optimizer.step()


def test_a_custom_parameter_is_trained_checkpointed_and_resumed(backend, tmp_path):
    data = batches(1, 5)
    model = Scaled(seed=0).to(backend)
    optimizer = SGD(model.parameters(), lr=0.5, momentum=0.9)
    train(model, optimizer, data[:3], backend)
    gain = backend.to_numpy(model.layers[1].gain.data).copy()
    assert not np.allclose(gain, 1.0), "the gain was never trained"
    save_checkpoint(tmp_path / "c.npz", model, optimizer, epoch=1, backend=backend)
    train(model, optimizer, data[3:], backend)  # the uninterrupted run

    checkpoint = load_checkpoint(tmp_path / "c.npz")
    np.testing.assert_array_equal(checkpoint.params["1.gain"], gain)
    resumed = Scaled(seed=7).to(backend)
    resumed_optimizer = SGD(resumed.parameters(), lr=0.5, momentum=0.9)
    checkpoint.restore_model(resumed, backend)
    checkpoint.restore_optimizer(resumed_optimizer)
    train(resumed, resumed_optimizer, data[3:], backend)
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        np.testing.assert_array_equal(backend.to_numpy(b.data), backend.to_numpy(a.data), err_msg=a.name)
