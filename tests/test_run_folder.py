"""A run folder belongs to one run: a finished run is never lost, two processes never share
a folder, a resume never rolls a checkpoint back, and nothing is left behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SMALL, TINY, cli_in_a_process, copy_run, one_error_line, run, snapshot

from training.loop.trainer import Trainer
from training.run import folder as run_folder
from training.saving.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("private_cache")
REPO = Path(__file__).resolve().parent.parent


def test_a_new_run_refuses_a_folder_that_holds_a_run(tmp_path, capsys, finished_run):
    out = copy_run(finished_run, tmp_path / "run")
    before = snapshot(out)
    code, _, err = run(TINY + ["--model", "mlp", "--epochs", "1", "--out", str(out)], capsys)
    assert code == 2
    line = one_error_line(err)
    assert line == (f"error: {out} already holds a run (checkpoint.npz, best.npz, metrics.json, curves.png, confusion.png, mistakes.png, filters.png); "
                    f"a new run there would replace it: choose another --out, continue it with --resume "
                    f"{out / 'checkpoint.npz'}, or pass --overwrite to replace it")
    assert snapshot(out) == before


def test_overwrite_replaces_the_run(tmp_path, capsys, finished_run):
    out = copy_run(finished_run, tmp_path / "run")
    code, _, err = run(TINY + ["--optimizer", "sgd", "--epochs", "1", "--out", str(out), "--overwrite"], capsys)
    assert code == 0, err
    checkpoint = load_checkpoint(out / "checkpoint.npz")
    assert checkpoint.epoch == 1 and checkpoint.config["optimizer"] == "sgd"
    assert load_checkpoint(out / "best.npz").config["optimizer"] == "sgd"
    assert [row["epoch"] for row in json.loads((out / "metrics.json").read_text())["history"]] == [1]


def test_default_folders_of_runs_started_in_the_same_second_differ(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("training.run.fit.time.strftime", lambda *args: "20260101-120000")
    for _ in range(2):
        code, stdout, err = run(TINY + ["--epochs", "1"], capsys)
        assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["lnet-20260101-120000", "lnet-20260101-120000-2"]


def hold_lock_in_another_process(folder: Path) -> subprocess.Popen:
    """A second Python process that claims ``folder`` and keeps it until its stdin closes."""
    code = ("import sys; from training.run.folder import claim; f = claim(sys.argv[1]); "
            "print('claimed', flush=True); sys.stdin.read(); f.release()")
    process = subprocess.Popen([sys.executable, "-c", code, str(folder)], cwd=REPO, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdout.readline().strip() == "claimed"
    return process


def test_a_folder_in_use_by_another_process_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    holder = hold_lock_in_another_process(out)
    try:
        code, _, err = run(TINY + ["--epochs", "1", "--out", str(out)], capsys)
        assert os.listdir(out) == [run_folder.LOCK_NAME], "the refused run wrote nothing"
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert code == 2
    assert one_error_line(err) == (f"error: {out} is in use by another xpnet run (process {holder.pid}); "
                                   f"wait for it to end, or choose another --out")
    assert not out.exists(), "the holder made the folder, wrote nothing and removed it on release"
    code, _, err = run(TINY + ["--epochs", "1", "--out", str(out)], capsys)  # free again
    assert code == 0, err


def test_a_stale_lock_is_detected_and_taken_over(tmp_path, capsys):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(ended.stdout)
    out = tmp_path / "run"
    out.mkdir()
    (out / run_folder.LOCK_NAME).write_text(f"{dead_pid}\n")  # what a killed run leaves behind
    argv = [a for a in TINY if a != "--quiet"] + ["--epochs", "1", "--out", str(out)]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert f"note: {out} had a stale lock of process {dead_pid}, which has ended; taking it over" in stdout
    assert sorted(os.listdir(out)) == ["best.npz", "checkpoint.npz", "confusion.png", "curves.png", "filters.png", "metrics.json", "mistakes.png"]


def test_two_processes_started_together_on_one_folder_keep_one_run(tmp_path):
    """Both exit normally (one trains, the other refuses with one error line), and one whole run is there."""
    out = tmp_path / "run"
    env = {**os.environ, "XPNET_CACHE": str(tmp_path / "cache")}
    argv = [sys.executable, str(REPO / "cli.py"), *TINY, "--epochs", "1", "--out", str(out)]
    processes = [subprocess.Popen(argv, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(2)]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in processes]
    for p in processes:
        p.stdout.close(), p.stderr.close()
    assert sorted(code for code, _, _ in results) == [0, 2], results
    refused = next(err for code, _, err in results if code == 2)
    assert "is in use by another xpnet run" in one_error_line(refused) or "already holds a run" in one_error_line(refused)
    assert load_checkpoint(out / "checkpoint.npz").epoch == 1
    assert sorted(os.listdir(out)) == ["best.npz", "checkpoint.npz", "confusion.png", "curves.png", "filters.png", "metrics.json", "mistakes.png"]


# -- a resume never rolls back, never mixes two runs -------------------------------------------------
def two_epochs_keeping_the_first(tmp_path: Path, capsys) -> tuple[Path, bytes]:
    """A 2-epoch run's folder, and the bytes of its checkpoint.npz as it was after epoch 1."""
    out = tmp_path / "run"
    assert run(TINY + ["--epochs", "1", "--out", str(out)], capsys)[0] == 0
    epoch_one = (out / "checkpoint.npz").read_bytes()
    assert run(["--resume", str(out / "checkpoint.npz"), "--epochs", "2", "--device", "cpu", "--quiet"], capsys)[0] == 0
    return out, epoch_one


