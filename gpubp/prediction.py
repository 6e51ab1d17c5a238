"""Applying a saved model to new data: align the data with what the model was trained on, predict, and
write the predictions as named columns (CSV) or an array (.npy).

Alignment, in one place for ``gpubp evaluate``, ``gpubp predict`` and Python: feature columns are taken by
the model's feature names (in its order), class names are renumbered as the model's class codes, the width
is checked against the model's input layer, and the model's stored standardisation is applied. What the
model needs comes from its ``metadata`` (see ``Dataset.model_metadata``); a model without it takes inputs
of its width as they are and predicts class codes."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Sequence, TextIO

import numpy as np

from .datasets.dataset import Dataset, map_splits
from .datasets.idx import read_idx
from .datasets.npz import read_arrays
from .datasets.prepare import as_features
from .datasets.standardize import Standardization
from .datasets.table import names_text, read_table
from .files import write_atomically

#: array names read from an .npz, in order of preference (else its only array)
INPUT_ARRAYS = ("X", "x", "x_test", "images")


# ---- aligning data with the model ------------------------------------------------------------------
def check_feature_names(names: Sequence[str], model_names: Sequence[str], source: Any) -> None:
    """ValueError naming ``source`` unless the feature columns ``names`` are the model's ``model_names``,
    in any order: which of the model's features are missing and which columns it does not take."""
    expected, present = set(model_names), set(names)
    missing = [name for name in model_names if name not in present]
    unexpected = [name for name in names if name not in expected]
    if missing or unexpected:
        problems = ([f"missing {names_text(missing)}"] if missing else []) + \
            ([f"unexpected {names_text(unexpected)}"] if unexpected else [])
        raise ValueError(f"{source}: columns do not match the model's features ({'; '.join(problems)}); the "
                         f"model takes {names_text(model_names)}")


def check_width(n_features: int, net: Any, source: Any) -> None:
    """ValueError naming ``source`` unless its samples have the ``net.sizes[0]`` features the model takes."""
    width = net.sizes[0]
    if n_features != width:
        shape = (net.metadata.get("data") or {}).get("input_shape")
        images = f" ({'×'.join(map(str, shape))} images)" if shape else ""
        raise ValueError(f"{source} has {n_features} features per sample, but the model takes {width} "
                         f"inputs{images}")


def model_scaling(net: Any) -> Standardization | None:
    """The standardisation stored with ``net`` (its metadata), None when it was trained without one."""
    stored = net.metadata.get("standardization")
    return Standardization.from_json(stored, net.sizes[0]) if stored else None


def align_dataset(net: Any, data: Dataset, source: Any) -> Dataset:
    """``data`` (host arrays) as ``net`` takes it: its feature columns in the model's order, its class codes
    renumbered as the model's class names, and the model's standardisation applied to every split.
    ValueError naming ``source`` for features or classes the model does not have, or a wrong width."""
    meta = net.metadata
    model_features = meta.get("feature_names")
    if data.feature_names and model_features and data.feature_names != model_features:
        check_feature_names(data.feature_names, model_features, source)
        column = {name: j for j, name in enumerate(data.feature_names)}
        order = [column[name] for name in model_features]
        data = map_splits(data, lambda split: (split[0][:, order], split[1]), feature_names=list(model_features))
    check_width(data.n_features, net, source)
    model_classes = meta.get("class_names")
    if data.class_names and model_classes and data.class_names != model_classes:
        data = _recode_classes(data, model_classes, source)
    scaling = model_scaling(net)
    return data if scaling is None else map_splits(data, lambda split: (scaling.apply(split[0]), split[1]))


def _recode_classes(data: Dataset, names: Sequence[Any], source: Any) -> Dataset:
    """``data`` with its class codes renumbered as the model's class ``names``; ValueError for a class the
    model does not know."""
    code = {name: c for c, name in enumerate(names)}
    unknown = [name for name in data.class_names if name not in code]
    if unknown:
        raise ValueError(f"{source}: class {unknown[0]!r} is not one the model knows "
                         f"({', '.join(map(str, names))})")
    codes = np.array([code[name] for name in data.class_names], dtype=np.int64)
    return map_splits(data, lambda split: (split[0], codes[split[1]]), class_names=list(names),
                      n_classes=len(names))


# ---- reading new inputs ----------------------------------------------------------------------------
def read_inputs(path: str | os.PathLike, net: Any) -> np.ndarray:
    """The samples in ``path`` as the float rows (n, net.sizes[0]) that ``net`` takes: a ``.csv`` with the
    model's feature columns by name (the target column may be there too and is ignored), an ``.npz``
    (array X, x_test or its only array) or ``.npy``, or else an IDX images file; aligned as ``align_dataset``
    aligns a data set. ValueError naming the file for missing or unexpected columns, a wrong width, text,
    NaN or infinity."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such input file")
    meta = net.metadata
    suffix = path.suffix.lower()
    if suffix == ".csv":
        X = _csv_features(path, meta.get("feature_names"), meta.get("target"))
    elif suffix in (".npz", ".npy"):
        X = as_features(_input_array(path), np.float64, path)
    else:
        X = as_features(read_idx(path), np.float64, path, what="IDX images")
    check_width(X.shape[1], net, path)
    scaling = model_scaling(net)
    return X if scaling is None else scaling.apply(X)


def _csv_features(path: Path, names: list[str] | None, target: str | None) -> np.ndarray:
    """The feature columns of a CSV: the model's ``names`` (in its order), or without names every column
    but the ``target``, in file order."""
    table = read_table(path)
    given = [name for name in table.header if name != target]
    if names is not None:
        check_feature_names(given, names, path)
    return table.numeric(given if names is None else names)


def _input_array(path: Path) -> np.ndarray:
    arrays = read_arrays(path)
    for name in INPUT_ARRAYS:
        if name in arrays:
            return arrays[name]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise ValueError(f"{path}: which array holds the inputs? expected one of {', '.join(INPUT_ARRAYS)} or a "
                     f"single array; found {', '.join(arrays) or 'none'}")


# ---- predictions -----------------------------------------------------------------------------------
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
