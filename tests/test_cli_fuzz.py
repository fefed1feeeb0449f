"""The command line itself, fuzzed: random flag combinations with valid and invalid values,
and good, damaged or wrong files, for each of its four commands.

Whatever hypothesis draws, ``python cli.py`` must give either a result (exit code 0, and
for training, a complete run folder) or one error: one ``error:`` line and exit code 2
(argparse's usage errors print the usage and then ``python cli.py: error: ...``); never a
traceback or another exit code, and an existing run is never touched. Training runs are
kept tiny so that the whole fuzz takes seconds.
"""
from __future__ import annotations

import contextlib
import io
import shutil
import signal
import tempfile
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from helpers import snapshot
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import cli
from training.data import write_svhn_mat

RUN_FILES = ["best.npz", "checkpoint.npz", "confusion.png", "curves.png", "filters.png", "metrics.json", "mistakes.png"]
VALUES = {  # for each flag: values it accepts | values it refuses
    "--model": (["lnet", "mlp"], ["resnet"]),
    "--device": (["cpu", "auto"], ["tpu"]),
    "--dtype": (["float32", "float64"], ["float16"]),
    "--optimizer": (["sgd", "adam", "adamw"], ["rmsprop"]),
    "--lr": (["0.01", "1e-3", "1e9"], ["0", "-1", "nan", "inf", "fast"]),
    "--momentum": (["0", "0.5"], ["1", "5", "-0.1"]),
    "--weight-decay": (["0", "1e-4", "5000"], ["-1", "nan"]),
    "--epochs": (["1", "3", "1e0"], ["0", "2.5", "x"]),
    "--batch-size": (["1", "16", "10000"], ["0", "-3"]),
    "--seed": (["0", "7", "1e3"], ["-1", "x"]),
    "--dataset": (["synthetic", "svhn"], ["mnist"]),
    "--train-size": (["16", "40", "1e9"], ["0", "x", "1e15"]),
    "--test-size": (["8"], ["0", "x"]),
    "--data-dir": (["svhn", "svhn-with-a-note", "missing", "a-file", "empty"], []),
}
SWITCHES = ["--download", "--extra", "--quiet", "--overwrite"]
CHECKPOINTS = ["good", "damaged", "missing", "folder", "text"]
IMAGES = ["png", "damaged-png", "grey16", "text", "folder", "missing"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, finished_run) -> dict[str, Path]:
    """The files the fuzz draws from, made once; the cache of synthetic images is shared too."""
    root = tmp_path_factory.mktemp("fuzz-files")
    rng = np.random.default_rng(0)
    made = {"run": finished_run}
    for name, note in (("svhn", False), ("svhn-with-a-note", True)):
        folder = root / name
        folder.mkdir()
        for split, n in (("train", 24), ("test", 8)):
            write_svhn_mat(folder / f"{split}_32x32.mat", rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), np.arange(n) % 10)
            if note:
                contents = scipy.io.loadmat(folder / f"{split}_32x32.mat")
                scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": contents["X"], "y": contents["y"], "note": "mine"})
        made[name] = folder
    (root / "empty").mkdir()
    (root / "a-file").write_text("not a folder")
    made.update({"missing": root / "missing", "a-file": root / "a-file", "empty": root / "empty", "folder": root / "empty"})
    good = (finished_run / "best.npz").read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2:len(damaged) // 2 + 64] = b"\xff" * 64
    for name, data in (("good", good), ("damaged", bytes(damaged)), ("text", b"checkpoint, honest")):
        (root / f"{name}.npz").write_bytes(data)
        made[f"{name}.npz"] = root / f"{name}.npz"
    from PIL import Image

    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(root / "png.png")
    png = (root / "png.png").read_bytes()
    (root / "damaged-png.png").write_bytes(png[:len(png) // 2])
    Image.fromarray((rng.integers(0, 65536, (32, 32))).astype(np.uint16)).save(root / "grey16.png")
    (root / "text.png").write_text("a picture of a 7")
    made.update({f"{name}.png": root / f"{name}.png" for name in ("png", "damaged-png", "grey16", "text")})
    made["missing.png"], made["folder.png"], made["missing.npz"], made["folder.npz"] = (
        root / "nowhere.png", root / "empty", root / "nowhere.npz", root / "empty")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XPNET_CACHE", str(root / "cache"))
        yield made


@st.composite
def command_lines(draw):
    """(command, argv, where the run's files go): a random command with random flags."""
    command = draw(st.sampled_from(["train", "resume", "evaluate", "predict"]))
    every_flag = sorted(VALUES) + SWITCHES
    honoured = [flag for flag in every_flag if command in ("train", "resume")
                or flag[2:].replace("-", "_") in cli.COMMAND_SETTINGS[command]]
    flags = draw(st.lists(st.sampled_from(honoured), max_size=4, unique=True))
    if draw(st.integers(0, 3)) == 0:  # now and then a flag the command may refuse
        flags = list(dict.fromkeys(flags + [draw(st.sampled_from(every_flag))]))
    argv = []
    for flag in flags:
        if flag in SWITCHES:
            argv.append(flag)
        else:
            accepted, refused = VALUES[flag]
            value = draw(st.sampled_from(refused if refused and draw(st.integers(0, 3)) == 0 else accepted))
            argv += [flag, "@" + value if flag == "--data-dir" else value]
    if command in ("train", "resume"):  # tiny unless the draw chose otherwise (a refused size costs nothing)
        svhn = "svhn" in argv
        defaults = (("--epochs", "3"),) if command == "resume" else (  # a resumed run keeps the sizes of its data set
            (("--epochs", "1"),) if svhn else (("--train-size", "16"), ("--test-size", "8"), ("--epochs", "1")))
        argv += [part for flag, value in defaults if flag not in flags for part in (flag, value)]
        target = draw(st.sampled_from(["new", "existing-run"]))
    else:
        target = "none"
    if command == "resume":
        argv = ["--resume", "@copy/checkpoint.npz"] + argv
    elif command == "evaluate":
        argv = ["--evaluate", "@" + draw(st.sampled_from(CHECKPOINTS)) + ".npz"] + argv
    elif command == "predict":
        images = draw(st.lists(st.sampled_from(IMAGES), min_size=1, max_size=3))
        argv = ["--predict", *("@" + name + ".png" for name in images),
                "--checkpoint", "@" + draw(st.sampled_from(CHECKPOINTS)) + ".npz"] + argv
    return command, argv, target


def resolve(argv, files: dict[str, Path], folder: Path) -> list[str]:
    """Replace each "@name" by the path of that file (@copy/...: inside this example's copy of the run)."""
    resolved = []
    for arg in argv:
        if arg.startswith("@copy/"):
            resolved.append(str(folder / "copy" / arg[len("@copy/"):]))
        elif arg.startswith("@"):
            resolved.append(str(files[arg[1:]]))
        else:
            resolved.append(arg)
    return resolved


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=command_lines())
def test_the_cli_gives_a_result_or_one_error(files, drawn):
    command, argv, target = drawn
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        shutil.copytree(files["run"], folder / "copy")
        argv = resolve(argv, files, folder)
        out = folder / "copy" if target == "existing-run" else folder / "new"
        if target != "none":
            argv += ["--out", str(out)]
        protected = snapshot(files["run"])
        before = snapshot(out) if out.exists() else None

        code, stdout, stderr = _main(argv)
        event(f"{command}: {code}")  # pytest --hypothesis-show-statistics shows how often each outcome came
        assert "Traceback" not in stderr and "Traceback" not in stdout, (argv, stderr)
        assert snapshot(files["run"]) == protected, f"{argv} changed a run it only reads"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the handlers were not given back"
        # the lines a terminal shows: a progress bar rewrites its line with \r and clears it at the end
        lines = [shown for line in stderr.split("\n") if (shown := line.rsplit("\r", 1)[-1]).strip()]
        if code == "usage":
            assert lines[0].startswith("usage: ") and lines[-1].startswith("python cli.py: error: "), (argv, stderr)
            return
        assert code in (0, 2), (argv, code, stderr)
        if code == 2:
            assert len(lines) == 1 and lines[0].startswith("error: "), (argv, stderr)
            if before is not None and "--overwrite" not in argv and command != "resume":
                assert snapshot(out) == before, f"{argv} failed and changed {out}"
            leftovers = [p for p in folder.rglob("*") if p.name.startswith(".") or (p.is_dir() and not any(p.iterdir()))]
            assert not leftovers, (argv, leftovers)
            return
        if command in ("train", "resume"):
            assert sorted(p.name for p in out.iterdir()) == RUN_FILES, argv
            assert stdout.strip().splitlines()[-1].startswith("done: ")
        elif command == "evaluate":
            assert stdout.strip().splitlines()[-1].startswith('{"loss": ')
        else:
            assert len([line for line in stdout.splitlines() if "%)" in line]) == argv.index("--checkpoint") - 1


def _main(argv) -> tuple[int | str, str, str]:
    """cli.main(argv) → (exit code, or "usage" for argparse's exit 2, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            assert exc.code == 2, (argv, exc.code)
            code = "usage"
    return code, out.getvalue(), err.getvalue()


def _parse_quietly(argv):
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            return cli.parse_args(argv)
        except SystemExit as exc:
            assert exc.code == 2
            return None


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=12) | st.from_regex(r"-?[0-9]{0,3}(\.[0-9]{0,3})?(e-?[0-9]{1,3})?", fullmatch=True))
def test_any_number_flag_text_is_accepted_or_a_usage_error(text):
    """Whatever follows --lr/--epochs/--seed: a valid value, or exit code 2; never a traceback."""
    args = _parse_quietly([f"--lr={text}", "--momentum=0"])
    if args is not None:
        assert 0 < args.lr < float("inf") and args.lr == float(text)
    args = _parse_quietly([f"--epochs={text}", f"--batch-size={text}"])
    if args is not None:  # a whole number, also one written with an exponent ("2e4")
        assert args.epochs == args.batch_size == Decimal(text) >= 1
    args = _parse_quietly([f"--seed={text}"])
    if args is not None:
        assert args.seed == Decimal(text) >= 0
