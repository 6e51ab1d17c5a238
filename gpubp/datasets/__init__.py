"""Data sets as (X, y) splits ready for ``Network.fit``: MNIST from its IDX files, the 8×8 digits bundled
with scikit-learn (no download), and your own files: a folder of IDX files, an ``.npz`` or a ``.csv``."""

from __future__ import annotations

import os
from pathlib import Path

from .dataset import DATA_ENV, TASKS, Dataset, MissingDataError, data_root, to_device
from .digits import load_digits
from .idx import parse_idx, read_idx
from .idx_folder import load_idx
from .mnist import load_mnist, mnist_dir
from .npz import load_npz
from .prepare import DEFAULT_TEST_FRACTION, SPLIT_SEED
from .standardize import Standardization, standardized
from .table import load_csv

NAMES = ("mnist", "digits")
#: file suffixes ``load`` reads (a folder means IDX files)
SUFFIXES = (".npz", ".csv")


def load(name: str | os.PathLike, data_dir: str | os.PathLike | None = None, split: str = "book",
         dtype: str = "float32", device: str = "cpu", *, target: str | None = None,
         test_fraction: float | None = None, standardize: bool = False, seed: int = SPLIT_SEED) -> Dataset:
    """The data set called ``name`` ("mnist" or "digits"; ``data_dir`` is used by MNIST only), or the one at
    the path ``name``: a folder of IDX files (``load_idx``), an ``.npz`` (``load_npz``) or a ``.csv``
    (``load_csv``, whose target column is ``target``, default the last). ``test_fraction`` (default 0.2)
    and ``seed`` draw the test split of a file that has none; ``standardize`` scales the features to mean
    0, std 1 as fitted on the training split."""
    if str(name) in NAMES:
        if target is not None or test_fraction is not None:
            raise ValueError(f"{name} has fixed splits and no target column: target and test_fraction are "
                             "for your own files")
        if str(name) == "mnist":
            data = load_mnist(data_dir, split=split, dtype=dtype, device="cpu" if standardize else device)
        else:
            data = load_digits(split=split, dtype=dtype, device="cpu" if standardize else device)
        return to_device(standardized(data), device) if standardize else data
    path = Path(name).expanduser()
    if not path.exists():
        raise ValueError(f"unknown data set {str(name)!r}: neither a name ({', '.join(NAMES)}) nor an existing "
                         "file or folder (a folder of IDX files, an .npz or a .csv)")
    if target is not None and path.suffix.lower() != ".csv":
        raise ValueError(f"{path}: target names a CSV column; this is not a .csv file")
    options = dict(split=split, seed=seed, standardize=standardize, dtype=dtype, device=device,
                   test_fraction=DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction)
    if path.is_dir():
        return load_idx(path, **options)
    if path.suffix.lower() == ".npz":
        return load_npz(path, **options)
    if path.suffix.lower() == ".csv":
        return load_csv(path, target=target, **options)
    raise ValueError(f"{path}: unknown kind of data file; use a folder of IDX files, an .npz or a .csv")


__all__ = ["DATA_ENV", "NAMES", "TASKS", "Dataset", "MissingDataError", "Standardization", "data_root",
           "load", "load_csv", "load_digits", "load_idx", "load_mnist", "load_npz", "mnist_dir", "parse_idx",
           "read_idx", "standardized"]
