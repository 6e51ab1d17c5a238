"""From the raw arrays of a file to a ``Dataset``: features as float rows (checked, so that errors name the
file's rows), the seeded test and validation splits, optional standardisation, then the device.

Splits: a file without a test split loses ``test_fraction`` of its rows (a seeded random choice) to one;
``split="book"`` then keeps VALIDATION_FRACTION of the remaining training rows for validation (MNIST's
10,000 of 60,000, as in the book's split), ``split="full"`` keeps none. Rows keep their file order within
each split. The same file, fraction and seed always give the same splits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .dataset import TASKS, Dataset, to_device
from .standardize import standardized

VALIDATION_FRACTION = 1 / 6
#: default seed of the split permutation (not the training seed: other initialisations, same test set)
SPLIT_SEED = 0
SPLITS = ("book", "full")
DEFAULT_TEST_FRACTION = 0.2

Pair = tuple[np.ndarray, np.ndarray]


def as_features(array: np.ndarray, dtype: Any, path: str | Path, what: str = "features") -> np.ndarray:
    """``array`` (n, ...) as float rows (n, features): images are flattened, uint8 pixels divided by 255
    (as for MNIST), everything else kept as is. ValueError naming the file for text, no rows, NaN or
    infinity."""
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{path}: {what} must be numbers; found dtype {array.dtype}")
    if array.ndim < 2:
        raise ValueError(f"{path}: {what} must have one row per sample, shape (n, features) or images "
                         f"(n, height, width); got shape {array.shape}")
    if len(array) == 0:
        raise ValueError(f"{path}: no samples (0 rows)")
    if array.size == 0:
        raise ValueError(f"{path}: {what} are empty: shape {array.shape}")
    rows = array.reshape(len(array), -1)
    if array.dtype == np.uint8:
        return np.divide(rows, 255.0, dtype=dtype)
    rows = rows.astype(dtype)
    if rows.dtype.kind == "f" and not np.isfinite(rows).all():
        row, column = np.argwhere(~np.isfinite(rows))[0]
        raise ValueError(f"{path}: {what} hold NaN or infinity (row {row}, column {column}: "
                         f"{rows[row, column]})")
    return rows


def as_targets(y: np.ndarray, dtype: Any, path: str | Path) -> np.ndarray:
    """Regression targets (n,) or (n, k) in ``dtype``; ValueError naming the file for NaN or infinity."""
    y = y.astype(dtype)
    if not np.isfinite(y).all():
        row = int(np.argwhere(~np.isfinite(y))[0][0])
        raise ValueError(f"{path}: the targets hold NaN or infinity (row {row})")
    return y


def encode_classes(*label_arrays: np.ndarray) -> tuple[list[np.ndarray], tuple]:
    """Class codes 0..K−1 for each array of labels, and the K class names: the distinct labels in sorted
    order (numbers numerically, text alphabetically), as Python ints or strings."""
    names = np.unique(np.concatenate([np.asarray(a).ravel() for a in label_arrays]))
    codes = [np.searchsorted(names, np.asarray(a)).astype(np.int64) for a in label_arrays]
    return codes, [n.item() if names.dtype.kind in "biu" else str(n) for n in names]


def task_of_labels(labels: np.ndarray) -> str:
    """Integer, boolean or text labels mean classification; floats mean regression."""
    return "regression" if labels.dtype.kind == "f" else "classification"


def _split_rows(n: int, fraction: float, rng: np.random.Generator, path: str | Path,
                what: str) -> tuple[np.ndarray, np.ndarray]:
    """(held-out rows, kept rows): a seeded random ``fraction`` of 0..n−1 (at least one row), each sorted."""
    order = rng.permutation(n)
    k = max(1, int(round(n * fraction)))
    if n - k < 1:
        raise ValueError(f"{path}: {n} rows are too few to split off a {what} set and still train")
    return np.sort(order[:k]), np.sort(order[k:])


def make_dataset(name: str, path: str | Path, train: Pair, test: Pair | None, *, task: str,
                 class_names: list | None = None, feature_names: list[str] | None = None,
                 target_name: str | None = None, source: dict, split: str = "book",
                 test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = SPLIT_SEED,
                 standardize_features: bool = False, dtype: str = "float32", device: str = "cpu") -> Dataset:
    """The Dataset of raw (features, targets) arrays read from ``path``: converted, split (see the module
    docstring), standardised when asked (fitted on the training split), and put on ``device``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {task!r}")
    if str(dtype) not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    check_test_fraction(test_fraction)
    source = {**source, "split": split, "test_fraction": test_fraction if test is None else None,
              "split_seed": seed, "standardize": bool(standardize_features)}

    def convert(pair: Pair) -> Pair:  # before splitting, so that errors name the rows of the file
        X, y = pair
        if task == "classification":
            return as_features(X, dtype, path), y.astype(np.int64)
        return as_features(X, dtype, path), as_targets(y, dtype, path)

    train = convert(train)
    test = None if test is None else convert(test)
    rng = np.random.default_rng(seed)
    if test is None:
        held, kept = _split_rows(len(train[0]), test_fraction, rng, path, "test")
        train, test = (train[0][kept], train[1][kept]), (train[0][held], train[1][held])
    validation = None
    if split == "book":
        held, kept = _split_rows(len(train[0]), VALIDATION_FRACTION, rng, path, "validation")
        train, validation = (train[0][kept], train[1][kept]), (train[0][held], train[1][held])
    data = Dataset(name, train, validation, test,
                   len(class_names) if task == "classification" else 0, task=task, class_names=class_names,
                   feature_names=feature_names, target_name=target_name, source=source)
    if standardize_features:
        data = standardized(data)
    return to_device(data, device)


def check_test_fraction(value: Any) -> float:
    """``value`` when it is a number strictly between 0 and 1; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"test_fraction must be a number between 0 and 1 (exclusive); got {value!r}")
    return float(value)
