"""Checkpoints of a training run, so that ``fit(..., checkpoint=DIR)`` survives a crash and resumes exactly.

A checkpoint is a model file holding the network's state at the end of an epoch (``gpubp.model_file``:
parameters, optimizer, shuffle generator, metadata, the history of the completed epochs; ``gpubp.load``
reads it as a model) plus the run it belongs to:

    checkpoint.format, checkpoint.version   "gpubp-checkpoint", 2
    checkpoint.epoch                        epochs completed (the state is the one at the end of that epoch)
    checkpoint.finished                     the run ended (its last epoch, or a callback stopped it)
    checkpoint.run                          JSON: data size and the fit arguments that must match to resume
    checkpoint.run_id                       16 hex digits naming the run (absent in older checkpoints)

Version 1 kept the history here, as ``checkpoint.history.<key>`` (float64, one value per completed epoch);
such checkpoints still resume.

``DIR/ckpt-<epoch, 6 digits>.npz`` (``ckpt-<epoch>-<run id>.npz`` when that name is taken by a file that is
not the run's) is written atomically (temp file, fsync, rename, fsync of DIR) and the previous checkpoint is
deleted only after the new one is complete, so a crash at any moment leaves at least one good checkpoint.

A run holds an exclusive lock on DIR (``flock`` on DIR/.ckpt.lock, which records its pid and run id) and
deletes or overwrites only its own files: checkpoints holding its run id, and temp files named with it. A
resume continues the run id of the checkpoint it resumes from; a fresh run draws a new one. Under
distributed training rank 0 locks, reads and writes; the other ranks receive the bytes of the checkpoint
rank 0 chose, so every rank resumes from the same one.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import secrets
import stat
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterable

import numpy as np

from .files import fsync_folder, written_size
from .model_file import history_of, model_state, npz_writer, read_npz, state_arrays, text_field, write_npz
from .model_state import ModelState, OptimizerState
from .optimizers import OPTIMIZERS
from .schedules import SCHEDULES

FORMAT = "gpubp-checkpoint"
VERSION = 2
#: where version 1 kept the history
HISTORY_PREFIX_V1 = "checkpoint.history."
#: DIR/ckpt-000012.npz holds the state at the end of epoch 12; DIR/ckpt-000012-<run id>.npz too, written
#: under that name when the first one is taken by a file that is not the run's
FILE_NAME = re.compile(r"ckpt-(\d{6,})(?:-([0-9a-f]{16}))?\.npz")
RUN_ID = re.compile(r"[0-9a-f]{16}")
#: temp files of a write in progress are named ``.ckpt-<run id>-….tmp``
TEMP_PREFIX = ".ckpt-"
#: the lock file of a run using DIR, and what it holds (run=- until the run id is known)
LOCK_NAME = ".ckpt.lock"
LOCK_CONTENT = re.compile(r"gpubp-checkpoint-lock pid=(\d+) run=([0-9a-f]{16}|-)\n")
#: no gpubp lock file is longer; a longer one is not gpubp's
LOCK_BYTES = 256
#: complete checkpoints of the run kept: the newest and the one before it
KEEP = 2
#: the largest member read when telling a run's checkpoints from other files (checkpoint.run_id, .epoch)
STAMP_BYTES = 4096
#: a shuffle generator state (NumPy's PCG64, what default_rng makes) with every number at its longest: no
#: state's JSON is longer, so a checkpoint holding it is as large as one can be
LONGEST_SHUFFLE_STATE = {"bit_generator": "PCG64", "state": {"state": 2**128 - 1, "inc": 2**128 - 1},
                         "has_uint32": 1, "uinteger": 2**32 - 1}
#: no float's JSON is longer (sign, 17 digits, point, 3-digit exponent): an optimizer setting's longest value
LONGEST_FLOAT = -2.2250738585072014e-308
#: the longest value of each text setting
LONGEST_TEXT = {"lr_schedule": max(SCHEDULES, key=len)}


class CheckpointWarning(UserWarning):
    """A file in the checkpoint directory that cannot be used (damaged, truncated, foreign); it is skipped."""


class CheckpointDirectoryError(OSError, ValueError):
    """The checkpoint directory cannot be used: it cannot be written (found by the probe write before
    training starts), or another run holds it."""


@dataclass
class Checkpoint:
    """One checkpoint as read back: the network's ``state`` at the end of ``epoch``, and its run."""

    name: str
    epoch: int
    finished: bool
    run: dict[str, Any]
    state: ModelState
    run_id: str | None = None

    @property
    def history(self) -> dict[str, list[float]]:
        """The run's history up to ``epoch``."""
        return self.state.history


