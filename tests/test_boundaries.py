"""The ends of every validated range: the last value inside is accepted, the first outside refused.

Validation is tested elsewhere with values far outside (a std of 0, a test size of -4).
A check written with ``<`` for ``<=`` passes those tests and refuses a run that did nothing
wrong: an accuracy of exactly 1.0 (the MLP on 32 images reaches it at epoch 11), an
accuracy of 0 (its first epoch), a momentum of 0. So for each field that is checked today
(a checkpoint's history, normalisation, header counts and weights; metrics.json; every
RunConfig setting, from Python, the command line and a checkpoint's config), both ends.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import run, write_edited_checkpoint

from training.errors import CheckpointError, XpnetError
from training.run.config import RULES, RunConfig, SettingError, check_saved_setting
from training.saving.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("private_cache")

TINY_NUMBER = 5e-324  # the smallest positive double: the first value past 0
BIGGEST = 1.7976931348623157e308  # the largest finite double


def below(x: float) -> float:
    return float(np.nextafter(x, -math.inf))


def above(x: float) -> float:
    return float(np.nextafter(x, math.inf))


@pytest.fixture(scope="module")
def template(finished_run) -> dict:
    """The arrays of a finished 2-epoch run's checkpoint.npz, its header decoded as ``meta``."""
    with np.load(finished_run / "checkpoint.npz", allow_pickle=False) as stored:
        arrays = dict(stored)
    return arrays


def written(tmp_path: Path, template: dict, change_meta=None, change_arrays=None) -> Path:
    """A copy of the template checkpoint with its header and/or arrays changed."""
    return write_edited_checkpoint(tmp_path / "checkpoint.npz", template, change_meta, change_arrays)


def checked(path: Path):
    """Load and run every check --resume runs on a checkpoint's history, normalisation and weights."""
    checkpoint = load_checkpoint(path)
    checkpoint.check_history()
    checkpoint.normalisation()
    checkpoint.check_weights_finite()
    return checkpoint


# -- a checkpoint's history: accuracies in [0, 1], losses in [0, inf), timings in [0, inf) or NaN ------------
HISTORY = [
    ("train_acc", [0, 0.0, 1, 1.0], [below(0.0), above(1.0)]),
    ("test_acc", [0, 0.0, 1, 1.0], [below(0.0), above(1.0)]),
    ("train_loss", [0, 0.0, BIGGEST], [below(0.0), math.inf]),
    ("test_loss", [0, 0.0, BIGGEST], [below(0.0), math.inf, math.nan]),
    ("examples_per_sec", [0, 0.0, BIGGEST, math.nan], [below(0.0), math.inf]),
    ("seconds", [0, 0.0, BIGGEST, math.nan], [below(0.0), math.inf]),
]
NOT_NUMBERS = [True, False, None, "0.5", [0.5]]  # JSON true/false are not 1/0 here; no value is a string or list


@pytest.mark.parametrize("key, accepted, refused", HISTORY, ids=[key for key, _, _ in HISTORY])
def test_history_values_at_the_ends_of_their_range(tmp_path, template, key, accepted, refused):
    for value in accepted:
        checkpoint = checked(written(tmp_path, template, lambda meta: meta["history"][1].__setitem__(key, value)))
        got = checkpoint.history[1][key]
        assert got == value or (math.isnan(value) and math.isnan(got)), (key, value)
    for value in refused + NOT_NUMBERS:
        path = written(tmp_path, template, lambda meta: meta["history"][1].__setitem__(key, value))
        with pytest.raises(CheckpointError, match=rf"row 2 of its history has {key} = .*, which no training writes"):
            checked(path)


def test_a_history_row_without_keys_names_them_all(tmp_path, template):
    def drop(meta):
        del meta["history"][1]["train_loss"], meta["history"][1]["seconds"]
    with pytest.raises(CheckpointError, match="row 2 of its history has no train_loss, seconds; "):
        checked(written(tmp_path, template, drop))

def test_epoch_numbers_and_history_length(tmp_path, template):
    """An epoch 0 checkpoint with an empty history is whole; the epoch must count the rows exactly."""
    def epoch_zero(meta):
        meta["epoch"], meta["history"] = 0, []

    assert checked(written(tmp_path, template, epoch_zero)).epoch == 0
    for epoch in (1, 3):  # one fewer and one more than the two rows
        with pytest.raises(CheckpointError, match=f"holds epoch {epoch} but a history of 2 epochs"):
            checked(written(tmp_path, template, lambda meta: meta.__setitem__("epoch", epoch)))
    for number in (1, 3):  # row 2 must say epoch 2
        with pytest.raises(CheckpointError, match=f"row 2 of its history has epoch {number} where 2 belongs"):
            checked(written(tmp_path, template, lambda meta: meta["history"][1].__setitem__("epoch", number)))


