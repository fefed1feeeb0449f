"""The SVHN .mat files (training/data/svhn.py): writing and reading them back, loading the splits,
every kind of wrong or damaged file named with what to do; and the ImageSet they load into
(training/data/imageset.py)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from helpers import random_set

from training.data import ImageSet, load_svhn, read_svhn_mat, write_svhn_mat
from training.errors import DataError


def write_raw(path, **variables):
    scipy.io.savemat(str(path), variables)
    return path


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
    assert "'download'" in str(info.value) and "'dataset' synthetic" in str(info.value)


def test_missing_file_is_named(tmp_path):
    write_svhn_mat(tmp_path / "train_32x32.mat", *random_set(2))
    with pytest.raises(DataError, match="test_32x32.mat") as info:
        load_svhn(tmp_path)
    assert "'download'" in str(info.value)
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


# -- ImageSet --------------------------------------------------------------------------------------
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
