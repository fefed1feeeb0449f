"""Channel statistics and the DataLoader (training/data/loader.py): normalised batches of the
model's dtype on the device, the right images in every batch of every mode, the shuffle order as a
function of (seed, epoch), resident batches gathered in chunks, and every misuse refused."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import random_set

from backends import get_backend
from training.data import DataLoader, channel_stats
from training.data import loader as data_loader
from training.errors import DataError


# -- statistics ------------------------------------------------------------------------------------
def test_channel_stats_match_numpy_in_float64():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2500, 3, 2, 3), dtype=np.uint8)  # more than one chunk
    images[:, 1] //= 4  # give the channels different statistics
    mean, std = channel_stats(images)
    as_float = images.astype(np.float64) / 255
    assert mean.dtype == np.float64 and mean.shape == (3,)
    np.testing.assert_allclose(mean, as_float.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, as_float.std(axis=(0, 2, 3)), rtol=1e-10)


def test_channel_stats_rejects_float_images():
    with pytest.raises(DataError, match="uint8"):
        channel_stats(np.zeros((2, 3, 32, 32), np.float32))


# -- batches ---------------------------------------------------------------------------------------
MEAN = np.array([0.45, 0.5, 0.55])
STD = np.array([0.2, 0.25, 0.3])
SEED, EPOCH = 3, 2


def make_loader(backend, n=10, batch_size=4, **kwargs):
    """A loader over ``n`` random images; ``backend`` is a Backend (the conftest fixture) or a name."""
    images, labels = random_set(n)
    return DataLoader(images, labels, batch_size, get_backend(backend), MEAN, STD, **kwargs), images, labels


@pytest.mark.parametrize("resident", [False, True], ids=["host-gather", "device-resident"])
def test_batches_are_normalised_float32_on_the_device(backend, resident):
    loader, images, labels = make_loader(backend, device_resident=resident)
    be = loader.backend
    order = loader.order()
    batches = list(loader)
    assert [be.to_numpy(y).shape[0] for _, y in batches] == [4, 4, 2]  # partial last batch kept
    x, y = batches[0]
    assert be.is_array(x) and be.is_array(y)
    assert x.dtype == be.xp.float32 and y.dtype == be.xp.int64
    assert tuple(x.shape) == (4, 3, 32, 32)
    expected = (images[order[:4]] / 255.0 - MEAN[:, None, None]) / STD[:, None, None]
    np.testing.assert_allclose(be.to_numpy(x), expected, atol=2e-5)
    np.testing.assert_array_equal(be.to_numpy(y), labels[order[:4]])


def test_host_and_device_gathers_give_the_same_batches(backend):
    a, _, _ = make_loader(backend, n=11, batch_size=3, device_resident=False)
    b, _, _ = make_loader(backend, n=11, batch_size=3, device_resident=True)
    be = a.backend
    batches_a, batches_b = list(a), list(b)
    assert len(batches_a) == len(batches_b) == 4
    for (xa, ya), (xb, yb) in zip(batches_a, batches_b, strict=True):
        np.testing.assert_array_equal(be.to_numpy(xa), be.to_numpy(xb))
        np.testing.assert_array_equal(be.to_numpy(ya), be.to_numpy(yb))


def test_the_loader_makes_float64_batches_on_every_backend(backend):
    """What --dtype float64 needs from DataLoader: batches of the model's dtype, the same numbers."""
    from training.data import DataLoader

    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8), np.arange(6)
    mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3])
    expected = (images / 255.0 - mean[None, :, None, None]) / std[None, :, None, None]
    x, _ = next(iter(DataLoader(images, labels, 6, backend, mean, std, shuffle=False, dtype="float64")))
    assert backend.to_numpy(x).dtype == np.float64
    np.testing.assert_allclose(backend.to_numpy(x), expected, rtol=1e-12, atol=1e-12)


