"""Saved state and numbers at and past their bounds (issue 21): each refused value is one
``error:`` line that names the entry or the flag, each value at its bound is accepted.

* the optimizer's hyperparameters and per-parameter state, and BatchNorm's running
  statistics, in a checkpoint (training/run/saved_state.py);
* checkpoints that would unpack to far more than their header allows (a zip bomb), and
  special files (/dev/zero, a FIFO) given as checkpoints: refused at once, never a hang;
* every numeric flag at and one past each end of its range, and ``~nosuchuser`` paths.

Hypothesis draws the values; the runs behind the checkpoints are tiny and made once.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY, copy_run, one_error_line, run, run_quietly
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cli
from training.errors import CheckpointError
from training.run.checks import checked_checkpoint
from training.run.config import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_EVERY,
    MAX_IMAGES,
    MAX_SEED,
    MAX_WEIGHT_DECAY,
    RunConfig,
    SettingError,
)

pytestmark = pytest.mark.usefixtures("private_cache")
FEW = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Finished 1-epoch runs: "adam" (lnet), "sgd" (lnet, momentum 0.9), "cnn" (BatchNorm). Copy before editing."""
    root = tmp_path_factory.mktemp("state-runs")
    made = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XPNET_CACHE", str(root / "cache"))
        for name, flags in (("adam", []), ("sgd", ["--optimizer", "sgd"]), ("cnn", ["--model", "cnn"])):
            made[name] = root / name
            code, _, err = run_quietly(TINY + flags + ["--epochs", "1", "--out", str(made[name])])
            assert code == 0, err
    return made


def edited(run_folder: Path, destination: Path, change) -> Path:
    """A copy of a run whose checkpoint.npz has ``change(meta, arrays)`` applied; its path."""
    path = copy_run(run_folder, destination) / "checkpoint.npz"
    with np.load(path, allow_pickle=False) as stored:
        arrays = dict(stored)
    meta = json.loads(str(arrays["meta"]))
    change(meta, arrays)
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    return path


def hyper(name, value):
    return lambda meta, arrays: meta["optimizer"]["hyper"].__setitem__(name, value)


def entry(name, value, index=0):
    """Set element ``index`` (flat) of entry ``name`` to ``value``, keeping its dtype (a 0-d entry: replace it)."""
    def change(meta, arrays):
        array = arrays[name].copy()
        if array.shape == ():
            arrays[name] = np.asarray(value)
        else:
            array.reshape(-1)[index % array.size] = value
            arrays[name] = array
    return change


def layer_step(index, value):
    return lambda meta, arrays: meta["layer_state"][index].__setitem__("step", value)


below = math.nextafter
# (run, what is edited, the value at its bound (accepted), one past it (refused), words of the refusal)
BOUNDS = {
    "adam lr": ("adam", hyper, "lr", 5e-324, 0.0, "lr = 0.0"),
    "adam weight_decay high": ("adam", hyper, "weight_decay", MAX_WEIGHT_DECAY, below(MAX_WEIGHT_DECAY, math.inf),
                               "weight_decay = 10000.000000000002"),
    "adam weight_decay low": ("adam", hyper, "weight_decay", 0.0, -5e-324, "weight_decay = -5e-324"),
    "adam beta1": ("adam", hyper, "betas", [below(1.0, 0), 0.999], [1.0, 0.999], "betas = [1.0, 0.999]"),
    "adam beta2 low": ("adam", hyper, "betas", [0.9, 0.0], [0.9, -5e-324], "betas = [0.9, -5e-324]"),
    "adam eps high": ("adam", hyper, "eps", 1.0, below(1.0, 2), "eps = 1.0000000000000002"),
    "adam eps low": ("adam", hyper, "eps", 5e-324, 0.0, "eps = 0.0"),
    "adam amsgrad": ("adam", hyper, "amsgrad", False, "no", "amsgrad = 'no'"),
    "sgd momentum": ("sgd", hyper, "momentum", below(1.0, 0), 1.0, "momentum = 1.0"),
    "sgd dampening high": ("sgd", hyper, "dampening", 1.0, below(1.0, 2), "dampening = 1.0000000000000002"),
    "sgd dampening low": ("sgd", hyper, "dampening", 0.0, -5e-324, "dampening = -5e-324"),
    "sgd lr x weight decay": ("sgd", hyper, "weight_decay", below(20.0, 0), 20.0, "lr × weight decay below 1"),
    "adam step": ("adam", entry, "optim/0/step", 0, -1, "optim/0/step = -1"),
    "adam step type": ("adam", entry, "optim/3/step", 7, 7.0, "optim/3/step = 7.0"),
    "adam exp_avg": ("adam", entry, "optim/1/exp_avg", np.finfo(np.float32).max, np.inf, "optim/1/exp_avg holds NaN"),
    "adam exp_avg_sq": ("adam", entry, "optim/2/exp_avg_sq", 0.0, -np.finfo(np.float32).smallest_subnormal,
                        "optim/2/exp_avg_sq holds negative values"),
    "adam exp_avg_sq inf": ("adam", entry, "optim/2/exp_avg_sq", np.finfo(np.float32).max, np.inf,
                            "optim/2/exp_avg_sq holds NaN or infinite"),
    "sgd momentum_buffer": ("sgd", entry, "optim/0/momentum_buffer", -np.finfo(np.float32).max, np.nan,
                            "optim/0/momentum_buffer holds NaN"),
    "cnn running_var": ("cnn", entry, "buffer/1.running_var", 0.0, -np.finfo(np.float32).smallest_subnormal,
                        "buffer/1.running_var holds negative values"),
    "cnn running_var nan": ("cnn", entry, "buffer/4.running_var", np.finfo(np.float32).max, np.nan,
                            "buffer/4.running_var holds NaN or infinite"),
    "cnn dropout step": ("cnn", layer_step, "22", 0, -1, "layer_state of layer 22 has step = -1"),
    "cnn running_mean": ("cnn", entry, "buffer/1.running_mean", -np.finfo(np.float32).max, -np.inf,
                         "buffer/1.running_mean holds NaN or infinite"),
}


