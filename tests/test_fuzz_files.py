"""Links and special files at every name xpnet writes or reads, and --overwrite against a stranger's files.

At each name xpnet keeps a file of its own (the run folder's lock and run files, the partial
download, the synthetic-data cache) the tests put what a careless or mildly hostile user might
leave there: a symbolic link out of the folder or within it, a dangling link, a folder, a FIFO,
a character device like /dev/zero. Each case must end in exactly one ``error:`` line that names
the path, exit code 2, nothing written outside the run's folder (a snapshot of a folder beside
it, holding the links' targets, is compared), the thing itself left as it was, and no run lost.
No case may block: a FIFO that a test's code opened would hang it, so each run has a watchdog
that opens the FIFO's other end after a while and fails the test.

Then ``--overwrite``: it replaces a run (recognised by its files' content), never a stranger's
file, checks everything before it moves anything, and keeps the old run aside until the new run
has saved its first epoch: restored when the new run fails or is interrupted before, removed after.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import TINY, copy_run, one_error_line, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import training.loop.trainer as trainer_module
from training.data import synthetic
from training.data.download import RemoteFile, download_svhn
from training.errors import DownloadError, XpnetError
from training.run import folder as run_folder
from training.run import set_aside
from training.saving.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("private_cache")

KINDS = ("link-out", "link-in", "dangling", "folder", "fifo", "device")
NAMES = (run_folder.LOCK_NAME,) + run_folder.RUN_FILES
VICTIM = b"a file outside the run folder, which no run may change\n"
WATCHDOG_S = 20


# -- the world around a run: what is outside, what is at a name ----------------------------------------
def world(tmp_path: Path) -> tuple[Path, Path]:
    """``(outside, run)``: a folder beside the run folder holding a victim file, and the (empty) run folder."""
    outside, out = tmp_path / "outside", tmp_path / "run"
    outside.mkdir()
    out.mkdir(exist_ok=True)
    (outside / "victim.txt").write_bytes(VICTIM)
    return outside, out


def place(kind: str, path: Path, outside: Path) -> None:
    """Put a thing of ``kind`` at ``path`` (whose folder exists)."""
    if kind == "link-out":
        path.symlink_to(outside / "victim.txt")
    elif kind == "link-in":
        (path.parent / "mine.txt").write_bytes(b"a file of the user's in the run folder\n")
        path.symlink_to(path.parent / "mine.txt")
    elif kind == "dangling":
        path.symlink_to(outside / "nothing-here.txt")
    elif kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:  # a character device with /dev/zero's numbers: reading it never ends
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))
        except (PermissionError, AttributeError):
            pytest.skip("making a device file needs privileges this test does not have")


def tree(folder: Path) -> dict:
    """Every entry under ``folder``: a link as its target, a regular file as its bytes, anything else as its kind.
    Read without following links and without opening a FIFO or a device."""
    found = {}
    for root, folders, files in os.walk(folder):
        for name in folders + files:
            path = Path(root) / name
            mode = os.lstat(path).st_mode
            key = str(path.relative_to(folder))
            if stat.S_ISLNK(mode):
                found[key] = ("link", os.readlink(path))
            elif stat.S_ISREG(mode):
                found[key] = path.read_bytes()
            else:
                found[key] = stat.S_IFMT(mode)
    return found


@contextmanager
def watchdog(path: Path):
    """Fail (instead of hanging for ever) when the code under test blocks on the FIFO at ``path``:
    after WATCHDOG_S, open its other end, which lets a blocked open go on."""
    fired = []

    def unblock():
        fired.append(True)
        for flags in (os.O_RDONLY | os.O_NONBLOCK, os.O_WRONLY | os.O_NONBLOCK):
            try:
                os.close(os.open(path, flags))
            except OSError:
                pass

    timer = threading.Timer(WATCHDOG_S, unblock)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
    assert not fired, f"blocked on the FIFO {path}"


def refused(argv, capsys, tmp_path: Path, path: Path) -> str:
    """Run the CLI; it must fail with one ``error:`` line naming ``path``; returns that line."""
    with watchdog(path):
        code, _, err = run(argv, capsys)
    assert code == 2, err
    line = one_error_line(err)
    assert str(path) in line, line
    assert "Traceback" not in err
    return line


def assert_nothing_outside_changed(tmp_path: Path, outside_before: dict) -> None:
    assert tree(tmp_path / "outside") == outside_before, "a write went outside the run folder"
    assert not (tmp_path / "outside" / "nothing-here.txt").exists(), "a dangling link created a file"


# -- a link or a special file at a name of the run folder ----------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", NAMES)
def test_a_new_run_refuses_anything_but_a_regular_file_at_its_names(tmp_path, capsys, name, kind):
    outside, out = world(tmp_path)
    place(kind, out / name, outside)
    outside_before, run_before = tree(outside), tree(out)
    line = refused(TINY + ["--epochs", "1", "--out", str(out)], capsys, tmp_path, out / name)
    assert "permission" not in line and "disk" not in line, line
    assert_nothing_outside_changed(tmp_path, outside_before)
    assert tree(out) == run_before, "the run folder must be left as it was"


@pytest.mark.parametrize("kind", ["link-out", "dangling", "folder", "fifo", "device"])
@pytest.mark.parametrize("name", ["best.npz", "metrics.json", "curves.png", run_folder.LOCK_NAME])
def test_overwrite_and_resume_refuse_it_too_and_lose_no_run(tmp_path, capsys, finished_run, name, kind):
    outside, _ = world(tmp_path)
    out = copy_run(finished_run, tmp_path / "run2")
    if name != run_folder.LOCK_NAME:
        (out / name).unlink()
    place(kind, out / name, outside)
    outside_before, run_before = tree(outside), tree(out)
    for argv in (TINY + ["--epochs", "1", "--out", str(out), "--overwrite"],
                 ["--resume", str(out / "checkpoint.npz"), "--epochs", "3", "--device", "cpu", "--quiet"],
                 ["--resume", str(out / "checkpoint.npz"), "--epochs", "3", "--device", "cpu", "--quiet", "--overwrite"]):
        refused(argv, capsys, tmp_path, out / name)
        assert_nothing_outside_changed(tmp_path, outside_before)
        assert tree(out) == run_before, f"{argv} changed the run"


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True),
       kinds=st.lists(st.sampled_from(KINDS[:-1]), min_size=3, max_size=3), overwrite=st.booleans())
def test_any_mix_of_special_files_is_one_error_naming_one_of_them(tmp_path_factory, capsys, names, kinds, overwrite):
    tmp_path = tmp_path_factory.mktemp("mix")
    outside, out = world(tmp_path)
    for name, kind in zip(names, kinds):
        place(kind, out / name, outside)
    outside_before, run_before = tree(outside), tree(out)
    argv = TINY + ["--epochs", "1", "--out", str(out)] + (["--overwrite"] if overwrite else [])
    with watchdog(out / names[0]):
        code, _, err = run(argv, capsys)
    assert code == 2
    line = one_error_line(err)
    assert any(str(out / name) in line for name in names), line
    assert_nothing_outside_changed(tmp_path, outside_before)
    assert tree(out) == run_before


# -- the lock's own messages ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind, said", [("folder", "a folder"), ("fifo", "a FIFO (named pipe)"),
                                        ("link-out", "a symbolic link to")])
def test_a_lock_that_is_no_file_says_what_it_is(tmp_path, capsys, kind, said):
    outside, out = world(tmp_path)
    lock = out / run_folder.LOCK_NAME
    place(kind, lock, outside)
    line = refused(TINY + ["--epochs", "1", "--out", str(out)], capsys, tmp_path, lock)
    assert line.startswith(f"error: {lock} is {said}") and "remove it (xpnet makes its lock file itself)" in line
    assert "corrupt" not in line


# -- the partial download and the data files -------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_a_partial_download_is_never_written_through(tmp_path, kind):
    outside, data = world(tmp_path)
    part = data / "train_32x32.mat.part"
    place(kind, part, outside)
    outside_before, data_before = tree(outside), tree(data)
    table = {"train": RemoteFile("train_32x32.mat", 10, "0" * 64)}
    with watchdog(part), pytest.raises(DownloadError) as raised:  # refused before any connection is made
        download_svhn(data, ("train",), checksums=table, base_url="http://127.0.0.1:9/", progress=False, timeout=1)
    assert str(part) in str(raised.value) and "remove it (xpnet makes train_32x32.mat.part itself)" in str(raised.value)
    assert_nothing_outside_changed(tmp_path, outside_before)
    assert tree(data) == data_before


@pytest.mark.parametrize("kind", ["link-out", "dangling", "fifo", "device"])
def test_download_through_the_cli_refuses_a_special_partial_file(tmp_path, capsys, kind):
    outside, data = world(tmp_path)
    part = data / "train_32x32.mat.part"
    place(kind, part, outside)
    outside_before = tree(outside)
    refused(["--dataset", "svhn", "--download", "--data-dir", str(data), "--device", "cpu", "--quiet",
             "--out", str(tmp_path / "new")], capsys, tmp_path, part)
    assert_nothing_outside_changed(tmp_path, outside_before)
    assert not (tmp_path / "new").exists(), "the run folder made for the run is removed again"


@pytest.mark.parametrize("kind", ["fifo", "device", "folder", "dangling"])
def test_a_data_file_that_is_no_file_is_not_read(tmp_path, kind):
    outside, data = world(tmp_path)
    target = data / "train_32x32.mat"
    place(kind, target, outside)
    table = {"train": RemoteFile("train_32x32.mat", 10, "0" * 64)}
    with watchdog(target), pytest.raises(DownloadError, match="not the official file; xpnet leaves it alone"):
        download_svhn(data, ("train",), checksums=table, base_url="http://127.0.0.1:9/", progress=False, timeout=1)
    assert not os.path.lexists(data / "train_32x32.mat.part")


# -- the synthetic-data cache ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["link-out", "dangling", "fifo", "device", "folder"])
def test_the_synthetic_cache_is_only_a_regular_file(tmp_path, capsys, monkeypatch, kind):
    outside, _ = world(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("XPNET_CACHE", str(cache))
    path = synthetic.cache_path(64, 32, 0)  # TINY's sizes, seed 0
    place(kind, path, outside)
    outside_before = tree(outside)
    line = refused(TINY + ["--epochs", "1", "--out", str(tmp_path / "new")], capsys, tmp_path, path)
    assert "XPNET_CACHE" in line
    assert_nothing_outside_changed(tmp_path, outside_before)


def test_a_plain_hdf5_file_given_as_mat_is_called_so(tmp_path, capsys):
    data = tmp_path / "svhn"
    data.mkdir()
    for name in ("train_32x32.mat", "test_32x32.mat"):
        (data / name).write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(4096))  # what h5py writes first
    code, _, err = run(["--dataset", "svhn", "--data-dir", str(data), "--device", "cpu", "--quiet",
                        "--out", str(tmp_path / "run")], capsys)
    assert code == 2
    line = one_error_line(err)
    assert f"{data / 'train_32x32.mat'} is an HDF5 file, not a MATLAB .mat file" in line and "corrupt" not in line


def test_a_full_disk_while_the_lock_is_written_names_the_lock(tmp_path, capsys, monkeypatch):
    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_folder.os, "write", disk_full)
    out = tmp_path / "run"
    code, _, err = run(TINY + ["--epochs", "1", "--out", str(out)], capsys)
    assert code == 2
    assert one_error_line(err) == (f"error: cannot write the lock file {out / run_folder.LOCK_NAME}: No space left on "
                                   f"device; free some disk space, or choose another --out")
    assert not out.exists()


# -- --overwrite: a run, never a stranger's files ---------------------------------------------------------
STRANGERS = {
    "metrics.json": (b'{"loss": [0.9, 0.5], "note": "my own experiment"}', "JSON that is not an xpnet metrics.json (no config, history and best_epoch)"),
    "checkpoint.npz": (b"PK\x03\x04 my zip of something", "a file that is not an xpnet checkpoint"),
    "curves.png": (b"\x89PNG\r\n\x1a\n" + bytes(64), "a PNG image that xpnet did not draw"),
    "best.npz": (b"", "an empty file"),
}


@pytest.mark.parametrize("name", list(STRANGERS))
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_strangers_file_alone_is_never_replaced_nor_called_a_run(tmp_path, capsys, name, overwrite):
    out = tmp_path / "run"
    out.mkdir()
    data, what = STRANGERS[name]
    (out / name).write_bytes(data)
    line = refused(TINY + ["--epochs", "1", "--out", str(out)] + (["--overwrite"] if overwrite else []),
                   capsys, tmp_path, out / name)
    assert line == (f"error: {out / name} is {what}, so no run's; a run there would replace it, so xpnet leaves it "
                    f"alone (--overwrite replaces only a run's files): move it away, or choose another --out")
    assert "a run (" not in line
    assert tree(out) == {name: data}


@pytest.mark.parametrize("name", ["metrics.json", "mistakes.png"])
def test_overwrite_checks_every_file_before_it_moves_any(tmp_path, capsys, finished_run, name):
    """A stranger's file among a run's files: the run is not touched either."""
    out = copy_run(finished_run, tmp_path / "run")
    (out / name).write_bytes(STRANGERS.get(name, (b"my own picture",))[0])
    before = tree(out)
    refused(TINY + ["--epochs", "1", "--out", str(out), "--overwrite"], capsys, tmp_path, out / name)
    assert tree(out) == before


def test_a_folder_at_a_run_files_name_is_refused_up_front_with_overwrite(tmp_path, capsys, finished_run):
    out = copy_run(finished_run, tmp_path / "run")
    (out / "confusion.png").unlink()
    (out / "confusion.png").mkdir()
    before = tree(out)
    line = refused(TINY + ["--epochs", "1", "--out", str(out), "--overwrite"], capsys, tmp_path, out / "confusion.png")
    assert line == (f"error: {out / 'confusion.png'} is a folder, where xpnet keeps a regular file; it leaves it alone: "
                    f"move it away, or choose another --out")
    assert tree(out) == before, "the old run's checkpoint, best and metrics are all still there"


def hidden(out: Path) -> list[str]:
    return [p.name for p in out.iterdir() if p.name.startswith(set_aside.PREFIX)]


@pytest.mark.parametrize("failure", ["error", "interrupt", "disk full at the first checkpoint"])
def test_overwrite_that_fails_before_the_first_epoch_restores_the_old_run(tmp_path, capsys, monkeypatch, finished_run,
                                                                          failure):
    out = copy_run(finished_run, tmp_path / "run")
    before = tree(out)
    moved = []

    def fail(*args, **kwargs):
        moved.append(sorted(os.listdir(out)))  # what the folder holds while the new run trains
        if failure == "interrupt":
            raise KeyboardInterrupt
        if failure == "error":
            raise XpnetError("the new run failed")
        raise OSError(28, "No space left on device")

    if failure.startswith("disk full"):
        real = trainer_module.save_checkpoint
        monkeypatch.setattr(trainer_module, "save_checkpoint", lambda path, **kw: fail() if path.name == "checkpoint.npz"
                            else real(path, **kw))
    else:
        monkeypatch.setattr(trainer_module.Trainer, "_train_epoch", fail)
    code, stdout, err = run([a for a in TINY if a != "--quiet"] + ["--epochs", "1", "--out", str(out), "--overwrite"],
                            capsys)
    assert code == (130 if failure == "interrupt" else 2)
    assert moved and not any(name in run_folder.RUN_FILES for name in moved[0]), "the old run was set aside meanwhile"
    assert tree(out) == before, "the old run is back, byte for byte, and nothing else is left"
    assert "are back in" in stdout and "removed" not in stdout
    if failure != "interrupt":
        one_error_line(err)


def test_overwrite_that_saves_its_first_epoch_removes_the_old_run(tmp_path, capsys, finished_run):
    out = copy_run(finished_run, tmp_path / "run")
    code, stdout, err = run([a for a in TINY if a != "--quiet"] + ["--optimizer", "sgd", "--epochs", "1", "--out", str(out),
                                                                   "--overwrite"], capsys)
    assert code == 0, err
    assert f"--overwrite: removed the other run's {', '.join(run_folder.RUN_FILES[:7])} from {out}" in stdout
    assert sorted(os.listdir(out)) == sorted(run_folder.RUN_FILES[:7]), "no hidden folder is left"
    assert load_checkpoint(out / "checkpoint.npz").config["optimizer"] == "sgd"
    assert [row["epoch"] for row in json.loads((out / "metrics.json").read_text())["history"]] == [1]


def test_a_run_set_aside_by_a_killed_overwrite_comes_back(tmp_path, capsys, finished_run):
    """Killed after it moved the old run aside and before its first epoch: the next run puts it back."""
    out = tmp_path / "run"
    aside = out / f"{set_aside.PREFIX}99999"
    shutil.copytree(finished_run, aside)
    before = tree(aside)
    line = refused(TINY + ["--epochs", "1", "--out", str(out)], capsys, tmp_path, out)
    assert "already holds a run" in line
    assert tree(out) == before and not hidden(out)


def test_a_run_set_aside_that_cannot_come_back_is_named(tmp_path, capsys, finished_run):
    """Killed after it saved its first epoch, before it removed the run it replaced: the next run
    in that folder finds a run there, so it cannot put the old one back; it says where it is,
    and leaves it alone."""
    out = copy_run(finished_run, tmp_path / "run")
    aside = out / f"{set_aside.PREFIX}99999"
    shutil.copytree(finished_run, aside)
    before = tree(aside)
    code, stdout, err = run([a for a in TINY if a != "--quiet"] + ["--epochs", "1", "--out", str(out), "--overwrite"],
                            capsys)
    assert code == 0, err
    assert (f"note: {aside} holds {', '.join(sorted(run_folder.RUN_FILES[:7]))} of an older run that an interrupted "
            f"--overwrite had set aside; they stay there, as {out} holds a run of its own: move them out to keep the "
            f"older run, or remove {aside}") in stdout.splitlines()
    assert hidden(out) == [aside.name] and tree(aside) == before


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kept=st.lists(st.sampled_from(run_folder.RUN_FILES[:7]), min_size=1, max_size=7, unique=True),
       stranger=st.none() | st.sampled_from(sorted(STRANGERS)), overwrite=st.booleans())
def test_overwrite_replaces_exactly_a_run(tmp_path_factory, capsys, finished_run, kept, stranger, overwrite):
    """Some of a run's files, perhaps one stranger's file among them: a stranger's file is never replaced and
    stops the run before anything moves; a run alone is refused without --overwrite, replaced with it."""
    out = tmp_path_factory.mktemp("mix") / "run"
    out.mkdir()
    for name in kept:
        shutil.copy(finished_run / name, out / name)
    if stranger is not None:
        (out / stranger).write_bytes(STRANGERS[stranger][0])
    before = tree(out)
    code, stdout, err = run(TINY + ["--epochs", "1", "--out", str(out)] + (["--overwrite"] if overwrite else []), capsys)
    if stranger is not None or not overwrite:
        assert code == 2
        line = one_error_line(err)
        if stranger is not None:
            assert line.startswith(f"error: {out / stranger} is {STRANGERS[stranger][1]}, so no run's"), line
        else:
            assert line.startswith(f"error: {out} already holds a run ("), line
        assert tree(out) == before, "nothing moved, nothing replaced"
        return
    assert code == 0, err
    assert sorted(os.listdir(out)) == sorted(run_folder.RUN_FILES[:7])
    assert load_checkpoint(out / "checkpoint.npz").history != load_checkpoint(finished_run / "checkpoint.npz").history


@pytest.mark.parametrize("kind, said", [("dangling", "a symbolic link to"), ("fifo", "a FIFO (named pipe)")])
def test_an_out_that_is_no_folder_says_what_it_is(tmp_path, capsys, kind, said):
    outside, _ = world(tmp_path)
    out = tmp_path / "out"
    place(kind, out, outside)
    line = refused(TINY + ["--epochs", "1", "--out", str(out / "run")], capsys, tmp_path, out)
    assert line.startswith(f"error: cannot create the output folder {out / 'run'}: {out} is {said}")
    assert_nothing_outside_changed(tmp_path, {"victim.txt": VICTIM})


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_resume_into_a_folder_with_a_strangers_file_is_refused(tmp_path, capsys, finished_run, overwrite):
    target = tmp_path / "b"
    target.mkdir()
    data, what = STRANGERS["metrics.json"]
    (target / "metrics.json").write_bytes(data)
    line = refused(["--resume", str(finished_run / "checkpoint.npz"), "--epochs", "3", "--out", str(target),
                    "--device", "cpu", "--quiet"] + (["--overwrite"] if overwrite else []),
                   capsys, tmp_path, target / "metrics.json")
    assert f"is {what}, so no run's" in line
    assert tree(target) == {"metrics.json": data}
