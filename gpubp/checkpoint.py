"""Checkpoints of a training run, so that ``fit(..., checkpoint=DIR)`` survives a crash and resumes exactly.

A checkpoint is a model file (``gpubp.serialization``: parameters, optimizer state, shuffle generator,
metadata; ``gpubp.load`` reads it as a model) plus the run it belongs to:

    checkpoint.format, checkpoint.version   "gpubp-checkpoint", 1
    checkpoint.epoch                        epochs completed (the state is the one at the end of that epoch)
    checkpoint.finished                     the run ended (its last epoch, or a callback stopped it)
    checkpoint.run                          JSON: data size and the fit arguments that must match to resume
    checkpoint.history.<key>                float64, one value per completed epoch

``DIR/ckpt-<epoch, 6 digits>.npz`` is written atomically (temp file, fsync, rename, fsync of DIR) and the
previous checkpoint is deleted only after the new one is complete, so a crash at any moment leaves at
least one good checkpoint. Under distributed training rank 0 reads and writes; the other ranks receive
the bytes of the checkpoint rank 0 chose, so every rank resumes from the same one.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .files import fsync_folder
from .optimizers import OPTIMIZERS
from .serialization import (check_model_fields, model_description, model_fields, read_npz,
                            restore_fields, text_field, write_npz)

FORMAT = "gpubp-checkpoint"
VERSION = 1
#: DIR/ckpt-000012.npz holds the state at the end of epoch 12
FILE_NAME = re.compile(r"ckpt-(\d{6,})\.npz")
#: temp files of a write in progress (left behind by a crash; removed when a run opens DIR)
TEMP_PREFIX = ".ckpt-"
#: complete checkpoints kept: the newest and the one before it
KEEP = 2
#: bytes beyond the arrays that a checkpoint needs (zip and .npy headers, JSON, history)
OVERHEAD_BYTES = 1 << 16


class CheckpointWarning(UserWarning):
    """A file in the checkpoint directory that cannot be used (damaged, truncated, foreign); it is skipped."""


class CheckpointDirectoryError(OSError, ValueError):
    """The checkpoint directory cannot be written (found by the probe write before training starts)."""


@dataclass
class Checkpoint:
    """One checkpoint as read back: ``fields`` is its model file, the rest its run."""

    name: str
    epoch: int
    finished: bool
    run: dict[str, Any]
    history: dict[str, list[float]]
    fields: dict[str, np.ndarray]


def checkpoint_path(directory: str | os.PathLike, epoch: int) -> str:
    return os.path.join(os.fspath(directory), f"ckpt-{epoch:06d}.npz")


def read_checkpoint(source: str | os.PathLike | bytes, name: str | None = None) -> Checkpoint:
    """The checkpoint in the file ``source`` (or its bytes); ValueError saying what is wrong if it is not a
    complete, undamaged gpubp checkpoint (parameters and optimizer state are checked as a restore would)."""
    source = source if isinstance(source, bytes) else os.fspath(source)
    name = name or repr(source)
    fields = check_model_fields(read_npz(source, name, kind="gpubp checkpoint"), name)
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
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} is damaged: checkpoint.run is not JSON ({exc})") from exc
    if not isinstance(run, dict) or not isinstance(run.get("epochs"), int):
        raise ValueError(f"{name} is damaged: checkpoint.run does not describe a run")
    history = {}
    prefix = "checkpoint.history."
    for key in (k for k in fields if k.startswith(prefix)):
        values = fields[key]
        if values.dtype != np.float64 or values.shape != (epoch,):
            raise ValueError(f"{name} is damaged: {key} does not hold {epoch} float64 values")
        history[key[len(prefix):]] = [float(v) for v in values]
    if "loss" not in history:
        raise ValueError(f"{name} is damaged: it has no loss history")
    _check_restorable(fields, name)
    return Checkpoint(name, epoch, bool(finished), run, history, fields)


def latest_checkpoint(directory: str | os.PathLike) -> Checkpoint | None:
    """The newest good checkpoint in ``directory`` (None if there is none). Every checkpoint file found
    damaged on the way, and files that are not checkpoints, are reported on stderr and as a
    CheckpointWarning."""
    found = _newest_good(os.fspath(directory))
    return None if found is None else read_checkpoint(found[1], found[0])


class Checkpointer:
    """The checkpoints of one ``fit`` call: opens DIR before training (probe write, resume), writes every
    ``every`` epochs, at the end, and when training is interrupted."""

    def __init__(self, directory: str | os.PathLike, every: int, comm: Any = None) -> None:
        if not isinstance(directory, (str, os.PathLike)):
            raise ValueError(f"checkpoint must be a directory path (str or os.PathLike); got {directory!r}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.every = every
        self.comm = comm
        self.main_rank = comm is None or comm.rank == 0
        #: the epoch of the newest checkpoint in DIR that this run wrote or resumed from
        self.last_written = 0

    def open(self, net: Any, optimizer: str, run: dict[str, Any]) -> Checkpoint | None:
        """Before training: make DIR, probe that a checkpoint fits, and find the newest good checkpoint.
        If there is one, it must be of this run (else ValueError naming the differences); it is restored
        into ``net`` and returned."""
        size = net.parameters().nbytes * (1 + len(OPTIMIZERS[optimizer].buffers)) + OVERHEAD_BYTES

        def probe_and_find() -> bytes:
            self._probe(size)
            found = _newest_good(self.directory)
            return b"" if found is None else found[0].encode() + b"\0" + found[1]

        shared = _from_rank0(self.comm, probe_and_find)
        if not shared:
            return None
        name, data = shared.split(b"\0", 1)
        checkpoint = read_checkpoint(data, name.decode())
        differences = _differences(checkpoint, net, run)
        if differences:
            raise ValueError(f"{checkpoint.name} belongs to a different training run "
                             f"({'; '.join(differences)}); nothing was changed. Use another checkpoint directory than {self.directory}, "
                             "or delete it to start afresh")
        if checkpoint.epoch > run["epochs"]:
            raise ValueError(f"{checkpoint.name} has reached epoch {checkpoint.epoch}, past the epochs="
                             f"{run['epochs']} asked for: ask for epochs >= {checkpoint.epoch} to continue "
                             "it, or use another checkpoint directory")
        restore_fields(net, checkpoint.fields, checkpoint.name)
        self.last_written = checkpoint.epoch
        return checkpoint

    def complete(self, checkpoint: Checkpoint, epochs: int) -> bool:
        """Whether the run of ``checkpoint`` has nothing left to do for ``epochs`` epochs: it reached them,
        or a callback stopped it before the epochs it was asked for."""
        stopped_early = checkpoint.finished and checkpoint.epoch < checkpoint.run["epochs"]
        return checkpoint.epoch == epochs or stopped_early

    def write(self, net: Any, epoch: int, history: dict[str, list], run: dict[str, Any], finished: bool,
              params: Any = None, optimizer_state: dict[str, Any] | None = None,
              shuffle_state: dict | None = None) -> None:
        """Write the state at the end of ``epoch`` (the net's own, or the given arrays of that moment), then
        delete checkpoints older than the previous one. Only rank 0 writes."""
        if not self.main_rank:
            return
        arrays = model_fields(net, params, optimizer_state, shuffle_state)
        arrays.update({
            "checkpoint.format": np.array(FORMAT), "checkpoint.version": np.array(VERSION),
            "checkpoint.epoch": np.array(epoch, dtype=np.int64), "checkpoint.finished": np.array(finished),
            "checkpoint.run": np.array(json.dumps(run, allow_nan=False)),
        })
        arrays.update({f"checkpoint.history.{k}": np.array(v[:epoch], dtype=np.float64)
                       for k, v in history.items()})
        write_npz(checkpoint_path(self.directory, epoch), arrays, temp_prefix=TEMP_PREFIX)
        self.last_written = epoch
        older = sorted(e for e, _ in _checkpoint_files(self.directory) if e < epoch)
        for stale in older[:max(0, len(older) - (KEEP - 1))]:
            _remove(checkpoint_path(self.directory, stale))

    def _probe(self, size: int) -> None:
        """Make DIR, clear the temp files of crashed writes, and write (then delete) a file as large as a
        checkpoint: CheckpointDirectoryError if DIR cannot take one."""
        what = f"cannot write checkpoints to {self.directory}"
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as exc:
            raise CheckpointDirectoryError(exc.errno, f"{what}: {exc.strerror or exc}") from exc
        for entry in os.listdir(self.directory):
            if entry.startswith(TEMP_PREFIX):
                _remove(os.path.join(self.directory, entry))
        try:
            fd, probe = tempfile.mkstemp(prefix=TEMP_PREFIX + "probe-", suffix=".tmp", dir=self.directory)
        except OSError as exc:
            raise CheckpointDirectoryError(exc.errno, f"{what}: {exc.strerror or exc}") from exc
        try:
            _reserve(fd, size)
            os.fsync(fd)
        except OSError as exc:
            raise CheckpointDirectoryError(exc.errno, f"{what}: {exc.strerror or exc} (a checkpoint needs "
                                                      f"about {size / 1e6:.3g} MB)") from exc
        finally:
            os.close(fd)
            _remove(probe)
        fsync_folder(self.directory)


def say(text: str) -> None:
    """A line on stderr, as the rest of training reports (resume, nothing left to do)."""
    print(f"gpubp: {text}", file=sys.stderr, flush=True)


# ---- internals ------------------------------------------------------------------------------------------
def _checkpoint_files(directory: str) -> list[tuple[int, str]]:
    """(epoch, path) of every file named like a checkpoint in ``directory``."""
    files = []
    for entry in os.listdir(directory):
        match = FILE_NAME.fullmatch(entry)
        if match:
            files.append((int(match.group(1)), os.path.join(directory, entry)))
    return files


def _newest_good(directory: str) -> tuple[str, bytes] | None:
    """(name, bytes) of the newest checkpoint in ``directory`` that reads back whole; what is skipped on the
    way, and what is not a checkpoint at all, is reported as a CheckpointWarning."""
    if not os.path.isdir(directory):
        return None
    others = sorted(e for e in os.listdir(directory)
                    if not FILE_NAME.fullmatch(e) and not e.startswith(TEMP_PREFIX))
    if others:
        _report(f"{directory} holds {len(others)} file(s) that are not gpubp checkpoints: "
                f"{', '.join(others[:5])}{', …' if len(others) > 5 else ''}; they are left alone")
    for epoch, path in sorted(_checkpoint_files(directory), reverse=True):
        try:
            with open(path, "rb") as f:
                data = f.read()
            read_checkpoint(data, "it")  # the messages read "skipping checkpoint PATH: it is damaged: …"
        except (ValueError, OSError) as exc:
            _report(f"skipping checkpoint {path}: {exc}")
            continue
        return path, data
    return None


def _report(message: str) -> None:
    """A file that cannot be used: a line on stderr and a CheckpointWarning (for code that filters them)."""
    say(message)
    warnings.warn(message, CheckpointWarning, stacklevel=4)


def _check_restorable(fields: dict[str, np.ndarray], name: str) -> None:
    """Restore the fields into a scratch CPU network: ValueError if the model or its state does not fit."""
    from .network import Network

    description = model_description(fields, name)
    try:
        scratch = Network(description["sizes"], activation=description["activation"],
                          output=description["output"], cost="quadratic", device="cpu",
                          dtype=description["dtype"])
    except ValueError as exc:
        raise ValueError(f"{name} holds an invalid model description: {exc}") from exc
    restore_fields(scratch, fields, name)


def _differences(checkpoint: Checkpoint, net: Any, run: dict[str, Any]) -> list[str]:
    """What differs between the checkpoint's run and this one ("lr 0.1 there, 0.05 here"); the number of
    epochs may differ (a larger one extends the run)."""
    stored = model_description(checkpoint.fields, checkpoint.name)
    here = {"sizes": net.sizes, "activation": net.activation.name, "output": net.output.name,
            "cost": net.cost.name, "dtype": net.dtype.name}
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
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _integer(fields: dict[str, np.ndarray], key: str, name: str, minimum: int) -> int:
    value = fields[key]
    if value.dtype.kind not in "iu" or value.ndim != 0 or int(value) < minimum:
        raise ValueError(f"{name} is damaged: {key} is not an integer >= {minimum}")
    return int(value)
