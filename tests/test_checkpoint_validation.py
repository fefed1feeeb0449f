"""One validation of a checkpoint's hand-editable fields, shared by --resume, --evaluate and --predict.

Each field is edited as a person (or a damaged disk) might, and each command that uses
the field must answer with one ``error:`` line and exit code 2: no traceback, no "nan%",
no result computed from nonsense.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import copy_run, one_error_line, run, write_edited_checkpoint

import cli
from backends import get_backend
from models import build_model
from training.saving.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("private_cache")


def edit(path: Path, change_meta=None, change_arrays=None) -> None:
    """Rewrite a checkpoint with its header (a dict) and/or arrays changed in place."""
    with np.load(path, allow_pickle=False) as stored:
        arrays = dict(stored)
    write_edited_checkpoint(path, arrays, change_meta, change_arrays)


def config_set(key, value):
    return lambda meta: meta["config"].__setitem__(key, value)


def drop_history_key(meta):
    del meta["history"][1]["test_loss"]


def nan_weight(arrays):
    arrays["param/0.weight"] = arrays["param/0.weight"].copy()
    arrays["param/0.weight"][0, 0, 0, 0] = np.nan


def huge_weights(arrays):  # finite weights whose outputs overflow float32
    for name in [n for n in arrays if n.startswith("param/")]:
        arrays[name] = np.full_like(arrays[name], 3e37)


# (what is edited, header change, array change, commands that must refuse it, phrase of the message)
EDITS = {
    "unknown model": (lambda meta: meta.__setitem__("model", "resnet"), None, ("resume", "evaluate", "predict"),
                      "its header names the model 'resnet', which is not one of lnet, mlp"),
    "float16 dtype": (config_set("dtype", "float16"), None, ("resume", "evaluate", "predict"),
                      "the checkpoint's config has dtype = 'float16', which --dtype would refuse (expected one of float32, float64)"),
    "short mean": (config_set("mean", [0.5, 0.5]), None, ("resume", "evaluate", "predict"),
                   "its config has mean = [0.5, 0.5], expected 3 numbers in [0, 1], one per colour channel"),
    "text mean": (config_set("mean", "0.5"), None, ("resume", "evaluate", "predict"), "its config has mean = '0.5'"),
    "zero std": (config_set("std", [0.2, 0.0, 0.2]), None, ("resume", "evaluate", "predict"),
                 "its config has std = [0.2, 0.0, 0.2], expected 3 numbers in (0, 1]"),
    "NaN weight": (None, nan_weight, ("resume", "evaluate", "predict"), "parameter 0.weight holds NaN or infinite values"),
    "history row without a key": (drop_history_key, None, ("resume",), "row 2 of its history has no test_loss"),
    "bad test size": (config_set("test_size", -4), None, ("resume", "evaluate"),
                      "the checkpoint's config has test_size = -4, which --test-size would refuse (must be at least 1"),
}


@pytest.mark.parametrize("command", ["resume", "evaluate", "predict"])
@pytest.mark.parametrize("what", list(EDITS))
def test_each_command_refuses_a_hand_edited_field_it_uses(what, command, tmp_path, capsys, finished_run):
    change_meta, change_arrays, refusing, phrase = EDITS[what]
    out = copy_run(finished_run, tmp_path / "run")
    path = out / "checkpoint.npz"
    edit(path, change_meta, change_arrays)
    _write_png(tmp_path / "digit.png")
    argv = {"resume": ["--resume", str(path), "--epochs", "3"], "evaluate": ["--evaluate", str(path)],
            "predict": ["--predict", str(tmp_path / "digit.png"), "--checkpoint", str(path)]}[command]
    before = path.read_bytes()
    code, _, err = run(argv + ["--device", "cpu", "--quiet"], capsys)
    if command in refusing:
        assert code == 2
        assert phrase in one_error_line(err)
        assert path.read_bytes() == before
    else:
        assert code == 0, err  # a field this command does not use does not stop it


def _write_png(path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_outputs_that_overflow_are_an_error_not_nan_percent(command, tmp_path, capsys, finished_run):
    out = copy_run(finished_run, tmp_path / "run")
    path = out / "best.npz"
    edit(path, change_arrays=huge_weights)
    _write_png(tmp_path / "digit.png")
    argv = ["--evaluate", str(path)] if command == "evaluate" else ["--predict", str(tmp_path / "digit.png"), "--checkpoint", str(path)]
    code, stdout, err = run(argv + ["--device", "cpu", "--quiet"], capsys)
    assert code == 2 and "nan" not in stdout.lower()
    line = one_error_line(err)
    assert "overflow" in line and "use another one" in line


@pytest.mark.parametrize("mode", ["evaluate", "predict"])
def test_checkpoint_without_normalisation_statistics_is_a_clear_error(svhn_patches, tmp_path, capsys, mode):
    root, _ = svhn_patches
    path = save_checkpoint(tmp_path / "bare.npz", build_model("mlp"), epoch=1, backend=get_backend("cpu"),
                           config={"model": "mlp", "dataset": "svhn", "data_dir": str(root)})
    image = tmp_path / "digit.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    argv = ["--evaluate", str(path)] if mode == "evaluate" else ["--predict", str(image), "--checkpoint", str(path)]
    code = cli.main(argv + ["--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err == f"error: {path} has no normalisation statistics; it was not written by cli.py training\n"
    assert "{" not in captured.out  # no result was printed
