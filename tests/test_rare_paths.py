"""Branches the other tests never reach, each checked for what it reports: a float64 run,
checkpoints without optimizer state or without normalisation statistics, a run interrupted
before its first epoch ended, and CrossEntropyLoss's input validation."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

import cli
import reference_nets as ref
from backends import get_backend
from layers import CrossEntropyLoss
from models import build_model
from test_reported_numbers import call_cli, patch_images
from training.checkpoint import load_checkpoint, save_checkpoint
from training.data import write_svhn_mat


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """SVHN-format files: 96 training images, 40 test images of other patches."""
    root = tmp_path_factory.mktemp("svhn")
    rng = np.random.default_rng(11)
    arrays = {}
    for split, n in (("train", 96), ("test", 40)):
        labels = rng.integers(0, 10, n)
        images = patch_images(labels, rng)
        write_svhn_mat(root / f"{split}_32x32.mat", images, labels)
        arrays[split] = (images, labels)
    return root, arrays


def svhn_flags(root):
    return ["--dataset", "svhn", "--data-dir", str(root), "--device", "cpu", "--model", "mlp", "--batch-size", "32", "--quiet"]


def evaluated(params, arrays, mean, std, name="mlp"):
    images, labels = arrays["test"]
    logits = ref.forward(name, params, ref.normalise(images, mean, std))
    return ref.cross_entropy(logits, labels), float(np.mean(logits.argmax(axis=1) == labels)), int(ref.ambiguous(logits).sum())


# -- --dtype float64 ---------------------------------------------------------------------------------
def test_float64_run_reports_the_numbers_of_its_float64_model(folder, tmp_path):
    root, arrays = folder
    out = tmp_path / "run"
    result = call_cli(svhn_flags(root) + ["--dtype", "float64", "--epochs", "1", "--out", str(out)])
    assert result.code == 0, result.err
    checkpoint = load_checkpoint(out / "checkpoint.npz")
    assert {array.dtype for array in checkpoint.params.values()} == {np.dtype(np.float64)}
    mean, std = ref.channel_stats(arrays["train"][0])
    loss, accuracy, unsure = evaluated(checkpoint.params, arrays, mean, std)
    assert unsure == 0
    row = checkpoint.history[-1]
    assert row["test_loss"] == pytest.approx(loss, rel=1e-9) and row["test_acc"] == accuracy
    evaluation = call_cli(["--evaluate", str(out / "checkpoint.npz"), "--device", "cpu"])
    assert evaluation.code == 0, evaluation.err
    reported = json.loads(evaluation.out.strip().splitlines()[-1])
    assert reported["loss"] == pytest.approx(loss, rel=1e-9) and reported["accuracy"] == accuracy


# -- a checkpoint without optimizer state ----------------------------------------------------------
@pytest.fixture
def weights_only(folder, tmp_path):
    """A checkpoint of an untrained MLP written without an optimizer (as a user's script may)."""
    root, arrays = folder
    cpu = get_backend("cpu")
    model = build_model("mlp", seed=3)
    mean, std = ref.channel_stats(arrays["train"][0])
    config = {"model": "mlp", "dataset": "svhn", "data_dir": str(root), "mean": mean.tolist(), "std": std.tolist()}
    history = [{"epoch": e, "train_loss": 2.0, "train_acc": 0.1, "test_loss": 2.0, "test_acc": 0.1,
                "examples_per_sec": 1.0, "seconds": 1.0} for e in range(1, 5)]  # a well-formed record of 4 epochs
    path = save_checkpoint(tmp_path / "weights.npz", model, epoch=4, backend=cpu, config=config, history=history)
    return path, {p.name: cpu.to_numpy(p.data).copy() for p in model.parameters()}, mean, std


def test_checkpoint_without_optimizer_round_trips_its_weights(weights_only):
    path, params, _, _ = weights_only
    checkpoint = load_checkpoint(path)
    assert "optimizer" not in checkpoint.meta and checkpoint.optim == {} and checkpoint.epoch == 4
    assert sorted(checkpoint.params) == sorted(params)
    for name, array in params.items():
        np.testing.assert_array_equal(checkpoint.params[name], array)


def test_checkpoint_without_optimizer_cannot_be_resumed_but_can_be_evaluated(weights_only, folder, capsys):
    path, params, mean, std = weights_only
    before = path.read_bytes()
    code = cli.main(["--resume", str(path), "--epochs", "6", "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err == f"error: {path} holds no optimizer state; it cannot be resumed, only evaluated\n"
    assert path.read_bytes() == before

    result = call_cli(["--evaluate", str(path), "--device", "cpu"])
    assert result.code == 0, result.err
    reported = json.loads(result.out.strip().splitlines()[-1])
    loss, accuracy, unsure = evaluated(params, folder[1], mean, std)
    assert reported["loss"] == pytest.approx(loss, rel=1e-5)
    assert abs(reported["accuracy"] - accuracy) <= unsure / 40 + 1e-12
    assert "(mlp, epoch 4) on svhn-test" in result.out


@pytest.mark.parametrize("mode", ["evaluate", "predict"])
def test_checkpoint_without_normalisation_statistics_is_a_clear_error(folder, tmp_path, capsys, mode):
    root, _ = folder
    path = save_checkpoint(tmp_path / "bare.npz", build_model("mlp"), epoch=1, backend=get_backend("cpu"),
                           config={"model": "mlp", "dataset": "svhn", "data_dir": str(root)})
    image = tmp_path / "digit.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    argv = ["--evaluate", str(path)] if mode == "evaluate" else ["--predict", str(image), "--checkpoint", str(path)]
    code = cli.main(argv + ["--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err == f"error: {path} has no normalisation statistics; it was not written by cli.py training\n"
    assert "{" not in captured.out  # no result was printed


# -- interrupted before an epoch ended ---------------------------------------------------------------
def interrupt_at_step(monkeypatch, step: int):
    """Ctrl-C inside the ``step``-th optimizer step (SGD), as a signal would arrive."""
    from training.optim import SGD

    real_step, calls = SGD.step, []

    def step_then_stop(self):
        calls.append(1)
        if len(calls) == step:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(SGD, "step", step_then_stop)


def test_interrupt_in_the_first_epoch_says_nothing_was_saved(folder, tmp_path, monkeypatch, capsys):
    root, _ = folder
    out = tmp_path / "run"
    interrupt_at_step(monkeypatch, 2)
    code = cli.main(svhn_flags(root) + ["--optimizer", "sgd", "--epochs", "2", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 130
    assert captured.err == f"interrupted before an epoch ended; nothing was saved in {out}\n"
    assert "done:" not in captured.out
    assert not out.exists()  # the folder this run made, empty, is removed


def test_interrupt_in_the_first_resumed_epoch_names_the_kept_checkpoint(folder, tmp_path, monkeypatch, capsys):
    root, _ = folder
    out = tmp_path / "run"
    assert cli.main(svhn_flags(root) + ["--optimizer", "sgd", "--epochs", "1", "--out", str(out)]) == 0
    checkpoint = out / "checkpoint.npz"
    files = {path.name: path.read_bytes() for path in out.iterdir()}
    capsys.readouterr()
    interrupt_at_step(monkeypatch, 1)
    code = cli.main(["--resume", str(checkpoint), "--epochs", "3", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 130
    assert f"interrupted during epoch 2; {checkpoint} holds epoch 1" in captured.out  # the trainer's log line
    last = [line for line in re.split(r"[\r\n]", captured.err) if line.strip()][-1]  # after the progress bar
    assert last == f"interrupted: {checkpoint} holds epoch 1; continue with: python cli.py --resume {checkpoint} --epochs 3"
    assert captured.err.count("interrupted") == 1
    assert {path.name: path.read_bytes() for path in out.iterdir()} == files  # nothing rewritten


# -- CrossEntropyLoss's input validation -------------------------------------------------------------
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
    expected = ref.cross_entropy(logits, labels)
    for loss in (CrossEntropyLoss(), CrossEntropyLoss(check_labels=False)):
        value = loss(backend.asarray(logits, dtype="float64"), backend.asarray(labels))
        assert float(backend.to_numpy(value)) == pytest.approx(expected, rel=1e-12)
    assert repr(CrossEntropyLoss()) == "CrossEntropyLoss()"


# -- metrics' edge cases (found by mutation testing) --------------------------------------------------
def test_metrics_edge_cases():
    from training.metrics import accuracy, confusion_matrix, per_class_accuracy

    assert accuracy([], []) == 0.0  # an empty set: 0, not NaN and not 1
    assert accuracy(np.array([[1], [2]]), [1, 3]) == 0.5  # column vectors are flattened
    assert confusion_matrix(np.array([[2], [2]]), np.array([[1], [2]]))[[1, 2], 2].tolist() == [1, 1]
    counts = confusion_matrix([9, 0, 3], [9, 1, 3])  # ten classes unless told otherwise
    assert counts.shape == (10, 10) and counts[9, 9] == counts[3, 3] == counts[1, 0] == 1 and counts.sum() == 3
    with pytest.raises(ValueError, match=r"^predictions must be in \[0, 9\], found 0..10$"):
        confusion_matrix([0, 10], [0, 1])
    with pytest.raises(ValueError, match=r"^labels must be in \[0, 9\], found -1..1$"):
        confusion_matrix([0, 1], [-1, 1])
    with np.errstate(all="raise"):  # a class without examples is NaN, without a floating-point warning
        per_class = per_class_accuracy(counts)
    assert np.isnan(per_class[0]) and per_class[[1, 3, 9]].tolist() == [0.0, 1.0, 1.0]


# -- --predict on a very confident model -------------------------------------------------------------
def test_predict_is_stable_for_very_large_logits(folder, tmp_path, capsys):
    """Logits in the thousands (a last layer scaled by 3000) overflow a naive softmax, and two
    images whose largest logits differ by hundreds underflow one shifted by a common value."""
    from PIL import Image

    _, arrays = folder
    cpu = get_backend("cpu")
    model = build_model("mlp", seed=5)
    model.layers[3].weight.data = model.layers[3].weight.data * 3000
    model.layers[3].bias.data = model.layers[3].bias.data * 3000
    mean, std = ref.channel_stats(arrays["train"][0])
    path = save_checkpoint(tmp_path / "sharp.npz", model, epoch=1, backend=cpu,
                           config={"model": "mlp", "mean": mean.tolist(), "std": std.tolist()})
    images = arrays["test"][0][:4]
    files = []
    for index, image in enumerate(images):
        files.append(tmp_path / f"{index}.png")
        Image.fromarray(image.transpose(1, 2, 0)).save(files[-1])
    logits = ref.forward("mlp", load_checkpoint(path).params, ref.normalise(images, mean, std))
    assert np.abs(logits).max() > 500 and np.ptp(logits.max(axis=1)) > 150  # what makes this test able to fail
    probabilities = ref.softmax(logits)
    code = cli.main(["--predict", *map(str, files), "--checkpoint", str(path), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith(str(tmp_path))]
    for line, expected in zip(lines, probabilities, strict=True):
        shown = re.findall(r"(\d) \(([\d.]+)%\)", line)
        top = np.argsort(-expected, kind="stable")[:3]
        assert len(shown) == 3 and int(shown[0][0]) == top[0], line
        for (digit, share), want in zip(shown, top, strict=True):  # the same class, or one as (im)probable
            assert int(digit) == want or abs(expected[int(digit)] - expected[want]) < 1e-6, line
            assert float(share) == pytest.approx(100 * expected[int(digit)], abs=0.05 + 1e-4), line


# -- a tie for the best epoch -------------------------------------------------------------------------
def test_a_tied_best_accuracy_keeps_the_first_epoch_in_best_npz_and_best_epoch(folder, tmp_path):
    """With a learning rate too small to change a float32 weight, every epoch has the same test
    accuracy: the best epoch is the first one, in metrics.json and in best.npz alike."""
    from training.data import DataLoader
    from training.optim import SGD
    from training.trainer import Trainer

    _, arrays = folder
    cpu = get_backend("cpu")
    mean, std = ref.channel_stats(arrays["train"][0])
    train = DataLoader(*arrays["train"], 32, cpu, mean, std, seed=0)
    test = DataLoader(*arrays["test"], 100, cpu, mean, std, shuffle=False)
    model = build_model("mlp", seed=0)
    trainer = Trainer(model, SGD(model.parameters(), lr=1e-30), cpu, out_dir=tmp_path, progress=False, log=lambda m: None)
    history = trainer.fit(train, test, epochs=3)
    assert len({row["test_acc"] for row in history}) == 1  # a tie
    assert json.loads((tmp_path / "metrics.json").read_text())["best_epoch"] == 1
    assert load_checkpoint(tmp_path / "best.npz").epoch == 1
