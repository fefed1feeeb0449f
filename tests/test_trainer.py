"""The Trainer (training/trainer.py): the models learn, each epoch's history row and the files of
a run, a diverging loss stops the run and never saves broken weights, a tie for the best epoch, and
metrics.json that cannot be written."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import (
    SMALL,
    ambiguous,
    one_error_line,
    reference_channel_stats,
    reference_cross_entropy,
    reference_forward,
    reference_normalise,
    run,
)

from backends import get_backend
from models import build_model
from training.data import DataLoader, channel_stats
from training.errors import TrainingDiverged, XpnetError, settings_named
from training.loop.trainer import Trainer
from training.optim import SGD, Adam
from training.saving.checkpoint import load_checkpoint
from training.saving.metrics_file import write_metrics


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
    logits = reference_forward("lnet", weights, reference_normalise(test_loader.images, loader.mean, loader.std))
    assert abs(history[-1]["test_acc"] - np.mean(logits.argmax(axis=1) == test_loader.labels)) <= ambiguous(logits).mean()


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
    logits = reference_forward("lnet", weights, reference_normalise(test.images, mean, std))
    assert abs(history[-1]["test_acc"] - np.mean(logits.argmax(axis=1) == test.labels)) <= ambiguous(logits).mean()
    assert history[-1]["test_loss"] == pytest.approx(reference_cross_entropy(logits, test.labels), rel=1e-5)


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
    logits = reference_forward("mlp", load_checkpoint(tmp_path / "checkpoint.npz").params,
                         reference_normalise(test_loader.images, loader.mean, loader.std))
    # (the loss is small here, about 2e-4: float32's absolute rounding of each log-probability is what remains)
    assert history[-1]["test_loss"] == pytest.approx(reference_cross_entropy(logits, test_loader.labels), rel=1e-5, abs=1e-7)
    assert abs(history[-1]["test_acc"] - np.mean(logits.argmax(axis=1) == test_loader.labels)) <= ambiguous(logits).mean()
    assert {p.name for p in tmp_path.iterdir()} == {"checkpoint.npz", "best.npz", "metrics.json", "curves.png", "confusion.png",
                                                   "mistakes.png", "filters.png"}
    assert any(message.startswith("epoch 2/2") for message in messages)
    assert load_checkpoint(tmp_path / "checkpoint.npz").epoch == 2


def test_a_tied_best_accuracy_keeps_the_first_epoch_in_best_npz_and_best_epoch(svhn_patches, tmp_path):
    """With a learning rate too small to change a float32 weight, every epoch has the same test
    accuracy: the best epoch is the first one, in metrics.json and in best.npz alike."""
    from training.data import DataLoader
    from training.loop.trainer import Trainer
    from training.optim import SGD

    _, arrays = svhn_patches
    cpu = get_backend("cpu")
    mean, std = reference_channel_stats(arrays["train"][0])
    train = DataLoader(*arrays["train"], 32, cpu, mean, std, seed=0)
    test = DataLoader(*arrays["test"], 100, cpu, mean, std, shuffle=False)
    model = build_model("mlp", seed=0)
    trainer = Trainer(model, SGD(model.parameters(), lr=1e-30), cpu, out_dir=tmp_path, progress=False, log=lambda m: None)
    history = trainer.fit(train, test, epochs=3)
    assert len({row["test_acc"] for row in history}) == 1  # a tie
    assert json.loads((tmp_path / "metrics.json").read_text())["best_epoch"] == 1
    assert load_checkpoint(tmp_path / "best.npz").epoch == 1


def test_write_metrics_failure_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "metrics.json"
    with pytest.raises(XpnetError, match=rf"cannot write {path}: .*choose a writable folder with 'out'"):
        write_metrics(path, {}, [{"epoch": 1, "test_acc": 0.5}])
    with settings_named(lambda name: f"--{name}"), pytest.raises(XpnetError, match="choose a writable folder with --out"):
        write_metrics(path, {}, [{"epoch": 1, "test_acc": 0.5}])  # the command line names the setting by its flag


# -- the loss becomes NaN or infinite --------------------------------------------------------------
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
    with pytest.raises(TrainingDiverged, match=r"became (nan|inf).*try a smaller 'lr'.*is intact"):
        trainer.fit(loader, loader, epochs=3, start_epoch=1)
    assert (tmp_path / "checkpoint.npz").read_bytes() == good


@pytest.mark.usefixtures("private_cache")
def test_divergence_in_the_first_epoch_claims_no_checkpoint(tmp_path, capsys, finished_run):
    """--overwrite set the earlier run's checkpoint aside; the diverged run must not claim one of its own
    (and, having saved no epoch, it puts the earlier run's checkpoint back)."""
    out = tmp_path / "run"
    out.mkdir()
    earlier = (finished_run / "checkpoint.npz").read_bytes()  # a checkpoint of some earlier run in the same folder
    (out / "checkpoint.npz").write_bytes(earlier)
    argv = SMALL + ["--optimizer", "sgd", "--lr", "1e6", "--epochs", "2", "--out", str(out)]
    code, _, err = run(argv, capsys)
    assert code == 2 and "already holds a run (checkpoint.npz)" in one_error_line(err)
    assert (out / "checkpoint.npz").read_bytes() == earlier
    code, _, err = run(argv + ["--overwrite"], capsys)
    assert code == 2
    line = one_error_line(err)  # also: no NumPy overflow warnings around it
    assert line.startswith("error: the training loss became") and "try a smaller --lr; no checkpoint was saved" in line
    assert "intact" not in line
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz"]
    assert (out / "checkpoint.npz").read_bytes() == earlier


class PoisonedSGD(SGD):
    """SGD whose step number ``at`` leaves a NaN in the weights (an overshoot on the last step)."""

    def __init__(self, params, at, **kwargs):
        super().__init__(params, **kwargs)
        self.at, self.steps = at, 0

    def step(self):
        super().step()
        self.steps += 1
        if self.steps == self.at:
            self.params[0].data[0, 0] = np.nan


def test_weights_broken_by_the_last_step_are_never_saved(tmp_path):
    """The training loss of epoch 2 is finite but its weights are NaN: epoch 1's checkpoint must stay."""
    cpu = get_backend("cpu")
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (64, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 64)
    mean, std = channel_stats(images)
    loader = DataLoader(images, labels, 16, cpu, mean, std)  # 4 steps an epoch
    model = build_model("mlp", seed=0)
    trainer = Trainer(model, PoisonedSGD(model.parameters(), at=8, lr=0.01), cpu, out_dir=tmp_path,
                      progress=False, log=lambda message: None)
    with pytest.raises(TrainingDiverged, match=r"test loss became nan after epoch 2.*\(epoch 1\), is intact"):
        with np.errstate(invalid="ignore"):
            trainer.fit(loader, loader, epochs=3)
    assert load_checkpoint(tmp_path / "checkpoint.npz").epoch == 1
    assert all(np.isfinite(a).all() for a in load_checkpoint(tmp_path / "checkpoint.npz").params.values())
    assert [row["epoch"] for row in json.loads((tmp_path / "metrics.json").read_text())["history"]] == [1]
