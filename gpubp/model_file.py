"""The gpubp model file: a ``ModelState`` as named arrays in an .npz (no pickle), and back.

Version 1 holds the model description (``sizes``, ``activation``, ``output``, ``cost``, ``builtin_cost``,
``dtype``) and the flat ``params``. Version 2 adds the optimizer of the last ``fit`` (``optimizer`` name,
``optimizer.t`` and one ``optimizer.<buffer>`` array per state buffer), the shuffle generator's state
(``shuffle_rng``) and the ``metadata``, both as JSON text. Version 3 adds the optimizer's hyper-parameters
(``optimizer_settings``, a JSON object) and the ``history``, one float64 vector ``history.<key>`` per key
(NaN and infinite losses kept exactly). Older files still read: version 2's optimizer with its default
settings, no history. Any version may hold ``matmul_precision`` ("fp32" or "tf32", gpubp.backend.precision;
a file without it, such as an older one, holds an "fp32" model). A gpubp that does not know the field skips
it and runs the model in fp32.

Reading checks a file whole before anything is built from it: its zip and .npy structure (``gpubp.npzfile``,
every read bounded by what the file declares), the parameter count against the layer sizes, the optimizer
state (known name and settings, buffers shaped like the parameters and finite, steps >= 0), the metadata's
known keys (``gpubp.metadata``), the shuffle state and the history; each JSON field is parsed once. A damaged
or hostile file raises ValueError naming it and the field, after reading little.
"""

from __future__ import annotations

import json
import numbers
import os
from typing import Any, Callable

import numpy as np

from . import npzfile
from .backend.precision import FP32, check_matmul_precision
from .files import write_atomically
from .initializers import parameter_count
from .metadata import check_metadata
from .model_state import ModelState, OptimizerState, shuffle_generator
from .optimizers import OPTIMIZERS, optimizer_name

FORMAT = "gpubp-network"
FORMAT_VERSION = 3
REQUIRED = ("format", "format_version", "sizes", "activation", "output", "cost", "dtype", "params")
OPTIONAL = ("builtin_cost", "metadata", "shuffle_rng", "optimizer", "optimizer_settings", "matmul_precision")
OPTIMIZER_PREFIX = "optimizer."
HISTORY_PREFIX = "history."
#: the optimizer's state buffers, the history, and what a checkpoint adds (``gpubp.checkpoint``)
KNOWN_PREFIXES = (OPTIMIZER_PREFIX, HISTORY_PREFIX, "checkpoint.")


# ---- writing ----------------------------------------------------------------------------------------------
def state_arrays(state: ModelState) -> dict[str, np.ndarray]:
    """The arrays of a model file holding ``state``; ValueError naming what cannot be stored (metadata or a
    setting that is not JSON, a history that is not lists of numbers)."""
    builtin = isinstance(state.cost, str)
    arrays = {
        "format": np.array(FORMAT), "format_version": np.array(FORMAT_VERSION),
        "sizes": np.array(state.sizes, dtype=np.int64), "activation": np.array(state.activation),
        "output": np.array(state.output), "cost": np.array(state.cost if builtin else state.cost.name),
        "builtin_cost": np.array(builtin), "dtype": np.array(state.dtype), "params": np.asarray(state.params),
        "matmul_precision": np.array(state.matmul_precision),
        "metadata": np.array(_json_text(state.metadata, "metadata")),
        "shuffle_rng": np.array("" if state.shuffle is None else _json_text(state.shuffle, "shuffle_rng")),
    }
    optimizer = state.optimizer
    if optimizer is not None:
        arrays["optimizer"] = np.array(optimizer.name)
        arrays["optimizer_settings"] = np.array(_json_text(optimizer.settings, "optimizer_settings"))
        arrays[OPTIMIZER_PREFIX + "t"] = np.array(optimizer.t, dtype=np.int64)
        arrays.update({OPTIMIZER_PREFIX + k: np.asarray(v) for k, v in optimizer.buffers.items()})
    arrays.update(_history_arrays(state.history))
    return arrays


def _history_arrays(history: dict[str, list]) -> dict[str, np.ndarray]:
    """One float64 vector ``history.<key>`` per key of ``history``; ValueError for a key that is not text or
    values that are not numbers."""
    arrays = {}
    for key, values in history.items():
        if not isinstance(key, str) or not isinstance(values, (list, tuple)) or \
                not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
            raise ValueError(f"history[{key!r}] cannot be saved: a history holds lists of numbers under text "
                             "keys")
        arrays[HISTORY_PREFIX + key] = np.array(values, dtype=np.float64)
    return arrays


def _json_text(value: Any, field: str) -> str:
    """``value`` as JSON text (NaN and ±Infinity are not JSON: ValueError naming ``field``)."""
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the model's {field} cannot be saved as JSON: {exc}") from exc


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], temp_prefix: str = ".gpubp-",
              replace: bool = True) -> None:
    """``np.savez`` to ``path`` through ``gpubp.files.write_atomically``: the old ``path`` stays intact until
    the new file is complete and fsynced; a special file such as ``/dev/null`` is written into."""
    write_atomically(path, npz_writer(arrays), temp_prefix=temp_prefix, replace=replace)


def npz_writer(arrays: dict[str, np.ndarray]) -> Callable[[Any], None]:
    """The function writing ``arrays`` as an uncompressed .npz to a binary file object."""
    return lambda f: np.savez(f, **arrays)


