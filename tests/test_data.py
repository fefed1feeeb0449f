"""SVHN .mat reading, ImageSet, channel statistics and the DataLoader."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from backends import get_backend
from training.data import (
    DataLoader,
    ImageSet,
    channel_stats,
    load_svhn,
    read_svhn_mat,
    write_svhn_mat,
)
from training.errors import DataError

def random_set(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def write_raw(path, **variables):
    scipy.io.savemat(str(path), variables)
    return path


# ---------------------------------------------------------------------------- .mat files


def test_write_then_read_gives_back_the_same_arrays(tmp_path):
    images, labels = random_set(7)
    labels[:3] = [0, 9, 0]
    write_svhn_mat(tmp_path / "a.mat", images, labels)
    got_images, got_labels = read_svhn_mat(tmp_path / "a.mat")
    assert got_images.dtype == np.uint8 and got_images.shape == (7, 3, 32, 32)
    assert got_images.flags.c_contiguous
    assert got_labels.dtype == np.int64
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_written_file_has_the_official_layout(tmp_path):
    images, labels = random_set(4)
    labels[:] = [0, 1, 9, 0]
    write_svhn_mat(tmp_path / "a.mat", images, labels)
    raw = scipy.io.loadmat(str(tmp_path / "a.mat"))
    assert raw["X"].shape == (32, 32, 3, 4) and raw["X"].dtype == np.uint8
    assert raw["y"].shape == (4, 1)
    assert raw["y"].ravel().tolist() == [10, 1, 9, 10]  # SVHN writes the digit 0 as 10
    # X is (row, column, channel, index)
    assert raw["X"][5, 7, 2, 3] == images[3, 2, 5, 7]


def test_label_10_means_digit_0_and_double_labels_are_accepted(tmp_path):
    x = np.zeros((32, 32, 3, 4), np.uint8)
    x[1, 2, 0, 3] = 200  # row 1, column 2, red, image 3
    y = np.array([[10.0], [1.0], [5.0], [10.0]])  # the official files store y as double
    images, labels = read_svhn_mat(write_raw(tmp_path / "a.mat", X=x, y=y))
    assert labels.tolist() == [0, 1, 5, 0]
    assert images[3, 0, 1, 2] == 200 and images.sum() == 200


def test_load_svhn_reads_train_and_test_and_appends_extra(tmp_path):
    for name, n, seed in (("train", 5, 1), ("test", 3, 2), ("extra", 4, 3)):
        write_svhn_mat(tmp_path / f"{name}_32x32.mat", *random_set(n, seed))
    train, test = load_svhn(tmp_path)
    assert (len(train), len(test)) == (5, 3)
    assert isinstance(train, ImageSet) and train.name == "svhn-train"
    np.testing.assert_array_equal(test.images, random_set(3, 2)[0])
    train_extra, _ = load_svhn(tmp_path, extra=True)
    assert len(train_extra) == 9
    np.testing.assert_array_equal(train_extra.labels[5:], random_set(4, 3)[1])


def test_missing_folder_suggests_download_or_synthetic(tmp_path):
    with pytest.raises(DataError, match="does not exist") as info:
        load_svhn(tmp_path / "nowhere")
    assert "--download" in str(info.value) and "--dataset synthetic" in str(info.value)


def test_missing_file_is_named(tmp_path):
    write_svhn_mat(tmp_path / "train_32x32.mat", *random_set(2))
    with pytest.raises(DataError, match="test_32x32.mat") as info:
        load_svhn(tmp_path)
    assert "--download" in str(info.value)
    write_svhn_mat(tmp_path / "test_32x32.mat", *random_set(2))
    with pytest.raises(DataError, match="extra_32x32.mat"):
        load_svhn(tmp_path, extra=True)
    with pytest.raises(DataError, match="not found"):
        read_svhn_mat(tmp_path / "missing.mat")


@pytest.mark.parametrize("content", [b"", b"this is not a mat file" * 10, b"\x00" * 300], ids=["empty", "text", "zeros"])
def test_garbage_file_is_reported_as_corrupt(tmp_path, content):
    path = tmp_path / "train_32x32.mat"
    path.write_bytes(content)
    with pytest.raises(DataError, match="corrupt"):
        read_svhn_mat(path)


def test_truncated_file_is_reported_as_corrupt(tmp_path):
    path = tmp_path / "train_32x32.mat"
    write_svhn_mat(path, *random_set(20))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_svhn_mat(path)


def test_hdf5_file_asks_for_the_format_2_files(tmp_path):
    # A MATLAB v7.3 file: a 512-byte header, then an HDF5 file (like digitStruct.mat).
    path = tmp_path / "digitStruct.mat"
    path.write_bytes(b"MATLAB 7.3 MAT-file".ljust(512, b" ") + b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    with pytest.raises(DataError, match="HDF5") as info:
        read_svhn_mat(path)
    assert "_32x32.mat" in str(info.value) and "format-2" in str(info.value)


def test_v73_header_without_hdf5_signature_is_still_recognised(tmp_path):
    # scipy refuses a v7.3 header with NotImplementedError; we turn that into the same advice.
    header = b"MATLAB 7.3 MAT-file".ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    path = tmp_path / "train_32x32.mat"
    path.write_bytes(header + b"\x00" * 64)
    with pytest.raises(DataError, match="format-2"):
        read_svhn_mat(path)


def test_missing_variables_are_named(tmp_path):
    path = write_raw(tmp_path / "a.mat", X=np.zeros((32, 32, 3, 2), np.uint8))
    with pytest.raises(DataError, match="no variable y"):
        read_svhn_mat(path)
    path = write_raw(tmp_path / "b.mat", images=np.zeros(3))
    with pytest.raises(DataError, match="no variable X or y.*found: images"):
        read_svhn_mat(path)


@pytest.mark.parametrize(
    "x",
    [
        np.zeros((28, 28, 1, 2), np.uint8),
        np.zeros((2, 3, 32, 32), np.uint8),
        np.zeros((32, 32, 3, 2), np.float64),
        np.zeros((32, 32, 3), np.uint8),
    ],
    ids=["mnist-like", "nchw", "float", "3d"],
)
def test_wrong_image_shape_or_dtype(tmp_path, x):
    path = write_raw(tmp_path / "a.mat", X=x, y=np.ones((2, 1)))
    with pytest.raises(DataError, match=r"X must be a uint8 array of shape \(32, 32, 3, N\)"):
        read_svhn_mat(path)


@pytest.mark.parametrize("bad", [0, 11, 1.5, -3], ids=["zero", "eleven", "fraction", "negative"])
def test_labels_outside_1_to_10(tmp_path, bad):
    y = np.array([[1.0], [bad], [10.0]])
    path = write_raw(tmp_path / "a.mat", X=np.zeros((32, 32, 3, 3), np.uint8), y=y)
    with pytest.raises(DataError, match="labels must be whole numbers 1..10.*index 1"):
        read_svhn_mat(path)


def test_labels_of_wrong_shape(tmp_path):
    path = write_raw(tmp_path / "a.mat", X=np.zeros((32, 32, 3, 4), np.uint8), y=np.ones((2, 2)))
    with pytest.raises(DataError, match=r"y must be a numeric array of shape \(N, 1\)"):
        read_svhn_mat(path)


def test_images_and_labels_of_different_lengths(tmp_path):
    path = write_raw(tmp_path / "a.mat", X=np.zeros((32, 32, 3, 5), np.uint8), y=np.ones((4, 1)))
    with pytest.raises(DataError, match="5 images but 4 labels"):
        read_svhn_mat(path)


def test_imageset_validates_its_arrays():
    images, labels = random_set(3)
    assert len(ImageSet(images, labels, "ok")) == 3
    with pytest.raises(DataError, match="uint8"):
        ImageSet(images.astype(np.float32), labels)
    with pytest.raises(DataError, match="int64"):
        ImageSet(images, labels.astype(np.int32))
    with pytest.raises(DataError, match="3 images but 2 labels"):
        ImageSet(images, labels[:2])
    with pytest.raises(DataError, match="0..9"):
        ImageSet(images, np.array([0, 1, 10]))


# ---------------------------------------------------------------------------- statistics


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


# ---------------------------------------------------------------------------- loader

MEAN = np.array([0.45, 0.5, 0.55])
STD = np.array([0.2, 0.25, 0.3])


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