@pytest.mark.parametrize("case", list(BOUNDS))
def test_saved_state_at_its_bound_is_accepted_and_one_past_refused(case, runs, tmp_path):
    name, make, key, at_bound, past, phrase = BOUNDS[case]
    accepted = edited(runs[name], tmp_path / "at", make(key, at_bound))
    checked_checkpoint(accepted, "resume", RunConfig())
    refused = edited(runs[name], tmp_path / "past", make(key, past))
    with pytest.raises(CheckpointError, match="the file was edited or damaged") as error:
        checked_checkpoint(refused, "resume", RunConfig())
    assert phrase in str(error.value) and str(refused) in str(error.value)


@pytest.mark.parametrize("case", ["adam lr", "adam step", "adam exp_avg_sq", "cnn running_var nan"])
def test_the_cli_refuses_out_of_range_state_in_one_line_before_any_work(case, runs, tmp_path, capsys):
    name, make, key, _, past, phrase = BOUNDS[case]
    path = edited(runs[name], tmp_path / "run", make(key, past))
    before = path.read_bytes()
    code, _, err = run(["--resume", str(path), "--epochs", "2"], capsys)
    assert code == 2 and phrase in one_error_line(err)
    assert path.read_bytes() == before


def test_running_statistics_matter_to_evaluation_but_optimizer_state_does_not(runs, tmp_path, capsys):
    bad_variance = edited(runs["cnn"], tmp_path / "a", entry("buffer/1.running_var", np.nan))
    code, _, err = run(["--evaluate", str(bad_variance), "--device", "cpu"], capsys)
    assert code == 2 and "buffer/1.running_var holds NaN" in one_error_line(err)
    bad_moment = edited(runs["adam"], tmp_path / "b", entry("optim/0/exp_avg_sq", -1.0))
    code, out, err = run(["--evaluate", str(bad_moment), "--device", "cpu"], capsys)
    assert code == 0 and json.loads(out.splitlines()[-1])["accuracy"] >= 0, err


@FEW
@given(value=st.floats(allow_nan=True, allow_infinity=True, width=32) | st.integers(-2**40, 2**40),
       which=st.sampled_from(["optim/0/exp_avg", "optim/1/exp_avg_sq", "optim/3/step", "optim/2/step"]),
       index=st.integers(0, 10**6))
def test_any_saved_moment_or_step_is_accepted_only_in_range(runs, tmp_path_factory, value, which, index):
    path = edited(runs["adam"], tmp_path_factory.mktemp("drawn") / "run", entry(which, value, index))
    fits = {"exp_avg": math.isfinite(value), "exp_avg_sq": math.isfinite(value) and value >= 0,
            "step": isinstance(value, int) and value >= 0}[which.rsplit("/", 1)[1]]
    if fits:
        checked_checkpoint(path, "resume", RunConfig())
    else:
        with pytest.raises(CheckpointError, match=f"{which} "):
            checked_checkpoint(path, "resume", RunConfig())


