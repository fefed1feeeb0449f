"""CrossEntropyLoss: the reference against the definition, both engines under every policy against
it, the gradient against finite differences (every backend and engine), misuse, launches per pass."""
from __future__ import annotations

import numpy as np
import pytest
from engine_check import check_engines, host
from helpers import MAX_RELATIVE_ERROR, backend_or_skip, numerical_gradient, reference_cross_entropy, relative_error

from backends import get_backend
from backends.counting import count_operations
from layers import CrossEntropyLoss
from layers.loss import ENGINES, LossParams, cross_entropy_reference


def test_cross_entropy_value_and_stability(backend, dtype):
    logits = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]])
    labels = backend.asarray(np.array([0, 1]))
    loss = CrossEntropyLoss()
    value = float(backend.to_numpy(loss.forward(backend.asarray(logits, dtype=dtype), labels)))
    expected = (0.0 + (np.log(np.exp([1.0, 2.0, 3.0]).sum()) - 2.0)) / 2
    assert np.isfinite(value)
    assert abs(value - expected) < (1e-12 if dtype == "float64" else 1e-5)
    grad = backend.to_numpy(loss.backward())
    assert np.all(np.isfinite(grad)) and grad.shape == (2, 3)


def test_cross_entropy_bad_labels(backend):
    loss = CrossEntropyLoss()
    logits = backend.asarray(np.zeros((2, 10)), dtype="float32")
    with pytest.raises(ValueError, match=r"labels must be in \[0, 9\], found values from 3 to 10"):
        loss.forward(logits, backend.asarray(np.array([3, 10])))
    with pytest.raises(TypeError, match="integer class labels"):
        loss.forward(logits, backend.asarray(np.array([1.0, 2.0])))
    with pytest.raises(ValueError, match=r"labels \(N,\) = \(2,\)"):
        loss.forward(logits, backend.asarray(np.array([1, 2, 3])))
    with pytest.raises(RuntimeError, match="before forward"):
        CrossEntropyLoss().backward()


def test_cross_entropy_refuses_malformed_logits(backend):
    loss = CrossEntropyLoss()
    labels = backend.asarray(np.array([1, 2]))
    with pytest.raises(ValueError, match=r"expects logits \(N, C\), got \(2, 3, 4\)"):
        loss.forward(backend.asarray(np.zeros((2, 3, 4)), dtype="float32"), labels)
    with pytest.raises(ValueError, match=r"expects logits \(N, C\), got \(10,\)"):
        loss.forward(backend.asarray(np.zeros(10), dtype="float32"), labels)
    with pytest.raises(TypeError, match="expects float logits, got .*int64"):
        loss.forward(backend.asarray(np.zeros((2, 10), dtype=np.int64)), labels)
    assert loss._cache is None  # nothing half-done was kept for backward


def test_cross_entropy_refuses_labels_of_another_kind_or_device(backend):
    loss = CrossEntropyLoss()
    logits = backend.asarray(np.zeros((2, 10)), dtype="float32")
    with pytest.raises(TypeError, match=r"labels must be an array on the same device as the logits .* got list"):
        loss.forward(logits, [1, 2])
    if backend.name != "cpu":  # a NumPy array is another device's (or another library's) array there
        with pytest.raises(TypeError, match="same device as the logits.*got ndarray"):
            loss.forward(logits, np.array([1, 2]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 9\], found values from -1 to 2"):
        loss.forward(logits, backend.asarray(np.array([-1, 2])))
    with pytest.raises(ValueError, match=r"labels \(N,\) = \(2,\) for logits \(2, 10\), got \(2, 1\)"):
        loss.forward(logits, backend.asarray(np.array([[1], [2]])))


def test_cross_entropy_call_and_unchecked_labels_give_the_forward_value(backend):
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0], [1.0, 1.0, 1.0]])
    labels = np.array([0, 2, 1])
    expected = reference_cross_entropy(logits, labels)
    for loss in (CrossEntropyLoss(), CrossEntropyLoss(check_labels=False)):
        value = loss(backend.asarray(logits, dtype="float64"), backend.asarray(labels))
        assert float(backend.to_numpy(value)) == pytest.approx(expected, rel=1e-12)
    assert repr(CrossEntropyLoss()) == "CrossEntropyLoss()"


def test_cross_entropy_matches_the_reference(policy):
    rng = np.random.default_rng(8)
    logits = rng.standard_normal((7, 5)) * 4
    logits[0] = [1000.0, 0.0, -1000.0, 3.0, 2.0]  # the stable form must not overflow
    labels = np.array([0, 4, 1, 1, 3, 2, 0])
    loss = CrossEntropyLoss()
    value = host(policy, loss.forward(policy.asarray(logits), policy.asarray(labels)))
    grad = host(policy, loss.backward(2.5))
    xp = get_backend("cpu").xp
    expected_value, expected_grad = cross_entropy_reference(xp, logits, labels)
    np.testing.assert_allclose(value, expected_value, rtol=1e-13)
    np.testing.assert_allclose(grad, 2.5 * expected_grad, rtol=1e-13, atol=1e-15)


def test_cross_entropy_reference_is_the_definition():
    rng = np.random.default_rng(9)
    logits, labels = rng.standard_normal((6, 4)), np.array([3, 0, 1, 2, 2, 1])
    value, grad = cross_entropy_reference(get_backend("cpu").xp, logits, labels)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert value == pytest.approx(-np.mean(np.log(probabilities[np.arange(6), labels])), rel=1e-13)
    onehot = np.eye(4)[labels]
    np.testing.assert_allclose(grad, (probabilities - onehot) / 6, rtol=1e-12)