# ---- reading ----------------------------------------------------------------------------------------------
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


def model_state(fields: dict[str, np.ndarray], name: str, cost: Any = None) -> ModelState:
    """The state that a model file's ``fields`` hold, every part checked (see ``check_model_fields``; then
    the metadata, shuffle state, optimizer and history); ValueError naming ``name`` and the field otherwise.
    ``cost`` replaces the stored cost (a user-defined cost is stored by name only: ``user_defined_cost``)."""
    check_model_fields(fields, name)
    description = {key: text_field(fields, key, name) for key in ("activation", "output", "cost", "dtype")}
    if cost is not None:
        description["cost"] = cost
    sizes = [int(s) for s in fields["sizes"]]
    shuffle = None
    if "shuffle_rng" in fields and text_field(fields, "shuffle_rng", name):
        shuffle = _json_field(fields, "shuffle_rng", name)
        try:
            shuffle_generator(shuffle)
        except ValueError as exc:
            raise ValueError(f"{name} is damaged: field 'shuffle_rng' is {exc}") from exc
    return ModelState(sizes=sizes, **description, params=fields["params"],
                      optimizer=_optimizer_state(fields, name), shuffle=shuffle,
                      metadata=_metadata(fields, name, sizes[0]), history=history_of(fields, HISTORY_PREFIX, name),
                      matmul_precision=_matmul_precision(fields, name))


def user_defined_cost(fields: dict[str, np.ndarray]) -> bool:
    """Whether the model in ``fields`` was saved with a user-defined cost (stored by its name only)."""
    return not bool(fields.get("builtin_cost", True))


def check_model_fields(fields: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    """``fields`` if they are a gpubp model of a version this gpubp reads whose arrays agree: the parameter
    count with the layer sizes, the optimizer's buffers with the parameters. Checked before anything
    proportional to the claimed sizes is allocated; ValueError naming the file and the field otherwise."""
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
    for key, value in fields.items():
        if key.startswith(OPTIMIZER_PREFIX) and key != OPTIMIZER_PREFIX + "t" and value.shape != params.shape:
            raise ValueError(f"{name} holds a damaged training state: {key} has shape {value.shape}, the "
                             f"parameters {params.shape}")
    return fields


def text_field(fields: dict[str, np.ndarray], key: str, name: str) -> str:
    """The text stored in field ``key`` (ValueError if it is not one text value)."""
    value = fields[key]
    if value.dtype.kind != "U" or value.ndim != 0:
        raise ValueError(f"{name} is damaged: field {key!r} is not a text value")
    return str(value)


def history_of(fields: dict[str, np.ndarray], prefix: str, name: str) -> dict[str, list[float]]:
    """The history stored as one float64 vector per ``<prefix><key>`` field; ValueError for another array."""
    history = {}
    for key in (k for k in fields if k.startswith(prefix)):
        values = fields[key]
        if values.dtype != np.float64 or values.ndim != 1:
            raise ValueError(f"{name} is damaged: field {key!r} is not a vector of float64 values")
        history[key[len(prefix):]] = values.tolist()
    return history


def _matmul_precision(fields: dict[str, np.ndarray], name: str) -> str:
    """The model's matmul precision ("fp32" where the file does not say); ValueError naming the file when it
    is not one for the model's dtype."""
    if "matmul_precision" not in fields:
        return FP32
    try:
        return check_matmul_precision(text_field(fields, "matmul_precision", name),
                                      np.dtype(text_field(fields, "dtype", name)))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} is damaged: field 'matmul_precision': {exc}") from exc


def _metadata(fields: dict[str, np.ndarray], name: str, width: int) -> dict[str, Any]:
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


def _optimizer_state(fields: dict[str, np.ndarray], name: str) -> OptimizerState | None:
    """The optimizer stored in ``fields`` (None when none): a known name and settings, a step count >= 0 and
    finite buffers (their shapes are checked by ``check_model_fields``)."""
    if "optimizer" not in fields:
        return None
    damaged = f"{name} holds a damaged training state"
    try:
        kind = OPTIMIZERS[optimizer_name(text_field(fields, "optimizer", name))]
    except ValueError as exc:
        raise ValueError(f"{damaged}: {exc}") from exc
    settings = {}
    if "optimizer_settings" in fields:
        settings = _json_field(fields, "optimizer_settings", name)
    if not isinstance(settings, dict):
        raise ValueError(f"{damaged}: field 'optimizer_settings' is not a JSON object")
    try:
        settings = kind.check_settings(**settings)
    except ValueError as exc:
        raise ValueError(f"{damaged}: field 'optimizer_settings': {exc}") from exc
    t = fields.get(OPTIMIZER_PREFIX + "t")
    if t is None or t.ndim != 0 or t.dtype.kind not in "iu" or int(t) < 0:
        raise ValueError(f"{damaged}: field 'optimizer.t' is not a step count (an integer >= 0)")
    buffers = {}
    for buffer in kind.buffers:
        value = fields.get(OPTIMIZER_PREFIX + buffer)
        if value is None or value.dtype.kind != "f" or not np.isfinite(value).all():
            raise ValueError(f"{damaged}: field 'optimizer.{buffer}' is missing, not floats, or holds NaN "
                             "or infinite values")
        buffers[buffer] = value
    return OptimizerState(kind.name, settings, buffers, int(t))


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