def test_resume_from_an_earlier_checkpoint_does_not_roll_back_a_later_one(tmp_path, capsys):
    out, epoch_one = two_epochs_keeping_the_first(tmp_path, capsys)
    (out / "best.npz").write_bytes(epoch_one)  # as when epoch 1 had the best accuracy
    before = snapshot(out)
    code, _, err = run(["--resume", str(out / "best.npz"), "--epochs", "2", "--device", "cpu", "--quiet"], capsys)
    assert code == 2
    assert one_error_line(err) == (
        f"error: {out / 'checkpoint.npz'} holds epoch 2 of this run, more than {out / 'best.npz'} (epoch 1); resuming "
        f"from there would roll it back: resume from {out / 'checkpoint.npz'} instead, write the resumed run to another "
        f"--out, or pass --overwrite to replace it")
    assert snapshot(out) == before
    code, _, err = run(["--resume", str(out / "best.npz"), "--epochs", "2", "--device", "cpu", "--quiet",
                        "--out", str(tmp_path / "branch")], capsys)
    assert code == 0, err
    assert snapshot(out) == before and load_checkpoint(tmp_path / "branch" / "checkpoint.npz").epoch == 2


def test_resume_into_a_folder_of_another_run_is_refused(tmp_path, capsys, finished_run):
    source = copy_run(finished_run, tmp_path / "a")
    other = tmp_path / "b"
    assert run(TINY + ["--optimizer", "sgd", "--epochs", "1", "--out", str(other)], capsys)[0] == 0
    before = snapshot(other)
    code, _, err = run(["--resume", str(source / "checkpoint.npz"), "--epochs", "3", "--out", str(other),
                        "--device", "cpu", "--quiet"], capsys)
    assert code == 2
    assert one_error_line(err) == (
        f"error: {other / 'checkpoint.npz'} belongs to another run (its history differs from that of "
        f"{source / 'checkpoint.npz'}); resuming there would replace that run: choose another --out, "
        f"or pass --overwrite to replace it")
    assert snapshot(other) == before


def test_resume_into_a_folder_holding_an_earlier_state_of_the_run(tmp_path, capsys):
    """A copy of epoch 1 of the same run may be carried forward: nothing in it is lost."""
    source, epoch_one = two_epochs_keeping_the_first(tmp_path, capsys)
    target = tmp_path / "target"
    target.mkdir()
    (target / "checkpoint.npz").write_bytes(epoch_one)
    code, _, err = run(["--resume", str(source / "checkpoint.npz"), "--epochs", "3", "--out", str(target),
                        "--device", "cpu", "--quiet"], capsys)
    assert code == 0, err
    assert load_checkpoint(target / "checkpoint.npz").epoch == 3


