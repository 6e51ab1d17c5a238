"""Writing the user's files without ever losing one.

- A regular file (or a new path) is written to a temp file in the same folder, fsynced and renamed over the
  target only once complete: a failure at any moment leaves the old file as it was. The new file gets the
  mode of the file it replaces, or ``0666 & ~umask`` when there was none, as every Unix tool creates files.
- A symbolic link is written through: its target is replaced, the link stays.
- A special file (``/dev/null``, ``/dev/stdout``, a FIFO, a terminal) is written into directly, never
  replaced by a regular file.
- An ``OSError`` on the way names the file (``[Errno 27] File too large: 'model.npz'``).

``refuse_same_files`` is the check every command runs before any work: no output may be one of its inputs
or another of its outputs.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import tempfile
from typing import BinaryIO, Callable, Iterable, Union

PathLike = Union[str, "os.PathLike[str]"]
#: what to write: the bytes themselves, or a function writing them to a binary file object
Content = Union[bytes, Callable[[BinaryIO], None]]


def write_atomically(path: PathLike, content: Content, temp_prefix: str = ".gpubp-", replace: bool = True) -> None:
    """Write ``content`` to ``path`` (see the module docstring); FileNotFoundError naming the folder when it
    does not exist, IsADirectoryError when ``path`` is a folder. With ``replace=False`` a file at ``path``,
    even one created while this one was being written, is never replaced: FileExistsError instead."""
    name = os.fspath(path)
    if not name:
        raise ValueError("cannot write to an empty path; give a file name")
    try:
        existing = os.stat(name)  # through links, /proc/self/fd/N's included
    except FileNotFoundError:
        existing = None
    except OSError as exc:
        raise _naming(exc, name) from exc
    if not replace and os.path.lexists(name):
        raise FileExistsError(errno.EEXIST, "File exists; not replaced", name)
    if existing is not None and stat.S_ISDIR(existing.st_mode):
        raise IsADirectoryError(f"cannot write {name!r}: it is a folder; give a file name")
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        _write_special(name, content)
        return
    target = os.path.realpath(name)  # a symbolic link stays; the file it points to is replaced
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {name!r}: folder {os.path.dirname(os.path.abspath(name))!r} "
                                "does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix, suffix=".tmp", dir=folder)
    except OSError as exc:
        raise _naming(exc, name) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            _keep_mode_and_owner(f.fileno(), existing)
            _write(f, content)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, target)
        else:
            _move_without_replacing(tmp, target)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise _naming(exc, name) from exc
        raise
    fsync_folder(folder)


def written_size(content: Content) -> int:
    """How many bytes ``content`` writes (counted, not kept): what a file of it needs on disk."""
    if isinstance(content, bytes):
        return len(content)
    counter = _Counter()
    content(counter)  # type: ignore[arg-type]
    return counter.size


def fsync_folder(folder: str) -> None:
    """Make the folder's entries (a rename, a new or deleted file) durable (a no-op where folders cannot be
    opened, e.g. on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename is then as durable as they allow
    finally:
        os.close(fd)


def creation_mode() -> int:
    """``0666 & ~umask``: the mode a new file gets from ``open()`` or a shell redirection."""
    return 0o666 & ~_umask()


def refuse_same_files(outputs: Iterable[tuple[str, PathLike | None]],
                      inputs: Iterable[tuple[str, PathLike | None]] = ()) -> None:
    """ValueError, before any work, when an output is the same file as an input or as another output.

    ``outputs`` and ``inputs`` are (how the command calls it, path) pairs such as ("--out", "p.csv"); a
    path of None was not given. Paths are compared resolved (symbolic links, ``..``) and, where both exist,
    with ``os.path.samefile`` (hard links). A special file such as ``/dev/null`` may be named twice: nothing
    in it can be lost.
    """
    given_inputs = [(what, os.fspath(p)) for what, p in inputs if p is not None]
    given_outputs = [(what, os.fspath(p)) for what, p in outputs if p is not None]
    for i, (what, path) in enumerate(given_outputs):
        if _is_special(path):
            continue
        for kind, others in (("an input", given_inputs), ("another output", given_outputs[:i])):
            for other, other_path in others:
                if _same_file(path, other_path):
                    raise ValueError(f"{what} {path} is the same file as {other} {other_path}; writing it "
                                     f"would destroy {kind}: choose another name")


# ---- internals ------------------------------------------------------------------------------------------
def _write(f: BinaryIO, content: Content) -> None:
    if isinstance(content, bytes):
        f.write(content)
    else:
        content(f)


def _write_special(name: str, content: Content) -> None:
    """Write into a device or FIFO as it is (rendered in memory first: a pipe cannot seek)."""
    data = content if isinstance(content, bytes) else _rendered(content)
    try:
        with open(name, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise _naming(exc, name) from exc


def _move_without_replacing(tmp: str, target: str) -> None:
    """Rename ``tmp`` to ``target`` unless ``target`` exists (checked and done in one step by a hard link,
    where the file system has them)."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise
    except OSError:  # no hard links here: the check and the rename are two steps
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "File exists", target) from None
        os.replace(tmp, target)
        return
    os.unlink(tmp)


def _rendered(content: Callable[[BinaryIO], None]) -> bytes:
    buffer = io.BytesIO()
    content(buffer)
    return buffer.getvalue()


def _keep_mode_and_owner(fd: int, existing: os.stat_result | None) -> None:
    """The temp file takes the mode (and, where allowed, the owner) of the file it will replace, or the
    mode of a newly created file."""
    if existing is None:
        os.fchmod(fd, creation_mode())
        return
    os.fchmod(fd, stat.S_IMODE(existing.st_mode))
    if hasattr(os, "fchown") and (existing.st_uid, existing.st_gid) != (os.getuid(), os.getgid()):
        try:
            os.fchown(fd, existing.st_uid, existing.st_gid)
        except PermissionError:
            pass  # only root may give a file away; the replacement is then the writer's own


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (/proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _is_special(path: str) -> bool:
    """Whether ``path`` exists and is neither a regular file nor a folder (a device, FIFO or socket)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def _naming(exc: OSError, name: str) -> OSError:
    """``exc`` as an error of the same kind that names the user's file (not a temp file of the write)."""
    if exc.errno is None or exc.filename == name:
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), name)  # OSError picks the subclass by errno


class _Counter(io.RawIOBase):
    """A write-only sink that counts bytes (zipfile writes to it as to a pipe: no seeking back)."""

    def __init__(self) -> None:
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        n = memoryview(data).nbytes
        self.size += n
        return n
