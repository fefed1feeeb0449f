"""--layer-stats: per-layer activation mean/std, gradient norms and update-to-weight ratios, recomputed here
independently; recorded on the device with no copy inside a step, read once per epoch; the training itself
unchanged; metrics.json's layer_stats and layers.png written by a run."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import backend_or_skip, call_cli, run_quietly

from backends.counting import count_operations
from layers import CrossEntropyLoss, Linear, ReLU
from models import Model, build_model
from training.data.loader import DataLoader
from training.loop.layer_stats import LayerStats
from training.loop.trainer import Trainer
from training.optim import SGD, Adam


class Tiny(Model):
    name = "tiny"
    input_shape = (5,)
    num_classes = 3

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        super().__init__(Linear(5, 4, rng=rng), ReLU(), Linear(4, 3, rng=rng))


def host(backend, array):
    return np.array(backend.to_numpy(array), dtype=np.float64)


def test_every_number_matches_a_recomputation(backend):
    model = Tiny().to(backend, "float64")
    optimizer = SGD(model.parameters(), lr=0.3, momentum=0.9)
    loss = CrossEntropyLoss()
    stats = LayerStats(model, backend, every=2)
    rng = np.random.default_rng(1)
    expected = []
    for step in range(5):
        x, y = backend.asarray(rng.standard_normal((6, 5))), backend.asarray(rng.integers(0, 3, 6))
        due = stats.due(step)
        assert due == (step % 2 == 0)
        if due:
            activations, h = [], host(backend, x)
            for layer in model.layers:  # the outputs, by NumPy, from the weights
                h = layer.forward(backend.asarray(h))
                activations.append(host(backend, h))
            h = host(backend, x)
            w0, b0, w1, b1 = (host(backend, p.data) for p in model.parameters())
            by_hand = [h @ w0.T + b0]
            by_hand += [np.maximum(by_hand[0], 0)]
            by_hand += [by_hand[1] @ w1.T + b1]
            for mine, theirs in zip(activations, by_hand):
                np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-12)
        logits = stats.forward(x) if due else model.forward(x)
        loss.forward(logits, y)
        model.backward(loss.backward(), input_grad=False)
        if due:
            grads = [host(backend, p.grad) for p in model.parameters()]
            before = [host(backend, p.data) for p in model.parameters()]
            stats.before_update()
        optimizer.step()
        if due:
            stats.after_update(step)
            after = [host(backend, p.data) for p in model.parameters()]
            expected.append((by_hand, grads, before, after))
    stats.read()
    document = json.loads(json.dumps(stats.as_dict()))  # it is JSON
    assert document["every"] == 2 and document["steps"] == [0, 2, 4]
    layers = document["layers"]
    assert [layer["name"] for layer in layers] == ["0: Linear", "1: ReLU", "2: Linear"]
    assert layers[1]["grad_norm"] is None and layers[1]["parameters"] == {}
    assert list(layers[2]["parameters"]) == ["2.weight", "2.bias"]
    for row, (outputs, grads, before, after) in enumerate(expected):
        for index, output in enumerate(outputs):
            assert layers[index]["activation_mean"][row] == pytest.approx(output.mean(), rel=1e-9, abs=1e-12)
            assert layers[index]["activation_std"][row] == pytest.approx(output.std(), rel=1e-9)
        for index, (first, second) in ((0, (0, 1)), (2, (2, 3))):
            grad = np.sqrt(np.sum(grads[first] ** 2) + np.sum(grads[second] ** 2))
            assert layers[index]["grad_norm"][row] == pytest.approx(grad, rel=1e-9)
            change = np.sqrt(sum(np.sum((after[k] - before[k]) ** 2) for k in (first, second)))
            weight = np.sqrt(sum(np.sum(before[k] ** 2) for k in (first, second)))
            assert layers[index]["update_ratio"][row] == pytest.approx(change / weight, rel=1e-9)
            name = f"{index}.weight"
            ratio = np.linalg.norm(after[first] - before[first]) / np.linalg.norm(before[first])
            assert layers[index]["parameters"][name]["update_ratio"][row] == pytest.approx(ratio, rel=1e-9)
            assert layers[index]["parameters"][name]["grad_norm"][row] == pytest.approx(np.linalg.norm(grads[first]), rel=1e-9)


def loader_for(model, backend, batch, seed=0, batches=4):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(batches * batch, *model.input_shape), dtype=np.uint8)
    labels = rng.integers(0, model.num_classes, size=batches * batch)
    return DataLoader(images, labels, batch, backend, mean=[0.5] * 3, std=[0.25] * 3, shuffle=True, seed=seed)


def test_training_is_the_same_with_statistics_on():
    """The statistics watch; they change nothing: the same weights, bit for bit, after an epoch."""
    from backends import get_backend

    backend = get_backend("cpu")
    weights = []
    for every in (None, 1):
        model = build_model("lnet", seed=0)
        trainer = Trainer(model, Adam(model.parameters()), backend, progress=False, log=lambda _: None,
                          layer_stats=None if every is None else LayerStats(model, backend, every))
        loader = loader_for(model, backend, 16)
        loader.set_epoch(1)
        trainer._train_epoch(loader, 1, 1)
        weights.append([np.array(backend.to_numpy(p.data)) for p in model.parameters()])
        if every:
            assert trainer.layer_stats.steps == [0, 1, 2, 3]  # read at the end of the epoch
    for plain, watched in zip(*weights, strict=True):
        np.testing.assert_array_equal(watched, plain)


@pytest.mark.parametrize("model_name", ["lnet", "mlp"])
def test_launches_unchanged_when_off_bounded_when_on_and_no_copy_inside_a_step(model_name):
    strict = backend_or_skip("strict")
    counts = {}
    for every in (None, 2):
        model = build_model(model_name, seed=0, backend=strict)
        stats = None if every is None else LayerStats(model, strict, every)
        trainer = Trainer(model, Adam(model.parameters()), strict, progress=False, log=lambda _: None,
                          refresh_every=10**9, layer_stats=stats)
        loader = loader_for(model, strict, 16, batches=6)
        loader.set_epoch(1)
        batches = iter(loader)
        trainer.train_step(*next(batches))  # step 0 (recorded when on): state and buffers made once
        trainer.train_step(*next(batches))  # step 1
        for label in ("due", "not due"):  # steps 2 and 3
            x, y = next(batches)
            with count_operations() as count:
                trainer.train_step(x, y)
            counts[every, label] = count
        if stats is not None:
            with count_operations() as one_copy:
                strict.to_numpy(strict.xp.asarray([1.0]))
            with count_operations() as count:
                stats.read()
            assert count.transfers == one_copy.transfers, count  # the whole epoch's rows in one copy
            assert stats.steps == [0, 2]
    off, on, quiet = counts[None, "due"], counts[2, "due"], counts[2, "not due"]
    assert off.operations == counts[None, "not due"].operations
    assert quiet.operations == off.operations, "a step that records nothing must cost nothing extra"
    assert on.transfers == quiet.transfers == off.transfers == 0
    model = build_model(model_name, seed=0)
    layers, parameters = len(model.layers), len(model.parameters())
    # mean and std per layer; per parameter |g|², |Δθ|², |θ|²; the copy and difference of the flat buffer; the stack
    assert on.operations - off.operations <= 2 * layers + 3 * parameters + 3, (on, off)


def test_a_run_writes_layer_stats_and_layers_png(tmp_path):
    out = tmp_path / "run"
    result = call_cli(["--model", "mlp", "--epochs", "2", "--train-size", "256", "--test-size", "64", "--device", "cpu",
                       "--batch-size", "64", "--layer-stats", "3", "--out", str(out), "--quiet"])
    assert result.code == 0, result.err
    assert "layers.png" in result.out
    document = json.loads((out / "metrics.json").read_text())
    stats = document["layer_stats"]
    assert stats["every"] == 3 and stats["steps"] == [0, 3, 6]  # 4 steps an epoch, 2 epochs
    assert [layer["name"] for layer in stats["layers"]] == ["0: Flatten", "1: Linear", "2: ReLU", "3: Linear"]
    assert all(len(layer["activation_std"]) == 3 for layer in stats["layers"])
    png = (out / "layers.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_without_the_flag_no_statistics_and_a_wrong_value_is_one_error_line(tmp_path):
    out = tmp_path / "run"
    result = call_cli(["--model", "mlp", "--epochs", "1", "--train-size", "128", "--test-size", "64", "--device", "cpu",
                       "--out", str(out), "--quiet"])
    assert result.code == 0 and not (out / "layers.png").exists()
    assert "layer_stats" not in json.loads((out / "metrics.json").read_text())
    code, _, err = run_quietly(["--layer-stats", "-1", "--out", str(tmp_path / "bad")])
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "python cli.py: error: argument --layer-stats: must be zero or positive, got -1"


def test_layer_stats_refuses_a_nonsense_interval():
    with pytest.raises(ValueError, match="whole number of steps"):
        LayerStats(Tiny(), None, every=0)


def test_a_resumed_run_keeps_the_statistics_from_before_the_resume(tmp_path):
    """Stopped after epoch 1 and resumed to 2: the same layer_stats as the run that went straight through."""
    common = ["--model", "mlp", "--train-size", "256", "--test-size", "64", "--device", "cpu", "--batch-size", "64",
              "--layer-stats", "3", "--quiet"]
    assert call_cli([*common, "--epochs", "2", "--out", str(tmp_path / "straight")]).code == 0
    assert call_cli([*common, "--epochs", "1", "--out", str(tmp_path / "stopped")]).code == 0
    resumed = call_cli([*common, "--epochs", "2", "--resume", str(tmp_path / "stopped" / "checkpoint.npz")])
    assert resumed.code == 0, resumed.err
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())["layer_stats"]
    continued = json.loads((tmp_path / "stopped" / "metrics.json").read_text())["layer_stats"]
    assert continued["steps"] == [0, 3, 6]
    assert continued == straight


def test_statistics_of_another_interval_are_not_continued():
    stats = LayerStats(Tiny(), None, every=2)
    earlier = {"every": 3, "steps": [0, 3], "layers": []}
    assert not stats.continue_from(earlier, before_step=4) and not stats.continue_from(None, before_step=4)
    assert stats.as_dict()["steps"] == []
