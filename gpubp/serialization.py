"""Saving and loading networks as .npz files: named arrays only, no pickle, written atomically.

Format version 2 adds, to version 1's model description and parameters: the optimizer state of the last
``fit`` (``optimizer`` name, ``optimizer.t`` and one ``optimizer.<buffer>`` array per state buffer), the
shuffle generator's state and the network's ``metadata``, both as JSON text. Version 1 files still load,
with no optimizer state.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Any

import numpy as np

from .costs import COSTS, Cost
from .files import write_atomically
from .optimizers import optimizer_name

FORMAT = "gpubp-network"
FORMAT_VERSION = 2
#: how far from the end of a zip its end record may start (22 bytes plus a comment of up to 64 KiB)
END_RECORD_SEARCH = 22 + 65535
#: the end record's member count of a zip64 archive, whose real count zipfile reads from the zip64 record
ZIP64_ENTRIES = 0xFFFF
REQUIRED = ("format", "format_version", "sizes", "activation", "output", "cost", "dtype", "params")


def save(net: Any, path: str | os.PathLike) -> None:
    """Write ``net`` to ``path`` exactly (no suffix is added), atomically (see ``write_npz``)."""
    write_npz(path, model_fields(net))


def model_fields(net: Any, params: Any = None, optimizer_state: dict[str, Any] | None = None,
                 shuffle_state: dict | None = None) -> dict[str, np.ndarray]:
    """The arrays of a model file: ``net``'s description, its parameters, optimizer state, shuffle
    generator state and metadata. ``params``, ``optimizer_state`` (``{"t": steps, buffer: array}``, arrays
    on the net's device) and ``shuffle_state`` replace the net's own (a checkpoint of an earlier moment)."""
    to_host = net.ops.to_numpy
    if shuffle_state is None and net._shuffle_rng is not None:
        shuffle_state = net._shuffle_rng.bit_generator.state
    arrays = {
        "format": np.array(FORMAT), "format_version": np.array(FORMAT_VERSION),
        "sizes": np.array(net.sizes, dtype=np.int64), "activation": np.array(net.activation.name),
        "output": np.array(net.output.name), "cost": np.array(net.cost.name),
        "builtin_cost": np.array(net.cost.name in COSTS and type(net.cost) is type(COSTS[net.cost.name])),
        "dtype": np.array(net.dtype.name),
        "params": to_host(net.parameters() if params is None else params),
        "metadata": np.array(json.dumps(net.metadata, allow_nan=False)),
        "shuffle_rng": np.array("" if shuffle_state is None else json.dumps(shuffle_state)),
    }
    optimizer = net.optimizer
    if optimizer is not None:
        state = optimizer.state_dict() if optimizer_state is None else optimizer_state
        arrays["optimizer"] = np.array(optimizer.name)
        arrays.update({f"optimizer.{k}": np.asarray(to_host(v)) for k, v in state.items()})
    return arrays


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], temp_prefix: str = ".gpubp-") -> None:
    """``np.savez`` to ``path`` through ``gpubp.files.write_atomically``: the old ``path`` stays intact until
    the new file is complete and fsynced; a special file such as ``/dev/null`` is written into."""
    write_atomically(path, npz_writer(arrays), temp_prefix=temp_prefix)


def npz_writer(arrays: dict[str, np.ndarray]):
    """The function writing ``arrays`` as an uncompressed .npz to a binary file object."""
    return lambda f: np.savez(f, **arrays)


def load(path: str | os.PathLike, device: str | None = None, cost: Cost | Any = None) -> Any:
    """The network saved at ``path``, on ``device`` (None: env GPUBP_DEVICE, else "auto").

    A network saved with a user-defined cost needs that cost object again: ``load(path, cost=my_cost)``.
    A file that is not a complete gpubp model raises ValueError.
    """
    from .network import Network

    path = os.fspath(path)
    if not os.path.exists(path) and os.path.exists(path + ".npz"):
        path += ".npz"  # as numpy.load would find what numpy.savez("name") wrote
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file: {path!r}")
    fields = check_model_fields(read_npz(path, repr(path)), repr(path))
    description = model_description(fields, repr(path))
    if cost is None:
        if not bool(fields.get("builtin_cost", True)):
            raise ValueError(f"{path!r} was saved with a user-defined cost {description['cost']!r}; "
                             "pass it again: gpubp.load(path, cost=...)")
        cost = description["cost"]
    try:
        net = Network(description["sizes"], activation=description["activation"],
                      output=description["output"], cost=cost, device=device, dtype=description["dtype"])
    except ValueError as exc:
        raise ValueError(f"{path!r} holds an invalid model description: {exc}") from exc
    restore_fields(net, fields, repr(path))
    return net


def model_description(fields: dict[str, np.ndarray], name: str) -> dict[str, Any]:
    """sizes, activation, output, cost and dtype as stored (ValueError if a field has the wrong type)."""
    description = {key: text_field(fields, key, name) for key in ("activation", "output", "cost", "dtype")}
    sizes = fields["sizes"]
    if sizes.dtype.kind not in "iu" or sizes.ndim != 1:
        raise ValueError(f"{name} is damaged: field 'sizes' is not a vector of integers")
    return {"sizes": [int(s) for s in sizes], **description}


def text_field(fields: dict[str, np.ndarray], key: str, name: str) -> str:
    """The text stored in field ``key`` (ValueError if it is not one text value)."""
    value = fields[key]
    if value.dtype.kind != "U" or value.ndim != 0:
        raise ValueError(f"{name} is damaged: field {key!r} is not a text value")
    return str(value)


def restore_fields(net: Any, fields: dict[str, np.ndarray], name: str) -> None:
    """Parameters and training state from a model file's fields into ``net`` (of the same description);
    ValueError naming ``name`` if they do not fit."""
    params = fields["params"]
    if params.shape != net.parameters().shape:
        raise ValueError(f"{name} is damaged: {params.size} parameters stored, sizes {net.sizes} need "
                         f"{net.parameters().size}")
    if not np.isfinite(params).all():
        raise ValueError(f"{name} holds NaN or infinite parameters")
    net._load_parameters(params)
    _restore_training_state(net, fields, name)


def _restore_training_state(net: Any, fields: dict[str, np.ndarray], name: str) -> None:
    """Format 2's metadata, shuffle generator and optimizer state into ``net`` (ValueError if damaged)."""
    try:
        metadata = json.loads(str(fields.get("metadata", "{}")))
        if not isinstance(metadata, dict):
            raise ValueError("metadata is not a JSON object")
        rng_state = str(fields.get("shuffle_rng", ""))
        if rng_state:
            rng = np.random.default_rng()
            rng.bit_generator.state = json.loads(rng_state)
            net._shuffle_rng = rng
        net.metadata = metadata
        if "optimizer" in fields:
            optimizer = net._optimizer_for(optimizer_name(str(fields["optimizer"])), lr=1e-3, momentum=0.9,
                                           weight_decay=0.0)
            prefix = "optimizer."
            optimizer.load_state_dict({k[len(prefix):]: v for k, v in fields.items() if k.startswith(prefix)})
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise ValueError(f"{name} holds a damaged training state: {exc}") from exc


def read_npz(source: str | bytes, name: str, kind: str = "gpubp model file") -> dict[str, np.ndarray]:
    """Every array of the .npz file at ``source`` (a path, or the file's bytes); ``name`` is how messages
    call it and ``kind`` what it should be. Strict: each member's CRC-32 is checked, pickled data is
    refused, and whatever the zip or .npy parser raises on damaged bytes becomes a ValueError saying what
    is wrong."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # OSError as is
    fields: dict[str, np.ndarray] = {}
    with stream:
        try:
            if stream.read(1) == b"\x80":
                raise ValueError("it is a Python pickle, which gpubp never reads")
            stream.seek(0)
            with zipfile.ZipFile(stream) as archive:
                declared = _declared_entries(stream)
                if declared != ZIP64_ENTRIES and len(archive.infolist()) != declared:
                    raise ValueError(f"its central directory lists {len(archive.infolist())} members where "
                                     f"the end record declares {declared}")
                for member in archive.infolist():
                    key = member.filename.removesuffix(".npy")
                    if key == member.filename or key in fields:
                        raise ValueError(f"member {member.filename!r} is not a distinct .npy array")
                    data = io.BytesIO(archive.read(member))  # checks the CRC-32 of the whole member
                    fields[key] = np.lib.format.read_array(data, allow_pickle=False)
                    if data.read(1):
                        raise ValueError(f"member {member.filename!r} has bytes after its array")
        except Exception as exc:  # damaged bytes make zipfile and numpy raise many types: all "unreadable"
            raise ValueError(f"{name} is not a readable {kind} ({type(exc).__name__}: {exc})") from exc
    return fields


def _declared_entries(stream: Any) -> int:
    """The member count in a zip's end-of-central-directory record (zipfile does not check it; a damaged
    directory would silently lose members)."""
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(max(0, size - END_RECORD_SEARCH))
    tail = stream.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 12 > len(tail):
        raise ValueError("no end-of-central-directory record")
    return int.from_bytes(tail[at + 10:at + 12], "little")


def check_model_fields(fields: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    """``fields`` if they are a gpubp model of a version this gpubp reads; ValueError otherwise."""
    missing = [k for k in REQUIRED if k not in fields]
    if missing:
        raise ValueError(f"{name} is not a gpubp model file (missing fields {missing})")
    if fields["format"].dtype.kind != "U" or str(fields["format"]) != FORMAT:
        raise ValueError(f"{name} is not a gpubp model file (format {str(fields['format'])!r})")
    version = fields["format_version"]
    if version.dtype.kind not in "iu" or version.ndim != 0:
        raise ValueError(f"{name} is damaged: format_version is not an integer")
    if int(version) > FORMAT_VERSION:
        raise ValueError(f"{name} uses format version {int(version)}; this gpubp reads up to "
                         f"{FORMAT_VERSION}: upgrade gpubp")
    if fields["params"].dtype.kind != "f" or fields["params"].ndim != 1:
        raise ValueError(f"{name} is damaged: parameters are not a float vector")
    return fields
