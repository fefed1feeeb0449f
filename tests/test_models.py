"""The models (models/): MLP and LNet against an independent plain-NumPy float64 model, the cnn
against its PyTorch twin, the same network from the same seed on every backend, and their summary
and parameter names."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, reference_loss_and_gradients

from layers import CrossEntropyLoss, Dropout
from models import build_model


@pytest.mark.parametrize("name", ["mlp", "lnet"])
def test_model_parity_across_backends(backend, dtype, rng, name):
    """Forward, loss and every gradient match an independent plain-NumPy float64 model
    (helpers.reference_loss_and_gradients), so the cpu float64 case is compared with something else
    than itself."""
    images, labels = rng.standard_normal((3, 3, 32, 32)), np.array([0, 9, 4])

    def run(on, as_dtype):
        model = build_model(name, seed=11).to(on, as_dtype)
        loss = CrossEntropyLoss()
        logits = model.forward(on.asarray(images, dtype=as_dtype))
        value = loss.forward(logits, on.asarray(labels))
        model.backward(loss.backward())
        grads = [on.to_numpy(p.grad) for p in model.parameters()]
        return on.to_numpy(logits), float(on.to_numpy(value)), grads

    weights = {p.name: p.data.astype(np.float64) for p in build_model(name, seed=11).parameters()}
    ref_logits, ref_loss, ref_grads = reference_loss_and_gradients(name, weights, images, labels)
    logits, value, grads = run(backend, dtype)
    assert_close(logits, ref_logits, dtype, f"{name} logits")
    assert_close(np.array(value), np.array(ref_loss), dtype, f"{name} loss")
    assert len(grads) == len(ref_grads) == len(weights)
    for got, parameter in zip(grads, build_model(name).parameters(), strict=True):
        assert_close(got, ref_grads[parameter.name], dtype, f"{name} grad {parameter.name}")


def test_same_seed_same_network_on_every_backend(backend):
    reference = [p.data for p in build_model("lnet", seed=5).parameters()]
    moved = build_model("lnet", seed=5).to(backend)
    for expected, parameter in zip(reference, moved.parameters()):
        np.testing.assert_array_equal(backend.to_numpy(parameter.data), expected)
    different = build_model("lnet", seed=6).parameters()[0].data
    assert not np.array_equal(different, reference[0])


def test_cnn_agrees_with_torch_in_train_and_eval(rng):
    """The cnn and its torch twin (benchmarks/torch_models.py) in float64: loss, every gradient and
    the running statistics after two training steps, then eval-mode logits. torch's Dropout layers
    are given our masks, so both networks drop the same units."""
    torch = pytest.importorskip("torch")
    from backends import get_backend
    from benchmarks.torch_models import build_torch_model, copy_xpnet_weights

    cpu = get_backend("cpu")
    ours = build_model("cnn", seed=0, backend=cpu, dtype="float64")
    theirs = build_torch_model("cnn").double()
    copy_xpnet_weights(ours, theirs, cpu.to_numpy)

    class OurMask(torch.nn.Module):
        def __init__(self, index):
            super().__init__()
            self.index = index

        def forward(self, t):
            return t * torch.from_numpy(ours.layers[self.index]._cache) if self.training else t

    for index, layer in enumerate(ours.layers):
        if isinstance(layer, Dropout):
            theirs[index] = OurMask(index)
    assert [name for name, _ in ours.named_parameters()] == [name for name, _ in theirs.named_parameters()]
    loss = CrossEntropyLoss()
    for _ in range(2):
        x, labels = rng.standard_normal((4, 3, 32, 32)), rng.integers(0, 10, 4)
        value = loss.forward(ours.forward(x), labels)
        ours.backward(loss.backward(), input_grad=False)
        theirs.zero_grad()
        expected = torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)), torch.from_numpy(labels))
        expected.backward()
        assert float(value) == pytest.approx(float(expected.detach()), rel=1e-10)
        for mine, (name, other) in zip(ours.parameters(), theirs.named_parameters()):
            np.testing.assert_allclose(mine.grad, other.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
    buffers = dict(theirs.named_buffers())
    for name, array in ours.named_buffers():
        np.testing.assert_allclose(array, buffers[name].numpy(), rtol=1e-10, atol=1e-13, err_msg=name)
    ours.eval(), theirs.eval()
    x = rng.standard_normal((3, 3, 32, 32))
    np.testing.assert_allclose(ours.forward(x), theirs(torch.from_numpy(x)).detach().numpy(), rtol=1e-10, atol=1e-12)


def test_summary_lists_layers_shapes_and_parameters():
    text = build_model("lnet").summary(batch_size=8)
    assert "(8, 6, 32, 32)" in text and "(8, 1024)" in text and "262,400" in text
    assert "total parameters: 266,306" in text


def test_parameter_names_are_stable():
    names = [p.name for p in build_model("lnet").parameters()]
    assert names == ["0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias", "9.weight", "9.bias"]
