"""MNIST from its four standard IDX files, split as in Nielsen's book or as the usual 60,000/10,000."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from .dataset import DATA_ENV, Dataset, MissingDataError, data_root, finish
from .idx import read_idx

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: SHA-256 of the decompressed IDX contents: the same for every genuine copy of MNIST.
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
IMAGE_SHAPE = (28, 28)
N_CLASSES = 10
#: the book's split: the last 10,000 training images are the validation set
BOOK_VALIDATION = 10_000
SPLITS = ("book", "full")


def mnist_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``<root>/mnist`` for the data root (see ``data_root``); a root that holds the files itself is
    accepted too."""
    root = data_root(data_dir)
    folder = root / "mnist"
    if not folder.is_dir() and _find(root, FILES["train_images"]) is not None:
        return root
    return folder


def _find(folder: Path, stem: str) -> Path | None:
    """``folder/stem.gz`` or, failing that, the decompressed ``folder/stem``; None when neither exists."""
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _read(path: Path, verify: bool) -> np.ndarray:
    """The IDX array in ``path``, the SHA-256 of its (decompressed) contents checked against MNIST's when
    ``verify``."""
    contents = hashlib.sha256() if verify else None
    array = read_idx(path, contents)
    stem = path.name.removesuffix(".gz")
    if verify and contents.hexdigest() != SHA256[stem]:
        raise ValueError(f"{path}: SHA-256 does not match MNIST's {stem} (expected {SHA256[stem]} for the "
                         "decompressed contents); the file is damaged or not MNIST. Replace it, or pass "
                         "verify=False to load it anyway")
    return array


def _pair(folder: Path, images_key: str, labels_key: str, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    paths = [_find(folder, FILES[k]) for k in (images_key, labels_key)]
    images, labels = (_read(p, verify) for p in paths)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"{paths[0]}: expected uint8 images of shape (n, 28, 28), got {images.dtype} "
                         f"{images.shape}")
    if len(images) == 0:
        raise ValueError(f"{paths[0]}: no samples (0 rows)")
    if labels.dtype != np.uint8 or labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{paths[1]}: expected {len(images)} uint8 labels (one per image in "
                         f"{paths[0].name}), got {labels.dtype} {labels.shape}")
    if labels.size and labels.max() >= N_CLASSES:
        raise ValueError(f"{paths[1]}: label {int(labels.max())} out of range 0-9")
    return images, labels


def load_mnist(data_dir: str | os.PathLike | None = None, split: str = "book", dtype: str = "float32",
               device: str = "cpu", verify: bool = True) -> Dataset:
    """MNIST as 784-pixel rows scaled to [0, 1] (uint8 / 255) in ``dtype`` and int64 labels 0–9.

    Files: the four standard IDX files (``.gz`` or decompressed) in ``<data_dir>/mnist``, where the data dir
    is ``data_dir``, else env GPUBP_DATA, else ~/.cache/gpubp. ``split="book"``: the first 50,000 training
    images train, the last 10,000 validate, the 10,000 test images test (Nielsen's split);
    ``split="full"``: 60,000 train / 10,000 test, ``validation`` None. ``verify`` checks each file's
    SHA-256. Raises ``MissingDataError`` (a FileNotFoundError) naming the files to put where, and
    ValueError for a damaged, truncated or wrong file.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    folder = mnist_dir(data_dir)
    missing = [f"{stem}.gz" for stem in FILES.values() if _find(folder, stem) is None]
    if missing:
        raise MissingDataError(
            f"MNIST files missing from {folder}: {', '.join(missing)}. Put the four standard MNIST IDX files "
            f"there (gzipped or not; any genuine copy passes the SHA-256 check), or point --data-dir / env "
            f"{DATA_ENV} at a folder whose mnist/ subfolder holds them")
    train = _pair(folder, "train_images", "train_labels", verify)
    test = _pair(folder, "test_images", "test_labels", verify)
    validation = None
    if split == "book":
        n_train = len(train[0]) - BOOK_VALIDATION
        if n_train <= 0:
            raise ValueError(f"{folder}: the book split needs more than {BOOK_VALIDATION} training images, "
                             f"found {len(train[0])}")
        validation = (train[0][n_train:], train[1][n_train:])
        train = (train[0][:n_train], train[1][:n_train])
    return finish("mnist", {"train": train, "validation": validation, "test": test}, N_CLASSES,
                  dtype, device, 255.0)
