"""A network written by hand as JSON, as a teacher writes the textbook's example:

    {"sizes": [3, 2, 2], "activation": "sigmoid", "cost": "quadratic",
     "weights": [[[0.1, 0.5, 0.9], [-0.3, 0.2, 0.4]], [[0.6, -0.4], [0.3, 0.8]]],
     "biases": [[-2.0, 0.5], [0.1, -0.2]]}

``weights[l]`` is sizes[l+1] × sizes[l] and ``biases[l]`` has sizes[l+1] numbers (as ``net.weights`` and
``net.biases``); "output" (the output activation, default the hidden one) and "dtype" (default float64, so
that the numbers are the ones written) are optional. Every mistake is one ValueError naming the file and the
field.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path
from typing import Any

import numpy as np

from .network import Network

REQUIRED = ("sizes", "weights", "biases")
OPTIONAL = ("activation", "output", "cost", "dtype")
#: the largest JSON file read (a hand-written network is a few hundred bytes)
MAX_BYTES = 16 * 2**20


def read_json_network(path: str | os.PathLike, device: str | None = "cpu") -> Network:
    """The network described by the JSON file at ``path`` (see the module docstring), on ``device``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such network file")
    with open(path, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ValueError(f"{path}: larger than {MAX_BYTES // 2**20} MiB; not a hand-written network")
    try:
        spec = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    return network_from_json(spec, device=device, source=str(path))


def network_from_json(spec: Any, device: str | None = "cpu", source: str = "the network") -> Network:
    """The network described by the parsed JSON object ``spec``; ValueError naming ``source`` and the field."""
    if not isinstance(spec, dict):
        raise ValueError(f"{source}: expected a JSON object with {', '.join(REQUIRED)}; got {type(spec).__name__}")
    missing = [key for key in REQUIRED if key not in spec]
    unknown = [key for key in spec if key not in REQUIRED + OPTIONAL]
    if missing or unknown:
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + \
            ([f"unknown {', '.join(map(repr, unknown))}"] if unknown else [])
        raise ValueError(f"{source}: {'; '.join(problems)} (fields: {', '.join(REQUIRED + OPTIONAL)})")
    sizes = spec["sizes"]
    if not isinstance(sizes, list) or len(sizes) < 2 or \
            not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes):
        raise ValueError(f"{source}: sizes must be a list of at least two positive integers such as [3, 2, 2]; "
                         f"got {sizes!r}")
    options = {key: spec[key] for key in OPTIONAL if key in spec}
    for key, value in options.items():
        if not isinstance(value, str):
            raise ValueError(f"{source}: {key} must be a name (text); got {value!r}")
    weights = _layers(spec["weights"], "weights", [(o, i) for i, o in zip(sizes[:-1], sizes[1:])], source)
    biases = _layers(spec["biases"], "biases", [(o,) for o in sizes[1:]], source)
    options.setdefault("dtype", "float64")
    try:
        net = Network(sizes, device=device, **options)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    for l, (W, b) in enumerate(zip(weights, biases)):
        net.weights[l] = W
        net.biases[l] = b
    return net


def _layers(value: Any, name: str, shapes: list[tuple[int, ...]], source: str) -> list[np.ndarray]:
    """``value`` as one array per layer of the given shapes; ValueError naming the layer otherwise."""
    if not isinstance(value, list) or len(value) != len(shapes):
        raise ValueError(f"{source}: {name} must be a list of {len(shapes)} layers (one per layer after the "
                         f"input); got {_count(value)}")
    arrays = []
    for l, (layer, shape) in enumerate(zip(value, shapes)):
        wanted = " × ".join(map(str, shape))
        what = "sizes[l+1] × sizes[l]" if len(shape) == 2 else "sizes[l+1]"
        if not _numbers_of_shape(layer, shape):
            raise ValueError(f"{source}: {name}[{l}] must be {wanted} numbers ({what}, l = {l}); got "
                             f"{_describe(layer)}")
        arrays.append(np.array(layer, dtype=np.float64))
    return arrays


def _numbers_of_shape(value: Any, shape: tuple[int, ...]) -> bool:
    if not shape:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, list) and len(value) == shape[0] and \
        all(_numbers_of_shape(v, shape[1:]) for v in value)


def _count(value: Any) -> str:
    return f"{len(value)}" if isinstance(value, list) else type(value).__name__


def _describe(value: Any) -> str:
    """The shape of nested lists (2 × 3), or what is wrong in them."""
    if isinstance(value, list):
        inner = [_describe(v) for v in value]
        if len(set(inner)) == 1:
            return f"{len(value)}" if inner[0] == "a number" else f"{len(value)} × {inner[0]}"
        wrong = [d for d in inner if d != "a number" and not d[0].isdigit()]  # neither a number nor a row
        return wrong[0] if wrong else f"{len(value)} rows of different lengths"
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return "a number" if math.isfinite(value) else f"a non-finite number {value!r}"
    return f"{type(value).__name__} {value!r}"
