"""Downloading the SVHN cropped-digit files, with a progress bar, resume and checksums.

>>> download_svhn("data/svhn")                      # train and test, about 246 MB
>>> download_svhn("data/svhn", splits=("extra",))   # 1.3 GB more training images

Each file is streamed into ``<name>.part``. An interrupted download leaves the .part
behind and the next call resumes it with an HTTP Range request. Only a file whose size
and SHA-256 match the table below is moved (atomically) to its final name, so a file
under the final name is always complete. Only the standard library (urllib) is used.

The .part file is only ever a regular file of this folder: it is opened without following a
link and without blocking on a FIFO (``training.saving.regular_files``); anything else at its
name, or at the final name, is refused with one error.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

from ..errors import DownloadError, setting
from ..saving.regular_files import check_regular, kind_of_mode, open_regular

SVHN_BASE_URL = "http://ufldl.stanford.edu/housenumbers/"


class RemoteFile(NamedTuple):
    """One downloadable file: its name on the server, its size in bytes and SHA-256."""

    filename: str
    size: int
    sha256: str


# The official files. Their MD5s, as published by torchvision, for the record:
# train e26dedcc434d2e4c54c9b2d4a06d8373, test eb5a983be6a315427106f1b164d9cef3,
# extra a93ce644f1a588dc4d68dda5feec44a7.
SVHN_FILES: dict[str, RemoteFile] = {
    "train": RemoteFile("train_32x32.mat", 182_040_794, "435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8"),
    "test": RemoteFile("test_32x32.mat", 64_275_384, "cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b"),
    "extra": RemoteFile("extra_32x32.mat", 1_329_278_602, "a133a4beb38a00fcdda90c9489e0c04f900b660ce8a316a5e854838379a71eb3"),
}

CHUNK_BYTES = 1 << 20
DEFAULT_TIMEOUT_S = 30.0

# What a broken connection can raise while we read: refused, reset, timed out, cut short.
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, socket.timeout, ConnectionError, OSError)


def download_svhn(
    data_dir: str | os.PathLike,
    splits: Sequence[str] = ("train", "test"),
    checksums: Mapping[str, RemoteFile] = SVHN_FILES,
    base_url: str = SVHN_BASE_URL,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> list[Path]:
    """Make sure ``data_dir`` holds verified copies of the SVHN files of ``splits``.

    Files already present are checked (size and SHA-256) and not downloaded again; a
    present file that does not match raises DownloadError. ``checksums`` maps each split
    to its RemoteFile (tests inject their own table and ``base_url``). Returns the paths
    of the files, in the order of ``splits``. Raises DownloadError when the server cannot
    be reached, fails part-way (the .part file is kept, so running again resumes), or
    sends a file whose checksum does not match (the .part file is deleted).
    """
    unknown = [s for s in splits if s not in checksums]
    if unknown:
        raise DownloadError(f"unknown SVHN split(s) {', '.join(map(repr, unknown))}; choose from {', '.join(checksums)}")
    data_dir = Path(data_dir).expanduser()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create the data folder {data_dir} ({exc}); choose another with {setting('data_dir')}") from exc
    paths = []
    for split in splits:
        remote = checksums[split]
        target = data_dir / remote.filename
        if os.path.lexists(target):  # a dangling link too: it is no official file
            _check_present(target, remote)
        else:
            _download(base_url.rstrip("/") + "/" + remote.filename, target, remote, progress, timeout)
        paths.append(target)
    return paths


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file as a hex string, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_present(path: Path, remote: RemoteFile) -> None:
    try:
        status = path.stat()  # a link to the official file elsewhere is fine: it is only read
        kind = kind_of_mode(status.st_mode)
    except OSError:
        status, kind = None, f"{kind_of_mode(os.lstat(path).st_mode, path)} that leads to no file"
    if kind is not None:
        raise DownloadError(f"{path} is {kind}, not the official file; xpnet leaves it alone: move it away "
                            f"(or choose another {setting('data_dir')}) and run again with {setting('download')}")
    size = status.st_size
    if size == remote.size and file_sha256(path) == remote.sha256:
        return
    problem = f"its size is {size:,} bytes, expected {remote.size:,}" if size != remote.size else "its SHA-256 does not match"
    raise DownloadError(
        f"{path} exists but is not the official file ({problem}); it may be your own data, so xpnet leaves it alone: "
        f"move or rename it (or choose another {setting('data_dir')}) and run again with {setting('download')}"
    )


def _download(url: str, target: Path, remote: RemoteFile, progress: bool, timeout: float) -> None:
    part = target.with_name(target.name + ".part")
    check_regular(part, _part_advice(part), DownloadError)  # a link, a folder, a FIFO: never written through
    offset = os.lstat(part).st_size if os.path.lexists(part) else 0
    if offset > remote.size:  # not a prefix of the file we want
        part.unlink()
        offset = 0
    if offset < remote.size:
        _fetch_into(url, part, offset, remote, progress, timeout)

    size = os.lstat(part).st_size
    if size != remote.size:
        raise DownloadError(
            f"download of {url} stopped after {size:,} of {remote.size:,} bytes (the server closed the connection); "
            f"the partial file {part} is kept: run the same command again to resume"
        )
    if file_sha256(part) != remote.sha256:
        part.unlink()
        raise DownloadError(
            f"checksum mismatch for {url}: the downloaded file's SHA-256 is not {remote.sha256}; "
            f"the corrupt download was deleted: run again to retry (if it keeps failing, the server is not "
            f"sending the official file)"
        )
    os.replace(part, target)


def _part_advice(part: Path) -> str:
    return f"remove it (xpnet makes {part.name} itself), or choose another {setting('data_dir')}"


def _fetch_into(url: str, part: Path, offset: int, remote: RemoteFile, progress: bool, timeout: float) -> None:
    """Append bytes from ``offset`` on to ``part`` (or rewrite it when the server cannot resume)."""
    from tqdm import tqdm

    headers = {"User-Agent": "xpnet"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    written = offset
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
            if offset and response.status == 206:
                if not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
                    part.unlink()  # some other range than we asked for: start over
                    return _fetch_into(url, part, 0, remote, progress, timeout)
            elif offset:
                offset = written = 0  # the server sent the whole file instead (200): start over
            flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if offset else os.O_TRUNC)
            descriptor = open_regular(part, flags, _part_advice(part), DownloadError)
            with os.fdopen(descriptor, "wb") as out, tqdm(
                total=remote.size,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=remote.filename,
                disable=not progress,
            ) as bar:
                for block in iter(lambda: response.read(CHUNK_BYTES), b""):
                    out.write(block)
                    written += len(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # "range not satisfiable": the .part is useless
            part.unlink()
            return _fetch_into(url, part, 0, remote, progress, timeout)
        raise DownloadError(
            f"the server answered {exc.code} {exc.reason} for {url}; check the URL, or try again later"
        ) from exc
    except _NETWORK_ERRORS as exc:
        reason = getattr(exc, "reason", exc)
        if written == 0 and offset == 0:
            raise DownloadError(
                f"could not download {url} ({reason}); check your internet connection, or copy "
                f"{remote.filename} into {part.parent} yourself"
            ) from exc
        raise DownloadError(
            f"download of {url} failed after {written:,} of {remote.size:,} bytes ({reason}); "
            f"the partial file {part} is kept: run the same command again to resume"
        ) from exc
