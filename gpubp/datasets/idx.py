"""The IDX file format of MNIST: a big-endian header (magic, dimensions) followed by the raw array.

Layout: two zero bytes, a type byte (0x08 = uint8, …), a byte giving the number of dimensions d, then d
big-endian uint32 sizes, then the data in row-major order. Every violation raises ValueError naming the file.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

#: IDX type byte -> element type (big-endian where it matters)
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def decompress(path: str | Path, raw: bytes) -> bytes:
    """``raw`` (the bytes of the file ``path``) gunzipped when the name ends in ``.gz``, else as is."""
    path = Path(path)
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise ValueError(f"{path}: not a valid gzip file ({exc}); the file is damaged or truncated, "
                         "replace it") from exc


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """The array stored in the IDX bytes ``data``; ``name`` (the file) is quoted in errors."""
    if len(data) < 4:
        raise ValueError(f"{name}: too short for an IDX header ({len(data)} bytes)")
    zero0, zero1, type_code, ndim = data[:4]
    if zero0 != 0 or zero1 != 0 or type_code not in IDX_TYPES or ndim == 0:
        raise ValueError(f"{name}: not an IDX file (magic 0x{data[:4].hex()}; expected 0x0000TTDD with "
                         "a known type byte TT such as 08 and DD >= 1 dimensions)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{name}: truncated IDX header ({len(data)} bytes; {ndim} dimensions need "
                         f"{header})")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_TYPES[type_code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "has trailing bytes"
        raise ValueError(f"{name}: IDX file {problem}: header says shape {shape} of {dtype.name} "
                         f"({expected} bytes in all), file has {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def read_idx(path: str | Path) -> np.ndarray:
    """Parse the IDX file at ``path`` (gzip-compressed when its name ends in ``.gz``)."""
    return parse_idx(decompress(path, Path(path).read_bytes()), str(path))
