"""The model-quality options end to end: the cnn with --augment, dropout and --schedule resumes
bit-identical, the new pictures hold what they claim, an exploding loss warns, and each bad input
is one error line."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import SMALL, run

import cli
from training.loop.trainer import Trainer
from training.saving.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("private_cache")

CNN = ["--device", "cpu", "--model", "cnn", "--train-size", "96", "--test-size", "32", "--batch-size", "32", "--quiet",
       "--augment", "--schedule", "onecycle", "--lr", "3e-3", "--dropout", "0.4"]
TIMING = {"examples_per_sec", "seconds"}


def interrupt_after_epoch(monkeypatch, epoch: int):
    """Make the next run stop (as on Ctrl-C) right after it saved ``epoch``."""
    original = Trainer._save_epoch

    def save_then_stop(self, number, evaluation):
        original(self, number, evaluation)
        if number == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_save_epoch", save_then_stop)


def test_cnn_with_augment_dropout_and_schedule_resumes_bit_identical(tmp_path, capsys, monkeypatch):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run(CNN + ["--epochs", "3", "--out", str(straight)], capsys)[0] == 0
    with monkeypatch.context() as patch:
        interrupt_after_epoch(patch, 1)
        assert run(CNN + ["--epochs", "3", "--out", str(split)], capsys)[0] == 130
    assert load_checkpoint(split / "checkpoint.npz").epoch == 1
    code, _, err = run(["--resume", str(split / "checkpoint.npz"), "--epochs", "3", "--quiet", "--device", "cpu"], capsys)
    assert code == 0, err
    a, b = load_checkpoint(straight / "checkpoint.npz"), load_checkpoint(split / "checkpoint.npz")
    assert a.epoch == b.epoch == 3 and a.step == b.step == 9
    assert a.schedule == b.schedule == {"name": "onecycle", "lr": 3e-3, "total_steps": 9}
    assert a.meta["layer_state"] == b.meta["layer_state"] == {"22": {"step": 9}, "25": {"step": 9}}
    assert a.config["dropout"] == 0.4 and a.config["augment"] is True
    for saved in ("params", "buffers"):
        assert getattr(a, saved).keys() == getattr(b, saved).keys()
        for name in getattr(a, saved):
            np.testing.assert_array_equal(getattr(a, saved)[name], getattr(b, saved)[name], err_msg=name)
    assert len(a.buffers) == 12  # the six BatchNorms' running means and variances
    for index in a.optim:
        for key in a.optim[index]:
            np.testing.assert_array_equal(a.optim[index][key], b.optim[index][key])
    assert a.meta["optimizer"]["hyper"] == b.meta["optimizer"]["hyper"]  # lr and β1 where onecycle left them
    strip = lambda history: [{k: v for k, v in row.items() if k not in TIMING} for row in history]  # noqa: E731
    assert strip(a.history) == strip(b.history)


def test_schedule_and_augment_change_training_and_default_run_does_not_use_them(tmp_path, capsys):
    """The recipe's options take effect (different weights), and a run without them saves the
    plain settings, so ``python cli.py`` trains as before."""
    plain, shifted = tmp_path / "plain", tmp_path / "shifted"
    assert run(SMALL + ["--epochs", "1", "--out", str(plain)], capsys)[0] == 0
    assert run(SMALL + ["--epochs", "1", "--augment", "--schedule", "cosine", "--out", str(shifted)], capsys)[0] == 0
    a, b = load_checkpoint(plain / "checkpoint.npz"), load_checkpoint(shifted / "checkpoint.npz")
    assert a.config["schedule"] == "constant" and a.config["augment"] is False and a.schedule is None
    assert b.schedule == {"name": "cosine", "lr": 1e-3, "total_steps": 5}
    assert b.meta["optimizer"]["hyper"]["lr"] == pytest.approx(1e-3 * (1 + np.cos(np.pi * 4 / 5)) / 2)
    assert not np.array_equal(a.params["1.weight"], b.params["1.weight"])


def test_mistakes_are_the_most_confident_wrong_predictions(tmp_path):
    """Evaluation's confidence is the softmax maximum of the logits; the picture's selection is the
    wrong predictions sorted by it, recomputed here by brute force."""
    from backends import get_backend
    from models import build_model
    from training.data import DataLoader, channel_stats
    from training.saving.plots import most_confident_mistakes

    cpu = get_backend("cpu")
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (70, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 70)
    mean, std = channel_stats(images)
    loader = DataLoader(images, labels, 32, cpu, mean, std, shuffle=False)
    model = build_model("lnet", seed=1)
    evaluation = Trainer(model, None, cpu, progress=False).evaluate(loader)
    model.eval()
    logits = np.concatenate([np.asarray(model.forward(x), dtype=np.float64) for x, _ in loader])
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(evaluation.confidence, probabilities.max(axis=1), rtol=1e-5)
    np.testing.assert_array_equal(evaluation.indices, np.arange(70))
    wrong = [k for k in range(70) if evaluation.predictions[k] != labels[k]]
    expected = sorted(wrong, key=lambda k: (-evaluation.confidence[k], k))[:25]
    assert list(most_confident_mistakes(labels, evaluation.predictions, evaluation.confidence)) == expected


def test_filters_come_from_the_first_layer_that_sees_the_image():
    from models import build_model
    from training.saving.plots import first_layer_filters

    for name, expected in (("cnn", (32, 3, 3, 3)), ("lnet", (6, 3, 5, 5)), ("mlp", (1024, 3072))):
        layer, _ = first_layer_filters(build_model(name))
        assert layer.weight.shape == expected, name


def test_exploding_but_finite_loss_warns(tmp_path, capsys):
    code, out, err = run(SMALL + ["--optimizer", "adam", "--lr", "1e6", "--epochs", "2", "--out", str(tmp_path / "r")],
                         capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err  # once per run, not once per epoch
    assert "the training loss is" in warnings[0] and "of guessing: the weights have blown up" in warnings[0]
    assert "lr=1000000.0) is probably too high; try a smaller --lr" in warnings[0]
    final = json.loads((tmp_path / "r" / "metrics.json").read_text())["history"][-1]
    assert final["train_loss"] > 10 * np.log(10)


def test_normal_training_does_not_warn(tmp_path, capsys):
    code, _, err = run(SMALL + ["--epochs", "1", "--out", str(tmp_path / "r")], capsys)
    assert code == 0 and "warning" not in err


@pytest.mark.parametrize("argv, message", [
    (["--schedule", "linear"], "argument --schedule: invalid choice: 'linear'"),
    (["--dropout", "1"], "argument --dropout: must be a probability in [0, 1), got 1"),
    (["--dropout", "-0.1"], "argument --dropout: must be a probability in [0, 1), got -0.1"),
    (["--dropout", "nan"], "argument --dropout: must be a probability in [0, 1), got nan"),
    (["--dropout", "half"], "argument --dropout: expected a number, got 'half'"),
    (["--evaluate", "a.npz", "--augment"], "--augment does not apply to --evaluate, which only measures a checkpoint on a test set; leave it out"),
    (["--predict", "a.png", "--checkpoint", "b.npz", "--schedule", "step"], "--schedule does not apply to --predict"),
])
def test_bad_quality_flags_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err
    assert [line for line in err.splitlines() if "error:" in line] == [err.splitlines()[-1]] and "Traceback" not in err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_dropout_for_a_model_without_dropout_is_an_error(capsys):
    code, _, err = run(SMALL + ["--dropout", "0.2", "--epochs", "1"], capsys)
    assert code == 2
    assert "--dropout applies to models with dropout layers (cnn); mlp has none" in one_error_line(err)


@pytest.fixture(scope="module")
def cnn_checkpoint(tmp_path_factory):
    import os

    folder = tmp_path_factory.mktemp("cnn")
    previous = os.environ.get("XPNET_CACHE")
    os.environ["XPNET_CACHE"] = str(folder / "cache")
    try:
        assert cli.main(CNN[:-6] + ["--epochs", "1", "--out", str(folder / "run")]) == 0
    finally:
        if previous is None:
            os.environ.pop("XPNET_CACHE")
        else:
            os.environ["XPNET_CACHE"] = previous
    return folder / "run" / "checkpoint.npz"


def edited(source, target, drop_prefix=None, meta_change=None):
    with np.load(source, allow_pickle=False) as stored:
        arrays = {k: v for k, v in stored.items() if drop_prefix is None or not k.startswith(drop_prefix)}
    meta = json.loads(str(arrays["meta"]))
    if meta_change:
        meta_change(meta)
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(target, **arrays)
    return target


@pytest.mark.parametrize("mode", ["resume", "evaluate"])
@pytest.mark.parametrize("edit, message", [
    (dict(drop_prefix="buffer/", meta_change=lambda meta: meta.pop("buffers")),
     "lacks layers of this cnn: its running statistics do not match (1.running_mean: saved missing, model has (32,)"),
    (dict(meta_change=lambda meta: meta.pop("layer_state")),
     "lacks layers of this cnn: no saved state for layer(s) 22, 25 (Dropout(p=0.3), Dropout(p=0.3))"),
    (dict(drop_prefix="buffer/4.", meta_change=lambda meta: [meta["buffers"].pop(k) for k in list(meta["buffers"])
                                                               if k.startswith("4.")]),
     "4.running_mean: saved missing, model has (32,)"),
])
def test_checkpoint_lacking_the_models_layers_is_one_error_line(cnn_checkpoint, tmp_path, capsys, mode, edit, message):
    path = edited(cnn_checkpoint, tmp_path / "edited.npz", **edit)
    argv = ["--resume", str(path), "--epochs", "2"] if mode == "resume" else ["--evaluate", str(path)]
    code, _, err = run(argv + ["--device", "cpu"], capsys)
    assert code == 2 and message in one_error_line(err)


def test_evaluate_uses_the_saved_running_statistics(cnn_checkpoint, capsys):
    code, out, err = run(["--evaluate", str(cnn_checkpoint), "--device", "cpu"], capsys)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    history = json.loads((cnn_checkpoint.parent / "metrics.json").read_text())["history"]
    assert result["accuracy"] == pytest.approx(history[-1]["test_acc"])
    assert result["loss"] == pytest.approx(history[-1]["test_loss"], rel=1e-6)
