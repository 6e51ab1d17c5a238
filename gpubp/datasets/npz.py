"""NumPy ``.npz`` archives (and ``.npy`` arrays) read without pickle: ``X``/``y``, or the
``x_train``/``y_train``/``x_test``/``y_test`` layout of Keras's ``mnist.npz``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .. import npzfile
from .dataset import Dataset
from .prepare import DEFAULT_TEST_FRACTION, SPLIT_SEED, encode_classes, make_dataset, task_of_labels

KERAS_KEYS = ("x_train", "y_train", "x_test", "y_test")
#: dtype kinds of targets: booleans, integers and text (class labels), floats (regression)
TARGET_KINDS = "biuUSf"


def read_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array in the ``.npz`` (or the one in the ``.npy``, as "X") at ``path``, read by
    ``gpubp.npzfile`` (pickle refused, every read bounded by what the file declares); ValueError naming the
    file when it is not one, is damaged or holds Python objects."""
    try:
        return npzfile.read(path, npy_name="X")
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def _get(arrays: dict[str, np.ndarray], *names: str) -> np.ndarray | None:
    for name in names:
        if name in arrays:
            return arrays[name]
    return None


def load_npz(path: str | os.PathLike, split: str = "book", test_fraction: float = DEFAULT_TEST_FRACTION,
             seed: int = SPLIT_SEED, standardize: bool = False, dtype: str = "float32",
             device: str = "cpu") -> Dataset:
    """The ``.npz`` at ``path``: arrays ``X`` and ``y`` (a seeded ``test_fraction`` becomes the test set), or
    ``x_train``, ``y_train``, ``x_test``, ``y_test`` as in Keras's ``mnist.npz``. Images of any shape become
    rows, uint8 pixels scaled to [0, 1]. Integer or text labels mean classification (class names: the
    distinct labels, sorted), float targets regression. Never unpickles (``allow_pickle=False``).
    """
    path = Path(path).expanduser()
    arrays = read_arrays(path)
    X, y = _get(arrays, "X", "x"), _get(arrays, "y", "Y")
    test = None
    if X is None or y is None:
        X, y = _get(arrays, "x_train"), _get(arrays, "y_train")
        if X is None or y is None:
            raise ValueError(f"{path}: expected arrays X and y, or x_train and y_train (with x_test and "
                             f"y_test); found {', '.join(arrays) or 'none'}")
        x_test, y_test = _get(arrays, "x_test"), _get(arrays, "y_test")
        if (x_test is None) != (y_test is None):
            raise ValueError(f"{path}: has {'x_test' if y_test is None else 'y_test'} without "
                             f"{'y_test' if y_test is None else 'x_test'}")
        test = None if x_test is None else (x_test, y_test)
    task = task_of_labels(y)
    for features, targets, what in ((X, y, "train"), *(() if test is None else ((*test, "test"),))):
        for array, part in ((features, "features"), (targets, "targets")):
            if array.ndim == 0:
                raise ValueError(f"{path}: the {what} {part} are one value (a 0-d array); expected one row "
                                 "per sample")
        if targets.dtype.kind not in TARGET_KINDS:
            raise ValueError(f"{path}: {what} targets must be numbers or text; found dtype {targets.dtype}")
        if len(features) != len(targets):
            raise ValueError(f"{path}: {len(features)} {what} samples but {len(targets)} targets")
        if task_of_labels(targets) != task or (targets.dtype.kind in "US") != (y.dtype.kind in "US"):
            raise ValueError(f"{path}: training targets are {y.dtype} but test targets {targets.dtype}")
        if task == "classification" and targets.ndim != 1:
            raise ValueError(f"{path}: class labels must be one per sample, shape (n,); got {targets.shape}")
        if task == "regression" and targets.ndim not in (1, 2):
            raise ValueError(f"{path}: targets must be (n,) or (n, outputs); got {targets.shape}")
    if test is not None and X.shape[1:] != test[0].shape[1:]:
        raise ValueError(f"{path}: x_test samples are {test[0].shape[1:]}, x_train samples {X.shape[1:]}")
    class_names = None
    if task == "classification":
        codes, class_names = encode_classes(y, *(() if test is None else (test[1],)))
        y, test = codes[0], None if test is None else (test[0], codes[1])
    source = {"path": str(path.resolve()), "format": "npz", "rows": len(X), "input_shape": list(X.shape[1:])}
    return make_dataset(path.stem, path, (X, y), test, task=task, class_names=class_names, source=source,
                        split=split, test_fraction=test_fraction, seed=seed, standardize_features=standardize,
                        dtype=dtype, device=device)