def distinct_images(n: int):
    """Images that all differ (so a batch of the wrong images cannot match) and their labels."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)  # distinct even where the random bytes might not be
    return images, rng.integers(0, 10, n).astype(np.int64)


@pytest.mark.parametrize("drop_last", [False, True], ids=["keep-last", "drop-last"])
@pytest.mark.parametrize("resident", [False, True], ids=["host-gather", "device-resident"])
@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffled", "in-order"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_batch_holds_the_right_images(backend, shuffle, resident, drop_last, dtype):
    n, size = 11, 4
    images, labels = distinct_images(n)
    loader = DataLoader(images, labels, size, backend, MEAN, STD, shuffle=shuffle, seed=SEED,
                        drop_last=drop_last, device_resident=resident, dtype=dtype)
    loader.set_epoch(EPOCH)
    order = np.random.default_rng([SEED, EPOCH]).permutation(n) if shuffle else np.arange(n)
    batches = [(backend.to_numpy(x), backend.to_numpy(y)) for x, y in loader]
    assert [len(y) for _, y in batches] == ([4, 4] if drop_last else [4, 4, 3])
    for number, (x, y) in enumerate(batches):
        index = order[number * size:(number + 1) * size]
        expected = (images[index] / 255.0 - MEAN[:, None, None]) / STD[:, None, None]
        assert x.dtype == np.dtype(dtype) and x.shape == expected.shape
        np.testing.assert_allclose(x, expected, rtol=0, atol=2e-5 if dtype == "float32" else 1e-12,
                                   err_msg=f"batch {number}")
        np.testing.assert_array_equal(y, labels[index], err_msg=f"batch {number}")


@pytest.mark.parametrize("chunk_batches", [1, 2, 5])
def test_resident_batches_gathered_in_chunks_equal_the_host_batches(backend, monkeypatch, chunk_batches):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(23, 3, 4, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, size=23)
    monkeypatch.setattr(data_loader, "GATHER_CHUNK_BYTES", chunk_batches * 4 * 4 * 3 * 4 * 4)  # chunk_batches batches of 4
    host = DataLoader(images, labels, 4, backend, MEAN, STD, seed=3, device_resident=False)
    resident = DataLoader(images, labels, 4, backend, MEAN, STD, seed=3, device_resident=True)
    for epoch in (0, 1):
        host.set_epoch(epoch)
        resident.set_epoch(epoch)
        a, b = list(host), list(resident)
        assert len(a) == len(b) == 6
        for (xa, ya), (xb, yb) in zip(a, b):
            np.testing.assert_array_equal(backend.to_numpy(xb), backend.to_numpy(xa))
            np.testing.assert_array_equal(backend.to_numpy(yb), backend.to_numpy(ya))
        order = host.order(epoch)
        expected = (images[order[:4]] / 255.0 - MEAN[:, None, None]) / STD[:, None, None]
        np.testing.assert_allclose(backend.to_numpy(b[0][0]), expected, atol=2e-5)


def test_len_and_drop_last(backend):
    loader, _, _ = make_loader(backend, n=10, batch_size=4)
    assert len(loader) == 3 and loader.num_examples == 10
    loader, _, _ = make_loader(backend, n=10, batch_size=4, drop_last=True)
    assert len(loader) == 2 and loader.num_examples == 8
    assert [tuple(x.shape)[0] for x, _ in loader] == [4, 4]
    loader, _, _ = make_loader(backend, n=8, batch_size=4)
    assert len(loader) == 2


def test_shuffle_is_a_pure_function_of_seed_and_epoch(backend):
    loader, _, labels = make_loader(backend, n=50, batch_size=8, seed=7)
    be = loader.backend

    def epoch_labels(epoch):
        loader.set_epoch(epoch)
        return np.concatenate([be.to_numpy(y) for _, y in loader])

    first = epoch_labels(3)
    np.testing.assert_array_equal(first, epoch_labels(3))  # a resumed run sees the same batches
    np.testing.assert_array_equal(first, labels[np.random.default_rng([7, 3]).permutation(50)])
    assert not np.array_equal(first, epoch_labels(4))
    assert sorted(loader.order(5).tolist()) == list(range(50))  # every example once per epoch

    other, _, _ = make_loader(backend, n=50, batch_size=8, seed=8)
    assert not np.array_equal(other.order(3), loader.order(3))


def test_each_pass_advances_the_epoch():
    loader, _, _ = make_loader("cpu", n=30, batch_size=30)
    first = next(iter(loader))[1].copy()
    assert loader.epoch == 1
    second = next(iter(loader))[1]
    assert not np.array_equal(first, second)
    loader.set_epoch(0)
    np.testing.assert_array_equal(next(iter(loader))[1], first)


def test_without_shuffle_the_order_is_the_stored_one():
    loader, images, labels = make_loader("cpu", n=10, batch_size=4, shuffle=False)
    expected = (images / 255.0 - MEAN[:, None, None]) / STD[:, None, None]
    for _ in range(2):  # and again in the next pass
        batches = list(loader)
        assert [len(y) for _, y in batches] == [4, 4, 2]
        np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), labels)
        np.testing.assert_allclose(np.concatenate([x for x, _ in batches]), expected, atol=2e-5)


def test_device_resident_defaults_to_cuda_only():
    loader, _, _ = make_loader("cpu")
    assert loader.device_resident is False


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "8"])
def test_bad_batch_size(batch_size):
    images, labels = random_set(4)
    with pytest.raises(DataError, match="batch_size"):
        DataLoader(images, labels, batch_size, "cpu", MEAN, STD)


@pytest.mark.parametrize(
    "images, labels, match",
    [
        (np.zeros((4, 3, 32, 32), np.float32), np.zeros(4, np.int64), "uint8"),
        (np.zeros((4, 32, 32), np.uint8), np.zeros(4, np.int64), "uint8 NumPy array of shape"),
        (np.zeros((4, 3, 32, 32), np.uint8), np.zeros(3, np.int64), "4 images but 3 labels"),
        (np.zeros((4, 3, 32, 32), np.uint8), np.zeros((4, 1), np.int64), "1-D integer"),
        (np.zeros((4, 3, 32, 32), np.uint8), np.zeros(4, np.float32), "1-D integer"),
        (np.zeros((0, 3, 32, 32), np.uint8), np.zeros(0, np.int64), "empty"),
    ],
    ids=["float-images", "3d-images", "length-mismatch", "2d-labels", "float-labels", "empty"],
)
def test_bad_images_or_labels(images, labels, match):
    with pytest.raises(DataError, match=match):
        DataLoader(images, labels, 2, "cpu", MEAN, STD)


@pytest.mark.parametrize(
    "mean, std, match",
    [
        ([0.5, 0.5], STD, "one value per channel"),
        (MEAN, [0.2, 0.0, 0.2], "std finite and > 0"),
        (MEAN, [0.2, float("nan"), 0.2], "std finite and > 0"),
        ("abc", STD, "sequences of numbers"),
    ],
    ids=["short-mean", "zero-std", "nan-std", "text"],
)
def test_bad_statistics(mean, std, match):
    images, labels = random_set(4)
    with pytest.raises(DataError, match=match):
        DataLoader(images, labels, 2, "cpu", mean, std)


def test_drop_last_that_drops_everything_is_an_error():
    images, labels = random_set(3)
    with pytest.raises(DataError, match="no batches"):
        DataLoader(images, labels, 4, "cpu", MEAN, STD, drop_last=True)
