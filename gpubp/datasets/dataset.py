"""The container every loader returns, where data lives on disk, and the error for missing files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

DATA_ENV = "GPUBP_DATA"

Split = tuple[Any, Any]  # (X, y): X (n, features) floats, y (n,) int64 labels, on one device


class MissingDataError(FileNotFoundError):
    """Data files are not where the loader looks; the message says which files to put where."""


@dataclass(frozen=True)
class Dataset:
    """Train/validation/test splits of one data set; ``validation`` is None for the "full" split."""

    name: str
    train: Split
    validation: Split | None
    test: Split
    n_classes: int

    @property
    def n_features(self) -> int:
        return int(self.train[0].shape[1])

    def __iter__(self) -> Iterator[Split | None]:
        """``train, validation, test = dataset`` (each an (X, y) pair; validation None for "full")."""
        return iter((self.train, self.validation, self.test))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{part} {len(split[0])}" for part, split in
                          (("train", self.train), ("validation", self.validation), ("test", self.test))
                          if split is not None)
        return (f"Dataset({self.name!r}: {sizes}; {self.n_features} features, {self.n_classes} classes, "
                f"{self.train[0].dtype})")


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