@pytest.mark.parametrize("field", ["epoch", "step"])
def test_header_counts_start_at_zero(tmp_path, template, field):
    def set_to(value):
        def change(meta):
            meta[field] = value
            if field == "epoch":
                meta["history"] = []
        return change

    assert getattr(load_checkpoint(written(tmp_path, template, set_to(0))), field) == 0
    with pytest.raises(CheckpointError, match=f"'{field}' must be a whole number"):
        load_checkpoint(written(tmp_path, template, set_to(-1)))


# -- normalisation: each mean in [0, 1], each std in (0, 1] ------------------------------------------------
NORMALISATION = [
    ("mean", [0.0, 0, 1.0, 1], [below(0.0), above(1.0)], r"\[0, 1\]"),
    ("std", [TINY_NUMBER, 1.0, 1], [0.0, below(0.0), above(1.0)], r"\(0, 1\]"),
]


@pytest.mark.parametrize("name, accepted, refused, bounds", NORMALISATION, ids=["mean", "std"])
def test_normalisation_at_the_ends_of_its_range(tmp_path, template, name, accepted, refused, bounds):
    for value in accepted:
        checkpoint = checked(written(tmp_path, template, lambda meta: meta["config"].__setitem__(name, [value, 0.5, 0.5])))
        assert checkpoint.normalisation()[0 if name == "mean" else 1][0] == value
    for value in refused + NOT_NUMBERS:
        path = written(tmp_path, template, lambda meta: meta["config"].__setitem__(name, [0.5, 0.5, value]))
        with pytest.raises(CheckpointError, match=rf"its config has {name} = .*, expected 3 numbers in {bounds}"):
            checked(path)
    path = written(tmp_path, template, lambda meta: meta["config"].pop(name))  # the other one alone is not enough
    with pytest.raises(CheckpointError, match="has no normalisation statistics; it was not written by cli.py training$"):
        checked(path)


def test_normalisation_written_as_whole_numbers_is_read_as_float64(tmp_path, template):
    checkpoint = checked(written(tmp_path, template, lambda meta: meta["config"].update(mean=[0, 1, 1], std=[1, 1, 1])))
    mean, std = checkpoint.normalisation()
    assert mean.dtype == std.dtype == np.float64 and mean.tolist() == [0.0, 1.0, 1.0] and std.tolist() == [1.0] * 3

def test_weights_may_be_as_large_as_any_finite_number(tmp_path, template):
    def set_first(value):
        def change(arrays):
            weight = arrays["param/0.weight"].copy()
            weight.reshape(-1)[0] = value
            arrays["param/0.weight"] = weight
        return change

    for value in (np.finfo(np.float32).max, -np.finfo(np.float32).max, np.finfo(np.float32).smallest_subnormal):
        checked(written(tmp_path, template, change_arrays=set_first(value)))
    for value in (np.inf, -np.inf, np.nan):
        with pytest.raises(CheckpointError, match="parameter 0.weight holds NaN or infinite values"):
            checked(written(tmp_path, template, change_arrays=set_first(value)))


# -- metrics.json ----------------------------------------------------------------------------------------
def test_metrics_at_accuracies_zero_and_one_and_with_no_history(tmp_path):
    from types import SimpleNamespace

    from training.saving.metrics_file import write_metrics

    def row(epoch, acc):
        return {"epoch": epoch, "train_loss": 0.0, "train_acc": acc, "test_loss": 0.0, "test_acc": acc,
                "examples_per_sec": 1.0, "seconds": 1.0}

    path = tmp_path / "metrics.json"
    write_metrics(path, {}, [])
    assert json.loads(path.read_text()) == {"config": {}, "history": [], "best_epoch": None}
    confusion = np.array([[2, 0, 0], [0, 0, 0], [1, 0, 0]])  # class 1 absent: its accuracy is unknown, not 0
    write_metrics(path, {}, [row(1, 0.0), row(2, 1.0), row(3, 1.0)], SimpleNamespace(confusion=confusion))
    document = json.loads(path.read_text())
    assert document["best_epoch"] == 2  # the first epoch at the best accuracy, 1.0 included
    assert [r["test_acc"] for r in document["history"]] == [0.0, 1.0, 1.0]
    assert document["per_class_accuracy"] == [1.0, None, 0.0]


