"""The command line: a small run writes its files, resume is exact, evaluate and predict work,
and user errors end in one 'error:' line with exit code 2."""
from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import (
    SMALL,
    ambiguous,
    one_error_line,
    reference_channel_stats,
    reference_cross_entropy,
    reference_forward,
    reference_normalise,
    reference_softmax,
    run,
)

import cli
from training.saving.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("private_cache")


def test_training_run_writes_all_seven_files(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(SMALL + ["--epochs", "2", "--out", str(out)], capsys)
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == {"checkpoint.npz", "best.npz", "metrics.json", "curves.png", "confusion.png",
                                               "mistakes.png", "filters.png"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["model"] == "mlp" and metrics["config"]["optimizer"] == "adam"
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]
    assert set(metrics["history"][0]) == {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "examples_per_sec", "seconds"}
    for png in ("curves.png", "confusion.png", "mistakes.png", "filters.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("model", ["mlp", "lnet"])
def test_resume_continues_exactly(tmp_path, capsys, model):
    """E epochs in one go and k epochs resumed to E end with identical weights and history."""
    settings = SMALL[:2] + ["--model", model] + SMALL[4:] + ["--optimizer", "sgd"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run(settings + ["--epochs", "3", "--out", str(straight)], capsys)[0] == 0
    assert run(settings + ["--epochs", "1", "--out", str(split)], capsys)[0] == 0
    assert run(["--resume", str(split / "checkpoint.npz"), "--epochs", "3", "--quiet", "--device", "cpu"], capsys)[0] == 0
    a, b = load_checkpoint(straight / "checkpoint.npz"), load_checkpoint(split / "checkpoint.npz")
    assert a.epoch == b.epoch == 3
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])
    for key in a.optim:
        for entry in a.optim[key]:
            np.testing.assert_array_equal(a.optim[key][entry], b.optim[key][entry])
    timing = {"examples_per_sec", "seconds"}
    strip = lambda history: [{k: v for k, v in row.items() if k not in timing} for row in history]  # noqa: E731
    assert strip(a.history) == strip(b.history)


def test_resume_needs_more_epochs(tmp_path, capsys):
    out = tmp_path / "run"
    run(SMALL + ["--epochs", "1", "--out", str(out)], capsys)
    code, _, err = run(["--resume", str(out / "checkpoint.npz"), "--epochs", "1", "--device", "cpu"], capsys)
    assert code == 2 and "already holds 1 epochs; pass --epochs greater than 1" in err


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("batch_size", -5, "batch_size = -5, which --batch-size would refuse (must be at least 1"),
        ("lr", "fast", "lr = 'fast', which --lr would refuse (expected a number)"),
        ("model", "resnet", "model = 'resnet', which --model would refuse (expected one of lnet, mlp, cnn)"),
        ("extra", "yes", "extra = 'yes', which --extra would refuse (expected true or false)"),
    ],
)
def test_resume_refuses_a_hand_edited_config(tmp_path, capsys, name, value, message):
    out = tmp_path / "run"
    run(SMALL + ["--epochs", "1", "--out", str(out)], capsys)
    path = out / "checkpoint.npz"
    with np.load(path, allow_pickle=False) as stored:
        arrays = dict(stored)
    meta = json.loads(str(arrays["meta"]))
    meta["config"][name] = value
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    code, _, err = run(["--resume", str(path), "--epochs", "2", "--device", "cpu"], capsys)
    assert code == 2 and err.startswith("error: the checkpoint's config has ") and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_resume_with_a_smaller_lr_uses_it(tmp_path, capsys):
    """After a divergence the advice is a smaller --lr: a resumed run must use it, not the saved one."""
    out = tmp_path / "run"
    assert run(SMALL + ["--optimizer", "sgd", "--lr", "0.05", "--epochs", "1", "--out", str(out)], capsys)[0] == 0
    resume = ["--resume", str(out / "checkpoint.npz"), "--device", "cpu", "--quiet"]
    code, _, err = run(resume + ["--epochs", "2", "--lr", "0.001", "--weight-decay", "0.0001"], capsys)
    assert code == 0, err
    checkpoint = load_checkpoint(out / "checkpoint.npz")
    assert checkpoint.meta["optimizer"]["hyper"]["lr"] == checkpoint.config["lr"] == 0.001
    assert checkpoint.meta["optimizer"]["hyper"]["weight_decay"] == 0.0001
    assert checkpoint.meta["optimizer"]["hyper"]["momentum"] == 0.9
    code, _, err = run(resume + ["--epochs", "3", "--momentum", "0.5"], capsys)
    assert code == 2 and "trained with --momentum 0.9; momentum cannot change when resuming" in one_error_line(err)


