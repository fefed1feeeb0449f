"""Optimizers against independent NumPy float64 references written from torch.optim's docs.

Every computing test runs on each backend (cpu, strict, and cuda when a GPU is present;
otherwise the cuda cases are skipped with the reason) in float32 and float64.
"""
from __future__ import annotations

import ast
import io
from pathlib import Path

import numpy as np
import pytest
from helpers import backend_or_skip

from backends import BackendUnavailableError, available_backends, get_backend
from backends.counting import count_operations
from layers.parameter import Parameter
from training.optim import SGD, Adam, AdamW

# --- backends -------------------------------------------------------------------------
BACKEND_NAMES = available_backends() + ([] if "cuda" in available_backends() else ["cuda"])
DTYPES = ("float32", "float64")
TOLERANCE = {"float64": dict(rtol=1e-12, atol=1e-13), "float32": dict(rtol=1e-5, atol=1e-6)}


@pytest.fixture(params=BACKEND_NAMES)
def backend(request):
    try:
        return get_backend(request.param)
    except BackendUnavailableError as exc:
        pytest.skip(f"{request.param} backend unavailable: {exc}")


# --- a deterministic problem ----------------------------------------------------------
SHAPES = [(4, 3), (5,), (2, 3, 2)]
N_STEPS = 6
# Gradients grow and then shrink, so AMSGrad's running max of v differs from plain Adam.
GRAD_SCALES = [1.0, 3.0, 0.5, 0.2, 2.0, 0.1]


def make_problem(dtype="float64", seed=0):
    """Initial values and one list of gradients per step (float64, rounded to ``dtype``).

    Parameter 2 has no gradient at step 2, so every optimizer must skip it there.
    """
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(shape).astype(dtype).astype(np.float64) for shape in SHAPES]
    grads = []
    for t in range(N_STEPS):
        step = []
        for i, shape in enumerate(SHAPES):
            g = (GRAD_SCALES[t] * rng.standard_normal(shape)).astype(dtype).astype(np.float64)
            step.append(None if (i == 2 and t == 2) else g)
        grads.append(step)
    return init, grads