def checkpoint_path(directory: str | os.PathLike, epoch: int, run_id: str | None = None) -> str:
    """DIR/ckpt-<epoch>.npz, or DIR/ckpt-<epoch>-<run id>.npz."""
    suffix = "" if run_id is None else f"-{run_id}"
    return os.path.join(os.fspath(directory), f"ckpt-{epoch:06d}{suffix}.npz")


def read_checkpoint(source: str | os.PathLike | bytes, name: str | None = None) -> Checkpoint:
    """The checkpoint in the file ``source`` (or its bytes); ValueError saying what is wrong if it is not a
    complete, undamaged gpubp checkpoint (its model state is checked whole: ``gpubp.model_file``)."""
    source = source if isinstance(source, bytes) else os.fspath(source)
    name = name or repr(source)
    fields = read_npz(source, name, kind="gpubp checkpoint")
    state = model_state(fields, name)
    missing = [k for k in ("checkpoint.format", "checkpoint.version", "checkpoint.epoch",
                           "checkpoint.finished", "checkpoint.run") if k not in fields]
    if missing:
        raise ValueError(f"{name} is a gpubp model file but not a checkpoint (missing {missing})")
    if text_field(fields, "checkpoint.format", name) != FORMAT:
        raise ValueError(f"{name} is not a gpubp checkpoint (format {str(fields['checkpoint.format'])!r})")
    version = _integer(fields, "checkpoint.version", name, minimum=1)
    if version > VERSION:
        raise ValueError(f"{name} is a checkpoint of version {version}; this gpubp reads up to {VERSION}: "
                         "upgrade gpubp")
    epoch = _integer(fields, "checkpoint.epoch", name, minimum=1)
    finished = fields["checkpoint.finished"]
    if finished.dtype != np.bool_ or finished.ndim != 0:
        raise ValueError(f"{name} is damaged: checkpoint.finished is not a boolean")
    try:
        run = json.loads(text_field(fields, "checkpoint.run", name))
    except (json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply to parse
        raise ValueError(f"{name} is damaged: checkpoint.run is not JSON ({type(exc).__name__}: {exc})") \
            from exc
    if not isinstance(run, dict) or not isinstance(run.get("epochs"), int):
        raise ValueError(f"{name} is damaged: checkpoint.run does not describe a run")
    run_id = None
    if "checkpoint.run_id" in fields:
        run_id = text_field(fields, "checkpoint.run_id", name)
        if not RUN_ID.fullmatch(run_id):
            raise ValueError(f"{name} is damaged: checkpoint.run_id is not 16 hex digits")
    if version == 1:
        state.history = history_of(fields, HISTORY_PREFIX_V1, name)
    if "loss" not in state.history:
        raise ValueError(f"{name} is damaged: it has no loss history")
    for key, values in state.history.items():
        if len(values) != epoch:
            raise ValueError(f"{name} is damaged: its history of {key!r} does not hold {epoch} values")
    return Checkpoint(name, epoch, bool(finished), run, state, run_id)


def latest_checkpoint(directory: str | os.PathLike) -> Checkpoint | None:
    """The newest good checkpoint in ``directory`` (None if there is none). Every checkpoint file found
    damaged on the way, and files that are not checkpoints, are reported on stderr and as a
    CheckpointWarning."""
    directory = os.fspath(directory)
    if os.path.isdir(directory):
        _report_others(directory)
    found = _newest_good(directory)
    return None if found is None else read_checkpoint(found[1], found[0])


class Checkpointer:
    """The checkpoints of one ``fit`` call: opens DIR before training (lock, probe write, resume), writes
    every ``every`` epochs, at the end, and when training is interrupted; ``close`` releases DIR."""

    def __init__(self, directory: str | os.PathLike, every: int, comm: Any = None) -> None:
        if not isinstance(directory, (str, os.PathLike)) or not os.fspath(directory):
            raise ValueError(f"checkpoint must be a directory path (str or os.PathLike, not empty); got "
                             f"{directory!r}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.every = every
        self.comm = comm
        self.main_rank = comm is None or comm.rank == 0
        #: the epoch of the newest checkpoint in DIR that this run wrote or resumed from
        self.last_written = 0
        #: rank 0, once open: the run id, and this run's checkpoint files (path → epoch), the only files
        #: besides its temp files that it may delete or overwrite
        self.run_id: str | None = None
        self.files: dict[str, int] = {}
        self._lock_fd: int | None = None

    def open(self, net: Any, optimizer: str, run: dict[str, Any],
             history_keys: Iterable[str]) -> Checkpoint | None:
        """Before training: make and lock DIR, find the newest good checkpoint, and probe that the largest
        checkpoint of this run fits. If there is one, it must be of this run (else ValueError naming the
        differences); it is restored into ``net`` and returned. ``close`` must follow, whatever happens."""
        def lock_probe_and_find() -> bytes:
            self._make_directory()
            self._lock()
            found = _newest_good(self.directory)
            self._start_run(found[2] if found is not None and found[2] is not None else secrets.token_hex(8))
            largest = self._arrays(_largest_state(net, optimizer, run, history_keys), run["epochs"], run, True)
            self._probe(written_size(npz_writer(largest)))
            _report_others(self.directory)
            return b"" if found is None else found[0].encode() + b"\0" + found[1]

        shared = _from_rank0(self.comm, lock_probe_and_find)
        if not shared:
            return None
        name, data = shared.split(b"\0", 1)
        checkpoint = read_checkpoint(data, name.decode())
        differences = _differences(checkpoint, net, run)
        if differences:
            raise ValueError(f"{checkpoint.name} belongs to a different training run "
                             f"({'; '.join(differences)}); nothing was changed. Use another checkpoint "
                             f"directory than {self.directory}, or delete it to start afresh")
        if checkpoint.epoch > run["epochs"]:
            raise ValueError(f"{checkpoint.name} has reached epoch {checkpoint.epoch}, past the epochs="
                             f"{run['epochs']} asked for: ask for epochs >= {checkpoint.epoch} to continue "
                             "it, or use another checkpoint directory")
        net.load_state(checkpoint.state)
        self.last_written = checkpoint.epoch
        return checkpoint

    def close(self) -> None:
        """Release DIR: delete the lock file while still holding the lock (so that no other run can lock a
        file that is gone), then unlock. Nothing to do when DIR is not locked."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        path = os.path.join(self.directory, LOCK_NAME)
        try:
            if _same_file(fd, path):
                os.unlink(path)
        except OSError:
            pass  # a lock file left behind blocks no run: the lock itself goes with the descriptor
        finally:
            os.close(fd)

    def complete(self, checkpoint: Checkpoint, epochs: int) -> bool:
        """Whether the run of ``checkpoint`` has nothing left to do for ``epochs`` epochs: it reached them,
        or a callback stopped it before the epochs it was asked for."""
        stopped_early = checkpoint.finished and checkpoint.epoch < checkpoint.run["epochs"]
        return checkpoint.epoch == epochs or stopped_early

    def write(self, state: Callable[[], ModelState], epoch: int, run: dict[str, Any], finished: bool) -> None:
        """Write ``state()``, the network's state at the end of ``epoch`` (its history holds the epochs up to
        there), then delete this run's checkpoints older than the previous one. Only rank 0 writes (and
        takes the state: a copy to the host)."""
        if not self.main_rank:
            return
        arrays = self._arrays(state(), epoch, run, finished)
        path = self._path(epoch)
        # a name that is not yet this run's is never written over, even if a file appeared there since
        write_npz(path, arrays, temp_prefix=f"{TEMP_PREFIX}{self.run_id}-", replace=path in self.files)
        self.files[path] = epoch
        self.last_written = epoch
        older = sorted((e, p) for p, e in self.files.items() if e < epoch)
        for _, stale in older[:max(0, len(older) - (KEEP - 1))]:
            _remove(stale)
            del self.files[stale]

    def _arrays(self, state: ModelState, epoch: int, run: dict[str, Any],
                finished: bool) -> dict[str, np.ndarray]:
        """The arrays of this run's checkpoint of ``state`` at the end of ``epoch``."""
        arrays = state_arrays(state)
        arrays.update({
            "checkpoint.format": np.array(FORMAT), "checkpoint.version": np.array(VERSION),
            "checkpoint.epoch": np.array(epoch, dtype=np.int64), "checkpoint.finished": np.array(finished),
            "checkpoint.run": np.array(json.dumps(run, allow_nan=False)),
            "checkpoint.run_id": np.array(self.run_id),
        })
        return arrays

    def _names(self, epoch: int) -> list[str]:
        """The names this run may give its checkpoint of ``epoch``."""
        return [checkpoint_path(self.directory, epoch), checkpoint_path(self.directory, epoch, self.run_id)]

    def _path(self, epoch: int) -> str:
        """Where this run writes the checkpoint of ``epoch``: over its own file of that epoch, else
        ckpt-<epoch>.npz, else (that name taken by a file that is not this run's) ckpt-<epoch>-<run id>.npz."""
        names = self._names(epoch)
        usable = [p for p in names if p in self.files] + [p for p in names if not os.path.lexists(p)]
        if not usable:
            raise FileExistsError(errno.EEXIST, f"cannot write the checkpoint of epoch {epoch}: {names[0]} and "
                                                f"{names[1]} are files that are not this run's")
        return usable[0]

    def _make_directory(self) -> None:
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as exc:
            raise self._error(exc) from exc

    def _lock(self) -> None:
        """Hold the exclusive lock on DIR with this process's pid in the lock file; if the run that held
        it before died (its lock file is still there), clear that run's temp files."""
        path = os.path.join(self.directory, LOCK_NAME)
        fd = None
        while fd is None:
            fd = self._try_lock(path)
        self._lock_fd = fd
        previous = LOCK_CONTENT.fullmatch(_lock_content(fd))
        if previous is not None and previous.group(2) != "-":
            self._clear_temp_files(previous.group(2))
        self._write_lock("-")

    def _try_lock(self, path: str) -> int | None:
        """The lock file ``path`` opened and locked, or None when its holder deleted it meanwhile (lock the
        new one). CheckpointDirectoryError when another process holds it or it is not gpubp's."""
        import fcntl  # POSIX; imported here so that gpubp imports where there is none

        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
        except OSError as exc:
            raise self._error(exc, f" (its lock file {path})") from exc
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = LOCK_CONTENT.fullmatch(_lock_content(fd))
                    raise CheckpointDirectoryError(
                        errno.EBUSY, f"the checkpoint folder {self.directory} is in use by another gpubp run "
                                     f"(pid {holder.group(1) if holder else 'unknown'}): one run at a time may "
                                     "use it; wait for that one to end, or choose another folder") from None
                if not _same_file(fd, path):
                    os.close(fd)
                    return None
                content = _lock_content(fd)  # read under the lock: no holder is rewriting it
                if not content or LOCK_CONTENT.fullmatch(content):
                    return fd
            raise CheckpointDirectoryError(
                errno.EEXIST, f"{path} is not a gpubp lock file; gpubp leaves it alone and cannot use the "
                              f"checkpoint folder {self.directory} while it is there: move it away")
        except BaseException:
            os.close(fd)
            raise

    def _start_run(self, run_id: str) -> None:
        """Take ``run_id`` as this run's: record it in the lock file, clear the temp files a crash of it
        left, and find its checkpoint files (named as it names them, holding its run id and their epoch)."""
        self.run_id = run_id
        self._write_lock(run_id)
        self._clear_temp_files(run_id)
        self.files = {path: epoch for epoch, _, path in _checkpoint_files(self.directory)
                      if path in self._names(epoch) and _stamp(path) == (run_id, epoch)}

    def _write_lock(self, run_id: str) -> None:
        content = f"gpubp-checkpoint-lock pid={os.getpid()} run={run_id}\n".encode()
        try:
            os.pwrite(self._lock_fd, content, 0)
            os.ftruncate(self._lock_fd, len(content))
        except OSError as exc:
            raise self._error(exc, f" (its lock file {os.path.join(self.directory, LOCK_NAME)})") from exc

    def _clear_temp_files(self, run_id: str) -> None:
        """Delete the temp files of run ``run_id`` (writes that a crash cut short)."""
        prefix = f"{TEMP_PREFIX}{run_id}-"
        for entry in os.listdir(self.directory):
            if entry.startswith(prefix) and entry.endswith(".tmp"):
                _remove(os.path.join(self.directory, entry))

    def _probe(self, size: int) -> None:
        """Write (then delete) a file of ``size`` bytes: CheckpointDirectoryError if DIR cannot take one."""
        try:
            fd, probe = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{self.run_id}-probe-", suffix=".tmp",
                                         dir=self.directory)
        except OSError as exc:
            raise self._error(exc) from exc
        try:
            _reserve(fd, size)
            os.fsync(fd)
        except OSError as exc:
            raise self._error(exc, f" (the largest checkpoint of this run takes {size / 1e6:.3g} MB)") \
                from exc
        finally:
            os.close(fd)
            _remove(probe)
        fsync_folder(self.directory)

    def _error(self, exc: OSError, detail: str = "") -> CheckpointDirectoryError:
        return CheckpointDirectoryError(exc.errno, f"cannot write checkpoints to {self.directory}: "
                                                   f"{exc.strerror or exc}{detail}")


