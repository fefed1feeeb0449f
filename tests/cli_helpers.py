"""What the CLI tests share: a small, fast run's flags, a way to call the CLI in-process,
and finished runs to copy instead of training one in every test."""
from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pytest

import cli

SMALL = ["--device", "cpu", "--model", "mlp", "--train-size", "160", "--test-size", "64", "--batch-size", "32", "--quiet"]
# Smaller and faster still (LNet's checkpoints are a twelfth of the MLP's), for tests of what surrounds training.
TINY = ["--device", "cpu", "--model", "lnet", "--train-size", "64", "--test-size", "32", "--batch-size", "32", "--quiet"]


def run(argv, capsys):
    """cli.main(argv) → (exit code, stdout, stderr)."""
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_quietly(argv) -> tuple[int, str, str]:
    """cli.main(argv) with its output captured here (for session fixtures, which have no capsys)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def one_error_line(err: str) -> str:
    """The single line of stderr, which must be an ``error:`` line."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a folder and its bytes, to show that nothing in it changed."""
    return {path.name: path.read_bytes() for path in sorted(Path(folder).iterdir())}


_FINISHED: dict[str, Path] = {}  # one finished run per test session, whichever module asks first


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A finished 2-epoch TINY run's folder (never modify it: copy it with copy_run)."""
    if "run" not in _FINISHED:  # each module that imports this fixture gets its own, so remember the run here
        folder = tmp_path_factory.mktemp("finished") / "run"
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("XPNET_CACHE", str(tmp_path_factory.mktemp("cache")))
            code, _, err = run_quietly(TINY + ["--epochs", "2", "--out", str(folder)])
        assert code == 0, err
        _FINISHED["run"] = folder
    return _FINISHED["run"]


def copy_run(template: Path, destination: Path) -> Path:
    shutil.copytree(template, destination)
    return destination
