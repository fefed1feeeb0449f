"""Training end to end: the models learn, checkpoints round-trip, resume is exact."""
from __future__ import annotations

import numpy as np
import pytest

import reference_nets as ref
from backends import get_backend
from layers import CrossEntropyLoss
from models import build_model
from training.checkpoint import load_checkpoint, save_checkpoint
from training.data import DataLoader, channel_stats
from training.errors import CheckpointError, TrainingDiverged
from training.metrics import accuracy, confusion_matrix, per_class_accuracy
from training.optim import SGD, Adam
from training.trainer import Trainer


def separable_images(rng, n: int):
    """Random uint8 images whose class is written as a bright square at one of 10 places."""
    labels = rng.integers(0, 10, size=n)
    images = rng.integers(0, 120, size=(n, 3, 32, 32), dtype=np.uint8)
    for digit in range(10):
        row, column = 4 + 12 * (digit // 5), 2 + 6 * (digit % 5)
        images[labels == digit, :, row:row + 6, column:column + 5] = 250
    return images, labels.astype(np.int64)


def separable_loader(rng, n: int, batch_size: int, backend=None):
    """A DataLoader over ``separable_images``, normalised with their own statistics."""
    images, labels = separable_images(rng, n)
    mean, std = channel_stats(images)
    return DataLoader(images, labels, batch_size, backend or get_backend("cpu"), mean, std, seed=0)


def held_out_loader(rng, n: int, train_loader):
    """Other images of the same kind, in order, normalised with the training set's statistics."""
    images, labels = separable_images(rng, n)
    return DataLoader(images, labels, 100, train_loader.backend, train_loader.mean, train_loader.std, shuffle=False)


def test_lnet_learns_separable_data(backend, rng):
    """A few hundred steps of LNet: the loss falls and the accuracy on images it never saw
    ends far above chance, as a NumPy forward pass of the final weights confirms."""
    loader = separable_loader(rng, 512, 32, backend)
    test_loader = held_out_loader(rng, 200, loader)
    model = build_model("lnet", seed=0).to(backend)
    trainer = Trainer(model, SGD(model.parameters(), lr=0.05, momentum=0.9), backend, progress=False, log=lambda m: None)
    history = trainer.fit(loader, test_loader, epochs=12 if backend.name != "strict" else 6)
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["test_acc"] > 0.9
    weights = {p.name: backend.to_numpy(p.data) for p in model.parameters()}
    logits = ref.forward("lnet", weights, ref.normalise(test_loader.images, loader.mean, loader.std))
    assert abs(history[-1]["test_acc"] - np.mean(logits.argmax(axis=1) == test_loader.labels)) <= ref.ambiguous(logits).mean()


def test_learning_on_synthetic_digits(tmp_path, monkeypatch):
    """The embedded default data set: a short LNet run learns far above 10 %."""
    monkeypatch.setenv("XPNET_CACHE", str(tmp_path))
    from training.data.synthetic import make_synthetic

    train, test = make_synthetic(3000, 500, seed=0)
    backend = get_backend("cpu")
    mean, std = channel_stats(train.images)
    train_loader = DataLoader(train.images, train.labels, 64, backend, mean, std, seed=0)
    test_loader = DataLoader(test.images, test.labels, 250, backend, mean, std, shuffle=False)
    model = build_model("lnet", seed=0)
    trainer = Trainer(model, Adam(model.parameters(), lr=2e-3), backend, progress=False, log=lambda m: None)
    history = trainer.fit(train_loader, test_loader, epochs=3)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["test_acc"] > 0.6, history  # about 0.75
    weights = {p.name: p.data for p in model.parameters()}
    logits = ref.forward("lnet", weights, ref.normalise(test.images, mean, std))
    assert abs(history[-1]["test_acc"] - np.mean(logits.argmax(axis=1) == test.labels)) <= ref.ambiguous(logits).mean()
    assert history[-1]["test_loss"] == pytest.approx(ref.cross_entropy(logits, test.labels), rel=1e-5)


def test_trainer_history_rows_and_output_files(tmp_path, rng):
    backend = get_backend("cpu")
    loader = separable_loader(rng, 96, 32)
    test_loader = held_out_loader(rng, 150, loader)
    model = build_model("mlp", seed=0)
    messages = []
    trainer = Trainer(model, Adam(model.parameters()), backend, out_dir=tmp_path, progress=False, log=messages.append)
    history = trainer.fit(loader, test_loader, epochs=2)
    assert [row["epoch"] for row in history] == [1, 2]
    for row in history:
        assert set(row) == {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "examples_per_sec", "seconds"}
        assert row["examples_per_sec"] > 0
    # The last row's test numbers are those of the weights in checkpoint.npz, on the held-out images.
    logits = ref.forward("mlp", load_checkpoint(tmp_path / "checkpoint.npz").params,
                         ref.normalise(test_loader.images, loader.mean, loader.std))
    # (the loss is small here, about 2e-4: float32's absolute rounding of each log-probability is what remains)
    assert history[-1]["test_loss"] == pytest.approx(ref.cross_entropy(logits, test_loader.labels), rel=1e-5, abs=1e-7)
    assert abs(history[-1]["test_acc"] - np.mean(logits.argmax(axis=1) == test_loader.labels)) <= ref.ambiguous(logits).mean()
    assert {p.name for p in tmp_path.iterdir()} == {"checkpoint.npz", "best.npz", "metrics.json", "curves.png", "confusion.png",
                                                   "mistakes.png", "filters.png"}
    assert any(message.startswith("epoch 2/2") for message in messages)
    assert load_checkpoint(tmp_path / "checkpoint.npz").epoch == 2


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning")
def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, rng):
    backend = get_backend("cpu")
    loader = separable_loader(rng, 64, 16)
    model = build_model("mlp", seed=0)
    optimizer = SGD(model.parameters(), lr=0.01)
    trainer = Trainer(model, optimizer, backend, out_dir=tmp_path, progress=False, log=lambda m: None, refresh_every=1)
    trainer.fit(loader, loader, epochs=1)
    good = (tmp_path / "checkpoint.npz").read_bytes()
    optimizer.lr = 1e12
    with pytest.raises(TrainingDiverged, match=r"became (nan|inf).*try a smaller --lr.*is intact"):
        trainer.fit(loader, loader, epochs=3, start_epoch=1)
    assert (tmp_path / "checkpoint.npz").read_bytes() == good


