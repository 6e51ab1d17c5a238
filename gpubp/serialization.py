"""Saving and loading networks as .npz files: named arrays only, no pickle, written atomically.

Format version 2 adds, to version 1's model description and parameters: the optimizer state of the last
``fit`` (``optimizer`` name, ``optimizer.t`` and one ``optimizer.<buffer>`` array per state buffer), the
shuffle generator's state and the network's ``metadata``, both as JSON text. Version 1 files still load,
with no optimizer state.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from typing import Any

import numpy as np

from .costs import COSTS, Cost
from .optimizers import optimizer_name

FORMAT = "gpubp-network"
FORMAT_VERSION = 2
REQUIRED = ("format", "format_version", "sizes", "activation", "output", "cost", "dtype", "params")


def save(net: Any, path: str | os.PathLike) -> None:
    """Write ``net`` to ``path`` exactly (no suffix is added): a temp file in the same folder, fsynced, then
    renamed over ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot save to {path!r}: folder {folder!r} does not exist")
    arrays = {
        "format": np.array(FORMAT), "format_version": np.array(FORMAT_VERSION),
        "sizes": np.array(net.sizes, dtype=np.int64), "activation": np.array(net.activation.name),
        "output": np.array(net.output.name), "cost": np.array(net.cost.name),
        "builtin_cost": np.array(net.cost.name in COSTS and type(net.cost) is type(COSTS[net.cost.name])),
        "dtype": np.array(net.dtype.name), "params": net.ops.to_numpy(net.parameters()),
        "metadata": np.array(json.dumps(net.metadata, allow_nan=False)),
        "shuffle_rng": np.array("" if net._shuffle_rng is None else
                                json.dumps(net._shuffle_rng.bit_generator.state)),
    }
    optimizer = net.optimizer
    if optimizer is not None:
        arrays["optimizer"] = np.array(optimizer.name)
        arrays.update({f"optimizer.{k}": v for k, v in optimizer.state_dict().items()})
    fd, tmp = tempfile.mkstemp(prefix=".gpubp-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _ignore_missing():
            os.unlink(tmp)
        raise


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
    fields = _read(path)
    sizes = [int(s) for s in fields["sizes"]]
    if cost is None:
        if not bool(fields.get("builtin_cost", True)):
            raise ValueError(f"{path!r} was saved with a user-defined cost {str(fields['cost'])!r}; "
                             "pass it again: gpubp.load(path, cost=...)")
        cost = str(fields["cost"])
    try:
        net = Network(sizes, activation=str(fields["activation"]), output=str(fields["output"]),
                      cost=cost, device=device, dtype=str(fields["dtype"]))
    except ValueError as exc:
        raise ValueError(f"{path!r} holds an invalid model description: {exc}") from exc
    params = fields["params"]
    if params.shape != net.parameters().shape:
        raise ValueError(f"{path!r} is damaged: {params.size} parameters stored, sizes {sizes} need "
                         f"{net.parameters().size}")
    if not np.isfinite(params).all():
        raise ValueError(f"{path!r} holds NaN or infinite parameters")
    net._load_parameters(params)
    _restore_training_state(net, fields, path)
    return net


def _restore_training_state(net: Any, fields: dict[str, np.ndarray], path: str) -> None:
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
            name = str(fields["optimizer"])
            optimizer = net._optimizer_for(optimizer_name(name), lr=1e-3, momentum=0.9, weight_decay=0.0)
            prefix = "optimizer."
            optimizer.load_state_dict({k[len(prefix):]: v for k, v in fields.items() if k.startswith(prefix)})
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{path!r} holds a damaged training state: {exc}") from exc


def _read(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            missing = [k for k in REQUIRED if k not in data.files]
            if missing:
                raise ValueError(f"missing fields {missing}")
            fields = {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"{path!r} is not a readable gpubp model file ({type(exc).__name__}: {exc})") \
            from exc
    if str(fields["format"]) != FORMAT:
        raise ValueError(f"{path!r} is not a gpubp model file (format {str(fields['format'])!r})")
    version = int(fields["format_version"])
    if version > FORMAT_VERSION:
        raise ValueError(f"{path!r} uses format version {version}; this gpubp reads up to "
                         f"{FORMAT_VERSION}: upgrade gpubp")
    if fields["params"].dtype.kind != "f" or fields["params"].ndim != 1:
        raise ValueError(f"{path!r} is damaged: parameters are not a float vector")
    return fields


class _ignore_missing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        return exc_type is not None and issubclass(exc_type, FileNotFoundError)