def say(text: str) -> None:
    """A line on stderr, as the rest of training reports (resume, nothing left to do)."""
    print(f"gpubp: {text}", file=sys.stderr, flush=True)


# ---- internals ------------------------------------------------------------------------------------------
def _largest_state(net: Any, optimizer: str, run: dict[str, Any], history_keys: Iterable[str]) -> ModelState:
    """The state in the largest checkpoint this run will write: its last epoch's, with ``optimizer``'s
    state, each of its settings at its longest and the longest shuffle generator state (zeros for the
    parameters: only their size counts, and nothing is copied from the device)."""
    zeros = np.zeros(net.parameters().shape, net.dtype)
    kind = OPTIMIZERS[optimizer]
    settings = {key: _longest(key, value) for key, value in kind.defaults.items()}
    return ModelState(**net.description(), params=zeros,
                      optimizer=OptimizerState(optimizer, settings, dict.fromkeys(kind.buffers, zeros), 0),
                      shuffle=LONGEST_SHUFFLE_STATE, metadata=net.metadata,
                      history={key: [0.0] * run["epochs"] for key in history_keys})


def _longest(key: str, setting: Any) -> Any:
    """A value of setting ``key``'s type whose JSON is as long as that setting's can be (for text, the
    longest value it takes)."""
    if isinstance(setting, bool):
        return False
    return LONGEST_FLOAT if isinstance(setting, (int, float)) else LONGEST_TEXT.get(key, setting)


