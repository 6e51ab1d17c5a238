"""Reading NumPy ``.npz`` archives and ``.npy`` arrays without pickle, every read bounded by what the file
declares: the zip directory's sizes and each array's ``.npy`` header are checked against each other and
against the file's size before anything proportional to them is allocated or decompressed. A damaged or
hostile file raises ValueError saying what is wrong, after reading little.

The rules:

- an archive holds only distinct ``<name>.npy`` members, stored or deflated (what ``np.savez`` and
  ``np.savez_compressed`` write), as many as its end record declares;
- the members' local headers and data fit in the archive side by side (they may not overlap);
- a compressed member expands at most ``MAX_EXPANSION`` times its compressed size plus
  ``EXPANSION_ALLOWANCE`` bytes (a small array compresses better), so that no archive expands beyond 32
  times its own size: a zip bomb is refused before it is decompressed;
- an array's ``.npy`` header accounts for exactly the bytes stored (nothing missing, nothing after it);
  object arrays (pickle) are refused;
- each member's CRC-32 is checked as it is read.
"""

from __future__ import annotations

import io
import math
import os
import zipfile
from typing import BinaryIO, Callable

import numpy as np

from .units import bytes_text

#: a compressed zip member or .gz file may expand to MAX_EXPANSION × its size + EXPANSION_ALLOWANCE bytes
MAX_EXPANSION = 32
EXPANSION_ALLOWANCE = 1024
#: the longest .npy header read (NumPy's own default)
MAX_HEADER_SIZE = 10_000
#: how far from the end of a zip its end record may start (22 bytes plus a comment of up to 64 KiB)
END_RECORD_SEARCH = 22 + 65535
#: the end record's member count of a zip64 archive, whose real count zipfile reads from the zip64 record
ZIP64_ENTRIES = 0xFFFF
#: the fixed part of a zip member's local header (its name follows)
LOCAL_HEADER = 30
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
NPY_MAGIC = b"\x93NUMPY"
COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


class Refused(ValueError):
    """A file that breaks one of the rules above (the message says which)."""