def test_evaluate_and_predict(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "run"
    assert run(SMALL + ["--epochs", "1", "--out", str(out)], capsys)[0] == 0
    code, stdout, err = run(["--evaluate", str(out / "best.npz"), "--device", "cpu"], capsys)
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    # Recomputed here from the saved weights, not read from metrics.json (which the same code wrote).
    from training.data.synthetic import make_synthetic

    train, test = make_synthetic(160, 64, seed=0)
    mean, std = reference_channel_stats(train.images)
    params = load_checkpoint(out / "best.npz").params
    logits = reference_forward("mlp", params, reference_normalise(test.images, mean, std))
    unsure = ambiguous(logits).mean()
    assert abs(result["accuracy"] - np.mean(logits.argmax(axis=1) == test.labels)) <= unsure + 1e-12
    assert result["loss"] == pytest.approx(reference_cross_entropy(logits, test.labels), rel=1e-5)
    assert "per-class accuracy: 0:" in stdout

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)).save(tmp_path / "b.jpg")
    code, stdout, err = run(["--predict", str(tmp_path / "a.png"), str(tmp_path / "b.jpg"), "--checkpoint", str(out / "best.npz"), "--device", "cpu"], capsys)
    assert code == 0, err
    lines = [line for line in stdout.splitlines() if line.startswith(str(tmp_path))]
    assert len(lines) == 2
    with Image.open(tmp_path / "b.jpg") as jpeg:  # what a 32x32 model sees of the JPEG: decoded, resized
        resized = np.asarray(jpeg.convert("RGB").resize((32, 32), Image.Resampling.BICUBIC))
    images = np.stack([pixels, resized]).transpose(0, 3, 1, 2)
    probabilities = reference_softmax(reference_forward("mlp", params, reference_normalise(images, mean, std)))
    for line, expected in zip(lines, probabilities, strict=True):
        shown = [(int(part[0]), float(part.split("(")[1].rstrip("%)"))) for part in line.split(": ", 1)[1].split(", ")]
        assert [digit for digit, _ in shown] == np.argsort(-expected, kind="stable")[:3].tolist()
        np.testing.assert_allclose([share for _, share in shown], [100 * expected[d] for d, _ in shown], atol=0.05 + 1e-4)


