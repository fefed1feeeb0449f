"""Parameters live in one flat buffer per model; .data/.grad are views, assignment copies in."""
from __future__ import annotations

import numpy as np
import pytest

from layers import Linear, Parameter, ReLU, Sequential
from layers.parameter import flatten_parameters
from models import build_model
from training.optim import SGD, Adam


def test_model_parameters_are_views_of_one_buffer(backend):
    model = build_model("lnet", seed=3).to(backend, "float64")
    (flat,) = model.flat
    assert flat.parameters == model.parameters()
    assert flat.offsets[-1] == model.num_parameters()
    host = backend.to_numpy(flat.data)
    for k, p in enumerate(model.parameters()):
        np.testing.assert_array_equal(backend.to_numpy(p.data).reshape(-1), host[flat.offsets[k]:flat.offsets[k + 1]])
    fresh = build_model("lnet", seed=3)  # same seed, same values, whatever the storage
    for p, q in zip(model.parameters(), fresh.parameters()):
        np.testing.assert_array_equal(backend.to_numpy(p.data), q.data.astype(np.float64))


def test_assigning_data_copies_into_the_buffer(backend):
    model = build_model("mlp").to(backend, "float32")
    weight = model.parameters()[0]
    view = weight.data
    weight.data = np.full(weight.shape, 0.5)
    assert weight.data is view  # same storage, new values
    assert float(backend.to_numpy(model.flat[0].data)[0]) == 0.5
    with pytest.raises(ValueError, match=r"cannot assign an array of shape \(3,\) to .*which has shape \(1024, 3072\)"):
        weight.data = np.zeros(3)


def test_in_place_updates_of_data_reach_the_buffer():
    layer = Sequential(Linear(2, 2, rng=np.random.default_rng(0)))
    weight = layer.parameters()[0]
    before = layer.flat[0].data.copy()
    weight.data -= 1.0  # reads the view, updates it in place, assigns it to itself
    np.testing.assert_allclose(layer.flat[0].data[:4], before[:4] - 1.0)


def test_gradients_land_in_the_flat_gradient_buffer(backend):
    model = build_model("mlp", seed=1).to(backend, "float64")
    assert all(p.grad is None for p in model.parameters())
    x = backend.asarray(np.random.default_rng(0).standard_normal((2, 3, 32, 32)))
    model.forward(x)
    model.backward(backend.asarray(np.ones((2, 10))), input_grad=False)
    flat = model.flat[0]
    grads = backend.to_numpy(flat.grad)
    for k, p in enumerate(model.parameters()):
        np.testing.assert_array_equal(backend.to_numpy(p.grad).reshape(-1), grads[flat.offsets[k]:flat.offsets[k + 1]])
    np.testing.assert_allclose(backend.to_numpy(model.parameters()[-1].grad), np.full(10, 2.0))  # db = Σ_n dy


def test_optimizer_shares_the_models_buffer_and_none_grads_are_skipped():
    model = Sequential(Linear(3, 2, rng=np.random.default_rng(1)), ReLU(), Linear(2, 2, rng=np.random.default_rng(2)))
    buffer = model.flat[0].data
    opt = Adam(model.parameters(), lr=0.1)
    assert opt.flats == model.flat and opt.flats[0].data is buffer  # nothing repacked
    params = model.parameters()
    for p in params:
        p.grad = np.ones(p.shape, dtype=np.float32)
    params[1].grad = None  # the first bias gets no gradient this step
    before = [p.data.copy() for p in params]
    opt.step()
    assert opt.state[1] == {} and [s.get("step") for s in opt.state] == [1, None, 1, 1]
    np.testing.assert_array_equal(params[1].data, before[1])
    for i in (0, 2, 3):
        np.testing.assert_allclose(params[i].data, before[i] - 0.1, rtol=1e-6)  # Adam's first step: lr·sign(g)
    params[1].grad = np.ones(2, dtype=np.float32)
    opt.step()  # steps 2, 1, 2, 2: three stretches, each with its own bias correction
    assert [s["step"] for s in opt.state] == [2, 1, 2, 2]
    np.testing.assert_allclose(params[1].data, before[1] - 0.1, rtol=1e-6)


def test_flattening_keeps_values_and_gradients():
    a, b = Parameter(np.arange(6.0).reshape(2, 3)), Parameter(np.array([7.0, 8.0]))
    b.grad = np.array([1.0, 2.0])
    (flat,) = flatten_parameters([a, b])
    np.testing.assert_array_equal(flat.data, [0, 1, 2, 3, 4, 5, 7, 8])
    np.testing.assert_array_equal(flat.grad, [0, 0, 0, 0, 0, 0, 1, 2])
    assert a.grad is None and b.grad is not None
    assert flatten_parameters([a, b])[0] is flat  # already flat: left as it is
    assert flatten_parameters([b, a])[0] is not flat  # another order: packed anew
    np.testing.assert_array_equal(a.data, np.arange(6.0).reshape(2, 3))


def test_optimizer_state_is_views_of_flat_state_buffers():
    model = build_model("mlp", seed=0)
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = np.ones(p.shape, dtype=np.float32)
    opt.step()
    buffers = opt._buffers[0]["momentum_buffer"]
    assert buffers.shape == (model.num_parameters(),)
    assert np.shares_memory(opt.state[0]["momentum_buffer"], buffers)
    np.testing.assert_array_equal(buffers, np.ones(model.num_parameters(), np.float32))  # b₁ = g₁


def test_a_parameter_is_unnamed_until_named_and_refuses_arrays_without_a_shape():
    p = Parameter(np.zeros(3))
    assert p.name == "" and repr(p) == "Parameter(?, shape=(3,), dtype=float64)"
    p.name = "w"
    assert repr(p) == "Parameter(w, shape=(3,), dtype=float64)"
    with pytest.raises(ValueError, match=r"^cannot assign an array of shape \(\) to Parameter\(w, shape=\(3,\), "
                                         r"dtype=float64\)\.data, which has shape \(3,\)$"):
        p.data = [0.0, 1.0, 2.0]  # a list has no shape: refused, not guessed


def test_placing_new_storage_keeps_whether_there_is_a_gradient():
    p = Parameter(np.zeros(3))
    p.place(np.ones(3), np.full(3, 2.0))
    assert p.grad is None  # no backward yet: the new gradient storage is not a gradient
    p.grad = np.ones(3)
    p.place(np.zeros(3), np.full(3, 5.0))
    np.testing.assert_array_equal(p.grad, np.full(3, 5.0))  # a gradient stays one, in its new storage
    p.place(np.zeros(3))
    assert p.grad is None


def test_flat_buffers_are_one_per_backend_and_dtype():
    from backends import get_backend

    cpu, strict = get_backend("cpu"), get_backend("strict")
    params = [Parameter(cpu.asarray(np.ones((2, 3)), dtype="float32")), Parameter(cpu.asarray(np.ones(4))),
              Parameter(strict.asarray(np.ones(5))), Parameter(cpu.asarray(np.full(2, 0.1), dtype="float32"))]
    flats = flatten_parameters(params)
    assert [[params.index(p) for p in flat.parameters] for flat in flats] == [[0, 3], [1], [2]]
    assert [p.data.dtype for p in params] == [np.float32, np.float64, strict.dtype("float64"), np.float32]
    assert strict.is_array(params[2].data) and not strict.is_array(params[1].data)
    assert repr(flats[0]) == "FlatParameters(2 parameters, 8 values, float32)"
    big = flatten_parameters([Parameter(np.zeros(1000)), Parameter(np.zeros(500))])[0]
    assert repr(big) == "FlatParameters(2 parameters, 1,500 values, float64)"
