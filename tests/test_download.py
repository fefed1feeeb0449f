"""download_svhn against a local HTTP server (never a real host): resume, checksums, failures."""
from __future__ import annotations

import hashlib
import socket

import numpy as np
import pytest
from helpers import Server

from training.data import read_svhn_mat, write_svhn_mat
from training.data.download import RemoteFile, download_svhn, file_sha256
from training.errors import DownloadError


@pytest.fixture(scope="module")
def svhn_bytes(tmp_path_factory) -> dict[str, bytes]:
    """Small genuine SVHN-format files for the train and test splits."""
    folder = tmp_path_factory.mktemp("source")
    rng = np.random.default_rng(0)
    out = {}
    for name, n in (("train_32x32.mat", 40), ("test_32x32.mat", 10)):
        write_svhn_mat(folder / name, rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n))
        out[name] = (folder / name).read_bytes()
    return out


@pytest.fixture
def table(svhn_bytes) -> dict[str, RemoteFile]:
    """The checksum table of the small files, as SVHN_FILES is for the real ones."""
    return {
        split: RemoteFile(name, len(svhn_bytes[name]), hashlib.sha256(svhn_bytes[name]).hexdigest())
        for split, name in (("train", "train_32x32.mat"), ("test", "test_32x32.mat"))
    }


@pytest.fixture
def server(svhn_bytes):
    srv = Server(svhn_bytes)
    yield srv
    srv.close()


def download(data_dir, server, table, **kwargs):
    return download_svhn(data_dir, checksums=table, base_url=server.url, progress=False, timeout=5, **kwargs)


def test_downloads_and_verifies(tmp_path, server, table, svhn_bytes):
    paths = download(tmp_path / "svhn", server, table)
    assert [p.name for p in paths] == ["train_32x32.mat", "test_32x32.mat"]
    assert paths[0].read_bytes() == svhn_bytes["train_32x32.mat"]
    assert not list((tmp_path / "svhn").glob("*.part"))
    images, labels = read_svhn_mat(paths[1])
    assert images.shape == (10, 3, 32, 32) and labels.shape == (10,)
    assert [path for path, _ in server.requests] == ["/housenumbers/train_32x32.mat", "/housenumbers/test_32x32.mat"]


def test_present_files_are_verified_not_downloaded_again(tmp_path, server, table):
    download(tmp_path, server, table)
    server.requests.clear()
    download(tmp_path, server, table)
    assert server.requests == []


def test_present_file_with_wrong_content_is_an_error(tmp_path, server, table, svhn_bytes):
    data = bytearray(svhn_bytes["train_32x32.mat"])
    data[-1] ^= 0xFF
    (tmp_path / "train_32x32.mat").write_bytes(bytes(data))
    with pytest.raises(DownloadError, match="SHA-256 does not match.*leaves it alone: move or rename it"):
        download(tmp_path, server, table, splits=("train",))
    (tmp_path / "train_32x32.mat").write_bytes(b"short")
    with pytest.raises(DownloadError, match="size is 5 bytes"):
        download(tmp_path, server, table, splits=("train",))
    assert server.requests == []


def test_checksum_mismatch_deletes_the_partial_file(tmp_path, server, table):
    bad = {"train": table["train"]._replace(sha256="0" * 64)}
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(tmp_path, server, bad, splits=("train",))
    assert list(tmp_path.iterdir()) == []


def test_failure_midway_keeps_only_the_part_file_and_a_rerun_resumes(tmp_path, server, table, svhn_bytes):
    body = svhn_bytes["train_32x32.mat"]
    server.mode = "half"
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        download(tmp_path, server, table, splits=("train",))
    assert not (tmp_path / "train_32x32.mat").exists()
    part = tmp_path / "train_32x32.mat.part"
    assert part.read_bytes() == body[: len(body) // 2]

    server.mode = "ok"
    server.requests.clear()
    (path,) = download(tmp_path, server, table, splits=("train",))
    assert server.requests == [("/housenumbers/train_32x32.mat", f"bytes={len(body) // 2}-")]
    assert path.read_bytes() == body and not part.exists()


def test_server_that_ignores_range_restarts_from_zero(tmp_path, server, table, svhn_bytes):
    (tmp_path / "train_32x32.mat.part").write_bytes(b"x" * 100)  # not even a valid prefix
    server.mode = "no-range"
    (path,) = download(tmp_path, server, table, splits=("train",))
    assert server.requests[0][1] == "bytes=100-"
    assert file_sha256(path) == table["train"].sha256


def test_part_file_that_is_already_complete_is_just_verified(tmp_path, server, table, svhn_bytes):
    (tmp_path / "test_32x32.mat.part").write_bytes(svhn_bytes["test_32x32.mat"])
    (path,) = download(tmp_path, server, table, splits=("test",))
    assert server.requests == [] and path.read_bytes() == svhn_bytes["test_32x32.mat"]


def test_http_error_is_reported(tmp_path, server, table):
    server.mode = "error"
    with pytest.raises(DownloadError, match="answered 500"):
        download(tmp_path, server, table, splits=("test",))
    assert not (tmp_path / "test_32x32.mat").exists()


def test_unreachable_server(tmp_path, table):
    with socket.socket() as s:  # a port that was free a moment ago, so nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="could not download.*internet connection"):
        download_svhn(tmp_path, checksums=table, base_url=f"http://127.0.0.1:{port}/", progress=False, timeout=2)
    assert not (tmp_path / "train_32x32.mat").exists()


def test_timeout_is_a_download_error(tmp_path, server, table):
    server.mode = "slow"
    with pytest.raises(DownloadError, match="timed out"):
        download_svhn(tmp_path, splits=("test",), checksums=table, base_url=server.url, progress=False, timeout=0.2)


def test_unknown_split(tmp_path, server, table):
    with pytest.raises(DownloadError, match="unknown SVHN split.*'valid'"):
        download(tmp_path, server, table, splits=("valid",))
