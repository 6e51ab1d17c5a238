"""Applying a saved model to new data files: read the inputs as in training (CSV feature columns by name,
uint8 pixels scaled to [0, 1], the stored standardisation), predict, and write the predictions as named
columns (CSV) or an array (.npy). What the model needs comes from its ``metadata`` (see
``Dataset.model_metadata``); a model without it predicts class codes from inputs of its width."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .datasets.idx import read_idx
from .datasets.npz import read_arrays
from .datasets.prepare import as_features
from .datasets.standardize import Standardization
from .datasets.table import names_text, read_table
from .files import write_atomically

#: array names read from an .npz, in order of preference (else its only array)
INPUT_ARRAYS = ("X", "x", "x_test", "images")


def read_inputs(path: str | os.PathLike, net: Any) -> np.ndarray:
    """The samples in ``path`` as the float rows (n, net.sizes[0]) that ``net`` takes: a ``.csv`` with the
    model's feature columns by name (the target column may be there too and is ignored), an ``.npz``
    (array X, x_test or its only array) or ``.npy``, or else an IDX images file. ValueError naming the file
    for missing or unexpected columns, a wrong width, text, NaN or infinity."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such input file")
    meta, width = net.metadata, net.sizes[0]
    suffix = path.suffix.lower()
    if suffix == ".csv":
        X = _csv_features(path, meta.get("feature_names"), meta.get("target"), width)
    elif suffix in (".npz", ".npy"):
        X = as_features(_input_array(path), np.float64, path)
    else:
        X = as_features(read_idx(path), np.float64, path, what="IDX images")
    if X.shape[1] != width:
        shape = (meta.get("data") or {}).get("input_shape")
        expected = f"{width} ({'×'.join(map(str, shape))} images)" if shape else str(width)
        raise ValueError(f"{path}: {X.shape[1]} features per sample, but the model takes {expected}")
    if meta.get("standardization"):
        X = Standardization.from_json(meta["standardization"], width).apply(X)
    return X


def _csv_features(path: Path, names: list[str] | None, target: str | None, width: int) -> np.ndarray:
    table = read_table(path)
    given = [name for name in table.header if name != target]
    if names is None:  # a model without feature names: the columns in file order
        if len(given) != width:
            raise ValueError(f"{path}: {len(given)} feature columns, but the model takes {width}")
        return table.numeric(given)
    expected = set(names)
    missing = [name for name in names if name not in table.positions]
    unexpected = [name for name in given if name not in expected]
    if missing or unexpected:
        problems = ([f"missing {names_text(missing)}"] if missing else []) + \
            ([f"unexpected {names_text(unexpected)}"] if unexpected else [])
        raise ValueError(f"{path}: columns do not match the model's features ({'; '.join(problems)}); the "
                         f"model takes {names_text(names)}")
    return table.numeric(names)


def _input_array(path: Path) -> np.ndarray:
    arrays = read_arrays(path)
    for name in INPUT_ARRAYS:
        if name in arrays:
            return arrays[name]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise ValueError(f"{path}: which array holds the inputs? expected one of {', '.join(INPUT_ARRAYS)} or a "
                     f"single array; found {', '.join(arrays) or 'none'}")


def class_names(net: Any) -> list:
    """The model's class names (its metadata), else the class codes 0..k−1 (0, 1 for a single output)."""
    k = max(net.sizes[-1], 2)
    names = net.metadata.get("class_names")
    return list(names) if names is not None and len(names) == k else list(range(k))


def predictions(net: Any, X: np.ndarray, proba: bool = False) -> tuple[list[str], list[np.ndarray]]:
    """(column names, columns): the predicted class names (classification) or values (regression, one
    column per output), and with ``proba`` one column per class holding the output activation aᴸ of that
    class (softmax: its probability; a single sigmoid output: 1 − a and a)."""
    target = net.metadata.get("target") or "prediction"
    if net.task == "regression":
        if proba:
            raise ValueError("--proba is for classification models; this one is a regression model")
        values = net.ops.to_numpy(net.forward(X))
        if values.shape[1] == 1:
            return [target], [values[:, 0]]
        return [f"{target}_{j}" for j in range(values.shape[1])], list(values.T)
    names = class_names(net)
    header, columns = [target], [np.asarray(names)[net.predict(X)]]
    if proba:
        a = net.ops.to_numpy(net.forward(X))
        if a.shape[1] == 1:
            a = np.hstack([1.0 - a, a])
        header += [str(name) for name in names]
        columns += list(a.T)
    return header, columns


def write_predictions(header: list[str], columns: list[np.ndarray], out: str | os.PathLike | None,
                      stdout: TextIO) -> None:
    """CSV (a header row, then one row per sample) to ``out`` or, when None, to ``stdout``; an ``.npy``
    ``out`` gets the array instead: the predictions, or with probabilities the (n, classes) probabilities.
    A file is written through a temp file renamed into place, so a failure leaves nothing behind."""
    if out is not None and str(out).lower().endswith(".npy"):
        array = columns[0] if len(columns) == 1 else np.stack(columns[1:] if _has_labels(columns) else columns,
                                                                 axis=1)
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        write_atomically(out, buffer.getvalue())
        return
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(zip(*(column.tolist() if column.dtype.kind in "iuUSb" else [str(v) for v in column]
                           for column in columns)))
    if out is None:
        stdout.write(text.getvalue())
    else:
        write_atomically(out, text.getvalue().encode())


def _has_labels(columns: list[np.ndarray]) -> bool:
    """Whether the first column holds class labels followed by probability columns."""
    return len(columns) > 1 and columns[0].dtype.kind != "f"
