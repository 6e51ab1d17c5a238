"""Writing a file so that a failure leaves nothing behind: a temp file in the same folder, renamed over the
target only once it is complete."""

from __future__ import annotations

import os
import tempfile


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file renamed into place (FileNotFoundError naming the
    folder when it does not exist)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {os.fspath(path)!r}: folder {folder!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".gpubp-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
