"""``python cli.py --dataset svhn --download`` end to end, against a local HTTP server on
127.0.0.1 serving small SVHN-format files (never a real host): the progress bar, checksum
verification, one clear error for a bad file (which is not kept), and resuming a download
that was cut off or interrupted.

The CLI calls ``training.data.download.download_svhn`` with the official checksum table and
address; the tests put the small files' checksums into that table and point the address
at the local server, and change nothing else.
"""
from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
import tqdm
from helpers import Server

import cli
import training.data.download as download_module
from training.data import read_svhn_mat, write_svhn_mat
from training.data.download import RemoteFile

NAMES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("served")
    rng = np.random.default_rng(4)
    files = {}
    for split, n in (("train", 64), ("test", 24)):
        write_svhn_mat(folder / NAMES[split], rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n))
        files[NAMES[split]] = (folder / NAMES[split]).read_bytes()
    return files


@pytest.fixture
def server(served, monkeypatch):
    """The local server, registered as where --download fetches from, with the small files' checksums."""
    srv = Server(dict(served))
    for split, name in NAMES.items():
        monkeypatch.setitem(download_module.SVHN_FILES, split,
                            RemoteFile(name, len(served[name]), hashlib.sha256(served[name]).hexdigest()))
    real = download_module.download_svhn

    def from_local_server(*args, **kwargs):
        return real(*args, **kwargs, base_url=srv.url, timeout=10)

    monkeypatch.setattr(download_module, "download_svhn", from_local_server)
    yield srv
    srv.close()


def train_with_download(data_dir, out, capsys, quiet=False):
    argv = ["--dataset", "svhn", "--download", "--data-dir", str(data_dir), "--model", "mlp", "--epochs", "1",
            "--batch-size", "32", "--device", "cpu", "--out", str(out)] + (["--quiet"] if quiet else [])
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def last_line(text: str) -> str:
    """The last line, after any progress bar (which redraws itself with carriage returns)."""
    return [line for line in re.split(r"[\r\n]", text) if line.strip()][-1]


def test_download_shows_progress_verifies_and_trains(tmp_path, server, served, capsys):
    data_dir = tmp_path / "svhn"  # does not exist yet
    code, out, err = train_with_download(data_dir, tmp_path / "run", capsys)
    assert code == 0, err
    assert [path for path, _ in server.requests] == ["/housenumbers/train_32x32.mat", "/housenumbers/test_32x32.mat"]
    for name, body in served.items():
        assert (data_dir / name).read_bytes() == body
        # the progress bar: the file's name, then its full size reached
        size = tqdm.tqdm.format_sizeof(len(body), divisor=1024)
        assert re.search(rf"{re.escape(name)}: 100%\|[^\r\n|]*\| {re.escape(size)}/{re.escape(size)} ", err), err
    assert not list(data_dir.glob("*.part"))
    assert f"SVHN from {data_dir}: 64 train / 24 test images" in out
    assert "done: final test accuracy" in out

    # Run again: the verified files are used, not fetched again.
    server.requests.clear()
    code, _, err = train_with_download(data_dir, tmp_path / "again", capsys)
    assert code == 0, err
    assert server.requests == []


def test_quiet_download_shows_no_progress_bar(tmp_path, server, capsys):
    code, out, err = train_with_download(tmp_path / "svhn", tmp_path / "run", capsys, quiet=True)
    assert code == 0, err
    assert err == "" and out.startswith("done: ") and out.count("\n") == 1


def test_checksum_mismatch_is_one_clear_error_and_the_file_is_not_kept(tmp_path, server, served, capsys):
    good = served["train_32x32.mat"]
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF  # same size, one byte differs
    server.files["train_32x32.mat"] = bytes(bad)
    data_dir = tmp_path / "svhn"
    code, out, err = train_with_download(data_dir, tmp_path / "run", capsys)
    assert code == 2
    assert last_line(err) == (
        f"error: checksum mismatch for {server.url}train_32x32.mat: the downloaded file's SHA-256 is not "
        f"{hashlib.sha256(good).hexdigest()}; the corrupt download was deleted: run again to retry (if it keeps "
        f"failing, the server is not sending the official file)")
    assert err.count("error:") == 1 and "Traceback" not in err
    assert sorted(path.name for path in data_dir.iterdir()) == []  # neither the file nor a .part is kept
    assert not (tmp_path / "run" / "checkpoint.npz").exists()

    server.files["train_32x32.mat"] = good  # the server is fixed: the next run downloads afresh
    server.requests.clear()
    code, _, err = train_with_download(data_dir, tmp_path / "run", capsys)
    assert code == 0, err
    assert server.requests[0] == ("/housenumbers/train_32x32.mat", None)  # from the start, not resumed
    assert (data_dir / "train_32x32.mat").read_bytes() == good


def test_download_cut_off_by_the_server_resumes_on_the_next_run(tmp_path, server, served, capsys):
    body = served["train_32x32.mat"]
    server.mode = "half"
    data_dir = tmp_path / "svhn"
    code, _, err = train_with_download(data_dir, tmp_path / "run", capsys)
    assert code == 2
    part = data_dir / "train_32x32.mat.part"
    message = last_line(err)
    assert message.startswith(f"error: download of {server.url}train_32x32.mat stopped after {len(body) // 2:,} of {len(body):,} bytes "
                              "(the server closed the connection)")
    assert message.endswith(f"the partial file {part} is kept: run the same command again to resume")
    assert err.count("error:") == 1 and "Traceback" not in err
    assert part.read_bytes() == body[: len(body) // 2] and not (data_dir / "train_32x32.mat").exists()

    server.mode = "ok"
    server.requests.clear()
    code, _, err = train_with_download(data_dir, tmp_path / "run", capsys)
    assert code == 0, err
    assert server.requests[0] == ("/housenumbers/train_32x32.mat", f"bytes={len(body) // 2}-")
    assert (data_dir / "train_32x32.mat").read_bytes() == body and not part.exists()
    images, labels = read_svhn_mat(data_dir / "train_32x32.mat")
    assert images.shape == (64, 3, 32, 32) and labels.shape == (64,)


def test_download_interrupted_with_ctrl_c_resumes_on_the_next_run(tmp_path, server, served, capsys, monkeypatch):
    body = served["train_32x32.mat"]
    monkeypatch.setattr(download_module, "CHUNK_BYTES", 8192)
    real_update, updates = tqdm.tqdm.update, []

    def update_then_interrupt(self, n=1):
        updates.append(n)
        if len(updates) == 3:
            raise KeyboardInterrupt
        return real_update(self, n)

    with monkeypatch.context() as patch:
        patch.setattr(tqdm.tqdm, "update", update_then_interrupt)
        code, _, err = train_with_download(tmp_path / "svhn", tmp_path / "run", capsys)
    assert code == 130 and last_line(err).startswith("interrupted before") and "nothing was saved" in last_line(err)
    part = tmp_path / "svhn" / "train_32x32.mat.part"
    kept = part.read_bytes()
    assert 0 < len(kept) < len(body) and body.startswith(kept)

    server.requests.clear()
    code, _, err = train_with_download(tmp_path / "svhn", tmp_path / "run", capsys)
    assert code == 0, err
    assert server.requests[0] == ("/housenumbers/train_32x32.mat", f"bytes={len(kept)}-")
    assert (tmp_path / "svhn" / "train_32x32.mat").read_bytes() == body and not part.exists()