# -- checkpoints -------------------------------------------------------------------------------
def trained_pair(backend, steps=3):
    model = build_model("lnet", seed=1).to(backend)
    optimizer = Adam(model.parameters(), lr=1e-3, amsgrad=True)
    rng = np.random.default_rng(0)
    loss = CrossEntropyLoss()
    for _ in range(steps):
        x = backend.asarray(rng.standard_normal((4, 3, 32, 32)), dtype="float32")
        loss.forward(model.forward(x), backend.asarray(rng.integers(0, 10, 4)))
        model.backward(loss.backward(), input_grad=False)
        optimizer.step()
    return model, optimizer


def test_checkpoint_round_trip(backend, tmp_path):
    model, optimizer = trained_pair(backend)
    history = [{"epoch": 1, "test_acc": 0.5}]
    save_checkpoint(tmp_path / "c.npz", model, optimizer, epoch=1, backend=backend, config={"lr": 1e-3}, history=history)
    checkpoint = load_checkpoint(tmp_path / "c.npz")
    assert checkpoint.epoch == 1 and checkpoint.config == {"lr": 1e-3} and checkpoint.history == history
    fresh = build_model("lnet", seed=9).to(backend)
    fresh_optimizer = Adam(fresh.parameters(), lr=0.5)
    checkpoint.restore_model(fresh, backend)
    checkpoint.restore_optimizer(fresh_optimizer)
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        np.testing.assert_array_equal(backend.to_numpy(a.data), backend.to_numpy(b.data))
    assert fresh_optimizer.lr == 1e-3 and fresh_optimizer.amsgrad
    assert fresh_optimizer.state[0]["step"] == 3
    # Every moment array (exp_avg, exp_avg_sq, max_exp_avg_sq) of every parameter came back.
    saved, restored = optimizer.state_dict()["state"], fresh_optimizer.state_dict()["state"]
    assert sorted(saved) == sorted(restored) == list(range(len(model.parameters())))
    for index, entries in saved.items():
        assert set(restored[index]) == set(entries) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
        for key, value in entries.items():
            got, want = restored[index][key], value
            if key != "step":
                got, want = backend.to_numpy(got), backend.to_numpy(want)
                assert np.any(want != 0), f"{key} of parameter {index} is all zero: the test would not see a lost state"
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=f"{key} of parameter {index}")