def test_svhn_format_files_train(tmp_path, capsys):
    """--dataset svhn reads SVHN-format .mat files (label 10 is the digit 0)."""
    from training.data import write_svhn_mat

    rng = np.random.default_rng(0)
    data = tmp_path / "svhn"
    data.mkdir()
    for name, n in (("train_32x32.mat", 96), ("test_32x32.mat", 32)):
        write_svhn_mat(data / name, rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), np.arange(n) % 10)
    out = tmp_path / "run"
    code, _, err = run(["--dataset", "svhn", "--data-dir", str(data), "--model", "lnet", "--epochs", "1",
                        "--device", "cpu", "--quiet", "--out", str(out)], capsys)
    assert code == 0, err
    assert load_checkpoint(out / "checkpoint.npz").config["dataset"] == "svhn"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "0"], "--epochs: must be at least 1"),
        (["--batch-size", "-3"], "--batch-size: must be at least 1"),
        (["--lr", "0"], "--lr: must be a positive number"),
        (["--lr", "fast"], "--lr: expected a number"),
        (["--model", "resnet"], "invalid choice: 'resnet'"),
        (["--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
        (["--predict", "x.png"], "--predict needs --checkpoint"),
        (["--evaluate", "a.npz", "--resume", "b.npz"], "cannot be used together"),
        (["--epochs", "-1"], "--epochs: must be at least 1"),
        (["--epochs", "2.5"], "--epochs: expected a whole number"),
        (["--batch-size", "0"], "--batch-size: must be at least 1"),
        (["--lr", "-0.1"], "--lr: must be a positive number"),
        (["--lr", "nan"], "--lr: must be a positive number"),
        (["--lr", "inf"], "--lr: must be a positive number"),
        (["--momentum", "-1"], "--momentum: must be at least 0 and below 1"),
        (["--momentum", "5"], "--momentum: must be at least 0 and below 1 (at 1 or more, SGD's steps grow without bound), got 5"),
        (["--weight-decay", "nan"], "--weight-decay: must be zero or positive"),
        (["--seed", "-1"], "--seed: must be zero or positive"),
        (["--seed", "x"], "--seed: expected a whole number"),
        (["--train-size", "0"], "--train-size: must be at least 1"),
        (["--test-size", "0"], "--test-size: must be at least 1"),
        (["--device", "tpu"], "invalid choice: 'tpu'"),
        (["--dtype", "float16"], "invalid choice: 'float16'"),
        (["--dataset", "mnist"], "invalid choice: 'mnist'"),
        (["--checkpoint", "a.npz"], "--checkpoint goes with --predict"),
        (["--predict", "x.png", "--checkpoint", "a.npz", "--resume", "b.npz"], "cannot be used together"),
        (["--out", ""], "--out: expected a file or folder name, got an empty one"),
        (["--epochs", "2e0", "--lr", "1e-3", "--out", " "], "--out: expected a file or folder name"),
    ],
)
def test_bad_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "svhn", "--data-dir", "/nonexistent/svhn", "--device", "cpu"], "--download"),
        (["--evaluate", "/nonexistent/best.npz", "--device", "cpu"], "does not exist"),
        (["--momentum", "0.5", "--device", "cpu"], "--momentum applies only to --optimizer sgd; this run uses adam"),
    ],
)
def test_user_errors_are_one_line(argv, message, capsys):
    code, _, err = run(argv, capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err and "Traceback" not in err


@pytest.mark.parametrize("missing", ["image", "checkpoint", "resume"])
def test_missing_files_are_one_line_errors(tmp_path, capsys, missing):
    out = tmp_path / "run"
    if missing == "image":
        assert run(SMALL + ["--epochs", "1", "--out", str(out)], capsys)[0] == 0
        argv, phrase = ["--predict", str(tmp_path / "nope.png"), "--checkpoint", str(out / "best.npz")], "does not exist"
    elif missing == "checkpoint":
        (tmp_path / "a.png").write_bytes(b"")
        argv, phrase = ["--predict", str(tmp_path / "a.png"), "--checkpoint", str(tmp_path / "nope.npz")], "does not exist"
    else:
        argv, phrase = ["--resume", str(tmp_path / "nope.npz"), "--epochs", "2"], "does not exist"
    code, _, err = run(argv + ["--device", "cpu"], capsys)
    assert code == 2 and phrase in one_error_line(err)


def test_unreadable_image_and_wrong_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    run(SMALL + ["--epochs", "1", "--out", str(out)], capsys)
    (tmp_path / "note.png").write_text("not an image")
    code, _, err = run(["--predict", str(tmp_path / "note.png"), "--checkpoint", str(out / "best.npz"), "--device", "cpu"], capsys)
    assert code == 2 and "cannot read image" in err and "PNG or JPEG" in err
    code, _, err = run(["--resume", str(out / "checkpoint.npz"), "--model", "lnet", "--epochs", "2", "--device", "cpu"], capsys)
    assert code == 2 and "checkpoint of model 'mlp', not 'lnet'" in err


def test_cuda_without_cupy_is_one_clear_line(capsys):
    pytest.importorskip("array_api_strict")
    try:
        import cupy  # noqa: F401

        pytest.skip("CuPy is installed here")
    except ImportError:
        pass
    code, _, err = run(SMALL[2:] + ["--device", "cuda", "--epochs", "1"], capsys)
    assert code == 2 and err.startswith("error: device 'cuda' needs CuPy") and "pip install" in err
