"""The run API (training/run/): train, evaluate and predict as library calls, and RunConfig.

The CLI tests hold the command line to the same calls; these hold what a notebook sees:
the returned objects, errors that name RunConfig's fields (not flags), and agreement
between train's last evaluation, evaluate and predict.
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil

import numpy as np
import pytest
from helpers import run

from training.data.synthetic import make_synthetic
from training.errors import XpnetError
from training.run import Prediction, RunConfig, RunInterrupted, RunResult, SettingError, evaluate, predict, train
from training.run.config import RESUMED_SETTINGS
from training.saving.checkpoint import load_checkpoint

SMALL = dict(model="lnet", train_size=96, test_size=48, batch_size=32, device="cpu", quiet=True, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> RunResult:
    return train(RunConfig(**SMALL, epochs=2, out=tmp_path_factory.mktemp("api") / "run"))


# -- RunConfig --------------------------------------------------------------------------------------
def test_defaults_fill_what_was_not_chosen():
    config = RunConfig(optimizer="sgd", epochs=3).resolved()
    assert (config.lr, config.momentum, config.weight_decay, config.epochs, config.batch_size) == (0.05, 0.9, 0.0, 3, 64)
    assert RunConfig(optimizer="adamw").resolved().weight_decay == 1e-2
    assert RunConfig(epochs=3).chosen() == ["epochs"]
    assert RunConfig(epochs=3.0, lr=1).epochs == 3 and type(RunConfig(epochs=3.0).epochs) is int


@pytest.mark.parametrize("name, value, problem", [
    ("lr", -1.0, "must be a positive number"), ("lr", "0.1", "expected a number"), ("epochs", 2.5, "expected a whole number"),
    ("momentum", 1.0, "below 1"), ("model", "resnet", "expected one of lnet, mlp, cnn"), ("augment", 1, "true or false"),
    ("dropout", 1.0, "a probability in [0, 1)"), ("device", "tpu", "expected one of"), ("data_dir", "", "a folder name"),
])
def test_a_wrong_value_names_its_setting(name, value, problem):
    with pytest.raises(SettingError, match=rf"^'{name}' = .*{re.escape(problem)}"):
        RunConfig(**{name: value})


def test_the_dict_of_a_checkpoint_round_trips_and_old_ones_load():
    config = RunConfig(model="mlp", lr=0.01, schedule="cosine", augment=True).resolved()
    saved = dict(config.to_dict(), mean=[0.5] * 3, std=[0.2] * 3, device="cpu")  # what a checkpoint holds
    assert list(config.to_dict()) == list(RESUMED_SETTINGS[:5]) + ["epochs"] + list(RESUMED_SETTINGS[5:])
    assert RunConfig.from_dict(json.loads(json.dumps(saved))) == dataclasses.replace(config, data_dir=str(config.data_dir))
    old = RunConfig.from_dict({"model": "lnet", "optimizer": "sgd", "lr": 0.05, "epochs": 4})  # before schedules, dropout
    assert old.schedule is None and old.dropout is None and old.resolved().schedule == "constant"


# -- train ------------------------------------------------------------------------------------------
def test_train_returns_the_run(trained):
    assert [row["epoch"] for row in trained.history] == [1, 2]
    metrics = json.loads((trained.folder / "metrics.json").read_text())
    assert metrics["history"] == trained.history and metrics["best_epoch"] == trained.best_epoch
    assert trained.best_epoch == max(trained.history, key=lambda row: row["test_acc"])["epoch"]
    assert trained.evaluation.accuracy == trained.history[-1]["test_acc"]
    assert trained.config.lr == 1e-3 and trained.backend.name == "cpu" and trained.model.name == "lnet"
    assert load_checkpoint(trained.folder / "checkpoint.npz").config == metrics["config"]


def test_the_library_and_the_command_line_train_the_same_weights(trained, tmp_path, capsys):
    argv = ["--device", "cpu", "--model", "lnet", "--train-size", "96", "--test-size", "48", "--batch-size", "32",
            "--quiet", "--seed", "0", "--epochs", "2", "--out", str(tmp_path / "cli")]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    ours, theirs = load_checkpoint(trained.folder / "checkpoint.npz"), load_checkpoint(tmp_path / "cli" / "checkpoint.npz")
    assert ours.params.keys() == theirs.params.keys()
    for name in ours.params:
        np.testing.assert_array_equal(ours.params[name], theirs.params[name], err_msg=name)
    assert [row["test_loss"] for row in ours.history] == [row["test_loss"] for row in theirs.history]


def test_resume_continues_a_run(trained, tmp_path):
    folder = shutil.copytree(trained.folder, tmp_path / "copy")
    result = train(RunConfig(resume=folder / "checkpoint.npz", epochs=3, quiet=True))
    assert [row["epoch"] for row in result.history] == [1, 2, 3] and result.folder == folder
    assert result.history[:2] == trained.history
    assert result.config.train_size == SMALL["train_size"], "the saved settings are the resumed run's"


def test_library_errors_name_settings_not_flags(tmp_path):
    with pytest.raises(XpnetError) as caught:
        train(RunConfig(**SMALL, momentum=0.5, out=tmp_path / "run"))
    assert str(caught.value).startswith("'momentum' applies only to 'optimizer' sgd") and "--" not in str(caught.value)
    with pytest.raises(XpnetError, match="^'train_size' chooses the size of the synthetic set, but this run uses SVHN"):
        train(RunConfig(dataset="svhn", train_size=10, device="cpu", out=tmp_path / "run"))


def test_an_interrupt_says_what_was_kept(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("training.run.fit.load_training_data", interrupted)
    with pytest.raises(RunInterrupted) as caught:
        train(RunConfig(**SMALL, epochs=1, out=tmp_path / "run"))
    assert (caught.value.epoch, caught.value.folder) == (None, tmp_path / "run")
    assert str(caught.value) == f"interrupted before an epoch ended; nothing was saved in {tmp_path / 'run'}"


# -- evaluate and predict ---------------------------------------------------------------------------
def test_evaluate_measures_what_training_measured(trained):
    evaluation = evaluate(trained.folder / "checkpoint.npz", device="cpu", quiet=True)
    assert evaluation.loss == pytest.approx(trained.evaluation.loss, rel=1e-6)
    np.testing.assert_array_equal(evaluation.predictions, trained.evaluation.predictions)
    np.testing.assert_array_equal(evaluation.confusion, trained.evaluation.confusion)


def test_predict_agrees_with_evaluate_in_either_image_layout(trained):
    _, test = make_synthetic(SMALL["train_size"], SMALL["test_size"], seed=0)
    channels_first = test.images[:10]
    prediction = predict(trained.folder / "checkpoint.npz", channels_first, device="cpu", quiet=True)
    assert isinstance(prediction, Prediction) and prediction.probabilities.shape == (10, 10)
    np.testing.assert_allclose(prediction.probabilities.sum(axis=1), 1.0)
    np.testing.assert_array_equal(prediction.classes, trained.evaluation.predictions[:10])
    channels_last = predict(trained.folder / "checkpoint.npz", channels_first.transpose(0, 2, 3, 1), device="cpu", quiet=True)
    np.testing.assert_array_equal(channels_last.probabilities, prediction.probabilities)
    assert (prediction.top(3)[:, 0] == prediction.classes).all()


def test_evaluate_and_predict_refuse_settings_they_would_ignore(trained):
    with pytest.raises(XpnetError, match="^'epochs' does not apply to evaluate"):
        evaluate(trained.folder / "best.npz", epochs=3)
    with pytest.raises(XpnetError, match="^'lr' does not apply to predict"):
        predict(trained.folder / "best.npz", np.zeros((1, 32, 32, 3), np.uint8), lr=0.1)
    with pytest.raises(XpnetError, match=r"uint8 array \(N, 32, 32, 3\)"):
        predict(trained.folder / "best.npz", np.zeros((1, 28, 28), np.uint8), quiet=True)


def test_evaluate_on_the_strict_backend_agrees_with_the_cpu(trained):
    """The notebook's "same model on another backend": array-api-strict, which stands for CuPy."""
    strict = evaluate(trained.folder / "best.npz", device="strict", quiet=True)
    cpu = evaluate(trained.folder / "best.npz", device="cpu", quiet=True)
    np.testing.assert_array_equal(strict.predictions, cpu.predictions)
    assert strict.loss == pytest.approx(cpu.loss, rel=1e-5)