def test_checkpoint_of_another_model_is_refused(tmp_path):
    cpu = get_backend("cpu")
    model, optimizer = trained_pair(cpu, steps=1)
    save_checkpoint(tmp_path / "lnet.npz", model, optimizer, epoch=1, backend=cpu)
    with pytest.raises(CheckpointError, match="checkpoint of model 'lnet', not 'mlp'; use --model lnet"):
        load_checkpoint(tmp_path / "lnet.npz").restore_model(build_model("mlp"), cpu)
    checkpoint = load_checkpoint(tmp_path / "lnet.npz")
    checkpoint.params["9.weight"] = np.zeros((12, 256), dtype=np.float32)
    with pytest.raises(CheckpointError, match=r"9.weight: saved \(12, 256\), model has \(10, 256\)"):
        checkpoint.restore_model(build_model("lnet"), cpu)


def test_checkpoint_with_another_optimizer_is_refused(tmp_path):
    path, model, _ = saved_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="saved by Adam, expected SGD"):
        load_checkpoint(path).restore_optimizer(SGD(model.parameters(), lr=0.1))


def saved_checkpoint(folder):
    """(path, model, optimizer) of a one-step LNet checkpoint written to ``folder``/c.npz."""
    cpu = get_backend("cpu")
    model, optimizer = trained_pair(cpu, steps=1)
    path = folder / "c.npz"
    save_checkpoint(path, model, optimizer, epoch=1, backend=cpu)
    return path, model, optimizer


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "missing"])
def test_damaged_checkpoints_are_clear_errors(tmp_path, damage):
    path, _, _ = saved_checkpoint(tmp_path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(bytes(range(256)) * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
    with pytest.raises(CheckpointError, match="corrupt|truncated|does not exist|not a readable"):
        load_checkpoint(path)


def test_pickled_checkpoint_is_refused_not_unpickled(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, meta=np.array("{}"), payload=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(path)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    cpu = get_backend("cpu")
    path, model, optimizer = saved_checkpoint(tmp_path)
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device; the previous checkpoint .* is unchanged"):
        save_checkpoint(path, model, optimizer, epoch=2, backend=cpu)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temporary file left behind


# -- metrics --------------------------------------------------------------------------------------
def test_metrics():
    predictions, labels = np.array([0, 1, 1, 2, 2, 2]), np.array([0, 1, 2, 2, 2, 0])
    assert accuracy(predictions, labels) == pytest.approx(4 / 6)
    confusion = confusion_matrix(predictions, labels, 4)
    assert confusion.tolist() == [[1, 0, 1, 0], [0, 1, 0, 0], [0, 1, 2, 0], [0, 0, 0, 0]]
    per_class = per_class_accuracy(confusion)
    np.testing.assert_allclose(per_class[:3], [0.5, 1.0, 2 / 3])
    assert np.isnan(per_class[3])
    with pytest.raises(ValueError, match="differ in length"):
        accuracy([1, 2], [1])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\]"):
        confusion_matrix([0], [7], 4)
