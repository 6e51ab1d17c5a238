"""Saving and loading networks as .npz files: named arrays only, no pickle, written atomically.

Format version 2 adds, to version 1's model description and parameters: the optimizer state of the last
``fit`` (``optimizer`` name, ``optimizer.t``, one ``optimizer.<buffer>`` array per state buffer, and its
settings, the schedule's running state included, as JSON text ``optimizer_settings``), and as JSON text the
shuffle generator's state and the network's ``metadata``. Version 1 files still load, with no optimizer
state.

Reading checks a file whole before a network is built: its zip and .npy structure (``gpubp.npzfile``,
every read bounded by what the file declares), the parameter count against the layer sizes, the optimizer
state's shapes, the metadata's known keys (``gpubp.metadata``) and the shuffle state. A damaged or hostile
file raises ValueError naming it and what is wrong, after reading little.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from . import npzfile
from .costs import COSTS, Cost
from .files import write_atomically
from .initializers import parameter_count
from .metadata import check_metadata
from .optimizers import OPTIMIZERS, optimizer_name

FORMAT = "gpubp-network"
FORMAT_VERSION = 2
REQUIRED = ("format", "format_version", "sizes", "activation", "output", "cost", "dtype", "params")
OPTIONAL = ("builtin_cost", "metadata", "shuffle_rng", "optimizer", "optimizer_settings")
OPTIMIZER_PREFIX = "optimizer."
#: the optimizer's state buffers, and what a checkpoint adds (``gpubp.checkpoint``)
KNOWN_PREFIXES = (OPTIMIZER_PREFIX, "checkpoint.")


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
        arrays["optimizer_settings"] = np.array(json.dumps(optimizer.settings(), allow_nan=False))
        arrays.update({f"optimizer.{k}": np.asarray(to_host(v)) for k, v in state.items()})
    return arrays


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], temp_prefix: str = ".gpubp-",
              replace: bool = True) -> None:
    """``np.savez`` to ``path`` through ``gpubp.files.write_atomically``: the old ``path`` stays intact until
    the new file is complete and fsynced; a special file such as ``/dev/null`` is written into."""
    write_atomically(path, npz_writer(arrays), temp_prefix=temp_prefix, replace=replace)


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
    """sizes, activation, output, cost and dtype of fields that ``check_model_fields`` accepted (ValueError if
    a text field has the wrong type)."""
    description = {key: text_field(fields, key, name) for key in ("activation", "output", "cost", "dtype")}
    return {"sizes": [int(s) for s in fields["sizes"]], **description}


def text_field(fields: dict[str, np.ndarray], key: str, name: str) -> str:
    """The text stored in field ``key`` (ValueError if it is not one text value)."""
    value = fields[key]
    if value.dtype.kind != "U" or value.ndim != 0:
        raise ValueError(f"{name} is damaged: field {key!r} is not a text value")
    return str(value)


def restore_fields(net: Any, fields: dict[str, np.ndarray], name: str) -> None:
    """Parameters and training state from a model file's fields (accepted by ``check_model_fields``) into
    ``net`` (of the same description); ValueError naming ``name`` if they do not fit."""
    params = fields["params"]
    if params.shape != net.parameters().shape:
        raise ValueError(f"{name} is damaged: {params.size} parameters stored, sizes {net.sizes} need "
                         f"{net.parameters().size}")
    net._load_parameters(params)
    net.metadata = model_metadata(fields, name, net.sizes[0])
    rng = shuffle_generator(fields, name)
    if rng is not None:
        net._shuffle_rng = rng
    if "optimizer" in fields:
        optimizer = net._optimizer_for(optimizer_name(str(fields["optimizer"])), lr=1e-3, momentum=0.9,
                                       weight_decay=0.0)
        state = {k[len(OPTIMIZER_PREFIX):]: v for k, v in fields.items() if k.startswith(OPTIMIZER_PREFIX)}
        try:
            optimizer.configure(**_optimizer_settings(fields, name))
            optimizer.load_state_dict(state)
        except ValueError as exc:
            raise ValueError(f"{name} holds a damaged training state: {exc}") from exc


def model_metadata(fields: dict[str, np.ndarray], name: str, width: int) -> dict[str, Any]:
    """The metadata stored in ``fields`` ({} when none) of a model taking ``width`` inputs; ValueError naming
    the file and the key whose value is damaged (see ``gpubp.metadata``)."""
    if "metadata" not in fields:
        return {}
    metadata = _json_field(fields, "metadata", name)
    try:
        check_metadata(metadata, width)
    except ValueError as exc:
        raise ValueError(f"{name} is damaged: {exc}") from exc
    return metadata


def shuffle_generator(fields: dict[str, np.ndarray], name: str) -> np.random.Generator | None:
    """The shuffle generator whose state ``fields`` hold (None when none); ValueError if it is damaged."""
    if "shuffle_rng" not in fields or not text_field(fields, "shuffle_rng", name):
        return None
    state = _json_field(fields, "shuffle_rng", name)
    rng = np.random.default_rng()
    try:
        rng.bit_generator.state = state
    except (TypeError, KeyError, OverflowError, ValueError) as exc:
        raise ValueError(f"{name} is damaged: field 'shuffle_rng' is not a generator state ({exc})") from exc
    return rng


def _json_field(fields: dict[str, np.ndarray], key: str, name: str) -> Any:
    """The JSON value stored as text in field ``key``; ValueError if it is not JSON (NaN and Infinity are
    not) or is nested deeper than Python's parser goes."""
    try:
        return json.loads(text_field(fields, key, name), parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError(f"{name} is damaged: field {key!r} holds JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} is damaged: field {key!r} is not JSON ({exc})") from exc


def _refuse_constant(constant: str) -> None:
    raise json.JSONDecodeError(f"{constant} is not JSON", constant, 0)


def known_field(key: str) -> bool:
    """Whether a model or checkpoint file uses the field called ``key`` (others are not read)."""
    return key in REQUIRED or key in OPTIONAL or key.startswith(KNOWN_PREFIXES)


def read_npz(source: str | bytes, name: str, kind: str = "gpubp model file") -> dict[str, np.ndarray]:
    """The fields of the model or checkpoint file at ``source`` (a path, or the file's bytes); ``name`` is how
    messages call it and ``kind`` what it should be. Read by ``gpubp.npzfile``: strict (CRC-32, the zip
    directory, exact .npy sizes, no pickle) and bounded by what the file declares; fields that no model or
    checkpoint uses are checked but not read. ValueError saying what is wrong; OSError as is."""
    try:
        return npzfile.read(source, keep=known_field)
    except ValueError as exc:
        raise ValueError(f"{name} is not a readable {kind}: {exc}") from exc


def check_model_fields(fields: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    """``fields`` if they are a gpubp model of a version this gpubp reads whose parts agree: the parameter
    count with the layer sizes, the optimizer state with the parameters, the metadata and shuffle state
    well-formed. Checked before anything proportional to the claimed sizes is allocated; ValueError naming
    the file and the field otherwise."""
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
    params = fields["params"]
    if params.dtype.kind != "f" or params.ndim != 1:
        raise ValueError(f"{name} is damaged: parameters are not a float vector")
    sizes = fields["sizes"]
    if sizes.dtype.kind not in "iu" or sizes.ndim != 1 or len(sizes) < 2 or (sizes < 1).any():
        raise ValueError(f"{name} is damaged: field 'sizes' is not a vector of at least two positive integers")
    sizes = [int(s) for s in sizes]
    needed = parameter_count(sizes)  # Python ints: no overflow, nothing allocated
    if params.size != needed:
        raise ValueError(f"{name} is damaged: {params.size} parameters stored, sizes {sizes} need {needed}")
    if not np.isfinite(params).all():
        raise ValueError(f"{name} holds NaN or infinite parameters")
    _check_optimizer_fields(fields, params.shape, name)
    model_metadata(fields, name, sizes[0])
    shuffle_generator(fields, name)
    return fields


def _check_optimizer_fields(fields: dict[str, np.ndarray], shape: tuple[int, ...], name: str) -> None:
    """The optimizer is one gpubp knows, and each of its state buffers is shaped like the parameters."""
    if "optimizer" not in fields:
        return
    try:
        OPTIMIZERS[optimizer_name(text_field(fields, "optimizer", name))].check_settings(
            **_optimizer_settings(fields, name))
    except ValueError as exc:
        raise ValueError(f"{name} holds a damaged training state: {exc}") from exc
    for key, value in fields.items():
        if key.startswith(OPTIMIZER_PREFIX) and key != OPTIMIZER_PREFIX + "t" and value.shape != shape:
            raise ValueError(f"{name} holds a damaged training state: {key} has shape {value.shape}, the "
                             f"parameters {shape}")


def _optimizer_settings(fields: dict[str, np.ndarray], name: str) -> dict[str, Any]:
    """The optimizer settings stored in ``fields`` ({} in files written before they were stored)."""
    settings = _json_field(fields, "optimizer_settings", name) if "optimizer_settings" in fields else {}
    if not isinstance(settings, dict):
        raise ValueError("field 'optimizer_settings' is not a JSON object")
    return settings
