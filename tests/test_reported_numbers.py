"""Every number the program reports, recomputed here independently and compared.

One run of the command line, shared by the tests of this module (a few seconds):

* an MLP trained with SGD on small SVHN-format files whose class is a brighter patch at one
  of ten places, with a test set of 700 other images (two evaluation batches, 500 + 200);
* epochs 1-2 learn (test accuracy rises a lot), then the run is resumed for epoch 3 with a
  *different* training folder (labels shifted by one, images brighter, so other channel
  statistics) and a larger --lr: the test accuracy falls. So the best epoch is neither the
  first nor the last, and a resume that recomputed the normalisation would differ.

Each epoch's checkpoint is copied as it is written (the trainer's ``save_checkpoint`` is
wrapped, not changed), so every row of the history can be recomputed from its own weights:
test loss and accuracy by a plain NumPy forward pass (helpers.reference_forward), train loss
(weighted by batch size) and accuracy by replaying the epoch's SGD steps in NumPy, the
confusion matrix and per-class accuracy by a hand count, best_epoch from the recomputed
accuracies. --evaluate and --predict are checked against the same forward pass.

The program computes in float32, the references in float64: values agree to about 1e-6
(tolerance 1e-5 relative); a predicted class is compared exactly unless its two largest
logits are within 1e-4 of each other (none are, in practice), where float32 rounding could
pick the other one.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import (
    PARAMETER_ORDER,
    ambiguous,
    call_cli,
    evaluated,
    patch_images,
    reference_channel_stats,
    reference_confusion,
    reference_cross_entropy,
    reference_forward,
    reference_loss_and_gradients,
    reference_normalise,
    reference_softmax,
    svhn_flags,
)

import cli
import training.loop.trainer as trainer_module
from backends import get_backend
from models import build_model
from training.data import write_svhn_mat
from training.saving.checkpoint import load_checkpoint, save_checkpoint

MODEL = "mlp"
BATCH, LR, RESUME_LR, MOMENTUM, SEED = 32, 0.01, 0.03, 0.9, 0
N_TRAIN, N_TEST = 330, 700  # 330 = 10 batches of 32 and one of 10: unequal batch weights
RTOL = 1e-5


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("patches")
    rng = np.random.default_rng(5)
    train_labels, test_labels = rng.integers(0, 10, N_TRAIN), rng.integers(0, 10, N_TEST)
    train_images, test_images = patch_images(train_labels, rng), patch_images(test_labels, rng)
    # The folder of the resumed epoch: the same test set, a training set with other labels
    # and other channel statistics.
    shifted_labels = (train_labels + 1) % 10
    brighter_images = patch_images(shifted_labels, rng, brighter=40)
    first, second = root / "first", root / "second"
    for folder, images, labels in ((first, train_images, train_labels), (second, brighter_images, shifted_labels)):
        folder.mkdir()
        write_svhn_mat(folder / "train_32x32.mat", images, labels)
        write_svhn_mat(folder / "test_32x32.mat", test_images, test_labels)
    mean, std = reference_channel_stats(train_images)
    return SimpleNamespace(
        root=root, first=first, second=second, test_images=test_images, test_labels=test_labels,
        train=[(train_images, train_labels), (train_images, train_labels), (brighter_images, shifted_labels)],
        lrs=[LR, LR, RESUME_LR], mean=mean, std=std, test_x=reference_normalise(test_images, mean, std),
        second_mean=reference_channel_stats(brighter_images)[0],
    )


@pytest.fixture(scope="module")
def run(data):
    """The run described above; ``snapshots[e]`` is a copy of checkpoint.npz as written after epoch e."""
    out, kept = data.root / "run", data.root / "snapshots"
    kept.mkdir()
    real_save = trainer_module.save_checkpoint

    def save_and_keep(path, *args, **kwargs):
        result = real_save(path, *args, **kwargs)
        if Path(path).name == "checkpoint.npz":
            shutil.copy(path, kept / f"epoch{kwargs['epoch']}.npz")
        return result

    common = ["--device", "cpu"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer_module, "save_checkpoint", save_and_keep)
        first = call_cli(common + ["--dataset", "svhn", "--data-dir", str(data.first), "--model", MODEL,
                                   "--optimizer", "sgd", "--lr", str(LR), "--batch-size", str(BATCH),
                                   "--epochs", "2", "--seed", str(SEED), "--out", str(out)])
        assert first.code == 0, first.err
        resumed = call_cli(common + ["--resume", str(out / "checkpoint.npz"), "--data-dir", str(data.second),
                                     "--lr", str(RESUME_LR), "--epochs", "3"])
        assert resumed.code == 0, resumed.err
    snapshots = {epoch: load_checkpoint(kept / f"epoch{epoch}.npz") for epoch in (1, 2, 3)}
    return SimpleNamespace(out=out, first=first, resumed=resumed, snapshots=snapshots,
                           metrics=json.loads((out / "metrics.json").read_text()),
                           history=json.loads((out / "metrics.json").read_text())["history"])


def recomputed_test(data, params) -> SimpleNamespace:
    logits = reference_forward(MODEL, params, data.test_x)
    predicted = logits.argmax(axis=1)
    return SimpleNamespace(logits=logits, predicted=predicted, loss=reference_cross_entropy(logits, data.test_labels),
                           accuracy=float(np.mean(predicted == data.test_labels)), unsure=int(ambiguous(logits).sum()))


def assert_accuracy(reported: float, expected: SimpleNamespace, n: int, what: str) -> None:
    """Equal, except for as many examples as float32 rounding could flip (their logits nearly tie)."""
    assert abs(reported - expected.accuracy) <= expected.unsure / n + 1e-12, f"{what}: reported {reported}, recomputed {expected.accuracy}"


@pytest.fixture(scope="module")
def test_results(run, data):
    return {epoch: recomputed_test(data, run.snapshots[epoch].params) for epoch in (1, 2, 3)}


# -- the shape of the run: what makes the comparisons below able to fail ---------------------------
def test_the_run_has_a_best_epoch_in_the_middle(run, test_results):
    accuracies = [test_results[epoch].accuracy for epoch in (1, 2, 3)]
    assert accuracies[1] > accuracies[0] + 0.2 and accuracies[1] > accuracies[2] + 0.2, accuracies
    assert [row["epoch"] for row in run.history] == [1, 2, 3]
    assert [checkpoint.epoch for checkpoint in run.snapshots.values()] == [1, 2, 3]


# -- test loss and accuracy of every epoch ---------------------------------------------------------
@pytest.mark.parametrize("epoch", [1, 2, 3])
def test_test_loss_and_accuracy_of_each_epoch(run, data, test_results, epoch):
    row, expected = run.history[epoch - 1], test_results[epoch]
    assert row["epoch"] == epoch
    assert_accuracy(row["test_acc"], expected, N_TEST, f"epoch {epoch} test accuracy")
    assert row["test_loss"] == pytest.approx(expected.loss, rel=RTOL)


# -- train loss and accuracy: the epoch replayed in NumPy ------------------------------------------
def replay_epoch(name, params, buffers, images, labels, mean, std, lr, epoch):
    """One epoch of SGD (torch's momentum rule) in float64; returns
    (loss averaged over the examples, accuracy, examples near a tie, weights, buffers)."""
    params = {key: value.astype(np.float64) for key, value in params.items()}
    buffers = {key: value.astype(np.float64) for key, value in buffers.items()}
    order = np.random.default_rng([SEED, epoch]).permutation(len(labels))  # the loader's documented order
    loss_sum, correct, unsure = 0.0, 0, 0
    for start in range(0, len(order), BATCH):
        index = order[start:start + BATCH]
        x, y = reference_normalise(images[index], mean, std), labels[index]
        logits, loss, grads = reference_loss_and_gradients(name, params, x, y)
        loss_sum += loss * len(index)
        correct += int(np.sum(logits.argmax(axis=1) == y))
        unsure += int(ambiguous(logits).sum())
        for key, grad in grads.items():
            buffers[key] = grad.copy() if key not in buffers else MOMENTUM * buffers[key] + grad
            params[key] = params[key] - lr * buffers[key]
    return loss_sum / len(labels), correct / len(labels), unsure, params, buffers


def momentum_buffers(checkpoint) -> dict:
    names = PARAMETER_ORDER[MODEL]
    assert list(checkpoint.meta["parameters"]) == names
    return {names[index]: entries["momentum_buffer"] for index, entries in checkpoint.optim.items()}


@pytest.mark.parametrize("epoch", [1, 2, 3])
def test_train_loss_and_accuracy_of_each_epoch(run, data, epoch):
    if epoch == 1:
        from models import build_model

        start = {p.name: p.data for p in build_model(MODEL, seed=SEED).parameters()}
        buffers = {}
    else:
        start, buffers = run.snapshots[epoch - 1].params, momentum_buffers(run.snapshots[epoch - 1])
    images, labels = data.train[epoch - 1]
    loss, accuracy, unsure, weights, _ = replay_epoch(MODEL, start, buffers, images, labels, data.mean, data.std,
                                                      data.lrs[epoch - 1], epoch)
    # The replay followed the program's steps: it ends on the weights the program saved.
    for name, saved in run.snapshots[epoch].params.items():
        np.testing.assert_allclose(saved, weights[name], rtol=1e-4, atol=1e-6, err_msg=name)
    row = run.history[epoch - 1]
    assert row["train_loss"] == pytest.approx(loss, rel=RTOL)
    assert abs(row["train_acc"] - accuracy) <= unsure / len(labels) + 1e-12


# -- best epoch, best.npz, checkpoint.npz ----------------------------------------------------------
def test_best_epoch_and_best_npz(run, data, test_results):
    accuracies = [test_results[epoch].accuracy for epoch in (1, 2, 3)]
    best = 1 + int(np.argmax(accuracies))
    assert best == 2  # neither the first nor the last epoch
    assert run.metrics["best_epoch"] == best
    saved = load_checkpoint(run.out / "best.npz")
    assert saved.epoch == best
    for name, weights in run.snapshots[best].params.items():
        np.testing.assert_array_equal(saved.params[name], weights)
    assert_accuracy(saved.history[-1]["test_acc"], recomputed_test(data, saved.params), N_TEST, "best.npz")
    last = load_checkpoint(run.out / "checkpoint.npz")
    assert last.epoch == 3
    for name, weights in run.snapshots[3].params.items():
        np.testing.assert_array_equal(last.params[name], weights)


def test_final_line_names_final_and_best_accuracy(run, test_results):
    final, best = test_results[3].accuracy, test_results[2].accuracy
    match = re.search(r"done: final test accuracy ([\d.]+)%, best ([\d.]+)% \(epoch (\d+)\)", run.resumed.out)
    assert match, run.resumed.out
    assert float(match[1]) == pytest.approx(100 * final, abs=0.005 + 100 * test_results[3].unsure / N_TEST)
    assert float(match[2]) == pytest.approx(100 * best, abs=0.005 + 100 * test_results[2].unsure / N_TEST)
    assert int(match[3]) == 2


def test_epoch_lines_report_the_history(run):
    lines = [line for line in (run.first.out + run.resumed.out).splitlines() if line.startswith("epoch ")]
    assert len(lines) == 3
    for line, row in zip(lines, run.history, strict=True):
        assert line.startswith(f"epoch {row['epoch']}/{2 if row['epoch'] < 3 else 3}  train loss {row['train_loss']:.4f}  "
                               f"train acc {100 * row['train_acc']:.2f}%  test loss {row['test_loss']:.4f}  "
                               f"test acc {100 * row['test_acc']:.2f}%"), line


# -- confusion matrix and per-class accuracy -------------------------------------------------------
def test_confusion_matrix_and_per_class_accuracy(run, data, test_results):
    last = test_results[3]
    assert last.unsure == 0, "a near tie in the last evaluation: choose another seed for the data"
    counts = reference_confusion(last.predicted, data.test_labels)
    assert (counts != counts.T).any()  # so a transposed matrix would not pass
    np.testing.assert_array_equal(np.array(run.metrics["confusion"]), counts)
    assert np.array(run.metrics["confusion"]).sum(axis=1).tolist() == np.bincount(data.test_labels, minlength=10).tolist()
    per_class = [counts[c, c] / counts[c].sum() for c in range(10)]
    np.testing.assert_allclose(run.metrics["per_class_accuracy"], per_class, rtol=1e-12)


# -- normalisation statistics -----------------------------------------------------------------------
def test_resume_keeps_the_checkpoints_normalisation(run, data):
    assert np.abs(data.second_mean - data.mean).max() > 0.1  # the resumed folder's statistics differ
    for path in (run.out / "checkpoint.npz", run.out / "best.npz"):
        config = load_checkpoint(path).config
        np.testing.assert_allclose(config["mean"], data.mean, rtol=1e-12)
        np.testing.assert_allclose(config["std"], data.std, rtol=1e-12)


# -- --evaluate and --predict ------------------------------------------------------------------------
@pytest.mark.parametrize("which, epoch", [("best.npz", 2), ("checkpoint.npz", 3)])
def test_evaluate_reports_the_recomputed_numbers(run, data, test_results, which, epoch):
    result = call_cli(["--evaluate", str(run.out / which), "--device", "cpu"])
    assert result.code == 0, result.err
    reported = json.loads(result.out.strip().splitlines()[-1])
    expected = test_results[epoch]
    assert_accuracy(reported["accuracy"], expected, N_TEST, f"--evaluate {which}")
    assert reported["loss"] == pytest.approx(expected.loss, rel=RTOL)
    assert f"epoch {epoch}) on svhn-test" in result.out and f"of {N_TEST:,} images" in result.out
    line = next(line for line in result.out.splitlines() if line.startswith("per-class accuracy: "))
    pairs = re.findall(r"(\d): ([\d.]+)%", line)
    assert [int(digit) for digit, _ in pairs] == list(range(10)), line
    shown = [float(value) for _, value in pairs]
    counts = reference_confusion(expected.predicted, data.test_labels)
    np.testing.assert_allclose(shown, 100 * np.diag(counts) / counts.sum(axis=1), atol=0.05 + 1e-9)


def test_predict_reports_the_models_classes_and_probabilities(run, data, tmp_path):
    from PIL import Image

    picks = [int(np.flatnonzero(data.test_labels == digit)[0]) for digit in range(10)]
    paths = []
    for index in picks:
        path = tmp_path / f"test{index}.png"
        Image.fromarray(data.test_images[index].transpose(1, 2, 0)).save(path)  # PNG: lossless, 32x32
        paths.append(str(path))
    result = call_cli(["--predict", *paths, "--checkpoint", str(run.out / "best.npz"), "--device", "cpu"])
    assert result.code == 0, result.err
    lines = [line for line in result.out.splitlines() if line.startswith(str(tmp_path))]
    assert len(lines) == len(paths)
    params = load_checkpoint(run.out / "best.npz").params
    probabilities = reference_softmax(reference_forward(MODEL, params, data.test_x[picks]))
    for line, path, expected in zip(lines, paths, probabilities, strict=True):
        name, shown = line.split(": ", 1)
        assert name == path
        pairs = [(int(digit), float(share)) for digit, share in re.findall(r"(\d) \(([\d.]+)%\)", shown)]
        assert len(pairs) == 3 and shown == ", ".join(f"{d} ({s:.1f}%)" for d, s in pairs)
        top = np.argsort(-expected, kind="stable")[:3]
        for (digit, share), want in zip(pairs, top, strict=True):
            # The same class, unless two probabilities tie to within rounding.
            assert digit == want or abs(expected[digit] - expected[want]) < 1e-6, (line, expected)
            assert share == pytest.approx(100 * expected[digit], abs=0.05 + 1e-4)


def test_float64_run_reports_the_numbers_of_its_float64_model(svhn_patches, tmp_path):
    root, arrays = svhn_patches
    out = tmp_path / "run"
    result = call_cli(svhn_flags(root) + ["--dtype", "float64", "--epochs", "1", "--out", str(out)])
    assert result.code == 0, result.err
    checkpoint = load_checkpoint(out / "checkpoint.npz")
    assert {array.dtype for array in checkpoint.params.values()} == {np.dtype(np.float64)}
    mean, std = reference_channel_stats(arrays["train"][0])
    loss, accuracy, unsure = evaluated(checkpoint.params, arrays, mean, std)
    assert unsure == 0
    row = checkpoint.history[-1]
    assert row["test_loss"] == pytest.approx(loss, rel=1e-9) and row["test_acc"] == accuracy
    evaluation = call_cli(["--evaluate", str(out / "checkpoint.npz"), "--device", "cpu"])
    assert evaluation.code == 0, evaluation.err
    reported = json.loads(evaluation.out.strip().splitlines()[-1])
    assert reported["loss"] == pytest.approx(loss, rel=1e-9) and reported["accuracy"] == accuracy


def test_predict_is_stable_for_very_large_logits(svhn_patches, tmp_path, capsys):
    """Logits in the thousands (a last layer scaled by 3000) overflow a naive softmax, and two
    images whose largest logits differ by hundreds underflow one shifted by a common value."""
    from PIL import Image

    _, arrays = svhn_patches
    cpu = get_backend("cpu")
    model = build_model("mlp", seed=5)
    model.layers[3].weight.data = model.layers[3].weight.data * 3000
    model.layers[3].bias.data = model.layers[3].bias.data * 3000
    mean, std = reference_channel_stats(arrays["train"][0])
    path = save_checkpoint(tmp_path / "sharp.npz", model, epoch=1, backend=cpu,
                           config={"model": "mlp", "mean": mean.tolist(), "std": std.tolist()})
    images = arrays["test"][0][:4]
    files = []
    for index, image in enumerate(images):
        files.append(tmp_path / f"{index}.png")
        Image.fromarray(image.transpose(1, 2, 0)).save(files[-1])
    logits = reference_forward("mlp", load_checkpoint(path).params, reference_normalise(images, mean, std))
    assert np.abs(logits).max() > 500 and np.ptp(logits.max(axis=1)) > 150  # what makes this test able to fail
    probabilities = reference_softmax(logits)
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