# -- every numeric RunConfig setting, from Python, from a flag and from a checkpoint's config ---------------
def range_ends(rule) -> tuple[list, list]:
    """(accepted, refused): the values at and just past each end of ``rule``'s range."""
    step_down = (lambda x: x - 1) if rule.kind is int else below
    step_up = (lambda x: x + 1) if rule.kind is int else above
    low = rule.kind(rule.minimum)
    accepted, refused = ([low], [step_down(low)]) if rule.inclusive else ([step_up(low)], [low])
    if rule.below is not None:
        high = rule.kind(rule.below)
        accepted.append(step_down(high))
        refused.append(high)
    elif rule.maximum is not None:  # at most this much: the most the program can honour
        high = rule.kind(rule.maximum)
        accepted.append(high)
        refused.append(step_up(high))
        if rule.kind is float:
            refused.append(math.inf)
    else:
        accepted.append(rule.kind(10**30) if rule.kind is int else BIGGEST)
        if rule.kind is float:
            refused.append(math.inf)
    if rule.kind is float:
        refused.append(math.nan)  # no comparison accepts it
    return accepted, refused


NUMERIC = sorted(name for name, rule in RULES.items() if rule.kind is not None)


def test_the_numeric_settings_are_the_ones_expected():
    """A new numeric setting is covered below automatically; this list says which ones exist today."""
    assert NUMERIC == ["batch_size", "dropout", "epochs", "lr", "momentum", "seed", "test_size", "train_size",
                       "weight_decay"]


@pytest.mark.parametrize("name", NUMERIC)
def test_each_numeric_setting_at_the_ends_of_its_range(name):
    rule = RULES[name]
    accepted, refused = range_ends(rule)
    for value in accepted:
        assert rule.problem(value) is None, (name, value)
        assert getattr(RunConfig(**{name: value}), name) == value
        assert rule.parse(repr(value)) == value  # the flag's text
        check_saved_setting(name, value)  # a checkpoint's config
    for value in refused:
        assert rule.problem(value), (name, value)
        with pytest.raises(SettingError, match=f"= {value!r}: "):
            RunConfig(**{name: value})
        with pytest.raises(ValueError, match="must be"):
            rule.parse(repr(value))
        with pytest.raises(XpnetError, match=f"the checkpoint's config has {name} = "):
            check_saved_setting(name, value)


def test_named_ends_of_the_ranges():
    """Spelled out for the ranges a user meets most: momentum 0, dropout 0, seed 0, one epoch."""
    assert RunConfig(momentum=0.0, dropout=0.0, seed=0, epochs=1, batch_size=1, weight_decay=0.0).momentum == 0.0
    for setting, value in (("momentum", 1.0), ("dropout", 1.0), ("seed", -1), ("epochs", 0), ("lr", 0.0)):
        with pytest.raises(SettingError):
            RunConfig(**{setting: value})


@pytest.mark.parametrize("name", sorted(name for name, rule in RULES.items() if rule.flag or rule.choices))
def test_each_choice_and_flag_setting_takes_exactly_its_values(name):
    rule = RULES[name]
    values = [True, False] if rule.flag else list(rule.choices)
    for value in values:
        assert rule.problem(value) is None, (name, value)
        check_saved_setting(name, value)
    for value in ([0, 1, "true", None] if rule.flag else [values[0].upper(), values[0] + " ", None]):
        assert rule.problem(value), (name, value)
        with pytest.raises(XpnetError):
            check_saved_setting(name, value)


# -- a real run at accuracy 0 and 1 resumes -------------------------------------------------------------
def test_a_run_that_reached_accuracy_one_resumes(tmp_path, capsys):
    """The MLP on 32 images: train accuracy 0 at epoch 1 and 1.0 at epoch 11 (no tuning: the defaults)."""
    out = tmp_path / "run"
    flags = ["--device", "cpu", "--model", "mlp", "--train-size", "32", "--test-size", "32", "--batch-size", "32",
             "--quiet"]
    code, _, err = run(flags + ["--epochs", "11", "--out", str(out)], capsys)
    assert code == 0, err
    accuracies = [row["train_acc"] for row in load_checkpoint(out / "checkpoint.npz").history]
    assert 0.0 in accuracies and 1.0 in accuracies, accuracies  # both ends of the range, in a real run
    code, _, err = run(["--resume", str(out / "checkpoint.npz"), "--epochs", "12", "--device", "cpu", "--quiet"], capsys)
    assert code == 0, err
    assert [row["epoch"] for row in load_checkpoint(out / "checkpoint.npz").history] == list(range(1, 13))