# --- references, written straight from torch.optim's documented algorithms -------------
def reference_sgd(init, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    theta = [p.copy() for p in init]
    buf = [None] * len(theta)
    for step in grads:
        for i, g in enumerate(step):
            if g is None:
                continue
            if weight_decay != 0:
                g = g + weight_decay * theta[i]
            if momentum != 0:
                if buf[i] is not None:  # t > 1
                    buf[i] = momentum * buf[i] + (1 - dampening) * g
                else:
                    buf[i] = g
                g = g + momentum * buf[i] if nesterov else buf[i]
            theta[i] = theta[i] - lr * g
    return theta


def reference_adam(init, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                   amsgrad=False, decoupled=False):
    beta1, beta2 = betas
    theta = [p.copy() for p in init]
    m = [np.zeros_like(p) for p in init]
    v = [np.zeros_like(p) for p in init]
    v_max = [np.zeros_like(p) for p in init]
    t = [0] * len(init)
    for step in grads:
        for i, g in enumerate(step):
            if g is None:
                continue
            t[i] += 1
            if decoupled:
                theta[i] = theta[i] - lr * weight_decay * theta[i]
            elif weight_decay != 0:
                g = g + weight_decay * theta[i]
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g**2
            m_hat = m[i] / (1 - beta1 ** t[i])
            if amsgrad:
                v_max[i] = np.maximum(v_max[i], v[i])
                v_hat = v_max[i] / (1 - beta2 ** t[i])
            else:
                v_hat = v[i] / (1 - beta2 ** t[i])
            theta[i] = theta[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return theta


def reference_adamw(init, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
    return reference_adam(init, grads, lr, betas, eps, weight_decay, amsgrad, decoupled=True)


REFERENCES = {SGD: reference_sgd, Adam: reference_adam, AdamW: reference_adamw}

CONFIGS = {
    "sgd": (SGD, dict(lr=0.1)),
    "sgd-momentum": (SGD, dict(lr=0.1, momentum=0.9)),
    "sgd-momentum-dampening": (SGD, dict(lr=0.1, momentum=0.9, dampening=0.3)),
    "sgd-nesterov": (SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    "sgd-weight-decay": (SGD, dict(lr=0.1, weight_decay=0.05)),
    "sgd-nesterov-weight-decay": (SGD, dict(lr=0.05, momentum=0.8, weight_decay=0.1, nesterov=True)),
    # The ends of the ranges: dampening 1 (b ← μb after the first step), weight decay 1.
    "sgd-dampening-1-weight-decay-1": (SGD, dict(lr=0.05, momentum=0.8, dampening=1.0, weight_decay=1.0)),
    "adam": (Adam, dict(lr=0.05)),
    "adam-weight-decay": (Adam, dict(lr=0.05, weight_decay=0.1)),
    "adam-weight-decay-1": (Adam, dict(lr=0.05, weight_decay=1.0)),
    "adam-amsgrad": (Adam, dict(lr=0.05, betas=(0.8, 0.99), amsgrad=True)),
    "adamw": (AdamW, dict(lr=0.05)),
    "adamw-amsgrad": (AdamW, dict(lr=0.05, weight_decay=0.1, amsgrad=True)),
    "adamw-weight-decay-1": (AdamW, dict(lr=0.05, weight_decay=1.0)),
}


def make_params(backend, values, dtype):
    return [Parameter(backend.asarray(np.array(v, copy=True), dtype=dtype), name=f"p{i}") for i, v in enumerate(values)]


def set_grads(backend, params, step_grads, dtype):
    for p, g in zip(params, step_grads):
        p.grad = None if g is None else backend.asarray(g, dtype=dtype)


def values(backend, params):
    return [np.array(backend.to_numpy(p.data), copy=True) for p in params]


def host(backend, value):
    """A state value as NumPy: arrays copied from the device, the step count as it is."""
    return backend.to_numpy(value) if backend.is_array(value) else value


# --- the update rules -----------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_reference(backend, dtype, config):
    cls, kwargs = CONFIGS[config]
    init, grads = make_problem(dtype)
    params = make_params(backend, init, dtype)
    opt = cls(params, **kwargs)  # stores the parameters in one flat buffer; their values stay
    arrays = [p.data for p in params]
    for i, (array, value) in enumerate(zip(arrays, init)):
        assert array.shape == value.shape
        np.testing.assert_array_equal(backend.to_numpy(array), value.astype(dtype), err_msg=f"parameter {i}")
    for step_grads in grads:
        set_grads(backend, params, step_grads, dtype)
        opt.step()

    expected = REFERENCES[cls](init, grads, **kwargs)
    for i, (p, array, want) in enumerate(zip(params, arrays, expected)):
        assert p.data is array, f"parameter {i} was replaced, not updated in place"
        assert p.data.dtype == backend.dtype(dtype)
        np.testing.assert_allclose(backend.to_numpy(p.data), want, **TOLERANCE[dtype], err_msg=f"parameter {i}")
    for state in opt.state:  # the state stays in the parameters' dtype
        for key, value in state.items():
            if key != "step":
                assert value.dtype == backend.dtype(dtype), key


@pytest.mark.parametrize("config", list(CONFIGS))
def test_threaded_update_of_a_large_parameter_is_the_serial_update(monkeypatch, config):
    """Large flat buffers are updated in cache-sized blocks over the cpu backend's threads:
    the same arithmetic element by element, so bit-identical to one thread, state included."""
    from backends import base

    cpu = get_backend("cpu")
    cls, kwargs = CONFIGS[config]
    rng = np.random.default_rng(3)
    shape = (base.PARALLEL_MIN_ELEMENTS // 100 + 3, 100)  # just over the threshold, odd rows
    init = rng.standard_normal(shape).astype(np.float32)
    grads = [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]
    results = []
    for threads, tile_bytes in ((1, None), (3, cpu.tile_bytes), (3, 40_000)):  # 40 kB: blocks of a few thousand
        monkeypatch.setattr(cpu, "threads", threads)
        monkeypatch.setattr(cpu, "tile_bytes", tile_bytes)
        params = make_params(cpu, [init], "float32")
        opt = cls(params, **kwargs)
        for grad in grads:
            params[0].grad = cpu.asarray(grad)
            opt.step()
        results.append((params[0].data, opt.state[0]))
    (data1, state1), *others = results
    for data, state in others:
        np.testing.assert_array_equal(data, data1)
        for key, value in state1.items():
            np.testing.assert_array_equal(state[key], value, err_msg=key)


def test_problem_exercises_every_option():
    """Each option changes the result on this problem, so each test above means something."""
    init, grads = make_problem()
    results = {name: REFERENCES[cls](init, grads, **kw) for name, (cls, kw) in CONFIGS.items()}
    results["adam-betas"] = reference_adam(init, grads, lr=0.05, betas=(0.8, 0.99))
    for a, b in [("sgd", "sgd-momentum"), ("sgd-momentum", "sgd-momentum-dampening"),
                 ("sgd-momentum", "sgd-nesterov"), ("sgd", "sgd-weight-decay"),
                 ("adam", "adam-weight-decay"), ("adam-betas", "adam-amsgrad"), ("adam", "adamw")]:
        assert not np.allclose(results[a][0], results[b][0], rtol=1e-6), (a, b)


def test_params_without_grad_are_skipped(backend):
    init, grads = make_problem()
    params = make_params(backend, init, "float64")
    opt = Adam(params, lr=0.1)
    set_grads(backend, params, [grads[0][0], grads[0][1], None], "float64")
    opt.step()
    np.testing.assert_array_equal(backend.to_numpy(params[2].data), init[2])
    assert opt.state[2] == {}
    assert sorted(opt.state_dict()["state"]) == [0, 1]
    assert opt.state[0]["step"] == 1


def test_parameters_after_a_skipped_one_get_their_own_state(backend):
    """Parameter 0 has no gradient: the others are updated as a stretch that starts at 1,
    and each one's state is its own (the momentum buffer of a first step is its gradient)."""
    init, grads = make_problem()
    params = make_params(backend, init, "float64")
    opt = SGD(params, lr=0.1, momentum=0.9)
    set_grads(backend, params, [None, grads[0][1], grads[0][2]], "float64")
    opt.step()
    assert opt.state[0] == {}
    for i in (1, 2):
        np.testing.assert_array_equal(backend.to_numpy(opt.state[i]["momentum_buffer"]), grads[0][i])


@pytest.mark.parametrize("skipped", [False, True], ids=["all-updated", "one-skipped-earlier"])
def test_one_kernel_per_step_unless_step_counts_differ(skipped):
    """The rule runs once over the flat buffer of all parameters. After a step that skipped
    parameter 2, SGD still runs once (it only asks whether a parameter was updated before);
    Adam, whose bias correction needs each step count, runs once per stretch of equal counts."""
    strict = backend_or_skip("strict")
    init, grads = make_problem()
    grads = [grads[0], [grads[1][0], grads[1][1], None if skipped else grads[1][2]], grads[3]]
    kernels = {"sgd-momentum": {"sgd_update_dampened_False_decay_False_first_False_nesterov_False_with_momentum_True": 1},
               "adam": {"adam_update_amsgrad_False_decay_none": 2 if skipped else 1}}
    for config, expected in kernels.items():
        cls, kwargs = CONFIGS[config]
        params = make_params(strict, init, "float64")
        opt = cls(params, **kwargs)
        for step_grads in grads[:2]:
            set_grads(strict, params, step_grads, "float64")
            opt.step()
        set_grads(strict, params, grads[2], "float64")  # the third step (parameter 2: its second update if skipped)
        with count_operations() as counts:
            opt.step()
        assert dict(counts.by_name) == expected and counts.transfers == 0, (config, counts)


def test_zero_grad_sets_grads_to_none(backend):
    init, grads = make_problem()
    params = make_params(backend, init, "float32")
    opt = SGD(params, lr=0.1)
    set_grads(backend, params, grads[0], "float32")
    opt.zero_grad()
    assert all(p.grad is None for p in params)
    opt.step()  # nothing to do
    for p, v in zip(params, init):
        np.testing.assert_array_equal(backend.to_numpy(p.data), v.astype(np.float32))


def test_lr_can_be_changed_between_steps(backend):
    init, grads = make_problem()
    params = make_params(backend, init, "float64")
    opt = SGD(params, lr=0.1)
    set_grads(backend, params, grads[0], "float64")
    opt.step()
    opt.lr = 0.01
    set_grads(backend, params, grads[1], "float64")
    opt.step()
    for p, v, g0, g1 in zip(params, init, grads[0], grads[1]):
        np.testing.assert_allclose(backend.to_numpy(p.data), v - 0.1 * g0 - 0.01 * g1, rtol=1e-14)


def test_numpy_scalar_hyperparameters_keep_the_dtype(backend):
    """NumPy scalars (as read from a config or checkpoint) become Python floats, so they
    cannot promote float32 parameters to float64 (NumPy 2 would; strict would refuse)."""
    init, grads = make_problem("float32")
    params = make_params(backend, init, "float32")
    opt = Adam(params, lr=np.float64(0.05), betas=np.array([0.9, 0.999]), eps=np.float32(1e-8))
    assert type(opt.lr) is float and opt.betas == (0.9, 0.999)
    set_grads(backend, params, grads[0], "float32")
    opt.step()
    assert all(p.data.dtype == backend.dtype("float32") for p in params)
    assert opt.state[0]["exp_avg"].dtype == backend.dtype("float32")


def test_grad_of_wrong_shape_is_a_clear_error(backend):
    params = make_params(backend, [np.zeros((2, 3))], "float64")
    SGD(params, lr=0.1)
    with pytest.raises(ValueError, match=r"cannot assign an array of shape \(3, 2\) to .*grad, which has shape \(2, 3\)"):
        params[0].grad = backend.asarray(np.zeros((3, 2)))


# --- state_dict / load_state_dict -----------------------------------------------------
def checkpoint_round_trip(backend, state_dict):
    """Flatten to '/'-joined keys, write an .npz without pickle, read it back, unflatten:
    roughly what a checkpoint does. Scalars come back as 0-d arrays, tuples as arrays,
    parameter indices as strings, and empty dicts disappear."""
    flat = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}{key}/", item)
        elif backend.is_array(value):
            flat[prefix[:-1]] = backend.to_numpy(value)
        else:
            flat[prefix[:-1]] = np.asarray(value)

    walk("", state_dict)
    buffer = io.BytesIO()
    np.savez(buffer, **flat)
    buffer.seek(0)
    restored = {}
    with np.load(buffer, allow_pickle=False) as npz:
        for key in npz.files:
            *parents, leaf = key.split("/")
            node = restored
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = npz[key]
    return restored


@pytest.mark.parametrize("config", list(CONFIGS))
def test_state_dict_round_trip_resumes_exactly(backend, config):
    cls, kwargs = CONFIGS[config]
    dtype = "float32"
    init, grads = make_problem(dtype)
    k = 3

    params = make_params(backend, init, dtype)
    opt = cls(params, **kwargs)
    for step_grads in grads[:k]:
        set_grads(backend, params, step_grads, dtype)
        opt.step()
    saved = checkpoint_round_trip(backend, opt.state_dict())

    # A fresh optimizer with other hyperparameters: loading restores the saved ones.
    resumed_params = make_params(backend, values(backend, params), dtype)
    resumed = cls(resumed_params, lr=0.5)
    resumed.load_state_dict(saved)
    assert resumed.hyperparameters() == opt.hyperparameters()

    for step_grads in grads[k:]:
        set_grads(backend, params, step_grads, dtype)
        set_grads(backend, resumed_params, step_grads, dtype)
        opt.step()
        resumed.step()
    for a, b in zip(values(backend, params), values(backend, resumed_params)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("config", ["sgd-momentum-dampening", "adam"])
def test_a_parameter_not_yet_updated_at_the_save_starts_fresh_after_the_load(backend, config):
    """Its first update after the resume is a first update (SGD: b ← g; Adam: t = 1), as without
    the save; the others' state is loaded whole (state_dict() gives back what was loaded)."""
    cls, kwargs = CONFIGS[config]
    init, grads = make_problem()
    params = make_params(backend, init, "float64")
    opt = cls(params, **kwargs)
    set_grads(backend, params, [None, grads[0][1], grads[0][2]], "float64")
    opt.step()
    resumed_params = make_params(backend, values(backend, params), "float64")
    resumed = cls(resumed_params, **kwargs)
    resumed.load_state_dict(checkpoint_round_trip(backend, opt.state_dict()))
    saved, loaded = opt.state_dict()["state"], resumed.state_dict()["state"]
    assert sorted(loaded) == sorted(saved) == [1, 2]
    for i in saved:
        assert sorted(loaded[i]) == sorted(saved[i])
        for key, value in saved[i].items():
            np.testing.assert_array_equal(np.asarray(host(backend, loaded[i][key])), host(backend, value), err_msg=key)
    for step_grads in grads[1:3]:
        for ps, o in ((params, opt), (resumed_params, resumed)):
            set_grads(backend, ps, [g if g is not None else grads[0][2] for g in step_grads], "float64")
            o.step()
    for a, b in zip(values(backend, params), values(backend, resumed_params)):
        np.testing.assert_array_equal(a, b)


def test_load_takes_torchs_key_order_and_casts_to_the_parameters_dtype(backend):
    """torch puts "step" first in a parameter's state; arrays saved in float64 load into float32."""
    cpu = get_backend("cpu")
    init, grads = make_problem()
    source_params = make_params(cpu, init, "float64")
    source = Adam(source_params, lr=0.05)
    set_grads(cpu, source_params, grads[0], "float64")
    source.step()
    state = source.state_dict()
    state["state"] = {i: {"step": s["step"], "exp_avg": s["exp_avg"], "exp_avg_sq": s["exp_avg_sq"]}
                      for i, s in state["state"].items()}
    target = Adam(make_params(backend, init, "float32"))
    target.load_state_dict(state)
    for i, saved in state["state"].items():
        assert target.state[i]["step"] == 1
        for key in ("exp_avg", "exp_avg_sq"):
            assert target.state[i][key].dtype == backend.dtype("float32")
            np.testing.assert_array_equal(backend.to_numpy(target.state[i][key]), saved[key].astype(np.float32))


def test_state_dict_is_a_snapshot(backend):
    init, grads = make_problem()
    params = make_params(backend, init, "float64")
    opt = SGD(params, lr=0.1, momentum=0.9)
    set_grads(backend, params, grads[0], "float64")
    opt.step()
    state = opt.state_dict()
    before = backend.to_numpy(state["state"][0]["momentum_buffer"]).copy()
    set_grads(backend, params, grads[1], "float64")
    opt.step()
    np.testing.assert_array_equal(backend.to_numpy(state["state"][0]["momentum_buffer"]), before)


def test_load_accepts_device_arrays(backend):
    init, grads = make_problem()
    params = make_params(backend, init, "float64")
    opt = Adam(params, amsgrad=True)
    set_grads(backend, params, grads[0], "float64")
    opt.step()
    other = Adam(make_params(backend, values(backend, params), "float64"))
    other.load_state_dict(opt.state_dict())
    assert other.amsgrad and other.state[1]["step"] == 1


def adam_after_one_step(shapes=SHAPES, **kwargs):
    be = get_backend("cpu")
    params = make_params(be, [np.ones(s) for s in shapes], "float64")
    opt = Adam(params, **kwargs)
    for p in params:
        p.grad = np.full(p.shape, 0.5)
    opt.step()
    return opt


def test_load_refuses_another_optimizer_type():
    sgd_state = SGD(adam_after_one_step().params, lr=0.1).state_dict()
    with pytest.raises(ValueError, match="^cannot load optimizer state into Adam: the state was saved by SGD, expected Adam$"):
        adam_after_one_step().load_state_dict(sgd_state)
    with pytest.raises(ValueError, match="saved by Adam, expected AdamW"):
        AdamW(adam_after_one_step().params).load_state_dict(adam_after_one_step().state_dict())


def test_load_refuses_another_number_of_parameters():
    state = adam_after_one_step().state_dict()
    with pytest.raises(ValueError, match="state is for 3 parameters, this optimizer has 2"):
        adam_after_one_step(SHAPES[:2]).load_state_dict(state)


def test_load_refuses_other_shapes_and_changes_nothing():
    state = adam_after_one_step(lr=0.5).state_dict()
    target = adam_after_one_step([(3, 4), (5,), (2, 3, 2)])
    before = [dict(s) for s in target.state]
    with pytest.raises(ValueError, match=r"parameter 0 \(p0\): 'exp_\w+' has shape \(4, 3\), expected \(3, 4\)"):
        target.load_state_dict(state)
    assert target.lr == 1e-3 and target.state == before


def test_load_refuses_state_that_does_not_fit_the_hyperparameters():
    state = adam_after_one_step(amsgrad=True).state_dict()
    state["hyper"] = dict(state["hyper"], amsgrad=False)
    with pytest.raises(ValueError, match=r"has state \['exp_avg', 'exp_avg_sq', 'max_exp_avg_sq', 'step'\], "
                                         r"expected \['exp_avg', 'exp_avg_sq', 'step'\]"):
        adam_after_one_step().load_state_dict(state)


def test_load_refuses_malformed_dicts():
    opt = adam_after_one_step()
    good = opt.state_dict()
    with pytest.raises(ValueError, match=r"expected a dict from state_dict\(\), got list$"):
        opt.load_state_dict([1, 2])
    with pytest.raises(ValueError, match=r"missing key\(s\) \['num_params'\]"):
        opt.load_state_dict({k: v for k, v in good.items() if k != "num_params"})
    with pytest.raises(ValueError, match=r"hyperparameters .*'momentum'.*, expected \['amsgrad', 'betas'"):
        opt.load_state_dict(dict(good, hyper=SGD(opt.params, lr=1).hyperparameters()))
    with pytest.raises(ValueError, match="invalid learning rate"):
        opt.load_state_dict(dict(good, hyper=dict(good["hyper"], lr=-1.0)))
    for index in (7, 3, -1):  # 3: one past the last parameter
        with pytest.raises(ValueError, match=f"state for parameter {index}, but there are only 3"):
            opt.load_state_dict(dict(good, state={index: good["state"][0]}))
    with pytest.raises(ValueError, match=r"parameter 1 \(p1\): 'exp_avg' has shape \(\), expected \(5,\)"):
        opt.load_state_dict(dict(good, state={1: dict(good["state"][1], exp_avg=[0.5] * 5)}))  # a list, hand-edited


def test_load_names_an_unnamed_parameter_as_such():
    params = [Parameter(np.zeros(3))]
    opt = Adam(params)
    params[0].grad = np.ones(3)
    opt.step()
    state = opt.state_dict()
    del state["state"][0]["step"]
    with pytest.raises(ValueError, match=r"parameter 0 \(unnamed\) has state \['exp_avg', 'exp_avg_sq'\]"):
        opt.load_state_dict(state)


def test_repr_shows_the_parameter_count_and_every_hyperparameter():
    assert repr(SGD(one_param() + one_param(), lr=0.1, momentum=0.9)) == (
        "SGD(2 parameters, lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False)")
    assert repr(AdamW(one_param() + one_param())) == (
        "AdamW(2 parameters, lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01, amsgrad=False)")


# --- argument checks ------------------------------------------------------------------
def one_param():
    return [Parameter(np.zeros(3), name="w")]


# torch.optim's defaults, and one value other than the default for each hyperparameter.
DEFAULTS = {
    SGD: dict(momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),
    Adam: dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False),
    AdamW: dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False),
}
OTHERS = {
    SGD: dict(lr=0.25, momentum=0.5, dampening=0.0, weight_decay=0.125, nesterov=True),
    Adam: dict(lr=0.25, betas=(0.5, 0.75), eps=1e-6, weight_decay=0.125, amsgrad=True),
    AdamW: dict(lr=0.25, betas=(0.5, 0.75), eps=1e-6, weight_decay=0.125, amsgrad=True),
}


@pytest.mark.parametrize("cls", [SGD, Adam, AdamW])
def test_defaults_are_torchs_and_every_argument_is_kept(cls):
    if cls is SGD:  # SGD has no default learning rate, as in torch
        assert SGD(one_param(), lr=0.1).hyperparameters() == {"lr": 0.1, **DEFAULTS[SGD]}
    else:
        assert cls(one_param()).hyperparameters() == DEFAULTS[cls]
    assert cls(one_param(), **OTHERS[cls]).hyperparameters() == OTHERS[cls]


def test_the_ends_of_each_range_are_accepted():
    """0 is a valid learning rate, momentum, dampening, weight decay, beta and eps (only
    negative values, NaN and betas of 1 are refused); each still updates as torch would."""
    init, grads = make_problem()
    cpu = get_backend("cpu")
    for cls, kwargs in [(SGD, dict(lr=0.0, momentum=0.0, dampening=0.0, weight_decay=0.0)),
                        (Adam, dict(lr=0.05, betas=(0.0, 0.0), eps=0.0, weight_decay=0.0))]:
        params = make_params(cpu, init, "float64")
        opt = cls(params, **kwargs)
        for step_grads in grads:
            set_grads(cpu, params, step_grads, "float64")
            opt.step()
        for p, want in zip(params, REFERENCES[cls](init, grads, **kwargs)):
            np.testing.assert_allclose(p.data, want, rtol=1e-12, atol=1e-13)


def test_sgd_without_momentum_keeps_no_state():
    """Plain SGD needs no momentum buffer: none is allocated, and its checkpoint state is empty."""
    init, grads = make_problem()
    params = make_params(get_backend("cpu"), init, "float64")
    opt = SGD(params, lr=0.1)
    set_grads(get_backend("cpu"), params, grads[0], "float64")
    opt.step()
    assert opt.state == [{}, {}, {}] and opt.state_dict()["state"] == {}


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (SGD, dict(lr=-0.1), r"invalid learning rate \(lr\): -0.1; it must be >= 0"),
        (SGD, dict(lr=float("nan")), r"invalid learning rate"),
        (SGD, dict(lr=0.1, momentum=-0.5), r"invalid momentum: -0.5"),
        (SGD, dict(lr=0.1, weight_decay=-1), r"invalid weight_decay: -1.0"),
        (SGD, dict(lr=0.1, nesterov=True), r"Nesterov momentum requires momentum > 0 and dampening = 0, got momentum=0.0"),
        (SGD, dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), r"Nesterov .* dampening=0.1"),
        (Adam, dict(lr=-1), r"invalid learning rate"),
        (Adam, dict(betas=(1.0, 0.999)), r"invalid beta parameter at index 0: 1.0; it must be in \[0, 1\)"),
        (Adam, dict(betas=(0.9, -0.1)), r"invalid beta parameter at index 1: -0.1"),
        (Adam, dict(eps=-1e-8), r"invalid epsilon value \(eps\)"),
        (Adam, dict(weight_decay=-0.1), r"invalid weight_decay"),
        (AdamW, dict(betas=(0.9,)), r"betas must be a pair"),
        (AdamW, dict(weight_decay=-0.1), r"invalid weight_decay"),
    ],
)
def test_bad_arguments(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(one_param(), **kwargs)


@pytest.mark.parametrize("cls", [SGD, Adam, AdamW])
def test_bad_parameter_lists(cls):
    with pytest.raises(ValueError, match=r"^optimizer got an empty parameter list; pass model.parameters\(\)$"):
        cls([], lr=0.1)
    p = one_param()[0]
    with pytest.raises(ValueError, match="^a parameter appears more than once in the parameter list$"):
        cls([p, p], lr=0.1)
    with pytest.raises(TypeError, match=r"^parameter 0: expected a Parameter \(with .data and .grad\), got ndarray$"):
        cls([np.zeros(3)], lr=0.1)


def test_optim_imports_no_array_library():
    source = Path(__file__).resolve().parents[1] / "training" / "optim.py"
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"numpy", "cupy"}, imported


# --- against torch itself, where it happens to be installed -----------------------------
@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_torch(config):
    torch = pytest.importorskip("torch", reason="torch is not installed; the NumPy references stand in for it")
    cls, kwargs = CONFIGS[config]
    init, grads = make_problem()
    cpu = get_backend("cpu")
    params = make_params(cpu, init, "float64")
    opt = cls(params, **kwargs)
    tensors = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in init]
    torch_opt = getattr(torch.optim, cls.__name__)(tensors, **kwargs)
    for step_grads in grads:
        set_grads(cpu, params, step_grads, "float64")
        for tensor, g in zip(tensors, step_grads):
            tensor.grad = None if g is None else torch.tensor(g, dtype=torch.float64)
        opt.step()
        torch_opt.step()
    for p, tensor in zip(params, tensors):
        np.testing.assert_allclose(p.data, tensor.detach().numpy(), rtol=1e-10, atol=1e-12)