def _checkpoint_files(directory: str) -> list[tuple[int, bool, str]]:
    """(epoch, whether the name carries a run id, path) of every file named like a checkpoint in
    ``directory``, newest first (of one epoch, the name with a run id: it was written after the other)."""
    files = []
    for entry in os.listdir(directory):
        match = FILE_NAME.fullmatch(entry)
        if match:
            files.append((int(match.group(1)), match.group(2) is not None, os.path.join(directory, entry)))
    return sorted(files, reverse=True)


def _newest_good(directory: str) -> tuple[str, bytes, str | None] | None:
    """(path, bytes, run id) of the newest checkpoint in ``directory`` that reads back whole; each one
    skipped on the way is reported as a CheckpointWarning, whatever is wrong with it."""
    if not os.path.isdir(directory):
        return None
    for _, _, path in _checkpoint_files(directory):
        try:
            with _open_regular(path) as f:
                data = f.read()
            run_id = read_checkpoint(data, "it").run_id  # messages read "skipping checkpoint PATH: it is …"
        except (ValueError, OSError) as exc:
            _report(f"skipping checkpoint {path}: {exc}")
            continue
        except Exception as exc:  # a damaged file must not stop the run: the older checkpoint is used
            _report(f"skipping checkpoint {path}: it cannot be read ({type(exc).__name__}: {exc})")
            continue
        return path, data, run_id
    return None


