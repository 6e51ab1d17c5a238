"""Data sets as (X, y) splits ready for ``Network.fit``: MNIST from its IDX files, and the 8×8 digits
bundled with scikit-learn (no download)."""

from __future__ import annotations

import os

from .dataset import DATA_ENV, Dataset, MissingDataError, data_root
from .digits import load_digits
from .idx import parse_idx, read_idx
from .mnist import load_mnist, mnist_dir

NAMES = ("mnist", "digits")


def load(name: str, data_dir: str | os.PathLike | None = None, split: str = "book",
         dtype: str = "float32", device: str = "cpu") -> Dataset:
    """The data set called ``name`` ("mnist" or "digits"); ``data_dir`` is used by MNIST only."""
    if name == "mnist":
        return load_mnist(data_dir, split=split, dtype=dtype, device=device)
    if name == "digits":
        return load_digits(split=split, dtype=dtype, device=device)
    raise ValueError(f"unknown data set {name!r}; valid: {', '.join(NAMES)}")


__all__ = ["DATA_ENV", "NAMES", "Dataset", "MissingDataError", "data_root", "load", "load_digits",
           "load_mnist", "mnist_dir", "parse_idx", "read_idx"]
