"""The synthetic SVHN-like set: shapes, determinism, balance and the on-disk cache."""
from __future__ import annotations

import numpy as np
import pytest

from training.data import ImageSet, synthetic
from training.data.synthetic import cache_path, default_cache_dir, generate, make_synthetic


@pytest.fixture(scope="module")
def small():
    return make_synthetic(300, 100, seed=0, cache=False)


def test_shapes_dtypes_and_names(small):
    train, test = small
    assert isinstance(train, ImageSet) and isinstance(test, ImageSet)
    assert train.images.shape == (300, 3, 32, 32) and train.images.dtype == np.uint8
    assert test.images.shape == (100, 3, 32, 32)
    assert train.labels.dtype == np.int64 and train.labels.min() >= 0 and train.labels.max() <= 9
    assert (train.name, test.name) == ("synthetic-train", "synthetic-test")


def test_same_seed_gives_identical_bytes(small):
    train, test = make_synthetic(300, 100, seed=0, cache=False)
    assert train.images.tobytes() == small[0].images.tobytes()
    np.testing.assert_array_equal(train.labels, small[0].labels)
    np.testing.assert_array_equal(test.images, small[1].images)


def test_other_seed_and_other_split_differ(small):
    other, _ = make_synthetic(300, 0, seed=1, cache=False)
    assert not np.array_equal(other.images, small[0].images)
    assert not np.array_equal(small[0].images[:100], small[1].images)  # train and test are separate streams


def test_images_are_neither_blank_nor_saturated(small):
    images = small[0].images.astype(np.float64)
    per_image_std = images.std(axis=(1, 2, 3))
    assert np.all(per_image_std > 2)  # every image shows something
    assert 40 < images.mean() < 215


def test_labels_are_roughly_balanced():
    _, labels = generate(3000, seed=5)
    counts = np.bincount(labels, minlength=10)
    assert counts.min() > 230 and counts.max() < 370, counts


def test_zero_images_and_bad_sizes():
    train, test = make_synthetic(0, 3, cache=False)
    assert train.images.shape == (0, 3, 32, 32) and len(test) == 3
    with pytest.raises(ValueError, match="n_train"):
        make_synthetic(-1, 3, cache=False)
    with pytest.raises(ValueError, match="n_test"):
        make_synthetic(3, 2.5, cache=False)


def test_cache_is_written_then_used(tmp_path, monkeypatch, small):
    train, test = make_synthetic(300, 100, seed=0, cache_dir=tmp_path)
    path = cache_path(300, 100, 0, tmp_path)
    assert path.exists() and list(tmp_path.iterdir()) == [path]  # no temporary files left
    np.testing.assert_array_equal(train.images, small[0].images)

    def no_generation(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(synthetic, "generate", no_generation)
    cached_train, cached_test = make_synthetic(300, 100, seed=0, cache_dir=tmp_path)
    np.testing.assert_array_equal(cached_train.images, train.images)
    np.testing.assert_array_equal(cached_test.labels, test.labels)


@pytest.mark.parametrize("garbage", [b"", b"not an npz file", None], ids=["empty", "text", "truncated"])
def test_corrupt_cache_is_regenerated(tmp_path, small, garbage):
    path = cache_path(300, 100, 0, tmp_path)
    if garbage is None:  # a real cache file cut short, as after a crash without atomic writes
        make_synthetic(300, 100, seed=0, cache_dir=tmp_path)
        garbage = path.read_bytes()[:5000]
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(garbage)
    with pytest.warns(UserWarning, match="regenerating"):
        train, _ = make_synthetic(300, 100, seed=0, cache_dir=tmp_path)
    np.testing.assert_array_equal(train.images, small[0].images)
    assert path.stat().st_size > 300 * 3 * 32 * 32  # rewritten whole


def test_cache_key_depends_on_arguments_and_knobs(tmp_path, monkeypatch):
    base = cache_path(300, 100, 0, tmp_path)
    assert base != cache_path(300, 100, 1, tmp_path) != cache_path(301, 100, 0, tmp_path)
    monkeypatch.setattr(synthetic, "NOISE_STD", (0.0, 0.5))
    assert cache_path(300, 100, 0, tmp_path) != base


def test_unwritable_cache_only_warns(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="could not cache"):
        train, _ = make_synthetic(20, 5, cache_dir=blocker / "cache")
    assert len(train) == 20


def test_default_cache_dir_follows_xpnet_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XPNET_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("XPNET_CACHE")
    assert default_cache_dir().parts[-2:] == (".cache", "xpnet")
