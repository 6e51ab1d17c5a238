"""The container every loader returns, where data lives on disk, and the error for missing files."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

DATA_ENV = "GPUBP_DATA"

Split = tuple[Any, Any]  # (X, y): X (n, features) floats, y (n,) int64 labels or float targets, on one device
TASKS = ("classification", "regression")


class MissingDataError(FileNotFoundError):
    """Data files are not where the loader looks; the message says which files to put where."""


@dataclass(frozen=True)
class Dataset:
    """Train/validation/test splits of one data set; ``validation`` is None for the "full" split.

    ``task`` is "classification" (y: int64 class codes 0..n_classes-1, named by ``class_names``) or
    "regression" (y: float targets, (n,) or (n, k); ``n_classes`` is 0). ``standardization`` is the
    feature scaling applied to every split (fitted on ``train``), None when none was. ``source`` says how
    a file was read and split, so that the same test split can be drawn again (None for built-in sets).
    """

    name: str
    train: Split
    validation: Split | None
    test: Split
    n_classes: int
    task: str = "classification"
    class_names: list | None = None
    feature_names: list[str] | None = None
    target_name: str | None = None
    standardization: Any = None  # a gpubp.datasets.standardize.Standardization
    source: dict | None = None

    @property
    def n_features(self) -> int:
        return int(self.train[0].shape[1])

    @property
    def n_outputs(self) -> int:
        """The output width a network for this data needs: the classes, or the regression targets."""
        if self.task == "classification":
            return self.n_classes
        y = self.train[1]
        return 1 if y.ndim == 1 else int(y.shape[1])

    def model_metadata(self) -> dict[str, Any]:
        """What applying a model trained on this data needs (JSON values, for ``Network.metadata``): the task,
        class names, feature names, input width, standardisation, and how the data was split."""
        return {
            "task": self.task,
            "class_names": None if self.class_names is None else list(self.class_names),
            "feature_names": None if self.feature_names is None else list(self.feature_names),
            "target": self.target_name,
            "input_width": self.n_features,
            "standardization": None if self.standardization is None else self.standardization.to_json(),
            "data": self.source,
        }

    def __iter__(self) -> Iterator[Split | None]:
        """``train, validation, test = dataset`` (each an (X, y) pair; validation None for "full")."""
        return iter((self.train, self.validation, self.test))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{part} {len(split[0])}" for part, split in
                          (("train", self.train), ("validation", self.validation), ("test", self.test))
                          if split is not None)
        kind = f"{self.n_classes} classes" if self.task == "classification" else \
            f"regression of {self.n_outputs} target{'s' * (self.n_outputs > 1)}"
        scaled = ", standardized" if self.standardization is not None else ""
        return f"Dataset({self.name!r}: {sizes}; {self.n_features} features, {kind}, {self.train[0].dtype}{scaled})"


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The data folder: ``data_dir``, else env GPUBP_DATA, else the user cache ($XDG_CACHE_HOME or
    ~/.cache)/gpubp. Each data set lives in a subfolder named after it (``<root>/mnist``)."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "gpubp"


def map_splits(data: Dataset, convert: Callable[[Split], Split], **changes: Any) -> Dataset:
    """``data`` with ``convert((X, y))`` in place of each split it has, and the fields ``changes``."""
    validation = None if data.validation is None else convert(data.validation)
    return dataclasses.replace(data, train=convert(data.train), validation=validation, test=convert(data.test),
                               **changes)


def to_device(data: Dataset, device: str) -> Dataset:
    """``data`` with every array on ``device`` (the same object when that is the CPU)."""
    from ..backend import get_ops

    ops = get_ops(device)
    if ops.on_host:
        return data
    return map_splits(data, lambda split: (ops.asarray(split[0]), ops.asarray(split[1])))


def finish(name: str, splits: dict[str, tuple[np.ndarray, np.ndarray] | None], n_classes: int,
           dtype: str, device: str, scale: float) -> Dataset:
    """A Dataset from raw (pixels, labels) NumPy splits: pixels / ``scale`` in ``dtype`` as (n, features)
    rows, labels int64, each array moved to ``device`` once."""
    from ..backend import get_ops

    if str(dtype) not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    ops = get_ops(device)

    def convert(split: tuple[np.ndarray, np.ndarray] | None) -> Split | None:
        if split is None:
            return None
        pixels, labels = split
        x = pixels.reshape(len(pixels), -1).astype(dtype)
        np.divide(x, scale, out=x)
        return ops.asarray(x), ops.asarray(labels.astype(np.int64))

    return Dataset(name, convert(splits["train"]), convert(splits["validation"]),
                   convert(splits["test"]), n_classes)