def read(source: str | os.PathLike | bytes, keep: Callable[[str], bool] | None = None,
         npy_name: str | None = None) -> dict[str, np.ndarray]:
    """The arrays of the .npz archive ``source`` (a path, or the file's bytes) by name. Members whose name
    ``keep`` refuses are checked (their headers) but not read. With ``npy_name``, a .npy file is accepted
    too, as the one array ``npy_name``. ValueError saying what is wrong, without the file's name (the caller
    adds it); OSError as is when the file cannot be opened."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    with stream:
        size = stream.seek(0, os.SEEK_END)
        stream.seek(0)
        start = stream.read(64)
        stream.seek(0)
        kind = ".npz archive" if npy_name is None else ".npz archive or .npy array"
        try:
            if start.startswith(ZIP_MAGIC):
                return _read_archive(stream, size, keep)
            if start.startswith(NPY_MAGIC) and npy_name is not None:
                return {npy_name: _read_array(stream, size, "its array", True)}
        except (Refused, MemoryError):
            raise
        except Exception as exc:  # damaged bytes make zipfile and numpy raise many types: all "damaged"
            raise ValueError(f"a damaged {kind} ({type(exc).__name__}: {exc})") from exc
    raise Refused(f"not an {kind}: {_describe(start)}")


def check_expansion(what: str, compressed: int, expanded: int, advice: str) -> None:
    """Refused when ``expanded`` bytes from ``compressed`` break the rule against zip bombs."""
    if expanded > MAX_EXPANSION * compressed + EXPANSION_ALLOWANCE:
        raise Refused(f"{what} expands {expanded / max(compressed, 1):,.0f}× when decompressed "
                      f"({bytes_text(expanded)} from {bytes_text(compressed)}), more than the {MAX_EXPANSION}× "
                      f"gpubp allows against zip bombs; {advice}")


def _read_archive(stream: BinaryIO, size: int, keep: Callable[[str], bool] | None) -> dict[str, np.ndarray]:
    """The arrays of the zip archive of ``size`` bytes in ``stream``, its directory checked first."""
    declared = _declared_entries(stream, size)
    arrays: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(stream) as archive:
        members = archive.infolist()
        if declared != ZIP64_ENTRIES and len(members) != declared:
            raise Refused(f"its central directory lists {len(members)} members where the end record declares "
                          f"{declared}")
        _check_members(members, size)
        for member in members:
            key = member.filename.removesuffix(".npy")
            with archive.open(member) as data:
                array = _read_array(data, member.file_size, f"member {member.filename!r}",
                                    keep is None or keep(key))
            if array is not None:
                arrays[key] = array
    return arrays


def _check_members(members: list[zipfile.ZipInfo], size: int) -> None:
    """The rules on names, compression and sizes, from the central directory alone."""
    keys = set()
    for member in members:
        what = f"member {member.filename!r}"
        key = member.filename.removesuffix(".npy")
        if key == member.filename or key in keys:
            raise Refused(f"{what} is not a distinct .npy array (an .npz holds only <name>.npy members)")
        keys.add(key)
        if member.compress_type not in COMPRESSIONS:
            raise Refused(f"{what} uses zip compression method {member.compress_type}; gpubp reads what "
                          "np.savez and np.savez_compressed write (stored or deflated)")
        if member.compress_type == zipfile.ZIP_STORED and member.file_size != member.compress_size:
            raise Refused(f"{what} is stored uncompressed, yet its directory entry gives two sizes "
                          f"({member.file_size} and {member.compress_size} bytes)")
        check_expansion(what, member.compress_size, member.file_size, "save it uncompressed (np.savez)")
    claimed = sum(LOCAL_HEADER + len(m.filename) + m.compress_size for m in members)
    if claimed > size:
        raise Refused(f"its members' headers and data need {claimed:,} bytes, more than the archive's {size:,}: "
                      "they overlap (a zip bomb's trick)")


def _read_array(stream: BinaryIO, size: int, what: str, read_data: bool) -> np.ndarray | None:
    """The array of the .npy bytes of length ``size`` in ``stream`` (None without ``read_data``, once its
    header is checked); Refused if the header does not account for exactly ``size`` bytes."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream, MAX_HEADER_SIZE)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream, MAX_HEADER_SIZE)
    else:
        raise Refused(f"{what} is a .npy array of format version {version[0]}.{version[1]}; gpubp reads "
                      "versions 1.0 and 2.0")
    if dtype.hasobject:
        raise Refused(f"{what} holds pickled Python objects, which gpubp never loads (allow_pickle=False); "
                      "save plain numeric arrays")
    if dtype.itemsize == 0:
        raise Refused(f"{what} has elements of 0 bytes (dtype {dtype})")
    header = stream.tell()
    needed = math.prod(shape) * dtype.itemsize
    if header + needed != size:
        raise Refused(f"{what} claims shape {shape} of {dtype} ({bytes_text(needed)}) but holds "
                      f"{bytes_text(size - header)} of data: it is damaged")
    if not read_data:
        return None
    stream.seek(0)  # read_array reads the header again, then the data in chunks into the allocated array
    return np.lib.format.read_array(stream, allow_pickle=False, max_header_size=MAX_HEADER_SIZE)


def _declared_entries(stream: BinaryIO, size: int) -> int:
    """The member count in a zip's end-of-central-directory record (zipfile does not check it; a damaged
    directory would silently lose members)."""
    stream.seek(max(0, size - END_RECORD_SEARCH))
    tail = stream.read()
    stream.seek(0)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 12 > len(tail):
        raise Refused("a damaged .npz archive (no end-of-central-directory record)")
    return int.from_bytes(tail[at + 10:at + 12], "little")


def _describe(start: bytes) -> str:
    """What a file starting with ``start`` is, as far as its first bytes tell."""
    if not start:
        return "it is empty (0 bytes)"
    if start.startswith(NPY_MAGIC):
        return "it is a single .npy array"
    if start.startswith(b"\x80"):
        return "it is a Python pickle, which gpubp never reads"
    if start.startswith(b"\x1f\x8b"):
        return "it is gzip-compressed"
    text = start[:40].decode("utf-8", "ignore")
    if len(text.encode()) >= len(start[:40]) - 3 and all(c.isprintable() or c in "\t\r\n" for c in text):
        line = (text.splitlines() or [""])[0]
        shown = line[:20] + ("…" if len(line) > 20 or len(text) > len(line) else "")
        return f"it starts with {shown!r}, which looks like text (a CSV?)"
    return f"it starts with the bytes {start[:8].hex(' ')}"