# -- bounded reads ------------------------------------------------------------------------------------------
def rezipped(source: Path, destination: Path, extra=None, replace=None) -> Path:
    """``source``'s archive written again with ``replace`` {member: (zip info, bytes chunks)} and ``extra`` added."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(destination, "w") as out:
        for info in archive.infolist():
            if replace and info.filename in replace:
                continue
            out.writestr(info, archive.read(info))
        for name, chunks in {**(replace or {}), **(extra or {})}.items():
            member = zipfile.ZipInfo(name)
            member.compress_type = zipfile.ZIP_DEFLATED
            with out.open(member, "w", force_zip64=True) as stream:
                for chunk in chunks():
                    stream.write(chunk)
    return destination


def zeros_npy(count: int, chunk: bytes = bytes(2**24)):
    """The chunks of a float32 .npy file of ``count`` zeros (a few KB once deflated)."""
    def chunks():
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (count,)})
        yield header.getvalue()
        left = 4 * count
        while left:
            yield chunk[:min(left, len(chunk))]
            left -= min(left, len(chunk))
    return chunks


@pytest.mark.parametrize("where", ["optim/0/exp_avg.npy", "param/0.weight.npy", "unlisted.npy"])
def test_a_zip_bomb_is_refused_before_it_is_unpacked(runs, tmp_path, capsys, where):
    """A 128 MiB entry deflated to a few hundred KB: refused in well under a second, naming the entry."""
    source = runs["adam"] / "checkpoint.npz"
    bomb = rezipped(source, tmp_path / "bomb.npz",
                    replace={where: zeros_npy(2**25)} if where != "unlisted.npy" else None,
                    extra={where: zeros_npy(2**25)} if where == "unlisted.npy" else None)
    assert bomb.stat().st_size < source.stat().st_size + 2**20
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as error:
        checked_checkpoint(bomb, "resume", RunConfig())
    assert time.perf_counter() - start < 0.5
    assert repr(where[:-len(".npy")]) in str(error.value) and str(bomb) in str(error.value)
    code, _, err = run(["--evaluate", str(bomb), "--device", "cpu"], capsys)
    assert code == 2 and repr(where[:-len(".npy")]) in one_error_line(err)


def test_a_header_cannot_ask_for_more_numbers_than_its_model_has(runs, tmp_path):
    def huge(meta, arrays):
        meta["parameters"]["0.weight"] = [2**20, 2**10]
        arrays["param/0.weight"] = np.zeros((1, 1), np.float32)  # the header alone is refused; no entry is this big
    path = edited(runs["adam"], tmp_path / "run", huge)
    with pytest.raises(CheckpointError, match="more than a model 'lnet' has"):
        checked_checkpoint(path, "resume", RunConfig())


@pytest.fixture
def special_files(tmp_path):
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    return {"/dev/zero": (Path("/dev/zero"), "a character device"), "FIFO": (fifo, "a FIFO")}


@pytest.mark.parametrize("kind", ["/dev/zero", "FIFO"])
@pytest.mark.parametrize("command", ["resume", "evaluate", "predict"])
def test_a_special_file_as_checkpoint_is_one_error_never_a_hang(kind, command, special_files, tmp_path, capsys):
    path, words = special_files[kind]
    argv = {"resume": ["--resume", str(path), "--out", str(tmp_path / "out")], "evaluate": ["--evaluate", str(path)],
            "predict": ["--predict", str(tmp_path / "x.png"), "--checkpoint", str(path)]}[command]
    start = time.perf_counter()
    code, _, err = run(argv + ["--device", "cpu"], capsys)
    assert code == 2 and f"{path} is {words}" in one_error_line(err)
    assert time.perf_counter() - start < 5


# -- numbers and paths ---------------------------------------------------------------------------------------
def parses(argv) -> bool:
    """Whether the command line's parser takes ``argv`` (a refusal must be one usage error naming the flag)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            cli.parse_args(argv)
        return True
    except SystemExit as exc:
        lines = [line for line in err.getvalue().splitlines() if "error:" in line]
        assert exc.code == 2 and len(lines) == 1 and argv[0] in lines[0] and "Traceback" not in err.getvalue()
        return False


# flag: (lowest accepted, highest accepted, a value just below, a value just above)
NUMERIC_FLAGS = {
    "--epochs": ("1", str(MAX_EPOCHS), "0", str(MAX_EPOCHS + 1)),
    "--batch-size": ("1", str(MAX_BATCH), "0", str(MAX_BATCH + 1)),
    "--train-size": ("1", str(MAX_IMAGES), "0", str(MAX_IMAGES + 1)),
    "--test-size": ("1", "1e9", "0", "1000000001"),
    "--seed": ("0", str(MAX_SEED), "-1", str(MAX_SEED + 1)),
    "--layer-stats": ("0", str(MAX_EVERY), "-1", str(MAX_EVERY + 1)),
    "--weight-decay": ("0", "1e4", "-5e-324", repr(below(MAX_WEIGHT_DECAY, math.inf))),
    "--momentum": ("0", repr(below(1.0, 0)), "-5e-324", "1"),
    "--dropout": ("0", repr(below(1.0, 0)), "-5e-324", "1"),
    "--lr": ("5e-324", "1.7976931348623157e308", "0", "1e400"),
}


