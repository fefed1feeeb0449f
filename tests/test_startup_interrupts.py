"""A stop signal while a run starts up, or while its last epoch is saved, is never lost.

The random-moment test of test_faults.py rarely hits a given moment of start-up, and a run
that forgot the signal would end "fine" (exit 0, every file written). So these tests deliver
the signal at each step of start-up on purpose, from a patched step of the run API
(training/run/fit.py), in the three ways a signal can reach Python:

* raised: the handler raises KeyboardInterrupt where the program is;
* deferred: it arrives inside ``interrupts.deferred()`` (an import, a file being written),
  where it is only recorded;
* swallowed: it arrives inside a ``__del__``, where Python drops the KeyboardInterrupt.

Whichever way, the run must end with exit code 130, one line on stderr, and no run folder
(a resumed run's folder as it was).
"""
from __future__ import annotations

import signal

import pytest
from helpers import TINY, cli_in_a_process, run

from training import interrupts
from training.run import fit
from training.saving.checkpoint import load_checkpoint

# The steps of start-up, in order, as fit.py calls them once the run folder is claimed.
STEPS = ["choose_backend", "load_training_data", "build_model", "make_optimizer", "make_loaders", "planned_schedule",
         "Trainer"]


class _SignalWhenCollected:
    def __del__(self):
        signal.raise_signal(signal.SIGINT)  # the handler's KeyboardInterrupt is dropped by Python


def deliver(how: str) -> None:
    """Send this process SIGINT, arriving as ``how`` says."""
    if how == "raised":
        signal.raise_signal(signal.SIGINT)
    elif how == "deferred":
        with interrupts.deferred():
            signal.raise_signal(signal.SIGINT)
    else:  # swallowed
        _SignalWhenCollected()  # collected at once
    assert interrupts.received() == signal.SIGINT


def signal_during(monkeypatch, step: str, how: str) -> list:
    """Make fit.py's ``step`` deliver the signal, once, before doing its work; returns the calls seen."""
    original, calls = getattr(fit, step), []
    if step == "Trainer":
        class SignallingTrainer(original):
            def __init__(self, *args, **kwargs):
                calls.append(step)
                deliver(how)
                super().__init__(*args, **kwargs)
        monkeypatch.setattr(fit, step, SignallingTrainer)
        return calls

    def signalling(*args, **kwargs):
        calls.append(step)
        deliver(how)
        return original(*args, **kwargs)

    monkeypatch.setattr(fit, step, signalling)
    return calls


@pytest.mark.usefixtures("private_cache")
@pytest.mark.parametrize("how", ["raised", "deferred", "swallowed"])
@pytest.mark.parametrize("step", STEPS)
def test_a_signal_during_start_up_gives_130_and_no_run_folder(tmp_path, capsys, monkeypatch, step, how):
    out = tmp_path / "run"
    calls = signal_during(monkeypatch, step, how)
    code, stdout, err = run(TINY + ["--epochs", "2", "--out", str(out)], capsys)
    assert calls == [step]
    assert code == 130, err
    assert err == f"interrupted before an epoch ended; nothing was saved in {out}\n"
    assert "done:" not in stdout
    assert not out.exists()


@pytest.mark.usefixtures("private_cache")
@pytest.mark.parametrize("how", ["raised", "deferred", "swallowed"])
def test_a_signal_during_a_resumes_start_up_keeps_its_folder_as_it_was(tmp_path, capsys, monkeypatch, how):
    out = tmp_path / "run"
    assert run(TINY + ["--epochs", "1", "--out", str(out)], capsys)[0] == 0
    files = {path.name: path.read_bytes() for path in out.iterdir()}
    checkpoint = out / "checkpoint.npz"
    signal_during(monkeypatch, "build_model", how)
    code, _, err = run(["--resume", str(checkpoint), "--epochs", "2", "--device", "cpu", "--quiet"], capsys)
    assert code == 130, err
    assert err == f"interrupted: {checkpoint} holds epoch 1; continue with: python cli.py --resume {checkpoint} --epochs 2\n"
    assert {path.name: path.read_bytes() for path in out.iterdir()} == files


@pytest.mark.usefixtures("private_cache")
def test_a_signal_while_the_last_checkpoint_is_written_still_ends_the_run_as_interrupted(tmp_path, capsys, monkeypatch):
    """The checkpoint is finished first (the signal is deferred); the run then stops with 130,
    its last epoch saved, instead of finishing as if no one had pressed Ctrl-C."""
    out = tmp_path / "run"
    from training.saving import checkpoint as checkpoint_module

    real_write, calls = checkpoint_module.write_atomically, []

    def write_with_a_signal(path, write, **options):
        def signal_then_write(stream):
            if path.name == "checkpoint.npz":  # epoch 1's, the last
                calls.append(1)
                signal.raise_signal(signal.SIGINT)  # inside write_atomically: recorded, the file is finished
            write(stream)
        return real_write(path, signal_then_write, **options)

    monkeypatch.setattr(checkpoint_module, "write_atomically", write_with_a_signal)
    code, stdout, err = run(TINY + ["--epochs", "1", "--out", str(out)], capsys)
    checkpoint = out / "checkpoint.npz"
    assert calls == [1]
    assert code == 130, err
    assert "done:" not in stdout
    assert err.strip().splitlines()[-1] == (f"interrupted: {checkpoint} holds epoch 1; continue with: "
                                            f"python cli.py --resume {checkpoint} --epochs 1")
    assert load_checkpoint(checkpoint).epoch == 1  # finished, not cut in half
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_a_signal_from_start_up_in_a_real_process(tmp_path):
    """`python cli.py` itself (its handlers installed as a program's), with SIGTERM sent to it by
    its own model building: exit code 130, one line, no run folder."""
    out = tmp_path / "run"
    patch = (
        "import os, signal\n"
        "from training.run import fit\n"
        "original = fit.build_model\n"
        "def build_model(*args, **kwargs):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return original(*args, **kwargs)\n"
        "fit.build_model = build_model\n"
    )
    result = cli_in_a_process(patch, TINY + ["--epochs", "2", "--out", str(out)], tmp_path / "cache")
    assert result.returncode == 130, result.stderr
    assert result.stderr == f"interrupted before an epoch ended; nothing was saved in {out}\n"
    assert not out.exists()
