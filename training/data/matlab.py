"""Vetting a MATLAB .mat file before scipy reads it.

SVHN's files are MATLAB v5 files: a 128-byte header (text, then the version 0x0100 and the
byte-order mark "IM" or "MI"), then one data element per variable, each possibly
zlib-compressed. ``scipy.io.loadmat`` reads them, but it is not hardened against corrupt
files (see ``check_mat_v5``), so ``training.data.svhn`` checks every variable's header here
first. MATLAB v7.3 files are HDF5 files instead, which scipy refuses (``is_hdf5``); a plain
HDF5 file (an .h5 renamed, say) is no MATLAB file at all (``is_plain_hdf5``).
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

# MATLAB v7.3 files are HDF5 files with a 512-byte MATLAB header in front; a plain HDF5 file starts with the signature.
_HDF5_SIGNATURE = b"\x89HDF"
_HDF5_OFFSET = 512
_HDF5_FULL_SIGNATURE = b"\x89HDF\r\n\x1a\n"

_MI_INT8, _MI_INT32, _MI_UINT32, _MI_MATRIX, _MI_COMPRESSED, _MI_UTF8 = 1, 5, 6, 14, 15, 16
# element type codes of numeric data -> bytes per value (miINT8 .. miUINT64)
_MI_ITEMSIZE = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8}
_MX_NUMERIC = range(6, 16)  # mxDOUBLE_CLASS .. mxUINT64_CLASS
_MX_CLASS_NAMES = {1: "cell array", 2: "struct", 3: "object", 4: "text (char array)", 5: "sparse matrix"}
_HEAD_BYTES = 1024  # enough for the flags, dims, name and data tag of any sane variable


def is_hdf5(stream) -> bool:
    """Whether the file open as ``stream`` is a MATLAB v7.3 (HDF5) file."""
    stream.seek(_HDF5_OFFSET)
    return stream.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE


def is_plain_hdf5(stream) -> bool:
    """Whether the file open as ``stream`` is an HDF5 file without a MATLAB header (no .mat file)."""
    stream.seek(0)
    return stream.read(len(_HDF5_FULL_SIGNATURE)) == _HDF5_FULL_SIGNATURE


def check_mat_v5(path: Path, f, *, read: tuple[str, ...], if_corrupt: str, if_not_numbers: str) -> list[str] | None:
    """Refuse a MATLAB v5 file that scipy.io.loadmat could crash on, before it reads it.

    scipy's v5 reader is not hardened against corrupt files: a data element whose type code
    is out of range makes it index past its type table and crash the interpreter (a
    segmentation fault, which no ``except`` catches; see scipy gh-25349). So the header of
    every variable (flags, dimensions, name) is checked here, and for the variables named in
    ``read``, the only ones read (scipy skips the others unread), also their class and data
    element: numeric, not complex, of a numeric type whose size matches the dimensions. Only
    the first bytes of each variable are read (and decompressed).

    The DataError raised ends with ``if_corrupt`` (what to do about a corrupt file) or, for a
    variable in ``read`` that holds no numbers, with ``if_not_numbers``.

    Returns the names of the variables, or None for a file that scipy does not read as v5
    (v4 files have no header, and scipy reads them in plain Python; v7.3 files it refuses).
    """
    size = os.fstat(f.fileno()).st_size
    f.seek(0)
    header = f.read(128)
    # scipy's own test (scipy.io.matlab._miobase._get_matfile_version): v4 if one of the first
    # four bytes is 0, else v5 if the version's major byte is 1 (byte 125 when byte 126 is "I",
    # else byte 124), whatever the rest of the header; little-endian only for "IM".
    if len(header) < 128 or 0 in header[:4] or header[125 if header[126] == ord("I") else 124] != 1:
        return None
    endian = "<" if header[126:128] == b"IM" else ">"
    read_names = {name.encode() for name in read}
    names = []
    position = 128
    while position + 8 <= size:
        f.seek(position)
        mdtype, nbytes = struct.unpack(endian + "II", f.read(8))
        if mdtype == _MI_COMPRESSED:
            try:
                head = zlib.decompressobj().decompress(f.read(min(nbytes, 64 * 1024)), _HEAD_BYTES)
            except zlib.error as exc:
                raise DataError(f"{path} is corrupt (compressed variable at byte {position}: {exc}); {if_corrupt}") from None
        elif mdtype == _MI_MATRIX:
            head = struct.pack(endian + "II", mdtype, nbytes) + f.read(min(nbytes, _HEAD_BYTES))
        else:
            raise DataError(f"{path} is corrupt: unexpected element type {mdtype} at byte {position}; {if_corrupt}")
        name = _check_matrix_head(path, head, endian, position, read_names, if_corrupt, if_not_numbers)
        if name is not None:
            names.append(name)
        position += 8 + nbytes
    return names


def _check_matrix_head(path: Path, head: bytes, endian: str, position: int, read_names: set[bytes], if_corrupt: str,
                       if_not_numbers: str) -> str | None:
    """Check one variable's header (see check_mat_v5); returns its name (None: an empty element)."""
    def fail(what: str):
        return DataError(f"{path} is corrupt: the variable at byte {position} {what}; {if_corrupt}")

    def element(offset: int):  # -> (type code, byte count, data offset, next offset)
        if offset + 8 > len(head):
            raise fail("is truncated")
        word, count = struct.unpack_from(endian + "II", head, offset)
        if word >> 16:  # small data element: type and count share the first 4 bytes
            return word & 0xFFFF, word >> 16, offset + 4, offset + 8
        return word, count, offset + 8, offset + 8 + count + (-count % 8)

    mdtype, nbytes, offset, _ = element(0)
    if mdtype != _MI_MATRIX:
        raise fail(f"has element type {mdtype}, not a matrix")
    if nbytes == 0:
        return None  # an empty variable
    mdtype, count, data, offset = element(offset)
    if mdtype != _MI_UINT32 or count != 8 or data + 8 > len(head):
        raise fail("has malformed array flags")
    flags = struct.unpack_from(endian + "I", head, data)[0]
    mdtype, count, data, offset = element(offset)
    if mdtype not in (_MI_INT32, _MI_UINT32) or count % 4 or not 8 <= count <= 4 * 32 or data + count > len(head):
        raise fail("has malformed dimensions")
    dims = struct.unpack_from(f"{endian}{count // 4}i", head, data)
    if min(dims) < 0:
        raise fail(f"has negative dimensions {dims}")
    mdtype, count, data, offset = element(offset)
    if mdtype not in (_MI_INT8, _MI_UTF8) or data + count > len(head):
        raise fail("has a malformed name")
    name = head[data:data + count]
    if name not in read_names:
        return name.decode("latin-1")  # not read: scipy skips it by its size
    matlab_class = flags & 0xFF
    if matlab_class not in _MX_NUMERIC or flags & 0x800:
        kind = "complex numbers" if flags & 0x800 else _MX_CLASS_NAMES.get(matlab_class, f"MATLAB class {matlab_class}")
        raise DataError(f"{path}: its variable {name.decode()} holds {kind}, not numbers; {if_not_numbers}")
    mdtype, count, data, offset = element(offset)
    if mdtype not in _MI_ITEMSIZE or count != int(np.prod(dims, dtype=object)) * _MI_ITEMSIZE[mdtype]:
        raise fail(f"has data of element type {mdtype} and {count} bytes, which does not fit its shape {dims}")
    return name.decode()