# -- nothing left behind ----------------------------------------------------------------------------
def test_an_early_error_leaves_no_empty_folder(tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "run"
    code, _, err = run(["--dataset", "svhn", "--data-dir", str(tmp_path / "nowhere"), "--device", "cpu", "--quiet",
                        "--out", str(out)], capsys)
    assert code == 2 and "SVHN folder" in one_error_line(err)
    assert os.listdir(tmp_path) == [], "the folders made for the run are removed again"


def test_an_early_interrupt_leaves_no_empty_folder(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("training.run.fit.load_training_data", interrupted)
    code, _, err = run(TINY + ["--out", str(tmp_path / "run")], capsys)
    assert code == 130
    assert err.strip() == f"interrupted before an epoch ended; nothing was saved in {tmp_path / 'run'}"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("which", [0, 1, 2])
def test_an_interrupt_inside_claim_leaves_no_folder(tmp_path, monkeypatch, when, which):
    """Without cli.py's signal handling (a notebook), a KeyboardInterrupt just before or just after
    any of claim's mkdirs removes every folder it made, the outer ones too."""
    out = tmp_path / "new" / "deeper" / "run"
    made, mkdir = [], Path.mkdir

    def interrupted_mkdir(self, *args, **kwargs):
        if when == "before" and len(made) == which:
            raise KeyboardInterrupt
        mkdir(self, *args, **kwargs)
        made.append(self)
        if when == "after" and len(made) == which + 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Path, "mkdir", interrupted_mkdir)
    with pytest.raises(KeyboardInterrupt):
        run_folder.claim(out)
    assert os.listdir(tmp_path) == []


def test_a_signal_while_the_folder_is_made_stops_the_run_and_leaves_no_folder(tmp_path):
    """Under cli.py's signal handling a real SIGINT that arrives the moment a folder was made is
    recorded, the claim finishes, and the run stops at its next check, releasing the folder.
    """
    out = tmp_path / "new" / "run"
    patch = (
        "import os, signal\n"
        "from pathlib import Path\n"
        "mkdir = Path.mkdir\n"
        "def mkdir_then_signal(self, *args, **kwargs):\n"
        "    mkdir(self, *args, **kwargs)\n"
        f"    if self == Path({str(out)!r}):\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "Path.mkdir = mkdir_then_signal\n"
    )
    result = cli_in_a_process(patch, TINY + ["--out", str(out)], tmp_path / "cache")
    assert result.returncode == 130, result.stderr
    assert result.stderr == f"interrupted before an epoch ended; nothing was saved in {out}\n"
    assert not (tmp_path / "new").exists()


def test_output_folder_under_a_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    code, _, err = run(SMALL + ["--epochs", "1", "--out", str(tmp_path / "file" / "run")], capsys)
    assert code == 2
    line = one_error_line(err)
    assert line.startswith("error: cannot create the output folder") and "choose another with --out" in line


def test_read_only_output_folder_fails_before_training(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    out.chmod(0o500)
    if os.access(out, os.W_OK):  # root ignores the mode: make the folder refuse files another way
        real_open = os.open

        def refuse_in_out(path, *args, **kwargs):  # the first file a run makes is its folder's lock
            if Path(path).parent == out:
                raise PermissionError(13, "Permission denied")
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(run_folder.os, "open", refuse_in_out)
    trained = []
    monkeypatch.setattr(Trainer, "fit", lambda self, *a, **k: trained.append(1))
    try:
        code, _, err = run(SMALL + ["--epochs", "1", "--out", str(out)], capsys)
    finally:
        out.chmod(0o700)
    assert code == 2 and not trained, "an unwritable --out must be found before training starts"
    line = one_error_line(err)
    assert f"the output folder {out} is not writable: Permission denied; choose another with --out" in line


# -- file modes, ~ --------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_run_files_respect_the_umask(tmp_path, capsys, umask):
    previous = os.umask(umask)
    try:
        code, _, err = run(TINY + ["--epochs", "1", "--out", str(tmp_path / "run")], capsys)
    finally:
        os.umask(previous)
    assert code == 0, err
    modes = {path.name: path.stat().st_mode & 0o777 for path in (tmp_path / "run").iterdir()}
    assert modes == dict.fromkeys(modes, 0o666 & ~umask) and len(modes) == 7


def test_out_expands_the_home_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run(TINY + ["--epochs", "1", "--out=~/x"], capsys)
    assert code == 0, err
    assert (tmp_path / "x" / "checkpoint.npz").is_file() and not (tmp_path / "~").exists()
    assert f"files in {tmp_path / 'x'}" in stdout


def test_overwrite_with_a_resume_replaces_only_another_runs_files(tmp_path, capsys, finished_run):
    """In its own folder a resume keeps best.npz; in a folder of another run, --overwrite removes that run's files."""
    own = copy_run(finished_run, tmp_path / "own")
    best = (own / "best.npz").read_bytes()
    code, stdout, err = run(["--resume", str(own / "checkpoint.npz"), "--epochs", "3", "--device", "cpu", "--overwrite"],
                            capsys)
    assert code == 0, err
    assert "--overwrite: removed" not in stdout
    assert (own / "best.npz").read_bytes() == best or load_checkpoint(own / "best.npz").epoch == 3  # kept, or bettered

    other = tmp_path / "other"
    assert run(TINY + ["--optimizer", "sgd", "--epochs", "1", "--out", str(other)], capsys)[0] == 0
    code, stdout, err = run(["--resume", str(own / "checkpoint.npz"), "--epochs", "4", "--device", "cpu",
                             "--out", str(other), "--overwrite"], capsys)
    assert code == 0, err
    assert f"--overwrite: removed the other run's checkpoint.npz, best.npz, metrics.json from {other}" in stdout
    assert load_checkpoint(other / "best.npz").config["optimizer"] == "adam"  # the resumed run's, none of the other's


def test_a_refusal_of_the_system_is_one_line(tmp_path, capsys, monkeypatch):
    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_folder.os, "ftruncate", disk_full)  # while writing the lock
    code, _, err = run(TINY + ["--epochs", "1", "--out", str(tmp_path / "run")], capsys)
    assert code == 2
    assert one_error_line(err) == (f"error: cannot write the lock file {tmp_path / 'run' / run_folder.LOCK_NAME}: "
                                   f"No space left on device; free some disk space, or choose another --out")
    assert os.listdir(tmp_path) == []


def test_a_refusal_of_the_system_that_no_check_foresaw_is_one_line():
    import cli

    assert cli.failure_line(OSError(28, "No space left on device")) == \
        "error: No space left on device; check that file's permissions and the free disk space"
    assert cli.failure_line(OSError(13, "Permission denied", "/x/y")) == \
        "error: Permission denied: /x/y; check that file's permissions and the free disk space"


def test_warnings_are_one_line_each(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XPNET_CACHE", str(tmp_path / "file" / "cache"))  # a cache folder that cannot be made
    code, _, err = run(TINY + ["--epochs", "1", "--out", str(tmp_path / "run")], capsys)
    assert code == 0
    assert err.startswith(f"warning: could not cache the synthetic data in {tmp_path / 'file' / 'cache'} (")
    assert len(err.strip().splitlines()) == 1


def test_an_interrupt_before_overwrite_took_effect_does_not_offer_the_other_runs_checkpoint(tmp_path, capsys, monkeypatch,
                                                                                            finished_run):
    out = copy_run(finished_run, tmp_path / "run")
    before = snapshot(out)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("training.run.fit.load_training_data", interrupted)
    code, _, err = run(TINY + ["--optimizer", "sgd", "--out", str(out), "--overwrite"], capsys)
    assert code == 130
    assert err.strip() == f"interrupted before an epoch ended; nothing was saved in {out}"
    assert snapshot(out) == before, "--overwrite had not yet removed anything"
