"""best.npz always holds the epoch the run reports as best, also on a resume into another folder.

The test accuracies are set per epoch (the trainer's evaluation is wrapped), so that the best
epoch is a chosen one: epoch 2 of a run resumed after epoch 3, which the new folder has no
weights of until they are copied from the source's best.npz.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
from helpers import TINY, run

from training.loop.trainer import Trainer
from training.run import RunConfig, train
from training.saving.checkpoint import read_header

pytestmark = pytest.mark.usefixtures("private_cache")

ACCURACY = {1: 0.5, 2: 0.9, 3: 0.6, 4: 0.7, 5: 0.8}  # epoch 2 is the best; epochs 4 and 5 would beat only epoch 3


@pytest.fixture
def accuracies(monkeypatch):
    """Make each epoch's test accuracy the one in a table (ACCURACY, changeable by the test)."""
    table = dict(ACCURACY)
    evaluate = Trainer.evaluate

    def chosen(self, loader):
        epoch = len(self.history) + 1  # the epoch being evaluated (history holds the ones before)
        return dataclasses.replace(evaluate(self, loader), accuracy=table[epoch])

    monkeypatch.setattr(Trainer, "evaluate", chosen)
    return table


def config(out, epochs, quiet=True, **kwargs) -> RunConfig:
    return RunConfig(model="lnet", train_size=64, test_size=32, batch_size=32, device="cpu", quiet=quiet,
                     out=str(out), epochs=epochs, **kwargs)


def epoch_of(path) -> int:
    return int(read_header(path)["epoch"])


def test_resume_into_another_folder_keeps_the_best_epoch_of_the_source(tmp_path, accuracies):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train(config(a, 3)).best_epoch == 2 and epoch_of(a / "best.npz") == 2
    result = train(config(b, 5, resume=str(a / "checkpoint.npz")))
    assert result.best_epoch == 2
    assert epoch_of(b / "best.npz") == 2, "B/best.npz is the reported best, not B's first epoch"
    assert (b / "best.npz").read_bytes() == (a / "best.npz").read_bytes()
    assert json.loads((b / "metrics.json").read_text())["best_epoch"] == 2


def test_a_later_best_replaces_it(tmp_path, accuracies):
    accuracies[5] = 0.95
    a, b = tmp_path / "a", tmp_path / "b"
    train(config(a, 3))
    result = train(config(b, 5, resume=str(a / "checkpoint.npz")))
    assert result.best_epoch == 5 and epoch_of(b / "best.npz") == 5


def test_resume_from_the_best_file_into_another_folder(tmp_path, accuracies):
    a, b = tmp_path / "a", tmp_path / "b"
    train(config(a, 3))
    result = train(config(b, 4, resume=str(a / "best.npz")))  # epoch 2 continued: epochs 3 and 4 anew
    assert result.best_epoch == 2 and epoch_of(b / "best.npz") == 2


def test_without_the_best_epochs_weights_best_npz_waits_for_a_better_epoch(tmp_path, accuracies):
    a, b = tmp_path / "a", tmp_path / "b"
    train(config(a, 3))
    (a / "best.npz").unlink()
    lines = []
    result = train(config(b, 5, quiet=False, resume=str(a / "checkpoint.npz")), log=lines.append)
    assert result.best_epoch == 2
    assert not (b / "best.npz").exists(), "no best.npz rather than one of an epoch that is not the best"
    assert (f"note: no saved weights of epoch 2, the best so far, were found next to {a / 'checkpoint.npz'}; "
            f"{b / 'best.npz'} will hold the first epoch that beats it") in lines


def test_resume_in_its_own_folder_keeps_its_best(tmp_path, accuracies):
    a = tmp_path / "a"
    train(config(a, 3))
    best = (a / "best.npz").read_bytes()
    assert train(config(a, 5, resume=str(a / "checkpoint.npz"))).best_epoch == 2
    assert (a / "best.npz").read_bytes() == best


def test_the_cli_reports_the_epoch_best_npz_holds(tmp_path, capsys, accuracies):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(TINY + ["--epochs", "3", "--out", str(a)], capsys)[0] == 0
    code, stdout, err = run(["--resume", str(a / "checkpoint.npz"), "--epochs", "5", "--out", str(b), "--device", "cpu",
                             "--quiet"], capsys)
    assert code == 0, err
    assert "best 90.00% (epoch 2)" in stdout.strip().splitlines()[-1]
    assert epoch_of(b / "best.npz") == 2


def test_the_cli_lists_only_the_files_it_wrote(tmp_path, capsys, accuracies):
    """Without the best epoch's weights, B has no best.npz yet, and the `done:` line does not claim one."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(TINY + ["--epochs", "3", "--out", str(a)], capsys)[0] == 0
    (a / "best.npz").unlink()
    code, stdout, err = run(["--resume", str(a / "checkpoint.npz"), "--epochs", "4", "--out", str(b), "--device", "cpu",
                             "--quiet"], capsys)
    assert code == 0, err
    done = stdout.strip().splitlines()[-1]
    assert done.startswith("done:") and "best.npz" not in done and "checkpoint.npz metrics.json" in done
    assert not (b / "best.npz").exists()
