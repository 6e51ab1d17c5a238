"""The IDX file format of MNIST: a big-endian header (magic, dimensions) followed by the raw array.

Layout: two zero bytes, a type byte (0x08 = uint8, …), a byte giving the number of dimensions d, then d
big-endian uint32 sizes, then the data in row-major order. Every violation raises ValueError naming the file.
Reads are bounded by the header: the data is read (a ``.gz`` file decompressed as a stream) into an array
of the declared size, allocated only once the file's size allows it; a ``.gz`` file may expand as much
as a member of an .npz (``gpubp.npzfile.check_expansion``: 32×), which refuses gzip bombs.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..npzfile import check_expansion

#: IDX type byte -> element type (big-endian where it matters)
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
#: bytes read (or decompressed) at a time
CHUNK = 1 << 20


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """The array stored in the IDX bytes ``data``; ``name`` (the file) is quoted in errors."""
    return _read(io.BytesIO(data), name, len(data), None)


def read_idx(path: str | Path, digest: Any = None) -> np.ndarray:
    """Parse the IDX file at ``path`` (gzip-compressed when its name ends in ``.gz``), reading no more than
    its header declares. ``digest`` (a ``hashlib`` object), when given, is fed the IDX bytes as read
    (decompressed), so that it ends as the digest of the file's contents."""
    path = Path(path)
    with open(path, "rb") as raw:
        size = os.fstat(raw.fileno()).st_size
        if path.suffix != ".gz":
            return _read(raw, str(path), size, digest)
        try:
            with gzip.GzipFile(fileobj=raw) as stream:
                return _read(stream, str(path), None, digest, compressed=size)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise ValueError(f"{path}: not a valid gzip file ({exc}); the file is damaged or truncated, "
                             "replace it") from exc


def _read(stream: BinaryIO, name: str, size: int | None, digest: Any, compressed: int = 0) -> np.ndarray:
    """The IDX array in ``stream``, whose length is ``size`` (None for a decompressed stream, of a file of
    ``compressed`` bytes)."""
    magic = stream.read(4)
    if len(magic) < 4:
        raise ValueError(f"{name}: too short for an IDX header ({len(magic)} bytes)")
    zero0, zero1, type_code, ndim = magic
    if zero0 != 0 or zero1 != 0 or type_code not in IDX_TYPES or ndim == 0:
        raise ValueError(f"{name}: not an IDX file (magic 0x{magic.hex()}; expected 0x0000TTDD with "
                         "a known type byte TT such as 08 and DD >= 1 dimensions)")
    dims = stream.read(4 * ndim)
    header = 4 + 4 * ndim
    if len(dims) < 4 * ndim:
        raise ValueError(f"{name}: truncated IDX header ({4 + len(dims)} bytes; {ndim} dimensions need "
                         f"{header})")
    shape = tuple(int.from_bytes(dims[i:i + 4], "big") for i in range(0, len(dims), 4))
    dtype = IDX_TYPES[type_code]
    expected = header + math.prod(shape) * dtype.itemsize
    declared = f"header says shape {shape} of {dtype.name} ({expected} bytes in all)"
    if size is None:
        check_expansion(f"{name}: it", compressed, expected, "store it uncompressed (gunzip it)")
    elif size != expected:
        problem = "truncated" if size < expected else "has trailing bytes"
        raise ValueError(f"{name}: IDX file {problem}: {declared}, file has {size} bytes")
    array = np.empty(shape, dtype)
    buffer = memoryview(array.reshape(-1).view(np.uint8))
    got = 0
    while got < len(buffer):
        n = stream.readinto(buffer[got:got + CHUNK])
        if not n:
            raise ValueError(f"{name}: IDX file truncated: {declared}, file has {header + got} bytes")
        got += n
    if stream.read(1):
        raise ValueError(f"{name}: IDX file has trailing bytes: {declared}, file has more")
    if digest is not None:
        digest.update(magic + dims)
        digest.update(buffer)
    return array