def _report_others(directory: str) -> None:
    """Name, once, the files in ``directory`` that are neither checkpoints nor the lock file: they are left
    alone (other runs' temp files among them)."""
    others = sorted(e for e in os.listdir(directory) if not FILE_NAME.fullmatch(e) and e != LOCK_NAME)
    if others:
        _report(f"{directory} holds {len(others)} file(s) that are not gpubp checkpoints: "
                f"{', '.join(others[:5])}{', …' if len(others) > 5 else ''}; they are left alone")


def _stamp(path: str) -> tuple[str, int] | None:
    """(run id, epoch) that the checkpoint file ``path`` holds, read from those two small members alone;
    None for anything else (a file without a run id, damaged, not a zip, not a regular file)."""
    try:
        with _open_regular(path, follow=False) as f, zipfile.ZipFile(f) as archive:
            run_id = _small_member(archive, "checkpoint.run_id")
            epoch = _small_member(archive, "checkpoint.epoch")
        if run_id.dtype.kind == "U" and run_id.ndim == 0 and epoch.dtype.kind in "iu" and epoch.ndim == 0:
            return str(run_id), int(epoch)
    except Exception:  # whatever a damaged or foreign file makes zipfile or numpy raise: not this run's
        pass
    return None


def _small_member(archive: zipfile.ZipFile, key: str) -> np.ndarray:
    info = archive.getinfo(f"{key}.npy")
    if info.file_size > STAMP_BYTES:
        raise ValueError(f"member {key} is too large")
    return np.lib.format.read_array(io.BytesIO(archive.read(info)), allow_pickle=False)