@pytest.mark.parametrize("flag", list(NUMERIC_FLAGS))
def test_each_numeric_flag_at_and_one_past_each_end(flag):
    low, high, under, over = NUMERIC_FLAGS[flag]
    assert parses([flag, low]) and parses([flag, high])
    assert not parses([flag, under]) and not parses([flag, over])
    assert not parses([flag, "1e400"])


@FEW
@given(value=st.integers(-10**30, 10**30), flag=st.sampled_from(["--epochs", "--batch-size", "--train-size", "--seed",
                                                               "--layer-stats"]))
def test_whole_number_flags_take_exactly_their_range(value, flag):
    rules = {"--epochs": (1, MAX_EPOCHS), "--batch-size": (1, MAX_BATCH), "--train-size": (1, MAX_IMAGES),
             "--seed": (0, MAX_SEED), "--layer-stats": (0, MAX_EVERY)}
    low, high = rules[flag]
    assert parses([flag, str(value)]) == (low <= value <= high)


@FEW
@given(value=st.floats(allow_nan=True, allow_infinity=True))
def test_weight_decay_takes_exactly_its_range_also_from_python(value):
    fits = 0 <= value <= MAX_WEIGHT_DECAY
    assert parses(["--weight-decay", repr(value)]) == fits
    if fits:
        RunConfig(weight_decay=value)
    else:
        with pytest.raises(SettingError, match="'weight_decay'"):
            RunConfig(weight_decay=value)


def test_settings_past_their_bounds_are_refused_from_python_too():
    RunConfig(epochs=MAX_EPOCHS, seed=MAX_SEED, train_size=MAX_IMAGES, batch_size=MAX_BATCH)
    for name, value in (("epochs", MAX_EPOCHS + 1), ("seed", MAX_SEED + 1), ("train_size", 10**400), ("batch_size", 10**7)):
        with pytest.raises(SettingError, match=f"'{name}'"):
            RunConfig(**{name: value})


@pytest.mark.parametrize("flag", ["--out", "--resume", "--evaluate", "--data-dir", "--checkpoint"])
def test_an_unknown_user_in_a_path_flag_is_one_usage_error(flag):
    argv = [flag, "~no-such-user-xpnet/run"] + (["--predict", "x.png"] if flag == "--checkpoint" else [])
    assert not parses(argv)


def test_an_unknown_user_in_xpnet_cache_is_one_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("XPNET_CACHE", "~no-such-user-xpnet/cache")
    code, _, err = run(TINY + ["--epochs", "1", "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "XPNET_CACHE" in one_error_line(err) and "no-such-user-xpnet" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["/dev/zero", "FIFO"])
def test_a_special_file_as_an_image_to_predict_is_one_error_never_a_hang(kind, special_files, runs, capsys):
    path, words = special_files[kind]
    start = time.perf_counter()
    code, _, err = run(["--predict", str(path), "--checkpoint", str(runs["adam"] / "best.npz"), "--device", "cpu"], capsys)
    assert code == 2 and f"{path} is {words}" in one_error_line(err) and "not an image file" in err
    assert time.perf_counter() - start < 5


def test_the_header_itself_is_bounded(runs, tmp_path, monkeypatch):
    """The header is read first, so it has a limit of its own (1 GiB; here lowered to 1000 bytes to test it)."""
    monkeypatch.setattr("training.saving.checkpoint.HEADER_LIMIT", ((), 1000))
    with pytest.raises(CheckpointError, match=r"entry 'meta' would unpack to .* more than the 1000 bytes allowed"):
        checked_checkpoint(runs["adam"] / "checkpoint.npz", "resume", RunConfig())


def test_an_oversized_synthetic_cache_file_is_regenerated(tmp_path, capsys):
    """A regular cache file whose entries would unpack to more than its set is remade, unread.
    (A link, FIFO, device or folder at the cache's name is refused: test_fuzz_files.py.)"""
    from training.data.synthetic import cache_path

    path = cache_path(64, 32, 0)  # TINY's set, in this test's private cache
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name in ("train_images", "train_labels", "test_images", "test_labels"):
            with archive.open(zipfile.ZipInfo(name + ".npy"), "w", force_zip64=True) as stream:
                stream.write(b"\0" * 2**16 * (1 + 4 * (name == "test_images")))  # too large for 32 images
    start = time.perf_counter()
    code, out, err = run(TINY + ["--epochs", "1", "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    assert "is unreadable or does not match; regenerating it" in err and time.perf_counter() - start < 60
    assert path.is_file()