@pytest.mark.parametrize("batch, classes", [(1, 3), (5, 10)])
def test_cross_entropy_gradient(any_engine, rng, batch, classes):
    backend = any_engine
    logits_host = rng.standard_normal((batch, classes)) * 3
    labels = backend.asarray(rng.integers(0, classes, size=batch))
    loss = CrossEntropyLoss().to(backend)  # moved: it runs the engine of ``backend``

    def objective() -> float:
        return float(backend.to_numpy(loss.forward(backend.asarray(logits_host), labels)))

    objective()
    analytic = backend.to_numpy(loss.backward())
    numeric = numerical_gradient(objective, logits_host)
    assert relative_error(analytic, numeric) < MAX_RELATIVE_ERROR


@pytest.mark.parametrize("n, classes", [(7, 5), (1, 3), (40, 10)])
def test_every_loss_engine_matches_the_reference_through_the_interface(policy, n, classes):
    """LossReference and FusedLoss under this policy; backward scaled by dloss = 2.5."""
    rng = np.random.default_rng(15)
    logits = rng.standard_normal((n, classes)) * 4
    logits[0, :2] = [1000.0, -1000.0]  # the stable form must not overflow
    labels = rng.integers(0, classes, n)
    check_engines(ENGINES, policy, lambda backend: LossParams(backend.asarray(labels)), logits, 2.5,
                  rtol=1e-13, atol=1e-15)


def test_reference_engine_runs_when_the_loss_is_moved_to_its_backend():
    """A loss moved to a backend with engine="reference" runs LossReference (one launch per array operation)."""
    strict = backend_or_skip("strict")
    reference = get_backend("strict", engine="reference")
    logits = strict.asarray(np.random.default_rng(0).standard_normal((5, 4)))
    labels = strict.asarray(np.array([0, 1, 2, 3, 0]))
    counts = {}
    for name, backend in (("fast", strict), ("reference", reference)):
        loss = CrossEntropyLoss(check_labels=False).to(backend)
        loss.forward(logits, labels)  # the row of class numbers is made once, not counted below
        with count_operations() as counted:
            value = loss.forward(logits, labels)
        counts[name] = counted.operations
        np.testing.assert_allclose(host(strict, value), cross_entropy_reference(get_backend("cpu").xp,
                                   host(strict, logits), np.array([0, 1, 2, 3, 0]))[0], rtol=1e-13)
    assert counts["fast"] == 3 and counts["reference"] > 3


def test_loss_launches_per_pass():
    """A row maximum and three fused kernels in all: three forward, one backward."""
    strict = backend_or_skip("strict")
    loss = CrossEntropyLoss(check_labels=False)
    logits = strict.asarray(np.random.default_rng(0).standard_normal((16, 10)), dtype="float32")
    labels = strict.asarray(np.arange(16) % 10)
    loss.forward(logits, labels)  # the row of class numbers is made once, not counted below
    with count_operations() as forward:
        loss.forward(logits, labels)
    with count_operations() as backward:
        loss.backward()
    assert (forward.operations, backward.operations) == (3, 1)


def test_cross_entropy_checks_the_label_of_a_single_example_and_lets_an_empty_batch_through(backend):
    loss = CrossEntropyLoss()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\], found values from 3 to 3"):
        loss.forward(backend.asarray(np.zeros((1, 3)), dtype="float32"), backend.asarray(np.array([3])))
    loss.forward(backend.asarray(np.zeros((0, 3)), dtype="float32"), backend.asarray(np.zeros(0, dtype=np.int64)))
    assert tuple(loss.backward().shape) == (0, 3)


@pytest.mark.parametrize("engine", ["reference", "cpu", "launch_bound"])
def test_an_empty_batch_has_loss_zero_on_every_engine(engine):
    """A sum over no examples is 0, and no gradient: the reference and the fused engines agree (no 0/0)."""
    from layers.engine import Workspace

    backend = get_backend("cpu")
    chosen, params = getattr(ENGINES, engine), LossParams(backend.asarray(np.zeros(0, dtype=np.int64)))
    work = Workspace(backend)
    value, saved = chosen.forward(backend.xp, backend.asarray(np.zeros((0, 3)), dtype="float32"), params, work)
    assert float(backend.to_numpy(value)) == 0.0
    dx, _ = chosen.backward(backend.xp, 1.0, saved, params, work)
    assert tuple(dx.shape) == (0, 3)


def test_one_loss_serves_other_class_counts_label_dtypes_and_backends():
    """Its workspace is per backend and its class row per class count and label dtype."""
    loss = CrossEntropyLoss()
    for name, classes, label_dtype in [("cpu", 3, np.int64), ("cpu", 5, np.int64), ("cpu", 5, np.int32),
                                       ("strict", 5, np.int64), ("cpu", 3, np.int64)]:
        backend = backend_or_skip(name)
        logits = np.linspace(-2.0, 2.0, 4 * classes).reshape(4, classes)
        labels = np.arange(4) % classes
        value = loss.forward(backend.asarray(logits), backend.asarray(labels.astype(label_dtype)))
        assert float(backend.to_numpy(value)) == pytest.approx(reference_cross_entropy(logits, labels), rel=1e-12), (name, classes)


def test_cross_entropy_misuse_messages_in_full():
    with pytest.raises(RuntimeError, match=r"^CrossEntropyLoss.backward called before forward$"):
        CrossEntropyLoss().backward()
    with pytest.raises(TypeError, match=r"^CrossEntropyLoss expects logits as an array of a backend \(NumPy, CuPy or "
                                        r"array-api-strict\), got list$"):
        CrossEntropyLoss().forward([[0.0, 1.0]], [1])
    with pytest.raises(TypeError, match=r"^CrossEntropyLoss: labels must be an array on the same device as the logits "
                                        r"\(ndarray\), got list$"):
        CrossEntropyLoss().forward(np.zeros((1, 2)), [1])