def _open_regular(path: str, follow: bool = True) -> BinaryIO:
    """``path`` opened for reading if it is a regular file (through a symbolic link only if ``follow``);
    ValueError for a folder, FIFO or device, whose reading could fail, block or never end."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError("it is not a regular file")
    return os.fdopen(fd, "rb")


def _lock_content(fd: int) -> str:
    """The text of the lock file open as ``fd`` (its first LOCK_BYTES + 1 bytes: enough to tell)."""
    return os.pread(fd, LOCK_BYTES + 1, 0).decode("ascii", "replace")


def _same_file(fd: int, path: str) -> bool:
    """Whether ``path`` is (still) the file open as ``fd``."""
    try:
        here, there = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _report(message: str) -> None:
    """A file that cannot be used: a line on stderr and a CheckpointWarning (for code that filters them)."""
    say(message)
    warnings.warn(message, CheckpointWarning, stacklevel=4)


def _differences(checkpoint: Checkpoint, net: Any, run: dict[str, Any]) -> list[str]:
    """What differs between the checkpoint's run and this one ("lr 0.1 there, 0.05 here"); the number of
    epochs may differ (a larger one extends the run)."""
    stored, here = checkpoint.state.description(), net.description()
    pairs = [(k, stored[k], here[k]) for k in here]
    pairs += [(k, checkpoint.run.get(k), v) for k, v in run.items() if k != "epochs"]
    return [f"{key} {there!r} there, {mine!r} here" for key, there, mine in pairs if there != mine]


def _from_rank0(comm: Any, produce: Callable[[], bytes]) -> bytes:
    """What ``produce()`` returns on rank 0, on every rank; if it raises there, every rank raises."""
    if comm is None or comm.size == 1:
        return produce()
    payload, failure, error = b"", 0, None
    if comm.rank == 0:
        try:
            payload = produce()
        except (ValueError, OSError) as exc:
            error = exc
            failure = 2 if isinstance(exc, CheckpointDirectoryError) else 1
            payload = str(exc).encode()
    header = np.array([len(payload), failure], dtype=np.int64)
    comm.broadcast(header, root=0)
    data = np.frombuffer(payload, dtype=np.uint8).copy() if comm.rank == 0 else \
        np.empty(int(header[0]), dtype=np.uint8)
    if len(data):
        comm.broadcast(data, root=0)
    if error is not None:
        raise error
    if header[1]:
        message = f"rank 0: {data.tobytes().decode()}"
        raise CheckpointDirectoryError(errno.EIO, message) if header[1] == 2 else ValueError(message)
    return data.tobytes()


def _reserve(fd: int, size: int) -> None:
    """Allocate ``size`` bytes to the file (ENOSPC / EDQUOT when the disk cannot take them)."""
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
    chunk = b"\0" * (1 << 20)
    for start in range(0, size, len(chunk)):
        os.write(fd, chunk[:size - start])


def _remove(path: str) -> None:
    """Delete ``path`` if it is a regular file (an OSError names it)."""
    try:
        if stat.S_ISREG(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def _integer(fields: dict[str, np.ndarray], key: str, name: str, minimum: int) -> int:
    value = fields[key]
    if value.dtype.kind not in "iu" or value.ndim != 0 or int(value) < minimum:
        raise ValueError(f"{name} is damaged: {key} is not an integer >= {minimum}")
    return int(value)
