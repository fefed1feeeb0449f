"""Every flag of the command line does what --help says, or is refused with one clear line.

--dtype float64, --download, --extra, --seed and --quiet with --evaluate; --evaluate reads
only the test split; flags that a command would ignore, or that belong to the other
dataset, are errors; odd environments and data files get messages that name the cause.
"""
from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from helpers import TINY, copy_run, one_error_line, run

import cli
from training.data import write_svhn_mat
from training.saving.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("private_cache")
TESTS = Path(__file__).resolve().parent
SVHN_RUN = ["--device", "cpu", "--model", "lnet", "--batch-size", "32", "--quiet", "--dataset", "svhn"]  # TINY for SVHN files


def write_svhn_folder(folder: Path, sizes=(("train", 64), ("test", 32)), seed: int = 0) -> Path:
    """SVHN-format files with random images (labels 0..9 in turn) in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in sizes:
        write_svhn_mat(folder / f"{split}_32x32.mat", rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), np.arange(n) % 10)
    return folder


# -- --help ------------------------------------------------------------------------------------------
def test_help_states_each_default_once(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "(default: " not in text
    entries = re.split(r"\n  (?=-)", text)  # one entry per flag
    assert len(entries) > 20
    for entry in entries:
        assert entry.count("default") <= 2, entry  # "default 64 ...; with --evaluate ...: default 500" at most


def test_every_flag_in_help_is_exercised_by_a_cli_test():
    sources = "\n".join(path.read_text() for path in TESTS.glob("test_*.py"))
    table = {}
    cli.build_parser(table)
    flags = [option for action in table.values() for option in action.option_strings if option.startswith("--")]
    assert len(flags) > 20
    missing = [flag for flag in flags if not re.search(rf"[\"']{re.escape(flag)}[\"'=]", sources)]
    assert not missing, f"no CLI test passes {missing}"


# -- --dtype float64 ------------------------------------------------------------------------------
def test_float64_trains_resumes_exactly_evaluates_and_predicts(tmp_path, capsys):
    from PIL import Image

    settings = TINY + ["--dtype", "float64", "--optimizer", "sgd"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run(settings + ["--epochs", "2", "--out", str(straight)], capsys)[0] == 0
    assert run(settings + ["--epochs", "1", "--out", str(split)], capsys)[0] == 0
    code, _, err = run(["--resume", str(split / "checkpoint.npz"), "--epochs", "2", "--device", "cpu", "--quiet"], capsys)
    assert code == 0, err
    a, b = load_checkpoint(straight / "checkpoint.npz"), load_checkpoint(split / "checkpoint.npz")
    assert a.config["dtype"] == b.config["dtype"] == "float64"
    for name in a.params:
        assert a.params[name].dtype == np.float64
        np.testing.assert_array_equal(a.params[name], b.params[name])

    code, stdout, err = run(["--evaluate", str(straight / "checkpoint.npz"), "--device", "cpu", "--quiet"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["accuracy"] == pytest.approx(a.history[-1]["test_acc"])
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "black.png")
    code, stdout, err = run(["--predict", str(tmp_path / "black.png"), "--checkpoint", str(straight / "best.npz"),
                             "--device", "cpu", "--quiet"], capsys)
    assert code == 0 and stdout.startswith(f"{tmp_path / 'black.png'}: "), err


# -- the data flags ---------------------------------------------------------------------------------
def test_download_and_extra_through_the_cli(tmp_path, capsys, monkeypatch):
    """--download fetches (from a local server) and verifies the files; --extra adds extra_32x32.mat."""
    from helpers import Server

    import training.data.download

    source = write_svhn_folder(tmp_path / "source", (("train", 48), ("test", 16), ("extra", 32)))
    files = {path.name: path.read_bytes() for path in source.iterdir()}
    table = {split: training.data.download.RemoteFile(name, len(data), training.data.download.hashlib.sha256(data).hexdigest())
             for split, name, data in ((name.split("_")[0], name, data) for name, data in files.items())}
    server = Server(files)
    try:
        monkeypatch.setattr(training.data.download, "download_svhn",
                            functools.partial(training.data.download.download_svhn, checksums=table, base_url=server.url,
                                              progress=False))
        data, out = tmp_path / "svhn", tmp_path / "run"
        argv = [flag for flag in SVHN_RUN if flag != "--quiet"] + ["--data-dir", str(data), "--download", "--extra",
                                                                   "--epochs", "1", "--out", str(out)]
        code, stdout, err = run(argv, capsys)
    finally:
        server.close()
    assert code == 0, err
    assert sorted(path for path, _ in server.requests) == [f"/housenumbers/{n}_32x32.mat" for n in ("extra", "test", "train")]
    assert f"SVHN from {data}: 80 train / 16 test images" in stdout
    assert load_checkpoint(out / "checkpoint.npz").config["extra"] is True


def test_seed_chooses_the_weights_and_the_data(tmp_path, capsys):
    def weights(seed: str, out: str):
        assert run(TINY + ["--seed", seed, "--epochs", "1", "--out", str(tmp_path / out)], capsys)[0] == 0
        return load_checkpoint(tmp_path / out / "checkpoint.npz").params["0.weight"]

    first = weights("3", "a")
    np.testing.assert_array_equal(first, weights("3", "b"))
    assert not np.array_equal(first, weights("4", "c"))


@pytest.mark.parametrize("argv, message", [
    (["--download"], "--download applies to --dataset svhn, but this run uses the synthetic set"),
    (["--data-dir", "data"], "--data-dir applies to --dataset svhn"),
    (["--extra"], "--extra applies to --dataset svhn"),
    (["--dataset", "svhn", "--train-size", "100"], "--train-size chooses the size of the synthetic set, but this run uses SVHN"),
    (["--dataset", "svhn", "--test-size", "100"], "--test-size chooses the size of the synthetic set"),
    (["--weight-decay", "50", "--optimizer", "sgd"], "lr × weight decay = 2.5 of itself per step, which must be below 1"),
    (["--train-size", "1e9"], "the synthetic images would need"),  # the most --train-size takes; 3 TB
])
def test_flags_that_cannot_work_together_are_one_line_errors(argv, message, capsys):
    base = SVHN_RUN[:-2] if "svhn" in argv else TINY
    code, _, err = run(base + argv, capsys)
    assert code == 2 and message in one_error_line(err)


@pytest.mark.parametrize("value", ["abc", "2.5", "0", "-3"])
def test_a_bad_thread_count_in_the_environment_is_one_line(value, capsys, monkeypatch):
    monkeypatch.setenv("XPNET_NUM_THREADS", value)
    code, _, err = run(TINY + ["--epochs", "1"], capsys)
    assert code == 2
    assert one_error_line(err) == (f"error: XPNET_NUM_THREADS must be a whole number of at least 1 (the cpu backend's "
                                   f"threads), got {value!r}: set it to e.g. 2, or unset it to use every core")


# -- --evaluate and --predict honour their flags or refuse them -------------------------------------
def test_evaluate_quiet_prints_only_the_result(capsys, finished_run):
    code, stdout, err = run(["--evaluate", str(finished_run / "best.npz"), "--device", "auto", "--quiet"], capsys)
    assert code == 0 and err == ""
    assert list(json.loads(stdout)) == ["loss", "accuracy"] and len(stdout.splitlines()) == 1


def test_evaluate_reads_only_the_test_split(tmp_path, capsys, monkeypatch):
    data = write_svhn_folder(tmp_path / "svhn")
    out = tmp_path / "run"
    assert run(SVHN_RUN + ["--data-dir", str(data), "--epochs", "1", "--out", str(out)], capsys)[0] == 0
    (data / "train_32x32.mat").unlink()
    code, stdout, err = run(["--evaluate", str(out / "checkpoint.npz"), "--device", "cpu", "--quiet"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["accuracy"] == pytest.approx(load_checkpoint(out / "checkpoint.npz").history[0]["test_acc"])

    import training.data.synthetic

    synthetic = tmp_path / "synthetic"
    assert run(TINY + ["--epochs", "1", "--out", str(synthetic)], capsys)[0] == 0
    monkeypatch.setenv("XPNET_CACHE", str(tmp_path / "empty-cache"))  # nothing cached: the images are made anew
    generated, generate = [], training.data.synthetic.generate
    monkeypatch.setattr(training.data.synthetic, "generate", lambda n, seed, stream: generated.append((n, stream)) or
                        generate(n, seed, stream))
    code, stdout, err = run(["--evaluate", str(synthetic / "best.npz"), "--device", "cpu", "--quiet"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["accuracy"] == load_checkpoint(synthetic / "best.npz").history[0]["test_acc"]
    assert sorted(generated) == [(0, 0), (32, 1)], "only the 32 test images (stream 1) were generated"


@pytest.mark.parametrize("flag", [["--lr", "0.1"], ["--epochs", "3"], ["--optimizer", "sgd"], ["--momentum", "0.5"],
                                  ["--weight-decay", "0.1"], ["--train-size", "100"], ["--extra"], ["--overwrite"],
                                  ["--out", "x"]])
def test_training_flags_with_evaluate_are_usage_errors(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--evaluate", "best.npz"] + flag)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {flag[0]} does not apply to --evaluate, which only measures a checkpoint on a test set; leave it out" in err


@pytest.mark.parametrize("flag", [["--dataset", "svhn"], ["--seed", "1"], ["--test-size", "10"], ["--download"], ["--lr", "1"]])
def test_data_and_training_flags_with_predict_are_usage_errors(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--predict", "a.png", "--checkpoint", "best.npz"] + flag)
    assert exit_info.value.code == 2
    assert f"error: {flag[0]} does not apply to --predict, which only classifies the images" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_another_model_than_the_checkpoints_is_an_error(command, tmp_path, capsys, finished_run):
    (tmp_path / "a.png").write_bytes(b"")
    argv = ["--evaluate", str(finished_run / "best.npz")] if command == "evaluate" else [
        "--predict", str(tmp_path / "a.png"), "--checkpoint", str(finished_run / "best.npz")]
    code, _, err = run(argv + ["--model", "mlp", "--device", "cpu"], capsys)
    assert code == 2
    assert one_error_line(err) == (f"error: {finished_run / 'best.npz'} is a checkpoint of model 'lnet', not 'mlp'; "
                                   f"leave out --model (the checkpoint knows its model)")


def test_evaluate_on_another_dataset_and_batch_size_is_honoured(tmp_path, capsys, finished_run):
    data = write_svhn_folder(tmp_path / "svhn", (("test", 40),))
    argv = ["--evaluate", str(finished_run / "best.npz"), "--dataset", "svhn", "--data-dir", str(data),
            "--batch-size", "7", "--device", "cpu"]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert "on svhn-test: " in stdout and "of 40 images" in stdout


# -- resuming with other data -------------------------------------------------------------------------
@pytest.mark.parametrize("flag", [["--dataset", "svhn"], ["--test-size", "16"], ["--seed", "5"]])
def test_resume_refuses_another_test_set(flag, tmp_path, capsys, finished_run):
    out = copy_run(finished_run, tmp_path / "run")
    code, _, err = run(["--resume", str(out / "checkpoint.npz"), "--epochs", "3", "--device", "cpu", "--quiet"] + flag, capsys)
    assert code == 2
    line = one_error_line(err)
    assert "would measure its later epochs on another test set and mix two datasets in one history" in line or \
        "chooses the size of the synthetic set" in line


def test_a_relative_data_folder_resumed_elsewhere_is_named(tmp_path, capsys, monkeypatch):
    """Old checkpoints saved --data-dir as given; resumed from another folder, the message says so."""
    home = tmp_path / "home"
    write_svhn_folder(home / "data")
    monkeypatch.chdir(home)
    out = home / "run"
    assert run(SVHN_RUN + ["--data-dir", "data", "--epochs", "1", "--out", str(out)], capsys)[0] == 0
    assert load_checkpoint(out / "checkpoint.npz").config["data_dir"] == str(home / "data")  # saved absolute now
    path = out / "checkpoint.npz"
    with np.load(path, allow_pickle=False) as stored:
        arrays = dict(stored)
    meta = json.loads(str(arrays["meta"]))
    meta["config"]["data_dir"] = "data"  # as an older xpnet saved it
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["--resume", str(path), "--epochs", "2", "--device", "cpu", "--quiet"], capsys)
    assert code == 2
    assert one_error_line(err) == (
        f"error: the SVHN folder data that {path} was trained with does not exist here; it is relative to the folder "
        f"that run started in, and from here it would be {tmp_path / 'data'}: pass --data-dir with the folder that "
        f"holds train_32x32.mat and test_32x32.mat")
    code, _, err = run(["--resume", str(path), "--epochs", "2", "--device", "cpu", "--quiet",
                        "--data-dir", str(home / "data")], capsys)
    assert code == 0, err


# -- files that are not what they seem ----------------------------------------------------------------
def test_paths_of_the_wrong_kind_are_named(tmp_path, capsys, finished_run):
    (tmp_path / "file").write_text("")
    code, _, err = run(SVHN_RUN + ["--data-dir", str(tmp_path / "file")], capsys)
    assert code == 2 and one_error_line(err).startswith(f"error: {tmp_path / 'file'} is a file, not a folder; --data-dir")
    code, _, err = run(["--evaluate", str(finished_run), "--device", "cpu"], capsys)
    assert code == 2
    assert one_error_line(err) == (f"error: {finished_run} is a folder, not a checkpoint file; "
                                   f"did you mean {finished_run / 'checkpoint.npz'}?")
    code, _, err = run(["--predict", str(tmp_path), "--checkpoint", str(finished_run / "best.npz"), "--device", "cpu"], capsys)
    assert code == 2 and one_error_line(err) == f"error: {tmp_path} is a folder, not an image file; give the path of a PNG or JPEG file"


def test_a_mat_file_with_an_extra_text_variable_is_valid(tmp_path, capsys):
    data = write_svhn_folder(tmp_path / "svhn")
    for name in ("train_32x32.mat", "test_32x32.mat"):
        contents = scipy.io.loadmat(data / name)
        scipy.io.savemat(data / name, {"X": contents["X"], "y": contents["y"], "note": "cropped by hand",
                                       "when": np.array([2024.0])}, do_compression=name.startswith("test"))
    code, _, err = run(SVHN_RUN + ["--data-dir", str(data), "--epochs", "1", "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err


def test_an_unreadable_mat_file_is_named_and_not_called_corrupt(tmp_path, capsys, monkeypatch):
    data = write_svhn_folder(tmp_path / "svhn")
    real_open = open

    def no_permission(path, *args, **kwargs):  # chmod 000 does not stop root, who may run these tests
        if str(path).endswith("train_32x32.mat"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("training.data.svhn.open", no_permission, raising=False)
    code, _, err = run(["--dataset", "svhn", "--data-dir", str(data), "--device", "cpu", "--quiet"], capsys)
    assert code == 2
    assert one_error_line(err) == (f"error: cannot read {data / 'train_32x32.mat'}: Permission denied; make it readable, "
                                   f"or point --data-dir elsewhere")


@pytest.mark.parametrize("problem", ["constant", "empty"])
def test_constant_or_empty_training_images_are_named(problem, tmp_path, capsys):
    data = write_svhn_folder(tmp_path / "svhn")
    n = 0 if problem == "empty" else 8
    write_svhn_mat(data / "train_32x32.mat", np.full((n, 3, 32, 32), 77, np.uint8), np.zeros(n, np.int64))
    code, _, err = run(["--dataset", "svhn", "--data-dir", str(data), "--device", "cpu", "--quiet",
                        "--out", str(tmp_path / "run")], capsys)
    assert code == 2
    line = one_error_line(err)
    if problem == "empty":
        assert line.startswith(f"error: {data / 'train_32x32.mat'} holds no images (X has shape (32, 32, 3, 0))")
    else:
        assert line == ("error: every training image of svhn-train has the same value in colour channel 0 (77 of 255), "
                        "so the inputs cannot be normalised: check the data files")
    assert not (tmp_path / "run").exists()


def test_a_file_in_the_way_of_a_download_is_not_called_corrupt(tmp_path, capsys):
    data = write_svhn_folder(tmp_path / "svhn")
    code, _, err = run(["--dataset", "svhn", "--data-dir", str(data), "--download", "--device", "cpu", "--quiet"], capsys)
    assert code == 2
    line = one_error_line(err)
    assert "exists but is not the official file" in line and "delete" not in line and "move or rename it" in line
    assert os.path.getsize(data / "train_32x32.mat") > 0
